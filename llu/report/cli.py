"""Results tree -> the paper's tables and figures.

    python parse_results.py output/base2new [--out DIR] [--bench bench/results/step_time.json]
    llu report output/base2new [...]

Reads every ``results.json`` under the folder (the one machine-readable record each run of
``train.py`` writes; logs are never parsed), checks their fields, and prints whichever tables the
records allow, like the paper's; Figure 3 comes from a ``step_time.json`` of
``bench/bench_step_time.py`` found under the folder or given by ``--bench``. It writes
``tables.md``, ``tables.json``, ``tables.csv`` (``tables.tex`` with ``--format latex``: table
environments with captions and labels, or bare tabulars with ``--bare-tabular``) and the figures (PNG at
300 dpi, PDF with TrueType fonts and a caption .txt, ``--figure-width`` one-column or two-column) into
``--out`` (default: the folder), each atomically; ``--format`` chooses what is printed (md, latex, csv,
terminal). Every table is one ``render.Table``.

A results.json that cannot be used (not UTF-8, not JSON, a field missing or of the wrong type) is
one line on stderr naming it; it is skipped, the other files are tabulated, and the exit status is 2.

The parts: ``records`` (reading the tree, classifying the records), ``tables`` (the tables),
``render`` (a table in each format), ``figures`` (matplotlib, imported only to draw). Torch-free.
"""
import argparse
import json
import os.path as osp
import sys
from collections import defaultdict
from dataclasses import dataclass, field

from llu.results import ResultsError
from llu.utils import UserError, write_text

from . import figures
from .multidataset import multidataset_row, multidataset_tables
from .records import classify, find_bench_files, load_bench, load_records
from .render import FORMATS, counted, csv_text, document
from .tables import (all_classes_tables, base2new_by_shots, fewshot_curves, fewshot_table, is_ablation, step_time_table,
                     table1, table4, transfer_tables, variant_base)


# Said when the results give no figure.
NO_FIGURE = ("no figure from these results: Figure 2 needs base-to-new runs at two or more shot counts "
             "(llu sweep fewshot), Figure 3 a step-time file (python bench/bench_step_time.py, then --bench FILE)")


@dataclass
class Report:
    """Every table and figure the tree allows: sections of tables (``sections``, for the printed
    document: the largest shot count), every table (``tables``, for JSON and CSV), figures, notes."""
    sections: list = field(default_factory=list)  # (heading, [Table])
    tables: list = field(default_factory=list)
    figures: dict = field(default_factory=dict)  # file name -> function(path, width) returning the written paths
    notes: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    num_records: int = 0
    skipped: list = field(default_factory=list)  # one line per results.json that could not be used

    def text(self, fmt="md", bare_tabular=False):
        if not self.sections:
            return f"No table: {self.num_records} record(s) found, none fits a table.\n"
        return document(self.sections, fmt, bare_tabular)

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
    by_shots = base2new_by_shots(classified.base2new, classified.base_only)
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
        warnings = uneven_seed_warnings(curves)
        report.warnings += warnings
        records = classified.base2new_records
        report.figures["figure2_fewshot.png"] = lambda path, width=figures.DEFAULT_WIDTH: figures.plot_fewshot(
            curves, records, path, width, warnings)


def uneven_seed_warnings(curves):
    warnings = []
    for panel, by_method in curves.items():
        for m, per_shot in by_method.items():
            seeds = {shots: cells["base"].n for shots, cells in per_shot.items() if cells["base"].n is not None}
            if len(set(seeds.values())) > 1:
                per_point = ", ".join(f"{counted(s, 'shot')}: {n}" for s, n in sorted(seeds.items()))
                warnings.append(f"Figure 2, {panel}, {m.trainer} ({m.cfg}): the points average different numbers "
                                f"of seeds ({per_point})")
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
        report.figures[name] = lambda path, width=figures.DEFAULT_WIDTH, bench=bench: figures.plot_bench(bench, path,
                                                                                                          width)


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


def ablation_warnings(classified):
    """One warning per declared ablation whose default config is not clear (``tables.variant_base``): it is
    in no table."""
    warnings = []
    for shots, by_dataset in sorted(base2new_by_shots(classified.base2new, classified.base_only).items()):
        methods = set().union(*(set(by_method) for by_method in by_dataset.values()))
        for m in sorted(methods, key=lambda m: (m.trainer, m.cfg, m.backbone)):
            if is_ablation(m, methods) and variant_base(m, methods) is None:
                warnings.append(f"Table 4, {shots} shots: {m.trainer} config {m.cfg} is ablation {m.ablation!r}, but "
                                f"of which config is unclear (name it <default config>_...); left out")
    return warnings


