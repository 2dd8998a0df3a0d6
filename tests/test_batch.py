"""Batch and packet extension: round trips, zero-packet batches, virtio_net_hdr bit for bit."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netoffload.batch import (
    EXT_FIELDS,
    VNET_HDR_LEN,
    VNET_HDR_MRG_LEN,
    Batch,
    Ext,
    ext_to_vnet,
    gather_index,
    merge_by_origin,
    pack_vnet,
    vnet_to_ext,
)
from netoffload.errors import BufferFormatError

packet_lists = st.lists(st.binary(max_size=300), max_size=24)


def field_values(name: str, n: int) -> st.SearchStrategy[list[int]]:
    info = np.iinfo(EXT_FIELDS[name].dtype)
    return st.lists(st.integers(int(info.min), int(info.max)), min_size=n, max_size=n)


@st.composite
def exts(draw: st.DrawFn, n: int) -> Ext:
    return Ext(n, **{f: draw(field_values(f, n)) for f in EXT_FIELDS})


@st.composite
def batches(draw: st.DrawFn) -> tuple[list[bytes], Batch]:
    pk = draw(packet_lists)
    uniform = draw(st.sampled_from([None, True, False]))
    b = Batch.from_packets(pk, draw(st.integers(0, 80)), draw(st.integers(0, 80)), uniform)
    b.ext = draw(exts(len(pk)))
    return pk, b


def rows(e: Ext) -> list[dict[str, int]]:
    return [e.row(i) for i in range(len(e))]


# ------------------------------------------------------------------ round trips
@given(batches())
def test_from_packets_round_trip(pb: tuple[list[bytes], Batch]) -> None:
    pk, b = pb
    assert len(b) == len(pk) and b.packets() == pk and b.nbytes == sum(map(len, pk))
    assert bytes(b.flat_bytes()) == b"".join(pk)
    assert (b.slot_lo <= b.start).all() and (b.start + b.length <= b.slot_hi).all()
    assert (b.slot_hi[:-1] <= b.slot_lo[1:]).all()  # slots follow each other
    for i, p in enumerate(pk):
        v = b.view(i)
        assert v.data == p and v.ext == b.ext.row(i)
        assert v.headroom == b.headroom[i] and v.tailroom == b.tailroom[i]
    if b.stride and len(b):
        m = b.matrix()
        for i, p in enumerate(pk):
            s = int(b.start[i] - b.slot_lo[i])
            assert bytes(m[i, s : s + len(p)]) == p


@given(batches(), st.data())
def test_take(pb: tuple[list[bytes], Batch], data: st.DataObject) -> None:
    pk, b = pb
    n = len(pk)
    idx = data.draw(st.lists(st.integers(0, max(0, n - 1)), max_size=30)) if n else []
    t = b.take(np.array(idx, dtype=np.int64))
    assert t.packets() == [pk[i] for i in idx]
    assert rows(t.ext) == [b.ext.row(i) for i in idx]
    assert list(t.headroom) == [b.headroom[i] for i in idx]
    mask = np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=np.bool_)
    tm = b.take(mask)
    assert tm.packets() == [p for p, m in zip(pk, mask, strict=True) if m]
    # the original is untouched
    assert b.packets() == pk


@given(st.lists(batches(), max_size=4))
def test_concat(parts: list[tuple[list[bytes], Batch]]) -> None:
    c = Batch.concat([b for _, b in parts])
    assert c.packets() == [p for pk, _ in parts for p in pk]
    assert rows(c.ext) == [r for _, b in parts for r in rows(b.ext)]
    if c.stride and len(c):
        c.matrix()  # a uniform result really is uniform
    e = Ext.concat([b.ext for _, b in parts])
    assert e.equals(c.ext)


@given(batches())
def test_copy_is_independent(pb: tuple[list[bytes], Batch]) -> None:
    pk, b = pb
    c = b.copy()
    assert c.equal_packets(b) and c.ext.equals(b.ext)
    if len(c) and c.nbytes:
        i = int(np.flatnonzero(c.length)[0])
        c.buf[c.start[i]] ^= 0xFF
        c.ext.tasks[i] ^= 1
        assert b.packets() == pk
        assert not c.equal_packets(b) and not c.ext.equals(b.ext)


@given(st.lists(st.integers(0, 50), max_size=20))
def test_merge_by_origin_restores_order(origins: list[int]) -> None:
    pk = [bytes([o]) * (o % 5 + 1) for o in origins]
    b = Batch.from_packets(pk)
    b.ext.origin[:] = origins
    order = np.argsort(np.array(origins, dtype=np.int64), kind="stable")
    # split into two parts, each kept in origin order
    sel = np.array([i % 2 == 0 for i in range(len(pk))], dtype=np.bool_)
    parts = [b.take(sel), b.take(~sel)]
    parts = [p.take(np.argsort(p.ext.origin, kind="stable")) for p in parts]
    m = merge_by_origin(parts)
    assert list(m.ext.origin) == sorted(origins)
    assert sorted(m.packets()) == sorted(pk)
    assert [p[0] for p in m.packets()] == [origins[i] for i in order]


@given(st.lists(st.tuples(st.integers(0, 1000), st.integers(0, 20)), max_size=20))
def test_gather_index(ranges: list[tuple[int, int]]) -> None:
    starts = np.array([s for s, _ in ranges], dtype=np.int64)
    lens = np.array([n for _, n in ranges], dtype=np.int64)
    want = [s + k for s, n in ranges for k in range(n)]
    assert gather_index(starts, lens).tolist() == want


def test_zero_packet_batches() -> None:
    for b in (
        Batch.empty(),
        Batch.from_packets([]),
        Batch.alloc([]),
        Batch.concat([]),
        Batch.from_packets([b"abc"]).take(np.zeros(0, np.int64)),
        Batch.from_packets([b"abc"]).take(np.zeros(1, np.bool_)),
    ):
        assert len(b) == 0 and b.nbytes == 0 and b.packets() == []
        assert len(b.ext) == 0 and len(b.flat_bytes()) == 0
        assert len(b.copy()) == 0 and len(b.take(np.zeros(0, np.int64))) == 0
        assert ext_to_vnet(b.ext) == b"" and ext_to_vnet(b.ext, VNET_HDR_MRG_LEN) == b""
        assert Batch.concat([b, b]).packets() == []
        assert b.ext.alive().shape == (0,)
    assert len(vnet_to_ext(b"")) == 0
    assert len(merge_by_origin([])) == 0
    assert Ext.concat([]).equals(Ext(0))
    # zero-length packets are packets too
    z = Batch.from_packets([b"", b"", b"x"])
    assert z.packets() == [b"", b"", b"x"] and len(z.take(np.array([0, 1]))) == 2


def test_ext_fields() -> None:
    e = Ext(3)
    for name, spec in EXT_FIELDS.items():
        a = getattr(e, name)
        assert a.dtype == spec.dtype and (a == spec.default).all()
    e.set_row(1, {"tasks": 5, "error": 8})
    assert e.row(1)["tasks"] == 5 and e.row(1)["error"] == 8
    assert not e.alive()[1] and e.alive()[0]
    with pytest.raises(KeyError):
        e.set_row(0, {"nope": 1})
    with pytest.raises(TypeError):
        Ext(2, nope=[1, 2])
    with pytest.raises(ValueError):
        Ext(2, tasks=[1, 2, 3])
    with pytest.raises(ValueError):
        Batch.alloc([-1])


def test_ext_take_copy_concat_keep_fields_and_own_their_arrays() -> None:
    e = Ext(4)
    for k, name in enumerate(EXT_FIELDS):
        getattr(e, name)[:] = np.arange(4) + k
    parts = [e.take(np.array([3, 1])), e.take(np.array([True, False, False, True])), e.copy()]
    parts.append(Ext.concat(parts))
    for part, rows in zip(
        parts, ([3, 1], [0, 3], [0, 1, 2, 3], [3, 1, 0, 3, 0, 1, 2, 3]), strict=True
    ):
        for name, spec in EXT_FIELDS.items():
            a = getattr(part, name)
            assert a.dtype == spec.dtype and a.shape == (len(rows),)
            assert a.tolist() == getattr(e, name)[rows].tolist(), name
        part.tasks[:] = 999  # never a view into e
    assert e.tasks.tolist() == [0, 1, 2, 3]


# ------------------------------------------------------------------ virtio_net_hdr
VNET_VALUES = st.tuples(
    st.integers(0, 255),  # flags
    st.integers(0, 255),  # gso_type
    st.integers(0, 0xFFFF),  # hdr_len
    st.integers(0, 0xFFFF),  # gso_size
    st.integers(0, 0xFFFF),  # csum_start
    st.integers(0, 0xFFFF),  # csum_offset
    st.integers(0, 0xFFFF),  # num_buffers
)


def kernel_pack(v: tuple[int, ...], size: int) -> bytes:
    """struct virtio_net_hdr (+ num_buffers) as linux/virtio_net.h lays it out, native endian:
    __u8 flags; __u8 gso_type; __virtio16 hdr_len, gso_size, csum_start, csum_offset;"""
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, num_buffers = v
    out = bytes([flags, gso_type])
    for x in (hdr_len, gso_size, csum_start, csum_offset):
        out += x.to_bytes(2, "little" if struct.pack("=H", 1) == b"\x01\x00" else "big")
    if size == VNET_HDR_MRG_LEN:
        out += struct.pack("=H", num_buffers)
    return out


def ext_from_values(vals: list[tuple[int, ...]]) -> Ext:
    e = Ext(len(vals))
    for i, v in enumerate(vals):
        e.set_row(
            i,
            dict(
                vflags=v[0],
                gso_type=v[1],
                hdr_len=v[2],
                gso_size=v[3],
                csum_start=v[4],
                csum_offset=v[5],
                num_buffers=v[6],
            ),
        )
    return e


@pytest.mark.parametrize("size", [VNET_HDR_LEN, VNET_HDR_MRG_LEN])
@given(vals=st.lists(VNET_VALUES, max_size=16))
def test_vnet_bit_for_bit(size: int, vals: list[tuple[int, ...]]) -> None:
    want = b"".join(kernel_pack(v, size) for v in vals)
    e = ext_from_values(vals)
    raw = ext_to_vnet(e, size)
    assert raw == want
    assert len(raw) == size * len(vals)
    for i, v in enumerate(vals):
        nb: Any = v[6] if size == VNET_HDR_MRG_LEN else None
        assert pack_vnet(*v[:6], num_buffers=nb) == want[i * size : (i + 1) * size]
    back = vnet_to_ext(want, size)
    for i, v in enumerate(vals):
        r = back.row(i)
        names = ("vflags", "gso_type", "hdr_len", "gso_size", "csum_start", "csum_offset")
        assert tuple(r[k] for k in names) == v[:6]
        assert r["num_buffers"] == (v[6] if size == VNET_HDR_MRG_LEN else 0)
    # into an existing extension: only the virtio fields change
    other = Ext(len(vals), tasks=np.full(len(vals), 7))
    vnet_to_ext(want, size, other)
    assert (other.tasks == 7).all() and ext_to_vnet(other, size) == want


@given(st.binary(max_size=50), st.sampled_from([VNET_HDR_LEN, VNET_HDR_MRG_LEN]))
def test_vnet_truncated(raw: bytes, size: int) -> None:
    if len(raw) % size:
        with pytest.raises(BufferFormatError) as ei:
            vnet_to_ext(raw, size)
        assert ei.value.offset == len(raw) - len(raw) % size
    else:
        assert len(vnet_to_ext(raw, size)) == len(raw) // size


def test_vnet_bad_size() -> None:
    with pytest.raises(ValueError):
        ext_to_vnet(Ext(1), 11)


@given(st.lists(st.integers(0, 200), min_size=1, max_size=30), st.data())
def test_slice_is_a_view_with_take_contents(sizes: list[int], data: st.DataObject) -> None:
    b = Batch.from_packets([bytes([i % 251]) * s for i, s in enumerate(sizes)], uniform=True)
    b.ext.origin[:] = np.arange(len(b))
    lo = data.draw(st.integers(0, len(b)))
    hi = data.draw(st.integers(lo, len(b)))
    v = b.slice(lo, hi)
    t = b.take(np.arange(lo, hi))
    assert v.packets() == t.packets() and v.ext.equals(t.ext)
    assert np.array_equal(v.headroom, t.headroom) and np.array_equal(v.tailroom, t.tailroom)
    if hi > lo:
        assert v.stride == b.stride and np.shares_memory(v.buf, b.buf)
        # writes through the view are the batch's
        v.buf[v.start[0]] = 0xEE if v.length[0] else v.buf[v.start[0]]
        v.ext.done[:] = 3
        v.length[0] = 0
        assert (b.ext.done[lo:hi] == 3).all() and b.length[lo] == 0
        assert b.buf[b.start[lo]] == v.buf[v.start[0]]


def test_slice_of_a_batch_without_stride_is_a_copy() -> None:
    b = Batch.from_packets([b"a" * 10, b"b" * 5000, b"c"], uniform=False)
    v = b.slice(1, 3)
    assert v.packets() == [b"b" * 5000, b"c"] and not np.shares_memory(v.buf, b.buf)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_copy_ranges_matches_a_gather(data: st.DataObject) -> None:
    """copy_ranges (the C kernel, or its numpy fallback) against a plain slice loop."""
    from netoffload.batch import copy_ranges

    src = np.frombuffer(data.draw(st.binary(min_size=1, max_size=3000)), dtype=np.uint8).copy()
    dst = np.zeros(data.draw(st.integers(1, 3000)), dtype=np.uint8)
    n = data.draw(st.integers(0, 8))
    ranges = []
    for _ in range(n):
        ln = data.draw(st.integers(0, min(len(src), len(dst))))
        ranges.append(
            (data.draw(st.integers(0, len(dst) - ln)), data.draw(st.integers(0, len(src) - ln)), ln)
        )
    ref = dst.copy()
    for d, s, ln in ranges:
        ref[d : d + ln] = src[s : s + ln]
    a = np.array([r[0] for r in ranges], dtype=np.int64)
    b = np.array([r[1] for r in ranges], dtype=np.int64)
    c = np.array([r[2] for r in ranges], dtype=np.int64)
    copy_ranges(dst, a, src, b, c)
    assert np.array_equal(dst, ref)


def test_copy_ranges_refuses_a_range_outside_its_buffer() -> None:
    from netoffload._native import kernel
    from netoffload.batch import copy_ranges

    if kernel is None:
        pytest.skip("the C kernel is not built (the numpy fallback raises IndexError)")
    dst = np.zeros(10, np.uint8)
    with pytest.raises(ValueError):
        copy_ranges(dst, np.array([8]), np.zeros(10, np.uint8), np.array([0]), np.array([4]))
    assert not dst.any()
