"""One run: command line -> config -> trainer (``llu train``, ``python train.py``). CoOp's flags; trailing
``KEY VALUE`` (or ``KEY=VALUE``) pairs override the config.

    llu train --root DATA --trainer LLU --dataset-config-file shapes --config-file LLU/toy \
        --output-dir output/run --seed 1 DATASET.NUM_SHOTS 16 DATASET.SUBSAMPLE_CLASSES base

torch is imported when a run starts, not before: ``--help`` and argument errors answer at once.
"""
import argparse
import ast
import difflib
import os.path as osp
import signal
import textwrap

import yaml

from llu import config_files, configs, engine, upstream_keys
from llu.engine.config import SCHEDULE_KEYS, config_differences, describe_differences
from llu.utils import (UserError, dotted_get, dotted_items, exit_on_user_error, folder_lock, is_writable_dir, log_only, raise_terminated,
                       run_log)


_loaded = False


def load_project(backend=None):
    """Choose the engine's backend (default: $LLU_ENGINE, else builtin), then register the datasets and
    the trainers, whose classes derive from that backend's, and declare their config keys. Once per
    process; every entry point that builds a config calls it."""
    global _loaded
    if _loaded:
        return
    engine.select_backend(backend)
    import llu.datasets
    import llu.trainers
    llu.datasets.register_all()
    llu.trainers.register_all()
    _loaded = True


