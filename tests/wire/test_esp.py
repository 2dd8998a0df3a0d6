"""ESP header/trailer parse and emit (RFC 4303), checked against scapy's ESP layer."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP
from scapy.layers.ipsec import ESP, SecurityAssociation
from scapy.packet import Raw

from netoffload.wire import WireError
from netoffload.wire.esp import (
    EspHeader,
    EspTrailer,
    emit_trailer,
    is_esp_in_udp,
    pad_length,
)


@given(st.integers(1, 2**32 - 1), st.integers(0, 2**32 - 1))
def test_header_round_trip_matches_scapy(spi: int, seq: int) -> None:
    raw = EspHeader(spi, seq).emit()
    assert raw == bytes(ESP(spi=spi, seq=seq))[:8]
    h, off = EspHeader.parse(raw + b"payload")
    assert (h.spi, h.seq, off) == (spi, seq, 8)


def test_header_errors() -> None:
    with pytest.raises(WireError, match="truncated"):
        EspHeader.parse(b"\x00\x00\x01")
    with pytest.raises(WireError, match="SPI 0"):
        EspHeader.parse(bytes(8))
    with pytest.raises(WireError):
        EspHeader(0, 1).emit()


@given(st.binary(min_size=0, max_size=300), st.sampled_from([4, 41]))
def test_trailer_round_trip(payload: bytes, nh: int) -> None:
    tr = emit_trailer(len(payload), nh)
    assert (len(payload) + len(tr)) % 4 == 0
    assert len(tr) - 2 == pad_length(len(payload))
    t, n = EspTrailer.parse(payload + tr)
    assert n == len(payload) and t.next_header == nh and t.pad_len == len(tr) - 2


def test_trailer_is_what_scapy_decrypts() -> None:
    """scapy's NULL-encryption ESP strips our trailer and finds the payload and next header."""
    inner = IP(src="10.0.0.1", dst="10.0.0.2") / UDP() / Raw(b"abc")
    body = bytes(inner)
    esp = EspHeader(0x1234, 1).emit() + body + emit_trailer(len(body), 4)
    pkt = IP(src="198.18.0.1", dst="198.18.0.2", proto=50) / Raw(esp)
    sa = SecurityAssociation(
        ESP,
        spi=0x1234,
        crypt_algo="NULL",
        crypt_key=None,
        auth_algo="NULL",
        tunnel_header=IP(src="198.18.0.1", dst="198.18.0.2"),
    )
    out = sa.decrypt(IP(bytes(pkt)))
    assert bytes(out) == body


@pytest.mark.parametrize(
    ("data", "msg"),
    [(b"\x01", "truncated"), (b"\x05\x04", "beyond"), (b"\x01\x03\x02\x04", "padding")],
)
def test_trailer_errors(data: bytes, msg: str) -> None:
    with pytest.raises(WireError, match=msg):
        EspTrailer.parse(data)


@given(st.binary(max_size=40))
def test_trailer_fuzz(data: bytes) -> None:
    try:
        t, n = EspTrailer.parse(data)
    except WireError:
        return
    assert 0 <= n <= len(data) - 2 and t.pad_len == data[-2]


def test_udp_marker() -> None:
    assert is_esp_in_udp(b"\x00\x00\x10\x01" + bytes(8))
    assert not is_esp_in_udp(bytes(12))  # non-ESP marker (IKE)
    assert not is_esp_in_udp(b"\x01\x02")
