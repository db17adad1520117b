"""The project's Dassl-compatible engine: Dassl's names (``TrainerX``, ``DATASET_REGISTRY``,
``get_cfg_default``, ...) from one of two backends.

- ``builtin`` (default, ``llu/engine/builtin.py``): the project's own lean implementation;
- ``dassl`` (``llu/engine/dassl_backend.py``): the real Dassl, plus what the project adds to it.

Trainers and datasets take every engine name from here (``from llu.engine import TrainerX``), so the
same files run on either. ``__all__`` below is the one list of these names; each backend module binds
all of them. ``select_backend`` (``train.py`` calls it with ``LLU_ENGINE``) binds them here as plain
module attributes, once, before trainers or datasets are imported. A program that reads a name
without choosing gets the built-in backend at that first read (``__getattr__``, which runs only while
no backend is chosen).
"""
import importlib
import os

from llu.utils import UserError

__all__ = [
    "get_cfg_default", "CN", "config_extension", "extend_cfg",
    "DATASET_REGISTRY", "DataManager", "DatasetBase", "DatasetWrapper", "Datum", "build_data_loader",
    "build_dataset", "build_transform", "read_image",
    "EVALUATOR_REGISTRY", "Classification", "build_evaluator",
    "build_lr_scheduler", "build_optimizer",
    "TRAINER_REGISTRY", "SimpleTrainer", "TrainerBase", "TrainerX", "build_trainer",
    "collect_env_info", "compute_accuracy", "count_num_param", "listdir_nohidden", "load_checkpoint",
    "load_pretrained_weights", "mkdir_if_missing", "read_json", "set_random_seed", "setup_logger", "write_json",
    "UserError", "Registry",
]
BACKENDS = {"builtin": ".builtin", "dassl": ".dassl_backend"}
_backend = None  # the module the names were bound from


def select_backend(name=None):
    """Bind the engine's names from backend ``name`` (default: ``$LLU_ENGINE``, else builtin).

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
    missing = [n for n in __all__ if not hasattr(module, n)]
    assert not missing, f"{module.__name__} lacks {missing}"
    globals().update((n, getattr(module, n)) for n in __all__)
    _backend = module
    return name


def __getattr__(name):
    # Only a name not bound yet gets here: before select_backend, or not an engine name at all (e.g.
    # a submodule looked up before it is imported, which must not choose a backend).
    if name not in __all__ or _backend is not None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    select_backend("builtin")
    return globals()[name]
