"""What the CoOp dataset readers share: the dataset folder, ImageNet's class names, the
"split_zhou file + image folder" reader that most of them are, and the test-only ImageNet variants.

Folder layouts are CoOp's (its DATASETS.md); only the cached few-shot splits differ (JSON with
relative paths, see ``splits.py``).
"""
import os.path as osp
from collections import OrderedDict

from llu.engine import DatasetBase, Datum
from llu.utils import UserError, listdir_nohidden

from . import DatasetFacts

from .splits import (dataset_file_path, fewshot_and_subsample, list_images, read_and_split_data, read_split,
                     require_dir, require_file, save_split)


def dataset_folder(cfg, name):
    """``<DATASET.ROOT>/<name>`` as an absolute path."""
    return osp.join(osp.abspath(osp.expanduser(cfg.DATASET.ROOT)), name)


def read_lines(path, what, layout):
    """The non-empty, stripped lines of a text file that must exist."""
    require_file(path, what, layout)
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


def rename_classes(items, new_cnames):
    """The same items with class names mapped through ``new_cnames`` (names not in it are kept)."""
    return [Datum(impath=item.impath, label=item.label, domain=item.domain,
                  classname=new_cnames.get(item.classname, item.classname)) for item in items]


def images_of(folder, label, classname):
    """One ``Datum`` per image in ``folder`` (sorted by file name)."""
    return [Datum(impath=osp.join(folder, name), label=label, classname=classname) for name in list_images(folder)]


class SplitFileDataset(DatasetFacts, DatasetBase):
    """A CoOp reader: images under ``<ROOT>/<dataset_dir>/<image_dir>/``, and the train/val/test split in
    ``<ROOT>/<dataset_dir>/<split_file>`` (CoOp's split_zhou JSON, paths relative to the image folder;
    CoOp names it after the reader class: ``split_zhou_<class name>.json``).

    Without the split file, ``make_split`` rebuilds a split from the files named in ``rebuild_from``
    (default: per-class image folders, 50/20/30) and saves it beside the images, or in the user cache
    if that folder is read-only. ``new_cnames`` holds CoOp's class-name fixes.
    """

    dataset_dir = ""
    image_dir = ""
    split_file = ""  # set for each reader by __init_subclass__
    rebuild_from = ()  # files (relative to dataset_dir) that make_split needs
    ignored_folders = ()  # class folders that are not classes
    new_cnames = {}
    layout_contents = ""  # what the dataset folder holds, for error messages (default: image_dir and split_file)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.split_file = f"split_zhou_{cls.__name__}.json"

    def __init__(self, cfg):
        self.dataset_dir = dataset_folder(cfg, self.dataset_dir)
        self.image_dir = osp.join(self.dataset_dir, self.image_dir) if self.image_dir else self.dataset_dir
        require_dir(self.dataset_dir, f"{type(self).__name__} folder", self.layout())
        require_dir(self.image_dir, f"{type(self).__name__} images", self.layout())
        split_path = dataset_file_path(self.dataset_dir, "", self.split_file)
        if osp.isfile(split_path):
            train, val, test = read_split(split_path, self.image_dir)
        else:
            missing = [f for f in self.rebuild_from if not osp.exists(osp.join(self.dataset_dir, f))]
            if missing:
                raise UserError(f"{osp.join(self.dataset_dir, self.split_file)}: split file not found, and "
                                f"{', '.join(missing)} needed to rebuild it are missing too; "
                                f"expected {self.layout()}")
            print(f"Warning: {self.split_file} not found; building a new split (results will not be "
                  f"comparable with CoOp's published split)")
            train, val, test = self.make_split()
            save_split(train, val, test, split_path, self.image_dir)
        if self.new_cnames:
            train, val, test = (rename_classes(items, self.new_cnames) for items in (train, val, test))
        train, val, test = fewshot_and_subsample(self, cfg, self.dataset_dir, train, val, test)
        super().__init__(train_x=train, val=val, test=test)

    @classmethod
    def layout(cls):
        contents = cls.layout_contents or f"{cls.image_dir}/ and {cls.split_file}"
        return f"DATASET.ROOT/{cls.dataset_dir}/ holding {contents} (CoOp's DATASETS.md layout)"

    def make_split(self):
        return read_and_split_data(self.image_dir, ignored=("split_fewshot", *self.ignored_folders),
                                   new_cnames=self.new_cnames)


def read_imagenet_classnames(path, layout):
    """ImageNet's ``classnames.txt``: one "wnid class name" per line -> {wnid: class name}, in file order."""
    classnames = OrderedDict()
    for line in read_lines(path, "ImageNet class names (classnames.txt)", layout):
        wnid, _, name = line.partition(" ")
        classnames[wnid] = name.strip()
    return classnames


def class_name_of(classnames, wnid, folder, classnames_path):
    if wnid not in classnames:
        raise UserError(f"{folder}: class folder '{wnid}' is not listed in {classnames_path}")
    return classnames[wnid]


class ImageNetVariant(DatasetFacts, DatasetBase):
    """A test-only ImageNet variant: ``<ROOT>/<dataset_dir>/<image_dir>/<wnid>/*`` read with ImageNet's
    ``classnames.txt``, which CoOp copies into the variant's folder (``<ROOT>/imagenet/classnames.txt``
    is used when there is none). ``train_x`` is the test set, as in CoOp; there is no few-shot sampling.
    """

    dataset_dir = ""
    image_dir = ""
    imagenet_classes = True
    shifted_from = "ImageNet"

    def __init__(self, cfg):
        self.dataset_dir = dataset_folder(cfg, self.dataset_dir)
        self.image_dir = osp.join(self.dataset_dir, self.image_dir)
        layout = (f"DATASET.ROOT/{osp.basename(self.dataset_dir)}/ holding {osp.basename(self.image_dir)}/ and "
                  f"classnames.txt (copied from DATASET.ROOT/imagenet/; CoOp's DATASETS.md layout)")
        require_dir(self.image_dir, f"{type(self).__name__} images", layout)
        classnames_path = osp.join(self.dataset_dir, "classnames.txt")
        imagenet_classnames = osp.join(osp.dirname(self.dataset_dir), "imagenet", "classnames.txt")
        if not osp.isfile(classnames_path) and osp.isfile(imagenet_classnames):
            classnames_path = imagenet_classnames
        classnames = read_imagenet_classnames(classnames_path, layout)
        test = []
        for label, (folder, classname) in enumerate(self.class_folders(classnames, classnames_path, layout)):
            test += images_of(folder, label, classname)
        (test,) = DatasetBase.subsample_classes(test, subsample=cfg.DATASET.SUBSAMPLE_CLASSES)
        super().__init__(train_x=test, test=test)

    def class_folders(self, classnames, classnames_path, layout):
        """[(folder, class name)] in label order: the wnid folders, sorted."""
        folders = [osp.join(self.image_dir, f) for f in listdir_nohidden(self.image_dir, sort=True)]
        return [(folder, class_name_of(classnames, osp.basename(folder), folder, classnames_path))
                for folder in folders if osp.isdir(folder)]
