"""Backbones beyond OpenAI's format, on small random models the tests build (nothing downloaded):
OpenCLIP (a model config JSON + an open_clip state dict), Hugging Face CLIP and SigLIP folders
(save_pretrained), and datasets of precomputed embeddings."""
import gzip
import hashlib
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from numerics import assert_close

from llu.backbones import load_backbone
from llu.trainers.coop import PromptLearner
from llu.utils import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_OPENCLIP = {"embed_dim": 32,
                 "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 8},
                 "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 1}}
TINY_TOWERS = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=1)


@pytest.fixture(scope="module")
def openclip_files(tmp_path_factory):
    """(model config JSON, open_clip state dict file) of a tiny random OpenCLIP model."""
    import open_clip
    folder = tmp_path_factory.mktemp("openclip")
    config = folder / "tiny-openclip.json"
    config.write_text(json.dumps(TINY_OPENCLIP))
    open_clip.add_model_config(str(config))
    torch.manual_seed(0)
    model = open_clip.create_model("tiny-openclip")
    torch.save(model.state_dict(), folder / "tiny-openclip.bin")
    return str(config), str(folder / "tiny-openclip.bin")


def clip_bpe_tokenizer(folder):
    """Hugging Face's CLIPTokenizer over CLIP's own BPE vocabulary (the one the clip package ships)."""
    import clip.simple_tokenizer as simple
    from transformers import CLIPTokenizer
    lines = gzip.open(simple.default_bpe()).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    merges = [tuple(line.split()) for line in lines]
    vocab = list(simple.bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token="<|endoftext|>")


@pytest.fixture(scope="module")
def hf_folders(tmp_path_factory):
    """{"clip": folder, "siglip": folder} of tiny random Hugging Face models saved with save_pretrained."""
    from transformers import (CLIPConfig, CLIPImageProcessor, CLIPModel, SiglipConfig, SiglipImageProcessor,
                              SiglipModel)
    folders = {}
    tokenizer = clip_bpe_tokenizer(tmp_path_factory.mktemp("bpe"))
    text = dict(vocab_size=49408, max_position_embeddings=16, bos_token_id=49406, eos_token_id=49407,
                pad_token_id=49407, **TINY_TOWERS)
    vision = dict(image_size=32, patch_size=8, **TINY_TOWERS)
    torch.manual_seed(0)
    for name, model, processor in (
            ("clip", CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=32)),
             CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})),
            ("siglip", SiglipModel(SiglipConfig(text_config=text, vision_config=vision)),
             SiglipImageProcessor(size={"height": 32, "width": 32}))):
        folder = tmp_path_factory.mktemp(name)
        if name == "siglip":
            with torch.no_grad():
                model.logit_bias.fill_(-3.0)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        processor.save_pretrained(folder)
        folders[name] = str(folder)
    return folders


def openclip_backbone(openclip_files):
    config, weights = openclip_files
    return load_backbone(f"openclip:{config}", weights=weights)


# ---------------------------------------------------------------------------------------------
# Each backbone encodes as its own library does

def assert_encodes_as_the_tiny_openclip(backbone, weights):
    """``backbone``'s features are open_clip's own of the tiny model with ``weights``; returns that model."""
    import open_clip
    reference = open_clip.create_model("tiny-openclip", pretrained=weights).eval()
    texts = ["a photo of a red circle.", "blue dots"]
    tokens = open_clip.get_tokenizer("tiny-openclip")(texts)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert_close(backbone.encode_texts(texts), reference.encode_text(tokens, normalize=True))
        assert_close(backbone.encode_images(images), reference.encode_image(images, normalize=True))
    return reference


