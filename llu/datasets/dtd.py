"""Describable Textures (CoOp layout): ``dtd/images/<texture>/``, ``dtd/split_zhou_DescribableTextures.json``."""
from llu.engine import DATASET_REGISTRY

from .coop_common import SplitFileDataset


@DATASET_REGISTRY.register()
class DescribableTextures(SplitFileDataset):
    dataset_dir = "dtd"
    image_dir = "images"
    split_file = "split_zhou_DescribableTextures.json"
