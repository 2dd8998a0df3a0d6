"""tunnel/keys against the real ``wg`` tool (genkey/pubkey/genpsk) and RFC 7748."""

from __future__ import annotations

import base64
import contextlib
import shutil
import subprocess

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netoffload.errors import ConfigError
from netoffload.tunnel import keys

needs_wg = pytest.mark.skipif(shutil.which("wg") is None, reason="wg is not installed")


def _wg(*args: str, stdin: str | None = None) -> str:
    return subprocess.run(
        ["wg", *args], input=stdin, capture_output=True, text=True, check=True, timeout=10
    ).stdout.strip()


def test_rfc7748_x25519_vector() -> None:
    # RFC 7748 section 6.1 (Alice)
    sk = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    pk = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
    assert keys.public_from_private(sk) == pk


@needs_wg
def test_wg_genkey_pubkey_agree_with_us() -> None:
    for _ in range(5):
        sk_b64 = _wg("genkey")
        sk = keys.b64_decode(sk_b64)
        assert keys.b64_encode(sk) == sk_b64
        assert keys.clamp(sk) == sk  # wg genkey prints clamped keys, as we make them
        assert keys.b64_encode(keys.public_from_private(sk)) == _wg("pubkey", stdin=sk_b64)


@needs_wg
def test_our_keys_read_by_wg() -> None:
    for _ in range(5):
        sk = keys.generate_private()
        assert keys.clamp(sk) == sk
        pub = _wg("pubkey", stdin=keys.b64_encode(sk))
        assert keys.b64_decode(pub) == keys.public_from_private(sk)


@needs_wg
def test_wg_genpsk_decodes() -> None:
    assert len(keys.b64_decode(_wg("genpsk"))) == 32


@given(st.binary(min_size=32, max_size=32))
def test_b64_round_trip_matches_stdlib(k: bytes) -> None:
    s = keys.b64_encode(k)
    assert s == base64.b64encode(k).decode() and len(s) == 44
    assert keys.b64_decode(s) == k
    assert keys.b64_decode(f"  {s}\n") == k


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not base64 at all!",
        base64.b64encode(bytes(31)).decode(),
        base64.b64encode(bytes(33)).decode(),
        base64.b64encode(bytes(32)).decode()[:-1],
        base64.b64encode(bytes(32)).decode()[:-2] + "B=",  # non-canonical last bits
        "é" * 44,
    ],
)
def test_b64_decode_errors_name_the_key(text: str) -> None:
    with pytest.raises(ConfigError, match="PrivateKey"):
        keys.b64_decode(text, "PrivateKey")


@given(st.text(max_size=60))
def test_b64_decode_fuzz_only_config_error(text: str) -> None:
    with contextlib.suppress(ConfigError):
        assert len(keys.b64_decode(text)) == 32


def test_wrong_key_lengths() -> None:
    with pytest.raises(ConfigError):
        keys.public_from_private(bytes(31))
    with pytest.raises(ConfigError):
        keys.b64_encode(bytes(16))
    with pytest.raises(ConfigError):
        keys.dh(keys.generate_private(), bytes(32))  # the zero point has small order
