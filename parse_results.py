"""Results tree -> the paper's tables and figures.

    python parse_results.py output/base2new [--out DIR] [--bench bench/results/step_time.json]

Reads every ``results.json`` under the folder (the one machine-readable record each run of
``train.py`` writes; logs are never parsed), checks their fields, and prints whichever tables the
records allow, like the paper's; Figure 3 comes from a ``step_time.json`` of
``bench/bench_step_time.py`` found under the folder or given by ``--bench``. It writes
``tables.md``, ``tables.json``, ``tables.csv`` (``tables.tex`` with ``--format latex``) and the
figures (PNG at 300 dpi and PDF) into ``--out`` (default: the folder), each atomically; ``--format``
chooses what is printed (md, latex, csv, terminal). Every table is one ``llu.tables.Table``.

How records are classified (``classify``):

- **base-to-new** (Table 1, Table 4, Figure 2): a record evaluated on the ``base`` classes of a
  dataset by a model trained on that dataset's ``base`` classes, paired with the record on the
  ``new`` classes of the same (dataset, trainer, config, backbone, shots, seed). The ``new`` half
  must come from a model trained on ``base`` (``train_subsample_classes``), or from zero-shot CLIP
  evaluated directly (no ``model_dir``). Unpaired halves are reported and left out.
- **transfer**: a record whose ``dataset`` differs from its ``train_dataset`` (a model trained on
  all classes of a source, evaluated on a target). It is **domain generalisation** (Table 3) when
  the target is a known domain-shifted variant of the source (``DOMAIN_VARIANTS``: ImageNetV2,
  -Sketch, -A, -R of ImageNet; ShapesSketch, ShapesNoisy of Shapes), and **cross-dataset**
  (Table 2) when the target is a dataset with classes of its own (``OTHER_CLASS_DATASETS``: CoOp's
  11, Shapes, Patterns). Any other target (an ImageFolder, say) is domain generalisation when its
  class names are a subset of the source's (the keys of ``per_class_accuracy`` in the source's own
  record), else cross-dataset. The "Source" column is the record of the same method trained and
  evaluated on all classes of the source.
- The **config** of a record is the stem of its trainer config file (``configs/trainers/LLU/
  toy_no_mask.yaml`` -> ``toy_no_mask``). A config ``<c>_<suffix>`` of a trainer that also has
  config ``<c>`` is an ablation variant: it goes to Table 4 (beside CLIP and ``<c>`` as
  "Default"), not to Table 1.

Numbers: accuracies are averaged over seeds; "±" is the population standard deviation over seeds
(``np.std``, as CoOp's ``parse_test_res.py``). H is the harmonic mean of the mean Base and mean New
accuracy (as the paper's Table 1, also for the average over datasets); its "±" is the deviation of
the per-seed H. Averages over datasets use the per-dataset means and are given only for methods
that have every dataset of the table. Table 1 and Table 4 are printed for the largest shot count;
``tables.json`` holds every shot count.
"""
import argparse
import fnmatch
import json
import math
import os
import os.path as osp
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass, field

from llu.tables import FORMATS, Row, Stat, Table, csv_text, document
from llu.utils import atomic_path, write_text


class ResultsError(Exception):
    """A problem with the user's results tree; printed as one line by ``cli``."""


# ---------------------------------------------------------------------------------------------
# Names and orders used in the tables

DISPLAY_NAMES = {"ZeroshotCLIP": "CLIP", "ZeroshotCLIP2": "CLIP (ensemble)", "CLIP_Adapter": "CLIP Adapter",
                 "TipAdapter": "Tip-Adapter", "TipAdapterF": "Tip-Adapter-F"}
TRAINER_ORDER = ["ZeroshotCLIP", "ZeroshotCLIP2", "CoOp", "CoCoOp", "ProGrad", "CLIP_Adapter", "TipAdapter",
                 "TipAdapterF", "LLU"]
DATASET_ORDER = ["ImageNet", "Caltech101", "OxfordPets", "StanfordCars", "OxfordFlowers", "Food101", "FGVCAircraft",
                 "SUN397", "DescribableTextures", "EuroSAT", "UCF101", "ImageNetV2", "ImageNetSketch", "ImageNetA",
                 "ImageNetR", "Shapes", "ShapesSketch", "ShapesNoisy", "Patterns"]
# Targets that are the source's classes under a domain shift (Table 3); other targets are Table 2's.
DOMAIN_VARIANTS = {"ImageNet": {"ImageNetV2", "ImageNetSketch", "ImageNetA", "ImageNetR"},
                   "Shapes": {"ShapesSketch", "ShapesNoisy"}}
