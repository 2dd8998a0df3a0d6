"""Packet socket (AF_PACKET) on a veth the project created, with PACKET_VNET_HDR.

Every frame read or written carries a ``virtio_net_hdr`` (built from / turned
into the packet extension at this boundary only, as for TUN). Written frames
are Ethernet frames leaving the veth: with ``NEEDS_CSUM`` the kernel fills the
checksum, with a GSO header it segments (in software if the veth has TSO off,
else the super-frame travels to the peer whole, as on a real NIC with TSO).
Read frames are what arrives on the veth: GSO super-frames (the peer sent
with TSO/GSO, or GRO ran) and ``NEEDS_CSUM``/``DATA_VALID`` flags become
receive-side results.

Several workers: ``PacketDevice.fanout_group`` opens N sockets in one
``PACKET_FANOUT`` group in hash mode; the kernel spreads flows by the RSS hash.
Push-down: ``SO_ATTACH_FILTER`` (offset 0 is the Ethernet header).

Only interfaces inside namespaces this process created may be opened.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from netoffload.batch import (
    VNET_HDR_LEN,
    Batch,
    FilterVerdict,
    GsoType,
    Reason,
    VnetFlag,
    XFlag,
    ext_to_vnet,
    vnet_to_ext,
)
from netoffload.caps import CapRecord, TaskOffloadBuffer
from netoffload.devices import kernel_common as kc
from netoffload.devices.base import Completion, DeviceLoad, WireDevice
from netoffload.devices.registry import register_device
from netoffload.devices.tun import GSO_MAX_SEGS, TX_TASKS, prepare_tx, rx_csum_results
from netoffload.errors import ConfigError, DeviceDown, DeviceError
from netoffload.tasks import Task
from netoffload.wire.parse import parse_batch

_GONE = (errno.ENODEV, errno.ENXIO, errno.ENETDOWN, errno.EBADF)
_fanout_ids = iter(range(0x4E00 + (os.getpid() & 0xFF), 0xFFFF))


@dataclass
class PacketCounters:
    written: int = 0
    read: int = 0
    write_errors: int = 0
    tx_dropped: int = 0
    gso_in: int = 0
    errno_counts: dict[str, int] = field(default_factory=dict)

    def note(self, e: OSError) -> None:
        name = errno.errorcode.get(e.errno or 0, str(e.errno))
        self.errno_counts[name] = self.errno_counts.get(name, 0) + 1


class PacketDevice(WireDevice):
    """An AF_PACKET socket bound to one interface of one of our namespaces."""

    def __init__(
        self,
        sock: socket.socket,
        ifname: str,
        *,
        vnet_hdr: bool,
        io_timeout: float = 0.5,
        owns: object | None = None,
    ) -> None:
        super().__init__()
        self.sock = sock
        sock.setblocking(False)
        self.ifname = ifname
        self.vnet_hdr = vnet_hdr
        self._vlen = VNET_HDR_LEN if vnet_hdr else 0
        self.name = f"packet:{ifname}"
        self.io_timeout = io_timeout
        self.pkt = PacketCounters()
        self._arena = kc.Arena(4 << 20, 65535 + 64)
        self._hdr = bytearray(VNET_HDR_LEN)
        self._hmv = memoryview(self._hdr)
        self._done: list[Completion] = []
        self._ticket = 0
        self._closed = False
        self._down = ""
        self._filter: list[kc.Insn] | None = None
        self._owns = owns
        self.fanout_id: int | None = None

    # ------------------------------------------------------------------ build
    @classmethod
    def open(
        cls,
        ns: object,
        ifname: str,
        *,
        vnet_hdr: bool = True,
        fanout: int | None = None,
        ignore_outgoing: bool = True,
        **kw: Any,
    ) -> PacketDevice:
        from netoffload.testing.netns import Netns, is_project_netns

        if not isinstance(ns, Netns) or not is_project_netns(ns.name):
            raise ConfigError(
                f"packet socket on {ifname!r}: only interfaces in namespaces this process created"
            )
        s = ns.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(kc.ETH_P_ALL))
        try:
            if vnet_hdr:
                s.setsockopt(kc.SOL_PACKET, kc.PACKET_VNET_HDR, 1)
            if ignore_outgoing:
                s.setsockopt(kc.SOL_PACKET, kc.PACKET_IGNORE_OUTGOING, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
            s.bind((ifname, kc.ETH_P_ALL))
            if fanout is not None:
                s.setsockopt(
                    kc.SOL_PACKET, kc.PACKET_FANOUT, fanout | (kc.PACKET_FANOUT_HASH << 16)
                )
        except OSError as e:
            s.close()
            raise DeviceError(f"packet socket on {ifname}: {e.strerror}") from None
        dev = cls(s, ifname, vnet_hdr=vnet_hdr, **kw)
        dev.fanout_id = fanout
        return dev

    @classmethod
    def fanout_group(cls, ns: object, ifname: str, workers: int, **kw: Any) -> list[PacketDevice]:
        """``workers`` sockets in one PACKET_FANOUT group (hash mode): one flow, one worker."""
        if not 1 <= workers <= 64:
            raise ConfigError(f"fanout group of {workers} workers (1..64)")
        gid = next(_fanout_ids)
        out: list[PacketDevice] = []
        try:
            for i in range(workers):
                d = cls.open(ns, ifname, fanout=gid, **kw)
                d.name = f"{d.name}#{i}"
                out.append(d)
        except BaseException:
            for d in out:
                d.close()
            raise
        return out

    # ------------------------------------------------------------------ caps
    def probe(self) -> TaskOffloadBuffer:
        if self._closed or self._down:
            return TaskOffloadBuffer(self.name, {}, {})
        recs: dict[Task, CapRecord] = {}
        if self.vnet_hdr:
            recs[Task.CHECKSUM] = CapRecord(Task.CHECKSUM, features=("fill", "verify", "partial"))
            recs[Task.TCP_SEGMENT] = CapRecord(Task.TCP_SEGMENT, max_segments=GSO_MAX_SEGS)
            recs[Task.UDP_SEGMENT] = CapRecord(Task.UDP_SEGMENT, max_segments=GSO_MAX_SEGS)
            recs[Task.TCP_ASSEMBLE] = CapRecord(Task.TCP_ASSEMBLE, max_segments=GSO_MAX_SEGS)
        try:
            kc.sock_attach_filter(self.sock.fileno(), [(0x06, 0, 0, 0xFFFFFFFF)])
            self.sock.setsockopt(socket.SOL_SOCKET, kc.SO_DETACH_FILTER, 0)
            recs[Task.DOS_FILTER] = CapRecord(Task.DOS_FILTER, max_rules=4096, features=("cbpf",))
        except OSError:
            pass
        return TaskOffloadBuffer(self.name, recs, {})

    def attach_filter(self, insns: Sequence[kc.Insn]) -> None:
        """SO_ATTACH_FILTER on the packet socket (offset 0: Ethernet header)."""
        try:
            kc.sock_attach_filter(self.sock.fileno(), insns)
        except OSError as e:
            raise DeviceError(f"{self.name}: SO_ATTACH_FILTER: {e.strerror}") from None
        self._filter = list(insns)

    # ------------------------------------------------------------------ work
    def submit(self, batch: Batch, order: Sequence[Task]) -> int:
        """Transmit-side tasks are done by the kernel at ``send``; prepare and mark them."""
        self._check()
        self._ticket += 1
        self._account(batch)
        e = batch.ext
        asked = Task(int(np.bitwise_or.reduce(e.offload)) if len(batch) else 0)
        extra = asked & ~(TX_TASKS if self.vnet_hdr else Task(0))
        if extra:
            self.stats.errors += 1
            self._done.append(
                Completion(
                    self._ticket,
                    batch,
                    ok=False,
                    error=f"{self.name}: cannot do {', '.join(t.kebab for t in extra.members())}",
                )
            )
            return self._ticket
        rows = (e.offload & TX_TASKS) != 0
        e.xflags[rows] |= np.uint8(XFlag.ETHERNET)
        prepare_tx(batch, rows & e.alive(), asked)
        done = e.offload.astype(np.uint16)
        e.done[rows] |= done[rows]
        e.by_device[rows] |= done[rows]
        self._done.append(Completion(self._ticket, batch))
        return self._ticket

    def poll(self, wait: bool = True) -> list[Completion]:
        done, self._done = self._done, []
        return done

    def outstanding(self) -> int:
        return len(self._done)

    # ------------------------------------------------------------------ wire
    def send(self, batch: Batch) -> int:
        """Write each live Ethernet frame (with its virtio_net_hdr); returns frames taken."""
        self._check()
        n = len(batch)
        if n == 0:
            return 0
        e = batch.ext
        alive = e.alive()
        vl = self._vlen
        hdrs = ext_to_vnet(e, VNET_HDR_LEN) if vl else b""
        mv = memoryview(batch.buf.data)
        ok = 0
        deadline = 0.0
        i = 0
        while i < n:
            if not alive[i]:
                i += 1
                continue
            s = int(batch.start[i])
            frame = mv[s : s + int(batch.length[i])]
            bufs: list[bytes | memoryview] = [hdrs[i * vl : (i + 1) * vl], frame] if vl else [frame]
            try:
                self.sock.sendmsg(bufs)
                ok += 1
                i += 1
                deadline = 0.0
            except BlockingIOError:
                if not deadline:
                    deadline = time.monotonic() + self.io_timeout
                if not self._wait(deadline):
                    self.pkt.tx_dropped += int(alive[i:].sum())
                    break
            except InterruptedError:
                continue
            except OSError as err:
                self.pkt.note(err)
                self.stats.errors += 1
                if err.errno in _GONE:
                    self._down = f"interface gone ({err.strerror})"
                    self._buffer = TaskOffloadBuffer(self.name, {}, {})
                    raise DeviceDown(f"{self.name}: {self._down}") from None
                self.pkt.write_errors += 1
                e.error[i] = Reason.DEVICE_ERROR
                i += 1
        self.pkt.written += ok
        return ok

    def _wait(self, until: float) -> bool:
        left = until - time.monotonic()
        if left <= 0:
            return False
        try:
            _, w, _ = select.select([], [self.sock], [], left)
        except (OSError, ValueError):
            return False
        return bool(w)

    def wait_readable(self, timeout: float) -> bool:
        self._check()
        r, _, _ = select.select([self.sock], [], [], timeout)
        return bool(r)

    def recv(self, max_packets: int = 1024) -> Batch:
        """Frames that arrived (non-blocking), with receive-side results."""
        self._check()
        ar = self._arena
        ar.reset()
        vl = self._vlen
        hdrs = bytearray()
        while len(ar) < max_packets:
            region = ar.slot()
            if region is None:
                break
            try:
                rbufs = [self._hmv, region] if vl else [region]
                got = self.sock.recvmsg_into(rbufs)[0]
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            except OSError as err:
                self.pkt.note(err)
                self.stats.errors += 1
                if err.errno in _GONE:
                    self._down = f"interface gone ({err.strerror})"
                    self._buffer = TaskOffloadBuffer(self.name, {}, {})
                    raise DeviceDown(f"{self.name}: {self._down}") from None
                break
            if got < vl:
                self.stats.errors += 1
                continue
            ar.commit(got - vl)
            hdrs += self._hdr[:vl]
        b = ar.batch()
        if not len(b):
            return b
        self.pkt.read += len(b)
        e = b.ext
        if vl:
            vnet_to_ext(bytes(hdrs), vl, ext=e)
        parse_batch(b, ethernet=True)
        csum = (e.vflags & (VnetFlag.DATA_VALID | VnetFlag.NEEDS_CSUM)) != 0
        rx_csum_results(b, csum)
        e.done[csum] |= np.uint16(Task.CHECKSUM)
        e.by_device[csum] |= np.uint16(Task.CHECKSUM)
        gso = (e.gso_type & 0x7F) != GsoType.NONE
        if gso.any():
            self.pkt.gso_in += int(gso.sum())
            size = np.maximum(e.gso_size.astype(np.int64), 1)
            payload = np.maximum(b.length - e.hdr_len, 0)
            e.segs[gso] = np.minimum((payload[gso] + size[gso] - 1) // size[gso], 65535)
            tcp = gso & np.isin(e.gso_type & 0x7F, (GsoType.TCPV4, GsoType.TCPV6))
            e.done[tcp] |= np.uint16(Task.TCP_ASSEMBLE)
            e.by_device[tcp] |= np.uint16(Task.TCP_ASSEMBLE)
            udp = gso & ~tcp
            e.done[udp] |= np.uint16(Task.UDP_ASSEMBLE)
            e.by_device[udp] |= np.uint16(Task.UDP_ASSEMBLE)
        if self._filter is not None:
            e.done |= np.uint16(Task.DOS_FILTER)
            e.by_device |= np.uint16(Task.DOS_FILTER)
            e.filter_verdict[:] = FilterVerdict.PASS
        return b

    # ------------------------------------------------------------------ state
    def _check(self) -> None:
        if self._closed:
            raise DeviceDown(f"{self.name}: closed")
        if self._down:
            raise DeviceDown(f"{self.name}: {self._down}")

    def load(self) -> DeviceLoad:
        return DeviceLoad(len(self._done), 0, not (self._closed or self._down))

    def counters(self) -> dict[str, object]:
        d = dict(self.stats.as_dict())
        p = self.pkt
        d.update(
            written=p.written,
            read=p.read,
            write_errors=p.write_errors,
            tx_dropped=p.tx_dropped,
            gso_in=p.gso_in,
            errno=dict(p.errno_counts),
            down=self._down,
        )
        return d

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.sock.close()
        owns, self._owns = self._owns, None
        close = getattr(owns, "close", None)
        if close is not None:
            close()


def _probe_factory() -> PacketDevice:
    """``caps --device packet``: a veth pair in throwaway namespaces, removed on close()."""
    from netoffload.testing import netns

    reason = netns.available()
    if reason:
        raise DeviceError(f"packet: {reason}")
    tb = netns.Testbed()
    try:
        a, b = tb.host("capsa"), tb.host("capsb")
        tb.link(a, b)
        dev = PacketDevice.open(a, "veth0", owns=tb)
        dev.query()
    except BaseException:
        tb.close()
        raise
    return dev


register_device(
    "packet",
    _probe_factory,
    "AF_PACKET on a project veth: PACKET_VNET_HDR (csum, TSO/USO on write, GSO on read), fanout",
)
