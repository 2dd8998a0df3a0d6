"""The engine without devices: the C stage driver (``_kernel.enter`` and
``_kernel.soft_stage``) against the engine's Python path, which does the same
with numpy (``_scan``, ``_soft``, ``_mark``), on generated batches."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import netoffload.engine as engine_mod
from netoffload import _native
from netoffload.batch import EXT_FIELDS, Batch, FilterVerdict, Mask, Reason
from netoffload.engine import Engine
from netoffload.policy import Never
from netoffload.soft import SoftLibrary, SoftTask
from netoffload.tasks import Direction, Task

kernel = _native.kernel
needs_kernel = pytest.mark.skipif(
    kernel is None, reason=f"compiled kernel not in use: {_native.status()}"
)


class Append(SoftTask):
    """Appends a tag byte to each selected packet (in its tail room); packets
    whose first byte is 0xEE fail with BAD_CHECKSUM."""

    def __init__(self, task: Task, tag: int) -> None:
        self.task = task
        self.tag = tag

    def process(self, batch: Batch, sel: Mask) -> Batch:
        idx = np.flatnonzero(sel)
        ends = batch.start[idx] + batch.length[idx]
        batch.buf[ends] = self.tag
        batch.length[idx] += 1
        first = batch.buf[batch.start[idx]]
        batch.ext.error[idx[first == 0xEE]] = Reason.BAD_CHECKSUM
        return batch


class Police(SoftTask):
    """Drops (filter verdict) the selected packets longer than 6 bytes."""

    task = Task.DOS_FILTER

    def process(self, batch: Batch, sel: Mask) -> Batch:
        hit = sel & (batch.length > 6)
        batch.ext.filter_verdict[hit] = FilterVerdict.DROP
        batch.ext.filter_reason[hit] = Reason.RATE_LIMIT
        return batch


class Halve(SoftTask):
    """Cuts each selected packet of 2+ bytes in two (changes the packet count)."""

    task = Task.TCP_SEGMENT

    def process(self, batch: Batch, sel: Mask) -> Batch:
        pieces: list[bytes] = []
        rows: list[int] = []
        for i in range(len(batch)):
            p = bytes(batch.packet(i))
            if sel[i] and len(p) >= 2:
                h = len(p) // 2
                pieces += [p[:h], p[h:]]
                rows += [i, i]
            else:
                pieces.append(p)
                rows.append(i)
        out = Batch.from_packets(pieces)
        out.ext = batch.ext.take(np.array(rows, dtype=np.int64))
        return out


def _library() -> SoftLibrary:
    return SoftLibrary(
        {
            Task.TCP_SEGMENT: Halve(),
            Task.CHECKSUM: Append(Task.CHECKSUM, 0xC5),
            Task.ENCRYPT: Append(Task.ENCRYPT, 0xE7),
            Task.DOS_FILTER: Police(),
        }
    )


STAGES = (Task.TCP_SEGMENT, Task.CHECKSUM, Task.ENCRYPT, Task.DOS_FILTER)

packets = st.lists(
    st.tuples(
        st.binary(max_size=12),
        st.integers(0, 15),  # which of the four stages it wants
        st.integers(0, 15),  # which it has had already
        st.sampled_from([0, 0, 0, int(Reason.TRUNCATED)]),  # failed before it came
    ),
    max_size=40,
)


def _batch(rows: list[tuple[bytes, int, int, int]]) -> Batch:
    b = Batch.from_packets([r[0] for r in rows])
    bits = [sum(int(t) for k, t in enumerate(STAGES) if m >> k & 1) for _, m, _, _ in rows]
    done = [sum(int(t) for k, t in enumerate(STAGES) if m >> k & 1) for _, _, m, _ in rows]
    b.ext.tasks[:] = np.array(bits, np.uint16)
    b.ext.done[:] = np.array(done, np.uint16)
    b.ext.error[:] = np.array([r[3] for r in rows], np.uint16)
    b.ext.offload[:] = 7  # stale: an engine's output never has tasks handed over
    return b


def _run(rows: list[tuple[bytes, int, int, int]], native: Any) -> tuple[Engine, list[Batch]]:
    saved = engine_mod._native
    engine_mod._native = native
    try:
        eng = Engine(Direction.TX, STAGES, _library(), Never(), order=STAGES)
        outs = [eng.process(_batch(rows)).batch for _ in range(2)]
    finally:
        engine_mod._native = saved
    return eng, outs


def _untimed(report: dict[str, Any]) -> dict[str, Any]:
    for c in report["tasks"].values():
        assert c["soft_ns"] >= 0
        c["soft_ns"] = 0
    return report


@needs_kernel
@settings(deadline=None)
@given(packets)
def test_c_stages_match_the_python_path(rows: list[tuple[bytes, int, int, int]]) -> None:
    e_c, outs_c = _run(rows, kernel)
    e_py, outs_py = _run(rows, None)
    # counters, drops by reason, packets in and out (all but the measured times)
    assert _untimed(e_c.report()) == _untimed(e_py.report())
    for a, b in zip(outs_c, outs_py, strict=True):
        assert a.packets() == b.packets()
        for f in EXT_FIELDS:
            assert getattr(a.ext, f).tolist() == getattr(b.ext, f).tolist(), f
        assert not a.ext.offload.any()
    # the second batch is numbered after the first
    assert outs_c[1].ext.origin.min(initial=len(rows)) >= len(rows)


@needs_kernel
def test_soft_stage_answers_by_its_contract() -> None:
    assert kernel is not None
    b = Batch.from_packets([b"abc", b"de", b"fgh"])
    bit = int(Task.CHECKSUM)
    b.ext.tasks[:] = [bit, 0, bit]
    seen: list[list[bool]] = []

    def process(batch: Batch, sel: Mask) -> Batch:
        seen.append(sel.tolist())
        batch.ext.error[0] = Reason.BAD_CHECKSUM
        return batch

    out, nwant, nbytes, dt, dead = kernel.soft_stage(b, bit, int(FilterVerdict.DROP), process)
    assert out is b and seen == [[True, False, True]]
    assert (nwant, nbytes, dead) == (2, 6, 1) and dt >= 0
    assert b.ext.done.tolist() == [bit, 0, bit]
    # done now: nothing wants it
    assert kernel.soft_stage(b, bit, int(FilterVerdict.DROP), process) is None
    # a dead packet in the batch: the engine does the stage (drops by reason)
    b.ext.done[:] = 0
    r = kernel.soft_stage(b, bit, int(FilterVerdict.DROP), process)
    assert r[0] is None and r[1].tolist() == [False, False, True] and r[2:] == (1, 3, 1)
    # an extension that is not plain arrays: the Python path
    b.ext.done = np.zeros(6, np.uint16)[::2]
    assert kernel.soft_stage(b, bit, 1, process) is NotImplemented
    assert kernel.enter(object(), 0) is False


@needs_kernel
def test_soft_stage_lets_the_task_exception_through() -> None:
    assert kernel is not None
    b = Batch.from_packets([b"x"])
    b.ext.tasks[:] = int(Task.CHECKSUM)

    def boom(batch: Batch, sel: Mask) -> Batch:
        raise RuntimeError("task bug")

    with pytest.raises(RuntimeError, match="task bug"):
        kernel.soft_stage(b, int(Task.CHECKSUM), 1, boom)


@needs_kernel
def test_enter_numbers_and_clears() -> None:
    assert kernel is not None
    b = Batch.from_packets([b"a"] * 5)
    b.ext.sub[:] = 9
    b.ext.offload[:] = 3
    assert kernel.enter(b, 1 << 40) is True
    assert b.ext.origin.tolist() == [(1 << 40) + i for i in range(5)]
    assert not b.ext.sub.any() and not b.ext.offload.any()
