"""Anchor clustering (LLU Section 3.2): ``cluster_anchors`` vs scipy's complete linkage.

Each measurement runs in a fresh subprocess (one thread) that builds the data from a seed, records
its peak resident memory, clusters, and reports the wall time of the clustering and the growth of
peak RSS during it (torch allocations are invisible to tracemalloc). Both implementations see the
same features; their partitions are compared by the adjusted Rand index.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_clustering.py               # n = 4000 and 16000
    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_clustering.py --n 4000 --no-scipy-at-16k

Data: "random", unit Gaussian directions in d = 512; "classes", ImageNet-like 16-shot features:
1000 random class centres, 16 points each at cosine ~0.8 to their centre (n = 16,000 uses all).
"""
import argparse
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKER = r"""
import json, resource, sys, time
import numpy as np
import torch
torch.set_num_threads(1)
kind, data, out = sys.argv[1], sys.argv[2], sys.argv[6]
n, dim, k = (int(a) for a in sys.argv[3:6])
g = torch.Generator().manual_seed(0)
if data == "random":
    x = torch.randn(n, dim, generator=g)
else:  # 1000 class centres, 16 points per class, noise at cosine ~0.8 to the centre
    centres = torch.nn.functional.normalize(torch.randn(1000, dim, generator=g), dim=-1)
    noise = torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=-1)
    x = centres[torch.arange(n) % 1000] + 0.75 * noise
x = torch.nn.functional.normalize(x, dim=-1)
if kind == "scipy":
    from scipy.cluster.hierarchy import fcluster, linkage
    x_np = x.double().numpy()
else:
    from llu.trainers.llu_adapter import cluster_anchors
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
if kind == "scipy":
    labels = fcluster(linkage(x_np, method="complete", metric="cosine"), k, criterion="maxclust")
else:
    anchors, labels = cluster_anchors(x, k)
    labels = labels.numpy()
seconds = time.perf_counter() - t0
rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
np.save(out, np.asarray(labels))
print(json.dumps({"seconds": seconds, "peak_rss_growth_mb": (rss1 - rss0) / 1024,
                  "clusters": int(len(set(labels.tolist())))}))
"""


def measure(kind, data, n, dim, k, out):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    result = subprocess.run([sys.executable, "-c", WORKER, kind, data, str(n), str(dim), str(k), out],
                            env=env, capture_output=True, text=True, check=True, cwd=REPO)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main():
    import numpy as np
    from sklearn.metrics import adjusted_rand_score

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[4000, 16000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--clusters", type=int, default=512)
    parser.add_argument("--data", nargs="+", default=["random", "classes"])
    parser.add_argument("--no-scipy-at-16k", action="store_true", help="skip scipy when n > 8000")
    parser.add_argument("--tmp", default="/tmp")
    args = parser.parse_args()

    print(f"{'data':8s} {'n':>6s} {'impl':6s} {'seconds':>8s} {'peak MB':>8s} {'k':>5s}"
          "   ratios (ours / scipy), ARI")
    for data in args.data:
        for n in args.n:
            rows = {}
            for kind in ("ours", "scipy"):
                if kind == "scipy" and args.no_scipy_at_16k and n > 8000:
                    continue
                out = os.path.join(args.tmp, f"bench_clustering_{kind}_{data}_{n}.npy")
                rows[kind] = measure(kind, data, n, args.dim, args.clusters, out)
                rows[kind]["labels"] = np.load(out)
                r = rows[kind]
                print(f"{data:8s} {n:6d} {kind:6s} {r['seconds']:8.2f} {r['peak_rss_growth_mb']:8.0f}"
                      f" {r['clusters']:5d}", flush=True)
            if "scipy" in rows:
                ours, ref = rows["ours"], rows["scipy"]
                print(f"{'':31s} {'':8s}   time {ours['seconds'] / ref['seconds']:.2f}x, "
                      f"memory {ours['peak_rss_growth_mb'] / max(ref['peak_rss_growth_mb'], 1):.2f}x, "
                      f"ARI {adjusted_rand_score(ours['labels'], ref['labels']):.4f}", flush=True)


if __name__ == "__main__":
    main()
