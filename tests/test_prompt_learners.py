"""CoOp, CoCoOp and ProGrad: what a training step touches, prompts, checkpoints across class sets,
ProGrad's gradient projection, and (with the built-in world) training against zero-shot."""
import json
import os

import pytest
import torch
import torch.nn.functional as F
from conftest import build_test_trainer
from numerics import assert_close

from llu import train
from llu.engine import build_trainer, load_checkpoint, set_random_seed
from llu.utils import UserError
from llu.backbones import load_backbone
from llu.trainers.coop import PromptLearner, template_context
from llu.trainers.prograd import project_conflicting_gradient

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHED = ("normalize",)
AUGMENTED = ("random_resized_crop", "random_flip", "normalize")


@pytest.fixture
def build(colours_root, tiny_clip_file, tmp_path):
    """Build a trainer through train.py's command-line path on the colours dataset."""

    def _build(trainer, *opts, transforms=CACHED, out="out"):
        return build_test_trainer(trainer, colours_root, tiny_clip_file, tmp_path / out,
                                  "FEATURES.CACHE_DIR", str(tmp_path / "features"), "OPTIM.MAX_EPOCH", "1",
                                  "TRAINER.COOP.N_CTX", "4", "TRAINER.COCOOP.N_CTX", "4", *opts,
                                  transforms=transforms)

    return _build


def _one_training_batch(trainer):
    trainer.set_model_mode("train")
    trainer.batch_idx, trainer.num_batches = 0, 2
    if trainer.augments_images:
        return next(iter(trainer.train_loader_x))
    return next(iter(trainer.feature_batches()))


@pytest.mark.parametrize("name, transforms, opts", [
    ("CoOp", CACHED, []),
    ("CoOp", AUGMENTED, []),
    ("CoOp", CACHED, ["TRAINER.COOP.CSC", "True", "TRAINER.COOP.CLASS_TOKEN_POSITION", "middle"]),
    ("CoCoOp", CACHED, []),
    ("CoCoOp", AUGMENTED, []),
    ("ProGrad", CACHED, []),
])
def test_a_training_step_moves_the_prompt_learner_and_nothing_of_clip(build, name, transforms, opts):
    trainer = build(name, *opts, transforms=transforms)
    batch = _one_training_batch(trainer)
    clip_before = {k: v.clone() for k, v in trainer.clip_model.state_dict().items()}
    learned_before = {k: p.detach().clone() for k, p in trainer.prompt_learner.named_parameters()}
    buffers_before = {k: b.clone() for k, b in trainer.prompt_learner.named_buffers()}
    encoder_calls = []
    trainer.clip_model.model.visual.register_forward_hook(lambda *_: encoder_calls.append(1))

    trainer.forward_backward(batch)

    clip_after = trainer.clip_model.state_dict()
    assert all(torch.equal(clip_before[k], clip_after[k]) for k in clip_before)
    assert all(p.grad is None for p in trainer.clip_model.parameters())
    moved = {k for k, p in trainer.prompt_learner.named_parameters() if not torch.equal(p, learned_before[k])}
    assert moved == set(learned_before)
    assert ("meta_net.linear2.weight" in moved) == (name == "CoCoOp")
    assert all(torch.equal(b, buffers_before[k]) for k, b in trainer.prompt_learner.named_buffers())
    # The image encoder runs inside the step only when the training images are augmented.
    assert len(encoder_calls) == (1 if transforms == AUGMENTED else 0)


@pytest.mark.parametrize("prec", ["fp16", "amp"])
def test_gpu_precisions_train_in_fp32_on_a_cpu(build, prec):
    trainer = build("CoCoOp", "TRAINER.PREC", prec)
    trainer.forward_backward(_one_training_batch(trainer))
    assert trainer.clip_model.dtype == torch.float32 and trainer.scaler is None
    assert trainer.prompt_learner.ctx.dtype == torch.float32


