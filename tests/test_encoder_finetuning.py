"""CLIP-LoRA and WiSE-FT: trainers that change CLIP's encoders. LoRA's update and its identity at
initialisation, WiSE-FT's weight-space ensemble at and between its ends, the feature cache under
changed weights, checkpoints, base-to-new, and refusals."""
import json
import math
import os

import pytest
import torch
import torch.nn as nn
from numerics import assert_close

import clip.model
from conftest import TINY_CLIP_DIMS, build_test_trainer
from llu import train
from llu.engine import load_checkpoint
from llu.utils import UserError
from llu.trainers.clip_lora import LoRAAttention
from llu.trainers.encoder_finetuning import step_schedule
from llu.trainers.wiseft import WiSEFT, image_tower_paths

AUGMENTED = ("random_resized_crop", "random_flip", "normalize")


@pytest.fixture
def build(colours_root, tiny_clip_file, tmp_path):
    def _build(trainer, *opts, out="out", backbone=None):
        return build_test_trainer(trainer, colours_root, backbone or tiny_clip_file, tmp_path / out,
                                  "FEATURES.CACHE_DIR", str(tmp_path / "features"), "OPTIM.NAME", "adamw",
                                  "OPTIM.LR", "1e-2", "OPTIM.MAX_EPOCH", "1", *opts, transforms=AUGMENTED)

    return _build


def _images(trainer, split="test"):
    batch = next(iter(trainer.test_loader))
    return batch["img"].to(trainer.device)


