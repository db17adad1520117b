"""The report (``llu.report``, ``parse_results.py``) on synthetic results trees: numbers checked against
hand computations, classification of records, error messages, and the files written."""
import json
import math
import os
import subprocess
import sys

import pytest

from llu.report import build_report, main, write_report
from llu.report.records import classify, load_record, load_records
from llu.report.render import csv_text
from llu.results import ResultsError
from llu.utils import write_text

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def results_content(**fields):
    """A results.json's content as engine/trainer.py wrote it before schema_version (version 1), with
    ``fields`` overriding the defaults (``schema_version=2, ablation=...`` for the current version)."""
    record = {
        "dataset": "Shapes", "trainer": "LLU", "backbone": "toy", "seed": 1, "shots": 16,
        "subsample_classes": "base", "eval_split": "test", "accuracy": 50.0, "error": 50.0, "macro_f1": 50.0,
        "num_classes": 2, "per_class_accuracy": {"circle": 50.0, "square": 50.0},
        "config_files": {"dataset": "configs/datasets/shapes.yaml", "trainer": "configs/trainers/LLU/toy.yaml"},
        "elapsed_seconds": 1.0, "train_dataset": "Shapes", "train_subsample_classes": "base", "model_dir": "",
    }
    record.update(fields)
    return record


def write_result(root, relpath, **fields):
    """A results.json (see ``results_content``) in ``root/relpath``; returns its path."""
    folder = os.path.join(root, relpath)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "results.json")
    with open(path, "w") as f:
        json.dump(results_content(**fields), f)
    return path


def trainer_file(trainer, cfg):
    return {"dataset": "configs/datasets/x.yaml", "trainer": f"configs/trainers/{trainer}/{cfg}.yaml"}


def write_pair(root, dataset, trainer, seed, base, new, cfg="toy", shots=16, **extra):
    """The two records of one base-to-new run, laid out as scripts/base2new.sh does."""
    tail = f"{dataset}/shots_{shots}/{trainer}/{cfg}/seed{seed}"
    train_dir = os.path.join(root, "train_base", tail)
    common = dict(dataset=dataset, trainer=trainer, seed=seed, shots=shots, train_dataset=dataset,
                  config_files=trainer_file(trainer, cfg), **extra)
    write_result(root, f"train_base/{tail}", accuracy=base, subsample_classes="base",
                 train_subsample_classes="base", **common)
    write_result(root, f"test_new/{tail}", accuracy=new, subsample_classes="new", train_subsample_classes="base",
                 model_dir=train_dir, **common)


def pstdev(values):
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def harmonic(a, b):
    return 2 * a * b / (a + b)


def by_label(entries):
    return {e["label"]: e for e in entries}


def tables_of(report, kind, **meta):
    return [t for t in report.json["tables"] if t["kind"] == kind and all(t.get(k) == v for k, v in meta.items())]


def rows(report, kind, **meta):
    """{row label: row} of the one table of ``kind`` with ``meta``."""
    (table,) = tables_of(report, kind, **meta)
    return by_label(table["rows"])


# Accuracies of the synthetic base-to-new tree: {dataset: {trainer: [(base, new) per seed 1, 2, 3]}}.
BASE2NEW = {
    "Shapes": {"ZeroshotCLIP": [(60.0, 70.0)] * 3, "LLU": [(80.0, 70.0), (82.0, 70.0), (84.0, 76.0)],
               "CoOp": [(90.0, 50.0), (90.0, 54.0), (93.0, 52.0)]},
    "Patterns": {"ZeroshotCLIP": [(40.0, 30.0)] * 3, "LLU": [(50.0, 40.0), (52.0, 30.0), (54.0, 35.0)],
                 "CoOp": [(70.0, 20.0), (72.0, 24.0), (68.0, 22.0)]},
}


@pytest.fixture
def base2new_tree(tmp_path):
    root = tmp_path / "base2new"
    for dataset, by_trainer in BASE2NEW.items():
        for trainer, accs in by_trainer.items():
            for seed, (base, new) in enumerate(accs, start=1):
                write_pair(str(root), dataset, trainer, seed, base, new)
    return str(root)


