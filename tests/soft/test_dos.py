"""DoS filter against a plain per-packet reference (dicts and sets), time passed in."""

from __future__ import annotations

import ipaddress
import itertools
import struct
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from netoffload.batch import Batch, FilterVerdict, Reason
from netoffload.errors import ConfigError
from netoffload.soft import make_task
from netoffload.soft.dos import make_dos
from netoffload.soft.rules import parse_dos
from netoffload.tasks import Task
from netoffload.testing.packets import tcp_packet, udp_packet
from netoffload.wire.ipv4 import IPv4
from netoffload.wire.tcp import ACK, SYN

SRC4 = ["198.18.0.1", "198.18.0.2", "198.18.9.3"]
SRC6 = ["fd00::1", "fd00::2", "fd00:0:0:1::1"]
DST4 = ["198.19.0.1", "198.19.0.2"]
DST6 = ["fd00:1::1", "fd00:1::2"]


@dataclass(frozen=True)
class P:
    v: int
    src: str
    dst: str
    kind: str  # syn | synack | ack | udp | esp
    sport: int  # the client's port (a SYN-ACK goes from port 80 to it)
    seq: int = 0
    spi: int = 0
    ack: int = 0

    def build(self) -> bytes:
        if self.kind == "synack":
            return tcp_packet(
                v=self.v,
                src=self.src,
                dst=self.dst,
                sport=80,
                dport=self.sport,
                flags=SYN | ACK,
                seq=self.seq,
                ack=self.ack,
            )
        if self.kind in ("syn", "ack"):
            fl = SYN if self.kind == "syn" else ACK
            return tcp_packet(
                v=self.v,
                src=self.src,
                dst=self.dst,
                sport=self.sport,
                dport=80,
                flags=fl,
                seq=self.seq,
                ack=self.ack,
            )
        if self.kind == "udp":
            return udp_packet(v=self.v, src=self.src, dst=self.dst, sport=self.sport, dport=53)
        body = struct.pack("!II", self.spi, self.seq) + b"\x00" * 16
        return IPv4(self.src, self.dst, 50).emit(len(body)) + body


@st.composite
def pkts(draw: st.DrawFn) -> P:
    kind = draw(st.sampled_from(["syn", "syn", "synack", "ack", "ack", "udp", "esp"]))
    v = 4 if kind == "esp" else draw(st.sampled_from([4, 6]))
    client = draw(st.sampled_from(SRC4 if v == 4 else SRC6))
    server = draw(st.sampled_from(DST4 if v == 4 else DST6))
    src, dst = (server, client) if kind == "synack" else (client, server)
    return P(
        v,
        src,
        dst,
        kind,
        draw(st.sampled_from([1000, 1001])),
        draw(st.integers(1, 3)),  # small numbers: handshakes often match
        draw(st.sampled_from([0x100, 0x200])),
        draw(st.integers(1, 4)),
    )


@st.composite
def handshake(draw: st.DrawFn) -> list[P]:
    """SYN, SYN-ACK, ACK of one flow; the numbers right or off by one."""
    v = draw(st.sampled_from([4, 6]))
    c = draw(st.sampled_from(SRC4 if v == 4 else SRC6))
    s = draw(st.sampled_from(DST4 if v == 4 else DST6))
    port = draw(st.sampled_from([1000, 1001]))
    x, y = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    a1 = x + 1 if draw(st.integers(0, 3)) else x
    a2 = y + 1 if draw(st.integers(0, 3)) else y + 2
    return [
        P(v, c, s, "syn", port, x),
        P(v, s, c, "synack", port, y, ack=a1),
        P(v, c, s, "ack", port, x + 1, ack=a2),
    ]


@st.composite
def traffic(draw: st.DrawFn) -> list[tuple[float, list[P]]]:
    """Batches (time step, packets) of single packets and handshakes, the
    handshakes' packets sometimes in one batch, sometimes across batches."""
    items = draw(st.lists(pkts().map(lambda p: [p]) | handshake(), min_size=1, max_size=40))
    flat = [p for it in items for p in it]
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(flat) - 1)), max_size=4))))
    bounds = [0, *[c for c in cuts if c < len(flat)], len(flat)]
    return [(draw(st.floats(0, 2)), flat[a:b]) for a, b in itertools.pairwise(bounds) if b > a]


