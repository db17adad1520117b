"""A run is what its folder says it is: the saved config is the one that ran, a resumed run is the run
it continues, a finished run is never overwritten silently, and the built-in world lives in one place
(the README's reliability table lists these cases)."""
import json
import os

import pytest
from conftest import stop_after_epoch
import torch
import yaml

from llu.trainers import clip_common
from llu.utils import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_TOWERS = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=1)


@pytest.fixture
def run(run_train):
    """train.py in this process on the 4-colour image folder: returns (exit status, stderr, stdout)."""
    def _run(out, *opts, backbone, trainer="LLU", flags=()):
        return run_train(trainer, out, *opts, flags=flags, backbone=backbone)
    return _run


def one_error_line(err):
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def results(folder):
    with open(os.path.join(folder, "results.json")) as f:
        return json.load(f)


# ---------------------------------------------------------------------------------------------
# The config that ran is the config that is saved

@pytest.fixture(scope="module")
def odd_backbones(tmp_path_factory):
    """Tiny random backbones whose preprocessing is not the config's default (224 px, CLIP's statistics,
    bicubic, shortest side): an OpenCLIP model of 48 px (config JSON + state dict), and a SigLIP folder
    of 40 px, squashed, bilinear, with SigLIP's statistics."""
    import open_clip
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel
    from test_backbones import clip_bpe_tokenizer

    folder = tmp_path_factory.mktemp("odd")
    config = folder / "odd-openclip.json"
    config.write_text(json.dumps({"embed_dim": 32,
                                  "vision_cfg": {"image_size": 48, "layers": 1, "width": 64, "patch_size": 8},
                                  "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 1,
                                               "layers": 1}}))
    open_clip.add_model_config(str(config))
    torch.manual_seed(0)
    torch.save(open_clip.create_model("odd-openclip").state_dict(), folder / "odd-openclip.bin")

    text = dict(vocab_size=49408, max_position_embeddings=16, bos_token_id=49406, eos_token_id=49407,
                pad_token_id=49407, **TINY_TOWERS)
    siglip = folder / "siglip"
    SiglipModel(SiglipConfig(text_config=text, vision_config=dict(image_size=40, patch_size=8, **TINY_TOWERS))
                ).save_pretrained(siglip)
    clip_bpe_tokenizer(tmp_path_factory.mktemp("bpe")).save_pretrained(siglip)
    SiglipImageProcessor(size={"height": 40, "width": 40}, resample=2, image_mean=[0.5, 0.5, 0.5],
                         image_std=[0.5, 0.5, 0.5]).save_pretrained(siglip)
    return {"openclip": (f"openclip:{config}", ["MODEL.BACKBONE.WEIGHTS", str(folder / "odd-openclip.bin")], 48),
            "siglip": (f"hf:{siglip}", [], 40)}


@pytest.mark.parametrize("which", ["openclip", "siglip"])
def test_the_saved_config_is_the_config_that_ran(which, odd_backbones, run, tmp_path, monkeypatch):
    backbone, opts, size = odd_backbones[which]
    ran = {}
    after_train = clip_common.ClipTrainer.after_train

    def recording(self):
        ran["config"] = self.cfg.dump()
        after_train(self)

    monkeypatch.setattr(clip_common.ClipTrainer, "after_train", recording)
    code, err, out = run(tmp_path / "trained", *opts, backbone=backbone)
    assert code == 0, err
    assert f"INPUT.SIZE (224, 224) differs from the model's input resolution {size}" in out
    saved = yaml.safe_load((tmp_path / "trained" / "config.yaml").read_text())
    assert saved == yaml.safe_load(ran["config"])
    assert saved["INPUT"]["SIZE"] == [size, size]
    logged = (tmp_path / "trained" / "log.txt").read_text()
    assert f"SIZE: ({size}, {size})" in logged.split("** Config **")[1].split("** System info **")[0]

    code, err, _ = run(tmp_path / "evaluated", *opts, backbone=backbone,
                       flags=("--eval-only", "--model-dir", str(tmp_path / "trained")))
    assert code == 0, err
    assert results(tmp_path / "evaluated")["accuracy"] == results(tmp_path / "trained")["accuracy"]
    assert yaml.safe_load((tmp_path / "evaluated" / "config.yaml").read_text())["INPUT"] == saved["INPUT"]


