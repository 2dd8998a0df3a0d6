"""The software device: the software task library behind the device protocol.

In-process and synchronous; what it reports is exactly what its library can
do. Useful as a stand-in device in tests and as the model other devices
(loopback, emulated NIC) build on.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from time import perf_counter_ns

import numpy as np

from netoffload.batch import Batch
from netoffload.caps import CapRecord, TaskOffloadBuffer
from netoffload.devices.base import Completion, SyncDevice
from netoffload.sa import ALGORITHMS, DIGEST_ALGORITHMS
from netoffload.soft import SoftLibrary
from netoffload.tasks import Task


def run_assigned(soft: SoftLibrary, batch: Batch, order: Iterable[Task]) -> Batch:
    """Do, in ``order``, each task ``ext.offload`` assigns, for the packets it is assigned to."""
    out = batch
    for t in order:
        sel = ((out.ext.offload & t) != 0) & out.ext.alive()
        if sel.any():
            out = soft[t].process(out, sel)
            asked = (out.ext.offload & t) != 0
            out.ext.done[asked] |= np.uint16(t)
            out.ext.by_device[asked] |= np.uint16(t)
    return out


def library_record(t: Task, max_segments: int = 1, max_offload_size: int = 65535) -> CapRecord:
    """What a device that runs the software library does of task ``t``: its
    algorithms (ciphers, digests) and checksum modes are the library's."""
    algorithms: tuple[str, ...] = ()
    features: tuple[str, ...] = ()
    if t & (Task.ENCRYPT | Task.DECRYPT):
        algorithms = ALGORITHMS
    elif t is Task.DIGEST:
        algorithms = DIGEST_ALGORITHMS
    elif t is Task.CHECKSUM:
        features = ("fill", "verify", "partial")
    return CapRecord(
        t,
        max_offload_size=max_offload_size,
        min_segments=1,
        max_segments=max_segments,
        algorithms=algorithms,
        features=features,
    )


def default_records(tasks: Task, max_segments: int = 64) -> dict[Task, CapRecord]:
    return {
        t: library_record(t, max_segments if t & (Task.TCP_SEGMENT | Task.UDP_SEGMENT) else 1)
        for t in tasks.members()
    }


class SoftwareDevice(SyncDevice):
    """Does the work in-process with the software library."""

    def __init__(
        self,
        soft: SoftLibrary,
        name: str = "software",
        records: dict[Task, CapRecord] | None = None,
    ) -> None:
        super().__init__()
        self.name = name
        self.soft = soft
        self._records = records if records is not None else default_records(soft.tasks)

    def probe(self) -> TaskOffloadBuffer:
        return TaskOffloadBuffer(self.name, dict(self._records), {})

    def submit(self, batch: Batch, order: Sequence[Task]) -> int:
        self._ticket += 1
        self._account(batch)
        t0 = perf_counter_ns()
        out = run_assigned(self.soft, batch, order)
        self._done.append(Completion(self._ticket, out, True, "", perf_counter_ns() - t0))
        return self._ticket
