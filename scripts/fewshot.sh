#!/usr/bin/env bash
# Accuracy against shots (the paper's Figure 2): `llu sweep fewshot`, base2new's runs over SHOTS
# (default "1 2 4 8 16") in the same tree. Settings as scripts/base2new.sh.
#
#   bash scripts/fewshot.sh
#   DATA=/data DATASETS="imagenet caltech101" CFG=vit_b16 bash scripts/fewshot.sh
PYTHONPATH="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)${PYTHONPATH:+:$PYTHONPATH}" \
    exec "${PYTHON:-python}" -m llu sweep fewshot "$@"
