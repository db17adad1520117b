"""CLIP-style image transforms selected by ``cfg.INPUT.TRANSFORMS`` (Dassl's names)."""
from torchvision.transforms import (
    CenterCrop, Compose, InterpolationMode, Normalize, RandomHorizontalFlip, RandomResizedCrop, Resize, ToTensor,
)

from llu.utils import UserError

from .images import to_rgb

INTERPOLATION_MODES = {
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "nearest": InterpolationMode.NEAREST,
}
AVAILABLE_TRANSFORMS = ("random_resized_crop", "random_flip", "center_crop", "normalize")


def _to_rgb(image):
    """8-bit RGB (``images.to_rgb``: 16-bit and float images scaled, alpha over white); an image that
    already is 8-bit RGB passes unchanged."""
    return to_rgb(image)


def build_transform(cfg, is_train=True, choices=None):
    """Train: random resized crop + flip; test: resize the short side + center crop (or, with
    INPUT.RESIZE_MODE "squash", resize to the size); both normalise."""
    choices = list(cfg.INPUT.TRANSFORMS if choices is None else choices)
    for name in choices:
        if name not in AVAILABLE_TRANSFORMS:
            raise UserError(f"INPUT.TRANSFORMS: unknown transform {name!r} (available: {', '.join(AVAILABLE_TRANSFORMS)})")
    if cfg.INPUT.INTERPOLATION not in INTERPOLATION_MODES:
        raise UserError(f"INPUT.INTERPOLATION must be one of {', '.join(INTERPOLATION_MODES)}, "
                        f"got {cfg.INPUT.INTERPOLATION!r}")
    interp = INTERPOLATION_MODES[cfg.INPUT.INTERPOLATION]
    size = tuple(cfg.INPUT.SIZE)

    steps = [_to_rgb]
    if is_train and "random_resized_crop" in choices:
        steps.append(RandomResizedCrop(size, scale=tuple(cfg.INPUT.RRCROP_SCALE), interpolation=interp))
    elif cfg.INPUT.RESIZE_MODE == "squash":  # some OpenCLIP models: the whole image, resized
        steps.append(Resize(size, interpolation=interp))
    else:
        steps += [Resize(max(size), interpolation=interp), CenterCrop(size)]
    if is_train and "random_flip" in choices:
        steps.append(RandomHorizontalFlip())
    steps.append(ToTensor())
    if "normalize" in choices:
        steps.append(Normalize(mean=cfg.INPUT.PIXEL_MEAN, std=cfg.INPUT.PIXEL_STD))
    return Compose(steps)
