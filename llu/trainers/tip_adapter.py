"""Tip-Adapter and Tip-Adapter-F (Zhang, Zhang, Fang, Gao et al., "Tip-Adapter: Training-free
Adaption of CLIP for Few-shot Classification", ECCV 2022; arXiv 2111.03930).

A key-value cache is built from the few-shot training set: the keys F_train [NK, D] are the
training images' CLIP features, the values L_train [NK, N] their one-hot labels. A test feature f
reads the cache through the affinity phi(f F_train^T) = exp(-beta (1 - f F_train^T)), and the cache's
prediction is added to zero-shot CLIP's:

    logits = s * f W_c^T + alpha * exp(-beta (1 - f F_train^T)) L_train

(W_c: the class texts of the dataset's hand-made template, or on ImageNet the average over CLIP's
seven selected ImageNet templates, as in the official code; s: CLIP's logit scale, 100 for
OpenAI's weights, the constant of the official code). Tip-Adapter trains nothing; Tip-Adapter-F
fine-tunes the keys F_train by cross-entropy with alpha and beta fixed at their initial values.
Both then pick alpha and beta on a grid by accuracy on the *validation* split, never on test (the
official script also selects Tip-Adapter-F's epoch on test; here the last epoch is kept). A val
split that shares images with the test split (ImageNet's in CoOp's layout) is refused for the search.

The values are one-hot over the training classes, so a cache cannot score another class set: an
evaluation on other classes (e.g. CoOp's "new" half) stops with a UserError rather than quietly
reporting zero-shot CLIP under this trainer's name. The LLU paper likewise leaves Tip-Adapter out
of its base-to-new comparison ("not suitable for zero-shot learning").
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from llu.datasets import ENSEMBLE_TEMPLATES, dataset_facts
from llu.engine import CN, build_optimizer, config_extension
from llu.utils import UserError

from . import trainer
from .clip_common import ClipTrainer


@config_extension
def add_tip_adapter_config(cfg):
    # Defaults are the official repository's generic ones (configs/imagenet.yaml, oxford_pets.yaml).
    cfg.TRAINER.TIP_ADAPTER = CN()
    cfg.TRAINER.TIP_ADAPTER.INIT_ALPHA = 1.17  # alpha: weight of the cache logits before (or without) the search
    cfg.TRAINER.TIP_ADAPTER.INIT_BETA = 1.0  # beta: sharpness of the affinity exp(-beta (1 - cos))
    cfg.TRAINER.TIP_ADAPTER.SEARCH = True  # pick alpha, beta on the validation split (False: keep INIT_*)
    cfg.TRAINER.TIP_ADAPTER.SEARCH_SCALE = (7.0, 3.0)  # largest (beta, alpha) of the grid ("search_scale")
    cfg.TRAINER.TIP_ADAPTER.SEARCH_STEP = (200, 20)  # grid points for (beta, alpha) ("search_step")
    # The split searched on: "full_val", the dataset's whole val split (the official code), or
    # "fewshot_val", CoOp's few-shot val of min(K, 4) images per class.
    cfg.TRAINER.TIP_ADAPTER.SEARCH_SPLIT = "full_val"
    cfg.TRAINER.TIP_ADAPTER.ADAM_EPS = 1e-4  # Tip-Adapter-F's AdamW epsilon (official main.py)
    # Class texts: "dataset" (the dataset's template), "ensemble" (CLIP's seven ImageNet templates,
    # averaged), or "auto": the ensemble on ImageNet and its variants (the readers' ``imagenet_classes``),
    # the dataset template elsewhere.
    cfg.TRAINER.TIP_ADAPTER.TEXT_TEMPLATES = "auto"


SEARCH_SPLITS = {"full_val": "full_val", "fewshot_val": "val"}  # TRAINER.TIP_ADAPTER.SEARCH_SPLIT -> split_data


def text_templates(choice, dataset_name):
    """The templates whose class texts Tip-Adapter averages, by TRAINER.TIP_ADAPTER.TEXT_TEMPLATES."""
    if choice not in ("auto", "dataset", "ensemble"):
        raise UserError(f"TRAINER.TIP_ADAPTER.TEXT_TEMPLATES must be auto, dataset or ensemble, got {choice!r}")
    facts = dataset_facts(dataset_name)
    if choice == "ensemble" or (choice == "auto" and facts.imagenet_classes):
        return ENSEMBLE_TEMPLATES
    return [facts.template]


def search_grid(largest, steps):
    """The official grid: ``steps`` values from 0.1 in steps of (largest - 0.1) / steps."""
    return [0.1 + i * (largest - 0.1) / steps for i in range(steps)]


class CacheModel(nn.Module):
    """The cache: keys F_train, values L_train (stored as label indices), and alpha, beta as buffers
    so that a checkpoint holds the searched values."""

    def __init__(self, keys, labels, num_classes, alpha, beta, learn_keys=False):
        super().__init__()
        self.keys = nn.Parameter(keys.clone(), requires_grad=learn_keys)
        self.register_buffer("labels", labels.clone())
        self.register_buffer("alpha", torch.tensor(float(alpha)))
        self.register_buffer("beta", torch.tensor(float(beta)))
        self.num_classes = num_classes

    def values(self):
        return F.one_hot(self.labels, self.num_classes).float()

    def affinity(self, image_features):
        return image_features @ self.keys.t()

    def cache_logits(self, affinity, beta):
        return torch.exp(-beta * (1 - affinity)) @ self.values()

    def forward(self, image_features, clip_logits, alpha=None, beta=None):
        alpha = self.alpha if alpha is None else alpha
        beta = self.beta if beta is None else beta
        return clip_logits + alpha * self.cache_logits(self.affinity(image_features), beta)


@torch.no_grad()
def search_alpha_beta(cache, features, labels, clip_logits, betas, alphas):
    """The grid's (beta, alpha) with the most correct predictions and its accuracy (%); ties go to the
    first in the official loop order (beta outer, alpha inner), as its strict '>' does."""
    affinity = cache.affinity(features)
    correct = torch.zeros(len(betas), len(alphas))
    for i, beta in enumerate(betas):
        cache_logits = cache.cache_logits(affinity, beta)
        for j, alpha in enumerate(alphas):
            correct[i, j] = ((clip_logits + alpha * cache_logits).argmax(dim=1) == labels).sum().item()
    i, j = divmod(int(correct.argmax()), len(alphas))  # argmax returns the first maximum
    return betas[i], alphas[j], 100.0 * correct[i, j].item() / len(labels)


def _some(names, shown=5):
    return ", ".join(names[:shown]) + (", ..." if len(names) > shown else "")


@trainer
class TipAdapter(ClipTrainer):
    display_name = "Tip-Adapter"
    table_order = 12
    learn_keys = False
    trains_epochs = False  # the cache is built and alpha, beta searched; no epochs
    published_epochs = None  # Tip-Adapter-F: its config's epochs for any shots, as published
    names_new_classes = False  # the cache holds the training classes' images only

    def templates(self):
        return text_templates(self.cfg.TRAINER.TIP_ADAPTER.TEXT_TEMPLATES, self.cfg.DATASET.NAME)

    def build_model(self):
        tip = self.cfg.TRAINER.TIP_ADAPTER
        templates = text_templates(tip.TEXT_TEMPLATES, self.cfg.DATASET.NAME)
        self.text_features = self.class_text_features(templates)
        labels = self.split_features("train")[1]
        self.cache = CacheModel(self.cache_keys(), labels, len(self.classnames), tip.INIT_ALPHA, tip.INIT_BETA,
                                learn_keys=self.learn_keys).to(self.device)
        self.register_cache()

    def register_cache(self):
        self.register_model("cache", self.cache)  # nothing is trained

    def cache_keys(self):
        """F_train: each training image's feature averaged over its augmented views, renormalised.

        The official code averages the encoder outputs of 10 random crop + flip passes
        (``augment_epoch``) before normalising; here the cached unit-norm views 1..FEATURES.AUG_VIEWS
        are averaged (the un-augmented view 0 only when AUG_VIEWS is 0).
        """
        views = self.train_views()
        if views.shape[0] > 1:
            views = views[1:]
        return F.normalize(views.mean(dim=0), dim=-1)

    def clip_logits(self, image_features):
        return self.cosine_logits(image_features, self.text_features)

    def model_inference(self, image_features):
        return self.class_logits(image_features, (self.text_features, None))

    # Prediction on other class names. The cache's values are one-hot over its training classes:
    # any order or subset of them reads the cache's columns of those classes; names it has never seen
    # get zero-shot CLIP's logits (with a note); a mix of both is refused, as the cache would add its
    # evidence to the known names only and tilt every prediction towards them.

    def build_prediction_model(self):
        """``build_model`` without the training data: an empty cache that the checkpoint fills."""
        tip = self.cfg.TRAINER.TIP_ADAPTER
        self.text_features = self.class_text_features(self.templates())
        keys = torch.empty(0, self.clip_model.embed_dim, device=self.device)
        self.cache = CacheModel(keys, torch.empty(0, dtype=torch.long, device=self.device), len(self.classnames),
                                tip.INIT_ALPHA, tip.INIT_BETA, learn_keys=self.learn_keys).to(self.device)
        self.register_cache()

    def class_features(self, classnames):
        names, trained = list(classnames), list(self.classnames)
        known = [name in trained for name in names]
        if names == trained:
            columns = None
        elif all(known):
            columns = torch.tensor([trained.index(name) for name in names], device=self.device)
        elif not any(known):
            print(f"Note: {type(self).__name__}'s cache holds none of these {len(names)} classes; their logits are "
                  f"zero-shot CLIP's")
            columns = "zero-shot"
        else:
            unknown = [name for name, seen in zip(names, known) if not seen]
            raise UserError(f"{type(self).__name__}'s cache knows {len(names) - len(unknown)} of these classes but not "
                            f"{_some(unknown)}: its evidence would favour the known ones; give only its "
                            f"{len(trained)} training classes ({_some(trained)}) or only new ones (zero-shot)")
        return super().class_features(names), columns

    def class_logits(self, image_features, classes):
        text_features, columns = classes
        clip_logits = self.cosine_logits(image_features, text_features)
        if columns is None:
            return self.cache(image_features, clip_logits)
        if isinstance(columns, str):  # no class of the cache: zero-shot
            return clip_logits
        cache = self.cache
        return clip_logits + cache.alpha * cache.cache_logits(cache.affinity(image_features), cache.beta)[:, columns]

    def validation_features(self):
        """Features of the split alpha and beta are searched on (TRAINER.TIP_ADAPTER.SEARCH_SPLIT);
        refuses one that shares images with the test split."""
        choice = self.cfg.TRAINER.TIP_ADAPTER.SEARCH_SPLIT
        if choice not in SEARCH_SPLITS:
            raise UserError(f"TRAINER.TIP_ADAPTER.SEARCH_SPLIT must be {' or '.join(SEARCH_SPLITS)}, got {choice!r}")
        split = SEARCH_SPLITS[choice]
        val, test = self.split_data(split), self.dm.dataset.test
        fix = "set TRAINER.TIP_ADAPTER.SEARCH False to use INIT_ALPHA and INIT_BETA"
        if not val:
            raise UserError(f"{self.cfg.DATASET.NAME} has no validation split to search Tip-Adapter's alpha and "
                            f"beta on; {fix}")
        if {item.impath for item in val} & {item.impath for item in test}:
            raise UserError(f"{self.cfg.DATASET.NAME}'s validation split shares images with its test split, so "
                            f"searching alpha and beta on it would select them on test; {fix}")
        features, labels = self.split_features(split)
        return features.to(self.device), labels.to(self.device)

    def search_hyperparameters(self):
        tip = self.cfg.TRAINER.TIP_ADAPTER
        features, labels = self.validation_features()
        betas = search_grid(tip.SEARCH_SCALE[0], tip.SEARCH_STEP[0])
        alphas = search_grid(tip.SEARCH_SCALE[1], tip.SEARCH_STEP[1])
        beta, alpha, accuracy = search_alpha_beta(self.cache, features, labels, self.clip_logits(features),
                                                  betas, alphas)
        self.cache.alpha.fill_(alpha)
        self.cache.beta.fill_(beta)
        print(f"Searched on {tip.SEARCH_SPLIT} ({len(labels)} images) over {len(betas)} x {len(alphas)} (beta, alpha): "
              f"beta {beta:.2f}, alpha {alpha:.2f}, val accuracy {accuracy:.2f}%")

    def train_without_epochs(self):
        print(f"{type(self).__name__} trains nothing: the cache holds {self.cache.keys.shape[0]} training features")
        if self.cfg.TRAINER.TIP_ADAPTER.SEARCH:
            self.search_hyperparameters()
        self.save_model(0, self.output_dir)
        if not self.cfg.TEST.NO_TEST:
            self.test()

    def checkpoint_state(self, name):
        return {**self.cache.state_dict(), "classnames": list(self.classnames)}

    def load_checkpoint_state(self, name, state_dict):
        missing = sorted({"keys", "labels", "alpha", "beta", "classnames"} - set(state_dict))
        unexpected = sorted(set(state_dict) - {"keys", "labels", "alpha", "beta", "classnames"})
        if missing or unexpected:
            raise UserError(f"the checkpoint does not fit {type(self).__name__}'s cache (missing: "
                            f"{', '.join(missing) or '-'}; unexpected: {', '.join(unexpected) or '-'}); "
                            f"was it saved by another trainer?")
        if state_dict["keys"].shape[-1] != self.cache.keys.shape[-1]:
            raise UserError(f"the cache's keys have width {state_dict['keys'].shape[-1]}, this backbone's features "
                            f"{self.cache.keys.shape[-1]}; it was built with another backbone")
        trained_on = list(state_dict.get("classnames", []))
        if trained_on != list(self.classnames):
            raise UserError(
                f"{type(self).__name__}: the loaded cache's values are one-hot over the {len(trained_on)} classes it "
                f"was built from ({_some(trained_on)}), not this run's {len(self.classnames)} classes "
                f"({_some(self.classnames)}); a cache cannot score other classes. Evaluate on the training "
                f"classes (the same DATASET.SUBSAMPLE_CLASSES), or use ZeroshotCLIP for new ones")
        with torch.no_grad():
            self.cache.keys.data = state_dict["keys"].to(self.device)
            self.cache.labels = state_dict["labels"].to(self.device)
            self.cache.alpha.fill_(float(state_dict["alpha"]))
            self.cache.beta.fill_(float(state_dict["beta"]))

    RESULT_EXTRAS = {"tip_alpha": float, "tip_beta": float, "tip_cache_size": int}

    def extra_results(self):
        return {"tip_alpha": float(self.cache.alpha), "tip_beta": float(self.cache.beta),
                "tip_cache_size": int(self.cache.keys.shape[0])}


@trainer
class TipAdapterF(TipAdapter):
    """Tip-Adapter-F: the keys are fine-tuned (AdamW, cosine schedule), alpha and beta searched after."""

    display_name = "Tip-Adapter-F"
    table_order = 13
    learn_keys = True
    trains_epochs = True

    def check_cfg(self, cfg):
        if cfg.TEST.FINAL_MODEL != "last_step":
            raise UserError("TipAdapterF searches alpha and beta on val after its last epoch; "
                            "set TEST.FINAL_MODEL last_step")

    def register_cache(self):
        optimizer = build_optimizer(self.cache, self.cfg.OPTIM)
        if "eps" in optimizer.defaults:  # Adam(W): Dassl's OPTIM keys have no epsilon
            for group in optimizer.param_groups:
                group["eps"] = self.cfg.TRAINER.TIP_ADAPTER.ADAM_EPS
        self.register_learned("cache", self.cache, optimizer)

    def after_epoch(self):
        if self.epoch + 1 == self.max_epoch and self.cfg.TRAINER.TIP_ADAPTER.SEARCH:
            self.search_hyperparameters()  # before the last checkpoint is written, so that it holds them
        super().after_epoch()
