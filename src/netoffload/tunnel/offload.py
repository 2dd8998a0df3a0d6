"""The devices of the tunnel's two engines, and what the kernel does outside them.

``TunnelOffload(mode, ifname, datapath)`` builds, for ``Tunnel``:

transmit engine devices
    ``nic=crypto``: the emulated crypto NIC of the transmit side
    (``emulated-nic:crypto/tx``), doing ``encrypt`` (WireGuard transport,
    ``tunnel/nic.py``). ``nic=none``: no device (every stage in software).
receive engine devices
    ``tun:IFACE`` (``TunChecksum``), doing ``checksum``: the packet is written to
    the TUN with ``VIRTIO_NET_HDR_F_DATA_VALID`` and the kernel accepts it
    without verifying its TCP/UDP checksum (CHECKSUM_UNNECESSARY), as kernel
    WireGuard does after the AEAD authenticated the packet -- the software path
    recomputes and verifies it instead. ``nic=crypto`` adds the receive side's
    emulated crypto NIC (``emulated-nic:crypto/rx``), doing ``decrypt``.

The policy (``--policy``/``--policy-file``, default adaptive) splits each task
per packet between these and software; the engine counters say which did what.

Two tasks the kernel does for the tunnel are not engine stages, since no
software path competes for them: the outer ``udp-segment`` (consecutive
datagrams to one peer leave in one ``UDP_SEGMENT`` send) and the outer
``udp-assemble`` (``UDP_GRO`` reads). ``outer_rows(udp)`` gives their counts
in the shape of the engine's task counters (device = datagrams the kernel
segmented or coalesced; software = 0, there is none), for ``Tunnel.status``.

The NIC processes are pinned to the highest CPU this process may use and the
tunnel's process is kept off it while they run (a NIC polls its ring on its
core); ``close()`` stops them, removes the key table and restores the affinity.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from netoffload.batch import Batch, CsumVerdict, FilterVerdict, VnetFlag
from netoffload.caps import CapRecord, TaskOffloadBuffer
from netoffload.devices.base import Completion, Device, SyncDevice
from netoffload.devices.emulated_nic import EmulatedNIC
from netoffload.engine import Engine, TaskCounters
from netoffload.errors import ConfigError
from netoffload.tasks import Task, bit16
from netoffload.tunnel import datapath as dpm
from netoffload.tunnel.datapath import Datapath
from netoffload.tunnel.nic import KeyTable, WgNicLibrary

NIC_MODES = ("none", "crypto")

_U_CSUM = bit16(Task.CHECKSUM)
_U_DEC = bit16(Task.DECRYPT)
_DATA_VALID = np.uint8(VnetFlag.DATA_VALID)
_I_CSUM, _I_DEC, _I_DATA_VALID = int(_U_CSUM), int(_U_DEC), int(VnetFlag.DATA_VALID)
_GOOD = int(CsumVerdict.GOOD)
_DROP = int(FilterVerdict.DROP)

#: the tunnel's NIC: ring regions that hold a whole transmit batch after
#: segmentation (a 4 MiB TUN read cut to ~1.4 KB packets), few of them (the
#: tunnel has one trip in flight per engine)
NIC_REGION_BYTES = 8 << 20
NIC_SLOTS = 2
NIC_QUEUE_DEPTH = 16384
#: how long a NIC polls its ring after a batch before it sleeps on its doorbell.
#: The tunnel's loop waits for each trip (one batch in flight per engine), so a
#: poll only burns the NIC's core -- on a small machine the core the peer, the
#: applications and the host share: 2 ms (the NIC's default, for pipelined
#: benchmarks) took a wg-go <-> netoffload iperf3 run from ~130 to 4-10 Mbit/s here.
NIC_SPIN_S = 0.0
#: keep the tunnel's process off the NICs' core
PIN_HOST = True


class TunChecksum(SyncDevice):
    """Receive ``checksum`` by the kernel behind the TUN the tunnel writes to.

    For each packet given, decrypted (authenticated) by the data path: the
    verdict becomes GOOD and the packet is marked ``DATA_VALID``, so the TUN
    write tells the kernel the checksum needs no check (CHECKSUM_UNNECESSARY).
    A packet that was not authenticated here (not possible in the tunnel's
    stage order) is left unmarked: the kernel then verifies it itself."""

    def __init__(self, ifname: str) -> None:
        super().__init__()
        self.name = f"tun:{ifname}"
        self.marked = 0  # packets handed to the kernel as DATA_VALID
        self.left = 0  # packets given that were not authenticated: the kernel checks them
        self.enable(Task.CHECKSUM)

    def probe(self) -> TaskOffloadBuffer:
        rec = CapRecord(Task.CHECKSUM, features=("verify", "data-valid"))
        return TaskOffloadBuffer(self.name, {Task.CHECKSUM: rec}, {})

    def submit(self, batch: Batch, order: Sequence[Task]) -> int:
        self._ticket += 1
        self._account(batch)
        e = batch.ext
        if len(batch.length) <= dpm.SMALL:  # a few packets: plain ints (a numpy call each ~1 us)
            off = e.offload.tolist()
            if not any(o & ~_I_CSUM for o in off):
                self._small(batch, off)
                self._done.append(Completion(self._ticket, batch))
                return self._ticket
        asked = (e.offload & _U_CSUM) != 0
        if (e.offload & ~_U_CSUM).any():
            self.stats.errors += 1
            self._done.append(Completion(self._ticket, batch, False, f"{self.name}: checksum only"))
            return self._ticket
        rows = asked & e.alive()
        auth = rows & ((e.done & _U_DEC) != 0)
        e.csum_verdict[auth] = CsumVerdict.GOOD
        e.vflags[auth] |= _DATA_VALID
        e.done[asked] |= _U_CSUM
        e.by_device[asked] |= _U_CSUM
        self.marked += int(np.count_nonzero(auth))
        self.left += int(np.count_nonzero(rows & ~auth))
        self._done.append(Completion(self._ticket, batch))
        return self._ticket

    def _small(self, batch: Batch, off: list[int]) -> None:
        """``submit``'s work, a packet at a time (the same result)."""
        e = batch.ext
        err = e.error.tolist()
        verdict = e.filter_verdict.tolist()
        done = e.done.tolist()
        for i, o in enumerate(off):
            if not o & _I_CSUM:
                continue
            if not err[i] and verdict[i] != _DROP:
                if done[i] & _I_DEC:
                    e.csum_verdict[i] = _GOOD
                    e.vflags[i] |= _I_DATA_VALID
                    self.marked += 1
                else:
                    self.left += 1
            e.done[i] = done[i] | _I_CSUM
            e.by_device[i] |= _I_CSUM

    def counters(self) -> dict[str, object]:
        return {**self.stats.as_dict(), "data_valid": self.marked, "kernel_verifies": self.left}

    def describe(self) -> dict[str, object]:
        return {
            "device": self.name,
            "tasks": ["checksum"],
            "how": "written with DATA_VALID: the kernel accepts the AEAD-authenticated "
            "packet without verifying its checksum (as kernel WireGuard)",
        }


