"""``llu predict``: classify your images among your class names with a trained model.

    llu predict --model-dir output/llu_shapes --image-dir photos/ --classes "red circle,pink heart,blue star"
    llu predict --model-dir exported/llu --images a.jpg b.png --classnames-file names.txt --output preds.csv

The model is a run folder of any trainer, an ``llu export`` folder or a backbone name (``toy``,
``ViT-B/16``: zero-shot CLIP); ``llu.load`` reads it (``llu/model.py``). Images go through the
encoder in full batches and the feature cache (the same images again are not encoded again), with
a progress bar in a terminal. One line per image on the console, or a CSV / JSON-lines file
(written atomically). Images that cannot be read are listed with the reason on stderr (and in the
file); the others are still predicted, and the exit status is 1. Torch is imported only after the
arguments are checked.
"""
import argparse
import contextlib
import json
import os
import os.path as osp
import sys

from llu.utils import UserError, exit_on_user_error, write_text

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
OUTPUT_FORMATS = (".csv", ".jsonl")


def build_parser(prog=None):
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0].strip("`: "),
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="example:\n  llu predict --model-dir output/llu_shapes --image-dir photos/ "
                                            "--classes \"red circle,pink heart\" --top-k 2")
    parser.add_argument("--model-dir", required=True,
                        help="a run folder (train.py --output-dir), an `llu export` folder, or a backbone name "
                             "(toy, ViT-B/16) for zero-shot CLIP")
    images = parser.add_mutually_exclusive_group(required=True)
    images.add_argument("--images", nargs="+", metavar="PATH", help="image files")
    images.add_argument("--image-dir", help=f"a folder of images (searched recursively: {', '.join(IMAGE_EXTENSIONS)})")
    classes = parser.add_mutually_exclusive_group(required=True)
    classes.add_argument("--classes", help='class names separated by commas: "red circle,pink heart"')
    classes.add_argument("--classnames-file", help="a text file of class names, one per line")
    parser.add_argument("--top-k", type=int, default=5, help="names per image, most probable first (default 5)")
    parser.add_argument("--output", help="write the predictions to this .csv or .jsonl file instead of the console")
    parser.add_argument("--load-epoch", type=int, help="a run folder's checkpoint of this epoch (default: its last)")
    parser.add_argument("--backbone", help="the backbone weights, where they are elsewhere than the model says "
                                           "(checked against its sha256)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 (default: a GPU when there is one and the run used it)")
    return parser


def read_classnames(args):
    if args.classes is not None:
        names = [name.strip() for name in args.classes.split(",")]
        source = "--classes"
    else:
        try:
            with open(args.classnames_file, encoding="utf-8") as f:
                names = [line.strip() for line in f]
        except OSError as e:
            raise UserError(f"--classnames-file {args.classnames_file}: cannot be read ({e.strerror or e})") from None
        names = [name for name in names if name]
        source = args.classnames_file
    if not names or not all(names):
        raise UserError(f"{source}: give at least one class name, and no empty ones")
    return names


def image_paths(args):
    if args.images:
        return list(args.images)
    folder = args.image_dir
    if not osp.isdir(folder):
        raise UserError(f"--image-dir {folder}: no such folder")
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [osp.join(root, name) for name in sorted(files)
                  if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")]
    if not found:
        raise UserError(f"--image-dir {folder}: no images ({', '.join(IMAGE_EXTENSIONS)}) in it")
    return found


def check_output(path):
    if path and not path.lower().endswith(OUTPUT_FORMATS):
        raise UserError(f"--output {path}: the file name must end in {' or '.join(OUTPUT_FORMATS)} (its format)")


def console_line(path, prediction):
    return f"{path}\t" + "\t".join(f"{label} ({probability:.1%})"
                                   for label, probability in zip(prediction.labels, prediction.probabilities))


def csv_text(rows, top_k):
    import csv
    import io
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path"] + [f"{what}_{rank}" for rank in range(1, top_k + 1) for what in ("label", "probability")]
                    + ["error"])
    for path, prediction, error in rows:
        cells = []
        if prediction is not None:
            for label, probability in zip(prediction.labels, prediction.probabilities):
                cells += [label, f"{probability:.6f}"]
        writer.writerow([path] + cells + [""] * (2 * top_k - len(cells)) + [error or ""])
    return buffer.getvalue()


def jsonl_text(rows):
    lines = []
    for path, prediction, error in rows:
        record = {"path": path}
        if prediction is not None:
            record.update(labels=prediction.labels, probabilities=prediction.probabilities)
        else:
            record["error"] = error
        lines.append(json.dumps(record))
    return "\n".join(lines) + "\n"


def main(args):
    names = read_classnames(args)
    paths = image_paths(args)
    check_output(args.output)
    if args.top_k < 1:
        raise UserError(f"--top-k must be at least 1, got {args.top_k}")
    from llu.model import Model, load
    # Notes and progress go to stderr; stdout carries the predictions alone.
    with contextlib.redirect_stdout(sys.stderr):
        model = load(args.model_dir, epoch=args.load_epoch, device=args.device, backbone=args.backbone)
        features, failures = model.image_features(paths)
        logits = model.logits_of_features(features, names)
    predictions = iter(Model.predictions_of_logits(logits, names, args.top_k))
    rows = [(path, None, failures[path]) if path in failures else (path, next(predictions), None) for path in paths]
    if args.output:
        text = csv_text(rows, min(args.top_k, len(names))) if args.output.lower().endswith(".csv") else jsonl_text(rows)
        write_text(text, args.output)
        print(f"{len(paths) - len(failures)} prediction(s) written to {args.output}", file=sys.stderr)
    else:
        for path, prediction, _ in rows:
            if prediction is not None:
                print(console_line(path, prediction))
    if failures:
        print(f"cannot read {len(failures)} of {len(paths)} image(s):", file=sys.stderr)
        for path, reason in failures.items():
            print(f"  {path}: {reason}", file=sys.stderr)
        return 1
    return 0


def cli(argv=None, prog=None):
    return exit_on_user_error(main, build_parser(prog).parse_args(argv))


if __name__ == "__main__":
    sys.exit(cli())
