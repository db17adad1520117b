"""Time of one training step (forward + backward + update) against batch size: the paper's Figure 3.

    python bench/bench_step_time.py                                  # ToyCLIP on the built-in world
    python bench/bench_step_time.py --backbone ViT-B/16 --root /data --dataset imagenet   # on a GPU

Every trainer is built as ``train.py`` builds it (its ``configs/trainers/<Trainer>/<cfg>.yaml`` on the
same dataset) and its own ``forward_backward`` is timed on a prepared batch, the trainers taking
turns at each batch size so that they are measured side by side on the same machine. CoCoOp runs
at batch size 1 only by default, as in the paper (its class texts are encoded once per image).

``--inputs images`` (default, the paper's protocol): a step starts from a batch of images, so it
includes CLIP's frozen image encoder; prompt learners receive the images, feature trainers (LLU,
CLIP-Adapter) the features computed from them inside the timed step. ``--inputs features``: every
trainer receives cached image features, timing the method's own cost only.

Writes ``bench/results/step_time.json`` (atomically; ``parse_results.py`` draws Figure 3 from it)
and prints the times with their ratios to LLU. A trainer that is not registered, or has no config
of that name, is skipped with a note.
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

import train  # noqa: E402  (registers datasets and trainers)
from llu.tables import markdown  # noqa: E402
from parse_results import step_time_table  # noqa: E402  (the table of Figure 3, with ratios to LLU)
from llu.engine import TRAINER_REGISTRY, build_trainer, set_random_seed  # noqa: E402
from llu.utils import UserError, exit_on_user_error, user_cache_dir, write_json  # noqa: E402

TRAINERS = ["LLU", "CoOp", "ProGrad", "CLIP_Adapter", "CoCoOp"]
BATCH_SIZES = [1, 2, 4, 8, 16, 32]


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="toy", help="CLIP model name or weights file (default: toy)")
    parser.add_argument("--cfg", default="", help="trainer config name (default: toy for the toy backbone, "
                                                  "else vit_b16)")
    parser.add_argument("--dataset", default="shapes", help="dataset config: a name (configs/datasets/<name>.yaml) "
                                                            "or a .yaml file")
    parser.add_argument("--root", default="", help="dataset root (default: the built-in world)")
    parser.add_argument("--shots", type=int, default=16, help="training images per class (the anchors of LLU)")
    parser.add_argument("--trainers", nargs="+", default=TRAINERS)
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=BATCH_SIZES)
    parser.add_argument("--cocoop-batch-sizes", nargs="+", type=int, default=[1],
                        help="CoCoOp's batch sizes (default: 1, as in the paper)")
    parser.add_argument("--inputs", choices=["images", "features"], default="images",
                        help="what a step starts from (see the module docstring)")
    parser.add_argument("--repeats", type=int, default=20, help="timed steps per point (the median is kept)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before each point")
    parser.add_argument("--out", default=osp.join(REPO, "bench", "results", "step_time.json"))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config options for every trainer")
    return parser


def config_file(trainer_name, cfg):
    return osp.join(REPO, "configs", "trainers", trainer_name, f"{cfg}.yaml")


def dataset_config_file(dataset):
    return dataset if dataset.endswith(".yaml") else osp.join(REPO, "configs", "datasets", f"{dataset}.yaml")


def build(trainer_name, args, output_dir):
    """The trainer as train.py builds it, ready to train (anchors and other before_train state set)."""
    argv = ["--root", args.root, "--trainer", trainer_name, "--backbone", args.backbone,
            "--dataset-config-file", dataset_config_file(args.dataset),
            "--config-file", config_file(trainer_name, args.cfg), "--output-dir", output_dir,
            "--seed", str(args.seed), "DATASET.NUM_SHOTS", str(args.shots), "DATASET.SUBSAMPLE_CLASSES", "all",
            *args.opts]
    cfg = train.setup_cfg(train.build_parser().parse_args(argv))
    set_random_seed(cfg.SEED)
    trainer = build_trainer(cfg)
    trainer.start_epoch = trainer.epoch = 0
    trainer.before_train()
    trainer.set_model_mode("train")
    trainer.batch_idx, trainer.num_batches = 0, 2 ** 31  # never the epoch's last batch: no LR step
    return trainer


def skip_reason(trainer_name, args):
    if trainer_name not in TRAINER_REGISTRY.registered_names():
        return "not registered in llu/trainers/"
    if not osp.isfile(config_file(trainer_name, args.cfg)):
        return f"no config {osp.relpath(config_file(trainer_name, args.cfg), REPO)}"
    return None


# ---------------------------------------------------------------------------------------------
# Batches

def image_batch(trainer, batch_size):
    """``batch_size`` training images (cycling through the set) under the training transform."""
    dataset = trainer.train_loader_x.dataset
    items = [dataset[i % len(dataset)] for i in range(batch_size)]
    return (torch.stack([item["img"] for item in items]).to(trainer.device),
            torch.tensor([int(item["label"]) for item in items], device=trainer.device))


def feature_batch(trainer, batch_size):
    features, labels = trainer.split_features("train")
    index = torch.arange(batch_size) % features.shape[0]
    return features[index].to(trainer.device), labels[index].to(trainer.device)


def takes_images(trainer):
    """Prompt learners encode images inside their step; feature trainers (LLU, CLIP-Adapter) do not."""
    return hasattr(trainer, "augments_images")


@torch.no_grad()
def encode_images(trainer, images):
    """What the feature cache stores: CLIP's unit-norm float32 image features."""
    return trainer.clip_model.encode_images(images)


