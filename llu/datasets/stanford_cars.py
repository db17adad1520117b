"""Stanford Cars (CoOp layout): ``stanford_cars/{cars_train,cars_test}/`` and ``split_zhou_StanfordCars.json``.

Without the split file it is rebuilt as CoOp does from the devkit's .mat annotations (20% of each
class's training images become val); class names put the year first ("2012 Tesla Model S Sedan").
"""
import os.path as osp

import numpy as np

from llu.engine import Datum

from . import dataset
from .coop_common import SplitFileDataset
from .splits import train_val_test


def year_first(name):
    words = name.split(" ")
    return " ".join(words[-1:] + words[:-1])


@dataset
class StanfordCars(SplitFileDataset):
    dataset_dir = "stanford_cars"  # also the image folder: the split's paths are relative to it
    layout_contents = "cars_train/, cars_test/ and split_zhou_StanfordCars.json"
    rebuild_from = ("devkit/cars_train_annos.mat", "cars_test_annos_withlabels.mat", "devkit/cars_meta.mat")
    table_order = 3

    def make_split(self):
        from scipy.io import loadmat
        meta = loadmat(osp.join(self.dataset_dir, "devkit/cars_meta.mat"), squeeze_me=True)
        classnames = [year_first(str(name)) for name in np.atleast_1d(meta["class_names"])]

        def read(image_dir, anno_file):
            annos = np.atleast_1d(loadmat(osp.join(self.dataset_dir, anno_file), squeeze_me=True)["annotations"])
            labels = [int(label) - 1 for label in annos["class"]]
            return [Datum(impath=osp.join(self.dataset_dir, image_dir, str(fname)), label=label,
                          classname=classnames[label]) for fname, label in zip(annos["fname"], labels)]

        return train_val_test(read("cars_train", "devkit/cars_train_annos.mat"),
                              read("cars_test", "cars_test_annos_withlabels.mat"))
