"""Trainers, one module per method, plus the shared CLIP module (``clip_common``).

``register_all()`` imports every trainer module, which registers it in ``TRAINER_REGISTRY`` and
declares its config keys; ``train.py`` calls it. Importing one module alone (for example the
standalone ``llu.trainers.llu_adapter``) loads nothing else.
"""
import importlib

TRAINER_MODULES = ("zsclip", "coop", "cocoop", "prograd", "clip_adapter", "tip_adapter", "llu")


def register_all():
    for name in TRAINER_MODULES:
        importlib.import_module(f"{__name__}.{name}")
