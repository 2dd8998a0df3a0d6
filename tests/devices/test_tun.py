"""TUN/TAP device: proof, from the kernel itself, that it did the work.

Every test runs inside namespaces the testbed creates (root; skipped with the
reason otherwise). What arrives is checked with scapy, an implementation
independent of ours, and with the kernel's own counters.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import select
import socket
import struct
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Packet

from netoffload.batch import Batch, CsumVerdict, FilterVerdict, GsoType, Reason, VnetFlag
from netoffload.devices import kernel_common as kc
from netoffload.devices.ethtool import Ethtool
from netoffload.devices.tun import TunDevice
from netoffload.engine import Engine
from netoffload.errors import ConfigError, DeviceDown
from netoffload.policy.base import Always
from netoffload.soft import SoftLibrary
from netoffload.tasks import TX_ORDER, Direction, Task
from netoffload.testing import netns
from netoffload.testing.packets import tcp_packet, udp_packet
from netoffload.wire.parse import parse_batch

pytestmark = pytest.mark.usefixtures("tun_ok")

ETH_P_ALL = 0x0003


def _capture(ns: netns.Netns, ifname: str) -> socket.socket:
    s = ns.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.bind((ifname, ETH_P_ALL))
    s.setblocking(False)
    return s


def _drain(
    s: socket.socket, want: int, keep: Callable[[bytes], bool], timeout: float = 3.0
) -> list[bytes]:
    """Frames for which ``keep`` is true, until ``want`` of them or ``timeout``."""
    out: list[bytes] = []
    end = time.monotonic() + timeout
    while len(out) < want and time.monotonic() < end:
        r, _, _ = select.select([s], [], [], 0.1)
        if r:
            with contextlib.suppress(BlockingIOError):
                f = s.recv(70000)
                if keep(f):
                    out.append(f)
    return out


def _scapy_csum_ok(pkt: Packet) -> bool:
    """scapy recomputes the checksums from scratch; equal means the kernel's were right."""
    l4 = pkt[TCP] if TCP in pkt else pkt[UDP]
    again = pkt.__class__(bytes(pkt))
    del again[l4.__class__].chksum
    if IP in again:
        del again[IP].chksum
    rebuilt = again.__class__(bytes(again))
    return bytes(rebuilt) == bytes(pkt)


@pytest.fixture
def routed(testbed: netns.Testbed) -> Iterator[tuple[netns.Netns, netns.Netns, TunDevice]]:
    """a: tun0 (198.18.1.1/24, fd00:1::1/64) + veth0 (198.18.0.1, fd00::1) -- b: veth0 (.2).

    a forwards between its TUN and the veth, so what we write to the TUN leaves
    a's veth0 towards b.
    """
    a, b = testbed.host("a"), testbed.host("b")
    testbed.link(
        a, b, addrs_a=["198.18.0.1/24", "fd00::1/64"], addrs_b=["198.18.0.2/24", "fd00::2/64"]
    )
    a.sysctl("net.ipv4.ip_forward", "1")
    a.sysctl("net.ipv6.conf.all.forwarding", "1")
    a.sysctl("net.ipv4.conf.all.rp_filter", "0")
    dev = TunDevice.open_in(a, "tun0", addrs=["198.18.1.1/24", "fd00:1::1/64"])
    try:
        yield a, b, dev
    finally:
        dev.close()


# ------------------------------------------------------------------ probing
def test_probe_matches_kernel_and_unknown_bit_is_einval(testbed: netns.Testbed) -> None:
    a = testbed.host("p")
    dev = TunDevice.open_in(a, "tun0")
    try:
        p = dev.probed
        assert p["csum"] and p["tso4"] and p["tso6"]
        with pytest.raises(OSError) as ei:  # a bit no kernel knows
            kc.ioctl_int(dev.fds[0], kc.TUNSETOFFLOAD, kc.TUN_F_CSUM | 0x8000)
        assert ei.value.errno == errno.EINVAL
        buf = dev.query()
        assert Task.TCP_SEGMENT in buf.records and Task.TCP_ASSEMBLE in buf.records
        assert Task.DOS_FILTER not in buf.records  # TUNATTACHFILTER is TAP-only
        # enabling sets TUNSETOFFLOAD; the kernel's own feature list (ethtool) agrees
        dev.enable(Task.CHECKSUM, Task.TCP_ASSEMBLE)
        feats = Ethtool(a, "tun0").active()
        assert feats["tx-tcp-segmentation"] and feats["tx-tcp6-segmentation"]
        assert feats["tx-checksum-ip-generic"] or feats["tx-checksum-ipv4"]
        dev.disable(Task.TCP_ASSEMBLE | Task.CHECKSUM)
        feats = Ethtool(a, "tun0").active()
        assert not feats["tx-tcp-segmentation"]
    finally:
        dev.close()


