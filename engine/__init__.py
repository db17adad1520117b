"""The project's Dassl-compatible engine.

Trainers and datasets import everything from here (``from engine import TrainerX``), never from
the submodules, so that the same files run on the real Dassl when ``LLU_ENGINE=dassl`` is set
(see ``engine/dassl_backend.py``). The built-in engine is the default.
"""
import os
import warnings

# clip-anytorch imports pkg_resources, which warns on every start; the pinned setuptools has it.
warnings.filterwarnings("ignore", message="pkg_resources is deprecated")

from .errors import UserError  # noqa: E402
from .registry import Registry  # noqa: E402

ENGINE_NAME = os.environ.get("LLU_ENGINE", "builtin")

if ENGINE_NAME == "builtin":
    from .config import CN, config_extension, extend_cfg, get_cfg_default
    from .data import (DATASET_REGISTRY, DataManager, DatasetBase, DatasetWrapper, Datum, build_data_loader,
                       build_dataset, build_transform, read_image)
    from .evaluation import EVALUATOR_REGISTRY, Classification, build_evaluator
    from .optim import build_lr_scheduler, build_optimizer
    from .trainer import TRAINER_REGISTRY, SimpleTrainer, TrainerBase, TrainerX, build_trainer
    from .utils import (collect_env_info, compute_accuracy, count_num_param, listdir_nohidden, load_checkpoint,
                        load_pretrained_weights, mkdir_if_missing, read_json, set_random_seed, setup_logger,
                        write_json)
elif ENGINE_NAME == "dassl":
    from .dassl_backend import *  # noqa: F401,F403
else:
    raise UserError(f"LLU_ENGINE must be 'builtin' or 'dassl', got {ENGINE_NAME!r}")
