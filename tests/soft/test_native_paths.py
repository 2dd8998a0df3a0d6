"""Checksum verify, fill and segmentation: the compiled kernel and the numpy path, each
against an independent RFC 1071 checksum written here, and against each other."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netoffload import _native
from netoffload.batch import EXT_FIELDS, Batch, CsumVerdict, GsoType, Reason, VnetFlag, XFlag
from netoffload.soft.checksum import fill, layout, verify
from netoffload.soft.segment import IPPROTO_TCP, IPPROTO_UDP, segment
from netoffload.testing.packets import tcp_packet, udp_packet

PATHS = ["native", "numpy"]
_KERNEL = _native.kernel


@contextmanager
def using(path: str) -> Iterator[None]:
    """Run the tasks on ``path``: the compiled kernel (skips if absent) or numpy."""
    if path == "native" and _KERNEL is None:
        pytest.skip(f"compiled kernel not in use: {_native.status()}")
    saved = _native.kernel
    _native.kernel = _KERNEL if path == "native" else None
    try:
        yield
    finally:
        _native.kernel = saved


# ------------------------------------------------------------------ independent reference
def ones_sum(data: bytes) -> int:
    """RFC 1071: the folded 16-bit one's complement sum of ``data`` (odd length: zero pad)."""
    if len(data) % 2:
        data += b"\0"
    s = int(sum(struct.unpack(f"!{len(data) // 2}H", data)))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def expected_verdict(raw: bytes) -> CsumVerdict:
    """The verdict of a well-formed raw IPv4/IPv6 TCP/UDP packet (no routing header)."""
    if raw[0] >> 4 == 4:
        ihl = (raw[0] & 15) * 4
        hdr_ok = ones_sum(raw[:ihl]) in (0xFFFF, 0)
        off, proto, end = ihl, raw[9], struct.unpack_from("!H", raw, 2)[0]
        addrs = raw[12:20]
    else:
        hdr_ok = True
        off, proto = 40, raw[6]
        while proto in (0, 43, 60):
            proto, off = raw[off], off + (raw[off + 1] + 1) * 8
        end = 40 + struct.unpack_from("!H", raw, 4)[0]
        addrs = raw[8:40]
    if proto == IPPROTO_UDP:
        end = off + struct.unpack_from("!H", raw, off + 4)[0]
        field = struct.unpack_from("!H", raw, off + 6)[0]
    else:
        field = struct.unpack_from("!H", raw, off + 16)[0]
    seg = raw[off:end]
    pseudo = addrs + struct.pack("!HI", proto, len(seg))
    l4_ok = ones_sum(pseudo + seg) == 0xFFFF
    if proto == IPPROTO_UDP and field == 0:
        if raw[0] >> 4 == 4:
            return CsumVerdict.NONE if hdr_ok else CsumVerdict.BAD
        return CsumVerdict.BAD  # IPv6 UDP must have a checksum
    return CsumVerdict.GOOD if hdr_ok and l4_ok else CsumVerdict.BAD


@st.composite
def packets(draw: st.DrawFn) -> bytes:
    """A raw IP TCP/UDP packet, right checksums, then perhaps a corrupted byte."""
    v = draw(st.sampled_from([4, 6]))
    payload = draw(st.binary(max_size=1600))  # odd lengths and zero length included
    ip_opts = b"\x01" * 4 * draw(st.integers(0, 2)) if v == 4 else b""
    v6_ext = (
        draw(st.lists(st.sampled_from([(0, 0), (43, 1), (60, 0)]), max_size=2)) if v == 6 else []
    )
    ident = draw(st.integers(0, 0xFFFF))
    if draw(st.booleans()):
        opts = b"\x01" * 4 * draw(st.integers(0, 3))
        raw = tcp_packet(v, payload, options=opts, ip_options=ip_opts, v6_ext=v6_ext, ident=ident)
    else:
        csum = v == 6 or draw(st.booleans())
        raw = udp_packet(v, payload, ip_options=ip_opts, v6_ext=v6_ext, ident=ident, checksum=csum)
    if draw(st.booleans()):  # flip bits of a payload / checksum / TTL byte
        b = bytearray(raw)
        hl = len(raw) - len(payload)
        pos = draw(st.sampled_from([8, hl - 1, hl - 2, *(range(hl, len(raw)) if payload else [])]))
        b[pos] ^= draw(st.integers(1, 255))
        raw = bytes(b)
    return raw


