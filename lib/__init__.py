"""ops-hpc's shared library: every bin/ script and invoke task calls into here.

Functions take callbacks (on_log, on_progress, ...) and return data; they never
print or exit. User-facing failures are raised as lib.errors.OpsError.
"""

from lib import gapic as _gapic

_gapic.install()  # google-cloud-compute without its 3 s import of ~100 clients ops-hpc never uses
