"""A results table as one record, and one renderer per output format (the report's tables, Figure 3 of bench/).

A ``Table`` is rows of cells under keyed columns; a cell is a ``Stat`` (mean, optionally the
standard deviation and count over seeds), several named stats shown together ("base / new"), a
number or text, or None (shown as "-"). The same record gives Markdown, LaTeX, CSV, a terminal
table and JSON, so a new table, or a new format, is one place to change. Torch-free.
"""
import csv
import io
import math
import re
from collections import Counter
from dataclasses import dataclass, field

from tabulate import tabulate

FORMATS = ("md", "latex", "csv", "terminal")


def counted(number, noun):
    """'1 shot', '16 shots'."""
    return f"{number} {noun}{'' if number == 1 else 's'}"


@dataclass(frozen=True)
class Stat:
    mean: float
    std: float = None
    n: int = None
    suffix: str = ""  # shown after the number ("(2.50x)")

    def text(self, with_std=True):
        value = f"{self.mean:.2f}"
        if with_std and self.std is not None:
            value += f" ± {self.std:.2f}"
        return value + (f" {self.suffix}" if self.suffix else "")

    def json(self):
        return {"mean": self.mean, "std": self.std, "n": self.n}


@dataclass
class Row:
    label: str
    cells: dict  # column key -> Stat, {name: Stat}, number, text or None
    method: dict = None  # trainer, cfg, backbone of the row's method
    extra: dict = field(default_factory=dict)  # what JSON keeps beside the cells (seeds, ...)


@dataclass
class Table:
    kind: str  # what the table is ("table1", "table4", ...); JSON and CSV carry it
    title: str
    columns: list  # [(key, header)]
    rows: list
    meta: dict = field(default_factory=dict)  # dataset, shots, source, ...
    best: str = "max"  # "max" or "min": the best cell of each column is bold in LaTeX; None: none
    transpose: bool = False  # shown with rows and columns swapped (the paper's Table 4)

    def grid(self, cell_text):
        """(headers, rows of strings) as the table is shown."""
        headers = [""] + [header for _, header in self.columns]
        body = [[row.label] + [cell_text(row, key) for key, _ in self.columns] for row in self.rows]
        if not self.transpose:
            return headers, body
        return [""] + [row.label for row in self.rows], [list(column) for column in zip(*[headers[1:]] + [
            r[1:] for r in body])]

    def json(self):
        rows = []
        for row in self.rows:
            rows.append({"label": row.label, **(row.method or {}),
                         "cells": {key: cell_json(row.cells.get(key)) for key, _ in self.columns}, **row.extra})
        return {"kind": self.kind, "title": self.title, **self.meta, "columns": [key for key, _ in self.columns],
                "headers": [header for _, header in self.columns], "rows": rows}


def cell_json(cell):
    if isinstance(cell, Stat):
        return cell.json()
    if isinstance(cell, dict):
        return {name: cell_json(value) for name, value in cell.items()}
    return cell


def cell_value(cell):
    """The number a cell is ranked by (its mean), or None."""
    if isinstance(cell, Stat):
        return cell.mean
    if isinstance(cell, (int, float)) and not isinstance(cell, bool) and not math.isnan(cell):
        return cell
    return None


def cell_text(cell, with_std=True):
    if cell is None:
        return "-"
    if isinstance(cell, Stat):
        return cell.text(with_std)
    if isinstance(cell, dict):
        return " / ".join(cell_text(value, with_std=False) for value in cell.values())
    if isinstance(cell, float):
        return f"{cell:.3g}" if abs(cell) < 0.01 and cell != 0 else f"{cell:.2f}"
    return str(cell)


# ---------------------------------------------------------------------------------------------
# Renderers: one per format, each for any table

def markdown(table):
    headers, body = table.grid(lambda row, key: cell_text(row.cells.get(key)))
    align = ("left",) + ("right",) * (len(headers) - 1)
    return tabulate(body, headers, tablefmt="github", disable_numparse=True, colalign=align)


def terminal(table):
    headers, body = table.grid(lambda row, key: cell_text(row.cells.get(key)))
    return tabulate(body, headers, tablefmt="simple", disable_numparse=True)


LATEX_SPECIAL = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
                 "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}"}


def latex_escape(text):
    return "".join(LATEX_SPECIAL.get(c, c) for c in str(text))


def best_cells(table):
    """{(row index, column key)} of the best cell of each column, as the paper marks in bold."""
    best = set()
    if table.best not in ("max", "min"):
        return best
    for key, _ in table.columns:
        # Only statistics are ranked (not counts such as seeds, nor the regulariser's value).
        values = [(row.cells[key].mean, i) for i, row in enumerate(table.rows) if isinstance(row.cells.get(key), Stat)]
        if len(values) > 1:
            target = (max if table.best == "max" else min)(v for v, _ in values)
            best |= {(i, key) for v, i in values if v == target}
    return best


