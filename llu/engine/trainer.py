"""Trainer lifecycle with Dassl's hooks: ``TrainerBase`` -> ``SimpleTrainer`` -> ``TrainerX``.

What the project adds to Dassl's trainer is written once, in two mixins that both engines' trainer
classes take: ``ModelCheckpoints`` (with ``TrainerBase``) and ``ProjectRun`` (with ``SimpleTrainer``).
The classes below hold only Dassl's own lifecycle; ``dassl_backend.py`` puts the same mixins over
Dassl's classes (tests/test_engine_backend.py keeps it that way).
"""
import contextlib
import datetime
import math
import os
import os.path as osp
import shutil
import time
from collections import OrderedDict

import torch

from llu import config_files
from llu.results import RunResults
from llu.utils import UserError, atomic_path, log_only, mkdir_if_missing, progress, run_provenance

from .data.data_manager import DataManager
from .evaluation import build_evaluator
from .metrics import METRICS_FILE, TENSORBOARD_DIR, RunMetrics, log_backends
from .registry import Registry
from .utils import (AverageMeter, MetricMeter, load_checkpoint, load_state_dict_strictly, random_state,
                    save_checkpoint, set_random_state)

TRAINER_REGISTRY = Registry("TRAINER")
RESULTS_FILE = "results.json"  # written last: a folder holding it holds a finished run


def finished_run(folder):
    """True if ``folder`` holds a finished run (its results.json)."""
    return bool(folder) and osp.isfile(osp.join(folder, RESULTS_FILE))


def clear_run_folder(folder):
    """Remove what a run wrote into ``folder``, results.json first (``--overwrite``): its config, logs,
    metrics.jsonl, TensorBoard events and checkpoint folders, so that nothing of the old run mixes with
    the new one (a second event file would overlay the first). Files a run does not write are kept."""
    if not osp.isdir(folder):
        return
    names = sorted(os.listdir(folder))
    doomed = [RESULTS_FILE] + [n for n in names if n in ("config.yaml", METRICS_FILE) or n == "log.txt"
                               or n.startswith("log.txt-")]
    doomed += [n for n in names if n == TENSORBOARD_DIR or _is_checkpoint_folder(osp.join(folder, n))]
    for name in dict.fromkeys(doomed):
        path = osp.join(folder, name)
        if osp.isdir(path) and not osp.islink(path):
            shutil.rmtree(path)
        elif osp.lexists(path):
            os.remove(path)
    print(f"Note: --overwrite: removed the run that was in {folder}")


def _is_checkpoint_folder(path):
    """A model's folder of checkpoints (``save_checkpoint``'s: a ``checkpoint`` pointer, model*.pth.tar*)."""
    return osp.isdir(path) and not osp.islink(path) and any(
        name == "checkpoint" or name.startswith("model") and ".pth.tar" in name for name in os.listdir(path))


def build_trainer(cfg):
    return TRAINER_REGISTRY.get(cfg.TRAINER.NAME)(cfg)


