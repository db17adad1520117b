"""Frozen CLIP backbones: one factory, ``load_backbone``, is the only way in.

``MODEL.BACKBONE.NAME`` says which kind:

- ``ViT-B/16`` (any of OpenAI's names), a weights file, or ``toy``: OpenAI's CLIP format (``openai.py``);
- ``openclip:<model>``: an OpenCLIP architecture by open_clip's name (``ViT-B-16``) or a model config
  JSON file, its weights from ``MODEL.BACKBONE.WEIGHTS`` (a file, or one of open_clip's pretrained
  tags when it is in the local cache) (``openclip.py``);
- ``hf:<folder>``: a Hugging Face ``CLIPModel`` or ``SiglipModel`` saved with ``save_pretrained``, with
  its tokenizer and image processor (``huggingface.py``);
- ``embeddings``: no model at all: the image and class-text embeddings stored in the dataset's
  file (``configs/datasets/embeddings.yaml``, ``embeddings.py``); the trainer builds it from the data.

Every kind gives a ``ClipBackbone`` (``base.py``); open_clip and transformers are imported only when
their kind is asked for.
"""
import os
import os.path as osp

import torch

from llu.utils import UserError, file_sha256

from .base import ClipBackbone, Preprocess  # noqa: F401  (the contract every kind fulfils)

OPENCLIP_PREFIX = "openclip:"
HF_PREFIX = "hf:"
EMBEDDINGS_BACKBONE = "embeddings"
PRECISIONS = ("fp16", "fp32", "amp")

_file_sha256 = {}


def weights_sha256(path):
    """The sha256 of a file (memoised per process by path, size and mtime)."""
    stat = os.stat(path)
    key = (osp.abspath(path), stat.st_size, stat.st_mtime_ns)
    if key not in _file_sha256:
        _file_sha256[key] = file_sha256(path)
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
    if prec not in PRECISIONS:
        raise UserError(f"TRAINER.PREC must be fp16, fp32 or amp, got {prec!r}")
    device = torch.device(device)
    if device.type == "cpu" and prec == "fp16":
        print("Note: fp16 cannot run on the CPU; using fp32")
    sha256, build = locate(name, weights)
    key = (name, sha256, str(device), prec)
    if key not in _loaded:
        _loaded.clear()  # one backbone in memory at a time
        _loaded[key] = build(device, prec, trust_torchscript)
    model = _loaded[key].eval()
    model.backbone_name = name
    return model