# Datasets whose classes are their own: always Table 2's targets (even if their names overlap the source's).
OTHER_CLASS_DATASETS = {"ImageNet", "Caltech101", "OxfordPets", "StanfordCars", "OxfordFlowers", "Food101",
                        "FGVCAircraft", "SUN397", "DescribableTextures", "EuroSAT", "UCF101", "Shapes", "Patterns"}
# Table 4's column names for the paper's ablations (config suffixes); others: the suffix itself.
ABLATION_LABELS = {"no_cluster": "no cluster", "no_damp": "no damp.", "no_mask": "no mask",
                   "dirac_mask": "Dirac mask", "no_reg": "no reg", "rand_init": "rand. init", "linear": "Linear"}
ZERO_SHOT_TRAINERS = ("ZeroshotCLIP", "ZeroshotCLIP2")
# Paper colours (Figures 2 and 3).
COLOURS = {"ZeroshotCLIP": "tab:blue", "CoOp": "tab:green", "CoCoOp": "gold", "ProGrad": "tab:cyan",
           "CLIP_Adapter": "tab:purple", "LLU": "tab:red"}


def ordered(names, order):
    """``names`` sorted by their place in ``order``, unknown names after, alphabetically."""
    rank = {name: i for i, name in enumerate(order)}
    return sorted(set(names), key=lambda name: (rank.get(name, len(order)), str(name)))


# ---------------------------------------------------------------------------------------------
# Reading and checking records

NUMBER = (int, float)
REQUIRED_FIELDS = {"dataset": str, "trainer": str, "backbone": str, "seed": int, "shots": int,
                   "subsample_classes": str, "accuracy": NUMBER, "num_classes": int, "config_files": dict,
                   "train_dataset": str, "train_subsample_classes": str}
SUBSAMPLES = ("all", "base", "new")


@dataclass(frozen=True)
class Method:
    """What a table row stands for: a trainer with one config on one backbone."""
    trainer: str
    cfg: str
    backbone: str


@dataclass(frozen=True)
class Record:
    path: str
    method: Method
    dataset: str
    seed: int
    shots: int
    subsample: str
    accuracy: float
    train_dataset: str
    train_subsample: str
    train_shots: int
    model_dir: str
    classnames: tuple
    regularizer: float = None
    backbone_sha256: str = None  # the weights file's hash (results.json's provenance)
    device: str = None  # the GPU's name, or the CPU's kernels (provenance)

    @property
    def run_key(self):
        """Two records with this key describe the same run."""
        return (self.method, self.dataset, self.seed, self.shots, self.subsample, self.train_dataset,
                self.train_subsample, self.train_shots)


def find_files(root, name):
    """Every file called ``name`` (a glob pattern) under ``root`` (hidden folders skipped), in sorted
    walk order."""
    paths = []
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        paths += [osp.join(directory, f) for f in sorted(fnmatch.filter(files, name))]
    return paths


def find_results(root):
    return find_files(root, "results.json")


def read_json_file(path):
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ResultsError(f"{path}: not valid JSON ({e})") from None
    except OSError as e:
        raise ResultsError(f"{path}: cannot be read ({e.strerror})") from None


