"""tunnel/noise: primitives against independent statements, the handshake both ways.

The byte-level proof is the interop test with wireguard-go; here: the primitive
definitions written out again from RFC 2104 / the whitepaper, the published
initial chaining key and hash, and the handshake's properties (both sides get
the same keys, any changed byte or wrong key fails).
"""

from __future__ import annotations

import hashlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netoffload.tunnel import keys, noise
from netoffload.wire.wireguard import Initiation, Response


def _rfc2104(key: bytes, msg: bytes) -> bytes:
    """HMAC written out from RFC 2104 for BLAKE2s-256 (block 64 bytes)."""
    if len(key) > 64:
        key = hashlib.blake2s(key).digest()
    key = key.ljust(64, b"\0")
    inner = hashlib.blake2s(bytes(k ^ 0x36 for k in key) + msg).digest()
    return hashlib.blake2s(bytes(k ^ 0x5C for k in key) + inner).digest()


@given(st.binary(max_size=100), st.binary(max_size=200))
def test_hmac_is_rfc2104_over_blake2s(key: bytes, msg: bytes) -> None:
    assert noise.hmac_(key, msg) == _rfc2104(key, msg)


@given(st.binary(min_size=32, max_size=32), st.binary(max_size=64))
def test_kdf_chain(key: bytes, x: bytes) -> None:
    t0 = _rfc2104(key, x)
    t1 = _rfc2104(t0, b"\x01")
    t2 = _rfc2104(t0, t1 + b"\x02")
    t3 = _rfc2104(t0, t2 + b"\x03")
    assert noise.kdf1(key, x) == t1
    assert noise.kdf2(key, x) == (t1, t2)
    assert noise.kdf3(key, x) == (t1, t2, t3)


def test_mac_is_keyed_blake2s_128() -> None:
    k, m = b"k" * 32, b"message"
    assert noise.mac(k, m) == hashlib.blake2s(m, key=k, digest_size=16).digest()
    assert len(noise.mac(k, m)) == 16


def test_initial_chaining_key_and_hash_match_published_constants() -> None:
    # C = HASH(CONSTRUCTION) and H = HASH(C || IDENTIFIER) as other implementations
    # (e.g. wireguard-rs) hard-code them
    assert noise.INITIAL_CHAIN.hex() == (
        "60e26daef327efc02ec335e2a025d2d016eb4206f87277f52d38d1988b78cd36"
    )
    assert noise.INITIAL_HASH.hex().startswith("2211b361081ac566691243db458ad5322d9c6c662293e8b7")


def test_aead_nonce_layout() -> None:
    assert noise.nonce(0x0102030405060708) == bytes(4) + bytes.fromhex("0807060504030201")


def test_tai64n() -> None:
    t = 1_700_000_000.123456789
    b = noise.tai64n(t)
    secs, nanos = struct.unpack(">QI", b)
    assert secs == (1 << 62) + 10 + 1_700_000_000
    assert nanos % (1 << 24) == 0 and abs(nanos - 123_456_789) < 1 << 24
    # strictly increasing at the whitening granularity (about 17 ms)
    prev = b""
    for i in range(200):
        cur = noise.tai64n(t + i * 0.0168)
        assert cur > prev
        prev = cur


def _pair() -> tuple[bytes, bytes]:
    return keys.generate_private(), keys.generate_private()


@pytest.mark.parametrize("psk", [bytes(32), bytes(range(32))], ids=["no-psk", "psk"])
def test_handshake_both_sides_agree(psk: bytes) -> None:
    si, sr = _pair()
    made = noise.create_initiation(si, keys.public_from_private(sr), 7, 1000.0)
    assert made is not None
    init, istate = made
    wire = Initiation.parse(init.emit())
    rstate = noise.consume_initiation(sr, wire)
    assert rstate is not None
    assert rstate.remote_static == keys.public_from_private(si)
    assert rstate.remote_index == 7 and rstate.timestamp == noise.tai64n(1000.0)
    rmade = noise.create_response(rstate, psk, 9)
    assert rmade is not None
    resp, rkeys = rmade
    ikeys = noise.consume_response(istate, si, psk, Response.parse(resp.emit()))
    assert ikeys is not None
    assert ikeys.send == rkeys.recv and ikeys.recv == rkeys.send
    assert ikeys.send != ikeys.recv
    assert resp.receiver == 7 and resp.sender == 9


