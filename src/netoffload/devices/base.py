"""The device protocol.

A device answers ``query()`` with its task offload buffer, accepts ``enable()``
of what it reported, and does work on batches: ``submit(batch)`` hands over
packets whose ``ext.offload`` bits say which tasks the device must do for each
packet; ``poll()`` returns ``Completion``s in submission order. A device keeps
counters and reports a load signal (queue occupancy).

Devices that are also a wire (loopback, TUN, sockets) add ``send``/``recv``.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from netoffload.batch import Batch, Mask
from netoffload.caps import Enabled, TaskOffloadBuffer
from netoffload.errors import DeviceError
from netoffload.tasks import Task, bit16, members_of


@dataclass(frozen=True)
class DeviceLoad:
    """A device's load signal."""

    queued: int = 0  # packets submitted, not yet completed
    capacity: int = 0  # queue capacity in packets (0: unbounded / synchronous)
    up: bool = True

    @property
    def occupancy(self) -> float:
        return self.queued / self.capacity if self.capacity else 0.0


@dataclass
class Completion:
    """The outcome of one submit: the processed batch, or why it failed.

    On failure ``batch`` is the batch as submitted (untouched), so the engine
    can redo the work in software; none of its packets is lost or duplicated.
    """

    ticket: int
    batch: Batch
    ok: bool = True
    error: str = ""
    elapsed_ns: int = 0  # device-side service time, when known


@dataclass
class DeviceCounters:
    submits: int = 0
    packets: int = 0
    bytes: int = 0
    errors: int = 0
    per_task: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {
            "submits": self.submits,
            "packets": self.packets,
            "bytes": self.bytes,
            "errors": self.errors,
            "per_task": dict(self.per_task),
        }


class Device(abc.ABC):
    """Base of every device."""

    name: str = "device"

    def __init__(self) -> None:
        self._buffer: TaskOffloadBuffer | None = None
        self.stats = DeviceCounters()
        self._ready: list[Completion] = []

    # -- capabilities -------------------------------------------------------
    @abc.abstractmethod
    def probe(self) -> TaskOffloadBuffer:
        """Ask the hardware what it can do (nothing enabled)."""

    def query(self) -> TaskOffloadBuffer:
        if self._buffer is None:
            self._buffer = self.probe()
        return self._buffer

    def enable(self, *reqs: Enabled | Task) -> TaskOffloadBuffer:
        """Enable tasks (only what was reported, within limits)."""
        buf = self.query().enable(*reqs)
        self._apply_enable(buf)
        self._buffer = buf
        return buf

    def disable(self, tasks: Task) -> TaskOffloadBuffer:
        buf = self.query().disable(tasks)
        self._apply_enable(buf)
        self._buffer = buf
        return buf

    def _apply_enable(self, buf: TaskOffloadBuffer) -> None:
        """Hook: push the enabled set to the hardware."""

    # -- work ---------------------------------------------------------------
    @abc.abstractmethod
    def submit(self, batch: Batch, order: Sequence[Task]) -> int:
        """Hand over a batch; per packet, ``ext.offload`` names the tasks to do,
        to be done in ``order`` (the engine's stage order).

        Returns a ticket. Raises DeviceError if the device refuses the batch
        (then nothing was taken).
        """

    def submit_limit(self, batch: Batch, sel: Mask) -> int:
        """How many of the ``sel`` packets of ``batch``, counted from the last, the
        device takes in one submit (a ring region's size, say); the engine keeps
        the others in software rather than have the whole trip refused. By
        default: all of them."""
        return int(np.count_nonzero(sel))

    def submit_owned(self, batch: Batch, order: Sequence[Task]) -> int:
        """As ``submit``, but the caller gives ``batch`` away until completion: the
        device may write its output into it (when the layout allows) and complete
        with that very batch, saving a copy. A failed completion still carries the
        batch as submitted. By default the same as ``submit``."""
        return self.submit(batch, order)

    @abc.abstractmethod
    def poll(self, wait: bool = True) -> list[Completion]:
        """Completed submits, in submission order (wait for at least one if asked)."""

    def complete(self, ticket: int) -> Completion:
        """Wait for one ticket (completions of earlier tickets are kept)."""
        while True:
            for c in self._ready:
                if c.ticket == ticket:
                    self._ready.remove(c)
                    return c
            got = self.poll(wait=True)
            if not got and not self.outstanding():
                raise DeviceError(f"{self.name}: ticket {ticket} is unknown")
            self._ready.extend(got)

    def outstanding(self) -> int:
        """Submits not yet completed."""
        return 0

    def load(self) -> DeviceLoad:
        return DeviceLoad()

    def counters(self) -> Mapping[str, object]:
        return self.stats.as_dict()

    def close(self) -> None:
        """Release resources; idempotent."""

    def __enter__(self) -> Device:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # helpers for subclasses
    def _account(self, batch: Batch, tally: OffloadTally | None = None) -> None:
        """Count a submit; ``tally``: ``offload_tally(batch)`` if the caller has it."""
        self.stats.submits += 1
        self.stats.packets += len(batch)
        self.stats.bytes += batch.nbytes
        per = self.stats.per_task
        for t, n, _ in offload_tally(batch) if tally is None else tally:
            per[t.kebab] = per.get(t.kebab, 0) + n


class SyncDevice(Device):
    """A device that does its work inside ``submit`` (software, a wire, the
    kernel): each completion waits in a list until ``poll``."""

    def __init__(self) -> None:
        super().__init__()
        self._done: list[Completion] = []
        self._ticket = 0

    def poll(self, wait: bool = True) -> list[Completion]:
        done, self._done = self._done, []
        return done

    def outstanding(self) -> int:
        return len(self._done)


class WireDevice(Device):
    """A device that is also a wire: packets can be sent and received."""

    @abc.abstractmethod
    def send(self, batch: Batch) -> int:
        """Transmit the batch; returns the number of packets accepted."""

    @abc.abstractmethod
    def recv(self, max_packets: int = 1024) -> Batch:
        """Received packets (possibly none), with their receive-side extensions."""


#: per task asked of a device: (task, packets, bytes)
OffloadTally = tuple[tuple[Task, int, int], ...]


def offload_tally(batch: Batch) -> OffloadTally:
    """Per task that ``ext.offload`` asks of some packet of ``batch``: the packets
    asking it and their bytes, in task id order. When every packet asks the same
    set (a whole trip, the usual case) it takes three reductions in all."""
    n = len(batch)
    if not n:
        return ()
    off = batch.ext.offload
    lo, hi = int(off.min()), int(off.max())
    if lo == hi:
        if not lo:
            return ()
        nb = int(np.add.reduce(batch.length))
        return tuple((t, n, nb) for t in members_of(lo))
    out = []
    for t in members_of(int(np.bitwise_or.reduce(off))):
        sel = (off & bit16(t)) != 0
        out.append((t, int(np.count_nonzero(sel)), int(np.add.reduce(batch.length[sel]))))
    return tuple(out)
