"""Curve25519 keys as WireGuard and the ``wg`` tool use them.

A private key is 32 random bytes clamped as RFC 7748 section 5 says (what
``wg genkey`` prints); the public key is X25519(private, 9). Keys travel as
standard base64 of exactly 32 bytes (44 characters with one ``=``), the form of
``wg genkey``, ``wg pubkey``, ``wg genpsk`` and wg-quick files.
"""

from __future__ import annotations

import base64
import binascii
import os

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from netoffload.errors import ConfigError

KEY_LEN = 32
ZERO_KEY = bytes(KEY_LEN)


def clamp(private: bytes) -> bytes:
    """RFC 7748 clamping (X25519 clamps internally; ``wg genkey`` stores it clamped)."""
    b = bytearray(check_key(private, "private key"))
    b[0] &= 248
    b[31] = (b[31] & 127) | 64
    return bytes(b)


def generate_private() -> bytes:
    """A new random private key, clamped (as ``wg genkey``)."""
    return clamp(os.urandom(KEY_LEN))


def generate_preshared() -> bytes:
    """A new random preshared key (as ``wg genpsk``)."""
    return os.urandom(KEY_LEN)


def check_key(key: bytes, what: str = "key") -> bytes:
    if not isinstance(key, bytes | bytearray) or len(key) != KEY_LEN:
        n = len(key) if isinstance(key, bytes | bytearray) else type(key).__name__
        raise ConfigError(f"{what}: must be {KEY_LEN} bytes, got {n}")
    return bytes(key)


def public_from_private(private: bytes) -> bytes:
    """The public key of ``private`` (as ``wg pubkey``)."""
    sk = X25519PrivateKey.from_private_bytes(check_key(private, "private key"))
    return sk.public_key().public_bytes_raw()


def dh(private: bytes, public: bytes) -> bytes:
    """X25519 shared secret. An all-zero result (a low-order public key) raises ConfigError."""
    sk = X25519PrivateKey.from_private_bytes(private)
    try:
        return sk.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError as e:  # cryptography refuses the all-zero output
        raise ConfigError(f"X25519 with a low-order public key: {e}") from None


def b64_encode(key: bytes) -> str:
    """Standard base64 of a 32-byte key (44 characters)."""
    return base64.b64encode(check_key(key)).decode("ascii")


def b64_decode(text: str, what: str = "key") -> bytes:
    """A 32-byte key from standard base64; ConfigError naming ``what`` otherwise."""
    if not isinstance(text, str):
        raise ConfigError(f"{what}: expected base64 text, got {type(text).__name__}")
    s = text.strip()
    try:
        raw = base64.b64decode(s.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise ConfigError(f"{what}: not valid base64: {s[:60]!r}") from None
    if len(raw) != KEY_LEN:
        raise ConfigError(f"{what}: base64 of {len(raw)} bytes, a key is {KEY_LEN} bytes")
    if base64.b64encode(raw).decode("ascii") != s:  # non-canonical padding bits
        raise ConfigError(f"{what}: not canonical base64: {s!r}")
    return raw
