"""IPv4 header (RFC 791)."""

from __future__ import annotations

import functools
import ipaddress
import struct
from dataclasses import dataclass

from netoffload.wire import WireError


@functools.lru_cache(maxsize=4096)
def packed4(addr: str) -> bytes:
    """The 4 bytes of an IPv4 address given as text (parsed once: packets of one
    flow repeat their addresses). Raises ValueError for a bad address."""
    return ipaddress.IPv4Address(addr).packed


_H = struct.Struct("!BBHHHBBH4s4s")
DF = 0x4000
MF = 0x2000


def ones_complement_sum(data: bytes | bytearray | memoryview, start: int = 0) -> int:
    """16-bit one's complement sum (RFC 1071), folded, not inverted. Slow path."""
    b = bytes(data)
    if len(b) % 2:
        b += b"\x00"
    s: int = start + sum(struct.unpack(f"!{len(b) // 2}H", b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def internet_checksum(data: bytes | bytearray | memoryview, start: int = 0) -> int:
    return (~ones_complement_sum(data, start)) & 0xFFFF


@dataclass(frozen=True)
class IPv4:
    src: str = "198.18.0.1"
    dst: str = "198.18.0.2"
    proto: int = 6
    ttl: int = 64
    tos: int = 0
    ident: int = 0
    flags_frag: int = DF  # flags (3 bits) and fragment offset
    total_length: int = 0  # 0: computed by emit()
    checksum: int | None = None  # None: computed by emit()
    options: bytes = b""

    @property
    def header_len(self) -> int:
        return 20 + len(self.options)

    @classmethod
    def parse(cls, data: bytes | memoryview) -> tuple[IPv4, int]:
        if len(data) < 20:
            raise WireError("ipv4: truncated header")
        vihl, tos, tot, ident, ff, ttl, proto, csum, s, d = _H.unpack_from(data, 0)
        if vihl >> 4 != 4:
            raise WireError("ipv4: version is not 4")
        ihl = (vihl & 15) * 4
        if ihl < 20 or ihl > len(data):
            raise WireError("ipv4: bad header length")
        return (
            cls(
                str(ipaddress.IPv4Address(s)),
                str(ipaddress.IPv4Address(d)),
                proto,
                ttl,
                tos,
                ident,
                ff,
                tot,
                csum,
                bytes(data[20:ihl]),
            ),
            ihl,
        )

    def emit(self, payload_len: int = 0) -> bytes:
        if len(self.options) % 4 or len(self.options) > 40:
            raise WireError("ipv4: options must be a multiple of 4, at most 40 bytes")
        ihl = self.header_len
        tot = self.total_length or ihl + payload_len
        h = bytearray(
            _H.pack(
                0x40 | ihl // 4,
                self.tos,
                tot,
                self.ident,
                self.flags_frag,
                self.ttl,
                self.proto,
                0,
                packed4(self.src),
                packed4(self.dst),
            )
            + self.options
        )
        c = internet_checksum(h) if self.checksum is None else self.checksum
        h[10:12] = c.to_bytes(2, "big")
        return bytes(h)

    def pseudo_header(self, l4_len: int) -> bytes:
        return packed4(self.src) + packed4(self.dst) + struct.pack("!BBH", 0, self.proto, l4_len)
