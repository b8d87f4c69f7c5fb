"""Filter for `make lock`: give platform-specific pins their environment markers.

`pip freeze` writes what this machine installed; OpenSees (the local cloud's VMs) has wheels for
Linux x86_64 (0.1.32) and Windows x64 (0.1.31) only, so the lock must say which goes where or a
Windows `pip install -c requirements.lock` would be asked for a Linux-only release.
"""

import sys

MARKED = {
    "opensees": ["opensees=={version}; sys_platform == 'linux' and platform_machine == 'x86_64'",
                 "opensees==0.1.31; sys_platform == 'win32' and platform_machine == 'AMD64'"],
}

for line in sys.stdin:
    name, sep, version = line.strip().partition("==")
    if sep and name.lower() in MARKED:
        print("\n".join(pin.format(version=version) for pin in MARKED[name.lower()]))
    else:
        print(line.rstrip("\n"))
