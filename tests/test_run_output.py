"""What a run shows and keeps: a short console, everything in log.txt, metrics.jsonl and TensorBoard."""
import json
import os
import subprocess
import sys

import pytest

from llu.engine.metrics import read_metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def toy_llu(out, world, *extra, epochs=12):
    args = [sys.executable, "train.py", "--root", world, "--trainer", "LLU", "--seed", "1",
            "--dataset-config-file", "configs/datasets/shapes.yaml", "--config-file", "configs/trainers/LLU/toy.yaml",
            "--output-dir", str(out), *extra, "DATASET.NUM_SHOTS", "4", "DATASET.SUBSAMPLE_CLASSES", "base",
            "OPTIM.MAX_EPOCH", str(epochs)]
    return subprocess.run(args, cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory, shapes_world):
    out = tmp_path_factory.mktemp("run") / "llu"
    result = toy_llu(out, shapes_world, "TRAIN.PRINT_FREQ", "2")
    assert result.returncode == 0, result.stderr[-2000:]
    return out, result


@pytest.mark.slow
def test_the_console_shows_a_few_lines_and_the_log_keeps_everything(toy_run):
    out, result = toy_run
    console = (result.stdout + result.stderr).splitlines()
    log = (out / "log.txt").read_text()
    assert len(console) <= 40, "\n".join(console)
    assert "** Config **" not in result.stdout and "** Config **" in log  # the config dump, as Dassl's log
    assert "OPTIM:" in log and "** System info **" in log
    assert "* accuracy: " in result.stdout and log.count("* accuracy: ") == 1  # CoOp's parse_test_res reads it
    # 4 shots x 32 base classes = 128 images: 4 batches of 32 per epoch; PRINT_FREQ 2 logs batches 2 and 4.
    batch_lines = [line for line in log.splitlines() if line.startswith("epoch [") and " batch [" in line]
    assert len(batch_lines) == 12 * 2
    assert not any(" batch [" in line for line in console)
    epoch_lines = [line for line in console if line.startswith("epoch [")]
    assert [line.split("]")[0] for line in epoch_lines] == [f"epoch [{e}/12" for e in (1, 2, 4, 6, 8, 10, 12)]


@pytest.mark.slow
def test_an_epoch_with_fewer_batches_than_print_freq_logs_one_line(tmp_path, shapes_world):
    result = toy_llu(tmp_path / "llu", shapes_world, "TRAIN.PRINT_FREQ", "50", epochs=3)
    assert result.returncode == 0, result.stderr[-2000:]
    log = (tmp_path / "llu" / "log.txt").read_text()
    batch_lines = [line for line in log.splitlines() if " batch [" in line]
    assert [line.split(" time")[0] for line in batch_lines] == [f"epoch [{e}/3] batch [4/4]" for e in (1, 2, 3)]


@pytest.mark.slow
def test_metrics_jsonl_has_each_epoch_and_the_evaluation(toy_run):
    out, _ = toy_run
    records = read_metrics(out / "metrics.jsonl")
    train = [r for r in records if r["split"] == "train"]
    assert [r["epoch"] for r in train] == list(range(1, 13))
    assert all({"loss", "acc", "lr", "ce", "reg"} <= set(r) for r in train)
    assert train[0]["lr"] == pytest.approx(1e-5)  # the constant warm-up epoch
    (test,) = [r for r in records if r["split"] == "test"]
    results = json.loads((out / "results.json").read_text())
    assert test["epoch"] == 12 and test["accuracy"] == pytest.approx(results["accuracy"])


