"""``python -m twoshot``: the same command line as ``twoshot``."""

import sys

from twoshot.cli import main

sys.exit(main())
