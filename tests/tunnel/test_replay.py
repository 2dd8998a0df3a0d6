"""tunnel/replay against a plain reference model (a set and a maximum)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netoffload.errors import ConfigError
from netoffload.tunnel.replay import WINDOW_SIZE, ReplayWindow
from netoffload.tunnel.timers import REJECT_AFTER_MESSAGES


class Model:
    """Every accepted counter remembered; accept iff valid, unseen, and not size or
    more below the highest accepted."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.seen: set[int] = set()
        self.top = -1

    def check(self, c: int) -> bool:
        if not 0 <= c < REJECT_AFTER_MESSAGES or c in self.seen:
            return False
        return c > self.top or self.top - c < self.size

    def update(self, c: int) -> bool:
        ok = self.check(c)
        if ok:
            self.seen.add(c)
            self.top = max(self.top, c)
        return ok


def counters(base: int) -> st.SearchStrategy[int]:
    return st.one_of(
        st.integers(0, 300),
        st.integers(0, 3 * WINDOW_SIZE),
        st.integers(base - 100, base + 100).filter(lambda x: x >= 0),
        st.sampled_from([REJECT_AFTER_MESSAGES - 1, REJECT_AFTER_MESSAGES, 2**64 - 1]),
    )


@pytest.mark.parametrize("size", [64, 200, WINDOW_SIZE])
@given(data=st.data())
def test_against_model(size: int, data: st.DataObject) -> None:
    w, m = ReplayWindow(size), Model(size)
    base = data.draw(st.sampled_from([0, size, 2**40]))
    for _ in range(data.draw(st.integers(1, 60))):
        op = data.draw(st.sampled_from(["update", "check", "many"]))
        if op == "many":
            batch = data.draw(st.lists(counters(base), max_size=12))
            arr = np.array(batch, dtype=np.uint64)
            got = w.check_many(arr)
            firsts = [batch.index(c) == i for i, c in enumerate(batch)]
            want = [m.check(c) and f for c, f in zip(batch, firsts, strict=True)]
            assert got.tolist() == want, (batch, w)
        else:
            c = data.draw(counters(base))
            before = (w.top, w.check(c))
            assert w.check(c) == m.check(c), (c, w)
            if op == "update":
                assert w.update(c) == m.update(c), (c, w)
            else:
                assert (w.top, w.check(c)) == before  # check changes nothing


def test_check_many_changes_nothing_and_update_many_in_order() -> None:
    w = ReplayWindow()
    arr = np.array([5, 3, 5, 9, 3, 0], dtype=np.uint64)
    assert w.check_many(arr).tolist() == [True, True, False, True, False, True]
    assert w.top == 0 and w.check(5)
    assert w.update_many(arr).tolist() == [True, True, False, True, False, True]
    assert w.check_many(arr).tolist() == [False] * 6
    assert w.check_many(np.zeros(0, dtype=np.uint64)).tolist() == []


def test_window_edges() -> None:
    w = ReplayWindow(64)
    assert w.update(0) and not w.update(0)
    assert w.update(1000)
    assert not w.check(1000 - 64) and w.check(1000 - 63)
    assert w.update(1000 + 64 * 5)  # a jump past the whole window clears it
    assert w.check(1000 + 64 * 5 - 1)
    assert not w.update(REJECT_AFTER_MESSAGES)
    assert w.update(REJECT_AFTER_MESSAGES - 1)
    assert not w.check(-1)


def test_numpy_integers() -> None:
    w = ReplayWindow()
    for c in (np.uint64(5), np.uint64(100_000), np.int64(99_999), np.uint64(5)):
        assert w.check(c) == (c != 5 or w.top == 0)
        w.update(c)
    assert w.top == 100_000 and not w.check(np.uint64(99_999)) and w.check(np.uint64(99_998))


def test_bad_size() -> None:
    for bad in (0, 63, 1 << 17, True, 1.5):
        with pytest.raises(ConfigError):
            ReplayWindow(bad)  # type: ignore[arg-type]


def runs(base: int, size: int) -> st.SearchStrategy[list[int]]:
    """Batches as a receiver sees them: a run of counters (reordered a little, some
    repeated, some from far away) mixed with the odd counters of ``counters``."""

    @st.composite
    def run(draw: st.DrawFn) -> list[int]:
        lo = draw(st.one_of(st.integers(0, 2 * size), st.integers(base, base + 2 * size)))
        n = draw(st.integers(0, 300))
        out = list(range(lo, lo + n))
        for _ in range(draw(st.integers(0, 20))):
            if out:
                i, j = draw(st.integers(0, len(out) - 1)), draw(st.integers(0, len(out) - 1))
                out[i], out[j] = out[j], out[i]
        for _ in range(draw(st.integers(0, 10))):
            at = draw(st.integers(0, len(out)))
            out.insert(at, draw(st.one_of(counters(base), st.sampled_from(out or [0]))))
        return out

    return run()


@pytest.mark.parametrize("size", [64, 200, WINDOW_SIZE])
@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_update_many_as_update_in_order(size: int, data: st.DataObject) -> None:
    """The whole-batch ``update_many`` against the model and against ``update`` one
    counter at a time: the same answers, the same window after each batch."""
    w, one, m = ReplayWindow(size), ReplayWindow(size), Model(size)
    base = data.draw(st.sampled_from([0, size, 2**40]))
    for _ in range(data.draw(st.integers(1, 6))):
        batch = data.draw(st.one_of(runs(base, size), st.lists(counters(base), max_size=40)))
        got = w.update_many(np.array(batch, dtype=np.uint64)).tolist()
        assert got == [m.update(c) for c in batch], (batch, w)
        assert got == [one.update(c) for c in batch]
        assert (w.top, w._bits) == (one.top, one._bits)
        near = [w.top - k for k in range(0, 2 * size, 7) if k <= w.top]
        probe = np.array(batch + near, dtype=np.uint64)
        assert w.check_many(probe).tolist() == one.check_many(probe).tolist()
