"""ImageNet (CoOp layout): ``imagenet/images/{train,val}/<wnid>/`` and ``imagenet/classnames.txt``.

As in CoOp the official val set is the test set, and also the val set (so the last model is the one
evaluated). The image lists are re-read from the folders on every run (no ``preprocessed.pkl``).
"""
import os.path as osp

from llu.engine import DatasetBase
from llu.utils import UserError, listdir_nohidden

from . import ENSEMBLE_TEMPLATES, DatasetFacts, dataset
from .coop_common import class_name_of, dataset_folder, images_of, read_imagenet_classnames
from .splits import fewshot_and_subsample, require_dir

LAYOUT = "DATASET.ROOT/imagenet/ holding images/train/<wnid>/, images/val/<wnid>/ and classnames.txt " \
         "(CoOp's DATASETS.md layout)"


@dataset
class ImageNet(DatasetFacts, DatasetBase):
    dataset_dir = "imagenet"
    imagenet_classes = True
    table_order = 0

    @classmethod
    def ensemble_templates(cls):
        return list(ENSEMBLE_TEMPLATES)  # as upstream: the seven alone on ImageNet, where they were chosen

    def __init__(self, cfg):
        self.dataset_dir = dataset_folder(cfg, self.dataset_dir)
        self.image_dir = osp.join(self.dataset_dir, "images")
        require_dir(self.image_dir, "ImageNet images", LAYOUT)
        classnames_path = osp.join(self.dataset_dir, "classnames.txt")
        classnames = read_imagenet_classnames(classnames_path, LAYOUT)
        train_dir = osp.join(self.image_dir, "train")
        require_dir(train_dir, "ImageNet training images", LAYOUT)
        wnids = [f for f in listdir_nohidden(train_dir, sort=True) if osp.isdir(osp.join(train_dir, f))]
        labels = {wnid: label for label, wnid in enumerate(wnids)}  # sorted wnids, as CoOp labels them
        train = self.read_data(train_dir, labels, classnames, classnames_path)
        test = self.read_data(osp.join(self.image_dir, "val"), labels, classnames, classnames_path)
        train, val, test = fewshot_and_subsample(self, cfg, self.dataset_dir, train, None, test)
        super().__init__(train_x=train, val=val, test=test)

    @staticmethod
    def read_data(split_dir, labels, classnames, classnames_path):
        require_dir(split_dir, "ImageNet images", LAYOUT)
        items = []
        for wnid in listdir_nohidden(split_dir, sort=True):
            folder = osp.join(split_dir, wnid)
            if not osp.isdir(folder):
                continue
            if wnid not in labels:
                raise UserError(f"{folder}: class folder '{wnid}' has no training folder in images/train/")
            items += images_of(folder, labels[wnid], class_name_of(classnames, wnid, folder, classnames_path))
        return items
