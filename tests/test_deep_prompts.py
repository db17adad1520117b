"""MaPLe and PromptSRC on the shared deep-prompt machinery: the towers against CLIP's own forward with
the tokens swapped in by hooks, zero-shot CLIP at depth 0, each method's training step against its
loss written out here, GPA, checkpoints across class sets, upstream's configs, refusals."""
import json
import math
import os

import pytest
import torch
import torch.nn.functional as F
from numerics import assert_close

from conftest import TINY_CLIP_DIMS, build_test_trainer
from llu import train
from llu.backbones import load_backbone
from llu.engine import build_trainer, load_checkpoint, set_random_seed
from llu.trainers.deep_prompts import encode_image_deep, encode_text_deep
from llu.trainers.maple import MultiModalPromptLearner
from llu.trainers.promptsrc import TEXT_DIVERSITY_TEMPLATES, gpa_weights
from llu.utils import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHALLOW = {"MaPLe": ["TRAINER.MAPLE.PROMPT_DEPTH", "0"],
           "PromptSRC": ["TRAINER.PROMPTSRC.PROMPT_DEPTH_VISION", "0", "TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT", "1"]}
DEEP = {"MaPLe": ["TRAINER.MAPLE.PROMPT_DEPTH", "2"],
        "PromptSRC": ["TRAINER.PROMPTSRC.PROMPT_DEPTH_VISION", "3", "TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT", "2"]}


@pytest.fixture
def build(colours_root, tmp_path):
    """A trainer built through train.py's command-line path on ToyCLIP (3 image, 2 text layers)."""

    def _build(trainer, *opts, out="out", backbone="toy"):
        return build_test_trainer(trainer, colours_root, backbone, tmp_path / out,
                                  "FEATURES.CACHE_DIR", str(tmp_path / "features"), "DATALOADER.TEST.BATCH_SIZE", "8",
                                  "OPTIM.MAX_EPOCH", "1", *opts)

    return _build


def test_deep_towers_are_clips_forward_with_the_tokens_swapped_in_by_hooks():
    # The reference: CLIP's own encode_image / encode_text, the tokens put in place by hooks on its
    # modules (appended before ln_pre, replaced at the input of later blocks), as upstream's layout.
    backbone = load_backbone("toy")
    model = backbone.model
    torch.manual_seed(0)
    images = torch.randn(3, 3, 32, 32)
    vision = [torch.randn(2, 64) for _ in range(3)]
    hooks = [model.visual.ln_pre.register_forward_pre_hook(
        lambda m, args: (torch.cat([args[0], vision[0].expand(args[0].shape[0], -1, -1)], dim=1),))]
    for i in (1, 2):
        hooks.append(model.visual.transformer.resblocks[i].register_forward_pre_hook(
            lambda m, args, p=vision[i]: (torch.cat([args[0][:-2], p.unsqueeze(1).expand(-1, args[0].shape[1], -1)]),)))
    with torch.no_grad():
        expected_images = model.encode_image(images)
    for hook in hooks:
        hook.remove()

    tokens = backbone.tokenize(["a photo of a red.", "a photo of a dark green."])
    text_deep = [torch.randn(2, 64)]
    embeddings = model.token_embedding(tokens).detach()
    embeddings[:, 1:3] = torch.randn(2, 64)
    hook = model.transformer.resblocks[1].register_forward_pre_hook(
        lambda m, args: (torch.cat([args[0][:1], text_deep[0].unsqueeze(1).expand(-1, args[0].shape[1], -1),
                                    args[0][3:]]),))
    with torch.no_grad():
        expected_texts = backbone.encode_prompts(embeddings, tokens)
    hook.remove()
    with torch.no_grad():
        assert_close(encode_image_deep(backbone, images, vision), expected_images)
        assert_close(encode_text_deep(backbone, embeddings, tokens, text_deep), expected_texts)
        assert not torch.allclose(encode_image_deep(backbone, images, vision[:2]), expected_images)


def _test_images(trainer):
    return next(iter(trainer.test_loader))["img"]


