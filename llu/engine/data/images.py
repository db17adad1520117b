"""Reading an image file as the 8-bit RGB picture it shows, whatever mode and bit depth PIL opens it in.

8-bit RGB and greyscale files (JPEG, PNG) give exactly PIL's ``convert("RGB")``, as they always did.
Other modes are scaled into 0..255, never clipped (PIL's ``convert("RGB")`` clips a 16-bit image's
values at 255, leaving a 16-bit greyscale PNG almost white):

- ``I;16`` (16-bit greyscale, any byte order): value / 257, rounded (65535 -> 255; 257 k -> k);
- ``I`` (32-bit integers: TIFF, PNM) and ``F`` (32-bit floats: TIFF): from the range the file declares,
  linearly to 0..255, values outside it clipped. ``I``: TIFF's BitsPerSample and SampleFormat (16
  unsigned bits: 0..65535; 32 signed: -2^31..2^31-1), else 0..65535 (PIL's 16-bit PNM/TIFF data).
  ``F``: TIFF's SMinSampleValue / SMaxSampleValue, else 0.0..1.0 (the float-image convention); NaN
  reads as the range's low end;
- ``1``, ``L``, ``P`` (without transparency), ``CMYK``, ``YCbCr``: PIL's conversion, which scales
  (``1``: 0 / 255; CMYK: R = (255 - K)(255 - C) / 255);
- with alpha (``RGBA``, ``LA``, ``PA``, ``P`` or ``L``/``RGB`` with a transparent colour): composited
  over a white background, as transformers' CLIP image processor does (``convert_to_rgb``): each
  channel is (c a + 255 (255 - a)) / 255, rounded. A fully opaque image keeps its colours exactly.

A file with more pixels than ``LLU_MAX_IMAGE_PIXELS`` (default 89,478,485, PIL's own limit, about
9459 x 9459; ``0`` lifts it) is refused from its header, before anything is decoded: a small
compressed file can declare a picture that fills the memory (a decompression bomb).
"""
import os
import os.path as osp
import warnings

import numpy as np
from PIL import Image

from llu.utils import UserError

MAX_PIXELS_VARIABLE = "LLU_MAX_IMAGE_PIXELS"
DEFAULT_MAX_PIXELS = 89_478_485  # PIL's Image.MAX_IMAGE_PIXELS: 1024 ** 3 // 4 // 3 (a 3-channel GiB / 4)
ALPHA_MODES = ("RGBA", "LA", "PA", "La", "RGBa")
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
BACKGROUND = 255  # white, as transformers' convert_to_rgb


def max_image_pixels():
    """The largest image read, in pixels (``$LLU_MAX_IMAGE_PIXELS``; 0: no limit)."""
    value = os.environ.get(MAX_PIXELS_VARIABLE, "").strip()
    if not value:
        return DEFAULT_MAX_PIXELS
    try:
        limit = int(value)
    except ValueError:
        limit = -1
    if limit < 0:
        raise UserError(f"{MAX_PIXELS_VARIABLE}={value}: expected a number of pixels (0: no limit)")
    return limit


def read_image(path):
    """The image file ``path`` as an 8-bit RGB PIL image (the module's docstring says how each mode is
    converted); one line naming the file if it is missing, not an image, damaged or too large."""
    if not osp.isfile(path):
        raise UserError(f"{path}: image not found (is DATASET.ROOT the folder that holds the dataset's folder?)")
    limit = max_image_pixels()
    too_large = (f"{path}: refused as a possible decompression bomb: its header declares more than {limit:,} "
                 f"pixels (set {MAX_PIXELS_VARIABLE} to a larger number, or 0, to read it)")
    previous = Image.MAX_IMAGE_PIXELS
    try:
        # PIL checks the declared size when it opens a file; ours is the limit it checks, as an error.
        Image.MAX_IMAGE_PIXELS = limit or None
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if limit and width * height > limit:  # frames PIL does not check (a TIFF's, an ICO's)
                    raise UserError(too_large)
                image.load()
                return to_rgb(image, path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UserError(too_large) from None
    except UserError:
        raise
    except Exception as e:  # PIL raises many types for a damaged file (OSError, SyntaxError, ValueError, ...)
        message = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise UserError(f"{path}: cannot be read as an image ({message})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def to_rgb(image, path=""):
    """An 8-bit RGB image of the PIL ``image`` (see the module's docstring)."""
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image.convert("RGB")  # today's bits exactly (a copy, as PIL's convert gives)
    if mode in SIXTEEN_BIT_MODES:
        values = np.asarray(image).astype(np.float64)
        return _grey(np.rint(values / 257.0))
    if mode in ("I", "F"):
        low, high = declared_range(image)
        values = np.nan_to_num(np.asarray(image).astype(np.float64), nan=low, posinf=high, neginf=low)
        scaled = (np.clip(values, low, high) - low) * (255.0 / (high - low))
        return _grey(np.rint(scaled))
    if mode in ALPHA_MODES or "transparency" in image.info:
        rgba = np.asarray(image.convert("RGBA")).astype(np.uint32)
        alpha = rgba[..., 3:]
        composed = (rgba[..., :3] * alpha + BACKGROUND * (255 - alpha) + 127) // 255
        return Image.fromarray(composed.astype(np.uint8), "RGB")
    try:
        return image.convert("RGB")  # 1, L, P, CMYK, YCbCr, RGBX, HSV: PIL's conversions scale
    except ValueError as e:
        raise UserError(f"{path or 'an image'}: its mode {mode} cannot be converted to RGB ({e})") from None


def _grey(levels):
    """An RGB image of 0..255 grey levels (a float array of whole numbers)."""
    grey = levels.astype(np.uint8)
    return Image.fromarray(np.repeat(grey[..., None], 3, axis=-1), "RGB")


def declared_range(image):
    """(low, high) of an ``I`` or ``F`` image's values, as its file declares them (the module's docstring)."""
    tags = getattr(image, "tag_v2", None) or {}
    if image.mode == "F":
        low, high = _number(tags.get(340)), _number(tags.get(341))  # SMinSampleValue, SMaxSampleValue
        low, high = (0.0 if low is None else low), (1.0 if high is None else high)
        return (low, high) if high > low else (0.0, 1.0)
    bits = _number(tags.get(258))  # BitsPerSample
    if bits is None or not 1 <= bits <= 32:
        return 0.0, 65535.0
    if _number(tags.get(339)) == 2:  # SampleFormat: signed integers
        return -2.0 ** (bits - 1), 2.0 ** (bits - 1) - 1
    return 0.0, 2.0 ** bits - 1


def _number(tag):
    """A TIFF tag's (first) value as a finite float, or None."""
    if isinstance(tag, (tuple, list)):
        tag = tag[0] if tag else None
    try:
        value = float(tag)
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value) else None
