"""``python -m llu``: the ``llu`` command."""
import sys

from llu.cli import main

sys.exit(main())
