"""Packet socket device on a project veth: PACKET_VNET_HDR both ways, fanout, faults."""

from __future__ import annotations

import random
import select
import socket
import time

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from netoffload.batch import Batch, CsumVerdict, GsoType, VnetFlag
from netoffload.devices.ethtool import Ethtool
from netoffload.devices.packet import PacketDevice
from netoffload.errors import ConfigError, DeviceDown
from netoffload.tasks import TX_ORDER, Task
from netoffload.testing import netns
from netoffload.testing.packets import tcp_packet

A4, B4 = "198.18.0.1", "198.18.0.2"
Hosts = tuple[netns.Testbed, netns.Netns, netns.Netns]


def _frames(dev: PacketDevice, want: int, keep: object, timeout: float = 2.0) -> list[Batch]:
    got: list[Batch] = []
    n = 0
    end = time.monotonic() + timeout
    while n < want and time.monotonic() < end:
        dev.wait_readable(0.05)
        b = dev.recv()
        if len(b):
            idx = [i for i in range(len(b)) if keep(Ether(b.packet(i).tobytes()))]  # type: ignore[operator]
            if idx:
                import numpy as np

                got.append(b.take(np.array(idx)))
                n += len(idx)
    return got


def test_refuses_interfaces_outside_our_namespaces() -> None:
    with pytest.raises(ConfigError):
        PacketDevice.open(None, "eth0")
    with pytest.raises(ConfigError):
        PacketDevice.open(netns.Netns("not-ours"), "veth0")


def test_gso_frame_written_leaves_as_mss_segments(two_hosts: Hosts) -> None:
    _tb, a, b = two_hosts
    Ethtool(a, "veth0").set(
        {
            "tx-tcp-segmentation": False,
            "tx-tcp6-segmentation": False,
            "tx-checksum-ip-generic": False,
        }
    )
    tx = PacketDevice.open(a, "veth0")
    cap = PacketDevice.open(b, "veth0", vnet_hdr=False)
    try:
        payload = random.Random(3).randbytes(3600)
        eth = (
            bytes.fromhex(b.mac("veth0").replace(":", "") + a.mac("veth0").replace(":", ""))
            + b"\x08\x00"
        )
        frame = eth + tcp_packet(v=4, payload=payload, src=A4, dst=B4, seq=77, dport=6100)
        batch = Batch.from_packets([frame])
        batch.ext.offload[:] = Task.TCP_SEGMENT | Task.CHECKSUM
        batch.ext.gso_size[:] = 1200
        out = tx.complete(tx.submit(batch, TX_ORDER)).batch
        assert out.ext.gso_type[0] == GsoType.TCPV4 and out.ext.csum_start[0] == 34
        assert tx.send(out) == 1
        got = _frames(cap, 3, lambda f: TCP in f and f[TCP].dport == 6100)
        segs = sorted((Ether(p)[IP] for g in got for p in g.packets()), key=lambda p: p[TCP].seq)
        assert [len(p[TCP].payload) for p in segs] == [1200, 1200, 1200]
        assert b"".join(bytes(p[TCP].payload) for p in segs) == payload
        for p in segs:  # scapy recomputes: the kernel's checksums are right
            again = p.copy()
            del again[TCP].chksum
            del again.chksum
            assert bytes(IP(bytes(again))) == bytes(p)
    finally:
        tx.close()
        cap.close()


