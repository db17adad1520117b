"""A trained model you can hold: ``llu.load(path)`` and what it predicts.

    import llu
    model = llu.load("output/llu_shapes")           # a run folder of any trainer (its config.yaml, checkpoint)
    model = llu.load("exported/llu_shapes")         # a folder written by ``llu export``
    model = llu.load("toy")                         # a backbone name: zero-shot CLIP
    for p in model.predict(["a.png", "b.png"], ["red circle", "pink heart", "blue star"], top_k=2):
        print(p.labels, p.probabilities)

The object is the run's trainer built without data (``ClipTrainer.for_prediction``) and loaded with
its checkpoint exactly as ``--eval-only`` loads it; logits are that trainer's ``class_logits``, the
rule its evaluation runs (``model_inference`` calls it), in the evaluation's batches, on image
features from the same feature cache and transform. So predicting on a split's test images with
its class names gives the accuracy ``--eval-only`` records, to the last image.

Any class names, as the method allows: a prompt learner puts its learned context before each name;
LLU adapts a class text by its distance to its training texts (far ones stay zero-shot);
CLIP-Adapter adapts the image side only; Tip-Adapter's cache scores its training classes (any order
or subset) and leaves names it never saw to zero-shot CLIP (with a note); a mix is refused.
"""
import contextlib
import os
import os.path as osp
from dataclasses import dataclass

import torch
import yaml
from huggingface_hub import ModelHubMixin

from llu import config_files, engine, upstream_keys
from llu.utils import UserError, atomic_path, dotted_get, dotted_items, load_checkpoint_file, read_json, write_json

EXPORT_FORMAT = "llu-model"  # config.json's "format" of an exported model
EXPORT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
PLACEHOLDER_CLASSES = ["object"]  # what a trainer is built with when its training classes are unknown


@dataclass
class Prediction:
    """One image's ``top_k`` class names, most probable first, and their softmax probabilities."""
    labels: list
    probabilities: list

    @property
    def label(self):
        return self.labels[0]

    @property
    def probability(self):
        return self.probabilities[0]


@dataclass(frozen=True)
class _ImageFile:
    """An image to encode, as the feature cache takes it (a dataset item's fields)."""
    impath: str
    label: int = 0
    domain: int = 0
    classname: str = ""


# ---------------------------------------------------------------------------------------------
_ABSENT = object()

# Configs: a run's config.yaml (or the config section of its log.txt, also Dassl's), or an export's
# settings, merged into this version's defaults.

def _nested(dotted_key, value):
    tree = value
    for part in reversed(dotted_key.split(".")):
        tree = {part: tree}
    return tree


def config_from_mapping(content):
    """The defaults of this version (every trainer's keys declared) with ``content`` merged in, key by
    key: keys this version does not know (Dassl's, upstream's, another version's) are left out, as are
    values that do not fit a key (a log's empty value)."""
    from llu.train import load_project
    load_project()
    cfg = engine.get_cfg_default()
    engine.extend_cfg(cfg)
    for key, value in dotted_items(upstream_keys.translate_mapping(content)):
        if dotted_get(cfg, key, _ABSENT) is _ABSENT:
            continue
        try:
            cfg.merge_from_other_cfg(cfg.__class__(_nested(key, value)))
        except (KeyError, ValueError, AssertionError, TypeError):
            continue
    return cfg


def config_section_of_log(path):
    """The config a run printed into its log.txt after ``** Config **`` (this project's and Dassl's), or None."""
    with open(path, errors="replace") as f:
        lines = f.read().splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "** Config **") + 1
    except StopIteration:
        return None
    while start < len(lines) and set(lines[start].strip()) <= {"*"}:
        start += 1
    section = []
    for line in lines[start:]:
        top_level_key = line[:1].isupper() and ":" in line and line.split(":")[0].replace("_", "").isalnum()
        if not (line.startswith(" ") or top_level_key):
            break
        section.append(line)
    try:
        content = config_files.load_yaml("\n".join(section), path)
    except UserError:
        return None
    return content if isinstance(content, dict) else None


