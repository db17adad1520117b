"""The feature cache's extraction of real-size images against the bare encoder's forward over them.

    python bench/bench_extraction.py                        # 256 JPEGs of 500 x 375, random ViT-B/32 on a CPU
    python bench/bench_extraction.py --images 512 --repeats 5
    python bench/bench_extraction.py --backbone toy --images 64 --size 64 48   # ToyCLIP (seconds)

Extraction is ``FeatureCache.get`` as a run calls it for a split, into an empty cache (a fresh folder
per repeat): each file's key, decoding, resizing, cropping and normalising (the vit_b16 configs' test
transform), the encoder in FEATURES.BATCH_SIZE batches, writing the shard. It runs twice: as the
cache arranges it (DATALOADER.NUM_WORKERS of the vit_b16 configs, which the cache caps at the cores
the encoding process leaves: ``decoding_workers``) and with every image decoded in the encoding
process (NUM_WORKERS 0, as every extraction ran before issue 24). The floor is the encoder's forward
alone over the same images already as tensors, in the same batches. The three take turns in each
repeat (their order rotates); medians of the repeats, as ratios to the floor (target: extraction
<= 1.15x). The features of both extractions must be the floor's to the bit, or nothing is written.
Writes bench/results/extraction.json.
"""
import argparse
import os
import os.path as osp
import statistics
import sys
import tempfile
import time

import torch

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, REPO)

import common  # noqa: E402  (bench/common.py: real-size random CLIP, generated images)

TARGET_RATIO = 1.15  # extraction at most this many times the encoder's forward over the same images
MODES = ("encoder_forward", "extraction", "extraction_in_process")


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="", help="default: ViT-B/16 on a GPU, else random:ViT-B/32; or toy")
    parser.add_argument("--images", type=int, default=256, help="images extracted per repeat")
    parser.add_argument("--size", type=int, nargs=2, default=(500, 375), metavar=("WIDTH", "HEIGHT"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=osp.join(REPO, "bench", "results", "extraction.json"))
    return parser


def setup(backbone):
    """(cfg as the vit_b16 (or toy) configs set INPUT, FEATURES and DATALOADER, the backbone, the device)."""
    from llu.backbones import load_backbone
    from llu.engine import extend_cfg, get_cfg_default
    from llu.train import _merge_file, load_project
    from llu.trainers.clip_common import match_preprocessing
    load_project()
    cfg = extend_cfg(get_cfg_default())
    _merge_file(cfg, osp.join(REPO, "configs", "trainers", "LLU", f"{'toy' if backbone == 'toy' else 'vit_b16'}.yaml"))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_backbone(common.resolve_backbone(backbone), device, cfg.TRAINER.PREC)
    match_preprocessing(cfg, model)
    return cfg, model, device


def extraction_seconds(cfg, model, device, data, transform, cache_dir, workers):
    """(seconds, features) of ``FeatureCache.get`` over ``data`` into the empty ``cache_dir``."""
    from llu.trainers.feature_cache import FeatureCache
    cfg = cfg.clone()
    cfg.FEATURES.CACHE_DIR, cfg.DATALOADER.NUM_WORKERS = cache_dir, workers
    cache = FeatureCache(cfg, model, device)
    start = time.perf_counter()
    features, _ = cache.get(data, transform, 0)
    seconds = time.perf_counter() - start
    assert cache.encoder_passes == len(data)
    return seconds, features


def main(argv=None):
    from llu.engine import Datum, build_transform, read_image
    from llu.trainers.feature_cache import FeatureCache, decoding_workers
    args = build_parser().parse_args(argv)
    backbone = args.backbone or common.default_backbone()
    cfg, model, device = setup(backbone)
    transform = build_transform(cfg, is_train=False)
    workers = cfg.DATALOADER.NUM_WORKERS
    with tempfile.TemporaryDirectory(prefix="bench-extraction-") as work:
        paths = common.photo_files(work, args.images, tuple(args.size))
        data = [Datum(impath=path, label=0, classname="photo") for path in paths]
        encoder = FeatureCache(cfg, model, device)
        pixels = torch.stack([transform(read_image(path)) for path in paths])
        with torch.no_grad():  # the features every extraction must give; a warm-up too
            floor_features = torch.cat([encoder.encode_full_batch(pixels[i:i + cfg.FEATURES.BATCH_SIZE].to(device)).cpu()
                                        for i in range(0, len(paths), cfg.FEATURES.BATCH_SIZE)])
        times = {mode: [] for mode in MODES}
        for repeat in range(args.repeats):
            for mode in MODES[repeat % 3:] + MODES[:repeat % 3]:
                if mode == "encoder_forward":
                    times[mode].append(common.encoder_forward_seconds(encoder, pixels))
                    continue
                seconds, features = extraction_seconds(
                    cfg, model, device, data, transform, osp.join(work, f"cache-{mode}-{repeat}"),
                    workers if mode == "extraction" else 0)
                if not torch.equal(features, floor_features):
                    raise SystemExit(f"{mode}: the cached features differ from the encoder's own; nothing written")
                times[mode].append(seconds)
    medians = {mode: statistics.median(values) for mode, values in times.items()}
    ratios = {mode: medians[mode] / medians["encoder_forward"] for mode in MODES}
    arrangement = (f"{decoding_workers(cfg)} decoding worker process(es) (DATALOADER.NUM_WORKERS {workers}, "
                   f"{len(os.sched_getaffinity(0))} cores) beside the encoder's {torch.get_num_threads()} thread(s)")
    result = {"backbone": backbone, "device": device, "images": len(paths), "image_size": list(args.size),
              "batch_size": cfg.FEATURES.BATCH_SIZE, "repeats": args.repeats, "torch_threads": torch.get_num_threads(),
              "decoding_workers": decoding_workers(cfg), "arrangement": arrangement, "seconds": times,
              "median_seconds": {k: round(v, 3) for k, v in medians.items()},
              "ratio_to_encoder_forward": {k: round(v, 3) for k, v in ratios.items()},
              "features_identical_to_encoder_forward": True,
              "target": common.verdict(ratios["extraction"], TARGET_RATIO)}
    print(f"{backbone} on {device}, {len(paths)} JPEGs of {args.size[0]} x {args.size[1]}, batches of "
          f"{cfg.FEATURES.BATCH_SIZE}, median of {args.repeats}; {arrangement}:")
    for mode in MODES:
        print(f"  {mode:<22} {medians[mode]:8.2f} s   {ratios[mode]:.3f} x the encoder's forward")
    print(f"extraction: {result['target']['text']}; features bit-identical to the encoder's forward")
    common.write_result(result, "extraction", args.out)
    return result


if __name__ == "__main__":
    main()
