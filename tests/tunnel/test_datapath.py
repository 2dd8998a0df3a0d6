"""The WireGuard data path (tunnel/datapath.py) run through the engines, without sockets.

Two tunnels are built from wg-quick text and never started; their protocol
cores shake hands in process. What the transmit engine seals is opened by the
single-packet reference (``Keypair.open``, itself checked against wireguard-go
in test_interop_core); what the reference seals goes through the receive
engine back to the original packets. Inner packets are built with scapy.
"""

from __future__ import annotations

import os
import struct

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.inet6 import IPv6

from netoffload.batch import Batch, Reason
from netoffload.tunnel import datapath as dpm
from netoffload.tunnel import keys
from netoffload.tunnel.loop import handshake_offline, offline_tunnel
from netoffload.tunnel.protocol import SendDatagram
from netoffload.tunnel.tunnel import Tunnel

NOW = 1_800_000_000.0
A_EP = ("198.18.0.1", 51820)
B_EP = ("198.18.0.2", 51821)


def _tunnel(
    name: str, sk: bytes, peer: bytes, port: int, ep: tuple[str, int], mine: str, theirs: str
) -> Tunnel:
    return offline_tunnel(name, sk, peer, port=port, endpoint=ep, address=mine, allowed=theirs)


def _pair() -> tuple[Tunnel, Tunnel]:
    ka, kb = keys.generate_private(), keys.generate_private()
    pa, pb = keys.public_from_private(ka), keys.public_from_private(kb)
    a = _tunnel("nofa", ka, pb, A_EP[1], B_EP, "198.18.30.1/24", "198.18.30.2/32, fd00:30::2/128")
    b = _tunnel("nofb", kb, pa, B_EP[1], A_EP, "198.18.30.2/24", "198.18.30.1/32, fd00:30::1/128")
    # handshake in process: a initiates, b answers, a confirms with a keepalive
    handshake_offline(a, b, A_EP, B_EP, NOW)
    peer_b = a.protocol.peers[pb]
    for x in a.protocol.send_keepalive(peer_b, NOW):
        if isinstance(x, SendDatagram) and x.data[0] == 4:
            out = _rx(b, [x.data])
            assert out.ext.error.tolist() == [int(Reason.KEEPALIVE)]
            found = b.protocol.lookup(int.from_bytes(x.data[4:8], "little"))
            assert found is not None
            b.protocol.data_received(found[0], found[1], A_EP, NOW, 32, True)
    return a, b


def _outer(msgs: list[bytes], src: tuple[str, int], dport: int) -> Batch:
    pkts = [
        bytes(IP(src=src[0], dst="198.18.0.99") / UDP(sport=src[1], dport=dport, chksum=0) / m)
        for m in msgs
    ]
    return Batch.from_packets(pkts)


def _rx(t: Tunnel, msgs: list[bytes], src: tuple[str, int] = A_EP) -> Batch:
    b = _outer(msgs, src, t.dp.listen_port)
    dpm.rx_wants(b)
    t.dp.now = NOW + 1
    return t.rx_engine.process(b).batch


def _inner(n: int) -> list[bytes]:
    out = []
    for i in range(n):
        if i % 3 == 0:
            p = IP(src="198.18.30.1", dst="198.18.30.2") / ICMP(id=i) / os.urandom(i * 7 % 300)
        elif i % 3 == 1:
            p = (
                IP(src="198.18.30.1", dst="198.18.30.2")
                / UDP(sport=1000 + i, dport=2000 + i)
                / os.urandom(1 + i % 1200)
            )
        else:
            p = (
                IPv6(src="fd00:30::1", dst="fd00:30::2")
                / UDP(sport=3000 + i, dport=4000 + i)
                / os.urandom(i % 900)
            )
        out.append(bytes(p))
    return out


def test_transmit_engine_output_opens_with_the_reference() -> None:
    a, b = _pair()
    pkts = _inner(40)
    batch = Batch.from_packets(pkts, headroom=dpm.HEADROOM, tailroom=dpm.TAILROOM)
    dpm.tx_wants(batch)
    a.dp.now = NOW + 1
    out = a.tx_engine.process(batch).batch
    assert out.ext.alive().all()
    peer_a = next(iter(b.protocol.peers.values()))
    kp = peer_a.current
    assert kp is not None
    counters = []
    for i, orig in enumerate(pkts):
        raw = bytes(out.packet(i))
        assert raw[0] == 0x45 and raw[9] == 17
        assert struct.unpack("!H", raw[22:24])[0] == B_EP[1]  # to b's endpoint port
        msg = raw[28:]
        opened = kp.open(msg)
        assert opened is not None, f"packet {i} does not open"
        ctr, plain = opened
        counters.append(ctr)
        assert plain[: len(orig)] == orig and plain[len(orig) :] == bytes(len(plain) - len(orig))
        assert len(plain) % 16 == 0
    assert counters == sorted(counters) and len(set(counters)) == len(counters)


