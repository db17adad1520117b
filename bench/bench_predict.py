"""Images per second of ``llu predict`` for ZeroshotCLIP and LLU against the bare image encoder.

    python bench/bench_predict.py                      # random-weight ViT-B/32 on a CPU (ViT-B/16 on a GPU)
    python bench/bench_predict.py --images 256 --repeats 3
    python bench/bench_predict.py --backbone toy       # ToyCLIP on the built-in world (seconds)

The floor is the encoder's forward alone on the same images, already decoded and preprocessed, in
the same batches (FEATURES.BATCH_SIZE). ``llu predict`` is timed from file paths to predictions as
the command runs it (``Model.image_features`` then ``logits_of_features`` and the top-k): decoding,
preprocessing, the encoder, the method's head, writing the feature cache (a fresh, empty one per
repeat, so every image is encoded). The model is loaded before the clock starts. The three take
turns in each repeat; the median of the repeats is reported, as images per second and as the ratio
to the floor (target: LLU >= 0.9). A second LLU pass over the same images (read from the cache)
is reported beside them. Writes ``bench/results/predict.json``.
"""
import argparse
import os.path as osp
import statistics
import sys
import tempfile
import time

import torch

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, REPO)

import common  # noqa: E402  (bench/common.py: real-size random CLIP, generated image folders)
from llu.utils import exit_on_user_error, user_cache_dir, write_json  # noqa: E402

TARGET_RATIO = 0.9  # llu predict with LLU at least this fraction of the bare encoder's images per second
CLASSES = 10


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="", help="default: ViT-B/16 on a GPU, else random:ViT-B/32; or toy")
    parser.add_argument("--images", type=int, default=128, help="images predicted per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=osp.join(REPO, "bench", "results", "predict.json"))
    return parser


def llu_run(backbone, workdir):
    """A short LLU run on the generated image folder (or the built-in world): what is predicted with."""
    root, config, data = common.data_for(backbone, CLASSES, train_per_class=2, val_per_class=1, test_per_class=1,
                                         **({} if backbone == "toy" else {"size": 224}))
    out = osp.join(workdir, "llu")
    common.run_train(["--root", root, "--trainer", "LLU", "--config-file",
                      osp.join(REPO, "configs", "trainers", "LLU", f"{config}.yaml"),
                      "--backbone", common.resolve_backbone(backbone), "--output-dir", out, "--seed", "1",
                      *data, "DATASET.NUM_SHOTS", "2", "OPTIM.MAX_EPOCH", "1", "FEATURES.AUG_VIEWS", "0",
                      "FEATURES.CACHE_DIR", osp.join(workdir, "features")])
    return out


def image_files(backbone, count):
    if backbone == "toy":
        import glob
        return sorted(glob.glob(osp.join(user_cache_dir("world"), "shapes", "images", "*", "*.png")))[:count]
    per_class = -(-count // CLASSES)
    root, name = common.image_folder(CLASSES, train_per_class=per_class, val_per_class=0, test_per_class=0, size=224)
    import glob
    return sorted(glob.glob(osp.join(root, name, "*", "*.jpg")))[:count]


def predict_seconds(model, paths, classnames, cache_dir):
    """Paths to top-5 predictions as ``llu predict`` does it, into an empty feature cache."""
    model.feature_cache.directory = cache_dir
    start = time.perf_counter()
    features, failures = model.image_features(paths)
    assert not failures, failures
    model.predictions_of_logits(model.logits_of_features(features, classnames), classnames, 5)
    return time.perf_counter() - start


def main(args):
    import llu
    from PIL import Image
    backbone = args.backbone or common.default_backbone()
    with tempfile.TemporaryDirectory() as workdir:
        run = llu_run(backbone, workdir)
        models = {"ZeroshotCLIP": llu.load(common.resolve_backbone(backbone)), "LLU": llu.load(run)}
        paths = image_files(backbone, args.images)
        classnames = [f"class {i:03d}" for i in range(CLASSES)]
        pixels = torch.stack([models["LLU"].transform(Image.open(path)) for path in paths])
        encoder = models["LLU"].feature_cache
        common.encoder_forward_seconds(encoder, pixels[:encoder.cfg.FEATURES.BATCH_SIZE])  # warm-up
        times = {"encoder_forward": [], "ZeroshotCLIP": [], "LLU": [], "LLU_cached": []}
        for repeat in range(args.repeats):
            times["encoder_forward"].append(common.encoder_forward_seconds(encoder, pixels))
            for name, model in models.items():
                cache = osp.join(workdir, f"cache-{name}-{repeat}")
                times[name].append(predict_seconds(model, paths, classnames, cache))
            times["LLU_cached"].append(predict_seconds(models["LLU"], paths, classnames, cache))
    per_second = {name: len(paths) / statistics.median(values) for name, values in times.items()}
    ratios = {name: value / per_second["encoder_forward"] for name, value in per_second.items()}
    met = ratios["LLU"] >= TARGET_RATIO
    record = {"backbone": backbone, "images": len(paths), "repeats": args.repeats,
              "batch_size": models["LLU"].cfg.FEATURES.BATCH_SIZE, "torch_threads": torch.get_num_threads(),
              "device": str(models["LLU"].device), "seconds": times,
              "images_per_second": {k: round(v, 2) for k, v in per_second.items()},
              "ratio_to_encoder_forward": {k: round(v, 3) for k, v in ratios.items()},
              "target": {"LLU_ratio_at_least": TARGET_RATIO, "met": met}}
    write_json(record, args.out)
    print(f"{backbone}, {len(paths)} images, median of {args.repeats}, {torch.get_num_threads()} thread(s):")
    for name in times:
        print(f"  {name:<16} {per_second[name]:8.2f} images/s   {ratios[name]:.3f} x the encoder's forward")
    print(f"LLU: {ratios['LLU']:.3f} x the floor ({'met' if met else 'MISSED'}: target >= {TARGET_RATIO}); "
          f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(exit_on_user_error(main, build_parser().parse_args()))
