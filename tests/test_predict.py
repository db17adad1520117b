"""Use what you trained: ``llu.load`` and ``llu predict`` give the evaluation's numbers on any images
and class names (short toy runs on the built-in world)."""
import json
import os
import subprocess
import sys

import pytest
import torch

import llu
from llu import engine, train
from llu.utils import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def toy_run(world, out, trainer, subsample="base", *opts, flags=()):
    """``llu train`` in this process on Shapes (4 shots, 2 epochs); returns results.json."""
    args = ["--root", world, "--trainer", trainer, "--dataset-config-file", "shapes", "--config-file",
            f"{trainer}/toy", "--output-dir", str(out), "--seed", "1", *flags, "DATASET.NUM_SHOTS", "4",
            "DATASET.SUBSAMPLE_CLASSES", subsample, "OPTIM.MAX_EPOCH", "2", *opts]
    assert train.cli(args) is None
    with open(os.path.join(out, "results.json")) as f:
        return json.load(f)


def toy_run_folder(tmp_path_factory, world, trainer):
    """A folder holding one ``toy_run`` of ``trainer`` on the base classes (for a module's fixture)."""
    out = tmp_path_factory.mktemp(trainer.lower()) / "run"
    toy_run(world, out, trainer)
    return out


def evaluate(world, model_dir, out, trainer, subsample):
    """``--eval-only --model-dir`` of a run on a class split; returns its results.json."""
    return toy_run(world, out, trainer, subsample, flags=("--eval-only", "--model-dir", str(model_dir)))


def split_of(world, subsample):
    """(test image paths, their class names, the split's class names) of Shapes' base or new classes."""
    args = train.build_parser().parse_args(["--root", world, "--trainer", "ZeroshotCLIP", "--dataset-config-file",
                                            "shapes", "--config-file", "ZeroshotCLIP/toy", "--seed", "1",
                                            "DATASET.NUM_SHOTS", "4", "DATASET.SUBSAMPLE_CLASSES", subsample])
    dataset = engine.build_dataset(train.setup_cfg(args))
    return [item.impath for item in dataset.test], [item.classname for item in dataset.test], dataset.classnames


def predict_cli(tmp_path, model_dir, paths, classnames, *extra):
    """``llu predict`` in this process into a .jsonl file: (exit status, its records)."""
    names_file = tmp_path / "names.txt"
    names_file.write_text("\n".join(classnames) + "\n")
    output = tmp_path / "predictions.jsonl"
    from llu.predict import cli
    code = cli(["--model-dir", str(model_dir), "--images", *paths, "--classnames-file", str(names_file),
                "--output", str(output), *extra])
    return code, [json.loads(line) for line in output.read_text().splitlines()]


def accuracy(records, truth):
    """The evaluator's accuracy (100 * correct / total) of predictions against the true class names."""
    correct = sum(record["labels"][0] == name for record, name in zip(records, truth))
    return 100.0 * correct / len(truth)


@pytest.fixture(scope="module")
def llu_runs(tmp_path_factory, shapes_world):
    """An LLU run on the base classes and its --eval-only on the new ones."""
    root = tmp_path_factory.mktemp("llu")
    base = toy_run(shapes_world, root / "base", "LLU")
    new = evaluate(shapes_world, root / "base", root / "new", "LLU", "new")
    return root / "base", base, new


@pytest.mark.parametrize("subsample", ["base", "new"])
def test_llu_predict_gives_the_accuracy_eval_only_recorded(llu_runs, shapes_world, tmp_path, subsample):
    run, base, new = llu_runs
    paths, truth, classnames = split_of(shapes_world, subsample)
    code, records = predict_cli(tmp_path, run, paths, classnames, "--top-k", "3")
    assert code == 0
    assert [record["path"] for record in records] == paths and all(len(r["labels"]) == 3 for r in records)
    assert accuracy(records, truth) == {"base": base, "new": new}[subsample]["accuracy"]