class TunnelOffload:
    """The engines' devices for NIC mode ``mode`` (``none``/``crypto``) and their life."""

    def __init__(
        self,
        mode: str,
        ifname: str,
        dp: Datapath,
        *,
        region_bytes: int = NIC_REGION_BYTES,
        core: int | None = -1,
        pin_host: bool = PIN_HOST,
        spin_s: float = NIC_SPIN_S,
    ) -> None:
        if mode not in NIC_MODES:
            raise ConfigError(f"nic {mode!r}: not one of {', '.join(NIC_MODES)}")
        self.mode = mode
        self.tun_csum = TunChecksum(ifname)
        self.table: KeyTable | None = None
        self.nic_tx: EmulatedNIC | None = None
        self.nic_rx: EmulatedNIC | None = None
        self._affinity: set[int] | None = None
        if mode == "crypto":
            try:
                self.table = KeyTable()
                self.table.bind(dp)
                self.nic_tx = _nic(self.table, Task.ENCRYPT, "tx", region_bytes, core, spin_s)
                self.nic_rx = _nic(self.table, Task.DECRYPT, "rx", region_bytes, core, spin_s)
                if pin_host:
                    self._off_nic_core()
            except BaseException:
                self.close()
                raise

    @property
    def tx_devices(self) -> list[Device]:
        return [self.nic_tx] if self.nic_tx is not None else []

    @property
    def rx_devices(self) -> list[Device]:
        out: list[Device] = [self.tun_csum]
        if self.nic_rx is not None:
            out.append(self.nic_rx)
        return out

    def attach(self, tx: Engine, rx: Engine) -> None:
        """Have the NICs report their service time, queue wait and crossing cost
        to their engine's load monitor."""
        for eng in (tx, rx):
            for k, dev in enumerate(eng.devices):
                if isinstance(dev, EmulatedNIC):
                    dev.attach(eng.monitor, k)

    def _off_nic_core(self) -> None:
        cores = {n.core for n in (self.nic_tx, self.nic_rx) if n is not None and n.core is not None}
        try:
            old = os.sched_getaffinity(0)
        except (AttributeError, OSError):
            return
        rest = old - cores
        if cores and rest and rest != old:
            os.sched_setaffinity(0, rest)
            self._affinity = old

    def describe(self) -> dict[str, Any]:
        """What each engine's devices do (for ``netoffload show``)."""
        tx: list[dict[str, object]] = []
        rx: list[dict[str, object]] = [self.tun_csum.describe()]
        for nic, side, task in ((self.nic_tx, tx, "encrypt"), (self.nic_rx, rx, "decrypt")):
            if nic is not None:
                side.append(
                    {
                        "device": nic.name,
                        "tasks": [task],
                        "pid": nic.pid,
                        "core": nic.core,
                        "how": "WireGuard transport (ChaCha20-Poly1305) in the emulated "
                        f"NIC process (pid {nic.pid}, core {nic.core}); keys from the "
                        "shared-memory key table, counters and replay window on the host",
                    }
                )
        return {"nic": self.mode, "transmit": tx, "receive": rx}

    def counters(self) -> dict[str, Any]:
        out: dict[str, Any] = {self.tun_csum.name: self.tun_csum.counters()}
        for nic in (self.nic_tx, self.nic_rx):
            if nic is not None:
                out[nic.name] = dict(nic.counters())
        if self.table is not None:
            out["key-table"] = {
                "entries": self.table.held(),
                "writes": self.table.writes,
                "endpoint_writes": self.table.endpoint_writes,
            }
        return out

    @property
    def pids(self) -> list[int]:
        return [n.pid for n in (self.nic_tx, self.nic_rx) if n is not None and n.pid is not None]

    def close(self) -> None:
        """Stop the NIC processes, zero and remove the key table, restore the
        process's CPU affinity (idempotent)."""
        for nic in (self.nic_tx, self.nic_rx):
            if nic is not None:
                with contextlib.suppress(Exception):
                    nic.close()
        if self.table is not None:
            with contextlib.suppress(Exception):
                self.table.close()
        if self._affinity is not None:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(0, self._affinity)
            self._affinity = None


