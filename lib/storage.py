"""Cloud Storage calls, each through the one retry policy (lib/retry.py).

The library's own retries are switched off (`retry=None`) so `retry.call` owns
them. Writes are made idempotent before they are retried: an upload carries
`if_generation_match` (0 = "only if absent", or the generation we saw), and a
delete carries the generation we verified, so a retry after a lost response
can never overwrite or delete something newer.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import google_crc32c

from lib import clients, errors, retry
from lib.config import Config
from lib.log import Log, quiet

CHUNK = 8 << 20


def crc32c_file(path: Path) -> str:
    """Base64 CRC32C of a file, in the form GCS reports it (`Blob.crc32c`)."""
    crc = google_crc32c.Checksum()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            crc.update(block)
    return base64.b64encode(crc.digest()).decode()


def client(cfg: Config) -> Any:
    return clients.storage(clients.resolve(cfg))


def bucket(cfg: Config) -> Any:
    return client(cfg).bucket(cfg.bucket_name)


def ensure_bucket(cfg: Config, on_log: Log = quiet) -> bool:
    """Create the bucket if missing, with uniform access and public access prevention; True if created."""
    from google.api_core import exceptions as gexc

    gcs = client(cfg)
    try:
        retry.google(gcs.get_bucket, cfg.bucket_name)
        return False
    except gexc.NotFound:
        pass
    except gexc.Forbidden as exc:
        known = errors.explain(exc, what=f"bucket gs://{cfg.bucket_name}") or errors.OpsError(str(exc))
        raise type(known)(f"{known} (or the name belongs to someone else: choose another with OPS_HPC_BUCKET)") from None
    b = gcs.bucket(cfg.bucket_name)
    b.iam_configuration.uniform_bucket_level_access_enabled = True
    b.iam_configuration.public_access_prevention = "enforced"
    try:
        retry.google(gcs.create_bucket, b, location=cfg.region_name)
    except gexc.Conflict:
        return False  # created meanwhile by a concurrent call: same outcome
    on_log(f"created bucket gs://{cfg.bucket_name} (uniform access, public access prevention enforced)")
    return True


def list_blobs(cfg: Config, prefix: str = "", *, delimiter: str | None = None) -> list[Any]:
    """Every object under `prefix` (all pages), with size, crc32c, md5 and generation."""
    def fetch() -> list[Any]:
        return list(client(cfg).list_blobs(cfg.bucket_name, prefix=prefix or None, delimiter=delimiter, retry=None))

    return retry.call(fetch)


def get_blob(cfg: Config, name: str) -> Any | None:
    """The object's metadata, or None if absent."""
    return retry.google(bucket(cfg).get_blob, name)


def upload_file(cfg: Config, path: Path, name: str, *, content_type: str | None = None, skip_same: bool = True) -> Any:
    """Upload unless an identical object (same CRC32C) is already there; never overwrite a newer one blindly."""
    local_crc = crc32c_file(path)
    existing = get_blob(cfg, name)
    if existing is not None and skip_same and existing.crc32c == local_crc:
        return existing
    blob = bucket(cfg).blob(name)
    generation = existing.generation if existing is not None else 0
    retry.google(blob.upload_from_filename, str(path), content_type=content_type, if_generation_match=generation,
               checksum="crc32c")
    return blob


def upload_bytes(cfg: Config, name: str, data: bytes, *, content_type: str = "text/plain") -> Any:
    """Write a small object (status files, batch descriptions), replacing whatever was there."""
    blob = bucket(cfg).blob(name)

    def write() -> None:
        existing = bucket(cfg).get_blob(name, retry=None)
        blob.upload_from_string(data, content_type=content_type, retry=None,
                                if_generation_match=existing.generation if existing else 0)

    retry.call(write)
    return blob


def download_bytes(cfg: Config, name: str) -> bytes | None:
    """A small object's content, or None if absent."""
    from google.api_core import exceptions as gexc

    try:
        return retry.google(bucket(cfg).blob(name).download_as_bytes, checksum="crc32c")
    except gexc.NotFound:
        return None


def download_range(cfg: Config, name: str, start: int, end: int | None = None) -> bytes | None:
    """Bytes start..end (inclusive, as an HTTP Range) of an object, or None if absent: follow a growing log."""
    from google.api_core import exceptions as gexc

    try:
        return retry.google(bucket(cfg).blob(name).download_as_bytes, start=start, end=end, checksum=None)
    except gexc.NotFound:
        return None


BATCH_MAX = 100  # calls per GCS JSON batch request (GCS's limit)


def delete_many(cfg: Config, objects: Sequence[tuple[str, int | None]]) -> dict[str, str]:
    """Delete (name, generation) pairs, 100 per batch request instead of one request per object.

    Each delete carries its generation precondition. Returns name -> 'deleted', 'kept' (412: replaced
    meanwhile, left in place) or 'gone' (404: already deleted, e.g. by an earlier attempt of this batch).
    Items answered 429/5xx are retried through the policy; any other error is raised once the batch is read.
    """
    from google.cloud import exceptions as gexc

    gcs = client(cfg)
    bkt = gcs.bucket(cfg.bucket_name)
    outcome: dict[str, str] = {}

    def one_batch(chunk: list[tuple[str, int | None]]) -> None:
        batch = gcs.batch(raise_exception=False)
        with batch:
            for name, generation in chunk:
                bkt.blob(name).delete(if_generation_match=generation, retry=None)
        # finish() (run by the context manager) keeps the per-item answers here, in request order
        again, failure = [], None
        for (name, generation), answer in zip(chunk, clients.batch_responses(batch), strict=True):
            status = answer.status_code
            if status in retry.RETRYABLE_HTTP_CODES:
                again.append((name, generation))
            elif status < 300 or status in (404, 412):
                outcome[name] = "deleted" if status < 300 else "gone" if status == 404 else "kept"
            else:
                failure = failure or gexc.from_http_response(answer)
        if failure is not None:
            raise failure
        if again:
            chunk[:] = again  # the retry resends only what is left
            raise gexc.ServiceUnavailable(f"{len(again)} delete(s) in a batch answered a transient error")

    for start in range(0, len(objects), BATCH_MAX):
        retry.call(one_batch, list(objects[start : start + BATCH_MAX]))
    return outcome


def delete_prefix(cfg: Config, prefix: str) -> int:
    """Delete every object under `prefix` (cleanup); returns how many."""
    done = delete_many(cfg, [(b.name, b.generation) for b in list_blobs(cfg, prefix)])
    return sum(1 for state in done.values() if state == "deleted")


def bucket_names(blobs: Iterable[Any]) -> list[str]:
    return sorted({b.name for b in blobs})