@pytest.mark.parametrize("position, sentence", [
    ("end", "a photo of a {}."), ("front", "{} a photo of a."), ("middle", "a photo {} of a."),
])
def test_word_initialised_prompts_encode_like_the_written_sentence(tiny_clip_file, position, sentence):
    model = load_backbone(tiny_clip_file)
    classnames = ["blue", "dark_green"]
    learner = PromptLearner(model, classnames, n_ctx=4, ctx_init="a photo of a", class_token_position=position)
    with torch.no_grad():
        features = model.encode_prompts(learner(), learner.tokenized_prompts)
        expected = model.encode_text(model.tokenize([sentence.format("blue"), sentence.format("dark green")]))
    assert_close(features, expected)


def test_init_words_set_the_context_as_upstream_and_prograd_keeps_n_ctx(tiny_clip_file):
    model = load_backbone(tiny_clip_file)
    words = model.token_embedding(model.tokenize(["a photo of a"]))[0, 1:5]
    coop = PromptLearner(model, ["blue"], n_ctx=16, ctx_init="a photo of a")  # upstream CoOp: N_CTX not used
    assert coop.n_ctx == 4 and torch.equal(coop.ctx, words) and coop.init_text == "a photo of a"
    prograd = PromptLearner(model, ["blue"], n_ctx=6, ctx_init="a photo of a", keep_n_ctx=True)
    assert torch.equal(prograd.ctx[:2], torch.zeros(2, words.shape[1]))
    assert torch.equal(prograd.ctx[2:], words)
    assert prograd.init_text == "X X a photo of a"
    assert template_context("a photo of a {}, a type of pet.") == "a type of pet, a photo of a"
    assert template_context("a centered satellite photo of {}.") == "a centered satellite photo of"
    with pytest.raises(UserError, match="more than N_CTX 3"):
        PromptLearner(model, ["blue"], n_ctx=3, ctx_init="a photo of a", keep_n_ctx=True)
    with pytest.raises(UserError, match="N_CTX 14 context tokens"):
        PromptLearner(model, ["blue"], n_ctx=14)


def test_a_word_of_several_tokens_keeps_the_rest_frozen_as_upstream(tiny_clip_file):
    # ProGrad's "a type of pet, a photo of a": 8 words, 9 tokens ("pet" ","); upstream learns the
    # first 8 tokens and the prompt's last "a" stays a frozen word before the class name.
    model = load_backbone(tiny_clip_file)
    learner = PromptLearner(model, ["blue"], n_ctx=8, ctx_init="a type of pet, a photo of a")
    with torch.no_grad():
        assembled = learner()
        written = model.token_embedding(model.tokenize(["a type of pet, a photo of a blue."])).type(model.dtype)
    assert torch.equal(assembled, written)


@pytest.mark.parametrize("name", ["CoOp", "CoCoOp"])
def test_checkpoint_reproduces_logits_and_moves_to_new_classes(build, name):
    trained = build(name, "DATASET.SUBSAMPLE_CLASSES", "base", "TEST.NO_TEST", "True", out="run")
    trained.train()
    run_dir = trained.output_dir
    state = load_checkpoint(os.path.join(run_dir, "prompt_learner", "model.pth.tar-1"))["state_dict"]
    assert set(state) == {k for k, _ in trained.prompt_learner.named_parameters()}  # no token_prefix/suffix

    features = trained.split_features("test")[0]
    trained.set_model_mode("eval")
    with torch.no_grad():
        expected = trained.model_inference(features)
    reloaded = build(name, "DATASET.SUBSAMPLE_CLASSES", "base", out="reloaded")
    with torch.no_grad():
        assert not torch.allclose(reloaded.model_inference(features), expected)
        reloaded.load_model(run_dir, epoch=1)
        assert_close(reloaded.model_inference(features), expected)

    # Base-to-new: the trained context with the new classes' names.
    new = build(name, "DATASET.SUBSAMPLE_CLASSES", "new", out="new")
    new.load_model(run_dir, epoch=1)
    assert new.classnames == ["red", "yellow"] and trained.classnames == ["blue", "green"]
    for key, value in trained.prompt_learner.named_parameters():
        assert torch.equal(dict(new.prompt_learner.named_parameters())[key], value)
    expected_tokens = new.clip_model.tokenize(["X X X X red.", "X X X X yellow."])
    assert torch.equal(new.prompt_learner.tokenized_prompts, expected_tokens)
    new.test()
    with open(os.path.join(new.output_dir, "results.json")) as f:
        results = json.load(f)
    assert results["subsample_classes"] == "new" and set(results["per_class_accuracy"]) == {"red", "yellow"}


