"""Compiled filters attached to real sockets (SO_ATTACH_FILTER) in namespaces we create.

Host ``a`` sends raw Ethernet frames over a veth; on host ``b`` two packet
sockets listen on the other end: one with the compiled filter, one without (to
know when everything has arrived). The kernel must keep exactly the packets
the software classifier keeps. Every frame carries a tag at the end of its
payload, so the neighbour discovery and other traffic of the link is ignored.
"""

from __future__ import annotations

import ipaddress
import select
import socket
import struct
import time

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netoffload.batch import Batch, FilterVerdict
from netoffload.bpf import BASE_NET, attach_socket, compile_filter, sock_fprog
from netoffload.bpf.compiler import SO_ATTACH_FILTER
from netoffload.soft.classify import make_classify
from netoffload.soft.dos import make_dos
from netoffload.soft.rules import ClassifyConfig, Rule, parse_dos
from netoffload.testing import netns
from netoffload.testing.packets import udp_packet
from netoffload.wire.ethernet import ETH_P_IP, ETH_P_IPV6, Ethernet
from soft.classify_ref import Pkt, configs, packets

ETH_P_ALL = 0x0003
MAGIC = b"NOFT"


def _mac(ns: netns.Netns) -> bytes:
    return bytes.fromhex(ns.mac("veth0").replace(":", ""))


def _note(seen: set[int], data: bytes, addr: tuple[object, ...]) -> None:
    """Record the tag of a frame that came in; frames the namespace sends itself
    (an ICMP error quotes the tagged packet) are not what the filter let in."""
    if addr[2] == socket.PACKET_OUTGOING:
        return
    if len(data) >= 8 and data[-8:-4] == MAGIC:
        seen.add(struct.unpack("!I", data[-4:])[0])


def _collect(socks: list[socket.socket], want: int, timeout: float = 5.0) -> list[set[int]]:
    """Tags seen on each socket, until the last socket (the control) has ``want``."""
    seen: list[set[int]] = [set() for _ in socks]
    end = time.monotonic() + timeout
    while len(seen[-1]) < want and time.monotonic() < end:
        r, _, _ = select.select(socks, [], [], 0.2)
        for s in r:
            _note(seen[socks.index(s)], *s.recvfrom(65535))
    # drain what is still queued on the filtered sockets
    for i, s in enumerate(socks[:-1]):
        s.setblocking(False)
        try:
            while True:
                _note(seen[i], *s.recvfrom(65535))
        except BlockingIOError:
            pass
    return seen


def _through_kernel(
    hosts: tuple[netns.Testbed, netns.Netns, netns.Netns],
    prog: list[tuple[int, int, int, int]],
    raw: list[bytes],
    use_helper: bool = False,
) -> set[int]:
    _tb, a, b = hosts
    mac_a, mac_b = _mac(a), _mac(b)
    filt = b.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    ctrl = b.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    tx = a.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    try:
        if use_helper:
            attach_socket(filt, prog)
        else:
            fp = sock_fprog(prog)
            filt.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fp.bytes)
        filt.bind(("veth0", 0))
        ctrl.bind(("veth0", 0))
        tx.bind(("veth0", 0))
        for p in raw:
            et = ETH_P_IP if p[0] >> 4 == 4 else ETH_P_IPV6
            tx.send(Ethernet(mac_b, mac_a, et).emit() + p)
        seen = _collect([filt, ctrl], len(raw))
        assert seen[1] == set(range(len(raw))), "not every frame reached the control socket"
        return seen[0]
    finally:
        for s in (filt, ctrl, tx):
            s.close()


def _tagged(pkts: list[Pkt]) -> list[bytes]:
    return [p.build(tag=MAGIC + struct.pack("!I", i)) for i, p in enumerate(pkts)]


@settings(max_examples=6, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cfg=configs(), pkts=st.lists(packets(), min_size=1, max_size=30))
def test_kernel_keeps_what_the_classifier_keeps(
    two_hosts: tuple[netns.Testbed, netns.Netns, netns.Netns],
    cfg: ClassifyConfig,
    pkts: list[Pkt],
) -> None:
    raw = _tagged(pkts)
    b = Batch.from_packets(raw)
    make_classify(cfg).process(b, np.ones(len(raw), bool))
    keep = set(np.flatnonzero(b.ext.filter_verdict != FilterVerdict.DROP).tolist())
    got = _through_kernel(two_hosts, compile_filter(cfg, base=BASE_NET), raw)
    assert got == keep


