"""MACs and cookies of WireGuard handshake messages (whitepaper section 5.4.4, 5.4.7).

Every handshake message ends in ``mac1 || mac2``:

* ``mac1 = MAC(HASH(LABEL_MAC1 || S_pub), msg_alpha)`` with ``S_pub`` the
  receiver's static public key and ``msg_alpha`` the message up to mac1: anyone
  who knows whom they talk to can make it, and a responder checks it before
  any expensive work.
* ``mac2 = MAC(cookie, msg_beta)`` (``msg_beta``: up to mac2) when the sender
  holds a cookie younger than ``COOKIE_REFRESH_TIME``, else 16 zero bytes.

A responder under load answers a message without a valid mac2 with a cookie
reply: ``cookie = MAC(R, source address)`` with ``R`` a secret renewed every
two minutes, sent as ``XAEAD(HASH(LABEL_COOKIE || S_pub), nonce, cookie,
mac1 of the message)`` (24-byte random nonce). ``CookieChecker`` is the
receiving side (one per interface), ``CookieGenerator`` the sending side (one
per peer).

XAEAD is XChaCha20-Poly1305 (draft-irtf-cfrg-xchacha): the subkey is
``HChaCha20(key, nonce[:16])``, then ChaCha20-Poly1305 under the subkey with
the nonce ``0^4 || nonce[16:]``. ``cryptography`` has no HChaCha20; it is
derived from the ChaCha20 block function ``cryptography`` does have: the first
keystream block for the 16-byte input ``nonce[:16]`` (as words 12..15) is the
permuted state plus the initial state, so subtracting the initial state's words
0..3 (the constants) and 12..15 (the input) gives HChaCha20's output words.
"""

from __future__ import annotations

import hmac
import os
import socket
import struct
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from netoffload.tunnel.noise import LABEL_COOKIE, LABEL_MAC1, hash_, mac
from netoffload.wire.wireguard import MAC_LEN, CookieReply

#: how long a cookie secret (responder) and a received cookie (initiator) are good for
COOKIE_REFRESH_TIME = 120.0
#: cookie replies sent under one 16-byte nonce prefix (one HChaCha20 subkey)
NONCES_PER_PREFIX = 1 << 16

_SIGMA = struct.unpack("<4I", b"expand 32-byte k")
_WORDS16 = struct.Struct("<16I")
_WORDS4 = struct.Struct("<4I")
_ZERO_BLOCK = bytes(64)
_M32 = 0xFFFFFFFF


def hchacha20(key: bytes, nonce16: bytes) -> bytes:
    """HChaCha20(key, 16-byte input) -> 32-byte subkey, from ``cryptography``'s ChaCha20."""
    if len(key) != 32 or len(nonce16) != 16:
        raise ValueError("hchacha20: key is 32 bytes, input 16 bytes")
    enc = Cipher(algorithms.ChaCha20(key, nonce16), mode=None).encryptor()
    block = _WORDS16.unpack(enc.update(_ZERO_BLOCK))
    inp = _WORDS4.unpack(nonce16)
    out = [(block[i] - _SIGMA[i]) & _M32 for i in range(4)]
    out += [(block[12 + i] - inp[i]) & _M32 for i in range(4)]
    return struct.pack("<8I", *out)


def xaead_encrypt(key: bytes, nonce24: bytes, plaintext: bytes, ad: bytes) -> bytes:
    """XChaCha20-Poly1305 seal (ciphertext || tag)."""
    if len(nonce24) != 24:
        raise ValueError("xchacha20-poly1305: nonce is 24 bytes")
    sub = hchacha20(key, nonce24[:16])
    return ChaCha20Poly1305(sub).encrypt(b"\x00" * 4 + nonce24[16:], plaintext, ad)


def xaead_decrypt(key: bytes, nonce24: bytes, ciphertext: bytes, ad: bytes) -> bytes | None:
    """XChaCha20-Poly1305 open; None when authentication fails."""
    if len(nonce24) != 24:
        raise ValueError("xchacha20-poly1305: nonce is 24 bytes")
    sub = hchacha20(key, nonce24[:16])
    try:
        return ChaCha20Poly1305(sub).decrypt(b"\x00" * 4 + nonce24[16:], ciphertext, ad)
    except InvalidTag:
        return None


def mac1_key(static_public: bytes) -> bytes:
    return hash_(LABEL_MAC1, static_public)


def cookie_key(static_public: bytes) -> bytes:
    return hash_(LABEL_COOKIE, static_public)


def source_bytes(src: tuple[str, int]) -> bytes:
    """The source address as the cookie covers it: packed IP, then the port (big-endian)."""
    a = src[0]
    try:  # the fast path (a flood of forged sources comes through here)
        packed = socket.inet_pton(socket.AF_INET6 if ":" in a else socket.AF_INET, a)
    except OSError:
        import ipaddress

        packed = ipaddress.ip_address(a).packed
    return packed + (src[1] & 0xFFFF).to_bytes(2, "big")


