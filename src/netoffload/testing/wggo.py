"""The Debian ``wireguard-go`` in a test namespace, configured with the real ``wg`` tool.

Typical use (root, inside a ``Testbed``)::

    with WireguardGo(host, addresses=["198.18.100.1/24", "fd00:100::1/64"]) as wg:
        wg.set_peer(our_public_key, allowed_ips=["198.18.100.2/32"],
                    endpoint=("198.18.0.2", 51820))
        host.exec(["ping", "-c", "3", "198.18.100.2"])
        peer = wg.dump().peers[our_public_key]

The daemon runs in the foreground (``WG_PROCESS_FOREGROUND=1``) inside the
namespace, so its TUN interface is there; its UAPI socket is
``/var/run/wireguard/NAME.sock``, a path every namespace shares, hence unique
interface names (the pid is part of the default). ``stop`` (also on leaving
the ``with`` block and at exit) ends the process and removes the socket file.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import itertools
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType

from netoffload.errors import ConfigError, DeviceError
from netoffload.testing.netns import Netns, check_address
from netoffload.testing.procs import stop_process

WG_GO = "wireguard-go"
WG = "wg"
SOCKET_DIR = "/var/run/wireguard"
_counter = itertools.count()
_RUNNING: set[WireguardGo] = set()


def available() -> str | None:
    """None if wireguard-go and wg can be run here, else why not."""
    if os.geteuid() != 0:
        return "not root"
    for tool in (WG_GO, WG):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if not os.path.exists("/dev/net/tun"):
        return "no /dev/net/tun"
    return None


def _b64(key: bytes) -> str:
    return base64.b64encode(key).decode("ascii")


@dataclass(frozen=True)
class DumpPeer:
    """One peer line of ``wg show NAME dump``."""

    public_key: bytes
    preshared_key: bytes | None
    endpoint: str | None
    allowed_ips: tuple[str, ...]
    latest_handshake: int
    rx_bytes: int
    tx_bytes: int
    persistent_keepalive: int


@dataclass(frozen=True)
class Dump:
    """``wg show NAME dump``, parsed."""

    private_key: bytes
    public_key: bytes
    listen_port: int
    peers: dict[bytes, DumpPeer] = field(default_factory=dict)


def parse_dump(text: str) -> Dump:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise DeviceError("wg show dump: empty output")
    head = lines[0].split("\t")
    dump = Dump(base64.b64decode(head[0]), base64.b64decode(head[1]), int(head[2]))
    for ln in lines[1:]:
        f = ln.split("\t")
        pk = base64.b64decode(f[0])
        dump.peers[pk] = DumpPeer(
            public_key=pk,
            preshared_key=None if f[1] == "(none)" else base64.b64decode(f[1]),
            endpoint=None if f[2] == "(none)" else f[2],
            allowed_ips=tuple(x for x in f[3].split(",") if x and x != "(none)"),
            latest_handshake=int(f[4]),
            rx_bytes=int(f[5]),
            tx_bytes=int(f[6]),
            persistent_keepalive=0 if f[7] == "off" else int(f[7]),
        )
    return dump


class WireguardGo:
    """A wireguard-go interface in namespace ``host``."""

    def __init__(
        self,
        host: Netns,
        name: str | None = None,
        *,
        private_key: bytes | None = None,
        listen_port: int = 51820,
        addresses: Sequence[str] = (),
        mtu: int | None = None,
        log_level: str = "verbose",
    ) -> None:
        if name is None:
            name = f"wg{os.getpid() % 1_000_000}g{next(_counter)}"
        if not 1 <= len(name) <= 15 or not name.replace("_", "").isalnum():
            raise ConfigError(f"interface name {name!r}: 1..15 letters/digits")
        for a in addresses:
            check_address(a)
        self.host = host
        self.name = name
        self.private_key = private_key
        self.listen_port = listen_port
        self.addresses = list(addresses)
        self.mtu = mtu
        self.log_level = log_level
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_fd, self._log_path, self._tmpdir = -1, "", ""  # made by start()

    @property
    def socket_path(self) -> str:
        return os.path.join(SOCKET_DIR, f"{self.name}.sock")

    # ------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 10.0) -> WireguardGo:
        if os.path.exists(self.socket_path):
            raise DeviceError(f"{self.socket_path} exists: interface name {self.name} is in use")
        if self.proc is not None:
            raise DeviceError(f"wireguard-go {self.name}: already started")
        self._log_fd, self._log_path = tempfile.mkstemp(prefix=f"{self.name}-", suffix=".log")
        self._tmpdir = tempfile.mkdtemp(prefix=f"{self.name}-keys-")
        env = dict(os.environ, WG_PROCESS_FOREGROUND="1", LOG_LEVEL=self.log_level)
        self.proc = self.host.popen(
            [WG_GO, self.name], env=env, stdout=self._log_fd, stderr=subprocess.STDOUT
        )
        _RUNNING.add(self)
        try:
            deadline = time.monotonic() + timeout
            while not os.path.exists(self.socket_path):
                if self.proc.poll() is not None:
                    raise DeviceError(f"wireguard-go exited {self.proc.returncode}: {self.log()}")
                if time.monotonic() > deadline:
                    raise DeviceError(f"wireguard-go: no UAPI socket after {timeout} s")
                time.sleep(0.02)
            args = ["listen-port", str(self.listen_port)]
            if self.private_key is not None:
                args += ["private-key", self._keyfile("private", self.private_key)]
            self.wg("set", self.name, *args)
            if self.mtu is not None:
                self.host.ip("link", "set", self.name, "mtu", str(self.mtu))
            for a in self.addresses:
                self.host.add_address(self.name, a)
            self.host.ip("link", "set", self.name, "up")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """End the daemon; remove its socket file, key files and log (idempotent)."""
        if self.proc is not None:
            stop_process(self.proc, 5.0)
        _RUNNING.discard(self)
        with contextlib.suppress(OSError):
            os.unlink(self.socket_path)
        if self._tmpdir:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
        if self._log_fd >= 0:
            os.close(self._log_fd)
            self._log_fd = -1
        if self._log_path:
            with contextlib.suppress(OSError):
                os.unlink(self._log_path)

    def __enter__(self) -> WireguardGo:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def log(self, tail: int = 4000) -> str:
        """The daemon's output so far (its last ``tail`` characters)."""
        try:
            with open(self._log_path, errors="replace") as f:
                return f.read()[-tail:]
        except OSError:
            return ""

    # ------------------------------------------------------------ configure
    def _keyfile(self, what: str, key: bytes) -> str:
        if not self._tmpdir:
            raise DeviceError(f"wireguard-go {self.name}: not started")
        path = os.path.join(self._tmpdir, what)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(_b64(key) + "\n")
        return path

    def wg(self, *args: str) -> str:
        """Run ``wg ARGS`` inside the namespace; its stdout."""
        return self.host.exec([WG, *args])

    def set_peer(
        self,
        public_key: bytes,
        *,
        allowed_ips: Sequence[str] = (),
        endpoint: tuple[str, int] | None = None,
        preshared_key: bytes | None = None,
        persistent_keepalive: int | None = None,
    ) -> None:
        args = ["peer", _b64(public_key)]
        if allowed_ips:
            for a in allowed_ips:
                check_address(a)
            args += ["allowed-ips", ",".join(allowed_ips)]
        if endpoint is not None:
            check_address(endpoint[0])
            host = f"[{endpoint[0]}]" if ":" in endpoint[0] else endpoint[0]
            args += ["endpoint", f"{host}:{endpoint[1]}"]
        if preshared_key is not None:
            args += ["preshared-key", self._keyfile("psk", preshared_key)]
        if persistent_keepalive is not None:
            args += ["persistent-keepalive", str(persistent_keepalive or "off")]
        self.wg("set", self.name, *args)

    def public_key(self) -> bytes:
        return base64.b64decode(self.wg("show", self.name, "public-key").strip())

    def dump(self) -> Dump:
        return parse_dump(self.wg("show", self.name, "dump"))


@atexit.register
def _stop_all() -> None:
    for w in list(_RUNNING):
        w.stop()