def run_config(folder):
    """A run folder's config mapping: its config.yaml, else the config its log.txt holds (a Dassl run's)."""
    path = osp.join(folder, "config.yaml")
    if osp.isfile(path):
        return config_files.read_run_config(path, section="TRAINER")
    log = osp.join(folder, "log.txt")
    content = config_section_of_log(log) if osp.isfile(log) else None
    if not content or not isinstance(content.get("TRAINER"), dict):
        raise UserError(f"{folder}: not a run folder (no config.yaml, nor a log.txt with the run's config) and "
                        f"not an exported model (no {CONFIG_NAME})")
    print(f"Note: {folder} has no config.yaml; using the config in its log.txt")
    return content


def config_as_dict(cfg):
    return yaml.safe_load(cfg.dump())


def _device(cfg, device):
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() and cfg.USE_CUDA else "cpu")


def _prediction_cfg(cfg, device):
    """A loaded run's config made ready to predict: nothing from its training machine is read again
    (MODEL.INIT_WEIGHTS, OUTPUT_DIR), and fp16 only where it runs (a GPU)."""
    cfg.MODEL.INIT_WEIGHTS = ""
    cfg.OUTPUT_DIR = ""
    cfg.RESUME = ""
    if device.type == "cpu" and cfg.TRAINER.PREC == "fp16":
        cfg.TRAINER.PREC = "fp32"  # what load_backbone would do, without its note
    return cfg


def _trainer_class(name):
    from llu.trainers import TRAINERS
    from llu.trainers.clip_common import ClipTrainer
    from llu.train import load_project
    load_project()
    try:
        trainer_class = engine.TRAINER_REGISTRY.get(name)
    except KeyError:
        trainer_class = TRAINERS.get(name)
    if not (isinstance(trainer_class, type) and issubclass(trainer_class, ClipTrainer)):
        raise UserError(f"TRAINER.NAME {name!r}: not one of this project's trainers ({', '.join(TRAINERS)}); "
                        f"it cannot be loaded to predict")
    if not trainer_class.predicts:
        raise UserError(f"{name}: llu.load / llu predict / llu export do not support this trainer yet (its image "
                        f"features or logits are its own); evaluate its runs with `llu train --eval-only --model-dir`")
    return trainer_class


def _backbone(cfg, device, name=None):
    from llu.backbones import EMBEDDINGS_BACKBONE, load_backbone
    name = name or cfg.MODEL.BACKBONE.NAME
    if name == EMBEDDINGS_BACKBONE:
        raise UserError("the model was trained on stored embeddings (MODEL.BACKBONE.NAME embeddings): it has no "
                        "image encoder to predict with; give backbone=<the CLIP that made the embeddings>")
    return load_backbone(name, device, cfg.TRAINER.PREC, cfg.MODEL.BACKBONE.WEIGHTS,
                         cfg.MODEL.BACKBONE.TRUST_TORCHSCRIPT)


# ---------------------------------------------------------------------------------------------
# Loading

def load(path, *, epoch=None, device=None, backbone=None):
    """A model to predict with, from ``path``: a run folder of any trainer (``train.py --output-dir``;
    its config.yaml and checkpoint, ``epoch`` as ``--load-epoch``), an ``llu export`` folder, or a
    backbone name (``toy``, ``ViT-B/16``, a weights file, ``openclip:...``, ``hf:...``) for zero-shot
    CLIP with the template "a photo of a {}.". ``backbone`` names other weights for the same model
    (checked against the recorded sha256 of an exported one)."""
    path = os.fspath(path)
    if osp.isdir(path) and osp.isfile(osp.join(path, CONFIG_NAME)) and not osp.isfile(osp.join(path, "config.yaml")):
        return load_exported(path, device=device, backbone=backbone)
    if osp.isdir(path):
        return load_run(path, epoch=epoch, device=device, backbone=backbone)
    return load_zero_shot(path, device=device)


