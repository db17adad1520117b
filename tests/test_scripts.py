"""The sweep scripts' plans (DRY_RUN=1) and their run-or-skip logic, with a stand-in for Python
that writes results.json instead of training; and one real base-to-new sweep with a tiny CLIP."""
import json
import os
import shlex
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALL_TRAINERS = ["ZeroshotCLIP", "CoOp", "CoCoOp", "ProGrad", "CLIP_Adapter", "LLU"]

# A stand-in checkout: the real scripts beside a train.py that writes results.json instead of
# training (unless NO_RESULTS is set; it fails when its output folder contains $FAIL_ON) and a
# parse_results.py that only records its call. The sweep runner imports train.py from the checkout
# the plan names, so the real llu/sweep.py runs the stand-in in its workers.
FAKE_TRAIN = r"""
import os, sys
import argparse


class Parser:
    def parse_args(self, argv):
        return argparse.Namespace(output_dir=argv[argv.index("--output-dir") + 1])


def build_parser():
    return Parser()


def main(args):
    with open(os.environ["CALLS"], "a") as f:
        f.write("train.py " + args.output_dir + "\n")
    os.makedirs(args.output_dir, exist_ok=True)
    if os.environ.get("FAIL_ON") and os.environ["FAIL_ON"] in args.output_dir:
        with open(os.path.join(args.output_dir, "log.txt"), "w") as f:
            f.write("epoch 1\nerror: simulated failure\n")
        raise RuntimeError("simulated failure")
    if not os.environ.get("NO_RESULTS"):
        with open(os.path.join(args.output_dir, "results.json"), "w") as f:
            f.write("{}")
"""
FAKE_PARSE_RESULTS = r"""
import os, sys
with open(os.environ["CALLS"], "a") as f:
    f.write("parse_results.py " + " ".join(sys.argv[1:]) + "\n")
"""


@pytest.fixture
def fake_checkout(tmp_path):
    root = tmp_path / "checkout"
    (root / "scripts").mkdir(parents=True)
    for name in os.listdir(os.path.join(REPO, "scripts")):
        if name.endswith(".sh"):
            (root / "scripts" / name).write_text(open(os.path.join(REPO, "scripts", name)).read())
    (root / "train.py").write_text(FAKE_TRAIN)
    (root / "parse_results.py").write_text(FAKE_PARSE_RESULTS)
    return root


def run_fake_sweep(checkout, tmp_path, **env):
    calls = tmp_path / "calls.txt"
    full_env = {**os.environ, "OUTPUT": str(tmp_path / "out"), "LLU_CACHE": str(tmp_path / "cache"),
                "PYTHONPATH": REPO, "PYTHON": sys.executable, "CALLS": str(calls), **env}
    result = subprocess.run(["bash", str(checkout / "scripts" / "base2new.sh")], cwd=str(tmp_path), env=full_env,
                            capture_output=True, text=True, timeout=600)
    lines = calls.read_text().splitlines() if calls.exists() else []
    if calls.exists():
        calls.unlink()
    return result, lines


def run_script(name, tmp_path, **env):
    full_env = {**os.environ, "OUTPUT": str(tmp_path / "out"), "LLU_CACHE": str(tmp_path / "cache"), **env}
    return subprocess.run(["bash", os.path.join(REPO, "scripts", name)], cwd=str(tmp_path), env=full_env,
                          capture_output=True, text=True)


def plan(name, tmp_path, **env):
    """The commands a script would run, each as an argument list."""
    result = run_script(name, tmp_path, DRY_RUN="1", **env)
    assert result.returncode == 0, result.stderr
    return [shlex.split(line[2:]) for line in result.stdout.splitlines() if line.startswith("+ ")]


def option(cmd, flag):
    return cmd[cmd.index(flag) + 1] if flag in cmd else None


def trailing(cmd, key):
    """The value of a trailing KEY VALUE option, or None."""
    return cmd[cmd.index(key) + 1] if key in cmd else None


def train_commands(commands):
    return [c for c in commands if c[1] == "train.py"]


