"""UDP header (RFC 768)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from netoffload.wire import WireError

_H = struct.Struct("!HHHH")
UDP_LEN = 8


@dataclass(frozen=True)
class UDP:
    sport: int = 40000
    dport: int = 4789
    length: int = 0  # 0: computed by emit()
    checksum: int = 0

    @classmethod
    def parse(cls, data: bytes | memoryview) -> tuple[UDP, int]:
        if len(data) < UDP_LEN:
            raise WireError("udp: truncated header")
        return cls(*_H.unpack_from(data, 0)), UDP_LEN

    def emit(self, payload_len: int = 0) -> bytes:
        return _H.pack(self.sport, self.dport, self.length or UDP_LEN + payload_len, self.checksum)
