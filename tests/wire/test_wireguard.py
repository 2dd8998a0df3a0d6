"""wire/wireguard: message recognition, parse/emit, the batch header reader."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from netoffload.wire import wireguard as wg

LENGTHS = {1: 148, 2: 92, 3: 64}


def test_constants_match_the_whitepaper_layouts() -> None:
    # 5.4.2: 1+3+4+32+(32+16)+(12+16)+16+16; 5.4.3: 1+3+4+4+32+(0+16)+16+16;
    # 5.4.7: 1+3+4+24+(16+16); 5.4.6: 1+3+4+8 header, 16-byte tag
    assert wg.INITIATION_LEN == 1 + 3 + 4 + 32 + 48 + 28 + 16 + 16
    assert wg.RESPONSE_LEN == 1 + 3 + 4 + 4 + 32 + 16 + 16 + 16
    assert wg.COOKIE_LEN == 1 + 3 + 4 + 24 + 32
    assert wg.DATA_HEADER_LEN == 16 and wg.TAG_LEN == 16
    assert (wg.MSG_INITIATION, wg.MSG_RESPONSE, wg.MSG_COOKIE, wg.MSG_DATA) == (1, 2, 3, 4)


def _ref_type(b: bytes) -> int:
    """Independent statement of the rule: exact (type, length), reserved bytes zero."""
    if len(b) < 4 or b[1:4] != b"\0\0\0":
        return 0
    if b[0] in LENGTHS:
        return b[0] if len(b) == LENGTHS[b[0]] else 0
    if b[0] == 4:
        return 4 if len(b) >= 32 else 0
    return 0


@pytest.mark.parametrize("t", range(0, 7))
def test_message_type_every_length(t: int) -> None:
    for n in range(0, 200):
        b = bytes([t, 0, 0, 0]) + bytes(max(0, n - 4))
        b = b[:n]
        assert wg.message_type(b) == _ref_type(b), (t, n)
        assert wg.message_type(memoryview(b)) == _ref_type(b)


@given(st.binary(max_size=200))
def test_message_type_fuzz(b: bytes) -> None:
    assert wg.message_type(b) == _ref_type(b)


def test_reserved_bytes_must_be_zero() -> None:
    for i in (1, 2, 3):
        b = bytearray(148)
        b[0] = 1
        b[i] = 1
        assert wg.message_type(bytes(b)) == 0
        with pytest.raises(ValueError):
            wg.Initiation.parse(bytes(b))


k32 = st.binary(min_size=32, max_size=32)
k16 = st.binary(min_size=16, max_size=16)
u32 = st.integers(0, 2**32 - 1)


@given(u32, k32, st.binary(min_size=48, max_size=48), st.binary(min_size=28, max_size=28), k16, k16)
def test_initiation_round_trip(
    s: int, e: bytes, sta: bytes, ts: bytes, m1: bytes, m2: bytes
) -> None:
    m = wg.Initiation(s, e, sta, ts, m1, m2)
    b = m.emit()
    # against struct, independently of the module's own layout
    assert b == struct.pack("<B3xI", 1, s) + e + sta + ts + m1 + m2
    assert wg.Initiation.parse(b) == m
    assert wg.message_type(b) == wg.MSG_INITIATION


@given(u32, u32, k32, k16, k16, k16)
def test_response_round_trip(s: int, r: int, e: bytes, empty: bytes, m1: bytes, m2: bytes) -> None:
    m = wg.Response(s, r, e, empty, m1, m2)
    b = m.emit()
    assert b == struct.pack("<B3xII", 2, s, r) + e + empty + m1 + m2
    assert wg.Response.parse(b) == m


@given(u32, st.binary(min_size=24, max_size=24), st.binary(min_size=32, max_size=32))
def test_cookie_round_trip(r: int, nonce: bytes, cookie: bytes) -> None:
    m = wg.CookieReply(r, nonce, cookie)
    b = m.emit()
    assert b == struct.pack("<B3xI", 3, r) + nonce + cookie
    assert wg.CookieReply.parse(b) == m


@given(u32, st.integers(0, 2**64 - 1))
def test_data_header_round_trip(r: int, c: int) -> None:
    h = wg.data_header(r, c)
    assert h == struct.pack("<B3xIQ", 4, r, c)
    assert wg.parse_data_header(h + bytes(16)) == (r, c)


@pytest.mark.parametrize("cls", [wg.Initiation, wg.Response, wg.CookieReply])
@given(data=st.binary(max_size=200))
def test_parse_fuzz_only_value_error(cls: type, data: bytes) -> None:
    try:
        m = cls.parse(data)  # type: ignore[attr-defined]
    except ValueError:
        return
    assert m.emit() == data  # what parses emits back the same bytes


@pytest.mark.parametrize("cls", [wg.Initiation, wg.Response, wg.CookieReply])
@given(data=st.data())
def test_parse_corrupted_valid_message(cls: type, data: st.DataObject) -> None:
    n = {wg.Initiation: 148, wg.Response: 92, wg.CookieReply: 64}[cls]
    t = {wg.Initiation: 1, wg.Response: 2, wg.CookieReply: 3}[cls]
    good = bytearray(data.draw(st.binary(min_size=n, max_size=n)))
    good[0:4] = bytes([t, 0, 0, 0])
    cut = data.draw(st.integers(0, n + 8))
    flip = data.draw(st.integers(0, n - 1))
    bad = bytearray(good[:cut] + bytes(max(0, cut - n)))
    if flip < len(bad):
        bad[flip] ^= data.draw(st.integers(1, 255))
    try:
        m = cls.parse(bytes(bad))  # type: ignore[attr-defined]
    except ValueError:
        assert wg.message_type(bytes(bad)) != t
        return
    assert m.emit() == bytes(bad)


def test_bad_field_sizes_raise_value_error() -> None:
    with pytest.raises(ValueError):
        wg.Initiation(1, b"x" * 31, bytes(48), bytes(28))
    with pytest.raises(ValueError):
        wg.Response(2**32, 0, bytes(32), bytes(16))
    with pytest.raises(ValueError):
        wg.CookieReply(0, bytes(23), bytes(32))
    with pytest.raises(ValueError):
        wg.data_header(0, 2**64)
    with pytest.raises(ValueError):
        wg.parse_data_header(bytes([4, 0, 0, 0]) + bytes(27))


@st.composite
def layouts(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[bytes]]:
    dgrams = draw(
        st.lists(
            st.one_of(
                st.binary(max_size=80),
                st.builds(
                    lambda r, c, body: struct.pack("<B3xIQ", 4, r, c) + body,
                    u32,
                    st.integers(0, 2**64 - 1),
                    st.binary(max_size=48),
                ),
            ),
            max_size=20,
        )
    )
    gaps = draw(st.lists(st.integers(0, 5), min_size=len(dgrams), max_size=len(dgrams)))
    buf = bytearray()
    starts = []
    for d, g in zip(dgrams, gaps, strict=True):
        buf += bytes([0xAA]) * g
        starts.append(len(buf))
        buf += d
    buf += bytes(draw(st.integers(0, 3)))
    return (
        np.frombuffer(bytes(buf), dtype=np.uint8).copy(),
        np.array(starts, dtype=np.int64),
        np.array([len(d) for d in dgrams], dtype=np.int64),
        dgrams,
    )


@given(layouts())
def test_data_headers_vs_struct(
    lay: tuple[np.ndarray, np.ndarray, np.ndarray, list[bytes]],
) -> None:
    buf, starts, lengths, dgrams = lay
    types, recv, ctr, ok = wg.data_headers(buf, starts, lengths)
    assert types.dtype == np.uint8 and recv.dtype == np.uint32
    assert ctr.dtype == np.uint64 and ok.dtype == np.bool_
    for i, d in enumerate(dgrams):
        assert types[i] == (d[0] if d else 0)
        if len(d) >= 16:
            _t, r, c = struct.unpack_from("<B3xIQ", d)
            assert (recv[i], ctr[i]) == (r, c)
        else:
            assert (recv[i], ctr[i]) == (0, 0)
        assert bool(ok[i]) == (wg.message_type(d) == wg.MSG_DATA), d.hex()


def test_data_headers_truncated_buffer_and_empty() -> None:
    d = struct.pack("<B3xIQ", 4, 7, 9) + bytes(16)
    buf = np.frombuffer(d[:20], dtype=np.uint8)
    types, recv, ctr, ok = wg.data_headers(buf, np.array([0, 30]), np.array([32, 5]))
    assert list(types) == [4, 0] and list(recv) == [7, 0] and list(ctr) == [9, 0]
    assert not ok.any()  # the first runs past the end of the buffer
    e = wg.data_headers(buf, np.zeros(0, np.int64), np.zeros(0, np.int64))
    assert all(len(x) == 0 for x in e)