def test_table1_per_dataset_matches_hand_computation(base2new_tree):
    report = build_report(base2new_tree)
    llu = rows(report, "table1", dataset="Shapes", shots=16)["LLU"]
    cells = llu["cells"]
    assert cells["base"]["mean"] == pytest.approx((80 + 82 + 84) / 3)
    assert cells["base"]["std"] == pytest.approx(math.sqrt(8 / 3))
    assert cells["new"]["mean"] == pytest.approx(72.0)
    assert cells["new"]["std"] == pytest.approx(math.sqrt(8))
    # H of the means (the paper's convention), its spread from the per-seed H.
    assert cells["h"]["mean"] == pytest.approx(2 * 82 * 72 / (82 + 72))
    assert cells["h"]["std"] == pytest.approx(pstdev([harmonic(80, 70), harmonic(82, 70), harmonic(84, 76)]))
    assert llu["seeds"] == [1, 2, 3]


def test_table1_average_is_over_dataset_means_with_h_of_averages(base2new_tree):
    report = build_report(base2new_tree)
    average = rows(report, "table1", dataset="Average", shots=16)["CoOp"]
    shapes_base, patterns_base = (90 + 90 + 93) / 3, (70 + 72 + 68) / 3
    shapes_new, patterns_new = (50 + 54 + 52) / 3, (20 + 24 + 22) / 3
    base, new = (shapes_base + patterns_base) / 2, (shapes_new + patterns_new) / 2
    assert average["cells"]["base"]["mean"] == pytest.approx(base)
    assert average["cells"]["new"]["mean"] == pytest.approx(new)
    assert average["cells"]["h"]["mean"] == pytest.approx(2 * base * new / (base + new))
    assert average["datasets"] == 2


def test_table1_rows_and_rendering(base2new_tree):
    report = build_report(base2new_tree)
    text = report.markdown
    assert "## Table 1" in text and "### Average over 2 datasets (16 shots)" in text
    # Method order as in the paper, zero-shot CLIP shown as "CLIP"; cells "mean ± std".
    shapes = text.split("### Shapes")[1]
    rows = [line.split("|")[1].strip() for line in shapes.splitlines() if line.startswith("| ") and "Base" not in line]
    assert rows[:3] == ["CLIP", "CoOp", "LLU"]
    assert f"{82:.2f} ± {math.sqrt(8 / 3):.2f}" in shapes


def test_a_method_missing_a_dataset_has_no_average(base2new_tree):
    write_pair(base2new_tree, "Shapes", "ProGrad", 1, 85.0, 60.0)
    report = build_report(base2new_tree)
    assert "ProGrad" in rows(report, "table1", dataset="Shapes", shots=16)
    assert "ProGrad" not in rows(report, "table1", dataset="Average", shots=16)


def test_unpaired_half_is_left_out_with_a_note(tmp_path):
    root = str(tmp_path)
    write_pair(root, "Shapes", "LLU", 1, 80.0, 70.0)
    lonely = write_result(root, "train_base/Shapes/shots_16/LLU/toy/seed2", seed=2, accuracy=99.0)
    report = build_report(root)
    llu = rows(report, "table1", dataset="Shapes", shots=16)["LLU"]
    assert llu["cells"]["base"]["mean"] == 80.0 and llu["seeds"] == [1]
    assert any(note.startswith(lonely) for note in report.json["notes"])


def test_zero_shot_new_half_without_model_dir_pairs(tmp_path):
    root = str(tmp_path)
    zs = dict(trainer="ZeroshotCLIP", config_files=trainer_file("ZeroshotCLIP", "toy"))
    write_result(root, "a", accuracy=60.0, **zs)
    write_result(root, "b", accuracy=70.0, subsample_classes="new", train_subsample_classes="new", **zs)
    # A trained method evaluated on new classes without loading a model is not a base-to-new half.
    write_result(root, "c", accuracy=90.0, subsample_classes="new", train_subsample_classes="new")
    classified = classify(load_records(root)[0])
    assert [(b.accuracy, n.accuracy) for b, n in classified.base2new] == [(60.0, 70.0)]


