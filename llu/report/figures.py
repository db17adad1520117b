"""The figures (PNG at 300 dpi and PDF, legends outside the axes, error bars: std over seeds).

Figure 2 (``plot_fewshot``) draws the few-shot curves that ``tables.fewshot_curves`` computes, Figure 3
(``plot_bench``) a ``bench/bench_step_time.py`` results file; their data are also tables (``tables.json``).
matplotlib is imported only when a figure is drawn.
"""
import math
import os.path as osp

from llu.utils import atomic_path

from .tables import display_name, method_labels, ordered, ordered_methods, trainer_order

# Paper colours (Figures 2 and 3).
COLOURS = {"ZeroshotCLIP": "tab:blue", "CoOp": "tab:green", "CoCoOp": "gold", "ProGrad": "tab:cyan",
           "CLIP_Adapter": "tab:purple", "LLU": "tab:red"}


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
    colour per method, error bars over seeds; the average over datasets first, then one panel each.
    A base-only method (no New) has its base curve only."""
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
                points = [s for s in shots if curves[panel][m][s][half] is not None]
                if not points:
                    continue
                stats = [curves[panel][m][s][half] for s in points]
                errors = [s.std or 0.0 for s in stats]
                line = ax.errorbar(points, [s.mean for s in stats], yerr=errors if any(errors) else None, fmt=style,
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
    for t in ordered(times, trainer_order()):
        sizes = sorted(int(b) for b in times[t])
        style = "o" if len(sizes) == 1 else ".-"
        colour = "tab:orange" if t == "CoCoOp" else COLOURS.get(t)
        errors = [spread.get(t, {}).get(str(b), 0.0) for b in sizes]
        ax.errorbar(sizes, [times[t][str(b)] for b in sizes], yerr=errors if any(errors) else None, fmt=style,
                    color=colour, capsize=2, label=display_name(t))
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
