"""CLIP-Adapter, Tip-Adapter and Tip-Adapter-F: what training touches, the equations, checkpoints
across class sets, the alpha/beta search on val only, and (with the built-in world) that they beat
zero-shot CLIP on the classes they were trained on."""
import json
import os

import pytest
import torch
import torch.nn.functional as F

from llu import train
from conftest import build_test_trainer
from numerics import assert_close
from llu.engine import build_trainer, load_checkpoint
from llu.utils import UserError
from llu.trainers.clip_adapter import Adapter, adapted_features
from llu.datasets import ENSEMBLE_TEMPLATES
from llu.trainers.clip_common import encode_class_texts
from llu.trainers.tip_adapter import CacheModel, search_alpha_beta, search_grid, text_templates

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
@pytest.fixture(scope="module")
def features_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("features"))  # keyed by content, so tests may share it


@pytest.fixture
def build(colours_root_with_val, tiny_clip_file, features_dir, tmp_path):
    """Build a trainer from its real config file through train.py's command-line path."""

    def _build(trainer, *opts, out="out", dataset="TestColoursWithVal"):
        config = os.path.join(REPO, "configs", "trainers", trainer, "vit_b16.yaml")
        return build_test_trainer(trainer, colours_root_with_val, tiny_clip_file, tmp_path / out,
                                  "FEATURES.CACHE_DIR", features_dir, "FEATURES.AUG_VIEWS", "2",
                                  "DATALOADER.NUM_WORKERS", "0", *opts, dataset=dataset, transforms=None,
                                  config_file=config if os.path.isfile(config) else None)

    return _build


def _clip_state(trainer):
    return {k: v.clone() for k, v in trainer.clip_model.state_dict().items()}


def _one_step(trainer):
    trainer.set_model_mode("train")
    trainer.batch_idx, trainer.num_batches = 0, 2
    trainer.forward_backward(next(iter(trainer.feature_batches())))


# ---------------------------------------------------------------------------------------------
# CLIP-Adapter

def test_adapter_on_unit_features_gives_the_official_logits_on_raw_features():
    torch.manual_seed(0)
    adapter = Adapter(32, reduction=4)
    assert [tuple(p.shape) for p in adapter.parameters()] == [(8, 32), (32, 8)]  # no biases
    raw = torch.randn(5, 32) * torch.rand(5, 1) * 10
    official = F.normalize(0.2 * adapter(raw) + 0.8 * raw, dim=-1)
    assert_close(adapted_features(adapter, F.normalize(raw, dim=-1), 0.2), official)


@pytest.mark.parametrize("name, model_name", [("CLIP_Adapter", "clip_adapter"), ("TipAdapterF", "cache")])
def test_a_training_step_moves_only_the_adapter(build, name, model_name):
    trainer = build(name)
    model = trainer._models[model_name]
    clip_before = _clip_state(trainer)
    state_before = {k: v.clone() for k, v in model.state_dict().items()}
    learned = {k for k, p in model.named_parameters() if p.requires_grad}
    _one_step(trainer)
    state_after = model.state_dict()
    assert learned == ({"fc.0.weight", "fc.2.weight"} if name == "CLIP_Adapter" else {"keys"})
    for key in state_before:
        assert torch.equal(state_before[key], state_after[key]) == (key not in learned), key
    clip_after = trainer.clip_model.state_dict()
    assert all(torch.equal(clip_before[k], clip_after[k]) for k in clip_before)


def test_clip_adapter_width_follows_the_backbone(build):
    trainer = build("CLIP_Adapter", "TRAINER.CLIP_ADAPTER.REDUCTION", "2")
    assert trainer.adapter.fc[0].weight.shape == (16, 32)  # the tiny CLIP's embedding is 32-d


