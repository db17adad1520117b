"""Dataset readers: CoOp's 11 datasets and 4 ImageNet variants, your own image folders, your own
precomputed embeddings, and the built-in world's datasets. Each reader class is marked with
``@dataset``, which puts it in ``DATASETS``; ``load_all()`` imports every reader module and
``register_all()`` registers the classes in the engine's ``DATASET_REGISTRY`` (``llu.train`` calls
it, once the engine's backend is chosen). Importing this package loads no reader.

What the trainers and the tables need to know about a dataset (its prompt template, its name in the
tables, ...) is a class attribute of its reader, declared with the reader (``DatasetFacts``), and
read through the registry: ``dataset_facts(cfg.DATASET.NAME).template``.
"""
import os

from llu.catalog import Catalog

DATASETS = dataset = Catalog()  # name -> reader class, filled by @dataset as the modules are imported


def load_all():
    """Import every reader module, so that ``DATASETS`` holds every reader and each has declared its
    config keys. Not done at import: the readers derive from the engine's backend, chosen before."""
    from . import (imagenet, caltech101, oxford_pets, stanford_cars, oxford_flowers, food101,  # noqa: F401
                   fgvc_aircraft, sun397, dtd, eurosat, ucf101, imagenet_variants, imagefolder, embeddings, world)
    from . import union  # noqa: F401
    return DATASETS


def register_all(names=None, keep_existing=False):
    """Register the readers (all, or ``names``) in the engine's registry (``Catalog.register_into``)."""
    from llu.engine import DATASET_REGISTRY
    return load_all().register_into(DATASET_REGISTRY, names, keep_existing)


# ---------------------------------------------------------------------------------------------
# Facts about a dataset, as class attributes of its reader

# The seven ImageNet templates CLIP's authors selected for prompt ensembling (CoOp's
# IMAGENET_TEMPLATES_SELECT): ZeroshotCLIP2's ensemble, and Tip-Adapter's class texts on ImageNet.
ENSEMBLE_TEMPLATES = [
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
]


class DatasetFacts:
    """A base of every reader: the defaults of the facts a reader states as class attributes where
    its dataset differs."""

    template = "a photo of a {}."  # the hand-made prompt of zero-shot CLIP (CoOp/CoCoOp's table)
    imagenet_classes = False  # its classes are ImageNet's (ImageNet and its variants), on which CLIP's
    # ensemble templates were selected (Tip-Adapter's class texts there)
    display_name = ""  # its name in the paper's tables ("": the reader's name)
    table_order = None  # its place in the tables (CoOp's order); None: after those that have one, by name
    shifted_from = ""  # the dataset whose classes it shows under a domain shift (Table 3), if any

    @classmethod
    def ensemble_templates(cls):
        """ZeroshotCLIP2's templates: the dataset's own, then CLIP's seven selected ImageNet templates."""
        return [cls.template, *ENSEMBLE_TEMPLATES]


def dataset_facts(name):
    """The reader registered as DATASET.NAME ``name`` (its facts are class attributes), or the defaults
    for a dataset that has no reader here (a CoOp checkout's own)."""
    return load_all().get(name, DatasetFacts)


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
