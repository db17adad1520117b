"""Faults, bad input and stale caches: each case ends in one clear line (or a correct run), records
nothing false and loses nothing (the README's reliability table lists them)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from conftest import stop_after_epoch
import torch

from llu.utils import UserError, folder_lock

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def run(run_train):
    """train.py in this process on the 4-colour image folder: returns (exit status, stderr, stdout)."""
    return run_train


def one_error_line(err):
    lines = [line for line in err.splitlines() if line.startswith(("error: ", "interrupted", "terminated"))]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def results(folder):
    with open(os.path.join(folder, "results.json")) as f:
        return json.load(f)


# ---------------------------------------------------------------------------------------------
# Wrong results recorded as a success

def test_an_empty_evaluated_split_is_refused_before_training(colours_root, tiny_clip_file, tmp_path, capsys):
    """6 images per class read with 4 for training and 2 for val leave the test split empty: the
    evaluator divided 0 by 0 after the whole training (a traceback and no record)."""
    def run(*extra):
        capsys.readouterr()
        from llu import train
        try:
            train.cli(["--root", colours_root, "--trainer", "CLIP_Adapter", "--backbone", tiny_clip_file,
                       "--output-dir", str(tmp_path / "out"), "--seed", "1", "DATASET.NAME", "TestColoursWithVal",
                       "INPUT.SIZE", "(32, 32)", "FEATURES.CACHE_DIR", str(tmp_path / "features"), *extra])
            return 0, capsys.readouterr().err
        except SystemExit as e:
            return e.code, capsys.readouterr().err

    code, err = run()
    assert code == 2
    assert "dataset TestColoursWithVal" in one_error_line(err) and "test split has no images" in err
    assert not any(os.path.exists(tmp_path / "out" / name) for name in ("results.json", "adapter"))
    code, err = run("TEST.SPLIT", "val")  # the val split has its 2 images per class
    if os.environ.get("LLU_ENGINE") == "dassl":  # Dassl builds a test loader for every run and asserts it has batches
        assert code == 2 and "Dassl builds a test loader" in one_error_line(err)
    else:
        assert code == 0 and results(tmp_path / "out")["eval_split"] == "val"


def test_a_checkpoint_of_another_trainer_is_refused_naming_its_keys(run, tmp_path):
    assert run("CoOp", tmp_path / "coop")[0] == 0
    (tmp_path / "llu").mkdir()
    shutil.copytree(tmp_path / "coop" / "prompt_learner", tmp_path / "llu" / "adapter")
    code, err, _ = run("LLU", tmp_path / "eval", flags=("--eval-only", "--model-dir", str(tmp_path / "llu")))
    line = one_error_line(err)
    assert code == 2 and "model.pth.tar-2: the checkpoint does not fit LLU's adapter" in line
    assert "unexpected: ctx" in line and "missing: adapters.image.bias" in line
    assert not (tmp_path / "eval" / "results.json").exists()


def test_a_checkpoint_holding_only_a_stray_key_is_refused(run, tmp_path):
    folder = tmp_path / "fake" / "adapter"
    folder.mkdir(parents=True)
    torch.save({"state_dict": {"foo": torch.zeros(1)}, "epoch": 20}, folder / "model.pth.tar-20")
    (folder / "checkpoint").write_text("model.pth.tar-20\n")
    code, err, _ = run("LLU", tmp_path / "eval", flags=("--eval-only", "--model-dir", str(tmp_path / "fake")))
    assert code == 2 and "unexpected: foo" in one_error_line(err)


def test_a_checkpoint_of_a_wider_model_names_the_backbone(run, tmp_path):
    from llu.trainers.llu_adapter import LocalizedLinearAdapter
    folder = tmp_path / "wide" / "adapter"
    folder.mkdir(parents=True)
    torch.save({"state_dict": LocalizedLinearAdapter(128).state_dict(), "epoch": 2}, folder / "model.pth.tar-2")
    (folder / "checkpoint").write_text("model.pth.tar-2\n")
    code, err, _ = run("LLU", tmp_path / "eval", flags=("--eval-only", "--model-dir", str(tmp_path / "wide")))
    line = one_error_line(err)
    assert code == 2 and "other shapes" in line and "another backbone" in line and "128" in line


def test_coop_blames_the_backbone_for_a_context_of_another_width(run, tmp_path):
    folder = tmp_path / "wide" / "prompt_learner"
    folder.mkdir(parents=True)
    torch.save({"state_dict": {"ctx": torch.zeros(4, 128)}, "epoch": 2}, folder / "model.pth.tar-2")
    (folder / "checkpoint").write_text("model.pth.tar-2\n")
    code, err, _ = run("CoOp", tmp_path / "eval", flags=("--eval-only", "--model-dir", str(tmp_path / "wide")))
    line = one_error_line(err)
    assert "width 128" in line and "another backbone" in line and "N_CTX" not in line


@pytest.mark.parametrize("epochs", ["0", "-1"])
def test_no_epochs_is_refused(run, tmp_path, epochs):
    code, err, _ = run("LLU", tmp_path / "out", "OPTIM.MAX_EPOCH", epochs)
    assert code == 2 and "OPTIM.MAX_EPOCH must be at least 1 to train LLU" in one_error_line(err)
    assert not (tmp_path / "out" / "results.json").exists()


def test_eval_only_of_a_trainable_method_needs_its_model(run, tmp_path):
    code, err, _ = run("LLU", tmp_path / "out", flags=("--eval-only",))
    assert code == 2 and "--eval-only of LLU needs --model-dir" in one_error_line(err)
    assert run("ZeroshotCLIP", tmp_path / "zs", flags=("--eval-only",))[0] == 0  # nothing to learn: fine


@pytest.mark.parametrize("trainer, batch", [("LLU", "32"), ("CoOp", "32"), ("LLU", "2")])
def test_a_diverged_run_stops_with_one_line_and_records_nothing(run, tmp_path, trainer, batch):
    code, err, _ = run(trainer, tmp_path / "out", "OPTIM.LR", "1e30", "DATALOADER.TRAIN_X.BATCH_SIZE", batch,
                       "OPTIM.WARMUP_EPOCH", "0")
    line = one_error_line(err)
    assert code == 2 and "training diverged at epoch" in line and "no results written" in line
    assert not (tmp_path / "out" / "results.json").exists()




@pytest.mark.parametrize("trainer", ["CoOp", "LLU"])
def test_a_resumed_run_gives_the_uninterrupted_runs_numbers(run, tmp_path, monkeypatch, trainer):
    options = ("OPTIM.MAX_EPOCH", "6", "TRAIN.CHECKPOINT_FREQ", "2", "OPTIM.LR", "0.5")
    assert run(trainer, tmp_path / "whole", *options)[0] == 0
    with monkeypatch.context() as patch:
        stop_after_epoch(patch, 4)
        assert run(trainer, tmp_path / "cut", *options)[0] == 130
    assert not (tmp_path / "cut" / "results.json").exists()
    code, _, out = run(trainer, tmp_path / "cut", *options, flags=("--resume", str(tmp_path / "cut")))
    assert code == 0 and "next epoch: 5" in out
    whole, resumed = results(tmp_path / "whole"), results(tmp_path / "cut")
    assert resumed["accuracy"] == whole["accuracy"]
    assert resumed["per_class_accuracy"] == whole["per_class_accuracy"]


def test_resuming_with_another_learning_rate_says_the_checkpoints_wins(run, tmp_path, monkeypatch):
    with monkeypatch.context() as patch:
        stop_after_epoch(patch, 2)
        run("LLU", tmp_path / "cut", "OPTIM.MAX_EPOCH", "4", "TRAIN.CHECKPOINT_FREQ", "2")
    _, _, out = run("LLU", tmp_path / "cut", "OPTIM.MAX_EPOCH", "4", "OPTIM.LR", "0.05",
                    flags=("--resume", str(tmp_path / "cut"), "--resume-with-new-schedule"))
    assert "resuming keeps the checkpoint's optimiser and learning rate (0.002); this run's OPTIM.LR 0.05" in out


# ---------------------------------------------------------------------------------------------
# Stale caches and unvalidated splits

def _write_split(folder, split):
    with open(os.path.join(folder, "split.json"), "w") as f:
        json.dump(split, f)


def _split_of(image_folder):
    classes = sorted(os.listdir(image_folder))
    entries = [[f"{name}/{f}", label, name] for label, name in enumerate(classes)
               for f in sorted(os.listdir(os.path.join(image_folder, name)))]
    return {"train": entries[0::3] + entries[1::3], "val": entries[2::6], "test": entries[5::6]}


def test_a_changed_split_file_draws_the_few_shot_split_again(run, image_folder, tmp_path):
    split = _split_of(image_folder)
    _write_split(image_folder, split)
    assert run("LLU", tmp_path / "a", "DATASET.IMAGEFOLDER.SPLIT_FILE", "split.json")[0] == 0
    swapped = {"train": split["test"] + split["val"], "val": split["val"], "test": split["train"]}
    _write_split(image_folder, swapped)
    code, _, out = run("LLU", tmp_path / "b", "DATASET.IMAGEFOLDER.SPLIT_FILE", "split.json")
    assert code == 0 and "was drawn from another split than this one" in out
    with open(os.path.join(image_folder, "split_fewshot", "shot_2-seed_1.json")) as f:
        drawn = {entry[0] for entry in json.load(f)["train"]}
    assert drawn <= {entry[0] for entry in swapped["train"]}


@pytest.mark.parametrize("entry, message", [
    (["../../../outside.png", 0, "blue"], "must be relative and inside"),
    (["/etc/passwd", 0, "blue"], "must be relative and inside"),
    (["blue/000.png", 999, "blue"], "class 'blue' has label 0 elsewhere, here 999"),
    (["blue/000.png", "abc", "blue"], "the label must be an integer"),
    (["blue/000.png", 1, "blue"], "label 1 is class 'green' elsewhere, here 'blue'"),
])
def test_a_bad_split_entry_is_one_line_naming_file_and_entry(run, image_folder, tmp_path, entry, message):
    split = _split_of(image_folder)
    split["train"].append(entry)
    _write_split(image_folder, split)
    code, err, _ = run("ZeroshotCLIP", tmp_path / "out", "DATASET.IMAGEFOLDER.SPLIT_FILE", "split.json",
                       flags=("--eval-only",))
    line = one_error_line(err)
    assert code == 2 and "split.json: entry" in line or "split.json: 'train' entry" in line
    assert message in line


def test_labels_beyond_the_classes_are_refused(run, image_folder, tmp_path):
    split = _split_of(image_folder)
    for part in split.values():
        for entry in part:
            if entry[2] == "yellow":
                entry[1] = 7
    _write_split(image_folder, split)
    code, err, _ = run("ZeroshotCLIP", tmp_path / "out", "DATASET.IMAGEFOLDER.SPLIT_FILE", "split.json",
                       flags=("--eval-only",))
    assert code == 2 and "labels must be 0 to 3 for its 4 classes, found 7" in one_error_line(err)


def test_class_folders_that_differ_only_by_underscore_are_refused(run, image_folder, tmp_path):
    shutil.copytree(os.path.join(image_folder, "blue"), os.path.join(image_folder, "dark_blue"))
    shutil.copytree(os.path.join(image_folder, "blue"), os.path.join(image_folder, "dark blue"))
    code, err, _ = run("ZeroshotCLIP", tmp_path / "out", flags=("--eval-only",))
    assert code == 2 and "'dark blue' and 'dark_blue' both name the class 'dark blue'" in one_error_line(err)


def test_a_damaged_model_config_is_refused_before_any_work(run, tmp_path):
    assert run("LLU", tmp_path / "trained")[0] == 0
    (tmp_path / "trained" / "config.yaml").write_text("DATASET: [unclosed\n")
    code, err, out = run("LLU", tmp_path / "eval", flags=("--eval-only", "--model-dir", str(tmp_path / "trained")))
    assert code == 2 and "config.yaml: the trained run's config cannot be read" in one_error_line(err)
    assert "Evaluate on" not in out and not (tmp_path / "eval").exists()


@pytest.mark.parametrize("where", ["config file", "model-dir config"])
def test_a_yaml_python_tag_runs_nothing(run, tmp_path, where):
    marker = tmp_path / "executed"
    evil = f"DATASET:\n  NAME: !!python/object/apply:os.system ['touch {marker}']\n"
    if where == "config file":
        (tmp_path / "evil.yaml").write_text(evil)
        code, err, _ = run("LLU", tmp_path / "out", flags=("--dataset-config-file", str(tmp_path / "evil.yaml")))
        assert code == 2 and "evil.yaml" in one_error_line(err)
    else:
        assert run("LLU", tmp_path / "trained")[0] == 0
        (tmp_path / "trained" / "config.yaml").write_text(evil)
        code, err, _ = run("LLU", tmp_path / "eval", flags=("--eval-only", "--model-dir", str(tmp_path / "trained")))
        assert code == 2 and "config.yaml: the trained run's config cannot be read" in one_error_line(err)
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------
# Faults

def _default_sigint():
    # A process started in the background by a non-interactive shell inherits SIGINT ignored (and
    # Python keeps it so); the run under test gets Ctrl-C as a terminal delivers it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(args, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", LLU_CACHE=str(tmp_path / "cache"))
    return subprocess.Popen([sys.executable, "train.py", *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint)


def _wait_for(path, text, process, timeout=300):
    start = time.time()
    while time.time() - start < timeout:
        if os.path.isfile(path) and text in open(path).read():
            return
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    raise AssertionError(f"{text!r} never appeared in {path}")


def _long_run_args(image_folder, tiny_clip_file, out):
    return ["--root", os.path.dirname(image_folder), "--trainer", "LLU", "--dataset-config-file",
            "configs/datasets/imagefolder.yaml", "--config-file", "configs/trainers/LLU/vit_b16.yaml",
            "--backbone", tiny_clip_file, "--output-dir", str(out), "--seed", "1",
            "DATASET.IMAGEFOLDER.DIR", os.path.basename(image_folder), "DATASET.NUM_SHOTS", "2",
            "OPTIM.MAX_EPOCH", "100000", "FEATURES.AUG_VIEWS", "0", "DATALOADER.NUM_WORKERS", "0", "TRAIN.PRINT_FREQ", "1"]


@pytest.mark.parametrize("signum, status, word", [(signal.SIGINT, 130, "interrupted"),
                                                  (signal.SIGTERM, 143, "terminated")])
@pytest.mark.slow
def test_a_signal_is_one_line_and_sigterm_leaves_a_checkpoint_to_resume(image_folder, tiny_clip_file, tmp_path,
                                                                        signum, status, word):
    out = tmp_path / "out"
    process = _start(_long_run_args(image_folder, tiny_clip_file, out), tmp_path)
    _wait_for(out / "log.txt", "epoch [3/", process)
    process.send_signal(signum)
    _, err = process.communicate(timeout=120)
    assert process.returncode == status
    line = one_error_line(err)
    assert line.startswith(word) and line.endswith("no results written")
    assert not (out / "results.json").exists()
    if signum == signal.SIGTERM:
        assert f"continue with --resume {out}" in line
        saved = int((out / "adapter" / "checkpoint").read_text().strip().split("-")[-1])
        assert saved >= 2


def test_a_full_disk_on_the_output_folder_is_one_line(run, tmp_path, monkeypatch):
    import llu.utils
    real_replace = os.replace

    def full(src, dst):
        if dst.endswith("results.json"):
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(llu.utils.os, "replace", full)
    code, err, _ = run("ZeroshotCLIP", tmp_path / "out", flags=("--eval-only",))
    line = one_error_line(err)
    assert code == 2 and line == f"error: {tmp_path / 'out' / 'results.json'}: cannot write it (No space left on device)"
    assert not any(name.endswith(".tmp") for name in os.listdir(tmp_path / "out"))


def test_an_unwritable_output_folder_is_one_line(run, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, err, _ = run("ZeroshotCLIP", blocker / "out", flags=("--eval-only",))
    assert code == 2 and f"{blocker / 'out'}: cannot write the run's output there" in one_error_line(err)


def test_a_full_disk_on_the_feature_cache_lets_the_run_go_on_without_it(run, tmp_path, monkeypatch):
    import llu.utils
    real_save = torch.save

    def full(obj, path, *args, **kwargs):
        if "features" in str(path):
            raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0\n"
                               "PytorchStreamWriter failed writing file data/0: file write failed")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(llu.utils.torch if hasattr(llu.utils, "torch") else torch, "save", full)
    code, _, out = run("LLU", tmp_path / "out")
    assert code == 0 and "cannot write the feature cache" in out
    assert results(tmp_path / "out")["trainer"] == "LLU"


def test_a_run_folder_in_use_is_refused(run, tmp_path):
    with folder_lock(str(tmp_path / "out")):
        code, err, _ = run("ZeroshotCLIP", tmp_path / "out", flags=("--eval-only",))
    assert code == 2 and f"{tmp_path / 'out'}: in use by another run (pid {os.getpid()}" in one_error_line(err)
    assert run("ZeroshotCLIP", tmp_path / "out", flags=("--eval-only",))[0] == 0  # free again


# ---------------------------------------------------------------------------------------------
# Bad values

@pytest.mark.parametrize("key, value, message", [
    ("TRAINER.LLU.GAMMA", "-1.0", "TRAINER.LLU.GAMMA must be >= 0"),
    ("TRAINER.LLU.BETA", "5.0", "TRAINER.LLU.BETA must be in [0, 1]"),
    ("TRAINER.LLU.MASK", "foo", "TRAINER.LLU.MASK must be exp or dirac"),
    ("TRAINER.LLU.LAMBDA", "-1e3", "TRAINER.LLU.LAMBDA must be >= 0"),
    ("DATASET.NUM_SHOTS", "-3", "DATASET.NUM_SHOTS must be a number of images per class"),
    ("SEED", "99999999999", "SEED (--seed) must be between 0 and 4294967295"),
])
def test_a_bad_value_is_one_line_naming_the_key(run, tmp_path, key, value, message):
    code, err, _ = run("LLU", tmp_path / "out", key, value)
    assert code == 2 and message in one_error_line(err)


def test_an_int_for_a_float_key_is_that_float(run, tmp_path):
    assert run("LLU", tmp_path / "out", "TRAINER.LLU.GAMMA", "0")[0] == 0  # the README's "gamma = 0"
    assert "GAMMA: 0.0" in (tmp_path / "out" / "config.yaml").read_text()


def test_an_unseeded_run_does_not_cache_its_few_shot_split(run, image_folder, tmp_path):
    code, _, out = run("LLU", tmp_path / "out", "SEED", "-1")
    assert code == 0 and "does not cache it" in out
    assert not os.path.exists(os.path.join(image_folder, "split_fewshot", "shot_2-seed_-1.json"))


# ---------------------------------------------------------------------------------------------
# TorchScript archives

EVIL_MODULE = """
import torch
from typing import Tuple


