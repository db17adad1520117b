"""bench/bench_step_time.py end to end on a tiny random CLIP and a generated image folder (no timing
limits: only what it measured and wrote)."""
import json
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "bench"))

import bench_step_time  # noqa: E402
from llu.report.records import load_bench  # noqa: E402
from llu.report.render import markdown  # noqa: E402
from llu.report.tables import step_time_table  # noqa: E402


@pytest.mark.parametrize("inputs", ["images", "features"])
def test_bench_times_each_trainer_and_writes_what_parse_results_reads(tmp_path, image_folder, tiny_clip_file,
                                                                      monkeypatch, inputs):
    monkeypatch.setenv("LLU_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "results" / "step_time.json"
    bench_step_time.main([
        "--backbone", tiny_clip_file, "--cfg", "vit_b16", "--dataset", "imagefolder",
        "--root", os.path.dirname(image_folder),
        "--trainers", "LLU", "CoOp", "CLIP_Adapter", "CoCoOp", "NoSuchTrainer", "--batch-sizes", "1", "2",
        "--repeats", "1", "--warmup", "0", "--inputs", inputs, "--out", str(out),
        # the tiny CLIP reads 16 tokens: a short context; workers off for a single-threaded test
        "TRAINER.COOP.N_CTX", "4", "TRAINER.COOP.CTX_INIT", "", "DATALOADER.NUM_WORKERS", "0"])
    result = json.loads(out.read_text())
    times = result["step_time_ms"]
    assert set(times) == {"LLU", "CoOp", "CLIP_Adapter", "CoCoOp"}
    assert set(times["LLU"]) == set(times["CoOp"]) == set(times["CLIP_Adapter"]) == {"1", "2"}
    assert set(times["CoCoOp"]) == {"1"}  # batch size 1 only, as in the paper
    assert all(ms > 0 for per_batch in times.values() for ms in per_batch.values())
    assert result["skipped"] == {"NoSuchTrainer": "not registered in llu/trainers/"}
    assert result["num_classes"] == 4 and result["inputs"] == inputs
    assert load_bench(str(out))["step_time_ms"] == times
    floors = result["floor_ms"]  # the bare products and update of the two feature adapters, on features only
    assert floors == {} if inputs == "images" else (
        set(floors) == {"LLU", "CLIP_Adapter"} and all(floors[name]["2"] > 0 for name in floors))
    assert "(1.00x)" in markdown(step_time_table(result))  # LLU is the reference of the ratios


def test_extraction_bench_times_the_cache_against_the_encoder_and_checks_the_bits(tmp_path, tiny_clip_file,
                                                                                  monkeypatch):
    import bench_extraction
    monkeypatch.setenv("LLU_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "extraction.json"
    result = bench_extraction.main(["--backbone", tiny_clip_file, "--images", "20", "--size", "40", "30",
                                    "--repeats", "2", "--out", str(out)])
    written = json.loads(out.read_text())
    assert written["images"] == 20 and written["features_identical_to_encoder_forward"]
    assert set(written["seconds"]) == {"encoder_forward", "extraction", "extraction_in_process"}
    assert all(len(times) == 2 and min(times) > 0 for times in written["seconds"].values())
    assert written["ratio_to_encoder_forward"]["encoder_forward"] == 1.0
    assert written["target"]["value"] == result["target"]["value"]

@pytest.mark.slow
def test_gpu_sh_dry_run_writes_every_result_and_figure3(tmp_path):
    """bench/gpu.sh --device cpu --quick: the GPU command's benchmarks on a tiny CLIP, each result
    written and Figure 3 drawn from the step times (minutes on a loaded 2-core machine)."""
    import subprocess
    env = dict(os.environ, OUT=str(tmp_path), PYTHON=sys.executable, LLU_CACHE=str(tmp_path / "cache"))
    done = subprocess.run(["bash", os.path.join(REPO, "bench", "gpu.sh"), "--device", "cpu", "--quick"], env=env,
                          capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    for inputs in ("features", "images"):
        result = json.loads((tmp_path / f"gpu_step_time_{inputs}_4c.json").read_text())
        assert set(result["step_time_ms"]["LLU"]) == {"1", "2"} and result["device"].startswith("cpu")
        assert (tmp_path / f"gpu_figure3_{inputs}_4c.png").stat().st_size > 0
    assert json.loads((tmp_path / "gpu_end_to_end.json").read_text())["LLU"]["process_wall_seconds"] > 0
    assert (tmp_path / "gpu_predict.json").is_file()


def test_gpu_sh_refuses_an_unknown_device_with_one_line():
    import subprocess
    done = subprocess.run(["bash", os.path.join(REPO, "bench", "gpu.sh"), "--device", "tpu"], capture_output=True,
                          text=True, cwd=REPO)
    assert done.returncode == 2 and done.stderr.strip() == "bench/gpu.sh: --device must be cpu or cuda, got tpu"
