"""The one grammar for run ids and VM names, so an operator (and the sweeper's log) can read any of them.

    run id    run-YYYYMMDD-HHMMSS-xxxx            (UTC; xxxx random hex)
    VM name   ops-hpc-[build-]YYYYMMDD-HHMMSS-xxxx[-xRERUN][-SHARD][-rRELAUNCH]

Analysis VMs carry no kind word (they are the common case); a fan-out shard adds its number, a spot
relaunch its number within the run, a rerun of a run's unfinished models the HHMMSS it started. Names are deterministic: the same run, shard and attempt give the same name, so a
repeated launch meets "already exists" instead of creating a second VM.
"""

from __future__ import annotations

import datetime as dt
import re
import secrets

from lib.errors import UsageError

KINDS = ("analysis", "build")
_RUN_ID = re.compile(r"[a-z0-9][a-z0-9-]{2,40}")
_VM_NAME = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")


def new_run_id(now: dt.datetime | None = None) -> str:
    """run-YYYYMMDD-HHMMSS-xxxx: sortable, unique enough, valid as a GCE label value and inside VM names."""
    now = now or dt.datetime.now(dt.timezone.utc)
    return f"run-{now:%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def check_run_id(run_id: str) -> str:
    """A run id the user gave: 3-41 lowercase letters, digits and '-' (it goes into labels and VM names)."""
    if not _RUN_ID.fullmatch(run_id or ""):
        raise UsageError(f"run id {run_id!r}: use 3-41 lowercase letters, digits and '-' (e.g. run-20260121-093000-ab12)")
    return run_id


def vm_name(run_id: str, kind: str = "analysis", shard: int | None = None, relaunch: int | None = None,
            rerun: str | None = None) -> str:
    """The VM name of a run (see the grammar above); UsageError if the result is not a valid GCE name."""
    if kind not in KINDS:
        raise UsageError(f"unknown VM kind {kind!r}: expected one of {', '.join(KINDS)}")
    short = run_id[4:] if run_id.startswith("run-") else run_id
    name = "ops-hpc-" + ("build-" if kind == "build" else "") + short
    if rerun is not None:
        name += f"-x{rerun}"
    if shard is not None:
        name += f"-{int(shard)}"
    if relaunch is not None:
        name += f"-r{int(relaunch)}"
    if not _VM_NAME.fullmatch(name):
        raise UsageError(f"VM name {name!r} from run id {run_id!r}: use lowercase letters, digits and '-' "
                         "(at most 63 characters)")
    return name
