"""ops-hpc's shared library: every bin/ script and invoke task calls into here.

Functions take callbacks (on_log, on_progress, ...) and return data; they never
print or exit. User-facing failures are raised as lib.errors.OpsError.
"""
