"""What trainers that change CLIP's encoders share (CLIP-LoRA, WiSE-FT), written once.

- ``tuned_copy``: a copy of the frozen backbone to change, whose module tree is its own but whose
  tensors are the frozen backbone's (no memory), except those the trainer will change, which are real
  copies. The frozen backbone stays frozen: a sweep worker shares it between runs.
- Training from images: every step runs the image encoder on freshly augmented pixels (no cached
  features), for a number of optimiser steps (``total_steps``), with a learning rate set per step
  (``step_schedule``: linear warm-up, then cosine to a floor), optional gradient clipping and amp.
- Evaluation through the feature cache, keyed by the changed weights: the tuned backbone's
  ``identity`` is the frozen one's hashed together with the tensors that decide its image features
  (``state_digest``), recomputed at every evaluation, so the cache never serves the frozen encoder's
  features (or an earlier state's) for a changed encoder.
"""
import copy
import hashlib
import math

import torch
from torch.optim.lr_scheduler import LambdaLR

from llu.backbones.base import combined_sha256
from llu.utils import UserError

from .clip_common import ClipTrainer
from .feature_cache import FeatureCache


def tuned_copy(backbone, copied=()):
    """A copy of ``backbone`` (a ClipBackbone) with its own modules; its tensors are the original's
    except those of the submodules named in ``copied`` (paths from the backbone, e.g. "model.visual"),
    which are new float32 tensors that train (requires_grad)."""
    copied_ids = set()
    for path in copied:
        module = backbone.get_submodule(path)
        copied_ids.update(id(t) for t in list(module.parameters()) + list(module.buffers()))
    shared = {}
    for module in backbone.modules():
        tensors = list(module._parameters.values()) + list(module._buffers.values())
        tensors += [value for value in vars(module).values() if isinstance(value, torch.Tensor)]  # e.g. CLIP's attn_mask
        shared.update((id(t), t) for t in tensors if t is not None and id(t) not in copied_ids)
    tuned = copy.deepcopy(backbone, memo=dict(shared))
    for path in copied:
        module = tuned.get_submodule(path).float()
        for param in module.parameters():
            param.requires_grad_(True)
    return tuned


def state_digest(state, settings=""):
    """A sha256 of named tensors (names, dtypes, shapes, values) and a settings string."""
    digest = hashlib.sha256(settings.encode())
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def step_schedule(optimizer, total_steps, warmup_steps=0, min_lr=0.0):
    """The learning rate of step t (0-based; ``scheduler.step()`` after every optimiser step):
    base * (t + 1) / warmup during the warm-up, then cosine from base to ``min_lr`` over the rest."""
    def factor(base_lr):
        floor = min_lr / base_lr if base_lr else 0.0

        def at(step):
            if step < warmup_steps:
                return (step + 1) / warmup_steps
            progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
            return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
        return at

    return LambdaLR(optimizer, [factor(group["lr"]) for group in optimizer.param_groups])


class _StepLimitedLoader:
    """At most ``steps`` batches of ``loader`` (training stops mid-epoch at the last step)."""

    def __init__(self, loader, steps):
        self.loader, self.steps = loader, steps

    def __len__(self):
        return min(len(self.loader), self.steps)

    def __iter__(self):
        for index, batch in enumerate(self.loader):
            if index >= self.steps:
                return
            yield batch


class EncoderTrainer(ClipTrainer):
    """Base of trainers whose encoders change. Subclasses build ``self.tuned`` (``tuned_copy``),
    register what they learn with ``step_schedule``, set ``self.total_steps`` and implement
    ``logits(image_features, text_features)``, ``eval_text_features`` and ``tuned_image_state``."""

    published_epochs = None  # its config's epochs for any shots, as published (not CoOp's schedule)
    predicts = False  # the encoder's weights change: llu.load's frozen-encoder path would be wrong
    max_grad_norm = 0.0  # > 0: the gradients' global norm is clipped to it before each step

    @classmethod
    def check_backbone(cls, backbone, problem):
        """Refuse a backbone whose encoders this trainer cannot change (one line, trainer and backbone)."""
        if problem:
            raise UserError(f"{cls.__name__} cannot run on MODEL.BACKBONE.NAME {backbone.backbone_name}: {problem}")

    def trains_on_features(self):
        return False  # the image encoder changes: every step encodes the batch's pixels

    def set_total_steps(self, total_steps):
        """Train ``total_steps`` optimiser steps: as many epochs of the image loader as that takes, the
        last one cut short."""
        self.total_steps = total_steps
        self.steps_per_epoch = len(self.image_loader)
        self.max_epoch = math.ceil(total_steps / self.steps_per_epoch)
        print(f"Training {total_steps} steps: {self.max_epoch} epoch(s) of {self.steps_per_epoch} batches")
        use_amp = self.device.type == "cuda" and self.cfg.TRAINER.PREC == "amp"
        self.scaler = torch.amp.GradScaler("cuda") if use_amp else None

    def run_epoch(self):
        remaining = self.total_steps - self.epoch * self.steps_per_epoch
        self.train_loader_x = _StepLimitedLoader(self.image_loader, remaining)
        super(ClipTrainer, self).run_epoch()  # the schedule steps per step (model_update), not per epoch

    def autocast(self):
        return torch.autocast("cuda", dtype=torch.float16) if getattr(self, "scaler", None) else super().autocast()

    def model_backward(self, loss):
        self.detect_anomaly(loss)
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()
        if self.max_grad_norm > 0:
            if self.scaler is not None:
                for name in self.get_model_names():
                    self.scaler.unscale_(self._optims[name])
            params = [p for name in self.get_model_names() for p in self._models[name].parameters() if p.requires_grad]
            torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm)

    def model_update(self, names=None):
        if self.scaler is None:
            super().model_update(names)
        else:
            for name in self.get_model_names(names):
                self.scaler.step(self._optims[name])
            self.scaler.update()
            self.check_parameters(names)
        self.update_lr(names)  # the learning rate of the next step

    # Evaluation: the tuned encoders' features, cached under a key that includes the changed weights.

    def tuned_identity(self, backbone, image_state, settings=""):
        """The feature cache's key for ``backbone``: the frozen weights and the tensors that changed."""
        return combined_sha256(self.clip_model.identity, type(self).__name__, state_digest(image_state, settings))

    def extraction_seconds(self):
        cache = getattr(self, "tuned_feature_cache", None)
        return super().extraction_seconds() + (cache.encode_seconds if cache is not None else 0.0)

    def evaluation_backbone(self):
        """The backbone whose image features are evaluated (with its ``identity`` set)."""
        raise NotImplementedError

    def evaluation_batches(self, split):
        if getattr(self, "tuned_feature_cache", None) is None:
            self.tuned_feature_cache = FeatureCache(self.cfg, self.clip_model, self.device)
        self.tuned_feature_cache.clip_model = self.evaluation_backbone()  # its identity is the key
        features, labels = self.tuned_feature_cache.get(self.split_data(split), self.dm.tfm_test, 0, desc=split)
        batch_size = self.cfg.DATALOADER.TEST.BATCH_SIZE
        for start in range(0, features.shape[0], batch_size):
            yield (features[start:start + batch_size].to(self.device),
                   labels[start:start + batch_size].to(self.device))
