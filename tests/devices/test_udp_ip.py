"""UdpIpDevice.recv: each datagram as an outer IP/UDP packet, in reused buffers.

The expected headers are built here with ``struct`` from what the kernel says (the
sender's address and port, the socket's port) and read back with scapy; the reused
buffers are checked for stale bytes (a batch after a bigger one of the other IP
version) and for batches still held while the next ones are read."""

from __future__ import annotations

import ipaddress
import socket
import struct
import time
from collections.abc import Iterator

import numpy as np
import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6

from netoffload.batch import Batch
from netoffload.devices.udp_ip import OutPool, UdpIpDevice
from netoffload.testing import netns

A4, B4 = "198.18.0.1", "198.18.0.2"
A6, B6 = "fd00::1", "fd00::2"

pytestmark = pytest.mark.kernel


def _payload(n: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def _expected(src: str, sport: int, dport: int, payload: bytes) -> bytes:
    """The outer packet the device promises: source from the kernel, destination 0,
    TTL / hop limit 64, no IP or UDP checksum (the kernel verified it)."""
    ip = ipaddress.ip_address(src)
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0)
    if ip.version == 4:
        hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28 + len(payload), 0, 0, 64, 17, 0,
                          ip.packed, bytes(4))  # fmt: skip
    else:
        hdr = struct.pack("!IHBB16s16s", 6 << 28, 8 + len(payload), 17, 64, ip.packed,
                          bytes(16))  # fmt: skip
    return hdr + udp + payload


def _read(dev: UdpIpDevice, want: int, timeout: float = 3.0) -> Batch:
    got: list[Batch] = []
    n = 0
    end = time.monotonic() + timeout
    while n < want and time.monotonic() < end:
        dev.wait_readable(0.1)
        b = dev.recv()
        if len(b):
            got.append(b)
            n += len(b)
    assert n == want, f"read {n} of {want} datagrams"
    assert len(got) == 1, "sent before the read: one batch expected"
    return got[0]


@pytest.fixture
def rx(
    two_hosts: tuple[netns.Testbed, netns.Netns, netns.Netns],
) -> Iterator[tuple[UdpIpDevice, socket.socket, socket.socket]]:
    _tb, a, b = two_hosts
    dev = a.run(UdpIpDevice.bind_here, 0)
    s4 = b.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s4.bind((B4, 0))
    s6 = b.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s6.bind((B6, 0))
    yield dev, s4, s6
    dev.close()
    s4.close()
    s6.close()


def _send(s: socket.socket, dst: str, port: int, payloads: list[bytes]) -> None:
    for p in payloads:
        s.sendto(p, (dst, port))
    time.sleep(0.1)  # all queued at the device's socket before it reads


def test_outer_headers_as_scapy_reads_them(
    rx: tuple[UdpIpDevice, socket.socket, socket.socket],
) -> None:
    dev, s4, s6 = rx
    port = dev.local_port
    p4 = [_payload(n, n) for n in (1, 100, 1400)]
    p6 = [_payload(n, n + 7) for n in (3, 1200)]
    _send(s4, A4, port, p4)
    _send(s6, A6, port, p6)
    got = _read(dev, 5).packets()
    sp4, sp6 = s4.getsockname()[1], s6.getsockname()[1]
    want = [_expected(B4, sp4, port, p) for p in p4] + [_expected(B6, sp6, port, p) for p in p6]
    assert got == want
    for raw, p in zip(got[:3], p4, strict=True):
        pkt = IP(raw)
        assert (pkt.src, pkt.ttl, pkt.proto, pkt.len) == (B4, 64, 17, 28 + len(p))
        assert (pkt[UDP].sport, pkt[UDP].dport, bytes(pkt[UDP].payload)) == (sp4, port, p)
    for raw, p in zip(got[3:], p6, strict=True):
        pkt6 = IPv6(raw)
        assert (pkt6.src, pkt6.nh, pkt6.hlim, pkt6.plen) == (B6, 17, 64, 8 + len(p))
        assert (pkt6[UDP].sport, pkt6[UDP].dport, bytes(pkt6[UDP].payload)) == (sp6, port, p)


def test_reused_buffer_holds_no_stale_bytes(
    rx: tuple[UdpIpDevice, socket.socket, socket.socket],
) -> None:
    dev, s4, s6 = rx
    port = dev.local_port
    big = [_payload(1400, k) for k in range(40)]
    _send(s6, A6, port, big)
    first = _read(dev, 40)
    assert first.packets()[0] == _expected(B6, s6.getsockname()[1], port, big[0])
    del first  # the buffer is free again: the next batch lands in it
    small = [b"\xff" * k for k in (1, 20, 33)]
    _send(s4, A4, port, small)
    got = _read(dev, 3).packets()
    assert got == [_expected(B4, s4.getsockname()[1], port, p) for p in small]


def test_held_batches_never_change(
    rx: tuple[UdpIpDevice, socket.socket, socket.socket],
) -> None:
    dev, s4, _s6 = rx
    port = dev.local_port
    held: list[tuple[Batch, list[bytes]]] = []
    for k in range(OutPool.POOL + 2):  # past the pool: then fresh buffers
        pays = [_payload(300 + 50 * k, 100 * k + j) for j in range(4)]
        _send(s4, A4, port, pays)
        b = _read(dev, 4)
        want = [_expected(B4, s4.getsockname()[1], port, p) for p in pays]
        assert b.packets() == want
        held.append((b, want))
    for b, want in held:
        assert b.packets() == want
    assert dev._out.fresh == 2
