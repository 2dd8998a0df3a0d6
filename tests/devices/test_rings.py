"""Shared-memory rings: batch layout round trips, corrupt regions, and a
concurrent producer and consumer (a thread on its own mapping of the segment)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from netoffload.batch import EXT_FIELDS, Batch, Ext
from netoffload.devices.rings import (
    STATUS_OK,
    RingFull,
    Rings,
    encoded_size,
    pack_order,
    read_batch,
    read_batch_into,
    unpack_order,
    write_batch,
)
from netoffload.errors import BufferFormatError
from netoffload.tasks import ALL_TASKS, Task


def make_batch(sizes: list[int], seed: int, uniform: bool = True) -> Batch:
    rng = np.random.default_rng(seed)
    b = Batch.from_packets(
        [rng.integers(0, 256, s, dtype=np.uint8).tobytes() for s in sizes], uniform=uniform
    )
    for name, spec in EXT_FIELDS.items():
        info = np.iinfo(spec.dtype)
        hi = min(int(info.max), 1 << 30)
        lo = max(int(info.min), -(1 << 30))
        getattr(b.ext, name)[:] = rng.integers(lo, hi, len(b), endpoint=True)
    return b


def same(a: Batch, b: Batch) -> bool:
    return (
        a.equal_packets(b)
        and a.ext.equals(b.ext)
        and np.array_equal(a.start, b.start)
        and np.array_equal(a.slot_lo, b.slot_lo)
        and np.array_equal(a.slot_hi, b.slot_hi)
        and np.array_equal(a.buf, b.buf)
        and a.stride == b.stride
    )


@given(
    st.lists(st.integers(0, 2000), max_size=40),
    st.integers(0, 2**31),
    st.booleans(),
)
def test_region_round_trip(sizes: list[int], seed: int, uniform: bool) -> None:
    b = make_batch(sizes, seed, uniform)
    region = np.zeros(encoded_size(len(b), len(b.buf)) + 64, np.uint8)
    used = write_batch(region, b)
    assert used == encoded_size(len(b), len(b.buf))
    assert same(read_batch(region), b)


def test_region_too_small() -> None:
    b = make_batch([1500] * 4, 1)
    region = np.zeros(encoded_size(4, len(b.buf)) - 1, np.uint8)
    with pytest.raises(BufferFormatError):
        write_batch(region, b)


@given(st.binary(min_size=0, max_size=600), st.integers(0, 600))
def test_corrupt_region_gives_format_error(junk: bytes, at: int) -> None:
    b = make_batch([40, 60], 3)
    region = np.zeros(4096, np.uint8)
    write_batch(region, b)
    end = min(len(region), at + len(junk))
    region[at:end] = np.frombuffer(junk[: end - at], np.uint8)
    try:
        out = read_batch(region)
    except BufferFormatError:
        return
    # whatever was read is a consistent batch: every packet inside its slot, in the buffer
    assert (out.start >= out.slot_lo).all() and (out.start + out.length <= out.slot_hi).all()
    assert len(out) == 0 or int(out.slot_hi.max()) <= len(out.buf)


@given(st.lists(st.sampled_from(ALL_TASKS), max_size=10))
def test_order_round_trip(order: list[Task]) -> None:
    assert list(unpack_order(pack_order(order))) == order


def test_bad_order_word() -> None:
    with pytest.raises(BufferFormatError):
        unpack_order(0xF)


def test_ring_full_and_regions_come_back() -> None:
    r = Rings.create(slots=2, region_bytes=1 << 14)
    peer = Rings.attach(r.spec)
    try:
        b = make_batch([100, 200], 5)
        r.post(1, b, [Task.CHECKSUM], 0)
        r.post(2, b, [Task.CHECKSUM], 0)
        with pytest.raises(RingFull):
            r.post(3, b, [], 0)
        big = make_batch([9000, 9000], 6)
        sub = peer.take()
        assert sub is not None and sub.ticket == 1 and sub.order == (Task.CHECKSUM,)
        peer.finish(sub, big, STATUS_OK, 0, 0)  # output too big for the region
        got = r.reap()
        assert got is not None
        desc, out = got
        assert desc.ticket == 1 and desc.status != STATUS_OK and out is None
        assert r.free_regions() == 1
        with pytest.raises(BufferFormatError):
            r.post(4, big, [], 0)
        assert r.free_regions() == 1  # a refused batch takes no region
    finally:
        peer.close()
        r.close()


def _consumer(r: Rings, total: int, stop: threading.Event) -> None:
    """The device side: add one to every byte, tag class_id with the ticket."""
    done = 0
    while done < total and not stop.is_set():
        sub = r.take()
        if sub is None:
            continue
        b = read_batch(r.regions[sub.region])
        b.buf += np.uint8(1)
        b.ext.class_id[:] = sub.ticket
        r.finish(sub, b, STATUS_OK, 0, 0)
        done += 1


@given(st.lists(st.integers(0, 120), min_size=1, max_size=30), st.integers(1, 4))
def test_concurrent_producer_consumer(sizes: list[int], slots: int) -> None:
    r = Rings.create(slots=slots, region_bytes=1 << 18)
    peer = Rings.attach(r.spec)
    stop = threading.Event()
    t = threading.Thread(target=_consumer, args=(peer, len(sizes), stop), daemon=True)
    t.start()
    try:
        sent = {i + 1: make_batch([64 + (j % 7) for j in range(n)], i) for i, n in enumerate(sizes)}
        got: list[tuple[int, Batch]] = []
        nxt = 1
        while len(got) < len(sizes):
            if nxt <= len(sizes):
                try:
                    r.post(nxt, sent[nxt], [Task.CHECKSUM, Task.ENCRYPT], nxt)
                    nxt += 1
                    continue
                except RingFull:
                    pass
            c = r.reap()
            if c is not None:
                desc, out = c
                assert desc.status == STATUS_OK and out is not None
                got.append((desc.ticket, out))
        # every ticket exactly once, in order, its own packets transformed
        assert [k for k, _ in got] == list(range(1, len(sizes) + 1))
        for k, out in got:
            want = sent[k]
            assert len(out) == len(want)
            assert np.array_equal(out.flat_bytes(), want.flat_bytes() + np.uint8(1))
            assert (out.ext.class_id == k).all()
            assert np.array_equal(out.ext.origin, want.ext.origin)
        assert r.free_regions() == slots and r.sq_pending() == 0 and r.cq_pending() == 0
    finally:
        stop.set()
        t.join(5)
        peer.close()
        r.close()


@given(
    st.lists(st.integers(0, 300), min_size=1, max_size=30),
    st.integers(0, 2**31),
    st.booleans(),
    st.data(),
)
def test_batch_take_matches_a_per_packet_copy(
    sizes: list[int], seed: int, uniform: bool, data: st.DataObject
) -> None:
    """Batch.take (its uniform-stride fast path the rings rely on, and the general
    path) against copying packet by packet with their room."""
    b = make_batch(sizes, seed, uniform)
    idx = np.array(data.draw(st.lists(st.integers(0, len(b) - 1), max_size=40)), dtype=np.int64)
    out = b.take(idx)
    assert len(out) == len(idx)
    for j, i in enumerate(idx.tolist()):
        assert bytes(out.packet(j)) == bytes(b.packet(i))
        assert out.headroom[j] == b.headroom[i] and out.tailroom[j] == b.tailroom[i]
        lo, hi = int(b.slot_lo[i]), int(b.slot_hi[i])
        assert bytes(out.buf[out.slot_lo[j] : out.slot_hi[j]]) == bytes(b.buf[lo:hi])
        assert out.ext.row(j) == b.ext.row(i)


@given(st.lists(st.integers(0, 300), min_size=1, max_size=20), st.integers(0, 2**31))
def test_read_in_place_and_write_back_without_copies(sizes: list[int], seed: int) -> None:
    """``read_batch(copy=False)`` gives views of the region; changes made through
    them are the region's, and ``write_batch`` of the same layout keeps them."""
    b = make_batch(sizes, seed)
    region = np.zeros(encoded_size(len(b), len(b.buf)), np.uint8)
    write_batch(region, b)
    v = read_batch(region, copy=False)
    assert same(v, b)
    v.buf[v.start] ^= 0xFF  # first byte of every packet (all have room before them)
    v.ext.done[:] = 7
    v.length[:] = np.minimum(v.length, 1)
    write_batch(region, v)
    back = read_batch(region)
    assert same(back, v)
    assert (back.ext.done == 7).all() and not np.shares_memory(back.buf, region)


