"""Drawing the built-in world: coloured shapes and coloured textures as 32x32 RGB images.

Every image is drawn at 64x64 (``CANVAS``) and box-downsampled to 32x32 (``IMAGE_SIZE``). Drawing is
a pure function of its arguments and a NumPy generator, so a dataset is reproducible from its seed.

Classes: ``SHAPE_CLASSES`` ("red circle", ...; label = colour * 8 + shape) and ``PATTERN_CLASSES``
("red stripes", ...; label = colour * 6 + texture). Colours come first in the label, so CoOp's
base/new split (sorted labels, first half base) makes red, green, blue and yellow the base colours.

Domains (``render_shape`` / ``render_pattern``, argument ``domain``):

- ``"pretrain"``: what ToyCLIP is pretrained on: near-black background, large objects, small
  rotations, mild colour jitter and noise; optionally under ``PretrainConditions`` (a coloured
  background, faint distractors, a small object, coloured light) that its captions name.
- ``"downstream"``: the fine-tuning domain at shift level ``level`` (0 = the pretraining domain).
  A global shift (smooth coloured background, background stripes, faint distractor shapes, smaller
  and more rotated objects, colour jitter and noise, all growing with ``level``) plus a
  class-specific one: the *colour cast*, which moves each base colour toward a new colour
  (``COLOUR_CAST``, by ``cast``). What a model learns from the base classes about the cast ("this
  khaki thing is green") is wrong for the new classes, which are drawn in their true colours.
- ``"sketch"``: coloured outlines over light shading on dark grey paper (with the cast).
- ``"noisy"``: the downstream domain under extra noise, blur and a grey occluding block.

Outside pretraining every domain shares the cast: it is a property of the downstream "camera".
"""
import dataclasses
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

RENDER_VERSION = 2  # bump when drawing changes: generated datasets and ToyCLIP rebuild
CANVAS = 64
IMAGE_SIZE = 32

COLOURS = {
    "red": (215, 35, 35),
    "green": (40, 175, 55),
    "blue": (35, 70, 225),
    "yellow": (235, 215, 35),
    "purple": (135, 45, 195),
    "orange": (245, 135, 25),
    "white": (235, 235, 235),
    "pink": (245, 135, 190),
}
COLOUR_NAMES = list(COLOURS)
BASE_COLOURS = COLOUR_NAMES[:4]
SHAPES = ["circle", "square", "triangle", "star", "cross", "ring", "diamond", "heart"]
TEXTURES = ["stripes", "dots", "checks", "grid", "waves", "zigzag"]

# label = colour index * len(SHAPES) + shape index (and likewise for textures)
SHAPE_CLASSES = [f"{colour} {shape}" for colour in COLOUR_NAMES for shape in SHAPES]
PATTERN_CLASSES = [f"{colour} {texture}" for colour in COLOUR_NAMES for texture in TEXTURES]

# The class-specific part of the downstream shift: base colour -> the new colour it is drawn toward.
# Apart from red -> pink, each base colour is cast toward a new colour it does not resemble, so that
# a correction learnt on the base classes ("this khaki thing is green") pulls new-class images
# toward base-class directions that, among the new classes, point at the wrong one. Casting toward
# the nearest new colour (red -> orange, blue -> purple, ...) does not do this: there a global
# adapter trained on the base classes lifts the new classes too (see scripts/check_world.py).
COLOUR_CAST = {"red": "pink", "green": "orange", "blue": "white", "yellow": "purple"}

DOMAINS = ("pretrain", "downstream", "sketch", "noisy")
SKETCH_SHADING = 0.55  # opacity of the fill under a sketch's outline

