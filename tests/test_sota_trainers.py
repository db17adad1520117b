"""KgCoOp and the linear probe: KgCoOp's regulariser at initialisation, its step against the equation,
upstream's config and checkpoints, base to new; the probe against scikit-learn called directly, its
refusal of new classes, its checkpoint; (slow) both on the built-in world."""
import json
import os

import pytest
import torch
import torch.nn.functional as F
from conftest import build_test_trainer
from numerics import assert_close

from llu import train
from llu.engine import build_trainer, load_checkpoint
from llu.trainers import coop, kgcoop
from llu.trainers.kgcoop import knowledge_guided_loss

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PETS_TEMPLATE = "a photo of a {}, a type of pet."


@pytest.fixture
def build(colours_root_with_val, tiny_clip_file, tmp_path):
    """Build a trainer through train.py's command-line path on the colours dataset."""

    def _build(trainer, *opts, out="out"):
        return build_test_trainer(trainer, colours_root_with_val, tiny_clip_file, tmp_path / out,
                                  "FEATURES.CACHE_DIR", str(tmp_path / "features"), "OPTIM.MAX_EPOCH", "1",
                                  "TRAINER.COOP.CTX_INIT", "a photo of a", *opts, dataset="TestColoursWithVal")

    return _build


def _one_training_batch(trainer):
    trainer.set_model_mode("train")
    trainer.batch_idx, trainer.num_batches = 0, 2
    return next(iter(trainer.feature_batches()))


def _kg_term(trainer):
    with torch.no_grad():
        text_features = trainer.model.encode_prompts(trainer.prompt_learner())
    return knowledge_guided_loss(text_features, trainer.hand_made_text_features).item()


# ---------------------------------------------------------------------------------------------
# KgCoOp

def test_kg_term_is_zero_at_init_exactly_when_the_hand_made_prompt_is_the_init_sentence(build, monkeypatch):
    # The colours' hand-made prompt is "a photo of a {}.", the learned prompt's initial sentence.
    assert abs(_kg_term(build("KgCoOp"))) < 1e-6
    # A longer hand-made prompt (Pets'): upstream still starts from "a photo of a", so w != w_clip.
    monkeypatch.setattr(kgcoop, "dataset_template", lambda name: PETS_TEMPLATE)
    monkeypatch.setattr(coop, "dataset_template", lambda name: PETS_TEMPLATE)
    pets = build("KgCoOp", "TRAINER.COOP.CTX_INIT", "True")  # upstream's boolean: "a photo of a"
    assert pets.prompt_learner.init_text == "a photo of a"
    assert _kg_term(pets) > 1e-3
    # (CoOp's CTX_INIT True, ProGrad's meaning, starts from the template's words instead.)
    assert build("CoOp", "TRAINER.COOP.CTX_INIT", "True").prompt_learner.init_text == "a type of pet, a photo of a"


def test_kgcoop_step_follows_the_equation(build):
    lr, lam = 0.5, 3.0
    trainer = build("KgCoOp", "OPTIM.LR", str(lr), "OPTIM.MOMENTUM", "0.0", "OPTIM.WEIGHT_DECAY", "0.0",
                    "TRAINER.KGCOOP.W", str(lam))
    ctx = trainer.prompt_learner.ctx
    with torch.no_grad():  # away from the minimum of L_kg, where its gradient vanishes
        ctx.add_(0.05 * torch.randn(ctx.shape, generator=torch.Generator().manual_seed(0)))
    start = ctx.detach().clone()
    batch = _one_training_batch(trainer)
    features, labels = batch["features"], batch["label"]

    # w_clip written out: the hand-made sentences through CLIP's text encoder.
    model = trainer.clip_model
    with torch.no_grad():
        w_clip = F.normalize(model.encode_text(model.tokenize([f"a photo of a {c}." for c in trainer.classnames])), dim=-1)
    w = trainer.model.encode_prompts(trainer.prompt_learner())
    ce = F.cross_entropy(model.logit_scale.exp() * features @ w.t(), labels)
    l_kg = (w - w_clip).pow(2).sum(dim=1).mean()  # 1/N_c sum_i ||w_i - w_i^clip||^2
    ce_grad, = torch.autograd.grad(ce, ctx, retain_graph=True)
    kg_grad, = torch.autograd.grad(l_kg, ctx)
    expected_step = -lr * (ce_grad + lam / 2 * kg_grad)  # lambda on L_kg / 2, as the official code

    summary = trainer.forward_backward(batch)
    assert_close(ctx.detach() - start, expected_step)
    assert abs(summary["kg"] - l_kg.item() / 2) < 1e-6
    assert (lam / 2 * kg_grad).abs().max() > 0.1 * ce_grad.abs().max()  # the term matters in this step