class ModelCheckpoints:
    """What a checkpoint holds, where it is found, and resuming from it: the project's versions of
    Dassl's ``save_model``, ``load_model`` and ``resume_model_if_exist``, for the built-in
    ``TrainerBase`` and for Dassl's (``dassl_backend.py``) alike. Reads ``_models``, ``_optims``,
    ``_scheds`` and ``cfg``, which both engines' trainers have."""

    def checkpoint_state(self, name):
        """What is saved for model ``name``; trainers override to drop non-learned buffers."""
        return self._models[name].state_dict()

    def checkpoint_record(self, name, epoch, val_result=None):
        """Everything a checkpoint of model ``name`` holds after ``epoch`` (0-based): the learned
        state, optimiser and schedule, and the random streams, so that a resumed run draws the
        numbers the uninterrupted run would have drawn."""
        optim, sched = self._optims[name], self._scheds[name]
        return {"state_dict": self.checkpoint_state(name), "epoch": epoch + 1,
                "optimizer": optim.state_dict() if optim is not None else None,
                "scheduler": sched.state_dict() if sched is not None else None,
                "val_result": val_result, "random_state": random_state()}

    def save_model(self, epoch, directory, is_best=False, val_result=None, model_name=""):
        self.write_checkpoints({name: self.checkpoint_record(name, epoch, val_result) for name in self.get_model_names()},
                               directory, is_best=is_best, model_name=model_name)

    def write_checkpoints(self, records, directory, is_best=False, model_name=""):
        for name, record in records.items():
            path = save_checkpoint(record, osp.join(directory, name), is_best=is_best, model_name=model_name)
            log_only(f"Checkpoint saved to {path}")

    def resume_model_if_exist(self, directory):
        """Resume from ``directory`` (only called when the user asked with --resume)."""
        names = self.get_model_names()
        paths = [osp.join(directory, name, "checkpoint") for name in names]
        missing = [p for p in paths if not osp.isfile(p)]
        if missing:
            raise UserError(f"--resume {directory}: no checkpoint to resume from ({missing[0]} not found)")
        start_epoch, state = 0, None
        for name, path in zip(names, paths):
            with open(path) as f:
                fpath = osp.join(osp.dirname(path), f.readline().strip())
            checkpoint = load_checkpoint(fpath)
            self.load_checkpoint_state_from(fpath, name, checkpoint)
            if self._optims[name] is not None and checkpoint.get("optimizer"):
                self._optims[name].load_state_dict(checkpoint["optimizer"])
            if self._scheds[name] is not None and checkpoint.get("scheduler"):
                self._scheds[name].load_state_dict(checkpoint["scheduler"])
            if self._optims[name] is not None:
                self._note_kept_learning_rate(name)
            start_epoch, state = checkpoint["epoch"], checkpoint.get("random_state") or state
            print(f"Resumed {name} from {fpath} (next epoch: {start_epoch + 1})")
        if state is not None:
            set_random_state(state)
        else:
            print("Note: the checkpoint holds no random state (an older one): the resumed run draws other numbers "
                  "than an uninterrupted run")
        return start_epoch

    def _note_kept_learning_rate(self, name):
        sched = self._scheds[name]
        saved = sched.base_lrs[0] if sched is not None else self._optims[name].param_groups[0]["lr"]
        asked = self.cfg.OPTIM.LR
        if abs(saved - asked) > 1e-12 * max(abs(saved), abs(asked)):
            print(f"Note: resuming keeps the checkpoint's optimiser and learning rate ({saved:g}); this run's "
                  f"OPTIM.LR {asked:g} is not used (train from scratch to change it)")

    def load_checkpoint_state_from(self, path, name, checkpoint):
        """``load_checkpoint_state`` with the file named in any error."""
        if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
            raise UserError(f"{path}: not a checkpoint of this project (no 'state_dict')")
        try:
            self.load_checkpoint_state(name, checkpoint["state_dict"])
        except UserError as e:
            raise UserError(f"{path}: {e}") from None

    def load_model(self, directory, epoch=None):
        if not directory:
            print("Note that load_model() is skipped as no pretrained model is given")
            return
        self.model_source_dir = directory
        for name in self.get_model_names():
            model_path = self._checkpoint_path(directory, name, epoch)
            if not osp.exists(model_path):
                raise UserError(f"--model-dir {directory}: no model at {model_path} "
                                f"(check --load-epoch and that training finished)")
            checkpoint = load_checkpoint(model_path)
            self.load_checkpoint_state_from(model_path, name, checkpoint)
            val = checkpoint.get("val_result")
            print(f"Load {model_path} to {name} (epoch={checkpoint['epoch']}"
                  + (f", val_result={val:.1f})" if val is not None else ")"))

    @staticmethod
    def _checkpoint_path(directory, name, epoch):
        """The epoch's checkpoint; without an epoch, the best-val model, else the last one saved."""
        if epoch is not None:
            return osp.join(directory, name, f"model.pth.tar-{epoch}")
        best = osp.join(directory, name, "model-best.pth.tar")
        latest = osp.join(directory, name, "checkpoint")
        if not osp.exists(best) and osp.isfile(latest):
            with open(latest) as f:
                return osp.join(directory, name, f.readline().strip())
        return best

    def load_checkpoint_state(self, name, state_dict):
        """Load exactly what ``checkpoint_state`` saved: other keys or shapes are a user error."""
        load_state_dict_strictly(self._models[name], state_dict, f"{self.cfg.TRAINER.NAME}'s {name}")