@pytest.mark.slow
def test_tensorboard_events_hold_the_epoch_scalars(toy_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    out, _ = toy_run
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert {"train/loss", "train/acc", "train/lr", "test/accuracy"} <= set(events.Tags()["scalars"])
    loss = events.Scalars("train/loss")
    records = [r for r in read_metrics(out / "metrics.jsonl") if r["split"] == "train"]
    assert [e.step for e in loss] == [r["epoch"] for r in records]
    assert [e.value for e in loss] == pytest.approx([r["loss"] for r in records], rel=1e-6)


@pytest.mark.slow
def test_a_resumed_run_keeps_the_metrics_of_the_epochs_before(tmp_path, shapes_world):
    out = tmp_path / "llu"
    first = toy_llu(out, shapes_world, "TRAIN.CHECKPOINT_FREQ", "2", epochs=4)
    assert first.returncode == 0, first.stderr[-2000:]
    # Pretend the run had stopped after epoch 2: keep its first records, then resume from epoch 2's checkpoint.
    with open(out / "adapter" / "checkpoint", "w") as f:
        f.write("model.pth.tar-2\n")
    before = read_metrics(out / "metrics.jsonl")
    resumed = toy_llu(out, shapes_world, "--resume", str(out), "TRAIN.CHECKPOINT_FREQ", "2", epochs=4)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    after = read_metrics(out / "metrics.jsonl")
    assert [(r["epoch"], r["split"]) for r in after] == [(1, "train"), (2, "train"), (3, "train"), (4, "train"),
                                                          (4, "test")]
    assert after[:2] == before[:2]


class Terminal:
    """A console that says it is a terminal."""

    def __init__(self):
        self.text = ""

    def write(self, text):
        self.text += text

    def flush(self):
        pass

    def isatty(self):
        return True


@pytest.mark.parametrize("interactive", [True, False])
def test_progress_bars_go_to_a_terminal_and_one_line_to_the_log(tmp_path, monkeypatch, interactive):
    from llu import utils
    terminal = Terminal()
    if not interactive:
        terminal.isatty = lambda: False
    monkeypatch.setattr(sys, "stdout", terminal)
    monkeypatch.setattr(sys, "stderr", terminal)
    with utils.run_log(str(tmp_path)) as log_path:
        assert list(utils.progress(range(5), "Encoding 5 test images")) == list(range(5))
    log = open(log_path).read()
    assert log.count("Encoding 5 test images: done in ") == 1 and "it/s" not in log  # no bar in the log
    assert ("it/s" in terminal.text or "5/5" in terminal.text) == interactive  # a bar only in a terminal
    assert ("done in" in terminal.text) == (not interactive)  # the line where there was no bar


@pytest.fixture
def interrupts_raise():
    """Ctrl-C raises KeyboardInterrupt here, also when the suite runs where SIGINT is ignored."""
    import signal
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_an_interrupt_during_a_metrics_write_arrives_after_it(tmp_path, interrupts_raise):
    # Ctrl-C inside TensorBoard's queue handoff to its writer thread left the thread failing with a
    # traceback ("task_done() called too many times") instead of the run's one line.
    import signal
    import threading
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from llu.engine.metrics import RunMetrics
    # Another thread is alive, as in a run: the kernel may hand the process's signal to it.
    done = threading.Event()
    other = threading.Thread(target=done.wait)
    other.start()
    metrics = RunMetrics(str(tmp_path))
    writer = metrics.writer()
    real_add_scalar = writer.add_scalar
    calls = []

    def add_scalar_interrupted(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # arrives in the middle of the write
        calls.append(args[0])
        return real_add_scalar(*args, **kwargs)

    writer.add_scalar = add_scalar_interrupted
    try:
        with pytest.raises(KeyboardInterrupt):
            metrics.add({"epoch": 1, "split": "train", "loss": 0.5, "lr": 0.1})
    finally:
        done.set()
        other.join()
    assert calls == ["train/loss", "train/lr"]  # the whole record was written before the interrupt
    metrics.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [e.value for e in events.Scalars("train/lr")] == pytest.approx([0.1])


def test_the_log_closed_leaves_later_writes_to_the_console(tmp_path, capsys):
    from llu.utils import Tee
    tee = Tee(str(tmp_path / "log.txt"), sys.stdout)
    tee.write("kept\n")
    tee.close()
    tee.write("a thread's last words\n")  # raised ValueError on the closed file
    tee.flush()
    assert (tmp_path / "log.txt").read_text() == "kept\n"
    assert "a thread's last words" in capsys.readouterr().out
