"""``llu sweep NAME`` and the scripts that are its doors: what each script runs, the settings from the
environment and the flags, the dry run, run-or-skip, failures and the tables at the end (with a
stand-in for a run in the worker processes); and one real base-to-new sweep with a tiny CLIP."""
import json
import os
import shlex
import shutil
import subprocess
import sys

import pytest

from llu import protocols, sweep
from llu.utils import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = {"base2new.sh": "base2new", "fewshot.sh": "fewshot", "xd.sh": "xd", "dg.sh": "dg", "ablation.sh": "ablation"}


def run_script(name, cwd, **env):
    full_env = {**os.environ, "LLU_CACHE": str(cwd / "cache"), "PYTHON": sys.executable, **env}
    return subprocess.run(["bash", os.path.join(REPO, "scripts", name)], cwd=str(cwd), env=full_env,
                          capture_output=True, text=True, timeout=600)


def dry_run(tmp_path, capsys, *argv, **env):
    """What ``llu sweep ARGV --dry-run`` prints, with the environment ``env``: (the runs' argument
    lists, the other lines)."""
    environ = {"OUTPUT": str(tmp_path / "out"), **env}
    assert sweep.sweep([*argv, "--dry-run"], environ=environ) == 0
    lines = capsys.readouterr().out.splitlines()
    runs = [shlex.split(line[2:]) for line in lines if line.startswith("+ ") and " llu train " in line]
    assert all(r[:4] == ["python", "-m", "llu", "train"] for r in runs)
    return [r[4:] for r in runs], [line for line in lines if " llu train " not in line]


def option(args, flag):
    return args[args.index(flag) + 1] if flag in args else None


@pytest.mark.parametrize("script", list(SCRIPTS))
def test_each_script_is_a_door_to_its_protocol(tmp_path, script):
    result = run_script(script, tmp_path, DRY_RUN="1", OUTPUT="out", TRAINERS="LLU", SEEDS="1", CFGS="toy")
    assert result.returncode == 0, result.stderr
    *runs, tables = result.stdout.splitlines()
    name = SCRIPTS[script]
    where = protocols.Sweep(str(tmp_path / "cache" / "world"), str(tmp_path / "out"))  # OUTPUT from where it ran
    settings = {"trainers": ["LLU"]} if name != "ablation" else {"cfgs": ["toy"]}
    expected = list(protocols.PROTOCOLS[name](where, seeds=[1], **settings))
    assert [shlex.split(line[2:]) for line in runs] == [[sys.executable, "-m", "llu", "train", *r.args]
                                                        for r in expected]
    tree = tmp_path / "out" / protocols.PROTOCOLS[name].tree
    assert tables in (f"+ {sys.executable} parse_results.py {tree}", f"+ {sys.executable} -m llu report {tree}")


