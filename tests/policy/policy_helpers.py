"""Fake devices, batches and load snapshots for deterministic policy tests."""

from __future__ import annotations

import numpy as np

from netoffload.batch import Batch
from netoffload.caps import CapRecord, TaskOffloadBuffer
from netoffload.policy.base import DeviceView
from netoffload.policy.load import SOFTWARE, CostEstimate, LoadSnapshot
from netoffload.tasks import Task


def view(
    tasks: Task = Task.CHECKSUM, index: int = 0, up: bool = True, max_size: int = 9000
) -> DeviceView:
    recs = {t: CapRecord(t, max_offload_size=max_size) for t in tasks.members()}
    buf = TaskOffloadBuffer(f"fake{index}", recs, {}).enable(*tasks.members())
    return DeviceView(index, f"fake{index}", buf, up)


def batch(n: int, size: int = 1000, tasks: Task = Task.CHECKSUM) -> Batch:
    b = Batch.alloc([size] * n)
    b.ext.l3_proto[:] = 4
    b.ext.tasks[:] = tasks
    return b


def snap(
    now: float = 0.0,
    host_cpu: float = 0.0,
    process_cpu: float = 0.0,
    sw: dict[Task, float] | None = None,
    dev: dict[Task, float] | None = None,
    crossing: float | None = None,
    wait: float = 0.0,
    occupancy: float = 0.0,
) -> LoadSnapshot:
    """Costs are per packet (seconds); ``dev`` is the device's own service cost."""
    cost = {(t, SOFTWARE): CostEstimate(c, 0.0, 5) for t, c in (sw or {}).items()}
    service = {(t, 0): CostEstimate(c, 0.0, 5) for t, c in (dev or {}).items()}
    cross = {0: CostEstimate(crossing, 0.0, 5)} if crossing is not None else {}
    return LoadSnapshot(
        now=now,
        host_cpu=host_cpu,
        process_cpu=process_cpu,
        device_occupancy=(occupancy,),
        device_up=(True,),
        cost=cost,
        service=service,
        crossing=cross,
        queue_wait_s={0: wait},
    )


def want(n: int) -> np.ndarray:  # type: ignore[type-arg]
    return np.ones(n, dtype=np.bool_)
