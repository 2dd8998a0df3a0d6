"""WireGuard's cross-platform userspace configuration protocol (UAPI), and its server.

A userspace WireGuard implementation listens on the unix stream socket
``/var/run/wireguard/NAME.sock``; the ``wg`` tool talks to it in a small text
protocol of ``key=value`` lines. A request is a line ``get=1`` or ``set=1``,
for ``set`` followed by ``key=value`` lines, and ends with an empty line. The
answer to ``set`` is ``errno=N`` and an empty line (0: done; a failure is a
negated errno, ``errno=-22``, as wireguard-go answers and ``wg`` reads it); the
answer to ``get`` is the configuration and statistics, then ``errno=0`` and an
empty line (a failed get is ``errno=N``, positive: wg reads a get's value so).
Several requests may follow one another on one connection.

``set`` keys, in order: first the interface's (``private_key``, ``listen_port``,
``fwmark``, ``replace_peers=true``), then per peer a ``public_key`` line starting
its block followed by ``remove=true``, ``update_only=true``, ``preshared_key``,
``endpoint``, ``persistent_keepalive_interval``, ``replace_allowed_ips=true``,
``allowed_ip`` (repeatable) and ``protocol_version`` (1). Keys are 64 hex digits;
an all-zero private or preshared key removes it, ``fwmark=0`` removes the mark.
Endpoints are ``a.b.c.d:port`` or ``[v6addr]:port``. An unknown key or bad value
is ``errno=-22`` (EINVAL) and changes nothing: a set request is parsed whole
before anything is applied.

The protocol part (``parse_set``, ``format_get``, ``RequestReader``, ``respond``,
``apply_set``) is sans-IO; ``UapiServer`` is the socket around it, and it never
touches tunnel state itself: it calls a :class:`UapiHandler`.
"""

from __future__ import annotations

import contextlib
import errno as _errno
import ipaddress
import logging
import os
import re
import selectors
import socket
import stat
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

from netoffload.errors import ConfigError, NetoffloadError
from netoffload.tunnel.config import (
    IPNetwork,
    format_endpoint,
    parse_network,
    valid_ifname,
)

log = logging.getLogger(__name__)

EINVAL = _errno.EINVAL
EIO = _errno.EIO
EPROTO = _errno.EPROTO
SOCK_DIR = "/var/run/wireguard"
MAX_REQUEST = 1 << 20  # bytes of one request, and of a connection's unread input
IDLE_TIMEOUT = 5.0  # seconds a connection may stay silent
MAX_CONNECTIONS = 64
KEY_LEN = 32
PROTOCOL_VERSION = 1

_HEX_KEY_RE = re.compile(r"[0-9a-fA-F]{64}")
_DIGITS_RE = re.compile(r"[0-9]{1,20}")


class UapiError(NetoffloadError):
    """A request the protocol refuses, with the (positive) errno to answer."""

    def __init__(self, errno: int = EINVAL, message: str = "invalid request") -> None:
        self.errno = errno
        super().__init__(f"{message} (errno {errno})")


# --------------------------------------------------------------------------- values


@dataclass(frozen=True)
class PeerUpdate:
    """One peer block of a set request (None / False: not given). ``remove``,
    ``update_only`` and ``replace_allowed_ips`` hold for the whole block, as
    when they come first (wg always sends them first)."""

    public_key: bytes
    remove: bool = False
    update_only: bool = False
    preshared_key: bytes | None = field(default=None, repr=False)  # all zeros: remove the key
    endpoint: tuple[str, int] | None = None
    persistent_keepalive: int | None = None  # 0: off
    replace_allowed_ips: bool = False
    allowed_ips: tuple[IPNetwork, ...] = ()  # host bits cleared
    protocol_version: int | None = None


@dataclass(frozen=True)
class SetRequest:
    """A parsed ``set=1`` request (None / False: not given)."""

    private_key: bytes | None = field(default=None, repr=False)  # all zeros: remove the key
    listen_port: int | None = None
    fwmark: int | None = None  # 0: remove the mark
    replace_peers: bool = False
    peers: tuple[PeerUpdate, ...] = ()


