"""Vectorised header parsing of a whole batch.

``parse_batch`` fills, for every packet, the layout fields of its extension:
``l3_off``, ``l3_proto`` (4/6), ``l4_off``, ``l4_proto`` and ``hdr_len`` (up to
the end of the TCP/UDP header), walking IPv6 hop-by-hop, routing and
destination-options headers. It never raises: a packet that cannot be parsed
gets a ``Reason`` in the returned array (0 = parsed) and no ``PARSED`` flag.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from netoffload.batch import Batch, Ext, Reason, XFlag
from netoffload.wire.ethernet import ETH_LEN, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6
from netoffload.wire.ipv6 import FRAGMENT, WALKABLE_EXT

I64 = NDArray[np.int64]
U64 = NDArray[np.uint64]
U8 = NDArray[np.uint8]
MAX_V6_EXT = 8


def be_words(buf: U8, off: I64, width: int) -> U64:
    """The big-endian ``width``-byte (2, 4 or 8) words at byte offsets ``off`` of
    ``buf``: one gather through a view of every (unaligned) word. Offsets are
    clipped into the buffer, so only words that lie inside it are meaningful."""
    if not buf.flags.c_contiguous or len(buf) < width:
        pad = np.zeros(max(width - len(buf), 0), dtype=np.uint8)
        buf = np.concatenate([buf, pad])
    words = np.ndarray((len(buf) - width + 1,), dtype=f">u{width}", buffer=buf, strides=(1,))
    return words[np.clip(off, 0, len(buf) - width)].astype(np.uint64)


class _Reader:
    """Bounds-checked byte gathers at per-packet offsets (0 where out of bounds)."""

    def __init__(self, b: Batch) -> None:
        self.buf = b.buf
        self.start = b.start
        self.length = b.length

    def u8(self, off: I64, ok: NDArray[np.bool_]) -> I64:
        inb = ok & (off >= 0) & (off < self.length)
        if not inb.any() or not len(self.buf):
            return np.zeros(len(off), np.int64)
        idx = np.where(inb, self.start + off, 0)
        return np.where(inb, self.buf[idx].astype(np.int64), 0)

    def u16(self, off: I64, ok: NDArray[np.bool_]) -> I64:
        return self.word(off, ok, 2)

    def word(self, off: I64, ok: NDArray[np.bool_], width: int) -> I64:
        """Big-endian ``width``-byte words, each byte bounds-checked (as ``u8``);
        8-byte words wrap to negative values when the top bit is set."""
        whole = ok & (off >= 0) & (off + width <= self.length)
        out = np.zeros(len(off), np.int64)
        if whole.any():
            w = be_words(self.buf, np.where(whole, self.start + off, 0), width)
            out = np.where(whole, w.astype(np.int64), 0)
        part = ok & ~whole
        if part.any():  # some bytes outside the packet: one at a time
            pi = np.flatnonzero(part)
            po, pok = off[pi], ok[pi]
            v = np.zeros(len(pi), np.int64)
            for j in range(width):
                v = (v << 8) | self.u8_at(po + j, pok, pi)
            out[pi] = v
        return out

    def u8_at(self, off: I64, ok: NDArray[np.bool_], rows: I64) -> I64:
        """``u8`` for some packets ``rows`` only."""
        inb = ok & (off >= 0) & (off < self.length[rows])
        idx = np.where(inb, self.start[rows] + off, 0)
        v = self.buf[idx].astype(np.int64) if len(self.buf) else np.zeros(len(off), np.int64)
        return np.where(inb, v, 0)

    def fits(self, off: I64, need: int | I64) -> NDArray[np.bool_]:
        return np.asarray(off + need <= self.length)


def parse_batch(b: Batch, ethernet: bool | None = None) -> NDArray[np.uint16]:
    """Fill the header layout of every packet; returns a per-packet Reason (0: parsed).

    ``ethernet``: packets start with an Ethernet header (``None``: use each
    packet's ``XFlag.ETHERNET``).
    """
    n = len(b)
    e = b.ext
    reason = np.zeros(n, dtype=np.uint16)
    if n == 0:
        return reason
    r = _Reader(b)
    ok = np.ones(n, dtype=np.bool_)
    if ethernet is None:
        eth = (e.xflags & XFlag.ETHERNET) != 0
    else:
        eth = np.full(n, ethernet, dtype=np.bool_)
        if ethernet:
            e.xflags |= np.uint8(XFlag.ETHERNET)
        else:
            e.xflags &= np.uint8(~XFlag.ETHERNET & 0xFF)
    l3 = np.where(eth, ETH_LEN, 0).astype(np.int64)
    short = eth & ~r.fits(np.zeros(n, np.int64), ETH_LEN)
    reason[short] = Reason.TRUNCATED
    ok &= ~short
    et = np.where(eth, r.u16(np.full(n, 12, np.int64), ok & eth), 0)
    vlan = eth & (et == ETH_P_8021Q)
    et = np.where(vlan, r.u16(np.full(n, 16, np.int64), ok & vlan), et)
    l3 = l3 + np.where(vlan, 4, 0)
    not_ip = eth & ok & (et != ETH_P_IP) & (et != ETH_P_IPV6)
    reason[not_ip] = Reason.NOT_IP
    ok &= ~not_ip

    # the first 8 bytes of the IP header in one gather (bytes past the end read as 0)
    h8 = r.word(l3, ok, 8)
    first = (h8 >> 56) & 0xFF
    trunc = ok & ~r.fits(l3, 1)
    reason[trunc] = Reason.TRUNCATED
    ok &= ~trunc
    ver = first >> 4
    v4 = ok & (ver == 4)
    v6 = ok & (ver == 6)
    badv = ok & ~v4 & ~v6
    reason[badv] = Reason.BAD_IP_VERSION
    ok &= ~badv

    # --- IPv4
    ihl = (first & 15) * 4
    t4 = v4 & ~r.fits(l3, 20)
    reason[t4] = Reason.TRUNCATED
    v4 &= ~t4
    bad_ihl = v4 & ((ihl < 20) | ~r.fits(l3, ihl))
    reason[bad_ihl] = Reason.BAD_IHL
    v4 &= ~bad_ihl
    tot4 = np.where(v4, (h8 >> 32) & 0xFFFF, 0)
    bad_len = v4 & ((tot4 < ihl) | (l3 + tot4 > b.length))
    reason[bad_len] = Reason.BAD_IP_LENGTH
    v4 &= ~bad_len
    proto4 = r.u8(l3 + 9, v4)
    frag4 = np.where(v4, h8 & 0x3FFF, 0)  # MF or offset: a fragment

    # --- IPv6
    t6 = v6 & ~r.fits(l3, 40)
    reason[t6] = Reason.TRUNCATED
    v6 &= ~t6
    plen6 = np.where(v6, (h8 >> 16) & 0xFFFF, 0)
    bad6 = v6 & (l3 + 40 + plen6 > b.length)
    reason[bad6] = Reason.BAD_IP_LENGTH
    v6 &= ~bad6
    nh = np.where(v6, (h8 >> 8) & 0xFF, 0)
    off6 = l3 + 40
    walking = v6 & np.isin(nh, WALKABLE_EXT) if v6.any() else np.zeros(n, np.bool_)
    for _ in range(MAX_V6_EXT):
        if not walking.any():
            break
        tr = walking & ~r.fits(off6, 8)
        reason[tr] = Reason.TRUNCATED
        v6 &= ~tr
        walking &= ~tr
        nxt = r.u8(off6, walking)
        ln = (r.u8(off6 + 1, walking) + 1) * 8
        off6 = np.where(walking, off6 + ln, off6)
        nh = np.where(walking, nxt, nh)
        walking = walking & np.isin(nh, WALKABLE_EXT)
    too_deep = walking
    reason[too_deep] = Reason.IPV6_EXT_UNSUPPORTED
    v6 &= ~too_deep
    past = v6 & (off6 > b.length)
    reason[past] = Reason.TRUNCATED
    v6 &= ~past
    # a fragment header is not walked (nothing after it is parsed), but it is
    # read (offset, MF): it must be whole
    frag_cut = v6 & (nh == FRAGMENT) & ~r.fits(off6, 8)
    reason[frag_cut] = Reason.TRUNCATED
    v6 &= ~frag_cut

    ip = v4 | v6
    l4 = np.where(v4, l3 + ihl, np.where(v6, off6, -1))
    proto = np.where(v4, proto4, np.where(v6, nh, 0))
    frag = (v4 & (frag4 != 0)) | (v6 & (nh == FRAGMENT))

    # --- L4 header length
    tcp = ip & (proto == 6) & ~frag
    udp = ip & (proto == 17) & ~frag
    doff = (r.u8(l4 + 12, tcp & r.fits(l4, 20)) >> 4) * 4
    ttr = tcp & (~r.fits(l4, 20) | (doff < 20) | ~r.fits(l4, doff))
    reason[ttr] = Reason.TRUNCATED
    utr = udp & ~r.fits(l4, 8)
    reason[utr] = Reason.TRUNCATED
    ip &= ~ttr & ~utr
    l4len = np.where(tcp, doff, np.where(udp, 8, 0))

    e.l3_off[:] = np.where(ip, l3, e.l3_off)
    e.l3_proto[:] = np.where(v4 & ip, 4, np.where(v6 & ip, 6, 0))
    e.l4_off[:] = np.where(ip, l4, -1)
    e.l4_proto[:] = np.where(ip, proto, 0)
    e.hdr_len[:] = np.where(ip, l4 + l4len, e.hdr_len)
    parsed = ip & (reason == 0)
    e.xflags[parsed] |= np.uint8(XFlag.PARSED)
    e.xflags[~parsed] &= np.uint8(~XFlag.PARSED & 0xFF)
    return reason


def parse_subset(batch: Batch, need: NDArray[np.int64]) -> NDArray[np.uint16]:
    """``parse_batch`` for the packets ``need`` (indices) only; their layout lands
    in their extension, the others' is left alone. Returns their reasons."""
    if len(need) == len(batch):
        return parse_batch(batch)
    e = batch.ext
    sub = Batch(
        batch.buf,
        batch.start[need],
        batch.length[need],
        batch.slot_lo[need],
        batch.slot_hi[need],
        Ext(len(need), xflags=e.xflags[need], l3_off=e.l3_off[need], hdr_len=e.hdr_len[need]),
    )
    reason = parse_batch(sub)
    se = sub.ext
    for f in ("l3_off", "l3_proto", "l4_off", "l4_proto", "hdr_len", "xflags"):
        getattr(e, f)[need] = getattr(se, f)
    return reason


_PARSED = np.uint8(XFlag.PARSED)


def parse_subset_fast(batch: Batch, need: NDArray[np.int64]) -> NDArray[np.uint16]:
    """``parse_subset`` with the compiled kernel's parse where it gives the same layout.

    The kernel's ``layout`` parses plain raw-IP packets (IPv4 with or without
    options, IPv6 without a walkable extension header, whole TCP/UDP headers) in
    one call and writes their extension exactly as ``parse_batch`` would; every
    other packet (Ethernet frames, IPv6 extension headers, anything malformed,
    anything already PARSED) goes to ``parse_subset``.
    Without the compiled kernel it is ``parse_subset``. Returns their reasons.
    """
    from netoffload import _native

    k = _native.kernel
    m = len(need)
    if k is None or m == 0:
        return parse_subset(batch, need)
    e = batch.ext
    idx = need.astype(np.int64, copy=False)
    slow = (e.xflags[idx] & _PARSED) != 0
    reason = np.zeros(m, dtype=np.uint16)
    if slow.any():
        fast_pos = np.flatnonzero(~slow)
        slow_pos = np.flatnonzero(slow)
        reason[slow_pos] = parse_subset(batch, idx[slow_pos])
        idx = idx[fast_pos]
        m = len(idx)
        if m == 0:
            return reason
    else:
        fast_pos = None
    # the kernel's outputs other than the extension are scratch here
    i64 = np.empty((8, m), dtype=np.int64)
    flags = np.empty((2, m), dtype=np.bool_)
    scratch = np.empty(m, dtype=np.uint16)
    try:
        nd = k.layout(
            batch.buf,
            batch.start,
            batch.length,
            idx,
            e.xflags,
            e.l3_off,
            e.l4_off,
            e.hdr_len,
            e.l3_proto,
            e.l4_proto,
            scratch,
            *i64[:6],
            flags[0],
            flags[1],
            i64[6],
            i64[7],
        )
    except (ValueError, BufferError):  # an array of another dtype or layout
        nd = m
        i64[7] = np.arange(m)
    if nd:
        # left by the kernel (nothing written for them): the full parse
        pos = i64[7, :nd]
        got = parse_subset(batch, idx[pos])
        if fast_pos is not None:
            pos = fast_pos[pos]
        reason[pos] = got
    return reason
