"""What the benchmarks share: a real-size CLIP with random weights (timings do not depend on the
weights), a generated image folder of real-size images, runs of train.py in fresh processes, and
the report of a measurement against its target.

A random-weight CLIP is built from OpenAI's architecture table below with a fixed seed and saved once
as an OpenAI-format state dict under ``$LLU_CACHE/bench`` (about 600 MB for ViT-B/32 in fp32), so it
loads through exactly the path of real weights.
"""
import argparse
import json
import os
import os.path as osp
import subprocess
import sys

import numpy as np

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, REPO)

from llu.utils import atomic_path, user_cache_dir, write_json  # noqa: E402

# clip.model.CLIP's arguments of OpenAI's models (their state dicts say the same).
ARCHITECTURES = {
    "ViT-B/32": dict(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768, vision_patch_size=32,
                     context_length=77, vocab_size=49408, transformer_width=512, transformer_heads=8,
                     transformer_layers=12),
    "ViT-B/16": dict(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768, vision_patch_size=16,
                     context_length=77, vocab_size=49408, transformer_width=512, transformer_heads=8,
                     transformer_layers=12),
    # A two-layer CLIP of OpenAI's format at 32 px: bench/gpu.sh's CPU dry run (seconds, not hours).
    "tiny": dict(embed_dim=64, image_resolution=32, vision_layers=1, vision_width=64, vision_patch_size=16,
                 context_length=77, vocab_size=49408, transformer_width=64, transformer_heads=1,
                 transformer_layers=1),
}
RANDOM_PREFIX = "random:"  # --backbone random:ViT-B/32 in the benchmarks


