"""The receive-counter window of one WireGuard keypair (RFC 6479 style, whitepaper 5.4.6).

Counters start at 0 and only those below ``REJECT_AFTER_MESSAGES`` are ever
valid. The window remembers the highest counter accepted (``top``) and which
of the ``size`` counters ending at ``top`` were seen; a counter is acceptable
when it is above ``top``, or within the window and not yet seen. Before any
counter was accepted, every valid counter is acceptable (``top`` is 0 and
nothing is marked, so counter 0 is too).

``size`` defaults to 8128, the window of the wireguard-go installed here (a
ring of 128 64-bit blocks less one block, the same as the Linux module's
8192 - 64): enough for a batched, reordering data path.

The bitmap is one Python integer, bit ``i`` standing for ``top - i``:
accepting a counter above ``top`` shifts it left; ``check_many`` looks bits up
in a numpy copy of it made once per change of the window.

``check``/``check_many`` change nothing (run them before authentication);
``update`` records an authenticated counter.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from netoffload.errors import ConfigError
from netoffload.tunnel.timers import REJECT_AFTER_MESSAGES

WINDOW_SIZE = 8128
_LIMIT = np.uint64(REJECT_AFTER_MESSAGES)
#: ``update_many`` of at most this many counters loops over ``update`` (cheaper)
_SCALAR_MAX = 8


class ReplayWindow:
    """Anti-replay window of one keypair's receive counters."""

    __slots__ = ("_bits", "_cache", "_mask", "size", "top")

    def __init__(self, size: int = WINDOW_SIZE) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or not 64 <= size <= 1 << 16:
            raise ConfigError(f"replay window size must be an integer 64..65536, got {size!r}")
        self.size = size
        self._mask = (1 << size) - 1
        self._bits = 0
        self.top = 0
        self._cache: NDArray[np.bool_] | None = None

    def __repr__(self) -> str:
        return f"ReplayWindow(size={self.size}, top={self.top})"

    def check(self, counter: int) -> bool:
        """``counter`` would be accepted now (no state change)."""
        counter = int(counter)  # (a numpy integer would not shift a wide bitmap)
        if not 0 <= counter < REJECT_AFTER_MESSAGES:
            return False
        if counter > self.top:
            return True
        d = self.top - counter
        return d < self.size and not (self._bits >> d) & 1

    def update(self, counter: int) -> bool:
        """Accept and record ``counter``; False (nothing recorded) if it is a replay,
        too old, or out of range."""
        counter = int(counter)
        if not 0 <= counter < REJECT_AFTER_MESSAGES:
            return False
        top = self.top
        if counter > top:
            s = counter - top
            self._bits = ((self._bits << s) | 1) & self._mask if s < self.size else 1
            self.top = counter
        else:
            d = top - counter
            if d >= self.size or (self._bits >> d) & 1:
                return False
            self._bits |= 1 << d
        self._cache = None
        return True

    def update_many(self, counters: NDArray[np.uint64]) -> NDArray[np.bool_]:
        """``update`` of each counter in order; the mask of those accepted.

        Whole-batch, the same answers as the loop: a valid counter only ever raises
        ``top`` (to itself, when above it), so the top each counter meets is the
        running maximum of the valid counters before it (and the window's). A counter
        at or below that top passes when within ``size`` of it, not marked in the
        window as it stood, and the first of its value in the batch (an earlier equal
        one was either accepted, so this is a replay, or refused for a reason that
        still holds). The bitmap then moves once, to the new top."""
        c = np.asarray(counters, dtype=np.uint64).reshape(-1)
        n = len(c)
        if n <= _SCALAR_MAX:
            return np.fromiter((self.update(int(x)) for x in c), dtype=np.bool_, count=n)
        valid = c < _LIMIT
        cv = np.where(valid, c, np.uint64(0))
        top0 = np.uint64(self.top)
        met = np.empty(n, dtype=np.uint64)
        met[0] = top0
        np.maximum(np.maximum.accumulate(cv[:-1]), top0, out=met[1:])
        above = valid & (c > met)
        below = valid & ~above
        size = np.uint64(self.size)
        # distances from the top met (and from the window's own top), 0 where unused
        d = np.where(below, met - np.where(below, c, met), np.uint64(0))
        ok = above | (below & (d < size))
        old = ok & (c <= top0)
        if old.any():
            seen = np.zeros(n, dtype=np.bool_)
            seen[old] = self._bitarray()[(top0 - c[old]).astype(np.int64)]
            ok &= ~seen
        _, first = np.unique(c, return_index=True)
        if len(first) < n:
            firsts = np.zeros(n, dtype=np.bool_)
            firsts[first] = True
            ok &= firsts
        acc = c[ok]
        if not len(acc):
            return ok
        top = max(self.top, int(acc.max()))
        shift = top - self.top
        bits = (self._bits << shift) & self._mask if shift < self.size else 0
        dist = np.uint64(top) - acc
        mark = np.zeros(self.size, dtype=np.bool_)
        mark[dist[dist < size].astype(np.int64)] = True
        bits |= int.from_bytes(np.packbits(mark, bitorder="little").tobytes(), "little")
        self._bits = bits
        self.top = top
        self._cache = None
        return ok

    def _bitarray(self) -> NDArray[np.bool_]:
        if self._cache is None:
            raw = np.frombuffer(self._bits.to_bytes((self.size + 7) // 8, "little"), np.uint8)
            self._cache = np.unpackbits(raw, bitorder="little")[: self.size].astype(np.bool_)
        return self._cache

    def check_many(self, counters: NDArray[np.uint64]) -> NDArray[np.bool_]:
        """``check`` of each counter against the window as it stands (no state change,
        no running maximum), and only the first of equal counters in the batch passes."""
        c = np.asarray(counters, dtype=np.uint64).reshape(-1)
        n = len(c)
        ok = c < _LIMIT
        if n == 0:
            return ok
        top = np.uint64(self.top)
        below = c <= top
        if below.any():
            d = np.where(below, top - np.where(below, c, top), np.uint64(0))
            inwin = below & (d < np.uint64(self.size))
            seen = np.zeros(n, dtype=np.bool_)
            if inwin.any():
                seen[inwin] = self._bitarray()[d[inwin].astype(np.int64)]
            ok &= ~below | (inwin & ~seen)
        if n > 1:
            _, first = np.unique(c, return_index=True)
            firsts = np.zeros(n, dtype=np.bool_)
            firsts[first] = True
            ok &= firsts
        return ok
