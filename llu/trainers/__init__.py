"""Trainers, one module per method, plus the shared CLIP module (``clip_common``).

Each trainer class is marked with ``@trainer``, which puts it in ``TRAINERS``; ``load_all()`` imports
every trainer module (each also declares its config keys), and ``register_all()`` then registers the
classes in the engine's ``TRAINER_REGISTRY`` (``llu.train`` calls it, once the engine's backend is
chosen). A CoOp checkout registers only the trainers it lacks (``llu.dassl_plugin``). Importing this
package, or one module alone (the standalone ``llu.trainers.llu_adapter``), loads nothing else.

What the tables need to know about a trainer is an attribute of its class (``ClipTrainer``):
``display_name``, ``learns``, ``trains_epochs``.
"""
from llu.catalog import Catalog

TRAINERS = trainer = Catalog()  # name -> trainer class, filled by @trainer as the modules are imported


def load_all():
    """Import every trainer module, so that ``TRAINERS`` holds every trainer and each has declared its
    config keys. Not done at import: the classes derive from the engine's backend, chosen before."""
    from . import zsclip, coop, cocoop, prograd, clip_adapter, tip_adapter, llu  # noqa: F401  (the tables' order)
    from . import kgcoop, maple, promptsrc, clip_lora, linear_probe, wiseft  # noqa: F401
    from . import llu_bank  # noqa: F401
    return TRAINERS


def register_all(names=None, keep_existing=False):
    """Register the trainers (all, or ``names``) in the engine's registry (``Catalog.register_into``)."""
    from llu.engine import TRAINER_REGISTRY
    return load_all().register_into(TRAINER_REGISTRY, names, keep_existing)
