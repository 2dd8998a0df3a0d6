"""Two tunnels on an in-process wire (tunnel/loop.py): outer headers as scapy reads them,
the handshake, packets through both engines unchanged, routing and source checks."""

from __future__ import annotations

import scapy.all as S

from netoffload.batch import Batch
from netoffload.tunnel import keys
from netoffload.tunnel.config import parse_config
from netoffload.tunnel.datapath import HEADROOM, TAILROOM
from netoffload.tunnel.loop import LoopTunnel, LoopWire, outer_header


def _pair(
    wire: LoopWire | None = None, endpoint_b: str = "198.18.0.2"
) -> tuple[LoopWire, LoopTunnel, LoopTunnel]:
    ska, skb = keys.generate_private(), keys.generate_private()
    pka, pkb = keys.public_from_private(ska), keys.public_from_private(skb)

    def conf(sk: bytes, addr: str, pk: bytes, allowed: str, ep: str) -> str:
        return (
            f"[Interface]\nPrivateKey = {keys.b64_encode(sk)}\nListenPort = 51820\n"
            f"Address = {addr}\n[Peer]\nPublicKey = {keys.b64_encode(pk)}\n"
            f"AllowedIPs = {allowed}\nEndpoint = {ep}:51820\n"
        )

    w = wire or LoopWire()
    a = LoopTunnel(
        parse_config(
            conf(ska, "198.18.10.1/24", pkb, "198.18.10.2/32, fd00:10::2/128", endpoint_b),
            "lta",
        ),
        w,
        "198.18.0.1",
    )
    b = LoopTunnel(
        parse_config(
            conf(skb, "198.18.10.2/24", pka, "198.18.10.1/32, fd00:10::1/128", "198.18.0.1"),
            "ltb",
        ),
        w,
        "198.18.0.2",
    )
    return w, a, b


def _batch(pkts: list[bytes]) -> Batch:
    return Batch.from_packets(pkts, headroom=HEADROOM, tailroom=TAILROOM)


def test_outer_header_is_what_scapy_reads() -> None:
    for src, dst, cls in (
        (("198.18.0.1", 51820), ("198.18.0.2", 1234), S.IP),
        (("fd00::1", 51820), ("fd00::2", 1234), S.IPv6),
    ):
        raw = outer_header(src, dst, 5) + b"hello"
        p = cls(raw)
        assert (p.src, p.dst) == (src[0], dst[0])
        assert (p[S.UDP].sport, p[S.UDP].dport, p[S.UDP].len) == (51820, 1234, 13)
        assert bytes(p[S.UDP].payload) == b"hello"
        if cls is S.IP:
            assert p.len == 33 and p.proto == 17


def test_handshake_over_the_wire_gives_both_a_session() -> None:
    w, a, b = _pair()
    a.handshake()
    w.pump()
    (pa,) = a.protocol.peers.values()
    (pb,) = b.protocol.peers.values()
    assert pa.current is not None and pb.current is not None
    assert pa.current.local_index == pb.current.remote_index
    assert w.counters.handshakes == 2  # initiation and response
    assert pb.endpoint == ("198.18.0.1", 51820)


def test_packets_cross_both_engines_unchanged_in_order() -> None:
    w, a, b = _pair()
    a.handshake()
    w.pump()
    sent = [
        bytes(
            S.IP(src="198.18.10.1", dst="198.18.10.2") / S.UDP(sport=1000 + i, dport=9) / (b"x" * i)
        )
        for i in range(1, 40)
    ] + [
        bytes(
            S.IPv6(src="fd00:10::1", dst="fd00:10::2")
            / S.TCP(sport=2000 + i, dport=80, flags="A")
            / (b"y" * i)
        )
        for i in range(1, 10)
    ]
    a.transmit(_batch(sent))
    w.pump()
    got = b.take_delivered()
    assert [g.data for g in got] == sent
    st = b.status()
    assert st["receive"]["tasks"]["decrypt"]["software"] + st["receive"]["tasks"]["decrypt"][
        "offloaded"
    ] >= len(sent)
    assert st["devices"]["wire"]["datagrams"] == w.counters.datagrams


def test_no_peer_and_bad_source_are_dropped_with_reasons() -> None:
    w, a, b = _pair()
    a.handshake()
    w.pump()
    nowhere = bytes(S.IP(src="198.18.10.1", dst="198.18.99.9") / S.UDP() / b"n")
    spoofed = bytes(S.IP(src="198.18.10.7", dst="198.18.10.2") / S.UDP() / b"s")
    a.transmit(_batch([nowhere, spoofed]))
    w.pump()
    assert b.take_delivered() == []
    tx = a.status()["transmit"]["tasks"]["classify"]["reasons"]
    rx = b.status()["receive"]["tasks"]["classify"]["reasons"]
    assert tx == {"no_peer": 1} and rx == {"bad_source": 1}


def test_a_peer_not_on_the_wire_is_unroutable() -> None:
    w, a, _b = _pair(endpoint_b="198.18.0.9")
    a.handshake()
    w.pump()
    assert w.counters.unroutable == 1 and w.counters.datagrams == 0


def test_tamper_sees_every_datagram_and_a_dropped_one_is_not_delivered() -> None:
    seen: list[bytes] = []

    def drop_data(d: bytes) -> bytes | None:
        seen.append(d)
        return None if d[28] == 4 else d  # transport data messages are lost

    w, a, b = _pair(LoopWire(drop_data))
    a.handshake()
    w.pump()
    a.transmit(_batch([bytes(S.IP(src="198.18.10.1", dst="198.18.10.2") / S.UDP() / b"z")]))
    w.pump()
    assert b.take_delivered() == []
    assert [d[28] for d in seen] == [1, 2, 4, 4]  # initiation, response, keepalive, data