def test_ablation_variants_go_to_table4_not_table1(tmp_path):
    root = str(tmp_path)
    for seed, (base, new, reg) in enumerate([(80.0, 70.0, 1e-5), (82.0, 72.0, 3e-5)], start=1):
        write_pair(root, "Shapes", "LLU", seed, base, new, llu_regularizer=reg)
        write_pair(root, "Shapes", "LLU", seed, base - 1, new - 10, cfg="toy_no_mask", llu_regularizer=1e-3)
        write_pair(root, "Shapes", "LLU", seed, base - 20, new - 40, cfg="toy_linear")
        write_pair(root, "Shapes", "ZeroshotCLIP", seed, 60.0, 75.0)
    report = build_report(root)
    assert set(rows(report, "table1", dataset="Shapes", shots=16)) == {"CLIP", "LLU"}
    (table,) = tables_of(report, "table4", shots=16)
    columns = by_label(table["rows"])  # Table 4's columns (the paper's layout) are its rows here
    assert [c["label"] for c in table["rows"]] == ["CLIP", "Default", "no mask", "Linear"]
    assert columns["no mask"]["cfg"] == "toy_no_mask"
    assert columns["Default"]["cells"]["base"]["mean"] == pytest.approx(81.0)
    assert columns["no mask"]["cells"]["h"]["mean"] == pytest.approx(harmonic(80.0, 61.0))
    assert columns["Default"]["cells"]["regularizer"] == pytest.approx(2e-5)
    assert columns["Linear"]["cells"]["regularizer"] is None
    assert "## Table 4" in report.markdown and "| Regularization" in report.markdown


def write_transfer(root, trainer, seed, source_acc, targets, source="Shapes", shots=16):
    """A model trained on all of ``source`` and evaluated there and on ``targets`` ({name: (acc, classes)})."""
    tail = f"shots_{shots}/{trainer}/toy/seed{seed}"
    common = dict(trainer=trainer, seed=seed, shots=shots, subsample_classes="all", train_subsample_classes="all",
                  config_files=trainer_file(trainer, "toy"), train_dataset=source)
    write_result(root, f"{source}/train/{tail}", dataset=source, accuracy=source_acc,
                 per_class_accuracy={"circle": 1.0, "square": 1.0, "star": 1.0}, **common)
    for target, (acc, classes) in targets.items():
        write_result(root, f"{source}/test/{target}/{tail}", dataset=target, accuracy=acc,
                     per_class_accuracy={c: acc for c in classes}, model_dir="x", **common)


def test_transfer_records_split_into_cross_dataset_and_domain_generalisation(tmp_path):
    root = str(tmp_path)
    for seed, shift in ((1, 0.0), (2, 2.0)):
        write_transfer(root, "LLU", seed, 90.0 + shift, {
            "Patterns": (40.0 + shift, ["stripes", "dots"]),  # other classes: cross-dataset
            "Checkers": (30.0, ["checks"]),
            "OxfordPets": (50.0, ["circle"]),  # a dataset with classes of its own, whatever its names
            "ShapesSketch": (70.0 + shift, ["sketch of a circle"]),  # known variant: domain shift
            "ShapesBlurry": (60.0, ["circle", "star"]),  # unknown name, the source's classes: domain shift
        })
    report = build_report(root)
    (xd,) = tables_of(report, "cross_dataset")
    (dg,) = tables_of(report, "domain_generalization")
    assert xd["source"] == dg["source"] == "Shapes" and xd["shots"] == 16
    assert xd["targets"] == ["OxfordPets", "Patterns", "Checkers"]  # the known order first, then alphabetical
    assert dg["targets"] == ["ShapesSketch", "ShapesBlurry"]
    (row,) = xd["rows"]
    cells = row["cells"]
    assert cells["source"]["mean"] == pytest.approx(91.0) and cells["seeds"] == 2
    assert cells["Patterns"]["mean"] == pytest.approx(41.0)
    assert cells["Patterns"]["std"] == pytest.approx(1.0)
    assert cells["average"]["mean"] == pytest.approx((50.0 + 41.0 + 30.0) / 3)
    assert "average" not in dg["rows"][0]["cells"]  # Table 3 has no average, as in the paper
    assert "## Table 2" in report.markdown and "## Table 3" in report.markdown


def test_train_shots_field_is_preferred_for_transfer(tmp_path):
    root = str(tmp_path)
    write_result(root, "a", dataset="Patterns", train_dataset="Shapes", subsample_classes="all",
                 train_subsample_classes="all", shots=-1, train_shots=4, model_dir="x")
    (xd,) = tables_of(build_report(root), "cross_dataset")
    assert xd["shots"] == 4


