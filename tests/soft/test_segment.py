"""TCP/UDP segmentation against an independent reference built with scapy."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Packet, Raw

from netoffload.batch import Batch, GsoType, Reason, VnetFlag, XFlag
from netoffload.engine import Engine
from netoffload.policy.base import Never
from netoffload.soft import make_task
from netoffload.soft.segment import Plan, segment
from netoffload.tasks import Direction, Task
from netoffload.testing.packets import tcp_packet, udp_packet

FIN, SYN, RST, PSH, ACK, URG, ECE, CWR = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80


def ref_segments(
    pkt: bytes, mss: int, fixed_id: bool = False, ethernet: bool = False
) -> list[bytes]:
    """Segment with scapy, field by field as the kernel's GSO documents it."""
    p: Packet = Ether(pkt) if ethernet else (IP(pkt) if pkt[0] >> 4 == 4 else IPv6(pkt))
    l4 = p[TCP] if TCP in p else p[UDP]
    payload = bytes(l4.payload)
    chunks = [payload[i : i + mss] for i in range(0, len(payload), mss)] or [b""]
    out = []
    for j, chunk in enumerate(chunks):
        s = p.copy()
        s4 = s[TCP] if TCP in s else s[UDP]
        s4.remove_payload()
        s4.add_payload(Raw(chunk))
        if IP in s:
            del s[IP].len
            del s[IP].chksum
            if not fixed_id:
                s[IP].id = (p[IP].id + j) & 0xFFFF
        if IPv6 in s:
            del s[IPv6].plen
        del s4.chksum
        if TCP in s:
            s4.seq = (p[TCP].seq + j * mss) & 0xFFFFFFFF
            fl = int(p[TCP].flags)
            if j != len(chunks) - 1:
                fl &= ~(FIN | PSH)
            if j != 0:
                fl &= ~CWR
            s4.flags = fl
        else:
            del s4.len
        out.append(bytes(s))
    return out


def run(pkts: list[bytes], mss: int, proto: int, **ext: int) -> tuple[Batch, Plan]:
    b = Batch.from_packets(pkts)
    b.ext.gso_size[:] = mss
    for k, v in ext.items():
        getattr(b.ext, k)[:] = v
    return segment(b, np.ones(len(b), dtype=np.bool_), proto)


OPTS = st.sampled_from(
    [
        b"",
        b"\x01\x01\x01\x01",
        b"\x01\x01\x08\x0a" + bytes(range(8)),
        b"\x02\x04\x05\xb4" + b"\x01" * 36,
    ]
)


