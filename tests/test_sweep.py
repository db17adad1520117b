"""The protocols (llu/protocols.py: runs, dependencies, the published settings read from the trainer
classes) and the scheduler (llu/sweep.py: dependencies, failures, skips, workers that die or outlive
their coordinator, submitit), and that runs in a worker process give the numbers of runs in their own
processes."""
import io
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from llu import protocols, sweep
from llu.protocols import Run
from llu.trainers.clip_adapter import CLIP_Adapter
from llu.trainers.coop import CoOp, coop_epochs
from llu.trainers.llu import LLU
from llu.trainers.prograd import ProGrad
from llu.trainers.zsclip import ZeroshotCLIP
from llu.utils import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALL_TRAINERS = ["ZeroshotCLIP", "CoOp", "CoCoOp", "ProGrad", "CLIP_Adapter", "LLU"]


# ---------------------------------------------------------------------------------------------
# Protocols

def plan(name, tmp_path, **settings):
    where = protocols.Sweep(str(tmp_path / "data"), str(tmp_path / "out"), tuple(settings.pop("opts", ())))
    return list(protocols.PROTOCOLS[name](where, **settings))


def option(run, flag):
    args = list(run.args)
    return args[args.index(flag) + 1] if flag in args else None


def training_runs(runs):
    return [r for r in runs if r.reads is None]


@pytest.mark.parametrize("name", list(protocols.PROTOCOLS))
def test_each_evaluation_comes_after_the_training_run_it_reads(tmp_path, name):
    runs = plan(name, tmp_path, seeds=[1, 2])
    assert runs and len({r.output_dir for r in runs}) == len(runs)
    for i, run in enumerate(runs):
        assert list(run.args[:2]) == ["--output-dir", run.output_dir]
        if run.reads is not None and "--eval-only" not in run.args:
            # multidataset: training that starts from the run it reads (MODEL.INIT_WEIGHTS), a bank composing
            # it (TRAINER.LLUBANK.MEMBERS), or the bank's second member, chained after the first
            assert runs.index(run.reads) < i and option(run, "--model-dir") is None
            named = any(run.reads.output_dir in arg for arg in run.args)
            assert named or (name == "multidataset" and option(run, "--trainer") == "LLU")
        elif run.reads is not None:
            assert runs.index(run.reads) < i and option(run, "--model-dir") == run.reads.output_dir
        else:
            assert option(run, "--model-dir") is None


def test_base2new_default_plan(tmp_path):
    runs = plan("base2new", tmp_path)
    assert len(runs) == len(ALL_TRAINERS) * 3 * 2  # trainers x seeds x (train on base, test on new)
    assert protocols.base2new.tree == "base2new"
    out = tmp_path / "out" / "base2new"
    for trainer in ALL_TRAINERS:
        for seed in (1, 2, 3):
            tail = f"shapes/shots_16/{trainer}/toy/seed{seed}"
            train, test = [r for r in runs if r.output_dir.endswith(f"/{tail}")]
            assert train.output_dir == str(out / "train_base" / tail)
            assert test.output_dir == str(out / "test_new" / tail)
            assert test.reads is train
            for run in (train, test):
                assert option(run, "--trainer") == trainer and option(run, "--seed") == str(seed)
                assert option(run, "--config-file") == f"configs/trainers/{trainer}/toy.yaml"
                assert option(run, "--dataset-config-file") == "configs/datasets/shapes.yaml"
                assert option(run, "--root") == str(tmp_path / "data")
                assert option(run, "DATASET.NUM_SHOTS") == "16"
                assert option(run, "OPTIM.MAX_EPOCH") is None  # the toy configs set their own epochs
            assert option(train, "DATASET.SUBSAMPLE_CLASSES") == "base"
            assert option(test, "DATASET.SUBSAMPLE_CLASSES") == "new"
            assert ("--eval-only" in train.args) == (trainer == "ZeroshotCLIP")


