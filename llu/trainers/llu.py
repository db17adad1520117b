"""LLU: Localized Linear Updates (Ibing, Lim and Kobbelt), Section 3.2.

Affine adapters g_I, g_T act on CLIP's frozen image and text embeddings. Each adapted embedding is
blended with the frozen one by a weight alpha(x, D) that is large only near the data the adapter
was trained on (Eq. 4-5), so predictions far from the training data stay zero-shot CLIP's. An
identity regulariser (Eq. 6) keeps g close to the identity. Training uses cross-entropy on cosine
logits (Eq. 1, 3) over cached image features: CLIP never runs inside the training loop.

The adapter itself lives in ``llu_adapter.py`` (usable without this trainer); this file wires it
to the data: the anchor sets D_image (training image features) and D_text (training class
prompts), the training loop, checkpoints and evaluation on other class sets.
"""

import torch
import torch.nn.functional as F

from llu.engine import CN, build_optimizer, compute_accuracy, config_extension
from llu.utils import UserError

from . import trainer
from .clip_common import ClipTrainer
from .coop import coop_epochs
from .llu_adapter import SETTINGS, InvalidSetting, LocalizedLinearAdapter, RegularizerInUpdate, check_settings


@config_extension
def add_llu_config(cfg):
    cfg.TRAINER.LLU = CN()
    cfg.TRAINER.LLU.BETA = 0.5  # beta of Eq. 5: the largest interpolation weight (1.0 = "no damp")
    cfg.TRAINER.LLU.GAMMA = 20.0  # gamma of Eq. 5: locality of the update (0.0 = "no mask", global alpha)
    cfg.TRAINER.LLU.MASK = "exp"  # exp (Eq. 5) or dirac (alpha = beta at a training point, 0 elsewhere)
    cfg.TRAINER.LLU.DIRAC_THRESHOLD = 1e-3  # dirac: "at a training point" is 1 - cos <= this (the authors' code)
    cfg.TRAINER.LLU.LAMBDA = 1e3  # lambda of Eq. 6 (0.0 = "no reg")
    cfg.TRAINER.LLU.REG_FORM = "mse"  # mse: mean((W-I)^2) + mean(b^2), matches Table 4's values; norm: Eq. 6 as written
    cfg.TRAINER.LLU.INIT = "identity"  # identity (W = I, b = 0) or random (nn.Linear's init, "rand. init")
    cfg.TRAINER.LLU.N_CLUSTERS = 512  # anchors per set after complete-linkage clustering (<= 0: "no cluster")
    # Above this many features per set, clustering takes the scalable path (micro-clusters, then complete
    # linkage on them) instead of the exact one, whose n x n matrix needs 4 n^2 bytes.
    cfg.TRAINER.LLU.EXACT_CLUSTER_LIMIT = 20000
    cfg.TRAINER.LLU.SHARED = False  # one adapter for images and texts (g_I = g_T)
    cfg.TRAINER.LLU.ADAPT = "both"  # which embeddings are adapted: both, image or text
    cfg.TRAINER.LLU.ABLATION = ""  # Table 4's column this config is (no_mask, linear, ...); "" for LLU itself


def check_llu_config(llu):
    """The LLU keys' ranges (the adapter's own check, ``SETTINGS``), as one line naming the key (before
    any work)."""
    try:
        check_settings(**{argument: llu[key] for argument, (key, _, _) in SETTINGS.items()})
    except InvalidSetting as e:
        raise UserError(f"TRAINER.LLU.{e.key} {e.problem}") from None