@dataclass(frozen=True)
class UapiPeer:
    public_key: bytes
    preshared_key: bytes | None = field(default=None, repr=False)
    endpoint: tuple[str, int] | None = None
    last_handshake: float = 0.0  # wall-clock seconds (time.time()); 0: never
    tx_bytes: int = 0
    rx_bytes: int = 0
    persistent_keepalive: int = 0
    allowed_ips: tuple[IPNetwork, ...] = ()


@dataclass(frozen=True)
class UapiState:
    """What ``get=1`` reports."""

    private_key: bytes | None = field(default=None, repr=False)
    listen_port: int = 0
    fwmark: int = 0
    peers: tuple[UapiPeer, ...] = field(default=())


class UapiHandler(Protocol):
    """What the server calls; the tunnel implements it (calls come under ``server.lock``)."""

    def uapi_get(self) -> UapiState: ...

    def uapi_set(self, req: SetRequest) -> None: ...


# --------------------------------------------------------------------------- set


def _bad(line: str, why: str, errno: int = EINVAL) -> UapiError:
    shown = line if len(line) <= 80 else line[:77] + "..."
    return UapiError(errno, f"{shown!r}: {why}")


def _key(line: str, value: str) -> bytes:
    if not _HEX_KEY_RE.fullmatch(value):
        raise _bad(line, "not a key of 64 hex digits")
    return bytes.fromhex(value)


def _uint(line: str, value: str, bits: int) -> int:
    if not _DIGITS_RE.fullmatch(value):
        raise _bad(line, "not a decimal number")
    n = int(value)
    if n >= 1 << bits:
        raise _bad(line, f"more than {bits} bits")
    return n


def _true(line: str, value: str) -> bool:
    if value != "true":
        raise _bad(line, "the only value is true")
    return True


def parse_uapi_endpoint(value: str) -> tuple[str, int]:
    """``a.b.c.d:port`` or ``[v6addr]:port`` (zone allowed) to ``(address, port)``."""
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError("not [v6addr]:port")
        port_text, want = rest[1:], 6
    else:
        host, sep, port_text = value.rpartition(":")
        if not sep:
            raise ValueError("no :port")
        want = 4
    if not _DIGITS_RE.fullmatch(port_text) or not 1 <= int(port_text) <= 65535:
        raise ValueError("port is not 1..65535")
    if want == 4 and "%" in host:
        raise ValueError("not an IPv4 address")
    addr = ipaddress.ip_address(host)  # ValueError
    if addr.version != want:
        raise ValueError("IPv6 endpoints are [v6addr]:port" if want == 4 else "not IPv6")
    return str(addr), int(port_text)