@pytest.mark.parametrize("dataset, shots, epochs", [
    ("caltech101", 1, 50), ("caltech101", 2, 100), ("caltech101", 4, 100), ("caltech101", 8, 200),
    ("caltech101", 16, 200), ("imagenet", 16, 50), ("imagenet", 1, 50),
])
def test_coop_epoch_schedule_for_published_configs(tmp_path, dataset, shots, epochs):
    assert coop_epochs(dataset, shots) == epochs
    by_trainer = {option(r, "--trainer"): r for r in training_runs(plan("base2new", tmp_path, cfg="vit_b16",
                                                                        datasets=[dataset], shots=[shots], seeds=[1]))}
    for trainer in ("CoOp", "ProGrad", "CLIP_Adapter", "LLU"):
        assert option(by_trainer[trainer], "OPTIM.MAX_EPOCH") == str(epochs)
    for trainer in ("CoCoOp", "ZeroshotCLIP"):
        assert option(by_trainer[trainer], "OPTIM.MAX_EPOCH") is None


def test_the_published_settings_are_read_from_the_trainer_classes(tmp_path, monkeypatch):
    monkeypatch.setattr(LLU, "published_epochs", staticmethod(lambda dataset, shots: 7 * shots))
    monkeypatch.setattr(ProGrad, "published_lambda", {"caltech101": 0.5})
    monkeypatch.setattr(CLIP_Adapter, "learns", False)  # as if it learned nothing: its "training" is an evaluation
    runs = training_runs(plan("base2new", tmp_path, cfg="vit_b16", datasets=["caltech101"], shots=[8], seeds=[1],
                              trainers=["LLU", "ProGrad", "CLIP_Adapter"]))
    llu_run, prograd_run, adapter_run = runs
    assert option(llu_run, "OPTIM.MAX_EPOCH") == "56"
    assert option(prograd_run, "TRAINER.PROGRAD.LAMBDA") == "0.5" and option(prograd_run, "OPTIM.MAX_EPOCH") == "200"
    assert "--eval-only" in adapter_run.args and "--eval-only" not in prograd_run.args


@pytest.mark.parametrize("dataset, shots, lam", [("oxford_flowers", 16, "0.8"), ("dtd", 8, "0.8"),
                                                 ("eurosat", 4, None), ("caltech101", 16, None)])
def test_prograd_gets_its_published_lambda(tmp_path, dataset, shots, lam):
    assert ProGrad.published_options(dataset, shots) == ([] if lam is None else ["TRAINER.PROGRAD.LAMBDA", lam])
    runs = training_runs(plan("base2new", tmp_path, cfg="vit_b16", datasets=[dataset], shots=[shots], seeds=[1],
                              trainers=["ProGrad", "CoOp"]))
    by_trainer = {option(r, "--trainer"): r for r in runs}
    assert option(by_trainer["ProGrad"], "TRAINER.PROGRAD.LAMBDA") == lam
    assert option(by_trainer["CoOp"], "TRAINER.PROGRAD.LAMBDA") is None


def test_trainers_that_learn_nothing_are_evaluated_without_training(tmp_path):
    assert ZeroshotCLIP.learns is False and CoOp.learns is True
    runs = training_runs(plan("base2new", tmp_path, trainers=["ZeroshotCLIP2", "TipAdapter"], seeds=[1]))
    assert ["--eval-only" in r.args for r in runs] == [True, False]


def test_extra_options_come_last_and_stay_out_of_the_folder_names(tmp_path):
    runs = plan("base2new", tmp_path, trainers=["LLU"], seeds=[1], opts=["FEATURES.CACHE_DIR", "/scratch"])
    assert all(list(r.args[-2:]) == ["FEATURES.CACHE_DIR", "/scratch"] and "scratch" not in r.output_dir for r in runs)


def test_fewshot_sweeps_shots(tmp_path):
    runs = plan("fewshot", tmp_path, trainers=["LLU"], seeds=[1])
    assert sorted({int(option(r, "DATASET.NUM_SHOTS")) for r in runs}) == [1, 2, 4, 8, 16]
    assert {r.output_dir.split("/shots_")[1].split("/")[0] for r in runs} == {"1", "2", "4", "8", "16"}
    assert protocols.fewshot.tree == "base2new"


