"""OpenAI's CLIP format: a model name of OpenAI's table (``ViT-B/16``), a weights file (OpenAI's
TorchScript archive or a plain state dict), or ``toy``, the built-in world's ToyCLIP. The model is
``clip.model.build_model`` of the state dict, as in CoOp."""
import os
import os.path as osp
import warnings
import zipfile

import torch

from llu.utils import UserError, import_clip, load_torch
from llu.world import toyclip

from . import torchscript
from .base import CLIP_PREPROCESS, ClipBackbone, Preprocess

clip = import_clip()
TOY_BACKBONE = "toy"  # the built-in world's ToyCLIP, shipped with the project
# The input resolution of each of OpenAI's models (clip.load's preprocessing), so that a run's config
# can be resolved before the weights are read (or downloaded).
INPUT_RESOLUTION = {"RN50": 224, "RN101": 224, "RN50x4": 288, "RN50x16": 384, "RN50x64": 448, "ViT-B/32": 224,
                    "ViT-B/16": 224, "ViT-L/14": 224, "ViT-L/14@336px": 336}
_bpe = clip.clip._tokenizer


def openai_download_root():
    return os.environ.get("CLIP_DOWNLOAD_ROOT") or osp.join(osp.expanduser("~"), ".cache", "clip")


def resolve_weights(name):
    """Map a backbone name (``ViT-B/16``, ``toy``) or a file path to a local weights file."""
    if name == TOY_BACKBONE:
        return toyclip.weights_file()
    if name in clip.clip._MODELS:
        url = clip.clip._MODELS[name]
        root = openai_download_root()
        path = osp.join(root, osp.basename(url))
        if osp.isfile(path):
            return path
        try:
            return clip.clip._download(url, root)
        except Exception as e:
            raise UserError(
                f"MODEL.BACKBONE.NAME {name}: weights not found at {path} and the download failed "
                f"({type(e).__name__}); put {osp.basename(url)} there (or set CLIP_DOWNLOAD_ROOT), "
                f"or pass the weights file path as --backbone") from None
    if osp.isfile(osp.expanduser(name)):
        return osp.expanduser(name)
    names = ", ".join(list(clip.available_models()) + [TOY_BACKBONE])
    raise UserError(f"MODEL.BACKBONE.NAME {name!r}: neither a known model ({names}), a weights file, nor "
                    f"openclip:<model> or hf:<folder>")


def named_preprocess(name):
    """The preprocessing of one of OpenAI's models by name, or None for anything else (a file, ``toy``)."""
    if name not in INPUT_RESOLUTION:
        return None
    resolution = INPUT_RESOLUTION[name]
    return Preprocess((resolution, resolution), CLIP_PREPROCESS.mean, CLIP_PREPROCESS.std)


def read_clip_state_dict(path, trust_torchscript=True):
    """Read OpenAI's TorchScript archive, ToyCLIP's file or a plain state-dict file, never unpickling
    objects. A TorchScript archive is read without running its code (``torchscript.py``); only if
    that fails and ``trust_torchscript`` (MODEL.BACKBONE.TRUST_TORCHSCRIPT) is set does
    ``torch.jit.load`` read it, which runs the code the archive carries."""
    if not zipfile.is_zipfile(path):
        raise UserError(f"{path}: not a CLIP weights file (expected OpenAI's .pt archive or a torch.save'd state dict)")
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    if toyclip.is_weights_archive(names):
        return toyclip.read_weights(path)
    is_torchscript = any(n.endswith("constants.pkl") or "/code/" in n for n in names)
    if is_torchscript:
        try:
            return torchscript.read_state_dict(path)
        except torchscript.TorchScriptFormatError as e:
            if not trust_torchscript:
                raise UserError(f"{path}: a TorchScript archive whose weights cannot be read without running its "
                                f"code ({e}); set MODEL.BACKBONE.TRUST_TORCHSCRIPT True to let torch.jit.load "
                                f"run it, if you trust the file") from None
            print(f"Note: {path}: reading it with torch.jit.load, which runs its code "
                  f"(MODEL.BACKBONE.TRUST_TORCHSCRIPT True; the code-free reader: {e})")
        try:
            return torch.jit.load(path, map_location="cpu").state_dict()
        except Exception as e:
            raise UserError(f"{path}: cannot be read as a TorchScript CLIP archive ({e})") from None
    state_dict = load_torch(path, mmap=True)  # build_model copies the weights: no need to read them twice
    if isinstance(state_dict, dict) and "state_dict" in state_dict:
        state_dict = state_dict["state_dict"]
    if not isinstance(state_dict, dict) or "visual.conv1.weight" not in state_dict:
        raise UserError(f"{path}: not a CLIP state dict (no 'visual.conv1.weight' key)")
    return state_dict


def build_model(state_dict):
    """``clip.model.build_model`` of ``state_dict`` (its fp16 rounding included), without its random
    initialisation, which loading the weights overwrites (on a CPU, half of the time to build a ViT-B):
    the model is laid out on the meta device, then given memory and the weights. Its one tensor that
    is neither a parameter nor in the state dict, the text tower's causal attention mask, is made again."""
    with torch.device("meta"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "for .*: copying from a non-meta parameter", UserWarning)
        model = clip.model.build_model(state_dict)  # checks the keys and shapes; copies nothing
    model.to_empty(device="cpu")
    model.load_state_dict(state_dict)
    for block in model.transformer.resblocks:
        block.attn_mask = model.build_attention_mask()
    return model.eval()


class OpenAIClip(ClipBackbone):
    """``clip.model.CLIP``: the format of OpenAI's weights and of ToyCLIP."""

    kind = "openai"

    def __init__(self, path, sha256, device, prec, trust_torchscript=True):
        super().__init__()
        try:
            self.model = build_model(read_clip_state_dict(path, trust_torchscript))
        except (KeyError, RuntimeError, ValueError) as e:
            raise UserError(f"{path}: the state dict does not describe a CLIP model ({type(e).__name__}: {e})") from None
        if device.type == "cpu" or prec != "fp16":
            self.model.float()  # build_model keeps fp16 weights; fp32 on a CPU, or for fp32 and amp
        self.freeze(device)
        self.weights_sha256 = self.identity = sha256  # the file decides the architecture and the weights
        self.embed_dim = self.model.text_projection.shape[1]
        self.context_length = self.model.context_length
        resolution = self.model.visual.input_resolution
        self.preprocess = Preprocess((resolution, resolution), CLIP_PREPROCESS.mean, CLIP_PREPROCESS.std)

    @property
    def logit_scale(self):
        return self.model.logit_scale

    @property
    def token_embedding(self):
        return self.model.token_embedding

    @property
    def dtype(self):
        return self.model.dtype

    def encode_image(self, images):
        return self.model.encode_image(images)

    def tokenize(self, texts):
        return tokenize_bpe(texts, self.context_length)

    def token_count(self, text):
        return len(_bpe.encode(text))

    def encode_text(self, tokens):
        return self.model.encode_text(tokens)


def tokenize_bpe(texts, context_length):
    """CLIP's BPE tokeniser to ``context_length`` (77 for OpenAI's models); a text that does not fit
    is a UserError."""
    try:
        return clip.tokenize(texts, context_length=context_length)
    except RuntimeError as e:
        raise UserError(f"prompt too long for the model's context length {context_length}: {e}") from None
