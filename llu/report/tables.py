"""The tables: records -> ``render.Table`` objects (rendered to every format by ``render.py``).

Numbers: accuracies are averaged over seeds; "±" is the population standard deviation over seeds
(``np.std``, as CoOp's ``parse_test_res.py``). H is the harmonic mean of the mean Base and mean New
accuracy (as the paper's Table 1, also for the average over datasets); its "±" is the deviation of
the per-seed H. Averages over datasets use the per-dataset means and are given only for methods
that have every dataset of the table. Table 1 and Table 4 are printed for the largest shot count;
``tables.json`` holds every shot count.

A base-only method (``records``: no new half at a dataset and shots, such as the linear probe, whose
model names no new classes) has its Base, and no New nor H (None: "-" in the text formats, null in
JSON), as CoOp's base-to-new table shows the linear probe; its seeds are its base runs. Its average
over datasets has a Base where every dataset has it, and New and H only where every dataset has them.

Table 4 (ablations): a config whose records declare an ``ablation`` (``TRAINER.LLU.ABLATION: no_mask``
in ``configs/trainers/LLU/toy_no_mask.yaml``) is a column of Table 4 beside its default config, not a
row of Table 1; see ``variant_base``.
"""
import functools
import statistics
from collections import defaultdict

from .render import Row, Stat, Table, counted

# ---------------------------------------------------------------------------------------------
# Names and orders used in the tables



@functools.lru_cache(maxsize=None)
def _registered():
    """The trainer and dataset classes, whose attributes say each one's name and place in the tables
    (``display_name``, ``table_order``); imported when a table is built, not with the report."""
    import llu.datasets
    import llu.trainers
    return llu.trainers.load_all(), llu.datasets.load_all()


def _in_table_order(classes):
    placed = sorted((cls.table_order, name) for name, cls in classes.items() if cls.table_order is not None)
    return [name for _, name in placed]


def display_name(trainer):
    """A trainer's name in the tables (its class's ``display_name``, else its registered name)."""
    cls = _registered()[0].get(trainer)
    return (cls.display_name if cls is not None else "") or trainer


def trainer_order():
    return _in_table_order(_registered()[0])


def dataset_order():
    return _in_table_order(_registered()[1])
# Table 4's column names for the paper's ablations (TRAINER.LLU.ABLATION); others: the name itself.
ABLATION_LABELS = {"no_cluster": "no cluster", "no_damp": "no damp.", "no_mask": "no mask",
                   "dirac_mask": "Dirac mask", "no_reg": "no reg", "rand_init": "rand. init", "linear": "Linear"}


def ordered(names, order):
    """``names`` sorted by their place in ``order``, unknown names after, alphabetically."""
    rank = {name: i for i, name in enumerate(order)}
    return sorted(set(names), key=lambda name: (rank.get(name, len(order)), str(name)))


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
    """The default config (a Method of ``methods``) of which ``method`` is an ablation, or None when
    ``method`` is no ablation (or, declared one, has no default among ``methods``)."""
    if not is_ablation(method, methods):
        return None
    same = [m for m in methods if m.trainer == method.trainer and m.backbone == method.backbone and m != method]
    if method.ablation is None:
        # Records written before results.json had ``ablation`` (schema_version 1), and only those: the
        # old file-name rule, a config <c>_<suffix> beside a config <c> is an ablation of <c>.
        return max((m for m in same if method.cfg.startswith(m.cfg + "_")), key=lambda m: len(m.cfg))
    # A declared ablation: its default is the config it is named after (<c>_...), else the one
    # config beside it that is no ablation.
    defaults = [m for m in same if not is_ablation(m, methods)]
    named_after = [m for m in defaults if method.cfg.startswith(m.cfg + "_")]
    if named_after:
        return max(named_after, key=lambda m: len(m.cfg))
    return defaults[0] if len(defaults) == 1 else None


def is_ablation(method, methods):
    """Whether ``method`` is an ablation: declared by its records' ``ablation``, or for records without
    that field (schema_version 1) by the old rule (its config <c>_<suffix> beside a config <c>)."""
    if method.ablation is not None:
        return method.ablation != ""
    return any(m.trainer == method.trainer and m.backbone == method.backbone and m.cfg != method.cfg
               and method.cfg.startswith(m.cfg + "_") for m in methods)


def method_labels(methods):
    """Row labels: the trainer's display name, with config and backbone added only where needed."""
    labels = {}
    for m in methods:
        same_trainer = [o for o in methods if o.trainer == m.trainer]
        label = display_name(m.trainer)
        if len({o.cfg for o in same_trainer}) > 1:
            label += f" ({m.cfg})"
        if len({o.backbone for o in same_trainer}) > 1:
            label += f" [{m.backbone}]"
        labels[m] = label
    return labels


