"""Network namespaces this process creates, and the address ranges allowed in them.

The primitives below both the kernel devices (``devices/``: a TUN, a UDP or packet
socket made inside one of our namespaces, the ethtool guard) and the test hosts
(``testing/netns.py``: ``Testbed``, veth links, TUN helpers). Nothing here imports
either of them.

Namespaces are named ``nof-<pid>-<n>-<tag>``; ``is_project_netns`` says whether
this process made one (what the device helpers check before touching anything);
addresses inside them come from 198.18.0.0/15 and fd00::/8 only
(``check_address`` enforces it). Every namespace is removed on exit: by
``Netns.delete``, by an ``atexit`` hook, and on SIGTERM/SIGHUP (turned into
``SystemExit`` so the same clean-up runs; Ctrl-C is a KeyboardInterrupt).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ipaddress
import itertools
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any, TypeVar

from netoffload.errors import ConfigError, DeviceError

T = TypeVar("T")

NETNS_DIR = "/var/run/netns"
ALLOWED_NETS = (ipaddress.ip_network("198.18.0.0/15"), ipaddress.ip_network("fd00::/8"))

_lock = threading.Lock()
_counter = itertools.count()
#: namespace name -> pid of the process that created it (and must remove it)
_OWNED: dict[str, int] = {}
_hooks_installed = False


def prefix(pid: int | None = None) -> str:
    """Namespace name prefix of a process: ``nof-<pid>-``."""
    return f"nof-{os.getpid() if pid is None else pid}-"


def check_address(addr: str) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    """Parse ``addr`` (``a.b.c.d[/len]`` or v6) and refuse anything outside the test ranges."""
    try:
        iface = ipaddress.ip_interface(addr)
    except ValueError as e:
        raise ConfigError(f"address {addr!r}: {e}") from None
    if not any(iface.network.subnet_of(n) for n in ALLOWED_NETS if n.version == iface.version):  # type: ignore[arg-type]
        raise ConfigError(
            f"address {addr!r} is outside 198.18.0.0/15 and fd00::/8 (test ranges only)"
        )
    return iface


def available() -> str | None:
    """None if namespaces can be used here, else the reason why not."""
    if os.geteuid() != 0:
        return "not root (network namespaces need CAP_SYS_ADMIN)"
    if not os.path.exists("/proc/self/ns/net"):
        return "no network namespace support"
    return None


def is_project_netns(name: str) -> bool:
    """True if namespace ``name`` was created by this process's testbed."""
    return _OWNED.get(name) == os.getpid()


def _run(argv: Sequence[str], *, check: bool = True, timeout: float = 20.0) -> str:
    p = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise DeviceError(f"{' '.join(argv)}: {p.stderr.strip() or f'exit {p.returncode}'}")
    return p.stdout


def _delete_ns(name: str) -> None:
    # `ip netns del` unmounts and unlinks; the kernel frees the namespace (and
    # destroys its veth/TUN interfaces) when the last reference goes.
    subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=20)


def cleanup_all() -> None:
    """Remove every namespace this process created (idempotent)."""
    me = os.getpid()
    with _lock:
        mine = [n for n, pid in _OWNED.items() if pid == me]
        for n in mine:
            _OWNED.pop(n, None)
    for n in mine:
        _delete_ns(n)


def cleanup_stale() -> list[str]:
    """Remove ``nof-<pid>-*`` namespaces whose creating process is gone."""
    removed = []
    try:
        names = os.listdir(NETNS_DIR)
    except OSError:
        return []
    for n in names:
        parts = n.split("-")
        if len(parts) < 3 or parts[0] != "nof" or not parts[1].isdigit():
            continue
        pid = int(parts[1])
        if pid == os.getpid() or os.path.exists(f"/proc/{pid}"):
            continue
        _delete_ns(n)
        removed.append(n)
    return removed


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def _install_hooks() -> None:
    global _hooks_installed
    if _hooks_installed:
        return
    _hooks_installed = True
    cleanup_stale()  # leftovers of processes that died without cleaning up (SIGKILL)
    atexit.register(cleanup_all)
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(sig) in (signal.SIG_DFL, None):
                signal.signal(sig, _on_signal)


CLONE_NEWNET = 0x40000000
_libc: ctypes.CDLL | None = None


def setns(fd: int, nstype: int = CLONE_NEWNET) -> None:
    """setns(2) for the calling thread (Python 3.11 has no os.setns)."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, nstype) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"setns: {os.strerror(e)}")


@contextlib.contextmanager
def _in_netns_path(path: str) -> Iterator[None]:
    """Switch the calling thread into the namespace at ``path``, and back."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            setns(home)
    finally:
        os.close(home)


class NsProcess:
    """A forked child running a function inside a namespace."""

    def __init__(self, proc: Any, conn: multiprocessing.connection.Connection) -> None:
        self.proc = proc
        self._conn = conn

    @property
    def pid(self) -> int:
        return int(self.proc.pid)

    def join(self, timeout: float | None = None) -> Any:
        """Wait for the result; raises DeviceError if the child failed or timed out."""
        if not self._conn.poll(timeout):
            self.kill()
            raise DeviceError(f"child {self.pid} gave no result within {timeout} s")
        ok, value = self._conn.recv()
        self.proc.join(5)
        self._conn.close()
        if not ok:
            raise DeviceError(f"child {self.pid} failed: {value}")
        return value

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(5)
        with contextlib.suppress(OSError):
            self._conn.close()


