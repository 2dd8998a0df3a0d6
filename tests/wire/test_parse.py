"""wire/parse.py: the batch layout agrees with scapy, and garbage never raises."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_NOP
from scapy.layers.inet6 import (
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Packet, Raw

from netoffload import _native
from netoffload.batch import EXT_FIELDS, Batch, Reason, XFlag
from netoffload.wire import parse as parse_mod
from netoffload.wire.parse import (
    _Reader,
    be_words,
    parse_batch,
    parse_subset,
    parse_subset_fast,
)

ALL_REASONS = {int(r) for r in Reason}
MACS = {"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02"}


def ext_header(typ: int, units: int) -> Packet:
    body = 6 + 8 * units
    if typ == 43:
        h: Packet = IPv6ExtHdrRouting(bytes([59, units, 0, 0]) + b"\0" * (body - 2))
    elif typ == 44:
        h = IPv6ExtHdrFragment(m=1, id=7)
        return h
    else:
        cls = IPv6ExtHdrHopByHop if typ == 0 else IPv6ExtHdrDestOpt
        h = cls(bytes([59, units, 1, body - 2]) + b"\0" * (body - 2))
    h.remove_payload()
    del h.nh
    return h


@st.composite
def packets(draw: st.DrawFn) -> tuple[bytes, dict[str, int], bool]:
    """A packet built by scapy and its layout as scapy sees it."""
    v = draw(st.sampled_from([4, 6]))
    kind = draw(st.sampled_from(["tcp", "udp", "icmp"]))
    frag = False
    if v == 4:
        ip: Packet = IP(src="198.18.0.1", dst="198.19.0.1")
        k = draw(st.integers(0, 10))
        if k:
            ip.options = [IPOption_NOP()] * (4 * k)
        if draw(st.integers(0, 5)) == 0:
            ip.flags = "MF"
            frag = True
    else:
        ip = IPv6(src="fd00::1", dst="fd00::2")
        for typ in draw(st.lists(st.sampled_from([0, 43, 60]), max_size=4)):
            units = draw(st.integers(0, 3))
            if typ == 43:
                units &= ~1  # scapy reads type-0 routing addresses 16 bytes at a time
            ip = ip / ext_header(typ, units)
        if draw(st.integers(0, 5)) == 0:
            ip = ip / ext_header(44, 0)
            frag = True
    if kind == "tcp":
        l4: Packet = TCP(sport=1, dport=2, options=[("NOP", None)] * (4 * draw(st.integers(0, 10))))
    elif kind == "udp":
        l4 = UDP(sport=3, dport=4)
    else:
        l4 = ICMP()
    payload = draw(st.binary(max_size=64))
    pkt = ip / l4 / Raw(payload) if payload else ip / l4
    eth = draw(st.sampled_from(["none", "eth", "vlan"]))
    if eth == "eth":
        pkt = Ether(**MACS) / pkt
    elif eth == "vlan":
        pkt = Ether(**MACS) / Dot1Q(vlan=5) / pkt
    raw = bytes(pkt)
    # the layout, from scapy's own view of the bytes
    p = Ether(raw) if eth != "none" else IP(raw) if v == 4 else IPv6(raw)
    ipl = p.getlayer(IP) if v == 4 else p.getlayer(IPv6)
    assert ipl is not None
    l3_off = len(raw) - len(bytes(ipl))
    if v == 4:
        l4_off = l3_off + ipl.ihl * 4
        proto = ipl.proto
    else:
        layer = ipl.payload
        proto = ipl.nh
        while isinstance(layer, (IPv6ExtHdrHopByHop, IPv6ExtHdrRouting, IPv6ExtHdrDestOpt)):
            proto = layer.nh
            layer = layer.payload
        l4_off = len(raw) - len(bytes(layer))
    l4_len = 8 if kind == "udp" else 0
    if kind == "tcp":
        l4_len = TCP(raw[l4_off:]).dataofs * 4
    if frag or proto not in (6, 17):
        l4_len = 0
    want = {
        "l3_off": l3_off,
        "l3_proto": v,
        "l4_off": l4_off,
        "l4_proto": proto,
        "hdr_len": l4_off + l4_len,
    }
    return raw, want, eth != "none"


@given(pkts=st.lists(packets(), min_size=1, max_size=10), headroom=st.sampled_from([0, 5, 64]))
def test_layout_matches_scapy(
    pkts: list[tuple[bytes, dict[str, int], bool]], headroom: int
) -> None:
    b = Batch.from_packets([r for r, _, _ in pkts], headroom=headroom)
    for i, (_, _, eth) in enumerate(pkts):
        if eth:
            b.ext.xflags[i] |= np.uint8(XFlag.ETHERNET)
    reason = parse_batch(b)
    assert (reason == 0).all()
    for i, (_, want, _) in enumerate(pkts):
        row = b.ext.row(i)
        assert {k: row[k] for k in want} == want
        assert row["xflags"] & XFlag.PARSED


def test_ethernet_argument_overrides_flags() -> None:
    raw = bytes(Ether(**MACS) / IP(src="198.18.0.1", dst="198.19.0.1") / UDP())
    b = Batch.from_packets([raw])
    assert parse_batch(b, ethernet=True).tolist() == [0]
    assert b.ext.l3_off[0] == 14 and b.ext.xflags[0] & XFlag.ETHERNET
    b2 = Batch.from_packets([raw])
    assert parse_batch(b2, ethernet=False).tolist() == [Reason.BAD_IP_VERSION]
    assert not b2.ext.xflags[0] & XFlag.PARSED


def test_specific_reasons() -> None:
    tcp = bytes(IP(src="198.18.0.1", dst="198.19.0.1") / TCP() / Raw(b"abc"))
    arp = bytes(Ether(type=0x0806, **MACS) / Raw(b"\0" * 28))
    bad_ihl = bytes([0x43]) + tcp[1:]
    long_len = tcp[:2] + (len(tcp) + 1).to_bytes(2, "big") + tcp[4:]
    v6_short = bytes(IPv6(src="fd00::1", dst="fd00::2") / UDP())[:30]
    cases = [
        (b"", False, Reason.TRUNCATED),
        (tcp[:10], False, Reason.TRUNCATED),
        (bytes([0x55]) + tcp[1:], False, Reason.BAD_IP_VERSION),
        (bad_ihl, False, Reason.BAD_IHL),
        (long_len, False, Reason.BAD_IP_LENGTH),
        (v6_short, False, Reason.TRUNCATED),
        (arp, True, Reason.NOT_IP),
        (arp[:9], True, Reason.TRUNCATED),
    ]
    b = Batch.from_packets([c[0] for c in cases])
    for i, c in enumerate(cases):
        if c[1]:
            b.ext.xflags[i] |= np.uint8(XFlag.ETHERNET)
    reason = parse_batch(b)
    assert reason.tolist() == [int(c[2]) for c in cases]
    assert not (b.ext.xflags & XFlag.PARSED).any()


def test_deep_ipv6_extension_chain_is_unsupported() -> None:
    ip: Packet = IPv6(src="fd00::1", dst="fd00::2")
    for _ in range(9):
        ip = ip / ext_header(60, 0)
    b = Batch.from_packets([bytes(ip / UDP())])
    assert parse_batch(b).tolist() == [Reason.IPV6_EXT_UNSUPPORTED]


def test_ipv6_fragment_header_cut_short_is_truncated() -> None:
    """Found by fuzz/targets.py (bpf-compiler): a packet ending inside its IPv6
    fragment header parsed as a good fragment, so the software filter and the
    compiled cBPF (which reads the header's offset and drops on a load past the
    end) disagreed about a packet the parser called well-formed."""
    whole = bytes(
        IPv6(src="fd00::1", dst="fd00::2", plen=0)
        / IPv6ExtHdrHopByHop()
        / IPv6ExtHdrFragment(offset=3, m=1)
    )
    cut = [whole[:n] for n in range(len(whole) - 7, len(whole))]
    b = Batch.from_packets([whole, *cut])
    reason = parse_batch(b, ethernet=False)
    assert reason.tolist() == [0] + [int(Reason.TRUNCATED)] * len(cut)
    assert b.ext.l4_proto[0] == 44 and b.ext.l4_off[0] == 48


def test_empty_batch() -> None:
    assert len(parse_batch(Batch.empty())) == 0


@given(
    pkts=st.lists(packets(), min_size=1, max_size=6),
    junk=st.lists(st.binary(max_size=100), max_size=8),
    cuts=st.lists(st.integers(0, 200), max_size=8),
    flips=st.lists(st.tuples(st.integers(0, 200), st.integers(1, 255)), max_size=8),
    eth=st.lists(st.booleans(), max_size=30),
)
def test_fuzz_never_raises_and_reason_is_set(
    pkts: list[tuple[bytes, dict[str, int], bool]],
    junk: list[bytes],
    cuts: list[int],
    flips: list[tuple[int, int]],
    eth: list[bool],
) -> None:
    raws = [r for r, _, _ in pkts]
    prefixes = [raws[i % len(raws)][:c] for i, c in enumerate(cuts)]
    flipped = []
    for i, (pos, x) in enumerate(flips):
        r = bytearray(raws[i % len(raws)])
        r[pos % len(r)] ^= x
        flipped.append(bytes(r))
    junk4 = [bytes([0x45]) + j for j in junk] + [bytes([0x60]) + j for j in junk]
    allp = raws + prefixes + flipped + junk + junk4
    b = Batch.from_packets(allp)
    for i, e in enumerate(eth[: len(allp)]):
        if e:
            b.ext.xflags[i] |= np.uint8(XFlag.ETHERNET)
    want_eth = (b.ext.xflags & XFlag.ETHERNET) != 0
    reason = parse_batch(b)
    assert reason.shape == (len(allp),)
    assert set(reason.tolist()) <= ALL_REASONS
    parsed = (b.ext.xflags & XFlag.PARSED) != 0
    assert np.array_equal(parsed, reason == 0)
    # the ETHERNET flag is an input, never changed
    assert np.array_equal((b.ext.xflags & XFlag.ETHERNET) != 0, want_eth)
    ok = reason == 0
    e = b.ext
    assert (e.l3_proto[ok] > 0).all()
    assert (e.l4_off[ok] >= e.l3_off[ok]).all()
    assert (e.hdr_len[ok] <= b.length[ok]).all()
    assert (e.l4_off[ok] <= b.length[ok]).all()
    assert (e.l4_off[~ok] == -1).all()
    # every strict prefix of a well-formed raw-IP packet is refused (lengths disagree)
    n0 = len(raws)
    for j, c in enumerate(cuts):
        src = raws[j % len(raws)]
        if c < len(src) and not want_eth[n0 + j] and not pkts[j % len(pkts)][2]:
            assert reason[n0 + j] != 0


@given(
    data=st.binary(max_size=40),
    offs=st.lists(st.integers(-3, 45), max_size=20),
    width=st.sampled_from([2, 4, 8]),
    step=st.sampled_from([1, 2]),
)
def test_be_words_are_the_bytes_there(data: bytes, offs: list[int], width: int, step: int) -> None:
    """Every word that lies inside the buffer is its bytes, big-endian (also for a
    buffer that is a strided view or shorter than a word)."""
    arr = np.frombuffer(data, dtype=np.uint8)
    buf = np.repeat(arr, step)[::step]  # step 2: the same bytes, not contiguous
    got = be_words(buf, np.array(offs, dtype=np.int64), width)
    assert got.dtype == np.uint64 and len(got) == len(offs)
    for o, g in zip(offs, got.tolist(), strict=True):
        if o >= 0 and o + width <= len(data):
            assert g == int.from_bytes(data[o : o + width], "big")


@given(
    blobs=st.lists(st.binary(max_size=24), min_size=1, max_size=8),
    offs=st.data(),
    width=st.sampled_from([2, 4, 8]),
)
def test_reader_word_is_bounds_checked_bytes(
    blobs: list[bytes], offs: st.DataObject, width: int
) -> None:
    """``_Reader.word``: each byte read as ``u8`` does (0 outside its packet)."""
    b = Batch.from_packets(blobs)
    n = len(blobs)
    off = np.array(offs.draw(st.lists(st.integers(-10, 30), min_size=n, max_size=n)), np.int64)
    ok = np.array(offs.draw(st.lists(st.booleans(), min_size=n, max_size=n)), np.bool_)
    got = _Reader(b).word(off, ok, width).astype(np.uint64).tolist()  # 8 bytes: wrapped
    for i, raw in enumerate(blobs):
        want = 0
        for j in range(width):
            p = int(off[i]) + j
            want = (want << 8) | (raw[p] if ok[i] and 0 <= p < len(raw) else 0)
        assert got[i] == want


def _mangled(
    pkts: list[tuple[bytes, dict[str, int], bool]],
    junk: list[bytes],
    cuts: list[int],
    flips: list[tuple[int, int]],
) -> list[bytes]:
    raws = [r for r, _, _ in pkts]
    prefixes = [raws[i % len(raws)][:c] for i, c in enumerate(cuts)]
    flipped = []
    for i, (pos, x) in enumerate(flips):
        r = bytearray(raws[i % len(raws)])
        r[pos % len(r)] ^= x
        flipped.append(bytes(r))
    junk4 = [bytes([0x45]) + j for j in junk] + [bytes([0x60]) + j for j in junk]
    # an IPv6 header straight before a fragment header cut anywhere (40..48 bytes)
    frag6 = bytes(IPv6(src="fd00::1", dst="fd00::2", plen=0) / IPv6ExtHdrFragment(m=1))
    frag6 = frag6[:4] + b"\0\0" + frag6[6:]
    v6frag = [frag6[:n] for n in range(40, 49)]
    return raws + prefixes + flipped + junk + junk4 + v6frag


@given(
    pkts=st.lists(packets(), min_size=1, max_size=6),
    junk=st.lists(st.binary(max_size=100), max_size=8),
    cuts=st.lists(st.integers(0, 200), max_size=8),
    flips=st.lists(st.tuples(st.integers(0, 200), st.integers(1, 255)), max_size=8),
    xflags=st.lists(st.integers(0, 255), max_size=60),
    prior=st.lists(st.tuples(st.integers(-5, 300), st.integers(-5, 300)), max_size=60),
    pick=st.lists(st.booleans(), max_size=60),
    headroom=st.sampled_from([0, 3, 64]),
)
def test_parse_subset_fast_is_parse_subset(
    pkts: list[tuple[bytes, dict[str, int], bool]],
    junk: list[bytes],
    cuts: list[int],
    flips: list[tuple[int, int]],
    xflags: list[int],
    prior: list[tuple[int, int]],
    pick: list[bool],
    headroom: int,
) -> None:
    """The compiled fast path leaves every extension field exactly as parse_subset does,
    for good, cut, bit-flipped and junk packets with any prior extension state."""
    allp = _mangled(pkts, junk, cuts, flips)
    b = Batch.from_packets(allp, headroom=headroom)
    e = b.ext
    for i, x in enumerate(xflags[: len(allp)]):
        e.xflags[i] = x
    for i, (l3, hl) in enumerate(prior[: len(allp)]):
        e.l3_off[i] = l3
        e.hdr_len[i] = hl
        e.l3_proto[i] = l3 & 7
        e.l4_off[i] = hl
        e.l4_proto[i] = hl & 0xFF
    sel = np.array(
        [i for i in range(len(allp)) if (pick[i] if i < len(pick) else True)], dtype=np.int64
    )
    ref = b.copy()
    want = parse_subset(ref, sel)
    got = parse_subset_fast(b, sel)
    assert got.tolist() == want.tolist()
    for f in EXT_FIELDS:
        assert getattr(b.ext, f).tolist() == getattr(ref.ext, f).tolist(), f
    assert np.array_equal(b.buf, ref.buf)


def test_parse_subset_fast_takes_the_compiled_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Plain raw-IP TCP/UDP packets (what a TUN read hands up) never reach parse_subset."""
    if _native.kernel is None:
        pytest.skip(f"compiled kernels not in use: {_native.status()}")
    good = [
        bytes(IP(src="198.18.0.1", dst="198.19.0.1") / TCP() / Raw(b"x" * 1000)),
        bytes(
            IP(src="198.18.0.1", dst="198.19.0.1", options=[IPOption_NOP()] * 4)
            / UDP()
            / Raw(b"w" * 20)
        ),
        bytes(IPv6(src="fd00::1", dst="fd00::2") / TCP() / Raw(b"y" * 3000)),
        bytes(IPv6(src="fd00::1", dst="fd00::2") / UDP() / Raw(b"z" * 20)),
    ]
    b = Batch.from_packets(good * 3)
    ref = b.copy()
    want = parse_subset(ref, np.arange(1, 12, dtype=np.int64))

    def boom(batch: Batch, need: object) -> object:
        raise AssertionError("parse_subset called")

    monkeypatch.setattr(parse_mod, "parse_subset", boom)
    got = parse_subset_fast(b, np.arange(1, 12, dtype=np.int64))
    assert got.tolist() == want.tolist() == [0] * 11
    for f in EXT_FIELDS:
        assert getattr(b.ext, f).tolist() == getattr(ref.ext, f).tolist(), f
