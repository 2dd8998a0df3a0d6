"""Content-checked streams: what the demo (and tests) send through a tunnel, and how
the receiver proves that what arrived is what was sent.

Content is deterministic pseudo-random bytes (``Content``: slices of one seeded
random block at offsets that move with each chunk, so no two nearby chunks are
alike). Both ends hash what they handled with SHA-256; a stream is delivered
intact when the receiver's hash and byte count equal the sender's.

- TCP (``TcpStream``): a real kernel TCP connection between two hosts (network
  namespaces), one thread each end; the sender sends up to ``nbytes`` or until
  its time is up, then closes; the receiver reads to the end.
- UDP (``UdpStream``): ``count`` datagrams; each carries its sequence number and
  a digest of itself (``Datagrams``), so every datagram is checked on its own
  too; the stream hash is over the datagrams in sequence order. A window of
  datagrams not yet received bounds what is in flight (no loss from queue
  overflow, so a loss means the tunnel lost it).
- ``TcpReceiver`` / ``UdpReceiver`` are the receiving halves without sockets,
  for streams carried by synthetic packets (the demo's in-process mode).

Everything that opens a socket does it inside a ``Netns`` (addresses from
198.18.0.0/15 and fd00::/8 only: ``check_address``).
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import re
import socket
import struct
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from netoffload.netns import Netns, check_address
from netoffload.testing.packets import tcp_packet, udp_packet

#: a datagram's head: sequence number (8 bytes) and the first 16 bytes of the
#: SHA-256 of the sequence number and the body (the rest of the datagram)
UDP_HEAD = struct.Struct("!Q16s")
_SEQ = struct.Struct("!Q")
CHUNK = 256 * 1024
#: UDP datagrams in flight at most (sent, not yet received)
UDP_WINDOW = 64


class Content:
    """Deterministic pseudo-random bytes: ``chunk(k, n)`` is the ``k``-th chunk."""

    def __init__(self, seed: int, block: int = 1 << 20) -> None:
        self.block = random.Random(seed).randbytes(block)
        self._mv = memoryview(self.block)

    def chunk(self, k: int, n: int) -> memoryview:
        if n > len(self.block) // 2:
            raise ValueError(f"chunk of {n} bytes: at most {len(self.block) // 2}")
        off = (k * 40503 * 64) % (len(self.block) - n)
        return self._mv[off : off + n]


class Datagrams:
    """UDP datagrams that check themselves: head (sequence, digest) + body."""

    def __init__(self, seed: int, size: int = 1200) -> None:
        if size < UDP_HEAD.size + 1:
            raise ValueError(f"datagram size {size}: at least {UDP_HEAD.size + 1}")
        self.size = size
        self.content = Content(seed)

    def make(self, seq: int) -> bytes:
        body = self.content.chunk(seq, self.size - UDP_HEAD.size)
        dig = hashlib.sha256(_SEQ.pack(seq) + body).digest()[:16]
        return UDP_HEAD.pack(seq, dig) + bytes(body)

    @staticmethod
    def check(d: bytes | memoryview) -> int | None:
        """The sequence number of an intact datagram, else None."""
        if len(d) <= UDP_HEAD.size:
            return None
        seq, dig = UDP_HEAD.unpack_from(d)
        if hashlib.sha256(bytes(d[:8]) + bytes(d[UDP_HEAD.size :])).digest()[:16] != dig:
            return None
        return int(seq)


@dataclass
class StreamResult:
    """One stream, both ends: what was sent, what arrived, whether it is the same."""

    name: str
    proto: str  # "tcp" | "udp"
    family: int  # 4 | 6
    bytes_sent: int = 0
    bytes_received: int = 0
    sha256_sent: str = ""
    sha256_received: str = ""
    datagrams_sent: int = 0  # UDP
    datagrams_received: int = 0  # UDP: intact ones, each counted once
    datagrams_damaged: int = 0  # UDP: failed their own digest
    duplicates: int = 0  # UDP
    seconds: float = 0.0  # first to last byte received
    time_limited: bool = False  # the sender stopped at its time limit
    error: str = ""

    @property
    def intact(self) -> bool:
        return (
            not self.error
            and self.bytes_sent > 0
            and self.bytes_sent == self.bytes_received
            and self.sha256_sent == self.sha256_received
            and self.datagrams_damaged == 0
            and self.datagrams_sent == self.datagrams_received
        )

    @property
    def gbps(self) -> float:
        return self.bytes_received * 8 / self.seconds / 1e9 if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "proto": self.proto,
            "family": self.family,
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
            "sha256_sent": self.sha256_sent,
            "sha256_received": self.sha256_received,
            "datagrams_sent": self.datagrams_sent,
            "datagrams_received": self.datagrams_received,
            "datagrams_damaged": self.datagrams_damaged,
            "duplicates": self.duplicates,
            "seconds": round(self.seconds, 4),
            "gbps": round(self.gbps, 4),
            "time_limited": self.time_limited,
            "error": self.error,
            "intact": self.intact,
        }


# --------------------------------------------------------------------- receivers


class TcpReceiver:
    """The receiving end's bookkeeping of a byte stream."""

    def __init__(self) -> None:
        self.hash = hashlib.sha256()
        self.bytes = 0
        self.first = 0.0
        self.last = 0.0

    def add(self, data: bytes | memoryview, now: float) -> None:
        if not self.bytes:
            self.first = now
        self.hash.update(data)
        self.bytes += len(data)
        self.last = now

    def fill(self, r: StreamResult) -> None:
        r.bytes_received = self.bytes
        r.sha256_received = self.hash.hexdigest()
        r.seconds = max(self.last - self.first, 0.0)


