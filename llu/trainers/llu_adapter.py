"""The LLU adapter (Ibing, Lim and Kobbelt, "Localized Latent Updates", Section 3.2), in plain torch.

Affine functions g(x) = W x + b act on frozen, unit-norm CLIP embeddings f. Each adapted embedding is
blended with f by a weight alpha(x, D) that is beta at the data D the adapter was trained on and
decays with the cosine distance to it (Eq. 4-5), so that far from D the zero-shot embedding is kept.
An identity regulariser (Eq. 6) keeps g close to the identity, and g starts as the identity. D is
stored per encoder (D_image, D_text), reduced by complete-linkage clustering when it is large
(``clustering.py``).

This file and ``clustering.py`` import nothing else from the project (torch, and huggingface_hub for the
``save_pretrained`` / ``from_pretrained`` folder layout) and work on any embedding tensors:
``from llu import LocalizedLinearAdapter`` loads these two modules alone. ``llu export`` of an LLU run
writes a folder that ``LocalizedLinearAdapter.from_pretrained(folder)`` reads.

    adapter = LocalizedLinearAdapter(512)                    # beta 0.5, gamma 20, identity init
    adapter.fit(train_image_features, train_labels, class_text_features)  # sets anchors, trains
    logits = adapter.logits(test_image_features, class_text_features, logit_scale=100.0)

Table 4's ablations are constructor / fit arguments: "no cluster" n_clusters=0, "no damp" beta=1,
"no mask" gamma=0, "Dirac mask" mask="dirac", "no reg" lam=0, "rand. init" init="random", "Linear"
beta=1, gamma=0, init="random", lam=0 (alpha = 1 everywhere: a plain linear adapter).
"""
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin

from .clustering import _CHUNK_ELEMENTS, EXACT_CLUSTER_LIMIT, cluster_anchors

# Dirac mask: a point counts as "at" an anchor when 1 - cos <= this (the authors' code: 1e-3, an
# angle of 2.6 degrees). It is far above float32 round-off of a 512-d cosine (~1e-7) and below the
# distance between two distinct images' CLIP features (1 - cos is typically > 1e-2).
DIRAC_THRESHOLD = 1e-3


# ---------------------------------------------------------------------------------------------
# The settings and their valid values, checked in one place: for the constructor and ``fit`` (by
# argument name) and for the config (by key, ``llu.trainers.llu.check_llu_config``).

SETTINGS = {  # argument: (its key TRAINER.LLU.<key>, what a valid value is, the check)
    "mask": ("MASK", "exp or dirac", lambda value: value in ("exp", "dirac")),
    "reg_form": ("REG_FORM", "mse or norm", lambda value: value in ("mse", "norm")),
    "init": ("INIT", "identity or random", lambda value: value in ("identity", "random")),
    "adapt": ("ADAPT", "both or image or text", lambda value: value in ("both", "image", "text")),
    "beta": ("BETA", "in [0, 1] (the largest interpolation weight)", lambda value: 0.0 <= value <= 1.0),
    "gamma": ("GAMMA", ">= 0", lambda value: value >= 0),
    "lam": ("LAMBDA", ">= 0", lambda value: value >= 0),
    "exact_limit": ("EXACT_CLUSTER_LIMIT", ">= 0", lambda value: value >= 0),
}


class InvalidSetting(ValueError):
    """A setting outside its valid values; ``key`` is its config key, ``problem`` what is wrong."""

    def __init__(self, argument, problem):
        self.argument, self.key, self.problem = argument, SETTINGS[argument][0], problem
        super().__init__(f"{argument} {problem}")


def check_settings(**settings):
    """Raise ``InvalidSetting`` (a ValueError) for the first of ``settings`` (arguments of ``SETTINGS``)
    outside its valid values."""
    for argument, value in settings.items():
        _, valid, check = SETTINGS[argument]
        if not check(value):
            raise InvalidSetting(argument, f"must be {valid}, got {value!r}")


class AffineAdapter(nn.Linear):
    """g(x) = W x + b. "identity": W = I, b = 0 (Section 3.2); "random": nn.Linear's own
    initialisation (Table 4, "rand. init")."""

    def __init__(self, dim, init="identity"):
        check_settings(init=init)
        super().__init__(dim, dim)  # nn.Linear.__init__ applies the random initialisation
        if init == "identity":
            with torch.no_grad():
                nn.init.eye_(self.weight)
                nn.init.zeros_(self.bias)