class Ref:
    """The documented semantics, one packet at a time (SynGuard's snapshot rule:
    established flows and known sources as they were when the batch began)."""

    def __init__(
        self, rate: float, burst: float, srate: float, sburst: float, window: int, drop: list[str]
    ) -> None:
        self.rate, self.burst, self.srate, self.sburst = rate, burst, srate, sburst
        self.window = window
        self.drop = [ipaddress.ip_network(d) for d in drop]
        self.src: dict[object, tuple[float, float]] = {}
        self.prefix: dict[object, tuple[float, float]] = {}
        self.known: dict[object, tuple[float, float]] = {}
        self.est: set[tuple[str, str, int]] = set()
        self.pending: dict[tuple[str, str, int], list[int]] = {}
        self.batch_start(0.0)

    def batch_start(self, now: float) -> None:
        self.est0 = set(self.est)
        self.known0 = set(self.known)
        self.new_known: list[str] = []

    def batch_end(self, now: float) -> None:
        for a in self.new_known:
            if a not in self.known:
                self.known[a] = (self.sburst, now)

    @staticmethod
    def _take(
        tab: dict[object, tuple[float, float]], key: object, now: float, rate: float, burst: float
    ) -> bool:
        tok, last = tab.get(key, (burst, now))
        tok = min(burst, tok + rate * (now - last))
        if tok >= 1.0 - 1e-9:
            tab[key] = (tok - 1.0, now)
            return True
        tab[key] = (tok, now)
        return False

    def step(self, p: P, now: float) -> int:
        a = ipaddress.ip_address(p.src)
        if any(a in n for n in self.drop if n.version == a.version):
            return Reason.DROP_LIST
        key = a if p.v == 4 else ipaddress.ip_network(f"{p.src}/64", strict=False)
        if not self._take(self.src, key, now, self.rate, self.burst):
            return Reason.RATE_LIMIT
        flow = (p.dst, p.src, p.sport) if p.kind == "synack" else (p.src, p.dst, p.sport)
        if p.kind == "syn" and flow not in self.est0:
            if p.src in self.known0:
                ok = self._take(self.known, p.src, now, self.srate, self.sburst)
            else:
                pfx = ipaddress.ip_network(f"{p.src}/{24 if p.v == 4 else 64}", strict=False)
                ok = self._take(self.prefix, pfx, now, self.srate, self.sburst)
            if not ok:
                return Reason.SYN_FLOOD
            self.pending[flow] = [1, p.seq, 0]
        cur = self.pending.get(flow)
        if p.kind == "synack" and cur is not None and p.ack == cur[1] + 1:
            cur[0], cur[2] = 2, p.seq
        elif p.kind == "ack" and cur is not None and cur[0] == 2 and p.ack == cur[2] + 1:
            del self.pending[flow]
            self.est.add(flow)
            self.new_known.append(p.src)
        # ESP: no decrypt task, so no authenticated window: the pre-check passes it
        return 0


@given(
    traffic(),
    st.sampled_from([(5.0, 3.0), (100.0, 10.0), (1.0, 1.0)]),
    st.sampled_from([(2.0, 2.0), (50.0, 5.0)]),
    st.sampled_from([[], ["198.18.9.0/24"], ["fd00::/126"]]),
)
def test_matches_reference(
    batches: list[tuple[float, list[P]]],
    rb: tuple[float, float],
    sb: tuple[float, float],
    drop: list[str],
) -> None:
    _against_reference(batches, rb, sb, drop, now=0.0)


