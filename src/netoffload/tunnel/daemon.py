"""Running the tunnel as a detached service, the way ``wg-quick up`` returns once it serves.

``start_detached(run, name=...)`` forks; the child leaves the caller's session (``setsid``),
sends its stdin/stdout/stderr to a log file (or /dev/null), moves to ``/`` and calls
``run(ready)``. The service calls ``ready()`` once it serves; only then does the parent
return the child's pid. If ``run`` raises first, the parent raises ``ConfigError`` with the
service's message; if the child dies first, with its exit status and the last lines of its
log; if nothing happens within ``timeout``, the child is killed and the parent raises.

``stop(pid)`` sends SIGTERM, waits, then SIGKILLs. A pid read back from a state file may
have been reused by an unrelated process since: pass the process's start time
(``start_time(pid)``, taken at start) and nothing is signalled unless it still matches.

Inside the service, ``StopSignal`` is the orderly stop: ``install_signal_handlers(stop.set)``
(or ``stop.install()``) turns SIGTERM, SIGINT and SIGHUP into ``stop.set()``; the service's
loop selects on ``stop.fileno()`` with its other descriptors, or checks ``stop.is_set()``.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import time
import traceback
from collections.abc import Callable
from types import FrameType
from typing import Literal, NoReturn

from netoffload.errors import ConfigError

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_READY = b"ready"
_ERROR = b"error: "
_LAST_WORDS = 3  # log lines quoted when a service dies before it is ready


def start_detached(
    run: Callable[[Callable[[], None]], None],
    *,
    name: str,
    log_path: str | None = None,
    timeout: float = 10.0,
) -> int:
    """Fork a detached service; return its pid once it called ``ready()``.

    Raises ConfigError with the service's own message if ``run`` raised before it was ready,
    with its exit status and last log lines if it died, or if ``timeout`` passed (the child
    is then killed). The child is its own session and process group leader; it runs in the
    network namespace of the calling thread.
    """
    log = os.path.abspath(log_path) if log_path is not None else None
    if log is not None:  # fail here, with the path, rather than in the child
        try:
            os.close(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
        except OSError as e:
            raise ConfigError(f"{name}: log file {log}: {e.strerror}") from None
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (runs in the child; its outcome is what the tests check)
        os.close(r)
        _child(run, name, log, w)
    os.close(w)
    try:
        return _await_ready(pid, name, log, r, timeout)
    finally:
        os.close(r)


def _child(
    run: Callable[[Callable[[], None]], None], name: str, log: str | None, w: int
) -> NoReturn:
    """The child's side: detach, redirect, run; never returns."""
    pipe: list[int] = [w]

    def tell(line: bytes) -> None:
        if pipe:
            with contextlib.suppress(OSError):
                os.write(pipe[0], line + b"\n")
                os.close(pipe.pop())

    def ready() -> None:
        tell(_READY)

    code = 1
    try:
        os.setsid()
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        _redirect(log)
        with contextlib.suppress(OSError), open("/proc/self/comm", "w") as f:
            f.write(name[:15])
        os.chdir("/")
        run(ready)
        if pipe:
            tell(_ERROR + b"it returned without ever being ready")
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if pipe:
            tell(_ERROR + f"exited ({code}) before it was ready".encode())
    except BaseException as e:
        message = str(e) if isinstance(e, ConfigError) else f"{type(e).__name__}: {e}"
        with contextlib.suppress(Exception):
            traceback.print_exc()
        tell(_ERROR + " ".join(message.split()).encode(errors="replace"))
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)


def _redirect(log: str | None) -> None:
    """stdin from /dev/null, stdout and stderr to the log (or /dev/null)."""
    null = os.open(os.devnull, os.O_RDWR)
    out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600) if log else null
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)
    for fd in {null, out}:
        if fd > 2:
            os.close(fd)
    # the inherited sys.stdout/stderr may be a test runner's capture, not fds 1 and 2
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115


