"""Results tree -> the paper's tables and figures: ``llu.report`` (its docstring says what is read and written).

    python parse_results.py output/base2new [--out DIR] [--bench FILE] [--format md|latex|csv|terminal]
"""
import sys

from llu.report import main
from llu.report.records import load_bench  # noqa: F401  (bench/bench_step_time.py, tests/test_bench.py)
from llu.report.tables import step_time_table  # noqa: F401  (the same)

if __name__ == "__main__":
    sys.exit(main())