def test_wrong_psk_or_key_fails() -> None:
    si, sr = _pair()
    init, istate = noise.create_initiation(si, keys.public_from_private(sr), 1, 5.0) or (None, None)
    assert init is not None and istate is not None
    other = keys.generate_private()
    assert noise.consume_initiation(other, init) is None  # not for us
    rstate = noise.consume_initiation(sr, init)
    assert rstate is not None
    resp, _ = noise.create_response(rstate, bytes(range(32)), 2) or (None, None)
    assert resp is not None
    assert noise.consume_response(istate, si, bytes(32), resp) is None  # psk differs
    assert noise.consume_response(istate, other, bytes(range(32)), resp) is None
    assert noise.consume_response(istate, si, bytes(range(32)), resp) is not None


@given(st.data())
def test_any_changed_byte_fails(data: st.DataObject) -> None:
    si, sr = _pair()
    made = noise.create_initiation(si, keys.public_from_private(sr), 1, 5.0)
    assert made is not None
    init, istate = made
    raw = bytearray(init.emit())
    i = data.draw(st.integers(8, 115))  # ephemeral, static, timestamp (MACs are cookie's)
    raw[i] ^= data.draw(st.integers(1, 255))
    assert noise.consume_initiation(sr, Initiation.parse(bytes(raw))) is None
    rstate = noise.consume_initiation(sr, init)
    assert rstate is not None
    resp, _ = noise.create_response(rstate, bytes(32), 2) or (None, None)
    assert resp is not None
    rraw = bytearray(resp.emit())
    j = data.draw(st.integers(12, 59))  # ephemeral and the empty AEAD
    rraw[j] ^= data.draw(st.integers(1, 255))
    assert noise.consume_response(istate, si, bytes(32), Response.parse(bytes(rraw))) is None


def test_small_order_keys_are_refused() -> None:
    si = keys.generate_private()
    assert noise.create_initiation(si, bytes(32), 1, 1.0) is None
    assert noise.dh(si, bytes(32)) is None


def test_fixed_ephemeral_is_deterministic() -> None:
    si, sr = _pair()
    eph = keys.generate_private()
    a = noise.create_initiation(si, keys.public_from_private(sr), 3, 9.0, ephemeral_private=eph)
    b = noise.create_initiation(si, keys.public_from_private(sr), 3, 9.0, ephemeral_private=eph)
    assert a is not None and b is not None and a[0] == b[0]
    assert a[0].ephemeral == keys.public_from_private(eph)


def test_precomputed_static_static_and_unknown_static() -> None:
    si, sr = _pair()
    pi, pr = keys.public_from_private(si), keys.public_from_private(sr)
    ss = noise.dh(si, pr)
    assert ss is not None and ss == noise.dh(sr, pi)
    eph = keys.generate_private()
    a = noise.create_initiation(si, pr, 1, 2.0, ephemeral_private=eph)
    b = noise.create_initiation(
        si, pr, 1, 2.0, ephemeral_private=eph, static_public=pi, static_static=ss
    )
    assert a is not None and b is not None and a[0] == b[0]
    init = a[0]
    known = noise.consume_initiation(sr, init, static_static={pi: ss}.get)
    assert isinstance(known, noise.ResponderState) and known == noise.consume_initiation(sr, init)
    unknown = noise.consume_initiation(sr, init, static_static={}.get)
    assert unknown == noise.UnknownStatic(pi)
