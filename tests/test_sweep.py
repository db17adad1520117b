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


@pytest.mark.slow
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
    for launcher in ("local", "submitit"):  # worker processes; submitit's local executor (one job per chain)
        plan_file = tmp_path / f"plan_{launcher}.txt"
        plan_file.write_text("\n".join(shlex.join(c) for c in plan(tmp_path / launcher)) + "\n")
        swept = subprocess.run([sys.executable, "-m", "llu.sweep", "--jobs", "2", "--launcher", launcher,
                                str(plan_file)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert swept.returncode == 0, swept.stdout + swept.stderr[-2000:]
        for name in ("train", "new", "zero_shot"):
            assert results(tmp_path / launcher / name) == results(tmp_path / "alone" / name), (launcher, name)
    assert "3 run(s) to do in 2 job(s) (local submitit" in swept.stdout


def test_chains_group_each_training_run_with_the_evaluations_that_read_it(tmp_path):
    runs = pairs(tmp_path, 2) + sweep.parse_plan([line(tmp_path / "alone")])
    runs[-1].index = 4
    runs[0].state = "skipped"  # finished before: its reader starts a chain of its own
    assert [[r.index for r in chain] for chain in sweep.chains(runs)] == [[1], [2, 3], [4]]
    assert sweep.chain_arguments(sweep.chains(runs)[1])[1][1] == 0  # the evaluation reads the chain's first run


def test_slurm_settings_come_from_the_environment():
    parameters = sweep.slurm_parameters({"LLU_SLURM_PARTITION": "gpu", "LLU_SLURM_GPUS": "2", "LLU_SLURM_TIME_MIN": "90",
                                         "LLU_SLURM_EXTRA": "constraint=a100, qos=high"})
    assert parameters == {"slurm_partition": "gpu", "gpus_per_node": 2, "cpus_per_task": 8, "mem_gb": 32.0,
                          "timeout_min": 90, "slurm_constraint": "a100", "slurm_qos": "high"}
    with pytest.raises(UserError, match="LLU_SLURM_GPUS must be a int, got 'two'"):
        sweep.slurm_parameters({"LLU_SLURM_GPUS": "two"})
    with pytest.raises(UserError, match="LLU_SLURM_EXTRA must be 'key=value"):
        sweep.slurm_parameters({"LLU_SLURM_EXTRA": "constraint"})


class FakeJob:
    def __init__(self, outcomes=None, error=None):
        self.outcomes, self.error, self.cancelled = outcomes, error, False

    def done(self):
        return True

    def result(self):
        if self.error:
            raise RuntimeError(self.error)
        return self.outcomes

    def exception(self):
        return RuntimeError(self.error) if self.error else None

    def cancel(self, check=True):
        self.cancelled = True


class FakeExecutor:
    """submitit's interface: each chain's outcome from ``outcome(train_args)``; None: the job dies."""

    def __init__(self, outcome):
        self.outcome, self.submitted = outcome, []

    def submit(self, fn, repo, chain):
        assert fn is sweep.run_chain
        self.submitted.append([args for args, _ in chain])
        outcomes = [self.outcome(args) for args, _ in chain]
        if None in outcomes:
            return FakeJob(error="Job died\nslurmstepd: error: TIME LIMIT")
        for args, (ok, _) in zip((a for a, _ in chain), outcomes):
            if ok:
                out = args[args.index("--output-dir") + 1]
                os.makedirs(out, exist_ok=True)
                with open(os.path.join(out, "results.json"), "w") as f:
                    f.write("{}")
        return FakeJob(outcomes)


def test_submitit_runs_one_job_per_chain_and_reports_failed_jobs(tmp_path):
    runs = pairs(tmp_path, 3)

    def outcome(args):
        out = args[args.index("--output-dir") + 1]
        if out.endswith("train2"):
            return None  # the job of chain 2 dies
        return (not out.endswith("new1"), "error: boom")

    executor = FakeExecutor(outcome)
    out = io.StringIO()
    sweep.run_plan_submitit(runs, jobs=0, executor=executor, stream=out)
    assert len(executor.submitted) == 3 and all(len(chain) == 2 for chain in executor.submitted)
    assert [r.state for r in runs] == ["done", "done", "done", "failed", "failed", "failed"]
    assert runs[4].message == "the job failed (slurmstepd: error: TIME LIMIT)"
    assert sweep.summary(runs, stream=out) == 1 and "failed: new1: error: boom" in out.getvalue()


def test_a_chain_job_skips_the_runs_whose_producer_failed(monkeypatch):
    monkeypatch.setattr(sweep, "_start_worker", lambda repo: None)
    monkeypatch.setattr(sweep, "execute", lambda args: (args != ["train"], "error: boom"))
    outcomes = sweep.run_chain("repo", [(["train"], None), (["new"], 0), (["other"], None)])
    assert outcomes == [(False, "error: boom"), (False, "not run: the run it reads failed"), (True, "error: boom")]
