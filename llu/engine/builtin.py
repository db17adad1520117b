"""The built-in engine (the default backend of ``llu.engine``): where each name of
``llu.engine.__all__`` comes from."""
from llu.utils import UserError  # noqa: F401

from .config import CN, config_extension, extend_cfg, get_cfg_default  # noqa: F401
from .data import (DATASET_REGISTRY, DataManager, DatasetBase, DatasetWrapper, Datum, build_data_loader,  # noqa: F401
                   build_dataset, build_transform, read_image)
from .evaluation import EVALUATOR_REGISTRY, Classification, build_evaluator  # noqa: F401
from .optim import build_lr_scheduler, build_optimizer  # noqa: F401
from .registry import Registry  # noqa: F401
from .trainer import TRAINER_REGISTRY, SimpleTrainer, TrainerBase, TrainerX, build_trainer  # noqa: F401
from .utils import (collect_env_info, compute_accuracy, count_num_param, listdir_nohidden, load_checkpoint,  # noqa: F401
                    load_pretrained_weights, mkdir_if_missing, read_json, set_random_seed, setup_logger, write_json)
