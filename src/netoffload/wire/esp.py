"""ESP (RFC 4303) header and trailer, and ESP-in-UDP (RFC 3948). Bytes only.

Layout of an ESP packet in tunnel mode, as netoffload emits it::

    outer IP | [UDP 4500 (RFC 3948)] | SPI (4) | Seq (4) | IV (8, AEAD) |
    ciphertext of: inner IP packet | Padding (0..3) | Pad Length | Next Header |
    ICV (16)

Padding bytes are 1, 2, 3, ... (RFC 4303 section 2.4) and make the encrypted
part end on a 4-byte boundary; Next Header is 4 (IPv4) or 41 (IPv6) in tunnel
mode. In UDP encapsulation the first four bytes of the UDP payload are the SPI,
never zero (zero is the non-ESP marker of IKE).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from netoffload.wire import WireError

IPPROTO_ESP = 50
IPPROTO_UDP = 17
NH_IPV4 = 4
NH_IPV6 = 41
NH_NONE = 59  # dummy packet (RFC 4303 2.6)
ESP_HDR_LEN = 8
TRAILER_MIN = 2  # pad length + next header
NAT_T_PORT = 4500
_H = struct.Struct("!II")


@dataclass(frozen=True)
class EspHeader:
    spi: int
    seq: int  # the low 32 bits on the wire

    @classmethod
    def parse(cls, data: bytes | memoryview) -> tuple[EspHeader, int]:
        if len(data) < ESP_HDR_LEN:
            raise WireError("esp: truncated header")
        spi, seq = _H.unpack_from(data, 0)
        if spi == 0:
            raise WireError("esp: SPI 0 (non-ESP marker or reserved)")
        return cls(spi, seq), ESP_HDR_LEN

    def emit(self) -> bytes:
        if not 0 < self.spi < 1 << 32:
            raise WireError("esp: SPI must be 1..2**32-1")
        return _H.pack(self.spi, self.seq & 0xFFFFFFFF)


def pad_length(payload_len: int, align: int = 4) -> int:
    """Padding bytes so that payload + padding + 2 is a multiple of ``align``."""
    return (-(payload_len + TRAILER_MIN)) % align


def emit_trailer(payload_len: int, next_header: int, align: int = 4) -> bytes:
    """Padding (1, 2, ...), Pad Length and Next Header for a payload of that length."""
    n = pad_length(payload_len, align)
    return bytes(range(1, n + 1)) + bytes([n, next_header])


@dataclass(frozen=True)
class EspTrailer:
    pad_len: int
    next_header: int

    @classmethod
    def parse(cls, plaintext: bytes | memoryview) -> tuple[EspTrailer, int]:
        """Trailer at the end of a decrypted payload; returns (trailer, payload length).

        Raises WireError when the trailer is truncated or the padding is not 1, 2, ...
        """
        n = len(plaintext)
        if n < TRAILER_MIN:
            raise WireError("esp: truncated trailer")
        pad, nh = plaintext[n - 2], plaintext[n - 1]
        if pad + TRAILER_MIN > n:
            raise WireError("esp: pad length beyond the payload")
        if bytes(plaintext[n - 2 - pad : n - 2]) != bytes(range(1, pad + 1)):
            raise WireError("esp: bad padding bytes")
        return cls(pad, nh), n - 2 - pad


def is_esp_in_udp(udp_payload: bytes | memoryview) -> bool:
    """RFC 3948: a UDP payload on the NAT-T port is ESP unless it starts with 4 zeros."""
    return len(udp_payload) >= ESP_HDR_LEN and bytes(udp_payload[:4]) != b"\x00\x00\x00\x00"