def test_openclip_encodes_as_open_clip_does(openclip_files):
    backbone = openclip_backbone(openclip_files)
    reference = assert_encodes_as_the_tiny_openclip(backbone, openclip_files[1])
    assert torch.equal(backbone.logit_scale, reference.logit_scale)
    assert backbone.embed_dim == 32 and backbone.context_length == 16 and backbone.preprocess.size == (32, 32)
    assert not any(p.requires_grad for p in backbone.parameters())


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_hugging_face_models_encode_as_transformers_does(hf_folders, kind):
    from transformers import AutoModel, AutoTokenizer
    backbone = load_backbone(f"hf:{hf_folders[kind]}")
    reference = AutoModel.from_pretrained(hf_folders[kind]).eval()
    texts = ["a photo of a red circle.", "blue dots"]
    ids = AutoTokenizer.from_pretrained(hf_folders[kind])(texts, padding="max_length", max_length=16,
                                                           return_tensors="pt")["input_ids"]
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        output = reference(input_ids=ids, pixel_values=images)
        assert_close(backbone.encode_texts(texts), F.normalize(output.text_embeds, dim=-1))
        assert_close(backbone.encode_images(images), F.normalize(output.image_embeds, dim=-1))
    assert torch.equal(backbone.logit_scale, reference.logit_scale.reshape(()))
    assert (backbone.logit_bias is not None) == (kind == "siglip")


def test_siglip_bias_changes_no_prediction(hf_folders):
    """SigLIP scores pairs by sigmoid(scale cos + bias); the classes' softmax of scale cos ranks them alike."""
    from transformers import AutoModel, AutoTokenizer
    backbone = load_backbone(f"hf:{hf_folders['siglip']}")
    reference = AutoModel.from_pretrained(hf_folders["siglip"]).eval()
    names = ["red circle", "blue dots", "green star"]
    ids = AutoTokenizer.from_pretrained(hf_folders["siglip"])([f"a photo of a {n}." for n in names],
                                                               padding="max_length", max_length=16,
                                                               return_tensors="pt")["input_ids"]
    images = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        pair_scores = torch.sigmoid(reference(input_ids=ids, pixel_values=images).logits_per_image)
        ours = backbone.logit_scale.exp() * backbone.encode_images(images) @ \
            backbone.class_text_features(names, ["a photo of a {}."]).t()
    assert torch.equal(ours.argmax(1), pair_scores.argmax(1))


def test_image_preprocessing_is_the_models(hf_folders, openclip_files):
    assert load_backbone(f"hf:{hf_folders['siglip']}").preprocess.resize_mode == "squash"  # SigLIP: whole image
    clip_pre = load_backbone(f"hf:{hf_folders['clip']}").preprocess
    assert (clip_pre.size, clip_pre.resize_mode, clip_pre.interpolation) == ((32, 32), "shortest", "bicubic")
    assert openclip_backbone(openclip_files).preprocess.mean == (0.48145466, 0.4578275, 0.40821073)


# ---------------------------------------------------------------------------------------------
# Prompt learners: on CLIP text towers, refused elsewhere

@pytest.mark.parametrize("which", ["openclip", "hf"])
def test_word_initialised_prompts_encode_like_the_written_sentence(which, openclip_files, hf_folders):
    backbone = openclip_backbone(openclip_files) if which == "openclip" else load_backbone(f"hf:{hf_folders['clip']}")
    learner = PromptLearner(backbone, ["blue", "dark_green"], n_ctx=4, ctx_init="a photo of a")
    with torch.no_grad():
        features = backbone.encode_prompts(learner(), learner.tokenized_prompts)
        expected = backbone.encode_text(backbone.tokenize(["a photo of a blue.", "a photo of a dark green."]))
    assert_close(features, expected)


def test_prompt_learners_are_refused_on_siglip_with_one_line(hf_folders):
    with pytest.raises(UserError, match="prompt learners .* cannot run on MODEL.BACKBONE.NAME hf:.*SigLIP"):
        PromptLearner(load_backbone(f"hf:{hf_folders['siglip']}"), ["blue"], n_ctx=4)


# ---------------------------------------------------------------------------------------------
# Through train.py

