#!/usr/bin/env bash
# Many datasets, one model (LLUBank): `llu sweep multidataset`, LLU runs on DATASETS (default shapes
# patterns) composed without retraining, against each alone, their union, sequential LLU and CoOp and
# zero-shot; evaluated on both datasets' base and new classes and on TARGETS (default shapes_sketch
# shapes_noisy); the table of OUTPUT/multidataset. Settings as scripts/base2new.sh.
PYTHONPATH="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)${PYTHONPATH:+:$PYTHONPATH}" \
    exec "${PYTHON:-python}" -m llu sweep multidataset "$@"
