"""One Config for every command.

Precedence, highest first: command-line flag > OPS_HPC_* environment variable >
ops-hpc.toml > default. Every value is validated where it enters, and an error
names the key and the source it came from, so a typo in a cron job's environment
is as easy to find as one on the command line.

The config file is --config, else OPS_HPC_CONFIG, else ./ops-hpc.toml, else ops-hpc.toml
in the user config folder (platformdirs). On GCP the project and zone follow gcloud's
conventions below the file: CLOUDSDK_CORE_PROJECT / GOOGLE_CLOUD_PROJECT (CLOUDSDK_COMPUTE_ZONE),
then the active gcloud configuration's properties file (read, no gcloud process; CLOUDSDK_CONFIG
honoured), then the project of the Application Default Credentials. `effective()` lists every
value with its source (`ops-hpc config`).

(Over 400 lines on purpose: the settings are one frozen dataclass whose fields carry their validators and
docs, and the lookup order above is one function chain; split, a new setting would touch several files.)
"""

from __future__ import annotations

import configparser
import dataclasses
import ipaddress
import json
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from lib.errors import ConfigError
from lib.localcloud import DEFAULT_PROJECT

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ENV_PREFIX = "OPS_HPC_"
CONFIG_FILE_ENV = "OPS_HPC_CONFIG"
DEFAULT_CONFIG_FILE = "ops-hpc.toml"
LOCAL_PROJECT = DEFAULT_PROJECT  # the local cloud owns its default project id


def user_config_file() -> Path:
    """ops-hpc.toml in the user's config folder (e.g. ~/.config/ops-hpc, %APPDATA%\\ops-hpc)."""
    from platformdirs import user_config_dir

    return Path(user_config_dir("ops-hpc", appauthor=False)) / DEFAULT_CONFIG_FILE


def _default_state_dir() -> str:
    from platformdirs import user_state_dir

    return user_state_dir("ops-hpc", appauthor=False)


def _check(pattern: str, what: str) -> Callable[[str], str | None]:
    rx = re.compile(pattern)

    def check(value: str) -> str | None:
        return None if rx.fullmatch(value) else what

    return check


def _bucket_problem(name: str) -> str | None:
    """The subset of GCS bucket naming rules that a typo is likely to break."""
    if not 3 <= len(name) <= 63:
        return "bucket names are 3-63 characters"
    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]*[a-z0-9]", name):
        return "bucket names use lowercase letters, digits, '-', '_' and '.', starting and ending with a letter or digit"
    if name.startswith("goog") or "google" in name or "g00gle" in name:
        return "bucket names cannot start with 'goog' or contain 'google'"
    if ".." in name or ".-" in name or "-." in name:
        return "bucket names cannot contain '..', '.-' or '-.'"
    try:
        ipaddress.ip_address(name)
        return "bucket names cannot be IP addresses"
    except ValueError:
        return None


_ZONE = _check(r"[a-z]+-[a-z]+[0-9]+-[a-z]", "expected a zone like us-central1-a")
_ZONES = _check(r"([a-z]+-[a-z]+[0-9]+-[a-z])(,[a-z]+-[a-z]+[0-9]+-[a-z])*",
                "expected zones like us-central1-a,us-central1-b (a TOML list or comma-separated)")
_REGION = _check(r"[a-z]+-[a-z]+[0-9]+", "expected a region like us-central1")
_PROJECT = _check(r"[a-z][a-z0-9-]{4,28}[a-z0-9]", "expected a project id: 6-30 lowercase letters, digits or '-'")
_MACHINE = _check(
    r"([a-z][a-z0-9]*-(standard|highmem|highcpu|megamem|ultramem|hypermem|highgpu|megagpu|ultragpu|micro|small|medium)(-[0-9]+)?(-lssd|-metal)?"
    r"|([a-z][a-z0-9]*-)?custom-[0-9]+-[0-9]+(-ext)?)",
    "expected a machine type like h3-standard-88 or n2-custom-8-32768",
)
DEFAULT_MACHINE_TYPES = ("e2-standard-2,e2-standard-4,e2-standard-8,e2-standard-16,e2-standard-32,c2d-standard-56,"
                         "c2d-standard-112,h3-standard-88")