# Coloured lights of the pretraining domain: the whole canvas is multiplied by the light's colour,
# so each light changes every class colour in its own way.
LIGHTS = {
    "red": (255, 90, 90),
    "green": (110, 255, 110),
    "blue": (100, 130, 255),
    "yellow": (255, 240, 90),
    "purple": (200, 110, 255),
    "orange": (255, 170, 70),
}
LIGHT_NAMES = list(LIGHTS)
CONDITION_BACKGROUND_LEVEL = 0.35  # a "colourful background" is the downstream background at this level
CONDITION_CLUTTER_LEVEL = 0.4  # "among faint shapes": distractors as in the downstream domain at this level
SMALL_SHAPE_RADIUS = (11, 15)  # "small": canvas pixels (pretraining objects: 16 to 24)
SMALL_PATCH_SIZE = (28, 40)  # "small" pattern patches (pretraining patches: 40 to 58)


@dataclasses.dataclass(frozen=True)
class PretrainConditions:
    """Variations of a pretraining image that its caption names ("a small red circle on a colourful
    background in blue light."). They make the context words of ToyCLIP's captions carry meaning,
    as they do for CLIP, so that learned context vectors (CoOp and its kin) have something to move."""
    light: str = ""  # a LIGHTS name, or "" for none
    background: bool = False
    clutter: bool = False
    small: bool = False

    @classmethod
    def sample(cls, rng, probability):
        """Each condition with ``probability`` (clutter and small with 0.6 of it)."""
        light = LIGHT_NAMES[int(rng.integers(len(LIGHT_NAMES)))] if rng.random() < probability else ""
        return cls(light=light, background=bool(rng.random() < probability),
                   clutter=bool(rng.random() < 0.6 * probability), small=bool(rng.random() < 0.6 * probability))


NO_CONDITIONS = PretrainConditions()


# ---------------------------------------------------------------------------------------------
# Geometry: masks in [0, 1] on the 64x64 canvas

def _unit_polygon(shape):
    """Vertices of ``shape`` around (0, 0) with radius about 1, y pointing down (image coordinates)."""
    if shape == "square":
        return [(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)]
    if shape == "triangle":
        return [(math.cos(math.radians(a)), math.sin(math.radians(a)) + 0.15) for a in (-90, 30, 150)]
    if shape == "star":
        return [((1.0 if i % 2 == 0 else 0.42) * math.cos(math.radians(-90 + 36 * i)),
                 (1.0 if i % 2 == 0 else 0.42) * math.sin(math.radians(-90 + 36 * i))) for i in range(10)]
    if shape == "cross":
        w = 0.33
        return [(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w),
                (-1, -w), (-w, -w)]
    if shape == "diamond":
        return [(0, -1), (0.6, 0), (0, 1), (-0.6, 0)]
    if shape == "heart":
        points = []
        for i in range(40):
            t = 2 * math.pi * i / 40
            x = 16 * math.sin(t) ** 3
            y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
            points.append((x / 17, -y / 17 - 0.1))
        return points
    raise ValueError(f"no polygon for shape {shape!r}")


def shape_mask(shape, cx, cy, radius, angle, outline=0):
    """Coverage of ``shape`` centred at (cx, cy) on the canvas; ``outline`` > 0 draws only its edge."""
    image = Image.new("L", (CANVAS, CANVAS), 0)
    draw = ImageDraw.Draw(image)
    if shape in ("circle", "ring"):
        box = [cx - radius, cy - radius, cx + radius, cy + radius]
        if shape == "circle":
            draw.ellipse(box, fill=None if outline else 255, outline=255 if outline else None, width=outline or 1)
        elif outline:
            draw.ellipse(box, outline=255, width=outline)
            inner = radius * 0.55
            draw.ellipse([cx - inner, cy - inner, cx + inner, cy + inner], outline=255, width=outline)
        else:
            draw.ellipse(box, outline=255, width=max(2, round(radius * 0.42)))
    else:
        cos, sin = math.cos(math.radians(angle)), math.sin(math.radians(angle))
        points = [(cx + radius * (x * cos - y * sin), cy + radius * (x * sin + y * cos))
                  for x, y in _unit_polygon(shape)]
        if outline:
            draw.polygon(points, outline=255, width=outline)
        else:
            draw.polygon(points, fill=255)
    return np.asarray(image, dtype=np.float32) / 255.0


