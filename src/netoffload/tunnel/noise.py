"""The Noise_IKpsk2 handshake of WireGuard (whitepaper section 5.4), sans-IO.

Primitives, as the paper defines them:

* ``HASH`` is BLAKE2s-256, ``MAC(key, x)`` keyed BLAKE2s with a 16-byte digest,
  ``HMAC`` RFC 2104 HMAC over BLAKE2s (64-byte blocks), and ``KDF_n`` the
  HKDF-style chain ``t0 = HMAC(C, x)``, ``t1 = HMAC(t0, 0x1)``,
  ``t_i = HMAC(t0, t_{i-1} || i)``.
* ``AEAD(key, counter, plaintext, ad)`` is ChaCha20-Poly1305 (RFC 8439) with
  the nonce 32 zero bits followed by the 64-bit little-endian counter.
* ``TAI64N`` is 8 bytes big-endian of ``2**62 + 10 + seconds`` and 4 bytes
  big-endian nanoseconds, the nanoseconds rounded down to a multiple of
  ``2**24`` (about 17 ms) so that the timestamp does not leak fine timing.

The four steps are plain functions: the initiator ``create_initiation`` and
later ``consume_response``; the responder ``consume_initiation`` and
``create_response``. They return the message (with zero MACs: the cookie
module adds them) and the state to keep, or ``None`` when a message does not
authenticate. No clock (the timestamp's time is passed in), no I/O.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from netoffload.tunnel import keys
from netoffload.wire.wireguard import Initiation, Response

CONSTRUCTION = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
IDENTIFIER = b"WireGuard v1 zx2c4 Jason@zx2c4.com"
LABEL_MAC1 = b"mac1----"
LABEL_COOKIE = b"cookie--"

TAI64_BASE = (1 << 62) + 10
#: nanosecond bits dropped from timestamps (the reference implementations' whitening)
TAI64N_WHITEN = (1 << 24) - 1
_TAI = struct.Struct(">QI")


def hash_(*parts: bytes) -> bytes:
    """HASH(a || b || ...): BLAKE2s-256."""
    h = hashlib.blake2s()
    for p in parts:
        h.update(p)
    return h.digest()


def mac(key: bytes, data: bytes) -> bytes:
    """MAC(key, data): keyed BLAKE2s, 16-byte digest."""
    return hashlib.blake2s(data, key=key, digest_size=16).digest()


def hmac_(key: bytes, data: bytes) -> bytes:
    """HMAC(key, data): RFC 2104 over BLAKE2s-256."""
    return hmac.digest(key, data, hashlib.blake2s)


def kdf(key: bytes, data: bytes, n: int) -> tuple[bytes, ...]:
    """KDF_n(key, data): n 32-byte outputs."""
    t0 = hmac_(key, data)
    out: list[bytes] = []
    prev = b""
    for i in range(1, n + 1):
        prev = hmac_(t0, prev + bytes([i]))
        out.append(prev)
    return tuple(out)


def kdf1(key: bytes, data: bytes) -> bytes:
    return kdf(key, data, 1)[0]


def kdf2(key: bytes, data: bytes) -> tuple[bytes, bytes]:
    a, b = kdf(key, data, 2)
    return a, b


def kdf3(key: bytes, data: bytes) -> tuple[bytes, bytes, bytes]:
    a, b, c = kdf(key, data, 3)
    return a, b, c


def nonce(counter: int) -> bytes:
    """The 12-byte AEAD nonce of a counter: 4 zero bytes, then the counter little-endian."""
    return b"\x00\x00\x00\x00" + counter.to_bytes(8, "little")


def aead_encrypt(key: bytes, counter: int, plaintext: bytes, ad: bytes) -> bytes:
    return ChaCha20Poly1305(key).encrypt(nonce(counter), plaintext, ad)


def aead_decrypt(key: bytes, counter: int, ciphertext: bytes, ad: bytes) -> bytes | None:
    try:
        return ChaCha20Poly1305(key).decrypt(nonce(counter), ciphertext, ad)
    except InvalidTag:
        return None


def dh(private: bytes, public: bytes) -> bytes | None:
    """X25519; None for a public key of small order (all-zero shared secret)."""
    try:
        return X25519PrivateKey.from_private_bytes(private).exchange(
            X25519PublicKey.from_public_bytes(public)
        )
    except ValueError:
        return None


def tai64n(now: float) -> bytes:
    """The 12-byte TAI64N label of wall-clock time ``now`` (whitened)."""
    secs = int(now // 1)
    nanos = min(int((now - secs) * 1e9), 999_999_999) & ~TAI64N_WHITEN
    return _TAI.pack(TAI64_BASE + secs, nanos)


INITIAL_CHAIN = hash_(CONSTRUCTION)
INITIAL_HASH = hash_(INITIAL_CHAIN, IDENTIFIER)


@dataclass(frozen=True, slots=True)
class SessionKeys:
    """Transport keys of one side."""

    send: bytes
    recv: bytes


@dataclass(frozen=True, slots=True)
class InitiatorState:
    """What the initiator keeps between sending an initiation and its response."""

    chain: bytes
    hash: bytes
    ephemeral_private: bytes
    remote_static: bytes
    sender: int


@dataclass(frozen=True, slots=True)
class UnknownStatic:
    """An initiation that authenticated up to a static key we have no peer for."""

    remote_static: bytes


@dataclass(frozen=True, slots=True)
class ResponderState:
    """What the responder learns from a valid initiation."""

    chain: bytes
    hash: bytes
    remote_static: bytes
    remote_ephemeral: bytes
    remote_index: int
    timestamp: bytes


def create_initiation(
    static_private: bytes,
    remote_static: bytes,
    sender: int,
    now: float,
    *,
    ephemeral_private: bytes | None = None,
    static_public: bytes | None = None,
    static_static: bytes | None = None,
) -> tuple[Initiation, InitiatorState] | None:
    """An initiation to ``remote_static`` (MACs zero) and the state to keep.

    ``static_public`` and ``static_static`` (DH of the two static keys) may be
    passed precomputed. None if the remote static key is of small order."""
    if static_public is None:
        static_public = keys.public_from_private(static_private)
    eph = ephemeral_private if ephemeral_private is not None else keys.generate_private()
    eph_pub = keys.public_from_private(eph)
    h = hash_(INITIAL_HASH, remote_static)
    c = kdf1(INITIAL_CHAIN, eph_pub)
    h = hash_(h, eph_pub)
    es = dh(eph, remote_static)
    ss = static_static if static_static is not None else dh(static_private, remote_static)
    if es is None or ss is None:
        return None
    c, k = kdf2(c, es)
    enc_static = aead_encrypt(k, 0, static_public, h)
    h = hash_(h, enc_static)
    c, k = kdf2(c, ss)
    enc_ts = aead_encrypt(k, 0, tai64n(now), h)
    h = hash_(h, enc_ts)
    msg = Initiation(sender, eph_pub, enc_static, enc_ts)
    return msg, InitiatorState(c, h, eph, remote_static, sender)


def consume_initiation(
    static_private: bytes,
    msg: Initiation,
    *,
    static_public: bytes | None = None,
    static_static: Callable[[bytes], bytes | None] | None = None,
) -> ResponderState | UnknownStatic | None:
    """Decrypt and authenticate an initiation (MACs already checked); None if it fails.

    With ``static_static`` (the initiator's static key -> the precomputed DH of
    the static keys, None for a key that is no peer of ours), an unknown key
    costs no second DH: the answer is ``UnknownStatic``. The caller must still
    check that the timestamp is newer than the last one seen from the peer."""
    if static_public is None:
        static_public = keys.public_from_private(static_private)
    h = hash_(INITIAL_HASH, static_public)
    c = kdf1(INITIAL_CHAIN, msg.ephemeral)
    h = hash_(h, msg.ephemeral)
    es = dh(static_private, msg.ephemeral)
    if es is None:
        return None
    c, k = kdf2(c, es)
    remote_static = aead_decrypt(k, 0, msg.encrypted_static, h)
    if remote_static is None:
        return None
    h = hash_(h, msg.encrypted_static)
    if static_static is not None:
        ss = static_static(remote_static)
        if ss is None:
            return UnknownStatic(remote_static)
    else:
        ss = dh(static_private, remote_static)
    if ss is None:
        return None
    c, k = kdf2(c, ss)
    ts = aead_decrypt(k, 0, msg.encrypted_timestamp, h)
    if ts is None:
        return None
    h = hash_(h, msg.encrypted_timestamp)
    return ResponderState(c, h, remote_static, msg.ephemeral, msg.sender, ts)


def create_response(
    state: ResponderState,
    preshared_key: bytes,
    sender: int,
    *,
    ephemeral_private: bytes | None = None,
) -> tuple[Response, SessionKeys] | None:
    """The response to a consumed initiation (MACs zero) and the responder's keys."""
    eph = ephemeral_private if ephemeral_private is not None else keys.generate_private()
    eph_pub = keys.public_from_private(eph)
    c = kdf1(state.chain, eph_pub)
    h = hash_(state.hash, eph_pub)
    ee = dh(eph, state.remote_ephemeral)
    se = dh(eph, state.remote_static)
    if ee is None or se is None:
        return None
    c = kdf1(c, ee)
    c = kdf1(c, se)
    c, tau, k = kdf3(c, preshared_key)
    h = hash_(h, tau)
    empty = aead_encrypt(k, 0, b"", h)
    msg = Response(sender, state.remote_index, eph_pub, empty)
    t_init_send, t_init_recv = kdf2(c, b"")
    return msg, SessionKeys(send=t_init_recv, recv=t_init_send)


def consume_response(
    state: InitiatorState, static_private: bytes, preshared_key: bytes, msg: Response
) -> SessionKeys | None:
    """The initiator's keys from a response to ``state`` (MACs already checked); None if
    the response does not authenticate."""
    c = kdf1(state.chain, msg.ephemeral)
    h = hash_(state.hash, msg.ephemeral)
    ee = dh(state.ephemeral_private, msg.ephemeral)
    se = dh(static_private, msg.ephemeral)
    if ee is None or se is None:
        return None
    c = kdf1(c, ee)
    c = kdf1(c, se)
    c, tau, k = kdf3(c, preshared_key)
    h = hash_(h, tau)
    if aead_decrypt(k, 0, msg.encrypted_nothing, h) is None:
        return None
    t_send, t_recv = kdf2(c, b"")
    return SessionKeys(send=t_send, recv=t_recv)
