"""Prices from one table (lib/prices.toml, or cfg.price_table): USD per hour by machine type, disks, storage.

Kept in a file rather than fetched from the Billing Catalog API so that costs can be shown offline and in
tests, and so the date the prices were taken is printed next to every figure computed from them.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any

from lib.config import Config
from lib.errors import UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_TABLE = Path(__file__).with_name("prices.toml")
HOURS_PER_MONTH = 730.0


@functools.lru_cache(maxsize=8)
def _load(path: str) -> dict[str, Any]:
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"price table {path} does not exist (price_table in ops-hpc.toml)") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"price table {path} is not valid TOML: {exc}") from None
    if not isinstance(data.get("machine_types"), dict) or "taken" not in data:
        raise UsageError(f"price table {path} needs `taken = \"YYYY-MM-DD\"` and a [machine_types] table")
    return data


def table(cfg: Config) -> dict[str, Any]:
    """The price table in force; `path` added so output can say where figures come from."""
    path = str(Path(cfg.price_table) if cfg.price_table else DEFAULT_TABLE)
    return {**_load(path), "path": path}


def hourly(cfg: Config, machine_type: str, *, spot: bool = False) -> float | None:
    """USD/hour of a machine type; spot uses the spot price when listed, else on-demand (an upper bound)."""
    t = table(cfg)
    if spot and machine_type in t.get("spot", {}):
        return float(t["spot"][machine_type])
    price = t["machine_types"].get(machine_type)
    return None if price is None else float(price)


def disk_hourly(cfg: Config, gb: float) -> float:
    return float(table(cfg).get("disk", {}).get("pd_balanced_gb_month", 0.0)) * gb / HOURS_PER_MONTH


def vm_hourly(cfg: Config, machine_type: str, *, spot: bool = False, disk_gb: float = 0) -> float:
    """Machine plus boot disk per hour; an unpriced machine type is an error naming the table to edit."""
    price = hourly(cfg, machine_type, spot=spot)
    if price is None:
        raise UsageError(f"no price for machine type {machine_type} in {table(cfg)['path']}: add it under "
                       "[machine_types] (USD/hour)")
    return price + disk_hourly(cfg, disk_gb)


def storage_monthly(cfg: Config, size_bytes: int) -> float:
    """USD per month to keep `size_bytes` in Standard storage."""
    rate = float(table(cfg).get("storage", {}).get("standard_gb_month", 0.0))
    return rate * size_bytes / (1 << 30)


def note(cfg: Config) -> str:
    """The line printed under every cost: where the prices come from and when they were taken."""
    t = table(cfg)
    where = t.get("region", "?")
    warn = "" if where == cfg.region_name else f"; NOTE: table is for {where}, you run in {cfg.region_name}"
    return f"prices: {t.get('currency', 'USD')} list prices for {where} taken {t['taken']} from {t['path']}{warn}"
