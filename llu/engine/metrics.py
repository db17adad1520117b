"""A run's log: ``OUTPUT_DIR/metrics.jsonl`` (one JSON object per epoch and per evaluation), always,
and the experiment trackers ``LOG.BACKENDS`` names, each imported only when named:

- ``tensorboard`` (the default): the same scalars as event files in ``OUTPUT_DIR/tensorboard``, the
  frozen config as text, and at the end the run's settings and results for the HParams tab (one
  session per run, in the run's own folder, no sub-runs); a fresh run replaces the folder's event
  files, a resumed one continues them;
- ``wandb``: a W&B run (``LOG.PROJECT``, group ``LOG.GROUP``) with the config, the same metrics by
  epoch, the results as its summary and ``results.json`` as an artifact; offline with
  ``WANDB_MODE=offline``, its files under ``LOG.DIR/wandb``;
- ``mlflow``: an MLflow run in the experiment ``LOG.GROUP`` (else ``LOG.PROJECT``) with the config as
  params, the metrics by epoch, the results, and ``results.json`` and ``config.yaml`` as artifacts;
  the tracking URI is ``LOG.MLFLOW_TRACKING_URI``, else ``$MLFLOW_TRACKING_URI``, else a file store
  in ``LOG.DIR/mlruns``.

``llu sweep`` sets ``LLU_LOG_GROUP`` (the protocol) and ``LLU_LOG_DIR`` (its results tree) for its
runs, so that a sweep's runs are one W&B group and one MLflow experiment in one store. metrics.jsonl
is rewritten whole and atomically at every record, so a reader never sees half a line; a resumed run
keeps the records of the epochs it resumes after.
"""
import glob
import importlib.util
import json
import os
import os.path as osp
import time

from llu.utils import UserError, dotted_items, install_command, log_only, require, signals_deferred, write_text

from .config import CN, config_extension

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
EVENT_FILES = "events.out.tfevents.*"  # the names TensorBoard's writers give their files
RESULT_METRICS = ("accuracy", "error", "macro_f1")  # results.json's numbers logged as results/<name>


@config_extension
def add_log_keys(cfg):
    cfg.LOG = CN()
    # Comma-separated trackers: tensorboard, wandb, mlflow ("none": metrics.jsonl only).
    cfg.LOG.BACKENDS = "tensorboard"
    cfg.LOG.PROJECT = "llu"  # the W&B project (and MLflow's experiment when there is no group)
    cfg.LOG.GROUP = ""  # the W&B group and MLflow experiment; "": $LLU_LOG_GROUP (llu sweep: the protocol)
    cfg.LOG.DIR = ""  # W&B's and MLflow's local files; "": $LLU_LOG_DIR (llu sweep: its tree), else OUTPUT_DIR
    cfg.LOG.MLFLOW_TRACKING_URI = ""  # "": $MLFLOW_TRACKING_URI, else a file store in LOG.DIR/mlruns


def read_metrics(path):
    """The records of a metrics.jsonl ([] if there is none)."""
    if not osp.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def log_backends(cfg):
    """The trackers ``LOG.BACKENDS`` names, checked: each known and its package installed (one line
    naming the extra otherwise). tensorboard alone may be missing: then metrics.jsonl only, as before."""
    text = cfg.LOG.BACKENDS if cfg is not None and "LOG" in cfg else "tensorboard"
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    names = [] if names == ["none"] else names
    for name in names:
        if name not in BACKENDS:
            raise UserError(f"LOG.BACKENDS: unknown backend {name!r}; expected a comma-separated list of "
                            f"{', '.join(BACKENDS)} (or none)")
        if name != "tensorboard" and importlib.util.find_spec(name) is None:
            raise UserError(f"LOG.BACKENDS {name} needs {name}, which is not installed: {install_command(name)}")
    return list(dict.fromkeys(names))


def scalars(record):
    """``{split/key: value}`` of a metrics record's numbers."""
    return {f"{record['split']}/{key}": value for key, value in record.items()
            if key not in ("epoch", "split") and isinstance(value, (int, float)) and not isinstance(value, bool)}


