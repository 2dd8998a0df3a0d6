"""TCP and UDP assembly (GRO / UDP GRO) in software, as the Linux kernel does it.

In-order segments of one flow are coalesced into super-packets following
Linux's ``dev_gro_receive`` / ``inet_gro_receive`` / ``ipv6_gro_receive`` /
``tcp_gro_receive`` / ``udp_gro_receive_segment`` and their ``*_gro_complete``:

* a flow is: IP version, link header bytes, addresses, ports, (IPv6) flow label
  and extension headers (hop-by-hop, routing, destination options);
* packets that GRO flushes straight through (and that do not end a held
  super-packet) pass unmerged: IPv4 with options or fragmented, a packet
  longer than its IP length (padding), a bad IPv4 header or L4 checksum
  (``ext.csum_verdict`` GOOD, ``DATA_VALID`` or ``NEEDS_CSUM`` count as checked,
  as CHECKSUM_UNNECESSARY / PARTIAL do), UDP with checksum 0 or a UDP length
  that is not the IP payload length;
* a packet continues the super-packet of its flow only if the TTL / hop limit,
  TOS / traffic class and DF are those of the first, the IPv4 ID is the first's
  plus the count (or stays fixed: decided by the second packet, as
  ``inet_gro_flush`` of Linux 6.18, which no longer asks for DF there), and
  for TCP: same ACK, same data offset/flags/window word apart from CWR, FIN
  and PSH, identical options, no CWR, the next sequence number, a payload of
  at most the first's; for UDP: a length of at most the first's; the merged
  IP packet stays within 65535 bytes and ``max_segs`` segments (UDP: 64,
  ``UDP_GRO_CNT_MAX``; TCP: no count limit, as Linux);
* a shorter segment, or one with PSH/FIN/URG/RST/SYN, closes the super-packet
  (PSH and FIN are kept on it); any mismatch flushes the held one and starts
  anew (so out-of-order and retransmitted segments pass through unmerged); a
  segment with CWR is never merged (it goes alone: what the running kernel
  does, checked by the kernel test);
* flush: at batch end, or, with ``times_ns`` and ``timeout_ns`` given, a packet
  arriving more than ``timeout_ns`` after the first of the held super-packet
  starts a new one (an injected clock: nothing here reads one).

The output of a merge (count >= 2) is what a TUN device with offloads hands to
userspace for such a packet (``virtio_net_hdr_from_skb`` of a GRO skb):
headers of the first segment, IPv4 total length and header checksum or IPv6
payload length updated, TCP flags OR-ed with the merged FIN/PSH, UDP length
updated, the L4 checksum field holding the pseudo-header sum with
``NEEDS_CSUM``, ``csum_start``/``csum_offset`` at the L4 checksum,
``gso_type`` TCPV4/TCPV6 (+ECN when the first had CWR) or UDP_L4, ``gso_size``
the first segment's payload, ``hdr_len`` the header length, ``segs`` the count,
``XFlag.FIXED_ID`` when the IDs were fixed. A single packet leaves as it came.
Each output packet keeps the extension of its first input (so ``origin``).

Per input packet the outcome is a ``GroResult``. With the compiled kernel, a
batch of plain packets (raw IPv4 without options or IPv6 without extension
headers, no padding, no time-out clock; checksums not yet known good are
checked there) is assembled in
two C calls: ``gro_plan`` runs the merge rules packet by packet with a flow
table and lays the output out, ``gro_build`` copies and completes the merged
packets (~45 us for a small batch, ~0.13 us a packet). Any other batch, or no
kernel: vectorised numpy. Flows are grouped by a sort on their keys; the
compatibility of every packet with its flow predecessor is computed for all at
once; runs are cut with arithmetic; only "complex" chains (lengths going down
more than once, IPv4 ID mode changes, time-outs) are resolved by a per-packet
loop (~0.4 ms a call whatever its size). Both give the same batch.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from netoffload import _native
from netoffload._enum import NUMPY_PLAIN
from netoffload.batch import (
    DEFAULT_TAILROOM,
    Batch,
    CsumVerdict,
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
U64 = NDArray[np.uint64]

IPPROTO_TCP = 6
IPPROTO_UDP = 17
MAX_IP_LEN = 65535
UDP_GRO_CNT_MAX = 64
TCP_MAX_SEGS = 65535
TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK, TCP_URG, TCP_ECE, TCP_CWR = (
    0x01,
    0x02,
    0x04,
    0x08,
    0x10,
    0x20,
    0x40,
    0x80,
)
#: a segment with one of these ends its super-packet (CWR: Linux 6.18 never holds one,
#: found by tests/soft/test_gso_kernel.py; it goes alone)
_CLOSE_FLAGS = TCP_URG | TCP_PSH | TCP_RST | TCP_SYN | TCP_FIN | TCP_CWR
_ALIGN = 64
# flag constants as numpy scalars (enum flag arithmetic is slow in a hot path)
_CHECKED = np.uint8(int(VnetFlag.DATA_VALID) | int(VnetFlag.NEEDS_CSUM))
_FIXED_ID = np.uint8(int(XFlag.FIXED_ID))
_NOT_DATA_VALID = np.uint8(0xFF ^ int(VnetFlag.DATA_VALID))
_NEEDS_CSUM = np.uint8(int(VnetFlag.NEEDS_CSUM))


class GroResult(enum.IntEnum):
    """What assembly did with one input packet (Linux's gro_result, made explicit)."""

    __array_ufunc__ = NUMPY_PLAIN  # numpy at int speed (see _enum)

    NORMAL = 0  # not for this task (other protocol, not selected): passed as it was
    HELD = 1  # first segment of an output super-packet that absorbed later ones
    MERGED = 2  # absorbed into the HELD packet of its flow
    ALONE = 3  # eligible, but nothing to merge with: passed as it was
    FLUSHED = 4  # flushed straight through (bad checksum, IP options, padding, ...)
    ERROR = 5  # malformed: ext.error set, passed as it was


@dataclass
class Outcome:
    """Per input packet: the result, and the output packet it went into."""

    result: NDArray[np.uint8]
    out_index: I64
    segs: I64  # per output packet: segments merged into it (1: none)


def _round_up(x: I64, a: int = _ALIGN) -> I64:
    return (x + (a - 1)) // a * a


def _be(buf: NDArray[np.uint8], pos: I64, width: int) -> I64:
    """Big-endian unsigned ints of ``width`` bytes at byte positions ``pos``."""
    pos = np.asarray(pos, dtype=np.int64)
    if len(pos) == 0:
        return np.zeros(0, dtype=np.int64)
    o = int(pos[0]) % width
    if width > 1 and bool((pos % width == o).all()) and len(buf) - o >= width:
        usable = (len(buf) - o) // width * width
        view = buf[o : o + usable].view(f">u{width}")
        return view[(pos - o) // width].astype(np.int64)
    out = buf[pos].astype(np.int64)
    for k in range(1, width):
        out = (out << 8) | buf[pos + k]
    return out


def _put16(buf: NDArray[np.uint8], pos: I64, v: I64) -> None:
    buf[pos] = (v >> 8) & 0xFF
    buf[pos + 1] = v & 0xFF


def _shift(a: NDArray[Any], fill: Any = 0) -> NDArray[Any]:
    """a[i-1] at i (``fill`` at 0)."""
    out = np.empty_like(a)
    if len(a):
        out[0] = fill
        out[1:] = a[:-1]
    return out


def assemble(
    batch: Batch,
    sel: Mask,
    proto: int,
    *,
    max_segs: int | None = None,
    times_ns: I64 | None = None,
    timeout_ns: int | None = None,
) -> tuple[Batch, Outcome]:
    """Coalesce the ``sel`` packets of ``batch`` (``proto`` 6: TCP, 17: UDP)."""
    n = len(batch)
    e = batch.ext
    buf = batch.buf
    result = np.zeros(n, dtype=np.uint8)
    limit = max_segs or (TCP_MAX_SEGS if proto == IPPROTO_TCP else UDP_GRO_CNT_MAX)
    sel = np.asarray(sel, dtype=np.bool_) & e.alive()
    idx = np.flatnonzero(sel)
    ident = np.arange(n, dtype=np.int64)
    if len(idx) == 0:
        return batch, Outcome(result, ident, np.ones(n, dtype=np.int64))
    lay = cs.layout(batch, idx)
    if times_ns is None or timeout_ns is None:
        done = _assemble_native(batch, idx, lay, proto, limit)
        if done is not None:
            return done
    reason = lay.reason.copy()
    base = lay.base
    plen = batch.length[idx]
    ok = reason == 0
    bad = ~ok & (reason != Reason.NOT_IP)
    mine = ok & (lay.proto == proto)
    v4 = mine & (lay.v == 4)
    v6 = mine & (lay.v == 6)
    l3 = lay.l3
    l4 = lay.l4
    ip_len = np.zeros(len(idx), dtype=np.int64)
    if v4.any():
        ip_len[v4] = _be(buf, l3[v4] + 2, 2)
    if v6.any():
        ip_len[v6] = _be(buf, l3[v6] + 4, 2) + 40
    ip_end = l3 + ip_len
    if proto == IPPROTO_TCP:
        thl = np.zeros(len(idx), dtype=np.int64)
        if mine.any():
            thl[mine] = (buf[l4[mine] + 12].astype(np.int64) >> 4) * 4
        trunc = mine & ((thl < 20) | (l4 + thl > ip_end))
        reason[trunc] = Reason.TRUNCATED
        bad |= trunc
        mine &= ~trunc
    else:
        thl = np.full(len(idx), 8, dtype=np.int64)
    # eligible for merging at all (else flushed straight through)
    elig = mine.copy()
    if v4.any():
        first = buf[np.where(v4, l3, 0)]
        frag = _be(buf, np.where(v4, l3 + 6, 0), 2) & 0x3FFF
        elig &= ~v4 | ((first == 0x45) & (frag == 0))
    # a packet longer than its IP length (padding) is not merged; a TCP one still
    # ends the held super-packet of its flow (tcp_gro_receive finds it, the merge
    # fails): a "breaker"
    padded = elig & (ip_end != base + plen)
    elig &= ~padded
    breaker = padded if proto == IPPROTO_TCP else np.zeros(len(idx), dtype=np.bool_)
    if (breaker & v4).any():
        bd = np.flatnonzero(breaker & v4)
        breaker[bd[cs.range_sums(buf, l3[bd], l3[bd] + 20) != 0]] = False
    if proto == IPPROTO_UDP:
        ulen = np.zeros(len(idx), dtype=np.int64)
        ulen[mine] = _be(buf, l4[mine] + 4, 2)
        ucs = np.zeros(len(idx), dtype=np.int64)
        ucs[mine] = _be(buf, l4[mine] + 6, 2)
        elig &= (ulen == ip_end - l4) & (ulen > 8) & (ucs != 0)
    # checksums not yet known good are checked here (GRO validates them)
    vf = e.vflags[idx]
    trusted = (((vf & _CHECKED) != 0) | (e.csum_verdict[idx] == CsumVerdict.GOOD)) & elig
    check = elig & ~trusted
    if check.any():
        d = np.flatnonzero(check)
        r = (cs.range_sums(buf, l4[d], ip_end[d]) + lay.pseudo(buf)[d]) % np.uint64(0xFFFF)
        good = r == 0
        d4 = lay.v[d] == 4
        if d4.any():
            h = d[d4]
            good[d4] &= cs.range_sums(buf, l3[h], l3[h] + 20) == 0
        elig[d[~good]] = False
    pay = ip_end - l4 - thl
    if bad.any():
        e.error[idx[bad]] = reason[bad]
    result[idx[bad]] = GroResult.ERROR
    result[idx[mine & ~elig]] = GroResult.FLUSHED
    result[idx[elig]] = GroResult.ALONE
    c = np.flatnonzero(elig | breaker)
    if len(c) < 2:
        return batch, Outcome(result, ident, np.ones(n, dtype=np.int64))

    # ------------------------------------------------------------ per candidate
    rows = idx[c]
    cl3, cl4, cthl, cpay, cv = l3[c], l4[c], thl[c], pay[c], lay.v[c]
    c4 = cv == 4
    l3off = cl3 - base[c]
    # flow key columns (exact), hashed for the sort and checked after it
    ports = _be(buf, cl4, 4)
    w0 = _be(buf, cl3, 4)
    flowlabel = np.where(c4, 0, w0 & 0xFFFFF)
    keycols: list[I64] = [(cv << 40) | (l3off << 20) | flowlabel, ports]
    if c4.all():
        keycols.append((_be(buf, cl3 + 12, 4) << 32) | _be(buf, cl3 + 16, 4))
    else:
        for k in range(0, 32, 4):
            a4 = np.where(c4, cl3 + 12 + (k % 8 if k < 8 else 0), cl3 + 8 + k)
            col = _be(buf, a4, 4)
            if k >= 8:
                col = np.where(c4, 0, col)
            keycols.append(col)
    # IPv6 extension headers (hop-by-hop, routing, destination options): part of
    # the flow, as ipv6_gro_receive compares them
    ext_len = np.where(c4, 0, cl4 - cl3 - 40)
    if (ext_len > 0).any():
        keycols.append(ext_len)
        for k in range(0, int(ext_len.max()), 4):
            inside = ext_len > k
            col = _be(buf, np.where(inside, cl3 + 40 + k, cl3), 4)
            keycols.append(np.where(inside, col, -1))
    if (l3off > 0).any():
        mac_start = base[c]
        for k in range(0, int(l3off.max()), 4):
            inside = l3off >= k + 4
            col = _be(buf, np.where(inside, mac_start + k, mac_start), 4)
            keycols.append(np.where(inside, col, -1))
    h = np.zeros(len(c), dtype=np.uint64)
    for kc in keycols:
        h = h * np.uint64(0x9E3779B97F4A7C15) + kc.astype(np.uint64)
        h ^= h >> np.uint64(29)
    order = np.argsort(h, kind="stable")
    hs = h[order]
    same = np.zeros(len(c), dtype=np.bool_)
    same[1:] = hs[1:] == hs[:-1]
    for kc in keycols:
        ks = kc[order]
        if not bool((ks[1:][same[1:]] == ks[:-1][same[1:]]).all()):  # a hash collision
            order = np.lexsort((np.arange(len(c)), *reversed([k for k in keycols])))
            same[1:] = np.ones(len(c) - 1, dtype=np.bool_)
            for kc2 in keycols:
                ks2 = kc2[order]
                same[1:] &= ks2[1:] == ks2[:-1]
            break

    # sorted views
    o = order
    srows, sl3, sl4, sthl, spay, s4 = rows[o], cl3[o], cl4[o], cthl[o], cpay[o], c4[o]
    prev_pay = _shift(spay, -1)
    raw = same.copy()
    sbrk = breaker[c][o]
    raw &= ~sbrk & ~_shift(sbrk)
    raw &= (spay >= 1) & (prev_pay >= 1) & (spay <= prev_pay)
    # IP level: TTL / hop limit, TOS / traffic class, DF
    w2 = _be(buf, np.where(s4, sl3 + 8, sl3 + 4), 4) if s4.any() else _be(buf, sl3 + 4, 4)
    ttl = np.where(s4, w2 >> 24, w2 & 0xFF)
    tos = np.where(s4, _be(buf, sl3, 2) & 0xFF, (w0[o] >> 20) & 0xFF)
    w1 = np.where(s4, _be(buf, sl3 + 4, 4), 0)
    ipid = w1 >> 16
    df = (w1 >> 14) & 1
    raw &= (ttl == _shift(ttl)) & (tos == _shift(tos)) & (df == _shift(df))
    delta = np.where(s4, (ipid - _shift(ipid)) & 0xFFFF, 0)
    raw &= ~s4 | (delta == 1) | (delta == 0)  # incrementing or fixed IDs (any DF)
    if proto == IPPROTO_TCP:
        w3 = _be(buf, sl4 + 12, 4)
        flags = (w3 >> 16) & 0xFF
        mask = ~((TCP_CWR | TCP_FIN | TCP_PSH) << 16) & 0xFFFFFFFF
        raw &= (w3 & mask) == (_shift(w3) & mask)
        raw &= (flags & TCP_CWR) == 0
        raw &= (_shift(flags) & _CLOSE_FLAGS) == 0
        ack = _be(buf, sl4 + 8, 4)
        raw &= ack == _shift(ack)
        seq = _be(buf, sl4 + 4, 4)
        raw &= seq == ((_shift(seq) + prev_pay) & 0xFFFFFFFF)
        for k in range(20, int(sthl.max()), 4):
            has = sthl > k
            wk = _be(buf, np.where(has, sl4 + k, sl4), 4)
            raw &= ~has | (wk == _shift(wk))
    else:
        flags = np.zeros(len(c), dtype=np.int64)
    hdr_ip = sl4 + sthl - sl3  # L3 + L4 header bytes
    raw &= hdr_ip == _shift(hdr_ip)

    # ------------------------------------------------------------ runs
    start = ~raw
    chain = np.cumsum(start) - 1
    nchain = int(chain[-1]) + 1
    cstart = np.flatnonzero(start)
    pos = np.arange(len(c), dtype=np.int64) - cstart[chain]
    clen = np.bincount(chain, minlength=nchain)
    L = spay[cstart]  # chain's segment size (first's payload)
    is_last = pos == clen[chain] - 1
    # complex chains: a shorter segment before the last, or a change of ID mode
    shorter = ~start & (spay < L[chain]) & ~is_last
    mode_change = ~start & (pos >= 2) & (delta != _shift(delta))
    cplx = np.zeros(nchain, dtype=np.bool_)
    cplx[chain[shorter | mode_change]] = True
    if times_ns is not None and timeout_ns is not None:
        t = np.asarray(times_ns, dtype=np.int64)[srows]
        late = (t - t[cstart][chain]) > int(timeout_ns)
        cplx[chain[late]] = True
    else:
        t = np.zeros(len(c), dtype=np.int64)
    # simple chains: runs of K equal segments (the size and count limits)
    H = hdr_ip[cstart]
    K = np.maximum(1, np.minimum(limit, (MAX_IP_LEN - H) // np.maximum(L, 1)))
    run_in_chain = pos // K[chain]
    # a shorter last segment that would start a run of its own may still fit the previous
    lastshort = is_last & (pos > 0) & (pos % K[chain] == 0) & (spay < L[chain])
    fits = (K[chain] + 1 <= limit) & (H[chain] + K[chain] * L[chain] + spay <= MAX_IP_LEN)
    run_in_chain = np.where(lastshort & fits, run_in_chain - 1, run_in_chain)
    new_run = start | (run_in_chain != _shift(run_in_chain))
    if cplx.any():
        new_run = _complex_runs(
            new_run, chain, cplx, spay, delta, hdr_ip, flags, t, limit, timeout_ns, proto
        )
    run = np.cumsum(new_run) - 1
    nrun = int(run[-1]) + 1
    rcount = np.bincount(run, minlength=nrun)
    rfirst = np.flatnonzero(new_run)

    # ------------------------------------------------------------ results
    multi = rcount[run] >= 2
    head_c = new_run & multi
    follow_c = ~new_run
    result[srows[head_c]] = GroResult.HELD
    result[srows[follow_c]] = GroResult.MERGED
    follower = np.zeros(n, dtype=np.bool_)
    follower[srows[follow_c]] = True
    head_of = np.arange(n, dtype=np.int64)
    head_of[srows] = srows[rfirst[run]]
    keep = ~follower
    out_rows = np.flatnonzero(keep)
    out_pos = np.cumsum(keep) - 1
    out_index = out_pos[head_of]
    segs = np.ones(len(out_rows), dtype=np.int64)
    mr = np.flatnonzero(rcount >= 2)  # merged runs
    heads = srows[rfirst[mr]]
    segs[out_pos[heads]] = rcount[mr]
    run_pay = np.bincount(run, weights=spay, minlength=nrun).astype(np.int64)
    out = _build(
        batch,
        out_rows,
        out_pos,
        heads,
        rfirst[mr],
        rcount[mr],
        run_pay[mr],
        srows,
        spay,
        sl4 + sthl,
        proto,
    )
    _finish(
        out,
        out_pos[heads],
        rfirst[mr],
        rcount[mr],
        spay,
        sthl,
        flags,
        run,
        mr,
        batch,
        srows,
        proto,
        delta,
        s4,
    )
    return out, Outcome(result, out_index, segs)


def _assemble_native(
    batch: Batch, idx: I64, lay: cs.Layout, proto: int, limit: int
) -> tuple[Batch, Outcome] | None:
    """``assemble`` by the compiled kernel (``gro_plan`` / ``gro_build``): the merge
    rules packet by packet with a flow table, then one pass of copies, instead of
    the numpy passes below (whose fixed cost, ~0.4 ms a call, dominated small
    batches). None, having changed nothing, when there is no kernel or the batch
    holds a packet it leaves to numpy (see ``gro_plan`` in ``_kernel.c``); the
    results are the same either way (tests/soft/test_assemble_native.py)."""
    k = _native.kernel
    if k is None or not hasattr(k, "gro_plan"):
        return None
    n, m = len(batch), len(idx)
    e = batch.ext
    trusted = ((e.vflags[idx] & _CHECKED) != 0) | (e.csum_verdict[idx] == CsumVerdict.GOOD)
    result = np.empty(n, dtype=np.uint8)
    out_index = np.empty(n, dtype=np.int64)
    segs, out_rows, o_start, o_len, o_lo, o_hi, o_j = np.empty((7, n), dtype=np.int64)
    grp, hlen, pay, info = np.empty((4, m), dtype=np.int64)
    status, nout, total = k.gro_plan(
        batch.buf,
        batch.start,
        batch.length,
        batch.slot_lo,
        idx,
        lay.l3,
        lay.l4,
        lay.v,
        lay.proto,
        lay.reason,
        trusted.view(np.uint8),
        proto,
        limit,
        DEFAULT_TAILROOM,
        _ALIGN,
        result,
        out_index,
        segs,
        out_rows,
        o_start,
        o_len,
        o_lo,
        o_hi,
        o_j,
        grp,
        hlen,
        pay,
        info,
    )
    if status < 0:
        return None
    if status == 1:  # fewer than two candidates: nothing to merge, the batch as it is
        return batch, Outcome(result, np.arange(n, dtype=np.int64), np.ones(n, dtype=np.int64))
    rows = out_rows[:nout]
    out_buf = np.empty(total, dtype=np.uint8)
    out = Batch(out_buf, o_start[:nout], o_len[:nout], o_lo[:nout], o_hi[:nout], e.take(rows), 0)
    k.gro_build(
        batch.buf,
        batch.start,
        out_buf,
        o_start,
        o_len,
        out_rows,
        o_j,
        nout,
        idx,
        result,
        grp,
        hlen,
        pay,
        info,
        lay.l4,
        proto,
    )
    hp = np.flatnonzero(o_j[:nout] >= 0)  # the merged packets: their virtio form
    if len(hp):
        jh = o_j[hp]
        oe = out.ext
        v4 = lay.v[jh] == 4
        if proto == IPPROTO_TCP:
            gt = np.where(v4, int(GsoType.TCPV4), int(GsoType.TCPV6))
            gt = gt | np.where((info[jh] & 2) != 0, int(GsoType.ECN), 0)
        else:
            gt = np.full(len(hp), int(GsoType.UDP_L4))
        oe.gso_type[hp] = gt
        oe.gso_size[hp] = pay[jh]
        oe.hdr_len[hp] = hlen[jh]
        oe.segs[hp] = segs[hp]
        fixed = v4 & ((info[jh] & 1) != 0)
        oe.xflags[hp] = np.where(fixed, oe.xflags[hp] | _FIXED_ID, oe.xflags[hp])
        oe.vflags[hp] &= _NOT_DATA_VALID
        oe.csum_start[hp] = oe.l4_off[hp]
        oe.csum_offset[hp] = 16 if proto == IPPROTO_TCP else 6
        oe.vflags[hp] |= _NEEDS_CSUM
    return out, Outcome(result, out_index, segs[:nout].copy())


def _complex_runs(
    new_run: Mask,
    chain: I64,
    cplx: Mask,
    spay: I64,
    delta: I64,
    hdr_ip: I64,
    flags: I64,
    t: I64,
    limit: int,
    timeout_ns: int | None,
    proto: int,
) -> Mask:
    """Run starts of the complex chains, by the kernel's state machine, packet by packet."""
    out = new_run.copy()
    members = np.flatnonzero(cplx[chain])
    ml = members.tolist()
    pay = spay[members].tolist()
    dl = delta[members].tolist()
    hl = hdr_ip[members].tolist()
    tl = t[members].tolist()
    chl = chain[members].tolist()
    prev_chain = -1
    mss = cnt = size = mode = t0 = 0
    closed = True
    for k, i in enumerate(ml):
        if chl[k] != prev_chain:  # chain start: always a new run
            prev_chain = chl[k]
            cont = False
        else:
            cont = (
                not closed
                and pay[k] <= mss
                and (cnt < 2 or dl[k] == mode)
                and size + pay[k] <= MAX_IP_LEN
                and cnt + 1 <= limit
                and (timeout_ns is None or tl[k] - t0 <= timeout_ns)
            )
        if cont:
            out[i] = False
            if cnt == 1:
                mode = dl[k]
            cnt += 1
            size += pay[k]
            closed = pay[k] < mss
        else:
            out[i] = True
            mss, cnt, size, t0 = pay[k], 1, hl[k] + pay[k], tl[k]
            closed = False
    return out


def _build(
    batch: Batch,
    out_rows: I64,
    out_pos: I64,
    heads: I64,
    hfirst: I64,
    hcount: I64,
    hpay: I64,
    srows: I64,
    spay: I64,
    s_hend: I64,
    proto: int,
) -> Batch:
    """Copy pass-through packets and lay out the merged ones (headers + payloads)."""
    buf = batch.buf
    n_out = len(out_rows)
    length = batch.length[out_rows].copy()
    hdr_len = np.zeros(len(heads), dtype=np.int64)
    hdr_len[:] = s_hend[hfirst] - batch.start[heads]  # from packet start to end of L4 header
    length[out_pos[heads]] = hdr_len + hpay
    head = batch.start[out_rows] - batch.slot_lo[out_rows]
    tail = np.full(n_out, DEFAULT_TAILROOM, dtype=np.int64)
    sizes = _round_up(head + length + tail)
    slot_hi = np.cumsum(sizes)
    slot_lo = slot_hi - sizes
    start = slot_lo + head
    out_buf = np.empty(int(slot_hi[-1]), dtype=np.uint8)
    ext = batch.ext.take(out_rows)
    out = Batch(out_buf, start, length, slot_lo, slot_hi, ext, 0)
    is_head = np.zeros(n_out, dtype=np.bool_)
    is_head[out_pos[heads]] = True
    pt = np.flatnonzero(~is_head)
    if len(pt):
        copy_ranges(out_buf, start[pt], buf, batch.start[out_rows[pt]], length[pt])
    # merged packets: header of the first, then the payloads
    hp = out_pos[heads]
    copy_ranges(out_buf, start[hp], buf, batch.start[heads], hdr_len)
    # without the compiled kernel, a uniform batch's payloads go in a few numpy copies
    # (a byte-index gather would be ~15x slower); with it, one memmove a segment straight
    # into place is 4x faster than those copies (no 3 MB temporary, whose fresh pages
    # fault on every call)
    if (
        _native.kernel is None
        and batch.stride > 0
        and _payloads_uniform(batch, out, hp, heads, hfirst, hcount, hdr_len, srows, spay, s_hend)
    ):
        return out
    # each merged packet's payloads back to back after its header: one range a segment
    hc = np.asarray(hcount, dtype=np.int64)
    run_start = np.cumsum(hc) - hc
    member = np.repeat(np.asarray(hfirst, dtype=np.int64), hc) + (
        np.arange(int(hc.sum()), dtype=np.int64) - np.repeat(run_start, hc)
    )
    pl = spay[member].astype(np.int64)
    before = np.cumsum(pl) - pl  # payload bytes before each segment, all runs ...
    within = before - np.repeat(before[run_start], hc)  # ... and within its own run
    dst = np.repeat(start[hp] + hdr_len, hc) + within
    copy_ranges(out_buf, dst, buf, s_hend[member], pl)
    return out


def _payloads_uniform(
    batch: Batch,
    out: Batch,
    hp: I64,
    heads: I64,
    hfirst: I64,
    hcount: I64,
    hdr_len: I64,
    srows: I64,
    spay: I64,
    s_hend: I64,
) -> bool:
    """Payloads of all merged packets when the full-size segments share their place in
    the slot and their size: one row gather for all, one slice copy per super-packet."""
    buf, out_buf, start = batch.buf, out.buf, out.start
    if len(heads) == 0:
        return True
    m = spay[hfirst]
    if not (m == m[0]).all():
        return False
    m0 = int(m[0])
    run_of = np.repeat(np.arange(len(heads)), hcount)
    tot = int(hcount.sum())
    rank = np.arange(tot, dtype=np.int64) - np.repeat(np.cumsum(hcount) - hcount, hcount)
    members = np.repeat(hfirst, hcount) + rank  # sorted-order index of every member
    lens = spay[members]
    full = lens == m0
    col = s_hend[members] - batch.slot_lo[srows[members]]
    c0 = int(col[0])
    if not (col[full] == c0).all():
        return False
    # a run's members are full-size but (maybe) the last
    is_last = np.zeros(len(members), dtype=np.bool_)
    is_last[np.cumsum(hcount) - 1] = True
    if not (full | is_last).all():
        return False
    rows = srows[members[full]]
    pay = batch.matrix()[rows, c0 : c0 + m0]  # (full members, m0), contiguous
    nfull = np.bincount(run_of[full], minlength=len(heads))
    offs = np.cumsum(nfull) - nfull
    d0 = start[hp] + hdr_len
    flat = pay.reshape(-1)
    for d, a, nf in zip(d0.tolist(), offs.tolist(), nfull.tolist(), strict=True):
        out_buf[d : d + nf * m0] = flat[a * m0 : (a + nf) * m0]
    short = is_last & ~full
    if short.any():
        sm = members[short]
        dst = d0[run_of[short]] + nfull[run_of[short]] * m0
        copy_ranges(out_buf, dst, buf, s_hend[sm], spay[sm])
    return True


def _finish(
    out: Batch,
    hp: I64,
    hfirst: I64,
    hcount: I64,
    spay: I64,
    sthl: I64,
    flags: I64,
    run: I64,
    mr: I64,
    batch: Batch,
    srows: I64,
    proto: int,
    delta: I64,
    s4: Mask,
) -> None:
    """Header fields and extension of the merged packets (the TUN/virtio form)."""
    if len(hp) == 0:
        return
    e = out.ext
    b = out.buf
    st = out.start[hp]
    l3o = e.l3_off[hp].astype(np.int64)
    l4o = e.l4_off[hp].astype(np.int64)
    ln = out.length[hp]
    v4 = e.l3_proto[hp] == 4
    if v4.any():
        _put16(b, st[v4] + l3o[v4] + 2, ln[v4] - l3o[v4])
    if (~v4).any():
        _put16(b, st[~v4] + l3o[~v4] + 4, ln[~v4] - l3o[~v4] - 40)
    p4 = st + l4o
    last = hfirst + hcount - 1
    if proto == IPPROTO_TCP:
        # FIN/PSH of the merged segments (only the last can carry them)
        b[p4 + 13] = b[p4 + 13] | (flags[last] & (TCP_FIN | TCP_PSH)).astype(np.uint8)
        first_flags = flags[hfirst]
        gt = np.where(v4, int(GsoType.TCPV4), int(GsoType.TCPV6))
        gt = gt | np.where((first_flags & TCP_CWR) != 0, int(GsoType.ECN), 0)
    else:
        _put16(b, p4 + 4, ln - l4o)
        gt = np.full(len(hp), int(GsoType.UDP_L4))
    # fixed IPv4 IDs: the second segment had the first's ID
    fixed = v4 & s4[hfirst] & (delta[hfirst + 1] == 0)
    e.gso_type[hp] = gt
    e.gso_size[hp] = spay[hfirst]
    e.hdr_len[hp] = l4o + sthl[hfirst]
    e.segs[hp] = hcount
    e.xflags[hp] = np.where(fixed, e.xflags[hp] | _FIXED_ID, e.xflags[hp])
    e.vflags[hp] &= _NOT_DATA_VALID
    # the partial form (virtio NEEDS_CSUM): IPv4 header checksum complete, the L4
    # checksum field holding the folded pseudo-header sum (as tcp4_gro_complete)
    l3 = st + l3o
    if v4.any():
        h4 = l3[v4]
        _put16(b, h4 + 10, np.zeros(len(h4), dtype=np.int64))
        hs = cs.range_sums(b, h4, h4 + 20).astype(np.int64)
        _put16(b, h4 + 10, (0xFFFF - hs) % 0xFFFF)
    asum = np.zeros(len(hp), dtype=np.int64)
    if v4.any():
        asum[v4] = cs.range_sums(b, l3[v4] + 12, l3[v4] + 20).astype(np.int64)
    if (~v4).any():
        asum[~v4] = cs.range_sums(b, l3[~v4] + 8, l3[~v4] + 40).astype(np.int64)
    l4len = ln - l4o
    ps = (asum + proto + (l4len & 0xFFFF) + (l4len >> 16)) % 0xFFFF
    field = 16 if proto == IPPROTO_TCP else 6
    _put16(b, p4 + field, np.where(ps == 0, 0xFFFF, ps))
    e.csum_start[hp] = l4o
    e.csum_offset[hp] = field
    e.vflags[hp] |= _NEEDS_CSUM


class AssembleTask(SoftTask):
    """TCP (``Task.TCP_ASSEMBLE``) or UDP (``Task.UDP_ASSEMBLE``) assembly."""

    def __init__(self, task: Task, max_segs: int | None = None, csum: str = "partial") -> None:
        if task not in (Task.TCP_ASSEMBLE, Task.UDP_ASSEMBLE):
            raise ConfigError(f"assemble: not an assembly task: {task!r}")
        cap = TCP_MAX_SEGS if task is Task.TCP_ASSEMBLE else UDP_GRO_CNT_MAX
        if max_segs is not None and not 1 <= int(max_segs) <= cap:
            raise ConfigError(f"{task.kebab}: max_segs must be 1..{cap}, not {max_segs}")
        if csum not in ("partial", "full"):
            raise ConfigError(f"{task.kebab}: csum must be 'partial' or 'full', not {csum!r}")
        self.csum = csum
        self.task = task
        self.max_segs = int(max_segs) if max_segs is not None else cap
        self.proto = IPPROTO_TCP if task is Task.TCP_ASSEMBLE else IPPROTO_UDP
        #: outcome of the last ``process`` call (per input packet)
        self.last_outcome: Outcome | None = None

    def process(self, batch: Batch, sel: Mask) -> Batch:
        """Assemble, flushing everything at the end of the batch."""
        out, oc = assemble(batch, sel, self.proto, max_segs=self.max_segs)
        self.last_outcome = oc
        return self._csum(out)

    def process_timed(self, batch: Batch, sel: Mask, times_ns: I64, timeout_ns: int) -> Batch:
        """Assemble with packet arrival times (an injected clock) and a flush time-out."""
        out, oc = assemble(
            batch,
            sel,
            self.proto,
            max_segs=self.max_segs,
            times_ns=times_ns,
            timeout_ns=timeout_ns,
        )
        self.last_outcome = oc
        return self._csum(out)

    def _csum(self, out: Batch) -> Batch:
        """``csum="full"``: complete the merged packets' checksums (for captures)."""
        if self.csum == "full":
            merged = out.ext.segs >= 2
            if merged.any():
                cs.fill(out, merged)
                out.ext.csum_verdict[merged] = CsumVerdict.GOOD
        return out

    def describe(self) -> dict[str, object]:
        return {"task": self.task.kebab, "max_segs": self.max_segs}


def _factory(task: Task) -> Any:
    def make(max_segs: int | None = None, csum: str = "partial", **options: Any) -> AssembleTask:
        """Options: ``max_segs`` (segments per super-packet), ``csum`` ("partial", the
        TUN/virtio form with NEEDS_CSUM; "full": checksums completed)."""
        if options:
            raise ConfigError(f"{task.kebab}: unknown options {', '.join(sorted(options))}")
        return AssembleTask(task, max_segs, csum)

    return make


register(Task.TCP_ASSEMBLE, _factory(Task.TCP_ASSEMBLE))
register(Task.UDP_ASSEMBLE, _factory(Task.UDP_ASSEMBLE))

__all__: Sequence[str] = ("AssembleTask", "GroResult", "Outcome", "assemble")
