"""Load monitor: fitted costs, device-reported costs, host CPU from a sampler
read on the time passed in, latency quantiles."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from netoffload.policy.load import SOFTWARE, LoadMonitor, PsutilSampler
from netoffload.tasks import Task

C = Task.CHECKSUM


class FakeSampler:
    def __init__(self, readings: list[tuple[float, float]]) -> None:
        self.readings = list(readings)
        self.reads = 0

    def read(self) -> tuple[float, float]:
        self.reads += 1
        return self.readings.pop(0)


@given(
    st.floats(1e-8, 1e-4),
    st.floats(1e-11, 1e-7),
    st.lists(st.tuples(st.integers(1, 512), st.integers(40, 9000)), min_size=3, max_size=20),
)
def test_service_fit_recovers_known_costs(
    pp: float, pb: float, runs: list[tuple[int, int]]
) -> None:
    m = LoadMonitor(alpha=0.5)
    for n, s in runs:
        m.record_service(C, 0, n, n * s, pp * n + pb * n * s)
    est = m.snapshot(0.0).service[(C, 0)]
    # the prediction is right for every run seen, whatever the split between the terms
    for n, s in runs:
        assert est.predict(n, n * s) == pytest.approx(pp * n + pb * n * s, rel=1e-3)
    design = np.array([[1.0, n, n * s] for n, s in runs])
    if np.linalg.cond(design / design.max(axis=0)) < 100:  # the three terms are told apart
        assert est.per_call_s == pytest.approx(0.0, abs=1e-2 * pp)
        assert est.per_packet_s == pytest.approx(pp, rel=1e-2, abs=1e-12)
        assert est.per_byte_s == pytest.approx(pb, rel=1e-2, abs=1e-12)


@given(st.floats(1e-6, 1e-3), st.floats(1e-8, 1e-5), st.lists(st.integers(1, 512), min_size=3))
def test_per_call_cost_is_told_apart(call: float, pp: float, counts: list[int]) -> None:
    """Same packet size, varying counts: a fixed cost per run is not smeared over packets."""
    m = LoadMonitor(alpha=0.3)
    for n in counts:
        m.record(C, SOFTWARE, n, n * 1400, call + pp * n)
    est = m.snapshot(0.0).cost[(C, SOFTWARE)]
    for n in counts:
        assert est.predict(n, n * 1400) == pytest.approx(call + pp * n, rel=1e-3)
    if len(set(counts)) > 1:
        assert est.per_call_s == pytest.approx(call, rel=1e-3)
        assert est.per_packet_s == pytest.approx(pp, rel=1e-3)


def test_device_cost_prefers_the_devices_own_report() -> None:
    m = LoadMonitor()
    m.record(C, 0, 10, 1000, 1e-3)  # engine: submit to complete
    assert m.snapshot(0).device_cost(C, 0).per_packet_s == pytest.approx(1e-4)
    m.record_service(C, 0, 10, 1000, 2e-4)
    assert m.snapshot(0).device_cost(C, 0).per_packet_s == pytest.approx(2e-5)
    assert m.snapshot(0).device_cost(C, SOFTWARE).samples == 0


def test_crossing_and_queue_wait() -> None:
    m = LoadMonitor(alpha=0.5)
    m.record_crossing(0, 100, 100_000, 1e-4)
    for w in (1e-3, 3e-3, 50e-3, 2e-3, 1.5e-3):
        m.record_queue_wait(0, w)
    s = m.snapshot(0)
    assert s.crossing[0].predict(100, 100_000) == pytest.approx(1e-4)
    assert s.queue_wait_s[0] == pytest.approx(2e-3)  # the median: the 50 ms outlier is ignored


def test_host_cpu_sampled_on_the_time_given() -> None:
    fake = FakeSampler([(0.2, 0.1), (0.6, 0.5), (1.0, 0.9)])
    m = LoadMonitor(sampler=fake, sample_every=0.1, cpu_alpha=0.5)
    s = m.snapshot(10.0)
    assert (s.host_cpu, s.process_cpu) == (0.2, 0.1)  # first reading taken as is
    assert m.snapshot(10.05).host_cpu == 0.2 and fake.reads == 1  # too soon: no read
    s = m.snapshot(10.2)
    assert s.host_cpu == pytest.approx(0.4) and s.process_cpu == pytest.approx(0.3)
    s = m.snapshot(11.0)
    assert s.host_cpu == pytest.approx(0.7) and fake.reads == 3


def test_latency_quantiles() -> None:
    m = LoadMonitor(latency_window=100)
    for i in range(1, 201):
        m.record_latency(0, i / 1000)
    assert m.latency_quantile(0, 0.5) == pytest.approx(0.150, abs=0.002)
    assert m.latency_quantile(0, 0.99) == pytest.approx(0.199, abs=0.002)
    assert m.latency_quantile(1, 0.5) == 0.0
    assert 0 < m.snapshot(0).latency_s[0] <= 0.2


def test_psutil_sampler_reads_fractions() -> None:
    s = PsutilSampler()
    x = 0
    for i in range(200_000):
        x ^= i
    host, proc = s.read()
    assert 0.0 <= host <= 1.0 and proc >= 0.0


def test_proc_stat_reader_agrees_with_psutil() -> None:
    """The sampler reads /proc/stat itself (a third of psutil's cost): the same busy and
    total seconds per CPU as psutil's per-CPU times, read a moment apart."""
    import os

    import psutil

    from netoffload.policy.load import proc_stat_times

    if not os.path.exists("/proc/stat"):
        pytest.skip("no /proc/stat")
    fd = os.open("/proc/stat", os.O_RDONLY)
    try:
        mine = proc_stat_times(fd)
        theirs = psutil.cpu_times(percpu=True)
    finally:
        os.close(fd)
    assert mine is not None and len(mine) == len(theirs)
    for (busy, total), t in zip(mine, theirs, strict=True):
        assert total == pytest.approx(sum(t), abs=0.1)
        assert busy == pytest.approx(sum(t) - t.idle - t.iowait, abs=0.1)
    s = PsutilSampler()
    _, _, proc = s._take()
    pt = psutil.Process().cpu_times()
    assert proc == pytest.approx(pt.user + pt.system, abs=0.05)
    s.close()


def test_bad_alpha() -> None:
    with pytest.raises(ValueError):
        LoadMonitor(cpu_alpha=0.0)


def test_host_other_time_is_a_recent_median() -> None:
    from netoffload.policy.load import LoadMonitor

    m = LoadMonitor()
    assert m.snapshot(0.0).host_other_s == 0.0 and not m.snapshot(0.0).pipelined
    for x in (1e-3, 1e-3, 50e-3, 1e-3, -1.0):
        m.record_host_other(x)
    m.pipelined = True
    s = m.snapshot(0.0)
    assert s.pipelined and s.host_other_s == 1e-3


@given(
    st.floats(0.05, 1.0),
    st.lists(
        st.tuples(st.integers(1, 512), st.integers(40, 9000), st.floats(1e-7, 1e-2)),
        min_size=1,
        max_size=200,
    ),
    st.sets(st.integers(0, 199)),
)
def test_fit_weighs_runs_exponentially_whenever_it_is_read(
    alpha: float, runs: list[tuple[int, int, float]], reads: set[int]
) -> None:
    """The moments behind the fit are the exponentially weighted sums of the runs
    (the first run whole, each later one ``alpha``, fading by ``1 - alpha`` per
    run after it), computed here directly; reading estimates in between (which
    folds the queued runs early) changes nothing."""
    m, ref = LoadMonitor(alpha=alpha), LoadMonitor(alpha=alpha)
    for i, (n, s, t) in enumerate(runs):
        m.record(C, SOFTWARE, n, n * s, t)
        ref.record(C, SOFTWARE, n, n * s, t)
        if i in reads:
            m.snapshot(0.0)
    k = len(runs)
    w = np.array([alpha * (1 - alpha) ** (k - 1 - j) for j in range(k)])
    w[0] = (1 - alpha) ** (k - 1)
    x = np.array([[1.0, n, n * s, t] for n, s, t in runs])
    want = [w @ (x[:, i] * x[:, j]) for i, j in ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2))]
    want += [w @ (x[:, 2] * x[:, 2]), w @ x[:, 3], w @ (x[:, 1] * x[:, 3])]
    want += [w @ (x[:, 2] * x[:, 3])]
    for mon in (m, ref):
        est = mon.snapshot(0.0).cost[(C, SOFTWARE)]
        assert est.samples == k
        assert mon._fit._st[(C, SOFTWARE)] == pytest.approx(want, rel=1e-9)
    a, b = (mon.snapshot(0.0).cost[(C, SOFTWARE)] for mon in (m, ref))
    assert a.predict(100, 140000) == pytest.approx(b.predict(100, 140000), rel=1e-6)


def test_queue_wait_of_a_free_device_is_its_idle_wait() -> None:
    """Waits behind a backlog say nothing of a batch that finds the device free:
    the snapshot gives the idle waits when the device's queue is empty."""
    m = LoadMonitor()
    for w in (2e-3, 2.1e-3, 1.9e-3):
        m.record_queue_wait(0, w)  # behind other batches
    for w in (20e-6, 30e-6, 25e-6):
        m.record_queue_wait(0, w, idle=True)
    m.set_devices((0.5,), (True,))
    assert m.snapshot(0.0).queue_wait_s[0] == pytest.approx(2e-3)
    m.set_devices((0.0,), (True,))
    assert m.snapshot(0.0).queue_wait_s[0] == pytest.approx(25e-6)
    # only one kind measured yet: that one, whatever the queue
    only = LoadMonitor()
    only.record_queue_wait(0, 1e-3)
    only.set_devices((0.0,), (True,))
    assert only.snapshot(0.0).queue_wait_s[0] == pytest.approx(1e-3)
