"""SUN397 (CoOp layout): ``sun397/SUN397/<letter>/<scene>[/<variant>]/``, ``sun397/split_zhou_SUN397.json``.

Without the split file it is rebuilt as CoOp does from ``ClassName.txt`` and the first official
partition (``Training_01.txt``, ``Testing_01.txt``; 20% of each class's training images become val).
Class names drop the letter and put the variant first: "/a/apartment_building/outdoor" ->
"outdoor apartment_building".
"""
import os.path as osp

from llu.engine import Datum
from llu.utils import UserError

from . import dataset
from .coop_common import SplitFileDataset, read_lines
from .splits import train_val_test


def sun_classname(folder):
    return " ".join(folder.split("/")[1:][::-1])


@dataset
class SUN397(SplitFileDataset):
    dataset_dir = "sun397"
    image_dir = "SUN397"
    rebuild_from = ("ClassName.txt", "Training_01.txt", "Testing_01.txt")
    table_order = 7

    def make_split(self):
        folders = [line.lstrip("/") for line in read_lines(osp.join(self.dataset_dir, "ClassName.txt"),
                                                            "SUN397 class list", self.layout())]
        cname2lab = {folder: label for label, folder in enumerate(folders)}
        return train_val_test(self.read_data(cname2lab, "Training_01.txt"),
                              self.read_data(cname2lab, "Testing_01.txt"))

    def read_data(self, cname2lab, list_file):
        path = osp.join(self.dataset_dir, list_file)
        items = []
        for line in read_lines(path, "SUN397 partition", self.layout()):
            imname = line.lstrip("/")
            folder = osp.dirname(imname)
            if folder not in cname2lab:
                raise UserError(f"{path}: class folder {folder!r} is not listed in ClassName.txt")
            items.append(Datum(impath=osp.join(self.image_dir, imname), label=cname2lab[folder],
                               classname=sun_classname(folder)))
        return items
