"""OpenCLIP models: ``openclip:<model>``, the model by open_clip's name (``ViT-B-16``, ``ViT-L-14``,
``convnext_base_w``) or a model config JSON file in open_clip's format; its weights from
``MODEL.BACKBONE.WEIGHTS``: a file (an open_clip state dict, ``.bin``/``.pt``/``.safetensors``, read
without unpickling objects) or one of open_clip's pretrained tags for the model (``laion2b_s34b_b88k``)
when open_clip's download of it is in the local cache. Or ``openclip:hf-hub:<org/name>``, an OpenCLIP
repository on the Hugging Face Hub (its ``open_clip_config.json`` and weights) read from the local Hub
cache (``hub.py``). open_clip's own preprocessing, tokenizer and learned logit scale are used; nothing
is downloaded."""
import contextlib
import logging
import os.path as osp

import torch

from llu.utils import UserError, require

from . import hub
from .base import ClipBackbone, Preprocess, combined_sha256

HF_HUB_PREFIX = "hf-hub:"
HUB_CONFIG_FILE = "open_clip_config.json"  # {"model_cfg": a model config, "preprocess_cfg": ...}
HUB_WEIGHTS_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")  # open_clip's names, preferred first


def _open_clip():
    return require("open_clip", "openclip", "MODEL.BACKBONE.NAME openclip:<model>")


@contextlib.contextmanager
def quiet_logging():
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def config_keys():
    """{section: the keys open_clip reads there} of a model config: the model classes' arguments at the
    top (CLIP, CustomTextCLIP, CoCa), the fields of its tower configs below."""
    import dataclasses
    import inspect

    from open_clip import coca_model, model
    top = {"custom_text"}
    for cls in (model.CLIP, model.CustomTextCLIP, coca_model.CoCa):
        top |= set(inspect.signature(cls.__init__).parameters) - {"self", "cast_dtype"}
    fields = lambda cfg: {f.name for f in dataclasses.fields(cfg)}  # noqa: E731
    return {"": top, "vision_cfg": fields(model.CLIPVisionCfg), "text_cfg": fields(model.CLIPTextCfg),
            "multimodal_cfg": fields(coca_model.MultimodalCfg)}


def check_model_config(path, config=None, within=""):
    """Refuse, with one line naming the file and key, a model config open_clip could not build from:
    not a JSON object, missing embed_dim / vision_cfg / text_cfg, or holding a key open_clip does not
    read (a typo would be a TypeError deep inside open_clip). A text tower from Hugging Face
    (``hf_model_name``: a local folder, or a Hub id read from the local cache) must hold no code of its
    own (``huggingface.refuse_remote_code``). ``config``: the settings, when they are the object under
    the key ``within`` of the file (``model_cfg`` of a Hub repository's open_clip_config.json)."""
    from .huggingface import read_config_file, refuse_remote_code
    config = read_config_file(path) if config is None else config
    prefix = f"{within}." if within else ""
    if not isinstance(config, dict):
        raise UserError(f"{path}: key {within} must be an object of settings, got {type(config).__name__}")
    known = config_keys()
    for key in ("embed_dim", "vision_cfg", "text_cfg"):
        if key not in config:
            raise UserError(f"{path}: key {prefix}{key} is missing; an open_clip model config has embed_dim, "
                            f"vision_cfg and text_cfg")
    if isinstance(config["embed_dim"], bool) or not isinstance(config["embed_dim"], int) or config["embed_dim"] < 1:
        raise UserError(f"{path}: key {prefix}embed_dim must be a positive integer, got {config['embed_dim']!r:.100}")
    for section, allowed in known.items():
        content = config if not section else config.get(section, {})
        if not isinstance(content, dict):
            raise UserError(f"{path}: key {prefix}{section} must be an object of settings, got "
                            f"{type(content).__name__}")
        for key in content:
            if key not in allowed:
                where = f"{section}.{key}" if section else key
                raise UserError(f"{path}: unknown key {prefix}{where!s:.100} (open_clip's keys there: "
                                f"{', '.join(sorted(allowed))})")
    for key in ("hf_model_name", "hf_tokenizer_name"):
        name = config["text_cfg"].get(key)
        folder = hub.model_folder(name, f"{path}: key {prefix}text_cfg.{key}") if isinstance(name, str) else None
        if folder is not None:
            refuse_remote_code(folder)


def model_name(spec):
    """open_clip's name for ``spec``; a config JSON file is checked, then registered with open_clip."""
    open_clip = _open_clip()
    if spec.endswith(".json"):
        if not osp.isfile(spec):
            raise UserError(f"MODEL.BACKBONE.NAME openclip:{spec}: no such model config file")
        check_model_config(spec)
        open_clip.add_model_config(spec)
        return osp.splitext(osp.basename(spec))[0]
    if spec not in open_clip.list_models():
        raise UserError(f"MODEL.BACKBONE.NAME openclip:{spec}: not one of open_clip's models (open_clip.list_models()) "
                        f"nor a model config .json file")
    return spec


