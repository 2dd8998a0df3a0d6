"""TCP and UDP segmentation (TSO / USO) in software, as the Linux kernel does it.

A super-packet (IPv4 or IPv6, TCP or UDP, up to 64 KiB, optional Ethernet
header, IPv4 options, walkable IPv6 extension headers, TCP options) becomes
segments of at most ``ext.gso_size`` payload bytes each. The reference is
Linux's software GSO path (``inet_gso_segment`` / ``ipv6_gso_segment``,
``tcp_gso_segment``, ``__udp_gso_segment``):

* every segment carries a copy of all headers;
* IPv4: total length per segment, the ID incremented per segment (unless
  ``XFlag.FIXED_ID``, Linux's ``SKB_GSO_TCP_FIXEDID``), header checksum
  recomputed; IPv6: payload length per segment;
* TCP: sequence numbers advanced by the segment size; FIN and PSH kept on the
  last segment only, CWR on the first only (``GsoType.ECN`` only says that the
  super-packet may carry CWR, the kernel segments it the same way); the other
  flags, the ACK, window, urgent pointer and options are copied;
* UDP (``UDP_L4`` semantics, as ``UDP_SEGMENT``): each segment a complete
  datagram with its own length and checksum (a computed 0 is sent as 0xFFFF);
* all checksums are filled in fully (segments leave with no ``NEEDS_CSUM``).

A packet whose payload already fits in ``gso_size`` is not a GSO packet for the
kernel (``virtio_net_hdr_to_skb`` and ``tcp_gso_segment`` pass it on as it is):
it leaves as one packet, its checksums filled in. Bytes after the IP length
(link padding) are not part of any segment, as after ``ip_rcv`` trims them.

Bad input gets a per-packet ``ext.error`` and is passed on unchanged: a header
the parser cannot walk, a TSO request on a non-TCP packet (``NOT_TCP``), a USO
request on a non-UDP one (``NOT_UDP``), ``gso_size`` 0 (``GSO_SIZE_ZERO``), a
``gso_type`` that contradicts the packet (``BAD_VNET_HDR``), an IP packet of
more than 64 KiB (``SUPER_TOO_BIG``), a UDP super-packet of more than
``UDP_MAX_SEGMENTS`` segments (``TOO_MANY_SEGMENTS``, the kernel's limit), a
header length past the packet end (the TCP data offset, or a virtio
``hdr_len`` that TUN would refuse: ``BAD_HDR_LEN``). Options: ``gso_size`` for
packets without one, ``other="pass"`` to let other protocols through (captures).

How it is fast: with the compiled kernel (``netoffload._native``) one call
writes every segment — headers copied, the payload summed while it is copied
(copy and checksum in one pass, the classic way to make TSO cheap), fields and
checksums patched from per-super-packet header sums — and, when every packet of
the batch is segmented, also plans the output layout (about 0.3x memcpy speed
for 64 KiB super-packets, ``netoffload bench segment``). Without it (or with
``NETOFFLOAD_NATIVE=0``), byte for byte the same in numpy: the payload bytes
are moved by strided block copies (one 3-D
copy for a batch of alike super-packets, else one 2-D copy per super-packet:
a Python loop over super-packets, never over segments or bytes); the only pass
over the payload for checksums is one ``checksum.range_sums`` over the input;
every header field and checksum of every segment is then numpy arithmetic on
per-super-packet header sums (one's complement sums add and subtract).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import as_strided
from numpy.typing import NDArray

from netoffload import _native
from netoffload.batch import (
    DEFAULT_TAILROOM,
    EXT_FIELDS,
    Batch,
    Ext,
    GsoType,
    Mask,
    Reason,
    VnetFlag,
    XFlag,
    copy_ranges,
)
from netoffload.errors import ConfigError
from netoffload.soft import SoftTask, register
from netoffload.soft import checksum as cs
from netoffload.tasks import Task

I64 = NDArray[np.int64]

IPPROTO_TCP = 6
IPPROTO_UDP = 17
#: largest IP packet (IPv4 total length; IPv6 40-byte header + 16-bit payload length)
MAX_IP_LEN = 65535
#: the kernel's limit on segments of one UDP GSO packet (UDP_MAX_SEGMENTS)
UDP_MAX_SEGMENTS = 128
TCP_FIN, TCP_PSH, TCP_CWR = 0x01, 0x08, 0x80
_ALIGN = 64
# flag constants as numpy scalars (enum flag arithmetic is slow in a hot path)
_NOT_CSUM_FLAGS = np.uint8(0xFF ^ (int(VnetFlag.NEEDS_CSUM) | int(VnetFlag.DATA_VALID)))
_FIXED_ID = np.uint8(int(XFlag.FIXED_ID))
_PARSED = np.uint8(int(XFlag.PARSED))


def _round_up(x: I64, a: int = _ALIGN) -> I64:
    return (x + (a - 1)) // a * a


def _u8(buf: NDArray[np.uint8], pos: I64) -> I64:
    return buf[pos].astype(np.int64)


def _u16(buf: NDArray[np.uint8], pos: I64) -> I64:
    return (buf[pos].astype(np.int64) << 8) | buf[pos + 1]


def _put16(buf: NDArray[np.uint8], pos: I64, v: I64) -> None:
    """Big-endian 16-bit values at byte positions (one 16-bit store when all are even)."""
    if len(pos) and len(buf) % 2 == 0 and not (pos & 1).any():
        buf.view(">u2")[pos >> 1] = v
        return
    buf[pos] = (v >> 8) & 0xFF
    buf[pos + 1] = v & 0xFF


def _u32(buf: NDArray[np.uint8], pos: I64) -> I64:
    return (_u16(buf, pos) << 16) | _u16(buf, pos + 2)


def _put32(buf: NDArray[np.uint8], pos: I64, v: I64) -> None:
    _put16(buf, pos, (v >> 16) & 0xFFFF)
    _put16(buf, pos + 2, v & 0xFFFF)


@dataclass
class Plan:
    """What segmentation does to each packet of a batch (for results and tests)."""

    segments: I64  # output packets per input packet (1 for pass-through and errors)
    segmented: Mask  # selected packets that were segmented (possibly into one segment)
    error: NDArray[np.uint16]  # per input packet: Reason set by this call (0 none)


def segment(
    batch: Batch, sel: Mask, proto: int, *, default_gso_size: int = 0, pass_other: bool = False
) -> tuple[Batch, Plan]:
    """Segment the ``sel`` packets of ``batch`` (``proto`` 6: TCP, 17: UDP).

    Returns the output batch (a new one, in order) and the per-packet plan. The
    segment size of a packet is ``ext.gso_size`` (``default_gso_size`` where
    that is 0). Never raises for bad packets; see the module docstring.
    ``pass_other``: packets of another protocol (or not IP) are passed on
    untouched instead of failing with NOT_TCP / NOT_UDP / NOT_IP (for captures,
    where every packet asks for every task).
    """
    n = len(batch)
    e = batch.ext
    err = np.zeros(n, dtype=np.uint16)
    sel = np.asarray(sel, dtype=np.bool_) & e.alive()
    idx = np.flatnonzero(sel)
    counts = np.ones(n, dtype=np.int64)
    done = np.zeros(n, dtype=np.bool_)
    if len(idx) == 0:
        return batch, Plan(counts, done, err)
    buf = batch.buf
    vnet_hdr_len = e.hdr_len[idx].astype(np.int64)  # as given (parsing rewrites it)
    lay = cs.layout(batch, idx)
    reason = lay.reason.copy()
    ok = reason == 0
    is_tcp = ok & (lay.proto == IPPROTO_TCP)
    is_udp = ok & (lay.proto == IPPROTO_UDP)
    if proto == IPPROTO_TCP:
        wrong = ok & ~is_tcp
        reason[wrong] = Reason.NOT_TCP
        mine = is_tcp
    else:
        wrong = ok & ~is_udp
        reason[wrong] = Reason.NOT_UDP
        mine = is_udp
    if pass_other:
        other = (reason == Reason.NOT_IP) | wrong
        reason[other] = 0
        ok &= ~other
    ok &= mine
    # gso type must agree with the packet (ECN bit aside); NONE means "segment by gso_size"
    gt = e.gso_type[idx].astype(np.int64) & ~int(GsoType.ECN)
    if proto == IPPROTO_TCP:
        want_gt = np.where(lay.v == 4, int(GsoType.TCPV4), int(GsoType.TCPV6))
        gt_ok = (gt == 0) | (gt == want_gt)
    else:
        gt_ok = (gt == 0) | (gt == int(GsoType.UDP_L4))
    reason[ok & ~gt_ok] = Reason.BAD_VNET_HDR
    ok &= gt_ok
    mss = e.gso_size[idx].astype(np.int64)
    mss = np.where(mss == 0, int(default_gso_size), mss)
    reason[ok & (mss <= 0)] = Reason.GSO_SIZE_ZERO
    ok &= mss > 0
    base = lay.base
    l3o = lay.l3 - base
    ip_len = np.where(lay.v == 4, _u16(buf, np.where(ok, lay.l3 + 2, 0)), 0)
    ip_len = np.where(lay.v == 6, _u16(buf, np.where(ok, lay.l3 + 4, 0)) + 40, ip_len)
    # more than an IP length field can describe (IPv6: 40-byte header + 65535 payload)
    room = np.where(lay.v == 4, MAX_IP_LEN, MAX_IP_LEN + 40)
    big = ok & (batch.length[idx] - l3o > room)
    reason[big] = Reason.SUPER_TOO_BIG
    ok &= ~big
    thl = np.where(is_tcp, (_u8(buf, np.where(ok, lay.l4 + 12, 0)) >> 4) * 4, 8)
    hlen = lay.l4 - base + thl  # all headers, from the packet start
    end = l3o + ip_len  # packet end by the IP length
    # a header length (TCP data offset, or the virtio hdr_len the packet came with)
    # past the end of the packet: TUN refuses such a write (-EINVAL)
    bad_h = ok & ((hlen > end) | (vnet_hdr_len > batch.length[idx]))
    reason[bad_h] = Reason.BAD_HDR_LEN
    ok &= ~bad_h
    pay = end - hlen
    k = np.maximum(1, -(-pay // np.maximum(mss, 1)))
    many = ok & (proto == IPPROTO_UDP) & (k > UDP_MAX_SEGMENTS)
    reason[many] = Reason.TOO_MANY_SEGMENTS
    ok &= ~many

    bad = reason != 0
    if bad.any():
        err[idx[bad]] = reason[bad]
        e.error[idx[bad]] = reason[bad]
    go = idx[ok]
    if len(go) == 0:
        return batch, Plan(counts, done, err)
    done[go] = True
    g_k = k[ok]
    counts[go] = g_k
    kern = _native.kernel
    if kern is not None and len(go) == n:  # every packet segmented: the kernel does it all
        out = _build_native(kern, batch, g_k, mss[ok], hlen[ok], pay[ok], lay, proto)
        if out is not None:
            return out, Plan(counts, done, err)
    return _build(batch, go, g_k, mss[ok], hlen[ok], pay[ok], lay, ok, counts, proto), Plan(
        counts, done, err
    )


def _build_native(
    kern: _native.Kernel,
    batch: Batch,
    g_k: I64,
    g_mss: I64,
    g_hlen: I64,
    g_pay: I64,
    lay: cs.Layout,
    proto: int,
) -> Batch | None:
    """``_build`` when every packet of the batch is segmented, by the compiled kernel:
    output layout (``plan``), then headers, payloads and checksums (``segment``).
    The output is byte for byte ``_build``'s; None if the kernel refused (numpy then)."""
    e = batch.ext
    total = int(g_k.sum())
    g_k = _i64(g_k)
    g_mss = _i64(g_mss)
    g_hlen = _i64(g_hlen)
    g_pay = _i64(g_pay)
    head = np.maximum(batch.start - batch.slot_lo, 0)
    start = np.empty(total, dtype=np.int64)
    out_len = np.empty(total, dtype=np.int64)
    slot_lo = np.empty(total, dtype=np.int64)
    slot_hi = np.empty(total, dtype=np.int64)
    l3 = lay.l3 - lay.base  # offsets from the packet start
    l4 = lay.l4 - lay.base
    first = np.cumsum(g_k) - g_k
    fixed = ((e.xflags & _FIXED_ID) != 0).astype(np.int64)
    try:
        size = kern.plan(
            _i64(head), g_hlen, g_mss, g_pay, g_k, DEFAULT_TAILROOM, _ALIGN,
            start, out_len, slot_lo, slot_hi,
        )  # fmt: skip
        out_buf = np.empty(size, dtype=np.uint8)
        kern.segment(
            batch.buf, out_buf, _i64(batch.start), g_hlen, g_mss, g_pay, g_k,
            _i64(l3), _i64(l4), _i64(lay.v), _i64(lay.ihl), fixed, first, start, proto,
        )  # fmt: skip
    except (ValueError, BufferError):
        return None
    # the extension of each segment: its input's, as a plain packet with its layout
    rep = {f: np.repeat(getattr(e, f), g_k) for f in EXT_FIELDS if f not in _SEG_FIELDS}
    zero = {f: np.zeros(total, dtype=EXT_FIELDS[f].dtype) for f in _SEG_ZERO}
    ext = Ext(
        total,
        vflags=np.repeat(e.vflags & _NOT_CSUM_FLAGS, g_k),
        xflags=np.repeat(e.xflags | _PARSED, g_k),
        hdr_len=np.repeat(g_hlen, g_k),
        l3_off=np.repeat(l3, g_k),
        l4_off=np.repeat(l4, g_k),
        **zero,
        **rep,
    )
    return Batch(out_buf, start, out_len, slot_lo, slot_hi, ext, 0)


