"""The figures, sized for a paper: PNG at 300 dpi and PDF with TrueType (Type 42) fonts, one column
(3.3 in) or two columns (6.9 in) wide, the legend under the axes, error bars: std over seeds.

Figure 2 (``plot_fewshot``) draws the few-shot curves that ``tables.fewshot_curves`` computes, Figure 3
(``plot_bench``) a ``bench/bench_step_time.py`` results file; their data are also tables (``tables.json``).
Each figure is written with a caption file beside it (``figure2_fewshot.txt``): what is drawn, the
seeds, the device and torch that produced it, and any warning about the points. The title names the
backbone and the datasets; the device and torch are also in the PDF's and PNG's metadata.
matplotlib is imported only when a figure is drawn.
"""
import math
import os.path as osp
import textwrap
from dataclasses import dataclass

from llu.utils import atomic_path, write_text

from .render import counted
from .tables import display_name, method_labels, ordered, ordered_methods, trainer_order

# Paper colours (Figures 2 and 3).
COLOURS = {"ZeroshotCLIP": "tab:blue", "CoOp": "tab:green", "CoCoOp": "gold", "ProGrad": "tab:cyan",
           "CLIP_Adapter": "tab:purple", "LLU": "tab:red"}
# The other trainers' colours, given in the order of the figure's methods.
OTHER_COLOURS = ("tab:brown", "tab:pink", "tab:olive", "tab:gray", "black", "navy", "lime", "teal")
# Figure widths in inches (--figure-width): a column and the full text width of a two-column paper.
WIDTHS = {"one-column": 3.3, "two-column": 6.9}
DEFAULT_WIDTH = WIDTHS["two-column"]
# Sizes in points for a figure printed at its size; fonts embedded as TrueType (Type 3 is refused by
# many venues).
PAPER_STYLE = {"pdf.fonttype": 42, "ps.fonttype": 42, "font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8,
               "xtick.labelsize": 7, "ytick.labelsize": 7, "legend.fontsize": 7, "figure.titlesize": 8,
               "lines.markersize": 4, "lines.linewidth": 1.2}
PANEL_WIDTH = 2.2  # inches: the narrowest panel of Figure 2 before panels wrap to a new row
PANEL_HEIGHT = 2.4  # inches: the tallest panel


@dataclass
class Caption:
    """What a figure says beside its pixels: the title, the caption text, where it ran, warnings."""
    title: str
    text: str
    ran_on: str
    warnings: tuple = ()

    def metadata(self, fmt):
        if fmt == "pdf":  # no CreationDate: the same results give the same file
            return {"Title": self.title, "Subject": f"{self.text} Ran on {self.ran_on}.", "CreationDate": None}
        return {"Title": self.title, "Description": f"{self.text} Ran on {self.ran_on}."}

    def file_text(self):
        lines = [self.text, f"Ran on: {self.ran_on}."] + [f"Warning: {w}" for w in self.warnings]
        return "\n".join(lines) + "\n"


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


def joined(values, none=""):
    return ", ".join(sorted({v for v in values if v})) or none


def ran_on(devices, torch_versions):
    """'CPU (AVX2), torch 2.4.0' (several of each joined by commas): the devices and their kernels."""
    torch = joined(torch_versions)
    return joined(devices, "a device not recorded") + (f", torch {torch}" if torch else "")


def colours(trainers):
    """{trainer: colour}: the paper's, then one of ``OTHER_COLOURS`` each, in order."""
    others = iter(OTHER_COLOURS)
    return {t: COLOURS.get(t) or next(others, None) for t in trainers}


def wrapped(title, width):
    """The title broken into lines that fit ``width`` inches (at 8 pt, about 14 characters an inch)."""
    return textwrap.fill(title, int(width * 14))


def title_height(title, width):
    return 0.2 + 0.14 * wrapped(title, width).count("\n")


