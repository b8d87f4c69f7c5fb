"""Where the toolkit's own files are: the repository, its vm-scripts and bin folders.

Every module that ships a file to a VM or names a bin/ script asks here, so moving
or packaging them is a change in one place.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
REPO = PACKAGE.parent
# A git checkout has bin/ and vm-scripts/ next to lib/; an installed package carries them inside
# lib/ (pyproject.toml maps them there as package data).
CHECKOUT = (REPO / "vm-scripts").is_dir() and (REPO / "bin").is_dir()
BIN = REPO / "bin" if CHECKOUT else PACKAGE / "bin"
VM_SCRIPTS = REPO / "vm-scripts" if CHECKOUT else PACKAGE / "vm_scripts"

# Staged with every run-staged run (_uploads/RUN/vm-scripts/) and fetched by startup.sh.
STAGED_SCRIPTS = ("lib.sh", "run_analysis.sh")
# Copied over ssh to a VM of the ssh pipelines (build, run) for `vm push`, abort and emergency.
SSH_TOOLS = ("push.sh", "lib.sh", "kill_opensees.sh")


def vm_script(name: str) -> Path:
    """The path of one script in vm-scripts/."""
    return VM_SCRIPTS / name
