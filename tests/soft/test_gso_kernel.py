"""Proof against the Linux kernel: its GSO output is byte for byte ours.

Topology (all inside namespaces the test creates; addresses from 198.18.0.0/15
and fd00::/8)::

    [ns a]  tun0 198.18.2.1 / fd00:2::1  --(forwarding)-->  veth0 198.18.1.1 / fd00:1::1
                                                               |  (tx checksum off: the
                                                               |   kernel segments and fills
                                                               |   every checksum in software)
    [ns b]                                                  veth0 198.18.1.2 / fd00:1::2
                                                              AF_PACKET capture here

A super-packet written into tun0 with a virtio_net_hdr (GSO type and size,
NEEDS_CSUM) is forwarded by namespace a (TTL/hop limit minus one) and segmented
on the way out of a's veth. So we write it with TTL 65 and compare what b
receives with our segmentation of the same super-packet at TTL 64 -- exactly
the forwarding change, accounted for on the input, nothing masked.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import time

import numpy as np
import pytest

from netoffload.batch import Batch, GsoType, VnetFlag, XFlag, ext_to_vnet
from netoffload.devices import kernel_common as kc
from netoffload.soft.checksum import fill, to_partial
from netoffload.soft.segment import segment
from netoffload.testing import netns
from netoffload.testing.packets import tcp_packet, udp_packet

SRC4, DST4 = "198.18.2.2", "198.18.1.2"
SRC6, DST6 = "fd00:2::2", "fd00:1::2"
TS_OPTS = b"\x01\x01\x08\x0a" + bytes(range(1, 9))
ETH_P_ALL = 0x0003
PACKET_HOST = 0

CASES = [
    # (v, proto, payload size, mss)
    (4, 6, 3000, 1448),
    (4, 6, 20000, 1000),
    (4, 6, 65535 - 52, 1448),
    (6, 6, 9000, 1440),
    (6, 6, 65535 - 32, 1200),
    (4, 17, 4000, 1400),
    (4, 17, 30000, 1000),
    (6, 17, 7000, 1232),
    (6, 17, 60000, 1452),
]


def _super(v: int, proto: int, size: int, ttl: int, i: int) -> bytes:
    pay = bytes((k * 7 + i) & 0xFF for k in range(size))
    src, dst = (SRC4, DST4) if v == 4 else (SRC6, DST6)
    if proto == 6:
        return tcp_packet(
            v,
            pay,
            options=TS_OPTS if v == 4 else b"",
            src=src,
            dst=dst,
            sport=40000 + i,
            dport=9,
            seq=0x10000000 * i + 12345,
            ack=777,
            flags=0x18 | (0x80 if i % 2 else 0) | (0x01 if i % 3 == 0 else 0),
            ident=1000 * i + 1,
            ttl=ttl,
            tos=0x02,
        )
    return udp_packet(
        v, pay, src=src, dst=dst, sport=40000 + i, dport=9, ident=1000 * i + 1, ttl=ttl
    )


def _gso_type(v: int, proto: int) -> int:
    if proto == 17:
        return int(GsoType.UDP_L4)
    return int(GsoType.TCPV4 if v == 4 else GsoType.TCPV6)


def _vnet_and_packet(pkt: bytes, v: int, proto: int, mss: int) -> bytes:
    """The write for TUN: virtio_net_hdr (GSO, NEEDS_CSUM, pseudo-header preloaded) + packet."""
    b = Batch.from_packets([pkt])
    to_partial(b, np.ones(1, dtype=np.bool_))
    b.ext.gso_type[:] = _gso_type(v, proto)
    b.ext.gso_size[:] = mss
    return ext_to_vnet(b.ext) + bytes(b.packet(0))


def _ours(pkt: bytes, v: int, proto: int, mss: int) -> list[bytes]:
    b = Batch.from_packets([pkt])
    b.ext.gso_type[:] = _gso_type(v, proto)
    b.ext.gso_size[:] = mss
    out, plan = segment(b, np.ones(1, dtype=np.bool_), proto)
    assert plan.error[0] == 0
    return out.packets()


@pytest.fixture
def topo(testbed: netns.Testbed, tun_ok: None):  # type: ignore[no-untyped-def]
    from netoffload.devices.ethtool import Ethtool

    a, b = testbed.host("gsoa"), testbed.host("gsob")
    testbed.link(
        a,
        b,
        addrs_a=["198.18.1.1/24", "fd00:1::1/64"],
        addrs_b=["198.18.1.2/24", "fd00:1::2/64"],
        mtu=9000,
    )
    a.exec(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
    a.exec(["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"])
    # software GSO with full checksums on a's veth; no GRO on b's
    ea = Ethtool(a, "veth0")
    ea.set(
        {
            k: False
            for k in (
                "tx-checksum-ip-generic",
                "tx-tcp-segmentation",
                "tx-tcp6-segmentation",
                "tx-udp-segmentation",
                "tx-generic-segmentation",
            )
            if k in ea.names()
        }
    )
    eb = Ethtool(b, "veth0")
    eb.set(
        {
            k: False
            for k in ("rx-gro", "generic-receive-offload", "rx-udp-gro-forwarding", "rx-gro-list")
            if k in eb.names()
        }
    )
    import json

    mac_b = json.loads(b.ip("-j", "link", "show", "veth0"))[0]["address"]
    a.ip("neigh", "replace", DST4, "lladdr", mac_b, "dev", "veth0", "nud", "permanent")
    a.ip("-6", "neigh", "replace", DST6, "lladdr", mac_b, "dev", "veth0", "nud", "permanent")
    fd, _ifname = a.open_tun("tun0", addrs=["198.18.2.1/24", "fd00:2::1/64"], mtu=65000)
    offl = kc.TUN_F_CSUM | kc.TUN_F_TSO4 | kc.TUN_F_TSO6 | kc.TUN_F_USO4 | kc.TUN_F_USO6
    for flags in (offl, kc.TUN_F_CSUM | kc.TUN_F_TSO4 | kc.TUN_F_TSO6):
        try:
            kc.ioctl_int(fd, kc.TUNSETOFFLOAD, flags)
            break
        except OSError:
            continue
    cap = b.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    cap.bind(("veth0", 0))
    cap.setblocking(False)
    cap.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    try:
        yield fd, cap
    finally:
        cap.close()
        with contextlib.suppress(OSError):
            os.close(fd)


def _capture(cap: socket.socket, want: int, src: bytes, timeout: float = 3.0) -> list[bytes]:
    """IP packets from ``src`` received by b (Ethernet header removed)."""
    got: list[bytes] = []
    end = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < end:
        r, _, _ = select.select([cap], [], [], 0.1)
        if not r:
            continue
        while True:
            try:
                data, addr = cap.recvfrom(70000)
            except BlockingIOError:
                break
            if addr[2] != PACKET_HOST:
                continue
            ip = data[14:]
            v = ip[0] >> 4
            s = ip[12:16] if v == 4 else ip[8:24]
            if s == src:
                got.append(ip)
    return got


@pytest.mark.parametrize(("v", "proto", "size", "mss"), CASES)
def test_kernel_segments_like_us(topo, v: int, proto: int, size: int, mss: int) -> None:  # type: ignore[no-untyped-def]
    fd, cap = topo
    src = socket.inet_pton(socket.AF_INET if v == 4 else socket.AF_INET6, SRC4 if v == 4 else SRC6)
    expected: list[bytes] = []
    for i in range(2):
        sent = _super(v, proto, size, 65, i)
        os.write(fd, _vnet_and_packet(sent, v, proto, mss))
        expected += _ours(_super(v, proto, size, 64, i), v, proto, mss)
    got = _capture(cap, len(expected), src)
    assert len(got) == len(expected), f"kernel emitted {len(got)} packets, we {len(expected)}"
    assert sorted(got) == sorted(expected)
    assert got == expected  # and in the same order


# --------------------------------------------------------------------------- GRO
# Namespace g: segments written into tun0 (IFF_NAPI: they go through the kernel's
# GRO, held across writes by gro_flush_timeout) are forwarded to tun1, whose
# reader accepts GSO packets (TUNSETOFFLOAD): what tun1 gives us is the kernel's
# assembly, with its virtio_net_hdr. TTL 65 in, 64 out: our assembly runs on the
# same segments at TTL 64.

GSRC4, GDST4 = "198.18.4.2", "198.18.5.2"
GSRC6, GDST6 = "fd00:4::2", "fd00:5::2"


@pytest.fixture
def gro_topo(testbed: netns.Testbed, tun_ok: None):  # type: ignore[no-untyped-def]
    import fcntl
    import struct

    from netoffload.devices.ethtool import Ethtool

    g = testbed.host("gro")
    g.exec(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
    g.exec(["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"])
    with g.entered():
        fd0 = os.open(kc.TUN_PATH, os.O_RDWR | os.O_CLOEXEC)
    try:
        flags = kc.IFF_TUN | kc.IFF_NO_PI | kc.IFF_VNET_HDR | kc.IFF_NAPI
        with g.entered():
            fcntl.ioctl(fd0, kc.TUNSETIFF, kc.ifreq("tun0", flags))
        fcntl.ioctl(fd0, kc.TUNSETVNETHDRSZ, struct.pack("i", 10))
        for addr in ("198.18.4.1/24", "fd00:4::1/64"):
            g.add_address("tun0", addr)
        g.ip("link", "set", "tun0", "mtu", "9000", "up")
        fd1, _ = g.open_tun("tun1", addrs=["198.18.5.1/24", "fd00:5::1/64"], mtu=9000)
        kc.ioctl_int(
            fd1,
            kc.TUNSETOFFLOAD,
            kc.TUN_F_CSUM | kc.TUN_F_TSO4 | kc.TUN_F_TSO6 | kc.TUN_F_USO4 | kc.TUN_F_USO6,
        )
        e0 = Ethtool(g, "tun0")
        if "rx-udp-gro-forwarding" in e0.names():
            e0.set({"rx-udp-gro-forwarding": True})
        # hold GRO packets across the writes (flushed by age, a jiffy, or the timer)
        g.exec(["sh", "-c", "echo 50000000 > /sys/class/net/tun0/gro_flush_timeout"])
        yield fd0, fd1
    finally:
        os.close(fd0)
        with contextlib.suppress(OSError, UnboundLocalError):
            os.close(fd1)


def _read_all(fd: int, v: int, timeout: float = 0.3) -> list[tuple[bytes, dict[str, int]]]:
    from netoffload.batch import vnet_to_ext

    out: list[tuple[bytes, dict[str, int]]] = []
    while True:
        r, _, _ = select.select([fd], [], [], timeout)
        if not r:
            return out
        d = os.read(fd, 70000)
        pkt = d[10:]
        if (
            pkt
            and pkt[0] >> 4 == v
            and (pkt[12:16] if v == 4 else pkt[8:24])
            == socket.inet_pton(
                socket.AF_INET if v == 4 else socket.AF_INET6, GSRC4 if v == 4 else GSRC6
            )
        ):
            out.append((pkt, vnet_to_ext(d[:10]).row(0)))


def _flow(v: int, proto: int, pattern: str, ttl: int) -> list[bytes]:
    src, dst = (GSRC4, GDST4) if v == 4 else (GSRC6, GDST6)
    sizes = {
        "plain": [1000] * 12,
        "short-last": [1448] * 8 + [300],
        "64k": [1448] * 50,
        "short-mid": [1000] * 5 + [500] + [1000] * 5,
        "psh-mid": [1200] * 10,
        "gap": [1000] * 10,
        "cwr": [800] * 6,
        "hbh": [1000] * 8 + [10],
        "fixed-id": [700] * 8,
        "fixed-id-no-df": [700] * 5,
        "ttl-change": [900] * 8,
        "ack-change": [900] * 8,
    }[pattern]
    v6_ext = ((0, 0),) if pattern == "hbh" else ()
    out, seq = [], 5000

    def ident(i: int) -> int:
        return 100 if pattern.startswith("fixed-id") else 100 + i

    for i, n in enumerate(sizes):
        pay = bytes((i * 3 + k) & 0xFF for k in range(n))
        flags = 0x10
        if pattern == "psh-mid" and i == 4:
            flags |= 0x08
        if pattern == "cwr" and i == 0:
            flags |= 0x80
        if proto == 6:
            s = seq + (1000 if pattern == "gap" and i >= 6 else 0)
            out.append(
                tcp_packet(
                    v,
                    pay,
                    src=src,
                    dst=dst,
                    sport=7000,
                    dport=9,
                    seq=s,
                    flags=flags,
                    ident=ident(i),
                    ttl=ttl - (1 if pattern == "ttl-change" and i >= 5 else 0),
                    ack=99 + (1 if pattern == "ack-change" and i >= 3 else 0),
                    flags_frag=0 if pattern == "fixed-id-no-df" else 0x4000,
                    options=TS_OPTS,
                    v6_ext=v6_ext,
                )
            )
        else:
            out.append(
                udp_packet(
                    v,
                    pay,
                    src=src,
                    dst=dst,
                    sport=7000,
                    dport=9,
                    ident=ident(i),
                    ttl=ttl,
                    v6_ext=v6_ext,
                )
            )
        seq += n
    return out


GRO_CASES = [
    (4, 6, "plain"),
    (6, 6, "plain"),
    (4, 6, "short-last"),
    (6, 6, "64k"),
    (4, 6, "64k"),
    (4, 6, "short-mid"),
    (6, 6, "psh-mid"),
    (4, 6, "gap"),
    (4, 6, "cwr"),
    (4, 17, "plain"),
    (6, 17, "short-mid"),
    (4, 17, "64k"),
    (6, 6, "hbh"),
    (6, 17, "hbh"),
    (4, 6, "fixed-id"),
    (4, 6, "fixed-id-no-df"),
    (4, 6, "ttl-change"),
    (6, 6, "ttl-change"),
    (4, 6, "ack-change"),
    (4, 17, "fixed-id"),
]


@pytest.mark.parametrize(("v", "proto", "pattern"), GRO_CASES)
def test_kernel_assembles_like_us(gro_topo, v: int, proto: int, pattern: str) -> None:  # type: ignore[no-untyped-def]
    from netoffload.soft.assemble import assemble

    fd0, fd1 = gro_topo
    ours_in = _flow(v, proto, pattern, 64)
    b = Batch.from_packets(ours_in)
    ours, oc = assemble(b, np.ones(len(b), dtype=np.bool_), proto)
    want = [(bytes(ours.packet(i)), ours.ext.row(i)) for i in range(len(ours))]
    groups = np.bincount(oc.out_index, minlength=len(ours)).tolist()  # segments per output
    hdr = (20 if v == 4 else 40) + (32 if proto == 6 else 8) + (8 if pattern == "hbh" else 0)
    if pattern.startswith("fixed-id") and proto == 6:
        # a fixed-ID super-packet cannot leave through TUN (virtio has no FIXEDID):
        # the kernel segments it again on tun1, so what we read are partial-checksum
        # segments; ours: one super-packet with FIXED_ID, which segments to the same
        assert len(ours) == 1 and ours.ext.xflags[0] & XFlag.FIXED_ID
        for p in _flow(v, proto, pattern, 65):
            os.write(fd0, bytes(10) + p)
        got = _read_all(fd1, v)
        assert all(e["vflags"] & VnetFlag.NEEDS_CSUM and e["gso_type"] == 0 for _, e in got)
        kb = Batch.from_packets([p for p, _ in got])
        kb.ext.vflags[:] = VnetFlag.NEEDS_CSUM
        kb.ext.csum_start[:] = [e["csum_start"] for _, e in got]
        kb.ext.csum_offset[:] = [e["csum_offset"] for _, e in got]
        fill(kb, np.ones(len(kb), dtype=np.bool_))
        again, _ = segment(ours, np.ones(1, dtype=np.bool_), proto)
        assert kb.packets() == again.packets()
        return
    for _attempt in range(8):
        for p in _flow(v, proto, pattern, 65):
            os.write(fd0, bytes(10) + p)
        got = _read_all(fd1, v)
        # the kernel's packets, as groups of consecutive input segments
        kgroups, k = [], 0
        for pkt, _ in got:
            pay, c = len(pkt) - hdr, 0
            while pay > 0 and k < len(ours_in):
                pay -= len(ours_in[k]) - hdr
                k, c = k + 1, c + 1
            assert pay == 0, "kernel output does not line up with the segments"
            kgroups.append(c)
        assert k == len(ours_in)
        # every kernel packet is our assembly of exactly its segments ...
        k = 0
        for (pkt, ext), c in zip(got, kgroups, strict=True):
            sub = Batch.from_packets(ours_in[k : k + c])
            mine, _ = assemble(sub, np.ones(c, dtype=np.bool_), proto)
            assert len(mine) == 1 and bytes(mine.packet(0)) == pkt
            if c >= 2:
                e = mine.ext.row(0)
                for f in ("gso_type", "gso_size", "vflags", "csum_start", "csum_offset"):
                    assert e[f] == ext[f], f
            k += c
        # ... and it split them where we do (a jiffy tick between writes, or the
        # writer preempted on a busy machine, may add a timing flush, which also
        # moves every later 64 KiB boundary: then try again)
        if kgroups == groups:
            assert [p for p, _ in got] == [p for p, _ in want]
            return
    pytest.fail(f"kernel runs {kgroups} never matched ours {groups} (timing flushes only)")
