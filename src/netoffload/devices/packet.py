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
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from netoffload.batch import (
    VNET_HDR_LEN,
    Batch,
    GsoType,
    VnetFlag,
    XFlag,
    ext_to_vnet,
    vnet_to_ext,
)
from netoffload.caps import CapRecord, TaskOffloadBuffer
from netoffload.devices import kernel_common as kc
from netoffload.devices.registry import ProbeBed, register_device
from netoffload.devices.tun import GSO_MAX_SEGS, TX_TASKS, prepare_tx, rx_csum_results
from netoffload.errors import ConfigError, DeviceError
from netoffload.netns import Netns, available, is_project_netns
from netoffload.tasks import Task
from netoffload.wire.parse import parse_batch

_GONE = (errno.ENODEV, errno.ENXIO, errno.ENETDOWN, errno.EBADF)
_fanout_ids = iter(range(0x4E00 + (os.getpid() & 0xFF), 0xFFFF))


@dataclass
class PacketCounters(kc.KernelCounters):
    written: int = 0
    read: int = 0
    write_errors: int = 0
    tx_dropped: int = 0
    gso_in: int = 0
    errno_counts: dict[str, int] = field(default_factory=dict)


class PacketDevice(kc.SocketDevice):
    """An AF_PACKET socket bound to one interface of one of our namespaces.

    ``attach_filter`` (SO_ATTACH_FILTER) runs the program at offset 0: the Ethernet header.
    """

    GONE = _GONE

    def __init__(
        self,
        sock: socket.socket,
        ifname: str,
        *,
        vnet_hdr: bool,
        io_timeout: float = 0.5,
        owns: object | None = None,
    ) -> None:
        self.pkt = PacketCounters()
        super().__init__(sock, self.pkt, io_timeout=io_timeout, owns=owns)
        self.ifname = ifname
        self.vnet_hdr = vnet_hdr
        self._vlen = VNET_HDR_LEN if vnet_hdr else 0
        self.name = f"packet:{ifname}"
        self._arena = kc.Arena(4 << 20, 65535 + 64)
        self._hdr = bytearray(VNET_HDR_LEN)
        self._hmv = memoryview(self._hdr)
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
        return kc.open_group(workers, lambda: cls.open(ns, ifname, fanout=gid, **kw))

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
        if kc.sock_filter_works(self.sock):
            recs[Task.DOS_FILTER] = kc.CBPF_FILTER
        return TaskOffloadBuffer(self.name, recs, {})

    # ------------------------------------------------------------------ work
    def submit(self, batch: Batch, order: Sequence[Task]) -> int:
        """Transmit-side tasks are done by the kernel at ``send``; prepare and mark them."""
        asked = self._begin(batch)
        extra = asked & ~(TX_TASKS if self.vnet_hdr else Task(0))
        if extra:
            return self._cannot_do(batch, extra)
        e = batch.ext
        rows = (e.offload & TX_TASKS) != 0
        e.xflags[rows] |= np.uint8(XFlag.ETHERNET)
        prepare_tx(batch, rows & e.alive(), asked)
        return self._finish(batch, rows, e.offload.astype(np.uint16))

    # ------------------------------------------------------------------ wire
    def send(self, batch: Batch) -> int:
        """Write each live Ethernet frame (with its virtio_net_hdr); returns frames taken."""
        self._check()
        if len(batch) == 0:
            return 0
        vl = self._vlen
        hdrs = ext_to_vnet(batch.ext, VNET_HDR_LEN) if vl else b""
        mv = memoryview(batch.buf.data)

        def send_one(i: int) -> None:
            s = int(batch.start[i])
            frame = mv[s : s + int(batch.length[i])]
            bufs: list[bytes | memoryview] = [hdrs[i * vl : (i + 1) * vl], frame] if vl else [frame]
            self.sock.sendmsg(bufs)

        def refused(i: int, err: OSError) -> bool:
            self.pkt.write_errors += 1
            return False

        ok = self._send_each(batch, send_one, refused)
        self.pkt.written += ok
        return ok

    def recv(self, max_packets: int = 1024) -> Batch:
        """Frames that arrived (non-blocking), with receive-side results."""
        self._check()
        ar = self._arena
        vl = self._vlen
        hdrs = bytearray()

        def read_one(region: memoryview) -> None:
            rbufs = [self._hmv, region] if vl else [region]
            got = self.sock.recvmsg_into(rbufs)[0]
            if got < vl:
                self.stats.errors += 1
                return
            ar.commit(got - vl)
            hdrs.extend(self._hdr[:vl])

        b = self._read_each(ar, max_packets, read_one)
        if not len(b):
            return b
        self.pkt.read += len(b)
        e = b.ext
        if vl:
            vnet_to_ext(bytes(hdrs), vl, ext=e)
        parse_batch(b, ethernet=True)
        csum = (e.vflags & (VnetFlag.DATA_VALID | VnetFlag.NEEDS_CSUM)) != 0
        rx_csum_results(b, csum)
        kc.mark_by_device(e, csum, Task.CHECKSUM)
        gso = (e.gso_type & 0x7F) != GsoType.NONE
        if gso.any():
            self.pkt.gso_in += int(gso.sum())
            kc.gso_segments(b, gso)
            tcp = gso & np.isin(e.gso_type & 0x7F, (GsoType.TCPV4, GsoType.TCPV6))
            kc.mark_by_device(e, tcp, Task.TCP_ASSEMBLE)
            kc.mark_by_device(e, gso & ~tcp, Task.UDP_ASSEMBLE)
        self._rx_filtered(e)
        return b

    # ------------------------------------------------------------------ state
    def counters(self) -> dict[str, object]:
        return {**super().counters(), "down": self._down}


def _probe_factory() -> PacketDevice:
    """``caps --device packet``: a veth pair in throwaway namespaces, removed on close()."""

    def build(tb: ProbeBed) -> PacketDevice:
        a, b = tb.host("capsa"), tb.host("capsb")
        tb.link(a, b)
        return PacketDevice.open(a, "veth0", owns=tb)

    return kc.throwaway_device("packet", available, build)


register_device(
    "packet",
    _probe_factory,
    "AF_PACKET on a project veth: PACKET_VNET_HDR (csum, TSO/USO on write, GSO on read), fanout",
)
