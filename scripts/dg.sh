#!/usr/bin/env bash
# Domain generalisation (the paper's Table 3): `llu sweep dg`, xd's runs (the same trained models)
# evaluated on TARGETS (default "shapes_sketch shapes_noisy"). Settings as scripts/xd.sh.
#
#   bash scripts/dg.sh                                             # shapes -> shapes_sketch, shapes_noisy
#   DATA=/data CFG=vit_b16 SOURCE=imagenet \
#       TARGETS="imagenetv2 imagenet_sketch imagenet_a imagenet_r" bash scripts/dg.sh
PYTHONPATH="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)${PYTHONPATH:+:$PYTHONPATH}" \
    exec "${PYTHON:-python}" -m llu sweep dg "$@"
