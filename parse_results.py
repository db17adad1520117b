"""Results tree -> the paper's tables and figures: ``llu.report`` (its docstring says what is read and written).

    python parse_results.py output/base2new [--out DIR] [--bench FILE] [--format md|latex|csv|terminal]
"""
import sys

from llu.report import main

if __name__ == "__main__":
    sys.exit(main())