@pytest.mark.parametrize("name, targets", [("xd", ["patterns"]), ("dg", ["shapes_sketch", "shapes_noisy"])])
def test_transfer_plan_trains_on_all_source_classes_then_evaluates_targets(tmp_path, name, targets):
    runs = plan(name, tmp_path, trainers=["ZeroshotCLIP", "CoOp"], seeds=[1])
    assert protocols.PROTOCOLS[name].tree == "transfer"
    for trainer in ("ZeroshotCLIP", "CoOp"):
        train, *tests = [r for r in runs if option(r, "--trainer") == trainer]
        train_dir = tmp_path / f"out/transfer/shapes/train/shots_16/{trainer}/toy/seed1"
        assert train.output_dir == str(train_dir) and train.reads is None
        assert option(train, "--dataset-config-file") == "configs/datasets/shapes.yaml"
        assert option(train, "DATASET.SUBSAMPLE_CLASSES") == "all"
        assert [option(r, "--dataset-config-file") for r in tests] == [f"configs/datasets/{t}.yaml" for t in targets]
        for target, run in zip(targets, tests):
            assert run.output_dir == str(tmp_path / f"out/transfer/shapes/test/{target}/shots_16/{trainer}/toy/seed1")
            assert run.reads is train and "--eval-only" in run.args


def test_ablation_plan_covers_the_llu_configs_that_exist(tmp_path):
    runs = training_runs(plan("ablation", tmp_path, seeds=[1]))
    cfgs = [os.path.basename(option(r, "--config-file")) for r in runs if option(r, "--trainer") == "LLU"]
    expected = ["toy"] + [f"toy_{a}" for a in LLU.ablations]
    assert cfgs == [f"{cfg}.yaml" for cfg in expected]
    for cfg in expected + ["vit_b16"] + [f"vit_b16_{a}" for a in LLU.ablations]:
        assert os.path.isfile(os.path.join(REPO, "configs", "trainers", "LLU", f"{cfg}.yaml")), cfg
    zero_shot = [r for r in runs if option(r, "--trainer") == "ZeroshotCLIP"]
    assert len(zero_shot) == 1 and option(zero_shot[0], "--config-file") == "configs/trainers/ZeroshotCLIP/toy.yaml"
    assert all("/base2new/" in r.output_dir for r in plan("ablation", tmp_path, seeds=[1]))


@pytest.mark.parametrize("settings, message", [
    ({"trainers": ["CoOP"]}, "unknown trainer 'CoOP' \\(TRAINERS\\); one of"),
    ({"cfg": "vit_b32"}, "configs/trainers/ZeroshotCLIP/vit_b32.yaml: config file not found"),
    ({"datasets": ["shapez"]}, "configs/datasets/shapez.yaml: config file not found"),
])
def test_a_bad_setting_is_one_user_error_before_any_run(tmp_path, settings, message):
    with pytest.raises(UserError, match=message):
        plan("base2new", tmp_path, **settings)


# ---------------------------------------------------------------------------------------------
# Plan files (python -m llu.sweep PLAN)

def line(out, *extra, head=("python", "-m", "llu", "train")):
    return shlex.join([*head, "--output-dir", str(out), *extra])


def test_plan_lines_become_runs_with_their_dependencies(tmp_path):
    train, new = tmp_path / "train", tmp_path / "new"
    runs = sweep.parse_plan([f"+ {line(train)}", "", "# a comment",
                             line(new, "--eval-only", "--model-dir", str(train), head=("llu", "train")),
                             line(tmp_path / "other", "--model-dir", str(tmp_path / "elsewhere"),
                                  head=("python", "train.py"))])
    assert [r.output_dir for r in runs] == [str(train), str(new), str(tmp_path / "other")]
    assert [r.reads for r in runs] == [None, runs[0], None]  # a model made outside the plan is no dependency
    assert list(runs[1].args) == ["--output-dir", str(new), "--eval-only", "--model-dir", str(train)]


@pytest.mark.parametrize("lines, message", [
    (["python parse_results.py out"], "plan line 1: expected 'llu train ...'"),
    (["llu train --seed 1"], "plan line 1: the run has no --output-dir"),
    (["llu train --output-dir a", "llu train --output-dir a"], "two runs write"),
])
def test_a_bad_plan_is_one_user_error(lines, message):
    with pytest.raises(UserError, match=message):
        sweep.parse_plan(lines)


# ---------------------------------------------------------------------------------------------
# The scheduler