def test_command_line_base_to_new_with_load_epoch(image_folder, tiny_clip_file, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("LLU_CACHE", str(tmp_path / "cache"))

    def run(out, *extra):
        train.cli(["--root", os.path.dirname(image_folder), "--trainer", "CoOp", "--backbone", tiny_clip_file,
                   "--dataset-config-file", "configs/datasets/imagefolder.yaml", "--output-dir", str(tmp_path / out),
                   "--transforms", "normalize", "--seed", "1", *extra, "INPUT.SIZE", "(32, 32)",
                   "TRAINER.PREC", "fp32", "OPTIM.MAX_EPOCH", "2", "TRAINER.COOP.N_CTX", "4",
                   "TRAINER.COOP.CTX_INIT", "a photo of a"])
        with open(tmp_path / out / "results.json") as f:
            return json.load(f)

    run("base", "DATASET.SUBSAMPLE_CLASSES", "base")
    assert sorted(os.listdir(tmp_path / "base" / "prompt_learner")) == ["checkpoint", "model.pth.tar-2"]
    new = run("new", "--eval-only", "--model-dir", str(tmp_path / "base"), "--load-epoch", "2",
              "DATASET.SUBSAMPLE_CLASSES", "new")
    assert set(new["per_class_accuracy"]) == {"red", "yellow"}
    assert new["train_subsample_classes"] == "base" and new["subsample_classes"] == "new"


def test_class_specific_contexts_reload_but_refuse_other_classes(build):
    trained = build("CoOp", "TRAINER.COOP.CSC", "True", "DATASET.SUBSAMPLE_CLASSES", "base", "TEST.NO_TEST", "True",
                    out="run")
    trained.train()
    same = build("CoOp", "TRAINER.COOP.CSC", "True", "DATASET.SUBSAMPLE_CLASSES", "base", out="same")
    same.load_model(trained.output_dir, epoch=1)
    assert torch.equal(same.prompt_learner.ctx, trained.prompt_learner.ctx)
    resumed = build("CoOp", "TRAINER.COOP.CSC", "True", "DATASET.SUBSAMPLE_CLASSES", "base", out="resumed")
    assert resumed.resume_model_if_exist(trained.output_dir) == 1
    assert torch.equal(resumed.prompt_learner.ctx, trained.prompt_learner.ctx)
    # The new half has as many classes as the base half: only the stored class names tell them apart.
    new = build("CoOp", "TRAINER.COOP.CSC", "True", "DATASET.SUBSAMPLE_CLASSES", "new", out="new")
    with pytest.raises(UserError, match="cannot be evaluated on another class set.*CSC False"):
        new.load_model(trained.output_dir, epoch=1)
    shared = build("CoOp", "DATASET.SUBSAMPLE_CLASSES", "new", out="shared")
    with pytest.raises(UserError, match="class-specific contexts; set TRAINER.COOP.CSC True"):
        shared.load_model(trained.output_dir, epoch=1)


@pytest.mark.parametrize("name", ["CoOp", "CoCoOp"])
def test_init_weights_start_training_from_a_trained_context(build, name, tmp_path):
    trained = build(name, "DATASET.SUBSAMPLE_CLASSES", "base", "TEST.NO_TEST", "True", out="run")
    trained.train()
    checkpoint = os.path.join(trained.output_dir, "prompt_learner", "model.pth.tar-1")
    started = build(name, "MODEL.INIT_WEIGHTS", checkpoint, out="started")  # all classes, not only base
    for key, value in trained.prompt_learner.named_parameters():
        assert torch.equal(dict(started.prompt_learner.named_parameters())[key], value)
    fresh = build(name, out="fresh")
    assert not torch.equal(fresh.prompt_learner.ctx, trained.prompt_learner.ctx)


def test_init_weights_from_another_trainer_or_a_missing_file_is_one_line(build, tmp_path):
    coop = build("CoOp", "DATASET.SUBSAMPLE_CLASSES", "base", "TEST.NO_TEST", "True", out="run")
    coop.train()
    checkpoint = os.path.join(coop.output_dir, "prompt_learner", "model.pth.tar-1")
    with pytest.raises(UserError, match=r"MODEL.INIT_WEIGHTS .*model.pth.tar-1: the checkpoint does not fit"):
        build("CoCoOp", "MODEL.INIT_WEIGHTS", checkpoint, out="cocoop")
    with pytest.raises(UserError, match="missing.pth: file not found"):
        build("CoOp", "MODEL.INIT_WEIGHTS", str(tmp_path / "missing.pth"), out="missing")


def test_prograd_template_init_uses_the_dataset_template(build):
    trainer = build("ProGrad", "TRAINER.COOP.N_CTX", "6", "TRAINER.COOP.CTX_INIT", "template")
    assert trainer.prompt_learner.init_text == "X X a photo of a"  # the default template "a photo of a {}."


def test_prograd_projection_removes_the_conflicting_component():
    ce_grad, kl_grad = torch.tensor([1.0, -2.0]), torch.tensor([0.0, 1.0])  # cosine < 0
    projected = project_conflicting_gradient(ce_grad, kl_grad)
    assert torch.allclose(projected, torch.tensor([1.0, 0.0]))
    ce_grad, kl_grad = torch.tensor([[3.0, -1.0, 2.0]]), torch.tensor([[-1.0, 2.0, 0.5]])  # dot = -4
    projected = project_conflicting_gradient(ce_grad, kl_grad)
    assert torch.dot(projected.flatten(), kl_grad.flatten()).abs() < 1e-6
    assert torch.allclose(projected, ce_grad + 4.0 / 5.25 * kl_grad)
    half = project_conflicting_gradient(ce_grad, kl_grad, lam=0.5)
    assert torch.allclose(half, ce_grad + 0.5 * 4.0 / 5.25 * kl_grad)


def test_prograd_keeps_agreeing_or_unopposed_gradients():
    ce_grad = torch.tensor([1.0, 2.0, -1.0])
    assert torch.equal(project_conflicting_gradient(ce_grad, torch.tensor([1.0, 0.0, 0.0])), ce_grad)
    assert torch.equal(project_conflicting_gradient(ce_grad, torch.tensor([0.0, 1.0, 2.0])), ce_grad)  # orthogonal
    assert torch.equal(project_conflicting_gradient(ce_grad, torch.zeros(3)), ce_grad)


def test_prograd_step_follows_the_projected_cross_entropy_gradient(build):
    lr, temperature, lam = 0.5, 2.0, 0.7
    trainer = build("ProGrad", "OPTIM.LR", str(lr), "OPTIM.MOMENTUM", "0.0", "OPTIM.WEIGHT_DECAY", "0.0",
                    "TRAINER.PROGRAD.T", str(temperature), "TRAINER.PROGRAD.LAMBDA", str(lam))
    batch = _one_training_batch(trainer)
    features = batch["features"]
    zero_shot_logits = trainer.logit_scale * features @ trainer.zero_shot_text_features.t()
    ctx = trainer.prompt_learner.ctx
    start = ctx.detach().clone()

    def gradients(labels):
        logits = trainer.model(features)
        teacher = F.softmax(zero_shot_logits / temperature, dim=1)
        kl = (teacher * (teacher.log() - F.log_softmax(logits / temperature, dim=1))).sum(1).mean() * temperature ** 2
        ce_grad, = torch.autograd.grad(F.cross_entropy(logits, labels), ctx, retain_graph=True)
        kl_grad, = torch.autograd.grad(kl, ctx)
        return ce_grad, kl_grad

    # Labels whose cross-entropy gradient conflicts with the KL gradient: per sample, the label whose
    # gradient has the least dot product with it. The softmax-weighted mean of one sample's per-label
    # gradients is zero, so that least product is negative (unless the gradients vanish).
    _, kl_grad = gradients(zero_shot_logits.argmax(dim=1))
    logits = trainer.model(features)
    labels = torch.tensor([
        min(range(logits.shape[1]), key=lambda c: (torch.autograd.grad(
            F.cross_entropy(logits[i:i + 1], torch.tensor([c])), ctx, retain_graph=True)[0] * kl_grad).sum().item())
        for i in range(logits.shape[0])])
    ce_grad, kl_grad = gradients(labels)
    dot = (ce_grad * kl_grad).sum()
    assert dot < 0
    batch["label"] = labels
    projected_step = -lr * (ce_grad - lam * dot / kl_grad.pow(2).sum() * kl_grad)

    trainer.forward_backward(batch)
    # The step, not the context, is compared: its size sets the round-off of the gradients (the two
    # sides sum the KL in other orders; measured 4e-7 to 1e-6 of the step). The unprojected step
    # differs from it by a third of its size.
    step = ctx.detach() - start
    assert_close(step, projected_step)
    assert (step + lr * ce_grad).abs().max() > 0.1 * projected_step.abs().max()


@pytest.fixture(scope="module")
def toy_run(request, tmp_path_factory):
    """Train and test on the built-in world's 16-shot base classes; returns the test accuracy."""
    root = request.getfixturevalue("shapes_world")
    folder = tmp_path_factory.mktemp("toy")

    def _run(name, *opts):
        out = folder / f"{name}-{len(os.listdir(folder))}"
        args = train.build_parser().parse_args([
            "--root", root, "--trainer", name,
            "--dataset-config-file", os.path.join(REPO, "configs/datasets/shapes.yaml"),
            "--config-file", os.path.join(REPO, f"configs/trainers/{name}/toy.yaml"), "--output-dir", str(out),
            "--seed", "1", "DATASET.NUM_SHOTS", "16", "DATASET.SUBSAMPLE_CLASSES", "base",
            "FEATURES.CACHE_DIR", str(folder / "features"), *opts])
        set_random_seed(1)
        build_trainer(train.setup_cfg(args)).train()
        with open(out / "results.json") as f:
            return json.load(f)["accuracy"]

    return _run


@pytest.fixture(scope="module")
def toy_zero_shot(toy_run):
    return toy_run("ZeroshotCLIP")


@pytest.mark.slow
def test_toy_class_specific_contexts_beat_zero_shot_on_base_classes(toy_run, toy_zero_shot):
    # One context per class can move each class text toward its colour-cast images.
    assert toy_run("CoOp", "TRAINER.COOP.CSC", "True", "OPTIM.NAME", "adam") > toy_zero_shot + 5


# ToyCLIP's captions name the conditions an image was drawn under (toyclip.caption), so its text
# encoder reads context words; a context learned on the base classes then moves their text features.
@pytest.mark.parametrize("name", ["CoOp", "CoCoOp", "ProGrad"])
@pytest.mark.slow
def test_toy_training_beats_zero_shot_on_base_classes(name, toy_run, toy_zero_shot):
    assert toy_run(name) > toy_zero_shot + 5
