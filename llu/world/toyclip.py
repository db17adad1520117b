"""ToyCLIP: OpenAI's CLIP architecture at toy size, pretrained on the world's "pretrain" domain.

The project ships its pretrained weights (``toyclip-v3.npz`` beside this file, sha256
``SHIPPED_SHA256``), so every machine runs the same ToyCLIP: float32 training gives other bits on
other CPUs (other SIMD kernels in MKL, oneDNN and ATen), and a model pretrained on each machine
would make every table in the README one draw among many. ``weights_file()`` returns the shipped
file after checking its hash; ``read_weights(path)`` gives the OpenAI-format state dict that
``clip.model.build_model`` reads, as for real weights.

The pretraining code stays: ``python -m llu.world.toyclip rebuild`` pretrains from
scratch and compares the result with the shipped file (bit-identical on the machine class that
made it; elsewhere it prints how far the weights are apart).

The file is an ``.npz`` (read with ``allow_pickle=False``) written byte-for-byte deterministically.
It holds every tensor of the state dict except the token embedding's rows for words that never
occur in a caption: those are never trained and are filled on reading from a portable generator
(``portable_token_embedding``), which keeps the file at 1 MB instead of 13 MB.
"""
import argparse
import hashlib
import json
import math
import os.path as osp
import sys
import time
import zipfile

import numpy as np
import torch
import torch.nn.functional as F

from llu.utils import UserError
from llu.utils import atomic_path, file_sha256, import_clip

from . import render

PRETRAIN_VERSION = 3  # bump when the pretraining code changes what it produces (then rebuild and ship)

# clip.model.CLIP's arguments. build_model infers every one of them back from the state dict
# (heads = width // 64, so widths of 64 mean one head). A context of 24 tokens leaves room for
# 16 learned context vectors (CoOp, ProGrad) before a two-word class name.
TOYCLIP_DIMS = dict(embed_dim=64, image_resolution=32, vision_layers=3, vision_width=64, vision_patch_size=4,
                    context_length=24, vocab_size=49408, transformer_width=64, transformer_heads=1,
                    transformer_layers=2)

PRETRAIN_SETTINGS = dict(
    steps=2000,  # optimiser steps
    batch_size=64,  # images per step, each of a different class
    lr=2e-3,  # AdamW peak learning rate
    betas=(0.9, 0.98),
    eps=1e-6,
    weight_decay=0.05,  # on weight matrices only (not embeddings, biases, norms)
    warmup_steps=100,  # linear warm-up, then cosine decay to 0
    max_logit_scale=100.0,  # CLIP's cap on exp(logit_scale)
    images_per_class=240,  # size of the pre-rendered image pool
    condition_probability=0.5,  # how often a pretraining image is drawn under each named condition
    seed=0,
    threads=1,  # torch threads during pretraining (results depend on it)
)

# The weights this version of the project ships, and the sha256 of that file.
SHIPPED_FILE = osp.join(osp.dirname(osp.abspath(__file__)), "toyclip-v3.npz")
SHIPPED_SHA256 = "b8848cba72f6d6f22cc50a01e04de621fc8fd2ff443b6f17a7e49dc79bfa0b0d"
TOKEN_EMBEDDING_STD = 0.02  # CLIP's initialisation of the token embedding

# Captions: a template around the class name, plus the phrases naming the image's conditions
# (render.PretrainConditions) in random order. "a photo of a {}." is the template the trainers use
# for this world. With templates alone the context words carry no information and ToyCLIP learns to
# ignore them; then a learned context (CoOp, CoCoOp, ProGrad) cannot change its predictions.
CAPTION_TEMPLATES = [
    "a photo of a {}.",
    "a {}.",
    "{}",
    "a picture of a {}.",
    "an image of a {}.",
    "a drawing of a {}.",
    "this is a {}.",
    "a photo of the {}.",
    "a {} on a dark background.",
    "a close-up photo of a {}.",
]
SMALL_WORD = "small"  # before the class name
BACKGROUND_PHRASE = "on a colourful background"
CLUTTER_PHRASE = "among faint shapes"
LIGHT_PHRASE = "in {} light"

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # CLIP's input statistics (as INPUT.PIXEL_MEAN/STD)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
KINDS = ("shapes", "patterns")  # shape classes first, then pattern classes