def test_receive_engine_recovers_reference_sealed_packets() -> None:
    a, b = _pair()
    peer_b = next(iter(a.protocol.peers.values()))
    kp = peer_b.send_keypair(NOW + 1)
    assert kp is not None
    pkts = _inner(30)
    first = kp.reserve(len(pkts), NOW + 1)
    assert first is not None
    msgs = [kp.seal(first + i, p) for i, p in enumerate(pkts)]
    out = _rx(b, msgs)
    live = out.take(out.ext.alive())
    got = sorted(live.packets())
    assert got == sorted(pkts)
    # the same messages again: every one a replay, nothing delivered
    again = _rx(b, msgs)
    assert not again.ext.alive().any()
    assert set(again.ext.error.tolist()) == {int(Reason.REPLAY)}


def test_receive_refuses_a_source_outside_allowed_ips_and_forged_tags() -> None:
    a, b = _pair()
    peer_b = next(iter(a.protocol.peers.values()))
    kp = peer_b.send_keypair(NOW + 1)
    assert kp is not None
    spoof = bytes(IP(src="198.18.99.9", dst="198.18.30.2") / ICMP())
    ok = bytes(IP(src="198.18.30.1", dst="198.18.30.2") / ICMP())
    c = kp.reserve(3, NOW + 1)
    assert c is not None
    forged = bytearray(kp.seal(c + 2, ok))
    forged[-1] ^= 1
    out = _rx(b, [kp.seal(c, spoof), kp.seal(c + 1, ok), bytes(forged)])
    assert out.ext.error.tolist() == [int(Reason.BAD_SOURCE), 0, int(Reason.BAD_ICV)]
    # the forged packet did not move the window: its counter still opens once sealed right
    out2 = _rx(b, [kp.seal(c + 2, ok)])
    assert out2.ext.alive().all()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=0, max_size=200), min_size=1, max_size=20))
def test_receive_never_raises_on_junk(datagrams: list[bytes]) -> None:
    _, b = _PAIR
    out = _rx(b, datagrams)
    e = out.ext
    # junk never authenticates; every datagram gets a verdict
    assert not e.alive().any()
    assert (e.error != 0).all()
    assert len(out) == len(datagrams)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from([1, 2, 3, 4]), min_size=1, max_size=10), st.data())
def test_receive_right_lengths_wrong_content(types: list[int], data: st.DataObject) -> None:
    _, b = _PAIR
    sizes = {1: 148, 2: 92, 3: 64, 4: 32 + 16 * data.draw(st.integers(0, 10))}
    msgs = [
        bytes([t, 0, 0, 0]) + data.draw(st.binary(min_size=sizes[t] - 4, max_size=sizes[t] - 4))
        for t in types
    ]
    out = _rx(b, msgs)
    assert not out.ext.alive().any()
    reasons = set(out.ext.error.tolist())
    assert reasons <= {
        int(Reason.BAD_MAC1),
        int(Reason.UNKNOWN_INDEX),
        int(Reason.HANDSHAKE),
        int(Reason.REPLAY),
        int(Reason.BAD_ICV),
    }
    assert np.all(out.ext.error != 0)