def cached_pretrained_file(pretrained):
    """The local file of a pretrained tag's download, or None when it is not in the local cache."""
    if pretrained.get("file"):
        return pretrained["file"]
    hub_file = pretrained.get("hf_hub", "")
    if hub_file:
        from huggingface_hub import try_to_load_from_cache
        repo, filename = osp.split(hub_file)
        for name in ([filename] if filename else HUB_WEIGHTS_FILES):
            found = try_to_load_from_cache(repo, name)
            if isinstance(found, str):
                return found
    url = pretrained.get("url", "")
    if url:
        path = osp.join(osp.expanduser("~/.cache/clip"), osp.basename(url))
        if osp.isfile(path):
            return path
    return None


def resolve_weights(name, weights):
    """(weights file, the tag's pretrained settings or {}) for ``MODEL.BACKBONE.WEIGHTS``."""
    open_clip = _open_clip()
    tags = open_clip.list_pretrained_tags_by_model(name)
    if not weights:
        raise UserError(f"MODEL.BACKBONE.NAME openclip:{name} needs MODEL.BACKBONE.WEIGHTS: a weights file, or one of "
                        f"open_clip's pretrained tags for it ({', '.join(tags) or 'none'})")
    if osp.isfile(osp.expanduser(weights)):
        return osp.expanduser(weights), {}
    if weights not in tags:
        raise UserError(f"MODEL.BACKBONE.WEIGHTS {weights}: neither a file nor one of open_clip's pretrained tags for "
                        f"{name} ({', '.join(tags) or 'none'})")
    pretrained = open_clip.get_pretrained_cfg(name, weights)
    path = cached_pretrained_file(pretrained)
    if path is None:
        source = pretrained.get("hf_hub") or pretrained.get("url")
        raise UserError(f"MODEL.BACKBONE.WEIGHTS {weights}: open_clip's {name} weights are not in the local cache and "
                        f"cannot be downloaded here; download them ({source}) where there is a network and pass the "
                        f"file as MODEL.BACKBONE.WEIGHTS")
    return path, pretrained


def locate_on_hub(repo_id, weights):
    """An OpenCLIP repository of the Hub (``hf-hub:org/name``) from its snapshot in the local cache: its
    open_clip_config.json (the model config under ``model_cfg``, the preprocessing under
    ``preprocess_cfg``) and its weights file. open_clip builds it from the folder (``local-dir:``)."""
    from . import weights_sha256
    from .huggingface import read_config_file
    spec = f"{HF_HUB_PREFIX}{repo_id}"
    if weights:
        raise UserError(f"MODEL.BACKBONE.WEIGHTS {weights}: openclip:{spec} takes its weights from the repository; "
                        f"leave MODEL.BACKBONE.WEIGHTS empty")
    if not hub.is_repo_id(repo_id):
        raise UserError(f"MODEL.BACKBONE.NAME openclip:{spec}: expected a Hub repository id (org/name)")
    folder = hub.cached_snapshot(repo_id, f"MODEL.BACKBONE.NAME openclip:{spec}")
    config_path = osp.join(folder, HUB_CONFIG_FILE)
    files = [osp.join(folder, n) for n in HUB_WEIGHTS_FILES if osp.isfile(osp.join(folder, n))]
    if not osp.isfile(config_path) or not files:
        raise UserError(f"MODEL.BACKBONE.NAME openclip:{spec}: its snapshot in the Hugging Face cache ({folder}) "
                        f"lacks {HUB_CONFIG_FILE} or weights ({' or '.join(HUB_WEIGHTS_FILES)}): not an OpenCLIP "
                        f"repository, or not downloaded whole (`hf download {repo_id}`)")
    content = read_config_file(config_path)
    if "model_cfg" not in content:
        raise UserError(f"{config_path}: key model_cfg is missing (an OpenCLIP repository's model config)")
    check_model_config(config_path, content["model_cfg"], within="model_cfg")
    preprocess = content.get("preprocess_cfg", {})
    if not isinstance(preprocess, dict):
        raise UserError(f"{config_path}: key preprocess_cfg must be an object of settings, got "
                        f"{type(preprocess).__name__}")
    sha256 = weights_sha256(files[0])
    identity = combined_sha256("openclip", repr(sorted(content["model_cfg"].items())),
                               repr(sorted(preprocess.items())), sha256)
    return identity, lambda device, prec, trust: OpenClip(f"local-dir:{folder}", files[0], {}, sha256, identity,
                                                          device, prec, source=spec)


