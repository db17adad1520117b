"""What every CLIP trainer shares, written once.

- the backbone (``llu.backbones``: OpenAI's CLIP, OpenCLIP, Hugging Face, or stored embeddings),
  loaded before the data so that the images are prepared as the model expects;
- class-text encoding, with the prompt templates that are facts of each dataset's reader
  (``llu.datasets.DatasetFacts``: ``template``, ``ensemble_templates``);
- ``ClipTrainer``, the base of every trainer: the class texts, Eq. 1's logits, training on cached
  image features (``feature_cache.py``) or on images, when the learning rate steps, and whether a
  trainer trains at all.
"""
import contextlib
import os.path as osp
from collections import OrderedDict

import torch
import torch.nn.functional as F

from llu.backbones import EMBEDDINGS_BACKBONE, load_backbone, preprocessing
from llu.backbones.embeddings import EmbeddingsBackbone
from llu.datasets import dataset_facts, dataset_label
from llu.engine import TrainerX, build_lr_scheduler, build_optimizer, compute_accuracy, config_extension
from llu.utils import Terminated, UserError, load_checkpoint_file

from .feature_cache import FeatureCache


@config_extension
def add_clip_config(cfg):
    cfg.TRAINER.PREC = "fp16"  # fp16, fp32 or amp; CPU always runs fp32
    # openclip:<model>: a weights file, or one of open_clip's pretrained tags (from its local cache).
    cfg.MODEL.BACKBONE.WEIGHTS = ""
    # A TorchScript weights file (OpenAI's .pt) is read without running its code; if that reader
    # cannot read it, True lets torch.jit.load read it (running the code it carries), False refuses.
    cfg.MODEL.BACKBONE.TRUST_TORCHSCRIPT = True


def _same_setting(a, b):
    """Equal names, or equal numbers (a tuple of ints and a list of floats may be the same size)."""
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    return [float(x) for x in a] == [float(x) for x in b]


def match_preprocessing(cfg, clip_model=None, notes=None):
    """Make INPUT's size, statistics, interpolation and resize mode the backbone's
    (``llu.backbones.preprocessing``, or ``clip_model``'s when it is built already), saying what changed
    (printed, or appended to the list ``notes`` for a caller whose log is not open yet).
    train.py calls it before the config is frozen, saved and logged; a trainer calls it again
    (``save_config``) for a config built elsewhere (Dassl's train.py, a notebook), before the config is saved."""
    preprocess = preprocessing(cfg) if clip_model is None else clip_model.preprocess
    if preprocess is None:  # stored embeddings: no images
        return
    wanted = {"SIZE": tuple(preprocess.size), "PIXEL_MEAN": list(preprocess.mean), "PIXEL_STD": list(preprocess.std),
              "INTERPOLATION": preprocess.interpolation, "RESIZE_MODE": preprocess.resize_mode}
    current = {"SIZE": tuple(cfg.INPUT.SIZE), "PIXEL_MEAN": list(cfg.INPUT.PIXEL_MEAN),
               "PIXEL_STD": list(cfg.INPUT.PIXEL_STD), "INTERPOLATION": cfg.INPUT.INTERPOLATION,
               "RESIZE_MODE": cfg.INPUT.RESIZE_MODE}
    changed = {key: value for key, value in wanted.items() if not _same_setting(value, current[key])}
    if not changed:
        return
    was_frozen = cfg.is_frozen()
    cfg.defrost()
    for key, value in changed.items():
        model_value = f"input resolution {value[0]}" if key == "SIZE" else value
        note = f"Note: INPUT.{key} {current[key]} differs from the model's {model_value}; using {value}"
        print(note) if notes is None else notes.append(note)
        cfg.INPUT[key] = value
    if was_frozen:
        cfg.freeze()


# ---------------------------------------------------------------------------------------------
# Prompts and text encoding

def dataset_template(dataset_name):
    """The hand-made template of DATASET.NAME ``dataset_name``: its reader's ``template``."""
    return dataset_facts(dataset_name).template


def encode_class_texts(backbone, classnames, template):
    """Unit-norm features of one prompt per class from a template such as 'a photo of a {}.'"""
    return backbone.class_text_features(classnames, [template])


