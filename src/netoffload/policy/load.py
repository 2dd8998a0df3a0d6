"""Load snapshot and the monitor that produces it (sans-IO: time is passed in).

The engine feeds the monitor with what it measures (per task and path: packets,
bytes, nanoseconds); the monitor keeps exponentially weighted moving averages
of the cost per packet and per byte of each path, and a host-CPU reading
supplied by the caller. ``snapshot(now)`` freezes all of it for a policy.

Besides what the engine records, a device may report (``record_service``,
``record_queue_wait``, ``record_crossing``) its own service time per task, the
time a batch waited in its queue, and the host's cost of crossing to it (the
emulated NIC does, once ``attach``-ed): the engine's device cost is the wall
time from submit to complete, which overlaps with the host's software work,
while these tell the parts apart. Host CPU comes from ``set_host`` or from a
``sampler`` (``PsutilSampler`` reads psutil) that ``snapshot(now)`` consults at
most every ``sample_every`` seconds of the time it is given — so tests pass a
fake sampler and a fake clock, and nothing sleeps.
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from netoffload.tasks import Task

SOFTWARE = -1  # path id of the software fallback; devices are 0, 1, ...


@dataclass(frozen=True)
class CostEstimate:
    """Predicted cost of one path for one task:
    time = per_call + per_packet*n + per_byte*bytes (per_call only when n > 0)."""

    per_packet_s: float = 0.0
    per_byte_s: float = 0.0
    samples: int = 0
    per_call_s: float = 0.0

    def predict(self, packets: int, nbytes: int) -> float:
        if packets <= 0:
            return 0.0
        return self.per_call_s + self.per_packet_s * packets + self.per_byte_s * nbytes

    def marginal(self, nbytes: float) -> float:
        """Cost of one more packet of ``nbytes`` bytes."""
        return self.per_packet_s + self.per_byte_s * nbytes


@dataclass(frozen=True)
class LoadSnapshot:
    """What a policy may look at besides the packets and the capabilities."""

    now: float = 0.0
    host_cpu: float = 0.0  # system CPU utilisation 0..1
    process_cpu: float = 0.0  # this process, 0..1 of one core
    device_occupancy: tuple[float, ...] = ()  # per device, 0..1
    device_up: tuple[bool, ...] = ()
    cost: Mapping[tuple[Task, int], CostEstimate] = field(default_factory=dict)
    latency_s: Mapping[int, float] = field(default_factory=dict)  # per path, recent batch
    #: device-side service cost per (task, device), when the device reports it
    service: Mapping[tuple[Task, int], CostEstimate] = field(default_factory=dict)
    #: host cost of crossing to a device (copy in and out), per device
    crossing: Mapping[int, CostEstimate] = field(default_factory=dict)
    #: time a batch submitted now would wait before the device takes it (recent
    #: median): behind other batches while the device has some, else the wait of a
    #: batch that found the device idle (its doorbell and wake-up)
    queue_wait_s: Mapping[int, float] = field(default_factory=dict)
    #: the engine is pipelining: it starts this batch while earlier ones are still in
    #: flight, so host and device work on different batches at once
    pipelined: bool = False
    #: while pipelining, host time per batch outside the software tasks (splitting,
    #: crossings, merging, the caller's own work), recent median
    host_other_s: float = 0.0

    def estimate(self, task: Task, path: int) -> CostEstimate:
        return self.cost.get((task, path), CostEstimate())

    def device_cost(self, task: Task, path: int) -> CostEstimate:
        """The device's own service cost if reported, else the engine's measured cost."""
        s = self.service.get((task, path))
        return s if s is not None and s.samples else self.estimate(task, path)


class CpuSampler(Protocol):
    """Reads host CPU: (utilisation of the host's cores 0..1, this process 0..1 of a core)."""

    def read(self) -> tuple[float, float]: ...


class PsutilSampler:
    """Host CPU from psutil, as deltas since the previous read.

    ``host`` is the mean utilisation of the CPUs this process may run on (its
    affinity set: the host's cores when a NIC process is pinned to another
    core; all CPUs otherwise), so a CPU hog on the host's core shows as load
    even while this process waits. ``process`` is this process's CPU time over
    wall time (1.0 = one core busy).
    """

    def __init__(self, cpus: set[int] | None = None) -> None:
        import psutil

        self._psutil: Any = psutil
        self._proc = psutil.Process()
        try:
            self.cpus = sorted(cpus if cpus is not None else os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover - not Linux
            self.cpus = list(range(psutil.cpu_count() or 1))
        #: /proc/stat kept open: read directly, what psutil reads there costs 3x more
        #: (~40 us a sample, on the packet path of whichever batch takes the sample)
        self._stat = -1
        with contextlib.suppress(OSError, AttributeError):
            self._stat = os.open("/proc/stat", os.O_RDONLY | os.O_CLOEXEC)
            if proc_stat_times(self._stat) is None:
                os.close(self._stat)
                self._stat = -1
        self._last = self._take()

    def close(self) -> None:
        fd = getattr(self, "_stat", -1)
        if fd >= 0:
            self._stat = -1
            with contextlib.suppress(OSError):
                os.close(fd)

    def __del__(self) -> None:
        self.close()

    def _take(self) -> tuple[float, list[tuple[float, float]], float]:
        import time

        if self._stat >= 0:
            rows = proc_stat_times(self._stat)
            if rows is not None:
                bt = []
                for c in self.cpus:
                    if c < len(rows):
                        bt.append(rows[c])
                t = os.times()
                return time.monotonic(), bt, t.user + t.system
        per = self._psutil.cpu_times(percpu=True)
        busy_total = []
        for c in self.cpus:
            if c < len(per):
                t = per[c]
                total = sum(t)
                idle = t.idle + getattr(t, "iowait", 0.0)
                busy_total.append((total - idle, total))
        pt = self._proc.cpu_times()
        return time.monotonic(), busy_total, pt.user + pt.system

    def read(self) -> tuple[float, float]:
        now = self._take()
        t0, bt0, p0 = self._last
        t1, bt1, p1 = now
        self._last = now
        busy = sum(b1 - b0 for (b0, _), (b1, _) in zip(bt0, bt1, strict=False))
        total = sum(a1 - a0 for (_, a0), (_, a1) in zip(bt0, bt1, strict=False))
        host = busy / total if total > 0 else 0.0
        dt = t1 - t0
        proc = (p1 - p0) / dt if dt > 0 else 0.0
        return min(max(host, 0.0), 1.0), max(proc, 0.0)


def proc_stat_times(fd: int) -> list[tuple[float, float]] | None:
    """Per CPU line of ``/proc/stat`` (open at ``fd``), in the order listed: (busy,
    total) seconds, as psutil's ``cpu_times(percpu=True)`` sums them (total: every
    field; busy: less idle and iowait); None if it cannot be read."""
    try:
        data = os.pread(fd, 1 << 16, 0)
        tick = float(os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError):
        return None
    out = []
    for line in data.split(b"\n"):
        if line[:3] == b"cpu" and line[3:4].isdigit():
            f = [int(x) for x in line.split()[1:]]
            if len(f) < 4:
                return None
            total = sum(f)
            out.append(((total - f[3] - (f[4] if len(f) > 4 else 0)) / tick, total / tick))
    return out or None


class LoadMonitor:
    """Moving averages of measured costs; host load passed in by the caller."""

    def __init__(
        self,
        alpha: float = 0.2,
        sampler: CpuSampler | None = None,
        sample_every: float = 0.1,
        cpu_alpha: float = 0.5,
        latency_window: int = 512,
    ) -> None:
        if not 0 < alpha <= 1:
            raise ValueError("alpha must be in (0, 1]")
        if not 0 < cpu_alpha <= 1:
            raise ValueError("cpu_alpha must be in (0, 1]")
        self.alpha = alpha
        self.sampler = sampler
        self.sample_every = sample_every
        self.cpu_alpha = cpu_alpha
        self._last_sample: float | None = None
        self._service = _CostFit(alpha)
        self._cross = _CostFit(alpha)
        self._qwait: dict[tuple[int, bool], float] = {}  # (path, idle): recent median
        self._qwait_window: dict[tuple[int, bool], deque[float]] = {}
        self._lat_window: dict[int, deque[float]] = {}
        self._lat_len = latency_window
        self._fit = _CostFit(alpha)
        self._lat: dict[int, float] = {}
        self.host_cpu = 0.0
        self.process_cpu = 0.0
        self.device_occupancy: tuple[float, ...] = ()
        self.device_up: tuple[bool, ...] = ()
        self.pipelined = False
        self._other: deque[float] = deque(maxlen=16)
        self._other_s = 0.0

    def record(self, task: Task, path: int, packets: int, nbytes: int, seconds: float) -> None:
        """One measured run of ``task`` on ``path``.

        Fits ``seconds = per_call + per_packet*packets + per_byte*nbytes`` by least
        squares over exponentially weighted sufficient statistics, so old runs fade.
        Terms the runs cannot tell apart are dropped (all the same packet size: no
        per-byte term; all the same count: no per-call term), and so is a fit with
        a negative term; at worst the whole cost is put on the per-packet term.
        """
        self._fit.record((task, path), packets, nbytes, seconds)

    def record_latency(self, path: int, seconds: float) -> None:
        old = self._lat.get(path)
        self._lat[path] = seconds if old is None else (1 - self.alpha) * old + self.alpha * seconds
        w = self._lat_window.get(path)
        if w is None:
            w = self._lat_window[path] = deque(maxlen=self._lat_len)
        w.append(seconds)

    def latency_quantile(self, path: int, q: float) -> float:
        """Quantile ``q`` (0..1) of the recent completed-batch latencies of ``path``."""
        w = self._lat_window.get(path)
        if not w:
            return 0.0
        xs = sorted(w)
        return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]

    def record_service(
        self, task: Task, path: int, packets: int, nbytes: int, seconds: float
    ) -> None:
        """A device's own service time for ``task`` over ``packets`` packets."""
        self._service.record((task, path), packets, nbytes, seconds)

    def record_crossing(self, path: int, packets: int, nbytes: int, seconds: float) -> None:
        """Host time spent crossing to device ``path`` (copies in and out)."""
        self._cross.record(path, packets, nbytes, seconds)

    def record_queue_wait(self, path: int, seconds: float, idle: bool = False) -> None:
        """Time a batch waited before device ``path`` took it; ``idle``: it was
        submitted while the device had nothing else (the wait is the doorbell's and
        the wake-up's, not that of batches ahead). The snapshot gives the median of
        the last 16 of the kind that applies (a delayed wake-up is an outlier):
        behind others while the device has work queued, else idle -- a backlog's
        waits say nothing of a batch that finds the device free."""
        key = (path, idle)
        w = self._qwait_window.get(key)
        if w is None:
            w = self._qwait_window[key] = deque(maxlen=16)
        w.append(seconds)
        xs = sorted(w)
        self._qwait[key] = xs[len(xs) // 2]

    def _queue_waits(self) -> dict[int, float]:
        out: dict[int, float] = {}
        occ = self.device_occupancy
        for path in {p for p, _ in self._qwait}:
            busy = self._qwait.get((path, False))
            idle = self._qwait.get((path, True))
            empty = path < len(occ) and occ[path] <= 0.0
            want, other = (idle, busy) if empty else (busy, idle)  # the kind that applies
            out[path] = want if want is not None else other or 0.0  # else the one measured
        return out

    def record_host_other(self, seconds: float) -> None:
        """Host time of one pipelined batch outside the software tasks (the engine
        measures it from one start to the next, less the time it waited for a
        device). The snapshot gives the median of the last 16."""
        self._other.append(max(0.0, seconds))
        xs = sorted(self._other)
        self._other_s = xs[len(xs) // 2]

    def set_host(self, host_cpu: float, process_cpu: float) -> None:
        self.host_cpu = host_cpu
        self.process_cpu = process_cpu

    def refresh(self, now: float) -> None:
        """Read the sampler if ``sample_every`` seconds of ``now`` have passed
        (moving averages with ``cpu_alpha``)."""
        if self.sampler is None:
            return
        if self._last_sample is not None and now - self._last_sample < self.sample_every:
            return
        first = self._last_sample is None
        self._last_sample = now
        host, proc = self.sampler.read()
        a = 1.0 if first else self.cpu_alpha
        self.host_cpu = (1 - a) * self.host_cpu + a * host
        self.process_cpu = (1 - a) * self.process_cpu + a * proc

    def set_devices(self, occupancy: tuple[float, ...], up: tuple[bool, ...]) -> None:
        self.device_occupancy = occupancy
        self.device_up = up

    def snapshot(self, now: float) -> LoadSnapshot:
        self.refresh(now)
        return LoadSnapshot(
            now=now,
            host_cpu=self.host_cpu,
            process_cpu=self.process_cpu,
            device_occupancy=self.device_occupancy,
            device_up=self.device_up,
            cost=self._fit.estimates(),
            latency_s=dict(self._lat),
            service=self._service.estimates(),
            crossing={k: v for (k, v) in self._cross.estimates().items()},
            queue_wait_s=self._queue_waits(),
            pipelined=self.pipelined,
            host_other_s=self._other_s,
        )


class _CostFit:
    """Per key: least-squares fit of seconds = per_call + per_packet*packets +
    per_byte*bytes over exponentially weighted sufficient statistics."""

    # moments kept: 1, n, b, nn, nb, bb, t, nt, bt. ``record`` only queues the
    # run (it happens for every task of every batch); the queue is folded into
    # the moments when an estimate is asked for (or it grows long), and the fit
    # is solved then, once per key recorded since.
    FOLD_AT = 1024

    def __init__(self, alpha: float) -> None:
        self.alpha = alpha
        self._st: dict[Any, list[float]] = {}
        self._samples: dict[Any, int] = {}
        self._queued: dict[Any, list[tuple[int, int, float]]] = {}
        self._fit: dict[Any, CostEstimate] = {}

    def record(self, key: Any, packets: int, nbytes: int, seconds: float) -> None:
        if packets <= 0 or seconds < 0:
            return
        q = self._queued.get(key)
        if q is None:
            q = self._queued[key] = []
        q.append((packets, nbytes, seconds))
        if len(q) >= self.FOLD_AT:
            self._fold(key, q)

    def _fold(self, key: Any, q: list[tuple[int, int, float]]) -> None:
        """Move the queued runs of ``key`` into its moments, oldest first: each
        run weighs ``alpha`` and fades by ``1 - alpha`` per later run (the very
        first run of a key is taken whole); then solve its fit."""
        if not q:
            return
        for packets, nbytes, seconds in q:
            self._add(key, packets, nbytes, seconds)
        q.clear()
        self._solve_key(key)

    def _solve_key(self, key: Any) -> None:
        c, pp, pb = _solve(self._st[key])
        self._fit[key] = CostEstimate(pp, pb, self._samples[key], c)

    def _add(self, key: Any, packets: int, nbytes: int, seconds: float) -> None:
        """One run into the moments of ``key``."""
        n, b, t = float(packets), float(nbytes), float(seconds)
        st = self._st.get(key)
        if st is None:
            self._st[key] = [1.0, n, b, n * n, n * b, b * b, t, n * t, b * t]
            self._samples[key] = 1
            return
        a = self.alpha
        k = 1.0 - a
        an, ab = a * n, a * b  # (unrolled: a snapshot folds every key recorded since)
        st[0] = k * st[0] + a
        st[1] = k * st[1] + an
        st[2] = k * st[2] + ab
        st[3] = k * st[3] + an * n
        st[4] = k * st[4] + an * b
        st[5] = k * st[5] + ab * b
        st[6] = k * st[6] + a * t
        st[7] = k * st[7] + an * t
        st[8] = k * st[8] + ab * t
        self._samples[key] += 1

    def estimates(self) -> dict[Any, CostEstimate]:
        for key, q in self._queued.items():
            if q:
                self._fold(key, q)
        return dict(self._fit)


def _solve(st: list[float]) -> tuple[float, float, float]:
    """(per_call, per_packet, per_byte) from the moments; see ``_CostFit``."""
    s1, sn, sb, snn, snb, sbb, _st, snt, sbt = st
    # the full fit, then the two-term ones, by Cramer's rule on the normal equations
    # a term may come out a rounding error below zero: tolerate, then clamp
    tc = 1e-6 * _st / s1 if s1 else 0.0
    tp = 1e-6 * _st / sn if sn else 0.0
    tb = 1e-6 * _st / sb if sb else 0.0
    # the symmetric matrix ((s1 sn sb) (sn snn snb) (sb snb sbb)): its cofactors
    c00 = snn * sbb - snb * snb
    c01 = sn * sbb - snb * sb
    c02 = sn * snb - snn * sb
    d3 = s1 * c00 - sn * c01 + sb * c02
    if d3 > 1e-9 * s1 * snn * sbb:
        # column j replaced by r = (_st, snt, sbt)
        c = (_st * c00 - sn * (snt * sbb - snb * sbt) + sb * (snt * snb - snn * sbt)) / d3
        pp = (s1 * (snt * sbb - snb * sbt) - _st * c01 + sb * (sn * sbt - snt * sb)) / d3
        pb = (s1 * (snn * sbt - snt * snb) - sn * (sn * sbt - snt * sb) + _st * c02) / d3
        if c >= -tc and pp >= -tp and pb >= -tb:
            return max(c, 0.0), max(pp, 0.0), max(pb, 0.0)
    d = s1 * snn - sn * sn  # per_call + per_packet
    if d > 1e-9 * s1 * snn:
        c = (_st * snn - snt * sn) / d
        pp = (snt * s1 - _st * sn) / d
        if c >= -tc and pp >= -tp:
            return max(c, 0.0), max(pp, 0.0), 0.0
    d = c00  # per_packet + per_byte
    if d > 1e-9 * snn * sbb:
        pp = (snt * sbb - sbt * snb) / d
        pb = (sbt * snn - snt * snb) / d
        if pp >= -tp and pb >= -tb:
            return 0.0, max(pp, 0.0), max(pb, 0.0)
    return 0.0, (snt / snn if snn else 0.0), 0.0