def locate(spec, weights):
    from . import weights_sha256
    if spec.startswith(HF_HUB_PREFIX):
        return locate_on_hub(spec[len(HF_HUB_PREFIX):], weights)
    name = model_name(spec)
    path, pretrained = resolve_weights(name, weights)
    sha256 = weights_sha256(path)
    config = _open_clip().get_model_config(name)
    identity = combined_sha256("openclip", repr(sorted(config.items())), repr(sorted(pretrained.items())), sha256)
    return identity, lambda device, prec, trust: OpenClip(name, path, pretrained, sha256, identity, device, prec,
                                                          source=spec)


class OpenClip(ClipBackbone):
    kind = "openclip"

    def __init__(self, name, path, pretrained, sha256, identity, device, prec, source=None):
        """``source``: what MODEL.BACKBONE.NAME named (a config file, or open_clip's name)."""
        super().__init__()
        from .huggingface import stdin_closed
        open_clip = _open_clip()
        precision = "fp16" if device.type == "cuda" and prec == "fp16" else "fp32"
        preprocess = {k: pretrained[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in pretrained}
        # The random init before loading: off the global stream, and without open_clip's warning that
        # no pretrained weights were loaded (they are, next). A Hugging Face text tower is built by
        # transformers, which would ask on stdin whether to run a folder's code: stdin is empty.
        try:
            with torch.random.fork_rng(devices=[]), quiet_logging(), stdin_closed(), hub.offline():
                self.model = open_clip.create_model(name, pretrained=None, load_weights=False, precision=precision,
                                                    device=device,
                                                    force_quick_gelu=bool(pretrained.get("quick_gelu", False)),
                                                    force_preprocess_cfg=preprocess or None)
        except Exception as e:  # a value of the wrong type or size in the config, deep inside open_clip
            raise UserError(f"{source or name}: open_clip cannot build the model from its config "
                            f"({type(e).__name__}: {' '.join(str(e).split())[:300]})") from None
        try:
            open_clip.load_checkpoint(self.model, path, strict=True, weights_only=True)
        except Exception as e:  # open_clip raises several types for a file that does not fit
            raise UserError(f"{path}: not open_clip weights of {name} ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:300]})") from None
        self.freeze(device)
        self.weights_sha256, self.identity = sha256, identity
        with stdin_closed(), hub.offline():
            self.tokenizer = open_clip.get_tokenizer(name)
        self.text = getattr(self.model, "text", self.model)  # CustomTextCLIP keeps its text tower apart
        cfg = self.model.visual.preprocess_cfg
        self.preprocess = Preprocess(tuple(cfg["size"]) if isinstance(cfg["size"], (tuple, list)) else
                                     (cfg["size"], cfg["size"]), tuple(cfg["mean"]), tuple(cfg["std"]),
                                     cfg.get("interpolation", "bicubic"), cfg.get("resize_mode", "shortest"))
        if self.preprocess.interpolation not in ("bicubic", "bilinear"):
            raise UserError(f"openclip:{name}: interpolation {self.preprocess.interpolation!r} is not supported")
        self.context_length = self.tokenizer.context_length
        self.embed_dim = open_clip.get_model_config(name)["embed_dim"]

    @property
    def dtype(self):
        return next(self.model.visual.parameters()).dtype

    @property
    def logit_scale(self):
        return self.model.logit_scale

    @property
    def logit_bias(self):
        return getattr(self.model, "logit_bias", None)

    @property
    def token_embedding(self):
        return getattr(self.text, "token_embedding", None)

    def encode_image(self, images):
        return self.model.encode_image(images)

    def tokenize(self, texts):
        if any(self.token_count(text) + 2 > self.context_length for text in texts):
            longest = max(texts, key=self.token_count)
            raise UserError(f"prompt too long for the model's context length {self.context_length}: {longest!r}")
        return self.tokenizer(texts)

    def token_count(self, text):
        encode = getattr(self.tokenizer, "encode", None)
        if encode is not None:  # open_clip's BPE tokenizer
            return len(encode(text))
        return len(self.tokenizer.tokenizer(text, add_special_tokens=False)["input_ids"])  # a Hugging Face one

    def encode_text(self, tokens):
        return self.model.encode_text(tokens)

    def prompt_learning_problem(self):
        open_clip = _open_clip()
        if not isinstance(self.tokenizer, open_clip.tokenizer.SimpleTokenizer):
            return f"its tokenizer is {type(self.tokenizer).__name__}, not CLIP's BPE"
        if not isinstance(self.token_embedding, torch.nn.Embedding):
            return "its text tower is not open_clip's text transformer"
        pool = getattr(self.text, "text_pool_type", getattr(self.text, "pool_type", "argmax"))
        if pool != "argmax" or getattr(self.text, "cls_emb", None) is not None:
            return f"its text tower pools {pool!r}, not at the end-of-text token"
        return None
