"""The report's outputs as a paper takes them: figures (TrueType fonts, one- and two-column widths, the
legend under the data, each point's seed count, a caption file, the device in the metadata), LaTeX to
\\input (a table environment with caption and label, compiled with pdflatex when it is installed) and
the CSV's integer counts."""
import csv
import io
import os
import re
import shutil
import subprocess

import pytest

from llu.report import build_report, main, write_report
from llu.report.render import csv_text
from test_parse_results import (base2new_tree, base_only_tree, run_cli, write_base_half, write_bench,  # noqa: F401
                                write_pair, write_transfer)

PROVENANCE = {"cpu_capability": "AVX2", "torch": "2.4.0"}


def fewshot_tree(root):
    """CLIP and CoOp on Shapes at 1 and 16 shots, seeds 1 and 2, except CoOp at 1 shot: seed 1 only."""
    for shots in (1, 16):
        for seed in (1, 2):
            write_pair(root, "Shapes", "ZeroshotCLIP", seed, 60.0, 70.0, shots=shots, provenance=PROVENANCE)
            if shots == 16 or seed == 1:
                write_pair(root, "Shapes", "CoOp", seed, 70.0 + shots, 60.0, shots=shots, provenance=PROVENANCE)
    return root


def drawn_figure(monkeypatch, report, name, width):
    """The matplotlib figure and caption that ``report`` draws as ``name`` (nothing written)."""
    from llu.report import figures
    drawn = {}
    monkeypatch.setattr(figures, "save_figure", lambda fig, path, caption: drawn.update(fig=fig, caption=caption))
    report.figures[name]("unused.png", width)
    return drawn["fig"], drawn["caption"]


@pytest.mark.parametrize("width, inches", [("one-column", 3.3), ("two-column", 6.9), ("5", 5.0)])
def test_every_pdf_has_truetype_fonts_and_the_width_asked_for(tmp_path, width, inches):
    root = fewshot_tree(str(tmp_path / "tree"))
    write_bench(os.path.join(root, "step_time.json"))
    out = tmp_path / "out"
    assert main([root, "--out", str(out), "--figure-width", width]) == 0
    pdfs = sorted(p for p in os.listdir(out) if p.endswith(".pdf"))
    assert pdfs == ["figure2_fewshot.pdf", "figure3_step_time.pdf"]
    for name in pdfs:
        data = (out / name).read_bytes()
        assert b"/Type3" not in data and b"/FontFile2" in data, name  # embedded TrueType, no Type 3
        (box,) = re.findall(rb"/MediaBox \[ 0 0 ([\d.]+) [\d.]+ \]", data)
        assert float(box) == pytest.approx(inches * 72, abs=0.01), name
        if shutil.which("pdffonts"):
            fonts = subprocess.run(["pdffonts", str(out / name)], capture_output=True, text=True, check=True).stdout
            assert "Type 3" not in fonts and "TrueType" in fonts, fonts


@pytest.mark.parametrize("name", ["figure2_fewshot.png", "figure3_step_time.png"])
@pytest.mark.parametrize("width", [3.3, 6.9])
def test_the_legend_is_under_the_axes_which_keep_the_width(tmp_path, monkeypatch, name, width):
    root = fewshot_tree(str(tmp_path))
    write_bench(os.path.join(root, "step_time.json"))
    fig, _ = drawn_figure(monkeypatch, build_report(root), name, width)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    (legend,), (ax,) = fig.legends, fig.axes
    axes_box, legend_box = ax.get_tightbbox(renderer), legend.get_window_extent(renderer)
    assert legend_box.y1 <= axes_box.y0  # under the axes and their labels
    assert ax.get_window_extent(renderer).width >= 0.75 * fig.bbox.width