def parse_set(lines: Iterable[str]) -> SetRequest:
    """The ``key=value`` lines of a set request (after ``set=1``, before the empty
    line; a trailing newline on each is allowed) to a SetRequest; UapiError
    (EINVAL; EPROTO for a line without '=', as wireguard-go) for anything the
    protocol does not allow. A key given twice in one
    block is refused (wg never sends that); ``replace_allowed_ips`` after some
    ``allowed_ip`` lines discards them, as applying the lines in order would."""
    req = SetRequest()
    seen: set[str] = set()
    peers: list[PeerUpdate] = []
    peer: PeerUpdate | None = None
    allowed: list[IPNetwork] = []

    def finish() -> None:
        if peer is not None:
            peers.append(replace(peer, allowed_ips=tuple(allowed)))

    for raw in lines:
        line = raw[:-1] if raw.endswith("\n") else raw
        key, eq, value = line.partition("=")
        if not eq:  # wireguard-go answers EPROTO here, EINVAL for what is not a key
            raise _bad(line, "not key=value", EPROTO)
        if not key:
            raise _bad(line, "no key")
        if key == "public_key":
            finish()
            peer, allowed, seen = PeerUpdate(public_key=_key(line, value)), [], set()
            continue
        if key in seen and key != "allowed_ip":
            raise _bad(line, "given twice")
        seen.add(key)
        if peer is None:
            if key == "private_key":
                req = replace(req, private_key=_key(line, value))
            elif key == "listen_port":
                req = replace(req, listen_port=_uint(line, value, 16))
            elif key == "fwmark":
                req = replace(req, fwmark=_uint(line, value, 32))
            elif key == "replace_peers":
                req = replace(req, replace_peers=_true(line, value))
            else:
                raise _bad(line, "unknown interface key")
        elif key == "allowed_ip":
            try:
                allowed.append(parse_network(value, need_prefix=True))
            except ValueError as e:
                raise _bad(line, str(e)) from None
        elif key == "remove":
            peer = replace(peer, remove=_true(line, value))
        elif key == "update_only":
            peer = replace(peer, update_only=_true(line, value))
        elif key == "replace_allowed_ips":
            peer = replace(peer, replace_allowed_ips=_true(line, value))
            allowed = []
        elif key == "preshared_key":
            peer = replace(peer, preshared_key=_key(line, value))
        elif key == "endpoint":
            try:
                peer = replace(peer, endpoint=parse_uapi_endpoint(value))
            except ValueError as e:
                raise _bad(line, str(e)) from None
        elif key == "persistent_keepalive_interval":
            peer = replace(peer, persistent_keepalive=_uint(line, value, 16))
        elif key == "protocol_version":
            if value != str(PROTOCOL_VERSION):
                raise _bad(line, f"only protocol version {PROTOCOL_VERSION} exists")
            peer = replace(peer, protocol_version=PROTOCOL_VERSION)
        else:
            raise _bad(line, "unknown peer key")
    finish()
    return replace(req, peers=tuple(peers))


def format_set(req: SetRequest) -> str:
    """The wire form of a set request, ``set=1`` to the empty line (as wg sends it)."""
    out = ["set=1"]
    if req.private_key is not None:
        out.append(f"private_key={req.private_key.hex()}")
    if req.listen_port is not None:
        out.append(f"listen_port={req.listen_port}")
    if req.fwmark is not None:
        out.append(f"fwmark={req.fwmark}")
    if req.replace_peers:
        out.append("replace_peers=true")
    for p in req.peers:
        out.append(f"public_key={p.public_key.hex()}")
        for flag in ("remove", "update_only"):
            if getattr(p, flag):
                out.append(f"{flag}=true")
        if p.preshared_key is not None:
            out.append(f"preshared_key={p.preshared_key.hex()}")
        if p.endpoint is not None:
            out.append(f"endpoint={format_endpoint(p.endpoint)}")
        if p.persistent_keepalive is not None:
            out.append(f"persistent_keepalive_interval={p.persistent_keepalive}")
        if p.replace_allowed_ips:
            out.append("replace_allowed_ips=true")
        out += [f"allowed_ip={n}" for n in p.allowed_ips]
        if p.protocol_version is not None:
            out.append(f"protocol_version={p.protocol_version}")
    return "\n".join(out) + "\n\n"


# --------------------------------------------------------------------------- get


def _handshake(t: float) -> tuple[int, int]:
    if not t > 0:  # also NaN
        return 0, 0
    sec = int(t)
    nsec = min(999_999_999, max(0, round((t - sec) * 1e9)))
    return sec, nsec


def format_get(state: UapiState) -> str:
    """The answer to ``get=1``: configuration and statistics, ``errno=0``, an empty line."""
    out: list[str] = []
    if state.private_key is not None and any(state.private_key):
        out.append(f"private_key={state.private_key.hex()}")
    out.append(f"listen_port={state.listen_port}")
    if state.fwmark:
        out.append(f"fwmark={state.fwmark}")
    for p in state.peers:
        sec, nsec = _handshake(p.last_handshake)
        out += [
            f"public_key={p.public_key.hex()}",
            f"preshared_key={(p.preshared_key or bytes(KEY_LEN)).hex()}",
            f"protocol_version={PROTOCOL_VERSION}",
        ]
        if p.endpoint is not None:
            out.append(f"endpoint={format_endpoint(p.endpoint)}")
        out += [
            f"last_handshake_time_sec={sec}",
            f"last_handshake_time_nsec={nsec}",
            f"tx_bytes={p.tx_bytes}",
            f"rx_bytes={p.rx_bytes}",
            f"persistent_keepalive_interval={p.persistent_keepalive}",
        ]
        out += [f"allowed_ip={n}" for n in p.allowed_ips]
    out.append("errno=0")
    return "\n".join(out) + "\n\n"


