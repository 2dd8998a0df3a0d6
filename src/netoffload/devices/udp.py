"""UDP socket as an offload device: UDP_SEGMENT on send, UDP_GRO on receive.

The packets of a batch this device sends or receives are UDP *payloads* (the
socket owns the IP and UDP headers, as in a tunnel's outer transport). A
payload longer than its ``ext.gso_size`` is a super-datagram: with the
``udp-segment`` task it leaves in one ``sendmsg`` carrying a ``UDP_SEGMENT``
control message (SOL_UDP=17, UDP_SEGMENT=103), and the kernel cuts it into
``gso_size`` datagrams. With ``UDP_GRO`` (104) on, the kernel hands up
coalesced datagrams with their segment size in a control message: the
``udp-assemble`` task done by the kernel. The kernel always fills and checks
the UDP checksum of a socket's datagrams (``checksum`` both ways).

Probing: ``getsockopt(UDP_SEGMENT)`` / ``setsockopt(UDP_GRO)`` at start, and
again after an ``EIO`` on a segmented send (the kernel refuses UDP GSO on some
paths: UDP-Lite, xfrm). If the retry fails too, the capability is dropped from
the task offload buffer, the datagram and everything after it is segmented in
software (one ``sendto`` per datagram), and no datagram is lost. After a
back-off (``USO_REPROBE_S``, doubling while the kernel keeps refusing, up to
``USO_REPROBE_MAX_S``) the kernel is asked again and, if it has the option,
segmented sends are tried anew. Likewise a read that fails with ``EIO`` while
``UDP_GRO`` is on turns GRO off (plain reads: one datagram each) and it is
turned on again after the same kind of back-off.

Push-down: a classic BPF program attached with ``SO_ATTACH_FILTER`` runs in the
kernel on every datagram (offset 0 is the UDP header) before it is queued.
Several workers: ``UdpDevice.reuseport_group`` binds N sockets with
``SO_REUSEPORT``; the kernel spreads flows over them by hash.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from netoffload.batch import Batch, CsumVerdict, Reason
from netoffload.caps import CapRecord, Enabled, TaskOffloadBuffer
from netoffload.devices import kernel_common as kc
from netoffload.devices.registry import ProbeBed, register_device
from netoffload.errors import ConfigError, DeviceDown, DeviceError
from netoffload.netns import Netns, available, check_address
from netoffload.tasks import Task, bit16

#: UDP_MAX_SEGMENTS of the kernel (64 before Linux 6.8, 128 since); we stay within 64.
MAX_SEGMENTS = 64
MAX_PAYLOAD = 65507
_U_USO = bit16(Task.UDP_SEGMENT)
_GRO_CMSG = socket.CMSG_SPACE(4)
_GONE = (errno.EBADF, errno.ENOTSOCK)
#: after EIO took UDP_SEGMENT or UDP_GRO away: seconds until the kernel is asked again,
#: doubling while it keeps failing, up to the maximum
USO_REPROBE_S = 2.0
USO_REPROBE_MAX_S = 64.0
_PATH = (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ECONNREFUSED, errno.ENETDOWN, errno.EPERM)

Addr = tuple[Any, ...]


@dataclass
class UdpCounters(kc.KernelCounters):
    datagrams_out: int = 0  # datagrams on the wire (after segmentation)
    sends: int = 0  # send syscalls
    gso_sends: int = 0
    soft_segmented: int = 0  # super-datagrams we had to cut ourselves
    eio: int = 0
    uso_dropped: bool = False
    uso_reprobes: int = 0  # the kernel asked again after a back-off
    gro_dropped: bool = False  # UDP_GRO off after a read failed with EIO
    gro_reprobes: int = 0
    tx_dropped: int = 0
    path_errors: int = 0
    datagrams_in: int = 0
    gro_in: int = 0
    errno_counts: dict[str, int] = field(default_factory=dict)


def probe_socket(sock: socket.socket) -> dict[str, bool]:
    """What this socket's kernel offers: UDP_SEGMENT, UDP_GRO, SO_ATTACH_FILTER."""
    caps: dict[str, bool] = {}
    try:
        sock.getsockopt(kc.SOL_UDP, kc.UDP_SEGMENT)
        caps["udp_segment"] = True
    except OSError:
        caps["udp_segment"] = False
    try:
        old = sock.getsockopt(kc.SOL_UDP, kc.UDP_GRO)
        sock.setsockopt(kc.SOL_UDP, kc.UDP_GRO, old)
        caps["udp_gro"] = True
    except OSError:
        caps["udp_gro"] = False
    caps["filter"] = kc.sock_filter_works(sock)
    return caps


