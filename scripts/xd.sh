#!/usr/bin/env bash
# Cross-dataset generalisation (the paper's Table 2): train on all classes of SOURCE, then evaluate
# on each of TARGETS. Ends by printing the tables of $OUTPUT/transfer (shared with scripts/dg.sh,
# which reuses the trained models).
#
#   bash scripts/xd.sh                                             # shapes -> patterns
#   DATA=/data CFG=vit_b16 SOURCE=imagenet TARGETS="caltech101 oxford_pets stanford_cars \
#       oxford_flowers food101 fgvc_aircraft sun397 dtd eurosat ucf101" bash scripts/xd.sh
#
# Settings: as scripts/base2new.sh, plus SOURCE (default shapes) and TARGETS (default patterns).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

SOURCE=${SOURCE:-shapes}
TARGETS=${TARGETS:-patterns}
TRAINERS=${TRAINERS:-ZeroshotCLIP CoOp CoCoOp ProGrad CLIP_Adapter LLU}

for shots in $SHOTS; do
    for trainer in $TRAINERS; do
        for seed in $SEEDS; do
            transfer_runs "$SOURCE" "$TARGETS" "$trainer" "$CFG" "$shots" "$seed"
        done
    done
done

finish "$OUTPUT/transfer"
