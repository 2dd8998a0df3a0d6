"""Two tunnels joined in one process: no TUN, no UDP socket, no root.

A ``LoopTunnel`` is a ``Tunnel`` that is never started. Its transmit engine's
outer datagrams, and the messages its protocol core sends itself (handshakes,
keepalives, cookie replies), go to a ``LoopWire`` instead of a UDP socket;
the wire hands each to the tunnel at the datagram's destination address and
port as the UDP device would have read it (an outer IP/UDP header with the
sender's address and port as the source), and that tunnel's ``receive``
runs on it. What the receive engine would write to the TUN is kept, with the
extension fields the TUN write would have turned into a virtio_net_hdr
(``LoopTunnel.delivered``). Everything else -- the engines, the protocol
core, timers, counters, ``status()`` -- is the running tunnel's own code.

    wire = LoopWire()
    a = LoopTunnel(cfg_a, wire, "198.18.0.1")   # peers' endpoints name the others
    b = LoopTunnel(cfg_b, wire, "198.18.0.2")
    a.handshake()                 # start one (else the first packets wait for it)
    a.transmit(batch)             # inner packets as a TUN read gives them
    wire.pump()                   # until nothing is in flight
    got = b.take_delivered()      # [Inner(data, gso_type, gso_size), ...]

Sans-IO apart from ``time.time()``, which the tunnel itself reads.
"""

from __future__ import annotations

import ipaddress
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from netoffload.batch import Batch
from netoffload.errors import ConfigError
from netoffload.tunnel.config import TunnelConfig
from netoffload.tunnel.datapath import OUTER4, OUTER6
from netoffload.tunnel.tunnel import DEFAULT_PORT, RX_BATCH, Tunnel

Endpoint = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Inner:
    """One packet the receive engine handed to the TUN, with what its virtio_net_hdr
    would say: ``gso_type`` / ``gso_size`` of a GSO super-packet, ``vflags``
    (NEEDS_CSUM: the L4 checksum field holds the pseudo-header sum; DATA_VALID)."""

    data: bytes
    gso_type: int
    gso_size: int
    vflags: int = 0


@dataclass
class WireCounters:
    datagrams: int = 0
    bytes: int = 0
    handshakes: int = 0  # handshake messages (types 1-3) among the datagrams
    unroutable: int = 0  # to an address and port no tunnel on the wire has

    def as_dict(self) -> dict[str, int]:
        return {
            "datagrams": self.datagrams,
            "bytes": self.bytes,
            "handshakes": self.handshakes,
            "unroutable": self.unroutable,
        }


def outer_header(src: Endpoint, dst: Endpoint, payload_len: int) -> bytes:
    """An outer IPv4 or IPv6 + UDP header as the UDP device builds it on receive
    (no checksums: the socket checked them)."""
    s = ipaddress.ip_address(src[0])
    d = ipaddress.ip_address(dst[0])
    if s.version != d.version:
        raise ConfigError(f"loop wire: {src[0]} and {dst[0]} are not one IP version")
    udp = (
        src[1].to_bytes(2, "big")
        + dst[1].to_bytes(2, "big")
        + (payload_len + 8).to_bytes(2, "big")
        + b"\0\0"
    )
    if s.version == 4:
        tot = OUTER4 + payload_len
        ip = bytes([0x45, 0]) + tot.to_bytes(2, "big") + bytes([0, 0, 0, 0, 64, 17, 0, 0])
        return ip + s.packed + d.packed + udp
    ip6 = bytes([0x60, 0, 0, 0]) + (payload_len + 8).to_bytes(2, "big") + bytes([17, 64])
    return ip6 + s.packed + d.packed + udp


