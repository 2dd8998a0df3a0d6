"""The checksum task against scapy (an independent implementation) and RFC 1071."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP, IPOption_NOP
from scapy.layers.inet6 import (
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    IPv6ExtHdrSegmentRouting,
)
from scapy.layers.l2 import Ether
from scapy.packet import Packet, Raw

from netoffload.batch import Batch, CsumVerdict, Reason, VnetFlag, XFlag
from netoffload.errors import ConfigError
from netoffload.soft import make_task
from netoffload.soft.checksum import (
    FILL,
    VERIFY,
    ChecksumTask,
    fill,
    layout,
    mode_for,
    range_sums,
    to_partial,
    verify,
)
from netoffload.tasks import Direction, Task
from netoffload.wire.parse import parse_batch

ALL_VERDICTS = {int(v) for v in CsumVerdict}
ALL_REASONS = {int(r) for r in Reason}


# ------------------------------------------------------------------ independent references
def rfc1071(data: bytes) -> int:
    """The folded 16-bit one's complement sum (RFC 1071), straight from its definition."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


@st.composite
def scapy_packets(draw: st.DrawFn) -> tuple[bytes, int, int]:
    """(scapy-built bytes with every checksum computed by scapy, IP version, L4 protocol)."""
    v = draw(st.sampled_from([4, 6]))
    proto = draw(st.sampled_from([6, 17]))
    payload = draw(st.binary(max_size=301))
    if v == 4:
        ip: Packet = IP(
            src=draw(st.sampled_from(["198.18.0.1", "198.19.255.254", "198.18.7.9"])),
            dst="198.19.0.2",
            id=draw(st.integers(0, 0xFFFF)),
            ttl=draw(st.integers(1, 255)),
        )
        nopt = draw(st.integers(0, 10))
        if nopt:
            ip.options = [IPOption_NOP()] * (4 * nopt)
    else:
        ip = IPv6(src=draw(st.sampled_from(["fd00::1", "fd00:1:2::ff"])), dst="fd00::2:3")
        for typ in draw(st.lists(st.sampled_from([0, 60]), max_size=3)):
            units = draw(st.integers(0, 2))
            cls = IPv6ExtHdrHopByHop if typ == 0 else IPv6ExtHdrDestOpt
            body = 6 + 8 * units
            h = cls(bytes([59, units, 1, body - 2]) + b"\0" * (body - 2))
            h.remove_payload()
            del h.nh
            ip = ip / h
    if proto == 6:
        l4: Packet = TCP(
            sport=draw(st.integers(1, 0xFFFF)),
            dport=draw(st.integers(1, 0xFFFF)),
            seq=draw(st.integers(0, 2**32 - 1)),
            flags="PA",
        )
        k = draw(st.integers(0, 10))
        if k:
            l4.options = [("NOP", None)] * (4 * k)
    else:
        l4 = UDP(sport=draw(st.integers(1, 0xFFFF)), dport=draw(st.integers(1, 0xFFFF)))
    pkt = ip / l4 / Raw(payload) if payload else ip / l4
    raw = bytes(pkt)
    if draw(st.booleans()):
        raw = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / pkt)
    return raw, v, proto


def eth_of(raw: bytes) -> bool:
    return len(raw) > 0 and raw[0] >> 4 not in (4, 6)


def l4_offset(raw: bytes) -> tuple[int, int]:
    """(offset, protocol) of the upper layer of a raw IP packet, from the header fields.

    (Not by re-serialising a scapy dissection: another test may have bound a
    port to some layer, e.g. VXLAN after ``scapy.all``, that rebuilds differently.)
    """
    if raw[0] >> 4 == 4:
        return (raw[0] & 15) * 4, raw[9]
    off, nh = 40, raw[6]
    while nh in (0, 43, 60):
        nh, off = raw[off], off + (raw[off + 1] + 1) * 8
    return off, nh


def l4_field(raw: bytes) -> tuple[int, int]:
    """(offset of the L4 checksum field, offset of the IPv4 header checksum or -1)."""
    ip_off = 14 if eth_of(raw) else 0
    off, proto = l4_offset(raw[ip_off:])
    ip4 = ip_off + 10 if (raw[ip_off] >> 4) == 4 else -1
    return ip_off + off + (16 if proto == 6 else 6), ip4