@pytest.mark.parametrize("name", ["MaPLe", "PromptSRC"])
def test_without_deep_prompts_the_model_is_zero_shot_clip(build, name):
    zero_shot = build("ZeroshotCLIP", out="zs")
    images = _test_images(zero_shot)
    with torch.no_grad():
        expected = zero_shot.model_inference(zero_shot.clip_model.encode_images(images))
        shallow = build(name, *SHALLOW[name], out="shallow")
        shallow.set_model_mode("eval")
        assert torch.equal(shallow.model_inference(images), expected)
        deep = build(name, *DEEP[name], out="deep")  # the vision prompts change the image features
        assert not torch.allclose(deep.model_inference(images), expected)


def _one_batch(trainer):
    trainer.set_model_mode("train")
    trainer.batch_idx, trainer.num_batches = 0, 2
    return next(iter(trainer.train_loader_x))


def _sgd_step(trainer, batch, loss_of):
    """(the trainer's step, -lr * the gradient of ``loss_of(logits-model)`` computed here)."""
    learned = dict(trainer.prompt_learner.named_parameters())
    start = {k: p.detach().clone() for k, p in learned.items()}
    loss = loss_of(batch["img"], batch["label"])
    grads = dict(zip(learned, torch.autograd.grad(loss, list(learned.values()))))
    lr = trainer.get_current_lr()
    summary = trainer.forward_backward(batch)
    # The parameters, not the steps, are compared: a step of 1e-5 of a parameter of 0.1 carries the
    # parameter's round-off. The step of the text context is large, so a wrong loss shows there.
    for key, param in learned.items():
        assert_close(param.detach(), start[key] - lr * grads[key])
    assert (learned["ctx"].detach() - start["ctx"]).abs().max() > 1e-3 * start["ctx"].abs().max()
    return summary, loss.item()


def test_maple_step_is_cross_entropy_through_coupled_prompts(build):
    trainer = build("MaPLe", *DEEP["MaPLe"], "OPTIM.LR", "0.5", "OPTIM.MOMENTUM", "0.0", "OPTIM.WEIGHT_DECAY", "0.0")
    learner = trainer.prompt_learner
    # P~_k = F_k(P_k), F_2.. starting as one layer (upstream copies it)
    assert_close(learner.vision_prompts()[1], learner.compound_prompt_projections[0](learner.compound_prompts_text[0]))
    assert len(learner.vision_prompts()) == 2 and len(learner.deep_text_prompts()) == 1

    def cross_entropy(images, labels):
        text = F.normalize(encode_text_deep(trainer.clip_model, learner(), learner.tokenized_prompts,
                                            list(learner.compound_prompts_text)), dim=-1)
        vision = [learner.proj(learner.ctx), learner.compound_prompt_projections[0](learner.compound_prompts_text[0])]
        image = F.normalize(encode_image_deep(trainer.clip_model, images, vision), dim=-1)
        return F.cross_entropy(trainer.logit_scale * image @ text.t(), labels)

    summary, loss = _sgd_step(trainer, _one_batch(trainer), cross_entropy)
    assert summary["loss"] == pytest.approx(loss, rel=1e-6)


