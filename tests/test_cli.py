"""The ``llu`` command: subcommands, help without torch, shipped configs from any folder, KEY=VALUE."""
import os
import subprocess
import sys

import pytest

from llu import configs, engine, train
from llu.utils import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _llu(*args, cwd=REPO, importtime=False):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    command = [sys.executable, *(["-X", "importtime"] if importtime else []), "-m", "llu", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args", [["--help"], ["train", "--help"], ["train", "--seed", "x"], ["nonsense"]])
def test_help_and_argument_errors_import_no_torch(args):
    result = _llu(*args, importtime=True)
    imported = [line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")]
    assert imported, result.stderr[-500:]
    assert not [name for name in imported if name.split(".")[0] in ("torch", "numpy", "clip")]
    assert result.returncode == (0 if "--help" in args else 2)


def test_train_help_lists_every_registered_trainer_dataset_and_an_example():
    text = _llu("train", "--help").stdout
    for name in engine.TRAINER_REGISTRY.registered_names():
        assert f"\n  {name} " in text
    assert set(configs.shipped_trainers()) == set(engine.TRAINER_REGISTRY.registered_names())
    for name in ("shapes", "imagenet", "imagefolder"):
        assert name in text
    assert "openclip:<model>" in text and "hf:<folder>" in text and "llu train --trainer LLU" in text


def test_unknown_command_is_one_line_after_the_usage():
    result = _llu("trian")
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1].startswith("error: unknown command")


@pytest.mark.parametrize("given", ["LLU/toy", "configs/trainers/LLU/toy.yaml", "trainers/LLU/toy.yaml"])
def test_shipped_trainer_configs_are_found_by_short_name_and_repository_path(given, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ here: the shipped file is meant
    assert os.path.samefile(configs.locate(given, "trainers"), os.path.join(REPO, "configs/trainers/LLU/toy.yaml"))


def test_a_file_where_you_stand_wins_over_a_shipped_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    os.makedirs("LLU")
    (tmp_path / "LLU" / "toy").write_text("OPTIM:\n  LR: 0.5\n")
    assert configs.locate("LLU/toy", "trainers") == "LLU/toy"
    assert os.path.samefile(configs.locate("shapes", "datasets"), os.path.join(REPO, "configs/datasets/shapes.yaml"))


def test_an_unknown_config_name_is_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="LLU/tyo: config file not found"):
        configs.locate("LLU/tyo", "trainers")


def test_key_equals_value_overrides_as_key_value(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    common = ["--dataset-config-file", "shapes", "--config-file", "LLU/toy", "--trainer", "LLU"]
    spaced = train.setup_cfg(train.build_parser().parse_args(
        common + ["OPTIM.LR", "0.5", "TRAINER.LLU.GAMMA", "5", "DATASET.SUBSAMPLE_CLASSES", "base"]))
    equals = train.setup_cfg(train.build_parser().parse_args(
        common + ["OPTIM.LR=0.5", "TRAINER.LLU.GAMMA=5", "DATASET.SUBSAMPLE_CLASSES", "base"]))
    assert spaced == equals
    assert (equals.OPTIM.LR, equals.TRAINER.LLU.GAMMA, equals.DATASET.SUBSAMPLE_CLASSES) == (0.5, 5.0, "base")
    assert equals.SOURCE_FILES.TRAINER == "LLU/toy"


def test_a_value_holding_an_equals_sign_stays_a_value(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = train.setup_cfg(train.build_parser().parse_args(
        ["--dataset-config-file", "shapes", "--trainer", "ZeroshotCLIP", "OUTPUT_DIR", "a=b"]))
    assert cfg.OUTPUT_DIR == "a=b"


def test_llu_world_generate_writes_the_world_where_asked(tmp_path):
    root = tmp_path / "elsewhere"
    result = _llu("world", "generate", "--root", str(root), "--datasets", "ShapesSketch")
    assert result.returncode == 0, result.stderr[-500:]
    assert any(root.rglob("split_zhou_ShapesSketch.json"))
    assert _llu("world").returncode == 2
