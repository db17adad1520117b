"""The shared CLIP module: loading, text encoding over embeddings, and the feature cache."""
import os
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from numerics import assert_close

from llu.engine import Datum, build_transform, extend_cfg, get_cfg_default
from llu.trainers import feature_cache
from llu.backbones import load_backbone, openai
from llu.trainers.feature_cache import FeatureCache
from llu.utils import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_load_clip_from_state_dict_file_is_frozen_fp32(tiny_clip_file):
    model = load_backbone(tiny_clip_file, "cpu", prec="fp16")
    assert model.dtype == torch.float32
    assert not any(p.requires_grad for p in model.parameters())
    assert model.preprocess.size == (32, 32) and model.context_length == 16 and model.embed_dim == 32
    assert model.weights_id == load_backbone(tiny_clip_file).weights_id


def test_load_clip_reads_a_torchscript_archive(tiny_clip_file, tmp_path):
    model = load_backbone(tiny_clip_file)
    image = torch.zeros(1, 3, 32, 32)
    text = model.tokenize(["a photo of a dog."])
    scripted = torch.jit.trace(model.model, (image, text), check_trace=False)  # OpenAI's own format
    path = tmp_path / "scripted.pt"
    torch.jit.save(scripted, str(path))
    loaded = load_backbone(str(path))
    assert torch.allclose(loaded.encode_text(text), model.encode_text(text), atol=1e-3)


def test_text_encoder_over_token_embeddings_matches_encode_text(tiny_clip_file):
    model = load_backbone(tiny_clip_file)
    tokens = model.tokenize(["a photo of a red circle.", "blue dots"])
    embeddings = model.token_embedding(tokens).type(model.dtype)
    assert torch.equal(model.encode_prompts(embeddings, tokens), model.encode_text(tokens))
    assert_close(model.encode_texts(["blue dots"]), F.normalize(model.encode_text(tokens[1:]), dim=-1))


def test_prompt_embeddings_replace_the_token_embeddings_and_take_the_gradient(tiny_clip_file):
    model = load_backbone(tiny_clip_file)
    tokens = model.tokenize(["a photo of a red circle."])
    embeddings = model.token_embedding(tokens).type(model.dtype).clone().requires_grad_(True)
    shifted = embeddings.detach().clone()
    shifted[0, 2] = torch.randn(shifted.shape[-1], generator=torch.Generator().manual_seed(0))  # another "photo"
    assert not torch.allclose(model.encode_prompts(shifted, tokens), model.encode_text(tokens))
    model.encode_prompts(embeddings, tokens).sum().backward()
    assert embeddings.grad is not None and embeddings.grad[0, 2].abs().sum() > 0
    assert embeddings.grad[0, tokens[0].argmax() + 1:].abs().sum() == 0  # after the end token: causal mask
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(model.encode_text(tokens), model.encode_text(tokens))  # the replacement is gone


def test_too_long_prompt_is_a_user_error(tiny_clip_file):
    model = load_backbone(tiny_clip_file)
    with pytest.raises(UserError, match="context length 16"):
        model.tokenize(["word " * 40])


@pytest.fixture
def cache_setup(image_folder, tiny_clip_file, tmp_path):
    cfg = extend_cfg(get_cfg_default())
    cfg.INPUT.SIZE = (32, 32)
    cfg.FEATURES.CACHE_DIR = str(tmp_path / "features")
    data = []
    for label, name in enumerate(sorted(os.listdir(image_folder))):
        for f in sorted(os.listdir(os.path.join(image_folder, name)))[:2]:
            data.append(Datum(impath=os.path.join(image_folder, name, f), label=label, classname=name))
    return cfg, load_backbone(tiny_clip_file), data


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


def test_features_cached_under_other_cpu_kernels_are_not_served(cache_setup, monkeypatch):
    cfg, model, data = cache_setup
    transform = build_transform(cfg, is_train=False)
    FeatureCache(cfg, model, "cpu").get(data, transform)
    other = torch.backends.cpu.get_cpu_capability() + "-other"  # as ATEN_CPU_CAPABILITY would choose
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: other)
    elsewhere = FeatureCache(cfg, model, "cpu")
    elsewhere.get(data, transform)
    assert elsewhere.encoder_passes == len(data)