def run_train(root, out, backbone, *opts, trainer="LLU", config="configs/trainers/LLU/vit_b16.yaml", data=None,
              cache=None, flags=()):
    data = data or ["--dataset-config-file", "configs/datasets/imagefolder.yaml"]
    args = [sys.executable, "train.py", "--root", str(root), "--trainer", trainer, *data, "--config-file", config,
            "--backbone", backbone, "--output-dir", str(out), "--seed", "1", *flags, "DATASET.NUM_SHOTS", "2",
            "OPTIM.MAX_EPOCH", "2", "FEATURES.AUG_VIEWS", "1", *opts]
    env = dict(os.environ, OMP_NUM_THREADS="1", LLU_CACHE=str(cache or (out.parent / "cache")))
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("which", ["openclip", "hf_clip", "hf_siglip"])
@pytest.mark.slow
def test_llu_trains_and_evaluates_base_to_new_on_other_backbones(which, image_folder, openclip_files, hf_folders,
                                                                  tmp_path):
    root = os.path.dirname(image_folder)
    if which == "openclip":
        backbone, extra = f"openclip:{openclip_files[0]}", ["MODEL.BACKBONE.WEIGHTS", openclip_files[1]]
    else:
        backbone, extra = f"hf:{hf_folders[which[3:]]}", []
    common = ["DATASET.IMAGEFOLDER.DIR", "my_images", *extra]
    trained = run_train(root, tmp_path / "base", backbone, *common, "DATASET.SUBSAMPLE_CLASSES", "base")
    assert trained.returncode == 0, trained.stderr[-2000:]
    new = run_train(root, tmp_path / "new", backbone, *common, "DATASET.SUBSAMPLE_CLASSES", "new",
                    flags=("--eval-only", "--model-dir", str(tmp_path / "base")))
    assert new.returncode == 0, new.stderr[-2000:]
    results = json.loads((tmp_path / "new" / "results.json").read_text())
    assert results["backbone"] == backbone and results["train_subsample_classes"] == "base"
    assert len(results["provenance"]["backbone_sha256"]) == 64


@pytest.mark.slow
def test_coop_trains_on_an_openclip_text_tower_and_is_refused_on_siglip(image_folder, openclip_files, hf_folders,
                                                                         tmp_path):
    root = os.path.dirname(image_folder)
    coop = dict(trainer="CoOp", config="configs/trainers/CoOp/vit_b16.yaml")
    ok = run_train(root, tmp_path / "coop", f"openclip:{openclip_files[0]}", "DATASET.IMAGEFOLDER.DIR", "my_images",
                   "MODEL.BACKBONE.WEIGHTS", openclip_files[1], "TRAINER.COOP.N_CTX", "4",
                   "INPUT.TRANSFORMS", "['normalize']", **coop)
    assert ok.returncode == 0, ok.stderr[-2000:]
    refused = run_train(root, tmp_path / "siglip", f"hf:{hf_folders['siglip']}", "DATASET.IMAGEFOLDER.DIR",
                        "my_images", **coop)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines()[-1].startswith("error: prompt learners (CoOp, CoCoOp, ProGrad) cannot")


@pytest.mark.slow
def test_the_feature_cache_keeps_each_backbone_apart(image_folder, openclip_files, hf_folders, tmp_path):
    root, cache = os.path.dirname(image_folder), tmp_path / "cache"
    for name, backbone, extra in (("hf", f"hf:{hf_folders['clip']}", []),
                                  ("oc", f"openclip:{openclip_files[0]}", ["MODEL.BACKBONE.WEIGHTS", openclip_files[1]])):
        run = run_train(root, tmp_path / name, backbone, "DATASET.IMAGEFOLDER.DIR", "my_images", *extra,
                        trainer="ZeroshotCLIP", config="configs/trainers/ZeroshotCLIP/vit_b16.yaml", cache=cache)
        assert run.returncode == 0, run.stderr[-2000:]
    weights = {json.loads((folder / "meta.json").read_text())["weights_sha256"]
               for folder in (cache / "features").iterdir()}
    assert len(weights) == 2  # same images and transform, two backbones: two namespaces


@pytest.mark.parametrize("weights, message", [
    ("", "needs MODEL.BACKBONE.WEIGHTS: a weights file, or one of open_clip's pretrained tags for it"),
    ("laion2b_s34b_b79k", "not in the local cache and cannot be downloaded here; download them"),
    ("no_such_tag", "neither a file nor one of open_clip's pretrained tags for ViT-B-32"),
])
def test_openclip_weights_that_are_not_here_are_one_line(tmp_path, monkeypatch, weights, message):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(UserError, match=message):
        load_backbone("openclip:ViT-B-32", weights=weights)


def test_openclip_weights_of_another_model_name_the_file(openclip_files, tmp_path):
    import open_clip
    wider = tmp_path / "wider-openclip.json"
    wider.write_text(json.dumps(dict(TINY_OPENCLIP, embed_dim=48)))
    open_clip.add_model_config(str(wider))
    torch.save(open_clip.create_model("wider-openclip").state_dict(), tmp_path / "wider.bin")
    with pytest.raises(UserError, match="wider.bin: not open_clip weights of tiny-openclip"):
        load_backbone(f"openclip:{openclip_files[0]}", weights=str(tmp_path / "wider.bin"))


