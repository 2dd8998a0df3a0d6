"""Load snapshot and the monitor that produces it (sans-IO: time is passed in).

The engine feeds the monitor with what it measures (per task and path: packets,
bytes, nanoseconds); the monitor keeps exponentially weighted moving averages
of the cost per packet and per byte of each path, and a host-CPU reading
supplied by the caller. ``snapshot(now)`` freezes all of it for a policy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from netoffload.tasks import Task

SOFTWARE = -1  # path id of the software fallback; devices are 0, 1, ...


@dataclass(frozen=True)
class CostEstimate:
    """Predicted cost of one path for one task: time = per_packet*n + per_byte*bytes."""

    per_packet_s: float = 0.0
    per_byte_s: float = 0.0
    samples: int = 0

    def predict(self, packets: int, nbytes: int) -> float:
        return self.per_packet_s * packets + self.per_byte_s * nbytes


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

    def estimate(self, task: Task, path: int) -> CostEstimate:
        return self.cost.get((task, path), CostEstimate())


class LoadMonitor:
    """Moving averages of measured costs; host load passed in by the caller."""

    def __init__(self, alpha: float = 0.2) -> None:
        if not 0 < alpha <= 1:
            raise ValueError("alpha must be in (0, 1]")
        self.alpha = alpha
        self._pp: dict[tuple[Task, int], float] = {}
        self._pb: dict[tuple[Task, int], float] = {}
        self._n: dict[tuple[Task, int], int] = {}
        self._stats: dict[tuple[Task, int], list[float]] = {}
        self._lat: dict[int, float] = {}
        self.host_cpu = 0.0
        self.process_cpu = 0.0
        self.device_occupancy: tuple[float, ...] = ()
        self.device_up: tuple[bool, ...] = ()

    def record(self, task: Task, path: int, packets: int, nbytes: int, seconds: float) -> None:
        """One measured run of ``task`` on ``path``.

        Fits ``seconds = per_packet*packets + per_byte*nbytes`` by least squares
        over exponentially weighted sufficient statistics, so old runs fade.
        While the runs do not tell the two apart (all the same packet size), the
        whole cost is put on the per-packet term at the mean size.
        """
        if packets <= 0 or seconds < 0:
            return
        key = (task, path)
        st = self._stats.setdefault(key, [0.0] * 5)
        a = self.alpha if key in self._n else 1.0
        n, b, t = float(packets), float(nbytes), float(seconds)
        for i, v in enumerate((n * n, n * b, b * b, n * t, b * t)):
            st[i] = (1 - a) * st[i] + a * v
        snn, snb, sbb, snt, sbt = st
        det = snn * sbb - snb * snb
        pp = pb = -1.0
        if det > 1e-9 * snn * sbb:
            pp = (snt * sbb - sbt * snb) / det
            pb = (sbt * snn - snt * snb) / det
        if pp < 0 or pb < 0:  # singular or not physical: one-term fit
            pp, pb = (snt / snn if snn else 0.0), 0.0
        self._pp[key] = pp
        self._pb[key] = pb
        self._n[key] = self._n.get(key, 0) + 1

    def record_latency(self, path: int, seconds: float) -> None:
        old = self._lat.get(path)
        self._lat[path] = seconds if old is None else (1 - self.alpha) * old + self.alpha * seconds

    def set_host(self, host_cpu: float, process_cpu: float) -> None:
        self.host_cpu = host_cpu
        self.process_cpu = process_cpu

    def set_devices(self, occupancy: tuple[float, ...], up: tuple[bool, ...]) -> None:
        self.device_occupancy = occupancy
        self.device_up = up

    def snapshot(self, now: float) -> LoadSnapshot:
        return LoadSnapshot(
            now=now,
            host_cpu=self.host_cpu,
            process_cpu=self.process_cpu,
            device_occupancy=self.device_occupancy,
            device_up=self.device_up,
            cost={k: CostEstimate(self._pp[k], self._pb[k], self._n[k]) for k in self._n},
            latency_s=dict(self._lat),
        )
