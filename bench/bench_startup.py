"""A run's start-up (what every train.py process pays before its first image is encoded) of this
checkout against an earlier commit's, side by side.

    python bench/bench_startup.py                   # against ca3d1b5 (before issue 24), random ViT-B/32
    python bench/bench_startup.py --base HEAD~3 --repeats 5

Each measurement is a fresh Python process that imports the project and registers its trainers and
datasets (``load_project``, as train.py does), then builds the backbone (``load_backbone``: the
weights file's sha256, reading it, building CLIP); its wall time from the interpreter's start. The
earlier commit runs from a ``git archive`` of it in a temporary folder, with the same Python. The two
take turns; medians of the repeats, after one untimed run of each (a warm page cache, and this
checkout's remembered sha256, as for every run after the first), of the wall time and of the CPU
time (user + system; on a machine shared with other jobs, the steadier of the two). Writes
bench/results/startup.json.
"""
import argparse
import os
import os.path as osp
import resource
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
    """(wall, CPU) seconds of one start-up in a fresh process (CPU: its user + system time, which other
    jobs on a shared machine change less than the wall time)."""
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    subprocess.run([sys.executable, "-c", f"import sys; {START_UP}", weights], cwd=checkout, check=True,
                   capture_output=True, env=dict(os.environ, PYTHONPATH=checkout))
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main(argv=None):
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
        times = {measure: {name: [] for name in checkouts} for measure in ("wall", "cpu")}
        for name, checkout in checkouts.items():
            start_up_seconds(checkout, weights)  # untimed
        for _ in range(args.repeats):
            for name, checkout in checkouts.items():
                for measure, seconds in zip(("wall", "cpu"), start_up_seconds(checkout, weights)):
                    times[measure][name].append(seconds)
    medians = {measure: {name: statistics.median(values) for name, values in per_checkout.items()}
               for measure, per_checkout in times.items()}
    ratios = {measure: values["this_checkout"] / values[f"base_{commit}"] for measure, values in medians.items()}
    result = {"backbone": args.backbone, "base": commit, "repeats": args.repeats, "seconds": times,
              "median_seconds": {m: {k: round(v, 3) for k, v in values.items()} for m, values in medians.items()},
              "ratio_to_base": {m: round(v, 3) for m, v in ratios.items()}}
    print(f"start-up of a run ({args.backbone}), median of {args.repeats}, wall and CPU (user + system) seconds:")
    for name in checkouts:
        print(f"  {name:<20} {medians['wall'][name]:7.2f} s wall  {medians['cpu'][name]:7.2f} s CPU")
    print(f"this checkout: {ratios['cpu']:.3f} x {commit}'s CPU time, {ratios['wall']:.3f} x its wall time")
    common.write_result(result, "startup", args.out)
    return result


if __name__ == "__main__":
    main()