class FakeWorkers:
    """Runs in the calling process: ``outcome(task)`` gives (ok, message); results.json is written for ok."""

    def __init__(self, outcome, write_results=True):
        self.outcome, self.write_results, self.started, self.ended = outcome, write_results, [], []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def submit(self, task):
        self.started.append(task.index)
        ok, message = self.outcome(task)
        if ok and self.write_results:
            os.makedirs(task.output_dir, exist_ok=True)
            with open(os.path.join(task.output_dir, "results.json"), "w") as f:
                f.write("{}")
        self.ended.append((task, ok, message, False))

    def wait(self, timeout=None):
        ended, self.ended = self.ended, []
        return ended


def pairs(tmp_path, n):
    runs = []
    for i in range(n):
        train = Run(("--output-dir", str(tmp_path / f"train{i}")), str(tmp_path / f"train{i}"))
        runs += [train, Run(("--output-dir", str(tmp_path / f"new{i}")), str(tmp_path / f"new{i}"), reads=train)]
    return runs


def test_a_failure_blocks_only_the_runs_that_read_it(tmp_path):
    workers = FakeWorkers(lambda task: (task.output_dir != str(tmp_path / "train1"), "error: boom"))
    out = io.StringIO()
    tasks = sweep.run_plan(pairs(tmp_path, 3), jobs=2, workers=workers, stream=out)
    assert [t.state for t in tasks] == ["done", "done", "failed", "blocked", "done", "done"]
    assert 3 not in workers.started
    assert sweep.summary(tasks, stream=out) == 1
    text = out.getvalue()
    assert "failed: train1: error: boom" in text and "blocked: new1: not run: the run it reads failed (train1)" in text


def test_finished_runs_are_skipped_and_their_readers_run(tmp_path):
    os.makedirs(tmp_path / "train0")
    (tmp_path / "train0" / "results.json").write_text("{}")
    workers = FakeWorkers(lambda task: (True, ""))
    out = io.StringIO()
    tasks = sweep.run_plan(pairs(tmp_path, 2), workers=workers, stream=out)
    assert [t.state for t in tasks] == ["skipped", "done", "done", "done"] and workers.started == [1, 2, 3]
    assert "3 run(s) to do, 1 already done" in out.getvalue() and "[3/3] done" in out.getvalue()
    assert sweep.summary(tasks, stream=out) == 0


def test_a_run_that_writes_no_results_is_a_failure(tmp_path):
    tasks = sweep.run_plan([Run(("--output-dir", str(tmp_path / "a")), str(tmp_path / "a"))],
                           workers=FakeWorkers(lambda task: (True, ""), write_results=False),
                           stream=io.StringIO())
    assert tasks[0].state == "failed" and tasks[0].message == "finished without writing results.json"


# Real worker processes (forked from this one, so they run the stand-in for a run set here).

def wait_for(condition, what, bound=120.0):
    """Poll ``condition`` until it holds; fail after a generous bound (a hang, not a speed limit)."""
    deadline = time.monotonic() + bound
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting for {what} after {bound:.0f} s")
        time.sleep(0.05)