class ProjectRun:
    """What a run of this project adds to Dassl's ``SimpleTrainer``, for both engines: the config
    written before the data are built, resuming only from ``--resume``, evaluation over
    ``evaluation_batches`` (feature trainers override it), ``results.json``, ``metrics.jsonl`` and
    the trackers of ``LOG.BACKENDS`` (``llu/engine/metrics.py``), and the run's timing. The engine's
    own loop, hooks and evaluator do the rest."""

    TENSORBOARD_EVENTS = True  # record_metrics also writes the epochs' TensorBoard scalars (OUTPUT_DIR/tensorboard)

    def begin_run(self, cfg):
        """What a trainer's ``__init__`` sets before the data are built: the config (written to
        OUTPUT_DIR), the clock and the timing of the run's parts."""
        self.cfg, self.output_dir = cfg, cfg.OUTPUT_DIR
        self.time_start = time.time()
        self.timing = {"setup_seconds": 0.0, "training_seconds": 0.0, "evaluation_seconds": 0.0}
        self.metrics = None  # RunMetrics, opened by the first record
        log_backends(cfg)  # an unknown tracker, or one not installed, stops the run before any work
        self.save_config()

    def save_config(self):
        """The run's config next to its checkpoints; an eval-only run reads it back from --model-dir."""
        mkdir_if_missing(self.output_dir)
        with atomic_path(osp.join(self.output_dir, "config.yaml")) as tmp:
            with open(tmp, "w") as f:
                f.write(self.cfg.dump())

    def before_train(self):
        if self.cfg.RESUME:
            self.start_epoch = self.resume_model_if_exist(self.cfg.RESUME)
        elif any(osp.isfile(osp.join(self.output_dir, name, "checkpoint")) for name in self.get_model_names()):
            print(f"Note: {self.output_dir} holds checkpoints of an earlier run; training from scratch "
                  f"(pass --resume {self.output_dir} to continue it)")
        self.epoch_loop = True  # after_train ends the trackers' runs
        if self.output_dir:
            self.metrics = RunMetrics(self.output_dir, self.start_epoch, self.TENSORBOARD_EVENTS, self.cfg,
                                      self.scalar_step(self.start_epoch + 1))
        self.time_start = time.time()

    def check_evaluated_split(self, dataset):
        """Refuse, before any training, a run whose evaluated split holds no images (a reader whose
        folders were filled for another split layout): its accuracy would be 0 / 0."""
        cfg = self.cfg
        split = "val" if cfg.TEST.SPLIT == "val" and dataset.val else "test"
        if not cfg.TEST.NO_TEST and not (dataset.val if split == "val" else dataset.test):
            raise UserError(f"dataset {cfg.DATASET.NAME} under {cfg.DATASET.ROOT}: its {split} split has no images "
                            f"(DATASET.SUBSAMPLE_CLASSES {cfg.DATASET.SUBSAMPLE_CLASSES}); nothing to evaluate")

    def scalar_step(self, epoch):
        """The TensorBoard step of the first scalar of epoch ``epoch`` (1-based): the epoch itself."""
        return epoch

    def evaluation_batches(self, split):
        """(input, label) pairs of ``split``; feature-based trainers override this."""
        loader = self.val_loader if split == "val" else self.test_loader
        for batch in progress(loader, f"eval {split}", report=False):
            yield self.parse_batch_test(batch)

    @contextlib.contextmanager
    def timed(self, part):
        """Add the block's wall time to ``timing[part]``, less the image encoding inside it (counted apart)."""
        start, extracted = time.time(), self.extraction_seconds()
        try:
            yield
        finally:
            self.timing[part] += time.time() - start - (self.extraction_seconds() - extracted)

    def extraction_seconds(self):
        """Seconds spent encoding images into features so far (trainers with a feature cache count them)."""
        return 0.0

    def timing_record(self):
        """results.json's ``timing``: where the run's time went, in seconds."""
        return {key: round(value, 3) for key, value in self.timing.items()}

    @torch.no_grad()
    def test(self, split=None):
        """Evaluate on ``split``; the final test also writes ``results.json``."""
        with self.timed("evaluation_seconds"):
            return self._test(split)

    def _test(self, split):
        self.set_model_mode("eval")
        self.evaluator.reset()
        if split is None:
            split = self.cfg.TEST.SPLIT
        if split == "val" and self.val_loader is None:
            split = "test"
        print(f"Evaluate on the *{split}* set")
        for input, label in self.evaluation_batches(split):
            output = self.model_inference(input)
            self.evaluator.process(output, label)
        results = self.evaluator.evaluate()
        trained = getattr(self, "metrics", None) is not None  # else an evaluation-only run: epoch 0
        self.record_metrics({"epoch": self.epoch + 1 if trained else 0, "split": split, **results})
        if split == self.cfg.TEST.SPLIT:
            self.save_results(results, split)
        return list(results.values())[0]

    def save_results(self, results, split):
        """Write ``OUTPUT_DIR/results.json``: the one machine-readable record of a run (``llu.results``)."""
        cfg = self.cfg
        record = RunResults(
            dataset=self.dataset_label(cfg), dataset_reader=cfg.DATASET.NAME, trainer=cfg.TRAINER.NAME,
            backbone=cfg.MODEL.BACKBONE.NAME, seed=cfg.SEED, shots=cfg.DATASET.NUM_SHOTS,
            subsample_classes=cfg.DATASET.SUBSAMPLE_CLASSES, eval_split=split, accuracy=results["accuracy"],
            error=results["error"], macro_f1=results["macro_f1"], num_classes=self.num_classes,
            per_class_accuracy={self.lab2cname.get(label, str(label)): acc
                                for label, acc in self.evaluator.per_class_accuracy.items()},
            config_files={"dataset": cfg.SOURCE_FILES.DATASET, "trainer": cfg.SOURCE_FILES.TRAINER},
            elapsed_seconds=round(time.time() - self.time_start, 3), timing=self.timing_record(),
            **self.training_source(), ablation=self.ablation_name(), extras=self.extra_results(),
            provenance=self.provenance())
        record.check_extras(self.RESULT_EXTRAS, type(self).__name__)
        mkdir_if_missing(self.output_dir)
        path = osp.join(self.output_dir, "results.json")
        record.write(path)
        print(f"Results written to {path}")
        if getattr(self, "metrics", None) is not None:
            self.metrics.log_results(record, path)
            if not getattr(self, "epoch_loop", False):  # --eval-only, trainers without epochs: the run ends here
                self.finish_logging()

    def training_source(self):
        """Which data the evaluated model was trained on: this run's, or the loaded model's run.

        The loaded model's folder is recorded relative to this run's, so a moved results tree still reads.
        """
        source = {"train_dataset": self.dataset_label(self.cfg), "train_shots": self.cfg.DATASET.NUM_SHOTS,
                  "train_subsample_classes": self.cfg.DATASET.SUBSAMPLE_CLASSES, "model_dir": ""}
        model_dir = getattr(self, "model_source_dir", "")
        if not model_dir:
            return source
        source["model_dir"] = osp.relpath(osp.abspath(model_dir), osp.abspath(self.output_dir))
        config_path = osp.join(model_dir, "config.yaml")
        if osp.isfile(config_path):
            trained = config_files.read_run_config(config_path, "the trained run's config")
            dataset = trained.get("DATASET", {})
            source.update(train_dataset=self.dataset_label(trained), train_shots=dataset.get("NUM_SHOTS", -1),
                          train_subsample_classes=dataset.get("SUBSAMPLE_CLASSES", "all"))
        return source

    def dataset_label(self, cfg):
        """The dataset's name in results.json and the tables (``cfg`` a config or its dict)."""
        return cfg["DATASET"]["NAME"]

    def record_metrics(self, record):
        """One record of metrics.jsonl and TensorBoard (an epoch's training averages, an evaluation)."""
        if not self.output_dir:
            return
        if getattr(self, "metrics", None) is None:
            self.metrics = RunMetrics(self.output_dir, record["epoch"], self.TENSORBOARD_EVENTS, self.cfg)
        self.metrics.add(record)

    def finish_logging(self, failed=False):
        """End the run in its trackers (failed: it raised); the run's end on both engines, and for
        runs that end without ``after_train`` (``--eval-only``, trainers without epochs)."""
        if getattr(self, "metrics", None) is not None:
            self.metrics.close(failed)

    @contextlib.contextmanager
    def logged(self):
        """Run the block (the run's training or evaluation), then ``finish_logging``."""
        try:
            yield
        except BaseException:
            self.finish_logging(failed=True)
            raise
        self.finish_logging()

    # Trainer-specific entries of results.json ({key: type}): what ``extra_results`` returns, declared.
    RESULT_EXTRAS = {}

    def extra_results(self):
        """Trainer-specific entries for results.json (e.g. a regulariser value), as in ``RESULT_EXTRAS``."""
        return {}

    def ablation_name(self):
        """results.json's ``ablation``: which ablation of the method this run is (Table 4's column), "" for none."""
        return ""

    def provenance(self):
        """results.json's record of what produced the numbers (trainers add their weights' hash)."""
        return run_provenance(self.device)

    def parse_batch_train(self, batch):
        """(input, label); Dassl's TrainerX also returns the domain, which no trainer here reads."""
        return batch["img"].to(self.device), batch["label"].to(self.device)


