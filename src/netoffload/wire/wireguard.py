"""WireGuard messages (whitepaper section 5.4): bytes in, values out, and back.

Four messages, each recognised by its exact (type, length) pair before
anything else is read; the three reserved bytes after the type must be zero,
and every integer is little-endian::

    1 initiation (148): type | 0 0 0 | sender (4) | ephemeral (32) |
                        static (32 + 16 tag) | timestamp (12 + 16 tag) | mac1 (16) | mac2 (16)
    2 response    (92): type | 0 0 0 | sender (4) | receiver (4) | ephemeral (32) |
                        empty (0 + 16 tag) | mac1 (16) | mac2 (16)
    3 cookie      (64): type | 0 0 0 | receiver (4) | nonce (24) | cookie (16 + 16 tag)
    4 data     (>= 32): type | 0 0 0 | receiver (4) | counter (8) | packet (n + 16 tag)

A data message's packet is the inner IP packet padded with zeros to a multiple
of 16 bytes (less at the MTU), so any length from 32 up is a data message.

``mac1`` covers the message up to itself (``MAC1_OFFSET``), ``mac2`` the
message up to itself (``MAC2_OFFSET``); the helpers here only say where they
sit: computing them is the tunnel's job. Nothing here imports ``tunnel``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Self

import numpy as np
from numpy.typing import NDArray

MSG_INITIATION = 1
MSG_RESPONSE = 2
MSG_COOKIE = 3
MSG_DATA = 4

INITIATION_LEN = 148
RESPONSE_LEN = 92
COOKIE_LEN = 64
DATA_HEADER_LEN = 16
TAG_LEN = 16
KEY_LEN = 32
MAC_LEN = 16
#: the smallest data message: a keepalive (header and tag, no packet)
DATA_MIN_LEN = DATA_HEADER_LEN + TAG_LEN
TIMESTAMP_LEN = 12
COOKIE_NONCE_LEN = 24

_FIXED_LEN = {MSG_INITIATION: INITIATION_LEN, MSG_RESPONSE: RESPONSE_LEN, MSG_COOKIE: COOKIE_LEN}

_INIT = struct.Struct("<I I 32s 48s 28s 16s 16s")
_RESP = struct.Struct("<I I I 32s 16s 16s 16s")
_COOKIE = struct.Struct("<I I 24s 32s")
_DATA = struct.Struct("<I I Q")
assert _INIT.size == INITIATION_LEN and _RESP.size == RESPONSE_LEN and _COOKIE.size == COOKIE_LEN


def mac_offsets(length: int) -> tuple[int, int]:
    """Where mac1 and mac2 start in a handshake message of ``length`` bytes."""
    return length - 2 * MAC_LEN, length - MAC_LEN


def message_type(data: bytes | bytearray | memoryview) -> int:
    """The message type when ``data`` has the exact (type, length) pair of a WireGuard
    message and zero reserved bytes, else 0. Never raises."""
    n = len(data)
    if n < 4:
        return 0
    t = data[0]
    if data[1] or data[2] or data[3]:
        return 0
    if t == MSG_DATA:
        return MSG_DATA if n >= DATA_MIN_LEN else 0
    return t if _FIXED_LEN.get(t) == n else 0


def _check(data: bytes | bytearray | memoryview, t: int, what: str) -> bytes:
    b = bytes(data)
    if message_type(b) != t:
        raise ValueError(
            f"wireguard {what}: not a type-{t} message of {_FIXED_LEN[t]} bytes "
            f"(got {len(b)} bytes, type {b[0] if b else None})"
        )
    return b


def _need(name: str, value: bytes, n: int) -> None:
    if not isinstance(value, bytes) or len(value) != n:
        raise ValueError(f"wireguard: {name} must be {n} bytes")


def _need_u32(name: str, value: int) -> None:
    if not 0 <= value < 1 << 32:
        raise ValueError(f"wireguard: {name} must be a 32-bit index")


@dataclass(frozen=True, slots=True)
class Initiation:
    """Handshake initiation (type 1)."""

    sender: int
    ephemeral: bytes
    encrypted_static: bytes
    encrypted_timestamp: bytes
    mac1: bytes = bytes(MAC_LEN)
    mac2: bytes = bytes(MAC_LEN)

    def __post_init__(self) -> None:
        _need_u32("sender", self.sender)
        _need("ephemeral", self.ephemeral, KEY_LEN)
        _need("encrypted_static", self.encrypted_static, KEY_LEN + TAG_LEN)
        _need("encrypted_timestamp", self.encrypted_timestamp, TIMESTAMP_LEN + TAG_LEN)
        _need("mac1", self.mac1, MAC_LEN)
        _need("mac2", self.mac2, MAC_LEN)

    @classmethod
    def parse(cls, data: bytes | bytearray | memoryview) -> Self:
        b = _check(data, MSG_INITIATION, "initiation")
        _, sender, eph, st, ts, m1, m2 = _INIT.unpack(b)
        return cls(sender, eph, st, ts, m1, m2)

    def emit(self) -> bytes:
        return _INIT.pack(
            MSG_INITIATION,
            self.sender,
            self.ephemeral,
            self.encrypted_static,
            self.encrypted_timestamp,
            self.mac1,
            self.mac2,
        )


@dataclass(frozen=True, slots=True)
class Response:
    """Handshake response (type 2)."""

    sender: int
    receiver: int
    ephemeral: bytes
    encrypted_nothing: bytes
    mac1: bytes = bytes(MAC_LEN)
    mac2: bytes = bytes(MAC_LEN)

    def __post_init__(self) -> None:
        _need_u32("sender", self.sender)
        _need_u32("receiver", self.receiver)
        _need("ephemeral", self.ephemeral, KEY_LEN)
        _need("encrypted_nothing", self.encrypted_nothing, TAG_LEN)
        _need("mac1", self.mac1, MAC_LEN)
        _need("mac2", self.mac2, MAC_LEN)

    @classmethod
    def parse(cls, data: bytes | bytearray | memoryview) -> Self:
        b = _check(data, MSG_RESPONSE, "response")
        _, sender, receiver, eph, empty, m1, m2 = _RESP.unpack(b)
        return cls(sender, receiver, eph, empty, m1, m2)

    def emit(self) -> bytes:
        return _RESP.pack(
            MSG_RESPONSE,
            self.sender,
            self.receiver,
            self.ephemeral,
            self.encrypted_nothing,
            self.mac1,
            self.mac2,
        )


@dataclass(frozen=True, slots=True)
class CookieReply:
    """Cookie reply (type 3)."""

    receiver: int
    nonce: bytes
    encrypted_cookie: bytes

    def __post_init__(self) -> None:
        _need_u32("receiver", self.receiver)
        _need("nonce", self.nonce, COOKIE_NONCE_LEN)
        _need("encrypted_cookie", self.encrypted_cookie, MAC_LEN + TAG_LEN)

    @classmethod
    def parse(cls, data: bytes | bytearray | memoryview) -> Self:
        b = _check(data, MSG_COOKIE, "cookie reply")
        _, receiver, nonce, cookie = _COOKIE.unpack(b)
        return cls(receiver, nonce, cookie)

    def emit(self) -> bytes:
        return _COOKIE.pack(MSG_COOKIE, self.receiver, self.nonce, self.encrypted_cookie)


def data_header(receiver: int, counter: int) -> bytes:
    """The 16-byte header of a data message."""
    _need_u32("receiver", receiver)
    if not 0 <= counter < 1 << 64:
        raise ValueError("wireguard: counter must be a 64-bit integer")
    return _DATA.pack(MSG_DATA, receiver, counter)


def parse_data_header(data: bytes | bytearray | memoryview) -> tuple[int, int]:
    """``(receiver, counter)`` of a data message; ValueError if ``data`` is not one."""
    if message_type(data) != MSG_DATA:
        raise ValueError(f"wireguard data: not a type-4 message of >= {DATA_MIN_LEN} bytes")
    _, receiver, counter = _DATA.unpack_from(data, 0)
    return receiver, counter


_OFF16 = np.arange(DATA_HEADER_LEN, dtype=np.int64)


def data_headers(
    buf: NDArray[np.uint8], starts: NDArray[np.int64], lengths: NDArray[np.int64]
) -> tuple[NDArray[np.uint8], NDArray[np.uint32], NDArray[np.uint64], NDArray[np.bool_]]:
    """Headers of a batch of datagrams laid out in one buffer.

    Datagram ``i`` is ``buf[starts[i] : starts[i] + lengths[i]]``. Returns
    ``(types, receivers, counters, ok)``: the first byte (0 for an empty
    datagram), the receiver index and counter (little-endian; 0 where the
    datagram is shorter than 16 bytes), and ``ok`` where the datagram is a data
    message (type 4, reserved bytes zero, at least 32 bytes). A datagram
    reaching past the end of ``buf`` is treated as truncated there.
    """
    buf = np.asarray(buf, dtype=np.uint8).reshape(-1)
    starts = np.asarray(starts, dtype=np.int64).reshape(-1)
    lengths = np.asarray(lengths, dtype=np.int64).reshape(-1)
    if starts.shape != lengths.shape:
        raise ValueError("data_headers: starts and lengths differ in shape")
    n = len(starts)
    avail = np.clip(np.minimum(lengths, len(buf) - starts), 0, None)
    avail[starts < 0] = 0
    full = avail >= DATA_HEADER_LEN
    hdr = np.zeros((n, DATA_HEADER_LEN), dtype=np.uint8)
    if full.any():
        hdr[full] = buf[starts[full, None] + _OFF16]
    part = ~full & (avail > 0)
    if part.any():  # short datagrams: only the type byte is read
        hdr[part, 0] = buf[starts[part]]
    types = hdr[:, 0].copy()
    receivers = hdr[:, 4:8].copy().view("<u4").reshape(-1).astype(np.uint32)
    counters = hdr[:, 8:16].copy().view("<u8").reshape(-1).astype(np.uint64)
    ok = (
        (types == MSG_DATA)
        & ~hdr[:, 1:4].any(axis=1)
        & (avail >= DATA_MIN_LEN)
        & (avail == lengths)
    )
    return types, receivers, counters, ok
