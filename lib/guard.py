"""VMGuard: whatever way this process ends, the VM it guards is deleted.

| how the process ends                | what deletes the VM                                   |
|-------------------------------------|-------------------------------------------------------|
| normal exit of the with block       | __exit__ (and atexit if the block was never left)     |
| exception in the with block         | __exit__                                              |
| Ctrl+C                              | SIGINT handler                                        |
| kill / taskkill (graceful)          | SIGTERM, SIGBREAK (Windows), SIGHUP (POSIX terminal; not under nohup) |
| console window closed, logoff, shutdown (Windows) | SetConsoleCtrlHandler via ctypes        |
| kill -9 / taskkill /F / power cut   | nothing here: session_state.json + reconcile, bin/sweep, and Google's maxRunDuration |

Deletion goes through compute.delete_vm: idempotent and label-checked, so a guard can never delete a
VM that is not ops-hpc's. Fired while this process's insert of the VM is still in flight, it first waits
for that insert (compute.settle_insert) so it deletes what the insert creates instead of "nothing yet". `disarm()` after a deliberate delete prevents a second one.

Uploads in flight (`pending`: e.g. `make run`'s background pushes of finished jobs) hold the delete: the
guard says so in one line and waits for them, at most `hold_s` (the config's upload_timeout_min); a second
Ctrl+C (any second signal) during that wait deletes the VM at once.
"""

from __future__ import annotations

import atexit
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

from lib import compute
from lib.config import Config
from lib.log import Log, quiet
from lib.state import SessionState

IS_WINDOWS = os.name == "nt"
CTRL_C_EVENT, CTRL_BREAK_EVENT, CTRL_CLOSE_EVENT, CTRL_LOGOFF_EVENT, CTRL_SHUTDOWN_EVENT = 0, 1, 2, 5, 6
CONSOLE_EVENTS = {CTRL_CLOSE_EVENT: "console closed", CTRL_LOGOFF_EVENT: "logoff", CTRL_SHUTDOWN_EVENT: "shutdown"}


def _signals() -> list[int]:
    names = ["SIGINT", "SIGTERM", "SIGBREAK"] + ([] if IS_WINDOWS else ["SIGHUP"])
    return [getattr(signal, n) for n in names if hasattr(signal, n)]


def _nohup(sig: int) -> bool:
    """SIGHUP ignored before the guard (`nohup`): the user asked the run to outlive its terminal, so leave it be."""
    return sig == getattr(signal, "SIGHUP", None) and signal.getsignal(sig) == signal.SIG_IGN


def _load_ctypes() -> Any:
    """ctypes, behind a function so tests can hand in a fake kernel32 on Linux."""
    import ctypes  # Windows console handling only: imported where it is used

    return ctypes