# --------------------------------------------------------------------------- semantics


def clamp(private_key: bytes) -> bytes:
    """A Curve25519 private key as WireGuard stores (and reports) it."""
    k = bytearray(private_key)
    k[0] &= 248
    k[31] = (k[31] & 127) | 64
    return bytes(k)


def apply_set(state: UapiState, req: SetRequest) -> UapiState:
    """``state`` after ``req``, as WireGuard applies a set request: the private
    key is stored clamped (wireguard-go and the kernel report it so); replace_peers
    drops every peer first; a block adds the peer unless update_only (then an
    unknown peer is skipped) or remove; replace_allowed_ips clears its list
    before the block's allowed_ip lines; an allowed IP belongs to one peer only
    (giving it to a peer takes it from any other); zero keys and fwmark remove."""
    private_key = state.private_key
    if req.private_key is not None:
        private_key = clamp(req.private_key) if any(req.private_key) else None
    peers: dict[bytes, UapiPeer] = (
        {} if req.replace_peers else {p.public_key: p for p in state.peers}
    )
    for u in req.peers:
        old = peers.get(u.public_key)
        if u.remove:
            peers.pop(u.public_key, None)
            continue
        if old is None:
            if u.update_only:
                continue
            old = UapiPeer(public_key=u.public_key)
        new = old
        if u.preshared_key is not None:
            new = replace(new, preshared_key=u.preshared_key if any(u.preshared_key) else None)
        if u.endpoint is not None:
            new = replace(new, endpoint=u.endpoint)
        if u.persistent_keepalive is not None:
            new = replace(new, persistent_keepalive=u.persistent_keepalive)
        ips = [] if u.replace_allowed_ips else list(new.allowed_ips)
        for net in u.allowed_ips:
            for pk, other in peers.items():
                if pk != u.public_key and net in other.allowed_ips:
                    peers[pk] = replace(
                        other, allowed_ips=tuple(n for n in other.allowed_ips if n != net)
                    )
            if net not in ips:
                ips.append(net)
        peers[u.public_key] = replace(new, allowed_ips=tuple(ips))
    return UapiState(
        private_key=private_key,
        listen_port=state.listen_port if req.listen_port is None else req.listen_port,
        fwmark=state.fwmark if req.fwmark is None else req.fwmark,
        peers=tuple(peers.values()),
    )


# --------------------------------------------------------------------------- framing


class RequestReader:
    """Cuts a connection's bytes into requests (sans-IO).

    ``feed`` bytes as they come; ``next()`` returns the lines of the next whole
    request (without the ending empty line) or None. ``overflow`` turns true
    when a request grows past ``limit`` bytes: the connection should be dropped.
    """

    def __init__(self, limit: int = MAX_REQUEST) -> None:
        self.limit = limit
        self._buf = bytearray()
        self._scan = 0  # where to look for the end next time
        self.overflow = False

    def feed(self, data: bytes) -> None:
        self._buf += data

    @property
    def pending(self) -> int:
        return len(self._buf)

    def next(self) -> list[str] | None:
        if self.overflow:
            return None
        if self._buf.startswith(b"\n"):  # an empty request (answered errno=-22)
            del self._buf[:1]
            self._scan = 0
            return []
        at = self._buf.find(b"\n\n", max(0, self._scan - 1))
        if at < 0:
            self._scan = len(self._buf)
            if len(self._buf) > self.limit:
                self.overflow = True
            return None
        end = at + 1  # the request with its last line's newline
        if end > self.limit:
            self.overflow = True
            return None
        raw = bytes(self._buf[:end])
        del self._buf[: end + 1]
        self._scan = 0
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return ["\x00invalid utf-8"]  # no valid request has a NUL: answered errno=-22
        return text.split("\n")[:-1]


