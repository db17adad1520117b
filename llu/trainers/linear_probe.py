"""Linear probe CLIP (Radford et al., "Learning Transferable Visual Models From Natural Language
Supervision", ICML 2021, Appendix A.3), as CoOp's baseline runs it (github.com/KaiyangZhou/CoOp, lpclip/).

An L2-regularised multinomial logistic regression (scikit-learn's L-BFGS, 1000 iterations) on CLIP's
frozen image features of the few-shot training set:

    p(y = i | f) = softmax_i(W f + b),   (W, b) = argmin  C * sum_n CE(W f_n + b, y_n) + ||W||^2 / 2

The inverse regularisation strength C is searched on the few-shot val split, coarse to fine:
1. fit each C of a coarse grid spanning 1e6 .. 1e-6 in factors of 100 and keep the one with the most
   correct val predictions (the first, i.e. the larger C, on a tie);
2. take the interval [C / 10, C * 10] and, for a fixed number of steps, fit both of its ends, keep the
   better end (the lower one on a tie) and halve the interval in log10 toward it. The model of the
   last step's kept end is the probe (as in CoOp's script, not the best seen along the way).
Everything is deterministic (L-BFGS from zeros). The features are the cached unit-norm ones
(``feature_cache.py``; CoOp's script fits the encoder's raw output).

The classifier has one row per training class and no text: it cannot name classes it was not trained
on, so evaluating it on others (base-to-new's "new" half) stops with a UserError, and a base-to-new
table shows its base accuracy only (as CoOp's paper leaves the linear probe out of new classes).
A checkpoint holds W, b, the chosen C and the class names: tensors and strings, no pickled estimator.
"""
import math

import torch
import torch.nn as nn

from llu.engine import CN, config_extension
from llu.utils import UserError

from . import trainer
from .clip_common import ClipTrainer


@config_extension
def add_linear_probe_config(cfg):
    cfg.TRAINER.LINEAR_PROBE = CN()
    # The coarse grid of C, in the order searched (a tie keeps the earlier); CoOp's lpclip values.
    cfg.TRAINER.LINEAR_PROBE.C_GRID = (1e6, 1e4, 1e2, 1.0, 1e-2, 1e-4, 1e-6)
    cfg.TRAINER.LINEAR_PROBE.SEARCH_STEPS = 8  # halvings of the interval around the coarse best (lpclip's num_step)
    cfg.TRAINER.LINEAR_PROBE.MAX_ITER = 1000  # L-BFGS iterations per fit (lpclip's)


def fit_logistic_regression(features, labels, c, max_iter=1000):
    from sklearn.linear_model import LogisticRegression
    return LogisticRegression(solver="lbfgs", C=c, max_iter=max_iter).fit(features, labels)


def correct_predictions(classifier, features, labels):
    return int((classifier.predict(features) == labels).sum())


def search_c(train_features, train_labels, val_features, val_labels, grid, steps, max_iter=1000):
    """The coarse-to-fine search of C on val; returns (C, fitted classifier, [(C, val correct), ...])."""
    history = []

    def fit(c):
        classifier = fit_logistic_regression(train_features, train_labels, c, max_iter)
        history.append((c, correct_predictions(classifier, val_features, val_labels)))
        return classifier, history[-1][1]

    coarse = [fit(c)[1] for c in grid]
    best = grid[coarse.index(max(coarse))]  # index: the first maximum
    low, high = math.log10(best) - 1, math.log10(best) + 1
    chosen, chosen_c = None, best
    for _ in range(steps):
        low_fit, low_correct = fit(10 ** low)
        high_fit, high_correct = fit(10 ** high)
        middle = (low + high) / 2
        if low_correct < high_correct:
            chosen, chosen_c, low = high_fit, 10 ** high, middle
        else:
            chosen, chosen_c, high = low_fit, 10 ** low, middle
    if chosen is None:  # no refinement steps: the coarse best
        chosen = fit(best)[0]
    return chosen_c, chosen, history


