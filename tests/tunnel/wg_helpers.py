"""Test helpers for the WireGuard core: ICMP echo packets and a minimal driver.

The driver is the smallest real user of ``Protocol``: one UDP socket, a
thread that reads datagrams, hands handshake messages to the core, opens data
messages itself (lookup, open, replay update, ``data_received``), and carries
out the actions; inner packets go to a handler that may answer them.
"""

from __future__ import annotations

import contextlib
import ipaddress
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from netoffload.tunnel.peer import Peer
from netoffload.tunnel.protocol import Action, Drop, Flush, HandshakeDone, Protocol, SendDatagram
from netoffload.wire.ipv4 import internet_checksum
from netoffload.wire.wireguard import MSG_COOKIE, MSG_DATA, MSG_INITIATION, MSG_RESPONSE
from netoffload.wire.wireguard import message_type as wg_type

ICMP_ECHO_REQUEST = 8
ICMP_ECHO_REPLY = 0
ICMP6_ECHO_REQUEST = 128
ICMP6_ECHO_REPLY = 129


# ------------------------------------------------------------------ ICMP


def _icmp6_checksum(src: bytes, dst: bytes, msg: bytes) -> int:
    pseudo = src + dst + struct.pack("!I3xB", len(msg), 58)
    return internet_checksum(pseudo + msg)


def echo(src: str, dst: str, ident: int, seq: int, payload: bytes, *, reply: bool = False) -> bytes:
    """An ICMP / ICMPv6 echo request (or reply) IP packet with correct checksums."""
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if s.version == 4:
        icmp = struct.pack("!BBHHH", ICMP_ECHO_REPLY if reply else ICMP_ECHO_REQUEST, 0, 0,
                           ident, seq) + payload  # fmt: skip
        icmp = icmp[:2] + struct.pack("!H", internet_checksum(icmp)) + icmp[4:]
        hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 0x1234, 0x4000, 64, 1, 0,
                          s.packed, d.packed)  # fmt: skip
        hdr = hdr[:10] + struct.pack("!H", internet_checksum(hdr)) + hdr[12:]
        return hdr + icmp
    typ = ICMP6_ECHO_REPLY if reply else ICMP6_ECHO_REQUEST
    icmp = struct.pack("!BBHHH", typ, 0, 0, ident, seq) + payload
    icmp = icmp[:2] + struct.pack("!H", _icmp6_checksum(s.packed, d.packed, icmp)) + icmp[4:]
    hdr = struct.pack("!IHBB16s16s", 6 << 28, len(icmp), 58, 64, s.packed, d.packed)
    return hdr + icmp


@dataclass(frozen=True)
class Echo:
    version: int
    src: str
    dst: str
    request: bool
    ident: int
    seq: int
    payload: bytes


def parse_echo(pkt: bytes) -> Echo | None:
    """An ICMP(v6) echo request/reply with every checksum right, else None.
    ``pkt`` may carry WireGuard's zero padding after the IP packet."""
    if not pkt:
        return None
    v = pkt[0] >> 4
    if v == 4 and len(pkt) >= 28:
        ihl = (pkt[0] & 15) * 4
        total = struct.unpack("!H", pkt[2:4])[0]
        if pkt[9] != 1 or total > len(pkt) or internet_checksum(pkt[:ihl]) != 0:
            return None
        icmp = pkt[ihl:total]
        if internet_checksum(icmp) != 0 or icmp[0] not in (ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY):
            return None
        src = str(ipaddress.IPv4Address(pkt[12:16]))
        dst = str(ipaddress.IPv4Address(pkt[16:20]))
        request = icmp[0] == ICMP_ECHO_REQUEST
    elif v == 6 and len(pkt) >= 48:
        plen = struct.unpack("!H", pkt[4:6])[0]
        if pkt[6] != 58 or 40 + plen > len(pkt):
            return None
        icmp = pkt[40 : 40 + plen]
        if _icmp6_checksum(pkt[8:24], pkt[24:40], icmp) != 0:
            return None
        if icmp[0] not in (ICMP6_ECHO_REQUEST, ICMP6_ECHO_REPLY):
            return None
        src = str(ipaddress.IPv6Address(pkt[8:24]))
        dst = str(ipaddress.IPv6Address(pkt[24:40]))
        request = icmp[0] == ICMP6_ECHO_REQUEST
    else:
        return None
    ident, seq = struct.unpack("!HH", icmp[4:8])
    return Echo(v, src, dst, request, ident, seq, bytes(icmp[8:]))