#: extension fields a segment does not copy from its input (set in _build_native)
_SEG_ZERO = ("gso_type", "gso_size", "csum_start", "csum_offset")
_SEG_FIELDS = frozenset({*_SEG_ZERO, "vflags", "xflags", "hdr_len", "l3_off", "l4_off"})


def _m(x: Any) -> Any:
    """Reduce modulo 0xFFFF (one's complement arithmetic on sums)."""
    return np.asarray(x, dtype=np.int64) % 0xFFFF


def _build(
    batch: Batch,
    go: I64,
    g_k: I64,
    g_mss: I64,
    g_hlen: I64,
    g_pay: I64,
    lay: cs.Layout,
    ok: Mask,
    counts: I64,
    proto: int,
) -> Batch:
    n = len(batch)
    e = batch.ext
    buf = batch.buf
    total = int(counts.sum())
    rows = np.repeat(np.arange(n, dtype=np.int64), counts)  # input row of each output
    first = np.cumsum(counts) - counts  # first output of each input
    seg_of = np.zeros(n, dtype=np.bool_)
    seg_of[go] = True
    is_seg = seg_of[rows]
    j = np.arange(total, dtype=np.int64) - first[rows]  # segment number within its input

    # per-input values spread over outputs (only meaningful where is_seg)
    def spread(vals: I64) -> I64:
        full = np.zeros(n, dtype=np.int64)
        full[go] = vals
        return full[rows]

    o_mss = spread(g_mss)
    o_hlen = spread(g_hlen)
    o_pay = spread(g_pay)
    seg_pay = np.minimum(o_mss, o_pay - j * o_mss)
    out_len = np.where(is_seg, o_hlen + seg_pay, batch.length[rows])
    # layout: segments get the input's headroom and the default tailroom
    head = np.maximum(batch.start[rows] - batch.slot_lo[rows], 0)
    tail = np.where(
        is_seg, DEFAULT_TAILROOM, batch.slot_hi[rows] - batch.start[rows] - batch.length[rows]
    )
    sizes = _round_up(head + out_len + tail)
    slot_hi = np.cumsum(sizes)
    slot_lo = slot_hi - sizes
    start = slot_lo + head
    out_buf = np.empty(int(slot_hi[-1]), dtype=np.uint8)
    # the extension row of each output: its input's (np.repeat: rows are runs)
    ext = Ext(total, **{f: np.repeat(getattr(e, f), counts) for f in EXT_FIELDS})
    out = Batch(out_buf, start, out_len, slot_lo, slot_hi, ext, 0)

    # pass-through packets: one gather
    pt = np.flatnonzero(~is_seg)
    if len(pt):
        src_rows = rows[pt]
        copy_ranges(out_buf, start[pt], buf, batch.start[src_rows], out_len[pt])
    s = np.flatnonzero(is_seg)
    gpos = np.zeros(n, dtype=np.int64)
    gpos[go] = np.arange(len(go))
    gi = gpos[rows[s]]  # index into the go arrays
    l3 = (lay.l3 - lay.base)[ok]  # offsets from the packet start
    l4 = (lay.l4 - lay.base)[ok]
    ver = lay.v[ok]
    kern = _native.kernel
    if kern is None or not _segments_native(
        kern, batch, out, go, g_k, g_mss, g_hlen, g_pay, first, l3, l4, ver, lay.ihl[ok], proto
    ):
        _copy_segments(batch, out, go, g_k, g_mss, g_hlen, g_pay, first)
        _segment_headers(
            batch,
            out,
            s,
            gi,
            j[s],
            seg_pay[s],
            go,
            g_k,
            g_mss,
            g_hlen,
            l3,
            l4,
            ver,
            lay.ihl[ok],
            proto,
        )

    # extension of the segments: a plain packet with its layout, checksums done
    ext.gso_type[s] = 0
    ext.gso_size[s] = 0
    ext.vflags[s] &= _NOT_CSUM_FLAGS
    ext.csum_start[s] = 0
    ext.csum_offset[s] = 0
    ext.hdr_len[s] = o_hlen[s]
    ext.l3_off[s] = l3[gi]
    ext.l4_off[s] = l4[gi]
    ext.xflags[s] |= _PARSED
    return out