def test_promptsrc_step_is_its_regularised_loss(build):
    weights = {"TRAINER.PROMPTSRC.TEXT_LOSS_WEIGHT": 3.0, "TRAINER.PROMPTSRC.IMAGE_LOSS_WEIGHT": 7.0}
    trainer = build("PromptSRC", *DEEP["PromptSRC"], "OPTIM.LR", "0.5", "OPTIM.MOMENTUM", "0.0",
                    "OPTIM.WEIGHT_DECAY", "0.0", *[str(x) for kv in weights.items() for x in kv])
    backbone, learner, scale = trainer.clip_model, trainer.prompt_learner, trainer.logit_scale
    # Move the prompts off their start so that every term has a gradient.
    with torch.no_grad():
        for param in learner.parameters():
            param.add_(0.05 * torch.randn_like(param))
    with torch.no_grad():
        names = [n.replace("_", " ") for n in trainer.classnames]
        per_template = [backbone.model.encode_text(backbone.tokenize([t.format(n) for n in names]))
                        for t in TEXT_DIVERSITY_TEMPLATES]
        frozen_text = torch.stack(per_template).mean(0)
        frozen_text = frozen_text / frozen_text.norm(dim=-1, keepdim=True)

    def regularised(images, labels):
        text = encode_text_deep(backbone, learner(), learner.tokenized_prompts, list(learner.deep_text_ctx))
        text = text / text.norm(dim=-1, keepdim=True)
        image = encode_image_deep(backbone, images, [learner.visual_ctx, *learner.deep_visual_ctx])
        image = image / image.norm(dim=-1, keepdim=True)
        logits = scale * image @ text.t()
        with torch.no_grad():
            frozen_image = backbone.model.encode_image(images)
            frozen_image = frozen_image / frozen_image.norm(dim=-1, keepdim=True)
            frozen_probs = (scale * frozen_image @ frozen_text.t()).softmax(dim=1)
        kl = (frozen_probs * (frozen_probs.log() - logits.log_softmax(dim=1))).sum() / logits.numel()
        return (F.cross_entropy(logits, labels) + 3.0 * (text - frozen_text).abs().mean()
                + 7.0 * (image - frozen_image).abs().mean() + kl)

    summary, loss = _sgd_step(trainer, _one_batch(trainer), regularised)
    assert summary["loss"] == pytest.approx(loss, rel=1e-5)
    assert min(summary["scl_text"], summary["scl_image"], summary["scl_logits"]) > 0


def test_gpa_weights_are_the_normalised_gaussian_over_epochs():
    weights = gpa_weights(20, 15, 1)
    unnormalised = [math.exp(-(t - 15) ** 2 / 2) for t in range(1, 21)]
    assert weights == pytest.approx([u / sum(unnormalised) for u in unnormalised], rel=1e-12)
    assert sum(weights) == pytest.approx(1.0) and max(range(20), key=weights.__getitem__) == 14
    assert gpa_weights(1, 15, 1) == [1.0]


def test_gpa_saves_and_evaluates_the_weighted_mean_of_the_epochs_prompts(build):
    trainer = build("PromptSRC", *DEEP["PromptSRC"], "OPTIM.MAX_EPOCH", "3", "TRAINER.PROMPTSRC.GPA_MEAN", "2",
                    "TRAINER.PROMPTSRC.GPA_STD", "0.8", "TEST.NO_TEST", "True")
    after_training = []
    run_epoch = trainer.run_epoch

    def recorded_epoch():
        run_epoch()
        after_training.append({k: p.detach().clone() for k, p in trainer.prompt_learner.named_parameters()})

    trainer.run_epoch = recorded_epoch
    trainer.train()
    weights = gpa_weights(3, 2, 0.8)
    saved = load_checkpoint(os.path.join(trainer.output_dir, "prompt_learner", "model.pth.tar-3"))["state_dict"]
    assert set(saved) == set(after_training[0])
    for key, param in trainer.prompt_learner.named_parameters():
        expected = sum(w * epoch[key] for w, epoch in zip(weights, after_training))
        assert_close(param.detach(), expected)
        assert torch.equal(saved[key], param.detach())
        assert not torch.allclose(param.detach(), after_training[-1][key])


def test_gpa_running_sum_survives_resume(build):
    opts = (*DEEP["PromptSRC"], "OPTIM.MAX_EPOCH", "2", "TRAINER.PROMPTSRC.GPA_MEAN", "1",
            "TRAINER.PROMPTSRC.GPA_STD", "1", "TEST.NO_TEST", "True", "TRAIN.CHECKPOINT_FREQ", "1")
    whole = build("PromptSRC", *opts, out="whole")
    whole.train()
    first = load_checkpoint(os.path.join(whole.output_dir, "prompt_learner", "model.pth.tar-1"))["state_dict"]
    assert any(key.startswith("gpa_sum.") for key in first)
    resumed = build("PromptSRC", *opts, "RESUME", whole.output_dir, out="whole")
    resumed.train()
    for key, param in whole.prompt_learner.named_parameters():
        assert_close(dict(resumed.prompt_learner.named_parameters())[key], param)