def _merge(cfg, what, merge):
    """Apply a yacs merge, turning its errors into one-line user errors with close key names."""
    try:
        merge()
    except (KeyError, ValueError, AssertionError, TypeError) as e:
        message = str(e.args[0]) if e.args else str(e)
        if "Non-existent" not in message:
            raise UserError(f"{what}: {message}") from None
        key = message.split(":")[-1].strip()
        close = difflib.get_close_matches(key, [key for key, _ in dotted_items(cfg)], n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UserError(f"{what}: unknown config key {key}{hint}") from None


def _ints_as_floats(cfg, content, prefix=""):
    """``content`` (a file's mapping) with an int given for a float key turned into that float, as
    a user who writes ``GAMMA: 0`` means (yacs would refuse the type)."""
    out = {}
    for key, value in content.items():
        full = f"{prefix}{key}"
        if isinstance(value, dict):
            out[key] = _ints_as_floats(cfg, value, full + ".")
        elif isinstance(dotted_get(cfg, full), float) and isinstance(value, int) and not isinstance(value, bool):
            out[key] = float(value)
        else:
            out[key] = value
    return out


def _opts_ints_as_floats(cfg, opts):
    """The trailing KEY VALUE list, likewise: ``TRAINER.LLU.GAMMA 0`` is 0.0."""
    out = list(opts)
    for i in range(0, len(out) - 1, 2):
        if isinstance(dotted_get(cfg, out[i]), float):
            try:
                value = ast.literal_eval(out[i + 1])
            except (ValueError, SyntaxError):
                continue
            if isinstance(value, int) and not isinstance(value, bool):
                out[i + 1] = repr(float(value))
    return out


def _merge_file(cfg, path):
    """Merge a yaml file; a ``_BASE_: other.yaml`` entry (relative to the file) is merged first."""
    for source, content in config_files.chain(path):
        content = _ints_as_floats(cfg, upstream_keys.translate_mapping(content, source))
        _merge(cfg, source, lambda: cfg.merge_from_other_cfg(cfg.__class__(content)))


def reset_cfg(cfg, args):
    if args.root:
        cfg.DATASET.ROOT = args.root
    if args.output_dir:
        cfg.OUTPUT_DIR = args.output_dir
    if args.resume:
        cfg.RESUME = args.resume
    if args.seed is not None:
        cfg.SEED = args.seed
    if args.source_domains:
        cfg.DATASET.SOURCE_DOMAINS = args.source_domains
    if args.target_domains:
        cfg.DATASET.TARGET_DOMAINS = args.target_domains
    if args.transforms:
        cfg.INPUT.TRANSFORMS = args.transforms
    if args.trainer:
        cfg.TRAINER.NAME = args.trainer
    if args.backbone:
        cfg.MODEL.BACKBONE.NAME = args.backbone


def _pairs(opts):
    """``opts`` as KEY VALUE pairs: a token that is KEY=VALUE is one pair, otherwise a KEY takes the next token."""
    flat, tokens = [], list(opts)
    while tokens:
        item = tokens.pop(0)
        key, sep, value = item.partition("=")
        if sep and key and key.replace(".", "").replace("_", "").isalnum() and key.isupper():
            flat += [key, value]
        elif tokens:
            flat += [item, tokens.pop(0)]
        else:
            raise UserError(f"trailing options must be KEY VALUE or KEY=VALUE pairs; {item!r} has no value")
    return flat


def setup_cfg(args, notes=None):
    """Defaults -> dataset yaml -> trainer yaml -> command-line flags -> trailing options -> the backbone's
    preprocessing (INPUT.SIZE, PIXEL_MEAN/STD, INTERPOLATION, RESIZE_MODE), then frozen: the config that is
    saved and logged is the one that runs. What it has to say goes to ``notes`` when given (a list)."""
    load_project()
    cfg = engine.get_cfg_default()
    engine.extend_cfg(cfg)
    if args.dataset_config_file:
        _merge_file(cfg, configs.locate(args.dataset_config_file, "datasets"))
        cfg.SOURCE_FILES.DATASET = args.dataset_config_file
    if args.config_file:
        _merge_file(cfg, configs.locate(args.config_file, "trainers"))
        cfg.SOURCE_FILES.TRAINER = args.config_file
    reset_cfg(cfg, args)
    opts = _opts_ints_as_floats(cfg, upstream_keys.translate_opts(_pairs(args.opts)))
    _merge(cfg, "command line", lambda: cfg.merge_from_list(opts))
    if not cfg.TRAINER.NAME:
        raise UserError("no trainer given: pass --trainer NAME")
    if not cfg.DATASET.NAME:
        raise UserError("no dataset given: pass --dataset-config-file configs/datasets/<name>.yaml")
    check_values(cfg)
    from llu.trainers.clip_common import match_preprocessing
    match_preprocessing(cfg, notes=notes)  # INPUT as the backbone prepares images: what is saved and logged is what runs
    new_schedule = getattr(args, "resume_with_new_schedule", False)
    if new_schedule and not cfg.RESUME:
        raise UserError("--resume-with-new-schedule continues a run: pass --resume FOLDER too")
    if cfg.RESUME:
        check_resume(cfg, new_schedule)
    cfg.freeze()
    return cfg


def check_resume(cfg, new_schedule=False):
    """``--resume``: refuse a config that differs from the run it continues (``RESUME/config.yaml``) but in
    keys that cannot change the numbers (``RESULT_NEUTRAL_KEYS``); with ``--resume-with-new-schedule``,
    the learning-rate schedule may differ (``SCHEDULE_KEYS``): the epochs left follow it, from the
    checkpoint's optimiser state and learning rate (OPTIM.LR is set to the checkpoint's)."""
    path = osp.join(cfg.RESUME, "config.yaml")
    if not osp.isfile(path):
        raise UserError(f"--resume {cfg.RESUME}: no config.yaml there, so the run to continue is unknown "
                        f"(is it the --output-dir of a run?)")
    resumed = config_files.read_run_config(path, "the resumed run's config", section="OPTIM")
    differences = config_differences(resumed, yaml.safe_load(cfg.dump()))
    refused = [d for d in differences if not (new_schedule and d[0] in SCHEDULE_KEYS)]
    if refused:
        hint = "; --resume-with-new-schedule accepts a changed OPTIM schedule" \
            if any(key in SCHEDULE_KEYS for key, _, _ in refused) else ""
        raise UserError(f"--resume {cfg.RESUME}: this run's config differs from the run it continues: "
                        f"{describe_differences(refused)} (resume with the run's config, or train from scratch "
                        f"into another --output-dir{hint})")
    rescheduled = [d for d in differences if d[0] != "OPTIM.LR"]
    if rescheduled:
        print(f"Note: resuming with a new schedule ({describe_differences(rescheduled)}): the epochs left follow it")
    resumed_lr = resumed["OPTIM"].get("LR", cfg.OPTIM.LR)
    if resumed_lr != cfg.OPTIM.LR:
        print(f"Note: resuming keeps the checkpoint's optimiser and learning rate ({resumed_lr:g}); this run's "
              f"OPTIM.LR {cfg.OPTIM.LR:g} is not used (train from scratch to change it)")
        cfg.OPTIM.LR = float(resumed_lr)


MAX_SEED = 2 ** 32 - 1  # NumPy's seeds are 32-bit


def check_values(cfg):
    """Values every run reads, checked before any work (trainers check their own keys)."""
    if not -1 <= cfg.SEED <= MAX_SEED:
        raise UserError(f"SEED (--seed) must be between 0 and {MAX_SEED}, or -1 for an unseeded run; got {cfg.SEED}")
    if cfg.DATASET.NUM_SHOTS < -1:
        raise UserError(f"DATASET.NUM_SHOTS must be a number of images per class (>= 1), or 0 or -1 for all of "
                        f"them; got {cfg.DATASET.NUM_SHOTS}")


def check_command(cfg, args):
    """Refuse, before any work, a command whose results would not be what they say."""
    try:
        trainer_class = engine.TRAINER_REGISTRY.get(cfg.TRAINER.NAME)
    except KeyError:  # Dassl's registry; build_trainer reports the unknown name
        trainer_class = None
    if hasattr(trainer_class, "check_run"):
        trainer_class.check_run(cfg, args.eval_only, args.model_dir)
    if args.model_dir:
        if not osp.isdir(args.model_dir):
            raise UserError(f"--model-dir {args.model_dir}: no such folder")
        config_path = osp.join(args.model_dir, "config.yaml")
        if osp.exists(config_path):
            config_files.read_run_config(config_path, "the trained run's config")
    check_output_dir(cfg, args)
    if cfg.OUTPUT_DIR and not is_writable_dir(cfg.OUTPUT_DIR):
        raise UserError(f"{cfg.OUTPUT_DIR}: cannot write the run's output there (read-only, full, or not a folder?)")


def _same_folder(a, b):
    return bool(a) and bool(b) and osp.realpath(osp.expanduser(a)) == osp.realpath(osp.expanduser(b))


def check_output_dir(cfg, args):
    """A finished run (its results.json) is never replaced silently: ``--overwrite`` replaces it whole,
    ``--resume`` continues it; anything else is refused."""
    overwrite = getattr(args, "overwrite", False)
    if overwrite and cfg.RESUME:
        raise UserError("--overwrite starts the run again and --resume continues it: pass one of them")
    if overwrite and _same_folder(args.model_dir, cfg.OUTPUT_DIR):
        raise UserError(f"--overwrite would remove the model that --model-dir {args.model_dir} evaluates; "
                        f"write the evaluation into another --output-dir")
    from llu.engine.trainer import finished_run
    if not finished_run(cfg.OUTPUT_DIR) or overwrite or _same_folder(cfg.RESUME, cfg.OUTPUT_DIR):
        return
    raise UserError(f"{cfg.OUTPUT_DIR}: holds a finished run (results.json); pass --overwrite to replace it, or "
                    f"choose another --output-dir")


BACKBONE_KINDS = """backbones (--backbone, or MODEL.BACKBONE.NAME):
  ViT-B/16, RN50, ...     OpenAI's CLIP by name (~/.cache/clip), or a weights file (.pt)
  toy                     the built-in world's ToyCLIP (shipped)
  openclip:<model>        an OpenCLIP architecture or model config .json, weights in MODEL.BACKBONE.WEIGHTS
  openclip:hf-hub:<org/name>  an OpenCLIP repository of the Hub, from the local Hugging Face cache
  hf:<folder>             a Hugging Face CLIPModel or SiglipModel folder
  hf:<org/name>           the same by its Hub id, from the local Hugging Face cache
  embeddings              no model: the features stored in the dataset's file"""

EXAMPLE = """example (the built-in world, LLU on the base classes, then its new classes):
  llu train --trainer LLU --dataset-config-file shapes --config-file LLU/toy --seed 1 \\
      --output-dir output/llu_shapes DATASET.NUM_SHOTS=16 DATASET.SUBSAMPLE_CLASSES=base
  llu train --trainer LLU --dataset-config-file shapes --config-file LLU/toy --seed 1 \\
      --output-dir output/llu_shapes_new --model-dir output/llu_shapes --eval-only \\
      DATASET.NUM_SHOTS=16 DATASET.SUBSAMPLE_CLASSES=new"""


def help_epilog():
    """Trainers, datasets, backbone kinds and an example, read from the shipped configs (no torch)."""
    trainers = "\n".join(textwrap.fill(", ".join(names), width=100, initial_indent=f"  {name:<15} ",
                                        subsequent_indent=" " * 18)
                          for name, names in configs.shipped_trainers().items())
    datasets = textwrap.fill(", ".join(configs.shipped_datasets()), width=100, initial_indent="  ",
                             subsequent_indent="  ")
    return (f"trainers (--trainer) and their shipped configs (--config-file TRAINER/NAME):\n{trainers}\n\n"
            f"datasets (--dataset-config-file NAME, or a .yaml file):\n{datasets}\n\n{BACKBONE_KINDS}\n\n{EXAMPLE}")


def build_parser(prog=None):
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0], epilog=help_epilog(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=str, default="", help="folder that holds the dataset folders")
    parser.add_argument("--output-dir", type=str, default="", help="where logs, checkpoints and results.json go")
    parser.add_argument("--resume", type=str, default="", help="continue training from this output folder")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a finished run in --output-dir (its results, checkpoints, logs and metrics)")
    parser.add_argument("--resume-with-new-schedule", action="store_true",
                        help="with --resume: accept a changed learning-rate schedule (OPTIM.MAX_EPOCH, ...); the "
                             "checkpoint's optimiser state and learning rate are kept")
    parser.add_argument("--seed", type=int, default=None, help="random seed (>= 0; 0 is a valid seed; none: unseeded)")
    parser.add_argument("--source-domains", type=str, nargs="+", help="source domains (kept for Dassl compatibility)")
    parser.add_argument("--target-domains", type=str, nargs="+", help="target domains (kept for Dassl compatibility)")
    parser.add_argument("--transforms", type=str, nargs="+", help="data augmentation methods")
    parser.add_argument("--config-file", type=str, default="",
                        help="trainer config: a .yaml file, or a shipped one (LLU/toy, configs/trainers/LLU/toy.yaml)")
    parser.add_argument("--dataset-config-file", type=str, default="",
                        help="dataset config: a .yaml file, or a shipped one (shapes, configs/datasets/shapes.yaml)")
    parser.add_argument("--trainer", type=str, default="", help="trainer name, e.g. LLU")
    parser.add_argument("--backbone", type=str, default="", help="CLIP model name or weights file")
    parser.add_argument("--head", type=str, default="", help="unused; kept for Dassl compatibility")
    parser.add_argument("--eval-only", action="store_true", help="evaluate only")
    parser.add_argument("--model-dir", type=str, default="", help="load the model from this output folder")
    parser.add_argument("--load-epoch", type=int, help="load the checkpoint of this epoch")
    parser.add_argument("--no-train", action="store_true", help="build everything but do not train")
    parser.add_argument("opts", default=None, nargs=argparse.REMAINDER, help="KEY VALUE (or KEY=VALUE) pairs overriding the config")
    return parser


