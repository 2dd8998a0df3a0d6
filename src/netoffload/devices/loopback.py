"""Loopback pair: a wire joining two engines, with the offloads of a veth-like NIC.

``LoopbackPair()`` has two ends, ``a`` and ``b``. What one end ``send``s the
other ``recv``s, in order, with a bounded queue (a full queue drops and counts,
as a NIC ring would). Each end reports the tasks it does on the way like a NIC
does (checksum fill on transmit, checksum check on receive), and does them with
the software library standing in for the NIC's hardware, so the results are
real; ``submit`` does the assigned tasks of a batch at once.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import numpy as np

from netoffload.batch import Batch, CsumVerdict, VnetFlag
from netoffload.caps import CapRecord, TaskOffloadBuffer
from netoffload.devices.base import Completion, DeviceLoad, SyncDevice, WireDevice
from netoffload.devices.software import run_assigned
from netoffload.soft import SoftLibrary
from netoffload.tasks import Task


class LoopbackEnd(SyncDevice, WireDevice):
    def __init__(self, name: str, soft: SoftLibrary, queue_packets: int) -> None:
        super().__init__()
        self.name = name
        self.soft = soft
        self.peer: LoopbackEnd | None = None
        self._rx: deque[Batch] = deque()
        self._rx_packets = 0
        self.capacity = queue_packets
        self.sent = 0
        self.received = 0
        self.rx_dropped = 0

    def probe(self) -> TaskOffloadBuffer:
        recs = {}
        if Task.CHECKSUM in self.soft:
            recs[Task.CHECKSUM] = CapRecord(Task.CHECKSUM, features=("fill", "verify"))
        return TaskOffloadBuffer(self.name, recs, {})

    def submit(self, batch: Batch, order: Sequence[Task]) -> int:
        self._ticket += 1
        self._account(batch)
        out = run_assigned(self.soft, batch, order)
        # a NIC that checked the checksum says so the way virtio does
        ok = (out.ext.by_device & Task.CHECKSUM) != 0
        good = ok & (out.ext.csum_verdict == CsumVerdict.GOOD)
        out.ext.vflags[good] |= np.uint8(VnetFlag.DATA_VALID)
        self._done.append(Completion(self._ticket, out))
        return self._ticket

    def send(self, batch: Batch) -> int:
        peer = self.peer
        if peer is None or len(batch) == 0:
            return 0
        room = peer.capacity - peer._rx_packets
        if room <= 0:
            peer.rx_dropped += len(batch)
            return 0
        if room < len(batch):
            peer.rx_dropped += len(batch) - room
            batch = batch.take(np.arange(room))
        # what crosses a wire is bytes: the receiver starts with a fresh extension
        wire = Batch.from_packets(batch.packets())
        peer._rx.append(wire)
        peer._rx_packets += len(wire)
        self.sent += len(wire)
        return len(wire)

    def recv(self, max_packets: int = 1024) -> Batch:
        parts: list[Batch] = []
        got = 0
        while self._rx and got < max_packets:
            b = self._rx[0]
            take = min(len(b), max_packets - got)
            if take == len(b):
                parts.append(self._rx.popleft())
            else:
                parts.append(b.take(np.arange(take)))
                self._rx[0] = b.take(np.arange(take, len(b)))
            got += take
        self._rx_packets -= got
        self.received += got
        return Batch.concat(parts)

    def load(self) -> DeviceLoad:
        return DeviceLoad(self._rx_packets, self.capacity, True)

    def counters(self) -> dict[str, object]:
        d = dict(self.stats.as_dict())
        d.update(sent=self.sent, received=self.received, rx_dropped=self.rx_dropped)
        return d


class LoopbackPair:
    """Two joined ends."""

    def __init__(self, soft: SoftLibrary, queue_packets: int = 1 << 16) -> None:
        self.a = LoopbackEnd("loop-a", soft, queue_packets)
        self.b = LoopbackEnd("loop-b", soft, queue_packets)
        self.a.peer = self.b
        self.b.peer = self.a