def test_each_image_is_encoded_once_whatever_list_it_comes_in(cache_setup):
    cfg, model, data = cache_setup
    test_tf, train_tf = build_transform(cfg, is_train=False), build_transform(cfg, is_train=True)
    cache = FeatureCache(cfg, model, "cpu")
    full, _ = cache.get(data[:6], test_tf)
    for request, encoded in [(data[:3], 0), (data[2:8], 2), (data, 0), (data, len(data))]:
        view = 1 if encoded == len(data) else 0
        before = cache.encoder_passes
        features, labels = cache.get(request, train_tf if view else test_tf, view)
        assert cache.encoder_passes == before + encoded
        assert labels.tolist() == [item.label for item in request]
    assert torch.equal(cache.get(data[:6], test_tf)[0], full)


def test_an_images_features_do_not_depend_on_the_list_that_asked_for_them(cache_setup, tmp_path):
    """Kernels are chosen by the batch's shape (one image alone can give other bits than in a batch of
    many): an image's cached features must be the same whichever run, list or order encoded them."""
    cfg, model, data = cache_setup
    transform = build_transform(cfg, is_train=False)
    cfg.FEATURES.BATCH_SIZE = 5
    together, _ = FeatureCache(cfg, model, "cpu").get(data, transform)  # batches of 5, 3 left over
    for i, item in enumerate(data):
        cfg.FEATURES.CACHE_DIR = str(tmp_path / f"alone{i}")
        alone, _ = FeatureCache(cfg, model, "cpu").get([item], transform)  # a batch of one, padded
        assert torch.equal(alone[0], together[i]), item.impath
    with torch.no_grad():  # what the padding is for: on its own, a batch of one may come out otherwise
        assert torch.equal(FeatureCache(cfg, model, "cpu").encode_full_batch(
            torch.stack([transform(Image.open(data[0].impath)) for _ in range(2)])[:1])[0], together[0])


def test_a_changed_image_file_is_encoded_again(cache_setup):
    cfg, model, data = cache_setup
    transform = build_transform(cfg, is_train=False)
    cache = FeatureCache(cfg, model, "cpu")
    cache.get(data, transform)
    os.utime(data[0].impath, ns=(0, os.stat(data[0].impath).st_mtime_ns + 10**9))
    before = cache.encoder_passes
    cache.get(data, transform)
    assert cache.encoder_passes == before + 1


def shards(folder):
    return sorted(os.path.join(d, f[:-3]) for d, _, fs in os.walk(folder) for f in fs if f.endswith(".pt"))


@pytest.mark.parametrize("damage", ["truncated", "width", "nan", "count", "dtype"])
def test_a_damaged_shard_is_removed_and_its_images_encoded_again(cache_setup, damage, capsys):
    cfg, model, data = cache_setup
    transform = build_transform(cfg, is_train=False)
    expected, _ = FeatureCache(cfg, model, "cpu").get(data, transform)
    shard, = shards(cfg.FEATURES.CACHE_DIR)
    if damage == "truncated":
        with open(shard + ".pt", "wb") as f:
            f.write(b"PK\x03\x04 half-written")
    else:
        bad = {"width": expected[:, :-1], "nan": expected.clone().fill_(float("nan")), "count": expected[:-1],
               "dtype": expected.double()}[damage]
        torch.save(bad, shard + ".pt")
    cache = FeatureCache(cfg, model, "cpu")
    features, _ = cache.get(data, transform)
    assert cache.encoder_passes == len(data) and torch.equal(features, expected)
    assert "unusable" in capsys.readouterr().out
    assert shard not in shards(cfg.FEATURES.CACHE_DIR)


@pytest.mark.slow
def test_the_cache_is_shared_between_processes(cache_setup, tmp_path):
    """The key must not hold anything that changes per process (it once held a function's address)."""
    cfg, model, data = cache_setup
    script = f"""
import sys; sys.path.insert(0, {REPO!r})
from llu.engine import Datum, extend_cfg, get_cfg_default
from llu.engine.data import build_transform
from llu.backbones import load_backbone
from llu.trainers.feature_cache import FeatureCache
cfg = extend_cfg(get_cfg_default())
cfg.INPUT.SIZE = (32, 32)
cfg.FEATURES.CACHE_DIR = {cfg.FEATURES.CACHE_DIR!r}
data = [Datum(impath=p, label=0) for p in {[item.impath for item in data]!r}]
cache = FeatureCache(cfg, load_backbone({model.backbone_name!r}), "cpu")
cache.get(data, build_transform(cfg, is_train=True), view=1)
print(cache.encoder_passes)
"""
    passes = []
    for _ in range(2):
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                              env=dict(os.environ, OMP_NUM_THREADS="1"))
        assert done.returncode == 0, done.stderr
        passes.append(done.stdout.split()[-1])
    assert passes == [str(len(data)), "0"]