@given(
    v=st.sampled_from([4, 6]),
    size=st.integers(0, 9000),
    mss=st.integers(1, 3000),
    opts=OPTS,
    flags=st.sets(st.sampled_from([FIN, PSH, CWR, ECE, URG])),
    seq=st.integers(0, 2**32 - 1),
    ident=st.integers(0, 0xFFFF),
    fixed=st.booleans(),
    eth=st.booleans(),
    v6ext=st.booleans(),
    ecn_bit=st.booleans(),
)
def test_tcp_matches_reference(
    v: int,
    size: int,
    mss: int,
    opts: bytes,
    flags: set[int],
    seq: int,
    ident: int,
    fixed: bool,
    eth: bool,
    v6ext: bool,
    ecn_bit: bool,
) -> None:
    mss = max(mss, size // 200 + 1)
    fl = ACK | sum(flags)
    sup = tcp_packet(
        v,
        bytes((i * 7) & 0xFF for i in range(size)),
        options=opts,
        seq=seq,
        flags=fl,
        ident=ident if v == 4 else 0,
        ethernet=eth,
        v6_ext=((0, 0),) if v == 6 and v6ext else (),
        tos=0x02,
    )
    gt = (GsoType.TCPV4 if v == 4 else GsoType.TCPV6) | (GsoType.ECN if ecn_bit else 0)
    out, _plan = run(
        [sup],
        mss,
        6,
        gso_type=int(gt),
        xflags=(XFlag.FIXED_ID if fixed else 0) | (XFlag.ETHERNET if eth else 0),
    )
    assert out.packets() == ref_segments(sup, mss, fixed, eth)
    assert not out.ext.error.any()
    assert (out.ext.gso_type == 0).all() and (out.ext.vflags & VnetFlag.NEEDS_CSUM == 0).all()


@given(
    v=st.sampled_from([4, 6]),
    size=st.integers(0, 9000),
    mss=st.integers(1, 3000),
    ident=st.integers(0, 0xFFFF),
    eth=st.booleans(),
)
def test_udp_matches_reference(v: int, size: int, mss: int, ident: int, eth: bool) -> None:
    mss = max(mss, size // 100 + 1)
    sup = udp_packet(
        v, bytes((i * 13) & 0xFF for i in range(size)), ident=ident if v == 4 else 0, ethernet=eth
    )
    out, _ = run([sup], mss, 17, gso_type=int(GsoType.UDP_L4), xflags=XFlag.ETHERNET if eth else 0)
    assert out.packets() == ref_segments(sup, mss, ethernet=eth)


def test_mixed_batch_order_and_passthrough() -> None:
    a = tcp_packet(4, b"a" * 3000, seq=5)
    u = udp_packet(6, b"u" * 100)
    c = tcp_packet(6, b"c" * 2500, seq=7)
    b = Batch.from_packets([a, u, c])
    b.ext.gso_size[:] = 1000
    b.ext.origin[:] = [10, 11, 12]
    out, plan = segment(b, np.array([True, False, True]), 6)
    pk = out.packets()
    assert pk[:3] == ref_segments(a, 1000) and pk[3] == u and pk[4:] == ref_segments(c, 1000)
    assert list(out.ext.origin) == [10, 10, 10, 11, 12, 12, 12]
    assert list(plan.segments) == [3, 1, 3]


def test_small_payload_passes_as_one_packet() -> None:
    # not a GSO packet for the kernel: one packet, flags kept
    p = tcp_packet(4, b"x" * 100, flags=ACK | PSH | FIN | CWR)
    out, _ = run([p], 1448, 6)
    assert out.packets() == [p]


def test_payload_equal_to_mss() -> None:
    p = tcp_packet(4, b"x" * 1448, flags=ACK | PSH)
    out, _ = run([p], 1448, 6)
    assert out.packets() == [p]


@pytest.mark.parametrize(
    ("pkt", "mss", "proto", "reason"),
    [
        (tcp_packet(4, b"x" * 100), 0, 6, Reason.GSO_SIZE_ZERO),
        (udp_packet(4, b"x" * 100), 10, 6, Reason.NOT_TCP),
        (tcp_packet(4, b"x" * 100), 10, 17, Reason.NOT_UDP),
        (tcp_packet(4, b"x" * 100)[:30], 10, 6, Reason.BAD_IP_LENGTH),
        (tcp_packet(4, b"x" * 100)[:10], 10, 6, Reason.TRUNCATED),
        (udp_packet(4, b"x" * 2000), 10, 17, Reason.TOO_MANY_SEGMENTS),
        (tcp_packet(6, b"x" * 100, v6_ext=((0, 0),) * 9), 10, 6, Reason.IPV6_EXT_UNSUPPORTED),
    ],
)
def test_bad_input_verdicts(pkt: bytes, mss: int, proto: int, reason: Reason) -> None:
    good = tcp_packet(4, b"g" * 3000) if proto == 6 else udp_packet(4, b"g" * 3000)
    b = Batch.from_packets([good, pkt, good])
    b.ext.gso_size[:] = [1000, mss, 1000]
    out, plan = segment(b, np.ones(3, dtype=np.bool_), proto)
    assert list(plan.error) == [0, reason, 0]
    assert len(out) == 7 and out.packets()[3] == pkt and out.ext.error[3] == reason


def test_data_offset_past_end_and_wrong_gso_type() -> None:
    p = bytearray(tcp_packet(4, b""))
    p[32] = 0xF0  # data offset 60 > segment
    q = tcp_packet(4, b"x" * 3000)
    b = Batch.from_packets([bytes(p), q])
    b.ext.gso_size[:] = 100
    b.ext.gso_type[:] = [GsoType.TCPV4, GsoType.TCPV6]
    _out, plan = segment(b, np.ones(2, dtype=np.bool_), 6)
    assert plan.error[0] in (Reason.TRUNCATED, Reason.BAD_HDR_LEN)
    assert plan.error[1] == Reason.BAD_VNET_HDR


def test_vnet_hdr_len_past_the_end() -> None:
    p = tcp_packet(4, b"x" * 3000)
    b = Batch.from_packets([p, p])
    b.ext.gso_size[:] = 1000
    b.ext.hdr_len[:] = [len(p) + 1, 40]
    out, plan = segment(b, np.ones(2, dtype=np.bool_), 6)
    assert list(plan.error) == [Reason.BAD_HDR_LEN, 0] and len(out) == 4


def test_super_packet_over_64k() -> None:
    p = bytearray(tcp_packet(6, b"x" * 65000))
    p += b"y" * 1000  # buffer longer than any IPv6 packet can be
    b = Batch.from_packets([bytes(p)])
    b.ext.gso_size[:] = 1000
    _, plan = segment(b, np.ones(1, dtype=np.bool_), 6)
    assert plan.error[0] == Reason.SUPER_TOO_BIG


@given(
    data=st.binary(min_size=0, max_size=300),
    mss=st.integers(0, 400),
    proto=st.sampled_from([6, 17]),
)
def test_fuzz_never_raises(data: bytes, mss: int, proto: int) -> None:
    b = Batch.from_packets([data, tcp_packet(4, b"z" * 500)])
    b.ext.gso_size[:] = mss
    out, plan = segment(b, np.ones(2, dtype=np.bool_), proto)
    assert len(out) == int(plan.segments.sum())


@given(
    data=st.binary(min_size=40, max_size=200),
    flips=st.lists(st.tuples(st.integers(0, 199), st.integers(0, 255)), max_size=6),
)
def test_fuzz_corrupted_headers(data: bytes, flips: list[tuple[int, int]]) -> None:
    p = bytearray(tcp_packet(4, data))
    for i, x in flips:
        p[i % len(p)] = x
    b = Batch.from_packets([bytes(p)])
    b.ext.gso_size[:] = 50
    out, plan = segment(b, np.ones(1, dtype=np.bool_), 6)
    assert len(out) == int(plan.segments[0])


def test_registered_and_engine() -> None:
    from netoffload.soft import SoftLibrary

    t = make_task(Task.TCP_SEGMENT, mss=1000)
    lib = SoftLibrary({Task.TCP_SEGMENT: t, Task.UDP_SEGMENT: make_task(Task.UDP_SEGMENT)})
    eng = Engine(Direction.TX, Task.TCP_SEGMENT | Task.UDP_SEGMENT, lib, Never())
    b = Batch.from_packets([tcp_packet(4, b"x" * 2500), udp_packet(4, b"y" * 2500)])
    b.ext.tasks[:] = [Task.TCP_SEGMENT, Task.UDP_SEGMENT]
    b.ext.gso_size[:] = [0, 1200]
    out = eng.process(b).batch
    assert list(out.length) == [1040, 1040, 540, 1228, 1228, 128]


def test_pcap_tx_segment_then_rx_assemble(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    from scapy.layers.l2 import ARP
    from scapy.utils import rdpcap, wrpcap

    from netoffload.cli import main

    frames = [
        tcp_packet(4, bytes(range(256)) * 20, ethernet=True, flags=ACK | PSH),
        udp_packet(6, b"u" * 3000, ethernet=True),
        tcp_packet(6, b"s" * 100, ethernet=True),
        bytes(Ether() / ARP()),
    ]
    src = tmp_path / "in.pcap"
    wrpcap(str(src), [Ether(f) for f in frames])
    seg, res = tmp_path / "seg.pcap", tmp_path / "seg.jsonl"
    rc = main(
        [
            "pcap",
            "--tx",
            "tcp-segment,udp-segment",
            "--mss",
            "1000",
            str(src),
            str(seg),
            "--results",
            str(res),
        ]
    )
    assert rc == 0
    got = [bytes(p) for p in rdpcap(str(seg))]
    want = ref_segments(frames[0], 1000, ethernet=True) + ref_segments(
        frames[1], 1000, ethernet=True
    )
    assert got == want[:6] + want[6:] + frames[2:]
    lines = [json.loads(x) for x in res.read_text().splitlines()]
    assert [x["index"] for x in lines] == [0] * 6 + [1] * 3 + [2, 3]
    assert all(x["error"] is None and x["delivered"] for x in lines)
    # and back: the receive side coalesces the segments into the super-packets
    back, res2 = tmp_path / "back.pcap", tmp_path / "back.jsonl"
    assert (
        main(
            [
                "pcap",
                "--rx",
                "tcp-assemble,udp-assemble",
                str(seg),
                str(back),
                "--results",
                str(res2),
            ]
        )
        == 0
    )
    assert [bytes(p) for p in rdpcap(str(back))] == frames
    lines = [json.loads(x) for x in res2.read_text().splitlines()]
    assert [x.get("gso", {}).get("segments") for x in lines] == [6, 3, None, None]


def test_pcap_segment_needs_mss(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    from scapy.utils import wrpcap

    from netoffload.cli import main

    src = tmp_path / "in.pcap"
    wrpcap(str(src), [Ether(tcp_packet(4, b"x", ethernet=True))])
    assert main(["pcap", "--tx", "tcp-segment", str(src), str(tmp_path / "o.pcap")]) == 2
    assert "--mss" in capsys.readouterr().err
    assert (
        main(["pcap", "--tx", "tcp-segment", "--mss", "0", str(src), str(tmp_path / "o.pcap")]) == 2
    )