def error_answer(op: str, errno: int) -> str:
    """The answer to a failed request: ``errno=-N`` to a set (or anything not a
    get), ``errno=N`` to a get. The signs are what the wg tool reads: it takes
    a set's value as a negated errno (wireguard-go answers ``errno=-22``, and
    ``wg set`` then says "Invalid argument"), but a get's as a plain number."""
    return f"errno={errno if op == 'get=1' else -errno}\n\n"


def respond(lines: Sequence[str], handler: UapiHandler) -> str:
    """The answer to one request's lines (see RequestReader) from ``handler``."""
    op = lines[0] if lines else ""
    try:
        if op == "get=1":
            if len(lines) != 1:
                raise UapiError(EINVAL, "get=1 takes no keys")
            return format_get(handler.uapi_get())
        if op == "set=1":
            handler.uapi_set(parse_set(lines[1:]))
            return "errno=0\n\n"
        raise UapiError(EINVAL, "not get=1 or set=1")
    except UapiError as e:
        log.debug("uapi: %s", e)
        return error_answer(op, e.errno)
    except Exception:  # a bug in the handler must not take the server down
        log.exception("uapi: handler failed")
        return error_answer(op, EIO)


# --------------------------------------------------------------------------- server


class _Conn:
    def __init__(self, sock: socket.socket, now: float, limit: int) -> None:
        self.sock = sock
        self.reader = RequestReader(limit)
        self.out = bytearray()
        self.last = now
        self.eof = False


