"""The LLU trainer through the real command-line path: base-to-new, checkpoints, ablations, caching."""
import glob
import json
import os

import pytest
import torch
from numerics import assert_close

from llu import train
from llu.engine import build_trainer, set_random_seed
from llu.utils import load_torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ABLATIONS = ["no_cluster", "no_damp", "no_mask", "dirac_mask", "no_reg", "rand_init", "linear"]


@pytest.fixture
def world(tmp_path, tiny_clip_file, monkeypatch):
    from conftest import write_image_folder
    root = tmp_path / "data"
    write_image_folder(str(root / "my_images"), per_class=12)
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("LLU_CACHE", str(tmp_path / "cache"))
    return {"root": str(root), "clip": tiny_clip_file, "tmp": tmp_path}


def llu_trainer(world, out, cfg_name="toy", *opts, eval_only=False):
    argv = ["--root", world["root"], "--trainer", "LLU", "--dataset-config-file", "configs/datasets/imagefolder.yaml",
            "--config-file", f"configs/trainers/LLU/{cfg_name}.yaml", "--backbone", world["clip"],
            "--output-dir", str(out), "--seed", "1",
            "DATASET.NUM_SHOTS", "4", "OPTIM.MAX_EPOCH", "3", "FEATURES.AUG_VIEWS", "1", *opts]
    cfg = train.setup_cfg(train.build_parser().parse_args(argv))
    set_random_seed(cfg.SEED)
    return build_trainer(cfg)


def test_base_to_new_through_saved_checkpoint(world):
    base_dir = world["tmp"] / "base"
    trainer = llu_trainer(world, base_dir, "toy", "DATASET.SUBSAMPLE_CLASSES", "base")
    trainer.train()
    checkpoint = load_torch(glob.glob(str(base_dir / "adapter" / "model.pth.tar-3"))[0])
    state = checkpoint["state_dict"]
    assert set(state) == {"adapters.image.weight", "adapters.image.bias", "adapters.text.weight",
                          "adapters.text.bias", "beta", "gamma", "image_anchors", "text_anchors"}
    assert state["text_anchors"].shape[0] == 2 and state["image_anchors"].shape[0] == 8  # 2 base classes x 4 shots

    new = llu_trainer(world, world["tmp"] / "new", "toy", "DATASET.SUBSAMPLE_CLASSES", "new")
    new.load_model(str(base_dir), epoch=3)
    assert torch.equal(new.adapter.text_anchors, trainer.adapter.text_anchors)  # D_text: base texts
    assert torch.equal(new.adapter.adapters["image"].weight, trainer.adapter.adapters["image"].weight)
    new.test()
    results = json.loads((world["tmp"] / "new" / "results.json").read_text())
    assert results["subsample_classes"] == "new" and results["train_subsample_classes"] == "base"
    assert set(results["per_class_accuracy"]) == {"red", "yellow"}  # sorted labels: blue, green | red, yellow


def test_save_load_round_trip_reproduces_logits(world):
    trainer = llu_trainer(world, world["tmp"] / "a")
    trainer.train()
    features = trainer.split_features("test")[0]
    expected = trainer.model_inference(features)
    fresh = llu_trainer(world, world["tmp"] / "b")
    fresh.load_model(str(world["tmp"] / "a"), epoch=3)
    assert torch.equal(fresh.model_inference(features), expected)


def test_untrained_llu_is_zero_shot_clip(world):
    trainer = llu_trainer(world, world["tmp"] / "a")
    features = trainer.split_features("test")[0]
    zero_shot = trainer.logit_scale * features @ trainer.text_features.t()
    trainer.before_train()  # sets the anchors; W = I, b = 0
    assert_close(trainer.model_inference(features), zero_shot)


def test_second_run_reuses_cached_features(world):
    first = llu_trainer(world, world["tmp"] / "a")
    first.train()
    assert first.feature_cache.encoder_passes > 0
    second = llu_trainer(world, world["tmp"] / "b")
    second.train()
    assert second.feature_cache.encoder_passes == 0


def test_same_seed_gives_same_numbers(world):
    results = []
    for name in ("a", "b"):
        trainer = llu_trainer(world, world["tmp"] / name)
        trainer.train()
        results.append((trainer.adapter.state_dict(), json.loads((world["tmp"] / name / "results.json").read_text())))
    (state_a, res_a), (state_b, res_b) = results
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert res_a["accuracy"] == res_b["accuracy"] and res_a["llu_regularizer"] == res_b["llu_regularizer"]


@pytest.mark.parametrize("ablation", ABLATIONS)
def test_every_table4_ablation_runs_from_its_config(world, ablation):
    trainer = llu_trainer(world, world["tmp"] / ablation, f"toy_{ablation}")
    trainer.train()
    results = json.loads((world["tmp"] / ablation / "results.json").read_text())
    llu = trainer.cfg.TRAINER.LLU
    expected = {"no_cluster": llu.N_CLUSTERS <= 0, "no_damp": llu.BETA == 1.0, "no_mask": llu.GAMMA == 0.0,
                "dirac_mask": llu.MASK == "dirac", "no_reg": llu.LAMBDA == 0.0, "rand_init": llu.INIT == "random",
                "linear": (llu.BETA, llu.GAMMA, llu.LAMBDA, llu.INIT) == (1.0, 0.0, 0.0, "random")}
    assert expected[ablation]
    assert 0.0 <= results["accuracy"] <= 100.0 and results["llu_regularizer"] >= 0.0


