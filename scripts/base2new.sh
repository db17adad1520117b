#!/usr/bin/env bash
# Base-to-new generalisation (the paper's Table 1): `llu sweep base2new` (llu/protocols.py), then its
# tables. Settings from the environment or as flags (`llu sweep --help`): DATA, DATASETS, CFG,
# TRAINERS, SEEDS, SHOTS, OUTPUT, OPTS, JOBS, LAUNCHER (+ LLU_SLURM_*), DRY_RUN=1; PYTHON runs it.
#
#   bash scripts/base2new.sh                                       # built-in world (shapes, toy)
#   DATA=/data DATASETS="imagenet caltech101" CFG=vit_b16 bash scripts/base2new.sh
#   DRY_RUN=1 bash scripts/base2new.sh                             # print the runs, run nothing
PYTHONPATH="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)${PYTHONPATH:+:$PYTHONPATH}" \
    exec "${PYTHON:-python}" -m llu sweep base2new "$@"
