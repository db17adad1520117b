"""The engine's names taken from the real Dassl (``LLU_ENGINE=dassl``; see docs/dassl.md).

Trainers and datasets then register into Dassl's registries, read Dassl's ``Datum`` and
``DataManager``, and train in Dassl's ``TrainerX`` loop with its hooks and tensorboard writer.
What the project relies on beyond Dassl is written once, in the built-in engine's modules:

- ``SimpleTrainer`` / ``TrainerX``: Dassl's classes under the project's ``ProjectRun`` and
  ``ModelCheckpoints`` (llu/engine/trainer.py, the same mixins the built-in classes are made of):
  the config written before the data, ``--resume`` only when asked, checkpoints of the learned
  tensors and the last-checkpoint fallback of ``load_model``, ``evaluation_batches``,
  ``results.json`` and ``metrics.jsonl`` written by ``test``, ``(input, label)`` from
  ``parse_batch_train``;
- ``Classification`` / ``build_evaluator``: Dassl's evaluator, also keeping the per-class accuracy
  and naming the error ``error`` as the built-in one does;
- ``DatasetBase``: Dassl's, plus CoOp's ``subsample_classes`` and an error for an empty train split;
- ``DataManager``: Dassl's, also keeping ``tfm_train`` / ``tfm_test`` (the feature cache reads them);
- ``get_cfg_default``: Dassl's tree with the project's defaults and keys (``DATASET.SUBSAMPLE_CLASSES``,
  ``SOURCE_FILES``) laid over it, so one command line gives one config on both engines;
- ``build_lr_scheduler``: the built-in one. Dassl's warm-up schedulers pass ``verbose`` to
  ``LRScheduler`` and fail on torch 2.x; the built-in schedule gives Dassl's learning rates.
- ``read_image``, ``read_json``, ``write_json``, ``load_checkpoint``, ``setup_logger``: the built-in
  ones (errors as ``UserError``, atomic writes, ``weights_only`` loads, stderr in log.txt).

Every name of ``llu.engine.__all__`` is bound here (tests/test_engine_backend.py checks).
"""
import difflib
import importlib.util
import time
from collections import OrderedDict, defaultdict

from llu.utils import UserError

# Checked first, so that the message comes before torch is imported.
if importlib.util.find_spec("dassl") is None:
    raise UserError("LLU_ENGINE=dassl but Dassl is not installed: clone https://github.com/KaiyangZhou/Dassl.pytorch "
                    "and run 'pip install gdown tensorboard pandas wilds==1.2.2 && pip install --no-deps "
                    "--no-build-isolation -e Dassl.pytorch' (see docs/dassl.md), or unset LLU_ENGINE for the built-in "
                    "engine")

from . import config as _builtin_config  # noqa: E402
from .config import CN, config_extension, extend_cfg  # noqa: E402
from .data import DatasetBase as _BuiltinDatasetBase  # noqa: E402
from .data import read_image  # noqa: E402
from .optim import build_lr_scheduler  # noqa: E402
from .trainer import ModelCheckpoints, ProjectRun  # noqa: E402
from .utils import load_checkpoint, read_json, setup_logger, write_json  # noqa: E402

try:
    from dassl.config import get_cfg_default as _dassl_cfg_default
    from dassl.data import DataManager as _DasslDataManager
    from dassl.data import DatasetWrapper
    from dassl.data.data_manager import build_data_loader
    from dassl.data.datasets import DATASET_REGISTRY, Datum
    from dassl.data.datasets import DatasetBase as _DasslDatasetBase
    from dassl.data.datasets import build_dataset as _dassl_build_dataset
    from dassl.data.transforms import build_transform
    from dassl.engine import TRAINER_REGISTRY, TrainerBase
    from dassl.engine import SimpleTrainer as _DasslSimpleTrainer
    from dassl.engine import TrainerX as _DasslTrainerX
    from dassl.engine import build_trainer as _dassl_build_trainer
    from dassl.evaluation import EVALUATOR_REGISTRY
    from dassl.evaluation import Classification as _DasslClassification
    from dassl.evaluation import build_evaluator as _dassl_build_evaluator
    from dassl.metrics import compute_accuracy
    from dassl.optim import build_optimizer
    from dassl.utils import (Registry, collect_env_info, count_num_param, listdir_nohidden, load_pretrained_weights,
                             mkdir_if_missing, set_random_seed)