def test_fewshot_figure_and_data_when_several_shot_counts(tmp_path):
    root = str(tmp_path / "tree")
    for shots, (base, new) in {1: (70.0, 68.0), 16: (84.0, 60.0)}.items():
        write_pair(root, "Shapes", "CoOp", 1, base, new, shots=shots)
        write_pair(root, "Shapes", "ZeroshotCLIP", 1, 65.0, 70.0, shots=shots)
    report = build_report(root)
    coop = rows(report, "fewshot", dataset="Shapes")["CoOp"]
    assert {shots: {half: cell[half]["mean"] for half in cell} for shots, cell in coop["cells"].items()} == \
        {"1": {"base": 70.0, "new": 68.0}, "16": {"base": 84.0, "new": 60.0}}
    assert "### Shapes (16 shots)" in report.markdown  # Table 1 at the largest shot count
    written = write_report(report, str(tmp_path / "out"))
    assert [os.path.basename(p) for p in written[-3:]] == ["figure2_fewshot.png", "figure2_fewshot.pdf",
                                                           "figure2_fewshot.txt"]
    with open(written[-3], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(written[-2], "rb") as f:
        assert f.read(5) == b"%PDF-"


def write_bench(path, device="cpu"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"device": device, "backbone": "toy",
                   "step_time_ms": {"LLU": {"1": 2.0, "2": 4.0}, "CoOp": {"1": 5.0, "2": 6.0}, "CoCoOp": {"1": 9.0}}},
                  f)


def test_bench_file_gives_figure3_with_ratios_to_llu(tmp_path):
    root = str(tmp_path)
    write_bench(os.path.join(root, "bench", "step_time.json"))
    report = build_report(root)
    assert "figure3_step_time.png" in report.figures
    text = report.markdown
    assert "Figure 3" in text and "5.00 (2.50x)" in text and "6.00 (1.50x)" in text and "9.00 (4.50x)" in text


def run_cli(*args, cwd=REPO):
    return subprocess.run([sys.executable, os.path.join(REPO, "parse_results.py"), *args], cwd=cwd,
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_cli_prints_tables_and_writes_outputs_atomically(base2new_tree, tmp_path):
    out = tmp_path / "tables"
    write_bench(os.path.join(base2new_tree, "step_time.json"))
    result = run_cli(base2new_tree, "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "## Table 1" in result.stdout and "| CLIP" in result.stdout
    assert sorted(os.listdir(out)) == ["figure3_step_time.pdf", "figure3_step_time.png", "figure3_step_time.txt",
                                       "tables.csv", "tables.json", "tables.md"]  # no temp files left
    with open(out / "tables.json") as f:
        tables = json.load(f)
    assert tables["num_records"] == 36 and tables["notes"] == []
    assert (out / "tables.md").read_text() == result.stdout


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    (json.dumps({"dataset": "Shapes"}), "missing field 'trainer'"),
    (json.dumps({"dataset": 3}), "field 'dataset' has the wrong type"),
    # Added with the skipping: not UTF-8, and wrong types deeper in an otherwise good record.
    ("{}".encode("utf-16"), "not UTF-8 text"),
    (json.dumps(results_content(dataset="x", seed="1")),
     "field 'seed' has the wrong type (str: '1'); expected an integer"),
    (json.dumps(results_content(dataset="x", llu_regularizer="small")), "field 'llu_regularizer' has the wrong type"),
    (json.dumps(results_content(dataset="x", provenance={"gpu": 3})), "field 'provenance.gpu' has the wrong type"),
    (json.dumps(results_content(dataset="x", schema_version=2)), "missing field 'ablation' (expected a string)"),
    (json.dumps(results_content(dataset="x", schema_version=99, ablation="")), "schema_version 99 is not one"),
])
def test_malformed_results_file_is_one_line_error_naming_it(base2new_tree, content, message):
    bad = os.path.join(base2new_tree, "broken", "results.json")
    os.makedirs(os.path.dirname(bad))
    with open(bad, "wb" if isinstance(content, bytes) else "w") as f:
        f.write(content)
    result = run_cli(base2new_tree)
    assert result.returncode == 2
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith("wrote ")]
    assert len(lines) == 1 and lines[0].startswith("error: ") and bad in lines[0] and message in lines[0]
    # The file is skipped; the others are tabulated as without it.
    assert "## Table 1" in result.stdout
    assert json.load(open(os.path.join(base2new_tree, "tables.json")))["num_records"] == 36