def test_figure2_marks_the_points_over_fewer_seeds(tmp_path, monkeypatch):
    report = build_report(fewshot_tree(str(tmp_path)))
    fig, caption = drawn_figure(monkeypatch, report, "figure2_fewshot.png", 6.9)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["CLIP (2 seeds)", "CoOp (1–2 seeds)",
                                                                  "base classes", "new classes"]
    (ax,) = fig.axes
    (mark,) = ax.texts  # CoOp's 1-shot point, at its base accuracy
    assert mark.get_text() == "n=1" and mark.xy == (1, 71.0)
    assert caption.warnings == ("Figure 2, Shapes, CoOp (toy): the points average different numbers of seeds "
                                "(1 shot: 1, 16 shots: 2)",)


def test_figures_name_backbone_and_dataset_and_keep_the_device_in_metadata_and_caption(tmp_path):
    from PIL import Image
    root = fewshot_tree(str(tmp_path / "tree"))
    out = tmp_path / "out"
    write_report(build_report(root), str(out))
    pdf = (out / "figure2_fewshot.pdf").read_bytes()
    assert b"/Title (Base and new accuracy by shots: toy on Shapes)" in pdf
    assert re.search(rb"/Subject \(Figure 2: .*Ran on CPU \\\(AVX2\\\), torch 2\.4\.0\.\)", pdf)
    assert b"CreationDate" not in pdf  # the same results give the same file
    assert "Ran on CPU (AVX2), torch 2.4.0." in Image.open(out / "figure2_fewshot.png").text["Description"]
    caption = (out / "figure2_fewshot.txt").read_text().splitlines()
    assert caption[0].startswith("Figure 2: accuracy on the base classes") and "toy backbone, Shapes" in caption[0]
    assert caption[1:] == ["Ran on: CPU (AVX2), torch 2.4.0.",
                           "Warning: Figure 2, Shapes, CoOp (toy): the points average different numbers of seeds "
                           "(1 shot: 1, 16 shots: 2)"]


def test_figure3_says_1_thread_and_keeps_the_device_out_of_its_title(tmp_path, monkeypatch):
    write_bench(os.path.join(tmp_path, "step_time.json"), device="cpu (1 threads)")  # as older files say
    report = build_report(str(tmp_path))
    assert "(toy on cpu (1 thread))" in report.markdown
    fig, caption = drawn_figure(monkeypatch, report, "figure3_step_time.png", 3.3)
    assert fig._suptitle.get_text() == "One training step (toy)" and caption.ran_on == "cpu (1 thread)"


def test_tables_of_one_shot_say_1_shot(tmp_path):
    write_pair(str(tmp_path), "Shapes", "CoOp", 1, 80.0, 60.0, shots=1)
    assert "### Shapes (1 shot)" in build_report(str(tmp_path)).markdown


def test_a_bad_figure_width_is_refused(base2new_tree):
    result = run_cli(base2new_tree, "--figure-width", "wide")
    assert result.returncode == 2
    assert "--figure-width: expected one-column, two-column or a width in inches (1 to 20), not 'wide'" in result.stderr


def test_a_tree_without_figures_says_where_figures_come_from(base2new_tree, capsys):
    assert main([base2new_tree]) == 0
    assert "note: no figure from these results: Figure 2 needs base-to-new runs at two or more shot counts " \
           "(llu sweep fewshot)" in capsys.readouterr().err


def latex_tree(root):
    """Every kind of table: Table 1 at two shot counts (so Figure 2's data), Table 4, Tables 2 and 3,
    Figure 3's data, a base-only method."""
    for shots in (4, 16):
        for seed in (1, 2):
            write_pair(root, "Shapes", "LLU", seed, 80.0 + seed, 70.0, shots=shots)
            write_pair(root, "Shapes", "LLU", seed, 70.0, 60.0 + seed, cfg="toy_no_mask", shots=shots)
            write_pair(root, "Patterns", "LLU", seed, 50.0, 40.0 + seed, shots=shots)
            write_base_half(root, "Shapes", "LinearProbe", seed, 90.0, shots=shots)
    write_transfer(root, "LLU", 1, 90.0, {"Patterns": (40.0, ["stripes"]), "ShapesSketch": (70.0, ["circle"])})
    write_bench(os.path.join(root, "step_time.json"))
    return root


