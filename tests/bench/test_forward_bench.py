"""bench/forward.py: the TUN<->TUN forwarder carries a kernel TCP stream intact.

A short stream each way of the bench (offload on and off), checked against the
kernel itself: the receiver gets every byte the sender's kernel took, nothing the
forwarder wrote was refused, and the super-packet count the forwarder keeps (from
the TUN device's counters) is the kernel's: GSO reads only with TUNSETOFFLOAD on.
No speed is asserted (speed is the benchmark's own figure).
"""

from __future__ import annotations

import pytest

from netoffload.bench import forward as fw
from netoffload.testing import netns

pytestmark = pytest.mark.kernel


@pytest.mark.parametrize("offload", [True, False])
def test_stream_through_the_forwarder_arrives_whole(offload: bool) -> None:
    reason = netns.tun_available()
    if reason:
        pytest.skip(reason)
    with fw.ForwardTopology() as topo:
        r = topo.stream(offload, 64 << 20, 0.5)
        a_gso, b_gso = topo.ta.tun.gso_in, topo.tbv.tun.gso_in
    assert r.note == ""  # sent == received, no device error
    assert r.bytes > 0 and r.errors == 0
    assert r.packets > 0
    assert r.gso_packets == a_gso + b_gso
    if offload:
        assert r.gso_packets > 0 and 0 < r.max_gso_size <= 1500
    else:
        assert r.gso_packets == 0 and r.max_gso_size == 0
