"""ImageNet-A (CoOp layout): ``imagenet-adversarial/imagenet-a/<wnid>/``, 200 of ImageNet's classes,
labelled 0..199 in wnid order. Test only."""

from . import dataset
from .coop_common import ImageNetVariant


@dataset
class ImageNetA(ImageNetVariant):
    dataset_dir = "imagenet-adversarial"
    image_dir = "imagenet-a"
    display_name = "ImageNet-A"
    table_order = 13
