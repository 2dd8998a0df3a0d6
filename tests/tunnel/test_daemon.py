"""Detached services: start_detached returns once the service serves, stop() ends it, and a
service killed outright leaves a state file that undoes its interface configuration.

The services are toys -- a function that creates a file, says it is ready, waits for the
stop signal and removes the file -- and what is checked is what the kernel shows: the
file, /proc/PID, the process's session, and (in a namespace) routes and rules.
"""

from __future__ import annotations

import os
import select
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from netoffload.devices import kernel_common as kc
from netoffload.errors import ConfigError
from netoffload.testing import netns
from netoffload.tunnel import daemon, iface
from netoffload.tunnel.daemon import StopSignal

from .test_iface import snapshot

Ready = Callable[[], None]


def file_service(path: Path, *, ignore_term: bool = False) -> Callable[[Ready], None]:
    """Create ``path`` (holding the pid), be ready, wait for a stop signal, remove ``path``."""

    def run(ready: Ready) -> None:
        with StopSignal() as stop:
            stop.install()
            if ignore_term:
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
            path.write_text(str(os.getpid()))
            print("serving", flush=True)
            ready()
            while not stop.is_set():
                select.select([stop], [], [], 5.0)
            path.unlink()
            print("stopped", flush=True)

    return run


@pytest.fixture
def pids() -> Iterator[list[int]]:
    """Services a test starts; whatever is left is killed afterwards."""
    started: list[int] = []
    yield started
    for pid in started:
        if daemon.is_alive(pid):
            daemon.stop(pid, timeout=0.5)


def _gone(pid: int) -> bool:
    """No process, not even a zombie, has the pid."""
    return not os.path.exists(f"/proc/{pid}")


def test_start_returns_when_ready_and_stop_cleans_up(tmp_path: Path, pids: list[int]) -> None:
    flag, log = tmp_path / "serving", tmp_path / "svc.log"
    pid = daemon.start_detached(file_service(flag), name="toy", log_path=str(log))
    pids.append(pid)
    # ready() came after the file was made: it is there the moment we return
    assert flag.read_text() == str(pid)
    assert daemon.is_alive(pid)
    assert os.getsid(pid) == pid and os.getpgid(pid) == pid  # detached: own session
    assert Path(f"/proc/{pid}/comm").read_text().strip() == "toy"
    assert os.readlink(f"/proc/{pid}/cwd") == "/"
    started = daemon.start_time(pid)
    assert started is not None and daemon.is_alive(pid, started)
    assert not daemon.is_alive(pid, started + 1)  # a reused pid is not the same process
    assert daemon.stop(pid, started=started + 1) == "gone"  # ... and is left alone
    assert daemon.is_alive(pid)
    assert daemon.stop(pid) == "stopped"
    assert not flag.exists()
    assert _gone(pid) and not daemon.is_alive(pid)
    assert log.read_text().split() == ["serving", "stopped"]  # stdout went to the log
    assert daemon.stop(pid) == "gone"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_each_stop_signal_is_an_orderly_stop(sig: int, tmp_path: Path, pids: list[int]) -> None:
    flag = tmp_path / "serving"
    pid = daemon.start_detached(file_service(flag), name="toy")
    pids.append(pid)
    os.kill(pid, sig)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0  # it ran to its end, not killed
    assert not flag.exists()


def test_stop_kills_what_ignores_sigterm(tmp_path: Path, pids: list[int]) -> None:
    flag = tmp_path / "serving"
    pid = daemon.start_detached(file_service(flag, ignore_term=True), name="stubborn")
    pids.append(pid)
    assert daemon.stop(pid, timeout=0.3) == "killed"
    assert _gone(pid)
    assert flag.exists()  # killed, so it could not clean up


