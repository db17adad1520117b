"""Precomputed embeddings as a dataset: ``<DATASET.ROOT>/<DATASET.EMBEDDINGS.FILE>``, a ``.npz`` or
``.safetensors`` file of image features that some CLIP computed, so that LLU and the embedding
baselines train and evaluate on them with the same splits, few-shot sampling, sweeps and tables.

The file holds (an ``.npz`` is read with ``allow_pickle=False``):

- ``image_features`` [N, D] float: one embedding per image (normalised here);
- ``labels`` [N] int: 0..K-1;
- ``classnames``: K names (an ``.npz``: an array of strings; ``.safetensors``: a JSON list in the
  file's metadata);
- optional ``split`` [N] int: 0 train, 1 val, 2 test (default: 50/20/30% per class, drawn once);
- optional ``text_features`` [K, D]: the class texts' embeddings (then ``--backbone embeddings``
  needs no model at all; otherwise give the backbone that made the image features, whose text
  encoder then encodes the class prompts);
- optional ``inverse_temperature``: the model's 1 / tau of Eq. 1 (default 100, CLIP's).

Item i is the virtual image ``<file stem>/<i>`` in the folder ``<file stem>/`` beside the file,
which also holds the cached few-shot splits (``split_fewshot/``).
"""
import json
import os.path as osp

import numpy as np
import torch
import torch.nn.functional as F

from llu.engine import CN, DatasetBase, Datum, config_extension
from llu.utils import UserError, file_sha256

from . import DatasetFacts, dataset
from .splits import fewshot_and_subsample, refuse_twin_classes, split_by_proportions

SPLIT_CODES = {0: "train", 1: "val", 2: "test"}
DEFAULT_INVERSE_TEMPERATURE = 100.0  # CLIP's learned 1 / tau
LAYOUT = ("a .npz or .safetensors file with image_features [N, D], labels [N], classnames [K] and optionally "
          "split [N] (0 train, 1 val, 2 test), text_features [K, D], inverse_temperature")


@config_extension
def add_embeddings_config(cfg):
    cfg.DATASET.EMBEDDINGS = CN()
    cfg.DATASET.EMBEDDINGS.FILE = "embeddings.npz"  # under DATASET.ROOT
    cfg.DATASET.EMBEDDINGS.NAME = ""  # the dataset's name in results and tables ("": the file's stem)


def _read_arrays(path):
    """{name: numpy array} and the class names of an embeddings file."""
    if path.endswith(".npz"):
        check_npz_sizes(path)
        try:
            with np.load(path, allow_pickle=False) as archive:
                arrays = {name: archive[name] for name in archive.files}
        except Exception as e:  # zipfile, zlib and NumPy raise many types for a damaged file
            raise UserError(f"{path}: cannot be read as an .npz file without pickles ({_first_line(e)})") from None
        names = arrays.pop("classnames", None)
        classnames = ([str(n) for n in names.tolist()] if names is not None and names.ndim == 1
                      and names.dtype.kind in "US" else None)
        return arrays, classnames
    if path.endswith(".safetensors"):
        from safetensors import safe_open
        try:
            with safe_open(path, framework="numpy") as f:
                arrays = {name: f.get_tensor(name) for name in f.keys()}
                metadata = f.metadata() or {}
        except Exception as e:  # SafetensorError, OSError, TypeError (a dtype NumPy lacks), ...
            raise UserError(f"{path}: cannot be read as a safetensors file ({_first_line(e)})") from None
        try:
            classnames = json.loads(metadata["classnames"]) if "classnames" in metadata else None
        except (ValueError, RecursionError):
            classnames = None
        return arrays, classnames
    raise UserError(f"{path}: expected {LAYOUT}")


def _first_line(error):
    text = " ".join(str(error).split())[:200]
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def check_npz_sizes(path):
    """Refuse, before anything is read, an .npz member whose header declares more data than the member
    holds (a damaged file, or one that would have NumPy allocate a huge array for nothing)."""
    import zipfile
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.infolist():
                with archive.open(member) as f:
                    version = np.lib.format.read_magic(f)
                    reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                        np.lib.format.read_array_header_2_0
                    shape, _, dtype = reader(f)
                    header = f.tell()
                declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
                if dtype.hasobject:
                    continue  # refused as a pickle when read
                if declared != member.file_size - header:
                    raise UserError(f"{path}: member {member.filename} declares {shape} {dtype} ({declared:,} bytes) "
                                    f"but holds {member.file_size - header:,} bytes")
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"{path}: cannot be read as an .npz file without pickles ({_first_line(e)})") from None


FLOAT32_MAX = float(np.finfo(np.float32).max)


def unit_rows(array):
    """float32 rows of unit length; rows that already are (to float32 precision) are kept bit for bit."""
    rows = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    if torch.allclose(rows.norm(dim=-1), torch.ones(rows.shape[0]), rtol=0, atol=1e-5):
        return rows
    return F.normalize(rows, dim=-1)


