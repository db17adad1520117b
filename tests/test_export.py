"""``llu export RUN OUT``: a self-contained folder (config.json + model.safetensors) that loads in a
fresh process with no run folder and gives the run's logits bit for bit."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import safetensors.torch
import torch

import llu
from llu.export import export
from llu.utils import UserError, load_torch

from test_predict import TRAINERS, split_of, toy_run, toy_run_folder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A fresh process: loads the export, computes logits, writes them as safetensors (no pickle).
FRESH_LOGITS = """
import sys, json, safetensors.torch, llu
folder, paths, names, out = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4]
safetensors.torch.save_file({"logits": llu.load(folder).logits(paths, names)}, out)
"""


def fresh_logits(folder, paths, names, tmp_path):
    out = tmp_path / "fresh.safetensors"
    done = subprocess.run([sys.executable, "-c", FRESH_LOGITS, str(folder), json.dumps(paths), json.dumps(names),
                           str(out)], cwd=str(tmp_path), capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO))
    assert done.returncode == 0, done.stderr[-2000:]
    return safetensors.torch.load_file(str(out))["logits"]


@pytest.fixture(scope="module")
def llu_run(tmp_path_factory, shapes_world):
    return toy_run_folder(tmp_path_factory, shapes_world, "LLU")


def test_an_export_gives_the_run_folders_logits_bit_for_bit_in_a_fresh_process(llu_run, shapes_world, tmp_path):
    out = tmp_path / "exported"
    export(str(llu_run), str(out))
    moved = tmp_path / "elsewhere"
    shutil.move(str(out), str(moved))  # no path of the run is read
    for subsample in ("base", "new"):
        paths, _, classnames = split_of(shapes_world, subsample)
        expected = llu.load(llu_run).logits(paths[:70], classnames)
        assert torch.equal(fresh_logits(moved, paths[:70], classnames, tmp_path), expected)


def test_the_folder_holds_json_safetensors_and_the_learned_tensors_only(llu_run, tmp_path):
    out = tmp_path / "exported"
    export(str(llu_run), str(out))
    assert sorted(os.listdir(out)) == ["README.md", "config.json", "model.safetensors"]
    for name in os.listdir(out):
        head = (out / name).read_bytes()[:2]
        assert head not in (b"PK", b"\x80\x02", b"\x80\x04"), f"{name} looks like a pickle or a torch archive"
    config = json.loads((out / "config.json").read_text())
    assert config["trainer"] == "LLU" and config["backbone"]["name"] == "toy"
    assert len(config["backbone"]["sha256"]) == 64
    assert config["preprocessing"]["size"] == [32, 32] and config["templates"] == ["a photo of a {}."]
    assert len(config["training_classes"]) == 32 and config["settings"]["TRAINER"]["LLU"]["GAMMA"] == 20.0
    tensors = safetensors.torch.load_file(str(out / "model.safetensors"))
    checkpoint = load_torch(str(llu_run / "adapter" / "model.pth.tar-2"))["state_dict"]
    assert tensors.keys() == checkpoint.keys()  # W, b, beta, gamma and both anchor sets; no CLIP weights
    assert all(torch.equal(tensors[key], checkpoint[key]) for key in tensors)


def test_localized_linear_adapter_reads_an_llu_export(llu_run, tmp_path):
    out = tmp_path / "exported"
    export(str(llu_run), str(out))
    adapter = llu.LocalizedLinearAdapter.from_pretrained(str(out))
    run_adapter = llu.load(llu_run).trainer.adapter
    assert adapter.state_dict().keys() == run_adapter.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(adapter.state_dict().values(), run_adapter.state_dict().values()))
    assert not adapter.training and adapter.mask == run_adapter.mask
    features = torch.nn.functional.normalize(torch.randn(5, adapter.dim), dim=-1)
    assert torch.equal(adapter.transform_image(features), run_adapter.transform_image(features))


def test_an_unidentifiable_backbone_is_refused_in_one_line(llu_run, tmp_path, monkeypatch, capsys):
    backbone = llu.load(llu_run).backbone  # the process's one loaded backbone, which export loads again
    monkeypatch.setattr(backbone, "identity", "")
    from llu.export import cli
    with pytest.raises(SystemExit) as exit_info:
        cli([str(llu_run), str(tmp_path / "exported")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "cannot be identified" in err[0]
    assert not (tmp_path / "exported").exists()


def test_an_export_refuses_other_backbone_weights(llu_run, tmp_path):
    out = tmp_path / "exported"
    export(str(llu_run), str(out))
    config = json.loads((out / "config.json").read_text())
    config["backbone"]["sha256"] = "0" * 64
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="trained on backbone toy with sha256 0000"):
        llu.load(out)


def test_export_keeps_a_folder_of_other_files(llu_run, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="holds other files"):
        export(str(llu_run), str(tmp_path))


@pytest.mark.slow
@pytest.mark.parametrize("trainer", [name for name in TRAINERS if name != "LLU"])
def test_every_trainers_export_gives_its_logits(trainer, shapes_world, tmp_path):
    opts = ("TRAINER.TIP_ADAPTER.SEARCH_STEP", "(20, 10)") if trainer.startswith("Tip") else ()
    toy_run(shapes_world, tmp_path / "run", trainer, "base", *opts)
    export(str(tmp_path / "run"), str(tmp_path / "exported"))
    subsample = "base" if trainer.startswith("Tip") else "new"
    paths, _, classnames = split_of(shapes_world, subsample)
    expected = llu.load(tmp_path / "run").logits(paths[:40], classnames)
    assert torch.equal(fresh_logits(tmp_path / "exported", paths[:40], classnames, tmp_path), expected)
