"""TunDevice's receive-side results: the compiled layout gives what parse_subset gives.

``_rx_results`` turns a read's virtio_net_hdr fields into results and, for GSO
super-packets, parses the headers for the segment count. It parses with
``parse_subset_fast`` (the compiled kernel, ``parse_subset`` for what it does not
cover); here the whole receive step is run twice on the same random, cut and
bit-flipped packets with random headers, once with the plain ``parse_subset``,
and every extension field must come out the same. No TUN is needed: the device
is built on a pipe (nothing is read from or written to it).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP, IPOption_NOP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment
from scapy.packet import Raw

from netoffload.batch import EXT_FIELDS, Batch, GsoType, VnetFlag
from netoffload.devices import tun as tun_mod
from netoffload.devices.tun import TunDevice
from netoffload.wire.parse import parse_subset

GSO_TYPES = [int(GsoType.NONE), int(GsoType.TCPV4), int(GsoType.TCPV6), int(GsoType.UDP_L4)]


@pytest.fixture(scope="module")
def pipe_fds() -> Iterator[tuple[int, int]]:
    r, w = os.pipe()
    yield r, w
    os.close(r)
    os.close(w)


@st.composite
def super_packet(draw: st.DrawFn) -> bytes:
    v6 = draw(st.booleans())
    pay = Raw(b"p" * draw(st.integers(0, 4000)))
    l4 = TCP(sport=1, dport=2) if draw(st.booleans()) else UDP(sport=3, dport=4)
    if v6:
        ip = IPv6(src="fd00::1", dst="fd00::2")
        if draw(st.integers(0, 4)) == 0:
            ip = ip / IPv6ExtHdrDestOpt()
        if draw(st.integers(0, 6)) == 0:
            ip = ip / IPv6ExtHdrFragment(m=1)
        return bytes(ip / l4 / pay)
    opts = [IPOption_NOP()] * (4 * draw(st.integers(0, 3)))
    return bytes(IP(src="198.18.0.1", dst="198.19.0.1", options=opts) / l4 / pay)


@settings(max_examples=60, deadline=None)
@given(
    pkts=st.lists(super_packet(), min_size=1, max_size=12),
    cuts=st.lists(st.integers(0, 120), max_size=6),
    flips=st.lists(st.tuples(st.integers(0, 80), st.integers(1, 255)), max_size=6),
    junk=st.lists(st.binary(max_size=80), max_size=4),
    hdrs=st.lists(
        st.tuples(st.sampled_from(GSO_TYPES), st.integers(0, 3), st.integers(0, 2000)),
        max_size=40,
    ),
)
def test_rx_results_same_with_compiled_layout(
    pipe_fds: tuple[int, int],
    pkts: list[bytes],
    cuts: list[int],
    flips: list[tuple[int, int]],
    junk: list[bytes],
    hdrs: list[tuple[int, int, int]],
) -> None:
    prefixes = [pkts[i % len(pkts)][:c] for i, c in enumerate(cuts)]
    flipped = []
    for i, (pos, x) in enumerate(flips):
        r = bytearray(pkts[i % len(pkts)])
        r[pos % len(r)] ^= x
        flipped.append(bytes(r))
    allp = pkts + prefixes + flipped + junk + [bytes([0x45]) + j for j in junk]
    b = Batch.from_packets(allp)
    e = b.ext
    for i in range(len(allp)):
        gt, vf, size = hdrs[i] if i < len(hdrs) else (int(GsoType.TCPV4), 1, 1448)
        e.gso_type[i] = gt
        e.vflags[i] = vf & int(VnetFlag.NEEDS_CSUM | VnetFlag.DATA_VALID)
        e.gso_size[i] = size
        e.hdr_len[i] = 54  # what a TUN reports: skb_headlen, not the headers
    ref = b.copy()
    fast = TunDevice([pipe_fds[0]], "t0")
    slow = TunDevice([pipe_fds[0]], "t0")
    fast._rx_results(b)
    orig = getattr(tun_mod, "parse_subset_fast")  # noqa: B009
    try:
        setattr(tun_mod, "parse_subset_fast", parse_subset)  # noqa: B010
        slow._rx_results(ref)
    finally:
        setattr(tun_mod, "parse_subset_fast", orig)  # noqa: B010
    for f in EXT_FIELDS:
        assert getattr(b.ext, f).tolist() == getattr(ref.ext, f).tolist(), f
    assert np.array_equal(b.buf, ref.buf)
    assert fast.tun.gso_in == slow.tun.gso_in
    assert fast.tun.csum_valid_in == slow.tun.csum_valid_in
