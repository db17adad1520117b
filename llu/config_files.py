"""Reading the project's YAML config files: ``_BASE_: other.yaml`` (relative to the file) includes
another file first. Plain yacs (``merge_from_file``, as CoOp's ``train.py`` uses) does not know
``_BASE_``; ``python -m llu.config_files FILE`` prints the file with its bases merged in, a flat
config for such a checkout.
"""
import argparse
import os.path as osp
import sys

import yaml

from llu.utils import UserError, exit_on_user_error


def read(path):
    """The mapping in one YAML file (its ``_BASE_`` entry included)."""
    if not osp.isfile(path):
        raise UserError(f"{path}: config file not found")
    with open(path) as f:
        try:
            content = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise UserError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(content, dict):
        raise UserError(f"{path}: expected a mapping of config keys")
    return content


def chain(path, seen=()):
    """[(file, mapping without _BASE_)], the bases first."""
    if osp.abspath(path) in seen:
        raise UserError(f"{path}: includes itself through _BASE_")
    content = read(path)
    base = content.pop("_BASE_", None)
    earlier = chain(osp.join(osp.dirname(path), base), seen + (osp.abspath(path),)) if base else []
    return earlier + [(path, content)]


def _merge(into, content):
    for key, value in content.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value
    return into


def flatten(path):
    """The file's mapping with its bases merged in (later files win)."""
    merged = {}
    for _, content in chain(path):
        _merge(merged, content)
    return merged


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m llu.config_files", description=__doc__.split("\n")[0])
    parser.add_argument("config", help="a config file (its _BASE_ files are merged in)")
    args = parser.parse_args(argv)
    sys.stdout.write(yaml.safe_dump(flatten(args.config), sort_keys=False))
    return 0


if __name__ == "__main__":
    sys.exit(exit_on_user_error(main))