def pretrain_settings(**overrides):
    """``PRETRAIN_SETTINGS`` with ``overrides`` applied (unknown names are an error)."""
    unknown = sorted(set(overrides) - set(PRETRAIN_SETTINGS))
    if unknown:
        raise TypeError(f"unknown pretraining setting(s): {', '.join(unknown)}")
    return {**PRETRAIN_SETTINGS, **overrides}


def settings_hash(settings):
    """A short hash of everything that determines the pretrained weights, including two rendered
    pretraining images per class (so a change to the drawing code is noticed without a version bump).
    The shipped file records the hash of the code that made it (a test compares the two)."""
    content = dict(version=PRETRAIN_VERSION, render_version=render.RENDER_VERSION, dims=TOYCLIP_DIMS,
                   settings=settings, templates=CAPTION_TEMPLATES,
                   classes=[render.class_names(kind) for kind in KINDS])
    digest = hashlib.sha256(json.dumps(content, sort_keys=True).encode())
    digest.update(render_pool(2, settings["seed"], settings["condition_probability"])[0].numpy().tobytes())
    return digest.hexdigest()[:12]


# ---------------------------------------------------------------------------------------------
# The weights file

def portable_token_embedding(seed, vocab_size=TOYCLIP_DIMS["vocab_size"], width=TOYCLIP_DIMS["transformer_width"]):
    """The initial token embedding: uniform with CLIP's std 0.02, the same bits on every machine.

    NumPy's PCG64 doubles come from integer arithmetic, and the scaling is IEEE + - *, so unlike
    torch's normal_ (whose vectorised kernels differ between CPUs) nothing here depends on the CPU.
    """
    uniform = np.random.Generator(np.random.PCG64([seed, 31337])).random((vocab_size, width))
    return torch.from_numpy(((2 * uniform - 1) * (TOKEN_EMBEDDING_STD * math.sqrt(3))).astype(np.float32))


