"""The built-in world's datasets as CoOp readers: generated on first use, then read like any other.

They are read from ``<DATASET.ROOT>/shapes``, ``<DATASET.ROOT>/patterns``, ...; an empty ``DATASET.ROOT``
is the world's home (``$LLU_CACHE/world``), where a dataset is generated on first use; any other root
must hold the world already (``python -m llu.world.generate --root DIR``). After ``locate_dataset`` the
reading is CoOp's: the split file, then the few-shot split and the base/new classes
(``fewshot_and_subsample``).
"""
import os.path as osp

from llu.engine import DatasetBase

from llu.world.generate import DATASETS, locate_dataset, split_file_name

from . import DatasetFacts, dataset
from .splits import fewshot_and_subsample, read_split


class WorldDataset(DatasetFacts, DatasetBase):
    """Reader for ``DATASETS[type(self).__name__]``."""

    image_dir = "images"

    def __init__(self, cfg):
        name = type(self).__name__
        self.dataset_dir = locate_dataset(cfg.DATASET.ROOT, name)
        self.image_dir = osp.join(self.dataset_dir, self.image_dir)
        train, val, test = read_split(osp.join(self.dataset_dir, split_file_name(name)), self.image_dir)
        train, val, test = fewshot_and_subsample(self, cfg, self.dataset_dir, train, val, test)
        super().__init__(train_x=train, val=val, test=test)


@dataset
class Shapes(WorldDataset):
    """64 classes, "red circle" ... "pink heart", in the downstream domain: the world's ImageNet."""
    dataset_dir = DATASETS["Shapes"].folder
    table_order = 15


@dataset
class ShapesSketch(WorldDataset):
    """Shapes' classes drawn as coloured outlines (domain generalisation target)."""
    dataset_dir = DATASETS["ShapesSketch"].folder
    table_order = 16
    shifted_from = "Shapes"


@dataset
class ShapesNoisy(WorldDataset):
    """Shapes' classes under heavy noise, blur and occlusion (domain generalisation target)."""
    dataset_dir = DATASETS["ShapesNoisy"].folder
    table_order = 17
    shifted_from = "Shapes"


@dataset
class Patterns(WorldDataset):
    """48 classes, "red stripes" ... "pink zigzag", in the downstream domain (cross-dataset target)."""
    dataset_dir = DATASETS["Patterns"].folder
    table_order = 18
