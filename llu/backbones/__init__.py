"""Frozen CLIP backbones: one factory, ``load_backbone``, is the only way in.

``MODEL.BACKBONE.NAME`` says which kind:

- ``ViT-B/16`` (any of OpenAI's names), a weights file, or ``toy``: OpenAI's CLIP format (``openai.py``);
- ``openclip:<model>``: an OpenCLIP architecture by open_clip's name (``ViT-B-16``) or a model config
  JSON file, its weights from ``MODEL.BACKBONE.WEIGHTS`` (a file, or one of open_clip's pretrained
  tags when it is in the local cache) (``openclip.py``); ``openclip:hf-hub:<org/name>``: an OpenCLIP
  repository of the Hugging Face Hub, from the local Hub cache (``hub.py``);
- ``hf:<folder>``: a Hugging Face ``CLIPModel`` or ``SiglipModel`` saved with ``save_pretrained``, with
  its tokenizer and image processor (``huggingface.py``); ``hf:<org/name>``: such a model by its Hub
  id, from the local Hub cache;
- ``embeddings``: no model at all: the image and class-text embeddings stored in the dataset's
  file (``configs/datasets/embeddings.yaml``, ``embeddings.py``); the trainer builds it from the data.

Every kind gives a ``ClipBackbone`` (``base.py``); open_clip and transformers are imported only when
their kind is asked for.
"""
import os
import os.path as osp

import torch

from llu.utils import UserError, file_sha256, read_json, user_cache_dir, write_json

from .base import ClipBackbone, Preprocess  # noqa: F401  (the contract every kind fulfils)

OPENCLIP_PREFIX = "openclip:"
HF_PREFIX = "hf:"
EMBEDDINGS_BACKBONE = "embeddings"
PRECISIONS = ("fp16", "fp32", "amp")

_file_sha256 = {}
SHA256_MEMO_FILE = "weights_sha256.json"  # under $LLU_CACHE: {"path|size|mtime_ns": sha256}
SHA256_MEMO_ENTRIES = 64  # the most recently hashed files kept there


def weights_sha256(path):
    """The sha256 of a file, remembered by its path, size and modification time: in this process, and
    across processes in ``$LLU_CACHE/weights_sha256.json`` (hashing a ViT-B's 600 MB took a second of
    every run's start on a CPU). The feature cache knows image files by the same three facts."""
    stat = os.stat(path)
    key = f"{osp.abspath(path)}|{stat.st_size}|{stat.st_mtime_ns}"
    if key not in _file_sha256:
        memo_path = user_cache_dir(SHA256_MEMO_FILE)
        try:
            memo = read_json(memo_path)
        except UserError:  # none yet, or damaged: hashed again and written anew
            memo = {}
        memo = memo if isinstance(memo, dict) else {}
        digest = memo.get(key)
        if not (isinstance(digest, str) and len(digest) == 64):
            digest = file_sha256(path)
            memo = dict(list(memo.items())[-(SHA256_MEMO_ENTRIES - 1):], **{key: digest})
            try:
                write_json(memo, memo_path)
            except OSError:
                pass  # a read-only cache: hashed again by the next process
        _file_sha256[key] = digest
    return _file_sha256[key]


def locate(name, weights=""):
    """(sha256 of what decides the model, a function (device, prec, trust_torchscript) -> backbone)."""
    if name.startswith(OPENCLIP_PREFIX):
        from . import openclip
        return openclip.locate(name[len(OPENCLIP_PREFIX):], weights)
    if name.startswith(HF_PREFIX):
        from . import huggingface
        return huggingface.locate(name[len(HF_PREFIX):])
    if name == EMBEDDINGS_BACKBONE:
        raise UserError("MODEL.BACKBONE.NAME embeddings reads the dataset's embeddings file: use it with "
                        "configs/datasets/embeddings.yaml")
    from . import openai
    path = openai.resolve_weights(name)
    sha256 = weights_sha256(path)
    return sha256, lambda device, prec, trust: openai.OpenAIClip(path, sha256, device, prec, trust)


_loaded = {}  # the last backbone built: (what decides it, device, precision) -> model


def load_backbone(name, device="cpu", prec="fp32", weights="", trust_torchscript=True):
    """A frozen backbone from ``name`` (MODEL.BACKBONE.NAME) and ``weights`` (MODEL.BACKBONE.WEIGHTS).

    On a CPU every precision runs as fp32 (CPU kernels for fp16 are missing or slow). A process that
    runs one run after another (a sweep worker) builds each backbone once: it is frozen and in eval
    mode, so runs can share it.
    """
    device = torch.device(device)
    check_precision(prec)
    if device.type == "cpu" and prec == "fp16":
        print("Note: fp16 cannot run on the CPU; using fp32")
    return _build(name, device, prec, weights, trust_torchscript)


def check_precision(prec):
    if prec not in PRECISIONS:
        raise UserError(f"TRAINER.PREC must be fp16, fp32 or amp, got {prec!r}")


def _build(name, device, prec, weights, trust_torchscript):
    sha256, build = locate(name, weights)
    key = (name, sha256, str(device), prec)
    if key not in _loaded:
        _loaded.clear()  # one backbone in memory at a time
        _loaded[key] = build(device, prec, trust_torchscript)
    model = _loaded[key].eval()
    model.backbone_name = name
    return model


def preprocessing(cfg):
    """How MODEL.BACKBONE's images are prepared (a ``Preprocess``), or None for ``embeddings`` (no images).

    train.py reads it before the run's config is frozen, saved and logged, so that INPUT holds what the
    run does. OpenAI's models by name are read from their table (no weights needed); any other backbone
    is built here, on the device and in the precision the trainers use, so that their ``load_backbone``
    gets this very model back instead of building it again.
    """
    backbone = cfg.MODEL.BACKBONE
    if backbone.NAME == EMBEDDINGS_BACKBONE:
        return None
    from . import openai
    named = openai.named_preprocess(backbone.NAME)
    if named is not None:
        return named
    check_precision(cfg.TRAINER.PREC)
    device = torch.device("cuda" if cfg.USE_CUDA and torch.cuda.is_available() else "cpu")  # the trainers' rule
    return _build(backbone.NAME, device, cfg.TRAINER.PREC, backbone.WEIGHTS, backbone.TRUST_TORCHSCRIPT).preprocess
