#!/usr/bin/env bash
# Ablation of LLU's design choices (the paper's Table 4): base-to-new runs of LLU with each config
# in CFGS, plus zero-shot CLIP (the "CLIP" column), into the base-to-new tree (the default config's
# runs are shared with scripts/base2new.sh). parse_results.py puts configs <CFG>_<suffix> beside
# <CFG> in Table 4.
#
#   bash scripts/ablation.sh                                       # toy, toy_no_cluster, ...
#   DATA=/data DATASETS="imagenet caltech101" CFG=vit_b16 bash scripts/ablation.sh
#   CFGS="toy toy_no_mask" bash scripts/ablation.sh
#
# Settings: as scripts/base2new.sh, plus CFGS (LLU config names; default $CFG and $CFG_<ablation>
# for the ablations of configs/trainers/LLU/, in the paper's order).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

DATASETS=${DATASETS:-shapes}
ABLATIONS="no_cluster no_damp no_mask dirac_mask no_reg rand_init linear"
CFGS=${CFGS:-$CFG $(for a in $ABLATIONS; do printf '%s_%s ' "$CFG" "$a"; done)}

for dataset in $DATASETS; do
    for shots in $SHOTS; do
        for seed in $SEEDS; do
            base2new_pair "$dataset" ZeroshotCLIP "$CFG" "$shots" "$seed"
            for cfg in $CFGS; do
                base2new_pair "$dataset" LLU "$cfg" "$shots" "$seed"
            done
        done
    done
done

finish "$OUTPUT/base2new"
