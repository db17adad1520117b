"""Trainers; importing this package registers all of them in ``TRAINER_REGISTRY``."""
from . import zsclip  # noqa: F401
from . import coop  # noqa: F401
from . import cocoop  # noqa: F401
from . import prograd  # noqa: F401
from . import clip_adapter  # noqa: F401
from . import tip_adapter  # noqa: F401
from . import llu  # noqa: F401