def test_hf_folder_without_a_model_is_one_line(tmp_path):
    with pytest.raises(UserError, match="not a model saved with save_pretrained"):
        load_backbone(f"hf:{tmp_path}")


# ---------------------------------------------------------------------------------------------
# Models by their Hub id, from the local Hugging Face cache (nothing downloaded)

HUB_COMMIT = "4f1d2c3b5a6978e0d1c2b3a4958677665544332a"


def into_hub_cache(cache, repo_id, files):
    """Lay ``files`` ({name: path}) out as huggingface_hub's cache holds a download of ``repo_id``:
    each file a blob named by its hash, the snapshot of a commit linking to the blobs, refs/main
    naming that commit."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot, blobs = repo / "snapshots" / HUB_COMMIT, repo / "blobs"
    for folder in (snapshot, blobs, repo / "refs"):
        folder.mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(HUB_COMMIT)
    for name, path in files.items():
        content = open(path, "rb").read()
        blob = blobs / hashlib.sha256(content).hexdigest()
        blob.write_bytes(content)
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
    return str(snapshot)


def folder_files(folder):
    return {name: os.path.join(folder, name) for name in os.listdir(folder)}


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache that huggingface_hub reads (as HF_HUB_CACHE would set it)."""
    from huggingface_hub import constants
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture(scope="module")
def openclip_hub_files(tmp_path_factory, openclip_files):
    """An OpenCLIP repository's files as on the Hub: open_clip_config.json (the tiny model's config,
    a preprocessing of its own) and open_clip_model.safetensors (the tiny model's weights)."""
    from safetensors.torch import save_file
    folder = tmp_path_factory.mktemp("openclip_hub")
    preprocess = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "interpolation": "bilinear",
                  "resize_mode": "shortest"}
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_OPENCLIP,
                                                              "preprocess_cfg": preprocess}))
    state = torch.load(openclip_files[1], weights_only=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "open_clip_model.safetensors"))
    return folder_files(str(folder))


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_a_hugging_face_model_by_hub_id_is_its_cached_snapshot(hf_folders, hub_cache, kind):
    """The same model as from its folder: same features, and the same sha256 (what run records and the
    feature cache are keyed by), so a run made from the folder is reproduced from the Hub id."""
    from llu.backbones import locate
    into_hub_cache(hub_cache, f"tiny-org/tiny-{kind}", folder_files(hf_folders[kind]))
    by_id = load_backbone(f"hf:tiny-org/tiny-{kind}")
    assert by_id.weights_sha256 == locate(f"hf:{hf_folders[kind]}")[0]
    from_folder = load_backbone(f"hf:{hf_folders[kind]}")
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(by_id.encode_images(images), from_folder.encode_images(images))
        assert torch.equal(by_id.encode_texts(["a red circle."]), from_folder.encode_texts(["a red circle."]))
    assert by_id.preprocess == from_folder.preprocess


def test_hub_ids_are_read_from_the_cache_that_hf_home_names(hf_folders, tmp_path):
    """In a fresh process, as a user runs it: HF_HOME/hub is the cache (huggingface_hub's own rule)."""
    from llu.backbones import locate
    into_hub_cache(tmp_path / "home" / "hub", "tiny-org/tiny-clip", folder_files(hf_folders["clip"]))
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    script = "from llu.backbones import locate; print(locate('hf:tiny-org/tiny-clip')[0])"
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO,
                         env=dict(env, HF_HOME=str(tmp_path / "home"), HF_HUB_OFFLINE="0", PYTHONPATH=REPO))
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == locate(f"hf:{hf_folders['clip']}")[0]


def test_an_existing_folder_wins_over_a_hub_id(hf_folders, hub_cache, tmp_path, monkeypatch):
    into_hub_cache(hub_cache, "tiny-org/tiny-clip", folder_files(hf_folders["siglip"]))  # another model
    os.makedirs(tmp_path / "tiny-org")
    os.symlink(hf_folders["clip"], tmp_path / "tiny-org" / "tiny-clip")
    monkeypatch.chdir(tmp_path)
    from llu.backbones import locate
    assert locate("hf:tiny-org/tiny-clip")[0] == locate(f"hf:{hf_folders['clip']}")[0]