def test_out_of_range_accuracy_is_an_error(tmp_path):
    path = write_result(str(tmp_path), "a", accuracy=0.83 * 1000)
    with pytest.raises(ResultsError, match=f"{path}: field 'accuracy' must be a percentage"):
        load_record(path)
    assert build_report(str(tmp_path)).skipped == [f"{path}: field 'accuracy' must be a percentage in [0, 100], "
                                                   f"got 830.0"]


def test_two_files_of_the_same_run_are_an_error(tmp_path):
    first = write_result(str(tmp_path), "a")
    second = write_result(str(tmp_path), "b")
    with pytest.raises(ResultsError, match="hold results of the same run") as error:
        build_report(str(tmp_path))
    assert first in str(error.value) and second in str(error.value)


def test_empty_tree_is_an_error(tmp_path):
    result = run_cli(str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {tmp_path}: no results.json found under it (has any run finished?)"


def test_tables_get_the_usual_file_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        write_text("x", str(tmp_path / "tables.md"))
    finally:
        os.umask(old)
    assert (os.stat(tmp_path / "tables.md").st_mode & 0o777) == 0o644


def test_a_table_mixing_weights_of_one_backbone_is_warned_about(tmp_path, capsys):
    root = str(tmp_path / "tree")
    for seed, digest in ((1, "a" * 64), (2, "a" * 64), (3, "b" * 64)):
        write_pair(root, "Shapes", "LLU", seed, 80.0, 70.0, provenance={"backbone_sha256": digest})
    main([root])
    err = capsys.readouterr().err
    assert "warning: the base-to-new tables mix runs of backbone 'toy' with different weights" in err
    assert "aaaaaaaaaaaa... in 4 run(s)" in err and "bbbbbbbbbbbb... in 2 run(s)" in err
    tables = json.loads(open(os.path.join(root, "tables.json")).read())
    assert len(tables["warnings"]) == 1


def test_one_set_of_weights_gives_no_warning(base2new_tree, capsys):
    main([base2new_tree])
    assert "warning" not in capsys.readouterr().err


def test_latex_marks_the_best_of_each_column_in_bold_and_pastes_into_a_paper(base2new_tree):
    result = run_cli(base2new_tree, "--format", "latex")
    assert result.returncode == 0, result.stderr
    shapes = result.stdout.split("% Shapes (16 shots)")[1].split(r"\end{tabular}")[0]
    assert r"\begin{tabular}{lrrrr}" in shapes and r"\toprule" in shapes and r"\bottomrule" in shapes
    coop = next(line for line in shapes.splitlines() if line.startswith("CoOp"))
    llu = next(line for line in shapes.splitlines() if line.startswith("LLU"))
    assert r"\textbf{91.00 $\pm$ 1.41}" in coop  # CoOp's base is the best base
    assert r"\textbf{72.00 $\pm$ 2.83}" in llu and r"\textbf{76.68" in llu  # LLU's new and H
    assert r"\textbf{3}" not in llu  # counts are not ranked
    assert os.path.isfile(os.path.join(base2new_tree, "tables.tex"))


def test_csv_has_one_row_per_cell(base2new_tree):
    import csv
    result = run_cli(base2new_tree, "--format", "csv")
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(result.stdout.splitlines()))
    (llu_base,) = [r for r in rows if r["table"] == "table1" and r["dataset"] == "Shapes" and r["row"] == "LLU"
                   and r["column"] == "Base"]
    assert float(llu_base["mean"]) == pytest.approx(82.0) and llu_base["n"] == "3"
    assert open(os.path.join(base2new_tree, "tables.csv")).read() == result.stdout


def test_terminal_format_prints_plain_tables(base2new_tree):
    result = run_cli(base2new_tree, "--format", "terminal")
    assert result.returncode == 0 and "Table 1: base-to-new generalisation\n===" in result.stdout
    assert "|" not in result.stdout.split("Shapes (16 shots)")[1].splitlines()[1]