def _training_classes_hint(folder):
    """The classes a run's own evaluation scored (results.json), when it evaluated what it trained."""
    path = osp.join(folder, "results.json")
    if not osp.isfile(path):
        return None
    try:
        results = read_json(path)
    except UserError:
        return None
    if results.get("model_dir") or not isinstance(results.get("per_class_accuracy"), dict):
        return None
    return list(results["per_class_accuracy"])


def _recorded_backbone_sha256(folder):
    path = osp.join(folder, "results.json")
    if not osp.isfile(path):
        return None
    try:
        return (read_json(path).get("provenance") or {}).get("backbone_sha256")
    except UserError:
        return None


def load_run(folder, *, epoch=None, device=None, backbone=None):
    """A run folder: its trainer built from its config, loaded with its checkpoint as ``--eval-only``."""
    cfg = config_from_mapping(run_config(folder))
    device = _device(cfg, device)
    _prediction_cfg(cfg, device)
    trainer_class = _trainer_class(cfg.TRAINER.NAME)
    clip_model = _backbone(cfg, device, backbone)
    recorded = _recorded_backbone_sha256(folder)
    if recorded and clip_model.weights_sha256 and recorded != clip_model.weights_sha256:
        raise UserError(f"{folder}: trained on backbone weights with sha256 {recorded[:16]}..., but "
                        f"{clip_model.backbone_name} here has {clip_model.weights_sha256[:16]}...; its learned "
                        f"tensors belong to those weights")
    from llu.trainers.clip_common import match_preprocessing
    with contextlib.redirect_stdout(open(os.devnull, "w")):  # the run's own notes, printed when it ran
        match_preprocessing(cfg, clip_model)
    classnames = _training_classes_hint(folder) or PLACEHOLDER_CLASSES
    trainer = trainer_class.for_prediction(cfg, clip_model, classnames, device)
    checkpoints = {}
    for name in trainer.get_model_names():
        path = trainer._checkpoint_path(folder, name, epoch)
        if not osp.isfile(path):
            raise UserError(f"{folder}: no {cfg.TRAINER.NAME} model at {path} (check epoch= / --load-epoch and that "
                            f"training finished)")
        checkpoints[name] = (path, load_checkpoint_file(path))
    saved_classes = next((list(checkpoint["state_dict"]["classnames"]) for _, checkpoint in checkpoints.values()
                          if isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict)
                          and "classnames" in checkpoint["state_dict"]), None)
    if saved_classes is not None and saved_classes != classnames:
        classnames = saved_classes  # the method keeps its classes (Tip-Adapter, class-specific contexts)
        trainer = trainer_class.for_prediction(cfg, clip_model, classnames, device)
    for name, (path, checkpoint) in checkpoints.items():
        trainer.load_checkpoint_state_from(path, name, checkpoint)
    trainer.set_model_mode("eval")
    training_classes = saved_classes or (None if classnames is PLACEHOLDER_CLASSES else classnames)
    return Model(trainer, osp.abspath(folder), training_classes)


def load_zero_shot(name, *, device=None):
    """Zero-shot CLIP of a backbone name, with CoOp's default template "a photo of a {}."."""
    cfg = config_from_mapping({"TRAINER": {"NAME": "ZeroshotCLIP"}, "MODEL": {"BACKBONE": {"NAME": name}}})
    device = _device(cfg, device)
    _prediction_cfg(cfg, device)
    cfg.TRAINER.PREC = "fp16" if device.type == "cuda" else "fp32"
    clip_model = _backbone(cfg, device)
    from llu.trainers.clip_common import match_preprocessing
    with contextlib.redirect_stdout(open(os.devnull, "w")):
        match_preprocessing(cfg, clip_model)
    trainer = _trainer_class("ZeroshotCLIP").for_prediction(cfg, clip_model, PLACEHOLDER_CLASSES, device)
    return Model(trainer, name, None)