def test_caps_factory_cleans_up() -> None:
    from netoffload.devices.registry import get_device

    def mine() -> set[str]:
        return {n for n in os.listdir(netns.NETNS_DIR) if n.startswith(netns.prefix())}

    before = mine()
    dev = get_device("tun").factory()
    try:
        assert Task.CHECKSUM in dev.query().records
        assert len(mine()) == len(before) + 1  # the throwaway probe namespace
    finally:
        dev.close()
    assert mine() == before


# ------------------------------------------------------------------ TSO on write
@pytest.mark.parametrize("v", [4, 6])
def test_super_packet_written_arrives_as_mss_segments(
    routed: tuple[netns.Netns, netns.Netns, TunDevice], v: int
) -> None:
    a, b, dev = routed
    # a's veth must not pass the super-packet on whole or with a partial checksum:
    # TSO and checksum offload off, so the kernel segments and checksums in software
    Ethtool(a, "veth0").set(
        {
            "tx-tcp-segmentation": False,
            "tx-tcp6-segmentation": False,
            "tx-checksum-ip-generic": False,
        }
    )
    cap = _capture(b, "veth0")
    rnd = random.Random(v)
    payload = bytes(rnd.getrandbits(8) for _ in range(4500))
    src, dst = ("198.18.1.2", "198.18.0.2") if v == 4 else ("fd00:1::2", "fd00::2")
    mss = 1000
    pkt = tcp_packet(v=v, payload=payload, src=src, dst=dst, seq=1000, sport=40001, dport=5999)
    batch = Batch.from_packets([pkt])
    batch.ext.offload[:] = Task.TCP_SEGMENT | Task.CHECKSUM
    batch.ext.tasks[:] = Task.TCP_SEGMENT | Task.CHECKSUM
    batch.ext.gso_size[:] = mss
    t = dev.submit(batch, TX_ORDER)
    out = dev.complete(t)
    assert out.ok
    e = out.batch.ext
    assert e.gso_type[0] == (GsoType.TCPV4 if v == 4 else GsoType.TCPV6)
    assert e.vflags[0] & VnetFlag.NEEDS_CSUM
    assert e.by_device[0] == Task.TCP_SEGMENT | Task.CHECKSUM
    assert dev.send(out.batch) == 1

    def ours(f: bytes) -> bool:
        eth = Ether(f)
        return TCP in eth and eth.payload.dst == dst and eth[TCP].dport == 5999

    frames = _drain(cap, 6, ours, timeout=1.5)
    cap.close()
    segs = [Ether(f).payload for f in frames]
    assert len(segs) == 5  # ceil(4500 / 1000)
    segs.sort(key=lambda p: p[TCP].seq)
    got = b"".join(bytes(p[TCP].payload) for p in segs)
    assert got == payload
    assert [len(p[TCP].payload) for p in segs] == [1000, 1000, 1000, 1000, 500]
    assert [p[TCP].seq for p in segs] == [1000 + i * mss for i in range(5)]
    for p in segs:
        assert _scapy_csum_ok(p)


# ------------------------------------------------------------------ checksum
def _udp_listener(a: netns.Netns, port: int) -> socket.socket:
    s = a.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("198.18.1.1", port))
    s.setblocking(False)
    return s


def _recv_all(s: socket.socket, timeout: float = 0.5) -> list[bytes]:
    out = []
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        r, _, _ = select.select([s], [], [], 0.05)
        if r:
            out.append(s.recv(70000))
    return out


def test_bad_checksum_dropped_by_kernel_and_partial_delivered(
    routed: tuple[netns.Netns, netns.Netns, TunDevice],
) -> None:
    a, _b, dev = routed
    rx = _udp_listener(a, 7000)
    good = udp_packet(
        v=4, payload=b"checksum-proof", src="198.18.1.2", dst="198.18.1.1", dport=7000
    )
    bad = bytearray(good)
    bad[26] ^= 0x5A  # break the UDP checksum
    before = a.snmp()["Udp"]["InCsumErrors"]
    b1 = Batch.from_packets([bytes(bad)])
    assert dev.send(b1) == 1
    assert _recv_all(rx) == []
    assert a.snmp()["Udp"]["InCsumErrors"] == before + 1
    # the same packet, its checksum left to the kernel (NEEDS_CSUM, partial form)
    b2 = Batch.from_packets([bytes(bad)])
    b2.ext.offload[:] = Task.CHECKSUM
    b2.ext.tasks[:] = Task.CHECKSUM
    out = dev.complete(dev.submit(b2, TX_ORDER)).batch
    assert out.ext.vflags[0] & VnetFlag.NEEDS_CSUM
    assert dev.send(out) == 1
    assert _recv_all(rx) == [b"checksum-proof"]
    assert a.snmp()["Udp"]["InCsumErrors"] == before + 1
    rx.close()