def _write_npz(arrays, path):
    """An ``.npz`` whose bytes depend on the arrays only: stored (not deflated, whose output depends
    on the zlib version), sorted names, fixed timestamps."""
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as archive:
            for name in sorted(arrays):
                info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.create_system = 3
                info.external_attr = 0o644 << 16
                with archive.open(info, "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, np.array(arrays[name], order="C"), allow_pickle=False)


def save_weights(state_dict, path, metadata):
    """Write a pretrained ToyCLIP ``state_dict`` in the shipped format (see the module docstring)."""
    vocabulary = caption_vocabulary()
    embedding = state_dict["token_embedding.weight"]
    fill = portable_token_embedding(metadata["seed"])
    untrained = torch.ones(len(embedding), dtype=torch.bool)
    untrained[vocabulary] = False
    if not torch.equal(embedding[untrained], fill[untrained]):
        raise ValueError("token embedding rows outside the caption vocabulary differ from their portable initial values")
    arrays = {k: v.detach().cpu().numpy() for k, v in state_dict.items() if k != "token_embedding.weight"}
    arrays["token_embedding.rows"] = vocabulary.numpy().astype(np.int64)
    arrays["token_embedding.values"] = embedding[vocabulary].detach().cpu().numpy()
    arrays["metadata"] = np.frombuffer(json.dumps(metadata, sort_keys=True).encode(), dtype=np.uint8)
    _write_npz(arrays, path)


def is_weights_archive(member_names):
    """Whether a zip archive's members are those of a file written by ``save_weights``."""
    return "token_embedding.rows.npy" in member_names and "metadata.npy" in member_names


def read_metadata(path):
    with np.load(path, allow_pickle=False) as archive:
        return json.loads(archive["metadata"].tobytes().decode())


def read_weights(path):
    """The full OpenAI-format state dict (float32 tensors) of a ToyCLIP file in the shipped format."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
        metadata = json.loads(arrays.pop("metadata").tobytes().decode())
        rows, values = arrays.pop("token_embedding.rows"), arrays.pop("token_embedding.values")
        state_dict = {k: torch.from_numpy(v.copy()) for k, v in arrays.items()}
        embedding = portable_token_embedding(metadata["seed"])
        embedding[torch.from_numpy(rows)] = torch.from_numpy(values)
        state_dict["token_embedding.weight"] = embedding
    except (OSError, ValueError, KeyError, IndexError, RuntimeError, zipfile.BadZipFile) as e:
        raise UserError(f"{path}: not a ToyCLIP weights file ({type(e).__name__}: {e})") from None
    expected = _expected_shapes()
    if {k: tuple(v.shape) for k, v in state_dict.items()} != expected:
        raise UserError(f"{path}: its tensors' names or shapes differ from ToyCLIP's")
    return state_dict


_verified = {}


def weights_file():
    """The shipped ToyCLIP file, after checking that its sha256 is the one this version ships."""
    path = SHIPPED_FILE
    if not osp.isfile(path):
        raise UserError(f"{path}: ToyCLIP's weights are missing from this checkout (git checkout -- {path})")
    stat = osp.getmtime(path), osp.getsize(path)
    if _verified.get(path) != stat:
        digest = file_sha256(path)
        if digest != SHIPPED_SHA256:
            raise UserError(f"{path}: sha256 {digest[:12]}... differs from the shipped {SHIPPED_SHA256[:12]}...; "
                            f"restore it (git checkout -- {path}) or rebuild it "
                            f"(python -m llu.world.toyclip rebuild)")
        _verified[path] = stat
    return path


def _expected_shapes():
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in build_toy_clip().state_dict().items()}


# ---------------------------------------------------------------------------------------------
# Pretraining

def build_toy_clip(**dims):
    """A randomly initialised ToyCLIP (``dims`` override ``TOYCLIP_DIMS``)."""
    clip = import_clip()
    return clip.model.CLIP(**{**TOYCLIP_DIMS, **dims})


def all_class_names():
    return [name for kind in KINDS for name in render.class_names(kind)]


def render_pool(images_per_class, seed, condition_probability=PRETRAIN_SETTINGS["condition_probability"]):
    """Pre-rendered pretraining images, class-major: a uint8 tensor [classes * images_per_class, 3, 32, 32]
    and the ``render.PretrainConditions`` of each image."""
    images, conditions = [], []
    for kind_index, kind in enumerate(KINDS):
        for label in range(len(render.class_names(kind))):
            for i in range(images_per_class):
                rng = np.random.default_rng([seed, 7919, kind_index, label, i])
                conditions.append(render.PretrainConditions.sample(rng, condition_probability))
                images.append(render.render(kind, label, "pretrain", rng, conditions=conditions[-1]))
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(), conditions


def normalise(images):
    """uint8 [N, 3, H, W] -> CLIP-normalised float, as the trainers' test transform does."""
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (images.float() / 255 - mean) / std


def caption(name, conditions, template, rng):
    """'a photo of a small red circle in blue light on a colourful background.'"""
    text = template.format(f"{SMALL_WORD} {name}" if conditions.small else name).rstrip(".")
    phrases = []
    if conditions.background:
        phrases.append(BACKGROUND_PHRASE)
    if conditions.clutter:
        phrases.append(CLUTTER_PHRASE)
    if conditions.light:
        phrases.append(LIGHT_PHRASE.format(conditions.light))
    order = rng.permutation(len(phrases))
    return " ".join([text] + [phrases[i] for i in order]) + "."


def random_caption(name, conditions, rng):
    """``caption`` in a template drawn from ``CAPTION_TEMPLATES``."""
    template = CAPTION_TEMPLATES[int(rng.integers(len(CAPTION_TEMPLATES)))]
    return caption(name, conditions, template, rng)


def caption_vocabulary():
    """Sorted ids of every token a caption can contain (with start, end and padding)."""
    clip = import_clip()
    pieces = all_class_names() + CAPTION_TEMPLATES + [SMALL_WORD, BACKGROUND_PHRASE, CLUTTER_PHRASE]
    pieces += [LIGHT_PHRASE.format(light) for light in render.LIGHT_NAMES]
    return torch.unique(clip.tokenize(pieces, context_length=TOYCLIP_DIMS["context_length"]))


def tokenise_captions(captions, vocabulary):
    """Captions as ids into ``vocabulary`` (the pretraining model's renumbered token table)."""
    clip = import_clip()
    tokens = clip.tokenize(captions, context_length=TOYCLIP_DIMS["context_length"])
    if not torch.isin(tokens, vocabulary).all():
        raise ValueError("a caption holds a token outside caption_vocabulary()")
    return torch.searchsorted(vocabulary, tokens)


def batch_classes(step, batch_size, generator):
    """Distinct classes for one step: all shape classes on even steps; on odd steps all pattern
    classes, filled up with shape classes; both cut to ``batch_size`` at random."""
    num_shapes, num_patterns = len(render.SHAPE_CLASSES), len(render.PATTERN_CLASSES)
    shapes = torch.randperm(num_shapes, generator=generator)
    if step % 2 == 0:
        classes = shapes
    else:
        patterns = num_shapes + torch.randperm(num_patterns, generator=generator)
        classes = torch.cat([patterns, shapes[:max(0, batch_size - num_patterns)]])
    return classes[torch.randperm(len(classes), generator=generator)[:batch_size]]


def clip_loss(image_features, text_features, logit_scale):
    """Symmetric contrastive loss (paper Eq. 2): matching pairs on the diagonal."""
    image_features = F.normalize(image_features, dim=-1)
    text_features = F.normalize(text_features, dim=-1)
    logits = logit_scale.exp() * image_features @ text_features.t()
    target = torch.arange(len(logits))
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


def learning_rate(step, settings):
    if step < settings["warmup_steps"]:
        return settings["lr"] * (step + 1) / settings["warmup_steps"]
    progress = (step - settings["warmup_steps"]) / max(1, settings["steps"] - settings["warmup_steps"])
    return settings["lr"] * 0.5 * (1 + math.cos(math.pi * progress))


def pretrain_toy_clip(settings=None, log=print):
    """Pretrain ToyCLIP from scratch with ``settings`` (default ``PRETRAIN_SETTINGS``); returns its
    fp32 state dict. Deterministic for given settings; the global RNG and thread count are restored."""
    settings = settings or pretrain_settings()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(settings["threads"])
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(settings["seed"])
            return _pretrain(settings, log)
    finally:
        torch.set_num_threads(previous_threads)


def _pretrain(settings, log):
    start = time.time()
    per_class = settings["images_per_class"]
    log(f"ToyCLIP: rendering {len(all_class_names()) * per_class} pretraining images")
    pool, conditions = render_pool(per_class, settings["seed"], settings["condition_probability"])
    names = all_class_names()
    log(f"ToyCLIP: pretraining for {settings['steps']} steps ({time.time() - start:.0f} s so far)")

    # Only the token embeddings of words in the captions get gradients; the pretraining model holds just
    # those rows (ids renumbered in order, so the end-of-text token stays the largest id, which CLIP's
    # text encoder relies on) and the others keep their initial values, as in full-vocabulary
    # training without weight decay on embeddings. This keeps AdamW off 3.2 M idle parameters.
    full = build_toy_clip()
    with torch.no_grad():
        full.token_embedding.weight.copy_(portable_token_embedding(settings["seed"]))
    vocabulary = caption_vocabulary()
    model = build_toy_clip(vocab_size=len(vocabulary))
    initial = full.state_dict()
    initial["token_embedding.weight"] = initial["token_embedding.weight"][vocabulary]
    model.load_state_dict(initial)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": settings["weight_decay"]},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=settings["lr"], betas=tuple(settings["betas"]), eps=settings["eps"])
    generator = torch.Generator().manual_seed(settings["seed"])
    caption_rng = np.random.default_rng(settings["seed"] + 1)
    max_log_scale = math.log(settings["max_logit_scale"])
    model.train()
    running = None
    for step in range(settings["steps"]):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, settings)
        classes = batch_classes(step, settings["batch_size"], generator)
        picks = classes * per_class + torch.randint(per_class, (len(classes),), generator=generator)
        captions = [random_caption(names[c], conditions[i], caption_rng)
                    for c, i in zip(classes.tolist(), picks.tolist())]
        loss = clip_loss(model.encode_image(normalise(pool[picks])),
                         model.encode_text(tokenise_captions(captions, vocabulary)), model.logit_scale)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, max_log_scale)
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        if (step + 1) % 200 == 0 or step + 1 == settings["steps"]:
            log(f"ToyCLIP: step {step + 1}/{settings['steps']}  loss {running:.3f}  "
                f"{time.time() - start:.0f} s")
    state_dict = {k: v.detach().clone() for k, v in model.state_dict().items()}
    token_embedding = full.token_embedding.weight.detach().clone()
    token_embedding[vocabulary] = state_dict["token_embedding.weight"]
    state_dict["token_embedding.weight"] = token_embedding
    full.load_state_dict(state_dict)
    full.eval()
    log(f"ToyCLIP: pretrained in {time.time() - start:.0f} s; zero-shot accuracy on fresh pretraining-domain "
        f"images: {pretrain_domain_accuracy(full, settings['seed']):.1f}%")
    return state_dict