def batch_of(raws: list[bytes], headroom: int = 64, uniform: bool | None = None) -> Batch:
    b = Batch.from_packets(raws, headroom=headroom, uniform=uniform)
    for i, r in enumerate(raws):
        if eth_of(r):
            b.ext.xflags[i] |= np.uint8(XFlag.ETHERNET)
    return b


packet_lists = st.lists(scapy_packets(), min_size=1, max_size=8)
headrooms = st.sampled_from([0, 1, 3, 64])


# ------------------------------------------------------------------ the sum kernel
@given(
    data=st.binary(min_size=0, max_size=700),
    cuts=st.lists(st.tuples(st.integers(0, 700), st.integers(0, 700)), min_size=1, max_size=12),
    shift=st.integers(0, 7),
)
def test_range_sums_match_rfc1071(data: bytes, cuts: list[tuple[int, int]], shift: int) -> None:
    raw = np.frombuffer(b"\xaa" * shift + data, dtype=np.uint8)[shift:]  # any alignment
    a = np.array([min(x, y, len(data)) for x, y in cuts], dtype=np.int64)
    b = np.array([min(max(x, y), len(data)) for x, y in cuts], dtype=np.int64)
    got = range_sums(raw, a, b)
    for i in range(len(a)):
        assert int(got[i]) == rfc1071(data[a[i] : b[i]]) % 0xFFFF


def test_range_sums_long_ranges() -> None:
    rng = np.random.default_rng(5)
    data = rng.integers(0, 256, 1 << 20, dtype=np.uint8)
    a = np.array([0, 1, 12345, 600_000, 3], dtype=np.int64)
    b = np.array([len(data), 70_001, 600_000, len(data) - 1, 3 + 8 * 70_000], dtype=np.int64)
    got = range_sums(data, a, b)
    for i in range(len(a)):
        assert int(got[i]) == rfc1071(data[a[i] : b[i]].tobytes()) % 0xFFFF
    # all-ones words overflow 64-bit sums the most
    ones = np.full(1 << 16, 0xFF, dtype=np.uint8)
    assert int(range_sums(ones, np.array([0]), np.array([len(ones)]))[0]) == 0


# ------------------------------------------------------------------ fill
@given(pkts=packet_lists, headroom=headrooms, garbage=st.integers(0, 0xFFFF))
def test_fill_matches_scapy(
    pkts: list[tuple[bytes, int, int]], headroom: int, garbage: int
) -> None:
    raws = [r for r, _, _ in pkts]
    spoiled = []
    for r in raws:
        f, ip4 = l4_field(r)
        x = bytearray(r)
        x[f : f + 2] = garbage.to_bytes(2, "big")
        if ip4 >= 0:
            x[ip4 : ip4 + 2] = (garbage ^ 0x5A5A).to_bytes(2, "big")
        spoiled.append(bytes(x))
    b = batch_of(spoiled, headroom)
    out = ChecksumTask(FILL).process(b, np.ones(len(b), dtype=np.bool_))
    assert out.packets() == raws
    assert (out.ext.error == 0).all()


def test_fill_only_selected_packets() -> None:
    raws = [bytes(IP(dst="198.18.0.9") / TCP() / Raw(b"x" * n)) for n in range(6)]
    spoiled = [r[:36] + b"\0\0" + r[38:] for r in raws]
    b = batch_of(spoiled)
    sel = np.array([True, False, True, False, True, False])
    before = b.ext.copy()
    fill(b, sel)
    for i, p in enumerate(b.packets()):
        assert p == (raws[i] if sel[i] else spoiled[i])
    assert b.ext.equals(before) or all(
        b.ext.row(i) == before.row(i) for i in range(len(b)) if not sel[i]
    )


# ------------------------------------------------------------------ verify
@given(pkts=packet_lists, headroom=headrooms, uniform=st.booleans())
def test_verify_scapy_packets_good(
    pkts: list[tuple[bytes, int, int]], headroom: int, uniform: bool
) -> None:
    b = batch_of([r for r, _, _ in pkts], headroom, uniform)
    verify(b, np.ones(len(b), dtype=np.bool_))
    assert (b.ext.csum_verdict == CsumVerdict.GOOD).all()
    assert (b.ext.error == 0).all()