def test_kernel_accepts_our_esp_in_udp_over_ipv6(
    routed: tuple[netns.Netns, netns.Netns, TunDevice],
) -> None:
    """ESP in UDP over IPv6 from the encrypt task reaches a UDP socket on port
    4500: the kernel checked its UDP checksum. The same datagram with checksum 0
    (what RFC 3948 allows over IPv4 only) is dropped (RFC 8200 8.1)."""
    from netoffload.sa import SATable, SecurityAssociation
    from netoffload.soft.crypto import EncryptTask

    a, _b, dev = routed
    rx = a.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    rx.bind(("fd00:1::1", 4500))
    rx.setblocking(False)
    sa = SecurityAssociation(
        0x2001, "aes-gcm-128", bytes(range(20)), "fd00:1::2", "fd00:1::1", udp_encap=True
    )
    inner = [udp_packet(4, bytes([i]) * (100 + 37 * i), sport=1000 + i) for i in range(3)]
    b = Batch.from_packets(inner)
    b.ext.sa[:] = 0
    out = EncryptTask(sas=SATable((sa,))).process(b, np.ones(3, dtype=np.bool_))
    wire = out.packets()
    assert dev.send(Batch.from_packets(wire)) == 3
    got = sorted(_recv_all(rx))
    assert got == sorted(w[48:] for w in wire)  # the UDP payload: SPI, seq, IV, ...
    zeroed = bytearray(wire[0])
    zeroed[46:48] = b"\0\0"  # outer UDP checksum field
    assert dev.send(Batch.from_packets([bytes(zeroed)])) == 1
    assert _recv_all(rx) == []
    rx.close()


def test_rx_data_valid_and_partial_become_results(testbed: netns.Testbed) -> None:
    a = testbed.host("r")
    dev = TunDevice.open_in(a, "tun0", addrs=["198.18.1.1/24"])
    try:
        dev.enable(Task.CHECKSUM)
        s = a.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.sendto(b"x" * 300, ("198.18.1.2", 9000))
        s.close()
        got = Batch.empty()
        end = time.monotonic() + 3
        while len(got) == 0 and time.monotonic() < end:
            dev.wait_readable(0.2)
            got = dev.recv()
        udp = [i for i in range(len(got)) if got.packet(i)[9] == 17]
        assert udp
        i = udp[0]
        e = got.ext
        # locally generated UDP with checksum offload on: the kernel leaves it partial
        assert e.vflags[i] & VnetFlag.NEEDS_CSUM
        assert e.csum_verdict[i] == CsumVerdict.PARTIAL
        assert e.by_device[i] & Task.CHECKSUM and e.done[i] & Task.CHECKSUM
        # finishing the partial checksum in software gives what scapy computes
        from netoffload.soft import checksum as soft_csum

        one = got.take(np.array([i]))
        soft_csum.fill(one, np.array([True]))
        assert _scapy_csum_ok(IP(one.packet(0).tobytes()))
    finally:
        dev.close()


# ------------------------------------------------------------------ GRO / super-packets
def _frames_for(mac: str, packets: Sequence[bytes]) -> Batch:
    """Ethernet frames to ``mac`` around IPv4 packets."""
    eth = bytes.fromhex(mac.replace(":", "")) + bytes.fromhex("020000000002") + b"\x08\x00"
    return Batch.from_packets([eth + p for p in packets])


