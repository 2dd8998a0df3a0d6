"""The WireGuard tasks' scalar paths for small batches against their batch paths.

A batch of at most ``datapath.SMALL`` packets is worked on with plain Python
ints instead of numpy. Both paths must give the same result for the same
input: here two identical worlds (protocol core, keypairs with fixed keys,
replay windows, counters) get the same batches, one with the scalar paths
off (``SMALL = 0``), one with them on, and everything is compared -- packet
bytes, every extension field, batch layout, counters taken, replay windows,
staged packets, protocol actions and cookie replies. The inputs (drawn by
hypothesis) mix good packets with every kind of bad one the tasks tell apart.

The real thing for the same paths: single packets through two tunnels opened
with the single-packet reference (``test_single_packets_*``).
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6

from netoffload.batch import EXT_FIELDS, Batch, Reason
from netoffload.engine import Engine
from netoffload.policy import Always, Never
from netoffload.soft import SoftLibrary, make_task
from netoffload.tasks import Direction, Task
from netoffload.tunnel import datapath as dpm
from netoffload.tunnel import keys
from netoffload.tunnel.loop import handshake_offline, offline_tunnel, outer_header
from netoffload.tunnel.offload import TunChecksum
from netoffload.tunnel.protocol import SendDatagram
from netoffload.tunnel.replay import ReplayWindow

NOW = 1_800_000_000.0
PORT = 51820
SRC_EP = ("198.18.0.2", 51821)

# ------------------------------------------------------------------ a world of fakes


@dataclass
class FakeKeypair:
    local_index: int
    remote_index: int
    send_key: bytes
    recv_key: bytes
    sent: int = 0
    usable: bool = True
    replay: ReplayWindow = field(default_factory=ReplayWindow)

    def __post_init__(self) -> None:
        self.send_aead = ChaCha20Poly1305(self.send_key)
        self.recv_aead = ChaCha20Poly1305(self.recv_key)

    def reserve(self, n: int, now: float) -> int | None:
        if not self.usable:
            return None
        first = self.sent
        self.sent += n
        return first


@dataclass(eq=False)
class FakePeer:
    public_key: bytes
    kp: FakeKeypair | None
    endpoint: tuple[str, int] | None
    allowed_ips: list[str]

    def send_keypair(self, now: float) -> FakeKeypair | None:
        return self.kp


class FakeCookies:
    def check_mac1(self, msg: bytes) -> bool:
        return len(msg) >= 20 and msg[-20] % 3 != 0

    def check_mac2(self, msg: bytes, src: tuple[str, int], now: float) -> bool:
        return len(msg) > 0 and msg[-1] % 2 == 0

    def make_reply(self, msg: bytes, receiver: int, src: tuple[str, int], now: float) -> bytes:
        return b"\x03\0\0\0" + receiver.to_bytes(4, "little") + msg[8:16] + repr(src).encode()


class FakeProtocol:
    def __init__(self, peers: list[FakePeer]) -> None:
        self.peers = {p.public_key: p for p in peers}
        self.index = {p.kp.local_index: (p, p.kp) for p in peers if p.kp is not None}
        self.staged: list[tuple[bytes, bytes]] = []
        self.cookie_checker = FakeCookies()

    def lookup(self, receiver_index: int, now: float | None = None) -> Any:
        return self.index.get(receiver_index)

    def stage(self, peer: FakePeer, pkt: bytes, now: float) -> list[Any]:
        self.staged.append((peer.public_key, pkt))
        return [("stage", peer.public_key, len(pkt))]


#: peer i: AllowedIPs (nested prefixes across peers: the longest must win), endpoint
PEERS = (
    (["198.18.50.0/24", "fd00:50::/64"], ("198.18.0.1", 51820)),
    (["198.18.50.128/28", "198.18.51.0/24", "fd00:50::80/121"], ("fd00::1", 51900)),
    (["198.18.52.0/24", "fd00:52::/48"], ("198.18.0.9", 7)),
)
#: third peer: 0 all well, 1 no keypair (staged), 2 counters used up (staged),
#: 3 no endpoint
VARIANTS = (0, 1, 2, 3)


@dataclass(frozen=True)
class WorldSpec:
    variant: int
    sent: tuple[int, int, int]
    seen: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]
    listen_port: int


def make_world(spec: WorldSpec) -> dpm.Datapath:
    peers = []
    for i, (allowed, ep) in enumerate(PEERS):
        kp: FakeKeypair | None = FakeKeypair(
            2000 + i, 1000 + i, bytes([i + 1]) * 32, bytes([i + 11]) * 32, spec.sent[i]
        )
        endpoint: tuple[str, int] | None = ep
        if i == 2 and spec.variant == 1:
            kp = None
        elif i == 2 and spec.variant == 2:
            assert kp is not None
            kp.usable = False
        elif i == 2 and spec.variant == 3:
            endpoint = None
        if kp is not None:
            for c in spec.seen[i]:
                kp.replay.update(c)
        peers.append(FakePeer(bytes([i]) * 32, kp, endpoint, list(allowed)))
    dp = dpm.Datapath(FakeProtocol(peers))
    dp.listen_port = spec.listen_port
    dp.now = NOW
    return dp


worlds = st.builds(
    WorldSpec,
    st.sampled_from(VARIANTS),
    st.tuples(*[st.integers(0, 1 << 20)] * 3),
    st.tuples(*[st.lists(st.integers(0, 9000), max_size=6).map(tuple)] * 3),
    st.sampled_from([PORT, 0, 65535]),
)

# ------------------------------------------------------------------ packets

ADDRS4 = [
    "198.18.50.1",
    "198.18.50.130",  # peer 1 (the /28 in peer 0's /24)
    "198.18.51.7",
    "198.18.52.200",
    "198.18.99.1",  # nobody's
]
ADDRS6 = ["fd00:50::1", "fd00:50::81", "fd00:52:0:1::5", "fd00:99::1"]


@st.composite
def inner_packet(draw: st.DrawFn) -> bytes:
    kind = draw(
        st.sampled_from(["v4", "v4", "v6", "v6", "frag", "short", "junk", "empty", "v4opt"])
    )
    payload = draw(st.binary(max_size=80))
    src4, dst4 = draw(st.sampled_from(ADDRS4)), draw(st.sampled_from(ADDRS4))
    src6, dst6 = draw(st.sampled_from(ADDRS6)), draw(st.sampled_from(ADDRS6))
    l4 = draw(st.sampled_from(["tcp", "udp", "icmp", "tcpshort"]))

    def upper() -> Any:
        if l4 == "tcp":
            return TCP(sport=1000, dport=80, flags="A") / payload
        if l4 == "udp":
            return UDP(sport=1000, dport=53) / payload
        if l4 == "tcpshort":  # a data offset past the end
            return TCP(sport=1, dport=2, dataofs=15) / payload[:10]
        return ICMP() / payload

    if kind in ("v4", "v4opt", "frag"):
        ip = IP(src=src4, dst=dst4)
        if kind == "frag":
            ip.frag = 3
        if kind == "v4opt":
            ip.ihl = draw(st.sampled_from([4, 6]))  # bad, and one with options room
        pkt = bytes(ip / upper())
        cut = draw(st.sampled_from([None, None, 10, 19, 25]))
        return pkt[:cut] if cut is not None else pkt
    if kind == "v6":
        pkt = bytes(IPv6(src=src6, dst=dst6) / upper())
        cut = draw(st.sampled_from([None, None, 30, 39]))
        return pkt[:cut] if cut is not None else pkt
    if kind == "short":
        return bytes([draw(st.sampled_from([0x45, 0x60]))]) + payload[:10]
    if kind == "empty":
        return b""
    return payload


@dataclass(frozen=True)
class TxPacket:
    data: bytes
    gso_type: int
    gso_size: int
    vflags: int
    l3_proto: int


tx_packets = st.builds(
    TxPacket,
    inner_packet(),
    st.sampled_from([0, 1, 3, 4, 5, 0x81]),
    st.sampled_from([0, 0, 60]),
    st.sampled_from([0, 1]),
    st.sampled_from([0, 0, 4, 6]),
)


def tx_batch(pkts: list[TxPacket]) -> Batch:
    b = Batch.from_packets([p.data for p in pkts], headroom=dpm.HEADROOM, tailroom=dpm.TAILROOM)
    e = b.ext
    e.gso_type[:] = [p.gso_type for p in pkts]
    e.gso_size[:] = [p.gso_size for p in pkts]
    e.vflags[:] = [p.vflags for p in pkts]
    e.l3_proto[:] = [p.l3_proto for p in pkts]
    return b


@dataclass(frozen=True)
class RxMessage:
    kind: str
    peer: int
    counter: int
    inner: bytes
    outer6: bool
    junk: bytes


rx_messages = st.builds(
    RxMessage,
    st.sampled_from(
        ["data", "data", "data", "tampered", "unknown", "init", "resp", "cookie", "bad", "short"]
    ),
    st.integers(0, 2),
    st.sampled_from([0, 1, 5, 100, 8000, 9000, 20000]),
    inner_packet(),
    st.booleans(),
    st.binary(min_size=150, max_size=150),
)


def datagram(m: RxMessage) -> bytes:
    if m.kind in ("data", "tampered", "unknown"):
        plain = m.inner + bytes(-len(m.inner) % 16)
        aead = ChaCha20Poly1305(bytes([m.peer + 11]) * 32)
        sealed = bytearray(aead.encrypt(bytes(4) + m.counter.to_bytes(8, "little"), plain, None))
        if m.kind == "tampered":
            sealed[0] ^= 1
        rix = 7777 if m.kind == "unknown" else 2000 + m.peer
        msg = struct.pack("<B3xIQ", 4, rix, m.counter) + bytes(sealed)
    elif m.kind in ("init", "resp", "cookie"):
        t = {"init": 1, "resp": 2, "cookie": 3}[m.kind]
        n = {1: 148, 2: 92, 3: 64}[t]
        msg = bytes([t, 0, 0, 0]) + m.junk[: n - 4]
    elif m.kind == "short":
        msg = m.junk[:3]
    else:  # a type and length WireGuard does not have
        msg = bytes([m.junk[0] % 6, 0, 0, m.junk[1] % 2]) + m.junk[2:40]
    src = ("fd00::2", 51821) if m.outer6 else SRC_EP
    dst = ("fd00::1", PORT) if m.outer6 else ("198.18.0.1", PORT)
    return outer_header(src, dst, len(msg)) + msg


def rx_batch(msgs: list[RxMessage]) -> Batch:
    return Batch.from_packets([datagram(m) for m in msgs], headroom=0, tailroom=0)


# ------------------------------------------------------------------ comparison


def same_batch(a: Batch, b: Batch, whole: bool = True) -> None:
    """Packets, extension and layout the same (``whole``: every byte of the buffers,
    which a later stage may allocate uninitialised)."""
    assert a.packets() == b.packets()
    for f in ("buf", "start", "length", "slot_lo", "slot_hi")[0 if whole else 1 :]:
        assert np.array_equal(getattr(a, f), getattr(b, f)), f
    for f in EXT_FIELDS:
        assert np.array_equal(getattr(a.ext, f), getattr(b.ext, f)), f
    assert a.stride == b.stride


def same_world(a: dpm.Datapath, b: dpm.Datapath) -> None:
    pa, pb = a.protocol, b.protocol
    assert pa.staged == pb.staged
    for x, y in zip(pa.peers.values(), pb.peers.values(), strict=True):
        assert (x.kp is None) == (y.kp is None)
        if x.kp is not None:
            assert x.kp.sent == y.kp.sent
            assert (x.kp.replay.top, x.kp.replay._bits) == (y.kp.replay.top, y.kp.replay._bits)
    assert a.actions == b.actions
    assert a.outbox == b.outbox
    assert a.sessions.kp_owner == b.sessions.kp_owner
    assert {s: k.local_index for s, k in a.sessions.keypairs.items()} == {
        s: k.local_index for s, k in b.sessions.keypairs.items()
    }


def both(
    monkeypatch: pytest.MonkeyPatch, spec: WorldSpec, run: Callable[[dpm.Datapath], Any]
) -> tuple[tuple[dpm.Datapath, Any], tuple[dpm.Datapath, Any]]:
    """``run`` in a world with the scalar paths off, then in its twin with them on."""
    out = []
    for small in (0, 64):
        monkeypatch.setattr(dpm, "SMALL", small)
        dp = make_world(spec)
        out.append((dp, run(dp)))
    return out[0], out[1]


sels = st.lists(st.booleans(), min_size=4, max_size=4)
dead = st.lists(st.sampled_from([0, 0, 0, int(Reason.TRUNCATED)]), min_size=4, max_size=4)
SETTINGS = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


# ------------------------------------------------------------------ transmit


@SETTINGS
@given(worlds, st.lists(tx_packets, min_size=0, max_size=4), sels, dead)
def test_transmit_tasks_small_equals_batch(
    monkeypatch: pytest.MonkeyPatch,
    spec: WorldSpec,
    pkts: list[TxPacket],
    sel: list[bool],
    err: list[int],
) -> None:
    def run(dp: dpm.Datapath) -> tuple[Batch, Batch, Batch, dict[int, int]]:
        b = tx_batch(pkts)
        dpm.tx_wants(b)
        wanted = tx_batch(pkts)
        dpm.tx_wants(wanted)
        n = len(b)
        b.ext.error[:] = err[:n]
        mask = np.array(sel[:n], dtype=np.bool_)
        dpm.WgRoute(dp).process(b, mask)
        routed = Batch(
            b.buf.copy(), b.start.copy(), b.length.copy(), b.slot_lo, b.slot_hi, b.ext.copy()
        )
        enc = dpm.WgEncrypt(dp)
        out = enc.process(b, mask)
        return wanted, routed, out, enc.sent_bytes

    (dpa, ra), (dpb, rb) = both(monkeypatch, spec, run)
    for x, y in zip(ra[:3], rb[:3], strict=True):
        same_batch(x, y)
    assert ra[3] == rb[3]
    same_world(dpa, dpb)


@SETTINGS
@given(worlds, st.lists(tx_packets, min_size=1, max_size=12))
def test_transmit_engine_small_equals_batch(
    monkeypatch: pytest.MonkeyPatch, spec: WorldSpec, pkts: list[TxPacket]
) -> None:
    def run(dp: dpm.Datapath) -> Batch:
        lib = SoftLibrary(
            {
                Task.CLASSIFY: dpm.WgRoute(dp),
                Task.TCP_SEGMENT: make_task(Task.TCP_SEGMENT),
                Task.UDP_SEGMENT: make_task(Task.UDP_SEGMENT),
                Task.CHECKSUM: make_task(Task.CHECKSUM, mode="fill"),
                Task.ENCRYPT: dpm.WgEncrypt(dp),
            }
        )
        eng = Engine(Direction.TX, Task(0), lib, Never(), order=dpm.TX_ORDER)
        b = tx_batch(pkts)
        dpm.tx_wants(b)
        return eng.process(b).batch

    (dpa, a), (dpb, b) = both(monkeypatch, spec, run)
    same_batch(a, b, whole=False)
    same_world(dpa, dpb)


# ------------------------------------------------------------------ receive


@SETTINGS
@given(worlds, st.lists(rx_messages, min_size=0, max_size=4), sels, st.booleans())
def test_receive_tasks_small_equals_batch(
    monkeypatch: pytest.MonkeyPatch,
    spec: WorldSpec,
    msgs: list[RxMessage],
    sel: list[bool],
    under_load: bool,
) -> None:
    def run(dp: dpm.Datapath) -> tuple[list[Batch], int, dict[str, tuple[float, float]]]:
        dp.under_load = under_load
        b = rx_batch(msgs)
        n = len(b)
        hs = dpm.rx_wants(b)
        steps = [b.ext.copy()]
        mask = np.array(sel[:n], dtype=np.bool_)
        filt = dpm.WgFilter(dp)
        filt.process(b, mask)
        steps.append(b.ext.copy())
        dec = dpm.WgDecrypt(dp)
        dec.process(b, mask)
        dec.settle(b, mask)
        dpm.WgSource(dp).process(b, mask)
        return (
            [Batch(b.buf, b.start, b.length, b.slot_lo, b.slot_hi, x) for x in steps] + [b],
            hs,
            dict(filt._buckets),
        )

    (dpa, (a, hsa, bka)), (dpb, (b, hsb, bkb)) = both(monkeypatch, spec, run)
    assert hsa == hsb
    assert bka == bkb
    for x, y in zip(a, b, strict=True):
        same_batch(x, y)
    same_world(dpa, dpb)


@SETTINGS
@given(worlds, st.lists(rx_messages, min_size=1, max_size=12), st.sampled_from(["never", "always"]))
def test_receive_engine_small_equals_batch(
    monkeypatch: pytest.MonkeyPatch, spec: WorldSpec, msgs: list[RxMessage], policy: str
) -> None:
    """The whole receive engine, without devices (the C driver) and with the TUN's
    checksum device (the engine's device path)."""

    def run(dp: dpm.Datapath) -> Batch:
        lib = SoftLibrary(
            {
                Task.DIGEST: dpm.WgMac(dp),
                Task.DOS_FILTER: dpm.WgFilter(dp),
                Task.DECRYPT: dpm.WgDecrypt(dp),
                Task.CLASSIFY: dpm.WgSource(dp),
                Task.CHECKSUM: make_task(Task.CHECKSUM, mode="verify"),
                Task.TCP_ASSEMBLE: make_task(Task.TCP_ASSEMBLE),
                Task.UDP_ASSEMBLE: make_task(Task.UDP_ASSEMBLE),
            }
        )
        pol = Always() if policy == "always" else Never()
        devs = [TunChecksum("nofs0")] if policy == "always" else []
        eng = Engine(Direction.RX, Task(0), lib, pol, devs, order=dpm.RX_ORDER)
        b = rx_batch(msgs)
        dpm.rx_wants(b)
        return eng.process(b).batch

    (dpa, a), (dpb, b) = both(monkeypatch, spec, run)
    same_batch(a, b, whole=False)
    same_world(dpa, dpb)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([0, int(Task.CHECKSUM), int(Task.CHECKSUM | Task.DECRYPT)]),
            st.sampled_from([0, 0, int(Reason.BAD_ICV)]),
            st.sampled_from([0, 0, 1, 2]),
            st.sampled_from([0, int(Task.DECRYPT), int(Task.DECRYPT | Task.CLASSIFY)]),
            st.sampled_from([0, 1, 2]),
        ),
        max_size=4,
    )
)
def test_tun_checksum_small_equals_batch(rows: list[tuple[int, int, int, int, int]]) -> None:
    """The TUN checksum device's submit, a packet at a time and for the batch."""
    got = []
    for small in (0, 64):
        b = Batch.from_packets([bytes(20)] * len(rows))
        e = b.ext
        for i, (off, err, verdict, done, vflags) in enumerate(rows):
            e.offload[i], e.error[i], e.filter_verdict[i] = off, err, verdict
            e.done[i], e.vflags[i] = done, vflags
        dev = TunChecksum("nofs0")
        old = dpm.SMALL
        dpm.SMALL = small
        try:
            comp = dev.complete(dev.submit(b, dpm.RX_ORDER))
        finally:
            dpm.SMALL = old
        got.append((comp.ok, comp.error, b, dev.counters()))
    (oka, erra, a, ca), (okb, errb, bb, cb) = got
    assert (oka, erra, ca) == (okb, errb, cb)
    same_batch(a, bb)