def _nic(
    table: KeyTable, task: Task, side: str, region_bytes: int, core: int | None, spin_s: float
) -> EmulatedNIC:
    return EmulatedNIC(
        "crypto",
        library=WgNicLibrary(table.spec, task),
        name=f"emulated-nic:crypto/{side}",
        region_bytes=region_bytes,
        slots=NIC_SLOTS,
        queue_depth=NIC_QUEUE_DEPTH,
        core=core,
        spin_s=spin_s,
    )


def outer_rows(udp: Any) -> tuple[dict[str, dict[str, object]], dict[str, dict[str, object]]]:
    """(transmit, receive) rows for the outer UDP tasks the kernel does at the
    socket, shaped as engine task counters (``udp``: the tunnel's UdpIpDevice)."""
    if udp is None:
        return {}, {}
    seg = TaskCounters(offloaded=int(getattr(udp, "gso_datagrams_out", 0))).as_dict()
    seg["note"] = "kernel: datagrams sent in UDP_SEGMENT sends (no software path)"
    asm = TaskCounters(offloaded=int(getattr(udp, "gro_datagrams_in", 0))).as_dict()
    asm["note"] = "kernel: datagrams received coalesced by UDP_GRO (no software path)"
    return {"udp-segment (outer)": seg}, {"udp-assemble (outer)": asm}