def test_clip_adapter_checkpoint_round_trip_and_load_on_new_classes(build, tmp_path):
    trained = build("CLIP_Adapter", "OPTIM.MAX_EPOCH", "2", "OPTIM.LR", "0.5", "TEST.NO_TEST", "True",
                    "DATASET.SUBSAMPLE_CLASSES", "base")
    trained.train()
    features = trained.split_features("test")[0]
    out = str(tmp_path / "out")
    checkpoint = load_checkpoint(os.path.join(out, "clip_adapter", "model.pth.tar-2"))
    assert set(checkpoint["state_dict"]) == {"fc.0.weight", "fc.2.weight"}

    same = build("CLIP_Adapter", "DATASET.SUBSAMPLE_CLASSES", "base", out="eval_base")
    same.load_model(out)
    assert torch.equal(same.model_inference(features), trained.model_inference(features))

    new = build("CLIP_Adapter", "DATASET.SUBSAMPLE_CLASSES", "new", out="eval_new")
    new.load_model(out)
    assert new.classnames == ["red", "yellow"] and trained.classnames == ["blue", "green"]
    for key, value in trained.adapter.state_dict().items():
        assert torch.equal(new.adapter.state_dict()[key], value)
    new_texts = encode_class_texts(new.clip_model, ["red", "yellow"], "a photo of a {}.")
    expected = new.logit_scale * adapted_features(trained.adapter, features, 0.2) @ new_texts.t()
    assert_close(new.model_inference(features), expected)


# ---------------------------------------------------------------------------------------------
# Tip-Adapter

def test_cache_logits_follow_the_equation():
    torch.manual_seed(0)
    keys, labels = F.normalize(torch.randn(6, 8), dim=-1), torch.tensor([0, 0, 1, 1, 2, 2])
    cache = CacheModel(keys, labels, 3, alpha=0.7, beta=5.0)
    f, clip_logits = F.normalize(torch.randn(4, 8), dim=-1), torch.randn(4, 3)
    expected = clip_logits + 0.7 * torch.exp(-5.0 * (1 - f @ keys.t())) @ F.one_hot(labels, 3).float()
    assert_close(cache(f, clip_logits), expected)


def test_keys_are_the_renormalised_mean_of_the_augmented_views(build):
    trainer = build("TipAdapter")
    views = trainer.train_views()
    assert views.shape[0] == 3
    assert_close(trainer.cache.keys, F.normalize(views[1:].mean(0), dim=-1))
    assert torch.equal(trainer.cache.labels, trainer.split_features("train")[1])


def test_with_alpha_zero_tip_adapter_is_zero_shot_clip(build):
    tip = build("TipAdapter")
    zero_shot = build("ZeroshotCLIP", out="zs")
    features = tip.split_features("test")[0]
    assert not torch.allclose(tip.model_inference(features), zero_shot.model_inference(features), atol=1e-3)
    tip.cache.alpha.fill_(0.0)
    assert_close(tip.model_inference(features), zero_shot.model_inference(features))


def _official_search(cache, features, labels, clip_logits, scale, steps):
    """The official loops, written out: strict '>' over beta (outer) and alpha (inner)."""
    best, best_beta, best_alpha = -1, None, None
    for i in range(steps[0]):
        beta = i * (scale[0] - 0.1) / steps[0] + 0.1
        for j in range(steps[1]):
            alpha = j * (scale[1] - 0.1) / steps[1] + 0.1
            correct = (cache(features, clip_logits, alpha, beta).argmax(1) == labels).sum().item()
            if correct > best:
                best, best_beta, best_alpha = correct, beta, alpha
    return best_beta, best_alpha, 100.0 * best / len(labels)


def test_text_templates_are_the_imagenet_ensemble_on_imagenet_only():
    assert text_templates("auto", "ImageNet") == ENSEMBLE_TEMPLATES
    assert text_templates("auto", "ImageNetSketch") == ENSEMBLE_TEMPLATES
    assert text_templates("auto", "OxfordPets") == ["a photo of a {}, a type of pet."]
    assert text_templates("dataset", "ImageNet") == ["a photo of a {}."]
    assert text_templates("ensemble", "OxfordPets") == ENSEMBLE_TEMPLATES
    with pytest.raises(UserError, match="TEXT_TEMPLATES must be auto, dataset or ensemble"):
        text_templates("all", "ImageNet")


