"""The filter push-down (devices/kernel_common.py: ``push_down`` and what a kernel
device marks done on the packets it reads), against the kernel itself: a packet
socket on a veth in namespaces of the test's own, frames sent by the peer."""

from __future__ import annotations

import ipaddress
import time

import numpy as np
import pytest

from netoffload.batch import Batch, FilterVerdict, Reason
from netoffload.devices import kernel_common as kc
from netoffload.devices.packet import PacketDevice
from netoffload.engine import Engine
from netoffload.policy import Never
from netoffload.soft import SoftLibrary
from netoffload.soft.dos import DosFilter
from netoffload.soft.rules import Bucket, DosConfig
from netoffload.tasks import Direction, Task
from netoffload.testing import netns

pytestmark = pytest.mark.kernel
A4, B4, C4 = "198.18.0.1", "198.18.0.2", "198.18.0.3"
PORT = 6500


def _udp_frames(dev: PacketDevice, want: int, timeout: float = 2.0) -> Batch:
    """The UDP frames to PORT that the device reads (ARP, ND and the rest left out)."""
    parts: list[Batch] = []
    n = 0
    end = time.monotonic() + timeout
    while time.monotonic() < end and n < want:
        dev.wait_readable(0.05)
        b = dev.recv()
        keep = [
            i
            for i in range(len(b))
            if b.ext.l4_proto[i] == 17
            and int.from_bytes(bytes(b.packet(i)[36:38]), "big") == PORT  # Ethernet + IPv4
        ]
        if keep:
            parts.append(b.take(np.array(keep)))
            n += len(keep)
    return Batch.concat(parts) if parts else Batch.empty()


def _send(host: netns.Netns, src: str, n: int) -> None:
    s = host.socket()
    try:
        s.bind((src, 0))
        for i in range(n):
            s.sendto(f"{src}/{i}".encode(), (B4, PORT))
    finally:
        s.close()


def _two_senders(
    two_hosts: tuple[netns.Testbed, netns.Netns, netns.Netns],
) -> tuple[netns.Netns, PacketDevice]:
    _tb, a, b = two_hosts
    a.add_address("veth0", f"{C4}/24")
    b.static_neighbors("veth0", a, "veth0", [A4, C4])
    return a, PacketDevice.open(b, "veth0")


def test_stateful_rules_still_run_in_software_after_a_push_down(
    two_hosts: tuple[netns.Testbed, netns.Netns, netns.Netns],
) -> None:
    """A drop list (stateless: the kernel does it) and a token bucket per source
    (state across packets: no cBPF program can). The device must not mark
    dos-filter done on what it reads, or the bucket never runs: it used to, and
    all ten datagrams of a source with a burst of three got through."""
    a, rx = _two_senders(two_hosts)
    try:
        cfg = DosConfig(drop_src=(ipaddress.ip_network(f"{C4}/32"),), rate=Bucket(1e-6, 3.0))
        res = kc.push_down(rx, cfg)
        assert res.attached, res.reason
        assert any("token bucket" in x for x in res.in_software)
        _send(a, C4, 4)  # dropped by the kernel
        _send(a, A4, 10)
        got = _udp_frames(rx, 10)
        srcs = [str(ipaddress.ip_address(bytes(got.packet(i)[26:30]))) for i in range(len(got))]
        assert srcs == [A4] * 10  # the kernel ran the drop list
        assert not (got.ext.done & np.uint16(Task.DOS_FILTER)).any()
        # the software filter still has its work: the bucket lets three through
        got.ext.tasks[:] = Task.DOS_FILTER
        lib = SoftLibrary({Task.DOS_FILTER: DosFilter(cfg, clock=lambda: 1.0)})
        out = Engine(Direction.RX, Task.DOS_FILTER, lib, Never()).process(got).batch
        assert out.ext.filter_reason.tolist() == [0] * 3 + [Reason.RATE_LIMIT] * 7
        assert not res.whole  # what push_down says: not all of it ran in the kernel
    finally:
        rx.close()


def test_a_wholly_stateless_filter_is_done_in_the_kernel(
    two_hosts: tuple[netns.Testbed, netns.Netns, netns.Netns],
) -> None:
    """When every rule compiled, the kernel did the whole filter: the device marks
    it done (by the device, verdict PASS) and the software filter skips it."""
    a, rx = _two_senders(two_hosts)
    try:
        cfg = DosConfig(drop_src=(ipaddress.ip_network(f"{C4}/32"),), min_size=20)
        res = kc.push_down(rx, cfg)
        assert res.attached and res.whole and res.in_software == ()
        _send(a, C4, 3)
        _send(a, A4, 5)
        got = _udp_frames(rx, 5)
        assert len(got) == 5
        bit = np.uint16(Task.DOS_FILTER)
        assert (got.ext.done & bit).all() and (got.ext.by_device & bit).all()
        assert (got.ext.filter_verdict == FilterVerdict.PASS).all()
        got.ext.tasks[:] = Task.DOS_FILTER
        lib = SoftLibrary({Task.DOS_FILTER: DosFilter(cfg, clock=lambda: 1.0)})
        eng = Engine(Direction.RX, Task.DOS_FILTER, lib, Never())
        eng.process(got)
        assert eng.counters[Task.DOS_FILTER].software == 0
        # another program attached by hand afterwards: nothing is assumed of it
        rx.attach_filter(kc.ACCEPT_ALL)
        _send(a, A4, 2)
        got = _udp_frames(rx, 2)
        assert len(got) == 2 and not (got.ext.done & bit).any()
    finally:
        rx.close()
