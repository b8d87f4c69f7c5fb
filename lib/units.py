"""Human-readable figures for messages and tables."""

from __future__ import annotations


def human(n: float) -> str:
    """Bytes as B, KB, MB, GB or TB (powers of 1024), one decimal above bytes."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def duration(seconds: float) -> str:
    """A max run duration as people say it: '3 h', '1 h 25 min', '42 min'."""
    minutes = int(round(seconds / 60))
    hours, rest = divmod(minutes, 60)
    if not hours:
        return f"{rest} min"
    return f"{hours} h" + (f" {rest} min" if rest else "")