def test_kernel_gro_merges_segments_sent_one_by_one(testbed: netns.Testbed) -> None:
    """The kernel's TCP assembly, seen in a TUN read. netoffload cuts a super-packet
    into 1000-byte segments (software TSO) and sends them one frame at a time from
    b through a packet socket; a's veth runs GRO (veth NAPI: GRO toggled on, the
    sender's veth without TSO; merges held up to gro_flush_timeout) and routes the
    merged packet to a's TUN, which hands it up as one TCPv4 GSO super-packet:
    gso_size 1000, segs = the segments merged, their bytes in order. With GRO off
    on a's veth the same frames reach the TUN one by one."""
    from netoffload.devices.packet import PacketDevice
    from netoffload.soft.segment import SegmentTask

    a, b = testbed.host("ga"), testbed.host("gb")
    testbed.link(a, b, addrs_a=["198.18.0.1/24"], addrs_b=["198.18.0.2/24"])
    a.sysctl("net.ipv4.ip_forward", "1")
    a.sysctl("net.ipv4.conf.all.rp_filter", "0")
    b.exec(["ethtool", "-K", "veth0", "tso", "off"])
    mac = a.exec(["cat", "/sys/class/net/veth0/address"]).strip()
    dev = TunDevice.open_in(a, "tun0", addrs=["198.18.1.1/24"])
    sender = PacketDevice.open(b, "veth0", vnet_hdr=False)
    n, mss = 8, 1000
    try:
        dev.enable(Task.CHECKSUM, Task.TCP_ASSEMBLE)

        def burst(seq: int) -> tuple[bytes, list[tuple[bytes, Any]]]:
            payload = random.Random(seq).randbytes(n * mss)
            sup = tcp_packet(4, payload, src="198.18.0.2", dst="198.18.1.2", seq=seq, ident=7)
            big = Batch.from_packets([sup])
            big.ext.gso_size[:] = mss
            segs = SegmentTask(Task.TCP_SEGMENT).process(big, np.ones(1, bool))
            assert [len(p) - 40 for p in segs.packets()] == [mss] * n
            assert sender.send(_frames_for(mac, segs.packets())) == n  # n frames, n writes
            got: list[tuple[bytes, Any]] = []
            end = time.monotonic() + 3
            while sum(len(p) - 40 for p, _ in got) < n * mss and time.monotonic() < end:
                dev.wait_readable(0.1)
                r = dev.recv()
                got += [(p, r.ext.row(i)) for i, p in enumerate(r.packets()) if p[9] == 6]
            return payload, got

        a.exec(["ethtool", "-K", "veth0", "gro", "off"])
        payload, plain = burst(1000)
        assert [len(p) for p, _ in plain] == [40 + mss] * n  # one by one: nothing merged
        assert all(x["gso_type"] == GsoType.NONE for _, x in plain)

        a.exec(["ethtool", "-K", "veth0", "gro", "on"])  # off -> on: the veth gets NAPI
        a.exec(["sh", "-c", "echo 50000000 > /sys/class/net/veth0/gro_flush_timeout"])
        payload, merged = burst(1000 + n * mss)
        assert b"".join(p[40:] for p, _ in merged) == payload  # every byte, in order
        assert len(merged) < n  # merged (one packet unless a flush came between sends)
        for p, x in merged:
            pkt = IP(p)
            assert pkt[IP].src == "198.18.0.2" and pkt[TCP].dport == 5201
            if x["gso_type"] & 0x7F:
                assert x["gso_type"] & 0x7F == GsoType.TCPV4 and x["gso_size"] == mss
                assert x["segs"] == (len(p) - 40) // mss  # segments merged into it
                assert x["by_device"] & Task.TCP_ASSEMBLE
        assert max(x["segs"] for _, x in merged) >= 2
    finally:
        sender.close()
        dev.close()


def test_super_packets_under_bulk_tcp_stream_carry_gso_size() -> None:
    """A local TCP sender's super-packets (its socket's TSO; nothing is merged)
    reach a TUN with TSO offload whole, with their segment size; without the
    offload the kernel cuts them before they reach us."""
    from netoffload.bench.forward import ForwardTopology

    with ForwardTopology() as topo:
        res = topo.stream(True, 20 << 20, 5.0)
        assert res.bytes == 20 << 20, res.note
        assert res.gso_packets > 0
        assert 500 <= res.max_gso_size <= 65535
        off = topo.stream(False, 2 << 20, 5.0)
        assert off.bytes == 2 << 20, off.note
        assert off.gso_packets == 0  # offload off: the kernel segments before handing up


def test_recv_marks_super_packets_assembled_by_the_device(testbed: netns.Testbed) -> None:
    """Super-packets read from the TUN (here a local sender's TSO ones) are marked as
    TCP assembly done by the device, with their segment counts."""
    from netoffload.bench.forward import ForwardTopology

    with ForwardTopology() as topo:
        topo.set_offload(True)
        seen: list[Batch] = []
        orig = topo.ta.recv

        def spy(max_packets: int = 1024, queue: int | None = None) -> Batch:
            b = orig(max_packets, queue)
            if len(b):
                seen.append(b)
            return b

        topo.ta.recv = spy  # type: ignore[method-assign]
        res = topo.stream(True, 8 << 20, 5.0)
        assert res.bytes == 8 << 20
        gso = [
            (b.ext.segs[i], b.ext.gso_size[i], b.length[i], b.ext.by_device[i])
            for b in seen
            for i in range(len(b))
            if b.ext.gso_type[i] & 0x7F
        ]
        assert gso
        for segs, size, length, by_dev in gso:
            assert by_dev & Task.TCP_ASSEMBLE
            assert segs >= 1 and size > 0
            assert (segs - 1) * size < length


# ------------------------------------------------------------------ filter push-down
def _drop_udp_port_filter(port: int) -> list[kc.Insn]:
    """cBPF on Ethernet frames: drop IPv4/UDP to ``port``, accept the rest (hand-written)."""
    return [
        (0x28, 0, 0, 12),  # ldh [12]          ethertype
        (0x15, 0, 6, 0x0800),  # jeq IPv4 ? next : accept
        (0x30, 0, 0, 23),  # ldb [23]          protocol
        (0x15, 0, 4, 17),  # jeq UDP ? next : accept
        (0xB1, 0, 0, 14),  # ldxb 4*([14]&0xf)  IHL
        (0x48, 0, 0, 16),  # ldh [x+16]        UDP dport (14 + 2)
        (0x15, 1, 0, port),  # jeq port ? drop : accept
        (0x06, 0, 0, 0xFFFFFFFF),  # accept
        (0x06, 0, 0, 0),  # drop
    ]


