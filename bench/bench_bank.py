"""LLUBank at scale: a bank of N LLU members (512 image and 512 text anchors each, width 512) against
one LLU, on features (time and memory against N) and at prediction (from images, a bank of the
largest N against one LLU; target <= 2x).

    python bench/bench_bank.py                           # N = 1 2 5 10 20 50 100, random:ViT-B/32 on a CPU
    python bench/bench_bank.py --members 1 10 100 --repeats 5 --batch 32

Members are LLU adapters with random anchors (what they learned does not change the cost; every
member's alpha is above zero, so the blend computes every member's update: its worst case). Part 1,
the head on features, as each predicts: a batch of ``--batch`` image features scored against
``--classes`` class texts by one ``LocalizedLinearAdapter.logits`` (LLU's class_logits) and by
``AdapterBank.logits`` (nearest, blend) with the class set's texts updated once beforehand (LLUBank's
class_features; that one-off time is reported too), in turns, the median of the repeats; the bank's tensors (members' adapters and anchors, the stacked anchors) and the growth of the
process's peak resident memory while the banks are built and run, largest N last. Part 2, prediction:
the same batch as preprocessed images through the image encoder, then the head; one LLU and the bank of
the largest N take turns in each repeat; the ratio of the medians against the target. Writes
``bench/results/bank.json``.
"""
import argparse
import os.path as osp
import resource
import statistics
import sys
import time

import torch
import torch.nn.functional as F

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, REPO)

import common  # noqa: E402  (bench/common.py: real-size random CLIP)
from llu.trainers.llu_adapter import LocalizedLinearAdapter  # noqa: E402
from llu.trainers.llu_bank import RULES, AdapterBank  # noqa: E402

TARGET_RATIO = 2.0  # a bank of 100 at prediction: at most this many times one LLU's time
DIM, ANCHORS = 512, 512


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, nargs="+", default=[1, 2, 5, 10, 20, 50, 100])
    parser.add_argument("--batch", type=int, default=32, help="images per batch (FEATURES.BATCH_SIZE's size)")
    parser.add_argument("--classes", type=int, default=100, help="class texts scored")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--backbone", default="", help="default: ViT-B/16 on a GPU, else random:ViT-B/32")
    parser.add_argument("--name", default="bank")
    return parser


def member(seed, device):
    generator = torch.Generator().manual_seed(seed)
    adapter = LocalizedLinearAdapter(DIM)
    adapter.set_anchors(F.normalize(torch.randn(ANCHORS, DIM, generator=generator), dim=-1),
                        F.normalize(torch.randn(ANCHORS, DIM, generator=generator), dim=-1), n_clusters=0)
    return adapter.to(device).eval()


def tensor_bytes(bank):
    stacked = sum(side.anchors.numel() * side.anchors.element_size() for side in bank._sides.values())
    return sum(t.numel() * t.element_size() for t in bank.state_dict().values()) + stacked


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device):
    sync(device)
    start = time.perf_counter()
    with torch.no_grad():
        fn()
    sync(device)
    return time.perf_counter() - start


def main(args):
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    images = F.normalize(torch.randn(args.batch, DIM), dim=-1).to(device)
    texts = F.normalize(torch.randn(args.classes, DIM), dim=-1).to(device)
    single = member(0, device)
    single_head = lambda f: single.logits(f, texts, 100.0)  # noqa: E731  (LLU's class_logits)
    features = {"banks": []}
    members, heads = [], {}
    for n in sorted(args.members):
        rss_before = peak_rss_mb()
        members += [member(seed, device) for seed in range(len(members) + 1, n + 1)]
        heads = {"single_llu": single_head}
        row = {"members": n, "class_set_seconds": {}}
        for rule in RULES:
            bank = AdapterBank(members, rule).to(device)
            # As LLUBank predicts: the class set's texts updated once, then each batch of images.
            row["class_set_seconds"][rule] = timed(lambda: bank.transform(texts, "text"), device)
            with torch.no_grad():
                adapted = bank.transform(texts, "text")
            heads[rule] = lambda f, bank=bank, adapted=adapted: bank.logits(f, None, 100.0, adapted_texts=adapted)
        times = {name: [] for name in heads}
        for head in heads.values():
            timed(lambda: head(images), device)
        for _ in range(args.repeats):
            for name, head in heads.items():
                times[name].append(timed(lambda: head(images), device))
        medians = {name: statistics.median(values) for name, values in times.items()}
        row["single_llu_seconds"] = medians["single_llu"]
        for rule in RULES:
            row[f"{rule}_seconds"] = medians[rule]
            row[f"{rule}_ratio_to_single"] = medians[rule] / medians["single_llu"]
        row["bank_tensor_mb"] = tensor_bytes(bank) / 2 ** 20
        row["peak_rss_growth_mb"] = peak_rss_mb() - rss_before
        features["banks"].append(row)
        print(f"N={n:4d}: per batch nearest {row['nearest_seconds'] * 1e3:8.2f} ms ({row['nearest_ratio_to_single']:6.1f}x "
              f"one LLU's {row['single_llu_seconds'] * 1e3:.2f} ms), blend {row['blend_seconds'] * 1e3:8.2f} ms "
              f"({row['blend_ratio_to_single']:6.1f}x); class set {row['class_set_seconds']['blend'] * 1e3:.1f} ms once; "
              f"tensors {row['bank_tensor_mb']:7.1f} MB, peak RSS +{row['peak_rss_growth_mb']:.0f} MB", flush=True)

    # Prediction: the image encoder then the head, for one LLU and the largest bank, in turns.
    from llu.backbones import load_backbone
    backbone_name = args.backbone or common.default_backbone()
    clip_model = load_backbone(common.resolve_backbone(backbone_name), device, "fp32" if device.type == "cpu" else "fp16")
    size = clip_model.preprocess.size
    pixels = torch.randn(args.batch, 3, *size).to(device, clip_model.dtype)

    def predict(head):
        return head(F.normalize(clip_model.encode_image(pixels).float(), dim=-1))

    heads = {"single_llu": single_head, **{f"bank_{rule}": heads[rule] for rule in RULES}}
    for head in heads.values():
        timed(lambda: predict(head), device)
    times = {name: [] for name in heads}
    for _ in range(args.repeats):
        for name, head in heads.items():
            times[name].append(timed(lambda: predict(head), device))
    medians = {name: statistics.median(values) for name, values in times.items()}
    largest = max(args.members)
    prediction = {"backbone": backbone_name, "members": largest, "batch": args.batch, "classes": args.classes,
                  "seconds": medians}
    for rule in RULES:
        ratio = medians[f"bank_{rule}"] / medians["single_llu"]
        prediction[f"{rule}_ratio"] = common.verdict(round(ratio, 4), TARGET_RATIO)
        print(f"prediction ({backbone_name}, {args.batch} images, {args.classes} classes): bank of {largest} ({rule}) "
              f"{medians[f'bank_{rule}']:.3f} s vs one LLU {medians['single_llu']:.3f} s: "
              f"{prediction[f'{rule}_ratio']['text']}")
    result = {"device": torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} "
              f"thread(s)", "dim": DIM, "anchors_per_side": ANCHORS, "batch": args.batch, "classes": args.classes,
              "repeats": args.repeats, "features": features, "prediction": prediction}
    common.write_result(result, args.name)


if __name__ == "__main__":
    main(build_parser().parse_args())
