"""The compiled checksum kernel (netoffload._native._kernel) against RFC 1071 itself."""

from __future__ import annotations

import struct
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from netoffload import _native
from netoffload.soft.checksum import range_sums

kernel = _native.kernel
needs_kernel = pytest.mark.skipif(
    kernel is None, reason=f"compiled kernel not in use: {_native.status()}"
)


def rfc1071_mod(data: bytes) -> int:
    """The one's complement sum of ``data`` in network order, modulo 0xFFFF (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    return int(sum(struct.unpack(f"!{len(data) // 2}H", data))) % 0xFFFF


@pytest.fixture(scope="module", params=["simd", "plain"])
def simd(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run with the SIMD loop (where the CPU has one) and with the portable C loop."""
    assert kernel is not None
    used = kernel.set_simd(request.param == "simd")
    yield used
    kernel.set_simd(True)


def test_status_names_the_path() -> None:
    s = _native.status()
    assert s.startswith("native (") if _native.available() else s.startswith("numpy: ")


@needs_kernel
@given(
    data=st.binary(max_size=2100),
    cuts=st.lists(st.tuples(st.integers(0, 2100), st.integers(0, 2100)), max_size=12),
)
def test_range_sums_match_rfc1071(simd: str, data: bytes, cuts: list[tuple[int, int]]) -> None:
    assert kernel is not None
    buf = np.frombuffer(data, dtype=np.uint8)
    a = np.array([min(x, y, len(data)) for x, y in cuts], dtype=np.int64)
    b = np.array([min(max(x, y), len(data)) for x, y in cuts], dtype=np.int64)
    out = np.empty(len(a), dtype=np.uint64)
    kernel.range_sums(buf, a, b, out)
    want = [rfc1071_mod(data[x:y]) for x, y in zip(a.tolist(), b.tolist(), strict=True)]
    assert out.tolist() == want


@needs_kernel
def test_long_ranges_every_length_and_alignment(simd: str) -> None:
    """Lengths around the unrolled loops' steps (8, 32, 128 bytes), at every alignment."""
    assert kernel is not None
    rng = np.random.default_rng(7)
    data = rng.integers(0, 256, 4096, dtype=np.uint8)
    data[1000:3000] = 0xFF  # long runs of 0xFFFF words: the largest sums
    pairs = [(s, s + n) for s in range(9) for n in (*range(0, 300), 1023, 1400, 2999, 4000)]
    pairs = [(x, y) for x, y in pairs if y <= len(data)]
    a = np.array([p[0] for p in pairs], dtype=np.int64)
    b = np.array([p[1] for p in pairs], dtype=np.int64)
    out = np.empty(len(a), dtype=np.uint64)
    kernel.range_sums(data, a, b, out)
    raw = data.tobytes()
    assert out.tolist() == [rfc1071_mod(raw[x:y]) for x, y in pairs]


@needs_kernel
def test_refuses_out_of_bounds_and_wrong_dtypes() -> None:
    assert kernel is not None
    buf = np.zeros(100, dtype=np.uint8)
    out = np.empty(1, dtype=np.uint64)
    one = np.array([1], dtype=np.int64)
    with pytest.raises(ValueError):
        kernel.range_sums(buf, np.array([50], dtype=np.int64), np.array([101], np.int64), out)
    with pytest.raises(ValueError):
        kernel.range_sums(buf, np.array([5], dtype=np.int64), one, out)  # a > b
    with pytest.raises(ValueError):
        kernel.range_sums(buf, np.array([-1], dtype=np.int64), one, out)
    with pytest.raises(ValueError):  # int32 offsets are refused, not misread
        kernel.range_sums(buf, np.array([0], dtype=np.int32), one, out)
    with pytest.raises(ValueError):  # too few outputs
        kernel.range_sums(buf, np.array([0, 0], np.int64), np.array([1, 1], np.int64), out)
    with pytest.raises(ValueError):
        kernel.segment(buf, buf, *([np.array([0], np.int64)] * 12), 6)  # gso size 0


def test_python_range_sums_fall_back_for_strided_buffers() -> None:
    """A buffer the kernel cannot take (not contiguous) is summed by numpy instead."""
    data = np.arange(400, dtype=np.uint8)
    strided = data[::2]
    got = range_sums(strided, np.array([0, 3], np.int64), np.array([200, 101], np.int64))
    raw = strided.tobytes()
    assert got.tolist() == [rfc1071_mod(raw[0:200]), rfc1071_mod(raw[3:101])]


@needs_kernel
@given(
    st.lists(
        st.tuples(
            st.integers(0, 0xFFFF),
            st.integers(0, 0xFFFF),
            st.sampled_from([0, 0, 0, 3, 0xFFFF]),
            st.integers(0, 3),
            st.integers(0, 70000),
        ),
        max_size=300,
    ),
    st.integers(0, 15),
)
def test_engine_scans_match_their_definition(
    rows: list[tuple[int, int, int, int, int]], bit_no: int
) -> None:
    """``want`` and ``mark`` (the engine's per-stage bookkeeping) against the
    expressions they replace, written out per packet."""
    assert kernel is not None
    bit, drop = 1 << bit_no, 2
    tasks = np.array([r[0] for r in rows], np.uint16)
    done = np.array([r[1] for r in rows], np.uint16)
    error = np.array([r[2] for r in rows], np.uint16)
    verdict = np.array([r[3] for r in rows], np.uint8)
    length = np.array([r[4] for r in rows], np.int64)
    out = np.empty(len(rows), np.bool_)
    nw, nb, nd = kernel.want(tasks, done, error, verdict, length, bit, drop, out)
    dead = [e != 0 or v == drop for _, _, e, v, _ in rows]
    want = [
        bool(t & bit) and not d & bit and not x for (t, d, *_), x in zip(rows, dead, strict=True)
    ]
    assert out.tolist() == want
    assert nw == sum(want) and nd == sum(dead)
    assert nb == sum(r[4] for r, w in zip(rows, want, strict=True) if w)
    assert kernel.mark(tasks, done, error, verdict, bit, drop) == sum(dead)
    assert done.tolist() == [d | (t & bit) for t, d, *_ in rows]
    origin, sub = np.full(len(rows), -1, np.int64), np.ones(len(rows), np.uint64)
    kernel.begin(origin, sub, 1 << 40)
    assert origin.tolist() == [(1 << 40) + i for i in range(len(rows))]
    assert not sub.any()


@needs_kernel
def test_engine_scans_refuse_wrong_types() -> None:
    assert kernel is not None
    a16 = np.zeros(4, np.uint16)
    with pytest.raises(ValueError):
        kernel.want(
            a16, a16, a16, np.zeros(4, np.uint8), np.zeros(4, np.int32), 1, 2, np.empty(4, np.bool_)
        )
    with pytest.raises(ValueError):  # too short
        kernel.mark(a16, a16[:2], a16, np.zeros(4, np.uint8), 1, 2)
