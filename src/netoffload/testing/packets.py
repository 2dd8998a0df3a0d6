"""Packet builders for tests, benchmarks and the demo (no scapy at run time).

Every builder returns the bytes of one IP packet (optionally behind an Ethernet
header) with every checksum correct, built from the ``wire`` header classes:

    tcp_packet(v=4, payload=b"hello", options=b"\\x01\\x01\\x01\\x01")
    udp_packet(v=6, payload=b"x" * 99, v6_ext=((0, 0), (60, 1)))
    synthetic_flows(1000, sizes=(64, 576, 1400), seed=1)

Addresses default to the benchmarking ranges 198.18.0.0/15 and fd00::/8.
"""

from __future__ import annotations

import ipaddress
import random
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from netoffload.wire.ethernet import ETH_P_IP, ETH_P_IPV6, Ethernet
from netoffload.wire.ipv4 import DF, IPv4, internet_checksum
from netoffload.wire.ipv6 import IPv6
from netoffload.wire.tcp import ACK, PSH, TCP
from netoffload.wire.udp import UDP

IPPROTO_TCP = 6
IPPROTO_UDP = 17

V4_SRC = "198.18.0.1"
V4_DST = "198.19.0.1"
V6_SRC = "fd00::1"
V6_DST = "fd00::2"

#: one IPv6 extension header: (header type, Hdr Ext Len in 8-byte units beyond the first 8)
V6Ext = tuple[int, int]


def _v6_ext_chain(exts: Sequence[V6Ext], last_nh: int) -> tuple[bytes, int]:
    """Hop-by-hop / routing / destination-options headers; returns (bytes, first next-header).

    Option headers are filled with PadN; a routing header is type 0 with
    Segments Left 0 (so the pseudo-header destination is the IPv6 destination).
    """
    out = b""
    types = [t for t, _ in exts]
    for i, (typ, units) in enumerate(exts):
        nxt = types[i + 1] if i + 1 < len(types) else last_nh
        body_len = 6 + 8 * units  # bytes after (next header, hdr ext len)
        if typ == 43:  # routing: type 0, segments left 0, reserved/addresses zero
            body = bytes([0, 0]) + b"\x00" * (body_len - 2)
        else:  # options: one PadN covering the body
            body = bytes([1, body_len - 2]) + b"\x00" * (body_len - 2)
        out += bytes([nxt, units]) + body
    return out, (types[0] if types else last_nh)


def _ip_and_pseudo(
    v: int,
    proto: int,
    l4_len: int,
    src: str | None,
    dst: str | None,
    ip_options: bytes,
    v6_ext: Sequence[V6Ext],
    ident: int,
    ttl: int,
    flags_frag: int,
    tos: int,
) -> tuple[bytes, bytes]:
    """The IP header (with v6 extension headers) and the L4 pseudo-header."""
    if v == 4:
        if v6_ext:
            raise ValueError("v6_ext given for an IPv4 packet")
        ip4 = IPv4(
            src or V4_SRC,
            dst or V4_DST,
            proto,
            ttl=ttl,
            tos=tos,
            ident=ident,
            flags_frag=flags_frag,
            options=ip_options,
        )
        return ip4.emit(l4_len), ip4.pseudo_header(l4_len)
    if v == 6:
        if ip_options:
            raise ValueError("ip_options given for an IPv6 packet (use v6_ext)")
        chain, first = _v6_ext_chain(v6_ext, proto)
        ip6 = IPv6(src or V6_SRC, dst or V6_DST, first, hop_limit=ttl, traffic_class=tos)
        return ip6.emit(len(chain) + l4_len) + chain, ip6.pseudo_header(l4_len, proto)
    raise ValueError(f"IP version must be 4 or 6, not {v}")


def _frame(pkt: bytes, v: int, ethernet: bool) -> bytes:
    if not ethernet:
        return pkt
    return Ethernet(ethertype=ETH_P_IP if v == 4 else ETH_P_IPV6).emit() + pkt


def tcp_packet(
    v: int = 4,
    payload: bytes = b"",
    options: bytes = b"",
    src: str | None = None,
    dst: str | None = None,
    sport: int = 40000,
    dport: int = 5201,
    seq: int = 0,
    ack: int = 0,
    flags: int = ACK | PSH,
    window: int = 65535,
    ip_options: bytes = b"",
    v6_ext: Sequence[V6Ext] = (),
    ident: int = 0,
    ttl: int = 64,
    flags_frag: int = DF,
    tos: int = 0,
    ethernet: bool = False,
    checksum: bool = True,
) -> bytes:
    """An IPv4/IPv6 TCP packet with correct IP and TCP checksums.

    ``checksum=False`` leaves the TCP checksum field zero (the IPv4 header
    checksum is always filled in).
    """
    tcp = TCP(sport, dport, seq, ack, flags, window, 0, 0, options)
    seg = bytearray(tcp.emit() + payload)
    ip, pseudo = _ip_and_pseudo(
        v, IPPROTO_TCP, len(seg), src, dst, ip_options, v6_ext, ident, ttl, flags_frag, tos
    )
    if checksum:
        seg[16:18] = internet_checksum(pseudo + bytes(seg)).to_bytes(2, "big")
    return _frame(ip + bytes(seg), v, ethernet)


