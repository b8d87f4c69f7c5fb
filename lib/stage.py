"""Staging: zip each model folder of a batch and upload it, with the batch description, under `_uploads/RUN_ID/`.

Bucket layout written here (agreed with vm-scripts/run_analysis.sh and bin/pull):
  _uploads/RUN_ID/MODEL.zip            the model folder, deterministic zip (same files -> same bytes); the
                                       rows of a sweep (MODEL/ROW) share their line's zip
  _uploads/RUN_ID/shared/KEY.zip       a `shared=` folder, once per run however many models use it
  _uploads/RUN_ID/vm-scripts/*.sh      the VM code this run executes (startup.sh fetches it)
  _uploads/RUN_ID/batch.json           written last: {"format": 1, "run_id", "batch", "created",
                                       "models": [{name, main, cores, timeout_min, zip, crc32c, size, files,
                                       [args], [env], [shared, shared_link]}], ["shared": {KEY: {zip, crc32c, ...}}]}

Zips are deterministic (sorted members, fixed timestamps) and uploads are skipped when an object with
the same CRC32C is already there, so staging the same batch into the same run twice uploads nothing
the second time.
"""

from __future__ import annotations

import datetime as dt
import json
import tempfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lib import parametric, paths, storage
from lib.batches import Batch
from lib.config import Config
from lib.log import Log, quiet
from lib.naming import check_run_id, new_run_id

UPLOADS = "_uploads"
ZIP_DATE = (1980, 1, 1, 0, 0, 0)
# earlier results a model folder may hold: never staged as input
SKIP_FILES = {"MANIFEST.json", "opensees.log", "download_state.json"}
SKIP_SUFFIXES = (".zip", ".part", ".pyc")
SKIP_DIRS = {"__pycache__", "results"}


def prefix(run_id: str) -> str:
    return f"{UPLOADS}/{run_id}/"


def model_files(folder: Path) -> list[tuple[str, Path]]:
    """(posix relative path, file) of everything a model folder holds except earlier results and hidden files.

    Skipped: names starting with '.', __pycache__/ and results/ folders, any folder holding a MANIFEST.json
    (a pulled result set), *.zip / *.part / *.pyc, MANIFEST.json, opensees.log, and symlinks, except a
    symlink to a file inside the model folder (e.g. main.tcl -> variants/a.tcl), staged as that file.
    """
    out: list[tuple[str, Path]] = []
    root = Path(folder).resolve()

    def walk(d: Path, rel: str) -> None:
        for entry in sorted(d.iterdir(), key=lambda p: p.name):
            name = entry.name
            if name.startswith("."):
                continue
            if entry.is_symlink():
                if _file_inside(entry, root) and name not in SKIP_FILES and not name.endswith(SKIP_SUFFIXES):
                    out.append((f"{rel}{name}", entry.resolve()))
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


def _file_inside(link: Path, root: Path) -> bool:
    try:
        target = link.resolve(strict=True)
    except (RuntimeError, OSError):  # dangling or a loop
        return False
    return target.is_file() and root in target.parents


def zip_folder(folder: Path, dest: Path) -> int:
    """Write a folder (a model's, or a shared one) as a deterministic zip at `dest`; returns the number of files."""
    files = model_files(folder)
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
        for rel, path in files:
            info = zipfile.ZipInfo(rel, ZIP_DATE)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            with open(path, "rb") as src, zf.open(info, "w") as out:
                for block in iter(lambda: src.read(1 << 20), b""):
                    out.write(block)
    return len(files)


