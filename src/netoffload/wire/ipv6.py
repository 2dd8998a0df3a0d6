"""IPv6 header (RFC 8200) and the extension headers the tasks can walk."""

from __future__ import annotations

import functools
import ipaddress
import struct
from dataclasses import dataclass

from netoffload.wire import WireError


@functools.lru_cache(maxsize=4096)
def packed6(addr: str) -> bytes:
    """The 16 bytes of an IPv6 address given as text (parsed once: packets of one
    flow repeat their addresses). Raises ValueError for a bad address."""
    return ipaddress.IPv6Address(addr).packed


_H = struct.Struct("!IHBB16s16s")
HOP_BY_HOP = 0
ROUTING = 43
FRAGMENT = 44
DEST_OPTS = 60
#: extension headers with the generic (next, hdr-ext-len) layout
WALKABLE_EXT = (HOP_BY_HOP, ROUTING, DEST_OPTS)


@dataclass(frozen=True)
class IPv6:
    src: str = "fd00::1"
    dst: str = "fd00::2"
    next_header: int = 6
    hop_limit: int = 64
    traffic_class: int = 0
    flow_label: int = 0
    payload_length: int = 0  # 0: computed by emit()

    @classmethod
    def parse(cls, data: bytes | memoryview) -> tuple[IPv6, int]:
        if len(data) < 40:
            raise WireError("ipv6: truncated header")
        vtf, plen, nh, hl, s, d = _H.unpack_from(data, 0)
        if vtf >> 28 != 6:
            raise WireError("ipv6: version is not 6")
        return (
            cls(
                str(ipaddress.IPv6Address(s)),
                str(ipaddress.IPv6Address(d)),
                nh,
                hl,
                (vtf >> 20) & 0xFF,
                vtf & 0xFFFFF,
                plen,
            ),
            40,
        )

    def emit(self, payload_len: int = 0) -> bytes:
        vtf = (6 << 28) | (self.traffic_class << 20) | self.flow_label
        return _H.pack(
            vtf,
            self.payload_length or payload_len,
            self.next_header,
            self.hop_limit,
            packed6(self.src),
            packed6(self.dst),
        )

    def pseudo_header(self, l4_len: int, proto: int) -> bytes:
        return packed6(self.src) + packed6(self.dst) + struct.pack("!IxxxB", l4_len, proto)
