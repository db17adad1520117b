"""The shared CLIP module: loading, text encoding over embeddings, and the feature cache."""
import os

import pytest
import torch
import torch.nn.functional as F
from numerics import assert_close

from llu.engine import Datum, extend_cfg, get_cfg_default
from llu.utils import UserError
from llu.engine.data import build_transform
from llu.trainers import clip_common
from llu.trainers.clip_common import FeatureCache, TextEncoder, encode_texts, load_clip, tokenize


def test_load_clip_from_state_dict_file_is_frozen_fp32(tiny_clip_file):
    model = load_clip(tiny_clip_file, "cpu", prec="fp16")
    assert model.dtype == torch.float32
    assert not any(p.requires_grad for p in model.parameters())
    assert model.visual.input_resolution == 32 and model.context_length == 16
    assert model.weights_id == load_clip(tiny_clip_file).weights_id


def test_load_clip_reads_a_torchscript_archive(tiny_clip_file, tmp_path):
    model = load_clip(tiny_clip_file)
    image = torch.zeros(1, 3, 32, 32)
    text = tokenize(["a photo of a dog."], model)
    scripted = torch.jit.trace(model, (image, text), check_trace=False)
    path = tmp_path / "scripted.pt"
    torch.jit.save(scripted, str(path))
    loaded = load_clip(str(path))
    assert torch.allclose(loaded.encode_text(text), model.encode_text(text), atol=1e-3)


def test_text_encoder_over_token_embeddings_matches_encode_text(tiny_clip_file):
    model = load_clip(tiny_clip_file)
    tokens = tokenize(["a photo of a red circle.", "blue dots"], model)
    embeddings = model.token_embedding(tokens).type(model.dtype)
    assert_close(TextEncoder(model)(embeddings, tokens), model.encode_text(tokens))
    assert_close(encode_texts(model, ["blue dots"]), F.normalize(model.encode_text(tokens[1:]), dim=-1))


def test_too_long_prompt_is_a_user_error(tiny_clip_file):
    model = load_clip(tiny_clip_file)
    with pytest.raises(UserError, match="context length 16"):
        tokenize(["word " * 40], model)


@pytest.fixture
def cache_setup(image_folder, tiny_clip_file, tmp_path):
    cfg = extend_cfg(get_cfg_default())
    cfg.INPUT.SIZE = (32, 32)
    cfg.FEATURES.CACHE_DIR = str(tmp_path / "features")
    data = []
    for label, name in enumerate(sorted(os.listdir(image_folder))):
        for f in sorted(os.listdir(os.path.join(image_folder, name)))[:2]:
            data.append(Datum(impath=os.path.join(image_folder, name, f), label=label, classname=name))
    return cfg, load_clip(tiny_clip_file), data


def test_cache_second_get_runs_no_encoder_pass(cache_setup):
    cfg, model, data = cache_setup
    transform = build_transform(cfg, is_train=False)
    first = FeatureCache(cfg, model, "cpu")
    features, labels = first.get(data, transform)
    assert first.encoder_passes == len(data)
    second = FeatureCache(cfg, model, "cpu")
    again, labels_again = second.get(data, transform)
    assert second.encoder_passes == 0
    assert torch.equal(features, again) and torch.equal(labels, labels_again)
    assert torch.allclose(features.norm(dim=-1), torch.ones(len(data)))


def test_cache_rebuilds_when_inputs_change_or_file_is_corrupt(cache_setup):
    cfg, model, data = cache_setup
    test_tf, train_tf = build_transform(cfg, is_train=False), build_transform(cfg, is_train=True)
    cache = FeatureCache(cfg, model, "cpu")
    cache.get(data, test_tf)
    for changed in [(data[:-1], test_tf, 0), (data, train_tf, 1), (data, train_tf, 2)]:
        before = cache.encoder_passes
        cache.get(*changed)
        assert cache.encoder_passes == before + len(changed[0])
    path = os.path.join(cfg.FEATURES.CACHE_DIR, cache.key(data, test_tf, 0) + ".pt")
    with open(path, "wb") as f:
        f.write(b"PK\x03\x04 half-written")
    before = cache.encoder_passes
    cache.get(data, test_tf)
    assert cache.encoder_passes == before + len(data)


def test_augmented_views_are_deterministic_and_differ(cache_setup, tmp_path):
    cfg, model, data = cache_setup
    train_tf = build_transform(cfg, is_train=True)
    view1, _ = FeatureCache(cfg, model, "cpu").get(data, train_tf, view=1)
    cfg.FEATURES.CACHE_DIR = str(tmp_path / "elsewhere")
    torch.manual_seed(123)  # the global stream must not matter
    view1_again, _ = FeatureCache(cfg, model, "cpu").get(data, train_tf, view=1)
    view2, _ = FeatureCache(cfg, model, "cpu").get(data, train_tf, view=2)
    assert torch.equal(view1, view1_again)
    assert not torch.allclose(view1, view2)


def test_openai_names_resolve_to_the_clip_cache_file(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIP_DOWNLOAD_ROOT", str(tmp_path))
    (tmp_path / "ViT-B-16.pt").write_bytes(b"x")
    assert clip_common.resolve_weights("ViT-B/16") == str(tmp_path / "ViT-B-16.pt")


def test_filling_the_cache_leaves_the_global_random_stream_alone(cache_setup):
    cfg, model, data = cache_setup
    torch.manual_seed(0)
    FeatureCache(cfg, model, "cpu").get(data, build_transform(cfg, is_train=True), view=1)
    after_extraction = torch.rand(3)
    torch.manual_seed(0)
    assert torch.equal(torch.rand(3), after_extraction)