def load_exported(folder, *, device=None, backbone=None):
    """An ``llu export`` folder: config.json (JSON) and model.safetensors; no run folder, no config file."""
    import safetensors.torch
    config_path, weights_path = osp.join(folder, CONFIG_NAME), osp.join(folder, WEIGHTS_NAME)
    record = read_json(config_path)
    if not isinstance(record, dict) or record.get("format") != EXPORT_FORMAT:
        raise UserError(f"{config_path}: not an exported llu model (format {record.get('format')!r} "
                        f"if isinstance(record, dict) else 'none'); write one with `llu export RUN OUT`")
    if record.get("version", 0) > EXPORT_VERSION:
        raise UserError(f"{config_path}: export format version {record['version']} is newer than this llu reads "
                        f"({EXPORT_VERSION}); update llu")
    cfg = config_from_mapping(record["settings"])
    device = _device(cfg, device)
    _prediction_cfg(cfg, device)
    trainer_class = _trainer_class(record["trainer"])
    from llu.backbones import locate
    wanted = record["backbone"]
    name = backbone or wanted["name"]
    identity, _ = locate(name, cfg.MODEL.BACKBONE.WEIGHTS)
    if identity != wanted["sha256"]:
        raise UserError(f"{folder}: the model was trained on backbone {wanted['name']} with sha256 "
                        f"{wanted['sha256'][:16]}..., but {name} here has {identity[:16]}...; pass "
                        f"backbone=<those weights> (llu predict: --backbone)")
    clip_model = _backbone(cfg, device, name)
    from llu.trainers.clip_common import match_preprocessing
    with contextlib.redirect_stdout(open(os.devnull, "w")):
        match_preprocessing(cfg, clip_model)
    classnames = record.get("training_classes") or PLACEHOLDER_CLASSES
    trainer = trainer_class.for_prediction(cfg, clip_model, classnames, device)
    module = record.get("learned_module")
    if module:
        if not osp.isfile(weights_path):
            raise UserError(f"{weights_path}: file not found (an exported model is config.json + {WEIGHTS_NAME})")
        try:
            tensors = safetensors.torch.load_file(weights_path, device=str(device))
        except Exception as e:  # safetensors raises its own types for damaged files
            raise UserError(f"{weights_path}: cannot be read as a safetensors file ({e})") from None
        state = {**tensors, **record.get("state_extras", {})}
        try:
            trainer.load_checkpoint_state(module, state)
        except UserError as e:
            raise UserError(f"{weights_path}: {e}") from None
    trainer.set_model_mode("eval")
    return Model(trainer, osp.abspath(folder), record.get("training_classes"))


# ---------------------------------------------------------------------------------------------
# The model

def _check_classnames(classnames):
    if isinstance(classnames, str):
        raise UserError(f"class names must be a list of names, not one string ({classnames[:40]!r}); "
                        f"split it, e.g. names.split(',')")
    names = [str(name).strip() for name in classnames]
    if not names or not all(names):
        raise UserError("give at least one class name, and no empty ones")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise UserError(f"class names must be distinct; repeated: {', '.join(repeated[:5])}")
    return names


