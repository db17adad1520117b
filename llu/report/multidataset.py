"""The multi-dataset table (``llu sweep multidataset``, llu/protocols.py): one row per way of fitting
two datasets (zero-shot, each alone, union, sequential, the LLU bank), one column per evaluated set.

Its records are the evaluations under ``multidataset/test/<set>/shots_<K>/<row>/seed<S>`` (the row is
the folder the protocol names; training runs' own evaluations under ``multidataset/train`` are not
shown). They are kept out of the other tables: several rows evaluate one trainer on one dataset.
"""
import os
from collections import defaultdict

from .render import Row, Table
from .tables import dataset_order, stat

TREE = "multidataset"
SPECIAL_ROWS = {"zeroshot": "Zero-shot CLIP", "llu_union": "LLU on the union", "bank_nearest": "LLU bank (nearest)",
                "bank_blend": "LLU bank (blend)"}


def multidataset_row(path):
    """(``train`` or ``test``, the row) of a results.json in the protocol's tree, or None."""
    parts = os.path.normpath(path).split(os.sep)
    if len(parts) < 5 or parts[-1] != "results.json" or not parts[-2].startswith("seed"):
        return None
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == TREE and i + 1 < len(parts) and parts[i + 1] in ("train", "test"):
            return parts[i + 1], parts[-3]
    return None


def row_label(row):
    if row in SPECIAL_ROWS:
        return SPECIAL_ROWS[row]
    trainer, _, rest = row.partition("_")
    trainer = {"llu": "LLU", "coop": "CoOp"}.get(trainer, trainer)
    if "_then_" in rest:
        first, second = rest.split("_then_")
        return f"{trainer}, {first} then {second}"
    return f"{trainer}, {rest} alone"


def row_order(row):
    groups = ("zeroshot", "llu_", "llu_union", "llu_then", "coop_", "coop_then", "bank_nearest", "bank_blend")
    group = ("llu_union" if row == "llu_union" else row.split("_")[0] + "_then" if "_then_" in row
             else row if row in groups else row.split("_")[0] + "_")
    datasets = [name.lower() for name in dataset_order()]  # "llu_shapes": Shapes' place in the tables
    first = row.split("_")[1].replace("_", "") if "_" in row else ""
    return (groups.index(group) if group in groups else len(groups),
            datasets.index(first) if first in datasets else len(datasets), row)


def column(record):
    return f"{record.dataset} {record.subsample}" if record.subsample != "all" else record.dataset


def column_order(key):
    dataset, _, classes = key.partition(" ")
    rank = dataset_order()
    return (not classes, rank.index(dataset) if dataset in rank else len(rank), dataset,  # members, then targets
            {"base": 0, "new": 1}.get(classes, 2))


def multidataset_tables(records):
    """One table per shot count: rows x evaluated sets, mean ± std over seeds."""
    grouped = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for record in records:
        where = multidataset_row(record.path)
        if where and where[0] == "test":
            grouped[record.shots][where[1]][column(record)].append(record.accuracy)
    tables = []
    for shots, by_row in sorted(grouped.items()):
        columns = sorted({c for cells in by_row.values() for c in cells}, key=column_order)
        rows = [Row(row_label(row), {**{c: stat(by_row[row][c]) for c in columns if c in by_row[row]},
                                     "seeds": max(len(v) for v in by_row[row].values())}, {"row": row})
                for row in sorted(by_row, key=row_order)]
        tables.append(Table("multidataset", f"{shots} shots", [(c, c) for c in columns] + [("seeds", "seeds")],
                            rows, {"shots": shots}))
    return tables
