"""Reading CoOp's split files, the cached few-shot splits, and the base/new class split.

Every dataset reader ends with ``fewshot_and_subsample`` so that all trainers see the same
few-shot split for a (dataset, shots, seed), stored as JSON with paths relative to the dataset
folder, and the same base/new classes.
"""
import hashlib
import os
import os.path as osp
import pickle
import random
from collections import defaultdict

from llu.engine import DatasetBase, Datum
from llu.utils import UserError, is_writable_dir, listdir_nohidden, read_json, user_cache_dir, write_json

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


def require_dir(path, what, layout):
    """Stop with one line naming ``path`` and the expected layout if it is not a folder."""
    if not osp.isdir(path):
        raise UserError(f"{path}: {what} not found; expected {layout}")


def require_file(path, what, layout):
    if not osp.isfile(path):
        raise UserError(f"{path}: {what} not found; expected {layout}")


def _inside(folder, relative_path):
    """``folder/relative_path`` if that stays inside ``folder`` (no absolute path, no '..' out of it)."""
    if osp.isabs(relative_path):
        return None
    joined = osp.normpath(osp.join(folder, relative_path))
    return joined if joined.startswith(osp.normpath(folder) + os.sep) else None


def _to_datums(items, path_prefix, filepath, key):
    """Datums from split-file entries [path relative to ``path_prefix``, label, class name]; an entry
    whose path leaves the folder, or whose label is not an integer, is refused with one line."""
    if not isinstance(items, list):
        raise UserError(f"{filepath}: '{key}' must be a list of [image path, label, class name] entries")
    out = []
    for number, entry in enumerate(items):
        where = f"{filepath}: entry {number} of '{key}' ({entry!r:.200})"
        if not (isinstance(entry, (list, tuple)) and len(entry) == 3):
            raise UserError(f"{where}: expected [image path, label, class name]")
        impath, label, classname = entry
        if not isinstance(impath, str) or not isinstance(classname, str):
            raise UserError(f"{where}: the image path and the class name must be strings")
        if isinstance(label, bool) or not isinstance(label, int):
            digits = label.strip() if isinstance(label, str) else ""
            if not (digits.isascii() and digits.isdigit() and len(digits) <= 18):
                raise UserError(f"{where}: the label must be an integer")
            label = int(digits)
        path = _inside(path_prefix, impath)
        if path is None:
            raise UserError(f"{where}: the image path must be relative and inside {path_prefix}")
        out.append(Datum(impath=path, label=label, classname=classname))
    return out


def class_key(classname):
    """What a prompt can tell of a class name: not its case, nor '_' from a space, nor runs of spaces."""
    return " ".join(classname.replace("_", " ").split()).casefold()


def refuse_twin_classes(classes, where, what="classes"):
    """Stop with one line if two of ``classes`` [(the class as the input writes it, its class name)]
    differ only in what a prompt cannot tell apart (``class_key``): they would get the same text."""
    seen = {}
    for written, classname in classes:
        key = class_key(classname)
        if key in seen:
            raise UserError(f"{where}: {what} {seen[key][0]!r:.100} and {written!r:.100} both name the class "
                            f"{seen[key][1]!r:.100} (a prompt tells neither case nor '_' from a space); rename one")
        seen[key] = (written, classname)


def check_labels(parts, filepath, reference=None):
    """Labels are 0..K-1, each with one class name and each class name with one label; with a
    ``reference`` {label: class name} (the full split's), they must agree with it."""
    names = dict(reference or {})
    labels_of = {name: label for label, name in names.items()}
    for key, items in parts.items():
        for item in items or []:
            where = f"{filepath}: '{key}' entry {item.impath!r}"
            if names.setdefault(item.label, item.classname) != item.classname:
                raise UserError(f"{where}: label {item.label} is class {names[item.label]!r} elsewhere, here "
                                f"{item.classname!r}")
            if labels_of.setdefault(item.classname, item.label) != item.label:
                raise UserError(f"{where}: class {item.classname!r} has label {labels_of[item.classname]} elsewhere, "
                                f"here {item.label}")
    if reference is None and names and sorted(names) != list(range(len(names))):
        odd = sorted(set(names) - set(range(len(names))))
        raise UserError(f"{filepath}: labels must be 0 to {len(names) - 1} for its {len(names)} classes, found "
                        f"{', '.join(map(str, odd[:5]))}")
    if reference is None:
        refuse_twin_classes([(names[label], names[label]) for label in sorted(names)], filepath)
    if reference is not None and set(names) != set(reference):
        extra = sorted(set(names) - set(reference))[:5]
        raise UserError(f"{filepath}: labels {', '.join(map(str, extra))} are not classes of the dataset")