class TrainerBase(ModelCheckpoints):
    """Holds the registered models with their optimisers and schedulers; runs the epoch loop."""

    def __init__(self):
        self._models = OrderedDict()
        self._optims = OrderedDict()
        self._scheds = OrderedDict()

    def register_model(self, name="model", model=None, optim=None, sched=None):
        if self.__dict__.get("_models") is None:
            raise AttributeError("Cannot assign model before super().__init__() call")
        self._models[name] = model
        self._optims[name] = optim
        self._scheds[name] = sched

    def get_model_names(self, names=None):
        names_real = list(self._models.keys())
        if names is None:
            return names_real
        names = [names] if isinstance(names, str) else names
        for name in names:
            if name not in names_real:
                raise KeyError(f"no model registered as {name!r}")
        return names

    def set_model_mode(self, mode="train", names=None):
        for name in self.get_model_names(names):
            self._models[name].train(mode == "train")

    def update_lr(self, names=None):
        for name in self.get_model_names(names):
            if self._scheds[name] is not None:
                self._scheds[name].step()

    def detect_anomaly(self, loss):
        if not torch.isfinite(loss).all():
            raise FloatingPointError("Loss is infinite or NaN!")

    def model_zero_grad(self, names=None):
        for name in self.get_model_names(names):
            if self._optims[name] is not None:
                self._optims[name].zero_grad()

    def model_backward(self, loss):
        self.detect_anomaly(loss)
        loss.backward()

    def model_update(self, names=None):
        for name in self.get_model_names(names):
            if self._optims[name] is not None:
                self._optims[name].step()

    def model_backward_and_update(self, loss, names=None):
        self.model_zero_grad(names)
        self.model_backward(loss)
        self.model_update(names)

    def train(self, start_epoch, max_epoch):
        self.start_epoch = start_epoch
        self.max_epoch = max_epoch
        self.before_train()
        for self.epoch in range(self.start_epoch, self.max_epoch):
            self.before_epoch()
            self.run_epoch()
            self.after_epoch()
        self.after_train()

    def before_train(self):
        pass

    def after_train(self):
        pass

    def before_epoch(self):
        pass

    def after_epoch(self):
        pass

    def run_epoch(self):
        raise NotImplementedError

    def test(self):
        raise NotImplementedError

    def parse_batch_train(self, batch):
        raise NotImplementedError

    def parse_batch_test(self, batch):
        raise NotImplementedError

    def forward_backward(self, batch):
        raise NotImplementedError

    def model_inference(self, input):
        raise NotImplementedError

    def write_scalar(self, tag, scalar_value, global_step=None):
        """Dassl's call: one scalar to the run's TensorBoard events (``record_metrics`` writes them)."""
        writer = self.metrics.writer() if getattr(self, "metrics", None) else None
        if writer is not None:
            writer.add_scalar(tag, scalar_value, global_step)


