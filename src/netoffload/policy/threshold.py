"""Threshold: offload a task once host load or batch size crosses a threshold.

Per task, the policy is *off* (software) or *on* (offload what a device can
do, as Always). It turns on when the host CPU reaches ``load_on`` or the
batch (the packets that want the task) reaches ``size_on`` packets, and turns
off only when both have fallen back, to ``load_off`` and ``size_off`` — the
gap between the two is the hysteresis that keeps it from flapping.
``size_on=0`` leaves batch size out. Host load is ``LoadSnapshot.host_cpu``
(utilisation of the host's cores, see ``policy.load.PsutilSampler``).

Its decisions are counted (``describe()``): per task, packets sent to a device
and kept in software, and how often the state flipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from netoffload.batch import Batch, Mask
from netoffload.errors import ConfigError
from netoffload.policy.base import DeviceView, Paths, Policy, software_paths
from netoffload.policy.load import SOFTWARE, LoadSnapshot
from netoffload.tasks import Task


@dataclass
class TaskTally:
    device: int = 0  # packets the policy sent to a device
    software: int = 0  # packets it kept in software
    extra: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        d: dict[str, object] = {"device": self.device, "software": self.software}
        d.update(self.extra)
        return d


class Tally:
    """Decision counters of a policy, per task."""

    def __init__(self) -> None:
        self.tasks: dict[Task, TaskTally] = {}

    def __getitem__(self, t: Task) -> TaskTally:
        c = self.tasks.get(t)
        if c is None:
            c = self.tasks[t] = TaskTally()
        return c

    def count(self, t: Task, paths: Paths, want: Mask) -> None:
        c = self[t]
        dev = int(np.count_nonzero((paths >= 0) & want))
        c.device += dev
        c.software += int(np.count_nonzero(want)) - dev

    def bump(self, t: Task, key: str, k: int = 1) -> None:
        c = self[t]
        c.extra[key] = c.extra.get(key, 0) + k

    def as_dict(self) -> dict[str, object]:
        return {t.kebab: c.as_dict() for t, c in self.tasks.items()}


def first_capable(
    task: Task, batch: Batch, sel: Mask, devices: Sequence[DeviceView], load: LoadSnapshot
) -> Paths:
    """``sel`` packets to the first up, capable device whose queue is not full."""
    out = software_paths(len(batch))
    free = sel.copy()
    for d in devices:
        if not free.any():
            break
        occ = load.device_occupancy[d.index] if d.index < len(load.device_occupancy) else 0.0
        if occ >= 1.0:
            continue
        cap = d.capable(task, batch) & free
        out[cap] = d.index
        free &= ~cap
    return out


def in_trip(batch: Batch, want: Mask) -> bool:
    """The engine is assembling a trip: ``want`` packets already carry offload bits."""
    off = batch.ext.offload
    if not np.count_nonzero(off):  # the usual case: no trip under way
        return False
    return bool(want.any() and (off[want] != 0).all())


class Threshold(Policy):
    """Offload when host load or batch size crosses a threshold, with hysteresis."""

    name = "threshold"

    def __init__(
        self,
        load_on: float = 0.85,
        load_off: float = 0.6,
        size_on: int = 0,
        size_off: int = 0,
    ) -> None:
        if not 0.0 <= load_off <= load_on:
            raise ConfigError(
                f"threshold: need 0 <= load_off <= load_on, got {load_off}, {load_on}"
            )
        if size_on < 0 or size_off < 0 or (size_on and size_off > size_on):
            raise ConfigError(
                f"threshold: need 0 <= size_off <= size_on, got {size_off}, {size_on}"
            )
        self.load_on = load_on
        self.load_off = load_off
        self.size_on = size_on
        self.size_off = size_off
        self.on: dict[Task, bool] = {}
        self.tally = Tally()

    def _update(self, task: Task, n: int, load: LoadSnapshot) -> bool:
        was = self.on.get(task, False)
        cpu = load.host_cpu
        if not was:
            now = cpu >= self.load_on or (self.size_on > 0 and n >= self.size_on)
        else:
            load_low = cpu <= self.load_off
            size_low = self.size_on == 0 or n <= self.size_off
            now = not (load_low and size_low)
        if now != was:
            self.on[task] = now
            self.tally.bump(task, "turned_on" if now else "turned_off")
        return now

    def split(
        self,
        task: Task,
        batch: Batch,
        want: Mask,
        devices: Sequence[DeviceView],
        load: LoadSnapshot,
    ) -> Paths:
        n = int(want.sum())
        # on the engine's look-ahead (a trip being assembled) keep the state, do not re-decide
        on = self.on.get(task, False) if in_trip(batch, want) else self._update(task, n, load)
        out = first_capable(task, batch, want, devices, load) if on else software_paths(len(batch))
        self.tally.count(task, out, want)
        return out

    def describe(self) -> dict[str, object]:
        return {
            "policy": self.name,
            "load_on": self.load_on,
            "load_off": self.load_off,
            "size_on": self.size_on,
            "size_off": self.size_off,
            "state": {t.kebab: ("on" if v else "off") for t, v in self.on.items()},
            "decisions": self.tally.as_dict(),
        }


__all__ = ["SOFTWARE", "Tally", "Threshold", "first_capable", "in_trip"]