def _machine_list(value: str) -> str | None:
    names = [n.strip() for n in value.split(",") if n.strip()]
    bad = [n for n in names if _MACHINE(n)]
    return f"{', '.join(repr(n) for n in bad)}: expected machine types like e2-standard-2" if bad else None


_BACKEND = _check(r"local|gcp", "expected 'local' or 'gcp'")
_ENDPOINT = _check(r"(https?://[^\s/]+(/\S*)?)?", "expected an http(s):// URL or nothing")
_NAME = _check(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?", "expected a lowercase resource name")


def _notify_problem(value: str) -> str | None:
    """notify: webhook URLs and mailto: addresses, separated by commas or spaces."""
    for item in re.split(r"[,\s]+", value.strip()):
        if item and not re.fullmatch(r"https?://[^\s/]+\S*|mailto:[^@\s]+@[^@\s]+", item):
            return f"{item!r}: expected webhook URLs (https://...) or mailto:NAME@HOST, separated by commas"
    return None


def _notify_on_problem(value: str) -> str | None:
    bad = [e for e in re.split(r"[,\s]+", value.strip()) if e and e not in ("end", "failure", "pulled")]
    return f"unknown event(s) {', '.join(bad)}: expected end, failure, pulled" if bad else None


_SMTP = _check(r"[A-Za-z0-9.-]+(:[0-9]{1,5})?", "expected an SMTP host, optionally :PORT (e.g. smtp.example.com:587)")


def _opt(check: Callable[[str], str | None] | None, default: Any = "", doc: str = "", *,
         minimum: float | None = None, as_list: bool = False) -> Any:
    """A setting; `minimum` for numbers whose smaller values would make a safety net fire early; `as_list`:
    text that a TOML list of strings may give too (kept comma-separated)."""
    return field(default=default, metadata={"check": check, "doc": doc, "minimum": minimum, "list": as_list})


@dataclass(frozen=True)
class Config:
    """Everything a command needs to know about where and how to run."""

    backend: str = _opt(_BACKEND, "gcp", "gcp, or local for the embedded local cloud")
    project: str = _opt(None, "", "GCP project id")
    region: str = _opt(_REGION, "", "defaults to the zone's region")
    zone: str = _opt(_ZONE, "us-central1-a")
    zones: str = _opt(_ZONES, "", "zones a VM is tried in, in order, when one is out of capacity; defaults to the "
                                  "region's zones that offer the machine type", as_list=True)
    bucket: str = _opt(_bucket_problem, "", "defaults to PROJECT-ops-hpc")
    image_family: str = _opt(_NAME, "opensees-hpc")
    image_project: str = _opt(None, "", "project holding the opensees-hpc image; defaults to project")
    build_image_family: str = _opt(_NAME, "hpc-rocky-linux-8")
    build_image_project: str = _opt(None, "cloud-hpc-image-public")
    build_machine_type: str = _opt(_MACHINE, "c2d-standard-32")
    machine_type: str = _opt(_MACHINE, "h3-standard-88", "analysis VMs")
    machine_types: str = _opt(_machine_list, DEFAULT_MACHINE_TYPES, "what --machine-type auto chooses from "
                              "(a TOML list, or comma-separated)", as_list=True)
    confirm_above_usd: float = _opt(None, 20.0, "a run whose worst-case cost is above this asks first (--yes)")
    spot: bool = _opt(None, False, "spot VMs only when asked: preemption loses work")
    disk_size_gb: int = _opt(None, 200)
    service_account: str = _opt(None, "", "defaults to ops-hpc-vm@PROJECT.iam.gserviceaccount.com (`make setup`)")
    network: str = _opt(_NAME, "default")
    subnetwork: str = _opt(None, "")
    use_iap: bool = _opt(None, False, "ssh through an IAP tunnel (VMs without external IPs)")
    upload_timeout_min: int = _opt(None, 30, "minutes allowed for the last upload", minimum=1)
    sweep_grace_min: int = _opt(None, 15, "minutes past a VM's expected end before the sweeper deletes it")
    results_dir: str = _opt(None, "results")
    max_unzipped_gb: float = _opt(None, 100.0, "largest total a result zip may inflate to (GB); larger is refused")
    state_dir: str = _opt(None, "", "session state and the local cloud; defaults to the platform's user state folder")
    price_table: str = _opt(None, "", "a TOML file overriding lib/prices.toml")
    compute_endpoint: str = _opt(_ENDPOINT, "", "override of https://compute.googleapis.com")
    storage_endpoint: str = _opt(_ENDPOINT, "", "override of https://storage.googleapis.com")
    monitoring_endpoint: str = _opt(None, "", "host:port of a Monitoring gRPC endpoint")
    time_scale: float = _opt(None, 1.0, "local cloud only: how many times faster VM clocks run")
    notify: str = _opt(_notify_problem, "", "webhook URLs and/or mailto: addresses told when runs end or results land")
    notify_on: str = _opt(_notify_on_problem, "end,pulled", "events to notify: end, failure, pulled")
    smtp_server: str = _opt(_SMTP, "", "SMTP host[:port] for mailto: notifications (password: OPS_HPC_SMTP_PASSWORD)")
    smtp_user: str = _opt(None, "", "SMTP login user (empty: no login)")
    smtp_from: str = _opt(None, "", "sender of notification mails (default: smtp_user)")

    # -- derived values ---------------------------------------------------
    @property
    def local(self) -> bool:
        return self.backend == "local"

    @property
    def region_name(self) -> str:
        return self.region or self.zone.rsplit("-", 1)[0]

    @property
    def machine_type_list(self) -> list[str]:
        return [n.strip() for n in self.machine_types.split(",") if n.strip()]

    @property
    def zone_list(self) -> list[str]:
        """The configured `zones`, in order (empty: the region's zones that offer the machine type)."""
        return [z for z in self.zones.split(",") if z]

    @property
    def bucket_name(self) -> str:
        return self.bucket or f"{self.project}-ops-hpc"

    @property
    def image_project_id(self) -> str:
        return self.image_project or self.project

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir or _default_state_dir())

    def require_project(self) -> Config:
        """Commands that talk to GCP call this first: no project means no silent fallback."""
        if not self.project:
            raise ConfigError(
                "no GCP project configured: `gcloud config set project PROJECT_ID`, or set `project` in "
                "ops-hpc.toml or OPS_HPC_PROJECT, or rehearse on the local cloud with `make demo` / OPS_HPC_BACKEND=local"
            )
        return self

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)

    # -- loading -----------------------------------------------------------
    @classmethod
    def load(
        cls,
        overrides: Mapping[str, Any] | None = None,
        *,
        env: Mapping[str, str] | None = None,
        path: str | os.PathLike | None = None,
    ) -> Config:
        """Merge the sources; `overrides` are command-line values (None means not given); path="" reads no file."""
        raw = _gather(cls, overrides, os.environ if env is None else env, path)
        values = {name: _coerce(cls, name, value, source) for name, (value, source) in raw.items()}
        config = cls(**values)
        if not config.local and config.time_scale != 1.0:  # scaled deadlines on real VMs would fire early
            source = raw.get("time_scale", (None, "default"))[1]
            raise ConfigError(f"time_scale = {config.time_scale:g} from {source}: only the local cloud's clocks can "
                              "run faster; remove it for backend gcp")
        stray = [z for z in config.zone_list if z.rsplit("-", 1)[0] != config.region_name]
        if stray:  # CPU quota is regional: a run's VMs stay in one region
            source = raw.get("zones", (None, "default"))[1]
            raise ConfigError(f"zones from {source}: {', '.join(stray)} not in region {config.region_name} "
                              f"(of zone {config.zone}): list zones of one region")
        if config.project:
            problem = _PROJECT(config.project)
            if problem:
                source = raw.get("project", (None, "default"))[1]
                raise ConfigError(f"project = {config.project!r} from {source}: {problem}")
        return config


