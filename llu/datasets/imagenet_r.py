"""ImageNet-R (CoOp layout): ``imagenet-rendition/imagenet-r/<wnid>/``, 200 of ImageNet's classes,
labelled 0..199 in wnid order. Test only."""

from . import dataset
from .coop_common import ImageNetVariant


@dataset
class ImageNetR(ImageNetVariant):
    dataset_dir = "imagenet-rendition"
    image_dir = "imagenet-r"
    display_name = "ImageNet-R"
    table_order = 14
