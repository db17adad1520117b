# shellcheck shell=bash
# What every sweep script shares; sourced, not run. Written once here:
#   - the settings every sweep reads from the environment, with defaults for the built-in world;
#   - run_once: one train.py run into one deterministic folder, skipped when its results.json
#     exists (a folder without results.json, e.g. from a crashed run, is run again);
#   - CoOp's number of epochs by shots for the published configs;
#   - the base-to-new pair (train on base, evaluate on new) and the transfer runs (train on all
#     classes of a source, evaluate on targets).
#   - finish: the plan is run by llu/sweep.py (JOBS workers, or LAUNCHER=submitit jobs), then the
#     tables are printed.
# DRY_RUN=1 prints each command ("+ python train.py ...") or skip ("skip DIR") instead of running it,
# in an order that works line by line (an evaluation after the training run it reads).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

abspath() {
    case $1 in
        /*) printf '%s\n' "$1" ;;
        *) printf '%s\n' "$PWD/$1" ;;
    esac
}

# The built-in world's root: engine.utils.user_cache_dir("world"), i.e. $LLU_CACHE/world or
# ~/.cache/llu/world (kept in step with it by tests/test_scripts.py).
DATA=$(abspath "${DATA:-${LLU_CACHE:-$HOME/.cache/llu}/world}")
OUTPUT=$(abspath "${OUTPUT:-output}")
CFG=${CFG:-toy}
SEEDS=${SEEDS:-1 2 3}
SHOTS=${SHOTS:-16}
PYTHON=${PYTHON:-python}
if [[ $PYTHON == */* ]]; then
    PYTHON=$(abspath "$PYTHON")  # a relative path still works after the cd below
fi
DRY_RUN=${DRY_RUN:-0}
JOBS=${JOBS:-}  # runs at once: worker processes (default 1), or submitit jobs (default: see llu/sweep.py)
LAUNCHER=${LAUNCHER:-local}  # local worker processes, or submitit (Slurm when there, else its local executor)
PLAN_FILE=$(mktemp "${TMPDIR:-/tmp}/llu-plan.XXXXXX")
trap 'rm -f "$PLAN_FILE"' EXIT
# Extra KEY VALUE options appended to every train.py run (e.g. "FEATURES.CACHE_DIR /scratch/features").
# They do not enter the output folder names: change OUTPUT when they change what a run computes.
read -r -a EXTRA_OPTS <<< "${OPTS:-}"
# Trainers evaluated without training (their "training" run is an evaluation).
EVAL_ONLY_TRAINERS=${EVAL_ONLY_TRAINERS:-ZeroshotCLIP ZeroshotCLIP2}
# Trainers whose epochs follow CoOp's schedule by shots in the published configs (CoCoOp keeps its
# 10 epochs, Tip-Adapter its own; zero-shot CLIP trains nothing).
COOP_SCHEDULE_TRAINERS=${COOP_SCHEDULE_TRAINERS:-CoOp ProGrad CLIP_Adapter LLU}

# Config paths are relative to the repository, as in CoOp: results.json records them that way.
cd "$REPO"

contains() {  # contains WORD "LIST": is WORD one of the space-separated LIST?
    [[ " $2 " == *" $1 "* ]]
}

# CoOp's epochs by shots (1: 50, 2-4: 100, 8-16: 200; ImageNet 50 for any shots), as trailing
# options for train.py; nothing for the built-in world's configs (toy*), which set their own, and
# for trainers not in COOP_SCHEDULE_TRAINERS.
epoch_opts() {  # epoch_opts DATASET TRAINER CFG SHOTS
    local dataset=$1 trainer=$2 cfg=$3 shots=$4 epochs
    if [[ $cfg == toy* ]] || ! contains "$trainer" "$COOP_SCHEDULE_TRAINERS"; then
        return 0
    fi
    if [[ $dataset == imagenet ]]; then
        epochs=50
    elif ((shots <= 1)); then
        epochs=50
    elif ((shots <= 4)); then
        epochs=100
    else
        epochs=200
    fi
    printf '%s\n' OPTIM.MAX_EPOCH "$epochs"
}

# ProGrad's lambda as its README publishes it: 0.8 for 8 and 16 shots on Flowers102, DTD and
# EuroSAT, 1.0 (its config's) elsewhere.
prograd_opts() {  # prograd_opts DATASET TRAINER SHOTS
    local dataset=$1 trainer=$2 shots=$3
    if [[ $trainer == ProGrad ]] && contains "$dataset" "oxford_flowers dtd eurosat" && ((shots >= 8)); then
        printf '%s\n' TRAINER.PROGRAD.LAMBDA 0.8
    fi
}

# run_once OUTDIR ARGS...: add "train.py ARGS into OUTDIR" to the plan (DRY_RUN=1: print it), or
# say that OUTDIR/results.json exists. run_plan then runs the plan.
run_once() {
    local out=$1
    shift
    if [[ -f $out/results.json ]]; then
        echo "skip $out (results.json exists)"
        return 0
    fi
    local line
    line=$(printf ' %q' "$PYTHON" train.py --output-dir "$out" "$@")
    if [[ $DRY_RUN == 1 ]]; then
        printf '+%s\n' "$line"
    else
        printf '%s\n' "${line# }" >> "$PLAN_FILE"
    fi
}