def test_scalar_lpm_answers_as_the_table() -> None:
    """Every interval edge of a table with nested prefixes, both families."""
    dp = make_world(WorldSpec(0, (0, 0, 0), ((), (), ()), PORT))
    lpm = dpm._scalar_lpm(dp)
    assert lpm is not None
    probes4 = set()
    probes6 = set()
    for allowed, _ in PEERS:
        for net in allowed:
            nw = ipaddress.ip_network(net)
            lo, hi = int(nw.network_address), int(nw.broadcast_address)
            for x in (lo - 1, lo, lo + 1, hi - 1, hi, hi + 1):
                (probes4 if nw.version == 4 else probes6).add(x)
    probes4 |= {0, (1 << 32) - 1}
    probes6 |= {0, (1 << 128) - 1}
    for fam, probes in ((4, sorted(probes4)), (6, sorted(probes6))):
        rows = np.zeros((len(probes), 16), np.uint8)
        for j, x in enumerate(probes):
            if fam == 4:
                rows[j, 10:12] = 0xFF
                rows[j, 12:] = list(x.to_bytes(4, "big"))
            else:
                rows[j] = list(x.to_bytes(16, "big"))
        want = dp.lookup(rows, np.full(len(probes), fam == 4)).tolist()
        got = [lpm.lookup(fam == 4, x) for x in probes]
        assert got == want


