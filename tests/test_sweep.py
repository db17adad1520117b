"""llu/sweep.py: reading a plan, scheduling it (dependencies, failures, skips), and that runs in a
worker process give the numbers of runs in their own processes."""
import concurrent.futures
import io
import json
import os
import shlex
import subprocess
import sys

import pytest

from llu import sweep
from llu.utils import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def line(out, *extra):
    return shlex.join(["python", "train.py", "--output-dir", str(out), *extra])


def test_plan_lines_become_runs_with_their_dependencies(tmp_path):
    train, new = tmp_path / "train", tmp_path / "new"
    runs = sweep.parse_plan([f"+ {line(train)}", "", "# a comment", line(new, "--eval-only", "--model-dir", str(train)),
                             line(tmp_path / "other", "--model-dir", str(tmp_path / "elsewhere"))])
    assert [r.output_dir for r in runs] == [str(train), str(new), str(tmp_path / "other")]
    assert [r.needs for r in runs] == [None, 0, None]  # a model made outside the plan is no dependency
    assert runs[1].train_args == ["--output-dir", str(new), "--eval-only", "--model-dir", str(train)]


@pytest.mark.parametrize("lines, message", [
    (["python parse_results.py out"], "plan line 1: expected 'python train.py ...'"),
    (["python train.py --seed 1"], "plan line 1: the run has no --output-dir"),
    (["python train.py --output-dir a", "python train.py --output-dir a"], "two runs write"),
])
def test_a_bad_plan_is_one_user_error(lines, message):
    with pytest.raises(UserError, match=message):
        sweep.parse_plan(lines)


class FakeWorkers:
    """Runs in the calling process: ``outcome(run)`` gives (ok, message); results.json is written for ok."""

    def __init__(self, outcome, write_results=True):
        self.outcome, self.write_results, self.started = outcome, write_results, []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def submit(self, run):
        self.started.append(run.index)
        ok, message = self.outcome(run)
        if ok and self.write_results:
            os.makedirs(run.output_dir, exist_ok=True)
            with open(os.path.join(run.output_dir, "results.json"), "w") as f:
                f.write("{}")
        future = concurrent.futures.Future()
        future.set_result((ok, message))
        return future


def pairs(tmp_path, n):
    lines = []
    for i in range(n):
        lines += [line(tmp_path / f"train{i}"), line(tmp_path / f"new{i}", "--model-dir", str(tmp_path / f"train{i}"))]
    return sweep.parse_plan(lines)


def test_a_failure_blocks_only_the_runs_that_read_it(tmp_path):
    runs = pairs(tmp_path, 3)
    workers = FakeWorkers(lambda run: (run.output_dir != str(tmp_path / "train1"), "error: boom"))
    out = io.StringIO()
    sweep.run_plan(runs, jobs=2, workers=workers, stream=out)
    assert [r.state for r in runs] == ["done", "done", "failed", "blocked", "done", "done"]
    assert 3 not in workers.started
    assert sweep.summary(runs, stream=out) == 1
    text = out.getvalue()
    assert "failed: train1: error: boom" in text and "blocked: new1: not run: the run it reads failed (train1)" in text


def test_finished_runs_are_skipped_and_their_readers_run(tmp_path):
    runs = pairs(tmp_path, 2)
    os.makedirs(tmp_path / "train0")
    (tmp_path / "train0" / "results.json").write_text("{}")
    workers = FakeWorkers(lambda run: (True, ""))
    out = io.StringIO()
    sweep.run_plan(runs, workers=workers, stream=out)
    assert [r.state for r in runs] == ["skipped", "done", "done", "done"] and workers.started == [1, 2, 3]
    assert "3 run(s) to do, 1 already done" in out.getvalue() and "[3/3] done" in out.getvalue()
    assert sweep.summary(runs, stream=out) == 0


def test_a_run_that_writes_no_results_is_a_failure(tmp_path):
    runs = sweep.parse_plan([line(tmp_path / "a")])
    sweep.run_plan(runs, workers=FakeWorkers(lambda run: (True, ""), write_results=False), stream=io.StringIO())
    assert runs[0].state == "failed" and runs[0].message == "finished without writing results.json"


def results(folder):
    with open(os.path.join(folder, "results.json")) as f:
        record = json.load(f)
    return record["accuracy"], record.get("llu_regularizer"), record["per_class_accuracy"]


def test_runs_in_workers_give_the_numbers_of_runs_in_their_own_processes(tmp_path, image_folder, tiny_clip_file):
    common = ["--root", os.path.dirname(image_folder), "--dataset-config-file", "configs/datasets/imagefolder.yaml",
              "--config-file", "configs/trainers/LLU/vit_b16.yaml", "--backbone", tiny_clip_file, "--seed", "1",
              "DATASET.IMAGEFOLDER.DIR", os.path.basename(image_folder), "DATASET.NUM_SHOTS", "2",
              "OPTIM.MAX_EPOCH", "3", "FEATURES.AUG_VIEWS", "1"]

    def plan(root):
        train = root / "train"
        return [["python", "train.py", "--output-dir", str(train), "--trainer", "LLU", *common,
                 "DATASET.SUBSAMPLE_CLASSES", "base"],
                ["python", "train.py", "--output-dir", str(root / "new"), "--trainer", "LLU", "--eval-only",
                 "--model-dir", str(train), *common, "DATASET.SUBSAMPLE_CLASSES", "new"],
                ["python", "train.py", "--output-dir", str(root / "zero_shot"), "--trainer", "ZeroshotCLIP",
                 "--eval-only", *common, "DATASET.SUBSAMPLE_CLASSES", "base"]]

    env = dict(os.environ, OMP_NUM_THREADS="1", LLU_CACHE=str(tmp_path / "cache"))
    for command in plan(tmp_path / "alone"):
        done = subprocess.run([sys.executable, *command[1:]], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
    plan_file = tmp_path / "plan.txt"
    plan_file.write_text("\n".join(shlex.join(c) for c in plan(tmp_path / "workers")) + "\n")
    swept = subprocess.run([sys.executable, "-m", "llu.sweep", "--jobs", "2", str(plan_file)], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=600)
    assert swept.returncode == 0, swept.stdout + swept.stderr[-2000:]
    for name in ("train", "new", "zero_shot"):
        assert results(tmp_path / "workers" / name) == results(tmp_path / "alone" / name), name
