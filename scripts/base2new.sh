#!/usr/bin/env bash
# Base-to-new generalisation (the paper's Table 1; CoCoOp's protocol): for each dataset x trainer x
# shots x seed, train on the base classes, then evaluate the saved model on the new classes.
# Zero-shot CLIP is evaluated on both halves. Ends by printing the tables of $OUTPUT/base2new.
#
#   bash scripts/base2new.sh                                       # built-in world (shapes, toy)
#   DATA=/data DATASETS="imagenet caltech101" CFG=vit_b16 bash scripts/base2new.sh
#   DRY_RUN=1 bash scripts/base2new.sh                             # print the plan, run nothing
#
# Settings (environment): DATA (dataset root; default the built-in world), DATASETS (default
# shapes), CFG (trainer config name, default toy), TRAINERS, SEEDS (default "1 2 3"), SHOTS
# (default 16; several values sweep shots), OUTPUT (default output), PYTHON (default python),
# OPTS (extra KEY VALUE options for every run; not part of the folder names), DRY_RUN=1,
# JOBS (runs at once), LAUNCHER (local, or submitit: Slurm jobs, one per (dataset, trainer, seed),
# with LLU_SLURM_PARTITION, _GPUS, _CPUS, _MEM_GB, _TIME_MIN, _ACCOUNT, _EXTRA; see llu/sweep.py).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

DATASETS=${DATASETS:-shapes}
TRAINERS=${TRAINERS:-ZeroshotCLIP CoOp CoCoOp ProGrad CLIP_Adapter LLU}

for dataset in $DATASETS; do
    for shots in $SHOTS; do
        for trainer in $TRAINERS; do
            for seed in $SEEDS; do
                base2new_pair "$dataset" "$trainer" "$CFG" "$shots" "$seed"
            done
        done
    done
done

finish "$OUTPUT/base2new"