def _segments_native(
    kern: _native.Kernel,
    batch: Batch,
    out: Batch,
    go: I64,
    g_k: I64,
    g_mss: I64,
    g_hlen: I64,
    g_pay: I64,
    first: I64,
    l3: I64,
    l4: I64,
    ver: I64,
    ihl: I64,
    proto: int,
) -> bool:
    """Headers, payloads and checksums of every segment in one call of the compiled
    kernel (payload summed while it is copied); False if it could not (numpy then)."""
    fixed = ((batch.ext.xflags[go] & _FIXED_ID) != 0).astype(np.int64)
    try:
        kern.segment(
            batch.buf,
            out.buf,
            _i64(batch.start[go]),
            _i64(g_hlen),
            _i64(g_mss),
            _i64(g_pay),
            _i64(g_k),
            _i64(l3),
            _i64(l4),
            _i64(ver),
            _i64(ihl),
            fixed,
            _i64(first[go]),
            _i64(out.start),
            proto,
        )
    except (ValueError, BufferError):
        return False
    return True


def _i64(x: I64) -> I64:
    return np.ascontiguousarray(x, dtype=np.int64)


def _segment_headers(
    batch: Batch,
    out: Batch,
    s: I64,
    gi: I64,
    sj: I64,
    spay: I64,
    go: I64,
    g_k: I64,
    g_mss: I64,
    g_hlen: I64,
    l3: I64,
    l4: I64,
    ver: I64,
    ihl: I64,
    proto: int,
) -> None:
    """Header fields of the segments ``s`` in numpy, checksums computed
    arithmetically from per-input sums (one pass over the input payload)."""
    buf = batch.buf
    out_buf = out.buf
    ext = out.ext
    start = out.start
    base_in = batch.start[go]
    thl = g_hlen - l4
    last = sj == g_k[gi] - 1
    sb = start[s]  # output packet starts
    # payload sums of every segment, read from the input super-packets
    pa = np.asarray(base_in[gi] + g_hlen[gi] + sj * g_mss[gi], dtype=np.int64)
    paysum = cs.range_sums(buf, pa, pa + spay).astype(np.int64)
    a3 = base_in + l3
    a4 = base_in + l4
    v4g = ver == 4
    v4 = v4g[gi]
    # IPv4: total length, ID, header checksum
    if v4g.any():
        w = np.flatnonzero(v4)
        hsum = np.zeros(len(go), dtype=np.int64)
        g4 = np.flatnonzero(v4g)
        hsum[g4] = cs.range_sums(buf, a3[g4], a3[g4] + ihl[g4]).astype(np.int64)
        tot0 = _u16(buf, a3 + 2)
        id0 = _u16(buf, a3 + 4)
        ck0 = _u16(buf, a3 + 10)
        hbase = _m(hsum + 3 * 0xFFFF - tot0 - id0 - ck0)
        gw = gi[w]
        tot = (g_hlen[gw] - l3[gw] + spay[w]) & 0xFFFF
        fixed = (ext.xflags[s[w]] & _FIXED_ID) != 0
        ident = np.where(fixed, id0[gw], (id0[gw] + sj[w]) & 0xFFFF)
        hck = 0xFFFF - _m(hbase[gw] + tot + ident)
        p3 = sb[w] + l3[gw]
        _put16(out_buf, p3 + 2, tot)
        _put16(out_buf, p3 + 4, ident)
        _put16(out_buf, p3 + 10, np.where(hck == 0xFFFF, 0, hck))
    if (~v4g).any():
        w = np.flatnonzero(~v4)
        gw = gi[w]
        _put16(out_buf, sb[w] + l3[gw] + 4, g_hlen[gw] - l3[gw] - 40 + spay[w])
    # pseudo-header: addresses and protocol (per input), L4 length (per segment)
    asum = np.zeros(len(go), dtype=np.int64)
    if v4g.any():
        g4 = np.flatnonzero(v4g)
        asum[g4] = cs.range_sums(buf, a3[g4] + 12, a3[g4] + 20).astype(np.int64)
    if (~v4g).any():
        g6 = np.flatnonzero(~v4g)
        asum[g6] = cs.range_sums(buf, a3[g6] + 8, a3[g6] + 40).astype(np.int64)
    l4len = thl[gi] + spay
    p4 = sb + l4[gi]
    lsum = cs.range_sums(buf, a4, a4 + thl).astype(np.int64)  # whole L4 header
    if proto == IPPROTO_TCP:
        seq0 = _u32(buf, a4 + 4)
        w6 = _u16(buf, a4 + 12)  # data offset and flags
        ck = _u16(buf, a4 + 16)
        tbase = _m(lsum + 4 * 0xFFFF - (seq0 >> 16) - (seq0 & 0xFFFF) - w6 - ck)
        seq = np.asarray(seq0[gi] + sj * g_mss[gi], dtype=np.int64) & 0xFFFFFFFF
        fl = w6[gi] & 0xFF
        fl = np.where(last, fl, fl & (0xFF ^ (TCP_FIN | TCP_PSH)))
        fl = np.where(sj == 0, fl, fl & (0xFF ^ TCP_CWR))
        w6s = (w6[gi] & 0xFF00) | fl
        tot = _m(asum[gi] + IPPROTO_TCP + l4len + tbase[gi] + (seq >> 16) + (seq & 0xFFFF))
        tot = _m(tot + w6s + paysum)
        c = 0xFFFF - tot  # 0xFFFF - 0 = 0xFFFF means a sum of 0xFFFF: checksum 0
        c = np.where(c == 0xFFFF, 0, c)
        _put32(out_buf, p4 + 4, seq)
        out_buf[p4 + 13] = fl
        _put16(out_buf, p4 + 16, c)
    else:
        ulen0 = _u16(buf, a4 + 4)
        ck = _u16(buf, a4 + 6)
        ubase = _m(lsum + 2 * 0xFFFF - ulen0 - ck)
        tot = _m(asum[gi] + IPPROTO_UDP + 2 * l4len + ubase[gi] + paysum)
        c = 0xFFFF - tot
        c = np.where(c == 0, 0xFFFF, c)  # UDP: a computed 0 is sent as 0xFFFF
        _put16(out_buf, p4 + 4, l4len)
        _put16(out_buf, p4 + 6, c)


