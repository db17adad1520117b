"""What every CLIP trainer shares, written once.

- loading CLIP weights by name (OpenAI's table, the project's shipped ``toy``) or from a file;
- precision (fp16 only where a GPU runs it);
- the per-dataset prompt templates and class-text encoding;
- the text encoder over prompt embeddings used by prompt-learning trainers;
- ``ClipTrainer``, the base of every trainer: CLIP loaded before the data (so the input size follows
  the model), the class texts, Eq. 1's logits, training on cached image features (``feature_cache.py``)
  or on images, when the learning rate steps, and whether a trainer trains at all.
"""
import contextlib
import os
import os.path as osp
import zipfile

import clip
import clip.model
import torch
import torch.nn as nn
import torch.nn.functional as F

from llu.engine import CN, TrainerX, build_lr_scheduler, build_optimizer, compute_accuracy, config_extension
from llu.utils import Terminated, UserError, file_sha256, load_torch
from llu.datasets import imagefolder
from llu.world import toyclip

from . import torchscript
from .feature_cache import FeatureCache


@config_extension
def add_clip_config(cfg):
    cfg.TRAINER.PREC = "fp16"  # fp16, fp32 or amp; CPU always runs fp32
    # A TorchScript weights file (OpenAI's .pt) is read without running its code; if that reader
    # cannot read it, True lets torch.jit.load read it (running the code it carries), False refuses.
    cfg.MODEL.BACKBONE.TRUST_TORCHSCRIPT = True
    cfg.FEATURES = CN()
    cfg.FEATURES.CACHE_DIR = ""  # "" = $LLU_CACHE/features (default ~/.cache/llu/features)
    cfg.FEATURES.CACHE_MAX_GB = 50.0  # least recently used features are removed beyond this (0: no bound)
    cfg.FEATURES.AUG_VIEWS = 0  # augmented views cached per training image (0: un-augmented only)
    cfg.FEATURES.BATCH_SIZE = 64  # images per encoder pass when filling the cache


# ---------------------------------------------------------------------------------------------
# Loading weights

TOY_BACKBONE = "toy"  # the built-in world's ToyCLIP, shipped with the project


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
    raise UserError(f"MODEL.BACKBONE.NAME {name!r}: neither a known model ({names}) nor an existing file")


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
    state_dict = load_torch(path)
    if isinstance(state_dict, dict) and "state_dict" in state_dict:
        state_dict = state_dict["state_dict"]
    if not isinstance(state_dict, dict) or "visual.conv1.weight" not in state_dict:
        raise UserError(f"{path}: not a CLIP state dict (no 'visual.conv1.weight' key)")
    return state_dict


_weights_sha256 = {}


def weights_sha256(path):
    """The sha256 of a weights file (memoised per process by path, size and mtime)."""
    stat = os.stat(path)
    key = (osp.abspath(path), stat.st_size, stat.st_mtime_ns)
    if key not in _weights_sha256:
        _weights_sha256[key] = file_sha256(path)
    return _weights_sha256[key]


_loaded = {}  # the last backbone built: (weights sha256, device, precision) -> model


def load_clip(name, device="cpu", prec="fp32", trust_torchscript=True):
    """A frozen CLIP from ``name``; it carries ``weights_sha256``, ``weights_id`` and ``backbone_name``.

    On a CPU every precision runs as fp32 (CPU kernels for fp16 are missing or slow). A process that
    runs one run after another (a sweep worker) builds each backbone once: the model is frozen and
    in eval mode, so runs can share it.
    """
    if prec not in ("fp16", "fp32", "amp"):
        raise UserError(f"TRAINER.PREC must be fp16, fp32 or amp, got {prec!r}")
    path = resolve_weights(name)
    device = torch.device(device)
    key = (weights_sha256(path), str(device), prec)
    if device.type == "cpu" and prec == "fp16":
        print("Note: fp16 cannot run on the CPU; using fp32")
    if key not in _loaded:
        _loaded.clear()  # one backbone in memory at a time
        _loaded[key] = build_frozen_clip(path, device, prec, trust_torchscript)
    model = _loaded[key].eval()
    model.backbone_name = name
    return model


def build_frozen_clip(path, device, prec, trust_torchscript=True):
    # build_model initialises a random model before loading the weights: keep that off the global
    # random stream, so a run draws the same numbers whether or not its process built the model.
    try:
        with torch.random.fork_rng(devices=[]):
            model = clip.model.build_model(read_clip_state_dict(path, trust_torchscript))
    except (KeyError, RuntimeError, ValueError) as e:
        raise UserError(f"{path}: the state dict does not describe a CLIP model ({type(e).__name__}: {e})") from None
    if device.type == "cpu" or prec != "fp16":
        model.float()
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    model.weights_sha256 = weights_sha256(path)
    model.weights_id = model.weights_sha256[:16]
    return model


