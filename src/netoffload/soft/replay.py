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
``check`` before authentication and ``update`` with the authenticated numbers
afterwards; ``check_and_update`` does both at once (DoS filtering).

Sans-IO: no clock, no I/O. Sequence numbers are 64-bit (ESN); 32-bit numbers
work unchanged.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

import numpy as np
from numpy.typing import NDArray

from netoffload.errors import ConfigError

U64 = NDArray[np.uint64]
U8 = NDArray[np.uint8]

MIN_WINDOW = 64
MAX_WINDOW = 4096


class ReplayVerdict(enum.IntEnum):
    OK = 0
    REPLAY = 1
    TOO_OLD = 2


OK = ReplayVerdict.OK
REPLAY = ReplayVerdict.REPLAY
TOO_OLD = ReplayVerdict.TOO_OLD

_ONE = np.uint64(1)
_SIX = np.uint64(6)
_M63 = np.uint64(63)


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
        order = np.argsort(seqs, kind="stable")
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
    """Anti-replay windows of many security associations, created on first use."""

    def __init__(self, size: int = 1024) -> None:
        self.size = _check_size(size)
        self.windows: dict[int, ReplayWindow] = {}

    def window(self, sa: int) -> ReplayWindow:
        w = self.windows.get(sa)
        if w is None:
            w = self.windows[sa] = ReplayWindow(self.size)
        return w

    def check_and_update(self, sas: NDArray[np.integer] | Iterable[int], seqs: U64) -> U8:
        """Per-packet verdicts for (sa, seq) pairs, each SA's packets in batch order."""
        sa = np.asarray(sas, dtype=np.int64).reshape(-1)
        q = np.asarray(seqs, dtype=np.uint64).reshape(-1)
        if len(sa) != len(q):
            raise ValueError("sas and seqs differ in length")
        out = np.zeros(len(q), dtype=np.uint8)
        if len(q) == 0:
            return out
        uniq = np.unique(sa)
        if len(uniq) == 1:
            return self.window(int(uniq[0])).check_and_update(q)
        order = np.argsort(sa, kind="stable")
        ss = sa[order]
        bounds = np.flatnonzero(np.diff(ss)) + 1
        starts = np.concatenate(([0], bounds))
        ends = np.concatenate((bounds, [len(ss)]))
        for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
            rows = order[a:b]
            out[rows] = self.window(int(ss[a])).check_and_update(q[rows])
        return out
