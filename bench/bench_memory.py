"""Peak resident memory of an LLU run against zero-shot evaluation of the same model and data.

    python bench/bench_memory.py                           # random ViT-B/32 on a CPU, 10 classes
    python bench/bench_memory.py --backbone toy            # ToyCLIP on the built-in world

Both run as train.py in a fresh process from an empty feature cache, with no DataLoader worker
processes (their memory would not be counted): ZeroshotCLIP evaluates the test set; LLU extracts
its training features (10 augmented views for vit_b16), sets its anchors, trains and evaluates.

Target (issue 13): LLU's peak at most 1.2x zero-shot evaluation's. Writes bench/results/memory.json.
"""
import os.path as osp
import tempfile

import common

TARGET = 1.2


def main(argv=None):
    parser = common.run_parser(__doc__)
    parser.add_argument("--epochs", type=int, default=20, help="LLU's epochs (memory does not grow with them)")
    args = parser.parse_args(argv)
    label = args.backbone or common.default_backbone()
    backbone = common.resolve_backbone(label)
    root, cfg, data_options = common.data_for(backbone, args.classes, train_per_class=16, val_per_class=1,
                                              test_per_class=2)
    peaks, results = {}, {}
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as work:
        for trainer, extra in (("ZeroshotCLIP", ["--eval-only"]), ("LLU", [])):
            results[trainer], peaks[trainer] = common.run_train(
                ["--root", root, "--trainer", trainer, "--backbone", backbone, "--seed", "1", *extra,
                 "--config-file", osp.join(common.REPO, "configs", "trainers", trainer, f"{cfg}.yaml"),
                 "--output-dir", osp.join(work, trainer), *data_options, "DATASET.NUM_SHOTS", "16",
                 "FEATURES.CACHE_DIR", osp.join(work, f"{trainer}-features"), "DATALOADER.NUM_WORKERS", "0",
                 "OPTIM.MAX_EPOCH", str(args.epochs)])
            print(f"{trainer}: peak resident memory {peaks[trainer]:.0f} MB", flush=True)
    result = {"backbone": label, "classes": results["LLU"]["num_classes"], "peak_rss_mb": peaks,
              "encoded_images": {t: r["timing"]["encoded_images"] for t, r in results.items()},
              "target": common.verdict(peaks["LLU"] / peaks["ZeroshotCLIP"], TARGET)}
    print(f"\n{label}, {result['classes']} classes: LLU {peaks['LLU']:.0f} MB, zero-shot evaluation "
          f"{peaks['ZeroshotCLIP']:.0f} MB; ratio {result['target']['text']}")
    common.write_result(result, "memory")
    return result


if __name__ == "__main__":
    main()
