"""The project's Dassl-compatible engine: Dassl's names (``TrainerX``, ``DATASET_REGISTRY``,
``get_cfg_default``, ...) from one of two backends.

- ``builtin`` (default, ``llu/engine/builtin.py``): the project's own lean implementation;
- ``dassl`` (``llu/engine/dassl_backend.py``): the real Dassl, plus what the project adds to it.

Trainers and datasets take every engine name from here (``from llu.engine import TrainerX``), so the
same files run on either. The backend is chosen once, by ``select_backend`` (``train.py`` calls it
with ``LLU_ENGINE``), before the first name is read; a program that never calls it gets the
built-in one.
"""
import importlib
import os

from llu.utils import UserError

BACKENDS = {"builtin": ".builtin", "dassl": ".dassl_backend"}
# Dassl's names, which both backends export (their __all__; tests/test_engine_backend.py checks).
NAMES = frozenset({
    "get_cfg_default", "CN", "config_extension", "extend_cfg",
    "DATASET_REGISTRY", "DataManager", "DatasetBase", "DatasetWrapper", "Datum", "build_data_loader",
    "build_dataset", "build_transform", "read_image",
    "EVALUATOR_REGISTRY", "Classification", "build_evaluator",
    "build_lr_scheduler", "build_optimizer",
    "TRAINER_REGISTRY", "SimpleTrainer", "TrainerBase", "TrainerX", "build_trainer",
    "collect_env_info", "compute_accuracy", "count_num_param", "listdir_nohidden", "load_checkpoint",
    "load_pretrained_weights", "mkdir_if_missing", "read_json", "set_random_seed", "setup_logger", "write_json",
    "UserError", "Registry",
})
_backend = None  # the module the names come from, once one was read


def select_backend(name=None):
    """Take the engine's names from backend ``name`` (default: ``$LLU_ENGINE``, else builtin).

    Must come before any name is read; choosing another backend afterwards is an error.
    """
    global _backend
    name = name or os.environ.get("LLU_ENGINE") or "builtin"
    if name not in BACKENDS:
        raise UserError(f"LLU_ENGINE must be 'builtin' or 'dassl', got {name!r}")
    module = importlib.import_module(BACKENDS[name], __name__)
    if _backend is not None and _backend is not module:
        raise UserError(f"the engine already runs on {_backend.__name__}; select a backend before importing "
                        f"trainers or datasets")
    _backend = module
    return name


def __getattr__(name):
    if name not in NAMES:  # e.g. a submodule, looked up before it is imported: choose nothing yet
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if _backend is None:
        select_backend("builtin")
    return getattr(_backend, name)


def __dir__():
    return sorted(set(globals()) | NAMES)
