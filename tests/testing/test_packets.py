"""The packet builders agree with scapy, byte for byte, checksums included."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP, IPOption_NOP, in4_chksum
from scapy.layers.inet6 import (
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    in6_chksum,
)
from scapy.layers.l2 import Ether
from scapy.packet import Packet, Raw
from scapy.utils import checksum

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


def l4_offset(raw: bytes) -> tuple[int, int]:
    """(offset, protocol) of the upper layer of a raw IP packet, from the header fields."""
    if raw[0] >> 4 == 4:
        return (raw[0] & 15) * 4, raw[9]
    off, nh = 40, raw[6]
    while nh in (0, 43, 60):
        nh, off = raw[off], off + (raw[off + 1] + 1) * 8
    return off, nh


def checksums_ok(raw: bytes) -> bool:
    """Every checksum of ``raw`` is what scapy's own checksum routines compute.

    Only headers are dissected (a payload could be dissected as whatever layer
    another test bound to the port, e.g. VXLAN on 4789 after ``scapy.all``).
    """
    off, proto = l4_offset(raw)
    field = 16 if proto == 6 else 6
    seg = bytearray(raw[off:])
    got = int.from_bytes(seg[field : field + 2], "big")
    seg[field : field + 2] = b"\0\0"
    if raw[0] >> 4 == 4:
        hdr = bytearray(raw[:off])
        hdr[10:12] = b"\0\0"
        if checksum(bytes(hdr)) != int.from_bytes(raw[10:12], "big"):
            return False
        want = in4_chksum(proto, IP(raw[:off]), bytes(seg))
    else:
        under = IPv6(raw[:off]) / Raw(bytes(seg))
        want = in6_chksum(proto, under[Raw], bytes(seg))
    if proto == 17 and want == 0:
        want = 0xFFFF
    return bool(got == want)


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
    # scapy's checksum routines agree with every checksum
    assert checksums_ok(pkt)
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
    assert checksums_ok(pkt)
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
        off, proto = l4_offset(raw)
        hdr = IP(raw[:off]) if v == 4 else IPv6(raw[:off])  # headers only
        assert checksums_ok(raw)
        assert hdr.src.startswith(("198.18.", "198.19.", "fd00:"))
        assert hdr.dst.startswith(("198.18.", "198.19.", "fd00:"))
        kinds.add((v, proto == 6))
        assert len(raw) in (40, 48, 60, 64, 577, 1400) or len(raw) < 64
    assert kinds == {(4, True), (4, False), (6, True), (6, False)}