def test_base2new_default_plan(tmp_path):
    commands = plan("base2new.sh", tmp_path)
    runs = train_commands(commands)
    assert len(runs) == len(ALL_TRAINERS) * 3 * 2  # trainers x seeds x (train on base, test on new)
    assert commands[-1] == ["python", "parse_results.py", str(tmp_path / "out" / "base2new")]
    out = tmp_path / "out" / "base2new"
    for trainer in ALL_TRAINERS:
        for seed in (1, 2, 3):
            tail = f"shapes/shots_16/{trainer}/toy/seed{seed}"
            train, test = [c for c in runs if option(c, "--output-dir").endswith(f"/{tail}")]
            assert option(train, "--output-dir") == str(out / "train_base" / tail)
            assert option(test, "--output-dir") == str(out / "test_new" / tail)
            for cmd in (train, test):
                assert option(cmd, "--trainer") == trainer and option(cmd, "--seed") == str(seed)
                assert option(cmd, "--config-file") == f"configs/trainers/{trainer}/toy.yaml"
                assert option(cmd, "--dataset-config-file") == "configs/datasets/shapes.yaml"
                assert option(cmd, "--root") == str(tmp_path / "cache" / "world")
                assert trailing(cmd, "DATASET.NUM_SHOTS") == "16"
                assert trailing(cmd, "OPTIM.MAX_EPOCH") is None  # the toy configs set their own epochs
            assert trailing(train, "DATASET.SUBSAMPLE_CLASSES") == "base"
            assert trailing(test, "DATASET.SUBSAMPLE_CLASSES") == "new"
            assert ("--eval-only" in train) == (trainer == "ZeroshotCLIP")
            assert "--eval-only" in test and option(test, "--model-dir") == option(train, "--output-dir")


@pytest.mark.parametrize("llu_cache", ["cache", None])
def test_default_data_root_is_the_built_in_world(tmp_path, monkeypatch, llu_cache):
    from llu.utils import user_cache_dir
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    if llu_cache:
        monkeypatch.setenv("LLU_CACHE", str(tmp_path / llu_cache))
    else:
        monkeypatch.delenv("LLU_CACHE", raising=False)
    result = subprocess.run(["bash", os.path.join(REPO, "scripts", "base2new.sh")], cwd=str(tmp_path),
                            env={**os.environ, "DRY_RUN": "1", "TRAINERS": "LLU", "SEEDS": "1"},
                            capture_output=True, text=True)
    cmd = shlex.split(result.stdout.splitlines()[0][2:])
    assert option(cmd, "--root") == user_cache_dir("world")


@pytest.mark.parametrize("dataset, shots, epochs", [
    ("caltech101", 1, "50"), ("caltech101", 2, "100"), ("caltech101", 4, "100"), ("caltech101", 8, "200"),
    ("caltech101", 16, "200"), ("imagenet", 16, "50"), ("imagenet", 1, "50"),
])
def test_coop_epoch_schedule_for_published_configs(tmp_path, dataset, shots, epochs):
    commands = plan("base2new.sh", tmp_path, CFG="vit_b16", DATASETS=dataset, SHOTS=str(shots), SEEDS="1")
    by_trainer = {option(c, "--trainer"): c for c in train_commands(commands) if "--model-dir" not in c}
    for trainer in ("CoOp", "ProGrad", "CLIP_Adapter", "LLU"):
        assert trailing(by_trainer[trainer], "OPTIM.MAX_EPOCH") == epochs
    for trainer in ("CoCoOp", "ZeroshotCLIP"):
        assert trailing(by_trainer[trainer], "OPTIM.MAX_EPOCH") is None


@pytest.mark.parametrize("dataset, shots, lam", [("oxford_flowers", 16, "0.8"), ("dtd", 8, "0.8"),
                                                 ("eurosat", 4, None), ("caltech101", 16, None)])
def test_prograd_gets_its_published_lambda(tmp_path, dataset, shots, lam):
    commands = plan("base2new.sh", tmp_path, CFG="vit_b16", DATASETS=dataset, SHOTS=str(shots), SEEDS="1",
                    TRAINERS="ProGrad CoOp")
    by_trainer = {option(c, "--trainer"): c for c in train_commands(commands) if "--model-dir" not in c}
    assert trailing(by_trainer["ProGrad"], "TRAINER.PROGRAD.LAMBDA") == lam
    assert trailing(by_trainer["CoOp"], "TRAINER.PROGRAD.LAMBDA") is None