def ordered_methods(methods):
    order = trainer_order()
    rank = {name: i for i, name in enumerate(order)}
    return sorted(set(methods), key=lambda m: (rank.get(m.trainer, len(order)), m.trainer, m.cfg, m.backbone))


def ablation_name(variant, default):
    """``no_mask``: the declared ablation, or (schema_version 1) the config's suffix after the default's."""
    return variant.ablation or variant.cfg[len(default.cfg) + 1:]


def ablation_label(variant, default):
    name = ablation_name(variant, default)
    return ABLATION_LABELS.get(name, name.replace("_", " "))


def ablation_order(variants, default):
    """The paper's order of its ablations, then the others by config name."""
    order = list(ABLATION_LABELS)
    return sorted(variants, key=lambda m: (order.index(ablation_name(m, default)) if ablation_name(m, default)
                                           in order else len(order), m.cfg))


# ---------------------------------------------------------------------------------------------
# Building the tables: each a render.Table (rendered to every format by render.py)

def method_json(m, label):
    return {"trainer": m.trainer, "cfg": m.cfg, "backbone": m.backbone, "label": label}


def stat(values):
    """A Stat of a list of numbers: mean, population std (CoOp's np.std) and count."""
    return Stat(statistics.fmean(values), statistics.pstdev(values), len(values))


def base2new_cells(pairs):
    """Base, New and H of one method on one dataset from its (base, new) pairs over seeds; H is of
    the means, its spread that of the per-seed H. A base-only method's pairs are (base, None): no
    New, no H."""
    base = stat([b.accuracy for b, _ in pairs])
    regularizer = mean_or_none([b.regularizer for b, _ in pairs])
    if any(n is None for _, n in pairs):
        return {"base": base, "new": None, "h": None, "regularizer": regularizer}
    new = stat([n.accuracy for _, n in pairs])
    per_seed_h = [harmonic_mean(b.accuracy, n.accuracy) for b, n in pairs]
    h = Stat(harmonic_mean(base.mean, new.mean), statistics.pstdev(per_seed_h), len(pairs))
    return {"base": base, "new": new, "h": h, "regularizer": regularizer}


def average_cells(per_dataset):
    """The average over datasets of per-dataset cells (H from the averaged Base and New); New and H
    only where every dataset has a New."""
    base = statistics.fmean(c["base"].mean for c in per_dataset)
    regularizer = mean_or_none([c["regularizer"] for c in per_dataset])
    if any(c["new"] is None for c in per_dataset):
        return {"base": Stat(base), "new": None, "h": None, "regularizer": regularizer}
    new = statistics.fmean(c["new"].mean for c in per_dataset)
    return {"base": Stat(base), "new": Stat(new), "h": Stat(harmonic_mean(base, new)), "regularizer": regularizer}


def base2new_by_shots(pairs, base_only=()):
    """{shots: {dataset: {method: [(base, new) over seeds]}}}; a base-only record (``base_only``) is
    (base, None)."""
    grouped = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for base, new in list(pairs) + [(r, None) for r in base_only]:
        grouped[base.shots][base.dataset][base.method].append((base, new))
    return grouped


BASE2NEW_COLUMNS = [("base", "Base"), ("new", "New"), ("h", "H")]


def table1(by_dataset, shots):
    """Table 1 at one shot count: one table per dataset, and their average over datasets."""
    methods = set().union(*(set(by_method) for by_method in by_dataset.values()))
    main = [m for m in ordered_methods(methods) if not is_ablation(m, methods)]
    labels = method_labels(main)
    datasets = ordered(by_dataset, dataset_order())
    cells = {d: {m: base2new_cells(by_dataset[d][m]) for m in main if m in by_dataset[d]} for d in datasets}
    tables = []
    if len(datasets) > 1:
        rows = [Row(labels[m], average_cells([cells[d][m] for d in datasets]), method_json(m, labels[m]),
                    {"datasets": len(datasets)}) for m in main if all(m in cells[d] for d in datasets)]
        tables.append(Table("table1", f"Average over {len(datasets)} datasets ({counted(shots, 'shot')})",
                            BASE2NEW_COLUMNS + [("datasets", "datasets")],
                            [Row(r.label, {**r.cells, "datasets": r.extra["datasets"]}, r.method, r.extra) for r in rows],
                            {"dataset": "Average", "shots": shots}))
    for d in datasets:
        rows = [Row(labels[m], {**cells[d][m], "seeds": len(by_dataset[d][m])}, method_json(m, labels[m]),
                    {"seeds": sorted(b.seed for b, _ in by_dataset[d][m])}) for m in main if m in cells[d]]
        tables.append(Table("table1", f"{d} ({counted(shots, 'shot')})", BASE2NEW_COLUMNS + [("seeds", "seeds")], rows,
                            {"dataset": d, "shots": shots}))
    return tables