def config_file(path: str | os.PathLike | None, env: Mapping[str, str]) -> Path | None:
    """The config file to read: --config, OPS_HPC_CONFIG, ./ops-hpc.toml, the user config folder's; None if none."""
    if path == "":  # explicitly no file (tests, and `--config ''`)
        return None
    given = path or env.get(CONFIG_FILE_ENV)
    if given:
        if not Path(given).is_file():
            raise ConfigError(f"config file {given} does not exist")
        return Path(given)
    for candidate in (Path(DEFAULT_CONFIG_FILE), user_config_file()):
        if candidate.is_file():
            return candidate
    return None


def gcloud_folder(env: Mapping[str, str]) -> Path | None:
    """gcloud's configuration folder: CLOUDSDK_CONFIG, else %APPDATA%\\gcloud on Windows, ~/.config/gcloud."""
    if env.get("CLOUDSDK_CONFIG"):
        return Path(env["CLOUDSDK_CONFIG"])
    if sys.platform == "win32":
        return Path(env["APPDATA"]) / "gcloud" if env.get("APPDATA") else None
    return Path(env["HOME"]) / ".config" / "gcloud" if env.get("HOME") else None


def gcloud_properties(env: Mapping[str, str]) -> tuple[dict[str, str], str]:
    """('section/key' -> value, file) of the active gcloud configuration, read as gcloud stores it."""
    folder = gcloud_folder(env)
    if folder is None:
        return {}, ""
    name = env.get("CLOUDSDK_ACTIVE_CONFIG_NAME", "")
    if not name:
        try:
            name = (folder / "active_config").read_text(encoding="utf-8").strip()
        except OSError:
            name = ""
    file = folder / "configurations" / f"config_{name or 'default'}"
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read(file, encoding="utf-8")
    except (configparser.Error, UnicodeDecodeError):
        return {}, str(file)
    return {f"{section}/{key}": value.strip() for section in parser.sections()
            for key, value in parser.items(section) if value.strip()}, str(file)


