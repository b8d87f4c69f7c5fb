"""Where the toolkit's own files are: the repository, its vm-scripts and bin folders.

Every module that ships a file to a VM or names a bin/ script asks here, so moving
or packaging them is a change in one place. What reaches a VM is LF-only text (`vm_text`,
`vm_script`): Git for Windows may check the scripts out with CRLF, and a CRLF startup script
dies at `set: pipefail: invalid option` on the VM, which then never reports and bills until
its guard gives up.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
REPO = PACKAGE.parent
# A git checkout has bin/ and vm-scripts/ next to lib/; an installed package carries them inside
# lib/ (pyproject.toml maps them there as package data).
CHECKOUT = (REPO / "vm-scripts").is_dir() and (REPO / "bin").is_dir()
BIN = REPO / "bin" if CHECKOUT else PACKAGE / "bin"
VM_SCRIPTS = REPO / "vm-scripts" if CHECKOUT else PACKAGE / "vm_scripts"
BATCHES = REPO / "batches" if CHECKOUT else PACKAGE / "examples"  # example.txt and the example models

# Staged with every run-staged run (_uploads/RUN/vm-scripts/) and fetched by startup.sh.
STAGED_SCRIPTS = ("lib.sh", "ops_helpers.py", "run_analysis.sh")
# Copied over ssh to a VM of the ssh pipelines (build, run) for `vm push`, abort and emergency.
SSH_TOOLS = ("push.sh", "lib.sh", "ops_helpers.py", "kill_opensees.sh")


def vm_text(text: str) -> str:
    """Text as a VM's bash must see it: LF line endings, no byte-order mark."""
    return text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")


def vm_script(name: str) -> Path:
    """The path of one script in vm-scripts/, as LF-only text.

    A CRLF checkout gets an LF copy in the temp folder (keyed by content, written atomically),
    so every caller (staging, metadata, scp) ships the same LF bytes without knowing why.
    """
    source = VM_SCRIPTS / name
    data = source.read_bytes()
    if b"\r" not in data and not data.startswith(b"\xef\xbb\xbf"):
        return source
    fixed = vm_text(data.decode("utf-8")).encode("utf-8")
    folder = Path(tempfile.gettempdir()) / "ops-hpc-vm-scripts" / hashlib.sha256(fixed).hexdigest()[:16]
    target = folder / name
    if not target.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        partial = folder / f".{name}.{os.getpid()}.tmp"
        partial.write_bytes(fixed)
        os.replace(partial, target)
    return target