@pytest.mark.parametrize("name", ["MaPLe", "PromptSRC"])
def test_checkpoint_round_trip_and_base_to_new(build, name):
    trained = build(name, *DEEP[name], "DATASET.SUBSAMPLE_CLASSES", "base", "TEST.NO_TEST", "True", out="run")
    with torch.no_grad():  # away from the start a fresh build has (ToyCLIP separates the colours already)
        for param in trained.prompt_learner.parameters():
            param.add_(0.1 * torch.randn_like(param))
    trained.train()
    state = load_checkpoint(os.path.join(trained.output_dir, "prompt_learner", "model.pth.tar-1"))["state_dict"]
    assert set(state) == {k for k, _ in trained.prompt_learner.named_parameters()}  # no class embeddings
    images = _test_images(trained)
    trained.set_model_mode("eval")
    with torch.no_grad():
        expected = trained.model_inference(images)
        reloaded = build(name, *DEEP[name], "DATASET.SUBSAMPLE_CLASSES", "base", out="reloaded")
        reloaded.set_model_mode("eval")
        assert not torch.allclose(reloaded.model_inference(images), expected)
        reloaded.load_model(trained.output_dir, epoch=1)
        assert_close(reloaded.model_inference(images), expected)

    new = build(name, *DEEP[name], "DATASET.SUBSAMPLE_CLASSES", "new", out="new")
    new.load_model(trained.output_dir, epoch=1)
    assert new.classnames == ["red", "yellow"] and trained.classnames == ["blue", "green"]
    for key, value in trained.prompt_learner.named_parameters():
        assert torch.equal(dict(new.prompt_learner.named_parameters())[key], value)
    assert torch.equal(new.prompt_learner.tokenized_prompts,
                       new.clip_model.tokenize(["a photo of a red.", "a photo of a yellow."]))
    new.test()
    with open(os.path.join(new.output_dir, "results.json")) as f:
        results = json.load(f)
    assert results["subsample_classes"] == "new" and set(results["per_class_accuracy"]) == {"red", "yellow"}

    other_depth = build(name, *SHALLOW[name], out="other")
    with pytest.raises(UserError, match="does not fit .* another prompt depth"):
        other_depth.load_model(trained.output_dir, epoch=1)


def test_official_checkpoints_load(build):
    maple = build("MaPLe", *DEEP["MaPLe"])
    ours = maple.checkpoint_state("prompt_learner")
    official = {f"prompt_learner.{k}": v + 1 for k, v in ours.items()}
    official.update({"prompt_learner.token_prefix": torch.zeros(2, 1, 64), "image_encoder.conv1.weight": torch.zeros(1)})
    maple.load_checkpoint_state("prompt_learner", official)
    assert torch.equal(maple.prompt_learner.ctx, ours["ctx"] + 1)

    src = build("PromptSRC", *DEEP["PromptSRC"], out="src")
    ours = src.checkpoint_state("prompt_learner")
    official = {"prompt_learner.ctx": ours["ctx"], "image_encoder.VPT": ours["visual_ctx"] + 1,
                "image_encoder.transformer.resblocks.1.VPT_shallow": ours["deep_visual_ctx.0"] + 2,
                "image_encoder.transformer.resblocks.2.VPT_shallow": ours["deep_visual_ctx.1"] + 3,
                "text_encoder.transformer.resblocks.1.VPT_shallow": ours["deep_text_ctx.0"] + 4,
                "prompt_learner.ZS_image_encoder.conv1.weight": torch.zeros(1)}
    src.load_checkpoint_state("prompt_learner", official)
    learner = src.prompt_learner
    assert torch.equal(learner.deep_visual_ctx[1], ours["deep_visual_ctx.1"] + 3)
    assert torch.equal(learner.deep_text_ctx[0], ours["deep_text_ctx.0"] + 4)


