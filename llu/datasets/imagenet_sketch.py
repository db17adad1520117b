"""ImageNet-Sketch (CoOp layout): ``imagenet-sketch/images/<wnid>/``. Test only."""

from . import dataset
from .coop_common import ImageNetVariant


@dataset
class ImageNetSketch(ImageNetVariant):
    dataset_dir = "imagenet-sketch"
    image_dir = "images"
    display_name = "ImageNet-Sketch"
    table_order = 12
