"""``python -m intrafusion``: see :mod:`intrafusion.cli`."""

import sys

from .cli import main

sys.exit(main())