def _against_reference(
    batches: list[tuple[float, list[P]]],
    rb: tuple[float, float],
    sb: tuple[float, float],
    drop: list[str],
    now: float,
) -> None:
    """The filter and ``Ref`` over the same batches: the same verdict per packet."""
    cfg: dict[str, object] = {
        "rate": {"rate": rb[0], "burst": rb[1]},
        "syn": {"rate": sb[0], "burst": sb[1]},
        "replay": {"window": 64},
    }
    if drop:
        cfg["drop"] = {"src": drop}
    f = make_dos(cfg)
    ref = Ref(rb[0], rb[1], sb[0], sb[1], 64, drop)
    for dt, ps in batches:
        now += dt
        b = Batch.from_packets([p.build() for p in ps])
        f.process(b, np.ones(len(ps), bool), now=now)
        ref.batch_start(now)
        want = [ref.step(p, now) for p in ps]
        ref.batch_end(now)
        assert b.ext.filter_reason.tolist() == want
        assert b.ext.filter_verdict.tolist() == [FilterVerdict.DROP if w else 0 for w in want]
        assert (b.ext.error == 0).all()


def test_rate_limit_refills_with_passed_time() -> None:
    f = make_task(Task.DOS_FILTER, rules={"rate": {"rate": 10, "burst": 5}})
    p = tcp_packet()
    b = Batch.from_packets([p] * 8)
    f.process(b, np.ones(8, bool), now=100.0)  # type: ignore[call-arg]
    assert b.ext.filter_reason.tolist() == [0] * 5 + [Reason.RATE_LIMIT] * 3
    b = Batch.from_packets([p] * 3)
    f.set_time(100.2)  # type: ignore[attr-defined]
    f.process(b, np.ones(3, bool))
    assert b.ext.filter_reason.tolist() == [0, 0, Reason.RATE_LIMIT]
    assert f.counters["rate_limit"] == 4  # type: ignore[attr-defined]


def test_size_and_fragment_rules() -> None:
    f = make_dos({"size": {"min": 28, "max": 1000}, "fragments": {"min_first": 16}})
    body = b"\x00" * 40
    pkts = [
        IPv4("198.18.0.1", "198.19.0.1", 1).emit(0),  # 20 bytes: too small
        udp_packet(payload=b"x" * 2000),  # too big
        IPv4("198.18.0.1", "198.19.0.1", 6, flags_frag=1).emit(len(body)) + body,  # TCP at offset 8
        IPv4("198.18.0.1", "198.19.0.1", 17, flags_frag=0x2000).emit(8) + b"\x00" * 8,  # tiny first
        IPv4("198.18.0.1", "198.19.0.1", 17, flags_frag=8189).emit(len(body)) + body,  # past 64 KiB
        IPv4("198.18.0.1", "198.19.0.1", 17, flags_frag=0x2000).emit(len(body)) + body,  # fine
        udp_packet(),
        b"\x45\x00",  # truncated: error, not a verdict
    ]
    b = Batch.from_packets(pkts)
    f.process(b, np.ones(len(pkts), bool), now=0.0)
    R = Reason
    assert b.ext.filter_reason[:7].tolist() == [
        R.BAD_SIZE,
        R.BAD_SIZE,
        R.BAD_FRAGMENT,
        R.BAD_FRAGMENT,
        R.BAD_FRAGMENT,
        0,
        0,
    ]
    assert b.ext.error[-1] == R.TRUNCATED


def test_sa_from_extension() -> None:
    """Windows by ``ext.sa`` move only with ``record`` (authenticated numbers);
    the filter itself judges each packet against them and changes nothing."""
    f = make_dos({"replay": {"window": 64}})
    b = Batch.from_packets([udp_packet()] * 5)
    b.ext.sa[:] = [1, 1, 2, 1, -1]
    b.ext.seq[:] = [7, 7, 7, 200, 7]
    f.process(b, np.ones(5, bool), now=0.0)
    assert b.ext.filter_reason.tolist() == [0] * 5  # nothing authenticated yet
    f.record(np.array([1, 2, 1]), np.array([7, 7, 100], np.uint64))  # type: ignore[attr-defined]
    want = [Reason.TOO_OLD, Reason.REPLAY, Reason.REPLAY, 0, 0]
    for _ in range(2):  # the same twice: the filter recorded nothing
        b = Batch.from_packets([udp_packet()] * 5)
        b.ext.sa[:] = [1, 1, 2, 1, 3]
        b.ext.seq[:] = [7, 100, 7, 101, 7]
        f.process(b, np.ones(5, bool), now=0.0)
        assert b.ext.filter_reason.tolist() == want


