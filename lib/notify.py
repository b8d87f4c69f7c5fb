"""Notifications from the PC: results pulled and verified (`notify_on` has "pulled"), to webhooks and mail.

The VM posts its own "end" and "failure" messages (vm-scripts/lib.sh `ops_notify`, same bodies from
ops_helpers.py `notify_body`), so they arrive with the PC off; this module covers what only the PC
knows: that results landed on it verified (bin/pull, its --watch, sweep --pull, run-staged --wait).

Config `notify` lists targets: webhook URLs get a JSON POST shaped for their host (Slack `text`, Discord
`content`, Teams MessageCard, ntfy JSON publish, anything else a generic object with every field);
`mailto:NAME@HOST` is mailed through `smtp_server` (port 465 SSL, 587 STARTTLS), logging in as
`smtp_user` with the password from OPS_HPC_SMTP_PASSWORD only: it is never stored or logged. A webhook
URL is a secret of sorts, so logs name only its host.

A notification never fails what it reports on: each target gets ATTEMPTS tries (connection errors,
timeouts, 429 and 5xx retried after 1 s, 2 s), TIMEOUT_S each, then one log line and on.
"""

from __future__ import annotations

import json
import os
import re
import smtplib
import socket
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from lib import retry
from lib.config import Config
from lib.log import Log, quiet

EVENTS = ("end", "failure", "pulled")
ATTEMPTS = 3
TIMEOUT_S = 10.0
PASSWORD_ENV = "OPS_HPC_SMTP_PASSWORD"


def split(value: str) -> list[str]:
    return [item for item in re.split(r"[,\s]+", value.strip()) if item]


def targets(cfg: Config) -> list[str]:
    return split(cfg.notify)


def webhooks(cfg: Config) -> list[str]:
    """The targets a VM can post to itself (mail needs the SMTP password, which never leaves the PC)."""
    return [t for t in targets(cfg) if t.startswith(("http://", "https://"))]


def wanted(cfg: Config, event: str) -> bool:
    return bool(targets(cfg)) and event in split(cfg.notify_on)


def where(target: str) -> str:
    """A target as logs may show it: a webhook's host only (its path is its secret)."""
    return target if target.startswith("mailto:") else f"webhook {urlsplit(target).hostname or '?'}"


def payload(url: str, event: str, title: str, text: str, fields: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """(URL to POST to, JSON body) for a webhook, shaped by its host. The VM's ops_helpers.notify_body matches it."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if host == "hooks.slack.com":
        return url, {"text": f"*{title}*\n{text}"}
    if host in ("discord.com", "discordapp.com") or host.endswith(".discord.com"):
        return url, {"content": f"**{title}**\n{text}"[:2000]}
    if host.endswith((".webhook.office.com", ".logic.azure.com", "outlook.office.com")):
        return url, {"@type": "MessageCard", "@context": "https://schema.org/extensions", "summary": title,
                     "title": title, "text": text.replace("\n", "  \n")}
    if host == "ntfy.sh" or host.startswith("ntfy."):
        return f"{parts.scheme}://{parts.netloc}/", {"topic": parts.path.strip("/"), "title": title, "message": text}
    return url, {"source": "ops-hpc", "event": event, "title": title, "text": text, **(fields or {})}


def _post(url: str, body: dict[str, Any], timeout: float) -> None:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json", "User-Agent": "ops-hpc"})
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        answer.read()


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code in (408, 429) or exc.code >= 500
    return isinstance(exc, (urllib.error.URLError, OSError, TimeoutError))


def _mail(cfg: Config, to: str, title: str, text: str, timeout: float) -> None:
    if not cfg.smtp_server:
        raise ValueError("set smtp_server (host[:port]) for mailto: notifications")
    host, _, port_text = cfg.smtp_server.partition(":")
    port = int(port_text or 25)
    message = EmailMessage()
    message["Subject"], message["To"] = title, to
    message["From"] = cfg.smtp_from or cfg.smtp_user or f"ops-hpc@{socket.gethostname()}"
    message.set_content(text)
    smtp = smtplib.SMTP_SSL(host, port, timeout=timeout) if port == 465 else smtplib.SMTP(host, port, timeout=timeout)
    with smtp:
        if port == 587:
            smtp.starttls()
        if cfg.smtp_user:
            password = os.environ.get(PASSWORD_ENV)
            if not password:
                raise ValueError(f"smtp_user is set but {PASSWORD_ENV} is not: the password is read only from there")
            smtp.login(cfg.smtp_user, password)
        smtp.send_message(message)


def send(cfg: Config, event: str, title: str, text: str, fields: dict[str, Any] | None = None, *,
         on_log: Log = quiet, timeout: float = TIMEOUT_S, attempts: int = ATTEMPTS) -> list[dict[str, Any]]:
    """Tell every target about `event` if `notify_on` asks for it; never raises. One {target, ok, error} each."""
    if not wanted(cfg, event):
        return []
    out = []
    for target in targets(cfg):
        error = ""
        for attempt in range(1, attempts + 1):
            try:
                if target.startswith("mailto:"):
                    _mail(cfg, target[len("mailto:"):], title, text, timeout)
                else:
                    _post(*payload(target, event, title, text, fields), timeout)
                error = ""
                break
            except Exception as exc:  # whatever the receiver does, the run it reports on goes on
                error = f"{type(exc).__name__}: {exc}"
                if target.startswith("mailto:") or not _retryable(exc) or attempt == attempts:
                    break
                retry.sleep(float(attempt))
        if error:
            on_log(f"notification to {where(target)} failed ({error[:200]}); the run is not affected")
        out.append({"target": where(target), "ok": not error, "error": error})
    return out


def pulled(cfg: Config, outcomes: Iterable[Any], folder: Path, *, on_log: Log = quiet,
           **options: Any) -> list[dict[str, Any]]:
    """After a pull: one message naming each run (or set) whose results landed here verified."""
    done = [o for o in outcomes if o.status in ("cleaned", "downloaded")]
    if not done or not wanted(cfg, "pulled"):
        return []
    runs: dict[str, list[str]] = {}
    for o in done:
        run_id, sep, model = o.id.partition("/")
        runs.setdefault(run_id if sep else "", []).append(f"{model} {o.model_state or ''}".strip() if sep else o.id)
    lines = [f"{run_id or 'result sets'}: {', '.join(items)}" for run_id, items in sorted(runs.items())]
    title = f"ops-hpc: {len(done)} result set(s) pulled and verified on {socket.gethostname()}"
    text = "\n".join(lines + [f"folder: {Path(folder).resolve()}"])
    fields = {"sets": [o.id for o in done], "runs": sorted(r for r in runs if r), "folder": str(Path(folder).resolve())}
    return send(cfg, "pulled", title, text, fields, on_log=on_log, **options)


def vm_metadata(cfg: Config) -> dict[str, str]:
    """What a run-staged VM needs to post itself: the webhook URLs (the only secret in metadata, the user's
    choice) and which events. Mail targets stay on the PC."""
    hooks = webhooks(cfg)
    events: Sequence[str] = [e for e in split(cfg.notify_on) if e in ("end", "failure")]
    if not hooks or not events:
        return {}
    return {"ops-hpc-notify": " ".join(hooks), "ops-hpc-notify-on": ",".join(events)}
