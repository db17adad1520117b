"""Reading CoOp's split files, the cached few-shot splits, and the base/new class split.

Every dataset reader ends with ``fewshot_and_subsample`` so that all trainers see the same
few-shot split for a (dataset, shots, seed), stored as JSON with paths relative to the dataset
folder, and the same base/new classes.
"""
import hashlib
import os.path as osp
import random
from collections import defaultdict

from llu.engine import DatasetBase, Datum
from llu.utils import UserError, listdir_nohidden, read_json, write_json
from llu.utils import is_writable_dir, user_cache_dir

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


def require_dir(path, what, layout):
    """Stop with one line naming ``path`` and the expected layout if it is not a folder."""
    if not osp.isdir(path):
        raise UserError(f"{path}: {what} not found; expected {layout}")


def require_file(path, what, layout):
    if not osp.isfile(path):
        raise UserError(f"{path}: {what} not found; expected {layout}")


def _to_datums(items, path_prefix, filepath, key):
    out = []
    for entry in items:
        if not (isinstance(entry, (list, tuple)) and len(entry) == 3):
            raise UserError(f"{filepath}: every entry of '{key}' must be [image path, label, class name], got {entry!r}")
        impath, label, classname = entry
        out.append(Datum(impath=osp.join(path_prefix, impath), label=int(label), classname=classname))
    return out


def read_split(filepath, path_prefix):
    """Read a CoOp ``split_zhou_*.json``: {"train"|"val"|"test": [[relative path, label, class name], ...]}."""
    split = read_json(filepath)
    missing = [k for k in ("train", "val", "test") if k not in split]
    if missing:
        raise UserError(f"{filepath}: missing key(s) {', '.join(missing)}; expected train, val and test lists")
    print(f"Reading split from {filepath}")
    return tuple(_to_datums(split[k], path_prefix, filepath, k) for k in ("train", "val", "test"))


def _relative(items, path_prefix):
    return [[osp.relpath(item.impath, path_prefix), item.label, item.classname] for item in items]


def save_split(train, val, test, filepath, path_prefix):
    write_json({"train": _relative(train, path_prefix), "val": _relative(val, path_prefix),
                "test": _relative(test, path_prefix)}, filepath)
    print(f"Saved split to {filepath}")


def split_trainval(trainval, p_val=0.2, rng=random):
    """Split per class into train and val (CoOp's ``split_trainval``)."""
    tracker = defaultdict(list)
    for idx, item in enumerate(trainval):
        tracker[item.label].append(idx)
    train, val = [], []
    for idxs in tracker.values():
        n_val = max(1, round(len(idxs) * p_val)) if len(idxs) > 1 else 0
        rng.shuffle(idxs)
        for n, idx in enumerate(idxs):
            (val if n < n_val else train).append(trainval[idx])
    return train, val


def list_images(folder):
    return sorted(f for f in listdir_nohidden(folder) if f.lower().endswith(IMAGE_EXTENSIONS))


def read_and_split_data(image_dir, p_trn=0.5, p_val=0.2, ignored=("split_fewshot",), new_cnames=None, rng=None):
    """Per-class folders -> train/val/test by fixed proportions (CoOp's ``read_and_split_data``).

    ``rng`` defaults to a fixed-seed generator, so the split does not depend on the run's seed.
    """
    categories = sorted(c for c in listdir_nohidden(image_dir) if c not in ignored
                        and osp.isdir(osp.join(image_dir, c)))
    groups = []
    for category in categories:
        category_dir = osp.join(image_dir, category)
        classname = new_cnames.get(category, category) if new_cnames else category
        groups.append((classname, [osp.join(category_dir, im) for im in list_images(category_dir)], category_dir))
    return split_by_proportions(groups, p_trn, p_val, rng)