def latex_tabular(table):
    """A booktabs tabular that pastes into a paper: the best of each column in bold, "±" as $\\pm$."""
    bold = best_cells(table)
    index = {id(row): i for i, row in enumerate(table.rows)}

    def text(row, key):
        value = latex_escape(cell_text(row.cells.get(key))).replace("±", r"$\pm$")
        return rf"\textbf{{{value}}}" if (index[id(row)], key) in bold else value

    headers, body = table.grid(text)
    lines = [r"\begin{tabular}{l" + "r" * (len(headers) - 1) + "}", r"\toprule",
             " & ".join(latex_escape(h) if i else "" for i, h in enumerate(headers)) + r" \\", r"\midrule"]
    lines += [" & ".join([latex_escape(cells[0])] + cells[1:]) + r" \\" for cells in body]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return lines


def latex(table):
    """The bare tabular (``--bare-tabular``), under a comment naming the table."""
    return "\n".join([rf"% {latex_escape(table.title)}"] + latex_tabular(table))


def latex_label(table):
    """The table's \\label key from its kind and title: tab:table1-shapes-16-shots."""
    return "tab:" + re.sub(r"[^a-z0-9]+", "-", f"{table.kind} {table.title}".lower()).strip("-")


def latex_caption(table, heading):
    """What the table is (the section heading without its number in the paper), its title, and how to
    read its numbers."""
    what = re.sub(r"^(Table|Figure) \d+:?\s*", "", heading)
    text = table.title if what.startswith("(") or not what else f"{what[0].upper() + what[1:]}: {table.title}"
    caption = latex_escape(text) + "."
    if any(isinstance(cell, Stat) and cell.std is not None for row in table.rows for cell in row.cells.values()):
        caption += r" Mean $\pm$ standard deviation over seeds."
    if best_cells(table):
        caption += " The best in bold."
    return caption


def latex_table(table, heading, label):
    """A table environment to \\input: caption, \\label{tab:...} and the booktabs tabular, centred."""
    return "\n".join([rf"% {latex_escape(table.title)}", r"\begin{table}[htbp]", r"\centering",
                      rf"\caption{{{latex_caption(table, heading)}}}", rf"\label{{{label}}}"]
                     + latex_tabular(table) + [r"\end{table}"])


CSV_FIELDS = ("table", "title", "dataset", "shots", "row", "column", "mean", "std", "n", "text")


def csv_rows(table):
    """Long-format rows (one per cell) with the table's kind, title, dataset and shots; ``n`` is the
    number of seeds of a mean over seeds, 0 for any other cell (a count, an average over datasets, a
    step time, a dash), so that it is an integer in every row (pandas reads it as int64)."""
    for row in table.rows:
        for key, header in table.columns:
            cell = row.cells.get(key)
            parts = cell.items() if isinstance(cell, dict) else [("", cell)]
            for name, value in parts:
                stat = value if isinstance(value, Stat) else None
                yield {"table": table.kind, "title": table.title, "dataset": table.meta.get("dataset", ""),
                       "shots": table.meta.get("shots", ""), "row": row.label,
                       "column": f"{header} {name}".strip(), "mean": stat.mean if stat else cell_value(value),
                       "std": stat.std if stat else None, "n": stat.n if stat and stat.n is not None else 0,
                       "text": cell_text(value)}


def csv_text(tables):
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for table in tables:
        writer.writerows(csv_rows(table))
    return out.getvalue()


def document(sections, fmt, bare_tabular=False):
    """[(heading, [tables])] as one text in ``fmt`` (md, latex or terminal). LaTeX: each table a
    ``table`` environment with a caption and a \\label unique in the document (``bare_tabular``: the
    tabular alone)."""
    if fmt == "md":
        return "\n\n".join(f"## {heading}\n\n" + "\n\n".join(f"### {t.title}\n\n{markdown(t)}" for t in tables)
                           for heading, tables in sections) + "\n"
    if fmt == "latex":
        labels = Counter()

        def environment(table, heading):
            if bare_tabular:
                return latex(table)
            label = latex_label(table)
            labels[label] += 1
            return latex_table(table, heading, label if labels[label] == 1 else f"{label}-{labels[label]}")

        return "\n\n".join(f"% {heading}\n" + "\n\n".join(environment(t, heading) for t in tables)
                           for heading, tables in sections) + "\n"
    if fmt == "terminal":
        return "\n\n".join(f"{heading}\n{'=' * len(heading)}\n\n" + "\n\n".join(f"{t.title}\n{terminal(t)}" for t in tables)
                           for heading, tables in sections) + "\n"
    raise ValueError(f"unknown format {fmt!r}")
