"""``llu export RUN OUT``: a trained model as a self-contained folder in the Hugging Face layout.

    llu export output/llu_shapes exported/llu_shapes
    python -c "import llu; print(llu.load('exported/llu_shapes'))"

``OUT/config.json`` says what the model is: the trainer, the backbone (its name and the sha256 of
its weights, checked when it is loaded), the preprocessing, the class-text templates, the method's
settings and the training classes. ``OUT/model.safetensors`` holds only the learned tensors (and
LLU's anchors); nothing in the folder is a pickle. ``llu.load(OUT)`` (``llu.model.Model.from_pretrained``)
reads it with no run folder and no config file; an LLU export is also
``LocalizedLinearAdapter.from_pretrained(OUT)``. A backbone whose weights cannot be identified is
refused, as the folder could then be loaded with other weights than it was trained with.
"""
import argparse
import os
import os.path as osp
import sys

from llu.utils import UserError, exit_on_user_error, read_json

EXPORTED_FILES = ("config.json", "model.safetensors", "README.md")


def build_parser(prog=None):
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0].strip("`: "),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a run folder (train.py --output-dir)")
    parser.add_argument("out", help="the folder to write (config.json, model.safetensors, README.md)")
    parser.add_argument("--load-epoch", type=int, help="the run's checkpoint of this epoch (default: its last)")
    return parser


def check_destination(out):
    """OUT may be new, empty, or an earlier export (overwritten); anything else is kept and refused."""
    if not osp.exists(out):
        return
    if not osp.isdir(out):
        raise UserError(f"{out}: exists and is not a folder")
    others = sorted(set(os.listdir(out)) - set(EXPORTED_FILES))
    if others:
        raise UserError(f"{out}: holds other files ({', '.join(others[:3])}); export into a new or empty folder")
    config = osp.join(out, "config.json")
    if osp.isfile(config):
        from llu.model import EXPORT_FORMAT
        try:
            record = read_json(config)
        except UserError:
            record = None
        if not isinstance(record, dict) or record.get("format") != EXPORT_FORMAT:
            raise UserError(f"{config}: not an earlier llu export; export into a new or empty folder")


def export(run, out, epoch=None):
    """Write ``run``'s model to ``out``; returns the loaded model."""
    if osp.abspath(run) == osp.abspath(out):
        raise UserError(f"{out}: is the run folder itself; export into another folder")
    if not osp.isdir(run):
        raise UserError(f"{run}: no such run folder")
    check_destination(out)
    from llu.model import load_run
    model = load_run(run, epoch=epoch)
    model.export_record()  # refuses an unidentifiable backbone before anything is written
    model.save_pretrained(out)
    return model


def main(args):
    model = export(args.run, args.out, args.load_epoch)
    module, tensors, _ = model.learned_state()
    size = sum(tensor.numel() * tensor.element_size() for tensor in tensors.values())
    print(f"Exported {model.trainer_name} ({len(tensors)} learned tensor(s), {size / 1e6:.2f} MB) on "
          f"{model.backbone.backbone_name} to {args.out}; load it with llu.load({args.out!r})")
    return 0


def cli(argv=None, prog=None):
    return exit_on_user_error(main, build_parser(prog).parse_args(argv))


if __name__ == "__main__":
    sys.exit(cli())