def run_parser(doc, backbone="", backbone_help="default: ViT-B/16 on a GPU, else random:ViT-B/32",
               classes_help="classes of the generated data (not toy)"):
    """The options of every benchmark of whole runs: --backbone and --classes (of generated data)."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--backbone", default=backbone, help=backbone_help)
    parser.add_argument("--classes", type=int, default=10, help=classes_help)
    return parser


def default_backbone():
    """ViT-B/16 on a GPU (its real weights), a random-weight ViT-B/32 on a CPU."""
    import torch
    return "ViT-B/16" if torch.cuda.is_available() else f"{RANDOM_PREFIX}ViT-B/32"


def resolve_backbone(name):
    """A --backbone for train.py: ``random:<arch>`` becomes the file of that random model."""
    if not name.startswith(RANDOM_PREFIX):
        return name
    return random_clip_file(name[len(RANDOM_PREFIX):])


def random_clip_file(architecture):
    if architecture not in ARCHITECTURES:
        raise SystemExit(f"random:{architecture}: known architectures are {', '.join(ARCHITECTURES)}")
    path = user_cache_dir("bench", f"random-{architecture.replace('/', '-')}.pt")
    if not osp.isfile(path):
        import clip.model
        import torch
        print(f"building a random-weight {architecture} CLIP at {path}")
        torch.manual_seed(0)
        state_dict = clip.model.CLIP(**ARCHITECTURES[architecture]).state_dict()
        with atomic_path(path) as tmp:
            torch.save(state_dict, tmp)
    return path


def image_folder(classes, train_per_class=16, val_per_class=1, test_per_class=2, size=224, seed=0):
    """(root, folder name) of a generated ImageFolder: ``classes`` classes of smooth random colour
    fields at ``size`` px (JPEG), with a split file of the given images per class. Made once."""
    from PIL import Image
    root = user_cache_dir("bench", "data")
    name = f"bench_{classes}c_{train_per_class}-{val_per_class}-{test_per_class}_{size}px"
    folder = osp.join(root, name)
    split_path = osp.join(folder, "split.json")
    if osp.isfile(split_path):
        return root, name
    rng = np.random.default_rng(seed)
    split = {"train": [], "val": [], "test": []}
    counts = (("train", train_per_class), ("val", val_per_class), ("test", test_per_class))
    for label in range(classes):
        classname = f"class {label:03d}"
        os.makedirs(osp.join(folder, classname), exist_ok=True)
        colour = rng.uniform(0, 255, 3)
        index = 0
        for part, count in counts:
            for _ in range(count):
                coarse = rng.normal(0, 40, (8, 8, 3)) + colour
                pixels = np.clip(np.kron(coarse, np.ones((size // 8, size // 8, 1))), 0, 255).astype(np.uint8)
                relative = f"{classname}/{index:03d}.jpg"
                Image.fromarray(pixels).save(osp.join(folder, relative), quality=90)
                split[part].append([relative, label, classname])
                index += 1
    write_json(split, split_path)
    return root, name


def photo_files(folder, count, size=(500, 375), seed=0):
    """``count`` JPEGs of ``size`` (width, height; 500 x 375 is a typical ImageNet or Caltech photo) in
    ``folder``: smooth random colour fields with fine grain, so that their files and decoding cost about
    what a photo's do. Returns their paths."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    width, height = size
    paths = []
    for index in range(count):
        coarse = rng.normal(0, 40, (height // 25 + 1, width // 25 + 1, 3)) + rng.uniform(0, 255, 3)
        field = np.kron(coarse, np.ones((25, 25, 1)))[:height, :width]
        pixels = np.clip(field + rng.normal(0, 12, (height, width, 3)), 0, 255).astype(np.uint8)
        paths.append(osp.join(folder, f"{index:05d}.jpg"))
        Image.fromarray(pixels).save(paths[-1], quality=90)
    return paths


def encoder_forward_seconds(cache, pixels):
    """The floor of extraction: the encoder's forward alone over images already preprocessed, in the
    batches the feature cache uses (``FeatureCache.encode_full_batch``)."""
    import time
    import torch
    size = cache.cfg.FEATURES.BATCH_SIZE
    start = time.perf_counter()
    with torch.no_grad():
        for first in range(0, pixels.shape[0], size):
            cache.encode_full_batch(pixels[first:first + size].to(cache.device))
    return time.perf_counter() - start


def embeddings_file(classes, train_per_class=16, val_per_class=1, test_per_class=2, dim=512, seed=0):
    """(root, file name) of a generated embeddings file (``configs/datasets/embeddings.yaml``'s layout)
    of ``classes`` classes: unit image features scattered around one random direction per class, the
    class texts near them, a fixed split. Made once. For timing a step on cached features at class
    counts whose images would take hours to encode on a CPU (a step reads features and class texts,
    never the encoder, so where the features came from does not change its cost)."""
    root = user_cache_dir("bench", "data")
    name = f"bench_{classes}c_{train_per_class}-{val_per_class}-{test_per_class}_{dim}d.npz"
    path = osp.join(root, name)
    if osp.isfile(path):
        return root, name
    rng = np.random.default_rng(seed)
    per_class = train_per_class + val_per_class + test_per_class
    centres = rng.normal(size=(classes, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    features = np.repeat(centres, per_class, axis=0) + 0.05 * rng.normal(size=(classes * per_class, dim))
    texts = centres + 0.05 * rng.normal(size=(classes, dim))
    split = np.tile(np.repeat([0, 1, 2], [train_per_class, val_per_class, test_per_class]), classes)
    os.makedirs(root, exist_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, image_features=features.astype(np.float32), text_features=texts.astype(np.float32),
                     labels=np.repeat(np.arange(classes), per_class), split=split,
                     classnames=np.array([f"class {label:04d}" for label in range(classes)]))
    return root, name


def embeddings_options(name):
    return ["--dataset-config-file", osp.join(REPO, "configs", "datasets", "embeddings.yaml"),
            "DATASET.EMBEDDINGS.FILE", name]


def folder_options(name):
    return ["--dataset-config-file", osp.join(REPO, "configs", "datasets", "imagefolder.yaml"),
            "DATASET.IMAGEFOLDER.DIR", name, "DATASET.IMAGEFOLDER.SPLIT_FILE", "split.json"]


def data_for(backbone, classes, **per_class):
    """(root, trainer config name, dataset options): the built-in world's Shapes for ``toy``, else a
    generated image folder of ``classes`` classes (``per_class``: as ``image_folder`` takes them)."""
    if backbone == "toy":
        return user_cache_dir("world"), "toy", ["--dataset-config-file",
                                                 osp.join(REPO, "configs", "datasets", "shapes.yaml")]
    root, name = image_folder(classes, **per_class)
    return root, "vit_b16", folder_options(name)


# Runs train.py in this child process and writes its peak resident memory (MB) to a file.
_PEAK_WRAPPER = r"""
import resource, runpy, sys
peak_file, sys.argv = sys.argv[1], sys.argv[2:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    with open(peak_file, "w") as f:
        f.write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
"""


def run_train(args, env=None, log=None):
    """train.py ARGS in a fresh process; returns (its results.json, its peak resident MB)."""
    import tempfile
    with tempfile.NamedTemporaryFile("r", suffix=".peak") as peak:
        done = subprocess.run([sys.executable, "-c", _PEAK_WRAPPER, peak.name, osp.join(REPO, "train.py"), *args],
                              cwd=REPO, env=dict(os.environ, **(env or {})), capture_output=True, text=True)
        peak_mb = float(peak.read() or "nan")
    if log:
        with open(log, "a") as f:
            f.write(done.stdout + done.stderr)
    if done.returncode != 0:
        raise SystemExit(f"train.py {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    output = args[args.index("--output-dir") + 1]
    with open(osp.join(output, "results.json")) as f:
        return json.load(f), peak_mb


def verdict(value, target, smaller_is_better=True):
    met = value <= target if smaller_is_better else value >= target
    return {"value": value, "target": target, "met": met,
            "text": f"{value:.3g} ({'met' if met else 'MISSED'}: target {'<=' if smaller_is_better else '>='} {target})"}


def write_result(result, name, path=""):
    """Write ``result`` to ``path`` (default: bench/results/<name>.json) and say where."""
    path = path or osp.join(REPO, "bench", "results", f"{name}.json")
    write_json(result, path)
    print(f"wrote {path}")
    return path
