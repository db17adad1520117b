"""Faithful to upstream: CoOp's, CoCoOp's and ProGrad's config files load unchanged and build the
model upstream builds; CoOp's own few-shot pickles are read safely."""
import os
import pickle
import sys
import types

import pytest
import torch
from conftest import TINY_CLIP_DIMS

from llu import train
from llu.engine import build_trainer
from llu.utils import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def clip77_file(tmp_path_factory):
    """A tiny random CLIP with OpenAI's context of 77 tokens (upstream's 16 context vectors fit)."""
    import clip.model
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("clip77") / "clip77.pt"
    torch.save(clip.model.CLIP(**{**TINY_CLIP_DIMS, "context_length": 77}).state_dict(), path)
    return str(path)

COMMON = """DATALOADER:
  TRAIN_X:
    BATCH_SIZE: {batch}
  TEST:
    BATCH_SIZE: 100
  NUM_WORKERS: 8
INPUT:
  SIZE: (224, 224)
  INTERPOLATION: "bicubic"
  PIXEL_MEAN: [0.48145466, 0.4578275, 0.40821073]
  PIXEL_STD: [0.26862954, 0.26130258, 0.27577711]
  TRANSFORMS: ["random_resized_crop", "random_flip", "normalize"]
OPTIM:
  NAME: "sgd"
  LR: 0.002
  MAX_EPOCH: {epochs}
  LR_SCHEDULER: "cosine"
  WARMUP_EPOCH: 1
  WARMUP_TYPE: "constant"
  WARMUP_CONS_LR: 1e-5
TRAIN:
  PRINT_FREQ: 5
MODEL:
  BACKBONE:
    NAME: "ViT-B/16"
"""

# The shapes of upstream's files: CoOp's configs/trainers/CoOp/*.yaml (with or without a word init),
# CoCoOp's configs/trainers/CoCoOp/*.yaml (N_CTX, CTX_INIT, PREC), ProGrad's
# configs/trainers/ProGrad/rn50.yaml (LOSS and a boolean CTX_INIT).
UPSTREAM = {
    "coop_vit_b16": ("CoOp", COMMON.format(batch=32, epochs=200), dict(n_ctx=16, init=None)),
    "coop_vit_b16_ctxv1": ("CoOp", COMMON.format(batch=32, epochs=200)
                           + 'TRAINER:\n  COOP:\n    CTX_INIT: "a photo of a"\n', dict(n_ctx=4, init="a photo of a")),
    "coop_rn50_val": ("CoOp", COMMON.format(batch=200, epochs=200).split("OPTIM:")[0]
                      + 'MODEL:\n  BACKBONE:\n    NAME: "RN50"\n', dict(n_ctx=16, init=None)),
    "cocoop_vit_b16_c16_ep10_batch1": ("CoCoOp", COMMON.format(batch=1, epochs=10)
                                       + 'TRAINER:\n  COCOOP:\n    N_CTX: 16\n    CTX_INIT: ""\n    PREC: "fp16"\n',
                                       dict(n_ctx=16, init=None, prec="fp16")),
    "cocoop_vit_b16_c4_ep10_batch1_ctxv1": ("CoCoOp", COMMON.format(batch=1, epochs=10)
                                            + 'TRAINER:\n  COCOOP:\n    N_CTX: 4\n    CTX_INIT: "a photo of a"\n'
                                              '    PREC: "fp16"\n', dict(n_ctx=4, init="a photo of a", prec="fp16")),
    "prograd_rn50": ("ProGrad", COMMON.format(batch=32, epochs=200)
                     + 'LOSS:\n  NAME: "prograd"\n  T: 1.0\nTRAINER:\n  COOP:\n    CTX_INIT: True\n',
                     dict(n_ctx=16, init="X X X X X X X X X X X X a photo of a", temperature=1.0)),
}