def split_by_proportions(groups, p_trn=0.5, p_val=0.2, rng=None):
    """[(class name, image paths, where they came from)], one per label in order -> train/val/test.

    Each class is shuffled by ``rng`` (default: a fixed-seed generator) and cut by the proportions,
    keeping at least one image in each part.
    """
    rng = rng or random.Random(0)
    train, val, test = [], [], []
    for label, (classname, images, source) in enumerate(groups):
        if len(images) < 3:
            raise UserError(f"{source}: needs at least 3 images (one each for train, val and test), "
                            f"found {len(images)}")
        images = list(images)
        rng.shuffle(images)
        n_train = max(1, round(len(images) * p_trn))
        n_val = max(1, round(len(images) * p_val))
        n_train = min(n_train, len(images) - n_val - 1)
        make = lambda ims: [Datum(impath=im, label=label, classname=classname) for im in ims]  # noqa: E731
        train += make(images[:n_train])
        val += make(images[n_train:n_train + n_val])
        test += make(images[n_train + n_val:])
    return train, val, test


def dataset_file_path(dataset_dir, subdir, name):
    """``<dataset_dir>/<subdir>/<name>``, or the same file in the user cache if that folder is read-only.

    An existing file in the dataset folder always wins; the cache path is
    ``<cache>/<subdir or "splits">/<dataset folder name>-<hash of its path>/<name>``.
    """
    local_dir = osp.join(dataset_dir, subdir) if subdir else dataset_dir
    if osp.isfile(osp.join(local_dir, name)) or is_writable_dir(local_dir):
        return osp.join(local_dir, name)
    key = hashlib.sha1(osp.abspath(dataset_dir).encode()).hexdigest()[:10]
    return user_cache_dir(subdir or "splits", f"{osp.basename(osp.normpath(dataset_dir))}-{key}", name)


def fewshot_cache_path(dataset_dir, num_shots, seed):
    """``<dataset_dir>/split_fewshot/shot_K-seed_S.json``, or a user cache folder if that is read-only."""
    return dataset_file_path(dataset_dir, "split_fewshot", f"shot_{num_shots}-seed_{seed}.json")


def load_or_sample_fewshot(dataset, dataset_dir, num_shots, seed, train, val=None):
    """Few-shot train (K per class) and val (min(K, 4) per class), sampled once and cached as JSON.

    Sampling order matches CoOp exactly: train first, then val, from the global ``random`` stream.
    """
    path = fewshot_cache_path(dataset_dir, num_shots, seed)
    keys = ["train"] + (["val"] if val is not None else [])
    if osp.isfile(path):
        print(f"Loading preprocessed few-shot data from {path}")
        data = read_json(path)
        for key in keys:
            if key not in data:
                raise UserError(f"{path}: missing '{key}'; delete the file to resample the few-shot split")
        train = _to_datums(data["train"], dataset_dir, path, "train")
        val = _to_datums(data["val"], dataset_dir, path, "val") if val is not None else None
        return train, val
    train = dataset.generate_fewshot_dataset(train, num_shots=num_shots)
    if val is not None:
        val = dataset.generate_fewshot_dataset(val, num_shots=min(num_shots, 4))
    data = {"train": _relative(train, dataset_dir)}
    if val is not None:
        data["val"] = _relative(val, dataset_dir)
    write_json(data, path)
    print(f"Saving preprocessed few-shot data to {path}")
    return train, val


def fewshot_and_subsample(dataset, cfg, dataset_dir, train, val, test):
    """The common tail of every reader: few-shot sampling (cached), then CoOp's base/new split.

    ``val`` may be None for datasets whose val is their test set (ImageNet); then val = test.
    """
    num_shots = cfg.DATASET.NUM_SHOTS
    if num_shots >= 1:
        train, val = load_or_sample_fewshot(dataset, dataset_dir, num_shots, cfg.SEED, train, val)
    if val is None:
        train, test = DatasetBase.subsample_classes(train, test, subsample=cfg.DATASET.SUBSAMPLE_CLASSES)
        return train, test, test
    return DatasetBase.subsample_classes(train, val, test, subsample=cfg.DATASET.SUBSAMPLE_CLASSES)
