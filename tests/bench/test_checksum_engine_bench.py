"""The checksum and engine benchmarks run and report the metrics the issue names.

Only the shape of the result is checked (names, targets, finite positive
ratios) — never a timing.
"""

from __future__ import annotations

import math

import pytest

from netoffload.bench import BenchContext, get
from netoffload.bench import engine as engine_bench
from netoffload.bench.checksum import verify_py, workload
from netoffload.testing.packets import udp_packet


def test_pure_python_baseline_is_a_real_verifier() -> None:
    good = workload(4, 200)
    assert all(verify_py(p) for p in good)
    bad = bytearray(good[0])
    bad[-1] ^= 1
    assert not verify_py(bytes(bad))
    assert verify_py(udp_packet(4, b"odd"))


def test_checksum_bench_metrics() -> None:
    res = get("checksum").run(BenchContext(quick=True))
    for name in ("checksum_vs_memcpy", "checksum_vs_pure_python"):
        assert math.isfinite(res.metrics[name]) and res.metrics[name] > 0
    assert res.targets == {
        "checksum_vs_memcpy": (">=", 0.5),
        "checksum_vs_pure_python": (">=", 40.0),
    }


def test_engine_bench_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_bench, "BATCH_SIZES", (1, 256))
    res = get("engine").run(BenchContext(quick=True))
    assert set(res.metrics) == {"engine_overhead_ratio_256", "engine_overhead_ratio_1"}
    assert all(math.isfinite(v) and v > 0 for v in res.metrics.values())
    assert res.targets == {"engine_overhead_ratio_256": (">=", 0.9)}
