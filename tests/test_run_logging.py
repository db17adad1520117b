"""A run's trackers (LOG.BACKENDS, llu/engine/metrics.py), each read back with its own reader:
TensorBoard's EventAccumulator, W&B's offline run file, MLflow's client on a file store."""
import glob
import json
import os
import shlex
import struct
import subprocess
import sys
import time

import pytest

from llu.engine.metrics import read_metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def events(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    accumulator = EventAccumulator(str(folder))
    accumulator.Reload()
    return accumulator


def session_hparams(accumulator):
    """The HParams session a run's events hold: {name: value}."""
    from tensorboard.plugins.hparams import metadata
    content = accumulator.PluginTagToContent(metadata.PLUGIN_NAME)[metadata.SESSION_START_INFO_TAG]
    start = metadata.parse_session_start_info_plugin_data(content)
    return {name: getattr(value, value.WhichOneof("kind")) for name, value in start.hparams.items()}


def train_scalars(out):
    return [r for r in read_metrics(out / "metrics.jsonl") if r["split"] == "train"]


# ---------------------------------------------------------------------------------------------
# TensorBoard (the default)

def test_tensorboard_holds_the_runs_settings_results_and_config(run_train, tmp_path):
    out = tmp_path / "coop"
    code, err, _ = run_train("CoOp", out)
    assert code == 0, err
    results = json.loads((out / "results.json").read_text())
    (event_file,) = os.listdir(out / "tensorboard")  # one file: no sub-run folder for the hparams
    assert event_file.startswith("events.out.tfevents.")
    run = events(out / "tensorboard")
    hparams = session_hparams(run)
    assert {key: hparams[key] for key in ("trainer", "dataset", "subsample_classes", "shots", "seed")} == {
        "trainer": "CoOp", "dataset": results["dataset"], "subsample_classes": "all", "shots": 2, "seed": 1}
    assert hparams["backbone"] == results["backbone"] and hparams["TRAINER.COOP.N_CTX"] == 4  # the method's keys
    assert not any(key.startswith("TRAINER.LLU.") for key in hparams)  # another method's are not
    (accuracy,) = run.Scalars("results/accuracy")  # the session's metric, in the run's own folder
    assert accuracy.value == pytest.approx(results["accuracy"], rel=1e-6) and accuracy.step == 2
    assert "train/loss" in run.Tags()["scalars"]  # the curves as before
    (config,) = run.Tensors("config/text_summary")
    text = config.tensor_proto.string_val[0].decode()
    assert "    OUTPUT_DIR: " + str(out) in text and "    TRAINER:" in text  # the frozen config, as a code block


def test_a_rerun_replaces_the_event_files_and_keeps_what_is_not_ours(run_train, tmp_path):
    out = tmp_path / "llu"
    assert run_train("LLU", out)[0] == 0
    (first,) = glob.glob(str(out / "tensorboard" / "events.out.tfevents.*"))
    (out / "results.json").unlink()  # a folder without results is run again without --overwrite
    (out / "tensorboard" / "notes.txt").write_text("mine")
    (out / "tensorboard" / "other_run").mkdir()
    (out / "tensorboard" / "other_run" / "events.out.tfevents.1.host").write_bytes(b"")
    started = time.time()
    assert run_train("LLU", out, "OPTIM.MAX_EPOCH", "1")[0] == 0
    (second,) = glob.glob(str(out / "tensorboard" / "events.out.tfevents.*"))
    assert second != first
    assert (out / "tensorboard" / "notes.txt").read_text() == "mine"
    assert os.listdir(out / "tensorboard" / "other_run") == ["events.out.tfevents.1.host"]
    loss = events(out / "tensorboard").Scalars("train/loss")
    assert loss and min(e.wall_time for e in loss) >= started  # the new run's curve alone


def test_a_resumed_run_continues_the_curve_from_its_checkpoint(run_train, tmp_path):
    out = tmp_path / "llu"
    assert run_train("LLU", out, "TRAIN.CHECKPOINT_FREQ", "1", "OPTIM.MAX_EPOCH", "3")[0] == 0
    with open(out / "adapter" / "checkpoint", "w") as f:
        f.write("model.pth.tar-1\n")  # as if it had stopped after epoch 1
    assert run_train("LLU", out, "TRAIN.CHECKPOINT_FREQ", "1", "OPTIM.MAX_EPOCH", "3", flags=("--resume", str(out)))[0] == 0
    loss = events(out / "tensorboard").Scalars("train/loss")
    steps = [e.step for e in loss]
    assert steps == sorted(set(steps))  # epochs 2 and 3 once: the first run's are purged
    # One batch an epoch (8 images): the engine's steps (epochs, or Dassl's batches) hold the epochs' losses.
    assert [e.value for e in loss] == pytest.approx([r["loss"] for r in train_scalars(out)], rel=1e-6)


def test_the_default_imports_neither_wandb_nor_mlflow(run_train, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # an import of either would now fail
    monkeypatch.setitem(sys.modules, "mlflow", None)
    code, err, _ = run_train("LLU", tmp_path / "llu")
    assert code == 0, err
    assert glob.glob(str(tmp_path / "llu" / "tensorboard" / "events.out.tfevents.*"))


@pytest.mark.parametrize("backends, message", [
    ("tensorboard,neptune", "LOG.BACKENDS: unknown backend 'neptune'; expected a comma-separated list of "
                            "tensorboard, wandb, mlflow (or none)"),
    ("wandb", "LOG.BACKENDS wandb needs wandb, which is not installed: pip install 'llu-clip[wandb]'"),
    ("tensorboard, mlflow", "LOG.BACKENDS mlflow needs mlflow, which is not installed: pip install 'llu-clip[mlflow]'"),
])
def test_a_backend_that_cannot_log_is_one_line_before_any_work(run_train, tmp_path, monkeypatch, backends, message):
    monkeypatch.setitem(sys.modules, "wandb", None)
    monkeypatch.setitem(sys.modules, "mlflow", None)
    code, err, _ = run_train("LLU", tmp_path / "llu", "LOG.BACKENDS", backends)
    assert code == 2 and err.strip().splitlines() == [f"error: {message}"]
    assert not (tmp_path / "llu" / "config.yaml").exists()


def test_no_backends_leaves_metrics_jsonl_only(run_train, tmp_path):
    assert run_train("LLU", tmp_path / "llu", "LOG.BACKENDS", "none")[0] == 0
    assert not (tmp_path / "llu" / "tensorboard").exists() and train_scalars(tmp_path / "llu")


# ---------------------------------------------------------------------------------------------
# W&B, offline

@pytest.fixture
def wandb_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    for variable in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(variable, str(tmp_path / "wandb-home" / variable.lower()))
    monkeypatch.delenv("WANDB_DIR", raising=False)


def wandb_records(path):
    """The records of a W&B run file (``run-<id>.wandb``): W&B's own protobuf ``Record`` messages, framed as
    a LevelDB log (a 7-byte ``:W&B`` header, then 32 KiB blocks of records cut into chunks with 7-byte
    headers: CRC, length, type 1 full, 2 first, 3 middle, 4 last). wandb 0.31 reads it in Go only."""
    from wandb.proto import wandb_internal_pb2
    data = open(path, "rb").read()
    assert data[:4] == b":W&B"
    block, position, pending = 32768, 7, b""
    while position + 7 <= len(data):
        left = block - position % block
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        if left < 7 or (length == 0 and kind == 0):  # a block's zero padding
            position += left
            continue
        pending += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record
            pending = b""


def test_a_wandb_offline_run_holds_the_config_metrics_results_and_artifact(run_train, tmp_path, monkeypatch,
                                                                           wandb_offline):
    monkeypatch.setenv("LLU_LOG_GROUP", "my_sweep")
    out = tmp_path / "llu"
    code, err, _ = run_train("LLU", out, "LOG.BACKENDS", "tensorboard,wandb", "OPTIM.MAX_EPOCH", "3")
    assert code == 0, err
    import wandb
    wandb.teardown()  # W&B's service finishes writing its files after run.finish() returns; now it has stopped
    (path,) = glob.glob(str(out / "wandb" / "offline-run-*" / "run-*.wandb"))
    records = list(wandb_records(path))
    kinds = [r.WhichOneof("record_type") for r in records]
    (run,) = [r.run for r in records if r.HasField("run")]
    assert (run.project, run.run_group, run.display_name) == ("llu", "my_sweep", "llu")
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert config["TRAINER"]["NAME"] == "LLU" and config["DATASET"]["NUM_SHOTS"] == 2 and config["SEED"] == 1
    history = {r.history.step.num: {item.key or "/".join(item.nested_key): json.loads(item.value_json)
                                    for item in r.history.item} for r in records if r.HasField("history")}
    assert sorted(history) == [1, 2, 3]
    assert [history[epoch]["train/loss"] for epoch in (1, 2, 3)] == pytest.approx(
        [r["loss"] for r in train_scalars(out)], rel=1e-9)
    results = json.loads((out / "results.json").read_text())
    summary = {}
    for r in records:
        if r.HasField("summary"):
            summary.update((item.key or "/".join(item.nested_key), json.loads(item.value_json)) for item in r.summary.update)
    assert summary["results/accuracy"] == pytest.approx(results["accuracy"], rel=1e-9)
    assert summary["results/llu_regularizer"] == pytest.approx(results["llu_regularizer"], rel=1e-9)
    (artifact,) = [r.artifact for r in records if r.HasField("artifact")]
    (entry,) = artifact.manifest.contents
    assert artifact.type == "results" and entry.path == "results.json"
    assert open(entry.local_path).read() == (out / "results.json").read_text()  # the staged copy W&B uploads
    assert kinds[-1] == "exit" and [r.exit.exit_code for r in records if r.HasField("exit")] == [0]


# ---------------------------------------------------------------------------------------------
# MLflow, file store

@pytest.fixture
def mlflow_client(monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 reads file stores only when asked
    return lambda store: MlflowClient(tracking_uri=f"file://{store}")


def test_an_mlflow_run_holds_the_config_metrics_results_and_artifacts(run_train, tmp_path, mlflow_client,
                                                                      monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "llu"
    code, err, _ = run_train("LLU", out, "LOG.BACKENDS", "mlflow", "LOG.GROUP", "my_sweep", "OPTIM.MAX_EPOCH", "3")
    assert code == 0, err
    assert not (out / "tensorboard").exists()
    client = mlflow_client(out / "mlruns")  # LOG.DIR defaults to the run's folder
    experiment = client.get_experiment_by_name("my_sweep")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "llu" and run.info.status == "FINISHED"
    assert run.data.params["TRAINER.NAME"] == "LLU" and run.data.params["DATASET.NUM_SHOTS"] == "2"
    assert run.data.params["TRAINER.LLU.GAMMA"] == "20.0"
    loss = client.get_metric_history(run.info.run_id, "train/loss")
    assert [(m.step, m.value) for m in sorted(loss, key=lambda m: m.step)] == [
        (r["epoch"], pytest.approx(r["loss"], rel=1e-9)) for r in train_scalars(out)]
    results = json.loads((out / "results.json").read_text())
    assert run.data.metrics["results/accuracy"] == pytest.approx(results["accuracy"], rel=1e-9)
    assert sorted(a.path for a in client.list_artifacts(run.info.run_id)) == ["config.yaml", "results.json"]
    stored = client.download_artifacts(run.info.run_id, "results.json", str(tmp_path / "download"))
    assert open(stored).read() == (out / "results.json").read_text()


def test_a_failed_run_is_marked_failed(run_train, tmp_path, mlflow_client, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from llu.trainers.llu import LLU

    def fail(self):
        raise RuntimeError("the disk caught fire")

    monkeypatch.setattr(LLU, "after_epoch", fail)
    with pytest.raises(RuntimeError, match="caught fire"):
        run_train("LLU", tmp_path / "llu", "LOG.BACKENDS", "mlflow")
    client = mlflow_client(tmp_path / "llu" / "mlruns")
    (run,) = client.search_runs([client.get_experiment_by_name("llu").experiment_id])
    assert run.info.status == "FAILED"


@pytest.mark.slow
def test_a_sweeps_runs_are_one_experiment_in_one_store(tmp_path, image_folder, tiny_clip_file, mlflow_client):
    common = ["--root", os.path.dirname(image_folder), "--dataset-config-file", "configs/datasets/imagefolder.yaml",
              "--config-file", "configs/trainers/LLU/vit_b16.yaml", "--backbone", tiny_clip_file, "--seed", "1",
              "--trainer", "LLU", "DATASET.IMAGEFOLDER.DIR", os.path.basename(image_folder), "DATASET.NUM_SHOTS", "2",
              "OPTIM.MAX_EPOCH", "2", "FEATURES.AUG_VIEWS", "1", "DATALOADER.NUM_WORKERS", "0", "LOG.BACKENDS", "mlflow"]
    train, new = tmp_path / "sweep" / "train", tmp_path / "sweep" / "new"
    plan = tmp_path / "my_plan.txt"
    plan.write_text(shlex.join(["llu", "train", "--output-dir", str(train), *common, "DATASET.SUBSAMPLE_CLASSES", "base"])
                    + "\n" + shlex.join(["llu", "train", "--output-dir", str(new), "--eval-only", "--model-dir",
                                         str(train), *common, "DATASET.SUBSAMPLE_CLASSES", "new"]) + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLU_LOG_", "MLFLOW_"))}
    env.update(OMP_NUM_THREADS="1", LLU_CACHE=str(tmp_path / "cache"), PYTHONPATH=REPO)
    swept = subprocess.run([sys.executable, "-m", "llu.sweep", "--jobs", "2", str(plan)], cwd=str(tmp_path), env=env,
                           capture_output=True, text=True, timeout=600)
    assert swept.returncode == 0, swept.stdout + swept.stderr[-2000:]
    assert not (train / "mlruns").exists()
    client = mlflow_client(tmp_path / "sweep" / "mlruns")  # the plan's common folder, its experiment the plan's name
    runs = client.search_runs([client.get_experiment_by_name("my_plan").experiment_id])
    assert sorted((r.info.run_name, r.data.params["DATASET.SUBSAMPLE_CLASSES"]) for r in runs) == [
        ("new", "new"), ("train", "base")]
