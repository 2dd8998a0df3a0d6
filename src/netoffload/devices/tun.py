"""TUN/TAP: the Linux kernel as an offload device, through ``virtio_net_hdr``.

The interface is opened with ``IFF_VNET_HDR`` (header size set with
``TUNSETVNETHDRSZ``), so every packet read or written carries a
``virtio_net_hdr``; it is built from and turned into the packet extension here
and nowhere else (``batch.ext_to_vnet`` / ``batch.vnet_to_ext``).

Transmit (what we *write* to the TUN goes into the kernel): the kernel does
the tasks the header asks for when the packet is written -- ``NEEDS_CSUM`` gets
the TCP/UDP checksum filled in, a GSO header (TCPV4/TCPV6/UDP_L4 with
``gso_size``) gets the super-packet segmented. ``submit`` therefore only
prepares the extension (partial checksum, GSO fields) and marks the tasks
``by_device``; the next ``send`` hands them to the kernel.

Receive (what we *read* comes from the kernel): with ``TUNSETOFFLOAD`` bits
set, the kernel hands up GSO super-packets (it did the TCP/UDP assembly: GRO
or a local TSO stream), ``NEEDS_CSUM`` (checksum left partial: local data,
known good) and ``DATA_VALID`` (the kernel checked it). ``recv`` turns those
into receive-side results in the extension (csum_verdict, segs, done and
by_device bits).

Capabilities are probed: ``TUNSETOFFLOAD`` bit by bit (an unknown bit answers
EINVAL), ``TUNGETFEATURES`` for multi-queue, ``TUNATTACHFILTER`` for the cBPF
push-down. Multi-queue: ``IFF_MULTI_QUEUE`` with one fd per queue.

I/O is non-blocking; ``send`` waits for room with ``select`` for at most
``io_timeout`` seconds, then counts the rest as dropped. A vanished interface
(deleted under us, namespace removed) raises ``DeviceDown`` from ``send``/
``recv``/``submit``, which the engine answers by redoing work in software.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from netoffload.batch import (
    VNET_HDR_LEN,
    Batch,
    CsumVerdict,
    GsoType,
    Mask,
    Reason,
    VnetFlag,
    XFlag,
    ext_to_vnet,
    vnet_to_ext,
)
from netoffload.caps import CapRecord, TaskOffloadBuffer
from netoffload.devices import kernel_common as kc
from netoffload.devices.registry import register_device
from netoffload.errors import ConfigError, DeviceDown, DeviceError
from netoffload.netns import Netns, available
from netoffload.tasks import Direction, Task, bit16
from netoffload.wire.parse import parse_batch, parse_subset_fast

#: Largest packet a TUN read/write carries (a 64 KiB super-packet plus headers).
MAX_FRAME = 65535 + 14
#: GSO segments the kernel accepts in one super-packet.
GSO_MAX_SEGS = 65535
TX_TASKS = Task.CHECKSUM | Task.TCP_SEGMENT | Task.UDP_SEGMENT
RX_ONLY = Task.DECRYPT | Task.TCP_ASSEMBLE | Task.UDP_ASSEMBLE | Task.DOS_FILTER

#: task bits as numpy scalars, the operand numpy is fastest with (see tasks.bit16)
_U_CSUM = bit16(Task.CHECKSUM)
_U_TSO = bit16(Task.TCP_SEGMENT)
_U_USO = bit16(Task.UDP_SEGMENT)
_GONE = (errno.EBADFD, errno.ENODEV, errno.ENXIO, errno.EPIPE, errno.EBADF)


@dataclass
class TunCounters(kc.KernelCounters):
    written: int = 0
    read: int = 0
    write_errors: int = 0  # the kernel refused a packet (EINVAL/EIO/...)
    short_writes: int = 0
    tx_dropped: int = 0  # no room within io_timeout (EAGAIN)
    gso_in: int = 0  # super-packets read
    csum_valid_in: int = 0  # DATA_VALID or NEEDS_CSUM read
    errno_counts: dict[str, int] = field(default_factory=dict)


def probe_fd(fd: int) -> dict[str, bool]:
    """What this TUN fd's kernel supports: offload bits, multi-queue, filter attach."""
    caps = kc.tun_probe_offloads(fd)
    try:
        feats = kc.tun_features(fd)
    except OSError:
        feats = 0
    caps["multi_queue"] = bool(feats & kc.IFF_MULTI_QUEUE)
    caps["vnet_hdr"] = bool(feats & kc.IFF_VNET_HDR)
    # TUNATTACHFILTER works on TAP only (a TUN answers EINVAL)
    try:
        kc.tun_attach_filter(fd, kc.ACCEPT_ALL)
        kc.tun_detach_filter(fd)
        caps["filter"] = True
    except OSError:
        caps["filter"] = False
    return caps