@torch.no_grad()
def pretrain_domain_accuracy(model, seed, per_class=4):
    """Zero-shot accuracy ("a photo of a {}.") over all classes, on images not in the pool."""
    clip = import_clip()
    correct = total = 0
    for kind_index, kind in enumerate(KINDS):
        names = render.class_names(kind)
        text = model.encode_text(clip.tokenize([CAPTION_TEMPLATES[0].format(n) for n in names],
                                               context_length=TOYCLIP_DIMS["context_length"]))
        text = F.normalize(text, dim=-1)
        images, labels = [], []
        for label in range(len(names)):
            for i in range(per_class):
                rng = np.random.default_rng([seed, 104729, kind_index, label, i])
                images.append(render.render(kind, label, "pretrain", rng))
                labels.append(label)
        images = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
        image_features = F.normalize(model.encode_image(normalise(images)), dim=-1)
        correct += (image_features @ text.t()).argmax(1).eq(torch.tensor(labels)).sum().item()
        total += len(labels)
    return 100.0 * correct / total


# ---------------------------------------------------------------------------------------------
# Rebuilding the shipped weights

def compare_weights(state_dict, reference):
    """(identical, largest absolute difference, name of the tensor where it is)."""
    worst, where = 0.0, ""
    for name, value in reference.items():
        difference = (state_dict[name].float() - value.float()).abs().max().item()
        if difference > worst:
            worst, where = difference, name
    return worst == 0.0, worst, where


