"""Hugging Face models: ``hf:<folder>``, a ``transformers`` ``CLIPModel`` or ``SiglipModel`` saved with
``save_pretrained``, with its tokenizer and image processor saved in the same folder, or ``hf:<org/name>``,
such a model by its Hub id, read from the local Hub cache (``hub.py``). Nothing is
downloaded (``local_files_only``) and no code from the folder runs: every load passes
``trust_remote_code=False``, a folder whose config files name code of their own (``auto_map``) is
refused before transformers reads it, and stdin is never consulted (transformers would ask on it
whether to run such code).

SigLIP scores an image-text pair as sigmoid(scale * cos + bias). Classification here is a softmax
over the classes of scale * cos (Eq. 1): the bias adds the same number to every class's logit, so
it changes neither the predictions nor the cross-entropy; the scale is the model's.
"""
import contextlib
import io
import json
import os
import os.path as osp
import sys

import torch

from llu.utils import UserError, require

from . import hub
from .base import ClipBackbone, Preprocess, combined_sha256

WEIGHT_FILES = (".safetensors", ".bin")
RESAMPLE = {2: "bilinear", 3: "bicubic"}  # PIL's codes in an image processor's config
SUPPORTED = ("CLIPModel", "SiglipModel")
# The files transformers reads to choose a config, model, tokenizer or processor class: any of them may
# name code of the folder's own (``auto_map``).
CONFIG_FILES = ("config.json", "preprocessor_config.json", "processor_config.json", "tokenizer_config.json",
                "video_preprocessor_config.json", "generation_config.json")
NO_REMOTE_CODE = dict(local_files_only=True, trust_remote_code=False)  # every from_pretrained call here


def _transformers():
    return require("transformers", "hf", "MODEL.BACKBONE.NAME hf:<folder>")


def folder_sha256(folder):
    """One sha256 over a saved model's files (config, weights, tokenizer, processor)."""
    from . import weights_sha256
    names = sorted(n for n in os.listdir(folder) if osp.isfile(osp.join(folder, n)) and not n.startswith("."))
    if not any(n.endswith(WEIGHT_FILES) for n in names) or "config.json" not in names:
        raise UserError(f"MODEL.BACKBONE.NAME hf:{folder}: not a model saved with save_pretrained (expected "
                        f"config.json and model weights in it)")
    return combined_sha256("hf", *(f"{n} {weights_sha256(osp.join(folder, n))}" for n in names))


def read_config_file(path):
    """The JSON object in one of a saved model's config files; one line if it is not one."""
    try:
        with open(path, "rb") as f:
            content = json.loads(f.read().decode("utf-8"))
    except (OSError, ValueError, RecursionError) as e:  # ValueError: bad JSON or UTF-8; RecursionError: deep nesting
        raise UserError(f"{path}: not a readable JSON config file ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:200] if str(e) else 'nested too deeply'})") from None
    if not isinstance(content, dict):
        raise UserError(f"{path}: expected a JSON object of config keys, got {type(content).__name__}")
    return content


def refuse_remote_code(folder):
    """Stop, before transformers reads the folder, if one of its config files names code of its own:
    ``auto_map`` (a class in a ``.py`` file beside it or in another repository) is the only way
    transformers finds such code."""
    for name in CONFIG_FILES:
        path = osp.join(folder, name)
        if not osp.isfile(path):
            continue
        content = read_config_file(path)
        if "auto_map" in content:
            targets = content["auto_map"]
            shown = ", ".join(sorted(map(str, targets.values() if isinstance(targets, dict) else [targets])))[:200]
            raise UserError(f"{path}: key auto_map names code of the model's own ({shown}); models whose "
                            f"loading runs code from their folder are refused (supported: "
                            f"{', '.join(SUPPORTED)} as transformers defines them)")
        if name == "config.json":
            architectures = content.get("architectures")
            if architectures is not None and not (isinstance(architectures, list) and
                                                  all(isinstance(a, str) for a in architectures)):
                raise UserError(f"{path}: key architectures must be a list of class names, got {architectures!r:.100}")
            if not isinstance(content.get("model_type", ""), str):
                raise UserError(f"{path}: key model_type must be a string, got {content['model_type']!r:.100}")


@contextlib.contextmanager
def stdin_closed():
    """transformers asks on stdin whether to run a folder's code when trust_remote_code is not given; it
    is given everywhere here, and while transformers runs, stdin is empty as well, so no answer is read."""
    stdin = sys.stdin
    sys.stdin = io.StringIO("")
    try:
        yield
    finally:
        sys.stdin = stdin