def test_filter_attached_to_tap_drops_in_kernel(testbed: netns.Testbed) -> None:
    a = testbed.host("f")
    # no IPv6 on the TAP: no background router solicitations / MLD reports in the counts
    a.sysctl("net.ipv6.conf.default.disable_ipv6", "1")
    dev = TunDevice.open_in(a, "tap0", tap=True, addrs=["198.18.1.1/24"])
    try:
        assert dev.probed["filter"]
        assert Task.DOS_FILTER in dev.query().records
        a.ip("neigh", "add", "198.18.1.2", "lladdr", "02:00:00:00:00:02", "dev", "tap0")
        dev.attach_filter(_drop_udp_port_filter(9999))
        while len(dev.recv()):  # router solicitations etc.
            pass
        before = a.link_stats("tap0")["tx_dropped"]
        s = a.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for i in range(10):
            s.sendto(b"p%d" % i, ("198.18.1.2", 9999 if i % 2 else 9998))
        s.close()
        got: list[Batch] = []
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            dev.wait_readable(0.1)
            b = dev.recv()
            if len(b):
                got.append(b)
        frames = [Ether(p) for b in got for p in b.packets()]
        ports = sorted(f[UDP].dport for f in frames if UDP in f)
        assert ports == [9998] * 5
        assert a.link_stats("tap0")["tx_dropped"] - before == 5
        for b in got:  # a program attached by hand is not the DoS filter: nothing marked
            assert not (b.ext.done & Task.DOS_FILTER).any()
            assert (b.ext.filter_verdict == FilterVerdict.PASS).all()
        # detach: everything comes through again
        dev.detach_filter()
        s = a.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.sendto(b"again", ("198.18.1.2", 9999))
        s.close()
        dev.wait_readable(1.0)
        frames = [Ether(p) for p in dev.recv().packets()]
        assert any(UDP in f and f[UDP].dport == 9999 for f in frames)
    finally:
        dev.close()


# ------------------------------------------------------------------ multi-queue
def test_multi_queue_one_fd_per_queue(testbed: netns.Testbed) -> None:
    a = testbed.host("m")
    dev = TunDevice.open_in(a, "tun0", queues=3, addrs=["198.18.1.1/24"])
    try:
        assert len(dev.fds) == 3
        a.ip("neigh", "show")  # no-op, namespace alive
        s = a.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for port in range(20000, 20060):
            s.sendto(b"q", ("198.18.1.2", port))
        s.close()
        per_queue = [0, 0, 0]
        end = time.monotonic() + 2
        while sum(per_queue) < 60 and time.monotonic() < end:
            dev.wait_readable(0.1)
            for q in range(3):
                b = dev.recv(queue=q)
                per_queue[q] += sum(1 for p in b.packets() if p[9] == 17)
        assert sum(per_queue) == 60
        assert sum(1 for x in per_queue if x) >= 2  # the kernel spread the flows
    finally:
        dev.close()


# ------------------------------------------------------------------ faults
def test_interface_deleted_under_device(routed: tuple[netns.Netns, netns.Netns, TunDevice]) -> None:
    a, _b, dev = routed
    a.ip("link", "del", "tun0")
    pkt = udp_packet(v=4, payload=b"x", src="198.18.1.2", dst="198.18.1.1")
    with pytest.raises(DeviceDown):
        dev.send(Batch.from_packets([pkt]))
    with pytest.raises(DeviceDown):
        dev.recv()
    assert not dev.load().up
    assert dev.counters()["errors"] >= 1  # type: ignore[operator]
    # an engine using the vanished device redoes the work in software, nothing lost
    soft = SoftLibrary.build(Task.CHECKSUM)
    eng = Engine(Direction.TX, Task.CHECKSUM, soft, Always(), [dev])
    b = Batch.from_packets([udp_packet(v=4, payload=b"y" * 50, checksum=False)] * 4)
    b.ext.tasks[:] = Task.CHECKSUM
    out = eng.process(b).batch
    assert len(out) == 4 and (out.ext.error == 0).all()
    for p in out.packets():
        assert _scapy_csum_ok(IP(p))


def test_namespace_removed_mid_run(testbed: netns.Testbed) -> None:
    a = testbed.host("g")
    dev = TunDevice.open_in(a, "tun0", addrs=["198.18.1.1/24"])
    a.delete()  # the name goes; the TUN fd still pins the namespace: the device keeps working
    pkt = udp_packet(v=4, payload=b"x", src="198.18.1.2", dst="198.18.1.1")
    assert dev.send(Batch.from_packets([pkt])) == 1
    dev.close()
    with pytest.raises(DeviceDown):
        dev.send(Batch.from_packets([pkt]))