def _perturb(module, seed=1, scale=0.05):
    """Move every trainable parameter of ``module`` (as training would)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            if param.requires_grad:
                param.add_(scale * torch.randn(param.shape, generator=generator).to(param))


def _test_features(trainer, split="test"):
    trainer.set_model_mode("eval")
    if isinstance(trainer, WiSEFT):
        trainer.evaluation_model = trainer.ensemble(trainer.alpha)
    return torch.cat([features for features, _ in trainer.evaluation_batches(split)])


# ---------------------------------------------------------------------------------------------
# CLIP-LoRA

def test_lora_at_initialisation_leaves_clip_exactly_unchanged(build):
    trainer = build("CLIP_LoRA")
    trainer.set_model_mode("eval")
    images = _images(trainer)
    frozen, tuned = trainer.clip_model, trainer.tuned
    assert len(trainer.adapters.image) == TINY_CLIP_DIMS["vision_layers"]
    assert len(trainer.adapters.text) == TINY_CLIP_DIMS["transformer_layers"]
    with torch.no_grad():
        assert torch.equal(tuned.encode_images(images), frozen.encode_images(images))
        assert torch.equal(trainer.text_features(), trainer.class_text_features())
        zero_shot = trainer.cosine_logits(frozen.encode_images(images), trainer.class_text_features())
        assert torch.equal(trainer.logits(tuned.encode_images(images), trainer.text_features()), zero_shot)


@pytest.mark.parametrize("params", [("q", "k", "v"), ("q", "v", "o")])
def test_lora_update_is_w_plus_scaled_ba_on_each_projection(params):
    torch.manual_seed(0)
    width, heads, rank, alpha = 16, 2, 3, 2.0
    attention = nn.MultiheadAttention(width, heads)
    lora = LoRAAttention(attention, params, rank, alpha, dropout=0.0)
    with torch.no_grad():
        for b in lora.lora_B.values():
            b.normal_()
    # The reference: an nn.MultiheadAttention whose weights are W + (alpha / sqrt(r)) B A (upstream's scale).
    scale = alpha / math.sqrt(rank)
    reference = nn.MultiheadAttention(width, heads)
    reference.load_state_dict(attention.state_dict())
    with torch.no_grad():
        for index, p in enumerate("qkv"):
            if p in params:
                reference.in_proj_weight[index * width:(index + 1) * width] += scale * lora.lora_B[p] @ lora.lora_A[p]
        if "o" in params:
            reference.out_proj.weight += scale * lora.lora_B["o"] @ lora.lora_A["o"]
    x = torch.randn(5, 3, width)  # [sequence, batch, width]
    mask = torch.full((5, 5), float("-inf")).triu(1)  # CLIP's causal text mask
    expected = reference(x, x, x, need_weights=False, attn_mask=mask)[0]
    with torch.no_grad():
        lora.eval()
        assert_close(lora(x, x, x, need_weights=False, attn_mask=mask)[0], expected)
        # Training with dropout computes attention itself; with a negligible rate it is the same map.
        lora.train()
        lora.dropout.p = 1e-12
        assert_close(lora(x, x, x, need_weights=False, attn_mask=mask)[0], expected)
    assert not torch.equal(attention.in_proj_weight, reference.in_proj_weight)  # W itself is not changed


def test_a_lora_step_moves_the_adapters_only_and_leaves_the_shared_backbone_alone(build):
    trainer = build("CLIP_LoRA")
    frozen_state = {k: v.clone() for k, v in trainer.clip_model.state_dict().items()}
    before = {k: v.clone() for k, v in trainer.adapters.state_dict().items()}
    trainer.set_model_mode("train")
    trainer.batch_idx, trainer.num_batches = 0, 1
    trainer.forward_backward(next(iter(trainer.image_loader)))
    after = trainer.adapters.state_dict()
    assert all(not torch.equal(after[k], before[k]) for k in before if ".lora_B." in k)
    assert all(torch.equal(v, frozen_state[k]) for k, v in trainer.clip_model.state_dict().items())
    assert all(isinstance(block.attn, nn.MultiheadAttention)
               for block in trainer.clip_model.model.visual.transformer.resblocks)  # not wrapped in place
    assert set(trainer.adapters.state_dict()) == {f"{tower}.0.lora_{m}.{p}" for tower in ("image", "text")
                                                  for m in "AB" for p in "qkv"}


@pytest.mark.filterwarnings("ignore:Detected call of")  # schedulers stepped without an optimiser
def test_step_schedule_is_upstreams_cosine():
    param = nn.Parameter(torch.zeros(1))
    ours = step_schedule(torch.optim.SGD([param], lr=2e-4), total_steps=20, min_lr=1e-6)
    reference = torch.optim.lr_scheduler.CosineAnnealingLR(torch.optim.SGD([param], lr=2e-4), 20, eta_min=1e-6)
    for _ in range(20):
        assert ours.get_last_lr()[0] == pytest.approx(reference.get_last_lr()[0], rel=1e-9, abs=1e-15)
        ours.step()
        reference.step()
    # Warm-up then cosine without a floor (WiSE-FT's cosine_lr): base * (t + 1) / w, then the cosine.
    warm = step_schedule(torch.optim.SGD([param], lr=1.0), total_steps=10, warmup_steps=4)
    rates = []
    for _ in range(10):
        rates.append(warm.get_last_lr()[0])
        warm.step()
    expected = [(t + 1) / 4 if t < 4 else 0.5 * (1 + math.cos(math.pi * (t - 4) / 6)) for t in range(10)]
    assert rates == pytest.approx(expected, rel=1e-12)


def test_lora_refuses_a_backbone_without_attention_blocks_in_one_line(build, tmp_path):
    dims = dict(TINY_CLIP_DIMS, vision_layers=(1, 1, 1, 1), vision_width=8)  # a ResNet image encoder
    path = tmp_path / "tiny-rn.pt"
    torch.save(clip.model.CLIP(**dims).state_dict(), path)
    with pytest.raises(UserError, match=r"^CLIP_LoRA cannot run on MODEL.BACKBONE.NAME .*tiny-rn.pt: its image "
                                         r"encoder has no transformer blocks") as error:
        build("CLIP_LoRA", backbone=str(path))
    assert "\n" not in str(error.value)


def test_wiseft_refuses_a_backbone_without_an_image_encoder():
    class StoredEmbeddings:
        kind, backbone_name = "embeddings", "embeddings"

    assert image_tower_paths(StoredEmbeddings()) is None
    with pytest.raises(UserError, match="^WiSEFT cannot run on MODEL.BACKBONE.NAME embeddings: it has no image"):
        WiSEFT.check_backbone(StoredEmbeddings(), "it has no image encoder to fine-tune")


# ---------------------------------------------------------------------------------------------
# WiSE-FT

def test_wiseft_ends_are_the_zero_shot_and_the_fine_tuned_models_exactly(build):
    trainer = build("WiSEFT")
    _perturb(trainer.finetuned)  # theta_1 != theta_0
    images = _images(trainer)
    with torch.no_grad():
        frozen = trainer.clip_model.encode_images(images)
        zero_shot = frozen @ (trainer.logit_scale * trainer.class_text_features()).t()  # the head, built here
        backbone, head = trainer.ensemble(0.0)
        assert torch.equal(backbone.encode_images(images), frozen)
        assert torch.equal(head(backbone.encode_images(images)), zero_shot)
        trainer.set_model_mode("eval")
        fine_tuned = trainer.finetuned.head(trainer.tuned.encode_images(images))
        backbone, head = trainer.ensemble(1.0)
        assert torch.equal(head(backbone.encode_images(images)), fine_tuned)
        assert not torch.allclose(fine_tuned, zero_shot)


def test_wiseft_interpolation_is_linear_in_alpha(build):
    trainer = build("WiSEFT")
    _perturb(trainer.finetuned)
    theta_0, theta_1 = trainer.theta(0.0), trainer.theta(1.0)
    assert set(theta_0) == set(trainer.finetuned.state_dict())
    for alpha in (0.25, 0.5, 0.8):
        theta = trainer.theta(alpha)
        for key in theta_0:
            assert_close(theta[key], theta_0[key] + alpha * (theta_1[key] - theta_0[key]))
    middle = trainer.theta(0.5)
    for key in theta_0:
        assert_close(middle[key], (theta_0[key] + theta_1[key]) / 2)


# ---------------------------------------------------------------------------------------------
# The feature cache under changed encoders

@pytest.mark.parametrize("name", ["CLIP_LoRA", "WiSEFT"])
def test_the_feature_cache_never_serves_frozen_features_for_a_changed_encoder(build, name):
    trainer = build(name, "TRAINER.WISEFT.ALPHA", "1.0")
    frozen = trainer.feature_cache.get(trainer.split_data("test"), trainer.dm.tfm_test)[0]
    assert torch.equal(_test_features(trainer), frozen)  # unchanged weights: the same features
    learned = trainer.adapters if name == "CLIP_LoRA" else trainer.finetuned
    for seed in (1, 2):  # the frozen namespace is filled; then each change of weights is a new key
        _perturb(learned, seed=seed)
        served = _test_features(trainer)
        with torch.no_grad():
            expected = torch.cat([trainer.tuned.encode_images(batch["img"]) for batch in trainer.test_loader])
        assert not torch.allclose(served, frozen)
        assert_close(served, expected)
    # The frozen encoder's own cache still holds its features.
    assert torch.equal(trainer.feature_cache.get(trainer.split_data("test"), trainer.dm.tfm_test)[0], frozen)


# ---------------------------------------------------------------------------------------------
# Checkpoints and base-to-new

def _logits(trainer, split="test"):
    trainer.set_model_mode("eval")
    with torch.no_grad():
        if isinstance(trainer, WiSEFT):
            trainer.evaluation_model = trainer.ensemble(trainer.alpha)
        else:
            trainer.eval_text_features = trainer.text_features()
        return torch.cat([trainer.model_inference(features) for features, _ in trainer.evaluation_batches(split)])


@pytest.mark.parametrize("name", ["CLIP_LoRA", "WiSEFT"])
def test_checkpoint_round_trip_holds_learned_tensors_only(build, name):
    trained = build(name, "DATASET.SUBSAMPLE_CLASSES", "base", "TEST.NO_TEST", "True", out="run")
    trained.train()
    model_name = trained.get_model_names()[0]
    state = load_checkpoint(os.path.join(trained.output_dir, model_name, "model.pth.tar-1"))["state_dict"]
    if name == "CLIP_LoRA":
        assert set(state) == set(trained.adapters.state_dict())
    else:
        assert set(state) == set(trained.finetuned.state_dict()) | {"classnames", "backbone_sha256"}
        assert all(key.startswith(("image_encoder.model_visual.", "head.")) for key in trained.finetuned.state_dict())
    expected = _logits(trained)
    reloaded = build(name, "DATASET.SUBSAMPLE_CLASSES", "base", out="reloaded")
    assert not torch.allclose(_logits(reloaded), expected)
    reloaded.load_model(trained.output_dir, epoch=1)
    assert torch.equal(_logits(reloaded), expected)

    # alpha 0.3: (1 - alpha) h + alpha h is not h in float32 (at 0.5 it is), so the head must be the zero-shot one.
    new = build(name, "DATASET.SUBSAMPLE_CLASSES", "new", "TRAINER.WISEFT.ALPHA", "0.3", out="new")
    new.load_model(trained.output_dir, epoch=1)
    assert new.classnames == ["red", "yellow"]
    if name == "CLIP_LoRA":
        assert all(torch.equal(v, trained.adapters.state_dict()[k]) for k, v in new.adapters.state_dict().items())
    else:
        # The interpolated encoder, and the zero-shot head of the new class names.
        theta = new.theta(new.alpha)
        assert torch.equal(theta["head.weight"], new.logit_scale * new.class_text_features())
        trained_theta = trained.theta(0.3)
        assert all(torch.equal(theta[k], trained_theta[k]) for k in theta if k.startswith("image_encoder."))
    new.test()
    with open(os.path.join(new.output_dir, "results.json")) as f:
        assert json.load(f)["subsample_classes"] == "new"


def test_wiseft_refuses_a_checkpoint_of_other_backbone_weights(build, tmp_path):
    trained = build("WiSEFT", "TEST.NO_TEST", "True", out="run")
    trained.train()
    other = tmp_path / "other-clip.pt"
    from conftest import make_tiny_clip_state_dict
    torch.save(make_tiny_clip_state_dict(seed=1), other)
    with pytest.raises(UserError, match="fine-tuned from other weights"):
        build("WiSEFT", out="other", backbone=str(other)).load_model(trained.output_dir, epoch=1)


# ---------------------------------------------------------------------------------------------
# End to end

@pytest.mark.slow
@pytest.mark.parametrize("name", ["CLIP_LoRA", "WiSEFT"])
def test_command_line_base_to_new(image_folder, tiny_clip_file, tmp_path, monkeypatch, name):
    monkeypatch.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    monkeypatch.setenv("LLU_CACHE", str(tmp_path / "cache"))

    def run(out, *extra):
        train.cli(["--root", os.path.dirname(image_folder), "--trainer", name, "--backbone", tiny_clip_file,
                   "--dataset-config-file", "configs/datasets/imagefolder.yaml", "--config-file",
                   f"configs/trainers/{'CLIP_LoRA' if name == 'CLIP_LoRA' else 'WiSEFT'}/toy.yaml",
                   "--output-dir", str(tmp_path / out), "--seed", "1", *extra, "INPUT.SIZE", "(32, 32)",
                   "OPTIM.MAX_EPOCH", "2", "DATASET.NUM_SHOTS", "2", "TRAINER.CLIP_LORA.ITERS_PER_SHOT", "2",
                   "DATALOADER.TRAIN_X.BATCH_SIZE", "4", "TRAINER.WISEFT.ALPHA_CURVE", "[0.0, 0.5, 1.0]"])
        with open(tmp_path / out / "results.json") as f:
            return json.load(f)

    base = run("base", "DATASET.SUBSAMPLE_CLASSES", "base")
    new = run("new", "--eval-only", "--model-dir", str(tmp_path / "base"), "DATASET.SUBSAMPLE_CLASSES", "new")
    assert base["trainer"] == new["trainer"] == name and new["subsample_classes"] == "new"
    if name == "WiSEFT":
        assert set(new["wiseft_alpha_curve"]) == {"0", "0.5", "1"}
        assert new["wiseft_alpha_curve"]["0.5"] == new["accuracy"]
