"""The four test-only ImageNet variants of CoOp's domain-generalisation table (CoOp layout), each read
with ImageNet's class names (``ImageNetVariant``); there is no training split and no few-shot sampling.

- ImageNetV2 matched-frequency: ``imagenetv2/imagenetv2-matched-frequency-format-val/<label>/``, class
  folders named by label index 0..999 in ``classnames.txt`` order.
- ImageNet-Sketch: ``imagenet-sketch/images/<wnid>/``.
- ImageNet-A: ``imagenet-adversarial/imagenet-a/<wnid>/``, 200 of ImageNet's classes, labelled 0..199 in
  wnid order.
- ImageNet-R: ``imagenet-rendition/imagenet-r/<wnid>/``, 200 of ImageNet's classes, labelled likewise.
"""
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


@dataset
class ImageNetSketch(ImageNetVariant):
    dataset_dir, image_dir = "imagenet-sketch", "images"
    display_name = "ImageNet-Sketch"
    table_order = 12


@dataset
class ImageNetA(ImageNetVariant):
    dataset_dir, image_dir = "imagenet-adversarial", "imagenet-a"
    display_name = "ImageNet-A"
    table_order = 13


@dataset
class ImageNetR(ImageNetVariant):
    dataset_dir, image_dir = "imagenet-rendition", "imagenet-r"
    display_name = "ImageNet-R"
    table_order = 14