@pytest.mark.parametrize("path", PATHS)
@settings(max_examples=150, deadline=None)
@given(pkts=st.lists(packets(), min_size=1, max_size=12))
def test_verify_matches_rfc1071(path: str, pkts: list[bytes]) -> None:
    b = Batch.from_packets(pkts)
    with using(path):
        verify(b, np.ones(len(b), dtype=np.bool_))
    want = [expected_verdict(p) for p in pkts]
    assert [CsumVerdict(v) for v in b.ext.csum_verdict] == want
    bad = np.array([w == CsumVerdict.BAD for w in want])
    assert (b.ext.error[bad] == Reason.BAD_CHECKSUM).all()
    assert (b.ext.error[~bad] == 0).all()
    assert (b.ext.xflags & XFlag.PARSED).all()


@st.composite
def odd_batches(draw: st.DrawFn) -> tuple[list[bytes], list[int], list[int], list[bool]]:
    """Good, corrupted, truncated and garbage packets, some already parsed, with flags."""
    pkts: list[bytes] = []
    for _ in range(draw(st.integers(1, 10))):
        kind = draw(st.sampled_from(["good", "cut", "junk", "empty"]))
        p = draw(packets())
        if kind == "cut":
            p = p[: draw(st.integers(0, len(p)))]
        elif kind == "junk":
            p = draw(st.binary(max_size=80))
            if p and draw(st.booleans()):
                p = bytes([draw(st.sampled_from([0x45, 0x46, 0x60]))]) + p[1:]
        elif kind == "empty":
            p = b""
        pkts.append(p)
    n = len(pkts)
    vflags = draw(st.lists(st.sampled_from([0, 0, 0, 1, 2, 3]), min_size=n, max_size=n))
    pre = draw(st.lists(st.sampled_from([0, 1, 2]), min_size=n, max_size=n))
    sel = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    return pkts, vflags, pre, sel


def odd_batch(pkts: list[bytes], vflags: list[int], pre: list[int]) -> Batch:
    """The batch of an ``odd_batches`` case: flags set, some packets parsed by an
    earlier stage (1), some claiming a stale, wrong layout (2)."""
    b = Batch.from_packets(pkts)
    b.ext.vflags[:] = vflags
    for i, how in enumerate(pre):
        if how == 1:  # parsed by an earlier stage (the layout in the extension)
            with using("numpy"):
                verify(b, np.arange(len(b)) == i)
            b.ext.csum_verdict[i] = 0
            b.ext.error[i] = 0
        elif how == 2:  # a stale, wrong layout claimed by the extension
            b.ext.xflags[i] |= np.uint8(XFlag.PARSED)
            b.ext.l3_proto[i] = 4 + 2 * (i % 2)
            b.ext.l4_off[i] = 20 + 3 * i
            b.ext.l4_proto[i] = (6, 17)[i % 2]
    return b


@settings(max_examples=200, deadline=None)
@given(case=odd_batches())
def test_verify_native_and_numpy_agree_on_everything(
    case: tuple[list[bytes], list[int], list[int], list[bool]],
) -> None:
    """Same verdicts, errors and layout written into the extension, whatever comes in."""
    pkts, vflags, pre, sel = case
    out = {}
    for path in PATHS:
        b = odd_batch(pkts, vflags, pre)
        with using(path):
            verify(b, np.array(sel, dtype=np.bool_))
        out[path] = b
    for f in EXT_FIELDS:
        assert np.array_equal(getattr(out["native"].ext, f), getattr(out["numpy"].ext, f)), f


