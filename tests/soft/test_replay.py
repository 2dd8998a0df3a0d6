"""Anti-replay window against a simple set-based reference (packet by packet)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from numpy.typing import NDArray

from netoffload.errors import ConfigError
from netoffload.soft.replay import (
    OK,
    REPLAY,
    TOO_OLD,
    ReplayTable,
    ReplayWindow,
    in_batch_order,
    sort_groups,
)


class RefWindow:
    """Straight from RFC 4303 3.4.3: a set of seen numbers and the highest."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.top = 0
        self.seen: set[int] = set()

    def peek(self, s: int) -> int:
        """The verdict for ``s`` alone, without accepting it."""
        if s == 0 or (s <= self.top and self.top - s >= self.size):
            return int(TOO_OLD)
        if s <= self.top and s in self.seen:
            return int(REPLAY)
        return int(OK)

    def step(self, s: int) -> int:
        if s == 0:
            return int(TOO_OLD)
        if s > self.top:
            self.top = s
            self.seen.add(s)
            return int(OK)
        if self.top - s >= self.size:
            return int(TOO_OLD)
        if s in self.seen:
            return int(REPLAY)
        self.seen.add(s)
        return int(OK)


sizes = st.sampled_from([64, 100, 128, 1000, 1024, 4096])


@st.composite
def seq_batches(draw: st.DrawFn) -> tuple[int, list[list[int]]]:
    size = draw(sizes)
    base = draw(st.integers(0, 2**40))
    span = draw(st.sampled_from([8, size // 2, size, 3 * size, 40 * size]))
    nb = draw(st.integers(1, 6))
    batches = [
        [base + x for x in draw(st.lists(st.integers(0, span), max_size=80))] for _ in range(nb)
    ]
    return size, batches


@given(seq_batches())
def test_matches_reference(case: tuple[int, list[list[int]]]) -> None:
    size, batches = case
    w = ReplayWindow(size)
    ref = RefWindow(size)
    for batch in batches:
        got = w.check_and_update(np.array(batch, dtype=np.uint64))
        want = [ref.step(s) for s in batch]
        assert got.tolist() == want
        assert w.top == ref.top


@given(seq_batches())
def test_precheck_judges_each_number_alone(case: tuple[int, list[list[int]]]) -> None:
    """``precheck`` (before authentication) sees only the window, not the other
    numbers of its batch: a duplicate inside the batch is not a replay yet."""
    size, batches = case
    w = ReplayWindow(size)
    ref = RefWindow(size)
    for batch in batches:
        q = np.array(batch, dtype=np.uint64)
        assert w.precheck(q).tolist() == [ref.peek(s) for s in batch]
        w.check_and_update(q)
        for s in batch:
            ref.step(s)


@given(seq_batches())
def test_check_then_update_same_as_check_and_update(case: tuple[int, list[list[int]]]) -> None:
    size, batches = case
    a, b = ReplayWindow(size), ReplayWindow(size)
    for batch in batches:
        q = np.array(batch, dtype=np.uint64)
        va = a.check_and_update(q)
        vb = b.check(q)
        b.update(q[vb == OK])
        assert va.tolist() == vb.tolist()


def test_basic_cases() -> None:
    w = ReplayWindow(64)
    assert w.check_and_update([1, 2, 2, 3]).tolist() == [OK, OK, REPLAY, OK]
    assert w.check_and_update([100, 37, 36, 3]).tolist() == [OK, OK, TOO_OLD, TOO_OLD]
    assert w.check_and_update([0]).tolist() == [TOO_OLD]
    assert w.check_and_update([37, 99, 99]).tolist() == [REPLAY, OK, REPLAY]
    # a huge jump clears everything
    assert w.check_and_update([2**63 + 5, 2**63 + 4]).tolist() == [OK, OK]
    assert w.check([2**63 + 4, 2**63 + 3, 99]).tolist() == [REPLAY, OK, TOO_OLD]


@pytest.mark.parametrize("bad", [0, 63, 4097, -1, True, 64.0])
def test_bad_size(bad: object) -> None:
    with pytest.raises(ConfigError, match="window size"):
        ReplayWindow(bad)  # type: ignore[arg-type]


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(1, 300)), max_size=200))
def test_table_per_sa(pairs: list[tuple[int, int]]) -> None:
    t = ReplayTable(64)
    refs = {sa: RefWindow(64) for sa in range(4)}
    sas = np.array([p[0] for p in pairs], dtype=np.int32)
    seqs = np.array([p[1] for p in pairs], dtype=np.uint64)
    got = t.check_and_update(sas, seqs)
    want = [refs[sa].step(s) for sa, s in pairs]
    assert got.tolist() == want