def make_step(trainer, batch_size, inputs):
    """A function running one training step of ``trainer`` on a fixed batch."""
    if inputs == "features":
        features, labels = feature_batch(trainer, batch_size)
        return lambda: trainer.forward_backward({"features": features, "label": labels})
    images, labels = image_batch(trainer, batch_size)
    if takes_images(trainer):
        return lambda: trainer.forward_backward({"img": images, "label": labels})
    return lambda: trainer.forward_backward({"features": encode_images(trainer, images), "label": labels})


# ---------------------------------------------------------------------------------------------
# Timing

def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(step, device, repeats, warmup):
    for _ in range(warmup):
        step()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def is_out_of_memory(error):
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error)


def measure(trainers, args):
    """{trainer: {batch size: ms}}, the trainers taking turns at each batch size; and OOM points."""
    times = {name: {} for name in trainers}
    out_of_memory = {}
    for batch_size in sorted(args.batch_sizes):
        for name, trainer in trainers.items():
            allowed = args.cocoop_batch_sizes if name == "CoCoOp" else args.batch_sizes
            if batch_size not in allowed or name in out_of_memory:
                continue
            try:
                times[name][str(batch_size)] = median_ms(make_step(trainer, batch_size, args.inputs), trainer.device,
                                                         args.repeats, args.warmup)
            except RuntimeError as e:
                if not is_out_of_memory(e):
                    raise
                out_of_memory[name] = batch_size
                print(f"note: {name} runs out of memory at batch size {batch_size}; larger ones are not tried")
                torch.cuda.empty_cache()
            print(f"{name:>14} batch {batch_size:>3}: {times[name].get(str(batch_size), float('nan')):9.3f} ms")
    return times, out_of_memory


# ---------------------------------------------------------------------------------------------
# Report

def device_name(device):
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"


def run(args):
    args.cfg = args.cfg or ("toy" if args.backbone == "toy" else "vit_b16")
    args.root = args.root or user_cache_dir("world")
    trainers, skipped = {}, {}
    with tempfile.TemporaryDirectory(prefix="bench-") as output_dir:
        for name in args.trainers:
            reason = skip_reason(name, args)
            if reason:
                print(f"note: skipping {name}: {reason}")
                skipped[name] = reason
                continue
            trainers[name] = build(name, args, osp.join(output_dir, name))
        if not trainers:
            raise UserError("no trainer to time (all were skipped)")
        times, out_of_memory = measure(trainers, args)
    some = next(iter(trainers.values()))
    result = {"device": device_name(some.device), "backbone": args.backbone, "cfg": args.cfg,
              "dataset": some.cfg.DATASET.NAME, "num_classes": some.num_classes, "inputs": args.inputs,
              "repeats": args.repeats, "warmup": args.warmup, "statistic": "median", "torch": torch.__version__,
              "step_time_ms": times, "skipped": skipped, "out_of_memory_at": out_of_memory}
    write_json(result, args.out)
    print(f"\n{result['num_classes']} classes, inputs: {args.inputs}")
    print(markdown(step_time_table(result)))
    print(f"\nwrote {args.out}")
    return result


def main(argv=None):
    exit_on_user_error(run, build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
