"""The built-in world: deterministic generation in CoOp's layout, rebuilds, readers, ToyCLIP weights."""
import dataclasses
import filecmp
import json
import os
import os.path as osp

import numpy as np
import pytest
import torch

import llu.datasets  # noqa: F401  (conftest registers the readers)
from llu.world import generate, render, toyclip
from llu.engine import DATASET_REGISTRY, get_cfg_default
from llu.utils import UserError

SMALL = dict(split_sizes=(2, 1, 1))  # 4 images per class: generation takes well under a second
TINY_PRETRAINING = dict(steps=2, images_per_class=2)


def all_files(folder):
    return sorted(osp.relpath(osp.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs)


# ---------------------------------------------------------------------------------------------
# Rendering and generation

@pytest.mark.parametrize("kind", ["shapes", "patterns"])
@pytest.mark.parametrize("domain", render.DOMAINS)
def test_rendering_is_a_function_of_the_generator(kind, domain):
    def draw(seed):
        return render.render(kind, 5, domain, np.random.default_rng(seed), level=0.4, cast=0.5)

    first = draw(3)
    assert first.shape == (32, 32, 3) and first.dtype == np.uint8
    assert np.array_equal(first, draw(3))
    assert not np.array_equal(first, draw(4))


def test_colour_cast_moves_only_base_colours_and_only_outside_pretraining():
    rng = np.random.default_rng(0)
    for colour in render.COLOUR_NAMES:
        true = np.array(render.COLOURS[colour], dtype=np.float32)
        pretrain = render.object_colour(colour, "pretrain", 0.5, rng, jitter=0)
        downstream = render.object_colour(colour, "downstream", 0.5, rng, jitter=0)
        assert np.allclose(pretrain, true)
        assert np.allclose(downstream, true) == (colour not in render.BASE_COLOURS)


def test_sine_wave_is_sine_shaped():
    t = np.arange(-2048, 2049, dtype=np.float32) / 1024  # exact in float32, as is t + 1
    wave = render.sine_wave(t)
    assert wave.dtype == np.float32
    assert np.abs(wave - np.sin(2 * np.pi * t)).max() < 0.06  # two parabolic arcs per period
    assert np.array_equal(render.sine_wave(t + 1), wave)


@pytest.mark.slow
def test_the_world_holds_the_reference_images(shapes_world):
    # The same datasets on every machine: the renderer uses no transcendental array functions (whose
    # SIMD code paths differ between CPUs). If this fails on your machine, the world differs there.
    for name in generate.DATASETS:
        dataset_dir = generate.ensure_dataset(shapes_world, name)
        with open(osp.join(dataset_dir, generate.STAMP_FILE)) as f:
            assert json.load(f)["content_sha256"] == generate.REFERENCE_CONTENT_SHA256[name], name


@pytest.mark.slow
def test_same_settings_give_identical_files(tmp_path):
    first = generate.ensure_dataset(tmp_path / "a", "Patterns", **SMALL)
    second = generate.ensure_dataset(tmp_path / "b", "Patterns", **SMALL)
    files = all_files(first)
    assert files == all_files(second) and len(files) == 48 * 4 + 2
    _, mismatch, errors = filecmp.cmpfiles(first, second, files, shallow=False)
    assert mismatch == [] and errors == []


@pytest.mark.slow
def test_split_file_follows_coop_layout(tmp_path):
    dataset_dir = generate.ensure_dataset(tmp_path, "Shapes", split_sizes=(3, 2, 1))
    assert dataset_dir == osp.join(str(tmp_path), "shapes")
    with open(osp.join(dataset_dir, "split_zhou_Shapes.json")) as f:
        split = json.load(f)
    assert sorted(split) == ["test", "train", "val"]
    for part, per_class in (("train", 3), ("val", 2), ("test", 1)):
        assert len(split[part]) == 64 * per_class
        for path, label, classname in split[part]:
            assert classname == render.SHAPE_CLASSES[label]
            assert path.startswith(classname.replace(" ", "_") + "/")
            assert osp.isfile(osp.join(dataset_dir, "images", path))
    paths = [set(entry[0] for entry in split[part]) for part in ("train", "val", "test")]
    assert not (paths[0] & paths[1] or paths[0] & paths[2] or paths[1] & paths[2])


def test_labels_put_the_base_colours_first():
    base = render.SHAPE_CLASSES[:len(render.SHAPE_CLASSES) // 2]
    assert {name.split()[0] for name in base} == set(render.BASE_COLOURS)
    assert render.SHAPE_CLASSES[8 * 2 + 3] == "blue star"
    assert render.PATTERN_CLASSES[6 * 7 + 1] == "pink dots"


@pytest.mark.slow
def test_changed_settings_rebuild_and_unchanged_reuse(tmp_path):
    dataset_dir = generate.ensure_dataset(tmp_path, "ShapesSketch", **SMALL)
    image = osp.join(dataset_dir, "images", "red_circle", "0000.png")
    with open(image, "rb") as f:
        before = f.read()
    mtime = os.stat(image).st_mtime_ns
    assert generate.ensure_dataset(tmp_path, "ShapesSketch", **SMALL) == dataset_dir
    assert os.stat(image).st_mtime_ns == mtime  # reused, not rewritten

    generate.ensure_dataset(tmp_path, "ShapesSketch", cast=0.1, **SMALL)
    with open(image, "rb") as f:
        assert f.read() != before
    with open(osp.join(dataset_dir, "world.json")) as f:
        assert json.load(f)["settings"]["cast"] == 0.1


def test_generator_version_is_part_of_the_stamp(monkeypatch):
    before = generate.settings_hash(generate.dataset_settings("Shapes"))
    monkeypatch.setattr(generate, "GENERATOR_VERSION", generate.GENERATOR_VERSION + 1)
    assert generate.settings_hash(generate.dataset_settings("Shapes")) != before


@pytest.mark.slow
def test_interrupted_generation_leaves_nothing_to_read(tmp_path, monkeypatch):
    real_render = generate.render_image
    calls = []

    def failing_render(settings, label, index):
        calls.append(label)
        if len(calls) > 20:
            raise KeyboardInterrupt
        return real_render(settings, label, index)

    monkeypatch.setattr(generate, "render_image", failing_render)
    with pytest.raises(KeyboardInterrupt):
        generate.ensure_dataset(tmp_path, "Shapes", **SMALL)
    assert os.listdir(tmp_path) == []  # neither the dataset folder nor the temporary one

    monkeypatch.setattr(generate, "render_image", real_render)
    dataset_dir = generate.ensure_dataset(tmp_path, "Shapes", **SMALL)
    assert len(all_files(osp.join(dataset_dir, "images"))) == 64 * 4


@pytest.mark.slow
def test_folder_without_a_complete_stamp_is_rebuilt_or_refused(tmp_path):
    dataset_dir = generate.ensure_dataset(tmp_path, "Shapes", **SMALL)
    os.remove(osp.join(dataset_dir, "split_zhou_Shapes.json"))  # stamped but incomplete: ours, rebuilt
    generate.ensure_dataset(tmp_path, "Shapes", **SMALL)
    assert osp.isfile(osp.join(dataset_dir, "split_zhou_Shapes.json"))

    os.remove(osp.join(dataset_dir, "world.json"))  # no stamp: not ours, left alone
    with pytest.raises(UserError, match=f"{dataset_dir}: exists but was not made by the built-in world"):
        generate.ensure_dataset(tmp_path, "Shapes", **SMALL)


def test_unwritable_root_is_one_user_error_naming_it(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(UserError, match=f"{blocker}/data: cannot write the built-in dataset Patterns"):
        generate.ensure_dataset(blocker / "data", "Patterns", **SMALL)


@pytest.mark.slow
def test_readers_load_through_the_registry_like_coop_datasets(tmp_path, monkeypatch):
    for name in ("Shapes", "Patterns"):
        small = dataclasses.replace(generate.DATASETS[name], split_sizes=(4, 2, 1))
        monkeypatch.setitem(generate.DATASETS, name, small)
    monkeypatch.setenv("LLU_CACHE", str(tmp_path))  # the world's home: tmp_path/world
    cfg = get_cfg_default()
    cfg.DATASET.ROOT = ""  # no --root: the world's home, where it is generated on first use
    cfg.DATASET.NUM_SHOTS = 2
    cfg.DATASET.SUBSAMPLE_CLASSES = "base"
    cfg.SEED = 1
    cfg.DATASET.NAME = "Shapes"
    shapes = DATASET_REGISTRY.get("Shapes")(cfg)
    assert shapes.classnames == render.SHAPE_CLASSES[:32]
    assert len(shapes.train_x) == 32 * 2 and len(shapes.val) == 32 * 2 and len(shapes.test) == 32
    assert all(osp.isfile(item.impath) for item in shapes.train_x)
    assert osp.isfile(osp.join(str(tmp_path), "world", "shapes", "split_fewshot", "shot_2-seed_1.json"))

    cfg.DATASET.SUBSAMPLE_CLASSES = "new"
    new = DATASET_REGISTRY.get("Shapes")(cfg)
    assert new.classnames == render.SHAPE_CLASSES[32:]
    assert {item.label for item in new.test} == set(range(32))  # relabelled from 0, as in CoOp

    cfg.DATASET.SUBSAMPLE_CLASSES = "all"
    cfg.DATASET.NUM_SHOTS = -1
    patterns = DATASET_REGISTRY.get("Patterns")(cfg)
    assert patterns.classnames == render.PATTERN_CLASSES and len(patterns.train_x) == 48 * 4


def test_every_dataset_has_a_config_file():
    repo = osp.dirname(osp.dirname(osp.abspath(__file__)))
    for name, spec in generate.DATASETS.items():
        with open(osp.join(repo, "configs", "datasets", f"{spec.folder}.yaml")) as f:
            assert f'NAME: "{name}"' in f.read()


# ---------------------------------------------------------------------------------------------
# ToyCLIP

@pytest.fixture(scope="module")
def tiny_toyclip(tmp_path_factory):
    """A ToyCLIP pretrained for two steps, saved in the shipped format (same code path as the real one)."""
    path = str(tmp_path_factory.mktemp("toyclip") / "tiny.npz")
    settings = toyclip.pretrain_settings(**TINY_PRETRAINING)
    state_dict = toyclip.pretrain_toy_clip(settings, log=lambda _: None)
    toyclip.save_weights(state_dict, path, dict(seed=settings["seed"], settings_hash="tiny"))
    return path, state_dict


def test_pretraining_covers_every_class_of_every_dataset():
    names = set(toyclip.all_class_names())
    for spec in generate.DATASETS.values():
        assert set(render.class_names(spec.kind)) <= names


@pytest.mark.slow
def test_weights_round_trip_through_clip_build_model(tiny_toyclip):
    import clip.model
    path, pretrained = tiny_toyclip
    state_dict = toyclip.read_weights(path)
    assert set(state_dict) == set(pretrained)
    assert all(torch.equal(state_dict[k], pretrained[k]) for k in pretrained)  # the file loses nothing
    model = clip.model.build_model(dict(state_dict)).float()
    assert model.context_length == toyclip.TOYCLIP_DIMS["context_length"]
    assert model.visual.input_resolution == toyclip.TOYCLIP_DIMS["image_resolution"]
    rebuilt = model.state_dict()
    assert set(rebuilt) == set(state_dict)
    for key, value in state_dict.items():  # build_model stores weight matrices as fp16: equal up to that
        assert torch.equal(rebuilt[key], value) or torch.equal(rebuilt[key], value.half().float()), key


def test_weights_file_bytes_depend_on_the_weights_only(tiny_toyclip, tmp_path):
    path, state_dict = tiny_toyclip
    again = str(tmp_path / "again.npz")
    toyclip.save_weights(state_dict, again, dict(seed=0, settings_hash="tiny"))
    with open(path, "rb") as a, open(again, "rb") as b:
        assert a.read() == b.read()


def test_shipped_weights_are_checked_and_come_from_this_code():
    path = toyclip.weights_file()
    metadata = toyclip.read_metadata(path)
    # Changing the renderer, the captions or a pretraining setting changes this hash: then rebuild
    # and ship new weights (python -m llu.world.toyclip rebuild).
    assert metadata["settings_hash"] == toyclip.settings_hash(toyclip.pretrain_settings())
    assert metadata["pretrain_version"] == toyclip.PRETRAIN_VERSION


def test_a_modified_shipped_file_is_one_user_error(tmp_path, monkeypatch):
    with open(toyclip.SHIPPED_FILE, "rb") as f:
        content = f.read()
    copy = tmp_path / "toyclip-v3.npz"
    copy.write_bytes(content[:len(content) // 2])  # a partial copy
    monkeypatch.setattr(toyclip, "SHIPPED_FILE", str(copy))
    with pytest.raises(UserError, match=f"{copy}: sha256 .* differs from the shipped"):
        toyclip.weights_file()
    with pytest.raises(UserError, match=f"{copy}: not a ToyCLIP weights file"):
        toyclip.read_weights(str(copy))


def test_a_weights_file_holding_objects_is_refused_without_unpickling(tmp_path, tiny_toyclip):
    path = str(tmp_path / "evil.npz")
    np.savez(path, metadata=np.array([{"seed": 0}], dtype=object))
    with pytest.raises(UserError, match="not a ToyCLIP weights file"):
        toyclip.read_weights(path)


@pytest.mark.slow
def test_pretraining_is_deterministic_and_leaves_global_state_alone():
    threads = torch.get_num_threads()
    rng_state = torch.get_rng_state()
    settings = toyclip.pretrain_settings(**TINY_PRETRAINING)
    first = toyclip.pretrain_toy_clip(settings, log=lambda _: None)
    second = toyclip.pretrain_toy_clip(settings, log=lambda _: None)
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert torch.get_num_threads() == threads and torch.equal(torch.get_rng_state(), rng_state)


@pytest.mark.slow
def test_pretraining_trains_the_caption_token_embeddings_only():
    import clip
    settings = toyclip.pretrain_settings(**TINY_PRETRAINING)
    trained = toyclip.pretrain_toy_clip(settings, log=lambda _: None)["token_embedding.weight"]
    initial = toyclip.portable_token_embedding(settings["seed"])
    in_captions = torch.zeros(len(initial), dtype=torch.bool)
    in_captions[toyclip.caption_vocabulary()] = True
    changed = (trained != initial).any(dim=1)
    assert not changed[~in_captions].any()  # as full-vocabulary training would leave them
    assert changed[clip.tokenize(["red zigzag"])[0, 1:4]].all()


def test_the_portable_token_embedding_has_clips_scale():
    embedding = toyclip.portable_token_embedding(0)
    assert embedding.shape == (49408, 64) and embedding.dtype == torch.float32
    assert abs(embedding.std().item() - toyclip.TOKEN_EMBEDDING_STD) < 1e-4
    assert torch.equal(embedding, toyclip.portable_token_embedding(0))
    assert not torch.equal(embedding, toyclip.portable_token_embedding(1))


def test_captions_name_the_conditions_an_image_was_drawn_under():
    conditions = render.PretrainConditions(light="blue", background=True, clutter=True, small=True)
    text = toyclip.caption("red circle", conditions, "a photo of a {}.", np.random.default_rng(0))
    assert text.startswith("a photo of a small red circle ") and text.endswith(".")
    for phrase in ("in blue light", toyclip.BACKGROUND_PHRASE, toyclip.CLUTTER_PHRASE):
        assert phrase in text
    plain = toyclip.caption("red circle", render.NO_CONDITIONS, "a photo of a {}.", np.random.default_rng(0))
    assert plain == "a photo of a red circle."


def test_every_caption_token_is_in_the_pretraining_vocabulary():
    vocabulary = toyclip.caption_vocabulary()
    rng = np.random.default_rng(0)
    captions = [toyclip.random_caption(name, render.PretrainConditions.sample(rng, 1.0), rng)
                for name in toyclip.all_class_names()]
    ids = toyclip.tokenise_captions(captions, vocabulary)
    assert ids.max() == len(vocabulary) - 1  # the end-of-text token keeps the largest id
    with pytest.raises(ValueError, match="outside"):
        toyclip.tokenise_captions(["a photo of a red giraffe."], vocabulary)


def test_pretraining_conditions_change_the_drawing_and_only_in_pretraining():
    def draw(**conditions):
        image = render.render("shapes", 0, "pretrain", np.random.default_rng(3),
                              conditions=render.PretrainConditions(**conditions))
        return image.astype(float)

    plain = draw()
    assert draw(light="blue")[..., 0].mean() < plain[..., 0].mean()  # a red circle under blue light
    assert draw(background=True).mean() > plain.mean()  # a lit background instead of near-black
    assert (draw(small=True).max(axis=2) > 100).sum() < (plain.max(axis=2) > 100).sum()
    with pytest.raises(ValueError, match="pretraining"):
        render.render("shapes", 0, "downstream", np.random.default_rng(3), level=0.3,
                      conditions=render.PretrainConditions(small=True))