def build_report(root, bench=None):
    """Read ``root`` (and a step-time file) and build every table the records allow; results.json files
    that cannot be used are left out, each with one line in ``skipped``."""
    if not osp.isdir(root):
        raise ResultsError(f"{root}: no such folder")
    records, skipped = load_records(root)
    bench_paths = find_bench_files(root, bench)
    if not records and not bench_paths and not skipped:
        raise ResultsError(f"{root}: no results.json found under it (has any run finished?)")
    multidataset = [r for r in records if multidataset_row(r.path)]  # a table of their own
    classified = classify([r for r in records if not multidataset_row(r.path)])
    report = Report(notes=classified.notes, num_records=len(records), skipped=skipped)
    report.add("Many datasets, one model (LLU bank)", multidataset_tables(multidataset))
    add_base2new(report, classified)
    add_transfer(report, classified)
    add_bench(report, bench_paths)
    report.warnings += (
        mixed_weights_warnings(classified.base2new_records, "the base-to-new tables")
        + mixed_weights_warnings(classified.cross_dataset + classified.domain_generalization + classified.sources,
                                 "the transfer tables")
        + ablation_warnings(classified))
    return report


def write_report(report, out_dir, fmt="md", figure_width=figures.DEFAULT_WIDTH, bare_tabular=False):
    """Write tables.md, tables.json, tables.csv (and tables.tex for --format latex) and the figures
    (``figure_width`` inches wide) into ``out_dir``; return the written paths."""
    paths = [osp.join(out_dir, "tables.md"), osp.join(out_dir, "tables.json"), osp.join(out_dir, "tables.csv")]
    write_text(report.markdown, paths[0])
    write_text(json.dumps(report.json, indent=2, default=str) + "\n", paths[1])
    write_text(csv_text(report.tables), paths[2])
    if fmt == "latex":
        paths.append(osp.join(out_dir, "tables.tex"))
        write_text(report.text("latex", bare_tabular), paths[-1])
    for name, plot in report.figures.items():
        paths += plot(osp.join(out_dir, name), figure_width)
    return paths


def parser(prog=None):
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    parser.add_argument("output_dir", help="folder holding the runs' results.json files")
    parser.add_argument("--out", default="", help="where tables.* and figures go (default: output_dir)")
    parser.add_argument("--bench", default="", help="step-time results file for Figure 3 "
                                                    "(default: any step_time.json under output_dir)")
    parser.add_argument("--format", choices=FORMATS, default="md",
                        help="what is printed: md (GitHub Markdown, also tables.md), latex (booktabs, best in bold; "
                             "also tables.tex), csv (one row per cell, also tables.csv) or terminal")
    parser.add_argument("--bare-tabular", action="store_true",
                        help="latex: each table a bare tabular (default: a table environment with \\caption and "
                             "\\label{tab:...} to \\input and \\ref)")
    parser.add_argument("--figure-width", type=figure_width, default=figures.DEFAULT_WIDTH, metavar="WIDTH",
                        help="figures' width: one-column (3.3 in), two-column (6.9 in, the default) or inches")
    return parser


def figure_width(text):
    """--figure-width: a name in ``figures.WIDTHS`` or inches."""
    if text in figures.WIDTHS:
        return figures.WIDTHS[text]
    try:
        inches = float(text)
    except ValueError:
        inches = float("nan")
    if not 1.0 <= inches <= 20.0:
        raise argparse.ArgumentTypeError(f"expected {', '.join(figures.WIDTHS)} or a width in inches (1 to 20), "
                                         f"not {text!r}")
    return inches


def main(argv=None, prog=None):
    """The command line (``parse_results.py``, ``llu report``); returns the exit status: 0, or 2 after
    an error (one line) or when a results.json was skipped."""
    args = parser(prog).parse_args(argv)
    try:
        report = build_report(args.output_dir, args.bench or None)
        for problem in report.skipped:
            print(f"error: {problem} (file skipped)", file=sys.stderr)
        print(csv_text(report.tables) if args.format == "csv" else report.text(args.format, args.bare_tabular), end="")
        for note in report.notes:
            print(f"note: {note}", file=sys.stderr)
        for warning in report.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        for path in write_report(report, args.out or args.output_dir, args.format, args.figure_width,
                                 args.bare_tabular):
            print(f"wrote {path}", file=sys.stderr)
        if not report.figures and not report.skipped:  # (a skipped file is the first thing to fix)
            print(f"note: {NO_FIGURE}", file=sys.stderr)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 2 if report.skipped else 0
