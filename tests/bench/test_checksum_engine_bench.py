"""The checksum and engine benchmarks measure what their metrics name.

No timing is asserted. Instead the timer (``interleaved``) is replaced by one
that runs every timed function once and hands back chosen times, so that each
metric can be checked against its definition in the module docstring (which
time over which, how the pure-Python slice is scaled), the targets' verdicts
against the metrics, and each timed function against the work it claims.
"""

from __future__ import annotations

import numpy as np
import pytest
from bench_helpers import FakeTimer, verdicts_follow_targets

from netoffload.batch import Batch, CsumVerdict
from netoffload.bench import BenchContext
from netoffload.bench import checksum as checksum_bench
from netoffload.bench import engine as engine_bench
from netoffload.bench.checksum import verify_py, workload
from netoffload.soft.checksum import VERIFY, ChecksumTask
from netoffload.testing.packets import udp_packet


def test_pure_python_baseline_is_a_real_verifier() -> None:
    good = workload(4, 200)
    assert all(verify_py(p) for p in good)
    bad = bytearray(good[0])
    bad[-1] ^= 1
    assert not verify_py(bytes(bad))
    assert verify_py(udp_packet(4, b"odd"))


def test_checksum_workload_verifies_and_breaks() -> None:
    """What the bench verifies is 1400-byte IPv4/TCP with right checksums, which the
    task does verify (a flipped payload bit is caught): it times real work."""
    pkts = workload(64)
    assert {len(p) for p in pkts} == {checksum_bench.SIZE}
    assert all(p[0] == 0x45 and p[9] == 6 for p in pkts)
    bad = [bytearray(p) for p in pkts]
    for i in range(0, 64, 2):
        bad[i][100 + i] ^= 0x10
    b = Batch.from_packets([bytes(p) for p in bad])
    ChecksumTask(VERIFY).process(b, np.ones(64, bool))
    want = [CsumVerdict.BAD if i % 2 == 0 else CsumVerdict.GOOD for i in range(64)]
    assert b.ext.csum_verdict.tolist() == want


def test_checksum_metrics_are_the_documented_ratios(monkeypatch: pytest.MonkeyPatch) -> None:
    times = {"memcpy": 2.0, "verify": 4.0, "verify_parsed": 3.0, "fill": 5.0, "pure_python": 7.0}
    timer = FakeTimer(times)
    monkeypatch.setattr(checksum_bench, "interleaved", timer)
    res = checksum_bench.run(BenchContext(quick=True))
    n, size, py_n = checksum_bench.N_PACKETS, checksum_bench.SIZE, 32  # quick: 32 timed
    m = res.metrics
    # throughput ratios: the other path's time over verify's
    assert m["checksum_vs_memcpy"] == pytest.approx(2.0 / 4.0)
    assert m["checksum_vs_memcpy_parsed"] == pytest.approx(2.0 / 3.0)
    assert m["checksum_fill_vs_memcpy"] == pytest.approx(2.0 / 5.0)
    # the pure-Python time of py_n packets is scaled to the whole batch
    assert m["checksum_vs_pure_python"] == pytest.approx(7.0 * n / py_n / 4.0)
    assert m["verify_gbit_s"] == pytest.approx(n * size * 8 / 4.0 / 1e9)
    assert set(timer.fns) == set(times)
    verdicts_follow_targets(res)


def test_engine_bench_times_the_same_work_both_ways() -> None:
    """Each timed run, direct or through the engine, verifies every packet afresh
    (a packet corrupted between runs turns BAD at the next run, on both sides),
    and every packet goes through the engine (its count grows by the batch size)."""
    n = 32
    fns, engine = engine_bench._pair(n)
    batches = {
        k: next(c.cell_contents for c in f.__closure__ or () if isinstance(c.cell_contents, Batch))
        for k, f in fns.items()
    }
    before = engine.packets_out
    for run in range(3):
        for b in batches.values():
            b.packet(run)[200] ^= 0x01  # corrupt one more packet before each run
        fns["engine"]()
        fns["direct"]()
        for b in batches.values():  # (packets failed in an earlier run stay failed)
            got = b.ext.csum_verdict.tolist()
            assert got[run:] == [CsumVerdict.BAD] + [CsumVerdict.GOOD] * (n - run - 1)
    assert engine.packets_out - before == 3 * n


def test_engine_metrics_are_direct_over_engine_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_bench, "BATCH_SIZES", (1, 256))
    timer = FakeTimer({"direct": 3.0, "engine": 4.0})
    monkeypatch.setattr(engine_bench, "interleaved", timer)
    res = engine_bench.run(BenchContext(quick=True))
    assert res.metrics == {
        "engine_overhead_ratio_256": pytest.approx(0.75),
        "engine_overhead_ratio_1": pytest.approx(0.75),
    }
    assert [r["overhead_us"] for r in res.rows] == [pytest.approx(1e6)] * 2
    verdicts_follow_targets(res)
    assert res.verdicts() == {"engine_overhead_ratio_256": False}  # 0.75 is below 0.9