def match_input_size(cfg, clip_model):
    """Make ``INPUT.SIZE`` follow the model's input resolution, saying so when it changes."""
    resolution = clip_model.visual.input_resolution
    if tuple(cfg.INPUT.SIZE) != (resolution, resolution):
        print(f"Note: INPUT.SIZE {tuple(cfg.INPUT.SIZE)} differs from the model's input resolution "
              f"{resolution}; using ({resolution}, {resolution})")
        was_frozen = cfg.is_frozen()
        cfg.defrost()
        cfg.INPUT.SIZE = (resolution, resolution)
        if was_frozen:
            cfg.freeze()


# ---------------------------------------------------------------------------------------------
# Prompts and text encoding

# The hand-made template of each dataset (CoOp/CoCoOp's zero-shot table); built-in world included.
DATASET_TEMPLATES = {
    "OxfordPets": "a photo of a {}, a type of pet.",
    "OxfordFlowers": "a photo of a {}, a type of flower.",
    "FGVCAircraft": "a photo of a {}, a type of aircraft.",
    "DescribableTextures": "{} texture.",
    "EuroSAT": "a centered satellite photo of {}.",
    "StanfordCars": "a photo of a {}.",
    "Food101": "a photo of {}, a type of food.",
    "SUN397": "a photo of a {}.",
    "Caltech101": "a photo of a {}.",
    "UCF101": "a photo of a person doing {}.",
    "ImageNet": "a photo of a {}.",
    "ImageNetSketch": "a photo of a {}.",
    "ImageNetV2": "a photo of a {}.",
    "ImageNetA": "a photo of a {}.",
    "ImageNetR": "a photo of a {}.",
}
DEFAULT_TEMPLATE = "a photo of a {}."

# The seven ImageNet templates CLIP's authors selected for ensembling (used by ZeroshotCLIP2).
ENSEMBLE_TEMPLATES = [
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
]


def dataset_template(dataset_name):
    return DATASET_TEMPLATES.get(dataset_name, DEFAULT_TEMPLATE)


def class_prompts(classnames, template):
    return [template.format(name.replace("_", " ")) for name in classnames]


def tokenize(texts, clip_model):
    """Tokenise to the model's own context length (77 for OpenAI's models)."""
    try:
        return clip.tokenize(texts, context_length=clip_model.context_length)
    except RuntimeError as e:
        raise UserError(f"prompt too long for the model's context length {clip_model.context_length}: {e}") from None


@torch.no_grad()
def encode_texts(clip_model, texts):
    """Unit-norm text features (float32) of a list of strings."""
    device = clip_model.positional_embedding.device
    features = clip_model.encode_text(tokenize(texts, clip_model).to(device)).float()
    return F.normalize(features, dim=-1)


def encode_class_texts(clip_model, classnames, template):
    """Unit-norm features of one prompt per class from a template such as 'a photo of a {}.'"""
    return encode_texts(clip_model, class_prompts(classnames, template))


def ensemble_class_texts(clip_model, classnames, templates):
    """Prompt ensembling: per class, the renormalised mean of its unit-norm features over ``templates``
    (one template: its features as they are, bit for bit)."""
    per_template = [encode_class_texts(clip_model, classnames, t) for t in templates]
    if len(per_template) == 1:
        return per_template[0]
    return F.normalize(sum(per_template) / len(per_template), dim=-1)


class TextEncoder(nn.Module):
    """CLIP's text transformer run over prompt *embeddings* (what prompt learners optimise)."""

    def __init__(self, clip_model):
        super().__init__()
        self.transformer = clip_model.transformer
        self.positional_embedding = clip_model.positional_embedding
        self.ln_final = clip_model.ln_final
        self.text_projection = clip_model.text_projection
        self.dtype = clip_model.dtype

    def forward(self, prompt_embeddings, tokenized_prompts):
        x = prompt_embeddings + self.positional_embedding.type(self.dtype)
        x = self.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)
        x = self.ln_final(x).type(self.dtype)
        # The feature of each prompt is read at its end-of-text token (the largest token id).
        eot = tokenized_prompts.argmax(dim=-1)
        return x[torch.arange(x.shape[0]), eot] @ self.text_projection


# ---------------------------------------------------------------------------------------------
# Trainer bases