def records_from_probe(caps: dict[str, bool]) -> dict[Task, CapRecord]:
    """The task offload buffer records a probed TUN/TAP gives (``filter``: TAP only)."""
    recs: dict[Task, CapRecord] = {}
    if caps.get("csum"):
        # fill: NEEDS_CSUM on write; verify: DATA_VALID / NEEDS_CSUM on read
        recs[Task.CHECKSUM] = CapRecord(Task.CHECKSUM, features=("fill", "verify", "partial"))
    tso = frozenset(v for v, k in ((4, "tso4"), (6, "tso6")) if caps.get(k))
    if tso:
        feats = ("ecn",) if caps.get("tso_ecn") else ()
        recs[Task.TCP_SEGMENT] = CapRecord(
            Task.TCP_SEGMENT, tso, 65535, 1, GSO_MAX_SEGS, features=feats
        )
        recs[Task.TCP_ASSEMBLE] = CapRecord(Task.TCP_ASSEMBLE, tso, 65535, 1, GSO_MAX_SEGS)
    uso = frozenset({4, 6}) if caps.get("uso") else frozenset()
    if uso:
        recs[Task.UDP_SEGMENT] = CapRecord(Task.UDP_SEGMENT, uso, 65535, 1, GSO_MAX_SEGS)
        recs[Task.UDP_ASSEMBLE] = CapRecord(Task.UDP_ASSEMBLE, uso, 65535, 1, GSO_MAX_SEGS)
    if caps.get("filter"):
        # push-down: a cBPF program attached with TUNATTACHFILTER filters what
        # the kernel hands us (receive side only)
        recs[Task.DOS_FILTER] = kc.CBPF_FILTER
    return recs


def prepare_tx(batch: Batch, rows: Mask, tasks: Task) -> Mask:
    """Put ``rows`` into the form the kernel needs to do ``tasks`` on write.

    Sets the partial checksum (NEEDS_CSUM, csum_start/offset) and, for the
    segmentation tasks, gso_type/hdr_len (gso_size is the caller's segment size,
    already in the extension). Returns the rows that could not be prepared
    (their ``ext.error`` says why).
    """
    from netoffload.soft import checksum as soft_csum

    e = batch.ext
    bad = np.zeros(len(batch), dtype=np.bool_)
    if not rows.any():
        return bad
    need_parse = rows & ((e.xflags & XFlag.PARSED) == 0)
    if need_parse.any():
        sub = batch.take(need_parse)
        reason = parse_batch(sub, ethernet=None)
        for f in ("l3_off", "l4_off", "hdr_len", "l3_proto", "l4_proto", "xflags"):
            getattr(e, f)[need_parse] = getattr(sub.ext, f)
        r = np.zeros(len(batch), dtype=np.uint16)
        r[need_parse] = reason
        bad |= rows & (r != 0)
        e.error[rows & (r != 0)] = r[rows & (r != 0)]
    ok = rows & ~bad
    seg = ok & ((e.offload & (_U_TSO | _U_USO)) != 0)
    tcp = e.l4_proto == 6
    udp = e.l4_proto == 17
    wrong = seg & (((e.offload & _U_TSO) != 0) & ~tcp)
    wrong |= seg & (((e.offload & _U_USO) != 0) & ~udp)
    e.error[wrong] = np.where(tcp[wrong], Reason.NOT_UDP, Reason.NOT_TCP)
    zero = seg & ~wrong & (e.gso_size == 0)
    e.error[zero] = Reason.GSO_SIZE_ZERO
    bad |= wrong | zero
    ok &= ~bad
    # GSO needs the checksum partial as well (the kernel fills each segment's)
    csum = ok & (((e.offload & _U_CSUM) != 0) | seg)
    if csum.any():
        reason = soft_csum.to_partial(batch, csum)
        failed = csum & (reason != 0)
        bad |= failed
        ok &= ~failed
    seg &= ok
    gso = np.where(
        tcp,
        np.where(e.l3_proto == 6, GsoType.TCPV6, GsoType.TCPV4),
        GsoType.UDP_L4,
    ).astype(np.uint8)
    e.gso_type[seg] = gso[seg]
    # only what the kernel must still do: a super-packet that fits one segment is sent as is
    return bad