def _child_main(path: str, conn: Any, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
        setns(fd)
        os.close(fd)
        conn.send((True, fn(*args)))
    except BaseException as e:  # report anything to the parent
        conn.send((False, f"{type(e).__name__}: {e}"))
    finally:
        conn.close()


@dataclass
class Netns:
    """One network namespace created by us."""

    name: str

    @property
    def path(self) -> str:
        return os.path.join(NETNS_DIR, self.name)

    @property
    def alive(self) -> bool:
        return os.path.exists(self.path)

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """Inside the block, the calling thread is in this namespace."""
        if not self.alive:
            raise DeviceError(f"namespace {self.name} is gone")
        with _in_netns_path(self.path):
            yield

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call ``fn`` in this thread, inside the namespace."""
        with self.entered():
            return fn(*args, **kwargs)

    def spawn(self, fn: Callable[..., Any], *args: Any) -> NsProcess:
        """Run ``fn(*args)`` in a forked child inside the namespace; ``join()`` gives the result."""
        ctx = multiprocessing.get_context("fork")
        parent, child = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_child_main, args=(self.path, child, fn, args), daemon=True)
        proc.start()
        child.close()
        return NsProcess(proc, parent)

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start a process inside the namespace (``ip netns exec``)."""
        return subprocess.Popen(["ip", "netns", "exec", self.name, *argv], **kwargs)

    def exec(self, argv: Sequence[str], *, check: bool = True, timeout: float = 20.0) -> str:
        """Run a command inside the namespace, return its stdout."""
        return _run(["ip", "netns", "exec", self.name, *argv], check=check, timeout=timeout)

    def ip(self, *args: str, check: bool = True) -> str:
        """``ip -n <ns> ...``"""
        return _run(["ip", "-n", self.name, *args], check=check)

    def add_address(self, ifname: str, addr: str) -> None:
        iface = check_address(addr)
        self.ip(
            "addr", "add", str(iface), "dev", ifname, *(["nodad"] if iface.version == 6 else [])
        )

    def add_route(self, dst: str, *, dev: str | None = None, via: str | None = None) -> None:
        check_address(dst)
        args = ["route", "add", dst]
        if via:
            check_address(via)
            args += ["via", via]
        if dev:
            args += ["dev", dev]
        if ipaddress.ip_network(dst, strict=False).version == 6:
            args = ["-6", *args]
        self.ip(*args)

    def socket(
        self, family: int = socket.AF_INET, type: int = socket.SOCK_DGRAM, proto: int = 0
    ) -> socket.socket:
        """A socket created inside the namespace (usable from any thread)."""
        with self.entered():
            return socket.socket(family, type, proto)

    def snmp(self) -> dict[str, dict[str, int]]:
        """/proc/net/snmp (+ snmp6) of the namespace: {"Tcp": {"InCsumErrors": n, ...}, ...}."""

        def read() -> dict[str, dict[str, int]]:
            out: dict[str, dict[str, int]] = {}
            with open("/proc/thread-self/net/snmp") as f:
                lines = f.read().splitlines()
            for head, vals in zip(lines[::2], lines[1::2], strict=False):
                k, _, names = head.partition(":")
                out[k] = dict(
                    zip(
                        names.split(), (int(v) for v in vals.split(":", 1)[1].split()), strict=False
                    )
                )
            with contextlib.suppress(OSError), open("/proc/thread-self/net/snmp6") as f:
                out["Ip6"] = {ln.split()[0]: int(ln.split()[1]) for ln in f if ln.strip()}
            return out

        return self.run(read)

    def link_stats(self, ifname: str) -> dict[str, int]:
        """rx/tx packets, bytes, errors, drops of an interface in this namespace."""
        import json

        data = json.loads(self.ip("-s", "-j", "link", "show", "dev", ifname))
        st = data[0]["stats64"]
        return {f"{d}_{k}": int(v) for d in ("rx", "tx") for k, v in st[d].items()}

    def sysctl(self, key: str, value: str) -> None:
        """Set a ``net.*`` sysctl of this namespace (e.g. ``net.ipv4.ip_forward``)."""
        if not key.startswith("net.") or ".." in key or "/" in key:
            raise ConfigError(f"sysctl {key!r}: only net.* keys of our namespaces")
        path = "/proc/sys/" + key.replace(".", "/")

        def write() -> None:
            with open(path, "w") as f:
                f.write(value)

        self.run(write)

    def mac(self, ifname: str) -> str:
        import json

        return str(json.loads(self.ip("-j", "link", "show", "dev", ifname))[0]["address"])

    def static_neighbors(
        self, ifname: str, peer: Netns, peer_ifname: str, addrs: Sequence[str]
    ) -> None:
        """Permanent ARP/ND entries: the peer's ``addrs`` -> its MAC (no resolution delays)."""
        mac = peer.mac(peer_ifname)
        for a in addrs:
            ip = check_address(a).ip
            self.ip("neigh", "replace", str(ip), "lladdr", mac, "dev", ifname, "nud", "permanent")

    def ifindex(self, ifname: str) -> int:
        return self.run(socket.if_nametoindex, ifname)

    def delete(self) -> None:
        """Remove the namespace now (its interfaces go with it)."""
        with _lock:
            _OWNED.pop(self.name, None)
        _delete_ns(self.name)


def create_netns(tag: str = "h") -> Netns:
    """Create a namespace ``nof-<pid>-<n>-<tag>`` with ``lo`` up."""
    reason = available()
    if reason:
        raise DeviceError(f"cannot create a network namespace: {reason}")
    if not tag.replace("_", "").isalnum() or len(tag) > 12:
        raise ConfigError(f"namespace tag {tag!r}: 1..12 letters/digits")
    _install_hooks()
    name = f"{prefix()}{next(_counter)}-{tag}"
    with _lock:
        _OWNED[name] = os.getpid()
    try:
        _run(["ip", "netns", "add", name])
        ns = Netns(name)
        ns.ip("link", "set", "lo", "up")
    except BaseException:
        with _lock:
            _OWNED.pop(name, None)
        _delete_ns(name)
        raise
    return ns
