"""Trainers; importing this package registers all of them in ``TRAINER_REGISTRY``."""
from . import zsclip  # noqa: F401
