"""A run's metrics over time: ``OUTPUT_DIR/metrics.jsonl`` (one JSON object per epoch and per
evaluation) and the same scalars as TensorBoard event files in ``OUTPUT_DIR/tensorboard`` (as
Dassl's writer). metrics.jsonl is rewritten whole and atomically at every record, so a reader never
sees half a line; a resumed run keeps the records of the epochs it resumes after.
"""
import json
import os.path as osp

from llu.utils import install_command, log_only, signals_deferred, write_text

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def read_metrics(path):
    """The records of a metrics.jsonl ([] if there is none)."""
    if not osp.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class RunMetrics:
    """Collects records such as ``{"epoch": 3, "split": "train", "loss": 1.2, "lr": 0.002}``."""

    def __init__(self, output_dir, keep_until_epoch=0, tensorboard=True):
        self.path = osp.join(output_dir, METRICS_FILE)
        self.tensorboard_dir = osp.join(output_dir, TENSORBOARD_DIR)
        self.records = [r for r in read_metrics(self.path) if r.get("epoch", 0) <= keep_until_epoch]
        self._writer = None if tensorboard else False  # False: no event files (another writer has them)

    def add(self, record):
        self.records.append(record)
        write_text("".join(json.dumps(r) + "\n" for r in self.records), self.path)
        writer = self.writer()
        if writer is not None:
            with signals_deferred():  # an interrupt inside the writer's queue handoff breaks its thread
                for key, value in record.items():
                    if key not in ("epoch", "split") and isinstance(value, (int, float)) and not isinstance(value, bool):
                        writer.add_scalar(f"{record['split']}/{key}", value, record["epoch"])
                writer.flush()

    def writer(self):
        if self._writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is not installed: metrics.jsonl only
                log_only(f"Note: tensorboard is not installed ({install_command('tensorboard')}); metrics go to "
                         f"metrics.jsonl only")
                self._writer = False
                return None
            with signals_deferred():  # its constructor already hands an event to its thread
                self._writer = SummaryWriter(log_dir=self.tensorboard_dir)
        return self._writer or None

    def close(self):
        if self._writer:
            with signals_deferred():
                self._writer.close()
        self._writer = None