def result_scalars(results):
    """``{results/name: value}`` of a run's results (``RunResults``): accuracy, error, macro F1 and the
    method's extras."""
    named = {name: getattr(results, name) for name in RESULT_METRICS}
    named.update(results.extras)
    return {f"results/{name}": value for name, value in named.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)}


def run_hparams(cfg, results):
    """What a run is, for comparing runs by their settings: its trainer, dataset, class split, shots,
    seed, backbone and config file, the schedule, and every key of its method's config node
    (``TRAINER.<NAME>``, matched by name: ``TipAdapterF`` reads ``TRAINER.TIP_ADAPTER``) and any
    other ``TRAINER`` key set away from its default (ProGrad's ``TRAINER.COOP.N_CTX``)."""
    from . import extend_cfg, get_cfg_default
    hparams = {"trainer": cfg.TRAINER.NAME, "dataset": results.dataset,
               "subsample_classes": cfg.DATASET.SUBSAMPLE_CLASSES, "shots": cfg.DATASET.NUM_SHOTS, "seed": cfg.SEED,
               "backbone": cfg.MODEL.BACKBONE.NAME, "config": cfg.SOURCE_FILES.TRAINER,
               "ablation": results.ablation or "", "OPTIM.LR": cfg.OPTIM.LR,
               "OPTIM.MAX_EPOCH": cfg.OPTIM.MAX_EPOCH, "DATALOADER.TRAIN_X.BATCH_SIZE": cfg.DATALOADER.TRAIN_X.BATCH_SIZE}
    method = "".join(filter(str.isalnum, cfg.TRAINER.NAME)).upper()
    defaults = dict(dotted_items(extend_cfg(get_cfg_default()).TRAINER, "TRAINER."))
    for key, value in dotted_items(cfg.TRAINER, "TRAINER."):
        node = key.split(".")[1]
        if node != "NAME" and (method.startswith("".join(filter(str.isalnum, node))) or defaults.get(key) != value):
            hparams[key] = value
    return {key: value if isinstance(value, (bool, int, float, str)) else str(value) for key, value in hparams.items()}


class RunMetrics:
    """The run's log (see the module docstring): ``add`` a record such as ``{"epoch": 3, "split":
    "train", "loss": 1.2, "lr": 0.002}``; ``log_results`` once results.json is written; ``close``.
    Without ``cfg`` (a bare log): metrics.jsonl and TensorBoard scalars. ``tensorboard=False``: the
    engine writes its own scalars (Dassl's, through ``writer()``), the records go to metrics.jsonl
    and the other trackers. ``purge_step``: a resumed run's first TensorBoard step (default: the epoch
    after ``keep_until_epoch``), from which the earlier event files' steps are dropped."""

    def __init__(self, output_dir, keep_until_epoch=0, tensorboard=True, cfg=None, purge_step=None):
        self.output_dir, self.cfg, self.epoch_scalars = output_dir, cfg, tensorboard
        self.path = osp.join(output_dir, METRICS_FILE)
        self.tensorboard_dir = osp.join(output_dir, TENSORBOARD_DIR)
        self.records = [r for r in read_metrics(self.path) if r.get("epoch", 0) <= keep_until_epoch]
        self.resumed_after = keep_until_epoch  # 0: a fresh run
        self.purge_step = purge_step if purge_step is not None else keep_until_epoch + 1
        names = log_backends(cfg)
        self.tensorboard = TensorBoardLog(self) if "tensorboard" in names else None
        self.trackers = [BACKENDS[name](self) for name in names if name != "tensorboard"]

    @property
    def backends(self):
        return ([self.tensorboard] if self.tensorboard else []) + self.trackers

    def add(self, record):
        self.records.append(record)
        write_text("".join(json.dumps(r) + "\n" for r in self.records), self.path)
        if self.tensorboard and self.epoch_scalars:
            self.tensorboard.log_metrics(record)
        for tracker in self.trackers:
            tracker.log_metrics(record)

    def writer(self):
        """The run's TensorBoard ``SummaryWriter`` (None without tensorboard)."""
        return self.tensorboard.writer() if self.tensorboard else None

    def log_results(self, results, results_path):
        """The run's settings and final numbers (``results``: the ``RunResults`` written to ``results_path``)."""
        hparams = run_hparams(self.cfg, results) if self.cfg is not None else {}
        for backend in self.backends:
            backend.log_results(hparams, result_scalars(results), results_path)

    def close(self, failed=False):
        """End every tracker's run (as failed: the run raised); a second call does nothing."""
        for backend in self.backends:
            backend.close(failed)

    # What the trackers share: the run's name, group and local folder.

    def setting(self, key, variable):
        value = self.cfg.LOG[key] if self.cfg is not None else ""
        return value or os.environ.get(variable, "")

    @property
    def log_dir(self):
        return osp.abspath(self.setting("DIR", "LLU_LOG_DIR") or self.output_dir)

    @property
    def group(self):
        return self.setting("GROUP", "LLU_LOG_GROUP")

    @property
    def run_name(self):
        """The output folder, relative to LOG.DIR when it is inside (a sweep's
        ``train_base/shapes/shots_16/LLU/toy/seed1``), else its last part."""
        output = osp.abspath(self.output_dir)
        inside = osp.commonpath([output, self.log_dir]) == self.log_dir and output != self.log_dir
        return osp.relpath(output, self.log_dir) if inside else osp.basename(output)

    def config_dict(self):
        return json.loads(json.dumps(self.cfg)) if self.cfg is not None else {}