def test_ensemble_text_features_are_the_renormalised_template_mean(build):
    tip = build("TipAdapter", "TRAINER.TIP_ADAPTER.TEXT_TEMPLATES", "ensemble", "TRAINER.TIP_ADAPTER.SEARCH", "False")
    per_template = [encode_class_texts(tip.clip_model, tip.classnames, t) for t in ENSEMBLE_TEMPLATES]
    assert_close(tip.text_features, F.normalize(torch.stack(per_template).mean(0), dim=-1))


def test_search_picks_the_brute_force_best_of_the_official_grid():
    torch.manual_seed(2)  # a grid whose best accuracy is interior and reached twice (the tie-break matters)
    num_classes, dim = 10, 16
    labels = torch.arange(num_classes).repeat(4)
    centres = F.normalize(torch.randn(num_classes, dim), dim=-1)
    keys = F.normalize(centres[labels] + 0.6 * torch.randn(len(labels), dim), dim=-1)
    cache = CacheModel(keys, labels, num_classes, 1.0, 1.0)
    val_labels = torch.arange(num_classes).repeat(20)
    features = F.normalize(centres[val_labels] + 0.8 * torch.randn(len(val_labels), dim), dim=-1)
    clip_logits = 10 * features @ F.normalize(centres + 0.9 * torch.randn(num_classes, dim), dim=-1).t()
    scale, steps = (7.0, 3.0), (30, 10)
    found = search_alpha_beta(cache, features, val_labels, clip_logits, search_grid(scale[0], steps[0]),
                              search_grid(scale[1], steps[1]))
    expected = _official_search(cache, features, val_labels, clip_logits, scale, steps)
    assert found == pytest.approx(expected)
    first = 100.0 * (cache(features, clip_logits, 0.1, 0.1).argmax(1) == val_labels).float().mean().item()
    assert found[2] > first  # the grid is not flat: the search has something to find


@pytest.mark.parametrize("search_split, split", [("full_val", "full_val"), ("fewshot_val", "val")])
def test_search_reads_val_never_test_and_picks_the_best_on_val(build, monkeypatch, search_split, split):
    trainer = build("TipAdapter", "TEST.NO_TEST", "True", "TRAINER.TIP_ADAPTER.SEARCH_STEP", "(12, 6)",
                    "TRAINER.TIP_ADAPTER.SEARCH_SPLIT", search_split)
    read = []
    split_features, cache_get = trainer.split_features, trainer.feature_cache.get

    def split_features_spy(split):
        read.append(split)
        if split == "test":
            raise AssertionError("the search read the test split")
        return split_features(split)

    def cache_get_spy(data_source, *args, **kwargs):
        if data_source is trainer.dm.dataset.test:
            raise AssertionError("the search encoded the test split")
        return cache_get(data_source, *args, **kwargs)

    monkeypatch.setattr(trainer, "split_features", split_features_spy)
    monkeypatch.setattr(trainer.feature_cache, "get", cache_get_spy)
    trainer.train()
    assert split in read and "test" not in read
    features, labels = split_features(split)
    assert len(labels) == len(trainer.split_data(split))
    expected_beta, expected_alpha, _ = _official_search(trainer.cache, features, labels,
                                                        trainer.clip_logits(features), (7.0, 3.0), (12, 6))
    assert (trainer.cache.beta.item(), trainer.cache.alpha.item()) == pytest.approx((expected_beta, expected_alpha))


def test_val_split_that_is_the_test_split_is_refused(build):
    trainer = build("TipAdapter", "TEST.NO_TEST", "True", dataset="TestColours")
    with pytest.raises(UserError, match="shares images with its test split.*SEARCH False"):
        trainer.train()
    build("TipAdapter", "TEST.NO_TEST", "True", "TRAINER.TIP_ADAPTER.SEARCH", "False",
          dataset="TestColours").train()