@given(st.lists(st.binary(max_size=70), min_size=1, max_size=30))
def test_corrupt_input_never_raises(blobs: list[bytes]) -> None:
    f = make_dos(
        {
            "rate": {"rate": 1, "burst": 1},
            "syn": {"rate": 1},
            "replay": {"window": 64},
            "fragments": {"min_first": 8},
            "drop": {"src": ["0.0.0.0/1"]},
        }
    )
    b = Batch.from_packets(blobs)
    f.process(b, np.ones(len(b), bool), now=1.0)
    assert len(b) == len(blobs)


@pytest.mark.parametrize(
    ("doc", "msg"),
    [
        ({"rate": {"burst": 3}}, "rate: missing 'rate'"),
        ({"rate": {"rate": -1}}, "rate: rate"),
        ({"replay": {"window": 32}}, "window: 32 out of range"),
        ({"drop": {"src": ["300.1.2.3/8"]}}, "src entry 1"),
        ({"size": {"min": 100, "max": 10}}, "min 100 > max 10"),
        ({"bogus": 1}, "unknown key"),
    ],
)
def test_bad_config(doc: dict[str, object], msg: str) -> None:
    with pytest.raises(ConfigError, match=msg):
        parse_dos(doc)


MANY4 = [f"198.18.{i // 7}.{i % 7 + 1}" for i in range(40)]
MANY6 = [f"fd00:0:0:{i % 5}::{i + 1}" for i in range(12)]


@st.composite
def crowd(draw: st.DrawFn) -> list[P]:
    """A batch from many sources, some of them sending a lot (bucket groups of every size)."""
    hot = draw(st.lists(st.sampled_from(MANY4 + MANY6), min_size=1, max_size=4))
    out = []
    for _ in range(draw(st.integers(1, 200))):
        src = (
            draw(st.sampled_from(hot))
            if draw(st.booleans())
            else draw(st.sampled_from(MANY4 + MANY6))
        )
        v = 6 if ":" in src else 4
        kind = draw(
            st.sampled_from(
                ["esp", "esp", "udp", "syn", "synack", "ack"]
                if v == 4
                else ["udp", "syn", "synack", "ack"]
            )
        )
        dst = draw(st.sampled_from(DST4 if v == 4 else DST6))
        if kind == "synack":
            src, dst = dst, src
        seq = draw(st.integers(1, 3))
        spi = draw(st.sampled_from([0x100, 0x200, 0x300, 0x400]))
        ack = draw(st.integers(1, 4))
        out.append(P(v, src, dst, kind, draw(st.sampled_from([1000, 1001])), seq, spi, ack))
    return out


@given(
    st.lists(st.tuples(st.sampled_from([0.0, 0.01, 0.5, 3.0]), crowd()), min_size=1, max_size=4),
    st.sampled_from([(1000.0, 1000.0), (5.0, 3.0), (20.0, 6.5), (1.0, 1.0)]),
    st.sampled_from([(2.0, 2.0), (1000.0, 1000.0)]),
)
def test_many_sources_match_reference(
    batches: list[tuple[float, list[P]]], rb: tuple[float, float], sb: tuple[float, float]
) -> None:
    """Larger batches than ``test_matches_reference``: many sources and SAs, and
    buckets that cover every packet of their source or run out part way."""
    _against_reference(batches, rb, sb, [], now=10.0)


