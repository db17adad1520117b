"""Default configuration with the Dassl keys that CoOp-family code reads.

Each key has Dassl's default (``dassl/config/defaults.py``) except the few in ``DASSL_DEFAULTS``,
where the project deliberately starts from CLIP's settings instead. Trainer-specific keys are not
declared here: each trainer declares its own ``cfg.TRAINER.<NAME>`` node next to its code (see
``llu/trainers/__init__.py``).
"""
from yacs.config import CfgNode as CN

from llu.utils import dotted_items

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
# Test images (data/transforms.py): "shortest" resizes the shortest side to SIZE, then center-crops;
# "squash" resizes the whole image to SIZE (SigLIP, some OpenCLIP models). Like SIZE, PIXEL_MEAN/STD and
# INTERPOLATION, train.py sets it to the backbone's before the config is frozen.
_C.INPUT.RESIZE_MODE = "shortest"

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


# Dassl's defaults (0.6.3) for the keys above whose default here differs: a CoOp checkout's train.py
# starts from Dassl's (llu.dassl_plugin only adds the keys Dassl lacks; CoOp's own TRAINER.COOP and
# TRAINER.COCOOP keys have the defaults of llu/trainers/coop.py and cocoop.py), so a shipped config must
# set each of these keys that its trainer reads to give the same run there. tests/test_config_defaults.py
# checks the shipped configs against this table, and the table against Dassl where Dassl is installed.
DASSL_DEFAULTS = {
    "INPUT.INTERPOLATION": "bilinear",
    "INPUT.TRANSFORMS": (),  # no normalisation at all
    "INPUT.PIXEL_MEAN": [0.485, 0.456, 0.406],  # ImageNet's statistics
    "INPUT.PIXEL_STD": [0.229, 0.224, 0.225],
    "DATALOADER.NUM_WORKERS": 4,
    "DATALOADER.TEST.BATCH_SIZE": 32,
    "MODEL.BACKBONE.NAME": "",
    "OPTIM.NAME": "adam",
    "OPTIM.LR": 0.0003,
    "OPTIM.LR_SCHEDULER": "single_step",
    "OPTIM.MAX_EPOCH": 10,
    "OPTIM.WARMUP_TYPE": "linear",
    "TRAIN.PRINT_FREQ": 10,
}


# Each trainer or dataset module declares its own keys with ``@config_extension`` next to the
# code that reads them; ``extend_cfg`` applies all of them (``llu.train`` calls it before merging files).
CONFIG_EXTENSIONS = {}  # "module.function" -> the function (a module imported twice declares once)
_UNSET = object()


def config_extension(fn):
    CONFIG_EXTENSIONS[f"{fn.__module__}.{fn.__qualname__}"] = fn
    return fn


def extend_cfg(cfg):
    """``cfg`` with every key the project's trainers and datasets declare, the same whatever was imported
    before and in whichever order: every declaring module is imported first, and no two declarations
    may set the same key (each key has one place)."""
    from llu import datasets, trainers
    datasets.load_all()
    trainers.load_all()
    declared_by = {}
    for name in sorted(CONFIG_EXTENSIONS):
        before = dict(dotted_items(cfg))
        CONFIG_EXTENSIONS[name](cfg)
        after = dict(dotted_items(cfg))
        for key in set(before) | set(after):
            if before.get(key, _UNSET) is after.get(key, _UNSET):
                continue  # untouched
            assert key not in declared_by, f"config key {key} is declared by both {declared_by[key]} and {name}"
            declared_by[key] = name
    return cfg


# ---------------------------------------------------------------------------------------------
# Comparing a run's config with the run it continues (``--resume``)

# Keys that cannot change a run's numbers, so a resumed run may differ from the run it continues in
# them: where its files go and what it resumes from, how much it logs, which epochs it also keeps as
# checkpoints, how many processes load images (the feature-trained methods never train on the image
# loader), where image features are cached and how much, and the names of the config files (their
# values are compared).
RESULT_NEUTRAL_KEYS = frozenset({
    "OUTPUT_DIR", "RESUME", "VERBOSE", "TRAIN.PRINT_FREQ", "TRAIN.CHECKPOINT_FREQ", "DATALOADER.NUM_WORKERS",
    "FEATURES.CACHE_DIR", "FEATURES.CACHE_MAX_GB", "SOURCE_FILES.DATASET", "SOURCE_FILES.TRAINER",
    "LOG.BACKENDS", "LOG.PROJECT", "LOG.GROUP", "LOG.DIR", "LOG.MLFLOW_TRACKING_URI",
})
# The learning-rate schedule: ``--resume-with-new-schedule`` accepts a change to these (the checkpoint's
# optimiser state and learning rate are kept; the epochs left follow the new settings).
SCHEDULE_KEYS = frozenset({
    "OPTIM.LR", "OPTIM.MAX_EPOCH", "OPTIM.LR_SCHEDULER", "OPTIM.STEPSIZE", "OPTIM.GAMMA", "OPTIM.WARMUP_EPOCH",
    "OPTIM.WARMUP_TYPE", "OPTIM.WARMUP_CONS_LR", "OPTIM.WARMUP_MIN_LR", "OPTIM.WARMUP_RECOUNT",
})
_ABSENT = object()


def config_differences(before, after, ignored=RESULT_NEUTRAL_KEYS):
    """``[(key, value before, value after)]`` where two configs (as the dicts their yaml reads back to)
    differ, keys sorted, ``ignored`` left out; a key one of them lacks has the value ``None``."""
    before, after = dict(dotted_items(before)), dict(dotted_items(after))
    keys = sorted((set(before) | set(after)) - set(ignored))
    return [(key, before.get(key), after.get(key)) for key in keys
            if before.get(key, _ABSENT) != after.get(key, _ABSENT)]


def describe_differences(differences):
    """``DATASET.NUM_SHOTS 16 -> 4, TRAINER.LLU.GAMMA 20.0 -> 5.0``"""
    return ", ".join(f"{key} {_shown(before)} -> {_shown(after)}" for key, before, after in differences)


def _shown(value):
    if value is None:
        return "(absent)"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_shown(v) for v in value) + "]"
    if value == "":
        return "''"
    return str(value)