# ---------------------------------------------------------------------------------------------
# A resumed run is the run it says it is



@pytest.fixture
def cut_run(run, tiny_clip_file, tmp_path, monkeypatch):
    """An LLU run of 4 epochs interrupted after its second (checkpointed): its folder."""
    with monkeypatch.context() as patch:
        stop_after_epoch(patch, 2)
        code, err, _ = run(tmp_path / "cut", "OPTIM.MAX_EPOCH", "4", "TRAIN.CHECKPOINT_FREQ", "2",
                           backbone=tiny_clip_file)
    assert code == 130, err
    return tmp_path / "cut"


def test_resuming_with_another_config_is_refused_naming_the_keys(cut_run, run, tiny_clip_file):
    config = (cut_run / "config.yaml").read_text()
    files = sorted(os.listdir(cut_run))
    code, err, _ = run(cut_run, "OPTIM.MAX_EPOCH", "4", "DATASET.NUM_SHOTS", "1", "TRAINER.LLU.GAMMA", "5.0",
                       backbone=tiny_clip_file, flags=("--resume", str(cut_run)))
    assert code == 2
    assert one_error_line(err) == (
        f"error: --resume {cut_run}: this run's config differs from the run it continues: DATASET.NUM_SHOTS 2 -> 1, "
        f"TRAINER.LLU.GAMMA 20.0 -> 5.0 (resume with the run's config, or train from scratch into another --output-dir)")
    assert (cut_run / "config.yaml").read_text() == config and sorted(os.listdir(cut_run)) == files


def test_a_changed_schedule_needs_its_flag_and_keys_that_change_no_number_are_free(cut_run, run, tiny_clip_file):
    common = ("TRAIN.PRINT_FREQ", "1", "DATALOADER.NUM_WORKERS", "0", "TRAIN.CHECKPOINT_FREQ", "0")  # no number
    code, err, _ = run(cut_run, "OPTIM.MAX_EPOCH", "6", *common, backbone=tiny_clip_file,
                       flags=("--resume", str(cut_run)))
    assert code == 2 and one_error_line(err).endswith(
        "differs from the run it continues: OPTIM.MAX_EPOCH 4 -> 6 (resume with the run's config, or train from "
        "scratch into another --output-dir; --resume-with-new-schedule accepts a changed OPTIM schedule)")
    code, err, out = run(cut_run, "OPTIM.MAX_EPOCH", "6", "OPTIM.LR", "0.05", *common, backbone=tiny_clip_file,
                         flags=("--resume", str(cut_run), "--resume-with-new-schedule"))
    assert code == 0, err
    assert "next epoch: 3" in out and "resuming with a new schedule (OPTIM.MAX_EPOCH 4 -> 6)" in out
    assert "resuming keeps the checkpoint's optimiser and learning rate (0.002); this run's OPTIM.LR 0.05" in out
    saved = yaml.safe_load((cut_run / "config.yaml").read_text())
    assert (saved["OPTIM"]["MAX_EPOCH"], saved["OPTIM"]["LR"]) == (6, 0.002)  # what ran
    assert results(cut_run)["trainer"] == "LLU"


def test_the_same_config_resumes(cut_run, run, tiny_clip_file):
    code, err, out = run(cut_run, "OPTIM.MAX_EPOCH", "4", "TRAIN.CHECKPOINT_FREQ", "2", backbone=tiny_clip_file,
                         flags=("--resume", str(cut_run)))
    assert code == 0 and "next epoch: 3" in out and "Note: resuming" not in out, err


# ---------------------------------------------------------------------------------------------
# A finished run is never overwritten silently

def _folder_state(folder):
    return {os.path.relpath(os.path.join(d, f), folder): open(os.path.join(d, f), "rb").read()
            for d, _, files in os.walk(folder) for f in files if f != ".lock"}