def checked_unit_rows(array, path, key):
    """``unit_rows`` of a float array [n, D], checked in float32, the dtype it is used in: finite there
    (a value beyond float32's range would become inf) and of unit length once normalised (a zero row
    has no direction); one line naming the file and key otherwise."""
    values = np.asarray(array, dtype=np.float64)
    if not np.isfinite(values).all():
        raise UserError(f"{path}: key {key} holds NaN or infinite values; expected {LAYOUT}")
    if np.abs(values).max(initial=0.0) > FLOAT32_MAX:
        raise UserError(f"{path}: key {key} holds values beyond float32's range (up to {FLOAT32_MAX:.3g}), the "
                        f"dtype features are used in; expected {LAYOUT}")
    rows = unit_rows(array)
    norms = rows.norm(dim=-1)
    if not (torch.isfinite(rows).all() and bool(((norms - 1).abs() < 1e-3).all())):
        bad = int(((norms - 1).abs() >= 1e-3).nonzero()[0, 0]) if rows.shape[0] else 0
        raise UserError(f"{path}: key {key} row {bad} cannot be normalised in float32 (zero, or too large); "
                        f"expected {LAYOUT}")
    return rows


class EmbeddingsFile:
    """A checked embeddings file: features, labels, class names, split, text features, 1 / tau."""

    def __init__(self, path):
        if not osp.isfile(path):
            raise UserError(f"{path}: embeddings file not found (DATASET.ROOT / DATASET.EMBEDDINGS.FILE); expected "
                            f"{LAYOUT}")
        self.path = path
        self.sha256 = file_sha256(path)
        arrays, classnames = _read_arrays(path)

        def problem(what):
            return UserError(f"{path}: {what}; expected {LAYOUT}")

        features, labels = arrays.get("image_features"), arrays.get("labels")
        if features is None or labels is None:
            raise problem("image_features and labels are required")
        if features.ndim != 2 or features.dtype.kind != "f" or not np.isfinite(features).all() or 0 in features.shape:
            raise problem(f"image_features must be a finite float array [N, D], got {features.dtype} {features.shape}")
        if labels.shape != (features.shape[0],) or labels.dtype.kind not in "iu":
            raise problem(f"labels must be {features.shape[0]} integers, got {labels.dtype} {labels.shape}")
        if not isinstance(classnames, list) or not classnames or not all(isinstance(n, str) for n in classnames):
            raise problem("classnames are missing or not strings")
        refuse_twin_classes([(name, name) for name in classnames], f"{path}: classnames")
        if labels.min() < 0 or labels.max() >= len(classnames) or len(np.unique(labels)) != len(classnames):
            raise problem(f"labels must be 0 to {len(classnames) - 1}, each class with images")
        self.image_features = checked_unit_rows(features, path, "image_features")
        self.labels = torch.from_numpy(labels.astype(np.int64))
        self.classnames = classnames
        self.split = arrays.get("split")
        if self.split is not None and (self.split.shape != labels.shape or not np.isin(self.split, [0, 1, 2]).all()):
            raise problem(f"split must be {labels.shape[0]} codes 0 (train), 1 (val) or 2 (test)")
        text = arrays.get("text_features")
        if text is not None and (text.shape != (len(classnames), features.shape[1]) or text.dtype.kind != "f"
                                 or not np.isfinite(text).all()):
            raise problem(f"text_features must be finite, [{len(classnames)}, {features.shape[1]}], got {text.shape}")
        self.text_features = None if text is None else checked_unit_rows(text, path, "text_features")
        scale = arrays.get("inverse_temperature", np.array(DEFAULT_INVERSE_TEMPERATURE))
        value = float(scale.reshape(-1)[0]) if np.size(scale) == 1 and scale.dtype.kind in "fiu" else float("nan")
        if not 0 < value <= FLOAT32_MAX:  # used as a float32 (its log is the logit scale): finite there
            raise problem(f"key inverse_temperature must be one positive number finite in float32, got {scale.dtype} {scale.shape}")
        self.inverse_temperature = value

    @property
    def dim(self):
        return self.image_features.shape[1]

    def features_of(self, items):
        """(features [n, D], labels [n]) of dataset items (virtual paths ending in their index)."""
        index = torch.tensor([int(osp.basename(item.impath)) for item in items], dtype=torch.long)
        return self.image_features[index], torch.tensor([item.label for item in items], dtype=torch.long)


def embeddings_path(cfg):
    return osp.join(osp.abspath(osp.expanduser(cfg.DATASET.ROOT)), cfg.DATASET.EMBEDDINGS.FILE)


@dataset
class Embeddings(DatasetFacts, DatasetBase):
    """Items are the rows of an embeddings file; ``self.embeddings`` holds the file."""

    def __init__(self, cfg):
        if Datum.__module__.startswith("dassl"):
            raise UserError("DATASET.NAME Embeddings needs the built-in engine: Dassl's Datum requires an image file "
                            "for every item (unset LLU_ENGINE)")
        path = embeddings_path(cfg)
        self.embeddings = EmbeddingsFile(path)
        self.dataset_dir = osp.splitext(path)[0]
        store = self.embeddings
        items = [Datum(impath=osp.join(self.dataset_dir, f"{i:07d}"), label=int(label),
                       classname=store.classnames[label]) for i, label in enumerate(store.labels.tolist())]
        if store.split is not None:
            train, val, test = ([item for item, code in zip(items, store.split.tolist()) if code == wanted]
                                for wanted in (0, 1, 2))
            for name, part in (("train", train), ("test", test)):
                if not part:
                    raise UserError(f"{path}: its split has no {name} items")
        else:
            groups = [(name, [item.impath for item in items if item.label == label], path)
                      for label, name in enumerate(store.classnames)]
            train, val, test = split_by_proportions(groups)
        train, val, test = fewshot_and_subsample(self, cfg, self.dataset_dir, train, val or None, test)
        super().__init__(train_x=train, val=val, test=test)