UPSTREAM_CONFIGS = {
    "MaPLe": "TRAINER:\n  MAPLE:\n    N_CTX: 2\n    CTX_INIT: \"a photo of a\"\n    PREC: \"fp16\"\n    PROMPT_DEPTH: 2\n",
    "PromptSRC": ("TRAINER:\n  PROMPTSRC:\n    N_CTX_VISION: 4\n    N_CTX_TEXT: 4\n    CTX_INIT: \"a photo of a\"\n"
                  "    PREC: \"fp16\"\n    PROMPT_DEPTH_VISION: 3\n    PROMPT_DEPTH_TEXT: 2\n    TEXT_LOSS_WEIGHT: 25\n"
                  "    IMAGE_LOSS_WEIGHT: 10\n    GPA_MEAN: 15\n    GPA_STD: 1\n"),
}


@pytest.mark.parametrize("name", ["MaPLe", "PromptSRC"])
def test_upstream_config_keys_load_unchanged(tmp_path, name):
    # The TRAINER part of the official configs (their OPTIM and INPUT are Dassl's keys), with the
    # precision key of each method's node on the command line as their scripts pass it.
    config = tmp_path / "upstream.yaml"
    config.write_text(UPSTREAM_CONFIGS[name])
    node = "MAPLE" if name == "MaPLe" else "PROMPTSRC"
    args = train.build_parser().parse_args([
        "--root", str(tmp_path), "--trainer", name, "--config-file", str(config), "--backbone", "toy",
        "--output-dir", str(tmp_path / "cfg"), "DATASET.NAME", "TestColours",
        f"TRAINER.{node}.PREC", "fp32"])
    cfg = train.setup_cfg(args)
    assert cfg.TRAINER.PREC == "fp32" and "PREC" not in cfg.TRAINER[node]
    depths = (2,) if name == "MaPLe" else (2, 3)
    assert (cfg.TRAINER.MAPLE.PROMPT_DEPTH,) == depths or (
        cfg.TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT, cfg.TRAINER.PROMPTSRC.PROMPT_DEPTH_VISION) == depths


def test_unsupported_backbones_and_depths_are_refused_in_one_line(tmp_path):
    import clip.model
    dims = dict(TINY_CLIP_DIMS, vision_layers=(1, 1, 1, 1))
    torch.save(clip.model.CLIP(**dims).state_dict(), tmp_path / "resnet.pt")
    resnet = load_backbone(str(tmp_path / "resnet.pt"))
    with pytest.raises(UserError, match=r"^MaPLe cannot run on MODEL.BACKBONE.NAME .*resnet.pt: its image tower is "
                                        r"a ResNet"):
        MultiModalPromptLearner(resnet, ["red"], 2, "a photo of a", 1)
    toy = load_backbone("toy")
    toy.kind = "openclip"  # what an OpenCLIP or Hugging Face backbone says
    try:
        with pytest.raises(UserError, match="^MaPLe cannot run on MODEL.BACKBONE.NAME toy: deep prompts are written "
                                            "for OpenAI's CLIP format only"):
            MultiModalPromptLearner(toy, ["red"], 2, "a photo of a", 1)
    finally:
        toy.kind = "openai"
    with pytest.raises(UserError, match="PROMPT_DEPTH must be between 0 and the 2 layers"):
        MultiModalPromptLearner(toy, ["red"], 2, "a photo of a", 3)


# ---------------------------------------------------------------------------------------------
# End to end on the built-in world

@pytest.mark.slow
@pytest.mark.parametrize("name", ["MaPLe", "PromptSRC"])
def test_toy_training_beats_zero_shot_on_base_classes(shapes_world, tmp_path, name):
    def accuracy(trainer_name, *opts):
        out = tmp_path / trainer_name
        args = train.build_parser().parse_args([
            "--root", shapes_world, "--trainer", trainer_name, "--dataset-config-file", "shapes",
            "--config-file", f"{trainer_name}/toy", "--output-dir", str(out), "--seed", "1",
            "DATASET.NUM_SHOTS", "16", "DATASET.SUBSAMPLE_CLASSES", "base",
            "FEATURES.CACHE_DIR", str(tmp_path / "features"), *opts])
        set_random_seed(1)
        build_trainer(train.setup_cfg(args)).train()
        with open(out / "results.json") as f:
            return json.load(f)["accuracy"]

    assert accuracy(name) > accuracy("ZeroshotCLIP") + 5
