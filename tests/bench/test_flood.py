"""bench/flood.py: the flood packets, the bounded flooder, and the tunnel under floods.

Packets are checked against scapy (checksums) and the whitepaper's mac1
(hashlib, written out); the flooder in our namespaces, with what arrives counted
by the kernel at a socket; the tunnel scene (netoffload between two
wireguard-go peers) under a short handshake flood and junk flood: the cookie
replies go back to the flooding namespace only, a new peer completes its
handshake through them, the established session keeps passing traffic, and the
junk ends in the kernel's shape filter.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
import socket
import sys
import time
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP

from netoffload.bench import flood as fl
from netoffload.errors import ConfigError
from netoffload.testing import netns, wggo
from netoffload.tunnel import keys
from netoffload.tunnel.noise import LABEL_MAC1
from netoffload.tunnel.timers import REKEY_TIMEOUT
from netoffload.tunnel.tunnel import UNDER_LOAD_RATE


def test_ipv4_udp_checksums_agree_with_scapy() -> None:
    src, dst = ipaddress.IPv4Address("198.19.1.2"), ipaddress.IPv4Address("198.18.2.2")
    for payload in (b"", b"x", os.urandom(147), os.urandom(512)):
        raw = fl.ipv4_udp(src.packed, 4321, dst.packed, 51820, payload)
        pkt = IP(raw)
        ref = IP(bytes(IP(src=str(src), dst=str(dst), flags="DF", ttl=64, id=0) / UDP(
            sport=4321, dport=51820) / payload))  # fmt: skip
        assert pkt[IP].chksum == ref[IP].chksum
        assert pkt[UDP].chksum == ref[UDP].chksum
        assert bytes(pkt[UDP].payload) == payload


def test_flood_packets_forge_sources_inside_the_test_net_and_carry_mac1() -> None:
    pub = keys.public_from_private(keys.generate_private())
    key = hashlib.blake2s(LABEL_MAC1 + pub).digest()
    for raw in fl.initiation_packets(pub, "198.18.2.2", 51820, 50, seed=7):
        pkt = IP(raw)
        assert ipaddress.ip_address(pkt.src) in fl.SPOOF_NET
        assert pkt.dst == "198.18.2.2" and pkt[UDP].dport == 51820
        msg = bytes(pkt[UDP].payload)
        assert len(msg) == 148 and msg[:4] == b"\x01\0\0\0"
        assert msg[116:132] == hashlib.blake2s(msg[:116], key=key, digest_size=16).digest()
        assert msg[132:] == bytes(16)
    srcs = {IP(r).src for r in fl.junk_packets("198.18.2.2", 51820, 200, seed=8)}
    assert len(srcs) > 150 and all(ipaddress.ip_address(s) in fl.SPOOF_NET for s in srcs)


def test_flood_refuses_any_address_outside_before_sending() -> None:
    good = fl.ipv4_udp(bytes([198, 19, 0, 1]), 1, bytes([198, 18, 2, 2]), 2, b"x")
    outside = bytearray(good)
    outside[12:16] = bytes([192, 0, 2, 1])  # TEST-NET-1 as a source: not ours
    other_dst = bytearray(good)
    other_dst[16:20] = bytes([198, 18, 7, 7])  # ours, but not the destination asked for
    for bad in (outside, other_dst):
        with pytest.raises(ConfigError):
            fl.flood("198.18.2.2", [good, bytes(bad)], rate_pps=None, seconds=1, max_packets=2)
    with pytest.raises(ConfigError):
        fl.ipv4_udp(bytes([10, 0, 0, 1]), 1, bytes([198, 18, 2, 2]), 2, b"")


def _root_netns() -> None:
    if os.geteuid() != 0:
        pytest.skip("not root")
    reason = netns.available()
    if reason:
        pytest.skip(reason)


def _count(sock: socket.socket, quiet: float) -> list[tuple[str, int]]:
    sock.settimeout(quiet)
    got = []
    with contextlib.suppress(TimeoutError):
        while True:
            _, src = sock.recvfrom(2048)
            got.append((src[0], src[1]))
    return got


@pytest.mark.kernel
@pytest.mark.parametrize("method", ["packet", "raw"])
def test_flood_is_bounded_in_packets_and_arrives_forged(method: str) -> None:
    _root_netns()
    with netns.Testbed() as tb:
        f, v = tb.host("ff"), tb.host("fv")
        tb.link(f, v, addrs_a=["198.18.2.1/24"], addrs_b=["198.18.2.2/24"])
        v.add_route(str(fl.SPOOF_NET), via="198.18.2.1")
        link = fl.Link("veth0", fl._mac(f, "veth0"), fl._mac(v, "veth0"))
        rx = v.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            rx.bind(("198.18.2.2", 40000))
            packets = fl.junk_packets("198.18.2.2", 40000, 64, seed=3)
            res = f.spawn(
                fl._flood_args, "198.18.2.2", packets, 5000.0, 0.3, "/nonexistent", None,
                link if method == "packet" else None,
            )  # fmt: skip
            r = res.join(20)
            got = _count(rx, 0.5)
        finally:
            rx.close()
    assert r.method == method
    assert 0 < r.sent <= int(5000.0 * 0.3) + 1  # the bound in packets
    assert 0 < len(got) <= r.sent
    assert all(ipaddress.ip_address(a) in fl.SPOOF_NET for a, _ in got)
    sent = {(str(IP(p).src), IP(p)[UDP].sport) for p in packets}
    assert {(a, p) for a, p in got} <= sent  # what arrived is what was sent


def test_data_junk_is_shaped_as_transport_data() -> None:
    for raw in fl.data_junk_packets("198.18.2.2", 51820, 300, seed=4):
        pkt = IP(raw)
        msg = bytes(pkt[UDP].payload)
        assert ipaddress.ip_address(pkt.src) in fl.SPOOF_NET and pkt[UDP].dport == 51820
        assert msg[:4] == b"\x04\0\0\0" and 32 <= len(msg) <= 512
        ref = IP(bytes(IP(src=pkt.src, dst=pkt.dst, flags="DF", ttl=64, id=0) / UDP(
            sport=pkt[UDP].sport, dport=51820) / msg))  # fmt: skip
        assert (pkt[IP].chksum, pkt[UDP].chksum) == (ref[IP].chksum, ref[UDP].chksum)


def _status(scene: fl.Scene) -> dict[str, object]:
    time.sleep(1.2)
    out = scene.b.exec([sys.executable, "-m", "netoffload", "show", scene.b_name, "--json"])
    doc = json.loads(out)
    assert isinstance(doc, dict)
    return doc


def _ping(h: netns.Netns, addr: str) -> bool:
    r = h.exec(["ping", "-c", "2", "-i", "0.2", "-w", "5", addr], check=False)
    return "2 received" in r or " 0% packet loss" in r


def _capture_cookie_replies(seconds: float) -> int:
    """UDP datagrams from B's port to forged sources, seen on f's veth (a packet socket)."""
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
    s.bind(("veth0", 0))
    s.settimeout(0.2)
    n = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            frame = s.recv(2048)
        except TimeoutError:
            continue
        ip = frame[14:]
        to_forged = len(ip) >= 32 and ipaddress.IPv4Address(ip[16:20]) in fl.SPOOF_NET
        from_b = to_forged and ip[9] == 17 and int.from_bytes(ip[20:22], "big") == fl.PORT
        if from_b and ip[28] == 3 and len(ip) == 28 + 64:  # a cookie reply
            n += 1
    s.close()
    return n


@pytest.mark.kernel
def test_tunnel_under_a_handshake_flood_and_a_junk_flood(tmp_path: Path) -> None:
    _root_netns()
    reason = netns.tun_available() or wggo.available()
    if reason:
        pytest.skip(reason)
    scene = fl.build(tmp_path)
    try:
        assert _ping(scene.a, fl.INNER_B), "no session A-B before the floods"
        init = fl.initiation_packets(scene.b_public, fl.B_LINK_F, fl.PORT, 1024, seed=1)
        rate = fl.HANDSHAKE_FLOOD_X * UNDER_LOAD_RATE
        cap = scene.f.spawn(_capture_cookie_replies, 3.0)
        with fl.Flooding(scene, init, rate, 15.0) as running:
            took = fl.new_peer_handshake(scene, 5.0 + REKEY_TIMEOUT + 3.0)
            assert _ping(scene.a, fl.INNER_B), "the established session stopped under the flood"
            replies = cap.join(20)
        assert running.result.sent > 0
        assert took <= 5.0 + REKEY_TIMEOUT + 3.0, "the new peer never completed a handshake"
        assert replies > 100, "no cookie replies reached the forged sources' side"
        doc = _status(scene)
        reasons = doc["receive"]["tasks"]["dos-filter"]["reasons"]  # type: ignore[index]
        assert reasons.get("cookie_needed", 0) > 100
        junk = fl.junk_packets(fl.B_LINK_F, fl.PORT, 1024, seed=2)
        with fl.Flooding(scene, junk, None, 2.0) as running:
            time.sleep(1.0)
            assert _ping(scene.a, fl.INNER_B), "the session stopped under junk"
        doc2 = _status(scene)
        udp = doc2["devices"]["udp"]  # type: ignore[index]
        assert udp["shape_filter"] is True
        assert udp["socket_drops"] >= running.result.sent * 0.5  # the kernel dropped the junk
        assert _ping(scene.c.host, fl.INNER_B), "the new peer's session stopped"
    finally:
        scene.close()
