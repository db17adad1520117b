"""The ``llu`` command: one entry point, a subcommand per job. Each subcommand's module is imported
only when it runs, so ``llu --help`` and every argument error answer without importing torch.

    llu train ...            one run, CoOp's flags (``python train.py`` is the same command)
    llu sweep base2new       a protocol's runs, then its tables (``bash scripts/base2new.sh``)
    llu report DIR           every results.json under DIR -> tables and figures (``parse_results.py``)
    llu predict ...          classify images with a trained model and any class names
    llu export RUN OUT       a trained model as a self-contained folder
    llu compose RUN ... --output-dir BANK   trained LLU runs as one model (LLUBank)
    llu cache list|clear     the feature cache
    llu world generate       the built-in world's datasets, where you ask for them
"""
import importlib
import os
import sys


def lazily(module, function):
    """A command that imports ``module`` only when it runs (``llu --help`` imports no torch)."""
    def command(argv, prog):
        return getattr(importlib.import_module(module), function)(argv, prog=prog)
    return command


def world(argv, prog):
    if argv[:1] != ["generate"]:
        print("usage: llu world generate [--root DIR] [--datasets NAME ...]\n\nerror: the one world command is "
              "'generate'", file=sys.stderr)
        return 2
    from llu.world.generate import main
    return main(argv[1:], prog=f"{prog} generate")


def cache(argv, prog):
    from llu.trainers.feature_cache import main
    from llu.utils import exit_on_user_error
    return exit_on_user_error(main, argv, prog=prog)


COMMANDS = {
    "train": (lazily("llu.train", "cli"), "one run: train (or evaluate) a trainer on a dataset, CoOp's flags"),
    "sweep": (lazily("llu.sweep", "cli"), "a protocol (base2new, fewshot, xd, dg, ablation, multidataset): its runs, then its tables"),
    "report": (lazily("llu.report", "main"), "every results.json under a folder -> Tables 1-4, Figures 2-3"),
    "predict": (lazily("llu.predict", "cli"), "classify images with a trained model and any class names"),
    "export": (lazily("llu.export", "cli"), "a trained model as a self-contained folder (config.json + model.safetensors)"),
    "cache": (cache, "list or clear the feature cache"),
    "compose": (lazily("llu.trainers.llu_bank", "cli"), "trained LLU runs composed into one model (LLUBank), without retraining"),
    "world": (world, "generate the built-in world's datasets (in $LLU_CACHE/world, or --root DIR)"),
}


def usage():
    from llu import __version__
    width = max(map(len, COMMANDS))
    lines = [f"usage: llu COMMAND [ARGS ...]   (llu {__version__})", "",
             "Few-shot fine-tuning of CLIP without losing its zero-shot ability: LLU beside CoOp, CoCoOp, "
             "ProGrad, CLIP-Adapter and Tip-Adapter.", "", "commands:"]
    lines += [f"  {name:<{width}}  {what}" for name, (_, what) in COMMANDS.items()]
    lines += ["", "`llu COMMAND --help` describes a command; the README has examples."]
    return "\n".join(lines)


def main(argv=None):
    try:
        return dispatch(sys.argv[1:] if argv is None else list(argv))
    except BrokenPipeError:  # `llu ... | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def dispatch(argv):
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from llu import __version__
        print(f"llu {__version__}")
        return 0
    command = COMMANDS.get(argv[0])
    if command is None:
        print(f"{usage()}\n\nerror: unknown command {argv[0]!r}; one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    return command[0](argv[1:], prog=f"llu {argv[0]}") or 0


if __name__ == "__main__":
    sys.exit(main())
