"""Measure the built-in world: does it behave like the benchmark it stands in for?

Builds the world (datasets + ToyCLIP, timed), then on the Shapes test set reports

- ToyCLIP's zero-shot accuracy ("a photo of a {}.") on the base and the new classes, each classified
  among its own half, as in CoOp's base-to-new protocol;
- a global linear residual adapter x + Wx + b on frozen image features, trained with cross-entropy
  on 16 shots per base class: base and new accuracy before and after, at several training lengths.

The world is calibrated when zero-shot is well above chance but far from perfect on both halves,
and the global adapter raises base accuracy while lowering new-class accuracy below zero-shot
(the paper's Table 1: CoOp 74.2 -> 63.2 on new classes).

    python scripts/check_world.py [--root DIR] [--level L] [--cast C]
"""
import argparse
import os
import os.path as osp
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402

from llu.world import generate, toyclip  # noqa: E402
from llu.datasets.splits import read_split  # noqa: E402
from llu.engine import get_cfg_default  # noqa: E402
from llu.engine.data import build_transform  # noqa: E402
from llu.utils import user_cache_dir  # noqa: E402
from llu.backbones import load_backbone  # noqa: E402
from llu.trainers.clip_common import encode_class_texts  # noqa: E402

TEMPLATE = "a photo of a {}."


def build_world(root, overrides):
    timings = {}
    for name in generate.DATASETS:
        start = time.time()
        generate.ensure_dataset(root, name, **overrides)
        timings[name] = time.time() - start
    start = time.time()
    toyclip.weights_file()
    timings["ToyCLIP"] = time.time() - start
    return timings


@torch.no_grad()
def image_features(model, items, transform):
    batches = []
    for i in range(0, len(items), 256):
        images = torch.stack([transform(Image.open(item.impath)) for item in items[i:i + 256]])
        batches.append(model.encode_images(images))
    return torch.cat(batches)


class ResidualLinear(nn.Module):
    """g(x) = x + Wx + b, starting at the identity."""

    def __init__(self, dim):
        super().__init__()
        self.linear = nn.Linear(dim, dim)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x):
        return F.normalize(x + self.linear(x), dim=-1)


def accuracy(features, labels, text_features):
    return 100.0 * (features @ text_features.t()).argmax(1).eq(labels).float().mean().item()


def fewshot_indices(labels, classes, shots, seed):
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.choice(np.flatnonzero(labels == c), shots, replace=False) for c in classes])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=os.environ.get("LLU_WORLD_ROOT") or user_cache_dir("world"))
    parser.add_argument("--level", type=float, help="override WORLD_SHIFT level")
    parser.add_argument("--cast", type=float, help="override WORLD_SHIFT cast")
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--steps", type=int, nargs="+", default=[25, 50, 100, 200, 400])
    args = parser.parse_args()
    torch.set_num_threads(1)
    overrides = {k: getattr(args, k) for k in ("level", "cast") if getattr(args, k) is not None}

    timings = build_world(args.root, overrides)
    model = load_backbone("toy")
    cfg = get_cfg_default()
    cfg.INPUT.SIZE = model.preprocess.size
    transform = build_transform(cfg, is_train=False)

    dataset_dir = generate.ensure_dataset(args.root, "Shapes", **overrides)
    train, _, test = read_split(osp.join(dataset_dir, generate.split_file_name("Shapes")),
                                osp.join(dataset_dir, "images"))
    classnames = sorted({(item.label, item.classname) for item in test})
    num_base = len(classnames) // 2  # CoOp's subsample_classes: the first half of the sorted labels
    text = encode_class_texts(model, [name for _, name in classnames], TEMPLATE)
    train_labels = np.array([item.label for item in train])
    test_features = image_features(model, test, transform)
    test_labels = torch.tensor([item.label for item in test])
    is_base = test_labels < num_base
    halves = {"base": (is_base, text[:num_base], 0), "new": (~is_base, text[num_base:], num_base)}

    def evaluate(features):
        return {half: accuracy(features[mask], test_labels[mask] - offset, half_text)
                for half, (mask, half_text, offset) in halves.items()}

    zero_shot = evaluate(test_features)
    rows = {}
    for seed in args.seeds:
        picks = fewshot_indices(train_labels, range(num_base), args.shots, seed)
        shot_features = image_features(model, [train[i] for i in picks], transform)
        shot_labels = torch.tensor(train_labels[picks])
        torch.manual_seed(seed)
        adapter = ResidualLinear(shot_features.shape[1])
        optimizer = torch.optim.AdamW(adapter.parameters(), lr=args.lr, weight_decay=0.0)
        scale = model.logit_scale.exp().item()
        for step in range(1, max(args.steps) + 1):
            loss = F.cross_entropy(scale * adapter(shot_features) @ text[:num_base].t(), shot_labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if step in args.steps:
                with torch.no_grad():
                    rows.setdefault(step, []).append(evaluate(adapter(test_features)))

    chance = {"base": 100.0 / num_base, "new": 100.0 / (len(classnames) - num_base)}
    print()
    print(f"Built-in world at {args.root}  (shift {dict(generate.WORLD_SHIFT, **overrides)})")
    print("Build time: " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in timings.items()))
    print(f"Shapes test: {len(test)} images; {args.shots} shots per base class; seeds {args.seeds}")
    print(f"| {'model':<34} | {'base':>6} | {'new':>6} | {'H':>6} |")
    print(f"|{'-' * 36}|{'-' * 8}|{'-' * 8}|{'-' * 8}|")

    def row(label, result):
        h = 2 * result["base"] * result["new"] / max(1e-9, result["base"] + result["new"])
        print(f"| {label:<34} | {result['base']:6.1f} | {result['new']:6.1f} | {h:6.1f} |")

    row("chance", chance)
    row("zero-shot ToyCLIP", zero_shot)
    for step, results in sorted(rows.items()):
        mean = {half: float(np.mean([r[half] for r in results])) for half in ("base", "new")}
        row(f"global linear adapter, {step} steps", mean)


if __name__ == "__main__":
    main()
