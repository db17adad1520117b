#!/usr/bin/env bash
# Cross-dataset generalisation (the paper's Table 2): `llu sweep xd`, train on all classes of SOURCE
# (default shapes), evaluate on each of TARGETS (default patterns); the tables of OUTPUT/transfer.
# Settings as scripts/base2new.sh, plus SOURCE and TARGETS.
#
#   bash scripts/xd.sh                                             # shapes -> patterns
#   DATA=/data CFG=vit_b16 SOURCE=imagenet TARGETS="caltech101 oxford_pets stanford_cars \
#       oxford_flowers food101 fgvc_aircraft sun397 dtd eurosat ucf101" bash scripts/xd.sh
PYTHONPATH="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)${PYTHONPATH:+:$PYTHONPATH}" \
    exec "${PYTHON:-python}" -m llu sweep xd "$@"