def gone(pid):
    """The process ended (a zombie nobody has reaped yet counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def stand_in_run(args):
    """What a worker runs instead of training: records its pid; a run whose folder is named ``dies``
    waits until the run named ``healthy`` is in flight, then kills its own worker as the OOM killer would;
    ``healthy`` waits until that worker is dead, then finishes."""
    out = args[args.index("--output-dir") + 1]
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(os.path.dirname(out), "pids.txt"), "a") as f:
        f.write(f"{os.path.basename(out)} {os.getpid()}\n")
    with open(os.path.join(out, "log.txt"), "w") as f:
        f.write("epoch 3/10 loss 0.5\n")
    root = os.path.dirname(out)
    if os.path.basename(out) == "dies":
        wait_for(lambda: os.path.exists(os.path.join(root, "healthy", "log.txt")), "the healthy run")
        with open(os.path.join(root, "dies.pid"), "w") as f:
            f.write(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    if os.path.basename(out) == "healthy":
        wait_for(lambda: os.path.exists(os.path.join(root, "dies.pid")), "the run that dies")
        wait_for(lambda: gone(int(open(os.path.join(root, "dies.pid")).read())), "the dead worker")
    with open(os.path.join(out, "results.json"), "w") as f:
        f.write("{}")
    return True, ""


def test_a_dead_worker_fails_only_the_run_it_held(tmp_path, monkeypatch):
    monkeypatch.setattr(sweep, "execute", stand_in_run)

    def run(name, reads=None):
        return Run(("--output-dir", str(tmp_path / name)), str(tmp_path / name), reads)

    dies, healthy = run("dies"), run("healthy")
    runs = [dies, healthy, run("dies_eval", dies), run("healthy_eval", healthy), run("later1"), run("later2")]
    out = io.StringIO()
    tasks = sweep.run_plan(runs, jobs=2, stream=out)
    assert [t.state for t in tasks] == ["failed", "done", "blocked", "done", "done", "done"]
    assert tasks[0].message == "worker died (signal 9)"  # not the last line of its log
    assert sweep.summary(tasks, stream=out) == 1
    assert "failed: dies: worker died (signal 9)" in out.getvalue()
    pids = dict(line.split() for line in (tmp_path / "pids.txt").read_text().splitlines())
    assert pids["healthy_eval"] != pids["dies"] and len(set(pids.values())) == 3  # a fresh worker replaced it


COORDINATOR = textwrap.dedent("""
    import os, sys, time
    from llu import sweep
    from llu.protocols import Run

    def run_forever(args):
        with open(args[1] + ".pid", "w") as f:
            f.write(str(os.getpid()))
        time.sleep(3600)

    sweep.execute = run_forever
    sweep.run_plan([Run(("--output-dir", d), d) for d in sys.argv[1:]], jobs=2)
