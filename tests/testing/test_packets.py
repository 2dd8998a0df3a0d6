"""The packet builders agree with scapy, byte for byte, checksums included."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP, IPOption_NOP
from scapy.layers.inet6 import (
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.l2 import Ether
from scapy.packet import Packet, Raw

from netoffload.testing.packets import synthetic_flows, tcp_packet, udp_packet

payloads = st.binary(min_size=0, max_size=300)
tcp_opts = st.integers(0, 10).map(lambda k: b"\x01" * (4 * k))  # NOPs
ip_opts = st.integers(0, 10).map(lambda k: b"\x01" * (4 * k))
# scapy reads a type-0 routing header as 16-byte addresses: give it an even length
v6_exts = st.lists(
    st.tuples(st.sampled_from([0, 43, 60]), st.integers(0, 2)).map(
        lambda t: (t[0], t[1] & ~1) if t[0] == 43 else t
    ),
    max_size=3,
)


def rebuilt(raw: bytes, v: int) -> bytes:
    """scapy's own bytes for the packet, checksums and lengths recomputed by scapy."""
    p: Packet = IP(raw) if v == 4 else IPv6(raw)
    layer = p.getlayer(TCP) or p.getlayer(UDP)
    assert layer is not None
    del layer.chksum
    if v == 4:
        del p[IP].chksum
    return bytes(p.__class__(bytes(p)))


def scapy_v6_exts(exts: list[tuple[int, int]]) -> Packet | None:
    out: Packet | None = None
    for typ, units in exts:
        body_len = 6 + 8 * units
        if typ == 43:
            h: Packet = IPv6ExtHdrRouting(bytes([59, units, 0, 0]) + b"\x00" * (body_len - 2))
            h.remove_payload()
            del h.nh
        else:
            cls = IPv6ExtHdrHopByHop if typ == 0 else IPv6ExtHdrDestOpt
            h = cls(bytes([59, units, 1, body_len - 2]) + b"\x00" * (body_len - 2))
            h.remove_payload()
            del h.nh
        out = h if out is None else out / h
    return out


@given(v=st.sampled_from([4, 6]), payload=payloads, opts=tcp_opts, ipo=ip_opts, ex=v6_exts)
def test_tcp_packet_matches_scapy(
    v: int, payload: bytes, opts: bytes, ipo: bytes, ex: list[tuple[int, int]]
) -> None:
    pkt = tcp_packet(
        v,
        payload,
        options=opts,
        ip_options=ipo if v == 4 else b"",
        v6_ext=ex if v == 6 else (),
        seq=12345,
        ack=678,
        ident=99,
    )
    # scapy recomputes every checksum from scratch: the bytes must not change
    assert rebuilt(pkt, v) == pkt
    # and an independently built scapy packet is identical
    l4 = TCP(sport=40000, dport=5201, seq=12345, ack=678, flags="PA", window=65535)
    if opts:
        l4.options = [("NOP", None)] * len(opts)
    if v == 4:
        ip: Packet = IP(src="198.18.0.1", dst="198.19.0.1", id=99, flags="DF", ttl=64)
        if ipo:
            ip.options = [IPOption_NOP()] * len(ipo)
    else:
        ip = IPv6(src="fd00::1", dst="fd00::2", hlim=64)
        chain = scapy_v6_exts(ex)
        if chain is not None:
            ip = ip / chain
    want = bytes(ip / l4 / Raw(payload)) if payload else bytes(ip / l4)
    assert pkt == want


@given(v=st.sampled_from([4, 6]), payload=payloads, ex=v6_exts)
def test_udp_packet_matches_scapy(v: int, payload: bytes, ex: list[tuple[int, int]]) -> None:
    pkt = udp_packet(v, payload, sport=1234, dport=4321, v6_ext=ex if v == 6 else ())
    assert rebuilt(pkt, v) == pkt
    l4 = UDP(sport=1234, dport=4321)
    if v == 4:
        ip: Packet = IP(src="198.18.0.1", dst="198.19.0.1", id=0, flags="DF")
    else:
        ip = IPv6(src="fd00::1", dst="fd00::2")
        chain = scapy_v6_exts(ex)
        if chain is not None:
            ip = ip / chain
    want = bytes(ip / l4 / Raw(payload)) if payload else bytes(ip / l4)
    assert pkt == want


def test_udp_zero_checksum_is_sent_as_ffff() -> None:
    # find a payload whose UDP checksum computes to 0 (sum == 0xFFFF) by solving for 2 bytes
    base = udp_packet(4, b"\x00\x00", sport=1, dport=2)
    p = IP(base)
    c = p[UDP].chksum  # checksum with payload 0000; choose payload = c makes the sum all-ones
    pkt = udp_packet(4, c.to_bytes(2, "big"), sport=1, dport=2)
    assert pkt[26:28] == b"\xff\xff"
    assert IP(pkt)[UDP].chksum == 0xFFFF
    assert udp_packet(4, b"ab", checksum=False)[26:28] == b"\x00\x00"


def test_ethernet_framing() -> None:
    pkt = tcp_packet(6, b"abc", ethernet=True)
    e = Ether(pkt)
    assert e.type == 0x86DD
    assert bytes(e.payload) == tcp_packet(6, b"abc")


def test_synthetic_flows_are_valid_and_deterministic() -> None:
    pkts = synthetic_flows(200, sizes=(40, 64, 577, 1400), seed=7)
    assert pkts == synthetic_flows(200, sizes=(40, 64, 577, 1400), seed=7)
    kinds = set()
    for raw in pkts:
        v = raw[0] >> 4
        p = IP(raw) if v == 4 else IPv6(raw)
        assert rebuilt(raw, v) == raw
        src = p.src
        assert src.startswith(("198.18.", "198.19.", "fd00:"))
        kinds.add((v, TCP in p))
        assert len(raw) in (40, 48, 60, 64, 577, 1400) or len(raw) < 64
    assert kinds == {(4, True), (4, False), (6, True), (6, False)}