class TensorBoardLog:
    """Event files in OUTPUT_DIR/tensorboard: the epochs' scalars, the config as text, the HParams
    session. A fresh run first removes the folder's event files (so that a rerun replaces the curves
    instead of overlaying them); a resumed run purges the steps after the epoch it resumes from."""

    def __init__(self, log):
        self.log = log
        self._writer = None  # False: tensorboard is not installed

    def writer(self):
        if self._writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is not installed: metrics.jsonl only
                log_only(f"Note: tensorboard is not installed ({install_command('tensorboard')}); metrics go to "
                         f"metrics.jsonl only")
                self._writer = False
                return None
            resumed_after = self.log.resumed_after
            if not resumed_after:
                for path in glob.glob(osp.join(glob.escape(self.log.tensorboard_dir), EVENT_FILES)):
                    if osp.isfile(path) and not osp.islink(path):
                        os.remove(path)
            with signals_deferred():  # its constructor already hands an event to its thread
                self._writer = SummaryWriter(log_dir=self.log.tensorboard_dir,
                                             purge_step=self.log.purge_step if resumed_after else None)
                if self.log.cfg is not None:
                    # Four spaces: a code block in TensorBoard's Markdown, so the YAML keeps its lines.
                    config = "\n".join("    " + line for line in self.log.cfg.dump().splitlines())
                    self._writer.add_text("config", config, resumed_after)
        return self._writer or None

    def log_metrics(self, record):
        writer = self.writer()
        if writer is not None:
            with signals_deferred():  # an interrupt inside the writer's queue handoff breaks its thread
                for tag, value in scalars(record).items():
                    writer.add_scalar(tag, value, record["epoch"])
                writer.flush()

    def log_results(self, hparams, results, results_path):
        writer = self.writer()
        if writer is None:
            return
        from tensorboard.plugins.hparams.summary_v2 import hparams_pb
        step = max([r.get("epoch", 0) for r in self.log.records] or [0])
        with signals_deferred():
            # The session's start holds its settings; its metrics are the run's own scalars. The trial id
            # (the run's name) makes each run one row, also where two runs share every setting.
            writer.file_writer.add_summary(hparams_pb(hparams, trial_id=self.log.run_name), step)
            for tag, value in results.items():
                writer.add_scalar(tag, value, step)
            writer.flush()

    def close(self, failed=False):
        if self._writer:
            with signals_deferred():
                self._writer.close()
        self._writer = False  # closed: no second writer (it would remove this run's event files)


