"""The policy interface and the two static policies, Never and Always.

For each batch and task, a policy answers with one path per packet: -1 for the
software fallback, ``k`` for device ``k``. It sees the packet extensions (in the
batch), what each device can do now (its task offload buffer and a per-packet
capability mask), and a load snapshot. After the work it is told what happened
(``observe``), which is where load-aware policies learn and failover starts.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from netoffload.batch import Batch, Mask
from netoffload.caps import TaskOffloadBuffer
from netoffload.errors import ConfigError
from netoffload.policy.load import SOFTWARE, LoadSnapshot
from netoffload.tasks import Task

Paths = NDArray[np.int8]


@dataclass(frozen=True)
class DeviceView:
    """What a policy knows of one device."""

    index: int
    name: str
    buffer: TaskOffloadBuffer
    up: bool = True

    def capable(self, task: Task, batch: Batch) -> Mask:
        """Per packet: this task is enabled on the device and the packet is within limits."""
        if not self.up:
            return np.zeros(len(batch), dtype=np.bool_)
        return self.buffer.capable(task, batch.ext.l3_proto, batch.length)


@dataclass(frozen=True)
class Feedback:
    """What happened to one run of a task on one path."""

    task: Task
    path: int
    packets: int
    nbytes: int
    seconds: float
    now: float
    error: str = ""


class Policy(abc.ABC):
    name: str = "policy"

    @abc.abstractmethod
    def split(
        self,
        task: Task,
        batch: Batch,
        want: Mask,
        devices: Sequence[DeviceView],
        load: LoadSnapshot,
    ) -> Paths:
        """Per packet: -1 software, k device k. Only ``want`` packets matter."""

    def observe(self, fb: Feedback) -> None:
        """Learn from a completed run (costs, errors)."""

    def describe(self) -> dict[str, object]:
        return {"policy": self.name}


def software_paths(n: int) -> Paths:
    out = np.empty(n, dtype=np.int8)
    out.fill(SOFTWARE)  # (np.full is Python code around this: 4 vs 1 us)
    return out


class Never(Policy):
    """Every task in software."""

    name = "never"

    def split(
        self,
        task: Task,
        batch: Batch,
        want: Mask,
        devices: Sequence[DeviceView],
        load: LoadSnapshot,
    ) -> Paths:
        return software_paths(len(batch))


class Always(Policy):
    """Offload whenever a device is capable and has the task enabled (Linux / NDIS)."""

    name = "always"

    def split(
        self,
        task: Task,
        batch: Batch,
        want: Mask,
        devices: Sequence[DeviceView],
        load: LoadSnapshot,
    ) -> Paths:
        out = software_paths(len(batch))
        free = want.copy()
        for d in devices:
            if not free.any():
                break
            cap = d.capable(task, batch) & free
            out[cap] = d.index
            free &= ~cap
        return out


_REGISTRY: dict[str, Callable[[], Policy]] = {"never": Never, "always": Always}


def register_policy(name: str, factory: Callable[[], Policy]) -> None:
    _REGISTRY[name] = factory


def make_policy(name: str) -> Policy:
    f = _REGISTRY.get(name)
    if f is None:
        raise ConfigError(f"unknown policy {name!r} (known: {', '.join(sorted(_REGISTRY))})")
    return f()


def policy_names() -> list[str]:
    return sorted(_REGISTRY)