def test_service_that_raises_before_ready(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"

    def run(ready: Ready) -> None:
        pidfile.write_text(str(os.getpid()))
        raise ConfigError("wg0.conf: line 3: PrivateKey is not 32 bytes\nof base64")

    with pytest.raises(ConfigError, match=r"^up: wg0.conf: line 3: PrivateKey is not 32 bytes of"):
        daemon.start_detached(run, name="up")
    assert _gone(int(pidfile.read_text()))  # reaped, no zombie

    def oops(ready: Ready) -> None:
        raise RuntimeError("no such thing")

    with pytest.raises(ConfigError, match=r"^up: RuntimeError: no such thing$"):
        daemon.start_detached(oops, name="up")


def test_service_that_dies_before_ready_gives_last_words(tmp_path: Path) -> None:
    log = tmp_path / "svc.log"

    def run(ready: Ready) -> None:
        print("opening /dev/net/tun", flush=True)
        os.write(2, b"cannot go on\n")
        os._exit(3)

    with pytest.raises(ConfigError, match=r"died before it was ready \(exit status 3\): .*go on"):
        daemon.start_detached(run, name="svc", log_path=str(log))

    def killed(ready: Ready) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    with pytest.raises(ConfigError, match=r"died before it was ready \(killed by SIGKILL\)"):
        daemon.start_detached(killed, name="svc")

    def returns(ready: Ready) -> None:
        return None

    with pytest.raises(ConfigError, match="returned without ever being ready"):
        daemon.start_detached(returns, name="svc")

    def exits(ready: Ready) -> None:
        raise SystemExit(4)

    with pytest.raises(ConfigError, match=r"exited \(4\) before it was ready"):
        daemon.start_detached(exits, name="svc")


def test_service_never_ready_is_killed(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"

    def run(ready: Ready) -> None:
        pidfile.write_text(str(os.getpid()))
        time.sleep(60)

    with pytest.raises(ConfigError, match=r"slow: not ready within 0.5 s"):
        daemon.start_detached(run, name="slow", timeout=0.5)
    assert _gone(int(pidfile.read_text()))


def test_bad_log_path_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "no" / "such" / "dir.log"
    with pytest.raises(ConfigError, match=rf"svc: log file {bad}"):
        daemon.start_detached(lambda ready: None, name="svc", log_path=str(bad))


def test_stop_signal() -> None:
    with StopSignal() as stop:
        assert not stop.is_set() and not stop.wait(0.01)
        assert select.select([stop], [], [], 0)[0] == []
        stop.set()
        stop.set()
        assert stop.is_set() and stop.wait(0)
        assert select.select([stop], [], [], 0)[0] == [stop]


def test_signal_handlers_restore() -> None:
    hits: list[int] = []
    before = signal.getsignal(signal.SIGHUP)
    restore = daemon.install_signal_handlers(lambda: hits.append(1))
    try:
        os.kill(os.getpid(), signal.SIGHUP)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)  # handlers run between bytecodes
    finally:
        restore()
    assert hits == [1, 1]
    assert signal.getsignal(signal.SIGHUP) == before


@pytest.mark.kernel
def test_sigkill_leaves_a_state_file_down_can_clean(
    tun_ok: None, testbed: netns.Testbed, tmp_path: Path, pids: list[int]
) -> None:
    """A service configures its TUN as `up` does, records it, and is killed outright: the TUN
    goes with it, the rules stay, and undo from the state file leaves the namespace as it
    was."""
    h = testbed.host("h")
    run_dir = str(tmp_path / "run")
    name = f"nd{os.getpid() % 100000}"
    before = snapshot(h)

    def service(ready: Ready) -> None:
        fd, _ = kc.tun_open(name, vnet_hdr=False)
        p = iface.plan(name, ["198.18.5.1/24", "fd00::5:1/64"], None, [["0.0.0.0/0", "::/0"]])
        made = iface.apply(p)
        state = iface.State(
            os.getpid(), "/x/wg.conf", made, "/nonexistent.sock", daemon.start_time(os.getpid())
        )
        iface.write_state(state, run_dir)
        ready()
        with StopSignal() as stop:
            stop.install()
            stop.wait()
        iface.undo(made)
        os.close(fd)

    pid = h.run(daemon.start_detached, service, name="tun")
    pids.append(pid)
    state = iface.read_state(name, run_dir)
    assert state.pid == pid and daemon.is_alive(pid, state.started)
    os.kill(pid, signal.SIGKILL)
    assert daemon.stop(pid, timeout=2) in ("gone", "stopped")  # reaps it
    assert _gone(pid)
    left = snapshot(h)
    assert left != before and name not in str(left["addr"])  # the TUN went, the rules stayed
    # what `down` does: the daemon is not there to stop; undo the record, drop the file
    state = iface.read_state(name, run_dir)
    assert daemon.stop(state.pid, started=state.started) == "gone"
    h.run(iface.undo, state.made)
    iface.remove_state(name, run_dir)
    assert snapshot(h) == before
    assert os.listdir(run_dir) == []


@pytest.mark.kernel
def test_orderly_stop_in_namespace(
    tun_ok: None, testbed: netns.Testbed, tmp_path: Path, pids: list[int]
) -> None:
    """The same service stopped by SIGTERM undoes its own configuration."""
    h = testbed.host("h")
    name = f"nd{os.getpid() % 100000}"
    before = snapshot(h)

    def service(ready: Ready) -> None:
        with StopSignal() as stop:
            stop.install()
            fd, _ = kc.tun_open(name, vnet_hdr=False)
            made = iface.apply(iface.plan(name, ["198.18.5.1/24"], None, [["0.0.0.0/0"]]))
            ready()
            stop.wait()
            iface.undo(made)
            os.close(fd)

    pid = h.run(daemon.start_detached, service, name="tun")
    pids.append(pid)
    assert snapshot(h) != before
    assert daemon.stop(pid) == "stopped"
    assert snapshot(h) == before
