"""Moved to ``llu.report.render`` (a results table as one record, one renderer per format); this name
stays for bench/bench_step_time.py and tests/test_bench.py until they import from there."""
from llu.report.render import FORMATS, Row, Stat, Table, csv_text, document, latex, markdown, terminal  # noqa: F401