@settings(max_examples=200, deadline=None)
@given(case=odd_batches())
def test_layout_native_and_numpy_agree(
    case: tuple[list[bytes], list[int], list[int], list[bool]],
) -> None:
    """The layout the kernel finds (fill and segmentation use it) is numpy's."""
    pkts, _, _, sel = case
    lays = {}
    exts = {}
    for path in PATHS:
        b = Batch.from_packets(pkts)
        with using(path):
            lays[path] = layout(b, np.flatnonzero(np.array(sel, dtype=np.bool_)))
        exts[path] = b.ext
    a, z = lays["native"], lays["numpy"]
    for f in ("idx", "reason", "v", "l4_ok", "udp", "base"):
        assert np.array_equal(getattr(a, f), getattr(z, f)), f
    ok = a.reason == 0
    for f in ("l3", "l4", "proto", "l4_end", "field"):
        assert np.array_equal(getattr(a, f)[ok], getattr(z, f)[ok]), f
    v4 = ok & (a.v == 4)
    assert np.array_equal(a.ihl[v4], z.ihl[v4])
    for f in EXT_FIELDS:
        assert np.array_equal(getattr(exts["native"], f), getattr(exts["numpy"], f)), f


# ------------------------------------------------------------------ fill
def l4_offset(raw: bytes) -> tuple[int, int]:
    """(offset, protocol) of the TCP/UDP header of a raw IP packet (walking IPv6)."""
    if raw[0] >> 4 == 4:
        return (raw[0] & 15) * 4, raw[9]
    off, proto = 40, raw[6]
    while proto in (0, 43, 60):
        proto, off = raw[off], off + (raw[off + 1] + 1) * 8
    return off, proto


def pseudo_sum(raw: bytes) -> int:
    """The folded pseudo-header sum a sender preloads for NEEDS_CSUM (RFC 1071)."""
    off, proto = l4_offset(raw)
    if raw[0] >> 4 == 4:
        addrs, end = raw[12:20], struct.unpack_from("!H", raw, 2)[0]
    else:
        addrs, end = raw[8:40], 40 + struct.unpack_from("!H", raw, 4)[0]
    if proto == IPPROTO_UDP:
        end = off + struct.unpack_from("!H", raw, off + 4)[0]
    return ones_sum(addrs + struct.pack("!HI", proto, end - off))


@pytest.mark.parametrize("path", PATHS)
@settings(max_examples=150, deadline=None)
@given(pkts=st.lists(packets(), min_size=1, max_size=12), partial=st.data())
def test_fill_gives_checksums_rfc1071_accepts(
    path: str, pkts: list[bytes], partial: st.DataObject
) -> None:
    """Whatever the checksums held (right, wrong, corrupted bytes elsewhere), after
    fill every packet verifies by the independent RFC 1071 check above, and only
    checksum fields changed. Partial packets (NEEDS_CSUM, the pseudo-header sum
    preloaded at csum_start + csum_offset) are completed and lose the flag."""
    n = len(pkts)
    part = [partial.draw(st.booleans()) for _ in pkts]
    b = Batch.from_packets(pkts)
    for i, raw in enumerate(pkts):
        if part[i]:
            off, proto = l4_offset(raw)
            field = 6 if proto == IPPROTO_UDP else 16
            s = int(b.start[i])
            b.buf[s + off + field : s + off + field + 2] = list(struct.pack("!H", pseudo_sum(raw)))
            b.ext.vflags[i] = VnetFlag.NEEDS_CSUM
            b.ext.csum_start[i] = off
            b.ext.csum_offset[i] = field
    with using(path):
        fill(b, np.ones(n, dtype=np.bool_))
    out = b.packets()
    for i, (raw, got) in enumerate(zip(pkts, out, strict=True)):
        assert expected_verdict(got) == CsumVerdict.GOOD, i
        off, proto = l4_offset(raw)
        field = off + (6 if proto == IPPROTO_UDP else 16)
        keep = [k for k in range(len(raw)) if k not in (10, 11, field, field + 1)]
        if raw[0] >> 4 == 6:
            keep = [k for k in range(len(raw)) if k not in (field, field + 1)]
        assert bytes(got[k] for k in keep) == bytes(raw[k] for k in keep)
    assert not (b.ext.vflags & VnetFlag.NEEDS_CSUM).any()
    assert not b.ext.error.any()