@given(pkts=packet_lists, data=st.data())
def test_verify_corrupted_packets_bad(
    pkts: list[tuple[bytes, int, int]], data: st.DataObject
) -> None:
    raws = []
    for r, _, _ in pkts:
        f, _ = l4_field(r)
        # corrupt one byte of the TCP/UDP checksum field or of the payload after it
        pos = data.draw(st.integers(f, len(r) - 1))
        flip = data.draw(st.integers(1, 255))
        x = bytearray(r)
        x[pos] ^= flip
        raws.append(bytes(x))
    b = batch_of(raws)
    verify(b, np.ones(len(b), dtype=np.bool_))
    assert (b.ext.csum_verdict == CsumVerdict.BAD).all()
    assert (b.ext.error == Reason.BAD_CHECKSUM).all()


@given(
    pkt=scapy_packets().filter(lambda p: p[1] == 4), flip=st.integers(1, 255), k=st.integers(0, 19)
)
def test_verify_bad_ipv4_header(pkt: tuple[bytes, int, int], flip: int, k: int) -> None:
    raw = pkt[0]
    off = 14 if eth_of(raw) else 0
    if k in (0, 2, 3, 6, 9):  # version/IHL, length, fragment and protocol bytes: keep parsable
        k = 10
    x = bytearray(raw)
    x[off + k] ^= flip
    b = batch_of([bytes(x)])
    verify(b, np.ones(1, dtype=np.bool_))
    assert b.ext.csum_verdict[0] == CsumVerdict.BAD
    assert b.ext.error[0] == Reason.BAD_CHECKSUM


def test_data_valid_is_trusted_and_partial_is_partial() -> None:
    raw = bytearray(bytes(IP(dst="198.18.0.2") / UDP() / Raw(b"abc")))
    raw[-1] ^= 0xFF  # a wrong checksum now
    b = batch_of([bytes(raw)] * 3)
    b.ext.vflags[0] = VnetFlag.DATA_VALID
    b.ext.vflags[1] = VnetFlag.NEEDS_CSUM
    verify(b, np.ones(3, dtype=np.bool_))
    assert b.ext.csum_verdict.tolist() == [CsumVerdict.GOOD, CsumVerdict.PARTIAL, CsumVerdict.BAD]
    assert b.ext.error.tolist() == [0, 0, Reason.BAD_CHECKSUM]


# ------------------------------------------------------------------ UDP's zero
def udp_with_checksum_zero_sum(v: int) -> bytes:
    """A UDP packet whose checksum computes to 0 (so is sent as 0xFFFF), solved with scapy."""
    ip: Packet = (
        IP(src="198.18.0.1", dst="198.19.0.1") if v == 4 else IPv6(src="fd00::1", dst="fd00::2")
    )
    probe = ip.__class__(bytes(ip / UDP(sport=7, dport=9) / Raw(b"\0\0")))
    c = probe[UDP].chksum  # payload c makes the sum all ones
    pkt = ip / UDP(sport=7, dport=9) / Raw(c.to_bytes(2, "big"))
    return bytes(pkt)


@pytest.mark.parametrize("v", [4, 6])
def test_udp_computed_zero_sent_as_ffff(v: int) -> None:
    raw = udp_with_checksum_zero_sum(v)
    f = (20 if v == 4 else 40) + 6
    assert raw[f : f + 2] == b"\xff\xff"  # scapy agrees: 0 goes out as 0xFFFF
    spoiled = raw[:f] + b"\x12\x34" + raw[f + 2 :]
    b = batch_of([spoiled])
    fill(b, np.ones(1, dtype=np.bool_))
    assert b.packets() == [raw]
    verify(b, np.ones(1, dtype=np.bool_))
    assert b.ext.csum_verdict[0] == CsumVerdict.GOOD


