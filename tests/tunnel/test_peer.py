"""tunnel/peer: Keypair seal/open against cryptography's ChaCha20-Poly1305 directly."""

from __future__ import annotations

import os
import struct

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import given
from hypothesis import strategies as st

from netoffload.tunnel.peer import Keypair, Peer, padded_len
from netoffload.tunnel.timers import REJECT_AFTER_MESSAGES, REJECT_AFTER_TIME


def _pair() -> tuple[Keypair, Keypair]:
    k1, k2 = os.urandom(32), os.urandom(32)
    a = Keypair(0x11, 0x22, k1, k2, 100.0, True)
    b = Keypair(0x22, 0x11, k2, k1, 100.0, False)
    return a, b


@given(st.binary(max_size=1500), st.integers(0, REJECT_AFTER_MESSAGES - 1))
def test_seal_is_the_whitepaper_data_message(payload: bytes, counter: int) -> None:
    a, b = _pair()
    msg = a.seal(counter, payload)
    t, recv, ctr = struct.unpack_from("<B3xIQ", msg)
    assert (t, recv, ctr) == (4, 0x22, counter)
    padded = payload + bytes(-len(payload) % 16)
    nonce = bytes(4) + counter.to_bytes(8, "little")
    assert ChaCha20Poly1305(a.send_key).decrypt(nonce, msg[16:], None) == padded
    assert len(msg) == 16 + padded_len(len(payload)) + 16
    assert b.open(msg) == (counter, padded)


def test_open_refuses() -> None:
    a, b = _pair()
    msg = a.seal(5, b"hello")
    assert a.open(msg) is None  # wrong receiver index (and key)
    bad = bytearray(msg)
    bad[-1] ^= 1
    assert b.open(bytes(bad)) is None
    bad = bytearray(msg)
    bad[8] ^= 1  # counter is part of the nonce
    assert b.open(bytes(bad)) is None
    assert b.open(msg[:31]) is None
    assert b.open(b"\x01" + msg[1:]) is None
    big = bytearray(msg)
    big[8:16] = REJECT_AFTER_MESSAGES.to_bytes(8, "little")
    assert b.open(bytes(big)) is None
    assert b.replay.top == 0  # open never touches the window


def test_keepalive_is_32_bytes() -> None:
    a, b = _pair()
    msg = a.seal(0, b"")
    assert len(msg) == 32 and b.open(msg) == (0, b"")


def test_reserve() -> None:
    a, _ = _pair()
    assert a.reserve(3, 100.0) == 0 and a.reserve(1, 100.0) == 3 and a.send_counter == 4
    assert a.reserve(1, 100.0 + REJECT_AFTER_TIME) is None and a.send_counter == 4
    a.send_counter = REJECT_AFTER_MESSAGES - 1
    assert a.reserve(2, 100.0) is None
    assert a.reserve(1, 100.0) == REJECT_AFTER_MESSAGES - 1
    assert not a.can_send(100.0)


def test_peer_keypair_slots() -> None:
    p = Peer(os.urandom(32))
    a, b = _pair()
    p.current, p.previous = a, b
    assert p.keypair_for(0x22) is b and p.keypair_for(0x33) is None
    assert p.send_keypair(100.0) is a and p.send_keypair(100.0 + REJECT_AFTER_TIME) is None
    assert p.keypairs() == [a, b]