def test_received_super_frames_and_partial_checksums(two_hosts: Hosts) -> None:
    _tb, a, b = two_hosts
    rx = PacketDevice.open(b, "veth0")
    lsock = b.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.bind((B4, 6200))
    lsock.listen(1)
    c = a.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        c.connect((B4, 6200))
        srv, _ = lsock.accept()
        srv.setblocking(False)
        c.sendall(b"z" * 300000)  # TSO on a's veth: the super-frames cross to b whole
        seen: list[Batch] = []
        end = time.monotonic() + 2
        while time.monotonic() < end:
            rx.wait_readable(0.05)
            bt = rx.recv()
            if len(bt):
                seen.append(bt)
            select.select([srv], [], [], 0)
            try:
                while srv.recv(1 << 20):
                    pass
            except BlockingIOError:
                pass
            if sum(int(((x.ext.gso_type & 0x7F) != 0).sum()) for x in seen) >= 2:
                break
        allb = Batch.concat(seen)
        e = allb.ext
        gso = (e.gso_type & 0x7F) == GsoType.TCPV4
        assert gso.any(), "no GSO super-frames seen"
        assert (e.gso_size[gso] > 500).all() and (e.by_device[gso] & Task.TCP_ASSEMBLE).all()
        assert (allb.length[gso] > 1514).any()
        part = (e.vflags & VnetFlag.NEEDS_CSUM) != 0
        assert part.any() and (e.csum_verdict[part] == CsumVerdict.PARTIAL).all()
        srv.close()
    finally:
        c.close()
        lsock.close()
        rx.close()


def test_fanout_hash_spreads_flows(two_hosts: Hosts) -> None:
    _tb, a, b = two_hosts
    group = PacketDevice.fanout_group(b, "veth0", 2)
    senders = [a.socket() for _ in range(40)]
    try:
        for i, s in enumerate(senders):
            s.sendto(b"f%d" % i, (B4, 6300))
        counts = [0, 0]
        end = time.monotonic() + 2
        while sum(counts) < 40 and time.monotonic() < end:
            for k, d in enumerate(group):
                d.wait_readable(0.02)
                bt = d.recv()
                counts[k] += sum(
                    1 for p in bt.packets() if UDP in Ether(p) and Ether(p)[UDP].dport == 6300
                )
        assert sum(counts) == 40
        assert min(counts) > 0
    finally:
        for s in senders:
            s.close()
        for d in group:
            d.close()


def test_interface_deleted_under_device(two_hosts: Hosts) -> None:
    _tb, a, _b = two_hosts
    dev = PacketDevice.open(a, "veth0", io_timeout=0.2)
    a.ip("link", "del", "veth0")
    frame = bytes(14) + tcp_packet(v=4, payload=b"x")
    t0 = time.monotonic()
    with pytest.raises(DeviceDown):
        for _ in range(3):
            dev.send(Batch.from_packets([frame]))
            dev.recv()
    assert time.monotonic() - t0 < 5
    assert not dev.load().up and dev.stats.errors >= 1
    assert not dev.query().records  # a vanished device offers nothing
    dev.close()


def test_udp_gso_frame_written_arrives_as_datagrams(two_hosts: Hosts) -> None:
    """USO through PACKET_VNET_HDR: b's UDP socket (which checks checksums) gets every piece."""
    from netoffload.testing.packets import udp_packet

    _tb, a, b = two_hosts
    Ethtool(a, "veth0").set({"tx-udp-segmentation": False, "tx-checksum-ip-generic": False})
    rx = b.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind((B4, 6400))
    rx.setblocking(False)
    tx = PacketDevice.open(a, "veth0")
    try:
        payload = random.Random(5).randbytes(2100)
        eth = bytes.fromhex(b.mac("veth0").replace(":", "") + a.mac("veth0").replace(":", ""))
        frame = eth + b"\x08\x00" + udp_packet(v=4, payload=payload, src=A4, dst=B4, dport=6400)
        batch = Batch.from_packets([frame])
        batch.ext.offload[:] = Task.UDP_SEGMENT | Task.CHECKSUM
        batch.ext.gso_size[:] = 500
        out = tx.complete(tx.submit(batch, TX_ORDER)).batch
        assert out.ext.gso_type[0] == GsoType.UDP_L4
        assert tx.send(out) == 1
        got: list[bytes] = []
        end = time.monotonic() + 2
        while len(got) < 5 and time.monotonic() < end:
            r, _, _ = select.select([rx], [], [], 0.05)
            if r:
                got.append(rx.recv(2000))
        assert [len(x) for x in got] == [500, 500, 500, 500, 100]
        assert b"".join(got) == payload
    finally:
        tx.close()
        rx.close()