class LoopWire:
    """Datagrams between ``LoopTunnel`` objects, delivered by ``pump``.

    ``tamper``, if given, sees every datagram (outer header included) on its
    way and returns what arrives (or None: lost) -- for tests of damage.
    """

    def __init__(self, tamper: Callable[[bytes], bytes | None] | None = None) -> None:
        self.ends: dict[Endpoint, LoopTunnel] = {}
        self.inbox: dict[Endpoint, deque[bytes]] = {}
        self.counters = WireCounters()
        self.tamper = tamper

    def attach(self, t: LoopTunnel) -> None:
        ep = t.endpoint
        if ep in self.ends:
            raise ConfigError(f"loop wire: {ep[0]}:{ep[1]} is taken")
        self.ends[ep] = t
        self.inbox[ep] = deque()

    def post(self, dest: Endpoint, datagram: bytes) -> bool:
        """Queue one outer datagram for the tunnel at ``dest``; False if there is none."""
        key = (str(ipaddress.ip_address(dest[0])), int(dest[1]))
        box = self.inbox.get(key)
        c = self.counters
        if box is None:
            c.unroutable += 1
            return False
        c.datagrams += 1
        c.bytes += len(datagram)
        ol = OUTER6 if datagram[0] >> 4 == 6 else OUTER4
        if datagram[ol : ol + 1] in (b"\x01", b"\x02", b"\x03"):
            c.handshakes += 1
        if self.tamper is not None:
            d = self.tamper(datagram)
            if d is None:
                return True
            datagram = d
        box.append(datagram)
        return True

    def in_flight(self) -> int:
        return sum(len(q) for q in self.inbox.values())

    def pump(self, max_rounds: int = 10_000) -> int:
        """Run each tunnel's ``receive`` on what waits for it until nothing does
        (answers can cause more datagrams); returns the datagrams received."""
        done = 0
        for _ in range(max_rounds):
            busy = False
            for ep, q in self.inbox.items():
                if not q:
                    continue
                busy = True
                take = [q.popleft() for _ in range(min(len(q), RX_BATCH))]
                self.ends[ep].receive(_received(take))
                done += len(take)
            if not busy:
                break
        return done

    def tick(self) -> None:
        """Run every tunnel's due protocol timers, then deliver what they sent."""
        for t in list(self.ends.values()):
            t.tick()
        self.pump()


def _received(datagrams: list[bytes]) -> Batch:
    """Outer datagrams as ``UdpIpDevice.recv`` gives them (one IP/UDP packet each)."""
    b = Batch.from_packets(datagrams, headroom=0, tailroom=0)
    e = b.ext
    v6 = b.buf[b.start] >> 4 == 6
    hdr = np.where(v6, OUTER6, OUTER4)
    e.l3_off[:] = 0
    e.l4_off[:] = hdr - 8
    e.hdr_len[:] = hdr
    e.l3_proto[:] = np.where(v6, 6, 4)
    e.l4_proto[:] = 17
    e.segs[:] = 1
    return b