# ------------------------------------------------------------------ the real thing


A_EP, B_EP = ("198.18.0.1", 51820), ("198.18.0.2", 51821)


def _datagrams(msgs: list[bytes]) -> Batch:
    b = Batch.from_packets([outer_header(A_EP, B_EP, len(m)) + m for m in msgs])
    dpm.rx_wants(b)
    return b


def _pair() -> tuple[Any, Any]:
    """Two tunnels after a handshake in process, ``b``'s session confirmed by a
    keepalive from ``a`` (a one-packet batch: the scalar paths)."""
    ka, kb = keys.generate_private(), keys.generate_private()
    pa, pb = keys.public_from_private(ka), keys.public_from_private(kb)
    a = offline_tunnel(
        "nofsa", ka, pb, port=A_EP[1], endpoint=B_EP, address="198.18.30.1/24",
        allowed="198.18.30.2/32, fd00:30::2/128",
    )  # fmt: skip
    b = offline_tunnel(
        "nofsb", kb, pa, port=B_EP[1], endpoint=A_EP, address="198.18.30.2/24",
        allowed="198.18.30.1/32, fd00:30::1/128",
    )  # fmt: skip
    handshake_offline(a, b, A_EP, B_EP, NOW)
    peer_b = a.protocol.peers[pb]
    for x in a.protocol.send_keepalive(peer_b, NOW):
        if isinstance(x, SendDatagram) and x.data[0] == 4:
            b.dp.now = NOW
            out = b.rx_engine.process(_datagrams([x.data])).batch
            assert out.ext.error.tolist() == [int(Reason.KEEPALIVE)]
            found = b.protocol.lookup(int.from_bytes(x.data[4:8], "little"))
            assert found is not None
            b.protocol.data_received(found[0], found[1], A_EP, NOW, 32, True)
    return a, b


