"""Oxford-IIIT Pets (CoOp layout): ``oxford_pets/images/``, ``oxford_pets/split_zhou_OxfordPets.json``.

Without the split file it is rebuilt as CoOp does from ``annotations/trainval.txt`` and ``test.txt``
(20% of each class's trainval images become val); the breed, lower-cased, is the class name.
"""
import os.path as osp

from llu.engine import Datum
from llu.utils import UserError

from . import dataset
from .coop_common import SplitFileDataset, read_lines
from .splits import train_val_test


@dataset
class OxfordPets(SplitFileDataset):
    dataset_dir = "oxford_pets"
    image_dir = "images"
    rebuild_from = ("annotations/trainval.txt", "annotations/test.txt")
    template = "a photo of a {}, a type of pet."
    table_order = 2

    def make_split(self):
        return train_val_test(self.read_annotations("annotations/trainval.txt"),
                              self.read_annotations("annotations/test.txt"))

    def read_annotations(self, relative_path):
        """Lines "<image name> <class id, 1-based> <species> <breed id>"; the breed is the name minus "_<n>"."""
        path = osp.join(self.dataset_dir, relative_path)
        items = []
        for line in read_lines(path, "Oxford Pets annotations", self.layout()):
            if line.startswith("#"):
                continue
            fields = line.split()
            if len(fields) < 2 or not fields[1].isdigit():
                raise UserError(f"{path}: expected '<image name> <class id> ...' per line, got {line!r}")
            breed = fields[0].rsplit("_", 1)[0].lower()
            items.append(Datum(impath=osp.join(self.image_dir, fields[0] + ".jpg"), label=int(fields[1]) - 1,
                               classname=breed))
        return items