class LoopTunnel(Tunnel):
    """A ``Tunnel`` on a ``LoopWire`` at ``address``:``ListenPort`` (see the module docstring)."""

    def __init__(self, cfg: TunnelConfig, wire: LoopWire, address: str, **kw: Any) -> None:
        kw.setdefault("manage_interface", False)
        super().__init__(cfg, **kw)
        self.address = str(ipaddress.ip_address(address))
        self.listen_port = cfg.interface.listen_port or DEFAULT_PORT
        self.dp.listen_port = self.listen_port
        self.wire = wire
        self.delivered: list[Inner] = []
        self.started = time.time()
        wire.attach(self)

    @property
    def endpoint(self) -> Endpoint:
        return (self.address, self.listen_port)

    # ------------------------------------------------------------ the two ends
    def send_outer(self, out: Batch) -> int:
        """The transmit engine's live outer datagrams onto the wire, our address as source."""
        live = np.flatnonzero(out.ext.alive())
        if not len(live):
            return 0
        src = ipaddress.ip_address(self.address).packed
        sent = 0
        for i in live.tolist():
            pkt = bytearray(out.packet(i))
            if pkt[0] >> 4 == 6:
                pkt[8:24] = src if len(src) == 16 else pkt[8:24]
                dst = (str(ipaddress.IPv6Address(bytes(pkt[24:40]))), (pkt[42] << 8) | pkt[43])
            else:
                pkt[12:16] = src if len(src) == 4 else pkt[12:16]
                dst = (str(ipaddress.IPv4Address(bytes(pkt[16:20]))), (pkt[22] << 8) | pkt[23])
            if self.wire.post(dst, bytes(pkt)):
                sent += 1
        return sent

    def _send_raw(self, dest: tuple[str, int], data: bytes) -> None:
        """A message of the protocol core (handshake, keepalive, cookie reply)."""
        hdr = outer_header(self.endpoint, (dest[0], int(dest[1])), len(data))
        self.wire.post(dest, hdr + data)

    def write_inner(self, out: Batch) -> int:
        """Keep what the TUN write would have taken."""
        e = out.ext
        live = np.flatnonzero(e.alive())
        gt = e.gso_type[live].tolist()
        gs = e.gso_size[live].tolist()
        vf = e.vflags[live].tolist()
        for j, i in enumerate(live.tolist()):
            self.delivered.append(Inner(bytes(out.packet(i)), gt[j], gs[j], vf[j]))
        return len(live)

    # ------------------------------------------------------------ driving
    def take_delivered(self) -> list[Inner]:
        got, self.delivered = self.delivered, []
        return got

    def tick(self) -> None:
        """Run the protocol timers that are due (what ``run`` does between reads)."""
        with self.lock:
            self._handle(self.protocol.tick(time.time()))

    def handshake(self) -> None:
        """Start a handshake with every peer (a keepalive that has no session to go in)."""
        now = time.time()
        with self.lock:
            for peer in list(self.protocol.peers.values()):
                self._handle(self.protocol.send_keepalive(peer, now))

    def status(self) -> dict[str, Any]:
        doc = super().status()
        doc.setdefault("devices", {})["wire"] = self.wire.counters.as_dict()
        return doc


# --------------------------------------------------------------------------- offline pairs


def offline_tunnel(
    name: str,
    private_key: bytes,
    peer_public: bytes,
    *,
    port: int,
    endpoint: Endpoint,
    address: str,
    allowed: str,
    policy: str = "never",
    **kw: Any,
) -> Tunnel:
    """A never-started ``Tunnel`` with one peer, built from wg-quick text (tests, fuzzing,
    benchmarks of the engines alone: no TUN, no socket, no wire)."""
    from netoffload.tunnel import keys
    from netoffload.tunnel.config import parse_config

    text = (
        f"[Interface]\nPrivateKey = {keys.b64_encode(private_key)}\nListenPort = {port}\n"
        f"Address = {address}\n\n[Peer]\nPublicKey = {keys.b64_encode(peer_public)}\n"
        f"AllowedIPs = {allowed}\nEndpoint = {endpoint[0]}:{endpoint[1]}\n"
    )
    t = Tunnel(parse_config(text, name), policy=policy, **kw)
    t.dp.listen_port = port
    return t


def handshake_offline(a: Tunnel, b: Tunnel, a_ep: Endpoint, b_ep: Endpoint, now: float) -> None:
    """``a`` initiates toward its (only) peer ``b`` and consumes ``b``'s response, in
    process: ``a`` can send at once; ``b`` can once ``a``'s first data confirms it."""
    from netoffload.tunnel.protocol import SendDatagram

    peer_b = a.protocol.peers[b.protocol.public_key]
    init = next(x for x in a.protocol.stage(peer_b, b"", now) if isinstance(x, SendDatagram))
    resp = next(
        x
        for x in b.protocol.handle_handshake(init.data, a_ep, now, False)
        if isinstance(x, SendDatagram)
    )
    a.protocol.handle_handshake(resp.data, b_ep, now, False)
