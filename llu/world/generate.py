"""Writing the built-in world's datasets in CoOp's layout, once, atomically.

The world lives in one place, ``world_home()`` (``$LLU_CACHE/world``): the readers generate a dataset
there on first use (``locate_dataset``, ``DATASET.ROOT`` empty or that folder). Another root holds the
world only when asked for explicitly::

    python -m llu.world.generate --root DIR [--datasets Shapes Patterns]

so a mistyped ``--root`` is a "not found" line, as for any dataset, not 20 MB of images written there.

``ensure_dataset(root, name)`` returns ``<root>/<folder>`` holding

    images/<class folder>/<nnnn>.png        32x32 RGB
    split_zhou_<name>.json                  {"train"|"val"|"test": [[path under images/, label, class name], ...]}
    world.json                              the stamp: generator version, settings and their hash

generating it first if it is missing or was made with other settings. A dataset is built in a
hidden temporary folder beside it and renamed into place when complete, with the stamp written
last, so a reader never sees a half-written dataset. Every image is a pure function of the
dataset's settings and its (label, index), so the same settings give byte-identical files.
"""
import argparse
import hashlib
import json
import os
import os.path as osp
import shutil
import tempfile
import time
import zlib
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

from llu.utils import UserError, exit_on_user_error, is_writable_dir, read_json, user_cache_dir, write_json

from . import render

GENERATOR_VERSION = 2  # bump when this file changes what it writes
STAMP_FILE = "world.json"


@dataclass(frozen=True)
class DatasetSpec:
    folder: str  # <root>/<folder>
    kind: str  # "shapes" or "patterns" (render.class_names)
    domain: str  # a render.DOMAINS entry
    split_sizes: tuple  # images per class in (train, val, test)


# The world's shift: level of the global shift (render.domain_params), and how far base colours are
# cast toward new ones (render.COLOUR_CAST). Calibrated with scripts/check_world.py: ToyCLIP's
# zero-shot accuracy on Shapes is about 40% (base) / 70% (new), and a global linear adapter
# trained on the base classes raises base accuracy while lowering new-class accuracy.
WORLD_SHIFT = dict(level=0.25, cast=0.55)
WORLD_SEED = 1

# What the datasets hold when generated with the settings above: a sha256 over every image's pixels
# and its split entry, in order (``write_dataset``; PNG bytes are not hashed, as zlib versions differ).
# The renderer uses only IEEE + - * / and integer arithmetic on arrays, so every machine should
# give these; ``ensure_dataset`` warns where one does not, and tests/test_builtin_world.py checks it.
REFERENCE_CONTENT_SHA256 = {
    "Shapes": "765741d33dbae19b805b4e12190d99f796347546d45b4931713229102e7b22ac",
    "ShapesSketch": "57c3c9a8c18399afe822b3297c7dd419e1b706fff872489cb56aafbe022642a7",
    "ShapesNoisy": "920bb6bdc3790e1637b27288cc20fffc4046ad1725a04c399bf500d1ccc4e835",
    "Patterns": "30d3aa46ae0c8ce38048b40878b1ad81877f675a29d5d3e5442805467b48c08e",
}

DATASETS = {
    "Shapes": DatasetSpec("shapes", "shapes", "downstream", (48, 8, 20)),  # the world's "ImageNet"
    "ShapesSketch": DatasetSpec("shapes_sketch", "shapes", "sketch", (16, 4, 20)),  # domain generalisation
    "ShapesNoisy": DatasetSpec("shapes_noisy", "shapes", "noisy", (16, 4, 20)),  # domain generalisation
    "Patterns": DatasetSpec("patterns", "patterns", "downstream", (48, 8, 20)),  # cross-dataset
}