# Run the plan (llu/sweep.py: JOBS worker processes, each running many runs; an evaluation after
# the training run it reads; a failed run does not stop the others), then print the tables of
# TREE; the exit status is the sweep's.
finish() {  # finish TREE
    local status=0
    if [[ $DRY_RUN != 1 ]]; then
        "$PYTHON" -m llu.sweep --launcher "$LAUNCHER" ${JOBS:+--jobs "$JOBS"} "$PLAN_FILE" || status=$?
    fi
    if [[ $status == 0 || -n $(find "$1" -name results.json -print -quit 2>/dev/null) ]]; then
        print_tables "$1" || status=$((status ? status : $?))
    fi
    return "$status"
}

# The options every run of DATASET with TRAINER and CFG starts with.
common_opts() {  # common_opts DATASET TRAINER CFG SEED
    printf '%s\n' --root "$DATA" --seed "$4" --trainer "$2" \
        --dataset-config-file "configs/datasets/$1.yaml" --config-file "configs/trainers/$2/$3.yaml"
}

# Train (or, for EVAL_ONLY_TRAINERS, evaluate) into OUTDIR with the extra options given.
train_once() {  # train_once OUTDIR DATASET TRAINER CFG SHOTS SEED [KEY VALUE ...]
    local out=$1 dataset=$2 trainer=$3 cfg=$4 shots=$5 seed=$6
    shift 6
    local base_opts extra=()
    mapfile -t base_opts < <(common_opts "$dataset" "$trainer" "$cfg" "$seed")
    if contains "$trainer" "$EVAL_ONLY_TRAINERS"; then
        extra=(--eval-only)
    fi
    local published
    mapfile -t published < <(epoch_opts "$dataset" "$trainer" "$cfg" "$shots"; prograd_opts "$dataset" "$trainer" "$shots")
    run_once "$out" "${base_opts[@]}" "${extra[@]}" DATASET.NUM_SHOTS "$shots" "$@" "${published[@]}" "${EXTRA_OPTS[@]}"
}

# Evaluate the model saved in MODEL_DIR into OUTDIR (for zero-shot CLIP, MODEL_DIR holds no
# checkpoint; passing it records which run's data the evaluation belongs to).
eval_once() {  # eval_once OUTDIR MODEL_DIR DATASET TRAINER CFG SHOTS SEED [KEY VALUE ...]
    local out=$1 model_dir=$2 dataset=$3 trainer=$4 cfg=$5 shots=$6 seed=$7
    shift 7
    local base_opts
    mapfile -t base_opts < <(common_opts "$dataset" "$trainer" "$cfg" "$seed")
    run_once "$out" "${base_opts[@]}" --eval-only --model-dir "$model_dir" DATASET.NUM_SHOTS "$shots" "$@" \
        "${EXTRA_OPTS[@]}"
}

# One base-to-new run: train on the base classes, evaluate that model on the new classes.
# Folders: $OUTPUT/base2new/{train_base,test_new}/<dataset>/shots_<K>/<trainer>/<cfg>/seed<S>
base2new_pair() {  # base2new_pair DATASET TRAINER CFG SHOTS SEED
    local dataset=$1 trainer=$2 cfg=$3 shots=$4 seed=$5
    local tail="$dataset/shots_$shots/$trainer/$cfg/seed$seed"
    local train_dir="$OUTPUT/base2new/train_base/$tail"
    train_once "$train_dir" "$dataset" "$trainer" "$cfg" "$shots" "$seed" DATASET.SUBSAMPLE_CLASSES base
    eval_once "$OUTPUT/base2new/test_new/$tail" "$train_dir" "$dataset" "$trainer" "$cfg" "$shots" "$seed" \
        DATASET.SUBSAMPLE_CLASSES new
}

# Train on all classes of SOURCE, then evaluate that model on each target (Tables 2 and 3 share
# these trained models). Folders: $OUTPUT/transfer/<source>/train/shots_<K>/<trainer>/<cfg>/seed<S>
# and $OUTPUT/transfer/<source>/test/<target>/shots_<K>/<trainer>/<cfg>/seed<S>
transfer_runs() {  # transfer_runs SOURCE "TARGETS" TRAINER CFG SHOTS SEED
    local source=$1 targets=$2 trainer=$3 cfg=$4 shots=$5 seed=$6 target
    local tail="shots_$shots/$trainer/$cfg/seed$seed"
    local train_dir="$OUTPUT/transfer/$source/train/$tail"
    train_once "$train_dir" "$source" "$trainer" "$cfg" "$shots" "$seed" DATASET.SUBSAMPLE_CLASSES all
    for target in $targets; do
        eval_once "$OUTPUT/transfer/$source/test/$target/$tail" "$train_dir" "$target" "$trainer" "$cfg" \
            "$shots" "$seed" DATASET.SUBSAMPLE_CLASSES all
    done
}

# The tables of a results tree (printed as the commands are, under DRY_RUN).
print_tables() {  # print_tables TREE
    local cmd=("$PYTHON" parse_results.py "$1")
    if [[ $DRY_RUN == 1 ]]; then
        printf '+'
        printf ' %q' "${cmd[@]}"
        printf '\n'
        return 0
    fi
    "${cmd[@]}"
}
