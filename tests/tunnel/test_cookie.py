"""tunnel/cookie: HChaCha20 / XChaCha20-Poly1305 against draft-irtf-cfrg-xchacha-03,
and the mac1 / mac2 / cookie reply exchange."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netoffload.tunnel import cookie, keys
from netoffload.tunnel.noise import LABEL_COOKIE, LABEL_MAC1
from netoffload.wire.wireguard import CookieReply

# draft-irtf-cfrg-xchacha-03, section 2.2.1
HCHACHA_KEY = bytes(range(32))
HCHACHA_NONCE = bytes.fromhex("000000090000004a0000000031415927")
HCHACHA_OUT = bytes.fromhex("82413b4227b27bfed30e42508a877d73a0f9e4d58a74a853c12ec41326d3ecdc")

# draft-irtf-cfrg-xchacha-03, appendix A.3.1
X_KEY = bytes(range(0x80, 0xA0))
X_NONCE = bytes(range(0x40, 0x58))
X_AAD = bytes.fromhex("50515253c0c1c2c3c4c5c6c7")
X_PLAIN = (
    b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the "
    b"future, sunscreen would be it."
)
X_CT = bytes.fromhex(
    "bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb"
    "731c7f1b0b4aa6440bf3a82f4eda7e39ae64c6708c54c216cb96b72e1213b452"
    "2f8c9ba40db5d945b11b69b982c1bb9e3f3fac2bc369488f76b2383565d3fff9"
    "21f9664c97637da9768812f615c68b13b52e"
)
X_TAG = bytes.fromhex("c0875924c1c7987947deafd8780acf49")


def test_hchacha20_draft_vector() -> None:
    assert cookie.hchacha20(HCHACHA_KEY, HCHACHA_NONCE) == HCHACHA_OUT


def test_xchacha20_poly1305_draft_vector() -> None:
    sealed = cookie.xaead_encrypt(X_KEY, X_NONCE, X_PLAIN, X_AAD)
    assert sealed == X_CT + X_TAG
    assert cookie.xaead_decrypt(X_KEY, X_NONCE, sealed, X_AAD) == X_PLAIN
    bad = bytearray(sealed)
    bad[-1] ^= 1
    assert cookie.xaead_decrypt(X_KEY, X_NONCE, bytes(bad), X_AAD) is None
    assert cookie.xaead_decrypt(X_KEY, X_NONCE, sealed, X_AAD + b"x") is None


@given(st.binary(min_size=32, max_size=32), st.binary(min_size=24, max_size=24), st.binary())
def test_xaead_round_trip(k: bytes, n: bytes, p: bytes) -> None:
    assert cookie.xaead_decrypt(k, n, cookie.xaead_encrypt(k, n, p, b"ad"), b"ad") == p


def test_bad_lengths() -> None:
    with pytest.raises(ValueError):
        cookie.hchacha20(bytes(31), bytes(16))
    with pytest.raises(ValueError):
        cookie.xaead_encrypt(bytes(32), bytes(12), b"", b"")


def _msg(n: int = 148) -> bytes:
    return bytes([1, 0, 0, 0]) + bytes(range(4, n - 32)) + bytes(32)


def _counter_random() -> Callable[[int], bytes]:
    state = [0]

    def rnd(n: int) -> bytes:
        state[0] += 1
        return hashlib.blake2s(state[0].to_bytes(4, "little")).digest()[:n].ljust(n, b"\0")

    return rnd


def test_mac1_keyed_with_the_receivers_public_key() -> None:
    sr = keys.generate_private()
    pub = keys.public_from_private(sr)
    gen = cookie.CookieGenerator(pub)
    chk = cookie.CookieChecker(pub)
    m = gen.add_macs(_msg(), 1.0)
    # mac1 = MAC(HASH("mac1----" || Spub), msg up to mac1), written out
    want = hashlib.blake2s(
        m[:116], key=hashlib.blake2s(LABEL_MAC1 + pub).digest(), digest_size=16
    ).digest()
    assert m[116:132] == want and m[132:] == bytes(16)  # no cookie yet: mac2 zero
    assert chk.check_mac1(m)
    assert not cookie.CookieChecker(keys.public_from_private(keys.generate_private())).check_mac1(m)
    bad = bytearray(m)
    bad[10] ^= 1
    assert not chk.check_mac1(bytes(bad))


def test_cookie_exchange_and_expiry() -> None:
    pub = keys.public_from_private(keys.generate_private())
    src = ("198.18.0.1", 51820)
    gen = cookie.CookieGenerator(pub)
    chk = cookie.CookieChecker(pub, random_bytes=_counter_random())
    m = gen.add_macs(_msg(), 10.0)
    assert not chk.check_mac2(m, src, 10.0)
    reply = CookieReply.parse(chk.make_reply(m, 0x11223344, src, 10.0))
    assert reply.receiver == 0x11223344
    # the reply decrypts with HASH("cookie--" || Spub) and mac1 as associated data
    ck = cookie.xaead_decrypt(
        hashlib.blake2s(LABEL_COOKIE + pub).digest(),
        reply.nonce,
        reply.encrypted_cookie,
        m[116:132],
    )
    assert ck is not None and len(ck) == 16
    assert gen.consume_reply(reply, 10.5)
    assert not gen.consume_reply(reply, 10.6)  # a replayed reply is refused
    m2 = gen.add_macs(_msg(), 11.0)
    assert m2[132:] == hashlib.blake2s(m2[:132], key=ck, digest_size=16).digest()
    assert chk.check_mac2(m2, src, 11.0)
    assert not chk.check_mac2(m2, ("198.18.0.9", 51820), 11.0)  # other source address
    assert not chk.check_mac2(m2, ("198.18.0.1", 51821), 11.0)  # other source port
    assert not chk.check_mac2(m2, src, 10.0 + cookie.COOKIE_REFRESH_TIME + 1)  # secret too old
    # the sender stops using a cookie after COOKIE_REFRESH_TIME
    m3 = gen.add_macs(_msg(), 10.5 + cookie.COOKIE_REFRESH_TIME + 0.1)
    assert m3[132:] == bytes(16)


def test_cookie_reply_for_someone_else_is_refused() -> None:
    pub = keys.public_from_private(keys.generate_private())
    other = keys.public_from_private(keys.generate_private())
    gen = cookie.CookieGenerator(pub)
    assert not gen.consume_reply(CookieReply(1, bytes(24), bytes(32)), 0.0)  # nothing sent yet
    m = gen.add_macs(_msg(92), 1.0)
    reply = CookieReply.parse(cookie.CookieChecker(other).make_reply(m, 1, ("fd00::1", 5), 1.0))
    assert not gen.consume_reply(reply, 1.0)


def test_source_bytes() -> None:
    assert cookie.source_bytes(("198.18.0.1", 0x1234)) == bytes([198, 18, 0, 1, 0x12, 0x34])
    assert len(cookie.source_bytes(("fd00::1", 1))) == 18


def test_cookie_replies_under_one_nonce_prefix_open_as_xchacha(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Replies share a 16-byte nonce prefix (one HChaCha20 subkey) for NONCES_PER_PREFIX
    replies, then a new one is drawn; each opens with the full XChaCha20-Poly1305 nonce
    (the draft-vector-checked xaead_decrypt) and no nonce repeats."""
    monkeypatch.setattr(cookie, "NONCES_PER_PREFIX", 4)
    pub = keys.public_from_private(keys.generate_private())
    chk = cookie.CookieChecker(pub)
    gen = cookie.CookieGenerator(pub)
    nonces = []
    for i in range(10):
        m = gen.add_macs(_msg(), 1.0)
        src = (f"198.19.{i}.1", 1000 + i)
        reply = CookieReply.parse(chk.make_reply(m, i, src, 1.0))
        ck = cookie.xaead_decrypt(
            hashlib.blake2s(LABEL_COOKIE + pub).digest(),
            reply.nonce,
            reply.encrypted_cookie,
            m[116:132],
        )
        assert ck is not None and gen.consume_reply(reply, 1.0)
        assert chk.check_mac2(gen.add_macs(_msg(), 1.0), src, 1.0)
        nonces.append(reply.nonce)
    assert len(set(nonces)) == 10
    prefixes = [n[:16] for n in nonces]
    assert prefixes[0] == prefixes[3] != prefixes[4] == prefixes[7] != prefixes[8]
