"""Longest-prefix match over IPv4 and IPv6, vectorised with numpy.

A table of prefixes, each with an integer value, is flattened once into
disjoint address intervals, each carrying the value of the longest prefix that
covers it (prefixes either nest or are disjoint, so a sweep with a stack of open
prefixes does it). A lookup is then one ``np.searchsorted`` per packet over the
interval starts: IPv4 on ``uint64`` keys, IPv6 on 16-byte big-endian strings
(``S16``, whose order is the numeric order). 10,000 prefixes make at most
20,001 intervals per family. For IPv4 a first-level table of the 65,536 /16s
(as DIR-24-8 does with /24s) answers directly wherever one value covers the
whole /16; only the rest are searched.

Addresses are given as ``(n, 16)`` uint8 rows: IPv6 addresses as they are,
IPv4 addresses mapped (``::ffff:a.b.c.d``), with a per-row "is IPv4" mask.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

import numpy as np
from numpy.typing import NDArray

from netoffload.errors import ConfigError

I64 = NDArray[np.int64]
U8 = NDArray[np.uint8]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

NO_MATCH = -1
_SEARCH = -2  # first-level entry: look in the intervals


def parse_prefix(text: object, what: str = "prefix") -> Network:
    """``"198.18.0.0/15"``, ``"fd00::/8"`` or a bare address; ConfigError naming ``what``."""
    if not isinstance(text, str):
        raise ConfigError(f"{what}: prefix must be a string like '198.18.0.0/15', got {text!r}")
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError as e:
        raise ConfigError(f"{what}: bad prefix {text!r}: {e}") from None


def _flatten(prefixes: Sequence[tuple[int, int, int]], bits: int) -> tuple[list[int], list[int]]:
    """(start, end, value) prefixes → interval starts and values (NO_MATCH gaps)."""
    top = (1 << bits) - 1
    starts: list[int] = [0]
    vals: list[int] = [NO_MATCH]

    def emit(pos: int, val: int) -> None:
        if pos > top:
            return
        if starts[-1] == pos:
            vals[-1] = val
        else:
            starts.append(pos)
            vals.append(val)

    stack: list[tuple[int, int]] = []  # (end, value)
    order = sorted(prefixes, key=lambda p: (p[0], -(p[1] - p[0])))
    for s, e, v in order:
        while stack and stack[-1][0] < s:
            end, _ = stack.pop()
            emit(end + 1, stack[-1][1] if stack else NO_MATCH)
        stack.append((e, v))
        emit(s, v)
    while stack:
        end, _ = stack.pop()
        emit(end + 1, stack[-1][1] if stack else NO_MATCH)
    # merge neighbours with equal values
    ms: list[int] = []
    mv: list[int] = []
    for s, v in zip(starts, vals, strict=True):
        if mv and mv[-1] == v:
            continue
        ms.append(s)
        mv.append(v)
    return ms, mv


class LpmTable:
    """Longest-prefix match of IPv4 and IPv6 addresses to integer values.

    ``entries``: (prefix, value) pairs; a prefix listed twice keeps its last value.
    """

    def __init__(self, entries: Iterable[tuple[Network | str, int]]) -> None:
        p4: dict[tuple[int, int], int] = {}
        p6: dict[tuple[int, int], int] = {}
        for net, val in entries:
            nw = parse_prefix(net) if isinstance(net, str) else net
            lo = int(nw.network_address)
            hi = int(nw.broadcast_address)
            (p4 if nw.version == 4 else p6)[(lo, hi)] = int(val)
        self.size = len(p4) + len(p6)
        s4, v4 = _flatten([(a, b, v) for (a, b), v in p4.items()], 32)
        s6, v6 = _flatten([(a, b, v) for (a, b), v in p6.items()], 128)
        self._s4 = np.array(s4, dtype=np.uint64)
        self._v4 = np.array(v4, dtype=np.int64)
        self._s6 = np.array([x.to_bytes(16, "big") for x in s6], dtype="S16")
        self._v6 = np.array(v6, dtype=np.int64)
        self.has4 = bool(p4)
        self.has6 = bool(p6)
        # IPv4 first level: the value of each /16 where it is uniform, else _SEARCH
        b16 = np.arange(1 << 16, dtype=np.uint64) << np.uint64(16)
        i0 = np.searchsorted(self._s4, b16, side="right") - 1
        nxt = np.append(self._s4, np.uint64(1 << 32))[i0 + 1]
        uniform = nxt > (b16 | np.uint64(0xFFFF))
        self._t16 = np.where(uniform, self._v4[i0], _SEARCH).astype(np.int64)

    def lookup4(self, addr: NDArray[np.integer]) -> I64:
        """Values for IPv4 addresses given as integers."""
        q = np.asarray(addr, dtype=np.uint64)
        if not self.has4:
            return np.full(len(q), NO_MATCH, dtype=np.int64)
        out = self._t16.take((q >> np.uint64(16)).astype(np.intp))
        need = out == _SEARCH
        if need.any():
            qn = q[need]
            out[need] = self._v4[np.searchsorted(self._s4, qn, side="right") - 1]
        return out

    def lookup6(self, rows: U8) -> I64:
        """Values for IPv6 addresses given as ``(n, 16)`` uint8 rows."""
        n = len(rows)
        if not self.has6 or n == 0:
            return np.full(n, NO_MATCH, dtype=np.int64)
        q = np.ascontiguousarray(rows, dtype=np.uint8).view("S16").reshape(n)
        i = np.searchsorted(self._s6, q, side="right") - 1
        return self._v6[i]

    def lookup(self, rows: U8, is_v4: NDArray[np.bool_]) -> I64:
        """Values for ``(n, 16)`` address rows (IPv4 mapped where ``is_v4``)."""
        n = len(rows)
        out = np.full(n, NO_MATCH, dtype=np.int64)
        if n == 0:
            return out
        if is_v4.any():
            r4 = rows[is_v4, 12:16].astype(np.uint64)
            a4 = (r4[:, 0] << np.uint64(24)) | (r4[:, 1] << np.uint64(16))
            a4 |= (r4[:, 2] << np.uint64(8)) | r4[:, 3]
            out[is_v4] = self.lookup4(a4)
        v6 = ~is_v4
        if v6.any():
            out[v6] = self.lookup6(rows[v6])
        return out
