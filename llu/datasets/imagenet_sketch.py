"""ImageNet-Sketch (CoOp layout): ``imagenet-sketch/images/<wnid>/``. Test only."""
from llu.engine import DATASET_REGISTRY

from .coop_common import ImageNetVariant


@DATASET_REGISTRY.register()
class ImageNetSketch(ImageNetVariant):
    dataset_dir = "imagenet-sketch"
    image_dir = "images"