class UapiServer:
    """Serves the UAPI of interface ``name`` at ``sock_dir/NAME.sock`` (mode 0600)
    from a daemon thread, calling ``handler`` under ``self.lock``."""

    def __init__(
        self,
        name: str,
        handler: UapiHandler,
        sock_dir: str | Path = SOCK_DIR,
        *,
        max_request: int = MAX_REQUEST,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        if not valid_ifname(name):
            raise ConfigError(f"{name!r} is not a valid interface name")
        self.name = name
        self.handler = handler
        self.sock_dir = Path(sock_dir)
        self.path = self.sock_dir / f"{name}.sock"
        self.max_request = max_request
        self.idle_timeout = idle_timeout
        self.lock = threading.RLock()
        self._listener: socket.socket | None = None
        self._ident: tuple[int, int] | None = None  # (st_dev, st_ino) of our socket file
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._closed = False

    # -- life cycle

    def start(self) -> UapiServer:
        if self._closed or self._thread is not None:
            raise ConfigError(f"UAPI server of {self.name} cannot be started twice")
        self._make_dir()
        self._clear_stale()
        self._listener = self._bind()
        self._thread = threading.Thread(target=self._serve, name=f"uapi-{self.name}", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        if self._listener is not None:
            self._listener.close()
        self._remove_file()
        self._wake_r.close()
        self._wake_w.close()

    def __enter__(self) -> UapiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the socket file

    def _make_dir(self) -> None:
        try:
            if not self.sock_dir.is_dir():
                self.sock_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
                os.chmod(self.sock_dir, 0o755)
        except OSError as e:
            raise ConfigError(f"cannot create {self.sock_dir}: {e.strerror or e}") from None

    def _clear_stale(self) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        except OSError as e:
            raise ConfigError(f"cannot check {self.path}: {e.strerror or e}") from None
        if not stat.S_ISSOCK(st.st_mode):
            raise ConfigError(f"{self.path} exists and is not a socket; not replacing it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(2.0)
        try:
            probe.connect(str(self.path))
        except ConnectionRefusedError:  # left by a process that is gone
            log.info("uapi: removing stale socket %s", self.path)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            return
        except OSError as e:
            if e.errno == _errno.ENOENT:
                return
            raise ConfigError(f"cannot check {self.path}: {e.strerror or e}") from None
        finally:
            probe.close()
        raise ConfigError(f"interface {self.name} is in use (another process serves {self.path})")

    def _bind(self) -> socket.socket:
        tmp = self.sock_dir / f".{self.name}.{os.urandom(4).hex()}"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            sock.bind(str(tmp))
            os.chmod(tmp, 0o600)
            os.rename(tmp, self.path)
            st = os.lstat(self.path)
            self._ident = (st.st_dev, st.st_ino)
            sock.listen(16)
            sock.setblocking(False)
        except OSError as e:
            sock.close()
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise ConfigError(f"cannot listen on {self.path}: {e.strerror or e}") from None
        return sock

    def _remove_file(self) -> None:
        if self._ident is None:
            return
        try:
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == self._ident:
                os.unlink(self.path)
        except OSError:
            pass
        self._ident = None

    # -- the thread

    def _serve(self) -> None:
        assert self._listener is not None
        sel = selectors.DefaultSelector()
        sel.register(self._listener, selectors.EVENT_READ, None)
        sel.register(self._wake_r, selectors.EVENT_READ, None)
        conns: dict[int, _Conn] = {}

        def drop(c: _Conn) -> None:
            conns.pop(c.sock.fileno(), None)
            with contextlib.suppress(KeyError, ValueError):
                sel.unregister(c.sock)
            c.sock.close()

        try:
            while not self._stop.is_set():
                now = time.monotonic()
                wait = min(
                    (c.last + self.idle_timeout - now for c in conns.values()),
                    default=self.idle_timeout,
                )
                for key, mask in sel.select(max(0.0, wait)):
                    if key.fileobj is self._wake_r:
                        continue
                    if key.fileobj is self._listener:
                        self._accept(sel, conns)
                        continue
                    c = key.data
                    assert isinstance(c, _Conn)
                    if mask & selectors.EVENT_READ and not self._read(c):
                        drop(c)
                        continue
                    if not self._write(c):
                        drop(c)
                        continue
                    if c.eof and not c.out:
                        drop(c)
                        continue
                    want = selectors.EVENT_WRITE if c.out else 0
                    if not c.eof:
                        want |= selectors.EVENT_READ
                    sel.modify(c.sock, want, c)
                now = time.monotonic()
                for c in [c for c in conns.values() if now - c.last > self.idle_timeout]:
                    log.debug("uapi: dropping a connection silent for %.1f s", now - c.last)
                    drop(c)
        except Exception:  # keep the interface's UAPI from dying silently
            log.exception("uapi: server of %s stopped", self.name)
        finally:
            for c in list(conns.values()):
                drop(c)
            sel.close()

    def _accept(self, sel: selectors.BaseSelector, conns: dict[int, _Conn]) -> None:
        assert self._listener is not None
        try:
            sock, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            log.warning("uapi: accept failed: %s", e)
            return
        if len(conns) >= MAX_CONNECTIONS:
            sock.close()
            return
        sock.setblocking(False)
        c = _Conn(sock, time.monotonic(), self.max_request)
        conns[sock.fileno()] = c
        sel.register(sock, selectors.EVENT_READ, c)

    def _read(self, c: _Conn) -> bool:
        """Read and answer what came; False when the connection is to be dropped."""
        try:
            data = c.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            return False
        c.last = time.monotonic()
        if not data:
            c.eof = True
        c.reader.feed(data)
        while (lines := c.reader.next()) is not None:
            with self.lock:
                c.out += respond(lines, self.handler).encode()
        if c.reader.overflow or len(c.out) > 64 * self.max_request:
            log.debug("uapi: dropping a connection with a request over %d bytes", self.max_request)
            return False
        return True

    def _write(self, c: _Conn) -> bool:
        if not c.out:
            return True
        try:
            n = c.sock.send(c.out)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            return False
        if n:
            del c.out[:n]
            c.last = time.monotonic()
        return True
