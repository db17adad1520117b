"""CLIP-Adapter (Gao, Geng, Zhang et al., "CLIP-Adapter: Better Vision-Language Models with Feature
Adapters", arXiv 2110.04544, 2021), as its official code runs it: an adapter on the image features only.

A bottleneck MLP A (Linear d -> d/r, ReLU, Linear d/r -> d, ReLU, no biases; the paper writes one
ReLU, the official code has both) acts on CLIP's image feature f, and its output is blended with f
by a fixed residual ratio alpha (Eq. 4 of the LLU paper, which restates CLIP-Adapter's):

    f' = alpha * A(f) + (1 - alpha) * f
    p(y = i | x) = softmax_i(cos(f', t_i) / tau)       (Eq. 1; t_i: the frozen class texts)

Only A is trained, by cross-entropy (Eq. 3), on cached image features. The class texts come from
the dataset's hand-made template and are computed once. As A has no biases and ends in a ReLU, it
is positively homogeneous, A(c f) = c A(f) for c > 0, so applying it to the unit-norm cached
features gives exactly the logits of the official code, which applies it to the raw encoder output.

A checkpoint holds A's weights only (the official ``fc.0`` / ``fc.2`` names), so a model trained
on base classes is evaluated on new ones with the new class names' texts (``--eval-only``).
"""
import torch.nn as nn
import torch.nn.functional as F

from llu.engine import CN, config_extension

from . import trainer
from .clip_common import ClipTrainer
from .coop import coop_epochs


@config_extension
def add_clip_adapter_config(cfg):
    cfg.TRAINER.CLIP_ADAPTER = CN()
    cfg.TRAINER.CLIP_ADAPTER.RATIO = 0.2  # alpha of Eq. 4, the residual ratio (the official code's 0.2)
    cfg.TRAINER.CLIP_ADAPTER.REDUCTION = 4  # r: the bottleneck has d / r units (the official code's 4)


class Adapter(nn.Module):
    """The bottleneck MLP A; parameter names match the official checkpoints (``fc.0``, ``fc.2``)."""

    def __init__(self, dim, reduction=4):
        super().__init__()
        self.fc = nn.Sequential(
            nn.Linear(dim, dim // reduction, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(dim // reduction, dim, bias=False),
            nn.ReLU(inplace=True),
        )

    def forward(self, x):
        return self.fc(x)


def adapted_features(adapter, image_features, ratio):
    """Eq. 4: the residual blend of the adapted and the original image feature, renormalised."""
    return F.normalize(ratio * adapter(image_features) + (1 - ratio) * image_features, dim=-1)


@trainer
class CLIP_Adapter(ClipTrainer):
    published_epochs = staticmethod(coop_epochs)  # the LLU paper runs it with CoOp's epochs by shots
    display_name = "CLIP Adapter"
    table_order = 11

    def build_model(self):
        settings = self.cfg.TRAINER.CLIP_ADAPTER
        self.ratio = settings.RATIO
        self.text_features = self.class_text_features()
        self.adapter = Adapter(self.clip_model.embed_dim, settings.REDUCTION).to(self.device)
        self.register_learned("clip_adapter", self.adapter)

    def model_inference(self, image_features):
        return self.class_logits(image_features, self.text_features)

    def class_logits(self, image_features, text_features):
        """Any class names: A acts on the image side only, so new names get their frozen texts (Eq. 4, 1)."""
        return self.cosine_logits(adapted_features(self.adapter, image_features, self.ratio), text_features)

