"""Staging: zip each model folder of a batch and upload it, with the batch description, under `_uploads/RUN_ID/`.

Bucket layout written here (agreed with vm-scripts/run_analysis.sh and bin/pull):
  _uploads/RUN_ID/MODEL.zip            the model folder, deterministic zip (same files -> same bytes)
  _uploads/RUN_ID/vm-scripts/*.sh      the VM code this run executes (startup.sh fetches it)
  _uploads/RUN_ID/batch.json           written last: {"format": 1, "run_id", "batch", "created",
                                       "models": [{name, main, cores, timeout_min, zip, crc32c, size, files}]}

Zips are deterministic (sorted members, fixed timestamps) and uploads are skipped when an object with
the same CRC32C is already there, so staging the same batch into the same run twice uploads nothing
the second time.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lib import paths, storage
from lib.batches import Batch, Model
from lib.config import Config
from lib.errors import UsageError
from lib.log import Log, quiet

UPLOADS = "_uploads"
ZIP_DATE = (1980, 1, 1, 0, 0, 0)
# earlier results a model folder may hold: never staged as input
SKIP_FILES = {"MANIFEST.json", "opensees.log", "download_state.json"}
SKIP_SUFFIXES = (".zip", ".part", ".pyc")
SKIP_DIRS = {"__pycache__", "results"}


def new_run_id(now: dt.datetime | None = None) -> str:
    """run-YYYYMMDD-HHMMSS-xxxx: sortable, unique enough, valid as a GCE label value and inside VM names."""
    now = now or dt.datetime.now(dt.timezone.utc)
    return f"run-{now:%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def check_run_id(run_id: str) -> str:
    import re

    if not re.fullmatch(r"[a-z0-9][a-z0-9-]{2,40}", run_id or ""):
        raise UsageError(f"run id {run_id!r}: use 3-41 lowercase letters, digits and '-' (e.g. run-20260121-093000-ab12)")
    return run_id


def vm_name(run_id: str, index: int | None = None) -> str:
    """ops-hpc-<run id without 'run-'>[-N]: the VM names of a run (N for fan-out shards and relaunches)."""
    short = run_id[4:] if run_id.startswith("run-") else run_id
    return f"ops-hpc-{short}" + (f"-{index}" if index is not None else "")


def prefix(run_id: str) -> str:
    return f"{UPLOADS}/{run_id}/"


def model_files(folder: Path) -> list[tuple[str, Path]]:
    """(posix relative path, file) of everything a model folder holds except earlier results and hidden files.

    Skipped: names starting with '.', __pycache__/ and results/ folders, any folder holding a MANIFEST.json
    (a pulled result set), *.zip / *.part / *.pyc, MANIFEST.json, opensees.log, and symlinks.
    """
    out: list[tuple[str, Path]] = []

    def walk(d: Path, rel: str) -> None:
        for entry in sorted(d.iterdir(), key=lambda p: p.name):
            name = entry.name
            if name.startswith(".") or entry.is_symlink():
                continue
            path = f"{rel}{name}"
            if entry.is_dir():
                if name in SKIP_DIRS or (entry / "MANIFEST.json").exists():
                    continue
                walk(entry, path + "/")
            elif entry.is_file() and name not in SKIP_FILES and not name.endswith(SKIP_SUFFIXES):
                out.append((path, entry))

    walk(Path(folder), "")
    return out


def zip_model(model: Model, dest: Path) -> int:
    """Write the model folder as a deterministic zip at `dest`; returns the number of files."""
    files = model_files(model.folder)
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
        for rel, path in files:
            info = zipfile.ZipInfo(rel, ZIP_DATE)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            with open(path, "rb") as src, zf.open(info, "w") as out:
                for block in iter(lambda: src.read(1 << 20), b""):
                    out.write(block)
    return len(files)


@dataclass
class Staged:
    """What staging produced: the run id and the batch description the VM reads."""

    run_id: str
    bucket: str
    description: dict[str, Any]
    uploaded: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)

    @property
    def models(self) -> list[dict[str, Any]]:
        return self.description["models"]


def _upload(cfg: Config, path: Path, name: str, content_type: str, staged: Staged) -> str:
    """Upload unless identical; returns the object's CRC32C."""
    crc = storage.crc32c_file(path)
    existing = storage.get_blob(cfg, name)
    if existing is not None and existing.crc32c == crc:
        staged.unchanged.append(name)
        return crc
    storage.upload_file(cfg, path, name, content_type=content_type)
    staged.uploaded.append(name)
    return crc


def stage(cfg: Config, batch: Batch, *, run_id: str | None = None, on_log: Log = quiet) -> Staged:
    """Zip and upload every model of `batch` (and the VM scripts) under _uploads/RUN_ID/; batch.json last."""
    run_id = check_run_id(run_id or new_run_id())
    storage.ensure_bucket(cfg, on_log)
    staged = Staged(run_id=run_id, bucket=cfg.bucket_name, description={})
    base = prefix(run_id)
    models: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="ops-hpc-stage-") as tmp:
        for model in batch.models:
            zpath = Path(tmp) / f"{model.name}.zip"
            count = zip_model(model, zpath)
            name = f"{base}{model.name}.zip"
            crc = _upload(cfg, zpath, name, "application/zip", staged)
            size = zpath.stat().st_size
            on_log(f"staged {model.name}: {count} file(s), {size} bytes -> gs://{cfg.bucket_name}/{name}")
            models.append({**model.to_json(), "zip": name, "crc32c": crc, "size": size, "files": count})
        for script in paths.STAGED_SCRIPTS:
            _upload(cfg, paths.vm_script(script), f"{base}vm-scripts/{script}", "text/x-shellscript", staged)
    description = {"format": 1, "run_id": run_id, "batch": batch.path.name, "models": models,
                   "vm_scripts": [f"{base}vm-scripts/{s}" for s in paths.STAGED_SCRIPTS]}
    old = load_description(cfg, run_id)
    if old is not None and {k: v for k, v in old.items() if k != "created"} == description:
        staged.unchanged.append(f"{base}batch.json")
        description = old
    else:
        description["created"] = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        storage.upload_bytes(cfg, f"{base}batch.json", json.dumps(description, indent=2).encode(),
                             content_type="application/json")
        staged.uploaded.append(f"{base}batch.json")
    staged.description = description
    return staged


def load_description(cfg: Config, run_id: str) -> dict[str, Any] | None:
    """A staged run's batch.json, or None when the run was never staged (or was cleaned up)."""
    raw = storage.download_bytes(cfg, f"{prefix(run_id)}batch.json")
    return None if raw is None else json.loads(raw)


def unstage(cfg: Config, run_id: str) -> int:
    """Delete a run's staged inputs (after every result came back); returns how many objects."""
    return storage.delete_prefix(cfg, prefix(run_id))
