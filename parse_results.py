"""Results tree -> the paper's tables and figures.

    python parse_results.py output/base2new [--out DIR] [--bench bench/results/step_time.json]

Reads every ``results.json`` under the folder (the one machine-readable record each run of
``train.py`` writes; logs are never parsed), checks their fields, and prints whichever tables the
records allow, like the paper's; Figure 3 comes from a ``step_time.json`` of
``bench/bench_step_time.py`` found under the folder or given by ``--bench``. It writes
``tables.md``, ``tables.json`` and the figures' PNGs into ``--out`` (default: the folder), each
atomically.

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
import json
import math
import os
import os.path as osp
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass, field

from tabulate import tabulate

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

    @property
    def run_key(self):
        """Two records with this key describe the same run."""
        return (self.method, self.dataset, self.seed, self.shots, self.subsample, self.train_dataset,
                self.train_subsample, self.train_shots)


def find_files(root, name):
    """Every file called ``name`` under ``root`` (hidden folders skipped), in sorted walk order."""
    paths = []
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        if name in files:
            paths.append(osp.join(directory, name))
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
        backbone_sha256=backbone_sha256(content, path))


def backbone_sha256(content, path):
    provenance = content.get("provenance") or {}
    if not isinstance(provenance, dict):
        raise ResultsError(f"{path}: field 'provenance' must be an object")
    value = provenance.get("backbone_sha256")
    if value is not None and not isinstance(value, str):
        raise ResultsError(f"{path}: field 'provenance.backbone_sha256' must be a string, got {value!r}")
    return value


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


def summary(values):
    """Mean, population std and count of a list of numbers."""
    return {"mean": statistics.fmean(values), "std": statistics.pstdev(values), "n": len(values)}


def mean_or_none(values):
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def base2new_entry(pairs):
    """Base, New and H of one method on one dataset from its (base, new) pairs over seeds."""
    base = summary([b.accuracy for b, _ in pairs])
    new = summary([n.accuracy for _, n in pairs])
    per_seed_h = [harmonic_mean(b.accuracy, n.accuracy) for b, n in pairs]
    h = {"mean": harmonic_mean(base["mean"], new["mean"]), "std": statistics.pstdev(per_seed_h), "n": len(pairs)}
    return {"base": base, "new": new, "h": h, "seeds": sorted(b.seed for b, _ in pairs),
            "regularizer": mean_or_none([b.regularizer for b, _ in pairs])}


def average_entry(entries):
    """The average over datasets of per-dataset entries (H from the averaged Base and New)."""
    base = statistics.fmean(e["base"]["mean"] for e in entries)
    new = statistics.fmean(e["new"]["mean"] for e in entries)
    return {"base": {"mean": base}, "new": {"mean": new}, "h": {"mean": harmonic_mean(base, new)},
            "datasets": len(entries), "regularizer": mean_or_none([e["regularizer"] for e in entries])}


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
# Building the tables (plain data; rendering is below)

def base2new_by_shots(pairs):
    """{shots: {dataset: {method: entry}}} from the base-to-new pairs."""
    grouped = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for base, new in pairs:
        grouped[base.shots][base.dataset][base.method].append((base, new))
    return {shots: {dataset: {m: base2new_entry(p) for m, p in by_method.items()}
                    for dataset, by_method in by_dataset.items()}
            for shots, by_dataset in grouped.items()}


def averages_over_datasets(by_dataset):
    """{method: average entry} for the methods that have every dataset."""
    datasets = list(by_dataset)
    methods = set().union(*(set(by_method) for by_method in by_dataset.values()))
    return {m: average_entry([by_dataset[d][m] for d in datasets])
            for m in methods if all(m in by_dataset[d] for d in datasets)}


def table1(by_dataset):
    """Table 1 at one shot count: the non-variant methods, per dataset and on average."""
    all_methods = set().union(*(set(by_method) for by_method in by_dataset.values()))
    main = [m for m in ordered_methods(all_methods) if variant_base(m, all_methods) is None]
    datasets = ordered(by_dataset, DATASET_ORDER)
    main_only = {d: {m: e for m, e in by_dataset[d].items() if m in main} for d in datasets}
    return {"methods": main, "datasets": datasets, "per_dataset": main_only,
            "average": averages_over_datasets(main_only) if len(datasets) > 1 else None}


def ablation_columns(default, methods):
    """CLIP (zero-shot CLIP with the default's config, else the only one), the default, its variants."""
    zero_shot = [m for m in methods if m.trainer == "ZeroshotCLIP" and variant_base(m, methods) is None]
    same_cfg = [m for m in zero_shot if m.cfg == default.cfg and m.backbone == default.backbone]
    zero_shot = same_cfg or zero_shot
    variants = ablation_order([m for m in methods if variant_base(m, methods) == default.cfg
                               and m.trainer == default.trainer and m.backbone == default.backbone], default.cfg)
    columns = [("CLIP", zero_shot[0])] if len(zero_shot) == 1 else []
    return columns + [("Default", default)] + [(ablation_label(m.cfg, default.cfg), m) for m in variants]


def table4(by_dataset):
    """One Table 4 per (trainer, default config) that has ablation variants, averaged over datasets."""
    methods = set().union(*(set(by_method) for by_method in by_dataset.values()))
    defaults = {Method(m.trainer, variant_base(m, methods), m.backbone) for m in methods if variant_base(m, methods)}
    tables = []
    for default in ordered_methods(defaults):
        datasets = ordered([d for d in by_dataset if default in by_dataset[d]], DATASET_ORDER)
        columns = []
        for label, m in ablation_columns(default, methods):
            entries = [by_dataset[d].get(m) for d in datasets]
            columns.append((label, m, average_entry(entries) if all(entries) else None))
        tables.append({"trainer": default.trainer, "default": default, "datasets": datasets, "columns": columns})
    return tables


def transfer_tables(transfers, sources, with_average):
    """Tables 2 / 3: one per (source dataset, shots); rows are methods, columns source then targets."""
    grouped = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for r in transfers:
        grouped[(r.train_dataset, r.train_shots)][r.method][r.dataset].append(r.accuracy)
    source_acc = defaultdict(list)
    for r in sources:
        source_acc[(r.dataset, r.shots, r.method)].append(r.accuracy)
    tables = []
    for (source, shots), by_method in sorted(grouped.items(), key=lambda item: str(item[0])):
        targets = ordered({t for per_target in by_method.values() for t in per_target}, DATASET_ORDER)
        rows = [transfer_row(m, by_method[m], targets, source_acc.get((source, shots, m)), with_average)
                for m in ordered_methods(by_method)]
        tables.append({"source": source, "shots": shots, "targets": targets, "rows": rows})
    return tables


def transfer_row(method, per_target, targets, source_values, with_average):
    cells = {t: summary(per_target[t]) for t in targets if t in per_target}
    row = {"method": method, "source": summary(source_values) if source_values else None, "targets": cells,
           "seeds": max(c["n"] for c in cells.values())}
    if with_average:
        row["average"] = statistics.fmean(cells[t]["mean"] for t in targets) if len(cells) == len(targets) else None
    return row


def fewshot_curves(by_shots):
    """Figure 2's data: {panel ("Average" or a dataset): {method: {shots: (base, new)}}} for the main methods."""
    curves = defaultdict(lambda: defaultdict(dict))
    for shots, by_dataset in sorted(by_shots.items()):
        t1 = table1(by_dataset)
        panels = dict(t1["per_dataset"])
        if t1["average"]:
            panels = {"Average": t1["average"], **panels}
        for panel, by_method in panels.items():
            for m, e in by_method.items():
                curves[panel][m][shots] = (e["base"]["mean"], e["new"]["mean"])
    return curves


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
    return find_files(root, "step_time.json")


# ---------------------------------------------------------------------------------------------
# Rendering

def markdown_table(rows, headers):
    """A GitHub-markdown table; cells are shown as formatted here (no re-parsing of numbers)."""
    align = ("left",) + ("right",) * (len(headers) - 1)
    return tabulate(rows, headers, tablefmt="github", disable_numparse=True, colalign=align)


def fmt(value, std=None):
    if value is None:
        return "-"
    return f"{value:.2f}" if std is None else f"{value:.2f} ± {std:.2f}"


def fmt_stat(stat):
    return "-" if stat is None else fmt(stat["mean"], stat.get("std"))


def render_table1(t1, shots):
    labels = method_labels(t1["methods"])
    blocks = []
    if t1["average"]:
        rows = [[labels[m], fmt(e["base"]["mean"]), fmt(e["new"]["mean"]), fmt(e["h"]["mean"]), e["datasets"]]
                for m, e in ((m, t1["average"].get(m)) for m in t1["methods"]) if e]
        blocks.append(f"### Average over {len(t1['datasets'])} datasets ({shots} shots)\n\n"
                      + markdown_table(rows, ["", "Base", "New", "H", "datasets"]))
    for dataset in t1["datasets"]:
        entries = t1["per_dataset"][dataset]
        rows = [[labels[m], fmt_stat(e["base"]), fmt_stat(e["new"]), fmt_stat(e["h"]), len(e["seeds"])]
                for m, e in ((m, entries.get(m)) for m in t1["methods"]) if e]
        blocks.append(f"### {dataset} ({shots} shots)\n\n"
                      + markdown_table(rows, ["", "Base", "New", "H", "seeds"]))
    return "## Table 1: base-to-new generalisation\n\n" + "\n\n".join(blocks)


def fmt_regularizer(value):
    return "-" if value is None else f"{value:.3g}"


def render_table4(t4, shots):
    headers = [""] + [label for label, _, _ in t4["columns"]]
    rows = []
    for name, key in (("Base", "base"), ("New", "new"), ("Mean (H)", "h")):
        rows.append([name] + [fmt(avg[key]["mean"]) if avg else "-" for _, _, avg in t4["columns"]])
    rows.append(["Regularization"] + [fmt_regularizer(avg["regularizer"]) if avg else "-"
                                      for _, _, avg in t4["columns"]])
    title = (f"## Table 4: ablation of {DISPLAY_NAMES.get(t4['trainer'], t4['trainer'])} "
             f"(config {t4['default'].cfg}; average over {len(t4['datasets'])} dataset(s), {shots} shots)")
    return title + "\n\n" + markdown_table(rows, headers)


def render_transfer(table, title, with_average):
    labels = method_labels([row["method"] for row in table["rows"]])
    headers = ["", f"Source: {table['source']}"] + table["targets"] + (["Average"] if with_average else []) + ["seeds"]
    rows = []
    for row in table["rows"]:
        cells = [fmt(row["targets"][t]["mean"]) if t in row["targets"] else "-" for t in table["targets"]]
        average = [fmt(row["average"])] if with_average else []
        source = fmt(row["source"]["mean"]) if row["source"] else "-"
        rows.append([labels[row["method"]], source] + cells + average + [row["seeds"]])
    return (f"## {title} (trained on {table['source']}, {table['shots']} shots)\n\n"
            + markdown_table(rows, headers))


def render_fewshot(curves):
    panel = "Average" if "Average" in curves else next(iter(curves))
    by_method = curves[panel]
    shots = sorted({s for per_shot in by_method.values() for s in per_shot})
    labels = method_labels(list(by_method))
    rows = []
    for m in ordered_methods(by_method):
        cells = [f"{by_method[m][s][0]:.2f} / {by_method[m][s][1]:.2f}" if s in by_method[m] else "-" for s in shots]
        rows.append([labels[m]] + cells)
    return (f"## Figure 2 (data): {panel}, Base / New accuracy by shots\n\n"
            + markdown_table(rows, [""] + [f"{s} shot{'s' if s != 1 else ''}" for s in shots]))


def render_bench(bench):
    times = bench["step_time_ms"]
    trainers = ordered(times, TRAINER_ORDER)
    batch_sizes = sorted({int(b) for per_batch in times.values() for b in per_batch})
    reference = times.get("LLU", {})
    rows = []
    for b in batch_sizes:
        row = [b]
        for t in trainers:
            ms = times[t].get(str(b))
            ratio = f" ({ms / reference[str(b)]:.2f}x)" if ms is not None and reference.get(str(b)) else ""
            row.append("-" if ms is None else f"{ms:.2f}{ratio}")
        rows.append(row)
    device = bench.get("device", "?")
    backbone = bench.get("backbone", "?")
    return (f"## Figure 3 (data): one training step (forward + backward), ms; ratio to LLU "
            f"({backbone} on {device})\n\n"
            + markdown_table(rows, ["batch size"] + [DISPLAY_NAMES.get(t, t) for t in trainers]))


# ---------------------------------------------------------------------------------------------
# Figures

def pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_fewshot(curves, path):
    """Figure 2: accuracy against shots; circles base classes, x new classes, one colour per method."""
    plt = pyplot()
    panels = list(curves)
    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        labels = method_labels(list(curves[panel]))
        for m in ordered_methods(curves[panel]):
            shots = sorted(curves[panel][m])
            colour = COLOURS.get(m.trainer)
            ax.plot(shots, [curves[panel][m][s][0] for s in shots], "o-", color=colour, label=labels[m])
            ax.plot(shots, [curves[panel][m][s][1] for s in shots], "x--", color=colour)
        log2_axis(ax, sorted({s for per_shot in curves[panel].values() for s in per_shot}), "shots")
        ax.set_title(panel)
        ax.set_ylabel("accuracy (%)")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    axes.flat[0].plot([], [], "ko", label="base classes")
    axes.flat[0].plot([], [], "kx--", label="new classes")
    axes.flat[0].legend(fontsize="small")
    save_figure(fig, path)


def log2_axis(ax, values, label):
    ax.set_xscale("log", base=2)
    ax.set_xticks(values)
    ax.set_xticklabels([str(v) for v in values])
    ax.minorticks_off()
    ax.set_xlabel(label)


def plot_bench(bench, path):
    """Figure 3: step time against batch size; CoCoOp (one batch size) as a dot."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    times = bench["step_time_ms"]
    for t in ordered(times, TRAINER_ORDER):
        sizes = sorted(int(b) for b in times[t])
        style = "o" if len(sizes) == 1 else ".-"
        colour = "tab:orange" if t == "CoCoOp" else COLOURS.get(t)
        ax.plot(sizes, [times[t][str(b)] for b in sizes], style, color=colour, label=DISPLAY_NAMES.get(t, t))
    log2_axis(ax, sorted({int(b) for per_batch in times.values() for b in per_batch}), "batch size")
    ax.set_ylabel("forward + backward (ms)")
    ax.legend(fontsize="small")
    save_figure(fig, path)


def save_figure(fig, path):
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    fig.clf()


# ---------------------------------------------------------------------------------------------
# Output

def method_json(m):
    return {"trainer": m.trainer, "cfg": m.cfg, "backbone": m.backbone, "label": method_labels([m])[m]}


def entries_json(by_method, labels):
    return [{**method_json(m), "label": labels[m], **e} for m, e in by_method.items()]


def table1_json(t1):
    labels = method_labels(t1["methods"])
    out = {"datasets": {d: entries_json(t1["per_dataset"][d], labels) for d in t1["datasets"]}}
    if t1["average"]:
        out["average"] = entries_json(t1["average"], labels)
    return out


def table4_json(t4):
    return {"trainer": t4["trainer"], "default_cfg": t4["default"].cfg, "datasets": t4["datasets"],
            "columns": [{**method_json(m), "label": label, "average": avg} for label, m, avg in t4["columns"]]}


def transfer_json(table):
    labels = method_labels([row["method"] for row in table["rows"]])
    rows = [{**method_json(row["method"]), "label": labels[row["method"]],
             **{k: v for k, v in row.items() if k != "method"}} for row in table["rows"]]
    return {"source": table["source"], "shots": table["shots"], "targets": table["targets"], "rows": rows}


# ---------------------------------------------------------------------------------------------
# Putting it together

@dataclass
class Report:
    """Every table and figure the tree allows, as data (``json``) and text (``markdown``)."""
    json: dict = field(default_factory=dict)
    sections: list = field(default_factory=list)
    figures: dict = field(default_factory=dict)  # file name -> function(path)

    @property
    def markdown(self):
        return "\n\n".join(self.sections) + "\n"


def add_base2new(report, classified):
    by_shots = base2new_by_shots(classified.base2new)
    if not by_shots:
        return
    report.json["base2new"] = {str(s): table1_json(table1(by_shots[s])) for s in sorted(by_shots)}
    top = max(by_shots)
    report.sections.append(render_table1(table1(by_shots[top]), top))
    ablations = {str(s): [table4_json(t) for t in table4(by_shots[s])] for s in sorted(by_shots)}
    if any(ablations.values()):
        report.json["ablation"] = ablations
        report.sections += [render_table4(t, top) for t in table4(by_shots[top])]
    if len(by_shots) > 1:
        curves = fewshot_curves(by_shots)
        report.json["fewshot"] = {panel: [{**method_json(m), "shots": {str(s): {"base": b, "new": n}
                                                                        for s, (b, n) in per_shot.items()}}
                                          for m, per_shot in by_method.items()] for panel, by_method in curves.items()}
        report.sections.append(render_fewshot(curves))
        report.figures["figure2_fewshot.png"] = lambda path: plot_fewshot(curves, path)


def add_transfer(report, classified):
    settings = (("cross_dataset", classified.cross_dataset, "Table 2: cross-dataset generalisation", True),
                ("domain_generalization", classified.domain_generalization,
                 "Table 3: domain generalisation", False))
    for key, records, title, with_average in settings:
        tables = transfer_tables(records, classified.sources, with_average)
        if tables:
            report.json[key] = [transfer_json(t) for t in tables]
            report.sections += [render_transfer(t, title, with_average) for t in tables]


def add_bench(report, bench_paths):
    benches = [load_bench(path) for path in bench_paths]
    if benches:
        report.json["step_time"] = benches
        report.sections += [render_bench(b) for b in benches]
        report.figures["figure3_step_time.png"] = lambda path: plot_bench(benches[0], path)


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
    report = Report()
    add_base2new(report, classified)
    add_transfer(report, classified)
    add_bench(report, bench_paths)
    report.json["notes"] = classified.notes
    report.json["warnings"] = (
        mixed_weights_warnings([r for pair in classified.base2new for r in pair], "the base-to-new tables")
        + mixed_weights_warnings(classified.cross_dataset + classified.domain_generalization + classified.sources,
                                 "the transfer tables"))
    report.json["num_records"] = len(records)
    if not report.sections:
        report.sections.append(f"No table: {len(records)} record(s) found, none fits a table.")
    return report


def write_report(report, out_dir):
    """Write tables.md, tables.json and the figures into ``out_dir``; return the written paths."""
    paths = [osp.join(out_dir, "tables.md"), osp.join(out_dir, "tables.json")]
    write_text(report.markdown, paths[0])
    write_text(json.dumps(report.json, indent=2, default=str) + "\n", paths[1])
    for name, plot in report.figures.items():
        paths.append(osp.join(out_dir, name))
        plot(paths[-1])
    return paths


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("output_dir", help="folder holding the runs' results.json files")
    parser.add_argument("--out", default="", help="where tables.md, tables.json and figures go (default: output_dir)")
    parser.add_argument("--bench", default="", help="step-time results file for Figure 3 "
                                                    "(default: any step_time.json under output_dir)")
    args = parser.parse_args(argv)
    report = build_report(args.output_dir, args.bench or None)
    print(report.markdown, end="")
    for note in report.json["notes"]:
        print(f"note: {note}", file=sys.stderr)
    for warning in report.json["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    for path in write_report(report, args.out or args.output_dir):
        print(f"wrote {path}", file=sys.stderr)


def cli(argv=None):
    try:
        main(argv)
    except ResultsError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    cli()
