"""Dataset readers: CoOp's 11 datasets and 4 ImageNet variants, your own image folders, and the
built-in world's datasets. Each reader class is marked with ``@dataset``; ``register_all()``
registers them in the engine's ``DATASET_REGISTRY`` (``train.py`` calls it).
"""
import importlib

READER_MODULES = ("imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101",
                  "fgvc_aircraft", "sun397", "dtd", "eurosat", "ucf101", "imagenetv2", "imagenet_sketch",
                  "imagenet_a", "imagenet_r", "imagefolder", "world")
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
