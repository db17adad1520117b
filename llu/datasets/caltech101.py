"""Caltech-101 (CoOp layout): ``caltech-101/101_ObjectCategories/``, ``caltech-101/split_zhou_Caltech101.json``.

CoOp drops the background class and the duplicate "Faces_easy", and renames four classes.
"""

from . import dataset
from .coop_common import SplitFileDataset


@dataset
class Caltech101(SplitFileDataset):
    dataset_dir = "caltech-101"
    image_dir = "101_ObjectCategories"
    ignored_folders = ("BACKGROUND_Google", "Faces_easy")
    table_order = 1
    new_cnames = {"airplanes": "airplane", "Faces": "face", "Leopards": "leopard", "Motorbikes": "motorbike"}
