"""ops-hpc's jobs for invoke: `invoke --list` shows them, each docstring is its help.

The tasks live in lib/tasks.py (so the installed `ops-hpc` command has them too); this file only
puts the repository on the import path and hands invoke the namespace. On Windows this is the
front door from a checkout (`.venv\\Scripts\\invoke demo`); on Linux/macOS the Makefile calls it.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lib.tasks import WAIT_INTERRUPTED, ns, ops_task  # noqa: F401  (invoke reads `ns`)