def _copy_segments(
    batch: Batch,
    out: Batch,
    go: I64,
    g_k: I64,
    g_mss: I64,
    g_hlen: I64,
    g_pay: I64,
    first: I64,
) -> None:
    """Headers and payload of every segment: strided block copies, no per-byte indexing."""
    buf = batch.buf
    out_buf = out.buf
    start = out.start
    slot_lo = out.slot_lo
    if _copy_uniform(batch, out, go, g_k, g_mss, g_hlen, g_pay, first):
        return
    for gi, r in enumerate(go.tolist()):
        kk = int(g_k[gi])
        h = int(g_hlen[gi])
        m = int(g_mss[gi])
        p = int(g_pay[gi])
        s0 = int(batch.start[r])
        hdr = buf[s0 : s0 + h]
        payload = buf[s0 + h : s0 + h + p]
        o0 = int(first[r])
        kf = p // m  # full segments
        if kf >= 2:
            stride = int(slot_lo[o0 + 1] - slot_lo[o0])
            a = int(slot_lo[o0])
            hd = int(start[o0]) - a
            dst = out_buf[a : a + kf * stride].reshape(kf, stride)[:, hd : hd + h + m]
            dst[:, :h] = hdr
            dst[:, h:] = payload[: kf * m].reshape(kf, m)
        elif kf == 1:
            d0 = int(start[o0])
            out_buf[d0 : d0 + h] = hdr
            out_buf[d0 + h : d0 + h + m] = payload[:m]
        if kf < kk:  # the shorter last segment
            d0 = int(start[o0 + kk - 1])
            out_buf[d0 : d0 + h] = hdr
            out_buf[d0 + h : d0 + h + (p - kf * m)] = payload[kf * m :]