def test_kgcoop_checkpoint_round_trip_and_base_to_new(build):
    trained = build("KgCoOp", "DATASET.SUBSAMPLE_CLASSES", "base", "TEST.NO_TEST", "True", out="run")
    trained.train()
    run_dir = trained.output_dir
    state = load_checkpoint(os.path.join(run_dir, "prompt_learner", "model.pth.tar-1"))["state_dict"]
    assert set(state) == {"ctx"}

    features = trained.split_features("test")[0]
    trained.set_model_mode("eval")
    with torch.no_grad():
        expected = trained.model_inference(features)
    reloaded = build("KgCoOp", "DATASET.SUBSAMPLE_CLASSES", "base", out="reloaded")
    with torch.no_grad():
        assert not torch.allclose(reloaded.model_inference(features), expected)
        reloaded.load_model(run_dir, epoch=1)
        assert_close(reloaded.model_inference(features), expected)

    new = build("KgCoOp", "DATASET.SUBSAMPLE_CLASSES", "new", out="new")
    new.load_model(run_dir, epoch=1)
    assert new.classnames == ["red", "yellow"] and trained.classnames == ["blue", "green"]
    assert torch.equal(new.prompt_learner.ctx, trained.prompt_learner.ctx)
    new.test()
    with open(os.path.join(new.output_dir, "results.json")) as f:
        results = json.load(f)
    assert results["subsample_classes"] == "new" and set(results["per_class_accuracy"]) == {"red", "yellow"}

    # An official checkpoint's prompt learner also holds an unused bias vector and meta-net, and the
    # training classes' token embeddings: they are dropped, the context is loaded.
    upstream = {"ctx": state["ctx"] + 1, "bias_vectors": torch.zeros(1, 512), "meta_net.linear1.weight":
                torch.zeros(512, 512), "meta_net.linear1.bias": torch.zeros(512), "token_prefix": torch.zeros(2, 1, 64)}
    new.load_checkpoint_state("prompt_learner", upstream)
    assert torch.equal(new.prompt_learner.ctx, state["ctx"] + 1)


UPSTREAM_KGCOOP_CONFIG = """DATALOADER:
  TRAIN_X:
    BATCH_SIZE: 128
OPTIM:
  NAME: "sgd"
  LR: 0.002
  MAX_EPOCH: 100
MODEL:
  BACKBONE:
    NAME: "ViT-B/16"
TRAINER:
  COOP:
    CTX_INIT: True
"""


def test_upstream_kgcoop_config_and_command_line_load_unchanged(tmp_path, image_folder, tiny_clip_file):
    # The shape of KgCoOp/configs/trainers/KgCoOp/vit_b16_ep100_ctxv1.yaml, with base2new_train.sh's options.
    config = tmp_path / "vit_b16_ep100_ctxv1.yaml"
    config.write_text(UPSTREAM_KGCOOP_CONFIG)
    args = train.build_parser().parse_args([
        "--root", os.path.dirname(image_folder), "--trainer", "KgCoOp", "--config-file", str(config),
        "--dataset-config-file", os.path.join(REPO, "configs/datasets/imagefolder.yaml"),
        "--backbone", tiny_clip_file, "--output-dir", str(tmp_path / "out"),
        "DATASET.IMAGEFOLDER.DIR", os.path.basename(image_folder), "INPUT.SIZE", "(32, 32)",
        "FEATURES.CACHE_DIR", str(tmp_path / "features"), "TRAINER.COOP.PREC", "fp32",
        "TRAINER.COOP.N_CTX", "4", "TRAINER.COOP.CSC", "False", "TRAINER.COOP.W", "2.5",
        "TRAINER.COOP.CLASS_TOKEN_POSITION", "end", "DATASET.NUM_SHOTS", "2", "DATASET.SUBSAMPLE_CLASSES", "base"])
    cfg = train.setup_cfg(args)
    assert (cfg.TRAINER.KGCOOP.W, cfg.TRAINER.PREC, cfg.OPTIM.MAX_EPOCH) == (2.5, "fp32", 100)
    trainer = build_trainer(cfg)
    assert trainer.prompt_learner.init_text == "a photo of a" and trainer.prompt_learner.n_ctx == 4


# ---------------------------------------------------------------------------------------------
# Linear probe