class WandbLog:
    """A W&B run for the run (``wandb.init`` when the log opens; ``WANDB_MODE``, ``WANDB_DIR`` and W&B's
    other settings apply as usual; its files go to LOG.DIR unless WANDB_DIR says otherwise)."""

    def __init__(self, log):
        wandb = require("wandb", "wandb", "LOG.BACKENDS wandb")
        self.log = log
        log_dir = os.environ.get("WANDB_DIR") or log.log_dir
        os.makedirs(log_dir, exist_ok=True)
        try:
            self.run = wandb.init(project=log.cfg.LOG.PROJECT if log.cfg is not None else "llu",
                                  group=log.group or None, name=log.run_name, config=log.config_dict(),
                                  dir=log_dir, reinit="create_new",
                                  settings=wandb.Settings(console="off", save_code=False))
        except Exception as e:  # not logged in, no network in online mode, ...
            raise UserError(f"LOG.BACKENDS wandb: W&B could not start the run ({type(e).__name__}: "
                            f"{str(e).strip().splitlines()[0] if str(e).strip() else 'no message'}); log in "
                            f"(wandb login) or set WANDB_MODE=offline") from None
        log_only(f"W&B run {self.run.id} ({self.run.dir})")

    def log_metrics(self, record):
        if self.run is not None:
            self.run.log(scalars(record), step=record["epoch"])

    def log_results(self, hparams, results, results_path):
        if self.run is None:
            return
        import wandb
        self.run.summary.update(results)  # the settings are the run's config
        artifact = wandb.Artifact(f"results-{self.run.id}", type="results")
        artifact.add_file(results_path, name="results.json")
        self.run.log_artifact(artifact)

    def close(self, failed=False):
        if self.run is not None:
            self.run.finish(exit_code=1 if failed else 0)
        self.run = None


class MlflowLog:
    """An MLflow run (``MlflowClient``, no global active run: a sweep's worker runs one run after another)."""

    def __init__(self, log):
        require("mlflow", "mlflow", "LOG.BACKENDS mlflow")
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient
        self.log = log
        uri = self.tracking_uri()
        if uri.startswith("file:") or "://" not in uri:
            # MLflow 3 keeps its file store only for those who opt in; a local store is what this is for.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        experiment = log.group or (log.cfg.LOG.PROJECT if log.cfg is not None else "llu")
        self.run_id = self.client.create_run(self.experiment_id(experiment), run_name=log.run_name,
                                             tags={"llu.output_dir": osp.abspath(log.output_dir)}).info.run_id
        params = [Param(key, str(value)) for key, value in dotted_items(log.config_dict())]
        self.client.log_batch(self.run_id, params=params)
        log_only(f"MLflow run {self.run_id} in experiment {experiment!r} ({uri})")

    def tracking_uri(self):
        uri = self.log.cfg.LOG.MLFLOW_TRACKING_URI if self.log.cfg is not None else ""
        if uri or os.environ.get("MLFLOW_TRACKING_URI"):
            return uri or os.environ["MLFLOW_TRACKING_URI"]
        store = osp.join(self.log.log_dir, "mlruns")
        os.makedirs(store, exist_ok=True)
        return "file://" + store

    def experiment_id(self, name):
        from mlflow.exceptions import MlflowException
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        try:
            return self.client.create_experiment(name)
        except MlflowException:  # another run of the sweep created it meanwhile
            return self.client.get_experiment_by_name(name).experiment_id

    def log_scalars(self, values, step):
        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(key, float(value), now, step)
                                                    for key, value in values.items()])

    def log_metrics(self, record):
        if self.run_id is not None:
            self.log_scalars(scalars(record), record["epoch"])

    def log_results(self, hparams, results, results_path):
        if self.run_id is None:
            return
        self.log_scalars(results, max([r.get("epoch", 0) for r in self.log.records] or [0]))
        self.client.log_artifact(self.run_id, results_path)
        config_path = osp.join(self.log.output_dir, "config.yaml")
        if osp.isfile(config_path):
            self.client.log_artifact(self.run_id, config_path)

    def close(self, failed=False):
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, "FAILED" if failed else "FINISHED")
        self.run_id = None


BACKENDS = {"tensorboard": TensorBoardLog, "wandb": WandbLog, "mlflow": MlflowLog}
