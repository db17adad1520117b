"""Oxford Flowers-102 (CoOp layout): ``oxford_flowers/jpg/``, ``oxford_flowers/split_zhou_OxfordFlowers.json``.

Without the split file it is rebuilt as CoOp does from ``imagelabels.mat`` and ``cat_to_name.json``:
50% train, 20% val, 30% test per class.
"""
import os.path as osp
from collections import defaultdict

import numpy as np

from llu.utils import UserError, read_json

from . import dataset
from .coop_common import SplitFileDataset
from .splits import split_by_proportions


@dataset
class OxfordFlowers(SplitFileDataset):
    dataset_dir = "oxford_flowers"
    image_dir = "jpg"
    rebuild_from = ("imagelabels.mat", "cat_to_name.json")
    template = "a photo of a {}, a type of flower."
    display_name = "Flowers102"
    table_order = 4

    def make_split(self):
        from scipy.io import loadmat
        labels = np.atleast_1d(loadmat(osp.join(self.dataset_dir, "imagelabels.mat"), squeeze_me=True)["labels"])
        names_path = osp.join(self.dataset_dir, "cat_to_name.json")
        names = read_json(names_path)
        images = defaultdict(list)  # 1-based class id -> image paths; image i is image_<i+1:05d>.jpg
        for i, label in enumerate(labels):
            images[int(label)].append(osp.join(self.image_dir, f"image_{i + 1:05d}.jpg"))
        ids = sorted(images)
        if ids != list(range(1, len(ids) + 1)):
            raise UserError(f"{osp.join(self.dataset_dir, 'imagelabels.mat')}: class ids must be 1..N, got {ids}")
        missing = [str(i) for i in ids if str(i) not in names]
        if missing:
            raise UserError(f"{names_path}: no name for class id(s) {', '.join(missing)}")
        return split_by_proportions([(names[str(i)], images[i], self.image_dir) for i in ids])