class _FakeOS:
    """Stands in for os.writev: a scripted sequence of results/errors."""

    def __init__(self, script: list[object]) -> None:
        self.script = script
        self.calls = 0

    def __call__(self, fd: int, bufs: Sequence[Any]) -> int:
        self.calls += 1
        act = self.script.pop(0) if self.script else "ok"
        if isinstance(act, BaseException):
            raise act
        total = sum(len(memoryview(x)) for x in bufs)
        return total if act == "ok" else total - 3


def test_eio_einval_short_write_and_eagain_are_counted(
    routed: tuple[netns.Netns, netns.Netns, TunDevice], monkeypatch: pytest.MonkeyPatch
) -> None:
    _a, _b, dev = routed
    dev.io_timeout = 0.2
    pkts = [
        udp_packet(v=4, payload=bytes([i]) * 20, src="198.18.1.2", dst="198.18.1.9")
        for i in range(5)
    ]
    fake = _FakeOS([OSError(errno.EIO, "io"), "short", OSError(errno.EINVAL, "inval"), "ok", "ok"])
    monkeypatch.setattr("netoffload.devices.tun.os.writev", fake)
    b = Batch.from_packets(pkts)
    assert dev.send(b) == 2
    c = dev.counters()
    assert c["write_errors"] == 2 and c["short_writes"] == 1
    assert list(b.ext.error) == [Reason.DEVICE_ERROR] * 3 + [0, 0]
    # EAGAIN forever: send gives up after io_timeout and counts the rest as dropped
    forever = _FakeOS([BlockingIOError(errno.EAGAIN, "again")] * 10000)
    monkeypatch.setattr("netoffload.devices.tun.os.writev", forever)
    monkeypatch.setattr("netoffload.devices.tun.select.select", lambda r, w, x, t: ([], [], []))
    t0 = time.monotonic()
    assert dev.send(Batch.from_packets(pkts)) == 0
    assert time.monotonic() - t0 < 5  # nothing hangs
    assert dev.counters()["tx_dropped"] == 5


def test_submit_refuses_what_it_cannot_do(testbed: netns.Testbed) -> None:
    a = testbed.host("s")
    dev = TunDevice.open_in(a, "tun0")
    try:
        b = Batch.from_packets([udp_packet(v=4, payload=b"z")])
        b.ext.offload[:] = Task.ENCRYPT
        comp = dev.complete(dev.submit(b, TX_ORDER))
        assert not comp.ok and "encrypt" in comp.error
        # a malformed packet asked to be segmented gets a verdict, not an exception
        junk = Batch.from_packets([b"\x45\x00\x00"])
        junk.ext.offload[:] = Task.TCP_SEGMENT
        junk.ext.gso_size[:] = 100
        comp = dev.complete(dev.submit(junk, TX_ORDER))
        assert comp.batch.ext.error[0] != 0
    finally:
        dev.close()


def test_vnet_header_bytes_are_what_the_kernel_reads() -> None:
    # the header TunDevice writes for a TSO packet, checked field by field against the C layout
    from netoffload.batch import ext_to_vnet

    b = Batch.from_packets([tcp_packet(v=4, payload=b"a" * 3000)])
    b.ext.offload[:] = Task.TCP_SEGMENT
    b.ext.gso_size[:] = 1200
    from netoffload.devices.tun import prepare_tx

    prepare_tx(b, np.array([True]), Task.TCP_SEGMENT)
    flags, gso_type, hdr_len, gso_size, cs, co = struct.unpack("=BBHHHH", ext_to_vnet(b.ext))
    assert (flags, gso_type, hdr_len, gso_size, cs, co) == (1, 1, 40, 1200, 20, 16)


def test_forwarder_stops_cleanly_when_peer_tun_vanishes() -> None:
    import threading

    from netoffload.bench.forward import ForwardTopology

    with ForwardTopology() as topo:
        killer = threading.Timer(0.3, lambda: topo.b.ip("link", "del", "tun0"))
        killer.start()
        t0 = time.monotonic()
        res = topo.stream(True, 1 << 40, 3.0)  # would run 3 s; the TUN goes after 0.3 s
        killer.join()
        assert time.monotonic() - t0 < 20  # nothing hangs
        assert "gone" in res.note  # stopped with a message
        assert not topo.tbv.load().up
        assert topo.tbv.counters()["down"]


