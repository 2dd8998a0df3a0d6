"""Shared by the benchmark tests: a stand-in timer and the targets' verdict check."""

from __future__ import annotations

from collections.abc import Callable

from netoffload.bench import BenchResult

Fns = dict[str, Callable[[], object]]


class FakeTimer:
    """Stands in for ``bench.interleaved``: runs each function once, returns ``times``."""

    def __init__(self, times: dict[str, float]) -> None:
        self.times = times
        self.fns: Fns = {}

    def __call__(self, fns: Fns, budget_s: float, rounds: int = 5) -> dict[str, float]:
        for k, fn in fns.items():
            fn()
            self.fns[k] = fn
        return {k: self.times[k] for k in fns}


def verdicts_follow_targets(res: BenchResult) -> None:
    """Each target judges its metric: met exactly at the bound and on the right side."""
    assert res.targets and set(res.targets) <= set(res.metrics)
    for k, (op, bound) in res.targets.items():
        assert op in (">=", "<=")
        for value, met in ((bound, True), (bound * 1.01, op == ">="), (bound * 0.99, op == "<=")):
            r = BenchResult(metrics={k: value}, targets={k: (op, bound)})
            assert r.verdicts() == {k: met}
