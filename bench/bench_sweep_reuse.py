"""How often a sweep makes the encoder see each image: three seeds x five shot counts of LLU on one
dataset (scripts/fewshot.sh's LLU runs) against one 16-shot run, each from an empty feature cache.

    python bench/bench_sweep_reuse.py                     # the built-in world (ToyCLIP, Shapes)
    python bench/bench_sweep_reuse.py --backbone random:ViT-B/32 --classes 10   # real size, generated data

The feature cache keys features per image (path, size, modification time), transform, view and
weights, so each image is encoded once per view whatever seeds and shot counts ask for it. What the
sweep still encodes more than one run is the images that only other draws pick: CoOp's few-shot
splits (which every method here shares) are drawn independently per seed and shot count. The
benchmark counts those distinct (image, view) pairs, the least any cache could encode.

Target (issue 13): the sweep's encoder time at most 1.2x one 16-shot run's. Writes
bench/results/sweep_reuse.json.
"""
import json
import os.path as osp
import tempfile

import common

TARGET = 1.2
SEEDS = (1, 2, 3)
SHOTS = (1, 2, 4, 8, 16)


def llu_run(args, out, seed, shots, cache):
    results, _ = common.run_train(
        ["--root", args.root, "--trainer", "LLU", "--backbone", args.backbone, "--seed", str(seed),
         "--config-file", osp.join(common.REPO, "configs", "trainers", "LLU", f"{args.cfg}.yaml"),
         "--output-dir", out, *args.data_options, "DATASET.NUM_SHOTS", str(shots),
         "DATASET.SUBSAMPLE_CLASSES", "base", "FEATURES.CACHE_DIR", cache, "OPTIM.MAX_EPOCH", str(args.epochs),
         "DATALOADER.NUM_WORKERS", "0"])
    return results


def fewshot_images(out, base_classes):
    """The base-class training images a run drew: its few-shot split (drawn over all classes before
    the base classes, labels 0..base_classes-1, are kept), which its log names."""
    with open(osp.join(out, "log.txt")) as f:
        for line in f:
            for marker in ("Saving preprocessed few-shot data to ", "Loading preprocessed few-shot data from "):
                if line.startswith(marker):
                    with open(line[len(marker):].strip()) as split:
                        return {path for path, label, _ in json.load(split)["train"] if label < base_classes}
    raise SystemExit(f"{out}/log.txt names no few-shot split")


def main(argv=None):
    parser = common.run_parser(__doc__, backbone="toy", backbone_help="toy (default), a CLIP name or file, or "
                                                                      "random:<arch>")
    parser.add_argument("--epochs", type=int, default=5, help="LLU's epochs (training time is not what is measured)")
    args = parser.parse_args(argv)
    label = args.backbone
    args.backbone = common.resolve_backbone(args.backbone)
    args.root, args.cfg, args.data_options = common.data_for(args.backbone, args.classes, train_per_class=48,
                                                             val_per_class=4, test_per_class=4)
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as work:
        one = llu_run(args, osp.join(work, "one"), 1, 16, osp.join(work, "cache-one"))
        sweep, drawn = [], set()
        for seed in SEEDS:
            for shots in SHOTS:
                out = osp.join(work, f"seed{seed}-shots{shots}")
                sweep.append(llu_run(args, out, seed, shots, osp.join(work, "cache-sweep")))
                drawn |= fewshot_images(out, one["num_classes"])
                print(f"seed {seed}, {shots} shots: {sweep[-1]['timing']['encoded_images']} images encoded", flush=True)
        one_drawn = fewshot_images(osp.join(work, "one"), one["num_classes"])
    views = 1 + (4 if args.cfg == "toy" else 10)  # FEATURES.AUG_VIEWS of the config, and the plain view
    one_images, one_seconds = one["timing"]["encoded_images"], one["timing"]["feature_extraction_seconds"]
    sweep_images = sum(r["timing"]["encoded_images"] for r in sweep)
    sweep_seconds = sum(r["timing"]["feature_extraction_seconds"] for r in sweep)
    test_images = one_images - views * len(one_drawn)  # the rest of one run's encodes: its test (and val) images
    result = {"backbone": label, "seeds": SEEDS, "shots": SHOTS, "one_run": {"encoded_images": one_images,
              "feature_extraction_seconds": one_seconds, "training_images": len(one_drawn)},
              "sweep": {"runs": len(sweep), "encoded_images": sweep_images, "feature_extraction_seconds": sweep_seconds,
                        "distinct_training_images": len(drawn)},
              "least_possible_encodes": views * len(drawn) + test_images,
              "target": common.verdict(sweep_seconds / one_seconds, TARGET)}
    print(f"\nLLU on {label}: 15 runs ({len(SEEDS)} seeds x shots {SHOTS}) against one 16-shot run")
    print("| | images encoded | encoder seconds | distinct training images |")
    print("| --- | --- | --- | --- |")
    print(f"| one 16-shot run | {one_images} | {one_seconds:.1f} | {len(one_drawn)} |")
    print(f"| the sweep | {sweep_images} ({sweep_images / one_images:.2f}x) | {sweep_seconds:.1f} "
          f"({sweep_seconds / one_seconds:.2f}x) | {len(drawn)} |")
    print(f"The least any cache could encode for the sweep: {result['least_possible_encodes']} "
          f"({views} views of each distinct training image, and the test images once)")
    print(f"target sweep encoder time / one run's: {result['target']['text']}")
    common.write_result(result, "sweep_reuse")
    return result


if __name__ == "__main__":
    main()