class Model(ModelHubMixin, library_name="llu", tags=["clip", "few-shot", "zero-shot-image-classification"]):
    """A trained model (or zero-shot CLIP) that classifies images among any class names.

    ``predict(images, classnames, top_k=5)``: per image, the ``top_k`` names and probabilities;
    ``logits(images, classnames)``: [N, K] as the method's evaluation computes them;
    ``encode_images(images)``: CLIP's unit-norm image features [N, D] (what the method reads);
    ``encode_texts(classnames)``: the class texts' features the method reads (the learned prompts'
    for CoOp and ProGrad; the frozen template's for the others, adapted inside ``logits``).
    Images are file paths (encoded through the feature cache), PIL images, a batch of preprocessed
    images [N, 3, H, W] (``model.transform`` prepares one), or features [N, D] from ``encode_images``.
    ``save_pretrained(folder)`` is ``llu export``; ``Model.from_pretrained(folder)`` reads it back.
    """

    def __init__(self, trainer, source="", training_classes=None):
        from llu.engine.data.transforms import build_transform
        from llu.trainers.feature_cache import FeatureCache
        self.trainer = trainer
        self.cfg = trainer.cfg
        self.backbone = trainer.clip_model
        self.device = trainer.device
        self.source = source
        self.training_classes = list(training_classes) if training_classes else None
        self.transform = build_transform(self.cfg, is_train=False)
        self.feature_cache = FeatureCache(self.cfg, self.backbone, self.device)
        self._class_set = (None, None)  # (class names, their class_features): the last ones asked for

    @property
    def trainer_name(self):
        return self.cfg.TRAINER.NAME

    def __repr__(self):
        return (f"<llu Model {self.trainer_name} on {self.backbone.backbone_name} from {self.source}"
                + (f", trained on {len(self.training_classes)} classes>" if self.training_classes else ">"))

    # Images -> features

    def encode_images(self, images):
        """Unit-norm float32 features [N, D] (on the CPU) of ``images``; an unreadable file is an error."""
        features, failures = self.image_features(images)
        if failures:
            path, reason = next(iter(failures.items()))
            more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
            raise UserError(f"{path}: {reason}{more}")
        return features

    def image_features(self, images, desc=""):
        """(features of the readable images, in order; {path: why it cannot be read} of the others)."""
        if isinstance(images, torch.Tensor):
            return self._tensor_features(images), {}
        if isinstance(images, (str, os.PathLike)):
            images = [images]
        images = list(images)
        paths = [os.fspath(image) for image in images if isinstance(image, (str, os.PathLike))]
        pictures = [image for image in images if not isinstance(image, (str, os.PathLike))]
        for picture in pictures:
            if not hasattr(picture, "convert"):
                raise UserError(f"images must be file paths, PIL images or a tensor, got {type(picture).__name__}")
        file_features, failures = self._file_features(paths, desc) if paths else ({}, {})
        picture_features = self._picture_features(pictures) if pictures else None
        rows, next_picture = [], 0
        for image in images:
            if isinstance(image, (str, os.PathLike)):
                if os.fspath(image) in file_features:
                    rows.append(file_features[os.fspath(image)])
            else:
                rows.append(picture_features[next_picture])
                next_picture += 1
        return (torch.stack(rows) if rows else torch.empty(0, self.backbone.embed_dim)), failures

    @torch.no_grad()
    def _encode_batches(self, pixels):
        """Preprocessed images through the encoder in full FEATURES.BATCH_SIZE batches (as the cache does)."""
        size = self.cfg.FEATURES.BATCH_SIZE
        return torch.cat([self.feature_cache.encode_full_batch(pixels[start:start + size].to(self.device)).cpu()
                          for start in range(0, pixels.shape[0], size)]) if pixels.shape[0] else \
            torch.empty(0, self.backbone.embed_dim)

    def _tensor_features(self, batch):
        if batch.dim() == 2:
            if batch.shape[1] != self.backbone.embed_dim:
                raise UserError(f"image features must have {self.backbone.embed_dim} columns, got {batch.shape[1]}")
            return batch.float().cpu()
        if batch.dim() != 4:
            raise UserError(f"a tensor of images must be [N, 3, H, W] (preprocessed) or features [N, D], got shape "
                            f"{tuple(batch.shape)}")
        return self._encode_batches(batch)

    def _picture_features(self, pictures):
        return self._encode_batches(torch.stack([self.transform(picture) for picture in pictures]))

    def _file_features(self, paths, desc):
        """Files through the feature cache: each image encoded once per model and transform. A file
        that cannot be opened, or whose pixels cannot be decoded, is left out with its reason."""
        from PIL import Image
        failures = {}
        for path in dict.fromkeys(paths):
            try:
                with Image.open(path):
                    pass
            except FileNotFoundError:
                failures[path] = "file not found"
            except IsADirectoryError:
                failures[path] = "a folder, not an image"
            except Exception as e:  # PIL: UnidentifiedImageError, OSError, ...
                failures[path] = f"cannot be read as an image ({type(e).__name__}: {e})"
        readable = [path for path in dict.fromkeys(paths) if path not in failures]
        workers = self.cfg.DATALOADER.NUM_WORKERS
        if len(readable) <= 2 * self.cfg.FEATURES.BATCH_SIZE:
            self.cfg.DATALOADER.NUM_WORKERS = 0  # a few batches: starting workers costs more than decoding
        try:
            return self._cached_features(readable, failures, desc)
        finally:
            self.cfg.DATALOADER.NUM_WORKERS = workers

    def _cached_features(self, readable, failures, desc):
        from llu.engine.data.data_manager import read_image
        while readable:
            try:
                features, _ = self.feature_cache.get([_ImageFile(path) for path in readable], self.transform, 0,
                                                     desc=desc)
                return dict(zip(readable, features)), failures
            except UserError as error:  # pixels that could not be decoded (a truncated file)
                broken = {}
                for path in readable:
                    try:
                        read_image(path)
                    except UserError as e:
                        broken[path] = str(e).split(": ", 1)[-1]
                if not broken:
                    raise error
                failures.update(broken)
                readable = [path for path in readable if path not in broken]
        return {}, failures

    # Class names -> what the method reads of them

    def class_features(self, classnames):
        names = _check_classnames(classnames)
        if self._class_set[0] != names:
            with torch.no_grad():
                self._class_set = (names, self.trainer.class_features(names))
        return self._class_set[1]

    def encode_texts(self, classnames):
        """The class texts' unit-norm features [K, D] the method reads (the learned prompts' for CoOp and
        ProGrad; CoCoOp's depend on the image and are refused)."""
        features = self.class_features(classnames)
        if not isinstance(features, torch.Tensor):
            features = features[0] if isinstance(features, tuple) else None
        if features is None:
            raise UserError(f"{self.trainer_name}'s class texts depend on the image (its prompts are conditioned on "
                            f"it); use logits() or predict()")
        return features.float().cpu()

    # Logits and predictions

    def logits(self, images, classnames):
        """[N, K] logits of ``images`` over ``classnames``, the method's rule in its evaluation's batches."""
        return self.logits_of_features(self.encode_images(images), classnames)

    @torch.no_grad()
    def logits_of_features(self, features, classnames):
        names = _check_classnames(classnames)
        classes = self.class_features(names)
        self.trainer.set_model_mode("eval")
        size = self.cfg.DATALOADER.TEST.BATCH_SIZE
        chunks = [self.trainer.class_logits(features[start:start + size].to(self.device), classes).float().cpu()
                  for start in range(0, features.shape[0], size)]
        return torch.cat(chunks) if chunks else torch.empty(0, len(names))

    def predict(self, images, classnames, top_k=5):
        """Per image, a ``Prediction``: the ``top_k`` most probable of ``classnames`` and their probabilities."""
        names = _check_classnames(classnames)
        return self.predictions_of_logits(self.logits(images, names), names, top_k)

    @staticmethod
    def predictions_of_logits(logits, classnames, top_k=5):
        if top_k < 1:
            raise UserError(f"top_k must be at least 1, got {top_k}")
        probabilities = logits.float().softmax(dim=-1)
        values, indices = probabilities.topk(min(top_k, len(classnames)), dim=-1)
        return [Prediction([classnames[i] for i in row.tolist()], [float(v) for v in value_row])
                for row, value_row in zip(indices, values)]

    # Export (``llu export``): config.json + model.safetensors, the Hugging Face layout

    def export_record(self):
        """config.json of an exported model: what loads it with no run folder and no config file."""
        backbone = self.backbone
        if not backbone.identity or not backbone.weights_sha256:
            raise UserError(f"the backbone {backbone.backbone_name!r} cannot be identified (no sha256 of its "
                            f"weights), so an export could not make sure it is loaded with the same weights")
        module, _, extras = self.learned_state()
        preprocess = backbone.preprocess
        record = {
            "format": EXPORT_FORMAT, "version": EXPORT_VERSION,
            "trainer": self.trainer_name,
            "backbone": {"name": backbone.backbone_name, "kind": backbone.kind, "sha256": backbone.identity,
                         "weights_sha256": backbone.weights_sha256, "weights": self.cfg.MODEL.BACKBONE.WEIGHTS},
            "preprocessing": {"size": list(preprocess.size), "mean": list(preprocess.mean), "std": list(preprocess.std),
                              "interpolation": preprocess.interpolation, "resize_mode": preprocess.resize_mode},
            "templates": self.trainer.prediction_templates(),
            "training_classes": self.training_classes,
            "learned_module": module,
            "state_extras": extras,
            "settings": self.settings(),
            "source": osp.basename(self.source.rstrip("/")),
        }
        if hasattr(self.trainer, "export_config"):  # e.g. LLU's adapter arguments, read by its from_pretrained
            record.update(self.trainer.export_config())
        return record

    def settings(self):
        """The run's config as far as prediction reads it (no paths of the training machine)."""
        full = config_as_dict(self.cfg)
        return {"TRAINER": full["TRAINER"], "INPUT": full["INPUT"],
                "MODEL": {"BACKBONE": {key: full["MODEL"]["BACKBONE"][key] for key in ("NAME", "WEIGHTS",
                                                                                        "TRUST_TORCHSCRIPT")}},
                "DATASET": {"NAME": full["DATASET"]["NAME"]},
                "DATALOADER": {"TEST": {"BATCH_SIZE": full["DATALOADER"]["TEST"]["BATCH_SIZE"]}},
                "FEATURES": {"BATCH_SIZE": full["FEATURES"]["BATCH_SIZE"]},
                "TEST": {"FINAL_MODEL": full["TEST"]["FINAL_MODEL"]}, "USE_CUDA": full["USE_CUDA"]}

    def learned_state(self):
        """(module name or None, its learned tensors, its other checkpoint entries as JSON values)."""
        names = self.trainer.get_model_names()
        if not names:
            return None, {}, {}
        if len(names) > 1:
            raise UserError(f"{self.trainer_name} has {len(names)} learned modules; an export holds one")
        state = self.trainer.checkpoint_state(names[0])
        tensors = {key: value.detach().cpu().contiguous() for key, value in state.items()
                   if isinstance(value, torch.Tensor)}
        extras = {key: value for key, value in state.items() if not isinstance(value, torch.Tensor)}
        return names[0], tensors, extras

    def _save_pretrained(self, save_directory):
        import safetensors.torch
        record = self.export_record()
        _, tensors, _ = self.learned_state()
        with atomic_path(osp.join(save_directory, WEIGHTS_NAME)) as tmp:
            safetensors.torch.save_file(tensors, tmp, metadata={"format": "pt", "llu": EXPORT_FORMAT})
        write_json(record, osp.join(save_directory, CONFIG_NAME))

    @classmethod
    def _from_pretrained(cls, *, model_id, revision=None, cache_dir=None, force_download=False,
                         local_files_only=False, token=None, device=None, backbone=None, **kwargs):
        folder = model_id
        if not osp.isdir(model_id):  # a Hub repository: its two files
            from huggingface_hub import hf_hub_download
            options = dict(repo_id=model_id, revision=revision, cache_dir=cache_dir, force_download=force_download,
                           local_files_only=local_files_only, token=token)
            folder = osp.dirname(hf_hub_download(filename=CONFIG_NAME, **options))
            hf_hub_download(filename=WEIGHTS_NAME, **options)
        return load_exported(folder, device=device, backbone=backbone)