_GRID = np.mgrid[0:CANVAS, 0:CANVAS].astype(np.float32)


def sine_wave(t):
    """A sine-shaped wave of period 1 in [-1, 1] from + - * only: two parabolic arcs, 16 r (1/2 - r).

    NumPy's sin takes other SIMD code paths on other CPUs and differs in the last bits, which can
    flip a pixel of a thresholded texture; IEEE + - * give the same bits on every machine.
    """
    r = t % 0.5
    return np.where(t % 1.0 < 0.5, 1.0, -1.0).astype(r.dtype) * 16 * r * (0.5 - r)


def texture_mask(texture, period, angle, phase):
    """A periodic two-level pattern over the whole canvas (1 = ink)."""
    ys, xs = _GRID
    cos, sin = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    u = xs * cos + ys * sin + phase[0]
    v = -xs * sin + ys * cos + phase[1]
    p = period
    if texture == "stripes":
        ink = (u % p) < p * 0.5
    elif texture == "dots":
        du, dv = (u % p) - p / 2, (v % p) - p / 2
        ink = du * du + dv * dv < (p * 0.3) ** 2
    elif texture == "checks":
        ink = (np.floor(u / p) + np.floor(v / p)) % 2 == 0
    elif texture == "grid":
        ink = ((u % p) < p * 0.25) | ((v % p) < p * 0.25)
    elif texture == "waves":
        ink = ((u + p * 0.45 * sine_wave(v / (1.6 * p))) % p) < p * 0.5
    elif texture == "zigzag":
        tri = np.abs((v / p) % 2 - 1)  # triangle wave in [0, 1]
        ink = ((u + p * 1.1 * tri) % p) < p * 0.45
    else:
        raise ValueError(f"unknown texture {texture!r}")
    return ink.astype(np.float32)


def rounded_box_mask(x0, y0, x1, y1, corner):
    image = Image.new("L", (CANVAS, CANVAS), 0)
    ImageDraw.Draw(image).rounded_rectangle([x0, y0, x1, y1], radius=corner, fill=255)
    return np.asarray(image, dtype=np.float32) / 255.0


# ---------------------------------------------------------------------------------------------
# Colours and backgrounds (float arrays, 0..255, shape (64, 64, 3))

def object_colour(colour, domain, cast, rng, jitter):
    """The class colour as drawn in ``domain``: cast toward its partner outside pretraining, then jittered."""
    rgb = np.array(COLOURS[colour], dtype=np.float32)
    if domain != "pretrain" and colour in COLOUR_CAST:
        rgb = (1 - cast) * rgb + cast * np.array(COLOURS[COLOUR_CAST[colour]], dtype=np.float32)
    return np.clip(rgb + rng.normal(0, jitter, 3), 0, 255)


def _smooth_field(rng, cells, channels):
    """Smooth random field in [-1, 1]: a ``cells`` x ``cells`` grid bicubically upsampled to the canvas."""
    out = np.empty((CANVAS, CANVAS, channels), dtype=np.float32)
    for c in range(channels):
        grid = Image.fromarray(rng.uniform(-1, 1, (cells, cells)).astype(np.float32), mode="F")
        out[..., c] = np.asarray(grid.resize((CANVAS, CANVAS), Image.BICUBIC))
    return np.clip(out, -1, 1)


def background(domain, level, rng):
    if domain == "pretrain":
        return np.broadcast_to(rng.uniform(0, 25, 3).astype(np.float32), (CANVAS, CANVAS, 3)).copy()
    if domain == "sketch":
        paper = rng.uniform(25, 70)
        return np.full((CANVAS, CANVAS, 3), paper, dtype=np.float32) + 6 * _smooth_field(rng, 4, 1)
    base = rng.uniform(15, 15 + 110 * level, 3).astype(np.float32)
    field = base + 140 * level * _smooth_field(rng, int(rng.integers(3, 7)), 3)
    if rng.random() < level * 1.5:  # faint stripes over the background
        stripes = texture_mask("stripes", rng.uniform(6, 14), rng.uniform(0, 180), rng.uniform(0, 14, 2))
        field += (stripes[..., None] - 0.5) * 80 * level * rng.uniform(0, 1, 3).astype(np.float32)
    return np.clip(field, 0, 255)