class SimpleTrainer(ProjectRun, TrainerBase):
    """Builds data, model and evaluator from a config; trains and tests."""

    def __init__(self, cfg):
        super().__init__()
        self.check_cfg(cfg)
        if torch.cuda.is_available() and cfg.USE_CUDA:
            self.device = torch.device("cuda")
        else:
            self.device = torch.device("cpu")
        self.start_epoch = self.epoch = 0
        self.max_epoch = cfg.OPTIM.MAX_EPOCH
        self.begin_run(cfg)
        self.build_data_loader()
        self.build_model()
        self.evaluator = build_evaluator(cfg, lab2cname=self.lab2cname)
        self.best_result = -float("inf")
        self.timing["setup_seconds"] = time.time() - self.time_start - self.extraction_seconds()

    def check_cfg(self, cfg):
        pass

    def build_data_loader(self):
        dm = DataManager(self.cfg)
        self.train_loader_x = dm.train_loader_x
        self.train_loader_u = dm.train_loader_u
        self.val_loader = dm.val_loader
        self.test_loader = dm.test_loader
        self.num_classes = dm.num_classes
        self.num_source_domains = dm.num_source_domains
        self.lab2cname = dm.lab2cname
        self.dm = dm
        self.check_evaluated_split(dm.dataset)

    def build_model(self):
        raise NotImplementedError

    def train(self):
        super().train(self.start_epoch, self.max_epoch)

    def after_train(self):
        print("Finish training")
        if not self.cfg.TEST.NO_TEST:
            if self.cfg.TEST.FINAL_MODEL == "best_val":
                print("Deploy the model with the best val performance")
                self.load_model(self.output_dir)
            else:
                print("Deploy the last-epoch model")
            self.test()
        elapsed = str(datetime.timedelta(seconds=round(time.time() - self.time_start)))
        print(f"Elapsed: {elapsed}")
        self.finish_logging()

    def after_epoch(self):
        last_epoch = (self.epoch + 1) == self.max_epoch
        do_test = not self.cfg.TEST.NO_TEST
        freq = self.cfg.TRAIN.CHECKPOINT_FREQ
        meet_checkpoint_freq = freq > 0 and (self.epoch + 1) % freq == 0
        if do_test and self.cfg.TEST.FINAL_MODEL == "best_val":
            curr_result = self.test(split="val")
            if curr_result > self.best_result:
                self.best_result = curr_result
                self.save_model(self.epoch, self.output_dir, val_result=curr_result,
                                model_name="model-best.pth.tar")
        if meet_checkpoint_freq or last_epoch:
            self.save_model(self.epoch, self.output_dir)

    def parse_batch_test(self, batch):
        return batch["img"].to(self.device), batch["label"].to(self.device)

    def get_current_lr(self, names=None):
        name = self.get_model_names(names)[0]
        return self._optims[name].param_groups[0]["lr"]