def read_split(filepath, path_prefix):
    """Read a CoOp ``split_zhou_*.json``: {"train"|"val"|"test": [[relative path, label, class name], ...]}."""
    split = read_json(filepath)
    if not isinstance(split, dict):
        raise UserError(f"{filepath}: expected an object with train, val and test lists, got {type(split).__name__}")
    missing = [k for k in ("train", "val", "test") if k not in split]
    if missing:
        raise UserError(f"{filepath}: missing key(s) {', '.join(missing)}; expected train, val and test lists")
    print(f"Reading split from {filepath}")
    parts = {k: _to_datums(split[k], path_prefix, filepath, k) for k in ("train", "val", "test")}
    check_labels(parts, filepath)
    return parts["train"], parts["val"], parts["test"]


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


def train_val_test(trainval, test):
    """CoOp's split of a dataset published as a training list and a test list: 20% of each class's
    training images become val (a fixed seed, 0)."""
    train, val = split_trainval(trainval, p_val=0.2, rng=random.Random(0))
    return train, val, test


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


def source_sha256(dataset_dir, train, val):
    """What a few-shot split was drawn from: a hash of the full train and val lists."""
    digest = hashlib.sha256()
    for key, items in (("train", train), ("val", val or [])):
        for path, label, classname in _relative(items, dataset_dir):
            digest.update(f"{key}\t{path}\t{label}\t{classname}\n".encode())
    return digest.hexdigest()


def load_or_sample_fewshot(dataset, dataset_dir, num_shots, seed, train, val=None):
    """Few-shot train (K per class) and val (min(K, 4) per class), sampled once and cached as JSON.

    Sampling order matches CoOp exactly: train first, then val, from the global ``random`` stream.
    A split written by CoOp itself (``shot_K-seed_S.pkl``) is read instead when present. The JSON
    records what it was drawn from; if the full split changed since (another split file), the
    few-shot split is drawn again. An unseeded run (SEED < 0) draws one and does not keep it.
    """
    reference = {item.label: item.classname for item in train}
    coop_pickle = osp.join(dataset_dir, "split_fewshot", f"shot_{num_shots}-seed_{seed}.pkl")
    if seed >= 0 and osp.isfile(coop_pickle):
        print(f"Reading CoOp's few-shot split from {coop_pickle}")
        return _fewshot_parts(read_coop_fewshot_pickle(coop_pickle, dataset_dir), coop_pickle, val is not None,
                              reference)
    path = fewshot_cache_path(dataset_dir, num_shots, seed)
    source = source_sha256(dataset_dir, train, val)
    if seed >= 0 and osp.isfile(path):
        data = read_json(path)
        if not isinstance(data, dict):
            raise UserError(f"{path}: expected an object with 'train' and 'val' lists")
        if data.get("source_sha256") == source:
            print(f"Loading preprocessed few-shot data from {path}")
            parts = {k: _to_datums(v, dataset_dir, path, k) for k, v in data.items() if k in ("train", "val")}
            return _fewshot_parts(parts, path, val is not None, reference)
        print(f"Note: {path} was drawn from another split than this one (the split file changed?); drawing it again")
    elif seed < 0:
        print("Note: an unseeded run (SEED < 0) draws its own few-shot split and does not cache it")
    if seed >= 0:
        # CoOp draws right after seeding the run; seeding here keeps the split (and the file every later
        # run reads) a function of the seed alone, whatever this process drew before.
        random.seed(seed)
    train = dataset.generate_fewshot_dataset(train, num_shots=num_shots)
    if val is not None:
        val = dataset.generate_fewshot_dataset(val, num_shots=min(num_shots, 4))
    if seed >= 0:
        data = {"source_sha256": source, "train": _relative(train, dataset_dir)}
        if val is not None:
            data["val"] = _relative(val, dataset_dir)
        write_json(data, path)
        print(f"Saving preprocessed few-shot data to {path}")
    return train, val