def paint(canvas, mask, rgb, alpha=1.0):
    """Alpha-blend ``rgb`` onto ``canvas`` where ``mask`` is set."""
    weight = (mask * alpha)[..., None]
    canvas *= 1 - weight
    canvas += weight * np.asarray(rgb, dtype=np.float32)
    return canvas


def add_distractors(canvas, level, rng):
    """1 to 1 + 3L faint small shapes of random colours (level 0: none)."""
    if level <= 0:
        return canvas
    for _ in range(int(rng.integers(1, 2 + int(3 * level)))):
        colour = COLOURS[COLOUR_NAMES[int(rng.integers(len(COLOURS)))]]
        mask = shape_mask(SHAPES[int(rng.integers(len(SHAPES)))], rng.uniform(4, 60), rng.uniform(4, 60),
                          rng.uniform(4, 9), rng.uniform(0, 360))
        paint(canvas, mask, colour, alpha=rng.uniform(0.2, 0.2 + 0.4 * level))
    return canvas


def finish(canvas, noise, rng, blur=0.0, occlusions=0):
    """Optional blur and grey occluding blocks at 64 px, box-downsample to 32 px, add pixel noise.

    Returns the 32x32x3 uint8 array.
    """
    if blur > 0:
        image = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(blur))
        canvas = np.asarray(image, dtype=np.float32).copy()
    for _ in range(occlusions):
        x0, y0 = rng.uniform(8, 48, 2)
        w, h = rng.uniform(8, 20, 2)
        block = rounded_box_mask(x0, y0, x0 + w, y0 + h, 1)
        paint(canvas, block, rng.uniform(40, 200) * np.ones(3))
    small = canvas.reshape(IMAGE_SIZE, 2, IMAGE_SIZE, 2, 3).mean(axis=(1, 3))
    small = small + rng.normal(0, noise, small.shape)
    return np.clip(np.rint(small), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Domain parameters

def domain_params(domain, level):
    """How objects are placed and perturbed in ``domain`` (sizes in canvas pixels)."""
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; expected one of {', '.join(DOMAINS)}")
    if domain == "pretrain":
        return dict(radius=(16, 24), rotation=20, jitter=8, noise=3, distract=0, blur=0, occlusions=0)
    params = dict(radius=(16 - 6 * level, 24 - 6 * level), rotation=20 + 60 * level, jitter=8 + 40 * level,
                  noise=3 + 30 * level, distract=level, blur=0, occlusions=0)
    if domain == "sketch":
        params.update(distract=0, noise=3 + 10 * level)
    if domain == "noisy":
        params.update(noise=params["noise"] + 10, blur=0.7, occlusions=1)
    return params


def _object_placement(params, rng):
    radius = rng.uniform(*params["radius"])
    margin = radius + 2
    cx, cy = rng.uniform(margin, CANVAS - margin, 2)
    angle = rng.uniform(-params["rotation"], params["rotation"])
    return cx, cy, radius, angle


def _conditioned_params(domain, level, conditions):
    params = domain_params(domain, level)
    if conditions != NO_CONDITIONS and domain != "pretrain":
        raise ValueError(f"conditions are a property of the pretraining domain, not of {domain!r}")
    if conditions.small:
        params["radius"] = SMALL_SHAPE_RADIUS
    return params


def _conditioned_background(domain, level, conditions, params, rng):
    """The background with its distractors."""
    if conditions.background:
        canvas = background("downstream", CONDITION_BACKGROUND_LEVEL, rng)
    else:
        canvas = background(domain, level, rng)
    return add_distractors(canvas, CONDITION_CLUTTER_LEVEL if conditions.clutter else params["distract"], rng)


def _finish_conditioned(canvas, params, conditions, rng):
    if conditions.light:
        canvas *= np.array(LIGHTS[conditions.light], dtype=np.float32) / 255
    return finish(canvas, params["noise"], rng, blur=params["blur"], occlusions=params["occlusions"])


def render_shape(label, domain, rng, level=0.0, cast=0.0, conditions=NO_CONDITIONS):
    """One image (32x32x3 uint8 array) of class ``SHAPE_CLASSES[label]`` in ``domain``."""
    colour, shape = COLOUR_NAMES[label // len(SHAPES)], SHAPES[label % len(SHAPES)]
    params = _conditioned_params(domain, level, conditions)
    canvas = _conditioned_background(domain, level, conditions, params, rng)
    cx, cy, radius, angle = _object_placement(params, rng)
    rgb = object_colour(colour, domain, cast, rng, params["jitter"])
    if domain == "sketch":  # a coloured outline over light shading
        paint(canvas, shape_mask(shape, cx, cy, radius, angle), rgb, alpha=SKETCH_SHADING)
        paint(canvas, shape_mask(shape, cx, cy, radius, angle, outline=int(rng.integers(4, 7))), rgb)
    else:
        paint(canvas, shape_mask(shape, cx, cy, radius, angle), rgb)
    return _finish_conditioned(canvas, params, conditions, rng)


def render_pattern(label, domain, rng, level=0.0, cast=0.0, conditions=NO_CONDITIONS):
    """One image (32x32x3 uint8 array) of class ``PATTERN_CLASSES[label]``: a textured patch in ``domain``."""
    colour, texture = COLOUR_NAMES[label // len(TEXTURES)], TEXTURES[label % len(TEXTURES)]
    params = _conditioned_params(domain, level, conditions)
    canvas = _conditioned_background(domain, level, conditions, params, rng)
    if conditions.small:
        low, high = SMALL_PATCH_SIZE
    elif domain == "pretrain":
        low, high = 40, 58
    else:
        low, high = 34 - 6 * level, 54 - 6 * level
    width, height = rng.uniform(low, high, 2)
    x0, y0 = rng.uniform(1, CANVAS - 1 - width), rng.uniform(1, CANVAS - 1 - height)
    patch = rounded_box_mask(x0, y0, x0 + width, y0 + height, 4)
    ink = texture_mask(texture, rng.uniform(9, 13), rng.uniform(-params["rotation"], params["rotation"]),
                       rng.uniform(0, 20, 2))
    if domain == "sketch":  # only the patch border and a sparse trace of the texture
        border = rounded_box_mask(x0, y0, x0 + width, y0 + height, 4) - rounded_box_mask(
            x0 + 3, y0 + 3, x0 + width - 3, y0 + height - 3, 2)
        ink = np.clip(border + ink * (np.abs(np.gradient(ink)[0]) + np.abs(np.gradient(ink)[1]) > 0), 0, 1)
    paint(canvas, patch * ink, object_colour(colour, domain, cast, rng, params["jitter"]))
    return _finish_conditioned(canvas, params, conditions, rng)


def render(kind, label, domain, rng, level=0.0, cast=0.0, conditions=NO_CONDITIONS):
    """``kind`` "shapes" or "patterns": one 32x32x3 uint8 image of class ``label`` (``conditions``:
    pretraining domain only)."""
    if kind == "shapes":
        return render_shape(label, domain, rng, level, cast, conditions)
    if kind == "patterns":
        return render_pattern(label, domain, rng, level, cast, conditions)
    raise ValueError(f"unknown kind {kind!r}; expected 'shapes' or 'patterns'")


def class_names(kind):
    return {"shapes": SHAPE_CLASSES, "patterns": PATTERN_CLASSES}[kind]