@pytest.mark.parametrize("name", list(UPSTREAM))
def test_an_upstream_config_builds_the_upstream_model(name, tmp_path, image_folder, clip77_file, monkeypatch):
    trainer_name, text, expected = UPSTREAM[name]
    config = tmp_path / f"{name}.yaml"
    config.write_text(text)
    monkeypatch.setenv("LLU_CACHE", str(tmp_path / "cache"))
    args = train.build_parser().parse_args([
        "--root", os.path.dirname(image_folder), "--trainer", trainer_name,
        "--dataset-config-file", os.path.join(REPO, "configs/datasets/imagefolder.yaml"), "--config-file", str(config),
        "--backbone", clip77_file, "--output-dir", str(tmp_path / "out"), "--seed", "1",
        "DATASET.IMAGEFOLDER.DIR", os.path.basename(image_folder), "DATALOADER.NUM_WORKERS", "0",
        "FEATURES.CACHE_DIR", str(tmp_path / "features")])
    cfg = train.setup_cfg(args)
    trainer = build_trainer(cfg)
    learner = trainer.prompt_learner
    assert learner.n_ctx == expected["n_ctx"]
    if expected["init"] is None:
        assert learner.init_text == " ".join(["X"] * expected["n_ctx"])
    else:
        assert learner.init_text == expected["init"]
        model = trainer.clip_model
        written = [f"{expected['init']} {name.replace('_', ' ')}." for name in trainer.classnames]
        with torch.no_grad():
            embedded = model.token_embedding(model.tokenize(written)).type(model.dtype)
            if expected["init"].startswith("X"):  # ProGrad: the zero vectors stand where the Xs are written
                embedded[:, 1:1 + expected["n_ctx"] - 4] = 0
            assert torch.equal(learner.assemble(learner.ctx), embedded)
    if "prec" in expected:
        assert cfg.TRAINER.PREC == expected["prec"]
    if "temperature" in expected:
        assert cfg.TRAINER.PROGRAD.T == expected["temperature"]


def test_tip_adapters_default_search_split_is_the_official_full_val():
    from llu.engine import extend_cfg, get_cfg_default
    assert extend_cfg(get_cfg_default()).TRAINER.TIP_ADAPTER.SEARCH_SPLIT == "full_val"


def test_upstream_keys_on_the_command_line(tmp_path, image_folder, tiny_clip_file):
    args = train.build_parser().parse_args([
        "--root", os.path.dirname(image_folder), "--trainer", "ProGrad",
        "--dataset-config-file", os.path.join(REPO, "configs/datasets/imagefolder.yaml"),
        "--backbone", tiny_clip_file, "LOSS.LAMBDA", "0.8", "TRAINER.COOP.PREC", "fp32",
        "TRAINER.COOP.CTX_INIT", "True"])
    cfg = train.setup_cfg(args)
    assert (cfg.TRAINER.PROGRAD.LAMBDA, cfg.TRAINER.PREC, cfg.TRAINER.COOP.CTX_INIT) == (0.8, "fp32", "template")


# ---------------------------------------------------------------------------------------------
# CoOp's few-shot pickles

class Datum:  # what CoOp pickles: dassl.data.datasets.base_dataset.Datum (written here under its name)
    def __init__(self, impath, label, classname):
        self._impath, self._label, self._domain, self._classname = impath, label, 0, classname


Datum.__module__ = "dassl.data.datasets.base_dataset"


def coop_pickle(path, entries):
    """Pickle as CoOp does; pickle finds the class by its module, so that module exists while it writes."""
    names = ["dassl", "dassl.data", "dassl.data.datasets", "dassl.data.datasets.base_dataset"]
    saved = {name: sys.modules.get(name) for name in names}
    for name in names:
        sys.modules[name] = types.ModuleType(name)
    sys.modules[names[-1]].Datum = Datum
    try:
        with open(path, "wb") as f:
            pickle.dump({"train": [Datum(*e) for e in entries], "val": [Datum(*e) for e in entries[:4]]}, f,
                        protocol=pickle.HIGHEST_PROTOCOL)
    finally:
        for name, module in saved.items():
            if module is None:
                del sys.modules[name]
            else:
                sys.modules[name] = module