def _copy_uniform(
    batch: Batch,
    out: Batch,
    go: I64,
    g_k: I64,
    g_mss: I64,
    g_hlen: I64,
    g_pay: I64,
    first: I64,
) -> bool:
    """All super-packets alike and evenly spaced (in and out): one 3-D copy for all."""
    g = len(go)
    if g < 2:
        return False
    h, m, p, kk = int(g_hlen[0]), int(g_mss[0]), int(g_pay[0]), int(g_k[0])
    if not (
        (g_hlen == h).all() and (g_mss == m).all() and (g_pay == p).all() and (g_k == kk).all()
    ):
        return False
    s_in = batch.start[go]
    d_in = np.diff(s_in)
    o_first = out.start[first[go]]
    d_out = np.diff(o_first)
    if not ((d_in == d_in[0]).all() and (d_out == d_out[0]).all()) or d_in[0] <= 0:
        return False
    kf = p // m
    if kf >= 1:
        slot = int(out.slot_hi[first[go[0]]] - out.slot_lo[first[go[0]]])
        if kf >= 2 and int(out.slot_lo[first[go[0]] + 1] - out.slot_lo[first[go[0]]]) != slot:
            return False
    else:
        slot = 0
    sin, sout = int(d_in[0]), int(d_out[0])
    a_in, a_out = int(s_in[0]), int(o_first[0])
    ib, ob = batch.buf, out.buf
    # headers of all segments (the last, shorter one included: it follows kf full slots)
    dst_h = as_strided(ob[a_out:], shape=(g, kk, h), strides=(sout, slot, 1))
    src_h = as_strided(ib[a_in:], shape=(g, 1, h), strides=(sin, 0, 1))
    np.copyto(dst_h, src_h)
    if kf:
        dst_p = as_strided(ob[a_out + h :], shape=(g, kf, m), strides=(sout, slot, 1))
        src_p = as_strided(ib[a_in + h :], shape=(g, kf, m), strides=(sin, m, 1))
        np.copyto(dst_p, src_p)
    rem = p - kf * m
    if rem:
        dst_r = as_strided(ob[a_out + kf * slot + h :], shape=(g, rem), strides=(sout, 1))
        src_r = as_strided(ib[a_in + h + kf * m :], shape=(g, rem), strides=(sin, 1))
        np.copyto(dst_r, src_r)
    return True