""")


def test_workers_end_when_the_coordinator_is_killed(tmp_path):
    outs = [str(tmp_path / "a"), str(tmp_path / "b")]
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    coordinator = subprocess.Popen([sys.executable, "-c", COORDINATOR, *outs], env=env, stdout=subprocess.DEVNULL)
    pids = []
    try:
        wait_for(lambda: all(os.path.exists(f"{out}.pid") and os.path.getsize(f"{out}.pid") for out in outs),
                 "both workers to start")
        pids = [int(open(f"{out}.pid").read()) for out in outs]
        assert coordinator.pid not in pids and not any(gone(pid) for pid in pids)
        coordinator.kill()  # SIGKILL: no handler, no cleanup
        coordinator.wait()
        wait_for(lambda: all(gone(pid) for pid in pids), "the workers to end")
    finally:
        for pid in pids:  # the workers this test started, if the check failed
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)
        if coordinator.poll() is None:
            coordinator.kill()


# ---------------------------------------------------------------------------------------------
# Signs of life: the estimate of what is left, and lines while runs are in flight

def kind(trainer, evaluate=False, dataset="shapes", shots="16"):
    return ("evaluate" if evaluate else "train", trainer, dataset, shots)


def test_a_run_is_expected_to_take_what_runs_of_its_kind_took():
    finished = [(kind("CoOp"), 100.0), (kind("CoOp"), 120.0), (kind("CoOp", True), 5.0), (kind("LLU"), 10.0),
                (kind("CoOp", dataset="patterns"), 400.0)]
    assert sweep.expected_seconds(kind("CoOp"), finished) == 110.0
    assert sweep.expected_seconds(kind("CoOp", dataset="patterns"), finished) == 400.0
    assert sweep.expected_seconds(kind("CoOp", dataset="dots"), finished) == (100 + 120 + 400) / 3  # the trainer's
    assert sweep.expected_seconds(kind("LLU", True), finished) == 5.0  # evaluations of any trainer
    assert sweep.expected_seconds(kind("ProGrad"), finished) == (100 + 120 + 10 + 400) / 4  # training runs
    assert sweep.expected_seconds(kind("LLU"), []) is None


def test_time_left_lays_the_runs_on_the_workers():
    finished = [(kind("CoOp"), 100.0), (kind("CoOp", True), 5.0), (kind("LLU"), 10.0)]
    assert sweep.time_left([], [], [kind("CoOp")], workers=1) is None  # nothing to go by yet
    assert sweep.time_left([], [(kind("CoOp"), 30.0, None)], [kind("CoOp")], workers=1) is None
    # nothing finished: a run 30 s in and a quarter through its epochs is expected to take 120 s
    assert sweep.time_left([], [(kind("CoOp"), 30.0, 0.25)], [kind("CoOp")], workers=1) == 90.0 + 120.0
    assert sweep.time_left(finished, [], [kind("CoOp"), kind("CoOp", True), kind("LLU")], workers=1) == 115.0
    assert sweep.time_left(finished, [], [kind("CoOp"), kind("LLU"), kind("LLU")], workers=2) == 100.0
    # in flight: 40 s into a CoOp run whose log says it is 3/4 through its epochs, an evaluation 2 s in
    running = [(kind("CoOp"), 40.0, 0.75), (kind("CoOp", True), 2.0, None)]
    assert sweep.time_left(finished, running, [kind("LLU")], workers=2) == 25.0
    assert sweep.time_left(finished, running, [], workers=2) == 25.0


def test_the_estimate_holds_steady_when_runs_take_what_their_kind_takes():
    """Three seeds of a long training run and a short evaluation per trainer, one worker: once each kind
    has finished once, elapsed + left is the sweep's true length at every step (averaging every run, as
    before, said 7:10, then 1:10, then 3:23 on the demo)."""
    took = {kind("CoOp"): 300.0, kind("CoOp", True): 6.0, kind("LLU"): 20.0, kind("LLU", True): 4.0}
    plan = [k for _ in range(3) for k in took]
    total, elapsed, finished, seen = sum(took[k] for k in plan), 0.0, [], set()
    for i, run in enumerate(plan):
        elapsed += took[run]
        finished.append((run, took[run]))
        seen.add(run)
        if len(seen) == len(took):
            assert sweep.time_left(finished, [], plan[i + 1:], workers=1) + elapsed == total


def write_log(folder, text, name="log.txt"):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name), "w") as f:
        f.write(text)


def test_a_runs_epoch_is_read_from_the_end_of_its_log(tmp_path):
    assert sweep.epoch_progress(str(tmp_path / "none")) is None
    write_log(tmp_path, "Loading CLIP\nBuilding the feature cache\n")
    assert sweep.epoch_progress(str(tmp_path)) is None
    write_log(tmp_path, "x" * 100000 + "\nepoch [2/8] batch [1/4] time 0.1 loss 1.0\nepoch [2/8] batch [3/4] "
                        "time 0.1 (0.1) loss 0.9 lr 2e-3 eta 0:00:04\n")
    assert sweep.epoch_progress(str(tmp_path)) == (2, 8, (1 + 3 / 4) / 8)
    write_log(tmp_path, "epoch [2/8] batch [4/4] loss 0.8\nepoch [2/8] loss 0.8000 lr 2e-3 (1.00 s, eta 0:00:06)\n"
                        "Evaluating on the test set\n")
    assert sweep.epoch_progress(str(tmp_path)) == (2, 8, 2 / 8)
    assert sweep.epoch_progress(str(tmp_path), since=time.time() + 60) is None  # a previous attempt's log


class Watching(io.StringIO):
    """A console that, once what was printed matches ``pattern``, creates the file ``then`` (the
    stand-in runs wait for it)."""

    def __init__(self, pattern, then):
        super().__init__()
        self.pattern, self.then = pattern, then

    def write(self, text):
        written = super().write(text)
        if re.search(self.pattern, self.getvalue()):
            open(self.then, "w").close()
        return written


def epochs_then_wait(args):
    """A stand-in run: logs that it is in epoch 2 of 4, then finishes when the file ``go`` exists."""
    out = args[args.index("--output-dir") + 1]
    write_log(out, "epoch [2/4] batch [1/2] time 0.1 loss 1.0\n")
    wait_for(lambda: os.path.exists(os.path.join(os.path.dirname(out), "go")), "the heartbeat line")
    write_log(out, "{}", name="results.json")
    return True, ""


HEARTBEAT = (r"\[0/2\] 2 running \(elapsed \d+:\d\d:\d\d, about \d+:\d\d:\d\d left\)\n"
             r"    a: epoch 2/4, running \d+:\d\d:\d\d\n    b: epoch 2/4, running \d+:\d\d:\d\d\n")


def test_runs_in_flight_get_a_line_while_nothing_ends(tmp_path, monkeypatch):
    """Both runs wait until the console shows them in epoch 2 of 4; the sweep then ends."""
    monkeypatch.setattr(sweep, "execute", epochs_then_wait)
    runs = [Run(("--output-dir", str(tmp_path / name), "--trainer", "CoOp"), str(tmp_path / name)) for name in "ab"]
    out = Watching(HEARTBEAT, then=tmp_path / "go")
    tasks = sweep.run_plan(runs, jobs=2, stream=out, heartbeat=0.2)
    assert [t.state for t in tasks] == ["done", "done"]
    assert re.search(HEARTBEAT, out.getvalue())


class Terminal(io.StringIO):
    def isatty(self):
        return True


def screen(text):
    """What a terminal shows after ``text``: lines, with "cursor up one line, clear it" applied."""
    lines = [""]
    for part in re.split(r"(\x1b\[1A\x1b\[2K|\n)", text):
        if part == "\n":
            lines.append("")
        elif part.startswith("\x1b"):
            lines.pop()  # the empty line the cursor was on, then the line above is cleared: the cursor is there
            lines[-1] = ""
        else:
            lines[-1] += part
    return lines


def test_in_a_terminal_the_status_block_is_redrawn_in_place_under_the_finished_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("TERM", "xterm")
    runs = [Run(("--output-dir", str(tmp_path / name), "--trainer", "CoOp"), str(tmp_path / name)) for name in "abc"]
    tasks = [sweep.Task(i, run, state="running", started=time.time()) for i, run in enumerate(runs)]
    write_log(tmp_path / "b", "epoch [1/4] batch [1/2] time 0.1 loss 1.0\n")
    write_log(tmp_path / "c", "epoch [3/4] batch [1/2] time 0.1 loss 1.0\n")
    term = Terminal()
    progress = sweep.Progress(tasks, term, workers=3, heartbeat=30.0)
    assert progress.live and progress.heartbeat == sweep.LIVE_REFRESH_SECONDS
    progress.last_line = time.time() - 60
    progress.beat(tasks, str(tmp_path))
    tasks[0].state, tasks[0].seconds = "done", 12.0
    progress.report(tasks[0], str(tmp_path), tasks[1:])
    write_log(tmp_path / "b", "epoch [2/4] batch [1/2] time 0.1 loss 1.0\n")
    progress.last_line = time.time() - 60
    progress.beat(tasks[1:], str(tmp_path))
    progress.last_line = time.time() - 60
    progress.beat(tasks[1:], str(tmp_path))  # redrawn: the same block once on screen
    shown = screen(term.getvalue())
    assert shown[0].startswith("[1/3] done    a in 12.0 s")
    assert re.fullmatch(r"\[1/3\] #{8}\.{16} 2 running \(elapsed .*\)", shown[1])
    assert re.fullmatch(r"    b: epoch 2/4, running 0:00:0\d", shown[2])
    assert re.fullmatch(r"    c: epoch 3/4, running 0:00:0\d", shown[3]) and shown[4:] == [""]
    assert "epoch 1/4" in term.getvalue()  # the first block was drawn, then replaced
    plain = io.StringIO()  # a log or CI: no escape sequences, a heartbeat at most every 30 s
    assert not sweep.Progress(tasks, plain).live and sweep.Progress(tasks, plain).heartbeat == 30.0


# ---------------------------------------------------------------------------------------------
# Same numbers in a worker

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

    def commands(root):
        train = root / "train"
        return [["--output-dir", str(train), "--trainer", "LLU", *common, "DATASET.SUBSAMPLE_CLASSES", "base"],
                ["--output-dir", str(root / "new"), "--trainer", "LLU", "--eval-only", "--model-dir", str(train),
                 *common, "DATASET.SUBSAMPLE_CLASSES", "new"],
                ["--output-dir", str(root / "zero_shot"), "--trainer", "ZeroshotCLIP", "--eval-only", *common,
                 "DATASET.SUBSAMPLE_CLASSES", "base"]]

    env = dict(os.environ, OMP_NUM_THREADS="1", LLU_CACHE=str(tmp_path / "cache"), PYTHONPATH=REPO)
    for args in commands(tmp_path / "alone"):
        done = subprocess.run([sys.executable, "-m", "llu", "train", *args], cwd=str(tmp_path), env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
    for launcher in ("local", "submitit"):  # worker processes; submitit's local executor (one job per chain)
        plan_file = tmp_path / f"plan_{launcher}.txt"
        plan_file.write_text("\n".join(shlex.join(["llu", "train", *a]) for a in commands(tmp_path / launcher)) + "\n")
        swept = subprocess.run([sys.executable, "-m", "llu.sweep", "--jobs", "2", "--launcher", launcher,
                                str(plan_file)], cwd=str(tmp_path), env=env, capture_output=True, text=True,
                               timeout=600)
        assert swept.returncode == 0, swept.stdout + swept.stderr[-2000:]
        for name in ("train", "new", "zero_shot"):
            assert results(tmp_path / launcher / name) == results(tmp_path / "alone" / name), (launcher, name)
    assert "3 run(s) to do in 2 job(s) (local submitit" in swept.stdout


# ---------------------------------------------------------------------------------------------
# submitit

def test_chains_group_each_training_run_with_the_evaluations_that_read_it(tmp_path):
    alone = str(tmp_path / "alone")
    tasks = sweep.schedule(pairs(tmp_path, 2) + [Run(("--output-dir", alone), alone)])
    tasks[0].state = "skipped"  # finished before: its reader starts a chain of its own
    assert [[t.index for t in chain] for chain in sweep.chains(tasks)] == [[1], [2, 3], [4]]
    assert sweep.chain_arguments(sweep.chains(tasks)[1])[1][1] == 0  # the evaluation reads the chain's first run


def test_a_chain_in_flight_is_at_its_first_run_without_results(tmp_path):
    tasks = sweep.schedule(pairs(tmp_path, 2))
    write_log(tasks[0].output_dir, "{}", name="results.json")  # the first chain's training run has finished
    assert [t.index for t in sweep.chain_heads([tasks[0:2], tasks[2:4]])] == [1, 2]
    write_log(tasks[1].output_dir, "{}", name="results.json")
    assert [t.index for t in sweep.chain_heads([tasks[0:2], tasks[2:4]])] == [2]


def test_slurm_settings_come_from_the_environment():
    parameters = sweep.slurm_parameters({"LLU_SLURM_PARTITION": "gpu", "LLU_SLURM_GPUS": "2",
                                         "LLU_SLURM_TIME_MIN": "90", "LLU_SLURM_EXTRA": "constraint=a100, qos=high"})
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
    """submitit's interface: each chain's outcome from ``outcome(args)``; None: the job dies."""

    def __init__(self, outcome):
        self.outcome, self.submitted = outcome, []

    def submit(self, fn, chain):
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
    def outcome(args):
        out = args[args.index("--output-dir") + 1]
        if out.endswith("train2"):
            return None  # the job of chain 2 dies
        return (not out.endswith("new1"), "error: boom")

    executor = FakeExecutor(outcome)
    out = io.StringIO()
    tasks = sweep.run_plan_submitit(pairs(tmp_path, 3), jobs=0, executor=executor, stream=out)
    assert len(executor.submitted) == 3 and all(len(chain) == 2 for chain in executor.submitted)
    assert [t.state for t in tasks] == ["done", "done", "done", "failed", "failed", "failed"]
    assert tasks[4].message == "the job failed (slurmstepd: error: TIME LIMIT)"
    assert sweep.summary(tasks, stream=out) == 1 and "failed: new1: error: boom" in out.getvalue()


def test_a_chain_job_skips_the_runs_whose_producer_failed(monkeypatch):
    monkeypatch.setattr(signal, "signal", lambda *args: None)  # the job's SIGTERM handler; not this process's
    monkeypatch.setattr(sweep, "execute", lambda args: (args != ["train"], "error: boom"))
    outcomes = sweep.run_chain([(["train"], None), (["new"], 0), (["other"], None)])
    assert outcomes == [(False, "error: boom"), (False, "not run: the run it reads failed"), (True, "error: boom")]
