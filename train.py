"""One run: command line -> config -> trainer, with CoOp's flags (``llu train`` is the same command;
the code is in ``llu/train.py``).

    python train.py --root DATA --trainer LLU --dataset-config-file configs/datasets/shapes.yaml \
        --config-file configs/trainers/LLU/toy.yaml --output-dir output/run --seed 1 \
        DATASET.NUM_SHOTS 16 DATASET.SUBSAMPLE_CLASSES base
"""
import sys

from llu.train import cli

if __name__ == "__main__":
    sys.exit(cli(prog="train.py"))
