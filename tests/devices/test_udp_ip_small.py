"""UdpIpDevice's scalar paths for a few datagrams against its batch paths.

A receive of at most ``udp_ip.SMALL`` datagrams (none a UDP_GRO super-datagram to
split) and a send of at most that many packets are done with plain Python ints
instead of numpy. Both paths must give the same result for the same input: two
devices (``small`` = SMALL and ``small`` = 0) get the same datagrams and batches,
and everything is compared -- packet bytes, batch layout, every extension field,
which pooled buffer a batch lands in, counters, the system calls made. Both are
also checked against an independent build of what the device promises (scapy's
IP/IPv6/UDP headers; payloads cut by their UDP_GRO / UDP_SEGMENT size by hand).

Without a kernel: the devices' sockets are stand-ins that hand out drawn datagrams
(hypothesis) and record the sends (an unbound socket underneath, nothing leaves).
With the kernel (``kernel`` tests): real datagrams over a veth between two
namespaces this test makes (198.18.0.0/15, fd00::/8), read and sent by one device
with the scalar paths on and then off.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.packet import Raw

from netoffload.batch import EXT_FIELDS, Batch, FilterVerdict, Reason
from netoffload.devices import kernel_common as kc
from netoffload.devices import udp_ip
from netoffload.devices.udp_ip import UdpIpDevice
from netoffload.testing import netns

Datagram = tuple[bytes, int, tuple[Any, ...]]  # payload, UDP_GRO size (0: none), source


# ------------------------------------------------------------------ independent builds


def _host(addr: tuple[Any, ...]) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    ip = ipaddress.ip_address(str(addr[0]).split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _outer(addr: tuple[Any, ...], dport: int, payload: bytes) -> bytes:
    """What the device promises for one datagram: source from the kernel, destination
    0, TTL / hop limit 64, no IP ID, flags or checksums (scapy builds it)."""
    src = _host(addr)
    udp = UDP(sport=int(addr[1]), dport=dport, chksum=0) / Raw(payload)
    if src.version == 4:
        return bytes(IP(src=str(src), dst="0.0.0.0", ttl=64, id=0, flags=0, chksum=0) / udp)
    return bytes(IPv6(src=str(src), dst="::", hlim=64) / udp)


def _expected(datagrams: list[Datagram], dport: int) -> list[bytes]:
    out = []
    for data, g, addr in datagrams:
        pieces = [data[o : o + g] for o in range(0, len(data), g)] if 0 < g < len(data) else [data]
        out += [_outer(addr, dport, p) for p in pieces]
    return out


# ------------------------------------------------------------------ comparison


def _pool_index(dev: UdpIpDevice, b: Batch) -> int:
    """Which of the device's pooled buffers ``b`` lies in (-1: a fresh one)."""
    bufs = dev._out._bufs
    return next((i for i, p in enumerate(bufs) if np.shares_memory(b.buf, p)), -1)


