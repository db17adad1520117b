"""ImageNetV2 matched-frequency (CoOp layout): ``imagenetv2/imagenetv2-matched-frequency-format-val/<label>/``,
class folders named by label index 0..999 in ``classnames.txt`` order. Test only."""
import os.path as osp


from . import dataset
from .coop_common import ImageNetVariant
from .splits import require_dir


@dataset
class ImageNetV2(ImageNetVariant):
    dataset_dir = "imagenetv2"
    image_dir = "imagenetv2-matched-frequency-format-val"
    table_order = 11

    def class_folders(self, classnames, classnames_path, layout):
        folders = [osp.join(self.image_dir, str(label)) for label in range(len(classnames))]
        for folder in folders:
            require_dir(folder, f"ImageNetV2 class folder (one per line of {classnames_path})", layout)
        return list(zip(folders, classnames.values()))