_CSUM_BITS = np.array([0, Task.CHECKSUM, Task.CHECKSUM, Task.CHECKSUM], dtype=np.uint16)
_CSUM_VERDICT = np.array(
    [CsumVerdict.UNKNOWN, CsumVerdict.PARTIAL, CsumVerdict.GOOD, CsumVerdict.GOOD], dtype=np.uint8
)
_L3_OF_NIBBLE = np.zeros(16, dtype=np.uint8)
_L3_OF_NIBBLE[[4, 6]] = [4, 6]
_GSO_NONE = int(GsoType.NONE)
_GSO_BITS = np.zeros(128, dtype=np.uint16)
_GSO_BITS[[GsoType.TCPV4, GsoType.TCPV6]] = Task.TCP_ASSEMBLE
_GSO_BITS[[GsoType.UDP, GsoType.UDP_L4]] = Task.UDP_ASSEMBLE


class FrameReader:
    """Batched non-blocking reads of (virtio_net_hdr + packet) frames straight into slots.

    Each ``readv`` lands its packet in a persistent ``kc.Arena`` at its slot
    (headroom, packet, tailroom) and its header in ``hdrs``; ``batch()`` copies
    the used arena once into a new Batch.
    """

    def __init__(self, vlen: int, arena_bytes: int = 4 << 20, max_frame: int = MAX_FRAME) -> None:
        self.vlen = vlen
        self.frames = kc.Arena(arena_bytes, max_frame)
        self.hdrs = bytearray(vlen * 4096)
        self._hmv = memoryview(self.hdrs)
        self.bad = 0

    @property
    def n(self) -> int:
        """Frames read since the last ``reset``."""
        return len(self.frames)

    def reset(self) -> None:
        self.frames.reset()
        self.bad = 0

    def read_from(self, fd: int, max_packets: int) -> None:
        """Read until EAGAIN, ``max_packets`` or a full arena; OSErrors other than EAGAIN raise."""
        vl = self.vlen
        frames = self.frames
        limit = min(max_packets, len(self.hdrs) // vl) if vl else max_packets
        # one system call a frame (a TUN has no recvmmsg): nothing else per frame but
        # the slot and its commit, with the names looked up once
        slot, commit, readv, hmv = frames.slot, frames.commit, os.readv, self._hmv
        n = len(frames)
        while n < limit:
            region = slot()
            if region is None:
                return
            try:
                got = readv(fd, (hmv[n * vl : n * vl + vl], region) if vl else (region,))
            except BlockingIOError:
                return
            except InterruptedError:
                continue
            if got < vl:
                self.bad += 1
                continue
            commit(got - vl)
            n += 1

    def batch(self) -> tuple[Batch, bytes]:
        """The frames read so far (at least one) as a Batch (one copy) and their packed headers."""
        return self.frames.batch(), bytes(self._hmv[: self.n * self.vlen])


class TunDevice(kc.ProbedDevice):
    """A TUN (or TAP) interface, one fd per queue, as an offload device.

    Build it with ``TunDevice.open("wg0")`` (created in the current namespace:
    the tunnel), ``TunDevice.open_in(netns, "tun0")`` (a project namespace) or
    from fds you opened yourself. ``tap=True`` for Ethernet frames.
    """

    GONE = _GONE

    def __init__(
        self,
        fds: Sequence[int],
        ifname: str,
        *,
        tap: bool = False,
        netns: object | None = None,
        direction: Direction = Direction.TX,
        io_timeout: float = 0.5,
        owns: object | None = None,
    ) -> None:
        if not fds:
            raise ConfigError("TunDevice needs at least one fd")
        self.tun = TunCounters()
        super().__init__(self.tun, io_timeout=io_timeout, owns=owns)
        self.name = f"tun:{ifname}"
        self.ifname = ifname
        self.fds = list(fds)
        self.tap = tap
        self.netns = netns
        self.direction = direction
        self._offload_bits = 0
        self._rr = 0
        self._vlen = VNET_HDR_LEN
        self._reader = FrameReader(self._vlen)

    # ------------------------------------------------------------------ build
    @classmethod
    def open_in(
        cls,
        ns: object,
        ifname: str = "tun0",
        *,
        queues: int = 1,
        tap: bool = False,
        addrs: Sequence[str] = (),
        mtu: int | None = None,
        **kw: object,
    ) -> TunDevice:
        """A TUN with ``queues`` queues inside a project namespace (``netoffload.netns.Netns``)."""
        if not isinstance(ns, Netns):
            raise ConfigError("TunDevice.open_in needs a netoffload.netns.Netns")
        fds: list[int] = []
        try:
            fd, name = kc.tun_open_in(
                ns, ifname, tap=tap, multi_queue=queues > 1, addrs=addrs, mtu=mtu, up=False
            )
            fds.append(fd)
            for _ in range(queues - 1):
                with ns.entered():
                    fds.append(kc.tun_open(name, tap=tap, multi_queue=True)[0])
            ns.ip("link", "set", name, "up")
        except BaseException:
            for f in fds:
                os.close(f)
            raise
        return cls(fds, name, tap=tap, netns=ns, **kw)  # type: ignore[arg-type]

    @classmethod
    def open(cls, name: str, *, queues: int = 1, tap: bool = False, **kw: object) -> TunDevice:
        """Create TUN (or TAP) ``name`` with ``queues`` queues in the current namespace.

        What the tunnel (``netoffload up``) runs on: the interface is made in
        whatever network namespace the calling thread is in, with a virtio_net_hdr
        on every frame (IFF_VNET_HDR) and IFF_MULTI_QUEUE when ``queues > 1``. It
        is created, never attached to: an interface of that name (ours or not, of
        any kind) is a ``ConfigError``. It is left down, without addresses; it
        goes away when the device is closed. ``kw`` as for the constructor.
        """
        _check_ifname(name)
        if not 1 <= queues <= MAX_QUEUES:
            raise ConfigError(f"TUN {name}: {queues} queues (1..{MAX_QUEUES})")
        fds: list[int] = []
        try:
            try:
                fd, actual = kc.tun_open(name, tap=tap, multi_queue=queues > 1, exclusive=True)
            except OSError as e:
                if e.errno == errno.EBUSY:
                    raise ConfigError(f"interface {name} already exists") from None
                raise DeviceError(f"TUN {name}: {e.strerror}") from None
            fds.append(fd)
            for _ in range(queues - 1):
                try:
                    fds.append(kc.tun_open(actual, tap=tap, multi_queue=True)[0])
                except OSError as e:
                    raise DeviceError(f"TUN {actual}: queue {len(fds)}: {e.strerror}") from None
        except BaseException:
            for f in fds:
                os.close(f)
            raise
        return cls(fds, actual, tap=tap, **kw)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ caps
    def probe(self) -> TaskOffloadBuffer:
        if self._closed or self._down:
            return TaskOffloadBuffer(self.name, {}, {})  # a vanished device can do nothing
        try:
            self._probe = probe_fd(self.fds[0])
        except OSError as e:
            raise self._fail(e) from None
        return TaskOffloadBuffer(self.name, records_from_probe(self._probe), {})

    def _apply_enable(self, buf: TaskOffloadBuffer) -> None:
        """Receive-side offloads are TUNSETOFFLOAD bits (what the kernel may hand us)."""
        bits = 0
        en = buf.enabled
        if Task.CHECKSUM in en or Task.TCP_ASSEMBLE in en or Task.UDP_ASSEMBLE in en:
            bits |= kc.TUN_F_CSUM
        if Task.TCP_ASSEMBLE in en:
            v = en[Task.TCP_ASSEMBLE].ip_versions
            bits |= (kc.TUN_F_TSO4 if 4 in v else 0) | (kc.TUN_F_TSO6 if 6 in v else 0)
            if self.probed.get("tso_ecn"):
                bits |= kc.TUN_F_TSO_ECN
        if Task.UDP_ASSEMBLE in en:
            bits |= kc.TUN_F_USO4 | kc.TUN_F_USO6  # the kernel takes them only together
        self.set_offload(bits)
        if Task.DOS_FILTER not in en and self._filter is not None:
            self.detach_filter()

    def set_offload(self, bits: int) -> None:
        """TUNSETOFFLOAD on every queue (raw TUN_F_* bits)."""
        self._check()
        try:
            for fd in self.fds:
                kc.ioctl_int(fd, kc.TUNSETOFFLOAD, bits)
        except OSError as e:
            raise self._fail(e) from None
        self._offload_bits = bits

    @property
    def offload_bits(self) -> int:
        return self._offload_bits

    # ------------------------------------------------------------------ filter push-down
    def attach_filter(self, insns: Sequence[kc.Insn]) -> None:
        """Attach a classic BPF program (TUNATTACHFILTER) to every queue.

        The kernel runs it on every packet before handing it to us; a packet
        the program answers 0 for is dropped in the kernel.
        """
        if not self.probed.get("filter"):
            raise DeviceError(f"{self.name}: the kernel refused TUNATTACHFILTER at probe time")
        try:
            for fd in self.fds:
                kc.tun_attach_filter(fd, insns)
        except OSError as e:
            raise self._fail(e) from None
        self._filter = list(insns)

    def detach_filter(self) -> None:
        if self._filter is None:
            return
        for fd in self.fds:
            try:
                kc.tun_detach_filter(fd)
            except OSError as e:
                if e.errno not in (errno.ENOENT, *_GONE):
                    raise self._fail(e) from None
        self._filter = None

    @property
    def filter_attached(self) -> bool:
        return self._filter is not None

    # ------------------------------------------------------------------ work
    def submit(self, batch: Batch, order: Sequence[Task]) -> int:
        asked = self._begin(batch)
        e = batch.ext
        direction = self._direction_of(order)
        supported = self.query().enabled_tasks or self.query().supported
        doable = (TX_TASKS if direction is Direction.TX else Task.CHECKSUM) & supported
        extra = asked & ~doable
        if extra:
            return self._cannot_do(batch, extra, f" in direction {direction.name}")
        if direction is Direction.TX:
            rows = (e.offload & TX_TASKS) != 0
            try:
                prepare_tx(batch, rows & e.alive(), asked)
            except ImportError as err:  # the partial-checksum helper is missing
                raise DeviceError(f"{self.name}: {err}") from None
            mark = rows
        else:
            # the kernel checked these (DATA_VALID) or they are local partial data
            rows = (e.offload & _U_CSUM) != 0
            known = (e.vflags & (VnetFlag.DATA_VALID | VnetFlag.NEEDS_CSUM)) != 0
            unk = rows & ~known & e.alive()
            if unk.any():
                return self._refuse(
                    batch, f"{self.name}: {int(unk.sum())} packets not checked by the kernel"
                )
            rx_csum_results(batch, rows)
            mark = rows
        return self._finish(batch, mark, (e.offload & np.uint16(asked)).astype(np.uint16))

    def _direction_of(self, order: Sequence[Task]) -> Direction:
        tasks = Task(0)
        for t in order:
            tasks |= t
        if tasks & RX_ONLY:
            return Direction.RX
        if tasks & (Task.TCP_SEGMENT | Task.UDP_SEGMENT | Task.ENCRYPT):
            return Direction.TX
        return self.direction

    # ------------------------------------------------------------------ wire
    def send(self, batch: Batch) -> int:
        """Write every live packet with its virtio_net_hdr; returns packets the kernel took."""
        self._check()
        n = len(batch)
        if n == 0:
            return 0
        e = batch.ext
        alive_mask = e.alive()
        # packets that ask nothing of the kernel go with an all-zero header
        vl = self._vlen
        hdrs = memoryview(ext_to_vnet(e, vl))
        accepted = 0
        fd = self.fds[self._rr % len(self.fds)]
        self._rr += 1
        mv = memoryview(batch.buf.data)
        starts: list[int] = batch.start.tolist()
        ends: list[int] = (batch.start + batch.length).tolist()
        alive: list[bool] = alive_mask.tolist()
        writev = os.writev
        deadline = 0.0
        i = 0
        while i < n:
            if not alive[i]:
                i += 1
                continue
            s, t = starts[i], ends[i]
            try:
                w = writev(fd, (hdrs[i * vl : i * vl + vl], mv[s:t]))
            except BlockingIOError:
                if not deadline:
                    deadline = time.monotonic() + self.io_timeout
                if not kc.wait_writable(fd, deadline, exceptional=True):
                    self.tun.tx_dropped += sum(alive[i:])
                    break
                continue
            except InterruptedError:
                continue
            except OSError as err:
                self._io_error(err)
                # the kernel refused this packet (bad header: EINVAL; EIO; ...)
                self.tun.write_errors += 1
                e.error[i] = Reason.DEVICE_ERROR
                i += 1
                continue
            if w != vl + t - s:
                self.tun.short_writes += 1
                self.stats.errors += 1
                e.error[i] = Reason.DEVICE_ERROR
            else:
                accepted += 1
            i += 1
        self.tun.written += accepted
        return accepted

    def wait_readable(self, timeout: float) -> bool:
        """Block up to ``timeout`` s for something to read on any queue."""
        self._check()
        try:
            r, _, _ = select.select(self.fds, [], [], timeout)
        except (OSError, ValueError) as e:
            raise DeviceDown(f"{self.name}: {e}") from None
        return bool(r)

    def recv(self, max_packets: int = 1024, queue: int | None = None) -> Batch:
        """Read what the kernel has for us (non-blocking), with receive-side results."""
        self._check()
        fds = self.fds if queue is None else [self.fds[queue]]
        reader = self._reader
        reader.reset()
        for fd in fds:
            try:
                reader.read_from(fd, max_packets)
            except OSError as err:
                self._io_error(err)
        self.stats.errors += reader.bad
        if not reader.n:
            return Batch.empty()
        b, hdrs = reader.batch()
        self.tun.read += len(b)
        vnet_to_ext(hdrs, self._vlen, ext=b.ext)
        self._rx_results(b)
        return b

    def _rx_results(self, b: Batch) -> None:
        e = b.ext
        if self.tap:
            parse_batch(b, ethernet=True)
        elif b.length.all():  # (lengths are >= 0: no empty packet)
            # no full parse on the hot path (consumers parse when they need to);
            # the IP version is one vectorised read (a table: nibble -> 4, 6 or 0)
            np.take(_L3_OF_NIBBLE, b.buf[b.start] >> 4, out=e.l3_proto)
        else:
            nz = b.length > 0
            e.l3_proto[nz] = _L3_OF_NIBBLE[b.buf[b.start[nz]] >> 4]
        # table lookups instead of masks: NEEDS_CSUM -> PARTIAL, DATA_VALID -> GOOD, both
        # -> checksum done by the kernel; a GSO type -> TCP / UDP assembly done by the kernel
        vi = e.vflags & 3
        gt = e.gso_type & 0x7F
        bits = _CSUM_BITS[vi]
        bits |= _GSO_BITS[gt]
        e.done |= bits
        e.by_device |= bits
        e.csum_verdict[:] = _CSUM_VERDICT[vi]
        self.tun.csum_valid_in += int(np.count_nonzero(vi))
        ngso = int(np.count_nonzero(gt))
        if ngso:
            self.tun.gso_in += ngso
            gso = gt != _GSO_NONE  # a plain int (cheaper for numpy than an IntEnum)
            if not self.tap:
                # the vnet hdr_len a TUN reports is the skb's linear head (skb_headlen),
                # which for a GRO-merged packet holds its first segment's payload too:
                # the segment count needs the headers' real length (the compiled parse,
                # parse_subset for what it does not cover)
                parse_subset_fast(b, np.flatnonzero(gso))
            kc.gso_segments(b, gso)
        self._rx_filtered(e)

    # ------------------------------------------------------------------ state
    def _fail(self, e: OSError) -> DeviceError:
        self.stats.errors += 1
        self.tun.note(e)
        if e.errno in _GONE:
            return self._gone(e)
        return DeviceError(f"{self.name}: {os.strerror(e.errno or 0)}")

    def _gone(self, err: OSError) -> DeviceDown:
        return self._went_down(os.strerror(err.errno or 0))

    def counters(self) -> dict[str, object]:
        return {**super().counters(), "offload_bits": self._offload_bits, "down": self._down}

    def _close_handles(self) -> None:
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)