@dataclass(frozen=True)
class StagedModel:
    """One model entry of batch.json: what the VM runs and how it checks the staged zip."""

    name: str
    main: str
    cores: int
    timeout_min: int
    zip: str = ""
    crc32c: str = ""
    size: int = 0
    files: int = 0
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    shared: str = ""  # key of batch.json's "shared" table
    shared_link: str = ""  # the name the shared folder has inside the model's folder on the VM
    mem_gb: float = 0.0  # packed against the VM's memory (lib/packing.py)
    retries: int = 0  # re-runs of a failed model on its VM

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "main": self.main, "cores": self.cores,
                               "timeout_min": self.timeout_min, "zip": self.zip, "crc32c": self.crc32c,
                               "size": self.size, "files": self.files}
        if self.args:
            out["args"] = list(self.args)
        if self.env:
            out["env"] = dict(self.env)
        if self.shared:
            out.update(shared=self.shared, shared_link=self.shared_link)
        if self.mem_gb:
            out["mem_gb"] = self.mem_gb
        if self.retries:
            out["retries"] = self.retries
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StagedModel:
        return cls(name=str(data["name"]), main=str(data.get("main", "main.tcl")), cores=int(data.get("cores", 1)),
                   timeout_min=int(data["timeout_min"]), zip=str(data.get("zip", "")),
                   crc32c=str(data.get("crc32c", "")), size=int(data.get("size", 0)), files=int(data.get("files", 0)),
                   args=tuple(str(a) for a in data.get("args", ())),
                   env=tuple((str(k), str(v)) for k, v in dict(data.get("env", {})).items()),
                   shared=str(data.get("shared", "")), shared_link=str(data.get("shared_link", "")),
                   mem_gb=float(data.get("mem_gb") or 0), retries=int(data.get("retries") or 0))


@dataclass
class Staged:
    """What staging produced: the run id and the batch description the VM reads."""

    run_id: str
    bucket: str
    description: dict[str, Any]
    uploaded: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)

    @property
    def models(self) -> list[StagedModel]:
        return [StagedModel.from_json(m) for m in self.description["models"]]


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


def _stage_folder(cfg: Config, folder: Path, tmp: Path, name: str, staged: Staged) -> tuple[str, str, int, int]:
    """Zip a folder and upload it as `name` (unless identical); returns (object, crc32c, size, files)."""
    zpath = tmp / f"{len(staged.uploaded) + len(staged.unchanged)}.zip"
    count = zip_folder(folder, zpath)
    crc = _upload(cfg, zpath, name, "application/zip", staged)
    return name, crc, zpath.stat().st_size, count


def stage(cfg: Config, batch: Batch, *, run_id: str | None = None, retries: int = 0, on_log: Log = quiet) -> Staged:
    """Zip and upload every model of `batch` (and the VM scripts) under _uploads/RUN_ID/; batch.json last.

    retries: for the models whose line sets no retries=.
    """
    run_id = check_run_id(run_id or new_run_id())
    storage.ensure_bucket(cfg, on_log)
    staged = Staged(run_id=run_id, bucket=cfg.bucket_name, description={})
    base = prefix(run_id)
    models: list[dict[str, Any]] = []
    keys = parametric.shared_keys([m.shared for m in batch.models if m.shared is not None])
    zips: dict[str, tuple[str, str, int, int]] = {}  # zip key -> (object, crc32c, size, files): each staged once
    with tempfile.TemporaryDirectory(prefix="ops-hpc-stage-") as tmp:
        for folder, key in keys.items():
            zips[f"shared/{key}"] = _stage_folder(cfg, folder, Path(tmp), f"{base}shared/{key}.zip", staged)
            on_log(f"staged shared folder {folder.name}: {zips[f'shared/{key}'][3]} file(s) -> "
                   f"gs://{cfg.bucket_name}/{base}shared/{key}.zip (once for every model using it)")
        for model in batch.models:
            group = model.group or model.name
            if group not in zips:
                zips[group] = _stage_folder(cfg, model.folder, Path(tmp), f"{base}{group}.zip", staged)
                on_log(f"staged {group}: {zips[group][3]} file(s), {zips[group][2]} bytes -> "
                       f"gs://{cfg.bucket_name}/{zips[group][0]}")
            key = keys[model.shared] if model.shared is not None else ""
            models.append(StagedModel(model.name, model.main, model.cores, model.timeout_min, *zips[group],
                                      args=model.args, env=model.env, shared=key,
                                      shared_link=model.shared.name if model.shared is not None else "",
                                      mem_gb=model.mem_gb,
                                      retries=retries if model.retries is None else model.retries).to_json())
        for script in paths.STAGED_SCRIPTS:
            kind = "text/x-python" if script.endswith(".py") else "text/x-shellscript"
            _upload(cfg, paths.vm_script(script), f"{base}vm-scripts/{script}", kind, staged)
    description = {"format": 1, "run_id": run_id, "batch": batch.path.name, "models": models,
                   "vm_scripts": [f"{base}vm-scripts/{s}" for s in paths.STAGED_SCRIPTS]}
    if batch.cores is not None:
        description["cores"] = batch.cores  # the batch's `#cores N`: a rerun packs the same way
    if keys:
        description["shared"] = {k: dict(zip(("zip", "crc32c", "size", "files"), zips[f"shared/{k}"], strict=True))
                                 for k in keys.values()}
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