def test_runs_on_all_classes_get_a_method_by_dataset_table(tmp_path):
    root = str(tmp_path)
    for seed, (a, b) in enumerate([(60.0, 40.0), (62.0, 44.0)], start=1):
        for trainer, shift in (("ZeroshotCLIP", 0.0), ("LLU", 10.0)):
            common = dict(trainer=trainer, seed=seed, subsample_classes="all", train_subsample_classes="all",
                          config_files=trainer_file(trainer, "vit_b16"))
            write_result(root, f"a/{trainer}/{seed}", dataset="folder_a", train_dataset="folder_a",
                         accuracy=a + shift, **common)
            write_result(root, f"b/{trainer}/{seed}", dataset="folder_b", train_dataset="folder_b",
                         accuracy=b + shift, **common)
    report = build_report(root)
    llu = rows(report, "all_classes", shots=16)["LLU"]["cells"]
    assert llu["folder_a"]["mean"] == pytest.approx(71.0) and llu["folder_b"]["mean"] == pytest.approx(52.0)
    assert "## Accuracy on all classes" in report.markdown and "No table" not in report.markdown


def test_figure2_points_over_different_seed_counts_are_warned_about(tmp_path):
    root = str(tmp_path)
    for seed in (1, 2):
        write_pair(root, "Shapes", "CoOp", seed, 80.0, 60.0, shots=16)
    write_pair(root, "Shapes", "CoOp", 1, 70.0, 65.0, shots=1)
    report = build_report(root)
    assert any("different numbers of seeds (1 shot: 1, 16 shots: 2)" in w for w in report.warnings)


def test_a_tree_of_unusable_files_only_says_so_and_exits_2(tmp_path):
    bad = write_result(str(tmp_path), "a", accuracy="high")
    result = run_cli(str(tmp_path))
    assert result.returncode == 2 and result.stdout == "No table: 0 record(s) found, none fits a table.\n"
    (line,) = [line for line in result.stderr.splitlines() if not line.startswith("wrote ")]
    assert line.startswith(f"error: {bad}: field 'accuracy' has the wrong type")


def test_main_returns_the_exit_status(base2new_tree, tmp_path):
    assert main([base2new_tree, "--out", str(tmp_path / "a")]) == 0
    write_result(base2new_tree, "broken", seed=None)
    assert main([base2new_tree, "--out", str(tmp_path / "b")]) == 2
    assert main([str(tmp_path / "missing")]) == 2


def write_current_pair(root, cfg, seed, base, new, ablation=""):
    """A base-to-new pair of LLU records as train.py writes them now (schema_version 2)."""
    write_pair(root, "Shapes", "LLU", seed, base, new, cfg=cfg, schema_version=2, ablation=ablation)


def test_a_config_named_like_an_ablation_is_one_only_if_it_says_so(tmp_path):
    root = str(tmp_path)
    for seed in (1, 2):
        write_current_pair(root, "toy", seed, 80.0, 70.0)
        write_current_pair(root, "toy_fast", seed, 78.0, 69.0)  # named <c>_<suffix>, no ablation: a method
        write_current_pair(root, "toy_no_mask", seed, 79.0, 60.0, ablation="no_mask")
        write_current_pair(root, "toy_gamma_zero", seed, 77.0, 61.0, ablation="no_mask_v2")  # named by the key
        write_pair(root, "Shapes", "ZeroshotCLIP", seed, 60.0, 75.0, schema_version=2, ablation="")
    report = build_report(root)
    assert set(rows(report, "table1", dataset="Shapes", shots=16)) == {"CLIP", "LLU (toy)", "LLU (toy_fast)"}
    (table,) = tables_of(report, "table4", shots=16)
    assert table["default_cfg"] == "toy"
    assert [c["label"] for c in table["rows"]] == ["CLIP", "Default", "no mask", "no mask v2"]
    assert by_label(table["rows"])["no mask v2"]["cfg"] == "toy_gamma_zero"
    assert by_label(table["rows"])["no mask"]["cells"]["new"]["mean"] == pytest.approx(60.0)


