"""Describable Textures (CoOp layout): ``dtd/images/<texture>/``, ``dtd/split_zhou_DescribableTextures.json``."""

from . import dataset
from .coop_common import SplitFileDataset


@dataset
class DescribableTextures(SplitFileDataset):
    dataset_dir = "dtd"
    image_dir = "images"
    template = "{} texture."
    display_name = "DTD"
    table_order = 8