def echo_reply_to(pkt: bytes) -> bytes | None:
    """The echo reply to an echo request (addresses swapped, checksums made anew)."""
    e = parse_echo(pkt)
    if e is None or not e.request:
        return None
    return echo(e.dst, e.src, e.ident, e.seq, e.payload, reply=True)


# ---------------------------------------------------------------- driver


@dataclass
class Driver:
    """Runs ``proto`` on ``sock`` in a thread; ``handler(peer, packet)`` may answer packets."""

    proto: Protocol
    sock: socket.socket
    handler: Callable[[Peer, bytes], bytes | None] = lambda peer, pkt: None
    under_load: bool = False
    received: list[tuple[Peer, bytes]] = field(default_factory=list)
    actions: list[Action] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    handshakes: list[tuple[str, tuple[str, int]]] = field(default_factory=list)
    handshake_bytes: list[bytes] = field(default_factory=list)
    #: added to the wall clock for every time given to the core (to age sessions)
    clock_offset: float = 0.0
    data_in: int = 0
    data_out: int = 0
    replays: int = 0

    def __post_init__(self) -> None:
        self.lock = threading.RLock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Driver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        with contextlib.suppress(OSError):
            self.sock.close()

    def clock(self) -> float:
        return time.time() + self.clock_offset

    # -------------------------------------------------------------- loop
    def _run(self) -> None:
        while not self._stop.is_set():
            with self.lock:
                wait = self.proto.next_deadline() - self.clock()
            r, _, _ = select.select([self.sock], [], [], min(0.05, max(0.0, wait)))
            try:
                with self.lock:
                    if r:
                        data, src = self.sock.recvfrom(65535)
                        self._datagram(data, (src[0], src[1]))
                    self.do(self.proto.tick(self.clock()))
            except Exception as e:  # keep going, but make the test see it
                self.errors.append(f"{type(e).__name__}: {e}")

    def _datagram(self, data: bytes, src: tuple[str, int]) -> None:
        now = self.clock()
        t = wg_type(data)
        if t in (MSG_INITIATION, MSG_RESPONSE, MSG_COOKIE):
            self.handshakes.append(({1: "init", 2: "resp", 3: "cookie"}[t], src))
            self.handshake_bytes.append(data)
            self.do(self.proto.handle_handshake(data, src, now, self.under_load))
            return
        if t != MSG_DATA:
            self.errors.append(f"not a WireGuard message: {data[:8].hex()}")
            return
        found = self.proto.lookup(int.from_bytes(data[4:8], "little"), now)
        if found is None:
            self.errors.append("data for an unknown receiver index")
            return
        peer, kp = found
        opened = kp.open(data)
        if opened is None:
            self.errors.append("data message did not authenticate")
            return
        counter, plain = opened
        if not kp.replay.update(counter):
            self.replays += 1
            return
        self.data_in += 1
        self.do(self.proto.data_received(peer, kp, src, now, len(data), keepalive=not plain))
        if plain:
            self.received.append((peer, plain))
            answer = self.handler(peer, plain)
            if answer is not None:
                self.send(peer, answer)

    # ---------------------------------------------------------- actions
    def send(self, peer: Peer, packet: bytes) -> None:
        """Encrypt and send an inner packet (staging it when no session can)."""
        with self.lock:
            now = self.clock()
            kp = peer.send_keypair(now)
            counter = kp.reserve(1, now) if kp is not None else None
            if kp is None or counter is None or peer.endpoint is None:
                self.do(self.proto.stage(peer, packet, now))
                return
            msg = kp.seal(counter, packet)
            self.sock.sendto(msg, peer.endpoint)
            self.data_out += 1
            self.do(self.proto.data_sent(peer, now, len(msg), keepalive=False))

    def do(self, actions: list[Action]) -> None:
        for a in actions:
            self.actions.append(a)
            if isinstance(a, SendDatagram):
                self.sock.sendto(a.data, a.dest)
            elif isinstance(a, Flush):
                for p in a.packets:
                    self.send(a.peer, p)
            elif isinstance(a, HandshakeDone | Drop):
                pass

    def wait_for(self, cond: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if cond():
                    return True
            time.sleep(0.02)
        with self.lock:
            return cond()
