"""tunnel/index_filter: the socket filter that knows the live receiver indices.

Checked against a plain reading of the WireGuard rules (the whitepaper's message
layouts: type, three zero bytes, the fixed lengths, the receiver index where each
message has it, little-endian), through our cBPF interpreter for many random
datagrams and through the kernel itself (SO_ATTACH_FILTER on a real UDP socket)."""

from __future__ import annotations

import random
import socket
import struct
import time
from collections.abc import Collection

import pytest

from netoffload.bpf import interp
from netoffload.bpf.compiler import attach_socket
from netoffload.testing import netns
from netoffload.tunnel import datapath
from netoffload.tunnel.index_filter import MAX_INDICES, IndexFilter, live_filter


def oracle(payload: bytes, live: Collection[int] | None) -> bool:
    """Keep? ``live`` None: no index check (the shape alone)."""
    if len(payload) < 4 or payload[1:4] != b"\0\0\0":
        return False
    t, n = payload[0], len(payload)
    if t == 1:
        return n % 148 == 0
    where = {2: (8, n % 92 == 0), 3: (4, n % 64 == 0), 4: (4, n >= 32)}.get(t)
    if where is None or not where[1]:
        return False
    at = where[0]
    return live is None or struct.unpack_from("<I", payload, at)[0] in live


def _udp(payload: bytes) -> bytes:
    return struct.pack("!HHHH", 4000, 51820, 8 + len(payload), 0) + payload


def _message(rng: random.Random, live: list[int]) -> bytes:
    t = rng.choice([1, 2, 3, 4, 4, 4, 0, 5, rng.randrange(256)])
    n = rng.choice([4, 31, 32, 33, 64, 92, 148, 184, 296, 1400, rng.randrange(4, 600)])
    if t in (1, 2, 3) and rng.random() < 0.6:
        n = {1: 148, 2: 92, 3: 64}[t] * rng.randrange(1, 4)
    body = bytearray(rng.randbytes(n))
    body[0] = t
    body[1:4] = b"\0\0\0" if rng.random() < 0.9 else rng.randbytes(3)
    at = 8 if t == 2 else 4
    if len(body) >= at + 4:
        idx = rng.choice(live) if live and rng.random() < 0.5 else rng.getrandbits(32)
        body[at : at + 4] = struct.pack("<I", idx)
    return bytes(body)


@pytest.mark.parametrize("n_live", [0, 1, 3, 5, 17, 200, MAX_INDICES])
def test_agrees_with_the_rules(n_live: int) -> None:
    rng = random.Random(n_live)
    live = [rng.getrandbits(32) for _ in range(n_live)]
    prog = live_filter(live)
    interp.check(prog)  # what the kernel would accept
    for _ in range(3000):
        m = _message(rng, live)
        assert (interp.run(prog, _udp(m), checked=True) != 0) == oracle(m, set(live)), m[:16]
    for i in live[:50]:  # every live index, each kind of message that names it
        for m in (
            b"\4\0\0\0" + struct.pack("<I", i) + bytes(24),
            b"\2\0\0\0" + bytes(4) + struct.pack("<I", i) + bytes(80),
            b"\3\0\0\0" + struct.pack("<I", i) + bytes(56),
        ):
            assert interp.run(prog, _udp(m), checked=True) != 0


def test_too_many_indices_is_the_shape_filter() -> None:
    rng = random.Random(5)
    live = [rng.getrandbits(32) for _ in range(MAX_INDICES + 1)]
    prog = live_filter(live)
    shape = datapath.shape_filter()
    for _ in range(2000):
        m = _message(rng, live)
        want = oracle(m, None)
        assert (interp.run(prog, _udp(m)) != 0) == want
        assert (interp.run(shape, _udp(m)) != 0) == want  # the same as the shape filter


def test_refresh_attaches_only_on_a_change() -> None:
    got: list[int] = []
    f = IndexFilter(lambda prog: got.append(len(prog)))
    assert f.refresh({1, 2}) and f.refresh({1, 2, 3})
    assert not f.refresh([3, 2, 1])
    assert len(got) == 2 and f.rebuilds == 2 and f.checks_index
    assert f.describe()["live_indices"] == 3


@pytest.mark.kernel
def test_the_kernel_keeps_what_the_rules_keep(
    two_hosts: tuple[netns.Testbed, netns.Netns, netns.Netns],
) -> None:
    _tb, a, b = two_hosts
    rng = random.Random(9)
    live = [rng.getrandbits(32) for _ in range(40)]
    rx = a.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx = b.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        rx.bind(("198.18.0.1", 0))
        attach_socket(rx, live_filter(live))
        sent = [_message(rng, live) for _ in range(400)]
        for m in sent:
            tx.sendto(m, rx.getsockname())
        time.sleep(0.2)
        rx.setblocking(False)
        got = []
        while True:
            try:
                got.append(rx.recv(4096))
            except BlockingIOError:
                break
    finally:
        rx.close()
        tx.close()
    want = [m for m in sent if oracle(m, set(live))]
    assert got == want
    assert 0 < len(want) < len(sent)


@pytest.mark.kernel
def test_keep_live_on_the_tunnels_device(
    two_hosts: tuple[netns.Testbed, netns.Netns, netns.Netns],
) -> None:
    from netoffload.devices.udp_ip import UdpIpDevice
    from netoffload.tunnel.index_filter import filter_of, keep_live

    _tb, a, b = two_hosts
    dev = a.run(UdpIpDevice.bind_here, 0)
    tx = b.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        assert keep_live([dev], {7, 8}) and not keep_live(dev, [8, 7])
        f = filter_of(dev)
        assert f is not None and f.checks_index and f.rebuilds == 1
        assert keep_live(dev, {8, 9})  # 7 gone, 9 new

        def data(i: int) -> bytes:
            return b"\4\0\0\0" + struct.pack("<I", i) + bytes(40)

        for i in (7, 8, 9, 10):
            tx.sendto(data(i), ("198.18.0.1", dev.local_port))
        time.sleep(0.2)
        got = dev.recv()
        kept = [struct.unpack_from("<I", p, 28 + 4)[0] for p in got.packets()]
        assert kept == [8, 9]
    finally:
        dev.close()
        tx.close()
