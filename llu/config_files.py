"""Reading the project's YAML config files: ``_BASE_: other.yaml`` (relative to the file) includes
another file first. Plain yacs (``merge_from_file``, as CoOp's ``train.py`` uses) does not know
``_BASE_``; ``python -m llu.config_files FILE`` prints the file with its bases merged in, a flat
config for such a checkout.

A file is read as plain data only (no Python tags), bounded before anything is expanded: nesting
(``MAX_DEPTH``), values with aliases expanded (``MAX_NODES``: a YAML alias bomb is stopped while it
is parsed) and bytes (``MAX_BYTES``); keys are names, ``_BASE_`` a path. Anything else is one line
naming the file.
"""
import argparse
import os.path as osp
import sys

import yaml

from llu.utils import UserError, exit_on_user_error

MAX_DEPTH = 32  # mappings and lists nested deeper than this are refused (the project's go 3 deep)
MAX_NODES = 100_000  # values a file may hold once its aliases are expanded (a config holds a few hundred)
MAX_BYTES = 10 * 2 ** 20  # a config file larger than this is refused unread


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader that, while composing (before anything is constructed or expanded), counts
    how deep the nodes nest and how many values the document holds with every alias expanded; an
    alias to a node that is not finished (one that contains itself) is refused. A YAML alias bomb
    (each level aliasing the one before nine times) is thus stopped after a few hundred nodes, and a
    mapping nested thousands deep before Python's recursion limit."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0
        self._sizes = {}  # id(node) -> values below it with aliases expanded; only finished nodes

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            node = self.anchors.get(event.anchor)
            if node is not None and id(node) not in self._sizes:
                raise yaml.composer.ComposerError(None, None, f"alias *{event.anchor} refers to a value that "
                                                              f"contains it", event.start_mark)
            return super().compose_node(parent, index)
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise yaml.composer.ComposerError(None, None, f"nested more than {MAX_DEPTH} deep",
                                              self.peek_event().start_mark)
        node = super().compose_node(parent, index)
        self._depth -= 1
        if isinstance(node, yaml.MappingNode):
            size = 1 + sum(self._sizes[id(k)] + self._sizes[id(v)] for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            size = 1 + sum(self._sizes[id(item)] for item in node.value)
        else:
            size = 1
        if size > MAX_NODES:
            raise yaml.composer.ComposerError(None, None, f"holds more than {MAX_NODES:,} values with its aliases "
                                                          f"expanded (an alias bomb?)", node.start_mark)
        self._sizes[id(node)] = size
        return node


def _one_line(error):
    """A YAML error as one line: what is wrong and where (line, column)."""
    mark = getattr(error, "problem_mark", None)
    if isinstance(error, yaml.MarkedYAMLError) and mark is not None:
        what = "; ".join(filter(None, (error.context, error.problem)))
        return " ".join(f"{what} at line {mark.line + 1}, column {mark.column + 1}".split())
    return " ".join(str(error).split())


def load_yaml(stream, path):
    """The document in a YAML ``stream`` (text or a file), read with ``_BoundedLoader``: only plain data
    (no Python tags), bounded in depth and size; one line naming ``path`` if it is not that."""
    try:
        loader = _BoundedLoader(stream)
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({_one_line(e)})") from None
    except (ValueError, TypeError, OverflowError, RecursionError) as e:  # a scalar PyYAML cannot make
        raise UserError(f"{path}: not valid YAML ({type(e).__name__}: {_one_line(e)[:200]})") from None


def read_run_config(path, what="the run's config", section="DATASET"):
    """The saved ``config.yaml`` of a run (``what`` names its role in the one line that refuses it):
    bounded YAML, a mapping with ``section``."""
    try:
        with open(path) as f:
            content = load_yaml(f, path)
    except OSError as e:
        raise UserError(f"{path}: {what} cannot be read ({e.strerror})") from None
    except UserError as e:  # "<path>: not valid YAML (...)"
        raise UserError(f"{path}: {what} cannot be read ({str(e).removeprefix(f'{path}: ')})") from None
    if not isinstance(content, dict) or not isinstance(content.get(section), dict):
        raise UserError(f"{path}: not a run's config (no {section} section); is it the folder of an `llu train` run?")
    return content


def _check_keys(mapping, path, prefix=""):
    """Every key of a config mapping, at every level, is a name (a string without '.')."""
    for key, value in mapping.items():
        if not isinstance(key, str) or not key or "." in key:
            raise UserError(f"{path}: key {prefix}{key!r}: config keys must be names (strings without '.'; "
                            f"nest mappings for sections)")
        if isinstance(value, dict):
            _check_keys(value, path, f"{prefix}{key}.")


def read(path):
    """The mapping in one YAML file (its ``_BASE_`` entry included)."""
    if not osp.isfile(path):
        raise UserError(f"{path}: config file not found")
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as e:
        raise UserError(f"{path}: cannot be read ({e.strerror or e})") from None
    if len(data) > MAX_BYTES:
        raise UserError(f"{path}: larger than {MAX_BYTES // 2 ** 20} MiB; not a config file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not valid YAML (not UTF-8 text: {e.reason} at byte {e.start})") from None
    content = load_yaml(text, path)
    if content is None:
        content = {}
    if not isinstance(content, dict):
        raise UserError(f"{path}: expected a mapping of config keys, got {type(content).__name__}")
    _check_keys(content, path)
    base = content.get("_BASE_")
    if base is not None and not isinstance(base, str):
        raise UserError(f"{path}: key _BASE_ must be the path of another config file (a string), got {base!r:.100}")
    return content


def chain(path, seen=()):
    """[(file, mapping without _BASE_)], the bases first."""
    if osp.abspath(path) in seen:
        raise UserError(f"{path}: includes itself through _BASE_")
    if len(seen) >= MAX_DEPTH:
        raise UserError(f"{path}: more than {MAX_DEPTH} files deep in _BASE_ includes")
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
