"""Time of one training step (forward + backward + update) against batch size: the paper's Figure 3.

    python bench/bench_step_time.py                     # real size: ViT-B/16 on a GPU, else a random ViT-B/32
    python bench/bench_step_time.py --backbone toy      # ToyCLIP on the built-in world (seconds)
    python bench/bench_step_time.py --classes 10 100 --inputs features images --batch-sizes 1 2 4 8 16 32
    python bench/bench_step_time.py --backbone FILE --root /data --dataset imagenet

Every trainer is built as ``train.py`` builds it (its ``configs/trainers/<Trainer>/<cfg>.yaml`` on the
same dataset) and its own ``forward_backward`` is timed on a prepared batch, the trainers taking
turns at each batch size so that they are measured side by side on the same machine. CoCoOp runs
at batch size 1 only by default, as in the paper (its class texts are encoded once per image).

The backbone: by default a real-size CLIP: ViT-B/16 on a GPU, and on a CPU a ViT-B/32-size CLIP with
random weights that the benchmark builds (``random:ViT-B/32``; weights do not change timings); any
name or weights file by ``--backbone``. The data: the built-in world for ``toy``; else ``--dataset``
and ``--root``, or a generated image folder of ``--classes`` classes at the model's resolution.

``--inputs features``: every trainer receives cached image features, timing the method's own cost.
``--inputs images`` (the paper's protocol): a step starts from a batch of images, so it includes
CLIP's frozen image encoder; prompt learners receive the images, feature trainers (LLU,
CLIP-Adapter) the features computed from them inside the timed step.

Each point is the median of ``--repeats`` timed steps after ``--warmup`` untimed ones, fewer when
they exceed ``--max-seconds`` (at least 2; a prompt learner's step over 100 classes takes tens of
seconds on a CPU). Writes one JSON per setting, ``step_time_ms[trainer][batch size]``
(``bench/results/step_time_<inputs>_<classes>c.json``; ``--out`` for a single setting), which
``parse_results.py`` draws as Figure 3, and prints the times with their ratios to LLU and the
targets at batch 32 on features. On features, LLU's and CLIP-Adapter's floors (``floor_step``: the
matrix products and the parameter update of their steps, bare) are timed in the same turns and kept
as ``floor_ms``: their ratio is the least LLU's step can be of CLIP-Adapter's when both are
implemented alike. ``--profile`` prints where LLU's and CLIP-Adapter's steps spend their time
(torch.profiler).
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
from llu import train  # noqa: E402
from llu.report.render import markdown  # noqa: E402
from llu.report.tables import step_time_table  # noqa: E402  (the table of Figure 3, with ratios to LLU)
from llu.engine import TRAINER_REGISTRY, build_trainer, set_random_seed  # noqa: E402
from llu.utils import UserError, exit_on_user_error, user_cache_dir, write_json  # noqa: E402

TRAINERS = ["LLU", "CoOp", "ProGrad", "CLIP_Adapter", "CoCoOp"]
TOY_BATCH_SIZES = [1, 2, 4, 8, 16, 32]
REAL_BATCH_SIZES = [1, 8, 32]
# Issue 13's targets for a step on cached features at batch 32.
TARGET_BATCH = 32
TARGET_SPEEDUP_OVER_COOP = 100.0  # LLU at least this many times faster than CoOp
TARGET_RATIO_TO_CLIP_ADAPTER = 2.0  # LLU at most this many times CLIP-Adapter's time (issue 24; issue 13 asked 1.15)


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="", help="CLIP name, weights file, toy, or random:<arch> "
                                                       "(default: ViT-B/16 on a GPU, else random:ViT-B/32)")
    parser.add_argument("--cfg", default="", help="trainer config name (default: toy for the toy backbone, "
                                                  "else vit_b16)")
    parser.add_argument("--dataset", default="", help="dataset config: a name (configs/datasets/<name>.yaml) or a "
                                                      ".yaml file (default: shapes for toy, else a generated folder)")
    parser.add_argument("--root", default="", help="dataset root (default: the built-in world)")
    parser.add_argument("--classes", type=int, nargs="+", default=[10, 100],
                        help="classes of the generated image folder (real-size backbones without --dataset)")
    parser.add_argument("--stored-features", action="store_true",
                        help="features from a generated embeddings file (--backbone embeddings) instead of images "
                             "encoded by the backbone: for --inputs features at class counts whose images would "
                             "take hours to encode on a CPU; times the feature trainers only")
    parser.add_argument("--shots", type=int, default=16, help="training images per class (the anchors of LLU)")
    parser.add_argument("--trainers", nargs="+", default=TRAINERS)
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=None,
                        help=f"default: {TOY_BATCH_SIZES} for toy, else {REAL_BATCH_SIZES}")
    parser.add_argument("--cocoop-batch-sizes", nargs="+", type=int, default=[1],
                        help="CoCoOp's batch sizes (default: 1, as in the paper)")
    parser.add_argument("--inputs", choices=["images", "features"], nargs="+", default=None,
                        help="what a step starts from (default: both for toy, features for real-size models)")
    parser.add_argument("--repeats", type=int, default=20, help="timed steps per point (the median is kept)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before each point")
    parser.add_argument("--max-seconds", type=float, default=20.0, help="stop timing a point after this long "
                                                                        "(with at least 2 timed steps)")
    parser.add_argument("--profile", action="store_true", help="print torch.profiler tables of LLU and CLIP-Adapter")
    parser.add_argument("--out", default="", help="the JSON of a single setting (default: bench/results/...)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config options for every trainer")
    return parser


def config_file(trainer_name, cfg):
    return osp.join(REPO, "configs", "trainers", trainer_name, f"{cfg}.yaml")


def dataset_config_file(dataset):
    return dataset if dataset.endswith(".yaml") else osp.join(REPO, "configs", "datasets", f"{dataset}.yaml")


def build(trainer_name, args, data_options, output_dir):
    """The trainer as train.py builds it, ready to train (anchors and other before_train state set)."""
    argv = ["--root", args.root, "--trainer", trainer_name, "--backbone", args.backbone,
            "--config-file", config_file(trainer_name, args.cfg), "--output-dir", output_dir,
            "--seed", str(args.seed), *data_options, "DATASET.NUM_SHOTS", str(args.shots),
            "DATASET.SUBSAMPLE_CLASSES", "all", *args.opts]
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
    if args.stored_features and hasattr(TRAINER_REGISTRY.get(trainer_name), "augments_images"):
        return "a prompt learner needs images (--stored-features)"
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
# The floor: a step's own arithmetic and its parameter update, nothing else

def floor_step(trainer, batch_size):
    """A function doing, bare, the work that no implementation of the trainer's step on cached
    features avoids: its matrix products forward and backward at the trainer's shapes, and the fused
    SGD update (CoOp's settings) of parameters of the trainer's sizes, whose memory traffic grows with
    them. No normalisation, blend, loss, autograd or check. None for a trainer without a counted floor.

    LLU (Eq. 1, 4, 5): g_I on the batch and g_T on the K class texts, the cosines to the A image
    anchors, the logits; backward the logits' two products and both weight gradients; W_I, b_I, W_T,
    b_T updated. CLIP-Adapter: the bottleneck's two products and the logits; backward the logits'
    product, both weight gradients and the hidden layer's gradient; its two weights updated."""
    name = type(trainer).__name__
    if name not in ("LLU", "CLIP_Adapter"):
        return None
    features, texts = feature_batch(trainer, batch_size)[0], trainer.text_features
    if name == "LLU":
        modules, anchors = trainer.adapter.adapters, trainer.adapter.image_anchors
        inputs = {"image": features, "text": texts}
    else:
        hidden_weight, out_weight = (layer.weight.detach() for layer in trainer.adapter.fc[::2])
    learned = trainer._optims[trainer.get_model_names()[0]]
    parameters = [p.detach().clone() for group in learned.param_groups for p in group["params"]]
    optim = trainer.cfg.OPTIM
    update = torch.optim.SGD(parameters, lr=optim.LR, momentum=optim.MOMENTUM, weight_decay=optim.WEIGHT_DECAY,
                             fused=True)
    logits_grad = torch.randn(batch_size, texts.shape[0], device=features.device)

    def llu():
        outputs = {side: torch.addmm(g.bias.detach(), inputs[side], g.weight.detach().t())
                   for side, g in modules.items()}
        features @ anchors.t()  # Eq. 5's cosines to D_image
        outputs["image"] @ outputs["text"].t()  # Eq. 1
        output_grads = {"image": logits_grad @ outputs["text"], "text": logits_grad.t() @ outputs["image"]}
        for parameter, (side, gradient) in zip(parameters[::2], output_grads.items()):
            parameter.grad = gradient.t() @ inputs[side]
        for parameter, gradient in zip(parameters[1::2], output_grads.values()):
            parameter.grad = gradient.sum(0)
        update.step()

    def clip_adapter():
        hidden = features @ hidden_weight.t()
        adapted = hidden @ out_weight.t()
        adapted @ texts.t()
        adapted_grad = logits_grad @ texts
        parameters[1].grad = adapted_grad.t() @ hidden
        hidden_grad = adapted_grad @ out_weight
        parameters[0].grad = hidden_grad.t() @ features
        update.step()

    return llu if name == "LLU" else clip_adapter


# ---------------------------------------------------------------------------------------------
# Timing

def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_medians(steps, device, repeats, warmup, max_seconds=float("inf")):
    """{name: (median ms, timed steps)} of the ``steps`` (name: a function running one step), timed
    in turns, one step of each per round, so that a change in the machine's load falls on all of them
    alike. ``warmup`` untimed rounds first (a step's warm-up stops after one slow step); a step stops
    being timed after ``max_seconds`` of its own time (with at least 2 timed steps)."""
    for step in steps.values():
        began = time.perf_counter()
        for _ in range(warmup):
            step()
            if time.perf_counter() - began > max_seconds / 10:
                break
    synchronize(device)
    times = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            if len(times[name]) >= 2 and sum(times[name]) > max_seconds:
                continue
            start = time.perf_counter()
            step()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: (1000 * statistics.median(values), len(values)) for name, values in times.items()}


