"""``Datum`` and ``DatasetBase`` with Dassl's interface and few-shot sampling."""
import math
import random
from collections import defaultdict

from llu.utils import UserError

from ..registry import Registry

DATASET_REGISTRY = Registry("DATASET")


def build_dataset(cfg):
    return DATASET_REGISTRY.get(cfg.DATASET.NAME)(cfg)


class Datum:
    """One labelled image: its path, integer label, domain and class name."""

    def __init__(self, impath="", label=0, domain=0, classname=""):
        self._impath = impath
        self._label = label
        self._domain = domain
        self._classname = classname

    @property
    def impath(self):
        return self._impath

    @property
    def label(self):
        return self._label

    @property
    def domain(self):
        return self._domain

    @property
    def classname(self):
        return self._classname

    def __repr__(self):
        return f"Datum(impath={self._impath!r}, label={self._label}, classname={self._classname!r})"


class DatasetBase:
    """A dataset's train/val/test lists of ``Datum`` plus its class names."""

    dataset_dir = ""
    domains = []

    def __init__(self, train_x=None, train_u=None, val=None, test=None):
        self._train_x = train_x
        self._train_u = train_u
        self._val = val
        self._test = test
        if not train_x:
            raise UserError(f"{type(self).__name__}: the training split is empty")
        self._num_classes = self.get_num_classes(train_x)
        self._lab2cname, self._classnames = self.get_lab2cname(train_x)

    @property
    def train_x(self):
        return self._train_x

    @property
    def train_u(self):
        return self._train_u

    @property
    def val(self):
        return self._val

    @property
    def test(self):
        return self._test

    @property
    def lab2cname(self):
        return self._lab2cname

    @property
    def classnames(self):
        return self._classnames

    @property
    def num_classes(self):
        return self._num_classes

    @staticmethod
    def get_num_classes(data_source):
        return max(item.label for item in data_source) + 1

    @staticmethod
    def get_lab2cname(data_source):
        """Map label -> class name, and the class names ordered by label."""
        mapping = {item.label: item.classname for item in data_source}
        labels = sorted(mapping)
        return mapping, [mapping[label] for label in labels]

    @staticmethod
    def split_dataset_by_label(data_source):
        """Group items by label, labels in order of first appearance (as Dassl does)."""
        output = defaultdict(list)
        for item in data_source:
            output[item.label].append(item)
        return output

    def generate_fewshot_dataset(self, *data_sources, num_shots=-1, repeat=False):
        """Sample ``num_shots`` items per label from each source, Dassl's algorithm exactly.

        Uses the global ``random`` stream, so the split is fixed by ``set_random_seed``.
        A label with fewer than ``num_shots`` items keeps all of them (or is sampled with
        replacement when ``repeat``).
        """
        if num_shots < 1:
            return data_sources[0] if len(data_sources) == 1 else data_sources
        print(f"Creating a {num_shots}-shot dataset")
        output = []
        for data_source in data_sources:
            tracker = self.split_dataset_by_label(data_source)
            dataset = []
            for label, items in tracker.items():
                if len(items) >= num_shots:
                    sampled = random.sample(items, num_shots)
                elif repeat:
                    sampled = random.choices(items, k=num_shots)
                else:
                    print(f"Warning: class {items[0].classname!r} has only {len(items)} images, "
                          f"fewer than {num_shots} shots; using all of them")
                    sampled = items
                dataset.extend(sampled)
            output.append(dataset)
        return output[0] if len(output) == 1 else output

    @staticmethod
    def subsample_classes(*args, subsample="all"):
        """CoOp's base/new split: sort the train labels; the first ceil(n/2) are base, the rest new.

        Labels of the kept classes are renumbered from 0. The first argument decides the classes.
        """
        if subsample not in ("all", "base", "new"):
            raise UserError(f"DATASET.SUBSAMPLE_CLASSES must be all, base or new, got {subsample!r}")
        if subsample == "all":
            return args
        labels = sorted({item.label for item in args[0]})
        m = math.ceil(len(labels) / 2)
        print(f"SUBSAMPLE {subsample.upper()} CLASSES!")
        selected = labels[:m] if subsample == "base" else labels[m:]
        relabeler = {y: y_new for y_new, y in enumerate(selected)}
        output = []
        for dataset in args:
            output.append([
                Datum(impath=item.impath, label=relabeler[item.label], domain=item.domain, classname=item.classname)
                for item in dataset if item.label in relabeler
            ])
        return output
