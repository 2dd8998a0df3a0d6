"""TCP header (RFC 9293)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from netoffload.wire import WireError

_H = struct.Struct("!HHIIBBHHH")
FIN, SYN, RST, PSH, ACK, URG, ECE, CWR = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80


@dataclass(frozen=True)
class TCP:
    sport: int = 40000
    dport: int = 5201
    seq: int = 0
    ack: int = 0
    flags: int = ACK
    window: int = 65535
    checksum: int = 0
    urgent: int = 0
    options: bytes = b""

    @property
    def header_len(self) -> int:
        return 20 + len(self.options)

    @classmethod
    def parse(cls, data: bytes | memoryview) -> tuple[TCP, int]:
        if len(data) < 20:
            raise WireError("tcp: truncated header")
        sp, dp, seq, ack, off, fl, win, csum, urg = _H.unpack_from(data, 0)
        doff = (off >> 4) * 4
        if doff < 20 or doff > len(data):
            raise WireError("tcp: bad data offset")
        return cls(sp, dp, seq, ack, fl, win, csum, urg, bytes(data[20:doff])), doff

    def emit(self) -> bytes:
        if len(self.options) % 4 or len(self.options) > 40:
            raise WireError("tcp: options must be a multiple of 4, at most 40 bytes")
        return (
            _H.pack(
                self.sport,
                self.dport,
                self.seq & 0xFFFFFFFF,
                self.ack & 0xFFFFFFFF,
                (self.header_len // 4) << 4,
                self.flags,
                self.window,
                self.checksum,
                self.urgent,
            )
            + self.options
        )