def _same_batch(a: Batch, b: Batch) -> None:
    assert a.packets() == b.packets()
    for name in ("start", "length", "slot_lo", "slot_hi"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and np.array_equal(x, y), name
    assert a.stride == b.stride
    assert len(a.buf) == len(b.buf)
    for f in EXT_FIELDS:
        x, y = getattr(a.ext, f), getattr(b.ext, f)
        assert x.dtype == y.dtype and np.array_equal(x, y), f


# ------------------------------------------------------------------ stand-in socket


class _FakeSock:
    """Reads hand out queued datagrams (EAGAIN when none); sends are recorded. The
    rest is the unbound socket underneath (options, close)."""

    def __init__(self, real: socket.socket) -> None:
        self._real = real
        self.queue: deque[Datagram] = deque()
        self.sent: list[tuple[str, list[bytes], list[Any], Any]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def recvmsg_into(self, buffers: list[memoryview], ancbufsize: int = 0, flags: int = 0) -> Any:
        if not self.queue:
            raise BlockingIOError(errno.EAGAIN, "empty")
        data, g, addr = self.queue.popleft()
        region = buffers[0]
        n = min(len(data), len(region))
        region[:n] = data[:n]
        anc = [(kc.SOL_UDP, kc.UDP_GRO, struct.pack("i", g))] if g else []
        return n, anc, 0, addr

    def sendto(self, data: Any, addr: Any) -> int:
        self.sent.append(("sendto", [bytes(data)], [], addr))
        return len(data)

    def sendmsg(self, buffers: Any, anc: Any = (), flags: int = 0, addr: Any = None) -> int:
        self.sent.append(("sendmsg", [bytes(b) for b in buffers], list(anc), addr))
        return sum(len(b) for b in buffers)


def _fake_device(small: int) -> tuple[UdpIpDevice, _FakeSock]:
    try:
        real = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)  # unbound: nothing leaves
    except OSError:
        real = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dev = UdpIpDevice(real)
    fake = _FakeSock(real)
    dev.sock = fake  # type: ignore[assignment]
    dev.small = small
    return dev, fake


@pytest.fixture
def twins() -> Iterator[tuple[tuple[UdpIpDevice, _FakeSock], tuple[UdpIpDevice, _FakeSock]]]:
    """(scalar paths on, scalar paths off)."""
    a, b = _fake_device(udp_ip.SMALL), _fake_device(0)
    yield a, b
    a[0].close()
    b[0].close()


Twins = tuple[tuple[UdpIpDevice, _FakeSock], tuple[UdpIpDevice, _FakeSock]]

# ------------------------------------------------------------------ receive, drawn

_SIZES = st.one_of(
    st.integers(0, 1500),
    st.sampled_from([0, 1, 7, 8, 20, 27, 28, 47, 48, 63, 64, 65, 1472, 1473, 2000, 9000, 65507]),
)


@st.composite
def _source(draw: st.DrawFn) -> tuple[Any, ...]:
    port = draw(st.sampled_from([0, 1, 53, 51820, 65535]) | st.integers(0, 65535))
    x, y = draw(st.integers(0, 255)), draw(st.integers(0, 255))
    kind = draw(st.sampled_from(["v4", "mapped", "v6", "scoped"]))
    if kind == "v4":  # an IPv4 socket's address
        return (f"198.18.{x}.{y}", port)
    if kind == "mapped":  # an IPv4 sender seen by a dual-stack socket
        return (f"::ffff:198.18.{x}.{y}", port, 0, 0)
    if kind == "v6":
        return (f"fd00::{x:x}:{y:x}", port, 0, 0)
    return (f"fd00::{x:x}%{y % 4 + 1}", port, 0, y % 4 + 1)


@st.composite
def _datagram(draw: st.DrawFn) -> Datagram:
    size = draw(_SIZES)
    seed = draw(st.integers(0, 2**16))
    data = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()
    # mostly plain datagrams; some UDP_GRO ones (a few pieces), split or (size <= g) not
    g = draw(st.sampled_from([0, 0, 0, 0, 0, 7, 500, 1400, 1500, 65535])) if size <= 3000 else 0
    if g == 7:
        g = max(1, size // 5)
    return data, g, draw(_source())


def _counted(item: st.SearchStrategy[Any]) -> st.SearchStrategy[list[Any]]:
    """Lists of 1..8 items, or (one in four) of SMALL+1..SMALL+3 (the batch paths)."""
    return st.one_of(
        st.lists(item, min_size=1, max_size=8),
        st.lists(item, min_size=1, max_size=8),
        st.lists(item, min_size=1, max_size=8),
        st.lists(item, min_size=udp_ip.SMALL + 1, max_size=udp_ip.SMALL + 3),
    )


@st.composite
def _rounds(draw: st.DrawFn) -> list[tuple[list[Datagram], bool]]:
    """Reads of a few datagrams (some past SMALL: ``_counted``), each batch kept or dropped
    after."""
    return draw(
        st.lists(
            st.tuples(_counted(_datagram()), st.booleans()),
            min_size=1,
            max_size=7,
        )
    )


@settings(deadline=None)
@given(
    rounds=_rounds(),
    port=st.sampled_from([0, 1, 51820, 65535]) | st.integers(0, 65535),
    whole_filter=st.booleans(),
)
def test_recv_small_path_is_the_batch_path(
    rounds: list[tuple[list[Datagram], bool]], port: int, whole_filter: bool
) -> None:
    devs = [_fake_device(udp_ip.SMALL), _fake_device(0)]
    try:
        held: list[list[Batch]] = [[], []]
        filt: list[kc.Insn] = []
        for dev, _ in devs:
            dev.local_port = port
            if whole_filter:  # push_down attached the whole DoS filter: rx marks it done
                dev._filter = dev._whole_filter = filt
        for datagrams, keep in rounds:
            got = []
            for k, (dev, fake) in enumerate(devs):
                fake.queue.extend(datagrams)
                b = dev.recv()
                got.append(b)
                assert not fake.queue
                if keep:
                    held[k].append(b)
            small, batch = got
            _same_batch(small, batch)
            assert small.packets() == _expected(datagrams, port)
            assert _pool_index(devs[0][0], small) == _pool_index(devs[1][0], batch)
            del small, batch, got, b
        # batches still held never changed, in either device
        kept = [_expected(d, port) for d, keep in rounds if keep]
        for hs in held:
            assert [b.packets() for b in hs] == kept
        one, other = devs[0][0], devs[1][0]
        assert one.counters() == other.counters()
        assert one._out.fresh == other._out.fresh
        assert one.last_gro == other.last_gro
    finally:
        for dev, _ in devs:
            dev.close()


def test_small_reads_take_the_scalar_path(twins: Twins, monkeypatch: pytest.MonkeyPatch) -> None:
    """The twins above compare two different paths: a few plain datagrams never reach the
    batch path; a super-datagram among them, or one datagram past SMALL, does."""
    (dev, fake), _ = twins
    calls: list[int] = []
    orig = UdpIpDevice._split

    def spy(self: UdpIpDevice, raw: Batch) -> Batch:
        calls.append(len(raw))
        return orig(self, raw)

    monkeypatch.setattr(UdpIpDevice, "_split", spy)
    src = ("::ffff:198.18.0.2", 4000, 0, 0)
    fake.queue.extend([(b"x" * 100, 0, src)] * udp_ip.SMALL)
    assert len(dev.recv()) == udp_ip.SMALL and calls == []
    fake.queue.extend([(b"x" * 100, 0, src)] * (udp_ip.SMALL + 1))
    assert len(dev.recv()) == udp_ip.SMALL + 1 and calls == [udp_ip.SMALL + 1]
    fake.queue.extend([(b"x" * 100, 0, src), (b"y" * 300, 100, src)])
    assert len(dev.recv()) == 4 and calls[-1] == 2
    fake.queue.append((b"y" * 100, 100, src))  # a GRO size, nothing to split
    assert len(dev.recv()) == 1 and len(calls) == 2


# ------------------------------------------------------------------ send, drawn

_DESTS = [("198.18.0.2", 51820), ("198.18.0.3", 51820), ("198.18.0.2", 4000)]
_DESTS6 = [("fd00::2", 51820), ("fd00::3", 51820)]


@st.composite
def _tx_packet(draw: st.DrawFn) -> tuple[bytes, int, int]:
    """(outer packet, error, filter verdict); mostly good packets to a few destinations
    with a few sizes (runs form), some dead, some not IP/UDP at all."""
    kind = draw(st.sampled_from(["v4", "v4", "v6", "short", "version", "empty"]))
    size = draw(st.sampled_from([0, 1, 100, 100, 100, 148, 1420, 1420]) | st.integers(0, 1500))
    payload = bytes([size & 0xFF]) * size
    if kind == "v4":
        dst, dport = draw(st.sampled_from(_DESTS))
        pkt = bytes(IP(src="198.18.0.1", dst=dst, ttl=64) / UDP(sport=51820, dport=dport) / payload)
    elif kind == "v6":
        dst, dport = draw(st.sampled_from(_DESTS6))
        pkt = bytes(IPv6(src="fd00::1", dst=dst) / UDP(sport=51820, dport=dport) / payload)
    elif kind == "short":  # an IPv4 / IPv6 first byte, shorter than the headers
        first = draw(st.sampled_from([0x45, 0x60]))
        pkt = bytes([first]) + bytes(draw(st.integers(0, 26 if first == 0x45 else 46)))
    elif kind == "version":
        pkt = bytes([draw(st.sampled_from([0x00, 0x55, 0x75, 0xF0]))]) + bytes(60)
    else:
        pkt = b""
    err = draw(st.sampled_from([0] * 8 + [int(Reason.BAD_ICV)]))
    verdict = draw(st.sampled_from([0] * 8 + [int(FilterVerdict.DROP), int(FilterVerdict.MARK)]))
    return pkt, err, verdict


def _tx_batch(pkts: list[tuple[bytes, int, int]]) -> Batch:
    b = Batch.from_packets([p for p, _, _ in pkts])
    b.ext.error[:] = [e for _, e, _ in pkts]
    b.ext.filter_verdict[:] = [v for _, _, v in pkts]
    return b


def _wire(sent: list[tuple[str, list[bytes], list[Any], Any]]) -> list[tuple[Any, ...]]:
    """The datagrams a log of sends puts on the wire: (destination, port, payload)."""
    out = []
    for _kind, iov, anc, addr in sent:
        data = b"".join(iov)
        g = next((struct.unpack("H", d)[0] for lvl, t, d in anc if t == kc.UDP_SEGMENT), 0)
        pieces = [data[o : o + g] for o in range(0, len(data), g)] if g else [data]
        out += [(_host(addr), addr[1], p) for p in pieces]
    return out


def _wire_expected(pkts: list[tuple[bytes, int, int]]) -> list[tuple[Any, ...]]:
    """Independently: every live packet that parses as IPv4/IPv6 + UDP, its payload to
    its destination (scapy parses)."""
    out: list[tuple[Any, ...]] = []
    for p, err, verdict in pkts:
        if err or verdict == FilterVerdict.DROP or not p:
            continue
        if p[0] >> 4 == 4 and len(p) >= 28:
            ip: Any = IP(p)
        elif p[0] >> 4 == 6 and len(p) >= 48:
            ip = IPv6(p)
        else:
            continue
        out.append((ipaddress.ip_address(ip.dst), ip[UDP].dport, bytes(ip[UDP].payload)))
    return out


@settings(deadline=None)
@given(
    sends=st.lists(_counted(_tx_packet()), min_size=1, max_size=4),
    gso=st.booleans(),
)
def test_send_small_path_is_the_batch_path(
    sends: list[list[tuple[bytes, int, int]]], gso: bool
) -> None:
    devs = [_fake_device(udp_ip.SMALL), _fake_device(0)]
    try:
        for dev, _ in devs:
            if not gso:
                dev.disable_gso()
        for pkts in sends:
            results = []
            for dev, fake in devs:
                fake.sent.clear()
                b = _tx_batch(pkts)
                n = dev.send(b)
                results.append((n, fake.sent[:], b.ext.error.copy()))
            (n1, log1, err1), (n2, log2, err2) = results
            assert n1 == n2
            assert log1 == log2
            assert np.array_equal(err1, err2)
            assert _wire(log1) == _wire_expected(pkts)
            notip = [
                k
                for k, (p, e, v) in enumerate(pkts)
                if not e and v != FilterVerdict.DROP and (len(p) < 28 or p[0] >> 4 not in (4, 6))
            ]
            assert all(err1[k] == Reason.NOT_IP for k in notip)
            if not gso:
                assert all(kind == "sendto" for kind, *_ in log1)
        assert devs[0][0].counters() == devs[1][0].counters()
    finally:
        for dev, _ in devs:
            dev.close()


def test_send_keeps_an_ipv4_compatible_v6_destination_apart(twins: Twins) -> None:
    """A run joins packets to one destination: ::c612:2 is not 198.18.0.2 (same last four
    address bytes and port), on either path. (Stand-in socket: nothing is sent.)"""
    p4 = bytes(IP(src="198.18.0.1", dst="198.18.0.2") / UDP(sport=1, dport=9) / (b"a" * 50))
    p6 = bytes(IPv6(src="fd00::1", dst="::c612:2") / UDP(sport=1, dport=9) / (b"b" * 50))
    for dev, fake in twins:
        assert dev.send(Batch.from_packets([p4, p6] * 5)) == 10
        hosts = [str(_host(addr)) for *_, addr in fake.sent]
        assert "::c612:2" in hosts and "198.18.0.2" in hosts
        assert _wire(fake.sent) == _wire_expected([(p, 0, 0) for p in [p4, p6] * 5])


# ------------------------------------------------------------------ the kernel

A4, B4 = "198.18.0.1", "198.18.0.2"
A6, B6 = "fd00::1", "fd00::2"


@pytest.fixture
def bed(
    two_hosts: tuple[netns.Testbed, netns.Netns, netns.Netns],
) -> Iterator[tuple[UdpIpDevice, socket.socket, socket.socket]]:
    """The device in ``a`` (dual-stack, GRO on), an IPv4 and an IPv6 socket in ``b``."""
    _tb, a, b = two_hosts
    dev = a.run(UdpIpDevice.bind_here, 0)
    s4 = b.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s4.bind((B4, 0))
    s6 = b.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s6.bind((B6, 0))
    for s in (s4, s6):
        s.settimeout(2.0)
    yield dev, s4, s6
    dev.close()
    s4.close()
    s6.close()


def _read_packets(dev: UdpIpDevice, want: int, timeout: float = 3.0) -> Batch:
    got: list[Batch] = []
    n = 0
    end = time.monotonic() + timeout
    while n < want and time.monotonic() < end:
        dev.wait_readable(0.1)
        b = dev.recv()
        if len(b):
            got.append(b)
            n += len(b)
    assert n == want, f"read {n} of {want} packets"
    assert len(got) == 1, "sent before the read: one batch expected"
    return got[0]


@pytest.mark.kernel
def test_kernel_reads_give_the_same_batches_either_path(
    bed: tuple[UdpIpDevice, socket.socket, socket.socket],
) -> None:
    dev, s4, s6 = bed
    port = dev.local_port
    src4 = ("::ffff:" + B4, s4.getsockname()[1], 0, 0)
    src6 = (B6, s6.getsockname()[1], 0, 0)

    def data(n: int, seed: int) -> bytes:
        return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()

    # (socket, payload, UDP_SEGMENT size for the sender: 0 none)
    rounds: list[list[tuple[str, bytes, int]]] = [
        [("4", data(0, 1), 0), ("4", data(1, 2), 0), ("6", data(1452, 3), 0)],
        [("6", data(37, k), 0) for k in range(udp_ip.SMALL)],  # exactly SMALL
        [("4", data(100, k), 0) for k in range(udp_ip.SMALL + 1)],  # past SMALL
        [("4", data(64, 9), 0), ("6", data(3 * 500 + 20, 10), 500)],  # a GRO super-datagram
        [("4", data(1472, 11), 0), ("6", data(0, 12), 0), ("4", data(9000, 13), 0)],
    ]
    for spec in rounds:
        want: list[Datagram] = []
        for fam, payload, g in spec:
            want.append((payload, g, src4 if fam == "4" else src6))
        batches = []
        for small in (udp_ip.SMALL, 0):
            dev.small = small
            for fam, payload, g in spec:
                s, to = (s4, (A4, port)) if fam == "4" else (s6, (A6, port))
                if g:
                    s.sendmsg([payload], [(kc.SOL_UDP, kc.UDP_SEGMENT, struct.pack("H", g))], 0, to)
                else:
                    s.sendto(payload, to)
            time.sleep(0.05)  # all queued at the device's socket before it reads
            batches.append(_read_packets(dev, len(_expected(want, port))))
            # the veth hands the UDP_SEGMENT send up whole: a super-datagram to split,
            # on the batch path whatever ``small`` is
            assert dev.last_gro == sum(1 for _, _, g in spec if g)
        _same_batch(batches[0], batches[1])
        assert batches[0].packets() == _expected(want, port)


@pytest.mark.kernel
def test_kernel_sends_put_the_same_datagrams_on_the_wire_either_path(
    bed: tuple[UdpIpDevice, socket.socket, socket.socket],
) -> None:
    dev, s4, s6 = bed
    p4, p6 = s4.getsockname()[1], s6.getsockname()[1]
    pkts: list[bytes] = []
    for k, size in enumerate((0, 1, 1420, 1420, 1420, 300)):
        pkts.append(bytes(IP(src=A4, dst=B4) / UDP(sport=1, dport=p4) / (bytes([k]) * size)))
    pkts.insert(3, bytes(IPv6(src=A6, dst=B6) / UDP(sport=1, dport=p6) / (b"6" * 77)))
    pkts.append(b"\x55" + bytes(40))  # not IP: NOT_IP, not sent
    assert len(pkts) <= udp_ip.SMALL

    def drain(s: socket.socket, n: int) -> list[bytes]:
        return [s.recvfrom(65535)[0] for _ in range(n)]

    seen = []
    for small in (udp_ip.SMALL, 0):
        dev.small = small
        before = dev.counters()
        b = Batch.from_packets(pkts)
        assert dev.send(b) == len(pkts) - 1
        assert b.ext.error.tolist() == [0] * (len(pkts) - 1) + [Reason.NOT_IP]
        after = dev.counters()
        got4, got6 = drain(s4, 6), drain(s6, 1)
        counts = {k: int(str(after[k])) - int(str(before[k])) for k in ("sends", "gso_sends")}
        seen.append((got4, got6, counts))
    assert seen[0] == seen[1]
    assert seen[0][0] == [bytes([k]) * n for k, n in enumerate((0, 1, 1420, 1420, 1420, 300))]
    assert seen[0][1] == [b"6" * 77]
    assert seen[0][2]["gso_sends"] >= 1  # the 1420-byte run went out as one UDP_SEGMENT send