def test_a_run_into_a_finished_runs_folder_is_refused_before_any_work(run, tiny_clip_file, tmp_path):
    out = tmp_path / "out"
    assert run(out, backbone=tiny_clip_file)[0] == 0
    before = _folder_state(out)
    code, err, out_text = run(out, "TRAINER.LLU.GAMMA", "5.0", backbone=tiny_clip_file)
    assert code == 2 and one_error_line(err) == (
        f"error: {out}: holds a finished run (results.json); pass --overwrite to replace it, or choose another "
        f"--output-dir")
    assert "Setting fixed seed" not in out_text
    assert _folder_state(out) == before  # not a byte written: no second log, config or event file
    code, err, _ = run(out, backbone=tiny_clip_file, flags=("--eval-only", "--model-dir", str(out), "--overwrite"))
    assert code == 2 and "--overwrite would remove the model that --model-dir" in one_error_line(err)
    assert run(out, backbone=tiny_clip_file, flags=("--resume", str(out)))[0] == 0  # --resume continues it


def test_overwrite_replaces_the_run_whole(run, tiny_clip_file, tmp_path):
    out = tmp_path / "out"
    assert run(out, "TRAIN.CHECKPOINT_FREQ", "1", backbone=tiny_clip_file)[0] == 0
    assert sorted(os.listdir(out / "adapter")) == ["checkpoint", "model.pth.tar-1", "model.pth.tar-2"]
    (out / "notes.md").write_text("mine")
    code, err, _ = run(out, "OPTIM.MAX_EPOCH", "1", backbone=tiny_clip_file, flags=("--overwrite",))
    assert code == 0, err
    assert sorted(os.listdir(out / "adapter")) == ["checkpoint", "model.pth.tar-1"]
    assert len(os.listdir(out / "tensorboard")) == 1  # one event file: the new run's alone
    assert sorted(os.listdir(out)) == sorted(["adapter", "config.yaml", "log.txt", "metrics.jsonl", "notes.md",
                                              "results.json", "tensorboard", ".lock"])
    epochs = [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert max(epochs) == 1 and epochs.count(1) == 2  # the new run's training epoch and its test
    assert (out / "log.txt").read_text().count("** Config **") == 1
    assert yaml.safe_load((out / "config.yaml").read_text())["OPTIM"]["MAX_EPOCH"] == 1


# ---------------------------------------------------------------------------------------------
# The built-in world lives in one place

SMALL_WORLD = (2, 1, 1)  # images per class in train, val, test


@pytest.fixture
def small_world(tmp_path, monkeypatch):
    """The world's datasets made small, and its home under tmp_path: tmp_path/cache/world."""
    import dataclasses

    from llu.world import generate
    for name in ("Shapes", "Patterns"):
        monkeypatch.setitem(generate.DATASETS, name, dataclasses.replace(generate.DATASETS[name],
                                                                        split_sizes=SMALL_WORLD))
    monkeypatch.setenv("LLU_CACHE", str(tmp_path / "cache"))
    return generate


def _read_world(root, name="Shapes"):
    from llu.engine import DATASET_REGISTRY, get_cfg_default
    cfg = get_cfg_default()
    cfg.DATASET.ROOT, cfg.DATASET.NAME, cfg.SEED = root, name, 1
    return DATASET_REGISTRY.get(name)(cfg)


def test_a_root_without_the_world_is_not_found_and_nothing_is_written_there(small_world, tmp_path):
    typo = tmp_path / "dtaa"
    typo.mkdir()
    with pytest.raises(UserError) as refused:
        _read_world(str(typo))
    home = tmp_path / "cache" / "world"
    assert str(refused.value) == (f"{typo}/shapes: Shapes folder not found; the built-in world is in {home} "
                                  f"(no --root), or generate it here with python -m llu.world.generate --root {typo}")
    assert os.listdir(typo) == [] and not home.exists()


def test_the_world_is_generated_in_its_home_or_where_asked(small_world, tmp_path, capsys):
    home = tmp_path / "cache" / "world"
    for root in ("", str(home)):  # no --root, or the home by name
        assert len(_read_world(root).train_x) == 64 * SMALL_WORLD[0]
    assert sorted(os.listdir(home)) == ["shapes"]
    asked = tmp_path / "data"
    small_world.main(["--root", str(asked), "--datasets", "Patterns"], prog="llu world generate")
    assert f"Patterns: {asked / 'patterns'}" in capsys.readouterr().out
    assert len(_read_world(str(asked), "Patterns").train_x) == 48 * SMALL_WORLD[0]
    assert sorted(os.listdir(asked)) == ["patterns"]