@given(st.lists(st.integers(0, 300), min_size=1, max_size=20), st.integers(0, 2**31))
def test_read_into_a_batch_of_the_same_layout(sizes: list[int], seed: int) -> None:
    b = make_batch(sizes, seed)
    out = make_batch(sizes, seed + 1)
    out.start[:] = b.start  # the same slots and starts, other bytes and extensions
    region = np.zeros(encoded_size(len(out), len(out.buf)), np.uint8)
    write_batch(region, out)
    dst = b
    arrays = (dst.buf, dst.start, dst.length, dst.ext.origin)
    assert read_batch_into(region, dst)
    assert same(dst, out)
    after = (dst.buf, dst.start, dst.length, dst.ext.origin)
    assert all(x is y for x, y in zip(arrays, after, strict=True))
    # another layout: refused, the batch untouched
    other = make_batch([*sizes, 5], seed)
    keep = other.copy()
    assert not read_batch_into(region, other)
    assert same(other, keep)


def test_read_into_refuses_a_packet_outside_its_slot_untouched() -> None:
    b = make_batch([100, 200], 1)
    region = np.zeros(encoded_size(len(b), len(b.buf)), np.uint8)
    write_batch(region, b)
    lengths = read_batch(region, copy=False).length
    lengths[1] = 10_000
    dst = make_batch([100, 200], 2)
    keep = dst.copy()
    with pytest.raises(BufferFormatError):
        read_batch_into(region, dst)
    assert same(dst, keep)


