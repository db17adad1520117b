"""Food-101 (CoOp layout): ``food-101/images/<dish>/``, ``food-101/split_zhou_Food101.json``."""

from . import dataset
from .coop_common import SplitFileDataset


@dataset
class Food101(SplitFileDataset):
    dataset_dir = "food-101"
    image_dir = "images"
    template = "a photo of {}, a type of food."
    table_order = 5