def dataset_settings(name, **overrides):
    """Everything that determines dataset ``name``'s files, as a JSON-able dict.

    ``overrides`` replace fields of its ``DatasetSpec``, ``WORLD_SHIFT`` or the seed (tests use
    small ``split_sizes``).
    """
    if name not in DATASETS:
        raise UserError(f"unknown built-in dataset {name!r}; expected one of {', '.join(DATASETS)}")
    settings = dict(asdict(DATASETS[name]), **WORLD_SHIFT, seed=WORLD_SEED)
    unknown = sorted(set(overrides) - set(settings))
    if unknown:
        raise TypeError(f"unknown dataset setting(s): {', '.join(unknown)}")
    settings.update(overrides)
    settings["split_sizes"] = list(settings["split_sizes"])
    settings.update(name=name, generator_version=GENERATOR_VERSION, render_version=render.RENDER_VERSION,
                    classes=render.class_names(settings["kind"]))
    return settings


def settings_hash(settings):
    """A hash of the settings and of two rendered images per class, so that a change to the drawing
    code rebuilds the dataset even where nobody bumped a version number."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for label in range(len(settings["classes"])):
        for index in range(2):
            digest.update(render_image(settings, label, index).tobytes())
    return digest.hexdigest()[:16]


def class_folder(classname):
    return classname.replace(" ", "_")


def image_rng(settings, label, index):
    """The generator for one image: a function of the seed, the dataset name, the label and the index only."""
    return np.random.default_rng([settings["seed"], zlib.crc32(settings["name"].encode()), label, index])


def render_image(settings, label, index):
    """Image ``index`` of class ``label`` (32x32x3 uint8) as dataset ``settings`` defines it."""
    return render.render(settings["kind"], label, settings["domain"], image_rng(settings, label, index),
                         level=settings["level"], cast=settings["cast"])


def write_dataset(dataset_dir, settings, stamp_hash):
    """Write images, split file and stamp into ``dataset_dir`` (an empty folder); returns the
    dataset's content hash (``content_sha256``)."""
    image_dir = osp.join(dataset_dir, "images")
    split = {"train": [], "val": [], "test": []}
    content = hashlib.sha256()
    n_train, n_val, n_test = settings["split_sizes"]
    for label, classname in enumerate(settings["classes"]):
        folder = class_folder(classname)
        os.makedirs(osp.join(image_dir, folder))
        for index in range(n_train + n_val + n_test):
            relative = f"{folder}/{index:04d}.png"
            pixels = render_image(settings, label, index)
            Image.fromarray(pixels).save(osp.join(image_dir, relative))
            part = "train" if index < n_train else "val" if index < n_train + n_val else "test"
            split[part].append([relative, label, classname])
            content.update(f"{part}/{relative}/{label}/{classname}\n".encode())
            content.update(pixels.tobytes())
    write_json(split, osp.join(dataset_dir, split_file_name(settings["name"])))
    content_sha256 = content.hexdigest()
    write_json({"hash": stamp_hash, "content_sha256": content_sha256, "settings": settings},
               osp.join(dataset_dir, STAMP_FILE))
    return content_sha256


def check_content(name, content_sha256, overrides):
    """Say so when a dataset with the default settings came out other than on the reference machine."""
    expected = REFERENCE_CONTENT_SHA256.get(name)
    if overrides or expected is None or content_sha256 == expected:
        return
    print(f"Warning: the built-in dataset {name} came out different on this machine (content sha256 "
          f"{content_sha256[:12]}..., reference {expected[:12]}...): its images differ, so tables will not "
          f"match the README's. Please report this with your CPU and the versions of NumPy and Pillow.")


def split_file_name(name):
    return f"split_zhou_{name}.json"


def is_current(dataset_dir, settings, expected_hash):
    """True if ``dataset_dir`` is a complete dataset generated with ``settings`` (whose hash is given)."""
    stamp = osp.join(dataset_dir, STAMP_FILE)
    if not (osp.isfile(stamp) and osp.isfile(osp.join(dataset_dir, split_file_name(settings["name"])))):
        return False
    try:
        return read_json(stamp).get("hash") == expected_hash
    except (UserError, AttributeError):
        return False


