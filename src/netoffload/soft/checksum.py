"""The checksum task in software, vectorised over the batch.

Two modes, picked with ``make_task(Task.CHECKSUM, mode=...)``:

``fill`` (transmit)
    Fills in the IPv4 header checksum and the TCP/UDP checksum (over IPv4 or
    IPv6, pseudo-header included). A packet whose extension has
    ``VnetFlag.NEEDS_CSUM`` is *partial* (virtio semantics, as Linux leaves
    it): the checksum field already holds the folded pseudo-header sum, and the
    task sums from ``csum_start`` to the end of the packet, folds, inverts and
    stores the result at ``csum_start + csum_offset``, then clears
    ``NEEDS_CSUM``. A UDP checksum that computes to 0 is sent as 0xFFFF.

``verify`` (receive)
    Sets ``ext.csum_verdict`` per packet: GOOD, BAD, NONE (IPv4 UDP with
    checksum 0, or no TCP/UDP checksum to check: other protocols, fragments,
    non-IP frames) or PARTIAL (``NEEDS_CSUM``: the sender left it to be done, as
    Linux's CHECKSUM_PARTIAL). ``DATA_VALID`` packets are GOOD without
    recomputation (a device already checked them). A bad checksum sets
    ``ext.error = Reason.BAD_CHECKSUM`` (the kernel drops such packets); an IPv6
    UDP checksum of 0 is bad. Malformed headers get their ``Reason`` and BAD.

``to_partial`` turns packets into the partial form (used by the TUN device and
segmentation), ``mode_for(direction)`` says which mode a direction's engine uses.

How it is fast: the compiled kernel (``netoffload._native``, C, built at
install time) does ``verify``, ``layout`` and the range sums in one call per
batch: 32-bit words added into 64-bit accumulators (AVX2 where the CPU has it),
reduced once. Verify of 1024 x 1400-byte IPv4/TCP packets, headers parsed,
runs at about 0.7-0.8x memcpy speed (``netoffload bench checksum``). Packets it
does not cover (Ethernet frames, IPv6 extension headers) and installs without
it (or ``NETOFFLOAD_NATIVE=0``) take the numpy path below, with the same results.

The numpy path: one's complement sums do not care about byte order or word
size (RFC 1071), so every packet's byte range is summed as native 64-bit words
with one ``np.add.reduceat`` over the whole buffer; the carries lost to 64-bit
wrap-around are recovered exactly from the sum of the words' top 16 bits, the
partial words at either end are masked, and the result is reduced modulo
0xFFFF (2^16 ≡ 1) and byte-swapped (a multiplication by 256) into network order.
Headers (IPv4 header, pseudo-header addresses) are summed from one gather of
16-bit word rows. Plain raw-IP packets get parse_batch's layout by a shorter
equivalent path.

Where the numpy path's time goes (1024 x 1400-byte IPv4/TCP):
the two reduceat passes over the payload cost about 3x a memcpy of the same
bytes, and the ~150 numpy calls of layout, checks and bookkeeping cost ~1-2 us
each whatever the batch size; together about 15x a memcpy. Pure Python is
~100x slower. An IPv6 routing header with segments left makes the pseudo-header
name the final destination (a per-packet walk, only for packets with extension
headers); a home-address destination option (Mobile IPv6) is not honoured.
"""

from __future__ import annotations

import struct
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from netoffload import _native
from netoffload.batch import Batch, CsumVerdict, Mask, Reason, VnetFlag, XFlag
from netoffload.errors import ConfigError
from netoffload.soft import SoftTask, register
from netoffload.tasks import Direction, Task
from netoffload.wire.ipv6 import ROUTING, WALKABLE_EXT
from netoffload.wire.parse import parse_subset

I64 = NDArray[np.int64]
U64 = NDArray[np.uint64]

FILL = "fill"
VERIFY = "verify"
MODES = (FILL, VERIFY)

IPPROTO_TCP = 6
IPPROTO_UDP = 17
TCP_CSUM_OFF = 16
UDP_CSUM_OFF = 6

_LITTLE = sys.byteorder == "little"
_M16 = np.uint64(0xFFFF)
_M32 = np.uint64(0xFFFFFFFF)
_S16 = np.uint64(16)
_S32 = np.uint64(32)
_S48 = np.uint64(48)
#: keep bytes >= k of a native 64-bit word (k = 0..7), and bytes < k
_KEEP_HI = np.array(
    [(0xFFFFFFFFFFFFFFFF << (8 * k)) & 0xFFFFFFFFFFFFFFFF for k in range(8)], dtype=np.uint64
)
_KEEP_LO = np.array([(1 << (8 * k)) - 1 for k in range(8)], dtype=np.uint64)
if not _LITTLE:  # byte k of a word is at the other end on a big-endian host
    _KEEP_HI, _KEEP_LO = (
        np.array(
            [(1 << (64 - 8 * k)) - 1 if k else 0xFFFFFFFFFFFFFFFF for k in range(8)],
            dtype=np.uint64,
        ),
        np.array(
            [((1 << (8 * k)) - 1) << (64 - 8 * k) if k else 0 for k in range(8)],
            dtype=np.uint64,
        ),
    )