@pytest.mark.parametrize("name, message", [
    ("hf:openai/clip-vit-base-patch32",
     r"MODEL.BACKBONE.NAME hf:openai/clip-vit-base-patch32: openai/clip-vit-base-patch32 is not in the Hugging "
     r"Face cache \({cache}\); download it with `hf download openai/clip-vit-base-patch32` on a machine with "
     r"internet, then copy its models--openai--clip-vit-base-patch32 folder into {cache}"),
    ("openclip:hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K",
     r"MODEL.BACKBONE.NAME openclip:hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K: laion/CLIP-ViT-B-32-laion2B-"
     r"s34B-b79K is not in the Hugging Face cache \({cache}\); download it with `hf download laion/"),
    ("hf:no/such/folder", "hf:no/such/folder: no such folder .* nor a Hub repository id"),
    ("openclip:hf-hub:./here", r"openclip:hf-hub:./here: expected a Hub repository id \(org/name\)"),
])
def test_a_model_not_in_the_hub_cache_is_one_line_saying_what_to_download(hub_cache, monkeypatch, name, message):
    import socket
    attempts = []

    def no_network(*args, **kwargs):
        attempts.append(args)
        raise OSError("no network in this test")
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    with pytest.raises(UserError, match=message.format(cache=re.escape(str(hub_cache)))):
        load_backbone(name)
    assert attempts == []  # the cache was read, the network never tried


def test_an_openclip_repository_by_hub_id_is_the_model_its_files_hold(openclip_files, openclip_hub_files, hub_cache):
    from llu.backbones import weights_sha256
    into_hub_cache(hub_cache, "tiny-org/tiny-openclip", openclip_hub_files)
    backbone = load_backbone("openclip:hf-hub:tiny-org/tiny-openclip")
    assert_encodes_as_the_tiny_openclip(backbone, openclip_files[1])
    assert backbone.preprocess.mean == (0.5, 0.5, 0.5) and backbone.preprocess.interpolation == "bilinear"
    assert backbone.weights_sha256 == weights_sha256(openclip_hub_files["open_clip_model.safetensors"])
    assert backbone.identity != openclip_backbone(openclip_files).identity  # its preprocessing is its own


def test_an_openclip_repository_that_is_not_whole_is_one_line(openclip_hub_files, hub_cache):
    files = {"open_clip_config.json": openclip_hub_files["open_clip_config.json"]}
    into_hub_cache(hub_cache, "tiny-org/config-only", files)
    with pytest.raises(UserError, match=r"openclip:hf-hub:tiny-org/config-only: its snapshot .* lacks "
                                        r"open_clip_config.json or weights"):
        load_backbone("openclip:hf-hub:tiny-org/config-only")
    with pytest.raises(UserError, match="MODEL.BACKBONE.WEIGHTS w.bin: openclip:hf-hub:tiny-org/config-only takes "
                                        "its weights from the repository"):
        load_backbone("openclip:hf-hub:tiny-org/config-only", weights="w.bin")


@pytest.mark.parametrize("content, message", [
    ({"model_cfg": dict(TINY_OPENCLIP, embed_dimension=32)}, "unknown key model_cfg.embed_dimension"),
    ({"model_cfg": {k: v for k, v in TINY_OPENCLIP.items() if k != "text_cfg"}}, "key model_cfg.text_cfg is missing"),
    (TINY_OPENCLIP, "key model_cfg is missing"),
    ({"model_cfg": TINY_OPENCLIP, "preprocess_cfg": [0.5]}, "key preprocess_cfg must be an object of settings"),
])
def test_an_openclip_repository_with_a_bad_config_names_its_key(tmp_path, openclip_hub_files, hub_cache, content,
                                                                 message):
    config = tmp_path / "open_clip_config.json"
    config.write_text(json.dumps(content))
    into_hub_cache(hub_cache, "tiny-org/bad", dict(openclip_hub_files, **{"open_clip_config.json": str(config)}))
    with pytest.raises(UserError, match=f"open_clip_config.json: {message}"):
        load_backbone("openclip:hf-hub:tiny-org/bad")