def is_out_of_memory(error):
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error)


FLOOR = " floor"  # the key of a trainer's floor (``floor_step``) among the interleaved steps


def measure(trainers, args, inputs):
    """{trainer: {batch size: ms}}, the trainers' steps interleaved at each batch size; steps timed per
    point; out-of-memory points (a trainer that runs out is not tried at larger batches); and, on
    features, {trainer: {batch size: ms}} of the floors (``floor_step``) timed in the same turns."""
    times = {name: {} for name in trainers}
    steps = {name: {} for name in trainers}
    out_of_memory = {}
    for batch_size in sorted(args.batch_sizes):
        point = {}
        for name, trainer in trainers.items():
            allowed = args.cocoop_batch_sizes if name == "CoCoOp" else args.batch_sizes
            if batch_size in allowed and name not in out_of_memory:
                point[name] = make_step(trainer, batch_size, inputs)
                floor = floor_step(trainer, batch_size) if inputs == "features" else None
                if floor:
                    point[name + FLOOR] = floor
        while point:
            try:
                measured = interleaved_medians(point, next(iter(trainers.values())).device, args.repeats,
                                               args.warmup, args.max_seconds)
                break
            except RuntimeError as e:  # which step ran out is not known: try each alone once
                if not is_out_of_memory(e):
                    raise
                torch.cuda.empty_cache()
                before = len(point)
                for name in list(point):
                    try:
                        point[name]()
                    except RuntimeError as alone:
                        if not is_out_of_memory(alone):
                            raise
                        del point[name]
                        out_of_memory[name] = batch_size
                        print(f"note: {name} runs out of memory at batch size {batch_size}; larger ones are not tried")
                        torch.cuda.empty_cache()
                if len(point) == before:
                    raise  # none runs out alone: the steps together do not fit; not a trainer's point
        else:
            measured = {}
        for name, (ms, count) in measured.items():
            times.setdefault(name, {})[str(batch_size)] = ms
            steps.setdefault(name, {})[str(batch_size)] = count
            print(f"{name:>20} batch {batch_size:>3}: {ms:11.3f} ms", flush=True)
    floors = {name[:-len(FLOOR)]: times.pop(name) for name in list(times) if name.endswith(FLOOR)}
    return times, steps, out_of_memory, floors