def udp_packet(
    v: int = 4,
    payload: bytes = b"",
    src: str | None = None,
    dst: str | None = None,
    sport: int = 40000,
    dport: int = 4789,
    ip_options: bytes = b"",
    v6_ext: Sequence[V6Ext] = (),
    ident: int = 0,
    ttl: int = 64,
    flags_frag: int = DF,
    tos: int = 0,
    ethernet: bool = False,
    checksum: bool = True,
) -> bytes:
    """An IPv4/IPv6 UDP packet with correct checksums (a computed 0 is sent as 0xFFFF).

    ``checksum=False`` leaves the UDP checksum 0 ("no checksum", valid on IPv4 only).
    """
    seg = bytearray(UDP(sport, dport).emit(len(payload)) + payload)
    ip, pseudo = _ip_and_pseudo(
        v, IPPROTO_UDP, len(seg), src, dst, ip_options, v6_ext, ident, ttl, flags_frag, tos
    )
    if checksum:
        c = internet_checksum(pseudo + bytes(seg)) or 0xFFFF
        seg[6:8] = c.to_bytes(2, "big")
    return _frame(ip + bytes(seg), v, ethernet)


def _addr(v: int, flow: int, side: int) -> str:
    if v == 4:
        # 198.18.0.0/15: side 0 in 198.18/16, side 1 in 198.19/16
        base = int(ipaddress.IPv4Address("198.18.0.0")) + (side << 16)
        return str(ipaddress.IPv4Address(base + 1 + flow % 65000))
    return str(
        ipaddress.IPv6Address(int(ipaddress.IPv6Address("fd00::")) + (side << 32) + flow + 1)
    )


@dataclass
class _Flow:
    v: int
    proto: int
    src: str
    dst: str
    sport: int
    dport: int
    seq: int
    ident: int


def synthetic_flows(
    n_packets: int,
    sizes: Sequence[int] = (64, 576, 1400),
    seed: int = 0,
    n_flows: int = 16,
) -> list[bytes]:
    """``n_packets`` IP packets from ``n_flows`` flows: IPv4/IPv6 × TCP/UDP, all checksums right.

    Each packet's IP length is drawn from ``sizes`` (raised to the headers'
    minimum); TCP flows carry consecutive sequence numbers. Deterministic in ``seed``.
    """
    rnd = random.Random(seed)
    flows: list[_Flow] = []
    for f in range(max(1, n_flows)):
        v = 4 if f % 2 == 0 else 6
        proto = IPPROTO_TCP if (f // 2) % 2 == 0 else IPPROTO_UDP
        flows.append(
            _Flow(
                v,
                proto,
                _addr(v, f, 0),
                _addr(v, f, 1),
                40000 + f,
                5201 if proto == IPPROTO_TCP else 4789,
                rnd.getrandbits(32),
                rnd.getrandbits(16),
            )
        )
    sizes = list(sizes)
    out: list[bytes] = []
    for _ in range(n_packets):
        fl = flows[rnd.randrange(len(flows))]
        hdr = (20 if fl.v == 4 else 40) + (20 if fl.proto == IPPROTO_TCP else 8)
        n = max(hdr, int(rnd.choice(sizes))) - hdr
        payload = struct.pack("!I", len(out) & 0xFFFFFFFF)[:n] + rnd.randbytes(max(0, n - 4))
        ident = fl.ident
        fl.ident = (ident + 1) & 0xFFFF
        if fl.proto == IPPROTO_TCP:
            seq = fl.seq
            fl.seq = (seq + n) & 0xFFFFFFFF
            pkt = tcp_packet(
                fl.v,
                payload,
                src=fl.src,
                dst=fl.dst,
                sport=fl.sport,
                dport=fl.dport,
                seq=seq,
                ack=1,
                ident=ident,
            )
        else:
            pkt = udp_packet(
                fl.v,
                payload,
                src=fl.src,
                dst=fl.dst,
                sport=fl.sport,
                dport=fl.dport,
                ident=ident,
            )
        out.append(pkt)
    return out