class UdpDevice(kc.SocketDevice, kc.ProbedDevice):
    """One UDP socket (bound; optionally with a default peer)."""

    GONE = _GONE

    def __init__(
        self,
        sock: socket.socket,
        peer: Addr | None = None,
        *,
        gro: bool = True,
        io_timeout: float = 0.5,
        name: str | None = None,
        owns: object | None = None,
    ) -> None:
        if sock.type != socket.SOCK_DGRAM:
            raise ConfigError("UdpDevice needs a SOCK_DGRAM socket")
        self.udp = UdpCounters()
        super().__init__(sock, self.udp, io_timeout=io_timeout, owns=owns)
        self.peer = peer
        self.name = name or f"udp:{_fmt(sock.getsockname())}"
        self._gro_wanted = gro
        self._gro_on = False
        #: monotonic time of the next re-probe of a dropped UDP_SEGMENT / UDP_GRO (0: none)
        self._uso_retry_at = 0.0
        self._uso_backoff = USO_REPROBE_S
        self._gro_retry_at = 0.0
        self._gro_backoff = USO_REPROBE_S
        self._arena = kc.Arena(4 << 20, MAX_PAYLOAD + 64)
        #: source address of each packet of the last ``recv`` batch
        self.last_sources: list[Addr] = []
        #: the arena slot each datagram of the last read landed in (its first bytes)
        self.last_regions: list[memoryview] = []

    # ------------------------------------------------------------------ build
    @classmethod
    def open(
        cls,
        ns: object | None,
        bind: Addr,
        peer: Addr | None = None,
        *,
        reuseport: bool = False,
        family: int | None = None,
        proto: int = 0,
        **kw: Any,
    ) -> UdpDevice:
        """A UDP socket made inside project namespace ``ns`` (a ``netoffload.netns.Netns``)."""
        fam = family or (socket.AF_INET6 if ":" in str(bind[0]) else socket.AF_INET)
        for addr in (bind, peer):
            if addr is not None and addr[0] not in ("", "0.0.0.0", "::"):
                check_address(str(addr[0]))
        if ns is None:
            raise ConfigError("UdpDevice.open needs a project namespace (netoffload.netns.Netns)")
        if not isinstance(ns, Netns):
            raise ConfigError("UdpDevice.open: ns must be a netoffload.netns.Netns")
        s = ns.socket(fam, socket.SOCK_DGRAM, proto)
        try:
            if reuseport:
                s.setsockopt(socket.SOL_SOCKET, kc.SO_REUSEPORT, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
            s.bind(bind)
        except BaseException:
            s.close()
            raise
        return cls(s, peer, **kw)

    @classmethod
    def open_here(
        cls,
        bind: Addr,
        *,
        reuseport: bool = False,
        fwmark: int | None = None,
        peer: Addr | None = None,
        family: int | None = None,
        **kw: Any,
    ) -> UdpDevice:
        """A UDP socket bound to ``bind`` in the current network namespace.

        What the tunnel (``netoffload up``) sends and receives on: any address
        the user configured, with no test-range check (that is ``open``'s, for
        the project's namespaces). ``fwmark`` sets SO_MARK (needs
        CAP_NET_ADMIN); a bind that fails (port in use, address not here) is a
        ``ConfigError`` naming the address.
        """
        if fwmark is not None and not 0 <= fwmark <= 0xFFFFFFFF:
            raise ConfigError(f"fwmark {fwmark}: 0..0xffffffff")
        if bind[0] != "":
            try:  # an address, never a name to look up
                ipaddress.ip_address(str(bind[0]))
            except ValueError:
                raise ConfigError(f"UDP bind {_fmt(bind)}: not an IP address") from None
        fam = family or (socket.AF_INET6 if ":" in str(bind[0]) else socket.AF_INET)
        s = socket.socket(fam, socket.SOCK_DGRAM)
        try:
            try:
                if reuseport:
                    s.setsockopt(socket.SOL_SOCKET, kc.SO_REUSEPORT, 1)
                if fwmark is not None:
                    s.setsockopt(socket.SOL_SOCKET, kc.SO_MARK, fwmark)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
            except OSError as e:
                raise DeviceError(f"UDP socket for {_fmt(bind)}: {e.strerror}") from None
            try:
                s.bind(bind)
            except (OSError, OverflowError) as e:
                why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
                raise ConfigError(f"UDP bind {_fmt(bind)}: {why}") from None
        except BaseException:
            s.close()
            raise
        return cls(s, peer, **kw)

    @classmethod
    def reuseport_group(cls, ns: object, bind: Addr, workers: int, **kw: Any) -> list[UdpDevice]:
        """``workers`` sockets on one address with SO_REUSEPORT (the kernel picks by flow hash)."""
        if not 1 <= workers <= 64:
            raise ConfigError(f"reuseport group of {workers} workers (1..64)")
        return kc.open_group(workers, lambda: cls.open(ns, bind, reuseport=True, **kw))

    # ------------------------------------------------------------------ caps
    def probe(self) -> TaskOffloadBuffer:
        if self._closed:
            return TaskOffloadBuffer(self.name, {}, {})
        self._probe = probe_socket(self.sock)
        if self.udp.uso_dropped:
            self._probe["udp_segment"] = False
        if self.udp.gro_dropped:
            self._probe["udp_gro"] = False
        if self._probe["udp_gro"] and self._gro_wanted and not self._gro_on:
            self.sock.setsockopt(kc.SOL_UDP, kc.UDP_GRO, 1)
            self._gro_on = True
        recs: dict[Task, CapRecord] = {
            Task.CHECKSUM: CapRecord(Task.CHECKSUM, features=("fill", "verify"))
        }
        v = frozenset({6 if self.sock.family == socket.AF_INET6 else 4})
        if self._probe["udp_segment"]:
            recs[Task.UDP_SEGMENT] = CapRecord(Task.UDP_SEGMENT, v, MAX_PAYLOAD, 1, MAX_SEGMENTS)
        if self._probe["udp_gro"] and self._gro_wanted:
            recs[Task.UDP_ASSEMBLE] = CapRecord(Task.UDP_ASSEMBLE, v, MAX_PAYLOAD, 1, MAX_SEGMENTS)
        if self._probe["filter"]:
            recs[Task.DOS_FILTER] = kc.CBPF_FILTER
        return TaskOffloadBuffer(self.name, recs, {})

    @property
    def uso(self) -> bool:
        """UDP_SEGMENT usable now (probed and not dropped after EIO; asked again once the
        back-off after a drop is over)."""
        if self._uso_retry_at and time.monotonic() >= self._uso_retry_at:
            self._reprobe_uso()
        return bool(self.probed.get("udp_segment")) and not self.udp.uso_dropped

    def _drop_uso(self, reprobe: bool = True) -> None:
        """No UDP_SEGMENT sends; with ``reprobe``, ask the kernel again after a back-off."""
        self.udp.uso_dropped = True
        if reprobe:
            self._uso_retry_at = time.monotonic() + self._uso_backoff
            self._uso_backoff = min(self._uso_backoff * 2, USO_REPROBE_MAX_S)
        else:
            self._uso_retry_at = 0.0
        self._without(Task.UDP_SEGMENT)

    def _uso_ok(self) -> None:
        """A segmented send went through: the next drop waits the shortest back-off."""
        self._uso_backoff = USO_REPROBE_S

    def _reprobe_uso(self) -> None:
        """The back-off is over: if the kernel has UDP_SEGMENT, the next sends use it (an
        EIO then drops it again, for twice as long). Only that option is asked: a full
        probe would detach the socket's filter."""
        self._uso_retry_at = 0.0
        self.udp.uso_reprobes += 1
        try:
            self.sock.getsockopt(kc.SOL_UDP, kc.UDP_SEGMENT)
        except OSError:
            self._uso_retry_at = time.monotonic() + self._uso_backoff
            return
        self.udp.uso_dropped = False
        if self._probe is not None:
            self._probe["udp_segment"] = True
        self._with(Task.UDP_SEGMENT)

    def _drop_gro(self) -> None:
        """A read failed with EIO while UDP_GRO was on: plain reads, GRO again after a
        back-off."""
        with contextlib.suppress(OSError):
            self.sock.setsockopt(kc.SOL_UDP, kc.UDP_GRO, 0)
        self._gro_on = False
        self.udp.gro_dropped = True
        self._gro_retry_at = time.monotonic() + self._gro_backoff
        self._gro_backoff = min(self._gro_backoff * 2, USO_REPROBE_MAX_S)
        self._without(Task.UDP_ASSEMBLE)

    def _reprobe_gro(self) -> None:
        self._gro_retry_at = 0.0
        self.udp.gro_reprobes += 1
        try:
            self.sock.setsockopt(kc.SOL_UDP, kc.UDP_GRO, 1)
        except OSError:
            self._gro_retry_at = time.monotonic() + self._gro_backoff
            return
        self._gro_on = True
        self.udp.gro_dropped = False
        if self._probe is not None:
            self._probe["udp_gro"] = True
        self._with(Task.UDP_ASSEMBLE)

    def _without(self, task: Task) -> None:
        buf = self.query()
        recs: dict[Task, CapRecord] = {t: r for t, r in buf.records.items() if t != task}
        en: dict[Task, Enabled] = {t: e for t, e in buf.enabled.items() if t != task}
        self._buffer = TaskOffloadBuffer(self.name, recs, en)

    def _with(self, task: Task) -> None:
        buf = self.query()
        v = frozenset({6 if self.sock.family == socket.AF_INET6 else 4})
        recs = dict(buf.records)
        recs[task] = CapRecord(task, v, MAX_PAYLOAD, 1, MAX_SEGMENTS)
        self._buffer = TaskOffloadBuffer(self.name, recs, dict(buf.enabled))

    # ------------------------------------------------------------------ filter
    def attach_filter(self, insns: Sequence[kc.Insn]) -> None:
        """SO_ATTACH_FILTER: the kernel drops what the program answers 0 for (0: UDP header)."""
        if not self.probed.get("filter"):
            raise DeviceError(f"{self.name}: SO_ATTACH_FILTER refused at probe time")
        super().attach_filter(insns)

    def detach_filter(self) -> None:
        if self._filter is not None:
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, kc.SO_DETACH_FILTER, 0)
            except OSError as e:
                if e.errno != errno.ENOENT:
                    raise DeviceError(f"{self.name}: SO_DETACH_FILTER: {e.strerror}") from None
            self._filter = None

    # ------------------------------------------------------------------ work
    def submit(self, batch: Batch, order: Sequence[Task]) -> int:
        """UDP segmentation and checksums are done by the kernel at ``send``; mark them."""
        asked = self._begin(batch)
        doable = Task.CHECKSUM | (Task.UDP_SEGMENT if self.uso else Task(0))
        extra = asked & ~doable
        if extra:
            return self._cannot_do(batch, extra)
        e = batch.ext
        seg = (e.offload & _U_USO) != 0
        zero = seg & (e.gso_size == 0) & (batch.length > 0)
        e.error[zero] = Reason.GSO_SIZE_ZERO
        many = (
            seg
            & ~zero
            & (
                (batch.length + np.maximum(e.gso_size, 1).astype(np.int64) - 1)
                // np.maximum(e.gso_size, 1).astype(np.int64)
                > MAX_SEGMENTS
            )
        )
        e.error[many] = Reason.TOO_MANY_SEGMENTS
        big = batch.length > MAX_PAYLOAD
        e.error[big & ((e.offload & _U_USO) != 0)] = Reason.SUPER_TOO_BIG
        return self._finish(batch, e.offload != 0, e.offload.astype(np.uint16))

    # ------------------------------------------------------------------ wire
    def send(self, batch: Batch, dest: Addr | None = None) -> int:
        """Send every live payload; returns how many batch packets went out whole.

        A payload longer than its ``gso_size`` (> 0) leaves as
        ``ceil(len / gso_size)`` datagrams: in one UDP_SEGMENT sendmsg while
        the capability holds, else cut here. A packet that fails gets
        ``ext.error = DEVICE_ERROR`` and is counted; nothing raises but a
        vanished socket (DeviceDown).
        """
        self._check()
        to = dest if dest is not None else self.peer
        mv = memoryview(batch.buf.data)

        def payload_of(i: int) -> tuple[memoryview, int, int]:
            s, ln, g = int(batch.start[i]), int(batch.length[i]), int(batch.ext.gso_size[i])
            return mv[s : s + ln], ln, g

        def send_one(i: int) -> None:
            payload, ln, g = payload_of(i)
            segmented = 0 < g < ln
            if segmented and self.uso:
                self._send_gso(payload, g, to)
                self.udp.datagrams_out += (ln + g - 1) // g
            elif segmented:
                self._send_soft(payload, g, to)
            else:
                self._sendto(payload, to)
                self.udp.datagrams_out += 1

        def refused(i: int, err: OSError) -> bool | None:
            payload, ln, g = payload_of(i)
            if err.errno == errno.EIO and 0 < g < ln and self.uso:
                # re-probe: one retry, then drop UDP_SEGMENT and cut in software
                self.udp.eio += 1
                try:
                    self._send_gso(payload, g, to)
                    self.udp.datagrams_out += (ln + g - 1) // g
                    return True
                except OSError as err2:
                    self.udp.note(err2)
                    self.udp.eio += err2.errno == errno.EIO
                    self._drop_uso()
                return None  # (after a drop: the same payload again, in software)
            if err.errno in _PATH:
                self.udp.path_errors += 1
            return False

        return self._send_each(batch, send_one, refused)

    def _sendto(self, payload: memoryview, to: Addr | None) -> None:
        self.udp.sends += 1
        if to is None:
            self.sock.send(payload)
        else:
            self.sock.sendto(payload, to)

    def _send_gso(self, payload: memoryview, g: int, to: Addr | None) -> None:
        self.udp.sends += 1
        cmsg = [(kc.SOL_UDP, kc.UDP_SEGMENT, struct.pack("H", g))]
        if to is None:
            self.sock.sendmsg([payload], cmsg)
        else:
            self.sock.sendmsg([payload], cmsg, 0, to)
        self.udp.gso_sends += 1
        self._uso_ok()

    def _send_soft(self, payload: memoryview, g: int, to: Addr | None) -> None:
        """Software segmentation: one datagram per ``g`` bytes (all or an exception)."""
        self.udp.soft_segmented += 1
        off = 0
        ln = len(payload)
        deadline = time.monotonic() + self.io_timeout
        while off < ln:
            try:
                self._sendto(payload[off : off + g], to)
            except BlockingIOError:
                if not self._wait_writable(deadline):
                    raise
                continue
            self.udp.datagrams_out += 1
            off += g

    def recv(self, max_packets: int = 1024) -> Batch:
        """Datagrams waiting (non-blocking); GRO'd ones carry gso_size and segs."""
        return self._raw_batch(self._read_datagrams(max_packets))

    def _read_datagrams(self, max_packets: int) -> list[int]:
        """Up to ``max_packets`` waiting datagrams (non-blocking) read into the arena's
        slots (``last_regions``), their sources in ``last_sources``; returns each one's
        UDP_GRO segment size (0: none). Stops at EAGAIN, a full arena or another
        OSError, which is counted (DeviceDown if the socket is gone; else the next call
        tries again: e.g. ECONNREFUSED from an earlier ICMP); EIO with GRO on also turns
        GRO off for a while. (``SocketDevice._read_each``'s loop, without the batch.)"""
        self._check()
        gsos: list[int] = []
        sources: list[Addr] = []
        regions: list[memoryview] = []
        self.last_sources = sources
        self.last_regions = regions
        if self._gro_retry_at and time.monotonic() >= self._gro_retry_at:
            self._reprobe_gro()
        arena = self._arena
        arena.reset()
        while len(gsos) < max_packets:
            region = arena.slot()
            if region is None:
                break
            try:
                nbytes, anc, _flags, addr = self.sock.recvmsg_into([region], _GRO_CMSG)
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            except OSError as err:
                if err.errno == errno.EIO and self._gro_on:
                    self._drop_gro()
                self._io_error(err)
                break
            g = 0
            for lvl, typ, data in anc:
                if lvl == kc.SOL_UDP and typ == kc.UDP_GRO and len(data) >= 2:
                    fmt = "i" if len(data) >= 4 else "H"
                    g = struct.unpack(fmt, data[: struct.calcsize(fmt)])[0]
            arena.commit(nbytes)
            gsos.append(g)
            sources.append(addr)
            regions.append(region)
        return gsos

    def _raw_batch(self, gsos: list[int]) -> Batch:
        """The datagrams ``_read_datagrams`` read, as a batch of payloads with their
        extensions (GRO'd ones: gso_size, segs, udp-assemble by the device)."""
        b = self._arena.batch()
        if not len(b):
            return b
        e = b.ext
        self.udp.datagrams_in += len(b)
        e.gso_size[:] = np.minimum(np.array(gsos, dtype=np.int64), 65535)
        gro = (e.gso_size > 0) & (b.length > e.gso_size)
        size = np.maximum(e.gso_size.astype(np.int64), 1)
        e.segs[:] = np.where(gro, (b.length + size - 1) // size, 1)
        self.udp.gro_in += int(gro.sum())
        kc.mark_by_device(e, gro, Task.UDP_ASSEMBLE)
        # the kernel checked every UDP checksum (bad ones never reach a socket)
        e.csum_verdict[:] = CsumVerdict.GOOD
        e.done |= np.uint16(Task.CHECKSUM)
        e.by_device |= np.uint16(Task.CHECKSUM)
        self._rx_filtered(e)
        return b

    # ------------------------------------------------------------------ state
    def _gone(self, err: OSError) -> DeviceDown:
        """The socket is unusable (EBADF, ENOTSOCK): DeviceDown, the device not marked down."""
        return DeviceDown(f"{self.name}: {err.strerror}")


def _fmt(addr: Any) -> str:
    if isinstance(addr, tuple) and len(addr) >= 2:
        host = f"[{addr[0]}]" if ":" in str(addr[0]) else str(addr[0])
        return f"{host}:{addr[1]}"
    return str(addr)


def _probe_factory() -> UdpDevice:
    """``caps --device udp``: a socket in a throwaway namespace, removed on close()."""

    def build(tb: ProbeBed) -> UdpDevice:
        ns = tb.host("caps")
        ns.add_address("lo", "198.18.0.1/24")
        return UdpDevice.open(ns, ("198.18.0.1", 0), owns=tb)

    return kc.throwaway_device("udp", available, build)


register_device(
    "udp",
    _probe_factory,
    "Linux UDP socket: UDP_SEGMENT (GSO) on send, UDP_GRO on receive, SO_ATTACH_FILTER",
)