class TrainerX(SimpleTrainer):
    """A trainer on labelled data only (the one CoOp-family trainers subclass)."""

    def run_epoch(self):
        self.set_model_mode("train")
        losses = MetricMeter()
        batch_time = AverageMeter()
        self.num_batches = len(self.train_loader_x)
        epoch_start = end = time.time()
        with self.timed("training_seconds"):
            for self.batch_idx, batch in enumerate(self.train_loader_x):
                loss_summary = self.forward_backward(batch)
                batch_time.update(time.time() - end)
                losses.update(loss_summary)
                self.log_batch(losses, batch_time)
                end = time.time()
        self.log_epoch(losses, time.time() - epoch_start)

    def log_batch(self, losses, batch_time):
        """Every PRINT_FREQ-th batch and the last of each epoch, to log.txt (Dassl's line)."""
        last_batch = self.batch_idx + 1 == self.num_batches
        if (self.batch_idx + 1) % self.cfg.TRAIN.PRINT_FREQ and not last_batch:
            return
        nb_remain = (self.num_batches - self.batch_idx - 1) + (self.max_epoch - self.epoch - 1) * self.num_batches
        eta = str(datetime.timedelta(seconds=int(batch_time.avg * nb_remain)))
        log_only(f"epoch [{self.epoch + 1}/{self.max_epoch}] batch [{self.batch_idx + 1}/{self.num_batches}] "
                 f"time {batch_time.val:.3f} ({batch_time.avg:.3f}) {losses} "
                 f"lr {self.get_current_lr():.4e} eta {eta}")

    def log_epoch(self, losses, seconds):
        """The epoch's averages: a metrics record, and a console line for about ten epochs of a run
        (the first, the last and every tenth of the run)."""
        epoch, lr = self.epoch + 1, self.get_current_lr()
        averages = {name: meter.avg for name, meter in losses.meters.items()}
        self.record_metrics({"epoch": epoch, "split": "train", **averages, "lr": lr, "seconds": round(seconds, 4)})
        every = max(1, math.ceil(self.max_epoch / 10))
        eta = str(datetime.timedelta(seconds=round(seconds * (self.max_epoch - epoch))))
        line = (f"epoch [{epoch}/{self.max_epoch}] " + " ".join(f"{k} {v:.4f}" for k, v in averages.items())
                + f" lr {lr:.4e} ({seconds:.2f} s, eta {eta})")
        if epoch in (1, self.max_epoch) or epoch % every == 0:
            print(line)
        else:
            log_only(line)