def _await_ready(pid: int, name: str, log: str | None, r: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    got = b""
    while b"\n" not in got:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([r], [], [], left)[0]:
            _kill_group(pid)
            _reap(pid, 2.0)
            raise ConfigError(f"{name}: not ready within {timeout:g} s (killed)")
        chunk = os.read(r, 4096)
        if not chunk:
            break
        got += chunk
    line = got.split(b"\n", 1)[0]
    if line == _READY:
        return pid
    status = _reap(pid, 5.0)
    if line.startswith(_ERROR):
        raise ConfigError(f"{name}: {line[len(_ERROR) :].decode(errors='replace')}")
    words = _last_words(log)
    raise ConfigError(
        f"{name}: died before it was ready ({status})" + (f": {words}" if words else "")
    )


def _reap(pid: int, timeout: float) -> str:
    """Wait for our child to end; its exit status as text."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            got, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return "gone"
        if got == pid:
            if os.WIFSIGNALED(status):
                return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
            return f"exit status {os.waitstatus_to_exitcode(status)}"
        if time.monotonic() > deadline:
            return "still running"
        time.sleep(0.01)


def _last_words(log: str | None) -> str:
    if log is None:
        return ""
    try:
        with open(log, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4096))
            tail = f.read().decode(errors="replace")
    except OSError:
        return ""
    lines = [ln.strip() for ln in tail.splitlines() if ln.strip()]
    return " | ".join(lines[-_LAST_WORDS:])


def _kill_group(pid: int) -> None:
    """SIGKILL the service and what it started (its process group, if it leads one)."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


# --- processes by pid -------------------------------------------------------------------


def start_time(pid: int) -> int | None:
    """The process's start time (clock ticks since boot, /proc/PID/stat field 22): with the
    pid, names one process for good. None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat.rsplit(b")", 1)[-1].split()
    return int(fields[19]) if len(fields) > 19 else None


def _state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat.rsplit(b")", 1)[-1].split()
    return fields[0].decode() if fields else None


def is_alive(pid: int, started: int | None = None) -> bool:
    """True while the process runs (a zombie does not; our own child is reaped). With
    ``started``, also that it is the same process (see ``start_time``)."""
    if pid <= 0:
        return False
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    state = _state(pid)
    if state is None or state in ("Z", "X", "x"):
        return False
    return started is None or start_time(pid) == started


def stop(
    pid: int, timeout: float = 5.0, started: int | None = None
) -> Literal["gone", "stopped", "killed"]:
    """SIGTERM the service, wait up to ``timeout`` s, then SIGKILL it (and its process
    group). "gone": it was not running (or ``started`` names another process)."""
    if not is_alive(pid, started):
        return "gone"
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return "gone"
    if _wait_gone(pid, timeout):
        return "stopped"
    _kill_group(pid)
    if not _wait_gone(pid, 5.0):
        raise ConfigError(f"process {pid} survives SIGKILL")
    return "killed"


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while is_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


# --- inside the service -----------------------------------------------------------------


class StopSignal:
    """A stop request a service loop can select on: ``set()`` (safe in a signal handler)
    makes ``fileno()`` readable and ``is_set()`` true, for good."""

    def __init__(self) -> None:
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)
        self._set = False

    def set(self) -> None:
        self._set = True
        with contextlib.suppress(OSError):  # full (already set) or closed
            os.write(self._w, b"!")

    def is_set(self) -> bool:
        return self._set

    def fileno(self) -> int:
        return self._r

    def wait(self, timeout: float | None = None) -> bool:
        """Sleep until set (or ``timeout`` s); whether it is set."""
        if not self._set:
            with contextlib.suppress(InterruptedError):
                select.select([self._r], [], [], timeout)
        return self._set

    def install(self) -> Callable[[], None]:
        """``install_signal_handlers(self.set)``."""
        return install_signal_handlers(self.set)

    def close(self) -> None:
        for fd in (self._r, self._w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> StopSignal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def install_signal_handlers(stop_callback: Callable[[], None]) -> Callable[[], None]:
    """SIGTERM, SIGINT and SIGHUP call ``stop_callback()`` (in the main thread, between
    bytecodes) instead of ending the process; returns a function that puts the previous
    handlers back. Must be called from the main thread."""

    def handler(signum: int, frame: FrameType | None) -> None:
        stop_callback()

    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)

    return restore