@settings(max_examples=200, deadline=None)
@given(case=odd_batches(), offs=st.data())
def test_fill_native_and_numpy_agree_on_everything(
    case: tuple[list[bytes], list[int], list[int], list[bool]], offs: st.DataObject
) -> None:
    """Same bytes written, flags, errors and layout, whatever comes in (partial
    packets with offsets in and out of range among them)."""
    pkts, vflags, pre, sel = case
    cs = [offs.draw(st.integers(-2, 90)) for _ in pkts]
    co = [offs.draw(st.integers(-2, 20)) for _ in pkts]
    out = {}
    for path in PATHS:
        b = odd_batch(pkts, vflags, pre)
        b.ext.csum_start[:] = cs
        b.ext.csum_offset[:] = co
        with using(path):
            fill(b, np.array(sel, dtype=np.bool_))
        out[path] = b
    assert out["native"].packets() == out["numpy"].packets()
    for f in EXT_FIELDS:
        assert np.array_equal(getattr(out["native"].ext, f), getattr(out["numpy"].ext, f)), f


# ------------------------------------------------------------------ segmentation
@st.composite
def supers(draw: st.DrawFn) -> tuple[list[bytes], int, int, list[int]]:
    proto = draw(st.sampled_from([IPPROTO_TCP, IPPROTO_UDP]))
    pkts = []
    for i in range(draw(st.integers(1, 4))):
        v = draw(st.sampled_from([4, 6]))
        pay = draw(st.binary(min_size=0, max_size=6000))
        ip_opts = b"\x01" * 4 * draw(st.integers(0, 2)) if v == 4 else b""
        if proto == IPPROTO_TCP:
            opts = b"\x01" * 4 * draw(st.integers(0, 3))
            flags = draw(st.sampled_from([0x10, 0x18, 0x19, 0x99]))
            seq = draw(st.integers(0, 2**32 - 1))
            pkts.append(
                tcp_packet(v, pay, options=opts, ip_options=ip_opts, flags=flags, seq=seq, ident=i)
            )
        else:
            pkts.append(udp_packet(v, pay, ip_options=ip_opts, ident=0xFFFF - i))
    if draw(st.booleans()):  # a packet of the other protocol: passed on with an error
        other = udp_packet if proto == IPPROTO_TCP else tcp_packet
        pkts.insert(draw(st.integers(0, len(pkts))), other(4, b"x" * 3000))
    mss = draw(st.integers(1, 1600))
    fixed = draw(st.lists(st.booleans(), min_size=len(pkts), max_size=len(pkts)))
    return pkts, proto, mss, [int(x) for x in fixed]


def _segment(pkts: list[bytes], proto: int, mss: int, fixed: list[int], path: str) -> Batch:
    b = Batch.from_packets(pkts)
    b.ext.gso_size[:] = mss
    b.ext.gso_type[:] = GsoType.NONE
    b.ext.xflags[:] = np.array(fixed, dtype=np.uint8) * np.uint8(XFlag.FIXED_ID)
    with using(path):
        out, _ = segment(b, np.ones(len(b), dtype=np.bool_), proto)
    return out


@pytest.mark.parametrize("path", PATHS)
@settings(max_examples=60, deadline=None)
@given(case=supers())
def test_segments_verify_with_rfc1071(
    path: str, case: tuple[list[bytes], int, int, list[int]]
) -> None:
    pkts, proto, mss, fixed = case
    out = _segment(pkts, proto, mss, fixed, path)
    for i in range(len(out)):
        seg = bytes(out.packet(i))
        assert expected_verdict(seg) == CsumVerdict.GOOD
        assert (out.ext.vflags[i] & VnetFlag.NEEDS_CSUM) == 0


@settings(max_examples=80, deadline=None)
@given(case=supers())
def test_segments_byte_identical_native_and_numpy(
    case: tuple[list[bytes], int, int, list[int]],
) -> None:
    pkts, proto, mss, fixed = case
    a = _segment(pkts, proto, mss, fixed, "native")
    b = _segment(pkts, proto, mss, fixed, "numpy")
    assert np.array_equal(a.start, b.start) and np.array_equal(a.length, b.length)
    assert a.packets() == b.packets()
    for f in EXT_FIELDS:
        assert np.array_equal(getattr(a.ext, f), getattr(b.ext, f)), f