class Evil(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(2))

    def forward(self, x):
        return x * self.weight

    @torch.jit.export
    def __getstate__(self) -> Tuple[torch.Tensor, bool]:
        return (self.weight, self.training)

    @torch.jit.export
    def __setstate__(self, state: Tuple[torch.Tensor, bool]):
        print("CODE FROM THE ARCHIVE RAN")
        self.weight = state[0]
        self.training = state[1]


torch.jit.save(torch.jit.script(Evil()), {path!r})
"""


def test_a_torchscript_archive_is_read_without_running_its_code(tmp_path, tiny_clip_file, capfd):
    from llu.backbones import openai, torchscript
    evil = str(tmp_path / "evil.pt")
    maker = tmp_path / "make_evil.py"  # torch.jit.script reads the class's source from its file
    maker.write_text(EVIL_MODULE.format(path=evil))
    subprocess.run([sys.executable, str(maker)], check=True, capture_output=True)
    torch.jit.load(evil)
    assert "CODE FROM THE ARCHIVE RAN" in capfd.readouterr().out  # the file does carry code that runs
    with pytest.raises(torchscript.TorchScriptFormatError):
        torchscript.read_state_dict(evil)  # its weights live in a tuple only its code understands
    with pytest.raises(UserError, match="TRUST_TORCHSCRIPT True"):
        openai.read_clip_state_dict(evil, trust_torchscript=False)
    assert "CODE FROM THE ARCHIVE RAN" not in capfd.readouterr().out


# ---------------------------------------------------------------------------------------------
# Killed at every file rename

# One process imports train.py once, then forks each attempt: a child runs train.py with os.replace
# counted and, at rename number N, kills itself with SIGKILL just before renaming (a complete
# temporary file, nothing in its place); the next child reruns the same command to the end.
# Prints {"renames": count of an uninterrupted run, "killed": [signal per N], "reruns": [exit status per N]}.
KILLING_DRIVER = """
import json, os, shutil, signal, sys
sys.path.insert(0, os.getcwd())
from llu import train

