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
    if _backend is None:
        select_backend("builtin")
    if name in _backend.__all__:
        return getattr(_backend, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_backend.__all__ if _backend else ()))
