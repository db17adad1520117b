#!/usr/bin/env bash
# Accuracy against the number of shots (the paper's Figure 2): the base-to-new sweep over
# SHOTS="1 2 4 8 16". Same settings as scripts/base2new.sh, into the same tree, so runs already
# done there (16 shots) are skipped; parse_results.py draws figure2_fewshot.png.
#
#   bash scripts/fewshot.sh
#   DATA=/data DATASETS="imagenet caltech101" CFG=vit_b16 bash scripts/fewshot.sh
set -euo pipefail
export SHOTS=${SHOTS:-1 2 4 8 16}
exec bash "$(dirname "${BASH_SOURCE[0]}")/base2new.sh"
