"""The engine without devices: the C stage driver (``_kernel.soft_run``, and
``_kernel.enter``) against the engine's Python path, which does the same with
numpy (``_scan``, ``_soft``, ``_mark``), on generated batches; and
``soft_run``'s contract, case by case."""

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
from test_engine import Append as TagAppend

kernel = _native.kernel
needs_kernel = pytest.mark.skipif(
    kernel is None, reason=f"compiled kernel not in use: {_native.status()}"
)


class Append(TagAppend):
    """Appends a tag byte to each selected packet (in its tail room); packets
    whose first byte is 0xEE fail with BAD_CHECKSUM."""

    def process(self, batch: Batch, sel: Mask) -> Batch:
        out = super().process(batch, sel)
        idx = np.flatnonzero(sel)
        first = out.buf[out.start[idx]]
        out.ext.error[idx[first == 0xEE]] = Reason.BAD_CHECKSUM
        return out


class Police(SoftTask):
    """Drops (filter verdict) the selected packets longer than 6 bytes."""

    task = Task.DOS_FILTER

    def process(self, batch: Batch, sel: Mask) -> Batch:
        hit = sel & (batch.length > 6)
        batch.ext.filter_verdict[hit] = FilterVerdict.DROP
        batch.ext.filter_reason[hit] = Reason.RATE_LIMIT
        return batch


class Seal(SoftTask):
    """Appends 0x5E and, in its host-side settle step, fails the selected packets
    whose first byte is 0xAA (a task the C driver hands back to the engine)."""

    task = Task.DIGEST

    def process(self, batch: Batch, sel: Mask) -> Batch:
        return Append(Task.DIGEST, 0x5E).process(batch, sel)

    def settle(self, batch: Batch, sel: Mask) -> None:
        idx = np.flatnonzero(sel)
        first = batch.buf[batch.start[idx]]
        batch.ext.error[idx[first == 0xAA]] = Reason.BAD_DIGEST


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
            Task.DIGEST: Seal(),
            Task.DOS_FILTER: Police(),
        }
    )


STAGES = (Task.TCP_SEGMENT, Task.CHECKSUM, Task.ENCRYPT, Task.DIGEST, Task.DOS_FILTER)