@trainer
class LLU(ClipTrainer):
    published_epochs = staticmethod(coop_epochs)  # the paper trains with CoOp's epochs by shots
    # The paper's Table 4, in its order: configs/trainers/LLU/<CFG>_<ablation>.yaml beside each <CFG>.
    ablations = ("no_cluster", "no_damp", "no_mask", "dirac_mask", "no_reg", "rand_init", "linear")
    table_order = 14

    def check_cfg(self, cfg):
        check_llu_config(cfg.TRAINER.LLU)

    def build_model(self):
        llu = self.cfg.TRAINER.LLU
        dim = self.clip_model.embed_dim
        self.adapter = LocalizedLinearAdapter(
            dim, beta=llu.BETA, gamma=llu.GAMMA, mask=llu.MASK, init=llu.INIT, shared=llu.SHARED,
            adapt=llu.ADAPT, reg_form=llu.REG_FORM, dirac_threshold=llu.DIRAC_THRESHOLD).to(self.device)
        # Class texts use the dataset's hand-made template (the zero-shot table); they are frozen.
        self.text_features = self.class_text_features()
        self.register_learned("adapter", self.adapter, self.build_optimizer())
        if self.cfg.MODEL.INIT_WEIGHTS:  # continue a trained adapter on this run's data (its anchors become this data's)
            self.load_init_weights(self.cfg.MODEL.INIT_WEIGHTS, "adapter")

    def build_optimizer(self):
        """CoOp's optimiser on the adapter. With SGD and the "mse" form, lambda * Eq. 6 is applied by
        the optimiser (``RegularizerInUpdate``: its gradient is a weight decay toward the identity), the
        same update as through the loss up to round-off; otherwise it is part of the loss."""
        llu = self.cfg.TRAINER.LLU
        self.regularizer_in_update = None
        if self.cfg.OPTIM.NAME != "sgd" or llu.REG_FORM != "mse":
            return build_optimizer(self.adapter, self.cfg.OPTIM)
        self.regularizer_in_update = RegularizerInUpdate(self.adapter.adapters.values(), llu.LAMBDA,
                                                         self.cfg.OPTIM.WEIGHT_DECAY)
        parameters = [{"params": list(self.adapter.parameters()), "weight_decay": self.regularizer_in_update.weight_decay}]
        return self.regularizer_in_update.attach(build_optimizer(self.adapter, self.cfg.OPTIM, param_groups=parameters))

    def before_train(self):
        super().before_train()
        self.train_texts = None  # computed at the first step, once the anchors are set
        if self.start_epoch == 0:
            # D_image: the training images' (un-augmented) features; D_text: the training class prompts.
            image_features = self.split_features("train")[0].to(self.device)
            self.adapter.set_anchors(image_features, self.text_features, n_clusters=self.cfg.TRAINER.LLU.N_CLUSTERS,
                                     exact_limit=self.cfg.TRAINER.LLU.EXACT_CLUSTER_LIMIT)
            print(f"LLU anchors: {self.adapter.image_anchors.shape[0]} image, {self.adapter.text_anchors.shape[0]} text")

    def forward_backward(self, batch):
        image_features, label = self.parse_batch_train(batch)
        if getattr(self, "train_texts", None) is None:  # fixed class texts and anchors: their weights are fixed
            self.train_texts = self.adapter.fixed_texts(self.text_features)
        # Eq. 1 on the updated embeddings (Eq. 4-5)
        logits = self.adapter.logits(image_features, self.train_texts, self.logit_scale)
        lam = self.cfg.TRAINER.LLU.LAMBDA
        if self.regularizer_in_update:  # Eq. 3 + Eq. 6, whose gradient the optimiser applies
            ce = F.cross_entropy(logits, label)
            reg = self.regularizer_in_update.value()
            total = ce + lam * reg
        else:
            total, ce, reg = self.adapter.objective(logits, label, lam=lam)  # Eq. 3 + Eq. 6
        self.model_backward_and_update(total)
        return {"loss": total.item(), "ce": ce.item(), "reg": reg.item(),
                "acc": compute_accuracy(logits.detach(), label)[0].item()}

    def check_parameters(self, names=None):
        """After each update. With lambda * Eq. 6 in the update, the regulariser's value (a sum of the
        squares of every adapter parameter, logged at the next step) is the check that they are still
        finite: one pass over the parameters instead of two."""
        if not self.regularizer_in_update:
            return super().check_parameters(names)
        if not torch.isfinite(self.regularizer_in_update.value()):
            super().check_parameters(names)  # names a parameter that is NaN or infinite
            self._diverged("the parameters' values overflow float32")

    def model_inference(self, image_features):
        return self.class_logits(image_features, self.text_features)

    def class_logits(self, image_features, text_features):
        """Eq. 1 on the updated embeddings (Eq. 4-5) of any class texts: a text far from D_text keeps
        its zero-shot embedding, so new class names are scored as zero-shot CLIP scores them."""
        return self.adapter.logits(image_features, text_features, self.logit_scale)

    def export_config(self):
        """The adapter's constructor arguments (``LocalizedLinearAdapter.from_pretrained`` reads them)."""
        return self.adapter.init_arguments()

    RESULT_EXTRAS = {"llu_regularizer": float, "llu_regularizer_form": str, "llu_anchors": dict}

    def ablation_name(self):
        return self.cfg.TRAINER.LLU.ABLATION

    def extra_results(self):
        return {"llu_regularizer": float(self.adapter.regularizer()),
                "llu_regularizer_form": self.cfg.TRAINER.LLU.REG_FORM,
                "llu_anchors": {"image": int(self.adapter.image_anchors.shape[0]),
                                "text": int(self.adapter.text_anchors.shape[0])}}