@pytest.mark.parametrize("policy", ["always", "never"])
def test_engine_hands_tso_to_the_kernel_or_does_it_in_software(
    routed: tuple[netns.Netns, netns.Netns, TunDevice], policy: str
) -> None:
    """Same input, same bytes at the peer: by the kernel (one write) or by software (three)."""
    from netoffload.policy.base import Never

    a, b, dev = routed
    Ethtool(a, "veth0").set(
        {
            "tx-tcp-segmentation": False,
            "tx-tcp6-segmentation": False,
            "tx-checksum-ip-generic": False,
        }
    )
    dev.enable(Task.TCP_SEGMENT, Task.CHECKSUM)
    soft = SoftLibrary.build([Task.TCP_SEGMENT, Task.CHECKSUM])
    eng = Engine(
        Direction.TX,
        Task.TCP_SEGMENT | Task.CHECKSUM,
        soft,
        Always() if policy == "always" else Never(),
        [dev],
    )
    cap = _capture(b, "veth0")
    payload = random.Random(11).randbytes(3000)
    pkt = tcp_packet(
        v=4, payload=payload, src="198.18.1.2", dst="198.18.0.2", dport=6060, checksum=False
    )
    batch = Batch.from_packets([pkt])
    batch.ext.tasks[:] = Task.TCP_SEGMENT | Task.CHECKSUM
    batch.ext.gso_size[:] = 1000
    parse_batch(batch)  # the layout the policy's capability check reads (IP version)
    out = eng.process(batch).batch
    rep = eng.report()["tasks"]
    if policy == "always":
        assert len(out) == 1 and out.ext.by_device[0] == Task.TCP_SEGMENT | Task.CHECKSUM
        assert rep["tcp-segment"]["offloaded"] == 1  # type: ignore[index]
    else:
        assert len(out) == 3 and (out.ext.by_device == 0).all()
        out.ext.gso_type[:] = 0  # software did the work: plain packets on the wire
        out.ext.vflags[:] = 0
    assert dev.send(out) == len(out)

    def ours(f: bytes) -> bool:
        eth = Ether(f)
        return TCP in eth and eth[TCP].dport == 6060

    segs = sorted((Ether(f)[IP] for f in _drain(cap, 3, ours)), key=lambda p: p[TCP].seq)
    cap.close()
    assert [len(p[TCP].payload) for p in segs] == [1000, 1000, 1000]
    assert b"".join(bytes(p[TCP].payload) for p in segs) == payload
    assert all(_scapy_csum_ok(p) for p in segs)


def test_push_down_needs_the_capability(testbed: netns.Testbed) -> None:
    """A TUN cannot take a filter (TUNATTACHFILTER is TAP-only): software keeps filtering."""
    from netoffload.soft.rules import Rule

    a = testbed.host("pd")
    tun = TunDevice.open_in(a, "tun0")
    tap = TunDevice.open_in(a, "tap0", tap=True)
    try:
        rules = [Rule("no-9999", proto=(17, 17), dport=(9999, 9999), action=1)]
        res = kc.push_down(tun, rules)
        assert not res.attached and "capability" in res.reason
        assert not tun.filter_attached
        res = kc.push_down(tap, rules)
        assert res.attached, res.reason
        assert tap.filter_attached
    finally:
        tun.close()
        tap.close()