@given(seq_batches(), st.data())
def test_table_matches_reference_many_sas(
    case: tuple[int, list[list[int]]], data: st.DataObject
) -> None:
    size, batches = case
    nsa = data.draw(st.sampled_from([1, 3, 50]))
    cap = data.draw(st.sampled_from([1000, 2]))
    t = ReplayTable(size, max_sas=cap)
    refs: dict[int, RefWindow] = {}
    for batch in batches:
        sas = [data.draw(st.integers(0, nsa - 1)) * 7919 - 5 for _ in batch]
        got = t.check_and_update(np.array(sas, dtype=np.int64), np.array(batch, dtype=np.uint64))
        if cap < nsa:  # forgetting SAs: only the shape and value range are defined
            assert len(got) == len(batch) and set(got.tolist()) <= {OK, REPLAY, TOO_OLD}
            continue
        want = [
            refs.setdefault(a, RefWindow(size)).step(s) for a, s in zip(sas, batch, strict=True)
        ]
        assert got.tolist() == want
        for sa, r in refs.items():
            assert t.top(sa) == r.top


def test_table_huge_jumps_take_the_per_sa_path() -> None:
    t = ReplayTable(64)
    ref = {1: RefWindow(64), 2: RefWindow(64)}
    pairs = [(1, 5), (2, 9), (1, 2**63 + 5), (1, 2**63 + 4), (2, 8), (1, 5), (2, 2**50)]
    got = t.check_and_update([p[0] for p in pairs], np.array([p[1] for p in pairs], np.uint64))
    assert got.tolist() == [ref[a].step(s) for a, s in pairs]
    pairs = [(1, 2**63 + 4), (1, 2**63 + 100), (2, 2**50 - 1)]
    got = t.check_and_update([p[0] for p in pairs], np.array([p[1] for p in pairs], np.uint64))
    assert got.tolist() == [ref[a].step(s) for a, s in pairs]


@given(
    st.lists(st.integers(0, 5), max_size=300) | st.lists(st.integers(-(2**63), 2**63 - 1)),
    st.sampled_from([np.int64, np.uint64, np.uint16]),
)
def test_sort_groups_is_the_stable_argsort(vals: list[int], dtype: type) -> None:
    keys: NDArray[np.integer] = np.array(vals, dtype=np.int64).astype(dtype)
    want = np.argsort(keys, kind="stable")
    order, newgrp = sort_groups(keys)
    assert order.tolist() == want.tolist()
    sk = keys[want]
    assert newgrp.tolist() == [i == 0 or bool(sk[i] != sk[i - 1]) for i in range(len(sk))]
    any_order, newgrp2 = sort_groups(keys, stable=False)
    assert keys[any_order].tolist() == sk.tolist() and newgrp2.tolist() == newgrp.tolist()
    assert in_batch_order(any_order, newgrp2).tolist() == want.tolist()


@st.composite
def sa_traffic(draw: st.DrawFn) -> tuple[int, list[list[tuple[int, int]]]]:
    """Batches of (SA, sequence number): per SA mostly in order, some late, some repeated."""
    size = draw(st.sampled_from([64, 1024]))
    nsa = draw(st.integers(1, 20))
    nxt = [draw(st.integers(1, 2**33)) for _ in range(nsa)]
    batches = []
    for _ in range(draw(st.integers(1, 4))):
        batch = []
        for _ in range(draw(st.integers(0, 400))):
            a = draw(st.integers(0, nsa - 1))
            nxt[a] += draw(st.sampled_from([1, 1, 1, 2, 0, -3, -size, 5 * size]))
            nxt[a] = max(nxt[a], 0)
            batch.append((a * 1000 - 7, nxt[a]))
        batches.append(batch)
    return size, batches


@given(sa_traffic())
def test_table_matches_reference_big_batches(case: tuple[int, list[list[tuple[int, int]]]]) -> None:
    size, batches = case
    t = ReplayTable(size)
    refs: dict[int, RefWindow] = {}
    for batch in batches:
        got = t.check_and_update(
            np.array([a for a, _ in batch], dtype=np.int64),
            np.array([s for _, s in batch], dtype=np.uint64),
        )
        want = [refs.setdefault(a, RefWindow(size)).step(s) for a, s in batch]
        assert got.tolist() == want
    for sa, r in refs.items():
        assert t.top(sa) == r.top


@given(seq_batches(), st.data())
def test_table_precheck_judges_each_alone_and_changes_nothing(
    case: tuple[int, list[list[int]]], data: st.DataObject
) -> None:
    """``ReplayTable.precheck`` is ``RefWindow.peek`` per SA; only ``record`` moves
    the windows (an unknown SA is not created by a pre-check)."""
    size, batches = case
    t = ReplayTable(size)
    refs: dict[int, RefWindow] = {}
    for batch in batches:
        sas = [data.draw(st.integers(0, 3)) for _ in batch]
        q = np.array(batch, dtype=np.uint64)
        a = np.array(sas, dtype=np.int64)
        before = (t.ids.copy(), t.tops.copy(), t.bits.copy())
        got = t.precheck(a, q)
        assert got.tolist() == [
            refs[x].peek(s) if x in refs else OK for x, s in zip(sas, batch, strict=True)
        ]
        assert all((x == y).all() for x, y in zip(before, (t.ids, t.tops, t.bits), strict=True))
        rec = t.record(a, q)
        assert rec.tolist() == [
            refs.setdefault(x, RefWindow(size)).step(s) for x, s in zip(sas, batch, strict=True)
        ]