def main(args):
    notes = []  # printed once the run's log.txt is open, so that it holds them too
    cfg = setup_cfg(args, notes)
    check_command(cfg, args)
    if not cfg.OUTPUT_DIR:
        return run(cfg, args, notes)
    with folder_lock(cfg.OUTPUT_DIR):
        if getattr(args, "overwrite", False):
            from llu.engine.trainer import clear_run_folder
            clear_run_folder(cfg.OUTPUT_DIR)
        with run_log(cfg.OUTPUT_DIR):
            run(cfg, args, notes)


def run(cfg, args, notes=()):
    """One run of a frozen config, logged by the caller."""
    for note in notes:
        print(note)
    if cfg.SEED >= 0:
        print(f"Setting fixed seed: {cfg.SEED}")
        engine.set_random_seed(cfg.SEED)
    import torch
    if torch.cuda.is_available() and cfg.USE_CUDA:
        torch.backends.cudnn.benchmark = True
    # The whole record of the run goes to its log.txt, as in Dassl; the console stays readable.
    log_only("** Arguments **")
    log_only("\n".join(f"{key}: {getattr(args, key)}" for key in sorted(vars(args))))
    log_only("** Config **")
    log_only(str(cfg))
    log_only("** System info **")
    log_only(engine.collect_env_info())

    trainer = engine.build_trainer(cfg)
    with trainer.logged():  # the run's trackers (LOG.BACKENDS) end with it, as failed if it raises
        if args.eval_only:
            trainer.load_model(args.model_dir, epoch=args.load_epoch)
            trainer.test()
            return
        if not args.no_train:
            trainer.train()


def cli(argv=None, prog=None):
    signal.signal(signal.SIGTERM, raise_terminated)  # a scheduler's stop: save what can be resumed
    return exit_on_user_error(main, build_parser(prog).parse_args(argv))


if __name__ == "__main__":
    cli()