# ------------------------------------------------ anti-replay: no state before authentication
def _esp_rx(esn: bool = False, seq_start: int = 1) -> tuple[list[bytes], list[bytes], object]:
    """Six inner packets, what EncryptTask makes of them under one SA (scapy checks
    that format in tests/soft/test_crypto.py), and a receive engine that runs the
    DoS filter (replay pre-check on) before the decrypt task."""
    from netoffload.engine import Engine
    from netoffload.policy import Never
    from netoffload.sa import parse_sa_doc
    from netoffload.soft import SoftLibrary
    from netoffload.tasks import Direction

    doc = {
        "sa": [
            {
                "name": "a-to-b",
                "spi": 0x4004,
                "algorithm": "aes-gcm-128",
                "key": (bytes(range(16)) + b"salt").hex(),
                "src": "198.18.0.1",
                "dst": "198.19.0.1",
                "replay_window": 64,
                "esn": esn,
                "seq_start": seq_start,
            }
        ]
    }
    sas = parse_sa_doc(doc)
    inner = [udp_packet(src="198.18.1.1", dst="198.19.1.1", sport=1000 + i) for i in range(6)]
    b = Batch.from_packets(inner)
    b.ext.sa[:] = 0
    wire = make_task(Task.ENCRYPT, sas=sas).process(b, np.ones(6, bool)).packets()
    lib = SoftLibrary(
        {
            Task.DOS_FILTER: make_dos({"replay": {"window": 64}}),
            Task.DECRYPT: make_task(Task.DECRYPT, sas=sas),
        }
    )
    eng = Engine(Direction.RX, Task.DOS_FILTER | Task.DECRYPT, lib, Never())
    return inner, wire, eng


def _rx(eng: object, pkts: list[bytes]) -> Batch:
    b = Batch.from_packets(pkts)
    b.ext.tasks[:] = int(Task.DOS_FILTER | Task.DECRYPT)
    return eng.process(b).batch  # type: ignore[attr-defined, no-any-return]


def _forge(genuine: bytes, seq: int, src: str) -> bytes:
    """The genuine datagram with another sequence number and source, and its ICV
    altered: an attacker without the key."""
    p = bytearray(genuine)
    p[24:28] = seq.to_bytes(4, "big")
    p[-1] ^= 0x5A
    return bytes(IPv4(src, "198.19.0.1", 50).emit(len(p) - 20)) + bytes(p[20:])


def test_forged_high_sequence_number_leaves_genuine_traffic_untouched() -> None:
    """One unauthenticated ESP packet with sequence 0xfffffff0 (from any address)
    must not move a window: the genuine 3, 4, 5 that follow are delivered."""
    inner, wire, eng = _esp_rx()
    out = _rx(eng, wire[:2])
    assert out.ext.alive().all() and out.packets() == inner[:2]
    forged = _forge(wire[5], 0xFFFFFFF0, "203.0.113.9")
    out = _rx(eng, [forged])
    assert out.ext.error.tolist() == [Reason.BAD_ICV]  # decryption refuses it
    assert out.ext.filter_reason.tolist() == [0]  # the pre-check had nothing against it
    out = _rx(eng, wire[2:5])
    assert out.ext.filter_reason.tolist() == [0, 0, 0]
    assert out.ext.alive().all() and out.packets() == inner[2:5]
    # an authenticated number replayed: the pre-check drops it before decryption
    out = _rx(eng, [wire[3]])
    assert out.ext.filter_reason.tolist() == [Reason.REPLAY]


def test_forged_packets_in_the_same_batch_do_not_shadow_genuine_ones() -> None:
    inner, wire, eng = _esp_rx()
    forged = [_forge(wire[i], i + 1, "198.18.7.7") for i in range(6)]
    out = _rx(eng, [forged[0], wire[0], forged[1], wire[1], forged[5], wire[5]])
    assert out.ext.error.tolist() == [Reason.BAD_ICV, 0] * 3
    assert out.ext.filter_reason.tolist() == [0] * 6
    assert out.take(out.ext.alive()).packets() == [inner[0], inner[1], inner[5]]


def test_replay_pre_check_with_extended_sequence_numbers_across_the_wrap() -> None:
    """ESN: the low halves go fffffffd, fffffffe, ffffffff, 0, 1, 2; the pre-check infers
    the high half (RFC 4303 A2.2) from the authenticated window, as decryption does."""
    inner, wire, eng = _esp_rx(esn=True, seq_start=2**32 - 3)
    lows = [int.from_bytes(w[24:28], "big") for w in wire]
    assert lows == [2**32 - 3, 2**32 - 2, 2**32 - 1, 0, 1, 2]
    out = _rx(eng, wire[:3])
    assert out.ext.alive().all()
    out = _rx(eng, wire[3:])
    assert out.ext.filter_reason.tolist() == [0, 0, 0]
    assert out.ext.alive().all() and out.packets() == inner[3:]
    assert out.ext.seq.tolist() == [2**32, 2**32 + 1, 2**32 + 2]
    out = _rx(eng, [wire[4], wire[1]])  # seen after and before the wrap
    assert out.ext.filter_reason.tolist() == [Reason.REPLAY, Reason.REPLAY]