def test_vit_b16_config_carries_the_papers_defaults():
    argv = ["--trainer", "LLU", "--dataset-config-file", "configs/datasets/imagenet.yaml",
            "--config-file", os.path.join(REPO, "configs/trainers/LLU/vit_b16.yaml")]
    cfg = train.setup_cfg(train.build_parser().parse_args(argv))
    llu = cfg.TRAINER.LLU
    assert (llu.BETA, llu.GAMMA, llu.LAMBDA, llu.N_CLUSTERS, llu.INIT, llu.MASK) == (0.5, 20.0, 1e3, 512, "identity", "exp")
    assert (cfg.OPTIM.NAME, cfg.OPTIM.LR, cfg.OPTIM.LR_SCHEDULER, cfg.OPTIM.WARMUP_EPOCH, cfg.OPTIM.WARMUP_CONS_LR,
            cfg.DATALOADER.TRAIN_X.BATCH_SIZE) == ("sgd", 0.002, "cosine", 1, 1e-5, 32)
    assert cfg.MODEL.BACKBONE.NAME == "ViT-B/16"


def _shapes_trainer(root, out, trainer, cfg_name, *opts):
    argv = ["--root", root, "--trainer", trainer, "--dataset-config-file", "configs/datasets/shapes.yaml",
            "--config-file", f"configs/trainers/{trainer}/{cfg_name}.yaml", "--output-dir", str(out), "--seed", "1",
            "DATASET.NUM_SHOTS", "16", *opts]
    cfg = train.setup_cfg(train.build_parser().parse_args(argv))
    set_random_seed(cfg.SEED)
    return build_trainer(cfg)


@pytest.mark.slow
def test_on_the_built_in_world_llu_lowers_the_loss_and_beats_zero_shot_on_base(shapes_world, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    zero_shot = _shapes_trainer(shapes_world, tmp_path / "zs", "ZeroshotCLIP", "toy", "DATASET.SUBSAMPLE_CLASSES", "base")
    zero_shot_accuracy = zero_shot.test()
    llu = _shapes_trainer(shapes_world, tmp_path / "llu", "LLU", "toy", "DATASET.SUBSAMPLE_CLASSES", "base")
    features, labels = llu.split_features("train")
    llu.before_train()
    with torch.no_grad():
        loss_before = llu.adapter.loss(features, labels, llu.text_features, llu.logit_scale)[0].item()
    llu.train()
    with torch.no_grad():
        loss_after = llu.adapter.loss(features, labels, llu.text_features, llu.logit_scale)[0].item()
    assert loss_after < loss_before
    assert llu.test() > zero_shot_accuracy + 5


def test_one_step_computes_the_logits_once(world, monkeypatch):
    trainer = llu_trainer(world, world["tmp"] / "a")
    trainer.before_train()
    calls = []
    logits = trainer.adapter.logits
    monkeypatch.setattr(trainer.adapter, "logits", lambda *a, **k: calls.append(1) or logits(*a, **k))
    trainer.set_model_mode("train")
    trainer.batch_idx, trainer.num_batches = 0, 2
    summary = trainer.forward_backward(next(trainer.feature_batches()))
    assert calls == [1] and set(summary) == {"loss", "ce", "reg", "acc"}


def test_a_step_computes_the_regulariser_once_and_it_checks_every_parameter(world, monkeypatch):
    from llu.trainers import llu_adapter
    from llu.trainers.clip_common import ClipTrainer, TrainingDiverged
    trainer = llu_trainer(world, world["tmp"] / "a")
    trainer.before_train()
    trainer.set_model_mode("train")
    trainer.batch_idx, trainer.num_batches = 0, 2
    batch = next(trainer.feature_batches())
    trainer.forward_backward(batch)
    before = float(trainer.adapter.regularizer())
    assert before > 0
    calls = []
    distance = llu_adapter.squared_distance_to_identity
    monkeypatch.setattr(llu_adapter, "squared_distance_to_identity", lambda w: calls.append(1) or distance(w))
    generic = []  # ClipTrainer's check: a second pass over every parameter
    with monkeypatch.context() as patch:
        patch.setattr(ClipTrainer, "check_parameters", lambda self, names=None: generic.append(1))
        summary = trainer.forward_backward(batch)
    assert len(calls) == 2 and not generic  # after the update, once per adapter; the log's value is from before it
    assert summary["reg"] == pytest.approx(before, rel=1e-5)
    assert trainer.regularizer_in_update.value().item() == pytest.approx(float(trainer.adapter.regularizer()), rel=1e-5)
    with torch.no_grad():
        trainer.adapter.adapters["text"].bias[3] = float("nan")
    with pytest.raises(TrainingDiverged, match="adapter.adapters.text.bias is no longer finite"):
        trainer.check_parameters()
    with torch.no_grad():
        trainer.adapter.adapters["text"].bias[3] = 0.0
        # finite, but its square overflows float32: so would the loss (cross-entropy + lambda * Eq. 6)
        trainer.adapter.adapters["image"].weight[0, 1] = 1e30
    with pytest.raises(TrainingDiverged, match="overflow float32"):
        trainer.check_parameters()


def test_training_batches_come_from_the_augmented_views_only(world):
    trainer = llu_trainer(world, world["tmp"] / "a", "toy", "FEATURES.AUG_VIEWS", "3")
    views = trainer.train_views()
    assert views.shape[0] == 4
    for batch in trainer.feature_batches():
        for feature in batch["features"]:
            matches = (views == feature).all(dim=-1).nonzero()
            assert len(matches) and (matches[:, 0] > 0).all()  # one of views 1..3, never view 0
