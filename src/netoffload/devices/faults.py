"""Fault-injecting middleware: wraps any device and fails chosen submits.

Failures are chosen by a seeded random share, by every n-th submit, or by a
predicate; a failure either refuses the submit (``DeviceError`` at submit
time) or completes it with ``ok=False`` (the device "lost" the work). Either
way the engine must redo the work in software with nothing lost.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence

from netoffload.batch import Batch
from netoffload.caps import Enabled, TaskOffloadBuffer
from netoffload.devices.base import Completion, Device, DeviceLoad
from netoffload.errors import ConfigError, DeviceError
from netoffload.tasks import Task


class FaultInjector(Device):
    def __init__(
        self,
        inner: Device,
        share: float = 0.0,
        every: int = 0,
        when: Callable[[int, Batch], bool] | None = None,
        mode: str = "refuse",
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not 0.0 <= share <= 1.0:
            raise ConfigError(f"fault share must be within [0, 1], not {share}")
        if mode not in ("refuse", "fail"):
            raise ConfigError(f"fault mode must be 'refuse' or 'fail', not {mode!r}")
        self.inner = inner
        self.name = f"faulty({inner.name})"
        self.share = share
        self.every = every
        self.when = when
        self.mode = mode
        self._rng = random.Random(seed)
        self._n = 0
        self._failed: dict[int, Completion] = {}
        self._ticket_map: dict[int, int] = {}
        self._ticket = 0
        self.injected = 0

    def probe(self) -> TaskOffloadBuffer:
        return self.inner.query()

    def enable(self, *reqs: Enabled | Task) -> TaskOffloadBuffer:
        buf = self.inner.enable(*reqs)
        self._buffer = buf
        return buf

    def _should_fail(self, batch: Batch) -> bool:
        self._n += 1
        if self.every and self._n % self.every == 0:
            return True
        if self.when is not None and self.when(self._n, batch):
            return True
        return self.share > 0 and self._rng.random() < self.share

    def submit(self, batch: Batch, order: Sequence[Task]) -> int:
        self._ticket += 1
        if self._should_fail(batch):
            self.injected += 1
            self.stats.errors += 1
            if self.mode == "refuse":
                raise DeviceError(f"{self.name}: injected submit failure #{self.injected}")
            self._failed[self._ticket] = Completion(
                self._ticket, batch, False, f"injected completion failure #{self.injected}"
            )
            return self._ticket
        inner_ticket = self.inner.submit(batch, order)
        self._ticket_map[self._ticket] = inner_ticket
        return self._ticket

    def complete(self, ticket: int) -> Completion:
        failed = self._failed.pop(ticket, None)
        if failed is not None:
            return failed
        inner = self._ticket_map.pop(ticket, None)
        if inner is None:
            raise DeviceError(f"{self.name}: ticket {ticket} is unknown")
        c = self.inner.complete(inner)
        return Completion(ticket, c.batch, c.ok, c.error, c.elapsed_ns)

    def poll(self, wait: bool = True) -> list[Completion]:
        out = [self._failed.pop(t) for t in sorted(self._failed)]
        back = {v: k for k, v in self._ticket_map.items()}
        for c in self.inner.poll(wait):
            mine = back.get(c.ticket)
            if mine is not None:
                del self._ticket_map[mine]
                out.append(Completion(mine, c.batch, c.ok, c.error, c.elapsed_ns))
        return out

    def outstanding(self) -> int:
        return len(self._failed) + len(self._ticket_map)

    def load(self) -> DeviceLoad:
        return self.inner.load()

    def counters(self) -> Mapping[str, object]:
        d = dict(self.inner.counters())
        d["injected_failures"] = self.injected
        return d

    def close(self) -> None:
        self.inner.close()
