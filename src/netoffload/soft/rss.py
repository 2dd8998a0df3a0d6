"""Toeplitz receive-side-scaling hash, as Microsoft's RSS specification defines it.

The hash of an input of ``n`` bytes under a key of at least ``n + 4`` bytes is
the XOR, over every set bit ``i`` of the input (bit 0 = most significant bit
of byte 0), of the 32 key bits starting at key bit ``i``. Inputs, in network
byte order:

* IPv4 2-tuple: source address, destination address (8 bytes)
* IPv4 4-tuple: source address, destination address, source port, destination port (12)
* IPv6 2-tuple / 4-tuple: the same with 16-byte addresses (32 / 36 bytes)

The default key is the one of the specification's verification suite
(``DEFAULT_KEY``); any 40-byte key can be configured.

How it is fast: the hash is linear over GF(2), so it is the XOR over input
byte positions ``p`` of a table ``T[p][byte]`` (256 entries per position,
built once per key). Hashing a batch is one gather per byte position over an
``(n, bytes)`` matrix of tuples — no loop per packet.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from netoffload.errors import ConfigError

U8 = NDArray[np.uint8]
U32 = NDArray[np.uint32]

KEY_LEN = 40
#: the key of the RSS specification's verification suite
DEFAULT_KEY = bytes.fromhex(
    "6d5a56da255b0ec24167253d43a38fb0d0ca2bcbae7b30b477cb2da38030f20c6a42b73bbeac01fa"
)
#: longest input a 40-byte key covers (IPv6 4-tuple)
MAX_INPUT = KEY_LEN - 4


def parse_key(key: bytes | str | None) -> bytes:
    """A 40-byte key from bytes or hex text (colons/spaces allowed); None: the default."""
    if key is None:
        return DEFAULT_KEY
    if isinstance(key, str):
        text = key.replace(":", "").replace(" ", "").replace("-", "")
        try:
            raw = bytes.fromhex(text)
        except ValueError as e:
            raise ConfigError(f"RSS key {key!r} is not hex") from e
    elif isinstance(key, (bytes, bytearray)):
        raw = bytes(key)
    else:
        raise ConfigError(f"RSS key must be bytes or hex text, got {type(key).__name__}")
    if len(raw) != KEY_LEN:
        raise ConfigError(f"RSS key must be {KEY_LEN} bytes, got {len(raw)}")
    return raw


def toeplitz_reference(key: bytes, data: bytes) -> int:
    """Bit by bit, straight from the specification (slow; for tests and clarity)."""
    k = int.from_bytes(key, "big")
    kbits = 8 * len(key)
    if len(data) + 4 > len(key):
        raise ValueError("input longer than the key allows")
    result = 0
    for i in range(8 * len(data)):
        if data[i // 8] & (0x80 >> (i % 8)):
            result ^= (k >> (kbits - 32 - i)) & 0xFFFFFFFF
    return result


class Toeplitz:
    """Toeplitz hash under one key, table-driven and vectorised."""

    def __init__(self, key: bytes | str | None = None) -> None:
        self.key = parse_key(key)
        k = int.from_bytes(self.key, "big")
        kbits = 8 * KEY_LEN
        # window[i] = 32 key bits starting at bit i
        win = np.array(
            [(k >> (kbits - 32 - i)) & 0xFFFFFFFF for i in range(8 * MAX_INPUT)], dtype=np.uint32
        ).reshape(MAX_INPUT, 8)
        vals = np.arange(256, dtype=np.uint32)
        table = np.zeros((MAX_INPUT, 256), dtype=np.uint32)
        for j in range(8):  # bit j of a byte, j=0 the most significant
            on = ((vals >> np.uint32(7 - j)) & np.uint32(1)).astype(bool)
            table[:, on] ^= win[:, j : j + 1]
        self.table = table
        #: flat table and per-position offsets, for one gather over a matrix
        self._flat = table.reshape(-1)

    def hash_bytes(self, data: bytes) -> int:
        if len(data) > MAX_INPUT:
            raise ValueError(f"input of {len(data)} bytes is longer than {MAX_INPUT}")
        h = 0
        for p, b in enumerate(data):
            h ^= int(self.table[p, b])
        return h

    def hash_matrix(self, m: U8) -> U32:
        """Hashes of the rows of an ``(n, L)`` uint8 matrix (``L`` <= 36)."""
        n, width = m.shape
        if width > MAX_INPUT:
            raise ValueError(f"rows of {width} bytes are longer than {MAX_INPUT}")
        h = np.zeros(n, dtype=np.uint32)
        t = self.table
        for p in range(width):
            h ^= t[p][m[:, p]]
        return h


def tuple_matrix(
    src: U8, dst: U8, sport: NDArray[np.integer] | None, dport: NDArray[np.integer] | None
) -> U8:
    """Rows of hash input: src, dst (``(n, 4)`` or ``(n, 16)``), then ports if given."""
    cols = [src, dst]
    if sport is not None and dport is not None:
        p = np.empty((len(src), 4), dtype=np.uint8)
        sp = np.asarray(sport, dtype=np.int64)
        dp = np.asarray(dport, dtype=np.int64)
        p[:, 0] = sp >> 8
        p[:, 1] = sp & 0xFF
        p[:, 2] = dp >> 8
        p[:, 3] = dp & 0xFF
        cols.append(p)
    return np.ascontiguousarray(np.concatenate(cols, axis=1))
