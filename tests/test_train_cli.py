"""train.py end to end on a generated image folder with a tiny random CLIP, and its error lines."""
import json
import os
import subprocess
import sys

import pytest

from llu import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _args(image_folder, clip_file, out, *extra):
    root = os.path.dirname(image_folder)
    return ["--root", root, "--trainer", "ZeroshotCLIP", "--dataset-config-file", "configs/datasets/imagefolder.yaml",
            "--backbone", clip_file, "--output-dir", str(out), *extra,
            "DATASET.IMAGEFOLDER.DIR", os.path.basename(image_folder)]


def _run_cli(args, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", LLU_CACHE=str(tmp_path / "cache"))
    return subprocess.run([sys.executable, "train.py", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)


def test_zero_shot_eval_prints_dassl_lines_and_writes_results(image_folder, tiny_clip_file, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("LLU_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    train.cli(_args(image_folder, tiny_clip_file, out, "--eval-only", "--seed", "0"))
    printed = capsys.readouterr().out
    assert "=> result" in printed and "* accuracy: " in printed
    results = json.loads((out / "results.json").read_text())
    for key in ("accuracy", "macro_f1", "per_class_accuracy", "error", "subsample_classes", "dataset", "trainer",
                "backbone", "seed", "shots", "config_files", "elapsed_seconds"):
        assert key in results
    # Your own images are named after their folder (DATASET.IMAGEFOLDER.NAME to choose another name).
    assert results["trainer"] == "ZeroshotCLIP" and results["dataset"] == "my_images" and results["seed"] == 0
    assert results["dataset_reader"] == "ImageFolder"
    assert set(results["per_class_accuracy"]) == {"red", "green", "blue", "yellow"}
    assert results["accuracy"] == pytest.approx(100 - results["error"])
    assert (out / "log.txt").read_text().count("* accuracy: ") == 1
    assert "INPUT.SIZE (224, 224) differs from the model's input resolution 32" in printed
    assert "INPUT.SIZE (224, 224) differs" in (out / "log.txt").read_text()  # noted before the log opened


def test_results_record_what_produced_them(image_folder, tiny_clip_file, tmp_path, monkeypatch):
    import datetime
    import hashlib

    import torch
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("LLU_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    train.cli(_args(image_folder, tiny_clip_file, out, "--eval-only", "--seed", "0"))
    provenance = json.loads((out / "results.json").read_text())["provenance"]
    with open(tiny_clip_file, "rb") as f:
        assert provenance["backbone_sha256"] == hashlib.sha256(f.read()).hexdigest()
    commit = subprocess.run(["git", "-C", REPO, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert provenance["git_commit"] == (commit or None)
    assert provenance["torch"] == torch.__version__ and provenance["clip"]
    assert provenance["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    stamp = datetime.datetime.strptime(provenance["utc_time"], "%Y-%m-%dT%H:%M:%SZ")
    now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    assert abs((now - stamp).total_seconds()) < 3600


def test_config_is_layered_dataset_then_trainer_then_flags_then_options(tmp_path):
    trainer_yaml = tmp_path / "t.yaml"
    trainer_yaml.write_text("OPTIM:\n  LR: 0.5\n  MAX_EPOCH: 3\nDATASET:\n  NUM_SHOTS: 4\n")
    args = train.build_parser().parse_args([
        "--dataset-config-file", os.path.join(REPO, "configs/datasets/imagefolder.yaml"), "--config-file",
        str(trainer_yaml), "--trainer", "ZeroshotCLIP", "--seed", "7", "OPTIM.MAX_EPOCH", "9"])
    cfg = train.setup_cfg(args)
    assert (cfg.DATASET.NAME, cfg.OPTIM.LR, cfg.OPTIM.MAX_EPOCH, cfg.DATASET.NUM_SHOTS, cfg.SEED) == \
        ("ImageFolder", 0.5, 9, 4, 7)
    assert cfg.is_frozen()


@pytest.mark.parametrize("extra, message", [
    (["--trainer", "ZeroShotClip"], "unknown trainer 'ZeroShotClip'; did you mean ZeroshotCLIP"),
    (["OPTIM.LRR", "0.1"], "unknown config key OPTIM.LRR; did you mean OPTIM.LR"),
    (["OPTIM.LR"], "trailing options must be KEY VALUE or KEY=VALUE pairs"),
])
def test_user_errors_are_one_line_without_traceback(image_folder, tiny_clip_file, tmp_path, extra, message):
    args = _args(image_folder, tiny_clip_file, tmp_path / "out", "--eval-only")
    if extra[0] == "--trainer":
        args[args.index("--trainer") + 1] = extra[1]
    else:
        args += extra
    result = _run_cli(args, tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1 and message in error_lines[0]


def test_missing_data_folder_names_the_path(tiny_clip_file, tmp_path):
    missing = tmp_path / "nowhere" / "my_images"
    result = _run_cli(_args(str(missing), tiny_clip_file, tmp_path / "out", "--eval-only"), tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert str(missing) in result.stderr


def test_unknown_backbone_and_corrupt_weights_are_one_line(image_folder, tmp_path):
    result = _run_cli(_args(image_folder, "ViT-Q/99", tmp_path / "out", "--eval-only"), tmp_path)
    assert result.returncode == 2 and "ViT-Q/99" in result.stderr and "ViT-B/16" in result.stderr
    corrupt = tmp_path / "broken.pt"
    corrupt.write_bytes(b"PK\x03\x04 truncated")
    result = _run_cli(_args(image_folder, str(corrupt), tmp_path / "out", "--eval-only"), tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr and "broken.pt" in result.stderr


def test_openai_name_offline_says_where_to_put_the_file(image_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("CLIP_DOWNLOAD_ROOT", str(tmp_path / "clip"))
    from llu.backbones import openai

    def offline(url, root):
        raise OSError("network unreachable")

    monkeypatch.setattr(openai.clip.clip, "_download", offline)
    from llu.utils import UserError
    with pytest.raises(UserError, match=f"put ViT-B-16.pt there.*{tmp_path / 'clip'}|{tmp_path / 'clip'}.*ViT-B-16.pt"):
        openai.resolve_weights("ViT-B/16")


def test_an_image_folder_can_be_named_and_a_loaded_model_is_recorded_relative(image_folder, tiny_clip_file, tmp_path,
                                                                              monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("LLU_CACHE", str(tmp_path / "cache"))
    train.cli(_args(image_folder, tiny_clip_file, tmp_path / "runs" / "trained", "--eval-only",
                    "DATASET.IMAGEFOLDER.NAME", "Colours"))
    train.cli(_args(image_folder, tiny_clip_file, tmp_path / "runs" / "eval", "--eval-only", "--model-dir",
                    str(tmp_path / "runs" / "trained"), "DATASET.IMAGEFOLDER.NAME", "Colours"))
    results = json.loads((tmp_path / "runs" / "eval" / "results.json").read_text())
    assert results["dataset"] == results["train_dataset"] == "Colours"
    assert results["model_dir"] == os.path.join("..", "trained")
