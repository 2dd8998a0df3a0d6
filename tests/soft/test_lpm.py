"""Longest-prefix match against a plain reference built on the stdlib ipaddress module."""

from __future__ import annotations

import ipaddress

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from netoffload.soft.lpm import NO_MATCH, LpmTable


def _v4net(draw: st.DrawFn) -> ipaddress.IPv4Network:
    a = draw(st.integers(0, 2**32 - 1))
    ln = draw(st.integers(0, 32))
    return ipaddress.IPv4Network((a, ln), strict=False)


def _v6net(draw: st.DrawFn) -> ipaddress.IPv6Network:
    a = draw(st.sampled_from([0xFD00 << 112, 0x2001_0DB8 << 96, 0, 2**128 - 2**64]))
    a ^= draw(st.integers(0, 2**128 - 1)) >> draw(st.integers(0, 128))
    ln = draw(st.integers(0, 128))
    return ipaddress.IPv6Network((a, ln), strict=False)


@st.composite
def tables(draw: st.DrawFn) -> tuple[list[tuple[object, int]], list[object]]:
    nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for _ in range(draw(st.integers(0, 40))):
        nets.append(_v4net(draw) if draw(st.booleans()) else _v6net(draw))
    entries: list[tuple[object, int]] = [(n, i) for i, n in enumerate(nets)]
    addrs: list[object] = []
    for _ in range(draw(st.integers(1, 60))):
        if len(nets) > 0 and draw(st.booleans()):
            n = draw(st.sampled_from(nets))
            off = draw(st.integers(0, n.num_addresses - 1))
            addrs.append(n.network_address + off)
        elif draw(st.booleans()):
            addrs.append(ipaddress.IPv4Address(draw(st.integers(0, 2**32 - 1))))
        else:
            addrs.append(ipaddress.IPv6Address(draw(st.integers(0, 2**128 - 1))))
    return entries, addrs


def reference(entries: list[tuple[object, int]], addr: object) -> int:
    best = -1
    best_len = -1
    for net, val in entries:  # a later duplicate prefix wins
        if net.version == addr.version and addr in net and net.prefixlen >= best_len:  # type: ignore[attr-defined,operator]
            best, best_len = val, net.prefixlen  # type: ignore[attr-defined]
    return best


def _rows(addrs: list[object]) -> tuple[np.ndarray, np.ndarray]:
    rows = np.zeros((len(addrs), 16), dtype=np.uint8)
    v4 = np.zeros(len(addrs), dtype=bool)
    for i, a in enumerate(addrs):
        if a.version == 4:  # type: ignore[attr-defined]
            rows[i, 10:12] = 0xFF
            rows[i, 12:] = list(a.packed)  # type: ignore[attr-defined]
            v4[i] = True
        else:
            rows[i] = list(a.packed)  # type: ignore[attr-defined]
    return rows, v4


@given(tables())
def test_matches_reference(case: tuple[list[tuple[object, int]], list[object]]) -> None:
    entries, addrs = case
    t = LpmTable(entries)  # type: ignore[arg-type]
    rows, v4 = _rows(addrs)
    got = t.lookup(rows, v4).tolist()
    assert got == [reference(entries, a) for a in addrs]


def test_nested_and_edges() -> None:
    t = LpmTable(
        [
            ("0.0.0.0/0", 1),
            ("198.18.0.0/15", 2),
            ("198.18.7.0/24", 3),
            ("198.18.7.255/32", 4),
            ("255.255.255.255/32", 5),
            ("fd00::/8", 6),
        ]
    )
    addrs = [
        "1.2.3.4",
        "198.19.255.255",
        "198.18.7.1",
        "198.18.7.255",
        "198.18.8.0",
        "255.255.255.255",
        "255.255.255.254",
        "fd00::1",
        "fe00::",
        "::",
    ]
    rows, v4 = _rows([ipaddress.ip_address(a) for a in addrs])
    assert t.lookup(rows, v4).tolist() == [1, 2, 3, 4, 2, 5, 1, 6, NO_MATCH, NO_MATCH]
    assert LpmTable([]).lookup(rows, v4).tolist() == [NO_MATCH] * len(addrs)
