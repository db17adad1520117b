"""LLU and the baselines CoOp lacks, plugged into a CoOp checkout that runs on the real Dassl.

One line at the top of CoOp's ``train.py``, before its ``from dassl...`` imports::

    import llu.dassl_plugin  # noqa: F401  (LLU, ProGrad, CLIP-Adapter, Tip-Adapter, KgCoOp, linear probe; docs/dassl.md)

It takes the engine's names from Dassl, registers ``PLUGIN_TRAINERS`` in Dassl's
``TRAINER_REGISTRY`` and ``PLUGIN_DATASETS`` (your own image folders, the built-in world) in its
``DATASET_REGISTRY`` (a name registered already stays as it is: CoOp's own CoOp, CoCoOp and
ZeroshotCLIP are not touched), and makes ``dassl.config.get_cfg_default()`` declare these trainers'
keys as well, adding only keys Dassl's config lacks, so that CoOp's defaults do not change.
Configs that include another with ``_BASE_`` need flattening for CoOp's ``merge_from_file``:
``python -m llu.config_files configs/trainers/LLU/toy.yaml > toy_flat.yaml``.
"""
import dassl.config

from llu import engine

PLUGIN_TRAINERS = ("ProGrad", "CLIP_Adapter", "TipAdapter", "TipAdapterF", "LLU", "KgCoOp", "LinearProbe", "MaPLe",
                   "PromptSRC", "CLIP_LoRA", "WiSEFT")
PLUGIN_DATASETS = ("ImageFolder", "Shapes", "ShapesSketch", "ShapesNoisy", "Patterns")

engine.select_backend("dassl")

import llu.datasets  # noqa: E402
import llu.trainers  # noqa: E402

skipped = llu.trainers.register_all(PLUGIN_TRAINERS, keep_existing=True)
skipped += llu.datasets.register_all(PLUGIN_DATASETS, keep_existing=True)
if skipped:
    print(f"llu.dassl_plugin: kept the already registered {', '.join(skipped)}")

_dassl_cfg_default = dassl.config.get_cfg_default


def add_missing(cfg, defaults):
    """Add the keys of ``defaults`` that ``cfg`` lacks (recursively); existing values stay."""
    for key, value in defaults.items():
        if key not in cfg:
            cfg[key] = value.clone() if isinstance(value, engine.CN) else value
        elif isinstance(value, engine.CN) and isinstance(cfg[key], engine.CN):
            add_missing(cfg[key], value)


def get_cfg_default():
    """Dassl's default config, plus the keys of the project's trainers and datasets."""
    cfg = _dassl_cfg_default()
    add_missing(cfg, engine.extend_cfg(engine.get_cfg_default()))
    return cfg


dassl.config.get_cfg_default = get_cfg_default