data, args_template = sys.argv[1], sys.argv[2:]
real_replace = os.replace


def attempt(root, kill_at):
    pid = os.fork()
    if pid == 0:
        count = [0]

        def replace(src, dst, *a, **k):
            count[0] += 1
            if count[0] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return real_replace(src, dst, *a, **k)

        os.replace = replace
        os.environ["LLU_CACHE"] = os.path.join(root, "cache")
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        try:
            train.cli([a.replace("ROOT", root) for a in args_template])
        except SystemExit as e:
            os._exit(e.code or 0)
        with open(os.path.join(root, "renames"), "w") as f:
            f.write(str(count[0]))
        os._exit(0)
    return os.waitpid(pid, 0)[1]


def fresh(name):
    root = os.path.join(os.path.dirname(data), name)
    shutil.copytree(data, os.path.join(root, "data"))
    return root


reference = fresh("reference")
assert attempt(reference, 0) == 0
renames = int(open(os.path.join(reference, "renames")).read())
killed, reruns = [], []
for kill_at in range(1, renames + 1):
    root = fresh(f"killed{kill_at}")
    status = attempt(root, kill_at)
    killed.append(os.WTERMSIG(status) if os.WIFSIGNALED(status) else -1)
    reruns.append(os.waitstatus_to_exitcode(attempt(root, 0)))
