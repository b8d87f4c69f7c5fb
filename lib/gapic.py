"""Import only the parts of google-cloud-compute that ops-hpc uses.

`google.cloud.compute_v1`'s package `__init__` imports all of its ~100 service clients: about 3 s of CPU
before the first call, paid by every command that touches a VM (`ops-hpc status`, `sweep`, `launch`, a
scheduled sweep on a laptop) for the four clients it needs. `install()` registers the package without
running that `__init__`; a name is imported when first asked for: `XyzClient` from `services.xyz`, any other
name from `types.compute`, where the `__init__` re-exports them from. Same objects, same classes:
`from google.cloud import compute_v1 as c; c.InstancesClient`, `c.Instance` work as before.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
import types
from typing import Any

PACKAGE = "google.cloud.compute_v1"


def _attribute(module: types.ModuleType, name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(name)
    if name.endswith("Client"):
        snake = re.sub(r"(?<!^)(?=[A-Z])", "_", name[: -len("Client")]).lower()
        value = getattr(importlib.import_module(f"{PACKAGE}.services.{snake}"), name)
    elif name[0].islower():  # a subpackage or module: types, services, gapic_version
        value = importlib.import_module(f"{PACKAGE}.{name}")
    else:
        value = getattr(importlib.import_module(f"{PACKAGE}.types.compute"), name)
    setattr(module, name, value)
    return value


def _dir(module: types.ModuleType) -> list[str]:
    """What the full package exports: a client per services/ folder, and the message types."""
    import pkgutil

    services = importlib.import_module(f"{PACKAGE}.services")
    clients = ["".join(w.title() for w in info.name.split("_")) + "Client" for info in pkgutil.iter_modules(services.__path__)]
    compute = importlib.import_module(f"{PACKAGE}.types.compute")
    return sorted({*clients, *(n for n in vars(compute) if n[:1].isupper()), *vars(module)})


def install() -> None:
    """Register the light package (once; not if the full one is already imported or not installed)."""
    if PACKAGE in sys.modules:
        return
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except ModuleNotFoundError:  # no google-cloud-compute: a bin/ script says how to install it
        return
    if spec is None or spec.submodule_search_locations is None:
        return
    module = importlib.util.module_from_spec(spec)  # not executed: its __init__ is what costs
    module.__getattr__ = lambda name: _attribute(module, name)  # type: ignore[method-assign]
    module.__dir__ = lambda: _dir(module)  # type: ignore[method-assign]
    sys.modules[PACKAGE] = module