def test_old_records_of_a_config_take_the_ablation_its_new_records_declare(tmp_path):
    root = str(tmp_path)
    write_current_pair(root, "toy", 1, 80.0, 70.0)
    write_current_pair(root, "toy_fast", 1, 78.0, 69.0)
    write_pair(root, "Shapes", "LLU", 2, 80.0, 70.0, cfg="toy_fast")  # written before schema_version
    report = build_report(root)
    assert rows(report, "table1", dataset="Shapes", shots=16)["LLU (toy_fast)"]["seeds"] == [1, 2]
    assert tables_of(report, "table4") == []


def test_a_declared_ablation_goes_beside_the_one_default_or_is_warned_about(tmp_path):
    root = str(tmp_path / "a")
    write_current_pair(root, "vit", 1, 80.0, 70.0)
    write_current_pair(root, "gamma_zero", 1, 79.0, 60.0, ablation="no_mask")  # not named after the default
    (table,) = tables_of(build_report(root), "table4")
    assert table["default_cfg"] == "vit" and [c["cfg"] for c in table["rows"]] == ["vit", "gamma_zero"]
    write_current_pair(root, "toy", 1, 80.0, 70.0)  # two defaults: which one is ambiguous
    report = build_report(root)
    assert tables_of(report, "table4") == [] and "LLU (gamma_zero)" not in rows(report, "table1", shots=16)
    assert any("config gamma_zero is ablation 'no_mask'" in w for w in report.warnings)


