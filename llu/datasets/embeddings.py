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
from .splits import fewshot_and_subsample, split_by_proportions

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
        try:
            with np.load(path, allow_pickle=False) as archive:
                arrays = {name: archive[name] for name in archive.files}
        except (OSError, ValueError) as e:
            raise UserError(f"{path}: cannot be read as an .npz file without pickles ({e})") from None
        names = arrays.pop("classnames", None)
        classnames = [str(n) for n in names.tolist()] if names is not None and names.dtype.kind in "US" else None
        return arrays, classnames
    if path.endswith(".safetensors"):
        from safetensors import SafetensorError, safe_open
        try:
            with safe_open(path, framework="numpy") as f:
                arrays = {name: f.get_tensor(name) for name in f.keys()}
                metadata = f.metadata() or {}
        except (OSError, SafetensorError) as e:
            raise UserError(f"{path}: cannot be read as a safetensors file ({e})") from None
        try:
            classnames = json.loads(metadata["classnames"]) if "classnames" in metadata else None
        except json.JSONDecodeError:
            classnames = None
        return arrays, classnames
    raise UserError(f"{path}: expected {LAYOUT}")


def unit_rows(array):
    """float32 rows of unit length; rows that already are (to float32 precision) are kept bit for bit."""
    rows = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    if torch.allclose(rows.norm(dim=-1), torch.ones(rows.shape[0]), rtol=0, atol=1e-5):
        return rows
    return F.normalize(rows, dim=-1)


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
        if features.ndim != 2 or features.dtype.kind != "f" or not np.isfinite(features).all():
            raise problem(f"image_features must be a finite float array [N, D], got {features.dtype} {features.shape}")
        if labels.shape != (features.shape[0],) or labels.dtype.kind not in "iu":
            raise problem(f"labels must be {features.shape[0]} integers, got {labels.dtype} {labels.shape}")
        if not isinstance(classnames, list) or not classnames or not all(isinstance(n, str) for n in classnames):
            raise problem("classnames are missing or not strings")
        if len(set(classnames)) != len(classnames):
            raise problem("two classes have the same name")
        if labels.min() < 0 or labels.max() >= len(classnames) or len(np.unique(labels)) != len(classnames):
            raise problem(f"labels must be 0 to {len(classnames) - 1}, each class with images")
        self.image_features = unit_rows(features)
        self.labels = torch.from_numpy(labels.astype(np.int64))
        self.classnames = classnames
        self.split = arrays.get("split")
        if self.split is not None and (self.split.shape != labels.shape or not np.isin(self.split, [0, 1, 2]).all()):
            raise problem(f"split must be {labels.shape[0]} codes 0 (train), 1 (val) or 2 (test)")
        text = arrays.get("text_features")
        if text is not None and (text.shape != (len(classnames), features.shape[1]) or not np.isfinite(text).all()):
            raise problem(f"text_features must be finite, [{len(classnames)}, {features.shape[1]}], got {text.shape}")
        self.text_features = None if text is None else unit_rows(text)
        scale = arrays.get("inverse_temperature", np.array(DEFAULT_INVERSE_TEMPERATURE))
        if np.size(scale) != 1 or scale.dtype.kind not in "fiu" or not float(scale.reshape(-1)[0]) > 0:
            raise problem("inverse_temperature must be one positive number")
        self.inverse_temperature = float(scale.reshape(-1)[0])

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
