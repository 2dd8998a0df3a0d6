"""TCP/UDP assembly: against a per-packet reference coalescer, round trips with segmentation."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6

from netoffload.batch import Batch, CsumVerdict, GsoType, VnetFlag, XFlag
from netoffload.bench.assemble import gro_pure_python
from netoffload.soft import make_task
from netoffload.soft.assemble import AssembleTask, GroResult, Outcome, assemble
from netoffload.soft.checksum import fill
from netoffload.soft.segment import segment
from netoffload.tasks import Task
from netoffload.testing.packets import tcp_packet, udp_packet

FIN, SYN, RST, PSH, ACK, URG, ECE, CWR = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80


def flow_segments(
    rnd: random.Random, fid: int, proto: int, v: int, n: int, mss: int, odd: bool
) -> list[bytes]:
    """In-order segments of one flow; ``odd`` adds what GRO must refuse now and then."""
    out = []
    seq = rnd.getrandbits(32)
    ident = rnd.getrandbits(16)
    opts = rnd.choice([b"", b"\x01\x01\x08\x0a" + bytes(8)])
    src = f"198.18.0.{fid + 1}" if v == 4 else f"fd00::{fid + 1:x}"
    v6_ext = rnd.choice([(), ((0, 0),), ((0, 1), (60, 0))]) if v == 6 else ()
    for i in range(n):
        size = mss if i < n - 1 else rnd.randint(0, mss)
        if odd and rnd.random() < 0.15:
            size = rnd.randint(0, mss + 10)
        flags = ACK
        if proto == 6 and i == 0 and rnd.random() < 0.3:
            flags |= CWR
        if proto == 6 and i == n - 1 and rnd.random() < 0.5:
            flags |= rnd.choice([PSH, FIN, PSH | FIN])
        if odd and proto == 6 and rnd.random() < 0.05:
            flags |= rnd.choice([URG, SYN, RST, PSH, CWR, ECE])
        ttl = 64 if not (odd and rnd.random() < 0.05) else 63
        pay = bytes((fid * 31 + i + k) & 0xFF for k in range(size))
        if proto == 6:
            out.append(
                tcp_packet(
                    v,
                    pay,
                    options=opts,
                    src=src,
                    sport=1000 + fid,
                    seq=seq,
                    ack=7,
                    flags=flags,
                    ident=ident,
                    ttl=ttl,
                    v6_ext=v6_ext,
                )
            )
            seq = (seq + size) & 0xFFFFFFFF
        else:
            out.append(
                udp_packet(v, pay, src=src, sport=1000 + fid, ident=ident, ttl=ttl, v6_ext=v6_ext)
            )
        ident = (ident + 1) & 0xFFFF
    if odd:  # link padding after a few of them
        out = [p + bytes(rnd.randint(1, 6)) if rnd.random() < 0.05 else p for p in out]
    return out


def interleave(rnd: random.Random, flows: list[list[bytes]]) -> list[bytes]:
    pos = [0] * len(flows)
    out = []
    while any(p < len(f) for p, f in zip(pos, flows, strict=True)):
        k = rnd.choice([i for i, f in enumerate(flows) if pos[i] < len(f)])
        out.append(flows[k][pos[k]])
        pos[k] += 1
    return out


def perturb(
    rnd: random.Random, pkts: list[bytes], reorder: float, loss: float, dup: float
) -> list[bytes]:
    out = [p for p in pkts if rnd.random() >= loss]
    i = 0
    while i < len(out) - 1:
        if rnd.random() < reorder:
            out[i], out[i + 1] = out[i + 1], out[i]
            i += 1
        i += 1
    res = []
    for p in out:
        res.append(p)
        if rnd.random() < dup:
            res.append(p)
    return res


def vec(pkts: list[bytes], proto: int, verified: bool = True, **kw: Any) -> tuple[Batch, Outcome]:
    b = Batch.from_packets(pkts)
    if verified:
        b.ext.csum_verdict[:] = CsumVerdict.GOOD
    return assemble(b, np.ones(len(b), dtype=np.bool_), proto, **kw)


def full(out: Batch) -> list[bytes]:
    c = out.copy()
    fill(c, np.ones(len(c), dtype=np.bool_))
    return c.packets()


@given(
    seed=st.integers(0, 2**32 - 1),
    proto=st.sampled_from([6, 17]),
    nflows=st.integers(1, 4),
    odd=st.booleans(),
    reorder=st.sampled_from([0.0, 0.05, 0.3]),
    loss=st.sampled_from([0.0, 0.05]),
    dup=st.sampled_from([0.0, 0.05]),
)
def test_matches_reference_coalescer(
    seed: int, proto: int, nflows: int, odd: bool, reorder: float, loss: float, dup: float
) -> None:
    rnd = random.Random(seed)
    flows = [
        flow_segments(
            rnd,
            f,
            proto,
            rnd.choice([4, 6]),
            rnd.randint(1, 70),
            rnd.choice([1, 100, 1448, 3000]),
            odd,
        )
        for f in range(nflows)
    ]
    pkts = perturb(rnd, interleave(rnd, flows), reorder, loss, dup)
    limit = rnd.choice([None, None, 3])
    out, oc = vec(pkts, proto, max_segs=limit)
    ref = gro_pure_python(pkts, proto, max_segs=limit)
    assert full(out) == [r[0] for r in ref]
    assert list(out.ext.segs.clip(1)) == [r[2] for r in ref]
    merged = out.ext.segs >= 2
    assert list(out.ext.gso_size[merged]) == [r[1] for r in ref if r[2] >= 2]
    assert (out.ext.vflags[merged] & VnetFlag.NEEDS_CSUM).all()
    assert sum(
        1 for r in oc.result if r in (GroResult.HELD, GroResult.ALONE, GroResult.FLUSHED)
    ) == len(out)


@given(
    seed=st.integers(0, 2**32 - 1),
    proto=st.sampled_from([6, 17]),
    nsup=st.integers(1, 4),
)
def test_round_trip_assemble_of_segments_gives_super_packet(
    seed: int, proto: int, nsup: int
) -> None:
    rnd = random.Random(seed)
    sups, mss = [], []
    for f in range(nsup):
        v = rnd.choice([4, 6])
        m = rnd.choice([1, 536, 1448, 4000])
        size = rnd.randint(0, min(60000, m * (64 if proto == 17 else 200)))
        flags = (
            ACK | rnd.choice([0, PSH, FIN, PSH | FIN]) | rnd.choice([0, ECE])
        )  # CWR segments are never merged (Linux)
        pay = rnd.randbytes(size)
        src = f"198.18.1.{f + 1}" if v == 4 else f"fd00::1:{f + 1:x}"
        sups.append(
            tcp_packet(
                v,
                pay,
                src=src,
                seq=rnd.getrandbits(32),
                flags=flags,
                ident=rnd.getrandbits(16),
                options=rnd.choice([b"", b"\x01\x01\x08\x0a" + bytes(8)]),
            )
            if proto == 6
            else udp_packet(v, pay, src=src, ident=rnd.getrandbits(16))
        )
        mss.append(m)
    b = Batch.from_packets(sups)
    b.ext.gso_size[:] = mss
    segs, plan = segment(b, np.ones(len(b), dtype=np.bool_), proto)
    # interleave the flows' segments, keeping each flow's order
    per = np.repeat(np.arange(nsup), plan.segments)
    idx_flows = [
        [bytes([i >> 8, i & 0xFF]) for i in np.flatnonzero(per == k).tolist()] for k in range(nsup)
    ]
    mixed = [(m[0] << 8) | m[1] for m in interleave(rnd, idx_flows)]
    shuffled = segs.take(np.array(mixed, dtype=np.int64))
    shuffled.ext.csum_verdict[:] = CsumVerdict.GOOD
    out, _ = assemble(shuffled, np.ones(len(shuffled), dtype=np.bool_), proto)
    assert sorted(full(out)) == sorted(sups)
    for i in range(len(out)):
        k = int(out.ext.segs[i])
        if k >= 2:
            gt = int(out.ext.gso_type[i]) & 0x7F
            assert gt == (
                GsoType.UDP_L4
                if proto == 17
                else (GsoType.TCPV4 if out.ext.l3_proto[i] == 4 else GsoType.TCPV6)
            )


@given(
    seed=st.integers(0, 2**32 - 1),
    proto=st.sampled_from([6, 17]),
    reorder=st.sampled_from([0.0, 0.1]),
    loss=st.sampled_from([0.0, 0.1]),
)
def test_round_trip_segment_of_assembled_gives_segments(
    seed: int, proto: int, reorder: float, loss: float
) -> None:
    rnd = random.Random(seed)
    flows = [
        flow_segments(
            rnd, f, proto, rnd.choice([4, 6]), rnd.randint(1, 50), rnd.choice([100, 1448]), False
        )
        for f in range(3)
    ]
    pkts = perturb(rnd, interleave(rnd, flows), reorder, loss, 0.0)
    out, _ = vec(pkts, proto)
    again, _ = segment(out, out.ext.segs >= 2, proto)

    # packet for packet within each flow (flows interleave differently after assembly)
    def by_flow(ps: list[bytes]) -> dict[bytes, list[bytes]]:
        d: dict[bytes, list[bytes]] = {}
        for p in ps:
            k = p[12:20] if p[0] >> 4 == 4 else p[8:40]
            d.setdefault(k, []).append(p)
        return d

    assert by_flow(again.packets()) == by_flow(pkts)


def test_virtio_form_of_a_merged_packet() -> None:
    segs = [
        tcp_packet(4, b"x" * 1000, seq=1000 * i, ident=5 + i, flags=ACK | (CWR if i == 0 else 0))
        for i in range(4)
    ]
    out, oc = vec(segs, 6)
    # a CWR segment goes alone (as Linux 6.18 does), the others merge
    assert len(out) == 2
    assert list(oc.result) == [GroResult.ALONE, GroResult.HELD, GroResult.MERGED, GroResult.MERGED]
    assert out.packets()[0] == segs[0]
    out = out.take(np.array([1]))
    e = out.ext
    assert e.gso_type[0] == GsoType.TCPV4 and e.gso_size[0] == 1000 and e.segs[0] == 3
    assert e.hdr_len[0] == 40 and e.csum_start[0] == 20 and e.csum_offset[0] == 16
    assert e.vflags[0] & VnetFlag.NEEDS_CSUM
    p = IP(out.packets()[0])
    assert p.len == 3040 and p.id == 6
    # the TCP checksum field holds the (uncomplemented) pseudo-header sum
    pseudo = bytes(p)[12:20] + bytes([0, 6]) + (3020).to_bytes(2, "big")
    s = sum(int.from_bytes(pseudo[i : i + 2], "big") for i in range(0, 12, 2))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    assert p[TCP].chksum == s
    # completing it gives the packet scapy would build
    ref = IP(bytes(IP(full(out)[0])))
    del ref.chksum, ref[TCP].chksum
    assert full(out)[0] == bytes(IP(bytes(ref)))


def test_fixed_ids() -> None:
    for ff in (0x4000, 0):  # Linux 6.18 merges fixed IDs with or without DF
        segs = [
            tcp_packet(4, b"x" * 100, seq=100 * i, ident=9, flags=ACK, flags_frag=ff)
            for i in range(4)
        ]
        out, _ = vec(segs, 6)
        assert len(out) == 1 and out.ext.xflags[0] & XFlag.FIXED_ID
    # neither incrementing nor fixed: no merge
    segs = [tcp_packet(4, b"x" * 100, seq=100 * i, ident=9 + 2 * i, flags=ACK) for i in range(4)]
    out, _ = vec(segs, 6)
    assert len(out) == 4


def test_bad_checksum_passes_unmerged_and_does_not_break_the_flow() -> None:
    segs = [tcp_packet(6, b"x" * 500, seq=500 * i, flags=ACK) for i in range(4)]
    bad = bytearray(tcp_packet(6, b"y" * 500, seq=99999, flags=ACK))
    bad[-1] ^= 0xFF
    pkts = [segs[0], segs[1], bytes(bad), segs[2], segs[3]]
    out, oc = vec(pkts, 6, verified=False)
    assert len(out) == 2 and out.ext.segs[0] == 4
    assert oc.result[2] == GroResult.FLUSHED
    assert out.packets()[1] == bytes(bad)


def test_udp_checksum_zero_and_count_limit() -> None:
    z = [udp_packet(4, b"x" * 100, ident=i, checksum=False) for i in range(3)]
    out, _ = vec(z, 17)
    assert len(out) == 3
    many = [udp_packet(4, b"x" * 100, ident=i) for i in range(130)]
    out, _ = vec(many, 17)
    assert list(out.ext.segs) == [64, 64, 2]


def test_size_limit_64k() -> None:
    segs = [tcp_packet(4, b"x" * 1448, seq=1448 * i, ident=i, flags=ACK) for i in range(100)]
    out, _ = vec(segs, 6)
    assert [int(x) for x in out.length] == [40 + 45 * 1448, 40 + 45 * 1448, 40 + 10 * 1448]
    assert all(IP(p).len <= 65535 for p in out.packets())


def test_timeout_flushes_by_injected_clock() -> None:
    segs = [tcp_packet(4, b"x" * 100, seq=100 * i, ident=i, flags=ACK) for i in range(6)]
    b = Batch.from_packets(segs)
    b.ext.csum_verdict[:] = CsumVerdict.GOOD
    t = AssembleTask(Task.TCP_ASSEMBLE)
    times = np.array([0, 10, 20, 1000, 1010, 5000], dtype=np.int64)
    out = t.process_timed(b, np.ones(6, dtype=np.bool_), times, timeout_ns=100)
    assert list(out.ext.segs.clip(1)) == [3, 2, 1]


def test_passthrough_and_errors_keep_order() -> None:
    u = udp_packet(4, b"u" * 10)
    trunc = tcp_packet(4, b"x" * 10)[:30]
    segs = [tcp_packet(4, b"x" * 100, seq=100 * i, ident=i, flags=ACK) for i in range(3)]
    b = Batch.from_packets([segs[0], u, segs[1], trunc, segs[2]])
    b.ext.origin[:] = np.arange(5)
    b.ext.csum_verdict[:] = CsumVerdict.GOOD
    out, oc = assemble(b, np.ones(5, dtype=np.bool_), 6)
    assert list(out.ext.origin) == [0, 1, 3]
    assert out.packets()[1] == u and out.packets()[2] == trunc
    assert out.ext.error[2] != 0 and oc.result[3] == GroResult.ERROR


@given(
    data=st.lists(st.binary(min_size=0, max_size=120), min_size=1, max_size=8),
    proto=st.sampled_from([6, 17]),
)
def test_fuzz_never_raises(data: list[bytes], proto: int) -> None:
    base = [tcp_packet(4, b"z" * 50, seq=50 * i, ident=i, flags=ACK) for i in range(3)]
    _out, oc = vec(base + data + base, proto, verified=False)
    assert len(oc.result) == len(data) + 6


def test_registered() -> None:
    t = make_task(Task.UDP_ASSEMBLE, max_segs=8)
    assert isinstance(t, AssembleTask) and t.max_segs == 8
    b = Batch.from_packets([udp_packet(6, b"x" * 100, ident=i) for i in range(20)])
    out = t.process(b, np.ones(20, dtype=np.bool_))
    assert list(out.ext.segs) == [8, 8, 4]
    assert UDP in IPv6(out.packets()[0])


def test_engine_rx_checksum_then_assembly() -> None:
    from netoffload.engine import Engine
    from netoffload.policy.base import Never
    from netoffload.soft import SoftLibrary
    from netoffload.tasks import Direction

    tasks = Task.CHECKSUM | Task.TCP_ASSEMBLE | Task.UDP_ASSEMBLE
    lib = SoftLibrary(
        {
            Task.CHECKSUM: make_task(Task.CHECKSUM, mode="verify"),
            Task.TCP_ASSEMBLE: make_task(Task.TCP_ASSEMBLE),
            Task.UDP_ASSEMBLE: make_task(Task.UDP_ASSEMBLE),
        }
    )
    eng = Engine(Direction.RX, tasks, lib, Never())
    tcp = [tcp_packet(4, b"t" * 500, seq=500 * i, ident=i, flags=ACK) for i in range(5)]
    udp = [udp_packet(6, b"u" * 300, ident=i) for i in range(4)]
    bad = bytearray(tcp_packet(4, b"b" * 100, seq=7, flags=ACK))
    bad[-1] ^= 1
    b = Batch.from_packets([tcp[0], udp[0], tcp[1], bytes(bad), *udp[1:], *tcp[2:]])
    b.ext.tasks[:] = tasks
    out = eng.process(b).batch
    assert list(out.ext.segs.clip(1)) == [5, 4, 1]
    assert out.ext.error[2] != 0  # the bad checksum: the checksum stage's verdict
