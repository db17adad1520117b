"""results.json: the one machine-readable record of a run, written by the trainer and read by the report.

``RunResults`` is that record: the trainer builds one and writes it (``write``); the report reads each file
with ``RunResults.from_json``, which checks every field and raises ``ResultsError`` (one line naming the
file and what was expected) for a file that is not UTF-8, not JSON, or has a field of the wrong type.

Schema versions (``schema_version``; a file without it is version 1):

- 1: the fields below, less ``schema_version`` and ``ablation``.
- 2: adds ``schema_version`` and ``ablation``, the ablation of the method the run is (Table 4's column,
  e.g. ``no_mask`` from ``TRAINER.LLU.ABLATION``), ``""`` for the method itself. A version 1 record
  reads with ``ablation`` None: not recorded (the report then falls back on the config file's name).

Method extras (LLU's ``llu_regularizer``, Tip-Adapter's ``tip_alpha``, ...) sit at the top level of the
file, as in version 1; a trainer declares the ones it writes in its ``RESULT_EXTRAS`` ({key: type}), and
``RunResults.check_extras`` holds ``extra_results`` to that. Torch-free.
"""
import json
import math
from dataclasses import dataclass, field, fields

from llu.utils import UserError, write_text

SCHEMA_VERSION = 2
SUBSAMPLES = ("all", "base", "new")
NUMBER = (int, float)


class ResultsError(UserError):
    """A results.json that cannot be used (unreadable, not JSON, a field missing or of the wrong type)."""


@dataclass
class RunResults:
    """One run's results (see the module docstring); the file lists them in ``FILE_ORDER``."""
    # What was evaluated, by what (required in every version)
    dataset: str
    trainer: str
    backbone: str
    seed: int
    shots: int
    subsample_classes: str  # the evaluated class split: all, base or new
    accuracy: float  # percent
    num_classes: int
    config_files: dict  # {"dataset": path, "trainer": path} relative to the repository
    train_dataset: str  # what the evaluated model was trained on (this run's data, or the loaded model's)
    train_subsample_classes: str
    # Written by train.py since version 1, optional when read
    dataset_reader: str = None  # DATASET.NAME (``dataset`` is the display name)
    eval_split: str = None
    error: float = None
    macro_f1: float = None
    per_class_accuracy: dict = field(default_factory=dict)  # class name -> percent
    elapsed_seconds: float = None
    timing: dict = None  # where the time went, seconds
    train_shots: int = None
    model_dir: str = ""  # the loaded model's folder relative to this run's ("" when none was loaded)
    ablation: str = None  # version 2: the ablation this run is, "" for the method itself; None: version 1
    extras: dict = field(default_factory=dict)  # the trainer's RESULT_EXTRAS, top-level keys in the file
    provenance: dict = None  # what produced the numbers: weights' hash, commit, versions, hardware, time
    schema_version: int = SCHEMA_VERSION

    def as_dict(self):
        """The file's content: ``schema_version`` first, then the fields, the extras before the provenance."""
        content = {}
        for key in FILE_ORDER:
            value = getattr(self, key)
            if key not in OPTIONAL or value is not None:
                content[key] = value
        provenance = content.pop("provenance", None)
        content.update(self.extras)
        if provenance is not None:
            content["provenance"] = provenance
        return content

    def to_json(self):
        return json.dumps(self.as_dict(), indent=2)

    def write(self, path):
        """Check the record (as the report will read it) and write it to ``path`` atomically."""
        RunResults.from_dict(json.loads(self.to_json()), path)
        write_text(self.to_json(), path)

    @classmethod
    def from_json(cls, path):
        """The checked record of the results.json at ``path``; ``ResultsError`` when it cannot be used."""
        return cls.from_dict(read_json_file(path), path)

    @classmethod
    def from_dict(cls, content, path):
        if not isinstance(content, dict):
            raise ResultsError(f"{path}: expected a JSON object of run results")
        version = content.get("schema_version", 1)
        check_type(version, int, "schema_version", path)
        if not 1 <= version <= SCHEMA_VERSION:
            raise ResultsError(f"{path}: schema_version {version} is not one this version of llu reads "
                               f"(1 to {SCHEMA_VERSION}); expected a results.json written by train.py")
        required = REQUIRED if version == 1 else {**REQUIRED, "ablation": str}
        for key, kind in required.items():
            if key not in content:
                raise ResultsError(f"{path}: missing field '{key}' (expected {EXPECTED[kind]})")
            check_type(content[key], kind, key, path)
        for key, kind in OPTIONAL.items():
            if content.get(key) is not None:
                check_type(content[key], kind, key, path)
        check_values(content, path)
        known = {f.name for f in fields(cls)} - {"extras"}
        values = {key: value for key, value in content.items() if key in known}
        values.update(schema_version=version, model_dir=content.get("model_dir") or "",
                      per_class_accuracy=content.get("per_class_accuracy") or {})
        return cls(**values, extras={key: value for key, value in content.items() if key not in known})

    def check_extras(self, declared, owner):
        """Our invariant: the extras are ``declared`` ({key: type}, the trainer's RESULT_EXTRAS) and of their types."""
        for key, value in self.extras.items():
            if key not in declared:
                raise TypeError(f"{owner}.extra_results writes '{key}', which its RESULT_EXTRAS does not declare")
            kind = NUMBER if declared[key] is float else declared[key]
            if not isinstance(value, kind) or isinstance(value, bool):
                raise TypeError(f"{owner}.extra_results: '{key}' is {type(value).__name__}, declared {declared[key]}")
            if key in {f.name for f in fields(self)}:
                raise TypeError(f"{owner}.extra_results: '{key}' is a field of every results.json")


