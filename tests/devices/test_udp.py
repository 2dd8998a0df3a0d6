"""UDP socket device: the kernel segments (UDP_SEGMENT), assembles (UDP_GRO), filters."""

from __future__ import annotations

import errno
import select
import socket
import time
from typing import Any

import numpy as np
import pytest

from netoffload.batch import Batch, FilterVerdict, Reason
from netoffload.devices import kernel_common as kc
from netoffload.devices.udp import UdpDevice
from netoffload.tasks import TX_ORDER, Task
from netoffload.testing import netns

IPPROTO_UDPLITE = 136
A4, B4 = "198.18.0.1", "198.18.0.2"
A6, B6 = "fd00::1", "fd00::2"


def _recv_all(s: socket.socket, want: int, timeout: float = 2.0) -> list[bytes]:
    out: list[bytes] = []
    s.setblocking(False)
    end = time.monotonic() + timeout
    while len(out) < want and time.monotonic() < end:
        r, _, _ = select.select([s], [], [], 0.05)
        if r:
            out.append(s.recv(70000))
    return out


def _payload(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


@pytest.mark.parametrize("v", [4, 6])
def test_one_udp_segment_send_arrives_as_n_datagrams(
    two_hosts: tuple[netns.Testbed, netns.Netns, netns.Netns], v: int
) -> None:
    _tb, a, b = two_hosts
    src, dst = (A4, B4) if v == 4 else (A6, B6)
    rx = b.socket(socket.AF_INET if v == 4 else socket.AF_INET6, socket.SOCK_DGRAM)
    rx.bind((dst, 6000))
    dev = UdpDevice.open(a, (src, 0), (dst, 6000))
    try:
        assert dev.probed["udp_segment"]
        assert Task.UDP_SEGMENT in dev.query().records
        data = _payload(10 * 1200 + 300, v)
        batch = Batch.from_packets([data])
        batch.ext.offload[:] = Task.UDP_SEGMENT
        batch.ext.gso_size[:] = 1200
        comp = dev.complete(dev.submit(batch, TX_ORDER))
        assert comp.ok and comp.batch.ext.by_device[0] & Task.UDP_SEGMENT
        assert dev.send(comp.batch) == 1
        c = dev.counters()
        assert c["sends"] == 1 and c["gso_sends"] == 1  # one syscall ...
        got = _recv_all(rx, 12)
        assert [len(x) for x in got] == [1200] * 10 + [300]  # ... eleven datagrams
        assert b"".join(got) == data
    finally:
        dev.close()
        rx.close()


def test_udp_gro_hands_up_coalesced_datagrams(
    two_hosts: tuple[netns.Testbed, netns.Netns, netns.Netns],
) -> None:
    _tb, a, b = two_hosts
    rx = UdpDevice.open(b, (B4, 6001), gro=True)
    tx = UdpDevice.open(a, (A4, 0), (B4, 6001))
    try:
        assert Task.UDP_ASSEMBLE in rx.query().records
        data = _payload(8 * 1000, 7)
        batch = Batch.from_packets([data])
        batch.ext.gso_size[:] = 1000
        assert tx.send(batch) == 1
        parts: list[Batch] = []
        end = time.monotonic() + 2
        while sum(int(p.length.sum()) for p in parts) < len(data) and time.monotonic() < end:
            rx.wait_readable(0.1)
            got = rx.recv()
            if len(got):
                parts.append(got)
        all_ = Batch.concat(parts)
        assert b"".join(all_.packets()) == data
        e = all_.ext
        assert rx.udp.gro_in >= 1
        big = np.flatnonzero(all_.length > 1000)
        assert len(big) >= 1
        for i in big:
            assert e.gso_size[i] == 1000
            assert e.segs[i] == (all_.length[i] + 999) // 1000
            assert e.by_device[i] & Task.UDP_ASSEMBLE
        assert (e.by_device & Task.CHECKSUM).all()
    finally:
        rx.close()
        tx.close()


def test_eio_from_the_kernel_drops_uso_and_loses_nothing(
    two_hosts: tuple[netns.Testbed, netns.Netns, netns.Netns],
) -> None:
    """UDP-Lite sockets answer EIO to UDP_SEGMENT: a real kernel refusal."""
    _tb, a, b = two_hosts
    rx = b.socket(socket.AF_INET, socket.SOCK_DGRAM, IPPROTO_UDPLITE)
    rx.bind((B4, 6002))
    dev = UdpDevice.open(a, (A4, 0), (B4, 6002), proto=IPPROTO_UDPLITE)
    try:
        assert dev.uso  # probed: the option exists
        payloads = [_payload(5 * 700, s) for s in range(3)]
        batch = Batch.from_packets(payloads)
        batch.ext.offload[:] = Task.UDP_SEGMENT
        batch.ext.gso_size[:] = 700
        out = dev.complete(dev.submit(batch, TX_ORDER)).batch
        assert dev.send(out) == 3
        c = dev.counters()
        assert c["eio"] == 2  # the send and its re-probe retry
        assert c["uso_dropped"] is True
        assert Task.UDP_SEGMENT not in dev.query().records
        assert not dev.uso
        got = _recv_all(rx, 15)
        assert len(got) == 15 and b"".join(got) == b"".join(payloads)
        # the engine would now keep udp-segment in software; a new submit refuses it
        again = Batch.from_packets([payloads[0]])
        again.ext.offload[:] = Task.UDP_SEGMENT
        again.ext.gso_size[:] = 700
        assert not dev.complete(dev.submit(again, TX_ORDER)).ok
    finally:
        dev.close()
        rx.close()


def test_single_eio_is_retried_and_capability_kept(
    two_hosts: tuple[netns.Testbed, netns.Netns, netns.Netns], monkeypatch: pytest.MonkeyPatch
) -> None:
    _tb, a, b = two_hosts
    rx = b.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind((B4, 6003))
    dev = UdpDevice.open(a, (A4, 0), (B4, 6003))
    real = dev._send_gso
    fails = [OSError(errno.EIO, "injected")]

    def flaky(payload: memoryview, g: int, to: tuple[object, ...] | None) -> None:
        if fails:
            raise fails.pop()
        real(payload, g, to)

    monkeypatch.setattr(dev, "_send_gso", flaky)
    try:
        batch = Batch.from_packets([_payload(3000, 1)])
        batch.ext.gso_size[:] = 1000
        assert dev.send(batch) == 1
        assert dev.counters()["eio"] == 1 and dev.uso
        assert len(_recv_all(rx, 3)) == 3
    finally:
        dev.close()
        rx.close()


def test_reuseport_group_spreads_flows(
    two_hosts: tuple[netns.Testbed, netns.Netns, netns.Netns],
) -> None:
    _tb, a, b = two_hosts
    group = UdpDevice.reuseport_group(b, (B4, 6004), 2)
    senders = [a.socket() for _ in range(40)]
    try:
        for i, s in enumerate(senders):
            s.sendto(b"flow%d" % i, (B4, 6004))
        counts = [0, 0]
        end = time.monotonic() + 2
        while sum(counts) < 40 and time.monotonic() < end:
            for k, d in enumerate(group):
                d.wait_readable(0.02)
                counts[k] += len(d.recv())
        assert sum(counts) == 40
        assert min(counts) > 0  # both workers got flows
    finally:
        for s in senders:
            s.close()
        for d in group:
            d.close()


def test_attached_filter_drops_in_kernel(
    two_hosts: tuple[netns.Testbed, netns.Netns, netns.Netns],
) -> None:
    _tb, a, b = two_hosts
    rx = UdpDevice.open(b, (B4, 6005), gro=False)
    try:
        assert Task.DOS_FILTER in rx.query().records
        # hand-written cBPF: offset 0 is the UDP header; drop payloads starting with 'X'
        rx.attach_filter(
            [(0x30, 0, 0, 8), (0x15, 1, 0, ord("X")), (0x06, 0, 0, 0xFFFF), (0x06, 0, 0, 0)]
        )
        before = b.snmp()["Udp"]["InErrors"]
        s = a.socket()
        for i in range(10):
            s.sendto((b"X" if i % 2 else b"o") + b"%d" % i, (B4, 6005))
        s.close()
        got: list[bytes] = []
        end = time.monotonic() + 1
        while time.monotonic() < end and len(got) < 5:
            rx.wait_readable(0.1)
            bt = rx.recv()
            got += bt.packets()
            if len(bt):  # a program attached by hand is not the DoS filter: nothing marked
                assert not (bt.ext.done & Task.DOS_FILTER).any()
                assert (bt.ext.filter_verdict == FilterVerdict.PASS).all()
        time.sleep(0.05)
        got += rx.recv().packets()
        assert sorted(got) == [b"o0", b"o2", b"o4", b"o6", b"o8"]
        assert b.snmp()["Udp"]["InErrors"] - before == 5
    finally:
        rx.close()


def test_peer_namespace_removed_mid_run(
    two_hosts: tuple[netns.Testbed, netns.Netns, netns.Netns],
) -> None:
    _tb, a, b = two_hosts
    dev = UdpDevice.open(a, (A4, 0), (B4, 6006), io_timeout=0.2)
    try:
        assert dev.send(Batch.from_packets([b"before"])) == 1
        b.delete()  # nothing else holds b: its veth end dies, and a's with it
        t0 = time.monotonic()
        sent = 0
        for _ in range(20):
            sent += dev.send(Batch.from_packets([b"after"] * 5))
            time.sleep(0.01)
        assert time.monotonic() - t0 < 10  # nothing hangs
        assert dev.stats.errors > 0 and dev.udp.path_errors > 0  # counted, not raised
        assert sent < 100
    finally:
        dev.close()


def test_bad_input(two_hosts: tuple[netns.Testbed, netns.Netns, netns.Netns]) -> None:
    _tb, a, _b = two_hosts
    from netoffload.errors import ConfigError, DeviceDown

    with pytest.raises(ConfigError):
        UdpDevice.open(a, ("10.1.2.3", 0))  # outside the test ranges
    with pytest.raises(ConfigError):
        UdpDevice.reuseport_group(a, (A4, 0), 0)
    dev = UdpDevice.open(a, (A4, 0), (B4, 6007))
    b = Batch.from_packets([b"x" * 70000])
    b.ext.offload[:] = Task.UDP_SEGMENT
    b.ext.gso_size[:] = 100
    comp = dev.complete(dev.submit(b, TX_ORDER))
    assert comp.batch.ext.error[0] in (Reason.SUPER_TOO_BIG, Reason.TOO_MANY_SEGMENTS)
    z = Batch.from_packets([b"y" * 500])
    z.ext.offload[:] = Task.UDP_SEGMENT
    comp = dev.complete(dev.submit(z, TX_ORDER))
    assert comp.batch.ext.error[0] == Reason.GSO_SIZE_ZERO
    dev.close()
    with pytest.raises(DeviceDown):
        dev.send(Batch.from_packets([b"z"]))
    assert kc.UDP_SEGMENT == 103 and kc.UDP_GRO == 104


def test_push_down_of_compiled_dos_rules(
    two_hosts: tuple[netns.Testbed, netns.Netns, netns.Netns],
) -> None:
    """DoS drop list compiled to cBPF (helper D's compiler), attached with SO_ATTACH_FILTER."""
    import ipaddress

    from netoffload.soft.rules import Bucket, DosConfig

    _tb, a, b = two_hosts
    a.add_address("veth0", "198.18.0.3/24")
    b.static_neighbors("veth0", a, "veth0", ["198.18.0.3"])
    rx = UdpDevice.open(b, (B4, 6010), gro=False)
    try:
        cfg = DosConfig(
            drop_src=(ipaddress.ip_network("198.18.0.3/32"),), rate=Bucket(1000.0, 100.0)
        )
        res = kc.push_down(rx, cfg)
        assert res.attached, res.reason
        assert res.instructions > 0
        assert any("token bucket" in x for x in res.in_software)  # stateful part stays in software
        before = b.snmp()["Udp"]["InErrors"]
        for src in ("198.18.0.1", "198.18.0.3"):
            s = a.socket()
            s.bind((src, 0))
            for i in range(4):
                s.sendto(f"{src}/{i}".encode(), (B4, 6010))
            s.close()
        got: list[bytes] = []
        end = time.monotonic() + 1
        while time.monotonic() < end and len(got) < 4:
            rx.wait_readable(0.1)
            got += rx.recv().packets()
        time.sleep(0.05)
        got += rx.recv().packets()
        assert sorted(got) == [f"198.18.0.1/{i}".encode() for i in range(4)]
        assert b.snmp()["Udp"]["InErrors"] - before == 4  # dropped by the kernel
        # rules that cannot compile: not attached, the software filter stays
        bad = kc.push_down(rx, object())
        assert not bad.attached and bad.reason
    finally:
        rx.close()


def test_eagain_forever_gives_up_after_io_timeout(
    two_hosts: tuple[netns.Testbed, netns.Netns, netns.Netns], monkeypatch: pytest.MonkeyPatch
) -> None:
    _tb, a, _b = two_hosts
    dev = UdpDevice.open(a, (A4, 0), (B4, 6020), io_timeout=0.2)

    def full(payload: memoryview, to: tuple[object, ...] | None) -> None:
        raise BlockingIOError(errno.EAGAIN, "socket buffer full")

    monkeypatch.setattr(dev, "_sendto", full)
    try:
        t0 = time.monotonic()
        assert dev.send(Batch.from_packets([b"a", b"b", b"c"])) == 0
        assert time.monotonic() - t0 < 5  # nothing hangs
        assert dev.udp.tx_dropped == 3
    finally:
        dev.close()


# ------------------------------------------- open_here: the current namespace
@pytest.mark.kernel
@pytest.mark.parametrize("v", [4, 6])
def test_open_here_binds_where_it_is_called(
    two_hosts: tuple[netns.Testbed, netns.Netns, netns.Netns], v: int
) -> None:
    _tb, a, b = two_hosts
    mine, theirs = (A4, B4) if v == 4 else (A6, B6)
    fam = socket.AF_INET if v == 4 else socket.AF_INET6
    dev = a.run(UdpDevice.open_here, (mine, 0), fwmark=0x5A17)
    peer = b.socket(fam, socket.SOCK_DGRAM)
    try:
        # the kernel's own answers: the address exists only in a, the mark is set
        here = dev.sock.getsockname()
        assert here[0] == mine
        assert dev.sock.getsockopt(socket.SOL_SOCKET, kc.SO_MARK) == 0x5A17
        peer.bind((theirs, 0))
        peer.sendto(b"from b", (mine, here[1]))
        got = Batch.empty()
        end = time.monotonic() + 2
        while not len(got) and time.monotonic() < end:
            dev.wait_readable(0.1)
            got = dev.recv()
        assert got.packets() == [b"from b"]
        assert dev.last_sources[0][:2] == peer.getsockname()[:2]
        assert dev.send(Batch.from_packets([b"from a"]), peer.getsockname()[:2]) == 1
        assert _recv_all(peer, 1) == [b"from a"]
    finally:
        dev.close()
        peer.close()


@pytest.mark.kernel
def test_open_here_has_no_test_range_check(testbed: netns.Testbed) -> None:
    from netoffload.errors import ConfigError

    h = testbed.host("here")  # its own loopback: bound to, nothing sent
    with pytest.raises(ConfigError, match="outside"):
        UdpDevice.open(h, ("127.0.0.1", 0))
    dev = h.run(UdpDevice.open_here, ("127.0.0.1", 0))
    try:
        assert dev.sock.getsockname()[0] == "127.0.0.1"
        assert dev.sock.getsockopt(socket.SOL_SOCKET, kc.SO_MARK) == 0  # no fwmark: none set
    finally:
        dev.close()


@pytest.mark.kernel
def test_open_here_reuseport_and_bind_errors(testbed: netns.Testbed) -> None:
    from netoffload.errors import ConfigError

    h = testbed.host("rp")
    one = h.run(UdpDevice.open_here, ("", 0), reuseport=True)
    port = one.sock.getsockname()[1]
    two = h.run(UdpDevice.open_here, ("", port), reuseport=True)
    try:
        with pytest.raises(ConfigError, match=f"^UDP bind :{port}: .*in use"):
            h.run(UdpDevice.open_here, ("", port))
        with pytest.raises(ConfigError, match=r"^UDP bind 198\.18\.200\.1:0: "):
            h.run(UdpDevice.open_here, ("198.18.200.1", 0))  # no such address in h
    finally:
        one.close()
        two.close()


@pytest.mark.parametrize(
    ("bind", "kw", "match"),
    [
        (("localhost", 0), {}, "not an IP address"),
        (("198.18.0.1", 0), {"fwmark": -1}, "fwmark"),
        (("198.18.0.1", 0), {"fwmark": 1 << 32}, "fwmark"),
    ],
)
def test_open_here_refuses_bad_arguments_before_any_socket(
    bind: tuple[str, int], kw: dict[str, Any], match: str
) -> None:
    from netoffload.errors import ConfigError

    with pytest.raises(ConfigError, match=match):
        UdpDevice.open_here(bind, **kw)


class _EioSocket:
    """A socket whose ``recvmsg_into`` fails with EIO the next ``reads`` times (the rest is
    the real socket's)."""

    def __init__(self, sock: socket.socket, reads: int) -> None:
        self._sock = sock
        self.reads = reads

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

    def recvmsg_into(self, *args: Any) -> Any:
        if self.reads > 0:
            self.reads -= 1
            raise OSError(errno.EIO, "injected")
        return self._sock.recvmsg_into(*args)


def test_uso_dropped_by_eio_is_asked_again_after_the_back_off(
    two_hosts: tuple[netns.Testbed, netns.Netns, netns.Netns], monkeypatch: pytest.MonkeyPatch
) -> None:
    """UDP-Lite refuses UDP_SEGMENT with EIO for real: after the back-off the kernel is
    asked again (the option is there), the next segmented send fails again and drops
    it for twice as long; nothing is lost on the way."""
    from netoffload.devices import udp as udp_mod

    monkeypatch.setattr(udp_mod, "USO_REPROBE_S", 0.3)
    _tb, a, b = two_hosts
    rx = b.socket(socket.AF_INET, socket.SOCK_DGRAM, IPPROTO_UDPLITE)
    rx.bind((B4, 6005))
    dev = UdpDevice.open(a, (A4, 0), (B4, 6005), proto=IPPROTO_UDPLITE)
    try:
        payloads = [_payload(4 * 700, s) for s in range(2)]

        def send_all() -> int:
            batch = Batch.from_packets(payloads)
            batch.ext.gso_size[:] = 700
            return dev.send(batch)

        assert send_all() == 2
        assert dev.counters()["uso_dropped"] is True and not dev.uso
        time.sleep(0.35)
        assert dev.uso and Task.UDP_SEGMENT in dev.query().records  # asked again
        assert dev.counters()["uso_reprobes"] == 1
        assert send_all() == 2  # refused again: dropped, for twice as long (0.6 s)
        assert not dev.uso and dev._uso_retry_at - time.monotonic() > 0.45
        time.sleep(0.65)
        assert dev.uso and dev.counters()["uso_reprobes"] == 2
        got = _recv_all(rx, 16)
        assert b"".join(got) == b"".join(payloads) * 2
    finally:
        dev.close()
        rx.close()


def test_uso_comes_back_when_the_kernel_takes_it_again(
    two_hosts: tuple[netns.Testbed, netns.Netns, netns.Netns], monkeypatch: pytest.MonkeyPatch
) -> None:
    from netoffload.devices import udp as udp_mod

    monkeypatch.setattr(udp_mod, "USO_REPROBE_S", 0.2)
    _tb, a, b = two_hosts
    rx = b.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind((B4, 6006))
    dev = UdpDevice.open(a, (A4, 0), (B4, 6006))
    real = dev._send_gso
    fails = [OSError(errno.EIO, "injected")] * 2  # the send and its retry

    def flaky(payload: memoryview, g: int, to: tuple[object, ...] | None) -> None:
        if fails:
            raise fails.pop()
        real(payload, g, to)

    monkeypatch.setattr(dev, "_send_gso", flaky)
    try:
        batch = Batch.from_packets([_payload(3000, 1)])
        batch.ext.gso_size[:] = 1000
        assert dev.send(batch) == 1 and not dev.uso
        assert dev.counters()["gso_sends"] == 0 and dev.counters()["soft_segmented"] == 1
        time.sleep(0.25)
        batch = Batch.from_packets([_payload(3000, 2)])
        batch.ext.gso_size[:] = 1000
        assert dev.send(batch) == 1
        c = dev.counters()
        assert c["gso_sends"] == 1 and c["uso_reprobes"] == 1 and c["uso_dropped"] is False
        assert len(_recv_all(rx, 6)) == 6
    finally:
        dev.close()
        rx.close()


def test_gro_read_eio_falls_back_to_plain_reads_then_gro_again(
    two_hosts: tuple[netns.Testbed, netns.Netns, netns.Netns], monkeypatch: pytest.MonkeyPatch
) -> None:
    from netoffload.devices import udp as udp_mod

    monkeypatch.setattr(udp_mod, "USO_REPROBE_S", 0.3)
    _tb, a, b = two_hosts
    dev = UdpDevice.open(b, (B4, 6007))
    tx = a.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        assert dev.probed["udp_gro"] and Task.UDP_ASSEMBLE in dev.query().records
        faulty = _EioSocket(dev.sock, reads=1)
        dev.sock = faulty  # type: ignore[assignment]
        for i in range(3):
            tx.sendto(_payload(500, i), (B4, 6007))
        time.sleep(0.1)
        assert len(dev.recv(64)) == 0  # the read failed: counted, nothing lost
        c = dev.counters()
        errs = c["errno"]
        assert c["gro_dropped"] is True and isinstance(errs, dict) and errs.get("EIO") == 1
        assert Task.UDP_ASSEMBLE not in dev.query().records
        assert faulty.getsockopt(kc.SOL_UDP, kc.UDP_GRO) == 0  # plain reads
        assert len(dev.recv(64)) == 3
        time.sleep(0.35)
        for i in range(3):
            tx.sendto(_payload(500, 10 + i), (B4, 6007))
        time.sleep(0.1)
        got = dev.recv(64)
        assert faulty.getsockopt(kc.SOL_UDP, kc.UDP_GRO) == 1  # asked again: on
        c = dev.counters()
        assert c["gro_dropped"] is False and c["gro_reprobes"] == 1
        assert Task.UDP_ASSEMBLE in dev.query().records
        # three datagrams of one size from one flow: one coalesced read or three
        assert int(got.length.sum()) == 1500
    finally:
        dev.close()
        tx.close()