except ImportError as e:
    # A requirement of Dassl's import chain (tensorboard, gdown, wilds, ...) or a Dassl without these names.
    raise UserError(f"LLU_ENGINE=dassl: Dassl is installed but cannot be imported ({type(e).__name__}: {e}); "
                    f"install what its import needs (pip install gdown tensorboard pandas wilds==1.2.2, see "
                    f"docs/dassl.md) or a current Dassl.pytorch") from None


# ---------------------------------------------------------------------------------------------
# Config

def _overlay(cfg, defaults):
    """Set every key of ``defaults`` in ``cfg`` (recursively), adding the ones ``cfg`` lacks."""
    for key, value in defaults.items():
        if isinstance(value, CN) and isinstance(cfg.get(key), CN):
            _overlay(cfg[key], value)
        else:
            cfg[key] = value.clone() if isinstance(value, CN) else value


def get_cfg_default():
    """Dassl's config with the built-in engine's defaults laid over it.

    Keys only Dassl has (``MODEL.HEAD``, ``INPUT.CUTOUT_N``, ...) keep Dassl's defaults; the keys the
    project declares take the project's values (CLIP's pixel statistics, bicubic resizing, ...) or
    are added (``DATASET.SUBSAMPLE_CLASSES``, ``SOURCE_FILES``).
    """
    cfg = _dassl_cfg_default()
    _overlay(cfg, _builtin_config.get_cfg_default())
    return cfg


# ---------------------------------------------------------------------------------------------
# Registries: an unknown name is a user error, as on the built-in engine

def _require_registered(registry, name, what):
    names = registry.registered_names()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.4)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UserError(f"unknown {what} '{name}'{hint} (registered: {', '.join(sorted(names))})")


def build_dataset(cfg):
    _require_registered(DATASET_REGISTRY, cfg.DATASET.NAME, "dataset")
    return _dassl_build_dataset(cfg)


def build_trainer(cfg):
    _require_registered(TRAINER_REGISTRY, cfg.TRAINER.NAME, "trainer")
    return _dassl_build_trainer(cfg)


# ---------------------------------------------------------------------------------------------
# Data

class DatasetBase(_DasslDatasetBase):
    """Dassl's ``DatasetBase`` with CoOp's base/new class split (the built-in algorithm)."""

    def __init__(self, train_x=None, train_u=None, val=None, test=None):
        if not train_x:
            raise UserError(f"{type(self).__name__}: the training split is empty")
        super().__init__(train_x=train_x, train_u=train_u, val=val, test=test)

    @staticmethod
    def subsample_classes(*args, subsample="all"):
        output = _BuiltinDatasetBase.subsample_classes(*args, subsample=subsample)
        if subsample == "all":
            return output
        # The kept items were relabelled as the built-in Datum; make them Dassl's.
        return [[Datum(impath=item.impath, label=item.label, domain=item.domain, classname=item.classname)
                 for item in items] for items in output]


def _keep_transforms(dm):
    """Dassl's ``DataManager`` does not keep its transforms; feature trainers read them."""
    if not hasattr(dm, "tfm_train"):
        dm.tfm_train = dm.train_loader_x.dataset.transform
        dm.tfm_test = dm.test_loader.dataset.transform
    return dm


class DataManager(_DasslDataManager):
    """Dassl's ``DataManager`` that also keeps ``tfm_train`` and ``tfm_test``."""

    def __init__(self, cfg, custom_tfm_train=None, custom_tfm_test=None, dataset_wrapper=None):
        super().__init__(cfg, custom_tfm_train, custom_tfm_test, dataset_wrapper)
        _keep_transforms(self)


# ---------------------------------------------------------------------------------------------
# Evaluation

