"""Hugging Face models: ``hf:<folder>``, a ``transformers`` ``CLIPModel`` or ``SiglipModel`` saved with
``save_pretrained``, with its tokenizer and image processor saved in the same folder. Nothing is
downloaded (``local_files_only``).

SigLIP scores an image-text pair as sigmoid(scale * cos + bias). Classification here is a softmax
over the classes of scale * cos (Eq. 1): the bias adds the same number to every class's logit, so
it changes neither the predictions nor the cross-entropy; the scale is the model's.
"""
import os
import os.path as osp

import torch

from llu.utils import UserError, require

from .base import ClipBackbone, Preprocess, combined_sha256

WEIGHT_FILES = (".safetensors", ".bin")
RESAMPLE = {2: "bilinear", 3: "bicubic"}  # PIL's codes in an image processor's config
SUPPORTED = ("CLIPModel", "SiglipModel")


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


def locate(folder):
    folder = osp.expanduser(folder)
    if not osp.isdir(folder):
        raise UserError(f"MODEL.BACKBONE.NAME hf:{folder}: no such folder (a model saved with save_pretrained)")
    sha256 = folder_sha256(folder)
    return sha256, lambda device, prec, trust: HuggingFaceClip(folder, sha256, device, prec)


class HuggingFaceClip(ClipBackbone):
    kind = "hf"

    def __init__(self, folder, sha256, device, prec):
        super().__init__()
        transformers = _transformers()
        try:
            config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError) as e:
            raise UserError(f"hf:{folder}: cannot read its config ({str(e).splitlines()[0]})") from None
        architecture = (config.architectures or [type(config).__name__.replace("Config", "Model")])[0]
        if architecture not in SUPPORTED:
            raise UserError(f"hf:{folder}: a {architecture}; supported are {', '.join(SUPPORTED)}")
        try:
            with torch.random.fork_rng(devices=[]):
                self.model = getattr(transformers, architecture).from_pretrained(folder, local_files_only=True)
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
            processor = transformers.AutoImageProcessor.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError) as e:
            raise UserError(f"hf:{folder}: cannot load the model, its tokenizer or its image processor "
                            f"({str(e).splitlines()[0]})") from None
        if device.type == "cuda" and prec == "fp16":
            self.model.half()
        self.freeze(device)
        self.weights_sha256 = self.identity = sha256
        self.is_siglip = architecture == "SiglipModel"
        self.embed_dim = config.projection_dim if hasattr(config, "projection_dim") else config.text_config.hidden_size
        self.context_length = config.text_config.max_position_embeddings
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
