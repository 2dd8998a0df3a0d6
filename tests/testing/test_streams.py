"""Content-checked streams: self-checking datagrams, receivers, packet parsing against
scapy, the synthetic flows, and (as root) real kernel TCP/UDP streams over a veth."""

from __future__ import annotations

import hashlib
import random
from typing import Any

import pytest
import scapy.all as S
from hypothesis import given
from hypothesis import strategies as hs

from netoffload.testing import netns
from netoffload.testing import streams as st

Hosts = tuple[netns.Testbed, netns.Netns, netns.Netns]


def test_content_is_deterministic_and_varies() -> None:
    a, b = st.Content(7), st.Content(7)
    assert bytes(a.chunk(3, 1000)) == bytes(b.chunk(3, 1000))
    assert bytes(a.chunk(3, 1000)) != bytes(a.chunk(4, 1000))
    assert bytes(st.Content(8).chunk(3, 1000)) != bytes(a.chunk(3, 1000))
    with pytest.raises(ValueError):
        a.chunk(0, 1 << 20)


@given(hs.integers(0, 10_000), hs.data())
def test_any_damaged_byte_fails_the_datagrams_own_check(seq: int, data: Any) -> None:
    d = st.Datagrams(1, 200)
    good = d.make(seq)
    assert len(good) == 200 and st.Datagrams.check(good) == seq
    i = data.draw(hs.integers(0, len(good) - 1))
    bit = data.draw(hs.integers(0, 7))
    bad = bytearray(good)
    bad[i] ^= 1 << bit
    assert st.Datagrams.check(bytes(bad)) is None
    assert st.Datagrams.check(good[:-1]) is None
    assert st.Datagrams.check(good[: st.UDP_HEAD.size]) is None


def test_udp_receiver_orders_dedups_and_hashes_like_the_sender() -> None:
    d = st.Datagrams(3, 100)
    sent = [d.make(i) for i in range(50)]
    want = hashlib.sha256(b"".join(sent)).hexdigest()
    rx = st.UdpReceiver()
    order = list(range(50))
    random.Random(1).shuffle(order)
    for i in order:
        rx.add(sent[i], 1.0)
    rx.add(sent[5], 2.0)  # a duplicate
    rx.add(b"\0" * 100, 2.0)  # damaged
    r = st.StreamResult("u", "udp", 4, bytes_sent=5000, sha256_sent=want, datagrams_sent=50)
    rx.fill(r)
    assert r.sha256_received == want and r.datagrams_received == 50
    assert r.duplicates == 1 and r.datagrams_damaged == 1
    assert not r.intact  # one damaged datagram arrived
    r.datagrams_damaged = 0
    assert r.intact


def test_a_lost_datagram_is_not_intact() -> None:
    d = st.Datagrams(3, 100)
    sent = [d.make(i) for i in range(10)]
    rx = st.UdpReceiver()
    for x in sent[:4] + sent[5:]:
        rx.add(x, 1.0)
    r = st.StreamResult("u", "udp", 6, datagrams_sent=10, bytes_sent=1000)
    r.sha256_sent = hashlib.sha256(b"".join(sent)).hexdigest()
    rx.fill(r)
    assert not r.intact and r.datagrams_received == 9


@given(
    v=hs.sampled_from([4, 6]),
    proto=hs.sampled_from(["tcp", "udp"]),
    payload=hs.binary(max_size=300),
    sport=hs.integers(1, 65535),
    dport=hs.integers(1, 65535),
    seq=hs.integers(0, 2**32 - 1),
    opts=hs.sampled_from([b"", b"\x01\x01\x08\x0a" + bytes(8)]),
)
def test_split_ip_agrees_with_scapy(
    v: int, proto: str, payload: bytes, sport: int, dport: int, seq: int, opts: bytes
) -> None:
    src, dst = ("198.18.1.1", "198.19.2.2") if v == 4 else ("fd00::1", "fd00:1::2")
    ip = S.IP(src=src, dst=dst) if v == 4 else S.IPv6(src=src, dst=dst)
    if proto == "tcp":
        l4 = S.TCP(
            sport=sport, dport=dport, seq=seq, options=[("Timestamp", (0, 0))] if opts else []
        )
    else:
        l4 = S.UDP(sport=sport, dport=dport)
    raw = bytes(ip / l4 / S.Raw(payload)) + b"pad"  # bytes past the IP length are not payload
    got = st.split_ip(raw)
    assert got is not None
    key, s, body = got
    assert key == st.flow_key(6 if proto == "tcp" else 17, src, dst, sport, dport)
    assert body == payload
    assert s == (seq if proto == "tcp" else 0)


@pytest.mark.parametrize("raw", [b"", b"\x45" + bytes(10), bytes([0x45]) + bytes(39), b"\x99" * 60])
def test_split_ip_refuses_what_is_not_tcp_or_udp(raw: bytes) -> None:
    assert st.split_ip(raw) is None


def test_synthetic_tcp_is_gso_super_packets_of_one_stream() -> None:
    f = st.SynthTcp("t", "198.18.10.1", "198.18.10.2", 40000, 5201, 100_000, 1380, per_super=8)
    pkts = []
    while (p := f.next_packet()) is not None:
        pkts.append(p)
    seq = f.isn
    whole = b""
    for data, gso, size in pkts:
        q = S.IP(data)
        assert q[S.TCP].seq == seq and q.len == len(data)
        body = bytes(q[S.TCP].payload)
        seq += len(body)
        whole += body
        assert (gso, size) == ((st.GSO_TCPV4, 1380) if len(body) > 1380 else (0, 0))
    assert len(whole) == 100_000
    for data, _, _ in pkts:  # delivered unchanged: intact
        key, s, body = st.split_ip(data)  # type: ignore[misc]
        assert key == f.key
        f.deliver(s, body, 0, 1.0)
    r = f.finish()
    assert r.intact and r.sha256_sent == hashlib.sha256(whole).hexdigest()


def test_synthetic_udp_super_packets_split_back_into_datagrams() -> None:
    f = st.SynthUdp("u", "fd00:10::1", "fd00:10::2", 40000, 5301, 20, size=300, per_super=8)
    pkts = []
    while (p := f.next_packet()) is not None:
        pkts.append(p)
    assert [gso for _, gso, _ in pkts] == [st.GSO_UDP_L4] * 3
    for data, _, size in pkts:
        q = S.IPv6(data)
        assert len(bytes(q[S.UDP].payload)) in (8 * 300, 4 * 300)
        _key, s, body = st.split_ip(data)  # type: ignore[misc]
        f.deliver(s, body, size, 1.0)
    r = f.finish()
    assert r.intact and r.datagrams_received == 20


@pytest.mark.kernel
def test_kernel_streams_over_a_veth_are_intact(two_hosts: Hosts) -> None:
    _tb, a, b = two_hosts
    tcp = st.TcpStream("t", a, b, "198.18.0.2", 5201, 3_000_000, 20.0).start()
    tcp6 = st.TcpStream("t6", b, a, "fd00::1", 5202, 1_000_000, 20.0).start()
    udp = st.UdpStream("u", a, b, "fd00::2", 5301, 500, 20.0).start()
    results = [s.finish(30.0) for s in (tcp, tcp6, udp)]
    for r in results:
        assert r.intact, r
    assert results[0].bytes_received == 3_000_000
    assert results[2].datagrams_received == 500
    assert st.ping(a, "198.18.0.2", "p", count=2).ok
