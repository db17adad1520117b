"""A user's own images: ``<DATASET.ROOT>/<DATASET.IMAGEFOLDER.DIR>/<class name>/*.{jpg,jpeg,png}``.

Folder names become class names with underscores as spaces ("sea_lion" -> "sea lion"). The split is
``SPLIT_FILE`` if given, else 50% train, 20% val, 30% test per class, drawn once with a fixed seed and
kept in ``split_imagefolder.json`` in the folder (or in the user cache if the folder is read-only).
"""
import os.path as osp

from llu.engine import CN, DatasetBase, config_extension
from llu.utils import UserError, listdir_nohidden

from . import DatasetFacts, dataset
from .coop_common import dataset_folder
from .splits import (dataset_file_path, fewshot_and_subsample, read_and_split_data, read_split, refuse_twin_classes,
                     require_dir, require_file, save_split)

SPLIT_NAME = "split_imagefolder.json"


@config_extension
def add_imagefolder_config(cfg):
    cfg.DATASET.IMAGEFOLDER = CN()
    cfg.DATASET.IMAGEFOLDER.DIR = "my_images"  # the folder under DATASET.ROOT with one sub-folder per class
    cfg.DATASET.IMAGEFOLDER.NAME = ""  # the dataset's name in results and tables ("": the folder's name)
    # Optional split in CoOp's split_zhou JSON format, relative to DIR; "": a 50/20/30 split per class.
    cfg.DATASET.IMAGEFOLDER.SPLIT_FILE = ""


@dataset
class ImageFolder(DatasetFacts, DatasetBase):

    def __init__(self, cfg):
        self.dataset_dir = dataset_folder(cfg, cfg.DATASET.IMAGEFOLDER.DIR)
        layout = (f"DATASET.ROOT/{cfg.DATASET.IMAGEFOLDER.DIR}/<class name>/*.jpg|jpeg|png "
                  f"(DATASET.IMAGEFOLDER.DIR names the folder)")
        require_dir(self.dataset_dir, "image folder", layout)
        if cfg.DATASET.IMAGEFOLDER.SPLIT_FILE:
            split_path = osp.join(self.dataset_dir, cfg.DATASET.IMAGEFOLDER.SPLIT_FILE)
            require_file(split_path, "split file (DATASET.IMAGEFOLDER.SPLIT_FILE)",
                         '{"train"|"val"|"test": [[path relative to the image folder, label, class name], ...]}')
        else:
            split_path = dataset_file_path(self.dataset_dir, "", SPLIT_NAME)
        if osp.isfile(split_path):
            train, val, test = read_split(split_path, self.dataset_dir)
        else:
            folders = [f for f in listdir_nohidden(self.dataset_dir)
                       if f != "split_fewshot" and osp.isdir(osp.join(self.dataset_dir, f))]
            if not folders:
                raise UserError(f"{self.dataset_dir}: no class folders found; expected {layout}")
            new_cnames = {f: f.replace("_", " ") for f in folders}
            refuse_twin_classes(sorted(new_cnames.items()), self.dataset_dir, "class folders")
            train, val, test = read_and_split_data(self.dataset_dir, new_cnames=new_cnames)
            save_split(train, val, test, split_path, self.dataset_dir)
        train, val, test = fewshot_and_subsample(self, cfg, self.dataset_dir, train, val, test)
        super().__init__(train_x=train, val=val, test=test)
