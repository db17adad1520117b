#!/usr/bin/env bash
# LLU's ablations (the paper's Table 4): `llu sweep ablation`, base-to-new runs of LLU with each
# config in CFGS (default CFG and CFG_<ablation>, the paper's order) beside zero-shot CLIP, in the
# base-to-new tree. Settings as scripts/base2new.sh, plus CFGS.
#
#   bash scripts/ablation.sh                                       # toy, toy_no_cluster, ...
#   CFGS="toy toy_no_mask" bash scripts/ablation.sh
PYTHONPATH="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)${PYTHONPATH:+:$PYTHONPATH}" \
    exec "${PYTHON:-python}" -m llu sweep ablation "$@"