#: segments of at least this many 64-bit words cannot use the top-16-bit carry recovery
_MAX_WORDS = 1 << 16
#: ranges spanning at most this many words are summed by a gather (headers)
_SMALL_WORDS = 12
_ALL = np.uint64(0xFFFFFFFFFFFFFFFF)


# --------------------------------------------------------------------------- sums
def _words(buf: NDArray[np.uint8]) -> tuple[NDArray[np.uint8], U64]:
    """``buf`` as native 64-bit words (copied into an aligned, padded buffer if need be)."""
    if buf.flags.c_contiguous and buf.ctypes.data % 8 == 0 and len(buf) % 8 == 0 and len(buf):
        return buf, buf.view(np.uint64)
    padded = np.zeros((len(buf) + 8) // 8 * 8, dtype=np.uint8)
    padded[: len(buf)] = buf
    return padded, padded.view(np.uint64)


_local = threading.local()


def _scratch(n: int) -> U64:
    """A reusable per-thread uint64 work array of ``n`` elements (no page faults per batch)."""
    buf: U64 | None = getattr(_local, "scratch", None)
    if buf is None or len(buf) < n:
        buf = np.empty(max(n, 1 << 16), dtype=np.uint64)
        _local.scratch = buf
    return buf[:n]


def _fold32(x: U64) -> U64:
    return (x & _M32) + (x >> _S32)


def range_sums(buf: NDArray[np.uint8], a: I64, b: I64) -> U64:
    """One's complement sums of the byte ranges ``buf[a[i]:b[i]]``, in network order.

    The result is the 16-bit sum reduced modulo 0xFFFF (0 stands for a folded sum
    of 0xFFFF, or of nothing). Requires ``0 <= a <= b <= len(buf)``; ranges may
    have any alignment and length and need not be in order.
    """
    if len(a) == 0:
        return np.zeros(0, dtype=np.uint64)
    a = np.clip(np.asarray(a, dtype=np.int64), 0, len(buf))
    b = np.clip(np.asarray(b, dtype=np.int64), a, len(buf))
    return _range_sums(buf, a, b)


def _range_sums(buf: NDArray[np.uint8], a: I64, b: I64) -> U64:
    """``range_sums`` for ranges already known to satisfy ``0 <= a <= b <= len(buf)``."""
    n = len(a)
    if n == 0:
        return np.zeros(0, dtype=np.uint64)
    k = _native.kernel
    if k is not None:
        out = np.empty(n, dtype=np.uint64)
        try:
            k.range_sums(buf, _i64(a), _i64(b), out)
            return out
        except (ValueError, BufferError):  # e.g. a non-contiguous buffer: numpy does it
            pass
    return _range_sums_numpy(buf, a, b)


def _i64(x: I64) -> I64:
    """``x`` as a contiguous int64 array (itself when it already is one)."""
    return np.ascontiguousarray(x, dtype=np.int64)


def _range_sums_numpy(buf: NDArray[np.uint8], a: I64, b: I64) -> U64:
    """``_range_sums`` in numpy (the fallback of the compiled kernel)."""
    n = len(a)
    if n == 0:
        return np.zeros(0, dtype=np.uint64)
    _, w = _words(buf)
    ha = a >> 3
    tb = b >> 3
    span = tb - ha  # >= 0: index of the last (partial) word, from the first
    k = int(span.max()) + 1
    small = k <= _SMALL_WORDS
    total = _small_sums(w, a, b, ha, span, k) if small else _large_sums(w, a, b, ha, tb)
    r = total % _M16
    # native words have the byte at an even address low (little-endian): the
    # network-order sum of a range starting at an even address is byte-swapped
    swap = (a & 1) == 0 if _LITTLE else (a & 1) == 1
    return np.where(swap, (r << np.uint64(8)) % _M16, r)


def header_sums(buf: NDArray[np.uint8], a: I64, nbytes: I64) -> U64:
    """Like ``range_sums(buf, a, a + nbytes)`` for short, even-length ranges (headers).

    When every range starts at an even offset the buffer is read as native
    16-bit words (one gather of word rows, summed down the rows), else
    ``range_sums`` does it.
    """
    n = len(a)
    if n == 0:
        return np.zeros(0, dtype=np.uint64)
    if len(buf) >= 2 and not ((a | nbytes) & 1).any():
        lo = int(nbytes.min())
        k = int(nbytes.max()) // 2
        if lo >= 0 and k <= 64:
            u16 = buf[: len(buf) // 2 * 2].view(np.uint16)
            rows = np.arange(k, dtype=np.int64)[:, None]
            g = u16.take(rows + (a >> 1)[None, :], mode="clip")
            if lo != 2 * k:
                g = np.where(rows < (nbytes >> 1)[None, :], g, np.uint16(0))
            r = g.sum(axis=0, dtype=np.uint64) % _M16
            out: U64 = (r << np.uint64(8)) % _M16 if _LITTLE else r
            return out
    return _range_sums(buf, a, a + nbytes)


def _small_sums(w: U64, a: I64, b: I64, ha: I64, span: I64, k: int) -> U64:
    """Short ranges: gather rows of at most ``k`` words, mask, fold, add down the rows."""
    rows = np.arange(k, dtype=np.int64)[:, None]
    g = w.take(rows + ha[None, :], mode="clip")
    m = np.where(rows <= span[None, :], _ALL, np.uint64(0))
    m[0] &= _KEEP_HI[a & 7]
    m[span, np.arange(len(a))] &= _KEEP_LO[b & 7]
    g &= m
    out: U64 = _fold32(g).sum(axis=0, dtype=np.uint64)
    return out


def _large_sums(w: U64, a: I64, b: I64, ha: I64, tb: I64) -> U64:
    """Long ranges (payloads): one reduceat over the buffer's 64-bit words.

    The carries lost to 64-bit wrap-around are recovered from a second
    reduceat over the words' top 16 bits: a range of N < 2^16 words sums to S
    in [T*2^48, (T+N)*2^48) for T the sum of the tops, and S = wrapped + k*2^64
    for exactly one k in that interval.
    """
    n = len(a)
    nw = len(w)
    last = nw - 1
    hmask = _KEEP_HI[a & 7]
    tmask = _KEEP_LO[b & 7]
    same = ha == tb
    hmask = np.where(same, hmask & tmask, hmask)
    tmask = np.where(same, np.uint64(0), tmask)
    total = _fold32(w.take(ha, mode="clip") & hmask) + _fold32(w.take(tb, mode="clip") & tmask)
    s = ha + 1  # whole words in [s, tb)
    has_mid = tb > s
    if not has_mid.any():
        return total
    s_i = np.minimum(s, last)
    e_i = np.minimum(tb, last)
    lo = min(int(s_i.min()), int(e_i.min()))
    hi = max(int(s_i.max()), int(e_i.max())) + 1
    idx = np.empty(2 * n, dtype=np.int64)
    idx[0::2] = s_i - lo
    idx[1::2] = e_i - lo
    seg = has_mid & (s_i < e_i)
    part = w[lo:hi]
    wrapped = np.add.reduceat(part, idx)[0::2]
    top = np.add.reduceat(np.right_shift(part, _S48, out=_scratch(len(part))), idx)[0::2]
    wrapped = np.where(seg, wrapped, np.uint64(0))
    top = np.where(seg, top, np.uint64(0))
    low = (top & _M16) << _S48
    carries = (top >> _S16) + (wrapped < low).astype(np.uint64)
    total += _fold32(wrapped) + carries
    # a range running to the buffer's very end misses its last word above
    end_word = has_mid & (tb == nw)
    if end_word.any():
        total += np.where(end_word, _fold32(w[last:]), np.uint64(0))
    big = has_mid & (tb - s >= _MAX_WORDS)
    for i in np.flatnonzero(big).tolist():  # > 512 KiB in one range: exact, slowly
        mid = w[int(s[i]) : int(tb[i])]
        edges = (
            _fold32(w.take(ha[i : i + 1]) & hmask[i : i + 1])[0]
            + _fold32(w.take(np.minimum(tb[i : i + 1], last)) & tmask[i : i + 1])[0]
        )
        total[i] = (
            edges
            + np.uint64(int((mid & _M32).sum(dtype=np.uint64)))
            + np.uint64(int((mid >> _S32).sum(dtype=np.uint64)))
        )
    return total


def _u8(buf: NDArray[np.uint8], pos: I64) -> I64:
    if len(buf) == 0:
        return np.zeros(len(pos), dtype=np.int64)
    return buf.take(pos, mode="clip").astype(np.int64)


def _u16(buf: NDArray[np.uint8], pos: I64) -> I64:
    return (_u8(buf, pos) << 8) | _u8(buf, pos + 1)


def _put16(buf: NDArray[np.uint8], pos: I64, val: NDArray[Any]) -> None:
    v = np.asarray(val, dtype=np.int64)
    buf[pos] = (v >> 8).astype(np.uint8)
    buf[pos + 1] = (v & 0xFF).astype(np.uint8)


def _csum(r: U64) -> U64:
    """Checksum field value from a sum modulo 0xFFFF (~fold, 0 for a sum of 0xFFFF)."""
    return (_M16 - r) % _M16


# --------------------------------------------------------------------------- layout
@dataclass
class Layout:
    """Header layout of selected packets (absolute offsets into the batch buffer)."""

    idx: I64  # packet indices
    reason: NDArray[np.uint16]  # 0: parsed
    base: I64  # packet start in the buffer
    l3: I64  # absolute L3 offset
    v: I64  # 4, 6 or 0
    ihl: I64  # IPv4 header length
    l4: I64  # absolute L4 offset
    proto: I64  # L4 protocol
    l4_end: I64  # absolute end of the TCP/UDP segment (UDP: by its length field)
    l4_ok: Mask  # a TCP or UDP segment whose checksum can be done
    field: I64  # absolute offset of the TCP/UDP checksum field
    udp: Mask
    #: the first 20 16-bit words of every packet in network order, shape (20, n),
    #: when every packet is raw IP with no IPv4 options (else None)
    words: NDArray[np.uint64] | None = None

    def pseudo(self, buf: NDArray[np.uint8]) -> U64:
        """Pseudo-header sums (mod 0xFFFF) of the l4_ok packets (0 elsewhere)."""
        if self.words is not None and self.l4_ok.all():
            w = self.words
            six = self.v == 6
            addr = np.where(six, w[4:20].sum(axis=0), w[6:10].sum(axis=0))
            l4len = (self.l4_end - self.l4).astype(np.uint64)
            s = addr + self.proto.astype(np.uint64) + (l4len & _M16) + (l4len >> _S16)
            out: U64 = s % _M16
            return out
        return _pseudo(buf, self.l3, self.v, self.proto, self.l4_end - self.l4, self.l4_ok, self.l4)


def _fast_parse(batch: Batch, idx: I64) -> Mask:
    """parse_batch's work for plain raw-IP packets, in fewer steps; returns which it did.

    A packet qualifies when it starts with an IPv4 header, or with an IPv6 header
    followed directly by its upper layer (no walkable extension header), and
    parse_batch would accept it: then the extension gets exactly the layout
    parse_batch would write. Everything else is left for parse_batch.
    """
    e = batch.ext
    buf = batch.buf
    base = batch.start[idx]
    plen = batch.length[idx]
    first = _u8(buf, base)
    ver = first >> 4
    ihl = (first & 15) * 4
    is4 = ver == 4
    nh6 = _u8(buf, base + 6)
    l4o = np.where(is4, ihl, 40)
    proto = np.where(is4, _u8(buf, base + 9), nh6)
    tot = np.where(is4, _u16(buf, base + 2), _u16(buf, base + 4) + 40)
    frag4 = is4 & ((_u16(buf, base + 6) & 0x3FFF) != 0)
    ok = np.where(
        is4,
        (ihl >= 20) & (ihl <= plen) & (tot >= ihl),
        (ver == 6)
        & (plen >= 40)
        & (nh6 != 0)
        & (nh6 != 43)
        & (nh6 != 60)
        # a fragment header is read, not walked: a cut one is parse_batch's TRUNCATED
        & ((nh6 != 44) | (plen >= 48)),
    )
    ok &= (plen >= 20) & (tot <= plen)
    tcp = ok & (proto == IPPROTO_TCP) & ~frag4
    udp = ok & (proto == IPPROTO_UDP) & ~frag4
    doff = (_u8(buf, base + l4o + 12) >> 4) * 4
    ok &= ~(tcp & ((l4o + 20 > plen) | (doff < 20) | (l4o + doff > plen)))
    ok &= ~(udp & (l4o + 8 > plen))
    rows = idx[ok]
    e.l3_off[rows] = 0
    e.l3_proto[rows] = ver[ok]
    e.l4_off[rows] = l4o[ok]
    e.l4_proto[rows] = proto[ok]
    e.hdr_len[rows] = (l4o + np.where(tcp, doff, np.where(udp, 8, 0)))[ok]
    e.xflags[rows] |= np.uint8(XFlag.PARSED)
    return ok


_HDR_WORDS = 20


def _raw_layout(batch: Batch, idx: I64) -> Layout | None:
    """``layout`` for unparsed raw-IP packets that are all well formed, in few steps.

    Reads the first 40 bytes of every packet in one gather; returns None (the
    caller takes the general path) unless every packet is an IPv4 packet without
    options or an IPv6 packet without walkable extension headers that parse_batch
    accepts and the checks of ``layout`` pass. The extension gets parse_batch's
    layout, so the result is exactly what the general path gives.
    """
    buf = batch.buf
    base = batch.start[idx]
    plen = batch.length[idx]
    if len(buf) < 2 or (base & 1).any():
        return None
    u16 = buf[: len(buf) // 2 * 2].view(np.uint16)
    rows = np.arange(_HDR_WORDS, dtype=np.int64)[:, None]
    g = u16.take(rows + (base >> 1)[None, :], mode="clip")
    if _LITTLE:
        g = g.byteswap()
    w = g.astype(np.uint64)
    w0 = g[0].astype(np.int64)
    ver = w0 >> 12
    is4 = ver == 4
    nh6 = g[3].astype(np.int64) >> 8
    ip_len = np.where(is4, g[1], g[2].astype(np.int64) + 40)
    proto = np.where(is4, g[4] & 0xFF, nh6)
    ok = np.where(
        is4,
        (w0 >> 8) == 0x45,  # IPv4, no options
        (ver == 6) & (nh6 != 0) & (nh6 != 43) & (nh6 != 60),
    )
    ok &= (plen >= np.where(is4, 20, 40)) & (ip_len <= plen) & (ip_len >= np.where(is4, 20, 40))
    l4o = np.where(is4, 20, 40)
    frag4 = is4 & ((g[3] & 0x3FFF) != 0)
    tcp = (proto == IPPROTO_TCP) & ~frag4
    udp = (proto == IPPROTO_UDP) & ~frag4
    l4 = base + l4o
    doff = (_u8(buf, l4 + 12) >> 4) * 4
    ulen = _u16(buf, l4 + 4)
    seg_len = ip_len - l4o
    # parse_batch's checks (against the packet) and layout's (against the IP length)
    ok &= ~tcp | ((doff >= 20) & (l4o + doff <= plen) & (seg_len >= 20))
    ok &= ~udp | ((l4o + 8 <= plen) & (ulen >= 8) & (ulen <= seg_len))
    if not ok.all():
        return None
    e = batch.ext
    e.l3_off[idx] = 0
    e.l3_proto[idx] = ver
    e.l4_off[idx] = l4o
    e.l4_proto[idx] = proto
    e.hdr_len[idx] = l4o + np.where(tcp, doff, np.where(udp, 8, 0))
    e.xflags[idx] |= np.uint8(XFlag.PARSED)
    n = len(idx)
    return Layout(
        idx,
        np.zeros(n, dtype=np.uint16),
        base,
        base,
        ver,
        np.where(is4, 20, 0),
        l4,
        proto,
        np.where(udp, l4 + ulen, base + ip_len),
        tcp | udp,
        l4 + np.where(udp, UDP_CSUM_OFF, TCP_CSUM_OFF),
        udp,
        w,
    )


def layout(batch: Batch, idx: I64) -> Layout:
    """Layout of packets ``idx``: from the extension when PARSED, else parsed here.

    Unparsed packets get their layout written into the extension as
    ``parse_batch`` does (plain raw-IP packets by a shorter equivalent path).
    Values taken from the extension are checked against the packet, so a wrong
    extension gives a reason, never an out-of-bounds access. (The offsets and
    protocol of a packet with a reason other than 0 mean nothing.)
    """
    k = _native.kernel
    if k is not None and len(idx):
        lay = _layout_native(k, batch, idx)
        if lay is not None:
            return lay
    return _layout_numpy(batch, idx)


def _layout_native(k: _native.Kernel, batch: Batch, idx: I64) -> Layout | None:
    """``layout`` by the compiled kernel: parsed and plain raw-IP packets in one call,
    the others (Ethernet frames, IPv6 extension headers, ...) by ``_layout_numpy``."""
    e = batch.ext
    n = len(idx)
    idx = _i64(idx)
    reason = np.empty(n, dtype=np.uint16)
    i64 = [np.empty(n, dtype=np.int64) for _ in range(7)]
    l3, v, ihl, l4, proto, l4_end, field = i64
    l4_ok = np.empty(n, dtype=np.bool_)
    udp = np.empty(n, dtype=np.bool_)
    defer = np.empty(n, dtype=np.int64)
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
            reason,
            l3,
            v,
            ihl,
            l4,
            proto,
            l4_end,
            l4_ok,
            udp,
            field,
            defer,
        )
    except (ValueError, BufferError):  # an array of another dtype or layout
        return None
    lay = Layout(idx, reason, batch.start[idx], l3, v, ihl, l4, proto, l4_end, l4_ok, field, udp)
    if nd:
        pos = defer[:nd]
        sub = _layout_numpy(batch, idx[pos])
        for f in ("reason", "base", "l3", "v", "ihl", "l4", "proto", "l4_end", "l4_ok"):
            getattr(lay, f)[pos] = getattr(sub, f)
        lay.field[pos] = sub.field
        lay.udp[pos] = sub.udp
    return lay


def _layout_numpy(batch: Batch, idx: I64) -> Layout:
    """``layout`` in numpy."""
    e = batch.ext
    buf = batch.buf
    n = len(idx)
    reason = np.zeros(n, dtype=np.uint16)
    xf = e.xflags[idx]
    if not (xf & np.uint8(XFlag.PARSED | XFlag.ETHERNET)).any():
        quick = _raw_layout(batch, idx)
        if quick is not None:
            return quick
    todo = (xf & np.uint8(XFlag.PARSED)) == 0
    if todo.any():
        raw = todo & ((xf & np.uint8(XFlag.ETHERNET)) == 0)
        if raw.any():
            todo[raw] = ~_fast_parse(batch, idx[raw])
        if todo.any():
            reason[todo] = parse_subset(batch, idx[todo])
    base = batch.start[idx]
    plen = batch.length[idx]
    l3o = e.l3_off[idx].astype(np.int64)
    l4o = e.l4_off[idx].astype(np.int64)
    v = e.l3_proto[idx].astype(np.int64)
    proto = e.l4_proto[idx].astype(np.int64)
    ok = reason == 0
    v4 = ok & (v == 4)
    v6 = ok & (v == 6)
    # re-check what a (possibly stale) extension claims
    reason[ok & ~(v4 | v6)] = Reason.NOT_IP
    bad = (v4 | v6) & ((l3o < 0) | (l3o + np.where(v4, 20, 40) > plen))
    reason[bad] = Reason.TRUNCATED
    v4 &= ~bad
    v6 &= ~bad
    l3 = base + l3o
    first = _u8(buf, l3)
    ihl = (first & 15) * 4
    bad_ver = (v4 & (first >> 4 != 4)) | (v6 & (first >> 4 != 6))
    reason[bad_ver] = Reason.BAD_IP_VERSION
    v4 &= ~bad_ver
    v6 &= ~bad_ver
    bad_ihl = v4 & ((ihl < 20) | (l3o + ihl > plen))
    reason[bad_ihl] = Reason.BAD_IHL
    v4 &= ~bad_ihl
    ip_len = np.where(v4, _u16(buf, l3 + 2), _u16(buf, l3 + 4) + 40)
    ip_end = l3o + ip_len
    bad_len = (v4 | v6) & ((ip_end > plen) | (v4 & (ip_len < ihl)))
    reason[bad_len] = Reason.BAD_IP_LENGTH
    v4 &= ~bad_len
    v6 &= ~bad_len
    ip = v4 | v6
    # a fragment's TCP/UDP checksum covers the whole datagram: nothing to do per fragment
    whole = ~v4 | ((_u16(buf, l3 + 6) & 0x3FFF) == 0)
    tcp = ip & whole & (proto == IPPROTO_TCP) & (l4o >= 0)
    udp = ip & whole & (proto == IPPROTO_UDP) & (l4o >= 0)
    seg_len = ip_end - l4o
    short = (tcp & (seg_len < 20)) | (udp & (seg_len < 8)) | ((tcp | udp) & (l4o < l3o))
    reason[short] = Reason.TRUNCATED
    tcp &= ~short
    udp &= ~short
    l4 = base + l4o
    ulen = _u16(buf, l4 + 4)
    bad_ulen = udp & ((ulen < 8) | (ulen > seg_len))
    reason[bad_ulen] = Reason.BAD_L4_LENGTH
    udp &= ~bad_ulen
    l4_end = np.where(udp, l4 + ulen, base + ip_end)
    l4_ok = tcp | udp
    field = l4 + np.where(udp, UDP_CSUM_OFF, TCP_CSUM_OFF)
    return Layout(
        idx, reason, base, l3, np.where(ip, v, 0), ihl, l4, proto, l4_end, l4_ok, field, udp
    )


def _pseudo(
    buf: NDArray[np.uint8],
    l3: I64,
    v: I64,
    proto: I64,
    l4len: I64,
    sel: Mask,
    l4: I64 | None = None,
) -> U64:
    """Pseudo-header sums mod 0xFFFF (RFC 793/768 for IPv4, RFC 8200 §8.1 for IPv6).

    With ``l4`` (absolute L4 offsets), IPv6 routing headers are honoured.
    """
    n = len(l3)
    if not sel.any():
        return np.zeros(n, dtype=np.uint64)
    six = v == 6
    addr = header_sums(buf, np.where(six, l3 + 8, l3 + 12), np.where(six, 32, 8))
    if l4 is not None:
        _final_destinations(buf, l3, l4, sel & six, addr)
    s = addr + (proto + (l4len & 0xFFFF) + (l4len >> 16)).astype(np.uint64)
    return np.where(sel, s % _M16, np.uint64(0))


def _sum_words(b: bytes) -> int:
    return sum(struct.unpack(f"!{len(b) // 2}H", b))


def _final_destinations(buf: NDArray[np.uint8], l3: I64, l4: I64, six: Mask, addr: U64) -> None:
    """IPv6 with a routing header that has segments left: the pseudo-header names the
    final destination (RFC 8200 §8.1) — the last address of the header, or for a
    segment routing header (type 4) Segment List[0]. Fixes ``addr`` in place.

    A per-packet walk, only for the (rare) IPv6 packets with extension headers.
    """
    for i in np.flatnonzero(six & (l4 > l3 + 40)).tolist():
        p, end = int(l3[i]), int(l4[i])
        nh, off, final = int(buf[p + 6]), p + 40, -1
        while nh in WALKABLE_EXT and off + 8 <= end:
            hl = (int(buf[off + 1]) + 1) * 8
            if off + hl > end:
                break
            n_addr = int(buf[off + 1]) // 2
            if nh == ROUTING and buf[off + 3] != 0 and n_addr:
                final = off + 8 if buf[off + 2] == 4 else off + 8 + 16 * (n_addr - 1)
            nh, off = int(buf[off]), off + hl
        if final >= 0:
            src = _sum_words(buf[p + 8 : p + 24].tobytes())
            addr[i] = (src + _sum_words(buf[final : final + 16].tobytes())) % 0xFFFF


# --------------------------------------------------------------------------- the work
def _ipv4_header(batch: Batch, lay: Layout, v4: Mask, fill: bool) -> Mask:
    """Fill (or check) IPv4 header checksums; returns per packet: header checksum bad."""
    bad = np.zeros(len(lay.idx), dtype=np.bool_)
    if not v4.any():
        return bad
    l3 = lay.l3[v4]
    if lay.words is not None:  # no options: the header is words 0-9
        hw = lay.words[:10, v4]
        r = hw.sum(axis=0) % _M16
        if fill:  # as if the checksum field were zero
            r = (r + _M16 - hw[5]) % _M16
    else:
        if fill:
            _put16(batch.buf, l3 + 10, np.zeros(len(l3), np.int64))
        r = header_sums(batch.buf, l3, lay.ihl[v4])
    if fill:
        _put16(batch.buf, l3 + 10, _csum(r))
    else:
        bad[v4] = r != 0
    return bad


def fill(batch: Batch, sel: Mask) -> None:
    """Fill in checksums of the ``sel`` packets (full, or completing partial ones)."""
    _native_first(batch, sel, "fill", _fill_numpy)


def _native_first(
    batch: Batch, sel: Mask, kind: str, numpy_path: Callable[[Batch, I64], None]
) -> None:
    """Run ``kind`` (``fill`` or ``verify``) over the ``sel`` packets: one call of
    the compiled kernel, then ``numpy_path`` for the packets it left (Ethernet
    frames, IPv6 extension headers to walk; all of them without the kernel, or
    when an array is not as it expects). Both give the same results."""
    idx = np.flatnonzero(sel)
    if len(idx) == 0:
        return
    k = _native.kernel
    if k is not None:
        e = batch.ext
        defer = np.empty(len(idx), dtype=np.int64)
        common = (batch.buf, batch.start, batch.length, idx, e.vflags, e.xflags, e.l3_off)
        layout_out = (e.l4_off, e.hdr_len, e.l3_proto, e.l4_proto)
        try:
            if kind == "fill":
                nd = k.fill(*common, *layout_out, e.csum_start, e.csum_offset, e.error, defer)
            else:
                nd = k.verify(*common, *layout_out, e.csum_verdict, e.error, defer)
            idx = defer[:nd]
        except (ValueError, BufferError):  # an array of another dtype or layout
            pass
        if len(idx) == 0:
            return
    numpy_path(batch, idx)


def _fill_numpy(batch: Batch, idx: I64) -> None:
    """``fill`` of packets ``idx`` in numpy."""
    e = batch.ext
    lay = layout(batch, idx)
    partial = (e.vflags[idx] & np.uint8(VnetFlag.NEEDS_CSUM)) != 0
    ok = lay.reason == 0
    not_ip = lay.reason == Reason.NOT_IP
    # full packets that cannot be parsed fail; partial ones only need good offsets
    err = np.where(~partial & ~ok & ~not_ip, lay.reason, 0).astype(np.uint16)
    v4 = ok & (lay.v == 4)
    _ipv4_header(batch, lay, v4, fill=True)

    cs = e.csum_start[idx].astype(np.int64)
    co = e.csum_offset[idx].astype(np.int64)
    plen = batch.length[idx]
    bad_off = partial & ((cs < 0) | (co < 0) | (cs + co + 2 > plen))
    err[bad_off] = Reason.BAD_CSUM_OFFSETS
    part = partial & ~bad_off
    full = ~partial & lay.l4_ok
    do = part | full
    if do.any():
        a = np.where(part, lay.base + cs, lay.l4)
        b = np.where(part, lay.base + plen, lay.l4_end)
        store = np.where(part, lay.base + cs + co, lay.field)
        pseudo = lay.pseudo(batch.buf)
        d = np.flatnonzero(do)
        fd = full[d]
        if fd.any():
            _put16(batch.buf, store[d][fd], np.zeros(int(fd.sum()), np.int64))
        r = (_range_sums(batch.buf, a[d], b[d]) + np.where(fd, pseudo[d], 0)) % _M16
        c = _csum(r)
        # UDP sends a computed 0 as 0xFFFF; so does Linux completing any partial
        # checksum (CSUM_MANGLED_0), except where the packet is known to be TCP
        mangle = np.where(full[d], lay.udp[d], ~(ok[d] & (lay.proto[d] == IPPROTO_TCP)))
        c = np.where(mangle & (c == 0), _M16, c)
        _put16(batch.buf, store[d], c)
    done_part = idx[part]
    e.vflags[done_part] &= np.uint8(~VnetFlag.NEEDS_CSUM & 0xFF)
    failed = err != 0
    if failed.any():
        e.error[idx[failed]] = err[failed]


def verify(batch: Batch, sel: Mask) -> None:
    """Set the checksum verdict of the ``sel`` packets (and BAD_CHECKSUM errors)."""
    _native_first(batch, sel, "verify", _verify_numpy)


def _verify_numpy(batch: Batch, idx: I64) -> None:
    """``verify`` of packets ``idx`` in numpy."""
    e = batch.ext
    vf = e.vflags[idx]
    valid = (vf & np.uint8(VnetFlag.DATA_VALID)) != 0
    partial = ~valid & ((vf & np.uint8(VnetFlag.NEEDS_CSUM)) != 0)
    e.csum_verdict[idx[valid]] = CsumVerdict.GOOD
    e.csum_verdict[idx[partial]] = CsumVerdict.PARTIAL
    idx = idx[~valid & ~partial]
    if len(idx) == 0:
        return
    n = len(idx)
    lay = layout(batch, idx)
    verdict = np.full(n, CsumVerdict.NONE, dtype=np.uint8)
    err = np.zeros(n, dtype=np.uint16)
    ok = lay.reason == 0
    malformed = ~ok & (lay.reason != Reason.NOT_IP)
    verdict[malformed] = CsumVerdict.BAD
    err[malformed] = lay.reason[malformed]
    v4 = ok & (lay.v == 4)
    bad = _ipv4_header(batch, lay, v4, fill=False)
    l4 = lay.l4_ok
    if l4.all():  # the usual case: no sub-selection
        field = _u16(batch.buf, lay.field)
        r = (_range_sums(batch.buf, lay.l4, lay.l4_end) + lay.pseudo(batch.buf)) % _M16
        zero = field == 0
        none = lay.udp & zero & (lay.v == 4)
        l4bad = ~none & ((r != 0) | (lay.udp & zero))
        verdict[~l4bad & ~none] = CsumVerdict.GOOD
        bad |= l4bad
    elif l4.any():
        d = np.flatnonzero(l4)
        field = _u16(batch.buf, lay.field[d])
        r = (_range_sums(batch.buf, lay.l4[d], lay.l4_end[d]) + lay.pseudo(batch.buf)[d]) % _M16
        udp = lay.udp[d]
        none = udp & (field == 0) & (lay.v[d] == 4)
        l4bad = ~none & ((r != 0) | (udp & (field == 0)))
        good = ~l4bad & ~none
        verdict[d[good]] = CsumVerdict.GOOD
        bad[d[l4bad]] = True
    verdict[bad] = CsumVerdict.BAD
    err[bad & ~malformed] = Reason.BAD_CHECKSUM
    e.csum_verdict[idx] = verdict
    failed = err != 0
    if failed.any():
        e.error[idx[failed]] = err[failed]


def to_partial(batch: Batch, sel: Mask) -> NDArray[np.uint16]:
    """Turn ``sel`` TCP/UDP packets into the partial form Linux and virtio use.

    The checksum field gets the folded pseudo-header sum, ``csum_start`` the L4
    offset, ``csum_offset`` the field's place in the L4 header, and ``NEEDS_CSUM``
    is set; IPv4 header checksums are filled in. Returns a per-packet Reason
    (0: done or nothing to do; other protocols are left as they are) and sets it
    as ``ext.error`` on malformed packets.
    """
    e = batch.ext
    out = np.zeros(len(batch), dtype=np.uint16)
    idx = np.flatnonzero(sel)
    if len(idx) == 0:
        return out
    lay = layout(batch, idx)
    ok = lay.reason == 0
    _ipv4_header(batch, lay, ok & (lay.v == 4), fill=True)
    d = np.flatnonzero(lay.l4_ok)
    if len(d):
        p = lay.pseudo(batch.buf)[d]
        _put16(batch.buf, lay.field[d], np.where(p == 0, _M16, p))
        rows = idx[d]
        e.csum_start[rows] = lay.l4[d] - lay.base[d]
        e.csum_offset[rows] = lay.field[d] - lay.l4[d]
        e.vflags[rows] |= np.uint8(VnetFlag.NEEDS_CSUM)
    bad = ~ok & (lay.reason != Reason.NOT_IP)
    out[idx[bad]] = lay.reason[bad]
    e.error[idx[bad]] = lay.reason[bad]
    return out


# --------------------------------------------------------------------------- the task
class ChecksumTask(SoftTask):
    """The checksum task: ``mode="fill"`` on transmit, ``mode="verify"`` on receive."""

    task = Task.CHECKSUM

    def __init__(self, mode: str = FILL) -> None:
        if mode not in MODES:
            raise ConfigError(f"checksum: mode must be one of {', '.join(MODES)}, not {mode!r}")
        self.mode = mode
        self._run = fill if mode == FILL else verify

    def process(self, batch: Batch, sel: Mask) -> Batch:
        self._run(batch, sel)
        return batch

    def describe(self) -> dict[str, object]:
        return {"task": self.task.kebab, "mode": self.mode}


def mode_for(direction: Direction) -> str:
    """The checksum mode an engine of ``direction`` uses: fill on TX, verify on RX."""
    if direction is Direction.TX:
        return FILL
    if direction is Direction.RX:
        return VERIFY
    raise ConfigError("checksum: a direction is TX or RX")


def options_for(direction: Direction) -> dict[str, str]:
    """``make_task``/``SoftLibrary.build`` options of the checksum task for ``direction``."""
    return {"mode": mode_for(direction)}


def task_for(direction: Direction) -> ChecksumTask:
    return ChecksumTask(mode_for(direction))


def _factory(mode: str = FILL, **options: Any) -> ChecksumTask:
    if options:
        raise ConfigError(f"checksum: unknown options {', '.join(sorted(options))}")
    return ChecksumTask(mode)


register(Task.CHECKSUM, _factory)


def internet_checksum_py(data: bytes | bytearray | memoryview) -> int:
    """A straightforward per-packet pure-Python checksum (the benchmark's baseline)."""
    b = bytes(data)
    s = 0
    for i in range(0, len(b) - 1, 2):
        s += (b[i] << 8) | b[i + 1]
    if len(b) % 2:
        s += b[-1] << 8
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


__all__: Sequence[str] = (
    "FILL",
    "VERIFY",
    "ChecksumTask",
    "Layout",
    "fill",
    "internet_checksum_py",
    "layout",
    "mode_for",
    "options_for",
    "range_sums",
    "task_for",
    "to_partial",
    "verify",
)