#: The kernel's limit of queues on one TUN (MAX_TAP_QUEUES).
MAX_QUEUES = 256


def _check_ifname(name: str) -> None:
    """What the kernel takes as an interface name (dev_valid_name): 1..15 bytes, no
    '/', ':' or white space, not '.' or '..'."""
    raw = name.encode()
    if (
        not 0 < len(raw) < kc.IFNAMSIZ
        or name in (".", "..")
        or any(c in "/:" or c.isspace() for c in name)
    ):
        raise ConfigError(
            f"interface name {name!r}: 1..15 bytes, no '/', ':' or spaces, not '.' or '..'"
        )


def rx_csum_results(b: Batch, rows: Mask) -> None:
    e = b.ext
    valid = rows & ((e.vflags & VnetFlag.DATA_VALID) != 0)
    partial = rows & ((e.vflags & VnetFlag.NEEDS_CSUM) != 0) & ~valid
    e.csum_verdict[valid] = CsumVerdict.GOOD
    e.csum_verdict[partial] = CsumVerdict.PARTIAL


def _unavailable() -> str | None:
    """Why no TUN can be made here (no namespaces, no /dev/net/tun), or None."""
    reason = available()
    if reason is None and not os.path.exists(kc.TUN_PATH):
        reason = f"no {kc.TUN_PATH}"
    return reason


def _probe_factory() -> TunDevice:
    """``caps --device tun``: a throwaway namespace and TUN, removed on close()."""
    return kc.throwaway_device(
        "tun", _unavailable, lambda tb: TunDevice.open_in(tb.host("caps"), "tun0", owns=tb)
    )


register_device(
    "tun",
    _probe_factory,
    "Linux TUN with virtio_net_hdr: checksum, TSO/USO on write, GRO super-packets on read, cBPF",
)
