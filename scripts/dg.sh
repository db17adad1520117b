#!/usr/bin/env bash
# Domain generalisation (the paper's Table 3): train on all classes of SOURCE, then evaluate on
# domain-shifted versions of it. Ends by printing the tables of $OUTPUT/transfer (shared with
# scripts/xd.sh, which reuses the trained models).
#
#   bash scripts/dg.sh                                             # shapes -> shapes_sketch, shapes_noisy
#   DATA=/data CFG=vit_b16 SOURCE=imagenet \
#       TARGETS="imagenetv2 imagenet_sketch imagenet_a imagenet_r" bash scripts/dg.sh
#
# Settings: as scripts/base2new.sh, plus SOURCE (default shapes) and TARGETS (default
# "shapes_sketch shapes_noisy").
set -euo pipefail

# The same runs as the cross-dataset sweep, with domain-shifted targets.
TARGETS=${TARGETS:-shapes_sketch shapes_noisy} exec bash "$(dirname "${BASH_SOURCE[0]}")/xd.sh"
