"""Benchmarks behind ``netoffload bench NAME [--quick] [--json FILE]``.

A benchmark module registers ``Bench(name, run, summary)``; ``run(ctx)``
returns a ``BenchResult`` whose ``metrics`` are the figures its issue names
(ratios measured side by side in one run) and whose ``rows`` form the table.
The runner prints the table, writes ``{"bench": NAME, "metrics": {...}}`` with
``--json``, and a PNG plot next to it (or under ``bench-results/``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from netoffload.errors import ConfigError
from netoffload.plugins import ModuleSet


@dataclass
class BenchContext:
    quick: bool
    progress: Callable[[str], None] = lambda msg: None

    def repeat_time(self) -> float:
        """Seconds to spend timing one measurement."""
        return 0.15 if self.quick else 0.6


@dataclass
class BenchResult:
    metrics: dict[str, float]
    targets: dict[str, tuple[str, float]] = field(default_factory=dict)  # name: (op, value)
    rows: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    series: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # for plots
    xticks: dict[float, str] = field(default_factory=dict)  # names of the series' x values

    def verdicts(self) -> dict[str, bool]:
        out = {}
        for k, (op, v) in self.targets.items():
            m = self.metrics.get(k)
            if m is None:
                continue
            out[k] = m >= v if op == ">=" else m <= v
        return out


@dataclass(frozen=True)
class Bench:
    name: str
    run: Callable[[BenchContext], BenchResult]
    summary: str


_BENCHES: dict[str, Bench] = {}
_MODULES = (
    "netoffload.bench.checksum",
    "netoffload.bench.engine",
    "netoffload.bench.segment",
    "netoffload.bench.assemble",
    "netoffload.bench.crypto",
    "netoffload.bench.digest",
    "netoffload.bench.classify",
    "netoffload.bench.filter",
    "netoffload.bench.forward",
    "netoffload.bench.udp_gso",
    "netoffload.bench.policy",
    "netoffload.bench.tunnel",
    "netoffload.bench.flood",
)
_PLUGINS = ModuleSet(_MODULES)


def register(b: Bench) -> None:
    _BENCHES[b.name] = b


def _load() -> None:
    _PLUGINS.load()


def benches() -> dict[str, Bench]:
    _load()
    return dict(sorted(_BENCHES.items()))


def get(name: str) -> Bench:
    b = benches().get(name)
    if b is None:
        raise ConfigError(f"unknown benchmark {name!r} (known: {', '.join(benches())})")
    return b


def best_time(fn: Callable[[], object], budget_s: float, min_runs: int = 3) -> float:
    """Best wall time of ``fn`` over repeated runs within ``budget_s`` (at least min_runs)."""
    best = float("inf")
    t_end = time.perf_counter() + budget_s
    runs = 0
    while runs < min_runs or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        best = min(best, dt)
        runs += 1
        if runs >= 10000:
            break
    return best


def interleaved(
    fns: dict[str, Callable[[], object]], budget_s: float, rounds: int = 5
) -> dict[str, float]:
    """Best time of each function, measured in alternating rounds (side by side)."""
    best = {k: float("inf") for k in fns}
    per = budget_s / max(1, rounds * len(fns))
    for _ in range(rounds):
        for k, f in fns.items():
            best[k] = min(best[k], best_time(f, per, min_runs=1))
    return best
