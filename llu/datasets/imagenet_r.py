"""ImageNet-R (CoOp layout): ``imagenet-rendition/imagenet-r/<wnid>/``, 200 of ImageNet's classes,
labelled 0..199 in wnid order. Test only."""
from llu.engine import DATASET_REGISTRY

from .coop_common import ImageNetVariant


@DATASET_REGISTRY.register()
class ImageNetR(ImageNetVariant):
    dataset_dir = "imagenet-rendition"
    image_dir = "imagenet-r"