def test_stale_temporary_files_are_removed_and_fresh_ones_kept(cache_setup):
    cfg, model, data = cache_setup
    transform = build_transform(cfg, is_train=False)
    cache = FeatureCache(cfg, model, "cpu")
    cache.get(data, transform)
    folder = os.path.dirname(shards(cfg.FEATURES.CACHE_DIR)[0])
    stale, fresh = os.path.join(folder, ".x.pt.1.tmp"), os.path.join(folder, ".y.pt.2.tmp")
    for path in (stale, fresh):
        open(path, "w").close()
    os.utime(stale, (0, time.time() - 2 * 86400))
    cache.get(data, transform)
    assert not os.path.exists(stale) and os.path.exists(fresh)


def test_the_cache_keeps_to_its_size_bound_and_can_be_listed_and_cleared(cache_setup, capsys):
    cfg, model, data = cache_setup
    test_tf, train_tf = build_transform(cfg, is_train=False), build_transform(cfg, is_train=True)
    FeatureCache(cfg, model, "cpu").get(data, test_tf)
    first = os.path.dirname(shards(cfg.FEATURES.CACHE_DIR)[0])
    os.utime(first, (1, 1))  # used long ago
    cfg.FEATURES.CACHE_MAX_GB = 1e-9  # 1 byte: only the namespace in use may stay
    FeatureCache(cfg, model, "cpu").get(data, train_tf, view=1)
    remaining = {os.path.dirname(s) for s in shards(cfg.FEATURES.CACHE_DIR)}
    assert first not in remaining and len(remaining) == 1
    feature_cache.main(["list", "--dir", cfg.FEATURES.CACHE_DIR])
    assert "1 namespace(s)" in capsys.readouterr().out
    feature_cache.main(["clear", "--dir", cfg.FEATURES.CACHE_DIR])
    assert shards(cfg.FEATURES.CACHE_DIR) == []


def test_augmented_views_are_deterministic_and_differ(cache_setup, tmp_path):
    cfg, model, data = cache_setup
    train_tf = build_transform(cfg, is_train=True)
    view1, _ = FeatureCache(cfg, model, "cpu").get(data, train_tf, view=1)
    cfg.FEATURES.CACHE_DIR = str(tmp_path / "elsewhere")
    torch.manual_seed(123)  # the global stream must not matter
    view1_again, _ = FeatureCache(cfg, model, "cpu").get(data[::-1], train_tf, view=1)  # nor the list order
    view2, _ = FeatureCache(cfg, model, "cpu").get(data, train_tf, view=2)
    assert torch.equal(view1, view1_again.flip(0))
    assert not torch.allclose(view1, view2)


def test_views_encoded_together_are_the_views_encoded_one_at_a_time(cache_setup, tmp_path):
    # get_views fills the encoder's batches across views (no padded batch per view); an image's
    # features must come out the same bits as when its view is encoded alone.
    cfg, model, data = cache_setup
    cfg.FEATURES.BATCH_SIZE = 4  # batches that straddle views
    train_tf = build_transform(cfg, is_train=True)
    together_cache = FeatureCache(cfg, model, "cpu")
    together = together_cache.get_views(data, train_tf, [1, 2, 3])
    assert together_cache.encoder_passes == 3 * len(data)
    together_dir = cfg.FEATURES.CACHE_DIR
    cfg.FEATURES.CACHE_DIR = str(tmp_path / "one_at_a_time")
    for view, (features, labels) in zip([1, 2, 3], together):
        alone, alone_labels = FeatureCache(cfg, model, "cpu").get(data, train_tf, view=view)
        assert torch.equal(features, alone) and torch.equal(labels, alone_labels)
    cfg.FEATURES.CACHE_DIR = together_dir
    more = FeatureCache(cfg, model, "cpu")
    _, view3, view4 = more.get_views(data, train_tf, [2, 3, 4])
    assert more.encoder_passes == len(data)  # only view 4 was missing
    assert torch.equal(view3[0], together[2][0])