def test_llu_on_new_names_far_from_its_training_texts_is_zero_shot(llu_runs, shapes_world):
    """LLU's point: new class texts far from D_text keep CLIP's zero-shot embedding, so the logits of
    the new classes are close to zero-shot CLIP's where the images are far from D_image too."""
    run, _, _ = llu_runs
    model = llu.load(run)
    names = ["a spaceship", "a violin", "a mountain lake"]
    texts = model.encode_texts(names)
    adapted = model.trainer.adapter.transform_text(texts.to(model.device))
    alpha = model.trainer.adapter.interpolation_weights(texts, "text")
    assert alpha.max() < 0.5 * float(model.trainer.adapter.beta)  # far from the training texts
    assert torch.allclose(adapted.cpu(), texts, atol=0.1)


def test_unreadable_images_are_listed_and_the_others_predicted(llu_runs, shapes_world, tmp_path, capsys):
    run, _, _ = llu_runs
    paths, _, classnames = split_of(shapes_world, "base")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(open(paths[0], "rb").read()[:120])
    asked = [paths[0], str(broken), str(tmp_path / "missing.png"), str(truncated), paths[1]]
    capsys.readouterr()
    code, records = predict_cli(tmp_path, run, asked, classnames[:4])
    err = capsys.readouterr().err
    assert code == 1
    assert [r["path"] for r in records if "labels" in r] == [paths[0], paths[1]]
    assert {r["path"]: r["error"] for r in records if "error" in r}.keys() == set(asked[1:4])
    for path in asked[1:4]:
        assert f"  {path}: " in err
    assert "cannot read 3 of 5 image(s)" in err and "Traceback" not in err


