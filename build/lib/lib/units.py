"""Human-readable figures for messages and tables."""

from __future__ import annotations


def human(n: float) -> str:
    """Bytes as B, KB, MB, GB or TB (powers of 1024), one decimal above bytes."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"