# ---------------------------------------------------------------------------------------------
# Report

def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    threads = torch.get_num_threads()
    return f"cpu ({threads} thread{'s' if threads > 1 else ''})"


def targets(times, floors=None):
    """LLU against CoOp and CLIP-Adapter at batch 32 (issue 13's and 24's targets for a step on
    features), and the ratio of their floors, which no implementation of the two methods goes under."""
    llu = times.get("LLU", {}).get(str(TARGET_BATCH))
    out = {}
    llu_floor, clip_adapter_floor = ((floors or {}).get(name, {}).get(str(TARGET_BATCH)) for name in
                                     ("LLU", "CLIP_Adapter"))
    if llu_floor and clip_adapter_floor:
        ratio = llu_floor / clip_adapter_floor
        out["floor_ratio_to_clip_adapter"] = {"value": ratio, "text": f"{ratio:.2f} (the floors' ratio: "
                                              f"{llu_floor:.3f} vs {clip_adapter_floor:.3f} ms)"}
    if llu and times.get("CoOp", {}).get(str(TARGET_BATCH)):
        out["speedup_over_coop"] = common.verdict(times["CoOp"][str(TARGET_BATCH)] / llu, TARGET_SPEEDUP_OVER_COOP,
                                                  smaller_is_better=False)
    if llu and times.get("CLIP_Adapter", {}).get(str(TARGET_BATCH)):
        out["ratio_to_clip_adapter"] = common.verdict(llu / times["CLIP_Adapter"][str(TARGET_BATCH)],
                                                      TARGET_RATIO_TO_CLIP_ADAPTER)
    return out