class UdpReceiver:
    """The receiving end's bookkeeping of a datagram stream."""

    def __init__(self) -> None:
        self.got: dict[int, bytes] = {}
        self.damaged = 0
        self.duplicates = 0
        self.first = 0.0
        self.last = 0.0

    def add(self, d: bytes, now: float) -> None:
        seq = Datagrams.check(d)
        if seq is None:
            self.damaged += 1
            return
        if seq in self.got:
            self.duplicates += 1
            return
        if not self.got:
            self.first = now
        self.got[seq] = bytes(d)
        self.last = now

    @property
    def count(self) -> int:
        return len(self.got)

    def fill(self, r: StreamResult) -> None:
        h = hashlib.sha256()
        n = 0
        for seq in sorted(self.got):
            h.update(self.got[seq])
            n += len(self.got[seq])
        r.bytes_received = n
        r.sha256_received = h.hexdigest()
        r.datagrams_received = len(self.got)
        r.datagrams_damaged = self.damaged
        r.duplicates = self.duplicates
        r.seconds = max(self.last - self.first, 0.0)


# ------------------------------------------------------------- kernel sockets


def _family(addr: str) -> int:
    return socket.AF_INET6 if check_address(addr).version == 6 else socket.AF_INET


class _Threads:
    """Two threads (sender, receiver) and the sockets they use; ``abort`` wakes them."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.socks: list[socket.socket] = []
        self.threads: list[threading.Thread] = []
        self.errors: list[str] = []
        self.stopped = threading.Event()

    def sock(self, host: Netns, family: int, kind: int) -> socket.socket:
        s = host.socket(family, kind)
        self.socks.append(s)
        return s

    def go(self, *fns: Any) -> None:
        for fn in fns:
            t = threading.Thread(target=self._guard, args=(fn,), daemon=True, name=self.name)
            self.threads.append(t)
        for t in self.threads:
            t.start()

    def _guard(self, fn: Any) -> None:
        try:
            fn()
        except Exception as e:  # reported in the result, not raised in a thread
            if not self.stopped.is_set():
                self.errors.append(f"{fn.__name__}: {type(e).__name__}: {e}")

    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self.threads)

    def join(self, timeout: float) -> bool:
        end = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.0, end - time.monotonic()))
        return not any(t.is_alive() for t in self.threads)

    def abort(self) -> None:
        self.stopped.set()
        for s in self.socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()


class TcpStream:
    """A TCP connection from ``src`` to ``dst_addr``:``port`` (listening in ``dst``)
    carrying ``nbytes`` of ``Content`` (or what fits in ``seconds``)."""

    def __init__(
        self,
        name: str,
        src: Netns,
        dst: Netns,
        dst_addr: str,
        port: int,
        nbytes: int,
        seconds: float,
        seed: int = 1,
        io_timeout: float = 15.0,
    ) -> None:
        self.result = StreamResult(name, "tcp", check_address(dst_addr).version)
        self.src, self.dst, self.addr, self.port = src, dst, dst_addr, port
        self.nbytes, self.seconds, self.io_timeout = nbytes, seconds, io_timeout
        self.content = Content(seed)
        self.rx = TcpReceiver()
        self.sent = 0
        self._t = _Threads(name)

    @property
    def total(self) -> int:
        return self.nbytes

    @property
    def done(self) -> int:
        return self.rx.bytes

    def start(self) -> TcpStream:
        fam = _family(self.addr)
        lsock = self._t.sock(self.dst, fam, socket.SOCK_STREAM)
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lsock.bind((self.addr, self.port))
        lsock.listen(1)
        lsock.settimeout(self.io_timeout)
        csock = self._t.sock(self.src, fam, socket.SOCK_STREAM)
        csock.settimeout(self.io_timeout)

        def receive() -> None:
            conn, _ = lsock.accept()
            self._t.socks.append(conn)
            conn.settimeout(self.io_timeout)
            buf = bytearray(CHUNK)
            mv = memoryview(buf)
            while True:
                n = conn.recv_into(mv)
                if not n:
                    break
                self.rx.add(mv[:n], time.monotonic())
            conn.close()

        def send() -> None:
            h = hashlib.sha256()
            try:
                csock.connect((self.addr, self.port))
                stop_at = time.monotonic() + self.seconds
                k = 0
                while self.sent < self.nbytes:
                    if time.monotonic() >= stop_at:
                        self.result.time_limited = True
                        break
                    c = self.content.chunk(k, min(CHUNK, self.nbytes - self.sent))
                    csock.sendall(c)
                    h.update(c)
                    self.sent += len(c)
                    k += 1
                csock.shutdown(socket.SHUT_WR)
                while csock.recv(4096):  # until the receiver closes too
                    pass
            finally:
                self.result.bytes_sent = self.sent
                self.result.sha256_sent = h.hexdigest()
                csock.close()

        self._t.go(receive, send)
        return self

    def finish(self, timeout: float) -> StreamResult:
        """Wait for both ends (at most ``timeout`` s), close everything, the result."""
        if not self._t.join(timeout):
            self._t.errors.append(f"not finished within {timeout:.0f} s")
        self._t.abort()
        self.rx.fill(self.result)
        self.result.error = "; ".join(self._t.errors)
        return self.result

    @property
    def running(self) -> bool:
        """True while either end is still at work."""
        return self._t.running

    def abort(self) -> None:
        self._t.abort()


class UdpStream:
    """``count`` self-checking datagrams from ``src`` to ``dst_addr``:``port`` (bound in
    ``dst``), at most ``UDP_WINDOW`` in flight."""

    def __init__(
        self,
        name: str,
        src: Netns,
        dst: Netns,
        dst_addr: str,
        port: int,
        count: int,
        seconds: float,
        size: int = 1200,
        seed: int = 2,
        idle: float = 3.0,
    ) -> None:
        self.result = StreamResult(name, "udp", check_address(dst_addr).version)
        self.src, self.dst, self.addr, self.port = src, dst, dst_addr, port
        self.count, self.seconds, self.idle = count, seconds, idle
        self.dgrams = Datagrams(seed, size)
        self.rx = UdpReceiver()
        self.sent = 0
        self.sender_done = threading.Event()
        self._t = _Threads(name)

    @property
    def total(self) -> int:
        return self.count * self.dgrams.size

    @property
    def done(self) -> int:
        return self.rx.count * self.dgrams.size

    def start(self) -> UdpStream:
        fam = _family(self.addr)
        rsock = self._t.sock(self.dst, fam, socket.SOCK_DGRAM)
        rsock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        rsock.bind((self.addr, self.port))
        rsock.settimeout(0.2)
        ssock = self._t.sock(self.src, fam, socket.SOCK_DGRAM)
        ssock.settimeout(self.idle)

        def receive() -> None:
            quiet_since = time.monotonic()
            rx = self.rx
            while not self._t.stopped.is_set():
                if self.sender_done.is_set() and rx.count + rx.damaged + rx.duplicates >= self.sent:
                    break
                try:
                    d = rsock.recv(65535)
                except TimeoutError:
                    if self.sender_done.is_set() and time.monotonic() - quiet_since > self.idle:
                        break  # the rest is lost
                    continue
                quiet_since = time.monotonic()
                rx.add(d, quiet_since)

        def send() -> None:
            h = hashlib.sha256()
            nbytes = 0
            try:
                stop_at = time.monotonic() + self.seconds
                given_up = 0  # datagrams no longer waited for (lost, it seems)
                for seq in range(self.count):
                    waited = time.monotonic()
                    while seq - self.rx.count - given_up >= UDP_WINDOW:  # the receiver lags
                        if time.monotonic() - waited > self.idle or self._t.stopped.is_set():
                            given_up = seq - self.rx.count  # go on; the result will say so
                            break
                        time.sleep(0.0005)
                    if time.monotonic() >= stop_at:
                        self.result.time_limited = True
                        break
                    d = self.dgrams.make(seq)
                    ssock.sendto(d, (self.addr, self.port))
                    h.update(d)
                    nbytes += len(d)
                    self.sent += 1
            finally:
                self.result.bytes_sent = nbytes
                self.result.sha256_sent = h.hexdigest()
                self.result.datagrams_sent = self.sent
                self.sender_done.set()

        self._t.go(receive, send)
        return self

    def finish(self, timeout: float) -> StreamResult:
        if not self._t.join(timeout):
            self._t.errors.append(f"not finished within {timeout:.0f} s")
        self._t.abort()
        self.rx.fill(self.result)
        self.result.error = "; ".join(self._t.errors)
        return self.result

    @property
    def running(self) -> bool:
        """True while either end is still at work."""
        return self._t.running

    def abort(self) -> None:
        self._t.abort()


@dataclass
class Ping:
    """``ping`` from a host to an address: how many of how many answered."""

    name: str
    sent: int = 0
    received: int = 0
    output: str = field(default="", repr=False)

    @property
    def ok(self) -> bool:
        return self.sent > 0 and self.received == self.sent

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "sent": self.sent, "received": self.received, "ok": self.ok}


def ping(host: Netns, addr: str, name: str, count: int = 3, timeout: float = 10.0) -> Ping:
    """``ping -c COUNT`` inside ``host`` (the address must be in the test ranges)."""
    check_address(addr)
    p = Ping(name)
    argv = ["ping", "-c", str(count), "-i", "0.2", "-W", "2", addr]
    try:
        r = subprocess.run(
            ["ip", "netns", "exec", host.name, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        p.output = r.stdout + r.stderr
    except subprocess.TimeoutExpired:
        p.output = "timed out"
    m = re.search(r"(\d+) packets transmitted, (\d+) (?:packets )?received", p.output)
    if m:
        p.sent, p.received = int(m.group(1)), int(m.group(2))
    return p


# ------------------------------------------------------------ synthetic packets

#: a flow: (IP protocol, source address, destination address, ports), addresses packed
FlowKey = tuple[int, bytes, bytes, int, int]
#: one packet as a TUN read gives it: bytes, virtio gso_type, gso_size (0: none)
TunPacket = tuple[bytes, int, int]

GSO_TCPV4 = 1
GSO_TCPV6 = 4
GSO_UDP_L4 = 5


def split_ip(pkt: bytes) -> tuple[FlowKey, int, bytes] | None:
    """(flow key, TCP sequence number or 0, L4 payload) of an IPv4/IPv6 TCP/UDP packet
    (no IPv6 extension headers), else None."""
    if len(pkt) < 20:
        return None
    v = pkt[0] >> 4
    if v == 4:
        l4 = (pkt[0] & 15) * 4
        end = int.from_bytes(pkt[2:4], "big")
        proto, src, dst = pkt[9], pkt[12:16], pkt[16:20]
    elif v == 6 and len(pkt) >= 40:
        l4 = 40
        end = 40 + int.from_bytes(pkt[4:6], "big")
        proto, src, dst = pkt[6], pkt[8:24], pkt[24:40]
    else:
        return None
    if end > len(pkt) or proto not in (6, 17) or end < l4 + 8:
        return None
    sport = int.from_bytes(pkt[l4 : l4 + 2], "big")
    dport = int.from_bytes(pkt[l4 + 2 : l4 + 4], "big")
    if proto == 6:
        if end < l4 + 20:
            return None
        seq = int.from_bytes(pkt[l4 + 4 : l4 + 8], "big")
        body = l4 + (pkt[l4 + 12] >> 4) * 4
    else:
        seq, body = 0, l4 + 8
    return (proto, bytes(src), bytes(dst), sport, dport), seq, pkt[body:end]


def flow_key(proto: int, src: str, dst: str, sport: int, dport: int) -> FlowKey:
    s, d = check_address(src).ip.packed, check_address(dst).ip.packed
    return (proto, s, d, sport, dport)


class SynthTcp:
    """A one-way TCP byte stream as the packets a TUN read gives when an application
    writes it: GSO super-packets of up to ``per_super`` segments of ``mss`` bytes
    (checksums left partial by the reader: ``to_partial``). ``deliver`` takes what
    arrives at the other end (segments or re-assembled super-packets)."""

    def __init__(
        self,
        name: str,
        src: str,
        dst: str,
        sport: int,
        dport: int,
        nbytes: int,
        mss: int,
        per_super: int = 32,
        seed: int = 1,
    ) -> None:
        self.v = check_address(src).version
        self.result = StreamResult(name, "tcp", self.v)
        self.src, self.dst, self.sport, self.dport = src, dst, sport, dport
        self.key = flow_key(6, src, dst, sport, dport)
        self.nbytes, self.mss, self.per_super = nbytes, mss, per_super
        self.content = Content(seed)
        self.isn = random.Random(seed).getrandbits(32)
        self.sent = 0
        self._k = 0
        self._hash = hashlib.sha256()
        self.rx = TcpReceiver()
        self.expect = self.isn
        self.out_of_order = 0

    @property
    def total(self) -> int:
        return self.nbytes

    @property
    def done(self) -> int:
        return self.rx.bytes

    def next_packet(self) -> TunPacket | None:
        left = self.nbytes - self.sent
        if left <= 0:
            return None
        n = min(left, self.mss * self.per_super)
        payload = bytes(self.content.chunk(self._k, n))
        pkt = tcp_packet(
            self.v,
            payload,
            src=self.src,
            dst=self.dst,
            sport=self.sport,
            dport=self.dport,
            seq=(self.isn + self.sent) & 0xFFFFFFFF,
            ack=1,
            flags=0x10,
            ident=self._k & 0xFFFF,
        )
        self._hash.update(payload)
        self.sent += n
        self._k += 1
        gso = (GSO_TCPV4 if self.v == 4 else GSO_TCPV6) if n > self.mss else 0
        return pkt, gso, self.mss if gso else 0

    def deliver(self, seq: int, payload: bytes, gso_size: int, now: float) -> None:
        if seq != self.expect:
            self.out_of_order += 1
        self.expect = (seq + len(payload)) & 0xFFFFFFFF
        self.rx.add(payload, now)

    def finish(self) -> StreamResult:
        r = self.result
        r.bytes_sent = self.sent
        r.sha256_sent = self._hash.hexdigest()
        r.time_limited = self.sent < self.nbytes
        self.rx.fill(r)
        if self.out_of_order:
            r.error = f"{self.out_of_order} packets out of order"
        return r


class SynthUdp:
    """``count`` self-checking datagrams (``Datagrams``) as the packets a TUN read gives
    when an application sends them with UDP_SEGMENT: super-packets of ``per_super``."""

    def __init__(
        self,
        name: str,
        src: str,
        dst: str,
        sport: int,
        dport: int,
        count: int,
        size: int = 1200,
        per_super: int = 8,
        seed: int = 2,
    ) -> None:
        self.v = check_address(src).version
        self.result = StreamResult(name, "udp", self.v)
        self.src, self.dst, self.sport, self.dport = src, dst, sport, dport
        self.key = flow_key(17, src, dst, sport, dport)
        self.count, self.per_super = count, per_super
        self.dgrams = Datagrams(seed, size)
        self.sent = 0
        self._hash = hashlib.sha256()
        self._bytes = 0
        self.rx = UdpReceiver()

    @property
    def total(self) -> int:
        return self.count * self.dgrams.size

    @property
    def done(self) -> int:
        return self.rx.count * self.dgrams.size

    def next_packet(self) -> TunPacket | None:
        k = min(self.per_super, self.count - self.sent)
        if k <= 0:
            return None
        ds = [self.dgrams.make(self.sent + j) for j in range(k)]
        for d in ds:
            self._hash.update(d)
            self._bytes += len(d)
        self.sent += k
        pkt = udp_packet(
            self.v, b"".join(ds), src=self.src, dst=self.dst, sport=self.sport, dport=self.dport
        )
        return (pkt, GSO_UDP_L4, self.dgrams.size) if k > 1 else (pkt, 0, 0)

    def deliver(self, seq: int, payload: bytes, gso_size: int, now: float) -> None:
        """A datagram, or a GRO super-packet of datagrams of ``gso_size`` bytes each."""
        step = gso_size if gso_size > 0 else max(len(payload), 1)
        for i in range(0, len(payload), step):
            self.rx.add(payload[i : i + step], now)

    def finish(self) -> StreamResult:
        r = self.result
        r.bytes_sent = self._bytes
        r.sha256_sent = self._hash.hexdigest()
        r.datagrams_sent = self.sent
        r.time_limited = self.sent < self.count
        self.rx.fill(r)
        return r
