"""Dataset readers: CoOp's 11 datasets and 4 ImageNet variants, your own image folders, your own
precomputed embeddings, and the built-in world's datasets. Each reader class is marked with ``@dataset``; ``register_all()``
registers them in the engine's ``DATASET_REGISTRY`` (``train.py`` calls it).
"""
import importlib
import os

READER_MODULES = ("imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101",
                  "fgvc_aircraft", "sun397", "dtd", "eurosat", "ucf101", "imagenetv2", "imagenet_sketch",
                  "imagenet_a", "imagenet_r", "imagefolder", "embeddings", "world")
DATASETS = {}  # name -> reader class, filled by @dataset as the modules are imported


def dataset(cls):
    DATASETS[cls.__name__] = cls
    return cls


def register_all(names=None, keep_existing=False):
    """Register the readers (all, or ``names``); returns the names skipped because another class of
    that name was registered already (``keep_existing``; otherwise that is an error)."""
    from llu.engine import DATASET_REGISTRY
    from llu.utils import register_classes
    for module in READER_MODULES:
        importlib.import_module(f"{__name__}.{module}")
    chosen = [DATASETS[name] for name in (names or DATASETS)]
    return register_classes(DATASET_REGISTRY, chosen, keep_existing)


# Readers of a user's own data, named in results and tables after the folder or file they read
# (or the NAME key): {reader: (config node, its path key)}.
OWN_DATA = {"ImageFolder": ("IMAGEFOLDER", "DIR"), "Embeddings": ("EMBEDDINGS", "FILE")}


def dataset_label(cfg):
    """A dataset's name in results.json and the tables: DATASET.NAME, or for a user's own data its
    NAME key, else the stem of its folder or file. ``cfg`` is a config or the dict of a saved one."""
    dataset = cfg["DATASET"]
    if dataset["NAME"] not in OWN_DATA:
        return dataset["NAME"]
    node, path_key = OWN_DATA[dataset["NAME"]]
    own = dataset.get(node, {})
    path = os.path.normpath(own.get(path_key) or dataset["NAME"])
    return own.get("NAME") or os.path.splitext(os.path.basename(path))[0]