def ablation_columns(default, methods):
    """CLIP (zero-shot CLIP with the default's config, else the only one), the default, its variants."""
    zero_shot = [m for m in methods if m.trainer == "ZeroshotCLIP" and not is_ablation(m, methods)]
    same_cfg = [m for m in zero_shot if m.cfg == default.cfg and m.backbone == default.backbone]
    zero_shot = same_cfg or zero_shot
    variants = ablation_order([m for m in methods if variant_base(m, methods) == default], default)
    columns = [("CLIP", zero_shot[0])] if len(zero_shot) == 1 else []
    return columns + [("Default", default)] + [(ablation_label(m, default), m) for m in variants]


def table4(by_dataset, shots):
    """One Table 4 per (trainer, default config) that has ablation variants, averaged over datasets;
    shown as the paper does, the variants as columns."""
    methods = set().union(*(set(by_method) for by_method in by_dataset.values()))
    defaults = {variant_base(m, methods) for m in methods} - {None}
    tables = []
    for default in ordered_methods(defaults):
        datasets = ordered([d for d in by_dataset if default in by_dataset[d]], dataset_order())
        rows = []
        for label, m in ablation_columns(default, methods):
            pairs = [by_dataset[d].get(m) for d in datasets]
            cells = average_cells([base2new_cells(p) for p in pairs]) if all(pairs) else {}
            rows.append(Row(label, cells, method_json(m, label)))
        trainer = display_name(default.trainer)
        tables.append(Table("table4", f"{trainer}, config {default.cfg}; average over {len(datasets)} dataset(s), "
                            f"{counted(shots, 'shot')}", [("base", "Base"), ("new", "New"), ("h", "Mean (H)"),
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
        targets = ordered({t for per_target in by_method.values() for t in per_target}, dataset_order())
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
        tables.append(Table(kind, f"trained on {source}, {counted(shots, 'shot')}", columns + [("seeds", "seeds")], rows,
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
        datasets = ordered({d for per in by_method.values() for d in per}, dataset_order())
        labels = method_labels(list(by_method))
        rows = [Row(labels[m], {**{d: stat(by_method[m][d]) for d in datasets if d in by_method[m]},
                                "seeds": max(len(v) for v in by_method[m].values())}, method_json(m, labels[m]))
                for m in ordered_methods(by_method)]
        tables.append(Table("all_classes", counted(shots, "shot") if shots > 0 else "all training images",
                            [(d, d) for d in datasets] + [("seeds", "seeds")], rows, {"shots": shots}))
    return tables


def fewshot_curves(by_shots):
    """Figure 2's data: {panel ("Average" or a dataset): {method: {shots: {"base": Stat, "new": Stat}}}};
    "new" is None for a base-only method."""
    curves = defaultdict(lambda: defaultdict(dict))
    methods = {(m.trainer, m.cfg, m.backbone): m for by_dataset in by_shots.values() for by_method in
               by_dataset.values() for m in by_method}
    for shots in sorted(by_shots):
        for t in table1(by_shots[shots], shots):
            for row in t.rows:
                m = methods[row.method["trainer"], row.method["cfg"], row.method["backbone"]]
                curves[t.meta["dataset"]][m][shots] = {"base": row.cells["base"], "new": row.cells["new"]}
    return curves


def fewshot_table(curves, panel):
    shots = sorted({s for per_shot in curves[panel].values() for s in per_shot})
    labels = method_labels(list(curves[panel]))
    rows = [Row(labels[m], {str(s): curves[panel][m].get(s) for s in shots}, method_json(m, labels[m]))
            for m in ordered_methods(curves[panel])]
    return Table("fewshot", f"{panel}: Base / New accuracy by shots",
                 [(str(s), counted(s, "shot")) for s in shots], rows, {"dataset": panel}, best=None)


def step_time_table(bench):
    """Figure 3's data: ms per training step by batch size, with the ratio to LLU's."""
    times = bench["step_time_ms"]
    trainers = ordered(times, trainer_order())
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
                 [(t, display_name(t)) for t in trainers], rows, {"path": bench.get("path")}, best=None)