def test_the_console_gets_one_line_per_image_and_nothing_else(llu_runs, shapes_world, tmp_path):
    run, _, _ = llu_runs
    paths, _, _ = split_of(shapes_world, "base")
    done = subprocess.run([sys.executable, "-m", "llu", "predict", "--model-dir", str(run), "--images", *paths[:3],
                           "--classes", "red circle, pink heart,blue star", "--top-k", "2"], cwd=REPO,
                          capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 3 and all(line.startswith(path + "\t") for line, path in zip(lines, paths))
    assert all(line.count("%)") == 2 for line in lines)


def test_the_same_images_again_are_not_encoded_again(llu_runs, shapes_world):
    run = llu_runs[0]
    paths, _, classnames = split_of(shapes_world, "new")
    paths = paths[:5]
    model = llu.load(run)
    first = model.logits(paths, classnames)
    encoded = model.feature_cache.encoder_passes
    assert torch.equal(model.logits(paths, classnames), first)
    assert model.feature_cache.encoder_passes == encoded


def test_paths_pil_images_and_tensors_give_the_same_logits(llu_runs, shapes_world):
    from PIL import Image
    run, _, _ = llu_runs
    paths, _, classnames = split_of(shapes_world, "base")
    model = llu.load(run)
    from_paths = model.logits(paths[:4], classnames)
    pictures = [Image.open(path) for path in paths[:4]]
    assert torch.equal(model.logits(pictures, classnames), from_paths)
    pixels = torch.stack([model.transform(picture) for picture in pictures])
    assert torch.equal(model.logits(pixels, classnames), from_paths)
    assert torch.equal(model.logits(model.encode_images(paths[:4]), classnames), from_paths)
    predictions = model.predict(paths[:4], classnames, top_k=2)
    assert [p.label for p in predictions] == [classnames[i] for i in from_paths.argmax(dim=1).tolist()]
    assert all(sum(p.probabilities) <= 1 + 1e-6 and p.probabilities[0] >= p.probabilities[1] for p in predictions)


def test_a_backbone_name_is_zero_shot_clip(shapes_world):
    model = llu.load("toy")
    paths, truth, classnames = split_of(shapes_world, "new")
    assert model.trainer_name == "ZeroshotCLIP"
    assert [p.label for p in model.predict(paths[:8], classnames, top_k=1)] == \
        [classnames[i] for i in model.logits(paths[:8], classnames).argmax(dim=1).tolist()]


def test_class_names_errors_are_one_line(llu_runs, tmp_path, capsys):
    run, _, _ = llu_runs
    model = llu.load(run)
    for names in (["a", "a"], [], "red circle,blue star", ["a", " "]):
        with pytest.raises(UserError):
            model.class_features(names)
    from llu.predict import cli
    with pytest.raises(SystemExit) as exit_info:
        cli(["--model-dir", str(run), "--images", "x.png", "--classes", "a,b", "--output", str(tmp_path / "p.txt")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: --output")


def test_importing_llu_imports_no_torch_and_load_is_there():
    done = subprocess.run([sys.executable, "-c", "import sys, llu; assert 'torch' not in sys.modules, 'torch imported'; "
                           "assert callable(llu.load) and llu.load.__module__ == 'llu.model'"], cwd=REPO, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr


# ---------------------------------------------------------------------------------------------
# Tip-Adapter: its cache knows its training classes only

@pytest.fixture(scope="module")
def tip_run(tmp_path_factory, shapes_world):
    out = tmp_path_factory.mktemp("tip") / "base"
    return out, toy_run(shapes_world, out, "TipAdapter", "base", "TRAINER.TIP_ADAPTER.SEARCH_STEP", "(20, 10)")


def test_tip_adapter_scores_its_classes_in_any_order_and_new_ones_zero_shot(tip_run, shapes_world, capsys):
    run, results = tip_run
    model = llu.load(run)
    paths, truth, classnames = split_of(shapes_world, "base")
    logits = model.logits(paths, classnames)
    assert 100.0 * sum(classnames[i] == name for i, name in zip(logits.argmax(1).tolist(), truth)) / len(truth) \
        == results["accuracy"]
    order = list(reversed(classnames))
    assert torch.allclose(model.logits(paths, order), logits.flip(1), atol=1e-4)
    new_paths, _, new_names = split_of(shapes_world, "new")
    capsys.readouterr()
    zero_shot = llu.load("toy").trainer  # the same template (Shapes has the default one)
    features = model.encode_images(new_paths[:10])
    assert torch.allclose(model.logits(features, new_names),
                          zero_shot.class_logits(features, zero_shot.class_features(new_names)), atol=1e-5)
    assert "zero-shot CLIP's" in capsys.readouterr().out
    with pytest.raises(UserError, match="knows 1 of these classes"):
        model.logits(features, [classnames[0], new_names[0]])


# ---------------------------------------------------------------------------------------------
# Every trainer, end to end

TRAINERS = ["ZeroshotCLIP", "ZeroshotCLIP2", "CoOp", "CoCoOp", "ProGrad", "CLIP_Adapter", "TipAdapter",
            "TipAdapterF", "LLU"]


@pytest.mark.slow
@pytest.mark.parametrize("trainer", TRAINERS)
def test_every_trainer_predicts_what_its_evaluation_recorded(trainer, shapes_world, tmp_path):
    """Base and new classes; Tip-Adapter's new classes (refused by --eval-only) are zero-shot CLIP's."""
    opts = ("TRAINER.TIP_ADAPTER.SEARCH_STEP", "(20, 10)") if trainer.startswith("Tip") else ()
    base = toy_run(shapes_world, tmp_path / "base", trainer, "base", *opts)
    if trainer.startswith("Tip"):
        new = toy_run(shapes_world, tmp_path / "zs_new", "ZeroshotCLIP", "new")
    else:
        new = evaluate(shapes_world, tmp_path / "base", tmp_path / "new", trainer, "new")
    for subsample, recorded in (("base", base), ("new", new)):
        paths, truth, classnames = split_of(shapes_world, subsample)
        code, records = predict_cli(tmp_path, tmp_path / "base", paths, classnames)
        assert code == 0
        assert accuracy(records, truth) == recorded["accuracy"], (trainer, subsample)


@pytest.mark.parametrize("trainer", ["LinearProbe", "MaPLe", "PromptSRC", "CLIP_LoRA", "WiSEFT"])
def test_trainers_whose_prediction_is_not_written_are_refused_not_silently_zero_shot(trainer, tmp_path):
    from llu.utils import UserError
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(f"TRAINER:\n  NAME: {trainer}\nMODEL:\n  BACKBONE:\n    NAME: toy\n"
                                     f"DATASET:\n  NAME: Shapes\n")
    with pytest.raises(UserError, match=f"{trainer}: llu.load / llu predict / llu export do not support"):
        llu.load(str(run))