def test_udp_zero_means_none_on_ipv4_only() -> None:
    v4 = bytes(IP(src="198.18.0.1", dst="198.19.0.1") / UDP(chksum=0) / Raw(b"hello"))
    v6 = bytes(IPv6(src="fd00::1", dst="fd00::2") / UDP(chksum=0) / Raw(b"hello"))
    b = batch_of([v4, v6])
    verify(b, np.ones(2, dtype=np.bool_))
    assert b.ext.csum_verdict.tolist() == [CsumVerdict.NONE, CsumVerdict.BAD]
    assert b.ext.error.tolist() == [0, Reason.BAD_CHECKSUM]


# ------------------------------------------------------------------ partial (virtio) form
def pseudo_sum(raw: bytes) -> int:
    """Folded pseudo-header sum, by hand from the RFC 793 / RFC 8200 definitions."""
    ip_off = 14 if eth_of(raw) else 0
    ip = raw[ip_off:]
    off, proto = l4_offset(ip)
    n = len(ip) - off
    if ip[0] >> 4 == 4:
        ph = ip[12:20] + struct.pack("!BBH", 0, proto, n)
    else:
        ph = ip[8:40] + struct.pack("!IxxxB", n, proto)
    return rfc1071(ph)


@given(pkts=packet_lists, headroom=headrooms)
def test_partial_round_trip(pkts: list[tuple[bytes, int, int]], headroom: int) -> None:
    raws = [r for r, _, _ in pkts]
    b = batch_of(raws, headroom)
    reasons = to_partial(b, np.ones(len(b), dtype=np.bool_))
    assert (reasons == 0).all()
    for i, r in enumerate(raws):
        f, _ = l4_field(r)
        e = b.ext.row(i)
        assert e["vflags"] & VnetFlag.NEEDS_CSUM
        assert e["csum_start"] + e["csum_offset"] == f
        assert e["csum_offset"] in (6, 16)
        preload = int.from_bytes(b.packets()[i][f : f + 2], "big")
        assert preload % 0xFFFF == pseudo_sum(r) % 0xFFFF
    verify(b, np.ones(len(b), dtype=np.bool_))
    assert (b.ext.csum_verdict == CsumVerdict.PARTIAL).all()
    fill(b, np.ones(len(b), dtype=np.bool_))
    assert b.packets() == raws
    assert not (b.ext.vflags & VnetFlag.NEEDS_CSUM).any()


def test_partial_as_linux_leaves_it_with_trailing_bytes() -> None:
    """csum_start/offset alone drive a partial packet: the sum runs to the packet's end."""
    raw = bytes(IP(src="198.18.0.1", dst="198.19.0.1") / TCP(sport=1, dport=2) / Raw(b"abcde"))
    x = bytearray(raw)
    x[36:38] = pseudo_sum(raw).to_bytes(2, "big")
    b = batch_of([bytes(x)])
    b.ext.vflags[0] = VnetFlag.NEEDS_CSUM
    b.ext.csum_start[0] = 20
    b.ext.csum_offset[0] = 16
    fill(b, np.ones(1, dtype=np.bool_))
    assert b.packets() == [raw]


def test_partial_bad_offsets() -> None:
    raw = bytes(IP(dst="198.18.0.2") / UDP() / Raw(b"abc"))
    b = batch_of([raw] * 3)
    b.ext.vflags[:] = VnetFlag.NEEDS_CSUM
    b.ext.csum_start[:] = [20, 1000, -4]
    b.ext.csum_offset[:] = [30, 6, 6]
    fill(b, np.ones(3, dtype=np.bool_))
    assert (b.ext.error == Reason.BAD_CSUM_OFFSETS).all()
    assert b.packets() == [raw] * 3