packets = st.lists(
    st.tuples(
        st.one_of(st.binary(max_size=12), st.sampled_from([b"\xaa", b"\xee\x01"])),
        st.integers(0, 31),  # which of the five stages it wants
        st.integers(0, 31),  # which it has had already
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


DROP = int(FilterVerdict.DROP)
CS, ENC = int(Task.CHECKSUM), int(Task.ENCRYPT)


def _acc(stages: int) -> np.ndarray:
    return np.zeros(3 * stages, np.int64)


@needs_kernel
def test_soft_run_does_every_stage_and_counts_them() -> None:
    assert kernel is not None
    b = Batch.from_packets([b"abc", b"de", b"fgh"])
    b.ext.tasks[:] = [CS | ENC, ENC, CS]
    b.ext.offload[:] = 5
    seen: list[tuple[int, list[bool]]] = []

    def stage(bit: int) -> Any:
        def process(batch: Batch, sel: Mask) -> Batch:
            seen.append((bit, sel.tolist()))
            return batch

        return process

    acc = _acc(2)
    plan = ((CS, stage(CS)), (ENC, stage(ENC)))
    assert kernel.soft_run(b, 100, plan, DROP, acc, 0) is b
    assert seen == [(CS, [True, False, True]), (ENC, [True, True, False])]
    counts = acc.reshape(2, 3)
    assert counts[:, :2].tolist() == [[2, 6], [2, 5]] and (counts[:, 2] >= 0).all()
    assert b.ext.done.tolist() == [CS | ENC, ENC, CS]
    assert b.ext.origin.tolist() == [100, 101, 102]
    assert not b.ext.offload.any() and not b.ext.sub.any()
    # done now: nobody wants either stage, nothing is called or counted
    acc[:] = 0
    assert kernel.soft_run(b, 100, plan, DROP, acc, 0) is b
    assert len(seen) == 2 and not acc.any()
    # from stage 1 on: the batch does not enter again (its numbering stays)
    b.ext.done[:] = 0
    assert kernel.soft_run(b, 7, plan, DROP, acc, 1) is b
    assert seen[2:] == [(ENC, [True, True, False])] and b.ext.origin.tolist() == [100, 101, 102]


@needs_kernel
def test_soft_run_hands_back_what_the_engine_must_do() -> None:
    assert kernel is not None
    noop = ((CS, lambda batch, sel: batch),)
    b = Batch.from_packets([b"abc", b"de"])
    b.ext.tasks[:] = CS
    # a dead packet in the batch: stage 0 is the engine's (drops by reason)
    b.ext.error[1] = Reason.TRUNCATED
    assert kernel.soft_run(b, 0, noop, DROP, _acc(1), 0) == (b, 0, -1, 0)
    assert not b.ext.done.any()
    b.ext.error[1] = 0
    b.ext.filter_verdict[0] = DROP
    assert kernel.soft_run(b, 0, noop, DROP, _acc(1), 0) == (b, 0, -1, 0)
    b.ext.filter_verdict[0] = 0
    # a stage that settles (bit 0)
    assert kernel.soft_run(b, 0, ((0, noop[0][1]),), DROP, _acc(1), 0) == (b, 0, -1, 0)

    # the task fails a packet: counted, marked, handed back with the dead count
    def fail_first(batch: Batch, sel: Mask) -> Batch:
        batch.ext.error[0] = Reason.BAD_CHECKSUM
        return batch

    acc = _acc(2)
    r = kernel.soft_run(b, 0, ((CS, fail_first), (ENC, fail_first)), DROP, acc, 0)
    assert r == (b, 0, 2, 1) and acc.tolist()[:2] == [2, 5] and not acc[3:].any()
    assert b.ext.done.tolist() == [CS, CS]

    # the task changes the packet count: handed back with the count before
    def grow(batch: Batch, sel: Mask) -> Batch:
        out = Batch.from_packets([b"x"] * 3)
        out.ext.tasks[:] = CS
        return out

    b.ext.error[:] = 0
    b.ext.done[:] = 0
    r = kernel.soft_run(b, 0, ((CS, grow),), DROP, _acc(1), 0)
    assert r[1:] == (0, 2, 0) and len(r[0]) == 3 and r[0].ext.done.tolist() == [CS] * 3
    # an extension that is not plain arrays: nothing written at the start ...
    b.ext.origin = np.full(4, 9, np.int64)[::2]
    b.ext.offload[:] = 3
    assert kernel.soft_run(b, 0, noop, DROP, _acc(1), 0) is NotImplemented
    assert b.ext.origin.tolist() == [9, 9] and b.ext.offload.tolist() == [3, 3]
    # ... and where a stage cannot read it, that stage is the engine's
    b.ext.origin = np.zeros(2, np.int64)
    b.ext.done = np.zeros(4, np.uint16)[::2]
    assert kernel.soft_run(b, 0, noop, DROP, _acc(1), 0) == (b, 0, -1, 0)
    assert kernel.soft_run(b, 0, noop + noop, DROP, _acc(2), 1) == (b, 1, -1, 0)
    assert kernel.enter(object(), 0) is False


@needs_kernel
def test_soft_run_refuses_bad_arguments() -> None:
    assert kernel is not None
    b = Batch.from_packets([b"a"])
    plan = ((CS, lambda batch, sel: batch),)
    with pytest.raises(TypeError, match="acc"):
        kernel.soft_run(b, 0, plan, DROP, np.zeros(2, np.int64), 0)
    with pytest.raises(TypeError, match="acc"):
        kernel.soft_run(b, 0, plan, DROP, np.zeros(3, np.int32), 0)
    with pytest.raises(ValueError, match="start"):
        kernel.soft_run(b, 0, plan, DROP, _acc(1), 2)
    with pytest.raises(TypeError, match="plan"):
        kernel.soft_run(b, 0, ((CS,),), DROP, _acc(1), 0)
    with pytest.raises(TypeError):
        kernel.soft_run(b, 0, list(plan), DROP, _acc(1), 0)


@needs_kernel
def test_soft_run_never_reuses_a_mask_a_task_kept() -> None:
    assert kernel is not None
    kept: list[Mask] = []

    def keep(batch: Batch, sel: Mask) -> Batch:
        kept.append(sel)
        return batch

    plan = ((CS, keep),)
    for pattern in ([1, 0, 1, 1], [0, 1, 1, 0], [1, 1, 0, 0]):
        b = Batch.from_packets([b"p"] * 4)
        b.ext.tasks[:] = np.array(pattern, np.uint16) * CS
        assert kernel.soft_run(b, 0, plan, DROP, _acc(1), 0) is b
    # each mask still says what it said when its task saw it
    assert [k.tolist() for k in kept] == [
        [True, False, True, True],
        [False, True, True, False],
        [True, True, False, False],
    ]
    assert len({id(k) for k in kept}) == 3


@needs_kernel
def test_soft_run_lets_the_task_exception_through() -> None:
    assert kernel is not None
    b = Batch.from_packets([b"x"])
    b.ext.tasks[:] = CS

    def boom(batch: Batch, sel: Mask) -> Batch:
        raise RuntimeError("task bug")

    acc = _acc(1)
    with pytest.raises(RuntimeError, match="task bug"):
        kernel.soft_run(b, 0, ((CS, boom),), DROP, acc, 0)
    assert not acc.any()


def test_engine_counters_include_what_the_c_path_counted() -> None:
    b = Batch.from_packets([b"abcd"] * 3)
    b.ext.tasks[:] = CS
    eng = Engine(
        Direction.RX, Task.CHECKSUM, SoftLibrary({Task.CHECKSUM: Append(Task.CHECKSUM, 1)}), Never()
    )
    eng.process(b)
    c = eng.counters[Task.CHECKSUM]
    assert (c.software, c.bytes) == (3, 12)
    b2 = Batch.from_packets([b"ab"] * 2)
    b2.ext.tasks[:] = CS
    eng.process(b2)
    assert (eng.counters[Task.CHECKSUM].software, eng.counters[Task.CHECKSUM].bytes) == (5, 16)
    assert eng.report()["tasks"]["checksum"]["software"] == 5  # type: ignore[index]


@needs_kernel
def test_enter_numbers_and_clears() -> None:
    assert kernel is not None
    b = Batch.from_packets([b"a"] * 5)
    b.ext.sub[:] = 9
    b.ext.offload[:] = 3
    assert kernel.enter(b, 1 << 40) is True
    assert b.ext.origin.tolist() == [(1 << 40) + i for i in range(5)]
    assert not b.ext.sub.any() and not b.ext.offload.any()
