"""``python -m intrafusion``: see :mod:`intrafusion.cli`."""

import os
import sys

# Before torch is imported: idle OpenMP threads sleep rather than spin (shared cores; see tests/conftest.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .cli import main  # noqa: E402

sys.exit(main())