# ------------------------------------------------------------------ robustness
@given(
    pkts=packet_lists,
    junk=st.lists(st.binary(max_size=120), max_size=6),
    cuts=st.lists(st.integers(0, 400), max_size=8),
    mode=st.sampled_from([FILL, VERIFY]),
    flags=st.lists(st.integers(0, 7), max_size=16),
    offs=st.lists(st.integers(-5, 500), max_size=32),
)
def test_corrupt_and_truncated_never_raise(
    pkts: list[tuple[bytes, int, int]],
    junk: list[bytes],
    cuts: list[int],
    mode: str,
    flags: list[int],
    offs: list[int],
) -> None:
    raws = [r for r, _, _ in pkts]
    raws += [raws[i % len(raws)][:c] for i, c in enumerate(cuts)]  # truncations
    raws += [bytes([0x45]) + j for j in junk] + junk  # IPv4-looking and random junk
    b = Batch.from_packets(raws)
    n = len(b)
    # random extension state: stale PARSED layouts, partial offsets, Ethernet flags
    for i, f in enumerate(flags[:n]):
        b.ext.xflags[i] = f & 7
        b.ext.vflags[i] = (f >> 1) & 3
    for i, o in enumerate(offs[:n]):
        b.ext.l3_off[i] = o % 60 - 2
        b.ext.l4_off[i] = o
        b.ext.l3_proto[i] = (4, 6, 0)[o % 3]
        b.ext.l4_proto[i] = (6, 17, 1)[o % 3]
        b.ext.csum_start[i] = o
        b.ext.csum_offset[i] = o % 40
    sel = np.ones(n, dtype=np.bool_)
    sel[::5] = False
    untouched = [bytes(b.packet(i)) for i in range(n)]
    out = ChecksumTask(mode).process(b, sel)
    assert out is b and len(out) == n
    assert set(out.ext.csum_verdict.tolist()) <= ALL_VERDICTS
    assert set(out.ext.error.tolist()) <= ALL_REASONS
    for i in np.flatnonzero(~sel).tolist():
        assert bytes(out.packet(i)) == untouched[i]
    if mode == VERIFY:
        looked = sel & ((out.ext.vflags & 3) == 0)
        assert (out.ext.csum_verdict[looked] != CsumVerdict.UNKNOWN).all()
        bad = looked & (out.ext.csum_verdict == CsumVerdict.BAD)
        assert (out.ext.error[bad] != 0).all()


def test_empty_batch_and_empty_selection() -> None:
    for mode in (FILL, VERIFY):
        t = ChecksumTask(mode)
        e = Batch.empty()
        assert len(t.process(e, np.zeros(0, dtype=np.bool_))) == 0
        b = batch_of([bytes(IP() / TCP())])
        assert t.process(b, np.zeros(1, dtype=np.bool_)).ext.csum_verdict[0] == 0


def test_non_tcp_udp_and_fragments() -> None:
    icmp = bytes(IP(src="198.18.0.1", dst="198.19.0.1", proto=1) / Raw(b"\x08\0\0\0abcd"))
    frag = bytes(IP(src="198.18.0.1", dst="198.19.0.1", flags="MF") / UDP() / Raw(b"z" * 9))
    arp = bytes(
        Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02", type=0x0806) / Raw(b"\0" * 28)
    )
    b = batch_of([icmp, frag, arp])
    b.ext.xflags[2] |= np.uint8(XFlag.ETHERNET)
    verify(b, np.ones(3, dtype=np.bool_))
    assert b.ext.csum_verdict.tolist() == [CsumVerdict.NONE] * 3
    assert (b.ext.error == 0).all()
    x = bytearray(icmp)
    x[10:12] = b"\0\0"
    b = batch_of([bytes(x)])
    fill(b, np.ones(1, dtype=np.bool_))
    assert b.packets() == [icmp]


# ------------------------------------------------------------------ the task surface
def test_make_task_modes() -> None:
    t = make_task(Task.CHECKSUM, mode="verify")
    assert isinstance(t, ChecksumTask) and t.mode == VERIFY
    assert make_task(Task.CHECKSUM).describe() == {"task": "checksum", "mode": "fill"}
    assert mode_for(Direction.TX) == FILL and mode_for(Direction.RX) == VERIFY
    with pytest.raises(ConfigError, match="mode"):
        make_task(Task.CHECKSUM, mode="sideways")
    with pytest.raises(ConfigError, match="unknown options"):
        make_task(Task.CHECKSUM, colour="red")


