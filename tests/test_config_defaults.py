"""The shipped trainer configs give the same run under a CoOp checkout's train.py (Dassl's defaults,
docs/dassl.md "A plugin for a CoOp checkout") as under the project's (the built-in engine's defaults).

CoOp's train.py merges a config file into Dassl's defaults, and ``llu.dassl_plugin`` adds only the keys
Dassl lacks; so every key whose Dassl default differs from the built-in one (``DASSL_DEFAULTS`` in
llu/engine/config.py) must be set by the file wherever the trainer reads it. Dassl is not on PyPI: the
first test uses the table; the second checks the table against Dassl itself where Dassl is installed.
"""
import glob
import importlib
import importlib.util
import os.path as osp
import tempfile

import pytest
import yaml

from llu import config_files, configs
from llu.utils import dotted_items
from llu.engine.config import DASSL_DEFAULTS, extend_cfg, get_cfg_default

TRAINER_CONFIGS = sorted(glob.glob(osp.join(configs.ROOT, "trainers", "*", "*.yaml")))


def trainer_classes():
    import llu.trainers
    return llu.trainers.load_all()  # every trainer module: their classes and @config_extension keys


def project_defaults():
    trainer_classes()
    return extend_cfg(get_cfg_default())


def with_dassl_defaults(cfg):
    """``cfg`` with Dassl's value for each key whose default differs: the start of CoOp's train.py."""
    for key, value in DASSL_DEFAULTS.items():
        *path, leaf = key.split(".")
        node = cfg
        for part in path:
            node = node[part]
        node[leaf] = value
    return cfg


def merged_as_coop_does(cfg, path):
    """CoOp's ``cfg.merge_from_file`` of the flattened file (yacs knows no ``_BASE_``)."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as flat:
        yaml.safe_dump(config_files.flatten(path), flat)
        flat.flush()
        cfg.merge_from_file(flat.name)
    return cfg


def value(cfg, key):
    for part in key.split("."):
        cfg = cfg[part]
    return tuple(cfg) if isinstance(cfg, list) else cfg  # yacs keeps a file's list as a list


def unread_keys(trainer_class, cfg):
    """Keys of ``DASSL_DEFAULTS`` that this run does not read, so their defaults cannot matter."""
    unread = {"TRAIN.PRINT_FREQ"}  # how often a batch's line is logged
    if not getattr(trainer_class, "trains_epochs", True):  # no optimiser, no epochs
        unread |= {key for key in DASSL_DEFAULTS if key.startswith("OPTIM.")}
    if cfg.OPTIM.WARMUP_EPOCH <= 0:  # the warm-up's type is read only with a warm-up
        unread.add("OPTIM.WARMUP_TYPE")
    return unread


def test_the_configs_are_found():
    assert len(TRAINER_CONFIGS) >= 30
    assert {osp.basename(osp.dirname(p)) for p in TRAINER_CONFIGS} <= set(trainer_classes())


@pytest.mark.parametrize("path", TRAINER_CONFIGS, ids=lambda p: osp.relpath(p, configs.ROOT))
def test_a_shipped_config_resolves_alike_on_dassls_defaults(path):
    trainer_class = trainer_classes()[osp.basename(osp.dirname(path))]
    builtin = merged_as_coop_does(project_defaults(), path)
    under_coop = merged_as_coop_does(with_dassl_defaults(project_defaults()), path)
    differing = {key: (value(builtin, key), value(under_coop, key))
                 for key in set(DASSL_DEFAULTS) - unread_keys(trainer_class, builtin)
                 if value(builtin, key) != value(under_coop, key)}
    assert not differing, (f"{osp.relpath(path, configs.ROOT)} leaves keys at their default whose Dassl "
                           f"default differs (built-in, under CoOp's train.py): {differing}; set them in the file")


@pytest.mark.skipif(importlib.util.find_spec("dassl") is None, reason="needs Dassl (docs/dassl.md)")
def test_the_table_holds_exactly_dassls_differing_defaults():
    from dassl.config import get_cfg_default as dassl_cfg_default  # only yacs: no torch, no wilds
    dassl = dict(dotted_items(dassl_cfg_default()))
    project = dict(dotted_items(project_defaults()))
    assert set(DASSL_DEFAULTS) <= set(project) & set(dassl)
    differing = {key: dassl[key] for key in set(project) & set(dassl) if dassl[key] != project[key]}
    assert differing == DASSL_DEFAULTS