_PAIR = _pair()


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["tcp4", "udp4", "tcp6", "udp6", "icmp4", "frag4"]),
            st.integers(0, 600),
            st.integers(0, 10),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_inner_layout_agrees_with_the_parser(specs: list[tuple[str, int, int]]) -> None:
    from scapy.layers.inet import TCP

    from netoffload.wire.parse import parse_batch

    pkts = []
    for kind, size, opts in specs:
        pay = bytes(size)
        if kind == "tcp4":
            p = (
                IP(src="198.18.30.1", dst="198.18.30.2")
                / TCP(options=[("NOP", None)] * (opts * 4))
                / pay
            )
        elif kind == "udp4":
            p = IP(src="198.18.30.1", dst="198.18.30.2") / UDP() / pay
        elif kind == "tcp6":
            p = IPv6(src="fd00::1", dst="fd00::2") / TCP() / pay
        elif kind == "udp6":
            p = IPv6(src="fd00::1", dst="fd00::2") / UDP() / pay
        elif kind == "icmp4":
            p = IP(src="198.18.30.1", dst="198.18.30.2") / ICMP() / pay
        else:
            p = IP(src="198.18.30.1", dst="198.18.30.2", flags="MF") / UDP() / pay
        pkts.append(bytes(p))
    ours = Batch.from_packets(pkts)
    proto = dpm.inner_layout(ours, np.arange(len(pkts)))
    ref = Batch.from_packets(pkts)
    reason = parse_batch(ref, ethernet=False)
    for i, (kind, _, _) in enumerate(specs):
        if kind in ("tcp4", "udp4", "tcp6", "udp6"):
            assert reason[i] == 0
            assert proto[i] == ref.ext.l4_proto[i]
            for f in ("l3_off", "l4_off", "hdr_len", "l3_proto", "l4_proto"):
                assert getattr(ours.ext, f)[i] == getattr(ref.ext, f)[i], (kind, f)
        else:
            assert proto[i] == 0  # no checksum or assembly stage asked for


# --------------------------------------------------------------------------- shape filter


def _wg_shaped(payload: bytes) -> bool:
    """The whitepaper's message shapes (section 5.4): type 1..4, three zero bytes,
    148 / 92 / 64 bytes for initiation / response / cookie reply, >= 32 for data."""
    if len(payload) < 4 or payload[1:4] != b"\0\0\0":
        return False
    return {1: len(payload) == 148, 2: len(payload) == 92, 3: len(payload) == 64}.get(
        payload[0], payload[0] == 4 and len(payload) >= 32
    )


def _shape_cases() -> list[bytes]:
    out = [os.urandom(n) for n in (0, 1, 3, 4, 31, 32, 64, 92, 148, 500)]
    for t, n in ((1, 148), (2, 92), (3, 64), (4, 32), (4, 1000)):
        head = bytes([t, 0, 0, 0])
        out += [head + os.urandom(n - 4), head + os.urandom(n - 5), head + os.urandom(n - 3)]
        out.append(bytes([t, 0, 1, 0]) + os.urandom(n - 4))
    out += [bytes([5, 0, 0, 0]) + os.urandom(60), bytes([0, 0, 0, 0]) + os.urandom(60)]
    return out


@given(st.binary(max_size=300), st.sampled_from([0, 1, 2, 3, 4, 5]), st.booleans())
def test_shape_filter_program_is_the_message_shape(tail: bytes, t: int, zero: bool) -> None:
    from netoffload.bpf import interp

    prog = dpm.shape_filter()
    interp.check(prog)
    payload = bytes([t, 0, 0, 0] if zero else [t, 0, 0, 1]) + tail
    udp = struct.pack("!HHHH", 1, 2, 8 + len(payload), 0)
    assert (interp.run(prog, udp + payload) != 0) == _wg_shaped(payload)


def test_shape_filter_in_the_kernel_keeps_exactly_the_message_shapes() -> None:
    """The real thing: the program attached to a UDP socket in a namespace of ours;
    what the kernel lets through is what the shapes say, datagram for datagram."""
    import contextlib
    import socket
    import time

    import pytest

    from netoffload.devices import kernel_common as kc
    from netoffload.testing import netns

    if os.geteuid() != 0:
        pytest.skip("not root")
    reason = netns.available()
    if reason:
        pytest.skip(reason)
    cases = _shape_cases()
    with netns.Testbed() as tb:
        h = tb.host("shape")
        h.add_address("lo", "198.18.9.1/32")
        rx = h.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tx = h.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            rx.bind(("198.18.9.1", 0))
            rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            kc.sock_attach_filter(rx.fileno(), dpm.shape_filter())
            rx.settimeout(0.5)
            for c in cases:
                tx.sendto(c, ("198.18.9.1", rx.getsockname()[1]))
            time.sleep(0.2)
            got: list[bytes] = []
            with contextlib.suppress(TimeoutError):
                while True:
                    got.append(rx.recv(2048))
        finally:
            rx.close()
            tx.close()
    want = [c for c in cases if _wg_shaped(c)]
    assert len(want) >= 8
    assert got == want
