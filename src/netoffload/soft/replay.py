"""Sliding anti-replay window (RFC 4303 section 3.4.3, bitmap as RFC 6479).

One ``ReplayWindow`` per security association. The window remembers the
highest sequence number accepted (``top``) and, in a ring of 64-bit blocks
(``ceil(size / 64) + 1`` of them, so that advancing ``top`` only clears whole
blocks, as RFC 6479 describes), which of the ``size`` numbers ending at
``top`` have been seen. A sequence number is

* ``OK`` when it is above ``top`` or inside the window and not yet seen,
* ``REPLAY`` when it is inside the window and already seen,
* ``TOO_OLD`` when it is ``size`` or more below ``top`` — and sequence number 0,
  which RFC 4303 senders never use.

Verdicts are computed for a whole batch of sequence numbers at once, with the
result a packet-by-packet walk in batch order would give: a duplicate inside one
batch is a ``REPLAY``, a packet made too old by a later one earlier in the
batch is ``TOO_OLD``. How: the running maximum of the numbers before each packet
is its ``top``; a packet above it is new; a packet inside its window is a
replay when the bitmap had it or an earlier packet of the batch carried the same
number (that earlier one was then accepted or itself a replay).

For ESP, where the window may only move after the ICV has been checked, use
``precheck`` before authentication (it changes nothing, and judges each number
on its own, so a forged packet cannot shadow the genuine one) and ``update``
with the authenticated numbers afterwards. ``check_and_update`` does both at
once: only for numbers that are already authenticated. ``ReplayTable`` has the
same two sides for many SAs: ``precheck`` and ``record``.

Sans-IO: no clock, no I/O. Sequence numbers are 64-bit (ESN); 32-bit numbers
work unchanged.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

import numpy as np
from numpy.typing import NDArray

from netoffload._enum import NUMPY_PLAIN
from netoffload.errors import ConfigError

U64 = NDArray[np.uint64]
U8 = NDArray[np.uint8]

MIN_WINDOW = 64
MAX_WINDOW = 4096


class ReplayVerdict(enum.IntEnum):
    __array_ufunc__ = NUMPY_PLAIN  # numpy at int speed (see _enum)
    OK = 0
    REPLAY = 1
    TOO_OLD = 2


OK = ReplayVerdict.OK
REPLAY = ReplayVerdict.REPLAY
TOO_OLD = ReplayVerdict.TOO_OLD

_ONE = np.uint64(1)
_SIX = np.uint64(6)
_M63 = np.uint64(63)


def sort_groups(
    keys: NDArray[np.integer], stable: bool = True
) -> tuple[NDArray[np.int64], NDArray[np.bool_]]:
    """An argsort of integer ``keys`` and where a new key starts in sorted order.

    ``stable``: the order is ``np.argsort(keys, kind="stable")`` exactly, but
    faster: the default (SIMD) argsort, then only equal keys put back in batch
    order (``in_batch_order``). Not ``stable``: equal keys in any order.
    """
    n = len(keys)
    order = np.argsort(keys).astype(np.int64, copy=False)
    newgrp = np.ones(n, dtype=np.bool_)
    if n > 1:
        sk = keys[order]
        np.not_equal(sk[1:], sk[:-1], out=newgrp[1:])
    return (in_batch_order(order, newgrp) if stable else order), newgrp


def in_batch_order(order: NDArray[np.int64], newgrp: NDArray[np.bool_]) -> NDArray[np.int64]:
    """The same groups (``newgrp``: a group starts) with each group's members in
    ascending position: one sort of ``(group << 32) | position``."""
    n = len(order)
    if n < 2 or newgrp.all():
        return order
    if n > 0xFFFFFFFF:  # cannot pack: sort the positions of each group
        grp = np.cumsum(newgrp)
        return order[np.lexsort((order, grp))].astype(np.int64, copy=False)
    comp = np.empty(n, dtype=np.uint64)
    comp[0] = 0
    np.cumsum(newgrp[1:], out=comp[1:])
    comp <<= np.uint64(32)
    comp |= order.astype(np.uint64)
    comp.sort()
    comp &= np.uint64(0xFFFFFFFF)
    return comp.astype(np.int64)


def stable_argsort(keys: NDArray[np.integer]) -> NDArray[np.int64]:
    """``np.argsort(keys, kind="stable")`` for integer keys, by ``sort_groups``."""
    return sort_groups(keys)[0]


def _check_size(size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, int):
        raise ConfigError(f"anti-replay window size must be an integer, got {size!r}")
    if not MIN_WINDOW <= size <= MAX_WINDOW:
        raise ConfigError(f"anti-replay window size {size} out of range {MIN_WINDOW}..{MAX_WINDOW}")
    return size


class ReplayWindow:
    """The anti-replay window of one security association."""

    __slots__ = ("blocks", "nblocks", "size", "top")

    def __init__(self, size: int = 1024) -> None:
        self.size = _check_size(size)
        self.nblocks = (self.size + 63) // 64 + 1
        self.blocks = np.zeros(self.nblocks, dtype=np.uint64)
        #: highest sequence number accepted so far (0: none yet)
        self.top = 0

    def __repr__(self) -> str:
        return f"ReplayWindow(size={self.size}, top={self.top})"

    # ------------------------------------------------------------ internals
    def _seen(self, seqs: U64) -> NDArray[np.bool_]:
        """Bitmap lookup (only meaningful for numbers inside the current window)."""
        blk = (seqs >> _SIX) % np.uint64(self.nblocks)
        bit = seqs & _M63
        return np.asarray(((self.blocks[blk.astype(np.int64)] >> bit) & _ONE) != 0)

    def _verdicts(self, seqs: U64) -> U8:
        n = len(seqs)
        out = np.zeros(n, dtype=np.uint8)
        if n == 0:
            return out
        top0 = np.uint64(self.top)
        prev = np.empty(n, dtype=np.uint64)
        prev[0] = top0
        if n > 1:
            np.maximum.accumulate(seqs[:-1], out=prev[1:])
            np.maximum(prev, top0, out=prev)
        new = seqs > prev
        # inside the window: prev - seq < size (no underflow: seq <= prev here)
        diff = np.where(new, np.uint64(0), prev - np.where(new, prev, seqs))
        old = ~new & (diff >= np.uint64(self.size))
        old |= seqs == 0
        inwin = ~new & ~old
        out[old] = TOO_OLD
        if not inwin.any():  # all in order or too old: nothing to look up
            return out
        # earlier duplicate inside the batch
        order = stable_argsort(seqs)
        s = seqs[order]
        dup_sorted = np.zeros(n, dtype=np.bool_)
        dup_sorted[1:] = s[1:] == s[:-1]
        dup = np.empty(n, dtype=np.bool_)
        dup[order] = dup_sorted
        # the bitmap knows numbers up to top0 inside top0's window
        known = inwin & (seqs <= top0)
        if known.any():
            kq = seqs[known]
            inbm = (top0 - kq) < np.uint64(self.size)
            hit = np.zeros(len(kq), dtype=np.bool_)
            hit[inbm] = self._seen(kq[inbm])
            seen = np.zeros(n, dtype=np.bool_)
            seen[known] = hit
        else:
            seen = np.zeros(n, dtype=np.bool_)
        replay = inwin & (dup | seen)
        out[replay] = REPLAY
        return out

    # ------------------------------------------------------------------- API
    def check(self, seqs: U64 | Iterable[int]) -> U8:
        """Verdicts (``ReplayVerdict`` values, uint8) without moving the window."""
        return self._verdicts(np.asarray(seqs, dtype=np.uint64).reshape(-1))

    def precheck(self, seqs: U64 | Iterable[int]) -> U8:
        """Verdicts against the window as it stands, each number on its own (no
        duplicates or running maximum inside the batch): the check RFC 4303 does
        before authentication, which must not let a forged packet shadow the
        genuine one with the same number later in the batch."""
        q = np.asarray(seqs, dtype=np.uint64).reshape(-1)
        out = np.zeros(len(q), dtype=np.uint8)
        top = np.uint64(self.top)
        below = q <= top
        dist = np.where(below, top - np.where(below, q, top), np.uint64(0))
        old = (q == 0) | (below & (dist >= np.uint64(self.size)))
        out[old] = TOO_OLD
        known = below & ~old
        if known.any():
            seen = np.zeros(len(q), dtype=np.bool_)
            seen[known] = self._seen(q[known])
            out[seen] = REPLAY
        return out

    def update(self, seqs: U64 | Iterable[int]) -> None:
        """Record accepted (authenticated) sequence numbers: advance and mark."""
        q = np.asarray(seqs, dtype=np.uint64).reshape(-1)
        q = q[q != 0]
        if len(q) == 0:
            return
        new_top = max(self.top, int(q.max()))
        if new_top > self.top:
            old_blk = self.top >> 6
            new_blk = new_top >> 6
            steps = new_blk - old_blk
            if steps >= self.nblocks:
                self.blocks[:] = 0
            elif steps > 0:
                idx = (np.arange(old_blk + 1, new_blk + 1, dtype=np.int64)) % self.nblocks
                self.blocks[idx] = 0
            self.top = new_top
        keep = (np.uint64(self.top) - q) < np.uint64(self.size)
        q = q[keep]
        if len(q):
            blk = ((q >> _SIX) % np.uint64(self.nblocks)).astype(np.int64)
            bits = _ONE << (q & _M63)
            np.bitwise_or.at(self.blocks, blk, bits)

    def check_and_update(self, seqs: U64 | Iterable[int]) -> U8:
        """Verdicts for the batch in order, and accept the ``OK`` ones."""
        q = np.asarray(seqs, dtype=np.uint64).reshape(-1)
        v = self._verdicts(q)
        self.update(q[v == OK])
        return v


class ReplayTable:
    """Anti-replay windows of many security associations, vectorised across them.

    SAs are created on first use (up to ``max_sas``; beyond that the SAs seen
    least recently are forgotten and start afresh). State lives in arrays: one
    ``top`` per SA and a ``(SAs, blocks)`` bitmap, so a batch mixing thousands of
    SAs costs a few sorts, not a loop per SA. Verdicts are those of one
    ``ReplayWindow`` per SA fed each SA's packets in batch order.
    """

    def __init__(self, size: int = 1024, max_sas: int = 1 << 20) -> None:
        self.size = _check_size(size)
        self.nblocks = (self.size + 63) // 64 + 1
        self.max_sas = max_sas
        self.ids = np.zeros(0, dtype=np.int64)  # sorted SA ids
        self.tops = np.zeros(0, dtype=np.uint64)
        self.bits = np.zeros((0, self.nblocks), dtype=np.uint64)
        self.used = np.zeros(0, dtype=np.int64)  # last batch number that touched the SA
        self._batch = 0

    def __len__(self) -> int:
        return len(self.ids)

    def top(self, sa: int) -> int:
        """Highest accepted sequence number of ``sa`` (0: none, or unknown SA)."""
        i = int(np.searchsorted(self.ids, sa))
        return int(self.tops[i]) if i < len(self.ids) and self.ids[i] == sa else 0

    def _slots(self, uniq: NDArray[np.int64]) -> NDArray[np.int64]:
        pos = np.searchsorted(self.ids, uniq)
        cl = np.minimum(pos, max(len(self.ids) - 1, 0))
        found = (
            (pos < len(self.ids)) & (self.ids[cl] == uniq)
            if len(self.ids)
            else (np.zeros(len(uniq), dtype=np.bool_))
        )
        if not found.all():
            new = uniq[~found]
            self.used[pos[found]] = self._batch  # SAs of this batch are never forgotten
            drop = len(self.ids) + len(new) - self.max_sas
            if drop > 0:  # forget the SAs used least recently
                old = np.flatnonzero(self.used < self._batch)
                gone = old[np.argsort(self.used[old], kind="stable")[:drop]]
                keep = np.setdiff1d(np.arange(len(self.ids)), gone)
                self.ids, self.tops = self.ids[keep], self.tops[keep]
                self.bits, self.used = self.bits[keep], self.used[keep]
            at = np.searchsorted(self.ids, new)
            self.ids = np.insert(self.ids, at, new)
            self.tops = np.insert(self.tops, at, np.zeros(len(new), dtype=np.uint64))
            self.bits = np.insert(self.bits, at, np.zeros(self.nblocks, dtype=np.uint64), axis=0)
            self.used = np.insert(self.used, at, np.zeros(len(new), dtype=np.int64))
            pos = np.searchsorted(self.ids, uniq)
        return np.asarray(pos, dtype=np.int64)

    def precheck(self, sas: NDArray[np.integer] | Iterable[int], seqs: U64) -> U8:
        """Verdicts against the windows as they stand, each (sa, seq) on its own,
        changing nothing (no SA is created either: an unknown SA's numbers are OK).
        The check before authentication; see ``ReplayWindow.precheck``."""
        sa = np.asarray(sas, dtype=np.int64).reshape(-1)
        q = np.asarray(seqs, dtype=np.uint64).reshape(-1)
        if len(sa) != len(q):
            raise ValueError("sas and seqs differ in length")
        out = np.zeros(len(q), dtype=np.uint8)
        if len(q) == 0 or len(self.ids) == 0:
            return out
        pos = np.minimum(np.searchsorted(self.ids, sa), len(self.ids) - 1)
        known = self.ids[pos] == sa
        slot = pos[known]
        kq = q[known]
        top = self.tops[slot]
        below = kq <= top
        dist = np.where(below, top - np.where(below, kq, top), np.uint64(0))
        old = (kq == 0) | (below & (dist >= np.uint64(self.size)))
        v = np.zeros(len(kq), dtype=np.uint8)
        v[old] = TOO_OLD
        look = below & ~old
        if look.any():
            lq = kq[look]
            blk = ((lq >> _SIX) % np.uint64(self.nblocks)).astype(np.int64)
            word = self.bits[slot[look], blk]
            seen = np.zeros(len(kq), dtype=np.bool_)
            seen[look] = ((word >> (lq & _M63)) & _ONE) != 0
            v[seen] = REPLAY
        out[known] = v
        return out

    def record(self, sas: NDArray[np.integer] | Iterable[int], seqs: U64) -> U8:
        """Accept authenticated (sa, seq) pairs, each SA's in batch order; their
        verdicts (a duplicate among them is a REPLAY and is not recorded twice)."""
        return self.check_and_update(sas, seqs)

    def check_and_update(self, sas: NDArray[np.integer] | Iterable[int], seqs: U64) -> U8:
        """Per-packet verdicts for (sa, seq) pairs, each SA's packets in batch order,
        and the ``OK`` ones accepted: only for authenticated numbers (``record``)."""
        sa = np.asarray(sas, dtype=np.int64).reshape(-1)
        q = np.asarray(seqs, dtype=np.uint64).reshape(-1)
        if len(sa) != len(q):
            raise ValueError("sas and seqs differ in length")
        n = len(q)
        out = np.zeros(n, dtype=np.uint8)
        if n == 0:
            return out
        self._batch += 1
        # packets by SA, each SA's in batch order; slots ascend with SA ids
        order, first = sort_groups(sa)
        starts = np.flatnonzero(first)
        slot_of = self._slots(sa[order[starts]])
        self.used[slot_of] = self._batch
        gid = np.cumsum(first) - 1
        ss = slot_of[gid]
        sq = q[order]
        top0 = self.tops[ss]
        # exclusive running maximum per SA, through one key: (group, seq - group base)
        base = np.minimum(np.minimum.reduceat(sq, starts), self.tops[slot_of])
        rel = sq - base[gid]
        rel_top0 = top0 - base[gid]
        span = int(max(rel.max(), rel_top0.max()))
        if span >= 1 << 40 or len(starts) >= 1 << 23:
            # enormous jumps inside one batch: one SA at a time
            for a, b in zip(starts.tolist(), [*starts[1:].tolist(), n], strict=True):
                rows = order[a:b]
                out[rows] = self._one(int(ss[a]), q[rows])
            return out
        key = (gid.astype(np.uint64) << np.uint64(40)) | rel
        acc = np.maximum.accumulate(key)
        prev_key = np.empty(n, dtype=np.uint64)
        prev_key[1:] = acc[:-1]
        g40 = gid.astype(np.uint64) << np.uint64(40)
        prev_key = np.where(first, g40 | rel_top0, np.maximum(prev_key, g40 | rel_top0))
        prev = (prev_key & np.uint64((1 << 40) - 1)) + base[gid]
        new = sq > prev
        old = ~new & ((prev - np.where(new, prev, sq)) >= np.uint64(self.size))
        old |= sq == 0
        inwin = ~new & ~old
        v = np.zeros(n, dtype=np.uint8)
        v[old] = TOO_OLD
        if inwin.any():
            o2 = stable_argsort(key)
            k2 = key[o2]
            d2 = np.zeros(n, dtype=np.bool_)
            d2[1:] = k2[1:] == k2[:-1]
            dup = np.empty(n, dtype=np.bool_)
            dup[o2] = d2
            known = inwin & (sq <= top0)
            seen = np.zeros(n, dtype=np.bool_)
            if known.any():
                kq = sq[known]
                blk = ((kq >> _SIX) % np.uint64(self.nblocks)).astype(np.int64)
                word = self.bits[ss[known], blk]
                seen[known] = ((word >> (kq & _M63)) & _ONE) != 0
            v[inwin & (dup | seen)] = REPLAY
        out[order] = v
        self._update(ss[v == OK], sq[v == OK])
        return out

    def _one(self, slot: int, q: U64) -> U8:
        w = ReplayWindow(self.size)
        w.top = int(self.tops[slot])
        w.blocks = self.bits[slot].copy()
        v = w.check_and_update(q)
        self.tops[slot] = np.uint64(w.top)
        self.bits[slot] = w.blocks
        return v

    def _update(self, slots: NDArray[np.int64], q: U64) -> None:
        """Accept numbers ``q`` of SAs ``slots`` (sorted)."""
        if len(q) == 0:
            return
        uslot = slots[np.concatenate(([True], slots[1:] != slots[:-1]))]
        old = self.tops[uslot].copy()
        np.maximum.at(self.tops, slots, q)
        new = self.tops[uslot]
        moved = new > old
        if moved.any():
            us, ob, nb = uslot[moved], old[moved] >> _SIX, new[moved] >> _SIX
            steps = (nb - ob).astype(np.float64)  # may exceed int64 for huge jumps
            nbk = self.nblocks
            jj = np.arange(nbk, dtype=np.int64)
            first_cleared = ((ob + _ONE) % np.uint64(nbk)).astype(np.int64)
            relj = (jj[None, :] - first_cleared[:, None]) % nbk  # non-negative
            clear = relj.astype(np.float64) < steps[:, None]
            rows = self.bits[us]
            rows[clear] = 0
            self.bits[us] = rows
        keep = (self.tops[slots] - q) < np.uint64(self.size)
        s2, q2 = slots[keep], q[keep]
        if len(q2):
            blk = ((q2 >> _SIX) % np.uint64(self.nblocks)).astype(np.int64)
            np.bitwise_or.at(self.bits, (s2, blk), _ONE << (q2 & _M63))