def test_latex_tables_are_environments_with_captions_and_unique_labels(tmp_path, capsys):
    root = latex_tree(str(tmp_path))
    assert main([root, "--format", "latex"]) == 0
    text = capsys.readouterr().out
    tables = text.count(r"\begin{table}[htbp]")
    assert tables == text.count(r"\end{table}") == text.count(r"\begin{tabular}") == text.count(r"\caption{") > 5
    labels = re.findall(r"\\label\{(tab:[a-z0-9-]+)\}", text)
    assert len(labels) == tables and len(set(labels)) == tables
    shapes = text.split("% Shapes (16 shots)\n")[1].split(r"\end{table}")[0]
    assert shapes.startswith("\\begin{table}[htbp]\n\\centering\n\\caption{Base-to-new generalisation: Shapes "
                             "(16 shots). Mean $\\pm$ standard deviation over seeds. The best in bold.}\n"
                             "\\label{tab:table1-shapes-16-shots}\n\\begin{tabular}{lrrrr}\n\\toprule")
    assert (tmp_path / "tables.tex").read_text() == text


def test_bare_tabular_gives_the_tabulars_alone(tmp_path):
    report = build_report(latex_tree(str(tmp_path)))
    bare, wrapped = report.text("latex", bare_tabular=True), report.text("latex")
    assert r"\begin{table}" not in bare and r"\caption" not in bare and r"\label" not in bare
    unwrapped = re.sub(r"\\begin\{table\}\[htbp\]\n\\centering\n\\caption\{.*\}\n\\label\{.*\}\n|\n\\end\{table\}", "",
                       wrapped)
    assert bare == unwrapped


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex is not installed")
def test_the_latex_compiles_in_a_document_with_its_references_resolved(tmp_path):
    text = build_report(latex_tree(str(tmp_path / "tree"))).text("latex")  # as tables.tex holds it
    (tmp_path / "tables.tex").write_text(text)
    labels = re.findall(r"\\label\{(tab:[a-z0-9-]+)\}", text)
    assert len(labels) > 5
    (tmp_path / "paper.tex").write_text(
        "\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n"
        + "".join(f"Table~\\ref{{{label}}}.\n" for label in labels) + "\\input{tables.tex}\n\\end{document}\n")
    for _ in range(2):  # the second pass resolves the references
        result = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "paper.tex"],
                                cwd=tmp_path, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout[-2000:]
    log = (tmp_path / "paper.log").read_text(errors="replace")
    assert "undefined" not in log
    aux = (tmp_path / "paper.aux").read_text()
    assert all(f"\\newlabel{{{label}}}" in aux for label in labels)


def test_csv_counts_are_integers_in_every_row(base_only_tree):
    rows = list(csv.DictReader(csv_text(build_report(base_only_tree).tables).splitlines()))
    assert all(re.fullmatch(r"\d+", row["n"]) for row in rows)
    shapes_probe = {row["column"]: row["n"] for row in rows
                    if row["table"] == "table1" and row["dataset"] == "Shapes" and row["row"] == "Linear probe"}
    assert shapes_probe == {"Base": "3", "New": "0", "H": "0", "seeds": "0"}  # 0: not a mean over seeds
    average_llu = {row["column"]: row["n"] for row in rows if row["dataset"] == "Average" and row["row"] == "LLU"}
    assert average_llu == {"Base": "0", "New": "0", "H": "0", "datasets": "0"}


def test_pandas_reads_the_counts_as_integers(base_only_tree):
    pandas = pytest.importorskip("pandas")
    assert str(pandas.read_csv(io.StringIO(csv_text(build_report(base_only_tree).tables)))["n"].dtype) == "int64"