def check_fields(content, path):
    if not isinstance(content, dict):
        raise ResultsError(f"{path}: expected a JSON object of run results")
    for key, kind in REQUIRED_FIELDS.items():
        if key not in content:
            raise ResultsError(f"{path}: missing field '{key}'")
        value = content[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ResultsError(f"{path}: field '{key}' has the wrong type ({type(value).__name__}: {value!r})")
    if not 0 <= content["accuracy"] <= 100 or math.isnan(content["accuracy"]):
        raise ResultsError(f"{path}: field 'accuracy' must be a percentage in [0, 100], got {content['accuracy']!r}")
    for key in ("subsample_classes", "train_subsample_classes"):
        if content[key] not in SUBSAMPLES:
            raise ResultsError(f"{path}: field '{key}' must be one of {', '.join(SUBSAMPLES)}, got {content[key]!r}")
    if not isinstance(content.get("per_class_accuracy", {}), dict):
        raise ResultsError(f"{path}: field 'per_class_accuracy' must be an object of class name -> accuracy")


def config_name(config_files):
    """The stem of the trainer config file: ``configs/trainers/LLU/toy.yaml`` -> ``toy``."""
    trainer_file = config_files.get("trainer") or ""
    return osp.splitext(osp.basename(trainer_file))[0]


def optional_number(content, key, path):
    value = content.get(key)
    if value is not None and (not isinstance(value, NUMBER) or isinstance(value, bool)):
        raise ResultsError(f"{path}: field '{key}' must be a number, got {value!r}")
    return value


def load_record(path):
    """One checked ``Record`` from a results.json."""
    content = read_json_file(path)
    check_fields(content, path)
    train_shots = optional_number(content, "train_shots", path)
    return Record(
        path=path,
        method=Method(content["trainer"], config_name(content["config_files"]), content["backbone"]),
        dataset=content["dataset"], seed=content["seed"], shots=content["shots"],
        subsample=content["subsample_classes"], accuracy=float(content["accuracy"]),
        train_dataset=content["train_dataset"], train_subsample=content["train_subsample_classes"],
        train_shots=int(train_shots) if train_shots is not None else content["shots"],
        model_dir=content.get("model_dir") or "",
        classnames=tuple(sorted(content.get("per_class_accuracy", {}))),
        regularizer=optional_number(content, "llu_regularizer", path),
        backbone_sha256=provenance_text(content, "backbone_sha256", path), device=device(content, path))


def provenance_text(content, key, path):
    provenance = content.get("provenance") or {}
    if not isinstance(provenance, dict):
        raise ResultsError(f"{path}: field 'provenance' must be an object")
    value = provenance.get(key)
    if value is not None and not isinstance(value, str):
        raise ResultsError(f"{path}: field 'provenance.{key}' must be a string, got {value!r}")
    return value


def device(content, path):
    gpu, capability = provenance_text(content, "gpu", path), provenance_text(content, "cpu_capability", path)
    return gpu or (f"CPU ({capability})" if capability else None)


def load_records(root):
    """Every record under ``root``; two files describing the same run are an error."""
    records, seen = [], {}
    for path in find_results(root):
        record = load_record(path)
        if record.run_key in seen:
            raise ResultsError(f"{path} and {seen[record.run_key]} hold results of the same run; keep one")
        seen[record.run_key] = path
        records.append(record)
    return records


# ---------------------------------------------------------------------------------------------
# Classifying records

@dataclass
class Classified:
    base2new: list = field(default_factory=list)  # (base record, new record)
    cross_dataset: list = field(default_factory=list)  # transfer records
    domain_generalization: list = field(default_factory=list)
    sources: list = field(default_factory=list)  # trained and evaluated on all classes of one dataset
    notes: list = field(default_factory=list)


def is_base_half(r):
    return r.subsample == "base" and r.dataset == r.train_dataset and r.train_subsample == "base"


def is_new_half(r):
    zero_shot = r.method.trainer in ZERO_SHOT_TRAINERS and not r.model_dir  # evaluated directly, nothing loaded
    trained_on_base = r.train_subsample == "base" or zero_shot
    return r.subsample == "new" and r.dataset == r.train_dataset and trained_on_base


def is_source(r):
    return r.dataset == r.train_dataset and r.subsample == "all" and r.train_subsample == "all"


def is_transfer(r):
    return r.dataset != r.train_dataset


def pair_key(r):
    return (r.method, r.dataset, r.shots, r.seed)


def is_domain_shift(record, source_classnames):
    """Table 3 (the source's classes, shifted) rather than Table 2 (other classes)."""
    if record.dataset in DOMAIN_VARIANTS.get(record.train_dataset, ()):
        return True
    if record.dataset in OTHER_CLASS_DATASETS:
        return False
    return bool(record.classnames) and bool(source_classnames) and set(record.classnames) <= set(source_classnames)


def pair_base_to_new(records, out):
    halves = defaultdict(dict)
    for r in records:
        halves[pair_key(r)]["base" if is_base_half(r) else "new"] = r
    for key, pair in sorted(halves.items(), key=lambda item: str(item[0])):
        if len(pair) == 2:
            out.base2new.append((pair["base"], pair["new"]))
        else:
            (half, r), = pair.items()
            out.notes.append(f"{r.path}: {half} half without its {'new' if half == 'base' else 'base'} half; left out")


def source_classnames_by_dataset(sources):
    names = {}
    for r in sources:
        if r.classnames:
            names.setdefault(r.dataset, set()).update(r.classnames)
    return names


def classify(records):
    """Sort records into the tables' settings (see the module docstring)."""
    out = Classified()
    halves = [r for r in records if is_base_half(r) or is_new_half(r)]
    pair_base_to_new(halves, out)
    out.sources = [r for r in records if is_source(r)]
    source_names = source_classnames_by_dataset(out.sources)
    for r in records:
        if is_transfer(r):
            target = out.domain_generalization if is_domain_shift(r, source_names.get(r.train_dataset)) \
                else out.cross_dataset
            target.append(r)
        elif not (is_source(r) or is_base_half(r) or is_new_half(r)):
            out.notes.append(f"{r.path}: evaluated on '{r.subsample}' classes of {r.dataset} by a model trained on "
                             f"'{r.train_subsample}' classes; fits no table")
    return out


# ---------------------------------------------------------------------------------------------
# Statistics

def harmonic_mean(a, b):
    return 0.0 if a + b == 0 else 2 * a * b / (a + b)


def mean_or_none(values):
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


# ---------------------------------------------------------------------------------------------
# Methods, configs and ablation variants

def variant_base(method, methods):
    """The config ``<c>`` of which ``method``'s config is the ablation variant ``<c>_<suffix>``, or None."""
    bases = [m.cfg for m in methods if m.trainer == method.trainer and m.backbone == method.backbone
             and m.cfg != method.cfg and method.cfg.startswith(m.cfg + "_")]
    return max(bases, key=len) if bases else None


def method_labels(methods):
    """Row labels: the trainer's display name, with config and backbone added only where needed."""
    labels = {}
    for m in methods:
        same_trainer = [o for o in methods if o.trainer == m.trainer]
        label = DISPLAY_NAMES.get(m.trainer, m.trainer)
        if len({o.cfg for o in same_trainer}) > 1:
            label += f" ({m.cfg})"
        if len({o.backbone for o in same_trainer}) > 1:
            label += f" [{m.backbone}]"
        labels[m] = label
    return labels


def ordered_methods(methods):
    rank = {name: i for i, name in enumerate(TRAINER_ORDER)}
    return sorted(set(methods), key=lambda m: (rank.get(m.trainer, len(TRAINER_ORDER)), m.trainer, m.cfg, m.backbone))


def ablation_label(cfg, default_cfg):
    suffix = cfg[len(default_cfg) + 1:]
    return ABLATION_LABELS.get(suffix, suffix.replace("_", " "))


def ablation_order(variants, default_cfg):
    order = [f"{default_cfg}_{suffix}" for suffix in ABLATION_LABELS]
    return sorted(variants, key=lambda m: (order.index(m.cfg) if m.cfg in order else len(order), m.cfg))


# ---------------------------------------------------------------------------------------------
# Building the tables: each a tables.Table (rendered to every format by llu/tables.py)

def method_json(m, label):
    return {"trainer": m.trainer, "cfg": m.cfg, "backbone": m.backbone, "label": label}


def stat(values):
    """A Stat of a list of numbers: mean, population std (CoOp's np.std) and count."""
    return Stat(statistics.fmean(values), statistics.pstdev(values), len(values))


def base2new_cells(pairs):
    """Base, New and H of one method on one dataset from its (base, new) pairs over seeds; H is of
    the means, its spread that of the per-seed H."""
    base, new = stat([b.accuracy for b, _ in pairs]), stat([n.accuracy for _, n in pairs])
    per_seed_h = [harmonic_mean(b.accuracy, n.accuracy) for b, n in pairs]
    h = Stat(harmonic_mean(base.mean, new.mean), statistics.pstdev(per_seed_h), len(pairs))
    return {"base": base, "new": new, "h": h, "regularizer": mean_or_none([b.regularizer for b, _ in pairs])}


def average_cells(per_dataset):
    """The average over datasets of per-dataset cells (H from the averaged Base and New)."""
    base = statistics.fmean(c["base"].mean for c in per_dataset)
    new = statistics.fmean(c["new"].mean for c in per_dataset)
    return {"base": Stat(base), "new": Stat(new), "h": Stat(harmonic_mean(base, new)),
            "regularizer": mean_or_none([c["regularizer"] for c in per_dataset])}


def base2new_by_shots(pairs):
    """{shots: {dataset: {method: [(base, new) over seeds]}}}."""
    grouped = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for base, new in pairs:
        grouped[base.shots][base.dataset][base.method].append((base, new))
    return grouped


BASE2NEW_COLUMNS = [("base", "Base"), ("new", "New"), ("h", "H")]


def table1(by_dataset, shots):
    """Table 1 at one shot count: one table per dataset, and their average over datasets."""
    methods = set().union(*(set(by_method) for by_method in by_dataset.values()))
    main = [m for m in ordered_methods(methods) if variant_base(m, methods) is None]
    labels = method_labels(main)
    datasets = ordered(by_dataset, DATASET_ORDER)
    cells = {d: {m: base2new_cells(by_dataset[d][m]) for m in main if m in by_dataset[d]} for d in datasets}
    tables = []
    if len(datasets) > 1:
        rows = [Row(labels[m], average_cells([cells[d][m] for d in datasets]), method_json(m, labels[m]),
                    {"datasets": len(datasets)}) for m in main if all(m in cells[d] for d in datasets)]
        tables.append(Table("table1", f"Average over {len(datasets)} datasets ({shots} shots)",
                            BASE2NEW_COLUMNS + [("datasets", "datasets")],
                            [Row(r.label, {**r.cells, "datasets": r.extra["datasets"]}, r.method, r.extra) for r in rows],
                            {"dataset": "Average", "shots": shots}))
    for d in datasets:
        rows = [Row(labels[m], {**cells[d][m], "seeds": len(by_dataset[d][m])}, method_json(m, labels[m]),
                    {"seeds": sorted(b.seed for b, _ in by_dataset[d][m])}) for m in main if m in cells[d]]
        tables.append(Table("table1", f"{d} ({shots} shots)", BASE2NEW_COLUMNS + [("seeds", "seeds")], rows,
                            {"dataset": d, "shots": shots}))
    return tables


def ablation_columns(default, methods):
    """CLIP (zero-shot CLIP with the default's config, else the only one), the default, its variants."""
    zero_shot = [m for m in methods if m.trainer == "ZeroshotCLIP" and variant_base(m, methods) is None]
    same_cfg = [m for m in zero_shot if m.cfg == default.cfg and m.backbone == default.backbone]
    zero_shot = same_cfg or zero_shot
    variants = ablation_order([m for m in methods if variant_base(m, methods) == default.cfg
                               and m.trainer == default.trainer and m.backbone == default.backbone], default.cfg)
    columns = [("CLIP", zero_shot[0])] if len(zero_shot) == 1 else []
    return columns + [("Default", default)] + [(ablation_label(m.cfg, default.cfg), m) for m in variants]


def table4(by_dataset, shots):
    """One Table 4 per (trainer, default config) that has ablation variants, averaged over datasets;
    shown as the paper does, the variants as columns."""
    methods = set().union(*(set(by_method) for by_method in by_dataset.values()))
    defaults = {Method(m.trainer, variant_base(m, methods), m.backbone) for m in methods if variant_base(m, methods)}
    tables = []
    for default in ordered_methods(defaults):
        datasets = ordered([d for d in by_dataset if default in by_dataset[d]], DATASET_ORDER)
        rows = []
        for label, m in ablation_columns(default, methods):
            pairs = [by_dataset[d].get(m) for d in datasets]
            cells = average_cells([base2new_cells(p) for p in pairs]) if all(pairs) else {}
            rows.append(Row(label, cells, method_json(m, label)))
        trainer = DISPLAY_NAMES.get(default.trainer, default.trainer)
        tables.append(Table("table4", f"{trainer}, config {default.cfg}; average over {len(datasets)} dataset(s), "
                            f"{shots} shots", [("base", "Base"), ("new", "New"), ("h", "Mean (H)"),
                                               ("regularizer", "Regularization")], rows,
                            {"trainer": default.trainer, "default_cfg": default.cfg, "datasets": datasets,
                             "shots": shots}, transpose=True))
    return tables


def transfer_tables(transfers, sources, kind, with_average):
    """Tables 2 / 3: one per (source dataset, shots); rows methods, columns the source, then targets."""
    grouped = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for r in transfers:
        grouped[(r.train_dataset, r.train_shots)][r.method][r.dataset].append(r.accuracy)
    source_accuracy = defaultdict(list)
    for r in sources:
        source_accuracy[(r.dataset, r.shots, r.method)].append(r.accuracy)
    tables = []
    for (source, shots), by_method in sorted(grouped.items(), key=lambda item: str(item[0])):
        targets = ordered({t for per_target in by_method.values() for t in per_target}, DATASET_ORDER)
        labels = method_labels(list(by_method))
        rows = []
        for m in ordered_methods(by_method):
            cells = {t: stat(by_method[m][t]) for t in targets if t in by_method[m]}
            values = source_accuracy.get((source, shots, m))
            cells["source"] = stat(values) if values else None
            if with_average:
                cells["average"] = (Stat(statistics.fmean(cells[t].mean for t in targets))
                                    if all(t in cells for t in targets) else None)
            cells["seeds"] = max(c.n for k, c in cells.items() if k in targets)
            rows.append(Row(labels[m], cells, method_json(m, labels[m])))
        columns = [("source", f"Source: {source}")] + [(t, t) for t in targets]
        columns += [("average", "Average")] if with_average else []
        tables.append(Table(kind, f"trained on {source}, {shots} shots", columns + [("seeds", "seeds")], rows,
                            {"source": source, "shots": shots, "targets": targets}))
    return tables


def all_classes_tables(sources):
    """Accuracy of runs trained and evaluated on all classes of a dataset: methods x datasets, one
    table per shot count (for runs that are not base-to-new, such as your own image folder's)."""
    grouped = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for r in sources:
        grouped[r.shots][r.method][r.dataset].append(r.accuracy)
    tables = []
    for shots, by_method in sorted(grouped.items()):
        datasets = ordered({d for per in by_method.values() for d in per}, DATASET_ORDER)
        labels = method_labels(list(by_method))
        rows = [Row(labels[m], {**{d: stat(by_method[m][d]) for d in datasets if d in by_method[m]},
                                "seeds": max(len(v) for v in by_method[m].values())}, method_json(m, labels[m]))
                for m in ordered_methods(by_method)]
        tables.append(Table("all_classes", f"{shots} shots" if shots > 0 else "all training images",
                            [(d, d) for d in datasets] + [("seeds", "seeds")], rows, {"shots": shots}))
    return tables


def fewshot_curves(by_shots):
    """Figure 2's data: {panel ("Average" or a dataset): {method: {shots: {"base": Stat, "new": Stat}}}}."""
    curves = defaultdict(lambda: defaultdict(dict))
    for shots in sorted(by_shots):
        for t in table1(by_shots[shots], shots):
            for row in t.rows:
                m = Method(row.method["trainer"], row.method["cfg"], row.method["backbone"])
                curves[t.meta["dataset"]][m][shots] = {"base": row.cells["base"], "new": row.cells["new"]}
    return curves


def fewshot_table(curves, panel):
    shots = sorted({s for per_shot in curves[panel].values() for s in per_shot})
    labels = method_labels(list(curves[panel]))
    rows = [Row(labels[m], {str(s): curves[panel][m].get(s) for s in shots}, method_json(m, labels[m]))
            for m in ordered_methods(curves[panel])]
    return Table("fewshot", f"{panel}: Base / New accuracy by shots",
                 [(str(s), f"{s} shot{'s' if s != 1 else ''}") for s in shots], rows, {"dataset": panel}, best=None)


def step_time_table(bench):
    """Figure 3's data: ms per training step by batch size, with the ratio to LLU's."""
    times = bench["step_time_ms"]
    trainers = ordered(times, TRAINER_ORDER)
    reference = times.get("LLU", {})
    rows = []
    for b in sorted({int(b) for per_batch in times.values() for b in per_batch}):
        cells = {}
        for t in trainers:
            ms = times[t].get(str(b))
            ratio = f"({ms / reference[str(b)]:.2f}x)" if ms is not None and reference.get(str(b)) else ""
            cells[t] = None if ms is None else Stat(ms, suffix=ratio)
        rows.append(Row(str(b), cells))
    setting = ", ".join(part for part in (f"{bench['num_classes']} classes" if bench.get("num_classes") else "",
                                          f"from {bench['inputs']}" if bench.get("inputs") else "") if part)
    return Table("step_time", f"one training step (forward + backward), ms; ratio to LLU "
                 f"({bench.get('backbone', '?')} on {bench.get('device', '?')}{', ' + setting if setting else ''})",
                 [(t, DISPLAY_NAMES.get(t, t)) for t in trainers], rows, {"path": bench.get("path")}, best=None)


# ---------------------------------------------------------------------------------------------
# Step-time benchmark (Figure 3)

def load_bench(path):
    """Check and return a ``bench/bench_step_time.py`` results file."""
    content = read_json_file(path)
    times = content.get("step_time_ms") if isinstance(content, dict) else None
    if not isinstance(times, dict) or not all(
            isinstance(per_batch, dict) and all(isinstance(v, NUMBER) for v in per_batch.values())
            for per_batch in times.values()):
        raise ResultsError(f"{path}: not a step-time results file (expected 'step_time_ms': "
                           f"{{trainer: {{batch size: milliseconds}}}})")
    content["path"] = path
    return content


def find_bench_files(root, explicit):
    if explicit:
        return [explicit]
    return find_files(root, "step_time*.json")


# ---------------------------------------------------------------------------------------------
# Figures (PNG at 300 dpi and PDF, legends outside the axes, error bars: std over seeds)

def pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def log2_axis(ax, values, label):
    ax.set_xscale("log", base=2)
    ax.set_xticks(values)
    ax.set_xticklabels([str(v) for v in values])
    ax.minorticks_off()
    ax.set_xlabel(label)


def describe(records):
    """'backbone on device' of the records (several joined by commas)."""
    backbones = sorted({r.method.backbone for r in records})
    devices = sorted({r.device for r in records if r.device})
    return f"{', '.join(backbones)} on {', '.join(devices) or 'unknown hardware'}"


def plot_fewshot(curves, what, path):
    """Figure 2: accuracy against shots; solid circles base classes, dashed crosses new classes, one
    colour per method, error bars over seeds; the average over datasets first, then one panel each."""
    plt = pyplot()
    panels = list(curves)
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.3 * rows), squeeze=False)
    handles = {}
    for ax, panel in zip(axes.flat, panels):
        labels = method_labels(list(curves[panel]))
        for m in ordered_methods(curves[panel]):
            shots = sorted(curves[panel][m])
            colour = COLOURS.get(m.trainer)
            seeds = {curves[panel][m][s]["base"].n for s in shots} - {None}
            label = labels[m] + (f" ({max(seeds)} seeds)" if seeds else "")
            for half, style in (("base", "o-"), ("new", "x--")):
                stats = [curves[panel][m][s][half] for s in shots]
                errors = [s.std or 0.0 for s in stats]
                line = ax.errorbar(shots, [s.mean for s in stats], yerr=errors if any(errors) else None, fmt=style,
                                   color=colour, capsize=2, markersize=4)
                if half == "base":
                    handles.setdefault(label, line)
        log2_axis(ax, sorted({s for per_shot in curves[panel].values() for s in per_shot}), "shots per class")
        ax.set_title(panel)
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    legend = list(handles.values()) + [plt.Line2D([], [], color="k", marker="o"),
                                       plt.Line2D([], [], color="k", marker="x", linestyle="--")]
    fig.legend(legend, list(handles) + ["base classes", "new classes"], loc="center left", bbox_to_anchor=(1.0, 0.5),
               fontsize="small", frameon=False)
    fig.suptitle(f"Accuracy by shots, base and new classes ({what})")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_bench(bench, path):
    """Figure 3: step time against batch size (error bars when the benchmark gives a spread);
    CoCoOp (one batch size) as a dot."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    times, spread = bench["step_time_ms"], bench.get("step_time_std_ms", {})
    for t in ordered(times, TRAINER_ORDER):
        sizes = sorted(int(b) for b in times[t])
        style = "o" if len(sizes) == 1 else ".-"
        colour = "tab:orange" if t == "CoCoOp" else COLOURS.get(t)
        errors = [spread.get(t, {}).get(str(b), 0.0) for b in sizes]
        ax.errorbar(sizes, [times[t][str(b)] for b in sizes], yerr=errors if any(errors) else None, fmt=style,
                    color=colour, capsize=2, label=DISPLAY_NAMES.get(t, t))
    log2_axis(ax, sorted({int(b) for per_batch in times.values() for b in per_batch}), "batch size")
    ax.set_yscale("log")
    ax.set_ylabel("forward + backward (ms)")
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize="small", frameon=False)
    setting = f", {bench['num_classes']} classes, from {bench['inputs']}" if bench.get("num_classes") else ""
    ax.set_title(f"One training step ({bench.get('backbone', '?')} on {bench.get('device', '?')}{setting})",
                 fontsize="medium")
    return save_figure(fig, path)


def save_figure(fig, path):
    """Write ``path`` (.png, 300 dpi) and the same figure as .pdf; returns both paths."""
    paths = [path, osp.splitext(path)[0] + ".pdf"]
    for target, fmt in zip(paths, ("png", "pdf")):
        with atomic_path(target) as tmp:
            fig.savefig(tmp, format=fmt, dpi=300, bbox_inches="tight")
    pyplot().close(fig)
    return paths


# ---------------------------------------------------------------------------------------------
# Putting it together

@dataclass
class Report:
    """Every table and figure the tree allows: sections of tables (``sections``, for the printed
    document: the largest shot count), every table (``tables``, for JSON and CSV), figures, notes."""
    sections: list = field(default_factory=list)  # (heading, [Table])
    tables: list = field(default_factory=list)
    figures: dict = field(default_factory=dict)  # file name -> function(path) returning the written paths
    notes: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    num_records: int = 0

    def text(self, fmt="md"):
        if not self.sections:
            return f"No table: {self.num_records} record(s) found, none fits a table.\n"
        return document(self.sections, fmt)

    @property
    def markdown(self):
        return self.text("md")

    @property
    def json(self):
        return {"tables": [t.json() for t in self.tables], "notes": self.notes, "warnings": self.warnings,
                "num_records": self.num_records}

    def add(self, heading, tables, shown=None):
        self.tables += tables
        shown = tables if shown is None else shown
        if shown:
            self.sections.append((heading, shown))


def add_base2new(report, classified):
    by_shots = base2new_by_shots(classified.base2new)
    if not by_shots:
        return
    top = max(by_shots)
    for shots in sorted(by_shots):
        tables = table1(by_shots[shots], shots)
        report.add("Table 1: base-to-new generalisation", tables, tables if shots == top else [])
    for shots in sorted(by_shots):
        tables = table4(by_shots[shots], shots)
        report.add("Table 4: ablation", tables, tables if shots == top else [])
    if len(by_shots) > 1:
        curves = fewshot_curves(by_shots)
        panel = "Average" if "Average" in curves else next(iter(curves))
        report.add("Figure 2 (data)", [fewshot_table(curves, p) for p in curves], [fewshot_table(curves, panel)])
        report.warnings += uneven_seed_warnings(curves)
        what = describe([r for pair in classified.base2new for r in pair])
        report.figures["figure2_fewshot.png"] = lambda path: plot_fewshot(curves, what, path)


def uneven_seed_warnings(curves):
    warnings = []
    for panel, by_method in curves.items():
        for m, per_shot in by_method.items():
            seeds = {shots: cells["base"].n for shots, cells in per_shot.items() if cells["base"].n is not None}
            if len(set(seeds.values())) > 1:
                warnings.append(f"Figure 2, {panel}, {m.trainer} ({m.cfg}): the points average different numbers "
                                f"of seeds ({', '.join(f'{s} shots: {n}' for s, n in sorted(seeds.items()))})")
    return warnings


def add_transfer(report, classified):
    report.add("Table 2: cross-dataset generalisation",
               transfer_tables(classified.cross_dataset, classified.sources, "cross_dataset", True))
    report.add("Table 3: domain generalisation",
               transfer_tables(classified.domain_generalization, classified.sources, "domain_generalization", False))
    trained_elsewhere = {r.train_dataset for r in classified.cross_dataset + classified.domain_generalization}
    report.add("Accuracy on all classes", all_classes_tables(
        [r for r in classified.sources if r.dataset not in trained_elsewhere]))


def add_bench(report, bench_paths):
    """Figure 3's table and plot per step-time file (step_time.json -> figure3_step_time.png,
    step_time_features_100c.json -> figure3_step_time_features_100c.png)."""
    benches = [load_bench(path) for path in bench_paths]
    if benches:
        report.add("Figure 3 (data)", [step_time_table(b) for b in benches])
    for bench in benches:
        name = "figure3_" + osp.splitext(osp.basename(bench["path"]))[0] + ".png"
        report.figures[name] = lambda path, bench=bench: plot_bench(bench, path)


def mixed_weights_warnings(records, table):
    """One warning per backbone name whose runs in ``table`` come from different weights files."""
    by_backbone = defaultdict(lambda: defaultdict(list))
    for r in records:
        if r.backbone_sha256:
            by_backbone[r.method.backbone][r.backbone_sha256].append(r.path)
    warnings = []
    for backbone, by_hash in sorted(by_backbone.items()):
        if len(by_hash) > 1:
            parts = ", ".join(f"{digest[:12]}... in {len(paths)} run(s) (e.g. {paths[0]})"
                              for digest, paths in sorted(by_hash.items(), key=lambda item: -len(item[1])))
            warnings.append(f"{table} mix runs of backbone {backbone!r} with different weights: {parts}")
    return warnings


def build_report(root, bench=None):
    """Read ``root`` (and a step-time file) and build every table the records allow."""
    if not osp.isdir(root):
        raise ResultsError(f"{root}: no such folder")
    records = load_records(root)
    bench_paths = find_bench_files(root, bench)
    if not records and not bench_paths:
        raise ResultsError(f"{root}: no results.json found under it (has any run finished?)")
    classified = classify(records)
    report = Report(notes=classified.notes, num_records=len(records))
    add_base2new(report, classified)
    add_transfer(report, classified)
    add_bench(report, bench_paths)
    report.warnings += (
        mixed_weights_warnings([r for pair in classified.base2new for r in pair], "the base-to-new tables")
        + mixed_weights_warnings(classified.cross_dataset + classified.domain_generalization + classified.sources,
                                 "the transfer tables"))
    return report


def write_report(report, out_dir, fmt="md"):
    """Write tables.md, tables.json, tables.csv (and tables.tex for --format latex) and the figures
    into ``out_dir``; return the written paths."""
    paths = [osp.join(out_dir, "tables.md"), osp.join(out_dir, "tables.json"), osp.join(out_dir, "tables.csv")]
    write_text(report.markdown, paths[0])
    write_text(json.dumps(report.json, indent=2, default=str) + "\n", paths[1])
    write_text(csv_text(report.tables), paths[2])
    if fmt == "latex":
        paths.append(osp.join(out_dir, "tables.tex"))
        write_text(report.text("latex"), paths[-1])
    for name, plot in report.figures.items():
        paths += plot(osp.join(out_dir, name))
    return paths


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("output_dir", help="folder holding the runs' results.json files")
    parser.add_argument("--out", default="", help="where tables.* and figures go (default: output_dir)")
    parser.add_argument("--bench", default="", help="step-time results file for Figure 3 "
                                                    "(default: any step_time.json under output_dir)")
    parser.add_argument("--format", choices=FORMATS, default="md",
                        help="what is printed: md (GitHub Markdown, also tables.md), latex (booktabs, best in bold; "
                             "also tables.tex), csv (one row per cell, also tables.csv) or terminal")
    args = parser.parse_args(argv)
    report = build_report(args.output_dir, args.bench or None)
    print(csv_text(report.tables) if args.format == "csv" else report.text(args.format), end="")
    for note in report.notes:
        print(f"note: {note}", file=sys.stderr)
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for path in write_report(report, args.out or args.output_dir, args.format):
        print(f"wrote {path}", file=sys.stderr)


def cli(argv=None):
    try:
        main(argv)
    except ResultsError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    cli()