def test_openai_names_resolve_to_the_clip_cache_file(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIP_DOWNLOAD_ROOT", str(tmp_path))
    (tmp_path / "ViT-B-16.pt").write_bytes(b"x")
    assert openai.resolve_weights("ViT-B/16") == str(tmp_path / "ViT-B-16.pt")


def test_filling_the_cache_leaves_the_global_random_stream_alone(cache_setup):
    cfg, model, data = cache_setup
    torch.manual_seed(0)
    FeatureCache(cfg, model, "cpu").get(data, build_transform(cfg, is_train=True), view=1)
    after_extraction = torch.rand(3)
    torch.manual_seed(0)
    assert torch.equal(torch.rand(3), after_extraction)


def old_extraction(cache, data, transform):
    """How the cache encoded images before decoding moved to workers (issue 24): each image read and
    transformed in this process, in order, in batches of FEATURES.BATCH_SIZE (the last one padded)."""
    from llu.engine import read_image
    size = cache.cfg.FEATURES.BATCH_SIZE
    pixels = torch.stack([transform(read_image(item.impath)) for item in data])
    with torch.no_grad():
        return torch.cat([cache.encode_full_batch(pixels[i:i + size]) for i in range(0, len(data), size)])


@pytest.mark.slow
def test_features_decoded_in_workers_are_the_old_paths_bits_on_the_builtin_world(shapes_world, tmp_path, monkeypatch):
    from llu.world import generate
    folder = generate.ensure_dataset(shapes_world, "Shapes")
    paths = sorted(p for p in (os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs) if p.endswith(".png"))
    data = [Datum(impath=path, label=0) for path in paths[:40]]
    from llu.trainers.clip_common import match_preprocessing
    model = load_backbone("toy")
    cfg = extend_cfg(get_cfg_default())
    match_preprocessing(cfg, model)
    cfg.FEATURES.CACHE_DIR, cfg.FEATURES.BATCH_SIZE, cfg.DATALOADER.NUM_WORKERS = str(tmp_path), 16, 2
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)  # room for 2 workers
    assert feature_cache.decoding_workers(cfg) == 2
    cache = FeatureCache(cfg, model, "cpu")
    features, _ = cache.get(data, build_transform(cfg, is_train=False))  # chunks of 8 from 2 workers, 2.5 batches
    assert torch.equal(features, old_extraction(cache, data, build_transform(cfg, is_train=False)))


def test_augmented_views_decoded_in_a_worker_are_those_decoded_here(cache_setup, tmp_path, monkeypatch):
    cfg, model, data = cache_setup
    cfg.FEATURES.BATCH_SIZE = 4
    train_tf = build_transform(cfg, is_train=True)
    here = FeatureCache(cfg, model, "cpu").get_views(data, train_tf, [1, 2])
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    cfg.FEATURES.CACHE_DIR, cfg.DATALOADER.NUM_WORKERS = str(tmp_path / "workers"), 1
    in_worker = FeatureCache(cfg, model, "cpu").get_views(data, train_tf, [1, 2])
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(here, in_worker))


def test_decoding_workers_leave_the_encoder_a_core(cache_setup, monkeypatch):
    cfg = cache_setup[0]
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    for asked, given in ((8, 1), (1, 1), (0, 0)):
        cfg.DATALOADER.NUM_WORKERS = asked
        assert feature_cache.decoding_workers(cfg) == given
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    cfg.DATALOADER.NUM_WORKERS = 8
    assert feature_cache.decoding_workers(cfg) == 0


def test_an_unreadable_image_in_a_worker_is_one_line_naming_it(cache_setup, tmp_path, monkeypatch):
    cfg, model, data = cache_setup
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(open(data[0].impath, "rb").read()[:100])
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    cfg.DATALOADER.NUM_WORKERS = 1
    with pytest.raises(UserError) as error:
        FeatureCache(cfg, model, "cpu").get(data + [Datum(impath=str(broken), label=0)], build_transform(cfg, False))
    assert str(error.value).startswith(f"{broken}: cannot be read as an image") and "\n" not in str(error.value)