class Classification(_DasslClassification):
    """Dassl's evaluator (its printed lines) that also keeps the per-class accuracy and names the
    error ``error``, as the built-in one does: ``results.json`` and ``metrics.jsonl`` read both."""

    def __init__(self, cfg, lab2cname=None, **kwargs):
        super().__init__(cfg, lab2cname=lab2cname, **kwargs)
        self._class_hits = defaultdict(list)

    def reset(self):
        super().reset()
        self._class_hits = defaultdict(list)

    def process(self, mo, gt):
        super().process(mo, gt)
        for label, hit in zip(gt.tolist(), mo.max(1)[1].eq(gt).tolist()):
            self._class_hits[label].append(hit)

    def evaluate(self):
        results = super().evaluate()
        self.per_class_accuracy = {label: 100.0 * sum(hits) / len(hits)
                                   for label, hits in sorted(self._class_hits.items())}
        return OrderedDict(("error" if key == "error_rate" else key, value) for key, value in results.items())


def build_evaluator(cfg, **kwargs):
    """The evaluator ``TEST.EVALUATOR`` names, from Dassl's registry; ``Classification`` is the one above."""
    if cfg.TEST.EVALUATOR == "Classification":
        return Classification(cfg, **kwargs)
    return _dassl_build_evaluator(cfg, **kwargs)


# ---------------------------------------------------------------------------------------------
# Trainers: Dassl's classes under the project's two mixins (llu/engine/trainer.py), which the
# built-in classes use as well; Dassl's loop and hooks (train, run_epoch, after_epoch, after_train,
# the tensorboard writer) do the rest.

class SimpleTrainer(ProjectRun, ModelCheckpoints, _DasslSimpleTrainer):
    """Dassl's ``SimpleTrainer`` with the project's checkpoints, run records and evaluator."""

    TENSORBOARD_EVENTS = False  # Dassl writes its own scalars (through the run's writer); metrics.jsonl gets the evaluations

    def __init__(self, cfg):
        # As the built-in SimpleTrainer: check the config and write it before the data are built;
        # Dassl's __init__ then builds data, model and its evaluator (and checks the config again).
        self.check_cfg(cfg)
        self.begin_run(cfg)
        super().__init__(cfg)
        self.evaluator = build_evaluator(cfg, lab2cname=self.lab2cname)
        self.timing["setup_seconds"] = time.time() - self.time_start - self.extraction_seconds()

    def build_data_loader(self):
        _require_registered(DATASET_REGISTRY, self.cfg.DATASET.NAME, "dataset")
        try:
            super().build_data_loader()
        except AssertionError:  # Dassl's build_data_loader asserts that each loader has batches: say which
            dataset = build_dataset(self.cfg)
            self.check_evaluated_split(dataset)
            if not dataset.test:
                raise UserError(f"dataset {self.cfg.DATASET.NAME} under {self.cfg.DATASET.ROOT}: its test split has "
                                f"no images, and Dassl builds a test loader for every run (its DataManager "
                                f"asserts that the loader is not empty)") from None
            raise
        _keep_transforms(self.dm)

    def before_train(self):
        # The project's hook (resume only from --resume: Dassl resumes from OUTPUT_DIR whenever it
        # holds checkpoints), then Dassl's writer: the run's own (OUTPUT_DIR/tensorboard, where the
        # config and HParams go too; None without tensorboard in LOG.BACKENDS), which Dassl's
        # init_writer then keeps.
        super().before_train()
        self._writer = self.metrics.writer() if self.metrics is not None else None
        self._epoch_averages = {}

    def scalar_step(self, epoch):
        # Dassl's steps count batches: epoch's first is (epoch - 1) * batches per epoch.
        return (epoch - 1) * len(self.train_loader_x)

    def write_scalar(self, tag, scalar_value, global_step=None):
        # Dassl's run_epoch writes each batch's running averages of the epoch; the last of an epoch
        # is its average, which after_epoch records as the built-in engine's log_epoch does.
        super().write_scalar(tag, scalar_value, global_step)
        split, _, name = tag.partition("/")
        if split == "train" and name:
            self._epoch_averages[name] = scalar_value

    def after_epoch(self):
        if getattr(self, "_epoch_averages", None):  # metrics.jsonl and the trackers: the epoch's averages
            self.record_metrics({"epoch": self.epoch + 1, "split": "train", **self._epoch_averages})
        self._epoch_averages = {}
        super().after_epoch()

    def after_train(self):
        super().after_train()  # the final test, then Dassl closes its writer
        self.finish_logging()


class TrainerX(SimpleTrainer, _DasslTrainerX):
    """Dassl's ``TrainerX`` (its ``run_epoch``) with the project's additions."""