def profile(trainers, batch_size):
    """Where a step of LLU and of CLIP-Adapter on cached features spends its time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile
    for name in ("LLU", "CLIP_Adapter"):
        if name not in trainers:
            continue
        step = make_step(trainers[name], batch_size, "features")
        for _ in range(5):
            step()
        with torch_profile(activities=[ProfilerActivity.CPU]) as recorded:
            for _ in range(20):
                step()
        print(f"\n{name}, batch {batch_size}, 20 steps on cached features:")
        print(recorded.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


def data_settings(args):
    """[(classes label, options choosing the data)]: the given dataset, the built-in world, or a
    generated folder per --classes."""
    if args.dataset or args.backbone == "toy":
        dataset = args.dataset or "shapes"
        return [("", ["--dataset-config-file", dataset_config_file(dataset)])]
    settings = []
    for classes in args.classes:
        if args.stored_features:
            args.root, name = common.embeddings_file(classes, train_per_class=args.shots)
            settings.append((f"{classes}c", common.embeddings_options(name)))
        else:
            args.root, name = common.image_folder(classes, train_per_class=args.shots)
            settings.append((f"{classes}c", common.folder_options(name)))
    return settings


def run(args):
    train.load_project()  # the trainers' registry, before skip_reason reads it
    if args.stored_features:
        if args.inputs not in (None, ["features"]) or args.dataset or args.backbone not in ("", "embeddings"):
            raise UserError("--stored-features times steps on features of a generated embeddings file: "
                            "no --inputs images, --dataset or --backbone with it")
        args.backbone, args.inputs = "embeddings", ["features"]
    args.backbone = args.backbone or common.default_backbone()
    backbone_label = args.backbone
    args.backbone = common.resolve_backbone(args.backbone)
    toy = args.backbone == "toy"
    args.cfg = args.cfg or ("toy" if toy else "vit_b16")
    args.root = args.root or user_cache_dir("world")
    args.batch_sizes = args.batch_sizes or (TOY_BATCH_SIZES if toy else REAL_BATCH_SIZES)
    args.inputs = args.inputs or (["images", "features"] if toy else ["features"])
    settings = [(label, options, inputs) for label, options in data_settings(args) for inputs in args.inputs]
    if args.out and len(settings) > 1:
        raise UserError("--out names the file of one setting; give one --classes and one --inputs")
    results = []
    for label, options, inputs in settings:
        print(f"\n== {backbone_label}, {label or 'dataset'}, inputs: {inputs}", flush=True)
        trainers, skipped = {}, {}
        with tempfile.TemporaryDirectory(prefix="bench-") as output_dir:
            for name in args.trainers:
                reason = skip_reason(name, args)
                if reason:
                    print(f"note: skipping {name}: {reason}")
                    skipped[name] = reason
                    continue
                trainers[name] = build(name, args, options, osp.join(output_dir, name))
            if not trainers:
                raise UserError("no trainer to time (all were skipped)")
            times, steps, out_of_memory, floors = measure(trainers, args, inputs)
            if args.profile and inputs == "features":
                profile(trainers, max(args.batch_sizes))
        some = next(iter(trainers.values()))
        result = {"device": device_name(some.device), "backbone": backbone_label, "cfg": args.cfg,
                  "dataset": some.cfg.DATASET.NAME, "num_classes": some.num_classes, "inputs": inputs,
                  "repeats": args.repeats, "warmup": args.warmup, "max_seconds": args.max_seconds,
                  "statistic": "median", "timed_steps": steps, "torch": torch.__version__,
                  "step_time_ms": times, "floor_ms": floors, "skipped": skipped, "out_of_memory_at": out_of_memory,
                  "targets": targets(times, floors) if inputs == "features" else {}}
        out = args.out or osp.join(REPO, "bench", "results", f"step_time_{inputs}_{some.num_classes}c.json")
        write_json(result, out)
        print(f"\n{result['num_classes']} classes, inputs: {inputs}")
        print(markdown(step_time_table(result)))
        for name, target in result["targets"].items():
            print(f"target {name} at batch {TARGET_BATCH}: {target['text']}")
        print(f"wrote {out}")
        results.append(result)
    return results


def main(argv=None):
    exit_on_user_error(run, build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