def log_milliseconds_axis(ax, times):
    """A log axis labelled in plain milliseconds: 1, 2, 5, 10, ... within two decades, 1, 10, 100 beyond."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator
    ax.set_yscale("log")
    decades = math.log10(max(times) / min(times)) if min(times) > 0 else math.inf
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0) if decades < 2 else (1.0,)))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))


def legend_columns(labels, width):
    """How many legend entries fit in a row of ``width`` inches (at 7 pt: the marker, the gap, the text)."""
    entry_width = 0.4 + 0.048 * max(len(label) for label in labels)
    return max(1, min(len(labels), int(width // entry_width)))


def legend_height(labels, width):
    """Inches the legend under the axes takes."""
    return 0.17 * math.ceil(len(labels) / legend_columns(labels, width))


def legend_below(fig, handles, labels, width):
    """The legend under the axes, as many entries a row as fit the width, so the data keep all of it."""
    fig.legend(handles, labels, loc="outside lower center", ncols=legend_columns(labels, width), frameon=False,
               handlelength=1.8, columnspacing=1.2)


def seed_counts(curves):
    """{panel: {method: {shots: (fewest, most) seeds}}}: a dataset's point averages one number of seeds;
    the average's point is over its datasets' points, which may average different numbers."""
    counts = {}
    datasets = [p for p in curves if p != "Average"]
    for panel, by_method in curves.items():
        counts[panel] = {}
        for m, per_shot in by_method.items():
            counts[panel][m] = {}
            for shots, cells in per_shot.items():
                seeds = [cells["base"].n] if panel != "Average" else [
                    curves[d][m][shots]["base"].n for d in datasets if shots in curves[d].get(m, {})]
                seeds = [n for n in seeds if n is not None]
                if seeds:
                    counts[panel][m][shots] = (min(seeds), max(seeds))
    return counts


def seeds_text(fewest, most):
    return str(fewest) if fewest == most else f"{fewest}–{most}"


def plot_fewshot(curves, records, path, width=DEFAULT_WIDTH, warnings=()):
    """Figure 2: accuracy against shots; solid circles base classes, dashed crosses new classes, one
    colour per method, error bars over seeds; the average over datasets first, then one panel each.
    A base-only method (no New) has its base curve only. The legend gives each method's seeds; where
    a method's points average different numbers, the points with fewer are marked "n=2"."""
    panels = list(curves)
    methods = ordered_methods({m for by_method in curves.values() for m in by_method})
    labels = method_labels(methods)
    counts = seed_counts(curves)
    seeds = {m: [c for panel in counts.values() for c in panel.get(m, {}).values()] for m in methods}
    full = {m: max((most for _, most in seeds[m]), default=None) for m in methods}
    for m in methods:
        if seeds[m]:
            fewest = min(f for f, _ in seeds[m])
            labels[m] += f" ({seeds_text(fewest, full[m])} seed{'' if full[m] == 1 else 's'})"
    backbones = joined(r.method.backbone for r in records)
    datasets = [p for p in panels if p != "Average"]
    where = datasets[0] if len(datasets) == 1 else counted(len(datasets), "dataset")
    title = f"Base and new accuracy by shots: {backbones} on {where}"
    uneven = any(f < full[m] for m in methods for f, _ in seeds[m])
    caption = Caption(
        title, f"Figure 2: accuracy on the base classes (solid, circles) and the new classes (dashed, crosses) "
               f"against shots per class, {backbones} backbone, {', '.join(datasets)}"
               f"{' and their average' if 'Average' in panels else ''}; each point the mean over seeds, error "
               f"bars the standard deviation over seeds; seeds per method in the legend"
               f"{' (a point over fewer seeds is marked n=<seeds>)' if uneven else ''}.",
        ran_on([r.device for r in records], [r.torch for r in records]), tuple(warnings))

    plt = pyplot()
    with plt.rc_context(PAPER_STYLE):
        cols = max(1, min(len(panels), int(width // PANEL_WIDTH), 3))
        rows = math.ceil(len(panels) / cols)
        panel_height = min(PANEL_HEIGHT, 0.8 * width / cols)
        legend = [labels[m] for m in methods] + ["base classes", "new classes"]
        height = rows * panel_height + 0.15 + title_height(title, width) + legend_height(legend, width)
        fig, axes = plt.subplots(rows, cols, figsize=(width, height), squeeze=False, layout="constrained")
        handles = {}
        colour_of = colours(dict.fromkeys(m.trainer for m in methods))
        for ax, panel in zip(axes.flat, panels):
            for m in ordered_methods(curves[panel]):
                shots = sorted(curves[panel][m])
                colour = colour_of[m.trainer]
                for half, style in (("base", "o-"), ("new", "x--")):
                    points = [s for s in shots if curves[panel][m][s][half] is not None]
                    if not points:
                        continue
                    stats = [curves[panel][m][s][half] for s in points]
                    errors = [s.std or 0.0 for s in stats]
                    line = ax.errorbar(points, [s.mean for s in stats], yerr=errors if any(errors) else None,
                                       fmt=style, color=colour, capsize=2)
                    if half == "base":
                        handles.setdefault(m, line)
                for s in shots:  # the points over fewer seeds than the method's others
                    fewest, most = counts[panel][m].get(s, (full[m], full[m]))
                    if full[m] is not None and fewest < full[m]:
                        ax.annotate(f"n={seeds_text(fewest, most)}", (s, curves[panel][m][s]["base"].mean),
                                    xytext=(3, 3), textcoords="offset points", fontsize=6, color=colour)
            log2_axis(ax, sorted({s for per_shot in curves[panel].values() for s in per_shot}), "shots per class")
            if len(panels) > 1:
                ax.set_title(f"Average over {len(datasets)} datasets" if panel == "Average" else panel)
            ax.set_ylabel("accuracy (%)")
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(panels):]:
            ax.axis("off")
        markers = [plt.Line2D([], [], color="k", marker="o"), plt.Line2D([], [], color="k", marker="x", linestyle="--")]
        legend_below(fig, [handles[m] for m in methods] + markers, legend, width)
        fig.suptitle(wrapped(title, width))
        return save_figure(fig, path, caption)


def plot_bench(bench, path, width=DEFAULT_WIDTH):
    """Figure 3: step time against batch size (error bars when the benchmark gives a spread);
    CoCoOp (one batch size) as a dot."""
    times, spread = bench["step_time_ms"], bench.get("step_time_std_ms", {})
    trainers = ordered(times, trainer_order())
    setting = f", {bench['num_classes']} classes, from {bench['inputs']}" if bench.get("num_classes") else ""
    title = f"One training step ({bench.get('backbone', '?')}{setting})"
    statistic = f"the {bench['statistic']} of up to {bench['repeats']} timed steps" if bench.get("repeats") else \
        "the time"
    caption = Caption(title, f"Figure 3: time of one training step (forward and backward) against batch size, "
                             f"{bench.get('backbone', '?')} backbone{setting}; each point {statistic}.",
                      ran_on([bench.get("device")], [bench.get("torch")]))

    plt = pyplot()
    with plt.rc_context(PAPER_STYLE):
        labels = [display_name(t) for t in trainers]
        height = min(PANEL_HEIGHT, 0.65 * width) + 0.15 + title_height(title, width) + legend_height(labels, width)
        fig, ax = plt.subplots(figsize=(width, height), layout="constrained")
        lines = []
        colour_of = colours(trainers)
        for t in trainers:
            sizes = sorted(int(b) for b in times[t])
            style = "o" if len(sizes) == 1 else ".-"
            colour = "tab:orange" if t == "CoCoOp" else colour_of[t]
            errors = [spread.get(t, {}).get(str(b), 0.0) for b in sizes]
            lines.append(ax.errorbar(sizes, [times[t][str(b)] for b in sizes], yerr=errors if any(errors) else None,
                                     fmt=style, color=colour, capsize=2))
        log2_axis(ax, sorted({int(b) for per_batch in times.values() for b in per_batch}), "batch size")
        log_milliseconds_axis(ax, [ms for per_batch in times.values() for ms in per_batch.values()])
        ax.set_ylabel("forward + backward (ms)")
        ax.grid(alpha=0.3)
        legend_below(fig, lines, labels, width)
        fig.suptitle(wrapped(title, width))
        return save_figure(fig, path, caption)


def save_figure(fig, path, caption):
    """Write ``path`` (.png, 300 dpi), the same figure as .pdf and its caption as .txt; returns the
    three paths."""
    stem = osp.splitext(path)[0]
    paths = [path, stem + ".pdf"]
    for target, fmt in zip(paths, ("png", "pdf")):
        with atomic_path(target) as tmp:
            fig.savefig(tmp, format=fmt, dpi=300, metadata=caption.metadata(fmt))
    pyplot().close(fig)
    write_text(caption.file_text(), stem + ".txt")
    return paths + [stem + ".txt"]