def adc_project(env: Mapping[str, str]) -> tuple[str, str]:
    """(project, file) named by the Application Default Credentials file, without contacting Google."""
    folder = gcloud_folder(env)
    file = env.get("GOOGLE_APPLICATION_CREDENTIALS") or (
        str(folder / "application_default_credentials.json") if folder else "")
    if not file:
        return "", ""
    try:
        data = json.loads(Path(file).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "", ""
    project = (data.get("project_id") or data.get("quota_project_id") or "") if isinstance(data, dict) else ""
    return (project, file) if isinstance(project, str) else ("", "")


def _gcloud_fallbacks(env: Mapping[str, str]) -> dict[str, list[tuple[str, str]]]:
    """Project and zone candidates below ops-hpc.toml, highest first, each with its source."""
    props, props_file = gcloud_properties(env)
    project, adc_file = adc_project(env)
    return {
        "project": [(env.get("CLOUDSDK_CORE_PROJECT", ""), "environment variable CLOUDSDK_CORE_PROJECT"),
                    (env.get("GOOGLE_CLOUD_PROJECT", ""), "environment variable GOOGLE_CLOUD_PROJECT"),
                    (props.get("core/project", ""), f"gcloud configuration {props_file}"),
                    (project, f"application default credentials {adc_file}")],
        "zone": [(env.get("CLOUDSDK_COMPUTE_ZONE", ""), "environment variable CLOUDSDK_COMPUTE_ZONE"),
                 (props.get("compute/zone", ""), f"gcloud configuration {props_file}")],
    }


def _gather(cls: type[Config], overrides: Mapping[str, Any] | None, env: Mapping[str, str],
            path: str | os.PathLike | None) -> dict[str, tuple[Any, str]]:
    """name -> (raw value, where it came from) for every setting that is not left at its default."""
    raw: dict[str, tuple[Any, str]] = {}
    names = {f.name for f in fields(cls)}
    file = config_file(path, env)
    if file is not None:
        try:
            data = tomllib.loads(file.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{file}: not valid TOML ({exc})") from None
        for key, value in data.items():
            if key not in names:
                raise ConfigError(f"{file}: unknown key '{key}' (see ops-hpc.example.toml)")
            raw[key] = (value, str(file))
    for name in names:
        var = ENV_PREFIX + name.upper()
        if env.get(var, "") != "":
            raw[name] = (env[var], f"environment variable {var}")
    for name, value in (overrides or {}).items():
        if value is not None:
            if name not in names:
                raise ConfigError(f"unknown setting '{name}'")
            raw[name] = (value, f"--{name.replace('_', '-')}")
    if str(raw.get("backend", ("gcp", ""))[0]).strip() == "local":
        raw.setdefault("project", (LOCAL_PROJECT, "the local cloud"))
        raw.setdefault("bucket", ("ops-hpc-local", "the local cloud"))
    else:
        for name, candidates in _gcloud_fallbacks(env).items():
            if name not in raw:
                found = next(((value.strip(), source) for value, source in candidates if value.strip()), None)
                if found:
                    raw[name] = found
    return raw


def effective(overrides: Mapping[str, Any] | None = None, *, env: Mapping[str, str] | None = None,
              path: str | os.PathLike | None = None) -> list[tuple[str, Any, str]]:
    """(key, value, source) for every setting as a command would see it, defaults included (`ops-hpc config`)."""
    env = os.environ if env is None else env
    cfg = Config.load(overrides, env=env, path=path)
    raw = _gather(Config, overrides, env, path)
    file = config_file(path, env)
    rows = [("config file", str(file) if file else "(none)", "--config > OPS_HPC_CONFIG > ./ > user config folder")]
    for f in fields(Config):
        rows.append((f.name, getattr(cfg, f.name), raw[f.name][1] if f.name in raw else "default"))
    rows.append(("bucket (effective)", cfg.bucket_name, "bucket" if cfg.bucket else "PROJECT-ops-hpc"))
    rows.append(("state folder", str(cfg.state_path), "state_dir" if cfg.state_dir else "platform user state folder"))
    return rows


def _coerce(cls: type[Config], name: str, value: Any, source: str) -> Any:
    """Turn a raw value into the field's type and validate it, naming key and source on failure."""
    spec = next(f for f in fields(cls) if f.name == name)
    kind = type(spec.default)
    where = f"{name} = {value!r} from {source}"
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{where}: expected true or false")
    if kind in (int, float):
        try:
            number = kind(value) if not isinstance(value, bool) else None
        except (TypeError, ValueError):
            number = None
        if number is None or number < 0 or (kind is int and isinstance(value, float)):
            raise ConfigError(f"{where}: expected a non-negative {'whole number' if kind is int else 'number'}")
        if name in ("time_scale", "max_unzipped_gb") and number <= 0:
            raise ConfigError(f"{where}: expected a number above 0")
        minimum = spec.metadata.get("minimum")
        if minimum is not None and number < minimum:
            raise ConfigError(f"{where}: expected at least {minimum:g} (less would delete VMs before their "
                              "results are safe)")
        return number
    if spec.metadata.get("list") and isinstance(value, list):
        value = ",".join(str(v).strip() for v in value)  # a TOML list of names
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected text")
    value = value.strip()
    check = spec.metadata.get("check")
    problem = check(value) if (check and value) else None
    if problem:
        raise ConfigError(f"{where}: {problem}")
    return value


def describe() -> list[tuple[str, Any, str, str]]:
    """(key, default, environment variable, doc) for every setting: used by help and the example file test."""
    return [
        (f.name, f.default, ENV_PREFIX + f.name.upper(), f.metadata.get("doc", ""))
        for f in fields(Config)
    ]
