"""lib/ never prints: the VM-safety modules' callbacks default to `quiet`, and callers pass cli.err or print."""

from __future__ import annotations

import importlib
import inspect

import pytest

MODULES = ["compute", "vmplan", "controls", "deadline", "guard", "images", "monitor", "preflight", "reconcile", "state",
           "status", "sweep"]


@pytest.mark.parametrize("module", MODULES)
def test_no_callback_defaults_to_print(module):
    mod = importlib.import_module(f"lib.{module}")
    found = []
    for name, obj in vars(mod).items():
        if getattr(obj, "__module__", None) != mod.__name__:
            continue
        targets = [obj.__init__] if inspect.isclass(obj) else [obj] if inspect.isfunction(obj) else []
        targets += [m for _, m in inspect.getmembers(obj, inspect.isfunction)] if inspect.isclass(obj) else []
        for fn in targets:
            for param in inspect.signature(fn).parameters.values():
                default = param.default
                if default is print or (getattr(default, "__name__", "") == "<lambda>" and "print(" in _source(default)):
                    found.append(f"{name}.{param.name}")
    assert not found, f"lib.{module}: these callbacks print by default: {found}"


def _source(fn: object) -> str:
    try:
        return inspect.getsource(fn)  # a lambda default shows its own line
    except (OSError, TypeError):
        return ""
