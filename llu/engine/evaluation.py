"""The ``Classification`` evaluator, printing Dassl's result lines (CoOp's log parser reads them)."""
from collections import OrderedDict, defaultdict

import numpy as np

from .registry import Registry

EVALUATOR_REGISTRY = Registry("EVALUATOR")


def macro_f1_score(y_true, y_pred):
    """The mean over the classes present in ``y_true`` of each class's F1, 2 TP / (2 TP + FP + FN):
    scikit-learn's ``f1_score(average="macro", labels=np.unique(y_true))`` to the bit (tests/test_engine.py),
    without importing scikit-learn and SciPy into every run (a second of its start-up on a CPU)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    labels = np.unique(y_true)
    hits = y_true == y_pred
    true_positives = np.array([np.sum(hits & (y_true == c)) for c in labels], dtype=np.float64)
    true_counts = np.array([np.sum(y_true == c) for c in labels], dtype=np.float64)
    predicted_counts = np.array([np.sum(y_pred == c) for c in labels], dtype=np.float64)
    return float(np.mean(2 * true_positives / (true_counts + predicted_counts)))


def build_evaluator(cfg, **kwargs):
    return EVALUATOR_REGISTRY.get(cfg.TEST.EVALUATOR)(cfg, **kwargs)


class EvaluatorBase:
    def __init__(self, cfg):
        self.cfg = cfg

    def reset(self):
        raise NotImplementedError

    def process(self, mo, gt):
        raise NotImplementedError

    def evaluate(self):
        raise NotImplementedError


@EVALUATOR_REGISTRY.register()
class Classification(EvaluatorBase):
    def __init__(self, cfg, lab2cname=None, **kwargs):
        super().__init__(cfg)
        self._lab2cname = lab2cname or {}
        self.reset()

    def reset(self):
        self._correct = 0
        self._total = 0
        self._y_true = []
        self._y_pred = []
        self._per_class_res = defaultdict(list)
        self.per_class_accuracy = {}

    def process(self, mo, gt):
        pred = mo.max(1)[1]
        matches = pred.eq(gt).float()
        self._correct += int(matches.sum().item())
        self._total += gt.shape[0]
        self._y_true.extend(gt.cpu().numpy().tolist())
        self._y_pred.extend(pred.cpu().numpy().tolist())
        for label, match in zip(gt.cpu().tolist(), matches.cpu().tolist()):
            self._per_class_res[label].append(match)

    def evaluate(self):
        results = OrderedDict()
        acc = 100.0 * self._correct / self._total
        err = 100.0 - acc
        macro_f1 = 100.0 * macro_f1_score(self._y_true, self._y_pred)
        results["accuracy"] = acc
        results["error"] = err
        results["macro_f1"] = macro_f1
        print(
            "=> result\n"
            f"* total: {self._total:,}\n"
            f"* correct: {self._correct:,}\n"
            f"* accuracy: {acc:.1f}%\n"
            f"* error: {err:.1f}%\n"
            f"* macro_f1: {macro_f1:.1f}%"
        )
        self.per_class_accuracy = {
            label: 100.0 * sum(res) / len(res) for label, res in sorted(self._per_class_res.items())
        }
        if self.cfg.TEST.PER_CLASS_RESULT:
            print("=> per-class result")
            for label, class_acc in self.per_class_accuracy.items():
                res = self._per_class_res[label]
                print(f"* class: {label} ({self._lab2cname.get(label, '')})\t"
                      f"total: {len(res):,}\tcorrect: {int(sum(res)):,}\tacc: {class_acc:.1f}%")
            mean_acc = np.mean(list(self.per_class_accuracy.values()))
            print(f"* average: {mean_acc:.1f}%")
            results["perclass_accuracy"] = mean_acc
        return results