def rebuild(out, settings=None, log=print):
    """Pretrain ToyCLIP from scratch into ``out`` and compare it with the shipped weights; returns
    True when the two files are identical."""
    settings = settings or pretrain_settings()
    state_dict = pretrain_toy_clip(settings, log=log)
    save_weights(state_dict, out, dict(seed=settings["seed"], settings_hash=settings_hash(settings),
                                      pretrain_version=PRETRAIN_VERSION, torch=torch.__version__))
    log(f"ToyCLIP: wrote {out} (sha256 {file_sha256(out)})")
    if not osp.isfile(SHIPPED_FILE):
        log(f"ToyCLIP: no shipped file at {SHIPPED_FILE} to compare with")
        return False
    identical, worst, where = compare_weights(read_weights(out), read_weights(SHIPPED_FILE))
    if identical:
        log(f"ToyCLIP: identical to the shipped weights {SHIPPED_FILE}")
    else:
        log(f"ToyCLIP: differs from the shipped weights (largest difference {worst:.3g} in {where}); "
            f"the shipped file was made on another kind of CPU or by other code")
    return identical


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m llu.world.toyclip",
                                     description="ToyCLIP's shipped weights: check them, or rebuild and compare.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("check", help="verify the shipped file's sha256 and print it")
    build = commands.add_parser("rebuild", help="pretrain from scratch (about 5 CPU minutes) and compare")
    build.add_argument("--out", default="toyclip-rebuilt.npz", help="where the rebuilt weights go")
    args = parser.parse_args(argv)
    if args.command == "check":
        print(f"{weights_file()}: sha256 {SHIPPED_SHA256} (as shipped)")
        return 0
    return 0 if rebuild(args.out) else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