# ------------------------------------------------------------------ layout = parse_batch
@given(
    pkts=packet_lists,
    junk=st.lists(st.binary(max_size=80), max_size=6),
    cuts=st.lists(st.integers(0, 120), max_size=6),
    flips=st.lists(st.tuples(st.integers(0, 80), st.integers(1, 255)), max_size=6),
)
def test_layout_writes_what_parse_batch_writes(
    pkts: list[tuple[bytes, int, int]],
    junk: list[bytes],
    cuts: list[int],
    flips: list[tuple[int, int]],
) -> None:
    """The shortcut for plain raw-IP packets gives parse_batch's layout and reasons."""
    raws = [r for r, _, _ in pkts]
    raws += [raws[i % len(raws)][:c] for i, c in enumerate(cuts)]
    for i, (pos, x) in enumerate(flips):
        r = bytearray(pkts[i % len(pkts)][0])
        r[pos % len(r)] ^= x
        raws.append(bytes(r))
    raws += [bytes([0x45]) + j for j in junk] + [bytes([0x60]) + j for j in junk] + junk
    mine = batch_of(raws)
    ref = batch_of(raws)
    lay = layout(mine, np.arange(len(mine), dtype=np.int64))
    want = parse_batch(ref)
    for f in ("l3_off", "l3_proto", "l4_off", "l4_proto", "hdr_len", "xflags"):
        ok = want == 0
        assert np.array_equal(getattr(mine.ext, f)[ok], getattr(ref.ext, f)[ok]), f
    assert np.array_equal(mine.ext.xflags, ref.ext.xflags)
    failed = want != 0
    assert np.array_equal(lay.reason[failed], want[failed])


@given(pkts=st.lists(scapy_packets(), min_size=1, max_size=8), cut=st.integers(0, 12))
def test_raw_ip_shortcut_gives_the_general_layout(
    pkts: list[tuple[bytes, int, int]], cut: int
) -> None:
    """Unparsed raw-IP batches take a shortcut; it must agree with the general path."""
    raws = [r[14:] if eth_of(r) else r for r, _, _ in pkts]
    # mostly without IPv4 options (those take the general path)
    raws = [r for r in raws if r[0] == 0x45 or r[0] >> 4 == 6] or [bytes(IP() / TCP())]
    if cut <= 3:  # sometimes one malformed packet sends the batch down the general path
        raws.append(raws[0][: cut * 7])
    quick = Batch.from_packets(raws)
    general = Batch.from_packets(raws)
    parse_batch(general)  # PARSED: the general path reads the extension
    idx = np.arange(len(raws), dtype=np.int64)
    a, b = layout(quick, idx), layout(general, idx)
    for f in ("reason", "base", "l3", "v", "l4", "proto", "l4_end", "l4_ok", "field", "udp"):
        assert np.array_equal(getattr(a, f), getattr(b, f)), f
    v4 = a.v == 4
    assert np.array_equal(a.ihl[v4], b.ihl[v4])
    assert np.array_equal(a.pseudo(quick.buf), b.pseudo(general.buf))
    for f in ("l3_off", "l3_proto", "l4_off", "l4_proto", "hdr_len", "xflags"):
        assert np.array_equal(getattr(quick.ext, f), getattr(general.ext, f)), f


# ------------------------------------------------------------------ IPv6 routing headers
@pytest.mark.parametrize(
    "rh",
    [
        lambda: IPv6ExtHdrRouting(addresses=["fd00::a", "fd00::b"], segleft=2),
        lambda: IPv6ExtHdrRouting(addresses=["fd00::a", "fd00::b"], segleft=0),
        lambda: IPv6ExtHdrSegmentRouting(addresses=["fd00::c", "fd00::d"], segleft=1),
    ],
)
@pytest.mark.parametrize("l4", [lambda: TCP(sport=5, dport=6), lambda: UDP(sport=5, dport=6)])
def test_routing_header_final_destination(rh: object, l4: object) -> None:
    """With segments left the pseudo-header has the final destination (scapy agrees)."""
    pkt = (
        IPv6(src="fd00::1", dst="fd00::2")
        / IPv6ExtHdrHopByHop()
        / rh()  # type: ignore[operator]
        / l4()  # type: ignore[operator]
        / Raw(b"payload!")
    )
    raw = bytes(pkt)
    f, _ = l4_field(raw)
    spoiled = raw[:f] + b"\xde\xad" + raw[f + 2 :]
    b = batch_of([spoiled, raw])
    fill(b, np.array([True, False]))
    assert b.packets() == [raw, raw]
    verify(b, np.ones(2, dtype=np.bool_))
    assert (b.ext.csum_verdict == CsumVerdict.GOOD).all()