class SegmentTask(SoftTask):
    """TCP (``Task.TCP_SEGMENT``) or UDP (``Task.UDP_SEGMENT``) segmentation."""

    def __init__(self, task: Task, gso_size: int = 0, other: str = "error") -> None:
        if task not in (Task.TCP_SEGMENT, Task.UDP_SEGMENT):
            raise ConfigError(f"segment: not a segmentation task: {task!r}")
        if not 0 <= int(gso_size) <= 65535:
            raise ConfigError(f"{task.kebab}: gso_size (mss) must be 0..65535, not {gso_size}")
        if other not in ("error", "pass"):
            raise ConfigError(f"{task.kebab}: other must be 'error' or 'pass', not {other!r}")
        self.task = task
        self.gso_size = int(gso_size)
        self.pass_other = other == "pass"
        self.proto = IPPROTO_TCP if task is Task.TCP_SEGMENT else IPPROTO_UDP
        #: plan of the last ``process`` call (per input packet)
        self.last_plan: Plan | None = None

    def process(self, batch: Batch, sel: Mask) -> Batch:
        out, plan = segment(
            batch, sel, self.proto, default_gso_size=self.gso_size, pass_other=self.pass_other
        )
        self.last_plan = plan
        return out

    def describe(self) -> dict[str, object]:
        return {"task": self.task.kebab, "gso_size": self.gso_size}


def _factory(task: Task) -> Any:
    def make(
        gso_size: int = 0, mss: int | None = None, other: str = "error", **options: Any
    ) -> SegmentTask:
        """Options: ``gso_size`` (or ``mss``): the segment size of packets whose
        extension has none; ``other="pass"``: let other protocols through."""
        if options:
            raise ConfigError(f"{task.kebab}: unknown options {', '.join(sorted(options))}")
        return SegmentTask(task, mss if mss is not None else gso_size, other)

    return make


register(Task.TCP_SEGMENT, _factory(Task.TCP_SEGMENT))
register(Task.UDP_SEGMENT, _factory(Task.UDP_SEGMENT))

__all__: Sequence[str] = ("Plan", "SegmentTask", "segment")