def locate(spec):
    """``spec``: a folder, or a Hub repository id (``org/name``) whose snapshot in the local cache is the
    folder (an existing folder wins). The sha256 is of the files, so both give a model the same one."""
    folder = hub.model_folder(spec, f"MODEL.BACKBONE.NAME hf:{spec}")
    if folder is None:
        raise UserError(f"MODEL.BACKBONE.NAME hf:{spec}: no such folder (a model saved with save_pretrained) "
                        f"nor a Hub repository id (org/name)")
    refuse_remote_code(folder)
    sha256 = folder_sha256(folder)
    return sha256, lambda device, prec, trust: HuggingFaceClip(folder, sha256, device, prec)


class HuggingFaceClip(ClipBackbone):
    kind = "hf"

    def __init__(self, folder, sha256, device, prec):
        super().__init__()
        refuse_remote_code(folder)
        transformers = _transformers()
        config_path = osp.join(folder, "config.json")
        with _one_line(config_path, "cannot be read as a transformers config"), stdin_closed():
            config = transformers.AutoConfig.from_pretrained(folder, **NO_REMOTE_CODE)
        architecture = (config.architectures or [type(config).__name__.replace("Config", "Model")])[0]
        if architecture not in SUPPORTED:
            raise UserError(f"hf:{folder}: a {architecture}; supported are {', '.join(SUPPORTED)}")
        with _one_line(folder, "cannot load the model, its tokenizer or its image processor"), stdin_closed():
            with torch.random.fork_rng(devices=[]):
                self.model = getattr(transformers, architecture).from_pretrained(folder, **NO_REMOTE_CODE)
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(folder, **NO_REMOTE_CODE)
            processor = transformers.AutoImageProcessor.from_pretrained(folder, **NO_REMOTE_CODE)
        if device.type == "cuda" and prec == "fp16":
            self.model.half()
        self.freeze(device)
        self.weights_sha256 = self.identity = sha256
        self.is_siglip = architecture == "SiglipModel"
        with _one_line(config_path, "lacks a size the model needs"):
            self.embed_dim = int(config.projection_dim if hasattr(config, "projection_dim")
                                 else config.text_config.hidden_size)
            self.context_length = int(config.text_config.max_position_embeddings)
        with _one_line(osp.join(folder, "preprocessor_config.json"), "is not a CLIP or SigLIP image processor's"):
            self.preprocess = image_preprocess(processor, folder)

    @property
    def dtype(self):
        return self.model.vision_model.embeddings.patch_embedding.weight.dtype

    @property
    def logit_scale(self):
        return self.model.logit_scale.reshape(())

    @property
    def logit_bias(self):
        return self.model.logit_bias if self.is_siglip else None

    @property
    def token_embedding(self):
        return self.model.text_model.embeddings.token_embedding

    @staticmethod
    def _features(output):
        return output if isinstance(output, torch.Tensor) else output.pooler_output  # transformers 4 / 5

    def encode_image(self, images):
        return self._features(self.model.get_image_features(pixel_values=images))

    def tokenize(self, texts):
        """Padded to the context length (SigLIP was trained so; CLIP pools at the end token either way)."""
        longest = max((self.token_count(t) for t in texts), default=0)
        if longest + 2 > self.context_length:
            raise UserError(f"prompt too long for the model's context length {self.context_length}: "
                            f"{max(texts, key=self.token_count)!r}")
        return self.tokenizer(list(texts), padding="max_length", max_length=self.context_length,
                              return_tensors="pt")["input_ids"]

    def token_count(self, text):
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode_text(self, tokens):
        return self._features(self.model.get_text_features(input_ids=tokens))

    def prompt_learning_problem(self):
        if self.is_siglip:
            return "SigLIP's text tower pools its last token and its tokenizer is not CLIP's BPE"
        if type(self.tokenizer).__name__ not in ("CLIPTokenizer", "CLIPTokenizerFast"):
            return f"its tokenizer is {type(self.tokenizer).__name__}, not CLIP's BPE"
        return None


@contextlib.contextmanager
def _one_line(path, what):
    """transformers raises many types for a file it cannot use (OSError, ValueError, TypeError, KeyError,
    AttributeError, safetensors' errors, ...): any of them becomes one line naming ``path``."""
    try:
        yield
    except UserError:
        raise
    except Exception as e:
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        raise UserError(f"{path}: {what} ({type(e).__name__}{': ' + first if first else ''})") from None


def image_preprocess(processor, folder):
    """INPUT's settings from a CLIP/SigLIP image processor: the crop size (CLIP) or the resized size
    (SigLIP, which squashes the whole image), its mean/std and resampling."""
    interpolation = RESAMPLE.get(int(getattr(processor, "resample", 3)))
    if interpolation is None:
        raise UserError(f"hf:{folder}: the image processor's resampling {processor.resample} is not supported")
    if getattr(processor, "do_center_crop", False):
        crop = processor.crop_size
        size, mode = (crop["height"], crop["width"]), "shortest"
    else:
        resized = processor.size
        size, mode = (resized["height"], resized["width"]), "squash"
    return Preprocess(size, tuple(processor.image_mean), tuple(processor.image_std), interpolation, mode)