print(json.dumps({"renames": renames, "killed": killed, "reruns": reruns}))
"""


@pytest.mark.slow
def test_a_run_killed_at_any_file_rename_reruns_to_the_uninterrupted_numbers(image_folder, tiny_clip_file, tmp_path):
    driver = tmp_path / "killing_driver.py"
    driver.write_text(KILLING_DRIVER)
    args = ["--root", "ROOT/data", "--trainer", "LLU", "--dataset-config-file", "configs/datasets/imagefolder.yaml",
            "--config-file", "configs/trainers/LLU/vit_b16.yaml", "--backbone", tiny_clip_file,
            "--output-dir", "ROOT/out", "--seed", "1", "DATASET.IMAGEFOLDER.DIR", os.path.basename(image_folder),
            "DATASET.NUM_SHOTS", "2", "OPTIM.MAX_EPOCH", "2", "TRAIN.CHECKPOINT_FREQ", "1", "FEATURES.AUG_VIEWS", "1",
            "DATALOADER.NUM_WORKERS", "0"]
    done = subprocess.run([sys.executable, str(driver), os.path.dirname(image_folder), *args], cwd=REPO,
                          env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["renames"] >= 10  # splits, feature shards, config, checkpoints and their pointers, results
    assert report["killed"] == [signal.SIGKILL] * report["renames"]
    assert report["reruns"] == [0] * report["renames"]
    base = os.path.dirname(os.path.dirname(image_folder))
    expected = results(os.path.join(base, "reference", "out"))
    for kill_at in range(1, report["renames"] + 1):
        again = results(os.path.join(base, f"killed{kill_at}", "out"))
        assert (again["accuracy"], again["per_class_accuracy"], again["llu_regularizer"]) == \
            (expected["accuracy"], expected["per_class_accuracy"], expected["llu_regularizer"]), kill_at
