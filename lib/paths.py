"""Where the toolkit's own files are: the repository, its vm-scripts and bin folders.

Every module that ships a file to a VM or names a bin/ script asks here, so moving
or packaging them is a change in one place.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = REPO / "bin"
VM_SCRIPTS = REPO / "vm-scripts"

# Staged with every run-staged run (_uploads/RUN/vm-scripts/) and fetched by startup.sh.
STAGED_SCRIPTS = ("lib.sh", "ops_helpers.py", "run_analysis.sh")
# Copied over ssh to a VM of the ssh pipelines (build, run) for `vm push`, abort and emergency.
SSH_TOOLS = ("push.sh", "lib.sh", "ops_helpers.py", "kill_opensees.sh")


def vm_script(name: str) -> Path:
    """The path of one script in vm-scripts/."""
    return VM_SCRIPTS / name