def test_finished_runs_are_skipped_crashed_ones_rerun(tmp_path):
    done = tmp_path / "out/base2new/train_base/shapes/shots_16/LLU/toy/seed1"
    crashed = tmp_path / "out/base2new/train_base/shapes/shots_16/LLU/toy/seed2"
    done.mkdir(parents=True)
    (done / "results.json").write_text("{}")
    crashed.mkdir(parents=True)
    (crashed / "log.txt").write_text("killed")
    result = run_script("base2new.sh", tmp_path, DRY_RUN="1", TRAINERS="LLU", SEEDS="1 2")
    assert f"skip {done} (results.json exists)" in result.stdout
    outputs = [option(c, "--output-dir") for c in train_commands(plan("base2new.sh", tmp_path, TRAINERS="LLU",
                                                                          SEEDS="1 2"))]
    assert str(done) not in outputs and str(crashed) in outputs
    assert str(done).replace("train_base", "test_new") in outputs  # its evaluation still runs


@pytest.mark.parametrize("jobs", ["1", "2"])
@pytest.mark.slow
def test_sweep_runs_then_skips_everything(fake_checkout, tmp_path, jobs):
    env = dict(TRAINERS="ZeroshotCLIP LLU", SEEDS="1", JOBS=jobs)
    first, calls = run_fake_sweep(fake_checkout, tmp_path, **env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert len([c for c in calls if c.startswith("train.py")]) == 4
    assert calls[-1] == f"parse_results.py {tmp_path / 'out' / 'base2new'}"
    assert "[4/4] done" in first.stdout and "Sweep finished: 4 run(s) done" in first.stdout
    second, calls = run_fake_sweep(fake_checkout, tmp_path, **env)
    assert second.returncode == 0 and second.stdout.count("skip ") == 4
    assert calls == [f"parse_results.py {tmp_path / 'out' / 'base2new'}"]


@pytest.mark.slow
def test_an_evaluation_runs_after_the_training_run_it_reads(fake_checkout, tmp_path):
    result, calls = run_fake_sweep(fake_checkout, tmp_path, TRAINERS="LLU", SEEDS="1 2 3", JOBS="2")
    assert result.returncode == 0, result.stdout + result.stderr
    runs = [c.split()[1] for c in calls if c.startswith("train.py")]
    for seed in (1, 2, 3):
        tail = f"shapes/shots_16/LLU/toy/seed{seed}"
        assert runs.index(str(tmp_path / "out/base2new/train_base" / tail)) < \
            runs.index(str(tmp_path / "out/base2new/test_new" / tail))


@pytest.mark.parametrize("env, message", [
    ({"FAIL_ON": "LLU/toy/seed1"}, "error: simulated failure"),
    ({"NO_RESULTS": "1"}, "finished without writing results.json"),
])
@pytest.mark.slow
def test_a_failed_run_leaves_the_others_running_and_is_named_at_the_end(fake_checkout, tmp_path, env, message):
    result, calls = run_fake_sweep(fake_checkout, tmp_path, TRAINERS="LLU", SEEDS="1 2", **env)
    assert result.returncode != 0
    failed = "train_base/shapes/shots_16/LLU/toy/seed1"  # relative to the sweep's folder, out/base2new
    summary = result.stdout.split("Sweep finished:")[1]
    assert f"failed: {failed}: {message}" in summary
    assert f"blocked: test_new/shapes/shots_16/LLU/toy/seed1: not run: the run it reads failed ({failed})" in summary
    trained = [c for c in calls if c.startswith("train.py")]
    if "FAIL_ON" in env:  # seed 2 still trained and evaluated; seed 1's evaluation never started
        assert len(trained) == 3 and not any(c.endswith("test_new/shapes/shots_16/LLU/toy/seed1") for c in trained)
        assert calls[-1].startswith("parse_results.py")  # the tables of what finished


def test_fewshot_sweeps_shots(tmp_path):
    commands = train_commands(plan("fewshot.sh", tmp_path, TRAINERS="LLU", SEEDS="1"))
    assert sorted({int(trailing(c, "DATASET.NUM_SHOTS")) for c in commands}) == [1, 2, 4, 8, 16]
    assert {option(c, "--output-dir").split("/shots_")[1].split("/")[0] for c in commands} == {"1", "2", "4", "8", "16"}


@pytest.mark.parametrize("script, targets", [("xd.sh", ["patterns"]), ("dg.sh", ["shapes_sketch", "shapes_noisy"])])
def test_transfer_plan_trains_on_all_source_classes_then_evaluates_targets(tmp_path, script, targets):
    commands = plan(script, tmp_path, TRAINERS="ZeroshotCLIP CoOp", SEEDS="1")
    assert commands[-1] == ["python", "parse_results.py", str(tmp_path / "out" / "transfer")]
    for trainer in ("ZeroshotCLIP", "CoOp"):
        runs = [c for c in train_commands(commands) if option(c, "--trainer") == trainer]
        train, *tests = runs
        train_dir = tmp_path / f"out/transfer/shapes/train/shots_16/{trainer}/toy/seed1"
        assert option(train, "--output-dir") == str(train_dir)
        assert option(train, "--dataset-config-file") == "configs/datasets/shapes.yaml"
        assert trailing(train, "DATASET.SUBSAMPLE_CLASSES") == "all"
        assert [option(c, "--dataset-config-file") for c in tests] == [f"configs/datasets/{t}.yaml" for t in targets]
        for target, cmd in zip(targets, tests):
            assert option(cmd, "--output-dir") == str(tmp_path / f"out/transfer/shapes/test/{target}/shots_16/"
                                                                 f"{trainer}/toy/seed1")
            assert "--eval-only" in cmd and option(cmd, "--model-dir") == str(train_dir)


def test_ablation_plan_covers_the_llu_configs_that_exist(tmp_path):
    commands = train_commands(plan("ablation.sh", tmp_path, SEEDS="1"))
    cfgs = [os.path.basename(option(c, "--config-file")) for c in commands if option(c, "--trainer") == "LLU"]
    expected = ["toy"] + [f"toy_{a}" for a in ("no_cluster", "no_damp", "no_mask", "dirac_mask", "no_reg",
                                               "rand_init", "linear")]
    assert cfgs[::2] == [f"{cfg}.yaml" for cfg in expected]
    for cfg in expected + ["vit_b16"] + [f"vit_b16_{c[4:]}" for c in expected[1:]]:
        assert os.path.isfile(os.path.join(REPO, "configs", "trainers", "LLU", f"{cfg}.yaml")), cfg
    zero_shot = [c for c in commands if option(c, "--trainer") == "ZeroshotCLIP"]
    assert len(zero_shot) == 2 and option(zero_shot[0], "--config-file") == "configs/trainers/ZeroshotCLIP/toy.yaml"
    assert all("/base2new/" in option(c, "--output-dir") for c in commands)


@pytest.mark.slow
def test_base2new_end_to_end_with_a_tiny_clip(tmp_path, image_folder, tiny_clip_file):
    """The real train.py through the script: zero-shot CLIP and CoOp on a generated image folder."""
    opts = f"MODEL.BACKBONE.NAME {tiny_clip_file} DATALOADER.NUM_WORKERS 0 OPTIM.MAX_EPOCH 2 TRAINER.COOP.N_CTX 4"
    result = run_script("base2new.sh", tmp_path, DATA=os.path.dirname(image_folder), DATASETS="imagefolder",
                        CFG="vit_b16", TRAINERS="ZeroshotCLIP CoOp", SEEDS="1", SHOTS="2", PYTHON=sys.executable,
                        OPTS=opts, OMP_NUM_THREADS="1")
    assert result.returncode == 0, result.stderr[-2000:]
    table = result.stdout.split("### my_images (2 shots)")[1]  # your own data is named after its folder
    assert "| CLIP " in table and "| CoOp " in table
    with open(tmp_path / "out" / "base2new" / "tables.json") as f:
        tables = json.load(f)
    assert tables["num_records"] == 4 and tables["notes"] == []
    (table1,) = [t for t in tables["tables"] if t["kind"] == "table1" and t["dataset"] == "my_images"]
    zero_shot = [row for row in table1["rows"] if row["trainer"] == "ZeroshotCLIP"]
    assert zero_shot[0]["cfg"] == "vit_b16" and zero_shot[0]["seeds"] == [1]