def reference_search(train_x, train_y, val_x, val_y, steps):
    """CoOp's lpclip search written out with scikit-learn: the coarse grid, then the two ends of an
    interval in C, the better kept (the left on a tie), the interval halved in log10 toward it."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    def fit(c):
        classifier = LogisticRegression(solver="lbfgs", max_iter=1000, C=c).fit(train_x, train_y)
        return classifier, np.mean(classifier.predict(val_x) == val_y)

    grid = [1e6, 1e4, 1e2, 1, 1e-2, 1e-4, 1e-6]
    peak = grid[int(np.argmax([fit(c)[1] for c in grid]))]
    left, right = 0.1 * peak, 10 * peak
    for _ in range(steps):
        (left_fit, left_acc), (right_fit, right_acc) = fit(left), fit(right)
        middle = 10 ** (0.5 * (np.log10(left) + np.log10(right)))
        if left_acc < right_acc:
            final_c, final, left = right, right_fit, middle
        else:
            final_c, final, right = left, left_fit, middle
    return final_c, final


def _noisy_features(seed, per_class, n_classes=8, dim=16, noise=2.0):
    """Unit-norm features of overlapping classes around fixed centres, so that val accuracy depends on C."""
    centres = torch.randn(n_classes, dim, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    noise = noise * torch.randn(len(labels), dim, generator=torch.Generator().manual_seed(seed))
    return F.normalize(centres[labels] + noise, dim=-1).double().numpy(), labels.numpy()


def test_c_search_matches_scikit_learn_called_directly():
    from llu.trainers.linear_probe import search_c
    train_x, train_y = _noisy_features(1, per_class=6)
    val_x, val_y = _noisy_features(2, per_class=4)
    test_x, _ = _noisy_features(3, per_class=6)
    c, classifier, history = search_c(train_x, train_y, val_x, val_y, [1e6, 1e4, 1e2, 1.0, 1e-2, 1e-4, 1e-6], 8)
    expected_c, expected = reference_search(train_x, train_y, val_x, val_y, 8)
    assert c == pytest.approx(expected_c, rel=1e-12)
    assert (classifier.predict(test_x) == expected.predict(test_x)).all()
    assert len(history) == 7 + 2 * 8 and len({correct for _, correct in history}) > 2  # C matters here


@pytest.mark.parametrize("classes", ["all", "base"])  # base: two classes, scikit-learn's one-row model
def test_linear_probe_predicts_as_scikit_learn_and_round_trips(build, classes):
    trained = build("LinearProbe", "DATASET.SUBSAMPLE_CLASSES", classes, out="probe")
    trained.train()
    train_x, train_y = (t.numpy() for t in trained.split_features("train"))
    val_x, val_y = (t.numpy() for t in trained.split_features("val"))
    test_x = trained.split_features("test")[0]
    expected_c, expected = reference_search(train_x, train_y, val_x, val_y, 8)
    assert float(trained.probe.C) == pytest.approx(expected_c, rel=1e-12)
    with torch.no_grad():
        logits = trained.model_inference(test_x)
    assert torch.equal(logits.argmax(dim=1), torch.from_numpy(expected.predict(test_x.numpy())))
    assert_close(logits.softmax(dim=1), torch.from_numpy(expected.predict_proba(test_x.numpy())))
    with open(os.path.join(trained.output_dir, "results.json")) as f:
        assert json.load(f)["linear_probe_C"] == float(trained.probe.C)

    state = load_checkpoint(os.path.join(trained.output_dir, "linear_probe", "model.pth.tar-1"))["state_dict"]
    assert set(state) == {"weight", "bias", "C", "classnames"}
    reloaded = build("LinearProbe", "DATASET.SUBSAMPLE_CLASSES", classes, out="reloaded")
    with torch.no_grad():
        assert not torch.equal(reloaded.model_inference(test_x), logits)
        reloaded.load_model(trained.output_dir)
        assert torch.equal(reloaded.model_inference(test_x), logits)


def test_linear_probe_on_new_classes_is_refused_with_one_line(colours_root_with_val, tiny_clip_file, tmp_path, capsys):
    def run(out, *extra):
        capsys.readouterr()
        try:
            train.cli(["--root", colours_root_with_val, "--trainer", "LinearProbe", "--backbone", tiny_clip_file,
                       "--config-file", "LinearProbe/toy", "--output-dir", str(tmp_path / out), "--seed", "1",
                       *extra, "DATASET.NAME", "TestColoursWithVal", "FEATURES.CACHE_DIR", str(tmp_path / "features")])
            return 0, capsys.readouterr().err
        except SystemExit as e:
            return e.code, capsys.readouterr().err

    assert run("base", "DATASET.SUBSAMPLE_CLASSES", "base")[0] == 0
    code, err = run("new", "--eval-only", "--model-dir", str(tmp_path / "base"), "DATASET.SUBSAMPLE_CLASSES", "new")
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err
    assert "cannot name classes it was not trained on" in errors[0]
    assert not os.path.exists(tmp_path / "new" / "results.json")


# ---------------------------------------------------------------------------------------------
# End to end on the built-in world

@pytest.mark.slow
def test_toy_kgcoop_stays_nearer_the_hand_made_texts_than_coop(shapes_world, tmp_path):
    def trained(name):
        args = train.build_parser().parse_args([
            "--root", shapes_world, "--trainer", name, "--dataset-config-file", "shapes",
            "--config-file", f"{name}/toy", "--output-dir", str(tmp_path / name), "--seed", "1",
            "DATASET.NUM_SHOTS", "16", "DATASET.SUBSAMPLE_CLASSES", "base",
            "FEATURES.CACHE_DIR", str(tmp_path / "features")])
        trainer = build_trainer(train.setup_cfg(args))
        trainer.train()
        with torch.no_grad():
            text_features = trainer.model.encode_prompts(trainer.prompt_learner())
        hand_made = trainer.class_text_features(["a photo of a {}."])
        return knowledge_guided_loss(text_features, hand_made).item()

    assert trained("KgCoOp") < trained("CoOp")