def _max_cosine(x, anchors):
    """max_{d in D} x^T d per row of x, in row chunks so that 10^5 x 10^4 cosines never coexist."""
    rows = max(1, _CHUNK_ELEMENTS // anchors.shape[0])
    if x.shape[0] <= rows:
        return (x @ anchors.t()).amax(dim=1)
    return torch.cat([(chunk @ anchors.t()).amax(dim=1) for chunk in x.split(rows)])


def interpolation_weight(x, anchors, beta, gamma, mask="exp", dirac_threshold=DIRAC_THRESHOLD):
    """Eq. 5: alpha(x, D) = beta * max_{d in D} exp(-gamma (1 - x^T d)), one value per row of x.

    exp is decreasing in the distance, so the max over anchors is taken on the cosine and exp is
    applied once. x and the anchors are normalised here (1 - x^T d is a distance only for unit
    vectors) and the cosine is clamped to [-1, 1], so alpha lies in [0, beta]. (The authors' code
    clamps it to [0, 1]: the same where some anchor is less than 90 degrees away; farther, alpha is
    beta e^{-gamma} there and smaller here, a difference below beta e^{-20} ~ 1e-9 at gamma = 20 but
    not at gamma <= 5.) gamma = 0 gives
    alpha = beta everywhere (CLIP-Adapter's global alpha). mask="dirac" (gamma -> infinity) gives
    beta where 1 - max cos <= dirac_threshold and 0 elsewhere. An empty D gives alpha = 0.
    """
    check_settings(mask=mask)
    dtype = torch.promote_types(x.dtype, torch.float32)
    if anchors.shape[0] == 0:
        return x.new_zeros(x.shape[0], dtype=dtype)
    x = F.normalize(x.to(dtype), dim=-1)
    anchors = F.normalize(anchors.to(device=x.device, dtype=dtype), dim=-1)
    return _weight_of_unit_rows(x, anchors, beta, gamma, mask, dirac_threshold)


def _weight_of_unit_rows(x, anchors, beta, gamma, mask, dirac_threshold):
    """Eq. 5 for unit rows x and a non-empty set of unit anchors."""
    distance = 1 - _max_cosine(x, anchors).clamp(-1, 1)
    return weight_at_distance(distance, beta, gamma, mask, dirac_threshold)


def weight_at_distance(distance, beta, gamma, mask="exp", dirac_threshold=DIRAC_THRESHOLD):
    """Eq. 5 from the distance 1 - max_{d in D} x^T d: beta * exp(-gamma * distance), or for the Dirac
    mask beta where distance <= dirac_threshold and 0 elsewhere (beta, gamma may be tensors that
    broadcast against distance: ``llu_bank`` computes all members' weights at once)."""
    if mask == "dirac":
        return beta * (distance <= dirac_threshold).to(distance.dtype)
    return beta * torch.exp(-gamma * distance)


def localized_update(f, adapter, alpha):
    """Eq. 4 with a local alpha: normalize(alpha * normalize(g(f)) + (1 - alpha) * f), f normalised.

    Both ends of the blend are unit vectors, so alpha weighs two points on the sphere whatever the
    norm of g(f) (which under a random init is far from 1), and the result is renormalised because
    the logits of Eq. 1 are cosines. At alpha = 0 the result is f, at alpha = 1 it is g(f)/|g(f)|.
    """
    return _blend(F.normalize(f, dim=-1), adapter, alpha)


def _blend(f, adapter, alpha, kept=None):
    """Eq. 4 on unit rows f; ``kept``: (1 - alpha) f when the caller has it already (fixed texts)."""
    alpha = alpha.unsqueeze(-1).to(f.dtype)
    if kept is None:
        kept = (1 - alpha) * f
    if torch.is_grad_enabled() and not (alpha.requires_grad or kept.requires_grad):
        return _BlendOfAdapted.apply(adapter(f), alpha, kept)  # the same values; a shorter backward
    return _blend_of_adapted(adapter(f), alpha, kept)[0]


def _blend_of_adapted(y, alpha, kept):
    """normalize(alpha * normalize(y) + kept), each normalisation ``F.normalize``'s operations; also
    what ``_BlendOfAdapted`` keeps for its backward (y / |y|, |y|, the result, the blend's norm)."""
    y_norm = y.norm(2, -1, keepdim=True).clamp_min(1e-12)
    y_unit = y / y_norm
    v = alpha * y_unit + kept
    v_norm = v.norm(2, -1, keepdim=True).clamp_min(1e-12)
    z = v / v_norm
    return z, (y_unit, y_norm, z, v_norm)


class _BlendOfAdapted(torch.autograd.Function):
    """z = normalize(alpha * normalize(y) + kept) for y = g(f), with its gradient w.r.t. y written out
    (alpha and kept, from f and the anchors, take none here). For a unit row u = x / |x| the
    gradient is dL/dx = (dL/du - u <u, dL/du>) / |x|, applied through both normalisations: a few
    operations instead of the dozen autograd records for each ``F.normalize`` (a few percent of
    LLU's step on cached features on a CPU). The forward is ``F.normalize``'s, operation for operation."""

    @staticmethod
    def forward(ctx, y, alpha, kept):
        z, kept_for_backward = _blend_of_adapted(y, alpha, kept)
        ctx.save_for_backward(alpha, *kept_for_backward)
        return z

    @staticmethod
    def backward(ctx, grad_z):
        alpha, y_unit, y_norm, z, v_norm = ctx.saved_tensors
        grad_v = (grad_z - z * (z * grad_z).sum(-1, keepdim=True)) / v_norm
        grad_y_unit = alpha * grad_v
        grad_y = (grad_y_unit - y_unit * (y_unit * grad_y_unit).sum(-1, keepdim=True)) / y_norm
        return grad_y, None, None


class FixedTexts(NamedTuple):
    """What every training step shares while the class texts and D_text stay fixed (``fixed_texts``):
    the unit texts, their weights alpha (Eq. 5) and the zero-shot share (1 - alpha) t of Eq. 4."""
    unit: torch.Tensor
    alpha: torch.Tensor
    kept: torch.Tensor


_identities = {}


def _identity(dim, dtype, device):
    """The identity matrix, made once per (size, dtype, device): the regulariser runs every step."""
    key = (dim, dtype, str(device))
    if key not in _identities:
        _identities[key] = torch.eye(dim, dtype=dtype, device=device)
    return _identities[key]


def identity_regularizer(adapters, form="mse"):
    """Eq. 6 without lambda: the distance of every affine adapter g = W x + b to the identity, summed.

    "mse": mean((W - I)^2) + mean(b^2). This is the form whose values match Table 4: nn.Linear's
    random init on d = 512 gives 1/(3d) + 1/d + 1/(3d) = 3.26e-3 per adapter, 6.5e-3 for the image
    and text adapters (Table 4, "Linear": 6.5e-3; "rand. init", regularised: 3.6e-3).
    "norm": ||W - I||_F + ||b||_2 as Eq. 6 is written; the same init gives about 26.7 per adapter.
    The caller multiplies by lambda, so the unweighted value can be logged.
    """
    check_settings(reg_form=form)
    total = 0.0
    for g in adapters:
        eye = _identity(g.weight.shape[0], g.weight.dtype, g.weight.device)
        if form == "mse":  # mse_loss: mean((W - I)^2) in one kernel each way
            total = total + F.mse_loss(g.weight, eye) + g.bias.pow(2).mean()
        else:
            total = total + torch.linalg.matrix_norm(g.weight - eye) + torch.linalg.vector_norm(g.bias)
    return torch.as_tensor(total)


def squared_distance_to_identity(weight):
    """||W - I||_F^2 of a square matrix in one read of W, without forming W - I.

    In W's row-major storage the off-diagonal entries are, after the first diagonal entry, the
    first d of every d + 1 entries (the last of each d + 1 is the next diagonal entry): a strided
    [d - 1, d] view of them needs no copy (its row norms are a fast reduction; its whole norm is not).
    The d diagonal entries contribute (W_ii - 1)^2.
    """
    d = weight.shape[0]
    if d < 2 or not weight.is_contiguous():
        return (weight - _identity(d, weight.dtype, weight.device)).square().sum()
    off_diagonal = weight.reshape(-1)[1:].as_strided((d - 1, d), (d + 1, 1))
    return torch.linalg.vector_norm(off_diagonal, dim=1).square().sum() + (weight.diagonal() - 1).square().sum()


class RegularizerInUpdate:
    """lambda * Eq. 6 in its "mse" form, applied by an SGD optimiser instead of through the loss.

    Its gradient is linear in the parameters: lambda mean((W - I)^2) gives c_W (W - I) with
    c_W = 2 lambda / d^2, lambda mean(b^2) gives c_b b with c_b = 2 lambda / d. With the optimiser's
    own (L2) weight decay wd, SGD's direction on W is g + (wd + c_W) W - c_W I: the part proportional
    to W joins the weight decay, which the fused SGD kernel applies in the pass that updates W, and
    the constant part is subtracted from the d diagonal entries of W's gradient before each step; the
    biases (d entries) get the rest of their share, (c_b - c_W) b, there too (``attach``). The update
    is that of (cross-entropy + lambda * Eq. 6).backward() up to float round-off
    (tests/test_llu_adapter.py), without the regulariser's forward and backward passes over every
    d x d weight, which were a quarter of LLU's step on cached features. ``value`` is the unweighted
    regulariser for the log, computed without a graph.
    """

    def __init__(self, adapters, lam, weight_decay):
        self.adapters, self.lam = list(adapters), float(lam)
        d = self.adapters[0].weight.shape[0]
        self.weight_pull, self.bias_decay = 2 * self.lam / d ** 2, 2 * self.lam / d  # c_W, c_b
        self.weight_decay = weight_decay + self.weight_pull  # the optimiser's, for every parameter
        self._value, self._value_versions = None, None

    def attach(self, optimizer):
        """Make ``optimizer`` (SGD over the adapters with ``self.weight_decay``) apply the rest of the
        regulariser's gradient before each step, and keep ``self.weight_decay`` when it loads a state
        (a checkpoint written before the regulariser moved into the update holds wd alone)."""
        @torch.no_grad()
        def rest_of_the_gradient(optimizer, args, kwargs):
            for g in self.adapters:
                if g.weight.grad is not None:
                    g.weight.grad.diagonal().sub_(self.weight_pull)
                if g.bias.grad is not None:
                    g.bias.grad.add_(g.bias, alpha=self.bias_decay - self.weight_pull)

        def keep_weight_decay(optimizer):
            for group in optimizer.param_groups:
                group["weight_decay"] = self.weight_decay

        def parameters_moved(optimizer, args, kwargs):
            self._value_versions = None  # the fused kernel updates in place without a version change

        optimizer.register_step_pre_hook(rest_of_the_gradient)
        optimizer.register_step_post_hook(parameters_moved)
        optimizer.register_load_state_dict_post_hook(keep_weight_decay)
        return optimizer

    @torch.no_grad()
    def value(self):
        """Eq. 6 in its "mse" form without lambda (``identity_regularizer``'s value up to round-off).
        Computed once per state of the parameters: the value after an update (the trainer's check that
        the parameters are finite) is the next step's, until the attached optimiser steps or another
        in-place change (a loaded state) moves a parameter's version counter."""
        versions = [(id(p), p._version) for g in self.adapters for p in (g.weight, g.bias)]
        if versions != self._value_versions:
            self._value = sum(squared_distance_to_identity(g.weight) / g.weight.numel() + g.bias.square().mean()
                              for g in self.adapters)
            self._value_versions = versions
        return self._value


# ---------------------------------------------------------------------------------------------
# The adapter

class LocalizedLinearAdapter(nn.Module, PyTorchModelHubMixin):
    """Localized linear updates of image and text embeddings (Section 3.2).

    dim: embedding size. beta, gamma, mask: Eq. 5. init: "identity" or "random". shared: one g for
    images and texts (g_I = g_T). adapt: which embeddings are updated ("both", "image", "text").
    reg_form: Eq. 6's form (see ``identity_regularizer``). beta, gamma and both anchor sets are
    buffers, so they travel in the state dict; the anchor sets change size with ``set_anchors``.
    """

    def __init__(self, dim, beta=0.5, gamma=20.0, mask="exp", init="identity", shared=False, adapt="both",
                 reg_form="mse", dirac_threshold=DIRAC_THRESHOLD):
        super().__init__()
        check_settings(mask=mask, reg_form=reg_form, init=init, adapt=adapt, beta=beta, gamma=gamma)
        sides = {"both": ("image", "text"), "image": ("image",), "text": ("text",)}
        self.sides, self.shared, self.mask = sides[adapt], shared, mask
        self.dim, self.init, self.adapt = dim, init, adapt
        self.reg_form, self.dirac_threshold = reg_form, dirac_threshold
        names = ("shared",) if shared else self.sides
        self.adapters = nn.ModuleDict({name: AffineAdapter(dim, init) for name in names})
        self.register_buffer("beta", torch.tensor(float(beta)))
        self.register_buffer("gamma", torch.tensor(float(gamma)))
        self.register_buffer("image_anchors", torch.empty(0, dim))  # D_image
        self.register_buffer("text_anchors", torch.empty(0, dim))  # D_text
        self._unit_anchors = {}  # (side, dtype, device): (anchors, their version, normalised)

    def init_arguments(self):
        """The constructor's arguments as JSON values (config.json of ``save_pretrained`` / ``llu export``)."""
        return {"dim": self.dim, "beta": float(self.beta), "gamma": float(self.gamma), "mask": self.mask,
                "init": self.init, "shared": self.shared, "adapt": self.adapt, "reg_form": self.reg_form,
                "dirac_threshold": self.dirac_threshold}

    def save_pretrained(self, save_directory, *, config=None, **kwargs):
        """config.json (the constructor's arguments) and model.safetensors (W, b, beta, gamma, anchors)."""
        return super().save_pretrained(save_directory, config=config or self.init_arguments(), **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """An adapter from a ``save_pretrained`` or ``llu export`` folder (or a Hub repository): every
        tensor must be there (strict), the anchor sets take their saved sizes."""
        kwargs.setdefault("strict", True)
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    def adapter(self, side):
        """g_I or g_T (the same module when shared); None for a side that is not adapted."""
        if side not in self.sides:
            return None
        return self.adapters["shared" if self.shared else side]

    def set_anchors(self, image_features=None, text_features=None, n_clusters=512, exact_limit=EXACT_CLUSTER_LIMIT):
        """D_image and D_text: the features trained on, clustered to n_clusters each when larger
        (n_clusters <= 0: every feature is an anchor; above ``exact_limit`` features the scalable
        path). None leaves that set as it is."""
        check_settings(exact_limit=exact_limit)
        for name, features in (("image_anchors", image_features), ("text_anchors", text_features)):
            if features is not None:
                old = getattr(self, name)
                anchors = cluster_anchors(features, n_clusters, exact_limit)[0]
                setattr(self, name, anchors.to(device=old.device, dtype=old.dtype))

    def interpolation_weights(self, f, side):
        """alpha(f, D_side) of Eq. 5 for each row of f. It depends on f and the anchors, not on g, so
        training g gets no gradient through alpha; alpha is not detached, though: when f itself
        requires a gradient (features from an encoder being trained), the gradient w.r.t. f includes
        alpha's. The trainer's inputs are cached features, which require none."""
        if self.mask == "dirac" and self.training:
            # As the authors' code: the mask applies at evaluation only; in training alpha = beta, as
            # augmented views never lie at an anchor and g would get no gradient otherwise.
            return self.beta.expand(f.shape[0])
        anchors = self.image_anchors if side == "image" else self.text_anchors
        return interpolation_weight(f, anchors, self.beta, self.gamma, self.mask, self.dirac_threshold)

    def _weights_of_unit_rows(self, unit, side):
        """``interpolation_weights`` of the rows that ``unit`` normalises (the same values, with the
        normalised anchors kept between calls while the anchors do not change); None where that path
        does not apply (the Dirac mask in training, no anchors, a dtype below float32)."""
        anchors = self.image_anchors if side == "image" else self.text_anchors
        if (self.mask == "dirac" and self.training) or anchors.shape[0] == 0 \
                or unit.dtype != torch.promote_types(unit.dtype, torch.float32):
            return None
        key = (side, unit.dtype, unit.device)
        cached = self._unit_anchors.get(key)
        if cached is None or cached[0] is not anchors or cached[1] != anchors._version:
            cached = (anchors, anchors._version, F.normalize(anchors.to(device=unit.device, dtype=unit.dtype), dim=-1))
            self._unit_anchors[key] = cached
        return _weight_of_unit_rows(unit, cached[2], self.beta, self.gamma, self.mask, self.dirac_threshold)

    def _transform(self, f, side, alpha=None):
        f = f.to(self.beta.dtype)
        g = self.adapter(side)
        if g is None:
            return F.normalize(f, dim=-1)
        if alpha is None:
            unit = F.normalize(f, dim=-1)
            alpha = self._weights_of_unit_rows(unit, side)
            if alpha is not None:
                return _blend(unit, g, alpha)  # Eq. 4 with Eq. 5's alpha, f normalised once for both
            alpha = self.interpolation_weights(f, side)  # Eq. 5
        return localized_update(f, g, alpha)  # Eq. 4

    def transform_image(self, image_features, alpha=None):
        return self._transform(image_features, "image", alpha)

    def transform_text(self, text_features, alpha=None):
        """``alpha``: the texts' weights when the caller has them already (fixed texts: fixed weights);
        ``text_features`` may be ``fixed_texts(...)`` of them."""
        if isinstance(text_features, FixedTexts):
            g = self.adapter("text")
            return text_features.unit if g is None else _blend(text_features.unit, g, text_features.alpha,
                                                               text_features.kept)
        return self._transform(text_features, "text", alpha)

    def fixed_texts(self, text_features):
        """``FixedTexts`` of class texts for steps in which they and D_text do not change: ``logits``
        and ``transform_text`` take it in place of the texts, with the same result, computing only
        what depends on g_T."""
        unit = F.normalize(text_features.to(self.beta.dtype), dim=-1)
        alpha = self.interpolation_weights(text_features, "text")
        return FixedTexts(unit, alpha, (1 - alpha.unsqueeze(-1).to(unit.dtype)) * unit)

    def forward(self, image_features, text_features, logit_scale):
        return self.logits(image_features, text_features, logit_scale)

    def logits(self, image_features, text_features, logit_scale, text_alpha=None):
        """Eq. 1: logit_scale (1 / tau) times the cosine of the updated image and text embeddings
        (``text_features``: [K, D], or ``fixed_texts`` of them)."""
        return logit_scale * self.transform_image(image_features) @ self.transform_text(text_features, text_alpha).t()

    def regularizer(self):
        """Eq. 6 without lambda, over the distinct adapters."""
        return identity_regularizer(self.adapters.values(), self.reg_form)

    def loss(self, image_features, labels, text_features, logit_scale, lam=1e3):
        """Eq. 3 (cross-entropy over the classes) + lambda * Eq. 6. Returns (total, ce, reg)."""
        return self.objective(self.logits(image_features, text_features, logit_scale), labels, lam)

    def objective(self, logits, labels, lam=1e3):
        """``loss`` from logits already computed: (ce + lambda * reg, ce, reg)."""
        ce = F.cross_entropy(logits, labels)
        reg = self.regularizer()
        return ce + lam * reg, ce, reg

    def fit(self, image_features, labels, class_text_features, epochs=200, lr=0.002, lam=1e3, batch_size=32,
            n_clusters=512, logit_scale=100.0, momentum=0.9, weight_decay=5e-4, seed=0):
        """Train g on feature tensors with CoOp's optimiser (SGD, momentum 0.9, weight decay 5e-4,
        cosine schedule over the epochs; no warm-up) and return the mean loss of each epoch.

        The anchors are first set to the training images and the class texts (n_clusters=None keeps
        the anchors already set, e.g. un-augmented features while training on augmented ones).
        logit_scale 100 is CLIP's learned 1 / tau.
        """
        check_settings(lam=lam)
        device = self.beta.device
        image_features, labels = image_features.to(device), labels.to(device)
        class_text_features = class_text_features.to(device)
        if n_clusters is not None:
            self.set_anchors(image_features, class_text_features, n_clusters)
        optimizer = torch.optim.SGD(self.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)
        generator = torch.Generator().manual_seed(seed)
        history = []
        self.train()
        for _ in range(epochs):
            order = torch.randperm(labels.shape[0], generator=generator).to(device)
            losses = []
            for idx in order.split(batch_size):
                total, _, _ = self.loss(image_features[idx], labels[idx], class_text_features, logit_scale, lam)
                optimizer.zero_grad()
                total.backward()
                optimizer.step()
                losses.append(total.item())
            scheduler.step()
            history.append(sum(losses) / len(losses))
        self.eval()  # ready to predict (the Dirac mask applies in eval mode only)
        return history

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The anchor sets have the size they were saved with: resize ours before copying into them.
        for name in ("image_anchors", "text_anchors"):
            saved = state_dict.get(prefix + name)
            if saved is not None:
                old = getattr(self, name)
                setattr(self, name, old.new_empty(saved.shape))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