def test_the_report_imports_neither_torch_nor_matplotlib():
    code = ("import sys, llu.report, llu.results; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'matplotlib', 'numpy'}))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0 and result.stdout == "[]\n", result.stderr


def write_base_half(root, dataset, trainer, seed, accuracy, shots=16):
    """The base half of a base-to-new run that has no new half (a trainer whose model names no new classes)."""
    write_result(root, f"train_base/{dataset}/shots_{shots}/{trainer}/toy/seed{seed}", dataset=dataset,
                 train_dataset=dataset, trainer=trainer, seed=seed, shots=shots, accuracy=accuracy,
                 config_files=trainer_file(trainer, "toy"))


# The linear probe's base accuracies per seed 1, 2, 3 in the synthetic tree; it has no new halves.
LINEAR_PROBE = {"Shapes": [95.0, 96.0, 98.0], "Patterns": [75.0, 77.0, 76.0]}


@pytest.fixture
def base_only_tree(base2new_tree):
    for dataset, accuracies in LINEAR_PROBE.items():
        for seed, accuracy in enumerate(accuracies, start=1):
            write_base_half(base2new_tree, dataset, "LinearProbe", seed, accuracy)
    return base2new_tree


def test_a_method_without_any_new_half_gets_its_base_and_no_new_nor_h(base_only_tree):
    report = build_report(base_only_tree)
    probe = rows(report, "table1", dataset="Shapes", shots=16)["Linear probe"]
    assert probe["cells"]["base"]["mean"] == pytest.approx(sum(LINEAR_PROBE["Shapes"]) / 3)
    assert probe["cells"]["base"]["std"] == pytest.approx(pstdev(LINEAR_PROBE["Shapes"]))
    assert probe["cells"]["new"] is None and probe["cells"]["h"] is None  # null in JSON: nothing to compute H of
    assert probe["cells"]["seeds"] == 3 and probe["seeds"] == [1, 2, 3]  # its base runs
    assert report.json["notes"] == []  # by design, not a missing evaluation
    # The other rows are as without it.
    assert rows(report, "table1", dataset="Shapes", shots=16)["LLU"]["cells"]["h"]["mean"] == \
        pytest.approx(harmonic(82.0, 72.0))


def test_a_method_without_any_new_half_is_a_dash_in_every_format(base_only_tree):
    import csv
    report = build_report(base_only_tree)
    shapes = report.markdown.split("### Shapes (16 shots)")[1].split("###")[0]
    (line,) = [line for line in shapes.splitlines() if line.startswith("| Linear probe")]
    assert [cell.strip() for cell in line.split("|")[2:-1]] == [f"96.33 ± {pstdev(LINEAR_PROBE['Shapes']):.2f}",
                                                                "-", "-", "3"]
    latex = report.text("latex").split("% Shapes (16 shots)")[1].split(r"\end{tabular}")[0]
    (line,) = [line for line in latex.splitlines() if line.startswith("Linear probe")]
    assert line.endswith(r" & - & - & 3 \\") and r"\textbf{96.33" in line  # the best base is still bold
    table = [r for r in csv.DictReader(csv_text(report.tables).splitlines())
             if r["table"] == "table1" and r["dataset"] == "Shapes" and r["row"] == "Linear probe"]
    assert [(r["column"], r["mean"], r["text"]) for r in table[1:]] == [("New", "", "-"), ("H", "", "-"),
                                                                        ("seeds", "3", "3")]
    assert float(table[0]["mean"]) == pytest.approx(sum(LINEAR_PROBE["Shapes"]) / 3) and table[0]["n"] == "3"


def test_a_method_without_any_new_half_has_a_base_average_over_datasets(base_only_tree):
    report = build_report(base_only_tree)
    probe = rows(report, "table1", dataset="Average", shots=16)["Linear probe"]
    assert probe["cells"]["base"]["mean"] == pytest.approx((sum(LINEAR_PROBE["Shapes"]) / 3 + 76.0) / 2)
    assert probe["cells"]["new"] is None and probe["cells"]["h"] is None
    assert probe["datasets"] == 2
    # New and H of the average need every dataset's: with new halves in one dataset only, a dash.
    write_pair(base_only_tree, "Shapes", "KgCoOp", 1, 85.0, 60.0)
    write_base_half(base_only_tree, "Patterns", "KgCoOp", 1, 65.0)
    kgcoop = rows(build_report(base_only_tree), "table1", dataset="Average", shots=16)["KgCoOp"]
    assert kgcoop["cells"]["base"]["mean"] == pytest.approx(75.0)
    assert kgcoop["cells"]["new"] is None and kgcoop["cells"]["h"] is None


def test_a_method_missing_some_new_halves_is_still_left_out_with_a_note(base_only_tree):
    # Seed 2's new-class evaluation failed: a dash would hide that, so its base half is left out, noted.
    lonely = write_result(base_only_tree, "train_base/Shapes/shots_16/TipAdapter/toy/seed2", trainer="TipAdapter",
                          seed=2, accuracy=90.0, config_files=trainer_file("TipAdapter", "toy"))
    write_pair(base_only_tree, "Shapes", "TipAdapter", 1, 80.0, 60.0)
    report = build_report(base_only_tree)
    tip = rows(report, "table1", dataset="Shapes", shots=16)["Tip-Adapter"]
    assert tip["seeds"] == [1] and tip["cells"]["new"]["mean"] == 60.0
    assert report.json["notes"] == [f"{lonely}: base half without its new half; left out"]


def test_figure2_draws_only_the_base_curve_of_a_method_without_new_halves(tmp_path, monkeypatch):
    from llu.report import figures
    drawn = []  # (x, y, linestyle) of each line of the figure
    monkeypatch.setattr(figures, "save_figure", lambda fig, path, caption: drawn.extend(
        (tuple(line.get_xdata()), tuple(line.get_ydata()), line.get_linestyle()) for ax in fig.axes for line in ax.lines))
    root = str(tmp_path / "tree")
    for shots, base in {1: 70.0, 16: 90.0}.items():
        write_pair(root, "Shapes", "CoOp", 1, base - 5, 60.0, shots=shots)
        write_base_half(root, "Shapes", "LinearProbe", 1, base, shots=shots)
    report = build_report(root)
    probe = rows(report, "fewshot", dataset="Shapes")["Linear probe"]["cells"]
    assert {shots: (cell["base"]["mean"], cell["new"]) for shots, cell in probe.items()} == \
        {"1": (70.0, None), "16": (90.0, None)}
    figure_data = report.markdown.split("## Figure 2 (data)")[1]
    (line,) = [line for line in figure_data.splitlines() if line.startswith("| Linear probe")]
    assert [cell.strip() for cell in line.split("|")[2:-1]] == ["70.00 / -", "90.00 / -"]
    report.figures["figure2_fewshot.png"](str(tmp_path / "figure2_fewshot.png"))
    assert sorted(drawn) == sorted([((1, 16), (65.0, 85.0), "-"), ((1, 16), (60.0, 60.0), "--"),  # CoOp's curves
                                    ((1, 16), (70.0, 90.0), "-")])  # the linear probe's base curve