TIDY_GRACE_S = 3600.0  # a finished run's bookkeeping stays this long after its last write (late readers, `make log`)
ABANDON_S = 7 * 86400.0  # an unfinished run (preempted, lost) keeps its inputs this long for `--rerun`


def tidy_finished_runs(cfg: Config, *, grace_s: float = TIDY_GRACE_S, abandon_s: float = ABANDON_S,
                       now: float | None = None, on_log: Log = quiet) -> list[str]:
    """Remove `_uploads/RUN/`, `_status/RUN/` (+ `_status/RUN.txt`), `_logs/RUN/` and `_runs/RUN/` of runs that are over.

    From then on `ops-hpc runs` lists the run only on the PCs that launched or pulled it (their history).

    A run is over when no VM of it exists (label ops-hpc-run), none of its results waits in the bucket
    (`RUN/` is empty: all pulled), and its newest bookkeeping object is older than `grace_s`; a run whose
    statuses do not show every model finished (preempted, lost: `--rerun` needs its inputs) must also be
    older than `abandon_s`. Returns the run ids tidied. Meant for `bin/pull` after a pull and the sweeper.
    """
    import time

    from lib import compute, runstatus

    now = time.time() if now is None else now
    runs: dict[str, list[Any]] = {}
    with ThreadPoolExecutor(3) as pool:  # one round trip instead of three, after every pull
        listed = list(pool.map(lambda top: storage.list_blobs(cfg, f"{top}/"), (UPLOADS, "_status", "_logs")))
    for blobs in listed:
        for blob in blobs:
            parts = blob.name.split("/")
            if len(parts) >= 3 and parts[1]:
                runs.setdefault(parts[1], []).append(blob)
    if not runs:
        return []
    try:
        busy = {v.run_id for v in compute.list_vms(cfg)}
    except Exception as exc:  # without the VM list nothing is known to be over: remove nothing, say why
        on_log(f"not tidying finished runs: could not list VMs ({exc})")
        return []
    tidied = []
    for run_id, blobs in sorted(runs.items()):
        if run_id in busy or storage.list_blobs(cfg, f"{run_id}/"):
            continue
        newest = max((b.updated.timestamp() for b in blobs if b.updated is not None), default=now)
        age = now - newest
        if age < grace_s:
            continue
        description = load_description(cfg, run_id)
        if description is not None and age < abandon_s:
            finished = {m for s in runstatus.read_statuses(cfg, run_id).values()
                        for m, i in s.get("per_model", {}).items() if i["state"] in runstatus.FINAL}
            if any(m["name"] not in finished for m in description["models"]):
                continue
        removed = sum(storage.delete_prefix(cfg, f"{top}/{run_id}/") for top in (UPLOADS, "_status", "_logs", "_runs"))
        storage.delete_many(cfg, [(f"_status/{run_id}.txt", None)])
        on_log(f"run {run_id}: every result pulled and no VM left: removed its {removed} staged/status/log object(s)")
        tidied.append(run_id)
    return tidied