SINGLES = [
    bytes(IP(src="198.18.30.1", dst="198.18.30.2") / ICMP(id=7) / (b"ping" * 5)),
    bytes(IP(src="198.18.30.1", dst="198.18.30.2") / TCP(sport=5, dport=6, flags="PA") / b"x"),
    bytes(IPv6(src="fd00:30::1", dst="fd00:30::2") / UDP(sport=5, dport=6) / (b"y" * 33)),
]


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_single_packets_seal_as_the_reference_opens(n: int) -> None:
    a, b = _pair()
    kp = next(iter(b.protocol.peers.values())).current
    assert kp is not None
    pkts = [SINGLES[i % 3] for i in range(n)]
    batch = Batch.from_packets(pkts, headroom=dpm.HEADROOM, tailroom=dpm.TAILROOM)
    dpm.tx_wants(batch)
    a.dp.now = NOW + 1
    out = a.tx_engine.process(batch).batch
    assert out.ext.alive().all()
    for i, orig in enumerate(pkts):
        raw = bytes(out.packet(i))
        outer = IP(raw)
        assert (outer.dst, outer[UDP].dport, outer[UDP].len) == (B_EP[0], B_EP[1], len(raw) - 20)
        opened = kp.open(raw[28:])
        assert opened is not None
        assert opened[1] == orig + bytes(len(opened[1]) - len(orig))


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_single_packets_reference_sealed_come_out_whole(n: int) -> None:
    a, b = _pair()
    kp = next(iter(a.protocol.peers.values())).send_keypair(NOW + 1)
    assert kp is not None
    pkts = [SINGLES[i % 3] for i in range(n)]
    first = kp.reserve(n, NOW + 1)
    assert first is not None
    msgs = [kp.seal(first + i, p) for i, p in enumerate(pkts)]
    b.dp.now = NOW + 1
    out = b.rx_engine.process(_datagrams(msgs)).batch
    assert sorted(out.take(out.ext.alive()).packets()) == sorted(pkts)
    # the same again: replays, nothing comes through
    again = b.rx_engine.process(_datagrams(msgs)).batch
    assert set(again.ext.error.tolist()) == {int(Reason.REPLAY)}
