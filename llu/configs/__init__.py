"""The shipped config files: ``datasets/<name>.yaml`` and ``trainers/<Trainer>/<name>.yaml``.

They are package data, so an installed ``llu`` finds them from any folder: a config argument is a
path when such a file exists where you stand, else a shipped file by its repository path
(``configs/trainers/LLU/toy.yaml``) or short name (``LLU/toy``, ``shapes``). In a checkout the
top-level ``configs/`` is a link to this folder, where CoOp users look for it.
"""
import os
import os.path as osp

from llu.utils import UserError

ROOT = osp.dirname(osp.abspath(__file__))
KINDS = ("datasets", "trainers")


def locate(name, kind):
    """The file a ``--config-file`` (``kind`` "trainers") or ``--dataset-config-file`` ("datasets")
    argument names: the path itself if it exists, else the shipped file it names."""
    if osp.isfile(name):
        return name
    relative = name.replace(os.sep, "/")
    if relative.startswith("configs/"):
        relative = relative[len("configs/"):]
    if not relative.startswith(f"{kind}/"):
        relative = f"{kind}/{relative}"
    if not relative.endswith((".yaml", ".yml")):
        relative += ".yaml"
    shipped = osp.join(ROOT, *relative.split("/"))
    if osp.isfile(shipped):
        return shipped
    raise UserError(f"{name}: config file not found (neither here nor among the shipped {kind} configs; "
                    f"`llu train --help` lists them)")


def shipped_datasets():
    """The names of the shipped dataset configs (``shapes``, ``imagenet``, ...)."""
    return sorted(f[:-len(".yaml")] for f in os.listdir(osp.join(ROOT, "datasets")) if f.endswith(".yaml"))


def shipped_trainers():
    """{trainer: [its shipped config names]}: every registered trainer has a folder here."""
    folder = osp.join(ROOT, "trainers")
    return {trainer: sorted(f[:-len(".yaml")] for f in os.listdir(osp.join(folder, trainer)) if f.endswith(".yaml"))
            for trainer in sorted(os.listdir(folder)) if osp.isdir(osp.join(folder, trainer))}
