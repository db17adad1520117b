"""ProGrad: Prompt-aligned Gradient (Zhu, Niu, Han, Wu and Zhang, "Prompt-aligned Gradient for
Prompt Tuning", ICCV 2023).

CoOp's prompt learner, updated only in directions that do not contradict zero-shot CLIP. Each
step takes two gradients w.r.t. the context: G_d of the cross-entropy on the few-shot labels
(domain-specific) and G_g of KL(p_zs || p) at temperature T between zero-shot CLIP's predictions
(the dataset's hand-made template) and the model's (general). When they conflict (G_d . G_g < 0)
the update keeps only the part of G_d normal to G_g:
    G = G_d - lambda * (G_d . G_g / ||G_g||^2) * G_g,   otherwise G = G_d.
As upstream, the rule is applied to each parameter tensor (CoOp's prompt learner has one).

Prompt-learner keys are CoOp's (``TRAINER.COOP.*``, as in the ProGrad repository); the ProGrad
keys below replace upstream's ``LOSS.LAMBDA`` and ``LOSS.T``.
"""
import torch
import torch.nn.functional as F

from llu.engine import CN, compute_accuracy, config_extension

from . import trainer
from .clip_common import dataset_template
from .coop import CoOp


@config_extension
def add_prograd_config(cfg):
    cfg.TRAINER.PROGRAD = CN()
    cfg.TRAINER.PROGRAD.LAMBDA = 1.0  # lambda: how much of the conflicting component is removed (1: all of it)
    cfg.TRAINER.PROGRAD.T = 1.0  # temperature of the KL between zero-shot CLIP and the model


def project_conflicting_gradient(ce_grad, kl_grad, lam=1.0):
    """ProGrad's update direction from the cross-entropy gradient G_d and the KL gradient G_g."""
    dot = torch.sum(ce_grad * kl_grad)
    if dot >= 0:  # no conflict (also when G_g = 0)
        return ce_grad
    return ce_grad - lam * dot / torch.sum(kl_grad * kl_grad) * kl_grad


def distillation_kl(logits, teacher_logits, temperature):
    """KL(p_teacher || p) at temperature T, times T^2 (upstream's soft cross-entropy has the same gradient)."""
    return F.kl_div(F.log_softmax(logits / temperature, dim=-1), F.log_softmax(teacher_logits / temperature, dim=-1),
                    log_target=True, reduction="batchmean") * temperature ** 2


# ProGrad's own templates (its trainers/prograd.py), for the zero-shot teacher and the initial context,
# where they differ from the dataset's (its reader's ``template``): the domain comes first.
PROGRAD_TEMPLATES = {
    "OxfordPets": "a type of pet, a photo of a {}.",
    "OxfordFlowers": "a type of flower, a photo of a {}.",
    "FGVCAircraft": "a type of aircraft, a photo of a {}.",
    "DescribableTextures": "a texture of {}.",
    "Food101": "a type of food, a photo of {}.",
}


@trainer
class ProGrad(CoOp):
    table_order = 4
    keeps_n_ctx = True  # upstream: the template's words fill the last of N_CTX vectors
    # lambda where ProGrad's README publishes another than its config's 1.0: these datasets, 8 shots or more
    published_lambda = {"oxford_flowers": 0.8, "dtd": 0.8, "eurosat": 0.8}

    @classmethod
    def published_options(cls, dataset, shots):
        """The trailing KEY VALUE options of the published run on ``dataset`` with ``shots``, beyond its epochs."""
        lam = cls.published_lambda.get(dataset) if shots >= 8 else None
        return [] if lam is None else ["TRAINER.PROGRAD.LAMBDA", str(lam)]

    def template(self):
        return PROGRAD_TEMPLATES.get(self.cfg.DATASET.NAME, dataset_template(self.cfg.DATASET.NAME))

    def build_model(self):
        super().build_model()
        # The general knowledge: zero-shot CLIP with ProGrad's template for the dataset.
        self.zero_shot_text_features = self.class_text_features([self.template()])

    def forward_backward(self, batch):
        inputs, label = self.parse_batch_train(batch)
        prograd = self.cfg.TRAINER.PROGRAD
        with self.autocast():
            image_features = self.model.encode_images(inputs)
            logits = self.model(image_features)
            zero_shot_logits = self.cosine_logits(image_features, self.zero_shot_text_features)
            ce = F.cross_entropy(logits, label)
            kl = distillation_kl(logits, zero_shot_logits, prograd.T)
        self.prograd_backward_and_update(ce, kl, prograd.LAMBDA)
        return {"loss": ce.item(), "kl": kl.item(), "acc": compute_accuracy(logits, label)[0].item()}

    def prograd_backward_and_update(self, ce, kl, lam):
        self.detect_anomaly(ce)
        self.detect_anomaly(kl)
        params = [p for p in self.prompt_learner.parameters() if p.requires_grad]
        # Under amp both losses carry the same scale s; the projection commutes with it.
        scale = self.scaler.scale if self.scaler is not None else (lambda loss: loss)
        kl_grads = torch.autograd.grad(scale(kl), params, retain_graph=True)
        ce_grads = torch.autograd.grad(scale(ce), params)
        self.model_zero_grad()
        for param, ce_grad, kl_grad in zip(params, ce_grads, kl_grads):
            param.grad = project_conflicting_gradient(ce_grad, kl_grad, lam)
        self.model_update()