class CookieChecker:
    """The receiving side: checks mac1/mac2 of handshake messages to us, makes cookie replies.

    ``random_bytes`` (default ``os.urandom``) makes the secret and the nonces.
    """

    def __init__(
        self, static_public: bytes, *, random_bytes: Callable[[int], bytes] = os.urandom
    ) -> None:
        self._random = random_bytes
        self._secret = b""
        self._secret_time = float("-inf")
        self._prefix = b""
        self._sub: ChaCha20Poly1305 | None = None
        self._prefix_left = 0
        self._tails = b""
        self.set_public(static_public)

    def set_public(self, static_public: bytes) -> None:
        self._mac1_key = mac1_key(static_public)
        self._cookie_key = cookie_key(static_public)
        self._prefix_left = 0

    def check_mac1(self, msg: bytes) -> bool:
        """mac1 of a handshake message (its length says where it is) is right."""
        n = len(msg)
        want = mac(self._mac1_key, msg[: n - 2 * MAC_LEN])
        return hmac.compare_digest(want, msg[n - 2 * MAC_LEN : n - MAC_LEN])

    def _cookie(self, src: tuple[str, int]) -> bytes:
        return mac(self._secret, source_bytes(src))

    def check_mac2(self, msg: bytes, src: tuple[str, int], now: float) -> bool:
        """mac2 is right for a cookie we gave ``src`` under the current secret."""
        if now - self._secret_time > COOKIE_REFRESH_TIME:
            return False
        n = len(msg)
        want = mac(self._cookie(src), msg[: n - MAC_LEN])
        return hmac.compare_digest(want, msg[n - MAC_LEN :])

    def make_reply(self, msg: bytes, receiver: int, src: tuple[str, int], now: float) -> bytes:
        """A cookie reply to ``msg`` (whose sender index is ``receiver``) from ``src``."""
        if now - self._secret_time > COOKIE_REFRESH_TIME:
            self._secret = self._random(32)
            self._secret_time = now
        n = len(msg)
        msg_mac1 = msg[n - 2 * MAC_LEN : n - MAC_LEN]
        # XChaCha20-Poly1305 with a random 24-byte nonce whose first 16 bytes are kept for
        # NONCES_PER_PREFIX replies: the HChaCha20 subkey is made once for them (a reply
        # under flood costs one AEAD call). Nonces stay unique: the 8 random bytes that
        # vary are drawn at most 2^16 times under one prefix.
        if self._prefix_left <= 0 or self._sub is None:
            self._prefix = self._random(16)
            self._sub = ChaCha20Poly1305(hchacha20(self._cookie_key, self._prefix))
            self._prefix_left = NONCES_PER_PREFIX
        self._prefix_left -= 1
        if len(self._tails) < 8:
            self._tails = self._random(8 * 256)  # one read of the random source for 256
        tail, self._tails = self._tails[:8], self._tails[8:]
        enc = self._sub.encrypt(b"\x00" * 4 + tail, self._cookie(src), msg_mac1)
        return CookieReply(receiver, self._prefix + tail, enc).emit()


class CookieGenerator:
    """The sending side toward one peer: adds mac1/mac2, takes the peer's cookie replies."""

    def __init__(self, remote_static: bytes) -> None:
        self._mac1_key = mac1_key(remote_static)
        self._cookie_key = cookie_key(remote_static)
        self.cookie = b""
        self.cookie_time = float("-inf")
        self.last_mac1: bytes | None = None

    def add_macs(self, msg: bytes, now: float) -> bytes:
        """``msg`` (a handshake message with zero MACs) with mac1 and, if a fresh cookie
        is held, mac2."""
        n = len(msg)
        body = msg[: n - 2 * MAC_LEN]
        m1 = mac(self._mac1_key, body)
        self.last_mac1 = m1
        if self.cookie and now - self.cookie_time < COOKIE_REFRESH_TIME:
            m2 = mac(self.cookie, body + m1)
        else:
            m2 = bytes(MAC_LEN)
        return body + m1 + m2

    def consume_reply(self, reply: CookieReply, now: float) -> bool:
        """Take the cookie of a reply to the last message we sent; False if it does not
        decrypt (not ours, forged, or nothing sent yet)."""
        if self.last_mac1 is None:
            return False
        cookie = xaead_decrypt(
            self._cookie_key, reply.nonce, reply.encrypted_cookie, self.last_mac1
        )
        if cookie is None:
            return False
        self.cookie = cookie
        self.cookie_time = now
        self.last_mac1 = None  # one reply per message sent: a replayed reply is refused
        return True