def _fewshot_parts(parts, path, with_val, reference):
    for key in ["train"] + (["val"] if with_val else []):
        if key not in parts:
            raise UserError(f"{path}: missing '{key}'; delete the file to resample the few-shot split")
    check_labels(parts, path, reference)
    return parts["train"], parts["val"] if with_val else None


# ---------------------------------------------------------------------------------------------
# CoOp's own few-shot files: pickles of Dassl's Datum, read without unpickling anything else

class _PickledDatum:
    """Stands in for dassl.data.datasets.base_dataset.Datum while reading a CoOp pickle: it only
    receives the pickled attributes; nothing of Dassl's (or anyone's) code runs."""

    def __setstate__(self, state):
        if isinstance(state, dict):
            self.__dict__.update(state)


class _CoOpUnpickler(pickle.Unpickler):
    ALLOWED = {("dassl.data.datasets.base_dataset", "Datum"), ("dassl.data.datasets", "Datum")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return _PickledDatum
        raise pickle.UnpicklingError(f"it refers to {module}.{name}, which a few-shot split may not hold")


def read_coop_fewshot_pickle(path, dataset_dir):
    """{"train"|"val": [Datum]} from CoOp's ``shot_K-seed_S.pkl``. Its absolute paths (of the machine
    that made it) are mapped into ``dataset_dir`` by their part below the dataset folder's name."""
    try:
        with open(path, "rb") as f:
            data = _CoOpUnpickler(f).load()
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, TypeError, IndexError, KeyError,
            OverflowError, RecursionError, MemoryError, UnicodeError) as e:
        raise UserError(f"{path}: not a CoOp few-shot split ({type(e).__name__}: "
                        f"{' '.join(str(e).split())[:200]})") from None
    if not isinstance(data, dict) or not isinstance(data.get("train"), list):
        raise UserError(f"{path}: not a CoOp few-shot split (expected a dict with a 'train' list)")
    folder = osp.basename(osp.normpath(dataset_dir))
    out = {}
    for key in ("train", "val"):
        if data.get(key) is None:
            continue
        out[key] = []
        for number, item in enumerate(data[key]):
            fields = vars(item) if isinstance(item, _PickledDatum) else {}
            impath, label, classname = fields.get("_impath"), fields.get("_label"), fields.get("_classname")
            if not isinstance(impath, str) or isinstance(label, bool) or not isinstance(label, int) \
                    or not isinstance(classname, str):
                raise UserError(f"{path}: entry {number} of '{key}' is not a Datum with a path, label and class name")
            parts = impath.replace("\\", "/").split("/")
            if folder not in parts:
                raise UserError(f"{path}: entry {number} of '{key}' ({impath}) is not inside a folder named "
                                f"{folder!r}, so it cannot be mapped into {dataset_dir}")
            relative = "/".join(parts[len(parts) - parts[::-1].index(folder):])
            mapped = _inside(dataset_dir, relative)
            if mapped is None:
                raise UserError(f"{path}: entry {number} of '{key}' ({impath}) leaves the dataset folder")
            out[key].append(Datum(impath=mapped, label=label, classname=classname))
    return out


def fewshot_and_subsample(dataset, cfg, dataset_dir, train, val, test):
    """The common tail of every reader: few-shot sampling (cached), then CoOp's base/new split.

    ``val`` may be None for datasets whose val is their test set (ImageNet); then val = test.
    The whole val split (before few-shot sampling, after the base/new split) is kept as
    ``dataset.full_val`` (Tip-Adapter's official search runs on it).
    """
    num_shots = cfg.DATASET.NUM_SHOTS
    subsample = cfg.DATASET.SUBSAMPLE_CLASSES
    full_val = val
    if num_shots >= 1:
        train, val = load_or_sample_fewshot(dataset, dataset_dir, num_shots, cfg.SEED, train, val)
    if val is None:
        train, test = DatasetBase.subsample_classes(train, test, subsample=subsample)
        dataset.full_val = test
        return train, test, test
    train, val, test, dataset.full_val = DatasetBase.subsample_classes(train, val, test, full_val, subsample=subsample)
    return train, val, test
