"""The local cloud stands alone: it imports nothing from the application, and its modules stay readable."""

from __future__ import annotations

import ast
from pathlib import Path

EMULATOR = Path(__file__).resolve().parents[1] / "lib" / "localcloud"


def _imported_modules(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out += [node.module] + [f"{node.module}.{a.name}" for a in node.names if node.module == "lib"]
    return out


def test_local_cloud_imports_nothing_from_the_application() -> None:
    offenders = {
        f"{path.relative_to(EMULATOR)}: {mod}"
        for path in EMULATOR.rglob("*.py")
        for mod in _imported_modules(path)
        if (mod == "lib" or mod.startswith("lib.")) and not mod.startswith("lib.localcloud")
    }
    assert not offenders, sorted(offenders)


def test_no_emulator_module_over_400_lines() -> None:
    long = {str(p.relative_to(EMULATOR)): n for p in EMULATOR.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 400}
    assert not long, long
