"""Trainers, one module per method, plus the shared CLIP module (``clip_common``).

Each trainer class is marked with ``@trainer``; ``register_all()`` imports every trainer module (which
also declares its config keys) and registers the classes in the engine's ``TRAINER_REGISTRY``;
``train.py`` calls it. A CoOp checkout registers only the trainers it lacks (``llu.dassl_plugin``).
Importing one module alone (for example the standalone ``llu.trainers.llu_adapter``) loads nothing else.
"""
import importlib

TRAINER_MODULES = ("zsclip", "coop", "cocoop", "prograd", "clip_adapter", "tip_adapter", "llu", "kgcoop", "linear_probe",
                   "maple", "promptsrc", "clip_lora", "wiseft")
TRAINERS = {}  # name -> trainer class, filled by @trainer as the modules are imported


def trainer(cls):
    TRAINERS[cls.__name__] = cls
    return cls


def register_all(names=None, keep_existing=False):
    """Register the trainers (all, or ``names``); returns the names skipped because another class of
    that name was registered already (``keep_existing``; otherwise that is an error)."""
    from llu.engine import TRAINER_REGISTRY
    from llu.utils import register_classes
    for module in TRAINER_MODULES:
        importlib.import_module(f"{__name__}.{module}")
    chosen = [TRAINERS[name] for name in (names or TRAINERS)]
    return register_classes(TRAINER_REGISTRY, chosen, keep_existing)