class LinearClassifier(nn.Module):
    """W [classes, D] and b [classes] in float64 (scikit-learn's precision), and the chosen C."""

    def __init__(self, dim, num_classes):
        super().__init__()
        self.register_buffer("weight", torch.zeros(num_classes, dim, dtype=torch.float64))
        self.register_buffer("bias", torch.zeros(num_classes, dtype=torch.float64))
        self.register_buffer("C", torch.tensor(0.0, dtype=torch.float64))

    def set_from(self, classifier, c):
        """Take scikit-learn's coefficients; a two-class model's single row z becomes (-z/2, z/2), the
        same softmax and argmax."""
        weight, bias = torch.from_numpy(classifier.coef_), torch.from_numpy(classifier.intercept_)
        if weight.shape[0] == 1:
            weight, bias = torch.cat([-weight / 2, weight / 2]), torch.cat([-bias / 2, bias / 2])
        rows = torch.as_tensor(classifier.classes_, dtype=torch.long)
        with torch.no_grad():
            self.weight[rows] = weight.to(self.weight)
            self.bias[rows] = bias.to(self.bias)
            self.C.fill_(c)

    def forward(self, image_features):
        return image_features.double() @ self.weight.t() + self.bias


@trainer
class LinearProbe(ClipTrainer):
    table_order = 9
    display_name = "Linear probe"
    trains_epochs = False  # one fit per C; no epochs
    published_epochs = None  # its config's epochs for any shots, as published (not CoOp's schedule)
    predicts = False  # its logits are the probe's, not written for llu.load yet
    names_new_classes = False  # one row per training class: evaluating on other classes is refused

    def build_model(self):
        self.probe = LinearClassifier(self.clip_model.embed_dim, len(self.classnames)).to(self.device)
        self.register_model("linear_probe", self.probe)  # nothing is trained by gradient

    def model_inference(self, image_features):
        return self.probe(image_features)

    def train_without_epochs(self):
        settings = self.cfg.TRAINER.LINEAR_PROBE
        if not self.split_data("val"):
            raise UserError(f"{self.cfg.DATASET.NAME} has no val split: the linear probe searches C on it")
        train_features, train_labels = (t.numpy() for t in self.split_features("train"))
        val_features, val_labels = (t.numpy() for t in self.split_features("val"))
        missing = sorted(set(range(len(self.classnames))) - set(train_labels.tolist()))
        if missing:
            raise UserError(f"the linear probe needs training images of every class; none of "
                            f"{', '.join(self.classnames[i] for i in missing[:5])}")
        c, classifier, history = search_c(train_features, train_labels, val_features, val_labels,
                                          list(settings.C_GRID), settings.SEARCH_STEPS, settings.MAX_ITER)
        self.probe.set_from(classifier, c)
        print(f"Searched C on val ({len(val_labels)} images, {len(history)} fits): C {c:.4g}, "
              f"val accuracy {100.0 * dict(history)[c] / len(val_labels):.2f}%")
        self.save_model(0, self.output_dir)
        if not self.cfg.TEST.NO_TEST:
            self.test()

    def checkpoint_state(self, name):
        return {**self.probe.state_dict(), "classnames": list(self.classnames)}

    def load_checkpoint_state(self, name, state_dict):
        expected = {"weight", "bias", "C", "classnames"}
        if set(state_dict) != expected:
            raise UserError(f"the checkpoint does not fit the linear probe (keys: {', '.join(sorted(state_dict))}); "
                            f"was it saved by another trainer?")
        trained_on = list(state_dict["classnames"])
        if trained_on != list(self.classnames):
            raise UserError(f"a linear probe cannot name classes it was not trained on: it was fitted on "
                            f"{len(trained_on)} classes ({', '.join(trained_on[:3])}{', ...' if len(trained_on) > 3 else ''}), "
                            f"not this run's {len(self.classnames)} (DATASET.SUBSAMPLE_CLASSES "
                            f"{self.cfg.DATASET.SUBSAMPLE_CLASSES}); evaluate it on the classes it was fitted on")
        if state_dict["weight"].shape != self.probe.weight.shape:
            raise UserError(f"the probe's weights have shape {tuple(state_dict['weight'].shape)}, this backbone's "
                            f"features need {tuple(self.probe.weight.shape)}; it was fitted with another backbone")
        self.probe.load_state_dict({key: state_dict[key] for key in ("weight", "bias", "C")})

    RESULT_EXTRAS = {"linear_probe_C": float}

    def extra_results(self):
        return {"linear_probe_C": float(self.probe.C)}
