"""The report: a results tree -> the paper's tables and figures (``parse_results.py``, ``llu report``).

``main(argv)`` is the command line; ``build_report`` / ``write_report`` the same from Python. See
``cli`` for what is read and written, ``records``, ``tables``, ``render`` and ``figures`` for the parts.
"""
from .cli import Report, build_report, main, write_report

__all__ = ["Report", "build_report", "main", "write_report"]