def copy_tensors(obj):
    """``obj`` with every tensor in its dicts, lists and tuples cloned."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {key: copy_tensors(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(copy_tensors(value) for value in obj)
    return obj


class TrainingDiverged(UserError):
    """The loss or a learned parameter stopped being finite."""


class ClipTrainer(TrainerX):
    """Base of every CLIP trainer: CLIP is loaded (frozen) before the data, so that the input size
    can follow the model, and the class names come from the dataset.

    It also keeps a run honest: ``check_run`` refuses runs that would record an untrained model
    under a trainer's name; every step checks the loss and the learned parameters for finiteness;
    and a SIGTERM during training writes the state of the last finished epoch as a checkpoint to
    resume from (``--resume``), as a scheduler's kill would otherwise lose it.
    """

    learns = True  # False: nothing is learned, so evaluating without --model-dir is the method itself
    trains_epochs = True  # False: ``train`` runs no epoch loop, so OPTIM.MAX_EPOCH is not read

    @classmethod
    def check_run(cls, cfg, eval_only, model_dir):
        """Refuse a command that would write results of a model that did not do what its name says."""
        name = cfg.TRAINER.NAME
        if eval_only and not model_dir and cls.learns:
            raise UserError(f"--eval-only of {name} needs --model-dir (the folder of a trained {name} run); "
                            f"without it the untrained model would be reported as {name}")
        if not eval_only and cls.trains_epochs and cfg.OPTIM.MAX_EPOCH < 1:
            raise UserError(f"OPTIM.MAX_EPOCH must be at least 1 to train {name}, got {cfg.OPTIM.MAX_EPOCH}")

    def build_data_loader(self):
        cfg = self.cfg
        self.clip_model = load_clip(cfg.MODEL.BACKBONE.NAME, self.device, cfg.TRAINER.PREC,
                                    trust_torchscript=cfg.MODEL.BACKBONE.TRUST_TORCHSCRIPT)
        match_input_size(cfg, self.clip_model)
        super().build_data_loader()
        self.classnames = self.dm.dataset.classnames
        self.image_loader = self.train_loader_x
        self.feature_cache = FeatureCache(self.cfg, self.clip_model, self.device)
        self._split_features = {}

    # What a method's build_model uses: class texts, Eq. 1's logits, a learned module to register.

    @property
    def logit_scale(self):
        return self.clip_model.logit_scale.exp().float()

    def class_text_features(self, templates=None):
        """Unit-norm text features of the classes: the dataset's hand-made template (CoOp's zero-shot
        table), or the renormalised mean over ``templates`` (prompt ensembling)."""
        templates = templates or [dataset_template(self.cfg.DATASET.NAME)]
        return ensemble_class_texts(self.clip_model, self.classnames, templates).to(self.device)

    def cosine_logits(self, image_features, text_features):
        """Eq. 1 of the LLU paper: CLIP's learned 1 / tau times the cosines (features unit-norm)."""
        return self.logit_scale * image_features @ text_features.t()

    def register_learned(self, name, module, optimizer=None):
        """Register ``module`` with the OPTIM settings' optimiser (or ``optimizer``) and schedule."""
        optimizer = optimizer or build_optimizer(module, self.cfg.OPTIM)
        self.register_model(name, module, optimizer, build_lr_scheduler(optimizer, self.cfg.OPTIM))

    def provenance(self):
        return {"backbone_sha256": self.clip_model.weights_sha256, **super().provenance()}

    def dataset_label(self, cfg):
        return imagefolder.dataset_label(cfg)

    # Training: whether there are epochs, where their batches come from, when the LR steps.

    def trains_on_features(self):
        """Training batches are cached image features (CLIP never runs in the loop); trainers whose
        training must see freshly augmented pixels every epoch say False and get the image loader."""
        return True

    def train_without_epochs(self):
        """What ``train`` does for a trainer with ``trains_epochs = False``."""
        raise NotImplementedError

    def run_epoch(self):
        """One epoch over cached features (or images), then the learning rate steps: once per epoch,
        after its last batch, as in Dassl's trainers."""
        self.train_loader_x = list(self.feature_batches()) if self.trains_on_features() else self.image_loader
        super().run_epoch()
        self.update_lr()

    def parse_batch_train(self, batch):
        if "features" in batch:
            return batch["features"], batch["label"]
        return batch["img"].to(self.device), batch["label"].to(self.device)

    def autocast(self):
        """Mixed precision for the training step; trainers that support amp return an autocast."""
        return contextlib.nullcontext()

    def forward_backward(self, batch):
        """One cross-entropy step (Eq. 3 of the LLU paper) on ``model_inference``'s logits."""
        inputs, label = self.parse_batch_train(batch)
        with self.autocast():
            logits = self.model_inference(inputs)
            loss = F.cross_entropy(logits, label)
        self.model_backward_and_update(loss)
        return {"loss": loss.item(), "acc": compute_accuracy(logits, label)[0].item()}

    # Keeping a run honest: finite steps, and a SIGTERM's resumable checkpoint.

    def train(self):
        if not self.trains_epochs:
            return self.train_without_epochs()
        self._last_epoch_records = None
        try:
            super().train()
        except Terminated:
            raise Terminated(self._save_last_epoch()) from None

    def after_epoch(self):
        super().after_epoch()
        # Kept in memory (learned parameters are small) for a SIGTERM that comes mid-epoch; copied,
        # as state dicts hold the very tensors the next epoch updates in place.
        self._last_epoch_records = copy_tensors(
            {name: self.checkpoint_record(name, self.epoch) for name in self.get_model_names()})

    def _save_last_epoch(self):
        records = getattr(self, "_last_epoch_records", None)
        if not records:
            return "no epoch had finished; no results written"
        self.write_checkpoints(records, self.output_dir)
        epoch = next(iter(records.values()))["epoch"]
        return (f"the state after epoch {epoch} is saved: continue with --resume {self.output_dir}; "
                f"no results written")

    def detect_anomaly(self, loss):
        if not torch.isfinite(loss).all():
            self._diverged(f"the loss is {loss.item()}")

    def model_update(self, names=None):
        super().model_update(names)
        self.check_parameters(names)

    def check_parameters(self, names=None):
        for name in self.get_model_names(names):
            for key, param in self._models[name].named_parameters():
                if param.requires_grad and not torch.isfinite(param).all():
                    self._diverged(f"{name}.{key} is no longer finite")

    def _diverged(self, what):
        latest = osp.join(self.output_dir, self.get_model_names()[0], "checkpoint")
        kept = f"the last checkpoint ({osp.dirname(latest)}) is kept" if osp.isfile(latest) else "no checkpoint"
        raise TrainingDiverged(f"training diverged at epoch {self.epoch + 1}, batch {self.batch_idx + 1}: {what}; "
                               f"no results written, {kept} (lower OPTIM.LR?)")

    # Features: CLIP's image encoder runs once per image and view (feature_cache.py).

    def split_data(self, split):
        """The items of ``train``, ``val`` (the few-shot val), ``full_val`` (the whole val split, before
        few-shot sampling) or ``test``."""
        dataset = self.dm.dataset
        return {"train": dataset.train_x, "val": dataset.val, "test": dataset.test,
                "full_val": getattr(dataset, "full_val", None) or dataset.val}[split]

    def split_features(self, split):
        """Un-augmented features and labels of a ``split_data`` split (cached on disk)."""
        if split not in self._split_features:
            self._split_features[split] = self.feature_cache.get(self.split_data(split), self.dm.tfm_test, 0,
                                                                 desc=split)
        return self._split_features[split]

    def train_views(self):
        """[V+1, N, D] features of the training images: view 0 plus ``FEATURES.AUG_VIEWS`` augmented views."""
        if "train_views" not in self._split_features:
            data = self.dm.dataset.train_x
            views = [self.split_features("train")[0]]
            for view in range(1, self.cfg.FEATURES.AUG_VIEWS + 1):
                views.append(self.feature_cache.get(data, self.dm.tfm_train, view, desc="train")[0])
            self._split_features["train_views"] = torch.stack(views)
        return self._split_features["train_views"]

    def feature_batches(self):
        """One epoch of shuffled training batches; like the image loader, drops the last partial
        batch only when the set holds at least one full batch. Each image comes as one of its
        augmented views when there are any (CoOp re-crops every image every epoch), else un-augmented."""
        views = self.train_views()
        if views.shape[0] > 1:
            views = views[1:]
        labels = self.split_features("train")[1]
        n = labels.shape[0]
        batch_size = self.cfg.DATALOADER.TRAIN_X.BATCH_SIZE
        order = torch.randperm(n)
        chosen_view = torch.randint(views.shape[0], (n,))
        n_batches = n // batch_size if n >= batch_size else 1
        for b in range(n_batches):
            idx = order[b * batch_size:(b + 1) * batch_size]
            yield {"features": views[chosen_view[idx], idx].to(self.device), "label": labels[idx].to(self.device)}

    def evaluation_batches(self, split):
        features, labels = self.split_features(split)
        batch_size = self.cfg.DATALOADER.TEST.BATCH_SIZE
        for start in range(0, features.shape[0], batch_size):
            yield (features[start:start + batch_size].to(self.device),
                   labels[start:start + batch_size].to(self.device))