def test_kernel_drop_list_and_sizes(
    two_hosts: tuple[netns.Testbed, netns.Netns, netns.Netns],
) -> None:
    cfg = parse_dos({"drop": {"src": ["198.18.0.2/32", "fd00::2/128"]}, "size": {"max": 100}})
    pkts = [
        Pkt(4, "198.18.0.1", "198.18.0.9", 17, 1000, 53, 0),
        Pkt(4, "198.18.0.2", "198.18.0.9", 17, 1000, 53, 0),
        Pkt(6, "fd00::1", "fd00::9", 6, 1000, 80, 0),
        Pkt(6, "fd00::2", "fd00::9", 6, 1000, 80, 0),
        Pkt(4, "198.18.0.1", "198.18.0.9", 6, 1000, 80, 0),
    ]
    raw = _tagged(pkts)
    big = Pkt(4, "198.18.0.1", "198.18.0.9", 1, 0, 0, 0)  # 144 bytes: over the size limit
    raw.append(big.build(tag=b"\x00" * 100 + MAGIC + struct.pack("!I", 5)))
    b = Batch.from_packets(raw)
    make_dos(cfg).process(b, np.ones(len(raw), bool), now=0.0)
    keep = set(np.flatnonzero(b.ext.filter_verdict != FilterVerdict.DROP).tolist())
    assert keep == {0, 2, 4}
    got = _through_kernel(two_hosts, compile_filter(cfg, base=BASE_NET), raw, use_helper=True)
    assert got == keep


def test_udp_socket_filter_sees_the_network_header(
    two_hosts: tuple[netns.Testbed, netns.Netns, netns.Netns],
) -> None:
    """On a UDP socket the kernel runs the filter at the UDP header; BASE_NET still works."""
    _tb, a, b = two_hosts
    cfg = ClassifyConfig(
        rules=(
            Rule(name="bulk", sport=(2000, 2999), action=1),
            Rule(name="voice", dscp=(46, 46), action=1),
            Rule(name="other-src", src=ipaddress.ip_network("198.18.0.0/31"), action=0),
            Rule(name="rest", proto=(17, 17), action=1),
        )
    )
    cases = [(1000, 0), (2000, 0), (2999, 0), (3000, 0), (1001, 46), (1002, 10)]
    raw = [
        udp_packet(
            v=4,
            src="198.18.0.1",
            dst="198.18.0.2",
            sport=sp,
            dport=9999,
            tos=d << 2,
            payload=MAGIC + struct.pack("!I", i),
        )
        for i, (sp, d) in enumerate(cases)
    ]
    bt = Batch.from_packets(raw)
    make_classify(cfg).process(bt, np.ones(len(raw), bool))
    keep = set(np.flatnonzero(bt.ext.filter_verdict != FilterVerdict.DROP).tolist())
    assert keep == {0, 3, 5}
    rx = b.socket(socket.AF_INET, socket.SOCK_DGRAM)
    senders: list[socket.socket] = []
    try:
        rx.bind(("198.18.0.2", 9999))
        attach_socket(rx, compile_filter(cfg, base=BASE_NET))
        for i, (sp, d) in enumerate(cases):
            s = a.socket(socket.AF_INET, socket.SOCK_DGRAM)
            senders.append(s)
            s.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, d << 2)
            s.bind(("198.18.0.1", sp))
            s.sendto(MAGIC + struct.pack("!I", i), ("198.18.0.2", 9999))
        # a last datagram the filter keeps marks the end (sockets deliver in order)
        end = a.socket(socket.AF_INET, socket.SOCK_DGRAM)
        senders.append(end)
        end.bind(("198.18.0.1", 3001))
        end.sendto(MAGIC + struct.pack("!I", 999), ("198.18.0.2", 9999))
        got: set[int] = set()
        rx.settimeout(5.0)
        while True:
            data = rx.recv(100)
            idx = struct.unpack("!I", data[-4:])[0]
            if idx == 999:
                break
            got.add(idx)
        assert got == keep
    finally:
        rx.close()
        for s in senders:
            s.close()
