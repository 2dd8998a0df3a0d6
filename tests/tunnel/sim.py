"""A simulated network of two ``Protocol`` objects with an injected clock.

``Sim`` plays the data path for both sides (lookup, open, replay window,
``data_received``; reserve, seal, ``data_sent``), carries datagrams between
them in order, and moves the clock from deadline to deadline. Nothing is
real-time: tests of the timers run in milliseconds.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from netoffload.tunnel import keys
from netoffload.tunnel.peer import Peer
from netoffload.tunnel.protocol import Action, Flush, Protocol, SendDatagram
from netoffload.wire.wireguard import MSG_DATA, message_type

ADDR = {"a": ("198.18.0.1", 51820), "b": ("198.18.0.2", 51820)}


@dataclass
class Wire:
    """A datagram in flight."""

    src: tuple[str, int]
    dest: tuple[str, int]
    data: bytes
    sent_at: float


@dataclass
class Side:
    name: str
    proto: Protocol
    peer: Peer  # its one peer (the other side)
    inner: list[bytes] = field(default_factory=list)
    keepalives_in: int = 0
    sent: list[Wire] = field(default_factory=list)
    actions: list[tuple[float, Action]] = field(default_factory=list)
    under_load: bool = False
    unreachable: bool = False  # everything sent to it is lost
    src: tuple[str, int] | None = None  # the address it sends from (roaming)


class Sim:
    def __init__(
        self,
        *,
        psk: bytes | None = None,
        now: float = 1_700_000_000.0,
        seed: int = 1,
        a_knows_b: bool = True,
        b_knows_a: bool = True,
        staged_limit: int = 128,
        keepalive_a: int = 0,
    ) -> None:
        self.now = now
        ska, skb = keys.generate_private(), keys.generate_private()
        self.rng_a, self.rng_b = random.Random(seed), random.Random(seed + 1)
        pa = Protocol(ska, now, rng=self.rng_a, staged_limit=staged_limit)
        pb = Protocol(skb, now, rng=self.rng_b, staged_limit=staged_limit)
        peer_b = pa.add_peer(
            pb.public_key,
            preshared_key=psk,
            endpoint=ADDR["b"] if a_knows_b else None,
            persistent_keepalive=keepalive_a,
            allowed_ips=["198.18.100.2/32"],
        )
        peer_a = pb.add_peer(
            pa.public_key,
            preshared_key=psk,
            endpoint=ADDR["a"] if b_knows_a else None,
            allowed_ips=["198.18.100.1/32"],
        )
        self.a = Side("a", pa, peer_b, src=ADDR["a"])
        self.b = Side("b", pb, peer_a, src=ADDR["b"])
        self.queue: list[Wire] = []
        self.lost: list[Wire] = []

    def side(self, addr: tuple[str, int]) -> Side | None:
        for s in (self.a, self.b):
            if s.src == addr or ADDR[s.name] == addr:
                return s
        return None

    def other(self, s: Side) -> Side:
        return self.b if s is self.a else self.a

    # ---------------------------------------------------------- actions
    def do(self, s: Side, actions: list[Action]) -> None:
        for a in actions:
            s.actions.append((self.now, a))
            if isinstance(a, SendDatagram):
                assert s.src is not None
                w = Wire(s.src, a.dest, a.data, self.now)
                s.sent.append(w)
                self.queue.append(w)
            elif isinstance(a, Flush):
                for p in a.packets:
                    self.send(s, p)

    def send(self, s: Side, packet: bytes) -> None:
        """The data path of ``s`` sends an inner packet to its peer."""
        peer = s.peer
        kp = peer.send_keypair(self.now)
        counter = kp.reserve(1, self.now) if kp is not None else None
        if kp is None or counter is None or peer.endpoint is None:
            self.do(s, s.proto.stage(peer, packet, self.now))
            return
        msg = kp.seal(counter, packet)
        assert s.src is not None
        w = Wire(s.src, peer.endpoint, msg, self.now)
        s.sent.append(w)
        self.queue.append(w)
        self.do(s, s.proto.data_sent(peer, self.now, len(msg), keepalive=not packet))

    def receive(self, s: Side, w: Wire) -> None:
        t = message_type(w.data)
        if t in (1, 2, 3):
            self.do(s, s.proto.handle_handshake(w.data, w.src, self.now, s.under_load))
            return
        assert t == MSG_DATA, w.data[:4]
        found = s.proto.lookup(int.from_bytes(w.data[4:8], "little"), self.now)
        if found is None:
            return
        peer, kp = found
        opened = kp.open(w.data)
        if opened is None or not kp.replay.update(opened[0]):
            return
        plain = opened[1]
        self.do(s, s.proto.data_received(peer, kp, w.src, self.now, len(w.data), not plain))
        if plain:
            s.inner.append(plain)
        else:
            s.keepalives_in += 1

    def deliver(self, limit: int = 1000) -> int:
        """Deliver everything in flight (and what that causes) at the current time."""
        n = 0
        while self.queue and n < limit:
            w = self.queue.pop(0)
            dst = self.side(w.dest)
            n += 1
            if dst is None or dst.unreachable:
                self.lost.append(w)
                continue
            self.receive(dst, w)
        return n

    # ------------------------------------------------------------ clock
    def next_deadline(self) -> float:
        return min(self.a.proto.next_deadline(), self.b.proto.next_deadline())

    def tick(self) -> None:
        for s in (self.a, self.b):
            self.do(s, s.proto.tick(self.now))
        self.deliver()

    def advance(self, dt: float) -> None:
        """Run both sides until ``now + dt``: every deadline in between, in order."""
        end = self.now + dt
        self.deliver()
        for _ in range(100_000):
            d = self.next_deadline()
            if d > end:
                break
            self.now = max(self.now, d)
            self.tick()
        else:
            raise AssertionError("timers never settle")
        self.now = end
        self.tick()

    # ------------------------------------------------------------ views
    def sent_kinds(self, s: Side, since: float = float("-inf")) -> list[tuple[float, int, int]]:
        """(time, message type, length) of what ``s`` sent since ``since``."""
        return [(w.sent_at, w.data[0], len(w.data)) for w in s.sent if w.sent_at >= since]

    def initiations(self, s: Side, since: float = float("-inf")) -> list[float]:
        return [t for t, k, _ in self.sent_kinds(s, since) if k == 1]

    def keepalives(self, s: Side, since: float = float("-inf")) -> list[float]:
        return [t for t, k, n in self.sent_kinds(s, since) if k == 4 and n == 32]