# ------------------------------------------------ SYN floods: handshakes and fair budgets
SYNACK = SYN | ACK


def _tcp(
    src: str, dst: str, sport: int, dport: int, flags: int, seq: int = 0, ack: int = 0
) -> bytes:
    v = 6 if ":" in src else 4
    return tcp_packet(
        v=v, src=src, dst=dst, sport=sport, dport=dport, flags=flags, seq=seq, ack=ack
    )


def _verdicts(f: object, pkts: list[bytes], now: float) -> list[int]:
    b = Batch.from_packets(pkts)
    f.process(b, np.ones(len(pkts), bool), now=now)  # type: ignore[attr-defined]
    return [int(x) for x in b.ext.filter_reason]


def _handshake(
    f: object, c: str, s: str, cport: int, now: float, x: int = 1000, y: int = 9000
) -> None:
    """SYN (let through), SYN-ACK acknowledging it, ACK acknowledging that."""
    assert _verdicts(f, [_tcp(c, s, cport, 80, SYN, seq=x)], now) == [0]
    assert _verdicts(f, [_tcp(s, c, 80, cport, SYNACK, seq=y, ack=x + 1)], now) == [0]
    assert _verdicts(f, [_tcp(c, s, cport, 80, ACK, seq=x + 1, ack=y + 1)], now) == [0]


def test_an_ack_without_a_handshake_establishes_nothing() -> None:
    """A spoofed bare ACK used to mark its flow established, so that flow's SYNs
    were never limited."""
    f = make_dos({"syn": {"rate": 1e-6, "burst": 1}})
    c, s = "198.18.3.4", "198.19.0.1"
    assert _verdicts(f, [_tcp(c, s, 5555, 80, ACK, seq=7, ack=7)], 1.0) == [0]
    syns = [_tcp(c, s, 5555, 80, SYN, seq=100 + i) for i in range(3)]
    assert _verdicts(f, syns, 2.0) == [0, Reason.SYN_FLOOD, Reason.SYN_FLOOD]


def test_a_handshake_needs_the_right_numbers_and_a_syn_that_passed() -> None:
    f = make_dos({"syn": {"rate": 1e-6, "burst": 1}})
    c, s = "198.18.3.4", "198.19.0.1"
    # SYN-ACK that does not acknowledge the SYN, then an ACK of it: no handshake
    assert _verdicts(f, [_tcp(c, s, 1, 80, SYN, seq=10)], 1.0) == [0]
    assert _verdicts(f, [_tcp(s, c, 80, 1, SYNACK, seq=50, ack=99)], 1.0) == [0]
    assert _verdicts(f, [_tcp(c, s, 1, 80, ACK, seq=11, ack=51)], 1.0) == [0]
    # a SYN the filter dropped starts nothing either
    assert _verdicts(f, [_tcp(c, s, 2, 80, SYN, seq=20)], 1.0) == [Reason.SYN_FLOOD]
    assert _verdicts(f, [_tcp(s, c, 80, 2, SYNACK, seq=60, ack=21)], 1.0) == [0]
    assert _verdicts(f, [_tcp(c, s, 2, 80, ACK, seq=21, ack=61)], 1.0) == [0]
    # so neither flow is established and the source earned nothing: still limited
    assert _verdicts(f, [_tcp(c, s, 1, 80, SYN, seq=30), _tcp(c, s, 2, 80, SYN, seq=31)], 2.0) == [
        Reason.SYN_FLOOD,
        Reason.SYN_FLOOD,
    ]


