"""Re-check pulled sets: against GCS while the objects are there, else their MANIFEST.json, else what the pull recorded."""

from __future__ import annotations

import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lib import manifest, retry, safepaths, storage
from lib.config import Config
from lib.downloads import Tracker
from lib.results.listing import PUSH_MARKER, Listing, Obj, ResultSet, list_sets


@dataclass
class Verified:
    id: str
    source: str  # gcs | manifest | recorded | none
    differences: list[str] = field(default_factory=list)
    note: str = ""


def verify(cfg: Config | None, folder: Path, set_ids: list[str] | None = None) -> list[Verified]:
    """Re-check local sets against GCS (while there), else their MANIFEST.json, else what the pull recorded.

    `cfg=None` means offline: manifests and recorded checksums only.
    """
    folder = Path(folder)
    state = Tracker(folder).sets()
    ids = set_ids or sorted(k for k, v in state.items() if v.get("status") in ("downloaded", "cleaned"))
    listing = list_sets(cfg) if cfg is not None else Listing([])
    in_gcs = {s.id: s for s in listing.sets}
    results = []
    for set_id in ids:
        try:
            root = safepaths.inside(folder, set_id)
        except safepaths.UnsafeName as exc:
            results.append(Verified(set_id, "none", [str(exc)]))
            continue
        results.append(_verify_one(cfg, root, set_id, in_gcs.get(set_id), state.get(set_id) or {}))
    return results


def _verify_one(cfg: Config | None, root: Path, set_id: str, s: ResultSet | None, entry: dict[str, Any]) -> Verified:
    if s is not None and s.kind == "tree":
        expected = [manifest.Expected(s.rel(o), o.size, o.crc32c, o.md5) for o in s.objects]
        return Verified(set_id, "gcs", [str(d) for d in manifest.compare(root, expected, ignore=())])
    if s is not None and cfg is not None:
        return Verified(set_id, "gcs", [str(d) for d in _compare_zip(cfg, root, s.objects[0])])
    try:
        m = manifest.read(root)
    except manifest.ManifestError as exc:
        return Verified(set_id, "manifest", [str(exc)])
    if m is not None:
        expected = manifest.expected(m)
        listed = {e.path for e in expected}  # + files the pull recorded beyond it (new versions of a file)
        expected += [manifest.Expected(p, size, crc) for p, (size, crc) in (entry.get("files") or {}).items()
                     if p not in listed and p != PUSH_MARKER]
        return Verified(set_id, "manifest", [str(d) for d in manifest.compare(root, expected)])
    if entry.get("files"):
        expected = [manifest.Expected(p, size, crc) for p, (size, crc) in entry["files"].items()]
        return Verified(set_id, "recorded", [str(d) for d in manifest.compare(root, expected, ignore=())])
    if not root.is_dir():
        return Verified(set_id, "none", ["missing  (no local folder, not in GCS, nothing recorded)"])
    return Verified(set_id, "none", note="not in GCS, no MANIFEST.json and nothing recorded: cannot verify")


def _compare_zip(cfg: Config, root: Path, obj: Obj) -> list[manifest.Difference]:
    """Compare a local folder with a zip still in GCS, reading only the zip's central directory (ranged reads)."""
    blob = storage.bucket(cfg).blob(obj.name, generation=obj.generation)

    def members() -> list[zipfile.ZipInfo]:
        with blob.open("rb", chunk_size=1 << 20, retry=None) as fh, zipfile.ZipFile(fh) as zf:
            return zf.infolist()

    try:
        infos = [i for i in retry.call(members) if not i.is_dir()]
    except zipfile.BadZipFile as exc:
        return [manifest.Difference(obj.name, "differs", f"not a readable zip in GCS ({exc})")]
    diffs = []
    have = set(manifest.local_files(root)) if root.is_dir() else set()
    for info in infos:
        local = root / Path(*info.filename.split("/"))
        if info.filename not in have:
            diffs.append(manifest.Difference(info.filename, "missing"))
            continue
        size = local.stat().st_size
        if size != info.file_size:
            diffs.append(manifest.Difference(info.filename, "differs", f"size {size}, zip says {info.file_size}"))
            continue
        crc = 0
        with open(local, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                crc = zlib.crc32(block, crc)
        if crc != info.CRC:
            diffs.append(manifest.Difference(info.filename, "differs", f"CRC-32 {crc:08x}, zip says {info.CRC:08x}"))
    names = {i.filename for i in infos}
    diffs += [manifest.Difference(p, "extra") for p in sorted(have - names)]
    return diffs