@pytest.mark.parametrize("name", ["TipAdapter", "TipAdapterF"])
def test_tip_checkpoint_round_trip_with_label_indices(build, tmp_path, name):
    trained = build(name, "OPTIM.MAX_EPOCH", "2", "TRAINER.TIP_ADAPTER.SEARCH_STEP", "(12, 6)",
                    "DATASET.SUBSAMPLE_CLASSES", "base")
    trained.train()
    out = str(tmp_path / "out")
    latest = open(os.path.join(out, "cache", "checkpoint")).read().strip()
    state = load_checkpoint(os.path.join(out, "cache", latest))["state_dict"]  # weights_only
    assert set(state) == {"keys", "labels", "alpha", "beta", "classnames"}
    assert state["labels"].dtype == torch.int64 and state["labels"].shape == (8,)
    assert state["alpha"].item() == trained.cache.alpha.item() and state["beta"].item() == trained.cache.beta.item()
    if name == "TipAdapterF":
        assert not torch.equal(state["keys"], F.normalize(trained.train_views()[1:].mean(0), dim=-1))
    results = json.loads(open(os.path.join(out, "results.json")).read())
    assert results["tip_alpha"] == pytest.approx(state["alpha"].item())

    loaded = build(name, "DATASET.SUBSAMPLE_CLASSES", "base", out="eval")
    loaded.load_model(out)
    features = trained.split_features("test")[0]
    assert torch.equal(loaded.model_inference(features), trained.model_inference(features))

    other_classes = build(name, "DATASET.SUBSAMPLE_CLASSES", "new", out="eval_new")
    with pytest.raises(UserError, match=r"built from \(blue, green\), not this run's 2 classes \(red, yellow\)"):
        other_classes.load_model(out)


def test_tip_adapter_f_refuses_best_val_selection(build):
    with pytest.raises(UserError, match="TEST.FINAL_MODEL last_step"):
        build("TipAdapterF", "TEST.FINAL_MODEL", "best_val")


def test_tip_adapter_f_uses_the_official_adamw_epsilon(build):
    trainer = build("TipAdapterF")
    optimizer = trainer._optims["cache"]
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.param_groups[0]["eps"] == 1e-4 and optimizer.param_groups[0]["lr"] == 0.001


# ---------------------------------------------------------------------------------------------
# The built-in world

def _toy_base_accuracy(root, trainer_name, out, features_dir):
    args = train.build_parser().parse_args([
        "--root", root, "--trainer", trainer_name,
        "--dataset-config-file", os.path.join(REPO, "configs/datasets/shapes.yaml"),
        "--config-file", os.path.join(REPO, "configs/trainers", trainer_name, "toy.yaml"),
        "--output-dir", str(out), "--seed", "1", "DATASET.NUM_SHOTS", "16", "DATASET.SUBSAMPLE_CLASSES", "base",
        "FEATURES.CACHE_DIR", features_dir])
    build_trainer(train.setup_cfg(args)).train()
    with open(os.path.join(out, "results.json")) as f:
        return json.load(f)["accuracy"]


@pytest.fixture(scope="module")
def toy_zero_shot(request, tmp_path_factory, features_dir):
    root = request.getfixturevalue("shapes_world")
    return root, _toy_base_accuracy(root, "ZeroshotCLIP", tmp_path_factory.mktemp("zs"), features_dir)


@pytest.mark.parametrize("name", ["CLIP_Adapter", "TipAdapter", "TipAdapterF"])
@pytest.mark.slow
def test_toy_training_beats_zero_shot_on_base_classes(name, toy_zero_shot, tmp_path, features_dir):
    root, zero_shot = toy_zero_shot
    assert _toy_base_accuracy(root, name, tmp_path / name, features_dir) > zero_shot


def test_zero_shot_ensemble_uses_the_seven_templates_alone_on_imagenet_as_upstream():
    from types import SimpleNamespace

    from llu.trainers.zsclip import ZeroshotCLIP2

    def templates(dataset):
        return ZeroshotCLIP2.templates(SimpleNamespace(cfg=SimpleNamespace(DATASET=SimpleNamespace(NAME=dataset))))

    assert templates("ImageNet") == ENSEMBLE_TEMPLATES
    assert templates("OxfordPets") == ["a photo of a {}, a type of pet."] + ENSEMBLE_TEMPLATES