def test_an_openclip_repositorys_hugging_face_tokenizer_comes_from_the_cache_without_code(
        tmp_path, openclip_hub_files, hub_cache):
    config = tmp_path / "open_clip_config.json"
    text_cfg = dict(TINY_OPENCLIP["text_cfg"], hf_tokenizer_name="tiny-org/tokenizer")
    config.write_text(json.dumps({"model_cfg": dict(TINY_OPENCLIP, text_cfg=text_cfg)}))
    into_hub_cache(hub_cache, "tiny-org/hf-text", dict(openclip_hub_files, **{"open_clip_config.json": str(config)}))
    with pytest.raises(UserError, match=r"open_clip_config.json: key model_cfg.text_cfg.hf_tokenizer_name: "
                                        r"tiny-org/tokenizer is not in the Hugging Face cache"):
        load_backbone("openclip:hf-hub:tiny-org/hf-text")
    tokenizer_config = tmp_path / "tokenizer_config.json"
    tokenizer_config.write_text(json.dumps({"auto_map": {"AutoTokenizer": ["my_tokenizer.MyTokenizer", None]}}))
    into_hub_cache(hub_cache, "tiny-org/tokenizer", {"tokenizer_config.json": str(tokenizer_config)})
    with pytest.raises(UserError, match=r"tokenizer_config.json: key auto_map names code of the model's own"):
        load_backbone("openclip:hf-hub:tiny-org/hf-text")


# ---------------------------------------------------------------------------------------------
# Precomputed embeddings (the built-in engine's: Dassl's Datum requires image files, docs/dassl.md)

builtin_engine_only = pytest.mark.skipif(os.environ.get("LLU_ENGINE") == "dassl",
                                         reason="stored embeddings run on the built-in engine")

def store_trainer_features(trainer, path, with_text=True, fmt="npz"):
    """Write the image features a trainer read for its whole split (train, val, test) as an embeddings file."""
    items, split = [], []
    for code, part in enumerate(("train", "val", "test")):
        data = trainer.split_data("full_val" if part == "val" else part)
        items += data
        split += [code] * len(data)
    features = torch.cat([trainer.feature_cache.get(items, trainer.dm.tfm_test, 0)[0]])
    labels = np.array([item.label for item in items])
    arrays = {"image_features": features.numpy(), "labels": labels, "split": np.array(split)}
    classnames = trainer.classnames
    if with_text:
        arrays["text_features"] = trainer.class_text_features().numpy()
        arrays["inverse_temperature"] = np.array(trainer.logit_scale.item())
    if fmt == "npz":
        np.savez(path, classnames=np.array(classnames), **arrays)
    else:
        from safetensors.numpy import save_file
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(path),
                  metadata={"classnames": json.dumps(classnames)})
    return path