class VMGuard:
    """`with VMGuard(cfg, name) as guard:` deletes VM `name` however the block or the process ends."""

    def __init__(self, cfg: Config, name: str, *, on_log: Log = quiet, state: SessionState | None = None,
                 pending: Callable[[], Sequence[threading.Thread]] | None = None, hold_s: float = 0.0) -> None:
        self.cfg = cfg
        self.pending = pending  # uploads whose end the delete waits for (at most hold_s)
        self.hold_s = hold_s
        self._busy = False  # holding or deleting: a signal now forces instead of starting over
        self._force = False
        self.name = name
        self.on_log = on_log
        self.state = state
        self.armed = False
        self.deleted = False
        self._lock = threading.RLock()
        self._previous: dict[int, Any] = {}
        self._console_handler: Any = None
        self._kernel32: Any = None

    # -- lifecycle -------------------------------------------------------------
    def __enter__(self) -> VMGuard:
        self.armed = True
        self._mark(True)
        atexit.register(self._at_exit)
        if threading.current_thread() is threading.main_thread():
            for sig in _signals():
                if _nohup(sig):
                    continue
                try:
                    self._previous[sig] = signal.signal(sig, self._on_signal)
                except (OSError, ValueError):  # not settable here (e.g. embedded interpreter)
                    pass
        if IS_WINDOWS:
            self._install_console_handler()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> Literal[False]:
        try:
            reason = "normal exit" if exc_type is None else f"{exc_type.__name__} in the guarded block"
            self.cleanup(reason)
        finally:
            self._uninstall()
        return False

    def disarm(self) -> None:
        """The VM was deleted deliberately (or handed over): do not delete it again."""
        with self._lock:
            self.armed = False
        self._mark(False)

    def _mark(self, guarded: bool) -> None:
        """Record in session state that this process answers for the VM (so a kill -9 is recoverable)."""
        try:
            (self.state or SessionState(self.cfg)).set_guarded(self.name, guarded)
        except Exception as exc:
            self.on_log(f"VMGuard: could not update session state: {exc}")

    def cleanup(self, reason: str) -> bool:
        """Delete the VM once if armed; never raises (it runs in signal handlers and at exit)."""
        with self._lock:
            if not self.armed:
                return False
            self.armed = False
        self._busy = True
        try:
            self._hold()
            return self._delete(reason)
        finally:
            self._busy = False

    def _hold(self) -> None:
        """Let uploads in flight finish before the VM goes, at most hold_s; a second signal stops the wait."""
        try:
            busy = [t for t in (self.pending() if self.pending else []) if t.is_alive()]
        except Exception:  # a guard never fails on its helpers
            busy = []
        if not busy or self.hold_s <= 0:
            return
        self.on_log(f"VMGuard: waiting up to {self.hold_s:.0f} s for {len(busy)} upload(s) in flight "
                    f"({', '.join(t.name for t in busy)}) before deleting VM {self.name}; Ctrl+C again deletes it now")
        end = time.monotonic() + self.hold_s
        while busy and not self._force and time.monotonic() < end:
            busy[0].join(min(0.2, max(0.0, end - time.monotonic())))  # short slices: signal handlers run between
            busy = [t for t in busy if t.is_alive()]
        if busy:
            why = "second interrupt" if self._force else f"still running after {self.hold_s:.0f} s"
            self.on_log(f"VMGuard: {why}: deleting VM {self.name} now; upload(s) {', '.join(t.name for t in busy)} "
                        "will not finish")

    def _delete(self, reason: str) -> bool:
        self.on_log(f"VMGuard: deleting VM {self.name} ({reason})")
        try:
            # Interrupted mid-insert: the VM may appear a moment after this; wait for the insert, then delete.
            compute.settle_insert(self.name, on_log=self.on_log)
            where = compute.placed(self.cfg, self.name)  # a zone failover may have put it elsewhere
            self.deleted = compute.delete_vm(where, self.name, on_log=self.on_log, state=self.state)
            if not self.deleted:
                self.on_log(f"VMGuard: VM {self.name} was already gone")
            return True
        except Exception as exc:  # a guard reports; it must not crash its signal handler or atexit
            self.on_log(f"VMGuard: could not delete VM {self.name}: {exc}; it will be deleted by `bin/sweep` "
                        "or by Google at its max run duration")
            return False

    # -- handlers --------------------------------------------------------------
    def _at_exit(self) -> None:
        self.cleanup("process exit")

    def _on_signal(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name if signum in signal.Signals._value2member_map_ else str(signum)
        if self._busy:  # a second signal while this guard holds for uploads or deletes: hurry, do not start over
            self._force = True
            return
        self.cleanup(f"{name} received")
        previous = self._previous.get(signum)
        self._uninstall()
        if callable(previous):
            previous(signum, frame)  # chain: e.g. Python's default SIGINT handler raises KeyboardInterrupt
            return
        # SIG_DFL, or SIG_IGN inherited (a shell without job control starts background commands with SIGINT
        # ignored, so Python installs no KeyboardInterrupt): the VM is gone, so the process ends either way,
        # as Python's defaults would end it, running finally blocks on the way out.
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)

    def _console_event(self, event: int) -> int:
        """Windows console control handler: True = handled. Ctrl+C/Break are left to the signal handlers."""
        reason = CONSOLE_EVENTS.get(int(event))
        if reason is None:
            return 0
        self.cleanup(reason)
        return 1

    def _install_console_handler(self) -> None:
        try:
            ctypes = _load_ctypes()
            kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
            prototype = ctypes.WINFUNCTYPE(ctypes.c_int, ctypes.c_uint)
            handler = prototype(self._console_event)  # kept on self: ctypes callbacks must outlive registration
            if not kernel32.SetConsoleCtrlHandler(handler, True):
                self.on_log("VMGuard: could not register the console close handler")
                return
            self._console_handler, self._kernel32 = handler, kernel32
        except (OSError, AttributeError) as exc:
            self.on_log(f"VMGuard: no console close handler ({exc})")

    def _uninstall(self) -> None:
        """Put back the handlers that were there before (only where ours is still the one installed)."""
        for sig, previous in list(self._previous.items()):
            try:
                if signal.getsignal(sig) == self._on_signal and previous is not None:
                    signal.signal(sig, previous)
            except (OSError, ValueError):
                pass
        self._previous.clear()
        if self._console_handler is not None and self._kernel32 is not None:
            try:
                self._kernel32.SetConsoleCtrlHandler(self._console_handler, False)
            except OSError:
                pass
            self._console_handler = None
        try:
            atexit.unregister(self._at_exit)
        except Exception:  # pragma: no cover
            pass
