"""A run's start-up (what every train.py process pays before its first image is encoded) of this
checkout against an earlier commit's, side by side.

    python bench/bench_startup.py                   # against ca3d1b5 (before issue 24), random ViT-B/32
    python bench/bench_startup.py --base HEAD~3 --repeats 5

Each measurement is a fresh Python process that imports the project and registers its trainers and
datasets (``load_project``, as train.py does), then builds the backbone (``load_backbone``: the
weights file's sha256, reading it, building CLIP); its wall time from the interpreter's start. The
earlier commit runs from a ``git archive`` of it in a temporary folder, with the same Python. The two
take turns; medians of the repeats, after one untimed run of each (a warm page cache, and this
checkout's remembered sha256, as for every run after the first). Writes bench/results/startup.json.
"""
import argparse
import os
import os.path as osp
import statistics
import subprocess
import sys
import tempfile
import time

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, REPO)

import common  # noqa: E402

START_UP = ("from llu.train import load_project; load_project(); from llu.backbones import load_backbone; "
            "load_backbone(sys.argv[1], 'cpu', 'fp32')")


def start_up_seconds(checkout, weights):
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", f"import sys; {START_UP}", weights], cwd=checkout, check=True,
                   capture_output=True, env=dict(os.environ, PYTHONPATH=checkout))
    return time.perf_counter() - start


def main(argv=None):
    from llu.utils import write_json
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", default="ca3d1b5", help="the earlier commit")
    parser.add_argument("--backbone", default="random:ViT-B/32")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=osp.join(REPO, "bench", "results", "startup.json"))
    args = parser.parse_args(argv)
    weights = common.resolve_backbone(args.backbone)
    commit = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", args.base], capture_output=True, text=True,
                            check=True).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as base:
        archive = subprocess.run(["git", "-C", REPO, "archive", commit], capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", base], input=archive, check=True)
        checkouts = {"this_checkout": REPO, f"base_{commit}": base}
        times = {name: [] for name in checkouts}
        for name, checkout in checkouts.items():
            start_up_seconds(checkout, weights)  # untimed
        for _ in range(args.repeats):
            for name, checkout in checkouts.items():
                times[name].append(start_up_seconds(checkout, weights))
    medians = {name: statistics.median(values) for name, values in times.items()}
    ratio = medians["this_checkout"] / medians[f"base_{commit}"]
    result = {"backbone": args.backbone, "base": commit, "repeats": args.repeats, "seconds": times,
              "median_seconds": {k: round(v, 3) for k, v in medians.items()}, "ratio_to_base": round(ratio, 3)}
    print(f"start-up of a run ({args.backbone}), median of {args.repeats}:")
    for name, value in medians.items():
        print(f"  {name:<20} {value:7.2f} s")
    print(f"this checkout: {ratio:.3f} x {commit}'s")
    write_json(result, args.out)
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
