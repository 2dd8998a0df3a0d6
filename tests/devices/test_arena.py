"""The receive arena: reads land in a buffer that the batch gets without a copy,
and a batch someone still holds never changes under them."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from netoffload.batch import Batch
from netoffload.devices.kernel_common import Arena


def _read(arena: Arena, payloads: list[bytes]) -> Batch:
    """What a receive does: reset, one read per packet into the next slot, batch()."""
    arena.reset()
    for p in payloads:
        region = arena.slot()
        assert region is not None
        region[: len(p)] = p
        arena.commit(len(p))
    return arena.batch()


def _payloads(seed: int, n: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, int(rng.integers(1, 300)), np.uint8).tobytes() for _ in range(n)]


def test_the_usual_loop_reuses_one_buffer_without_copying() -> None:
    arena = Arena(1 << 16, 512)
    seen = set()
    for i in range(20):
        b = _read(arena, _payloads(i, 5))
        assert b.packets() == _payloads(i, 5)
        assert b.buf.base is not None  # a view of the arena's buffer, not a copy
        seen.add(id(b.buf.base))
        del b  # the batch is done with before the next receive
    assert len(seen) == 1


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(1, 6)), min_size=1, max_size=24))
def test_held_batches_never_change(ops: list[tuple[bool, int]]) -> None:
    """Any mix of batches kept and dropped: every kept batch keeps its bytes,
    also once the pool is used up and reads go to the scratch buffer."""
    arena = Arena(1 << 15, 512)
    held: list[tuple[Batch, list[bytes]]] = []
    for i, (keep, n) in enumerate(ops):
        want = _payloads(i, n)
        b = _read(arena, want)
        assert b.packets() == want
        if keep:
            held.append((b, want))
        del b  # (reference counting frees it at once)
    for b, want in held:
        assert b.packets() == want


def test_a_view_of_the_buffer_pins_it_too() -> None:
    arena = Arena(1 << 15, 512)
    first = _payloads(1, 4)
    b = _read(arena, first)
    s, n = int(b.start[2]), int(b.length[2])
    pkt = b.buf[s : s + n]  # the batch goes, a numpy view of one packet stays
    del b
    for i in range(2, 2 + 2 * Arena.POOL):
        _read(arena, _payloads(i, 4))
    assert pkt.tobytes() == first[2]
