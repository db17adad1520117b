"""Default configuration with the Dassl keys that CoOp-family code reads.

Trainer-specific keys are not declared here: each trainer declares its own
``cfg.TRAINER.<NAME>`` node next to its code (see ``llu/trainers/__init__.py``).
"""
from yacs.config import CfgNode as CN

_C = CN()
_C.VERSION = 1
_C.OUTPUT_DIR = "./output"
_C.RESUME = ""
_C.SEED = -1  # < 0: no seeding
_C.USE_CUDA = True  # used only when a GPU is present
_C.VERBOSE = True

_C.INPUT = CN()
_C.INPUT.SIZE = (224, 224)
_C.INPUT.INTERPOLATION = "bicubic"
_C.INPUT.TRANSFORMS = ("random_resized_crop", "random_flip", "normalize")
_C.INPUT.NO_TRANSFORM = False
_C.INPUT.PIXEL_MEAN = [0.48145466, 0.4578275, 0.40821073]  # CLIP's statistics
_C.INPUT.PIXEL_STD = [0.26862954, 0.26130258, 0.27577711]
_C.INPUT.RRCROP_SCALE = (0.08, 1.0)

_C.DATASET = CN()
_C.DATASET.ROOT = ""
_C.DATASET.NAME = ""
_C.DATASET.NUM_SHOTS = -1  # < 1: the full training set
_C.DATASET.SUBSAMPLE_CLASSES = "all"  # all, base or new (CoOp's base-to-new split)
_C.DATASET.SOURCE_DOMAINS = ()
_C.DATASET.TARGET_DOMAINS = ()

_C.DATALOADER = CN()
_C.DATALOADER.NUM_WORKERS = 0
_C.DATALOADER.K_TRANSFORMS = 1
_C.DATALOADER.RETURN_IMG0 = False
_C.DATALOADER.TRAIN_X = CN()
_C.DATALOADER.TRAIN_X.SAMPLER = "RandomSampler"
_C.DATALOADER.TRAIN_X.BATCH_SIZE = 32
_C.DATALOADER.TEST = CN()
_C.DATALOADER.TEST.SAMPLER = "SequentialSampler"
_C.DATALOADER.TEST.BATCH_SIZE = 100

_C.MODEL = CN()
_C.MODEL.INIT_WEIGHTS = ""
_C.MODEL.BACKBONE = CN()
_C.MODEL.BACKBONE.NAME = "ViT-B/16"
_C.MODEL.BACKBONE.PRETRAINED = True

_C.OPTIM = CN()
_C.OPTIM.NAME = "sgd"  # sgd, adam or adamw
_C.OPTIM.LR = 0.002
_C.OPTIM.WEIGHT_DECAY = 5e-4
_C.OPTIM.MOMENTUM = 0.9
_C.OPTIM.SGD_DAMPNING = 0
_C.OPTIM.SGD_NESTEROV = False
_C.OPTIM.ADAM_BETA1 = 0.9
_C.OPTIM.ADAM_BETA2 = 0.999
_C.OPTIM.LR_SCHEDULER = "cosine"  # cosine, single_step or multi_step
_C.OPTIM.STEPSIZE = (-1,)
_C.OPTIM.GAMMA = 0.1
_C.OPTIM.MAX_EPOCH = 200
_C.OPTIM.WARMUP_EPOCH = -1  # < 1: no warm-up
_C.OPTIM.WARMUP_TYPE = "constant"  # constant or linear
_C.OPTIM.WARMUP_CONS_LR = 1e-5
_C.OPTIM.WARMUP_MIN_LR = 1e-5
_C.OPTIM.WARMUP_RECOUNT = True

_C.TRAIN = CN()
_C.TRAIN.CHECKPOINT_FREQ = 0
_C.TRAIN.PRINT_FREQ = 5
_C.TRAIN.COUNT_ITER = "train_x"

_C.TEST = CN()
_C.TEST.EVALUATOR = "Classification"
_C.TEST.PER_CLASS_RESULT = False
_C.TEST.COMPUTE_CMAT = False
_C.TEST.NO_TEST = False
_C.TEST.SPLIT = "test"  # test or val
_C.TEST.FINAL_MODEL = "last_step"  # last_step or best_val

_C.TRAINER = CN()
_C.TRAINER.NAME = ""

# The config files a run was built from (recorded in results.json).
_C.SOURCE_FILES = CN()
_C.SOURCE_FILES.DATASET = ""
_C.SOURCE_FILES.TRAINER = ""


def get_cfg_default():
    return _C.clone()


# Each trainer or dataset module declares its own keys with ``@config_extension`` next to the
# code that reads them; ``extend_cfg`` applies all of them (``llu.train`` calls it before merging files).
CONFIG_EXTENSIONS = {}  # "module.function" -> the function (a module imported twice declares once)
_UNSET = object()


def config_extension(fn):
    CONFIG_EXTENSIONS[f"{fn.__module__}.{fn.__qualname__}"] = fn
    return fn


def _leaves(cfg, prefix=""):
    for key, value in cfg.items():
        if isinstance(value, CN):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def extend_cfg(cfg):
    """``cfg`` with every key the project's trainers and datasets declare, the same whatever was imported
    before and in whichever order: every declaring module is imported first, and no two declarations
    may set the same key (each key has one place)."""
    from llu import datasets, trainers
    datasets.load_all()
    trainers.load_all()
    declared_by = {}
    for name in sorted(CONFIG_EXTENSIONS):
        before = dict(_leaves(cfg))
        CONFIG_EXTENSIONS[name](cfg)
        after = dict(_leaves(cfg))
        for key in set(before) | set(after):
            if before.get(key, _UNSET) is after.get(key, _UNSET):
                continue  # untouched
            assert key not in declared_by, f"config key {key} is declared by both {declared_by[key]} and {name}"
            declared_by[key] = name
    return cfg