@pytest.mark.parametrize(
    ("flood", "legit", "dst"),
    [
        ("198.18.5.{}", "198.18.6.1", "198.19.0.1"),
        ("fd00:5::{:x}", "fd00:6::1", "fd00:1::1"),
    ],
)
def test_a_syn_flood_from_one_prefix_spares_the_others(flood: str, legit: str, dst: str) -> None:
    """SYN budgets are per source prefix (/24, /64): a flood from spoofed addresses
    of one prefix drops its own SYNs, not those of another prefix to the same
    destination (one bucket per destination used to drop them all)."""
    f = make_dos({"syn": {"rate": 1e-6, "burst": 20}})
    pkts = [_tcp(flood.format(1 + i % 250), dst, 1024 + i, 80, SYN, seq=i) for i in range(500)]
    got = _verdicts(f, pkts, 1.0)
    assert got.count(0) == 20 and got.count(Reason.SYN_FLOOD) == 480
    assert _verdicts(f, [_tcp(legit, dst, 40000, 80, SYN, seq=1)], 1.1) == [0]


def test_a_source_that_completed_a_handshake_keeps_its_budget_in_a_flood() -> None:
    """A flood spoofed from the client's own /24 empties that prefix's budget; the
    client, known from a handshake it completed, keeps a budget of its own."""
    f = make_dos({"syn": {"rate": 1e-6, "burst": 5}})
    c, s = "198.18.5.10", "198.19.0.1"
    _handshake(f, c, s, 33000, 1.0)
    flood = [_tcp(f"198.18.5.{100 + i % 100}", s, 1024 + i, 80, SYN, seq=i) for i in range(300)]
    got = _verdicts(f, flood, 2.0)
    assert got.count(0) == 4  # the prefix had spent one token on the client's SYN
    assert _verdicts(f, [_tcp(c, s, 33001, 80, SYN, seq=5)], 2.1) == [0]
    # a handshake inside one batch counts as well
    f2 = make_dos({"syn": {"rate": 1e-6, "burst": 1}})
    x, y = 77, 88
    one = [
        _tcp(c, s, 2000, 80, SYN, seq=x),
        _tcp(s, c, 80, 2000, SYNACK, seq=y, ack=x + 1),
        _tcp(c, s, 2000, 80, ACK, seq=x + 1, ack=y + 1),
    ]
    assert _verdicts(f2, one, 1.0) == [0, 0, 0]
    assert _verdicts(f2, [_tcp("198.18.5.99", s, 9, 80, SYN)], 1.1) == [Reason.SYN_FLOOD]
    assert _verdicts(f2, [_tcp(c, s, 2001, 80, SYN)], 1.2) == [0]


def test_syn_state_is_bounded_under_a_flood_from_everywhere() -> None:
    f = make_dos({"syn": {"rate": 1.0, "burst": 2, "max_flows": 1000}})
    rng = np.random.default_rng(1)
    for r in range(5):
        addrs = rng.integers(0, 2**24, 4000)
        pkts = [
            _tcp(f"198.{18 + a % 2}.{(a >> 8) & 255}.{a & 255}", "198.19.0.1", 1024 + i, 80, SYN)
            for i, a in enumerate(addrs.tolist())
        ]
        _verdicts(f, pkts, 1.0 + r)
    # and 1500 clients complete handshakes (more than the tables hold)
    hs = []
    for i in range(1500):
        c = f"198.18.{i // 200}.{i % 200 + 1}"
        hs += [
            _tcp(c, "198.19.0.9", 2000, 80, SYN, seq=i),
            _tcp("198.19.0.9", c, 80, 2000, SYNACK, seq=7 * i, ack=i + 1),
            _tcp(c, "198.19.0.9", 2000, 80, ACK, seq=i + 1, ack=7 * i + 1),
        ]
    f2 = make_dos({"syn": {"rate": 1e9, "burst": 1e9, "max_flows": 1000}})
    _verdicts(f2, hs, 1.0)
    for flt in (f, f2):
        sizes = flt.describe()["syn_state"]  # type: ignore[attr-defined]
        assert all(v <= 1000 for v in sizes.values()), sizes
    assert f.describe()["syn_state"]["handshakes"] == 1000  # type: ignore[attr-defined]
    assert f2.describe()["syn_state"]["known_sources"] == 1000  # type: ignore[attr-defined]
    assert f2.describe()["syn_state"]["established"] == 1000  # type: ignore[attr-defined]