# Field types as checked on reading (a number may be an int or a float; a bool is never a number).
REQUIRED = {"dataset": str, "trainer": str, "backbone": str, "seed": int, "shots": int, "subsample_classes": str,
            "accuracy": NUMBER, "num_classes": int, "config_files": dict, "train_dataset": str,
            "train_subsample_classes": str}
OPTIONAL = {"dataset_reader": str, "eval_split": str, "error": NUMBER, "macro_f1": NUMBER,
            "per_class_accuracy": dict, "elapsed_seconds": NUMBER, "timing": dict, "train_shots": NUMBER,
            "model_dir": str, "ablation": str, "provenance": dict}
# The order of the fields in the file (version 1's, with schema_version first); the extras go before provenance.
FILE_ORDER = ("schema_version", "dataset", "dataset_reader", "trainer", "backbone", "seed", "shots",
              "subsample_classes", "eval_split", "accuracy", "error", "macro_f1", "num_classes",
              "per_class_accuracy", "config_files", "ablation", "elapsed_seconds", "timing", "train_dataset",
              "train_shots", "train_subsample_classes", "model_dir", "provenance")
PROVENANCE_TEXT = ("backbone_sha256", "gpu", "cpu_capability")  # provenance entries the report reads
EXPECTED = {str: "a string", int: "an integer", NUMBER: "a number", dict: "an object"}


def check_type(value, kind, key, path):
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ResultsError(f"{path}: field '{key}' has the wrong type ({type(value).__name__}: {value!r}); "
                           f"expected {EXPECTED[kind]}")


def check_values(content, path):
    accuracy = content["accuracy"]
    if math.isnan(accuracy) or not 0 <= accuracy <= 100:
        raise ResultsError(f"{path}: field 'accuracy' must be a percentage in [0, 100], got {accuracy!r}")
    for key in ("subsample_classes", "train_subsample_classes"):
        if content[key] not in SUBSAMPLES:
            raise ResultsError(f"{path}: field '{key}' must be one of {', '.join(SUBSAMPLES)}, got {content[key]!r}")
    for key in PROVENANCE_TEXT:
        value = (content.get("provenance") or {}).get(key)
        if value is not None and not isinstance(value, str):
            raise ResultsError(f"{path}: field 'provenance.{key}' has the wrong type "
                               f"({type(value).__name__}: {value!r}); expected a string")


def read_json_file(path):
    """The JSON content of ``path``; ``ResultsError`` (one line) when it is unreadable, not UTF-8 or not JSON."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ResultsError(f"{path}: cannot be read ({e.strerror})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ResultsError(f"{path}: not UTF-8 text (byte {data[e.start]:#04x} at offset {e.start}); "
                           f"expected a JSON file") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ResultsError(f"{path}: not valid JSON ({e}); expected a JSON file") from None
    except (ValueError, RecursionError) as e:  # a number too long to convert, nesting too deep
        raise ResultsError(f"{path}: not a readable JSON file ({type(e).__name__}); expected a JSON file") from None