@pytest.fixture
def fewshot_run(tmp_path, image_folder, tiny_clip_file, monkeypatch, capsys):
    monkeypatch.setenv("LLU_CACHE", str(tmp_path / "cache"))

    def _run():
        args = train.build_parser().parse_args([
            "--root", os.path.dirname(image_folder), "--trainer", "ZeroshotCLIP",
            "--dataset-config-file", os.path.join(REPO, "configs/datasets/imagefolder.yaml"), "--backbone",
            tiny_clip_file, "--output-dir", str(tmp_path / "out"), "--seed", "1",
            "DATASET.IMAGEFOLDER.DIR", os.path.basename(image_folder), "DATASET.NUM_SHOTS", "2"])
        trainer = build_trainer(train.setup_cfg(args))
        return trainer.dm.dataset, capsys.readouterr().out

    return _run


def test_coops_pickled_few_shot_split_is_read_with_its_paths_mapped(fewshot_run, image_folder):
    folder = os.path.basename(image_folder)
    entries = [(f"/home/someone/data/{folder}/{name}/{i:03d}.png", label, name)
               for label, name in enumerate(sorted(os.listdir(image_folder))) for i in (4, 5)]
    os.makedirs(os.path.join(image_folder, "split_fewshot"), exist_ok=True)
    path = os.path.join(image_folder, "split_fewshot", "shot_2-seed_1.pkl")
    coop_pickle(path, entries)
    dataset, out = fewshot_run()
    assert f"Reading CoOp's few-shot split from {path}" in out
    assert [item.impath for item in dataset.train_x] == [
        os.path.join(image_folder, name, f"{i:03d}.png") for _, label, name in entries[::2] for i in (4, 5)]


def test_a_pickle_holding_anything_else_is_refused_without_running_it(fewshot_run, image_folder, tmp_path):
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    os.makedirs(os.path.join(image_folder, "split_fewshot"), exist_ok=True)
    with open(os.path.join(image_folder, "split_fewshot", "shot_2-seed_1.pkl"), "wb") as f:
        pickle.dump({"train": [Evil()]}, f)
    with pytest.raises(UserError, match="refers to posix.system, which a few-shot split may not hold"):
        fewshot_run()
    assert not marker.exists()


def test_a_pickled_path_outside_the_dataset_folder_is_refused(fewshot_run, image_folder):
    os.makedirs(os.path.join(image_folder, "split_fewshot"), exist_ok=True)
    coop_pickle(os.path.join(image_folder, "split_fewshot", "shot_2-seed_1.pkl"), [("/data/other/x.png", 0, "blue")])
    with pytest.raises(UserError, match="is not inside a folder named 'my_images'"):
        fewshot_run()


@pytest.mark.parametrize("search_split, images", [("full_val", 4 * 4), ("fewshot_val", 4 * 1)])
def test_tip_adapter_searches_on_the_full_val_split_by_default_as_official(tmp_path, tiny_clip_file, monkeypatch,
                                                                           capsys, search_split, images):
    from conftest import write_image_folder
    folder = tmp_path / "data" / "many"
    write_image_folder(str(folder), per_class=20)  # per class 10 train, 4 val, 6 test
    monkeypatch.setenv("LLU_CACHE", str(tmp_path / "cache"))
    args = train.build_parser().parse_args([
        "--root", str(tmp_path / "data"), "--trainer", "TipAdapter",
        "--dataset-config-file", os.path.join(REPO, "configs/datasets/imagefolder.yaml"), "--backbone", tiny_clip_file,
        "--output-dir", str(tmp_path / "out"), "--seed", "1", "DATASET.IMAGEFOLDER.DIR", "many",
        "DATASET.NUM_SHOTS", "1", "TEST.NO_TEST", "True", "TRAINER.TIP_ADAPTER.SEARCH_SPLIT", search_split])
    build_trainer(train.setup_cfg(args)).train()
    assert f"Searched on {search_split} ({images} images)" in capsys.readouterr().out