@pytest.fixture
def folder_trainer(image_folder, tiny_clip_file, tmp_path, monkeypatch):
    """A ZeroshotCLIP trainer on the image folder (all classes), for its features and splits."""
    from llu import train
    monkeypatch.setenv("LLU_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(REPO)
    from llu.engine import build_trainer
    args = train.build_parser().parse_args(
        ["--root", os.path.dirname(image_folder), "--trainer", "ZeroshotCLIP", "--dataset-config-file",
         "configs/datasets/imagefolder.yaml", "--config-file", "configs/trainers/ZeroshotCLIP/vit_b16.yaml",
         "--backbone", tiny_clip_file, "--seed", "1", "DATASET.IMAGEFOLDER.DIR", "my_images"])
    return build_trainer(train.setup_cfg(args))


@builtin_engine_only
@pytest.mark.parametrize("fmt", ["npz", "safetensors"])
@pytest.mark.slow
def test_stored_embeddings_give_the_image_folder_runs_numbers(folder_trainer, image_folder, tiny_clip_file, tmp_path,
                                                              fmt):
    """The same features, split and seed through the embeddings dataset: the same LLU model and accuracy."""
    store = store_trainer_features(folder_trainer, tmp_path / f"colours.{fmt}", fmt=fmt)
    root = os.path.dirname(image_folder)
    embeddings = ["--dataset-config-file", "configs/datasets/embeddings.yaml"]
    for backbone in (tiny_clip_file, "embeddings"):  # the model's text encoder, or the stored class texts
        for name, data, opts in (("folder", None, ["DATASET.IMAGEFOLDER.DIR", "my_images"]),
                                 ("stored", embeddings, ["DATASET.EMBEDDINGS.FILE", str(store)])):
            # One feature cache: the folder run reads the very features the file stores.
            run = run_train(root, tmp_path / f"{backbone == 'embeddings'}" / name,
                            tiny_clip_file if name == "folder" else backbone, *opts, "FEATURES.AUG_VIEWS", "0",
                            "DATASET.SUBSAMPLE_CLASSES", "base", data=data, cache=tmp_path / "cache")
            assert run.returncode == 0, run.stderr[-2000:]
        folder, stored = (json.loads((tmp_path / f"{backbone == 'embeddings'}" / n / "results.json").read_text())
                          for n in ("folder", "stored"))
        assert stored["accuracy"] == folder["accuracy"]
        assert stored["per_class_accuracy"] == folder["per_class_accuracy"]
        # The stored class texts were encoded in one batch of all 4 classes, the folder run's 2 base classes
        # in another: equal up to float32 round-off of the text encoder. The same encoder: bit for bit.
        rel = 1e-5 if backbone == "embeddings" else 0
        assert stored["llu_regularizer"] == pytest.approx(folder["llu_regularizer"], rel=rel, abs=0)
        assert stored["dataset"] == "colours" and stored["dataset_reader"] == "Embeddings"


@builtin_engine_only
def test_embeddings_without_text_need_a_model(folder_trainer, image_folder, tmp_path):
    store = store_trainer_features(folder_trainer, tmp_path / "colours.npz", with_text=False)
    run = run_train(os.path.dirname(image_folder), tmp_path / "out", "embeddings", "DATASET.EMBEDDINGS.FILE",
                    str(store), data=["--dataset-config-file", "configs/datasets/embeddings.yaml"])
    assert run.returncode == 2 and "holds no text_features" in run.stderr and "Traceback" not in run.stderr


@pytest.mark.parametrize("arrays, message", [
    ({"labels": np.zeros(4, int)}, "image_features and labels are required"),
    ({"image_features": np.full((4, 8), np.nan, np.float32), "labels": np.arange(4) % 2},
     "image_features must be a finite float array"),
    ({"image_features": np.ones((4, 8), np.float32), "labels": np.array([0, 1, 2, 3])}, "labels must be 0 to 1"),
    ({"image_features": np.ones((4, 8), np.float32), "labels": np.arange(4) % 2,
      "split": np.array([0, 1, 2, 5])}, "split must be 4 codes"),
    ({"image_features": np.ones((4, 8), np.float32), "labels": np.arange(4) % 2,
      "text_features": np.ones((3, 8), np.float32)}, r"text_features must be finite, \[2, 8\]"),
])
def test_a_bad_embeddings_file_is_one_line_naming_it(tmp_path, arrays, message):
    from llu.datasets.embeddings import EmbeddingsFile
    path = tmp_path / "bad.npz"
    np.savez(path, classnames=np.array(["a", "b"]), **arrays)
    with pytest.raises(UserError, match=f"{path}: {message}"):
        EmbeddingsFile(str(path))


def test_an_embeddings_file_holding_pickles_is_refused(tmp_path):
    from llu.datasets.embeddings import EmbeddingsFile
    path = tmp_path / "pickled.npz"
    np.savez(path, image_features=np.ones((2, 4), np.float32), labels=np.array([0, 1]),
             classnames=np.array([{"a": 1}, "b"], dtype=object))  # an object array is a pickle
    with pytest.raises(UserError, match="cannot be read as an .npz file without pickles"):
        EmbeddingsFile(str(path))


@builtin_engine_only
@pytest.mark.slow
def test_a_file_of_embeddings_runs_through_the_base_to_new_sweep(folder_trainer, tmp_path):
    store = store_trainer_features(folder_trainer, tmp_path / "data" / "colours.npz")
    opts = ("DATASET.EMBEDDINGS.FILE colours.npz MODEL.BACKBONE.NAME embeddings DATALOADER.NUM_WORKERS 0 "
            "OPTIM.MAX_EPOCH 2 FEATURES.AUG_VIEWS 0")
    env = dict(os.environ, OUTPUT=str(tmp_path / "out"), LLU_CACHE=str(tmp_path / "cache"), DATA=str(store.parent),
               DATASETS="embeddings", CFG="vit_b16", TRAINERS="ZeroshotCLIP LLU", SEEDS="1", SHOTS="2",
               PYTHON=sys.executable, OPTS=opts, OMP_NUM_THREADS="1")
    result = subprocess.run(["bash", os.path.join(REPO, "scripts", "base2new.sh")], cwd=str(tmp_path), env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    table = result.stdout.split("### colours (2 shots)")[1]  # named after the file
    assert "| CLIP " in table and "| LLU " in table
    tables = json.loads((tmp_path / "out" / "base2new" / "tables.json").read_text())
    assert tables["num_records"] == 4 and tables["notes"] == []


@pytest.mark.slow
def test_coop_trains_on_a_hugging_face_clip(image_folder, hf_folders, tmp_path):
    run = run_train(os.path.dirname(image_folder), tmp_path / "coop", f"hf:{hf_folders['clip']}",
                    "DATASET.IMAGEFOLDER.DIR", "my_images", "TRAINER.COOP.N_CTX", "4", "INPUT.TRANSFORMS",
                    "['normalize']", trainer="CoOp", config="configs/trainers/CoOp/vit_b16.yaml")
    assert run.returncode == 0, run.stderr[-2000:]
    results = json.loads((tmp_path / "coop" / "results.json").read_text())
    assert results["trainer"] == "CoOp" and results["backbone"].startswith("hf:")


def test_a_weights_files_sha256_is_hashed_once_for_all_processes(tiny_clip_file, tmp_path, monkeypatch):
    import hashlib
    import shutil
    from llu import backbones
    monkeypatch.setenv("LLU_CACHE", str(tmp_path / "cache"))
    weights = str(tmp_path / "clip.pt")
    shutil.copy(tiny_clip_file, weights)
    expected = hashlib.sha256(open(weights, "rb").read()).hexdigest()
    monkeypatch.setattr(backbones, "_file_sha256", {})
    assert backbones.weights_sha256(weights) == expected
    monkeypatch.setattr(backbones, "_file_sha256", {})  # as a new process starts
    monkeypatch.setattr(backbones, "file_sha256", lambda path: pytest.fail("hashed again"))
    assert backbones.weights_sha256(weights) == expected
    monkeypatch.undo()
    monkeypatch.setenv("LLU_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(backbones, "_file_sha256", {})
    with open(weights, "ab") as f:  # another file now: other size and time
        f.write(b"\0")
    assert backbones.weights_sha256(weights) == hashlib.sha256(open(weights, "rb").read()).hexdigest()
    (tmp_path / "cache" / backbones.SHA256_MEMO_FILE).write_text("{not json")
    monkeypatch.setattr(backbones, "_file_sha256", {})
    assert backbones.weights_sha256(weights) == hashlib.sha256(open(weights, "rb").read()).hexdigest()


def test_clip_built_without_its_random_init_is_clip_build_models_bits(tiny_clip_file):
    """llu.backbones.openai.build_model lays the model out on the meta device instead of initialising it
    at random: the same weights, dtypes, attention mask and features as clip.model.build_model's, and the
    global random stream left alone."""
    import clip.model
    from llu.backbones import openai
    reference = clip.model.build_model(openai.read_clip_state_dict(tiny_clip_file))
    torch.manual_seed(0)
    built = openai.build_model(openai.read_clip_state_dict(tiny_clip_file))
    drawn = torch.rand(2)
    torch.manual_seed(0)
    assert torch.equal(torch.rand(2), drawn)
    ours, theirs = built.state_dict(), reference.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(ours[k].dtype == theirs[k].dtype and torch.equal(ours[k], theirs[k]) for k in ours)
    for block, reference_block in zip(built.transformer.resblocks, reference.transformer.resblocks):
        assert torch.equal(block.attn_mask, reference_block.attn_mask)
    built.float(), reference.float()
    images, tokens = torch.randn(3, 3, 32, 32), clip.tokenize(["a red square", "a blue circle"], context_length=16)
    with torch.no_grad():
        assert torch.equal(built.encode_image(images), reference.encode_image(images))
        assert torch.equal(built.encode_text(tokens), reference.encode_text(tokens))