def stored_embeddings_backbone(dataset, device):
    """``embeddings``: the backbone of a dataset of stored embeddings with class-text embeddings."""
    store = getattr(dataset, "embeddings", None)
    if store is None:
        raise UserError("MODEL.BACKBONE.NAME embeddings needs a dataset of stored embeddings "
                        "(configs/datasets/embeddings.yaml)")
    if store.text_features is None:
        raise UserError(f"{store.path}: holds no text_features, so MODEL.BACKBONE.NAME embeddings has no class "
                        f"texts; store them, or give the backbone that made the image features")
    return EmbeddingsBackbone(store).to(device)


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
    """Base of every CLIP trainer: CLIP is loaded (frozen) before the data, which is prepared as the
    model expects (``match_preprocessing``), and the class names come from the dataset.

    It also keeps a run honest: ``check_run`` refuses runs that would record an untrained model
    under a trainer's name; every step checks the loss and the learned parameters for finiteness;
    and a SIGTERM during training writes the state of the last finished epoch as a checkpoint to
    resume from (``--resume``), as a scheduler's kill would otherwise lose it.
    """

    learns = True  # False: nothing is learned, so evaluating without --model-dir is the method itself
    trains_epochs = True  # False: ``train`` runs no epoch loop, so OPTIM.MAX_EPOCH is not read
    names_new_classes = True  # False: a trained model scores its training classes only (no new-class evaluation)
    predicts = True  # False: llu.load cannot rebuild its prediction (class_features / class_logits) yet
    display_name = ""  # its name in the paper's tables ("": the class name)
    table_order = None  # its place in the tables (the paper's order); None: after those that have one, by name

    @classmethod
    def check_run(cls, cfg, eval_only, model_dir):
        """Refuse a command that would write results of a model that did not do what its name says."""
        name = cfg.TRAINER.NAME
        if eval_only and not model_dir and cls.learns:
            raise UserError(f"--eval-only of {name} needs --model-dir (the folder of a trained {name} run); "
                            f"without it the untrained model would be reported as {name}")
        if not eval_only and cls.trains_epochs and cfg.OPTIM.MAX_EPOCH < 1:
            raise UserError(f"OPTIM.MAX_EPOCH must be at least 1 to train {name}, got {cfg.OPTIM.MAX_EPOCH}")

    def save_config(self):
        """The config as it runs: INPUT as the backbone prepares images (train.py's configs have it
        already; one built elsewhere, by Dassl's train.py or a notebook, gets it here)."""
        match_preprocessing(self.cfg)
        super().save_config()

    def build_data_loader(self):
        """The backbone, then the data prepared as it expects (a dataset of stored embeddings is read
        first when it is the backbone too)."""
        cfg = self.cfg
        if cfg.MODEL.BACKBONE.NAME == EMBEDDINGS_BACKBONE:
            super().build_data_loader()
            self.clip_model = stored_embeddings_backbone(self.dm.dataset, self.device)
        else:
            self.clip_model = load_backbone(cfg.MODEL.BACKBONE.NAME, self.device, cfg.TRAINER.PREC,
                                            cfg.MODEL.BACKBONE.WEIGHTS, cfg.MODEL.BACKBONE.TRUST_TORCHSCRIPT)
            super().build_data_loader()
        self.stored_embeddings = getattr(self.dm.dataset, "embeddings", None)
        if self.stored_embeddings is not None and self.stored_embeddings.dim != self.clip_model.embed_dim:
            raise UserError(f"{self.stored_embeddings.path}: its image features have {self.stored_embeddings.dim} "
                            f"dimensions, MODEL.BACKBONE.NAME {cfg.MODEL.BACKBONE.NAME} embeds into "
                            f"{self.clip_model.embed_dim}; give the backbone that made them")
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
        return self.clip_model.class_text_features(self.classnames, templates).to(self.device)

    def cosine_logits(self, image_features, text_features):
        """Eq. 1 of the LLU paper: CLIP's learned 1 / tau times the cosines (features unit-norm)."""
        return self.logit_scale * image_features @ text_features.t()

    # Prediction on any class names (``llu.load``, ``llu predict``): ``class_features`` turns a class
    # set into what the method's rule reads, ``class_logits`` applies the rule; ``model_inference``
    # is ``class_logits`` on the run's own classes, so predictions and evaluation are one code path.

    def templates(self):
        """The templates of the class texts: the dataset's hand-made one (trainers override)."""
        return [dataset_template(self.cfg.DATASET.NAME)]

    def class_features(self, classnames):
        """What the method's logits read of a class set: the text features of ``templates()``."""
        return self.clip_model.class_text_features(list(classnames), self.templates()).to(self.device)

    def class_logits(self, image_features, classes):
        """Logits of unit-norm image features against ``classes`` (from ``class_features``): Eq. 1."""
        return self.cosine_logits(image_features, classes)

    def prediction_templates(self):
        """The class-text templates a prediction uses, as exported (``llu export``)."""
        return list(self.templates())

    @classmethod
    def for_prediction(cls, cfg, clip_model, classnames, device):
        """This trainer's model without data or output folder: ``build_prediction_model`` for the
        training ``classnames`` (what the method keeps of them), in eval mode, ready for
        ``load_checkpoint_state`` and then ``class_features`` / ``class_logits``."""
        trainer = cls.__new__(cls)
        trainer._models, trainer._optims, trainer._scheds = OrderedDict(), OrderedDict(), OrderedDict()
        trainer.check_cfg(cfg)
        trainer.cfg, trainer.device, trainer.clip_model = cfg, torch.device(device), clip_model
        trainer.classnames, trainer.output_dir = list(classnames), ""
        trainer.stored_embeddings, trainer._split_features = None, {}
        trainer.start_epoch = trainer.epoch = 0
        trainer.build_prediction_model()
        trainer.set_model_mode("eval")
        return trainer

    def build_prediction_model(self):
        """``build_model`` without the training data (trainers whose build_model reads it override)."""
        self.build_model()

    def load_init_weights(self, path, name):
        """Start model ``name`` from ``path`` (MODEL.INIT_WEIGHTS): a checkpoint of this trainer, its bare
        state dict, or a run folder of this trainer (its last checkpoint): training continued on other data."""
        if osp.isdir(path):
            path = self._checkpoint_path(path, name, None)
            if not osp.isfile(path):
                raise UserError(f"MODEL.INIT_WEIGHTS: no {name} checkpoint at {path} (a finished {self.cfg.TRAINER.NAME} run?)")
        state = load_checkpoint_file(path)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        if not isinstance(state, dict):
            raise UserError(f"MODEL.INIT_WEIGHTS {path}: expected a checkpoint or a state dict")
        try:
            self.load_checkpoint_state(name, state)
        except UserError as e:
            raise UserError(f"MODEL.INIT_WEIGHTS {path}: {e}") from None
        print(f"Initialised the {name.replace('_', ' ')} from {path}")

    def register_learned(self, name, module, optimizer=None):
        """Register ``module`` with the OPTIM settings' optimiser (or ``optimizer``) and schedule."""
        optimizer = optimizer or build_optimizer(module, self.cfg.OPTIM)
        self.register_model(name, module, optimizer, build_lr_scheduler(optimizer, self.cfg.OPTIM))

    def provenance(self):
        return {"backbone_sha256": self.clip_model.weights_sha256, **super().provenance()}

    def extraction_seconds(self):
        cache = getattr(self, "feature_cache", None)
        return cache.encode_seconds if cache is not None else 0.0

    def timing_record(self):
        cache = getattr(self, "feature_cache", None)
        return {**super().timing_record(), "feature_extraction_seconds": round(self.extraction_seconds(), 3),
                "encoded_images": cache.encoder_passes if cache is not None else 0}

    def dataset_label(self, cfg):
        return dataset_label(cfg)

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
        learned = [(f"{name}.{key}", param.detach()) for name in self.get_model_names(names)
                   for key, param in self._models[name].named_parameters() if param.requires_grad]
        # One sum per tensor, checked at once: a NaN or an infinity anywhere makes its sum non-finite
        # (five passes over every parameter per step, as isfinite takes, were a fifth of LLU's step).
        if not learned or torch.stack([param.sum() for _, param in learned]).isfinite().all():
            return
        for where, param in learned:
            if not torch.isfinite(param).all():
                self._diverged(f"{where} is no longer finite")
        self._diverged("the parameters' values overflow float32")

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
        """Un-augmented features and labels of a ``split_data`` split (cached on disk, or stored)."""
        if split not in self._split_features:
            data = self.split_data(split)
            self._split_features[split] = self.stored_embeddings.features_of(data) if self.stored_embeddings \
                else self.feature_cache.get(data, self.dm.tfm_test, 0, desc=split)
        return self._split_features[split]

    def train_views(self):
        """[V+1, N, D] features of the training images: view 0 plus ``FEATURES.AUG_VIEWS`` augmented views
        (stored embeddings have no other views)."""
        if "train_views" not in self._split_features:
            data = self.dm.dataset.train_x
            views = [self.split_features("train")[0]]
            augmented = 0 if self.stored_embeddings else self.cfg.FEATURES.AUG_VIEWS
            if self.stored_embeddings and self.cfg.FEATURES.AUG_VIEWS:
                print("Note: stored embeddings have no augmented views; FEATURES.AUG_VIEWS is not used")
            if augmented:
                views += [f for f, _ in self.feature_cache.get_views(data, self.dm.tfm_train,
                                                                     list(range(1, augmented + 1)), desc="train")]
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