@given(
    st.lists(st.integers(0, (1 << 10) - 1), min_size=0, max_size=64),
    st.integers(0, 3),
)
def test_offload_tally_counts_packets_and_bytes_per_task(offload: list[int], same: int) -> None:
    """``offload_tally`` against a count made packet by packet."""
    from netoffload.devices.base import offload_tally

    if same == 0 and offload:  # the fast path: every packet asks one set
        offload = [offload[0]] * len(offload)
    n = len(offload)
    b = Batch.alloc([60 + 7 * i for i in range(n)])
    b.ext.offload[:] = offload
    expect = []
    for t in ALL_TASKS:
        rows = [i for i in range(n) if offload[i] & int(t)]
        if rows:
            expect.append((t, len(rows), sum(60 + 7 * i for i in rows)))
    assert list(offload_tally(b)) == expect


@given(st.lists(st.integers(64, 3000), max_size=80), st.integers(4096, 1 << 17))
def test_packets_that_fit_is_the_largest_tail_that_fits(sizes: list[int], region: int) -> None:
    from netoffload.devices.rings import encoded_size, packets_that_fit

    got = packets_that_fit(region, np.array(sizes, dtype=np.int64))
    fits = [
        k for k in range(len(sizes) + 1) if encoded_size(k, sum(sizes[len(sizes) - k :])) <= region
    ]
    assert got == max(fits)
    # and the region really holds a batch of those slots
    if got:
        tail = sizes[len(sizes) - got :]
        hi = np.cumsum(np.array(tail, dtype=np.int64))
        lo = hi - np.array(tail, dtype=np.int64)
        b = Batch(np.zeros(int(hi[-1]), np.uint8), lo.copy(), hi - lo, lo, hi, Ext(got), 0)
        write_batch(np.zeros(region, np.uint8), b)  # (raises if it does not fit)