def test_llu_sweep_help_imports_no_torch():
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "llu", "sweep", "--help"], cwd=REPO,
                            env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and all(name in result.stdout for name in protocols.PROTOCOLS)
    imported = [line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")]
    assert imported and not [name for name in imported if name.split(".")[0] in ("torch", "numpy", "clip")]


@pytest.mark.parametrize("llu_cache", ["cache", None])
def test_default_data_root_is_the_built_in_world(tmp_path, monkeypatch, capsys, llu_cache):
    from llu.utils import user_cache_dir
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    if llu_cache:
        monkeypatch.setenv("LLU_CACHE", str(tmp_path / llu_cache))
    else:
        monkeypatch.delenv("LLU_CACHE", raising=False)
    runs, _ = dry_run(tmp_path, capsys, "base2new", TRAINERS="LLU", SEEDS="1")
    assert option(runs[0], "--root") == user_cache_dir("world")


def test_flags_win_over_the_environment(tmp_path, capsys):
    runs, _ = dry_run(tmp_path, capsys, "base2new", "--seeds", "3", "--shots", "2", "--data", "d",
                      "--opts", "OPTIM.LR", "0.1",
                      TRAINERS="LLU", SEEDS="1 2", SHOTS="4 8", DATA="/elsewhere", OPTS="OPTIM.LR 0.5",
                      TARGETS="ignored by base2new")
    assert [(option(r, "--seed"), option(r, "DATASET.NUM_SHOTS"), r[-2:]) for r in runs] == [
        ("3", "2", ["OPTIM.LR", "0.1"])] * 2
    assert option(runs[0], "--root") == os.path.abspath("d")


@pytest.mark.parametrize("argv, environ, message", [
    (["base2new", "--targets", "patterns"], {}, "--targets does not apply to base2new"),
    (["base2new"], {"SHOTS": "16 many"}, "SHOTS must be whole numbers, got '16 many'"),
    (["base2new"], {"LAUNCHER": "slurm"}, "LAUNCHER must be local or submitit, got 'slurm'"),
    (["base2new"], {"JOBS": "two"}, "JOBS must be whole numbers, got 'two'"),
    (["base2new", "--jobs", "0"], {}, "--jobs \\(JOBS\\) must be at least 1, got 0"),
    (["xd"], {"TRAINERS": "Coop"}, "unknown trainer 'Coop'"),
])
def test_a_bad_setting_is_one_user_error(tmp_path, argv, environ, message):
    with pytest.raises(UserError, match=message):
        sweep.sweep(argv, environ={"OUTPUT": str(tmp_path / "out"), **environ})


def test_a_user_error_is_one_line_and_status_2(monkeypatch, capsys):
    monkeypatch.setenv("SHOTS", "16 many")
    with pytest.raises(SystemExit) as exit_:
        sweep.cli(["base2new"])
    assert exit_.value.code == 2 and capsys.readouterr().err == "error: SHOTS must be whole numbers, got '16 many'\n"


def test_finished_runs_are_skipped_crashed_ones_rerun(tmp_path, capsys):
    done = tmp_path / "out/base2new/train_base/shapes/shots_16/LLU/toy/seed1"
    crashed = tmp_path / "out/base2new/train_base/shapes/shots_16/LLU/toy/seed2"
    done.mkdir(parents=True)
    (done / "results.json").write_text("{}")
    crashed.mkdir(parents=True)
    (crashed / "log.txt").write_text("killed")
    runs, other = dry_run(tmp_path, capsys, "base2new", TRAINERS="LLU", SEEDS="1 2")
    assert f"skip {done} (results.json exists)" in other
    outputs = [option(r, "--output-dir") for r in runs]
    assert str(done) not in outputs and str(crashed) in outputs
    assert str(done).replace("train_base", "test_new") in outputs  # its evaluation still runs


# A sweep with a stand-in for each run, in real worker processes (forked from this one): it records
# the run, writes results.json (not with NO_RESULTS), and fails when its folder contains $FAIL_ON.

def stand_in_run(args):
    out = args[args.index("--output-dir") + 1]
    with open(os.environ["CALLS"], "a") as f:
        f.write(f"run {out}\n")
    os.makedirs(out, exist_ok=True)
    if os.environ.get("FAIL_ON") and os.environ["FAIL_ON"] in out:
        with open(os.path.join(out, "log.txt"), "w") as f:
            f.write("epoch 1\nerror: simulated failure\n")
        return False, "RuntimeError: simulated failure"
    if not os.environ.get("NO_RESULTS"):
        with open(os.path.join(out, "results.json"), "w") as f:
            f.write("{}")
    return True, ""


@pytest.fixture
def stand_in_sweep(tmp_path, monkeypatch, capsys):
    calls = tmp_path / "calls.txt"
    monkeypatch.setenv("CALLS", str(calls))
    monkeypatch.setattr(sweep, "execute", stand_in_run)
    monkeypatch.setattr(sweep, "print_tables", lambda tree: calls.open("a").write(f"tables {tree}\n") and 0)

    def run(**env):
        for key, value in env.items():
            monkeypatch.setenv(key, value)  # the workers see the process's environment
        status = sweep.sweep(["base2new"], environ={**os.environ, "OUTPUT": str(tmp_path / "out"), **env})
        lines = calls.read_text().splitlines() if calls.exists() else []
        if calls.exists():
            calls.unlink()
        return status, capsys.readouterr().out, lines
    return run


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_sweep_runs_then_skips_everything(stand_in_sweep, tmp_path, jobs):
    status, out, calls = stand_in_sweep(TRAINERS="ZeroshotCLIP LLU", SEEDS="1", JOBS=jobs)
    assert status == 0, out
    assert len([c for c in calls if c.startswith("run ")]) == 4
    assert calls[-1] == f"tables {tmp_path / 'out' / 'base2new'}"
    assert "[4/4] done" in out and "Sweep finished: 4 run(s) done" in out and f"{jobs} worker(s)" in out
    status, out, calls = stand_in_sweep(TRAINERS="ZeroshotCLIP LLU", SEEDS="1", JOBS=jobs)
    assert status == 0 and out.count("skip ") == 4
    assert calls == [f"tables {tmp_path / 'out' / 'base2new'}"]


def test_an_evaluation_runs_after_the_training_run_it_reads(stand_in_sweep, tmp_path):
    status, out, calls = stand_in_sweep(TRAINERS="LLU", SEEDS="1 2 3", JOBS="2")
    assert status == 0, out
    runs = [c.split()[1] for c in calls if c.startswith("run ")]
    for seed in (1, 2, 3):
        tail = f"shapes/shots_16/LLU/toy/seed{seed}"
        assert runs.index(str(tmp_path / "out/base2new/train_base" / tail)) < \
            runs.index(str(tmp_path / "out/base2new/test_new" / tail))


@pytest.mark.parametrize("env, message", [
    ({"FAIL_ON": "LLU/toy/seed1"}, "error: simulated failure"),
    ({"NO_RESULTS": "1"}, "finished without writing results.json"),
])
def test_a_failed_run_leaves_the_others_running_and_is_named_at_the_end(stand_in_sweep, env, message):
    status, out, calls = stand_in_sweep(TRAINERS="LLU", SEEDS="1 2", **env)
    assert status == 1
    failed = "train_base/shapes/shots_16/LLU/toy/seed1"  # relative to the sweep's folder, out/base2new
    summary = out.split("Sweep finished:")[1]
    assert f"failed: {failed}: {message}" in summary
    assert f"blocked: test_new/shapes/shots_16/LLU/toy/seed1: not run: the run it reads failed ({failed})" in summary
    runs = [c for c in calls if c.startswith("run ")]
    if "FAIL_ON" in env:  # seed 2 still trained and evaluated; seed 1's evaluation never started
        assert len(runs) == 3 and not any(c.endswith("test_new/shapes/shots_16/LLU/toy/seed1") for c in runs)
        assert calls[-1].startswith("tables ")  # the tables of what finished
    else:
        assert not any(c.startswith("tables ") for c in calls)  # nothing finished: no tables


@pytest.mark.slow
def test_base2new_end_to_end_with_a_tiny_clip(tmp_path, image_folder, tiny_clip_file):
    """The real runs through the script: zero-shot CLIP and CoOp on a generated image folder."""
    opts = f"MODEL.BACKBONE.NAME {tiny_clip_file} DATALOADER.NUM_WORKERS 0 OPTIM.MAX_EPOCH 2 TRAINER.COOP.N_CTX 4"
    result = run_script("base2new.sh", tmp_path, OUTPUT=str(tmp_path / "out"), DATA=os.path.dirname(image_folder),
                        DATASETS="imagefolder", CFG="vit_b16", TRAINERS="ZeroshotCLIP CoOp", SEEDS="1", SHOTS="2",
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


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_demo_uses_every_core_whatever_omp_num_threads_says():
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    result = subprocess.run(["make", "-n", "demo"], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert f" JOBS={cores} bash scripts/base2new.sh" in result.stdout, result.stdout + result.stderr
