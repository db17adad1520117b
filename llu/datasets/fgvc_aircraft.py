"""FGVC-Aircraft (CoOp layout): ``fgvc_aircraft/images/``, ``variants.txt`` (one class per line) and
``images_variant_{train,val,test}.txt`` ("<image id> <variant>" per line), from the dataset's ``data`` folder.
"""
import os.path as osp

from llu.engine import DatasetBase, Datum
from llu.utils import UserError

from . import DatasetFacts, dataset
from .coop_common import dataset_folder, read_lines
from .splits import fewshot_and_subsample, require_dir

LAYOUT = ("DATASET.ROOT/fgvc_aircraft/ holding images/, variants.txt and images_variant_{train,val,test}.txt "
          "(CoOp's DATASETS.md layout)")


@dataset
class FGVCAircraft(DatasetFacts, DatasetBase):
    dataset_dir = "fgvc_aircraft"
    template = "a photo of a {}, a type of aircraft."
    table_order = 6

    def __init__(self, cfg):
        self.dataset_dir = dataset_folder(cfg, self.dataset_dir)
        self.image_dir = osp.join(self.dataset_dir, "images")
        require_dir(self.image_dir, "FGVC-Aircraft images", LAYOUT)
        classnames = read_lines(osp.join(self.dataset_dir, "variants.txt"), "FGVC-Aircraft variants", LAYOUT)
        cname2lab = {name: label for label, name in enumerate(classnames)}
        train, val, test = (self.read_data(cname2lab, f"images_variant_{split}.txt")
                            for split in ("train", "val", "test"))
        train, val, test = fewshot_and_subsample(self, cfg, self.dataset_dir, train, val, test)
        super().__init__(train_x=train, val=val, test=test)

    def read_data(self, cname2lab, split_file):
        path = osp.join(self.dataset_dir, split_file)
        items = []
        for line in read_lines(path, "FGVC-Aircraft split", LAYOUT):
            image_id, _, classname = line.partition(" ")
            if classname not in cname2lab:
                raise UserError(f"{path}: variant {classname!r} is not listed in variants.txt")
            items.append(Datum(impath=osp.join(self.image_dir, image_id + ".jpg"), label=cname2lab[classname],
                               classname=classname))
        return items
