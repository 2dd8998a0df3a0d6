"""Failover around any policy: a device error disables that task on that device
for a back-off, then the device is probed again.

``Failover(inner)`` asks ``inner`` for its split, then moves to software the
packets it gave to a (task, device) pair that is disabled. A pair is disabled
when a run of the task on the device reports an error (``Feedback.error``: the
submit was refused, the completion failed, the device died — the engine has
already redone those packets in software). Once ``backoff`` seconds (of the time
passed in with the load snapshot and the feedback) have passed, the inner
policy's decision is let through again: that batch is the probe. A probe that
succeeds re-enables the pair and resets its back-off; one that fails disables it
again for twice as long, up to ``max_backoff``.

Registered as ``NAME+failover`` for every policy (``never+failover``,
``always+failover``, ``threshold+failover``, ``adaptive+failover``); the
decisions are counted per task (``describe()``): disabled, probes, recovered,
and packets kept in software because of it (``suppressed``).
"""

from __future__ import annotations

from collections.abc import Sequence

from netoffload.batch import Batch, Mask
from netoffload.errors import ConfigError
from netoffload.policy.base import DeviceView, Feedback, Paths, Policy
from netoffload.policy.load import SOFTWARE, LoadSnapshot
from netoffload.policy.threshold import Tally
from netoffload.tasks import Task


class Failover(Policy):
    def __init__(self, inner: Policy, backoff: float = 0.5, max_backoff: float = 30.0) -> None:
        if backoff <= 0 or max_backoff < backoff:
            raise ConfigError("failover: need 0 < backoff <= max_backoff")
        self.inner = inner
        self.name = f"{inner.name}+failover"
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.disabled: dict[tuple[Task, int], float] = {}  # (task, device): until
        self.current: dict[tuple[Task, int], float] = {}  # back-off in force (until a success)
        self.probing: set[tuple[Task, int]] = set()
        self.tally = Tally()

    def is_disabled(self, task: Task, device: int, now: float) -> bool:
        until = self.disabled.get((task, device))
        return until is not None and now < until

    def split(
        self,
        task: Task,
        batch: Batch,
        want: Mask,
        devices: Sequence[DeviceView],
        load: LoadSnapshot,
    ) -> Paths:
        paths = self.inner.split(task, batch, want, devices, load)
        for (t, dev), until in list(self.disabled.items()):
            if t != task:
                continue
            sel = (paths == dev) & want
            if load.now < until:
                if sel.any():
                    paths[sel] = SOFTWARE
                    self.tally.bump(task, "suppressed", int(sel.sum()))
            elif sel.any():  # back-off over: this batch probes the device
                del self.disabled[(t, dev)]
                self.probing.add((t, dev))
                self.tally.bump(task, "probes")
        return paths

    def observe(self, fb: Feedback) -> None:
        self.inner.observe(fb)
        if fb.path == SOFTWARE:
            return
        key = (fb.task, fb.path)
        if fb.error:
            prev = self.current.get(key)
            b = self.backoff if prev is None else min(self.max_backoff, 2 * prev)
            self.current[key] = b
            self.disabled[key] = fb.now + b
            self.probing.discard(key)
            self.tally.bump(fb.task, "disabled")
        elif key in self.probing:  # the probe went through: back in service
            self.probing.discard(key)
            self.current.pop(key, None)
            self.tally.bump(fb.task, "recovered")

    def describe(self) -> dict[str, object]:
        d = dict(self.inner.describe())
        d["policy"] = self.name
        d["failover"] = {
            "backoff": self.backoff,
            "max_backoff": self.max_backoff,
            "disabled": {f"{t.kebab}@{dev}": until for (t, dev), until in self.disabled.items()},
            "decisions": self.tally.as_dict(),
        }
        return d
