"""Ethernet II header."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from netoffload.wire import WireError

ETH_LEN = 14
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_8021Q = 0x8100
_H = struct.Struct("!6s6sH")


@dataclass(frozen=True)
class Ethernet:
    dst: bytes = b"\x02\x00\x00\x00\x00\x02"
    src: bytes = b"\x02\x00\x00\x00\x00\x01"
    ethertype: int = ETH_P_IP

    @classmethod
    def parse(cls, data: bytes | memoryview) -> tuple[Ethernet, int]:
        if len(data) < ETH_LEN:
            raise WireError("ethernet: truncated header")
        dst, src, et = _H.unpack_from(data, 0)
        return cls(dst, src, et), ETH_LEN

    def emit(self) -> bytes:
        if len(self.dst) != 6 or len(self.src) != 6:
            raise WireError("ethernet: addresses must be 6 bytes")
        return _H.pack(self.dst, self.src, self.ethertype)