def ensure_dataset(root, name, **overrides):
    """``<root>/<folder of name>``, generated first if missing or stale; see the module docstring.

    A folder there that has no stamp was not made by this generator and is left alone (an error);
    one with a stamp for other settings is replaced.
    """
    settings = dataset_settings(name, **overrides)
    root = osp.abspath(osp.expanduser(root))
    dataset_dir = osp.join(root, settings["folder"])
    expected_hash = settings_hash(settings)
    if is_current(dataset_dir, settings, expected_hash):
        return dataset_dir
    if osp.exists(dataset_dir) and not osp.isfile(osp.join(dataset_dir, STAMP_FILE)):
        raise UserError(f"{dataset_dir}: exists but was not made by the built-in world generator (no "
                        f"{STAMP_FILE}); move it away or use another DATASET.ROOT")
    if not is_writable_dir(root):
        raise UserError(f"{root}: cannot write the built-in dataset {name} there (read-only?); "
                        f"use a writable DATASET.ROOT")
    start = time.time()
    print(f"Generating the built-in dataset {name} in {dataset_dir}")
    building = tempfile.mkdtemp(dir=root, prefix=f".{settings['folder']}.building-")
    try:
        content_sha256 = write_dataset(building, settings, expected_hash)
        check_content(name, content_sha256, overrides)
        if is_current(dataset_dir, settings, expected_hash):  # another process finished first: use its copy
            return dataset_dir
        if osp.exists(dataset_dir):  # stale: move it aside first, so the rename below cannot fail on it
            stale = tempfile.mkdtemp(dir=root, prefix=f".{settings['folder']}.stale-")
            os.replace(dataset_dir, osp.join(stale, "old"))
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.rename(building, dataset_dir)
        except OSError:
            if not is_current(dataset_dir, settings, expected_hash):  # not another process finishing first
                raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
    print(f"Generated {name} ({len(settings['classes'])} classes) in {time.time() - start:.1f} s")
    return dataset_dir


def world_home():
    """Where the built-in world is generated on first use: ``$LLU_CACHE/world`` (``~/.cache/llu/world``)."""
    return user_cache_dir("world")


def locate_dataset(root, name):
    """``<root>/<folder of name>`` for a reader (``DATASET.ROOT``): in the world's home (``root`` empty
    or that folder) generated first if missing or stale; under another root it must have been
    generated there (``main``; a stale copy is regenerated), else a one-line "not found"."""
    home = world_home()
    root = osp.abspath(osp.expanduser(root or home))
    if root == osp.abspath(osp.expanduser(home)) or osp.realpath(root) == osp.realpath(home):
        return ensure_dataset(root, name)
    dataset_dir = osp.join(root, dataset_settings(name)["folder"])
    if not osp.isfile(osp.join(dataset_dir, STAMP_FILE)):
        raise UserError(f"{dataset_dir}: {name} folder not found; the built-in world is in {home} (no --root), "
                        f"or generate it here with python -m llu.world.generate --root {root}")
    return ensure_dataset(root, name)


def build_parser(prog=None):
    parser = argparse.ArgumentParser(prog=prog or "python -m llu.world.generate",
                                     description="Generate the built-in world's datasets (CoOp's layout).")
    parser.add_argument("--root", default="", help=f"the folder to generate them in (default: the world's home, "
                                                   f"$LLU_CACHE/world, now {world_home()})")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS), metavar="NAME",
                        help=f"which datasets (default: all: {', '.join(DATASETS)})")
    return parser


def main(argv=None, prog=None):
    """Generate the world's datasets in ``--root`` (default: its home); current ones are kept."""
    args = build_parser(prog).parse_args(argv)
    root = args.root or world_home()

    def generate():
        for name in args.datasets:
            print(f"{name}: {ensure_dataset(root, name)}")

    return exit_on_user_error(generate)


if __name__ == "__main__":
    main()