def test_caps_cli_prints_what_was_probed(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from netoffload.cli import main

    assert main(["caps", "--device", "tun", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    tasks = {r["task"] for r in doc["records"]}
    assert {"checksum", "tcp-segment", "tcp-assemble"} <= tasks
    assert not [n for n in os.listdir(netns.NETNS_DIR) if n.startswith(netns.prefix())]


def test_fuzz_submit_and_send_never_raise(testbed: netns.Testbed) -> None:
    """Random bytes, random offload requests: a verdict or a counted refusal, no exception."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    a = testbed.host("z")
    dev = TunDevice.open_in(a, "tun0", addrs=["198.18.1.1/24"])
    good = tcp_packet(v=4, payload=b"q" * 2000, src="198.18.1.2", dst="198.18.9.9")

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        st.lists(
            st.one_of(
                st.binary(min_size=0, max_size=200),
                st.builds(
                    lambda cut, flip: bytes(
                        x ^ (0xFF if i == flip else 0) for i, x in enumerate(good[:cut])
                    ),
                    st.integers(0, len(good)),
                    st.integers(0, 80),
                ),
            ),
            min_size=1,
            max_size=6,
        ),
        st.sampled_from([0, 1, 8, 9, 16, 17]),
        st.integers(0, 3000),
    )
    def run(pkts: list[bytes], offload: int, gso: int) -> None:
        b = Batch.from_packets(pkts)
        b.ext.offload[:] = offload
        b.ext.gso_size[:] = gso
        comp = dev.complete(dev.submit(b, TX_ORDER))
        out = comp.batch
        dead = int((~out.ext.alive()).sum())  # got a verdict at submit: not written
        t0 = dev.tun.write_errors + dev.tun.short_writes + dev.tun.tx_dropped
        sent = dev.send(out)
        refused = dev.tun.write_errors + dev.tun.short_writes + dev.tun.tx_dropped - t0
        dev.recv()  # whatever the kernel sent back (ICMP errors, nothing)
        assert sent + refused + dead == len(out)  # every packet accounted for

    try:
        run()
        assert dev.load().up
    finally:
        dev.close()


def test_uso_offload_hands_up_udp_super_packets(testbed: netns.Testbed) -> None:
    """With USO4+USO6 set, one UDP_SEGMENT send reaches us whole, marked UDP_L4 with its size."""
    a = testbed.host("u")
    dev = TunDevice.open_in(a, "tun0", addrs=["198.18.1.1/24"])
    try:
        if not dev.probed["uso"]:
            pytest.skip("kernel without TUN_F_USO4/6 (Linux < 6.2)")
        dev.enable(Task.CHECKSUM, Task.UDP_ASSEMBLE)
        assert dev.offload_bits & (kc.TUN_F_USO4 | kc.TUN_F_USO6) == kc.TUN_F_USO4 | kc.TUN_F_USO6
        s = a.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.sendmsg(
            [b"u" * 4000],
            [(kc.SOL_UDP, kc.UDP_SEGMENT, struct.pack("H", 1000))],
            0,
            ("198.18.1.2", 9100),
        )
        s.close()
        got = Batch.empty()
        end = time.monotonic() + 2
        while time.monotonic() < end:
            dev.wait_readable(0.1)
            got = dev.recv()
            if len(got) and any(p[9] == 17 for p in got.packets()):
                break
        i = next(i for i in range(len(got)) if got.packet(i)[9] == 17)
        e = got.ext
        assert e.gso_type[i] & 0x7F == GsoType.UDP_L4
        assert e.gso_size[i] == 1000 and e.segs[i] == 4
        assert got.length[i] == 20 + 8 + 4000
        assert e.by_device[i] & Task.UDP_ASSEMBLE
    finally:
        dev.close()


# ------------------------------------------------ open: the current namespace
def _tun_info(ns: netns.Netns, ifname: str) -> dict[str, Any]:
    """What the kernel says of the interface (iproute2's reading of its netlink answer)."""
    link = json.loads(ns.ip("-d", "-j", "link", "show", "dev", ifname))[0]
    assert link["linkinfo"]["info_kind"] == "tun"
    return dict(link["linkinfo"]["info_data"])


@pytest.mark.kernel
@pytest.mark.parametrize("queues", [1, 3])
def test_open_creates_a_vnet_hdr_tun_where_it_is_called(
    testbed: netns.Testbed, queues: int
) -> None:
    h = testbed.host("o")
    name = f"nof{os.getpid() % 100000}"
    dev = h.run(TunDevice.open, name, queues=queues)
    try:
        info = _tun_info(h, name)
        assert info["type"] == "tun" and info["vnet_hdr"] and not info["pi"]
        assert info["multi_queue"] == (queues > 1) and not info["persist"]
        if queues > 1:
            assert info["numqueues"] == queues
        assert len(dev.fds) == queues and dev.ifname == name and dev.netns is None
        assert name not in {n for _, n in socket.if_nameindex()}  # not in this thread's ns
        # it carries traffic: routed into the TUN inside h, read from every queue
        h.ip("addr", "add", "198.18.7.1/24", "dev", name)
        h.ip("link", "set", name, "up")
        s = h.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for port in range(21000, 21020):
            s.sendto(b"o", ("198.18.7.2", port))
        s.close()
        n, end = 0, time.monotonic() + 2
        while n < 20 and time.monotonic() < end:
            dev.wait_readable(0.1)
            for q in range(queues):
                n += sum(1 for p in dev.recv(queue=q).packets() if p[9] == 17)
        assert n == 20
    finally:
        dev.close()
    assert h.ip("link", "show", "dev", name, check=False) == ""  # gone with its fds


@pytest.mark.kernel
def test_open_never_attaches_to_an_existing_interface(testbed: netns.Testbed) -> None:
    h = testbed.host("x")
    testbed.link(h, testbed.host("y"))
    first = h.run(TunDevice.open, "tunx", queues=2)
    try:
        for existing in ("tunx", "lo", "veth0"):
            with pytest.raises(ConfigError, match=f"^interface {existing} already exists$"):
                h.run(TunDevice.open, existing)
        assert _tun_info(h, "tunx")["numqueues"] == 2  # the first one is untouched
    finally:
        first.close()


@pytest.mark.parametrize("name", ["", "a" * 16, "a/b", "a:b", "a b", ".", ".."])
def test_open_refuses_names_the_kernel_would(name: str) -> None:
    with pytest.raises(ConfigError, match="interface name"):
        TunDevice.open(name)


@pytest.mark.parametrize("queues", [0, 257])
def test_open_refuses_queue_counts_the_kernel_would(queues: int) -> None:
    with pytest.raises(ConfigError, match="queues"):
        TunDevice.open("tunq", queues=queues)
