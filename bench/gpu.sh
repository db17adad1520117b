#!/usr/bin/env bash
# One command for a GPU: the step-time (cached features and images, batch 1 to 256, 10 and 100
# classes), end-to-end and prediction benchmarks on a real-size ViT-B/16 (random weights: timings do
# not depend on them, and the machine needs no download), then Figure 3 from the step times.
#
#   bash bench/gpu.sh                       # on a CUDA machine: bench/results/gpu_*.json, gpu_figure3_*.png
#   bash bench/gpu.sh --device cpu --quick  # the same commands on a tiny CLIP on the CPU (CI's dry run)
#
# --quick: a two-layer 32-px CLIP, batch sizes 1 and 2, 4 classes, two timed steps; its results go to
# a temporary folder unless OUT is set. OUT=DIR puts every file in DIR. PYTHON picks the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
device=cuda quick=0
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device="${2:?--device takes cpu or cuda}"; shift 2 ;;
    --quick) quick=1; shift ;;
    *) echo "bench/gpu.sh: unknown argument $1 (expected --device cpu|cuda, --quick)" >&2; exit 2 ;;
  esac
done
PYTHON="${PYTHON:-python}"
case "$device" in
  cuda) "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
          || { echo "bench/gpu.sh: no CUDA device visible to torch (use --device cpu for the dry run)" >&2; exit 1; } ;;
  cpu) export CUDA_VISIBLE_DEVICES="" ;;
  *) echo "bench/gpu.sh: --device must be cpu or cuda, got $device" >&2; exit 2 ;;
esac
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
if [ "$quick" = 1 ]; then
  backbone=random:tiny batches="1 2" classes="4" step=(--repeats 2 --warmup 1 --trainers LLU CLIP_Adapter CoOp)
  e2e=(--classes 4 --shots 2 --test-per-class 1 --coop-epochs 1) predict=(--images 4 --repeats 1)
  out="${OUT:-$(mktemp -d)}"
else
  backbone=random:ViT-B/16 batches="1 2 4 8 16 32 64 128 256" classes="10 100" step=(--repeats 20 --max-seconds 10)
  e2e=(--classes 10) predict=(--images 256 --repeats 3)
  out="${OUT:-bench/results}"
fi
mkdir -p "$out"
for n in $classes; do
  for inputs in features images; do
    "$PYTHON" bench/bench_step_time.py --backbone "$backbone" --classes "$n" --inputs "$inputs" \
      --batch-sizes $batches "${step[@]}" --out "$out/gpu_step_time_${inputs}_${n}c.json" DATALOADER.NUM_WORKERS 0
  done
done
"$PYTHON" bench/bench_end_to_end.py --backbone "$backbone" "${e2e[@]}" --out "$out/gpu_end_to_end.json"
"$PYTHON" bench/bench_predict.py --backbone "$backbone" "${predict[@]}" --out "$out/gpu_predict.json"
"$PYTHON" - "$out" <<'PY'
import glob, os.path as osp, sys
from llu.report.figures import plot_bench
from llu.report.records import load_bench
for path in sorted(glob.glob(osp.join(sys.argv[1], "gpu_step_time_*.json"))):
    name = osp.basename(path)[len("gpu_step_time_"):-len(".json")]
    print("wrote", " ".join(plot_bench(load_bench(path), osp.join(sys.argv[1], f"gpu_figure3_{name}.png"))))
PY
echo "bench/gpu.sh: results in $out"
