"""Linux constants, ioctl and struct helpers, and the logic the kernel devices share.

TUN/TAP (linux/if_tun.h), socket options (UDP_SEGMENT, PACKET_*), classic BPF
attach (struct sock_fprog) and the bits of ``SIOCETHTOOL`` we use; batches
filled by reads (``Arena``); the filter push-down. The base classes of the
kernel devices (``tun``, ``udp``, ``packet``) hold what they do alike: their
counters (``KernelCounters``), synchronous submits with completions kept until
``poll``, the closed/down state and error accounting (``KernelDevice``), the
probe answers kept by name (``ProbedDevice``), and the non-blocking send and
receive loops of a socket (``SocketDevice``). What is particular to one device
stays in its module.
"""

from __future__ import annotations

import abc
import ctypes
import dataclasses
import errno
import fcntl
import os
import select
import socket
import struct
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import numpy as np
from numpy.typing import NDArray

from netoffload.batch import Batch, Ext, FilterVerdict, Mask, Reason
from netoffload.caps import CapRecord, TaskOffloadBuffer
from netoffload.devices.base import Completion, DeviceLoad, SyncDevice, WireDevice
from netoffload.devices.registry import ProbeBed, probe_bed
from netoffload.errors import DeviceDown, DeviceError
from netoffload.netns import Netns, check_address
from netoffload.tasks import Task

# --- TUN/TAP ----------------------------------------------------------------
TUN_PATH = "/dev/net/tun"
TUNSETIFF = 0x400454CA
TUNGETIFF = 0x800454D2
TUNGETFEATURES = 0x800454CF
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
TUNGETVNETHDRSZ = 0x800454D7
TUNSETQUEUE = 0x400454D9
TUNATTACHFILTER = 0x401054D5
TUNDETACHFILTER = 0x401054D6

IFF_TUN = 0x0001
IFF_TAP = 0x0002
IFF_NAPI = 0x0010
IFF_MULTI_QUEUE = 0x0100
IFF_ATTACH_QUEUE = 0x0200
IFF_DETACH_QUEUE = 0x0400
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
IFF_TUN_EXCL = 0x8000  # create only: EBUSY if the name exists

TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08
TUN_F_UFO = 0x10
TUN_F_USO4 = 0x20
TUN_F_USO6 = 0x40

#: The offload bits probed one by one, by name.
TUN_OFFLOAD_BITS: dict[str, int] = {
    "csum": TUN_F_CSUM,
    "tso4": TUN_F_TSO4,
    "tso6": TUN_F_TSO6,
    "tso_ecn": TUN_F_TSO_ECN,
    "ufo": TUN_F_UFO,
    # the kernel takes USO4 and USO6 only together (one NETIF_F_GSO_UDP_L4 feature)
    "uso": TUN_F_USO4 | TUN_F_USO6,
}

IFNAMSIZ = 16

# --- sockets -----------------------------------------------------------------
SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
SO_ATTACH_FILTER = 26
SO_DETACH_FILTER = 27
SO_REUSEPORT = 15
SO_MARK = 36
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_VNET_HDR = 15
PACKET_FANOUT = 18
PACKET_FANOUT_HASH = 0
PACKET_FANOUT_FLAG_DEFRAG = 0x8000
PACKET_STATISTICS = 6
PACKET_IGNORE_OUTGOING = 23
ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD

# --- ethtool -------------------------------------------------------------------
SIOCETHTOOL = 0x8946
ETHTOOL_GSSET_INFO = 0x37
ETHTOOL_GSTRINGS = 0x1B
ETHTOOL_GFEATURES = 0x3A
ETHTOOL_SFEATURES = 0x3B
ETH_SS_FEATURES = 4
ETH_GSTRING_LEN = 32


def ifreq(name: str, flags: int = 0) -> bytes:
    """``struct ifreq`` with a name and short flags (40 bytes)."""
    raw = name.encode()
    if not raw or len(raw) >= IFNAMSIZ:
        raise ValueError(f"interface name {name!r}: 1..15 bytes")
    return struct.pack("16sH22x", raw, flags)


def ioctl_int(fd: int, req: int, value: int) -> None:
    """An ioctl that takes an ``int`` by pointer or value (TUNSETOFFLOAD takes it by value)."""
    fcntl.ioctl(fd, req, value)


def tun_open(
    name: str,
    *,
    tap: bool = False,
    vnet_hdr: bool = True,
    multi_queue: bool = False,
    nonblock: bool = True,
    vnet_hdr_len: int = 10,
    exclusive: bool = False,
) -> tuple[int, str]:
    """Open /dev/net/tun and attach/create ``name``; returns (fd, actual name).

    The interface is created in the network namespace of the calling thread.
    ``exclusive``: create only (IFF_TUN_EXCL); an existing ``name`` of any kind
    is EBUSY instead of being attached to.
    """
    fd = os.open(TUN_PATH, os.O_RDWR | os.O_CLOEXEC | (os.O_NONBLOCK if nonblock else 0))
    try:
        flags = (IFF_TAP if tap else IFF_TUN) | IFF_NO_PI
        if vnet_hdr:
            flags |= IFF_VNET_HDR
        if multi_queue:
            flags |= IFF_MULTI_QUEUE
        if exclusive:
            flags |= IFF_TUN_EXCL
        out = fcntl.ioctl(fd, TUNSETIFF, ifreq(name, flags))
        actual = out[:IFNAMSIZ].split(b"\0", 1)[0].decode()
        if vnet_hdr:
            fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", vnet_hdr_len))
    except BaseException:
        os.close(fd)
        raise
    return fd, actual


def tun_open_in(
    ns: Netns,
    ifname: str = "tun0",
    *,
    tap: bool = False,
    vnet_hdr: bool = True,
    multi_queue: bool = False,
    nonblock: bool = True,
    up: bool = True,
    addrs: Sequence[str] = (),
    mtu: int | None = None,
) -> tuple[int, str]:
    """Create (or attach another queue to) a TUN/TAP inside our namespace ``ns``.

    Returns ``(fd, ifname)``; the caller owns and closes the fd. The interface
    disappears with the namespace. Addresses must be in the test ranges.
    """
    for a in addrs:
        check_address(a)
    with ns.entered():
        fd, name = tun_open(
            ifname, tap=tap, vnet_hdr=vnet_hdr, multi_queue=multi_queue, nonblock=nonblock
        )
    try:
        if mtu is not None:
            ns.ip("link", "set", name, "mtu", str(mtu))
        for a in addrs:
            ns.add_address(name, a)
        if up:
            ns.ip("link", "set", name, "up")
    except BaseException:
        os.close(fd)
        raise
    return fd, name


def tun_features(fd: int) -> int:
    """TUNGETFEATURES: the IFF_* flags this kernel's TUN supports."""
    out = fcntl.ioctl(fd, TUNGETFEATURES, struct.pack("I", 0))
    return int(struct.unpack("I", out)[0])


def tun_probe_offloads(fd: int) -> dict[str, bool]:
    """TUNSETOFFLOAD bit by bit (each with its prerequisites); unknown bits answer EINVAL.

    Leaves the offloads off. TSO/UFO/USO need TUN_F_CSUM, TSO_ECN needs a TSO bit.
    """
    result: dict[str, bool] = {}
    for name, bit in TUN_OFFLOAD_BITS.items():
        value = bit
        if bit != TUN_F_CSUM:
            value |= TUN_F_CSUM
        if bit == TUN_F_TSO_ECN:
            value |= TUN_F_TSO4
        try:
            ioctl_int(fd, TUNSETOFFLOAD, value)
            result[name] = True
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            result[name] = False
    ioctl_int(fd, TUNSETOFFLOAD, 0)
    return result


# --- classic BPF ------------------------------------------------------------------
#: One cBPF instruction: (code, jt, jf, k).
Insn = tuple[int, int, int, int]
#: ``ret #-1``: a program that accepts every packet whole.
ACCEPT_ALL: tuple[Insn, ...] = ((0x06, 0, 0, 0xFFFFFFFF),)


class SockFprog:
    """A ``struct sock_fprog`` kept alive with its instruction array."""

    def __init__(self, insns: Sequence[Insn]) -> None:
        if not insns or len(insns) > 4096:
            raise ValueError(f"cBPF program of {len(insns)} instructions (1..4096)")
        raw = b"".join(struct.pack("HBBI", c, jt, jf, k) for c, jt, jf, k in insns)
        self._buf = ctypes.create_string_buffer(raw, len(raw))
        self.count = len(insns)

    def pack(self) -> bytes:
        return struct.pack("HL", self.count, ctypes.addressof(self._buf))


def tun_attach_filter(fd: int, insns: Sequence[Insn]) -> None:
    prog = SockFprog(insns)
    fcntl.ioctl(fd, TUNATTACHFILTER, prog.pack())


def tun_detach_filter(fd: int) -> None:
    prog = SockFprog(ACCEPT_ALL)
    fcntl.ioctl(fd, TUNDETACHFILTER, prog.pack())


def sock_attach_filter(sock_fd: int, insns: Sequence[Insn]) -> None:
    prog = SockFprog(insns)
    s = socket.socket(fileno=os.dup(sock_fd))
    try:
        s.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, prog.pack())
    finally:
        s.close()


def sock_filter_works(sock: socket.socket) -> bool:
    """Whether ``sock`` takes a cBPF program: ``ACCEPT_ALL`` attached, then detached."""
    try:
        sock_attach_filter(sock.fileno(), ACCEPT_ALL)
        sock.setsockopt(socket.SOL_SOCKET, SO_DETACH_FILTER, 0)
    except OSError:
        return False
    return True


#: The ``dos-filter`` record of a device that runs cBPF programs in the kernel.
CBPF_FILTER = CapRecord(Task.DOS_FILTER, max_rules=4096, features=("cbpf",))


# --- batches from reads ---------------------------------------------------------------
class Arena:
    """Reads land straight in slots of a persistent buffer, handed to the batch without a copy.

    ``slot()`` gives the next writable region (``max_frame`` bytes after the
    headroom) or None when the arena is full; ``commit(n)`` keeps ``n`` bytes;
    ``batch()`` makes the batch of what was read since ``reset()``.

    The batch's buffer is a view of the buffer the reads landed in: no copy.
    The next ``reset()`` reads into a buffer nobody holds a view of any more --
    the same one when the last batch is gone (the usual receive loop: its pages
    stay mapped and warm), another of a small pool when it is still held. When
    every pooled buffer is held, reads go to a scratch buffer that ``batch()``
    copies out of, so a held batch never changes under its holder. (A fresh
    buffer for every batch costs more than the copy it saves: its pages fault
    in, 94 against 15 us for 4 x 64 KB.)
    """

    HEADROOM = 64
    TAILROOM = 64
    POOL = 4  # buffers handed to batches, at most

    def __init__(self, size: int = 4 << 20, max_frame: int = 65535 + 14) -> None:
        self.max_frame = max_frame
        self.size = size
        self._pool: list[NDArray[np.uint8]] = []
        self._mvs: list[memoryview] = []
        self._scratch: tuple[NDArray[np.uint8], memoryview] | None = None
        self._add()
        # references to a buffer nobody else holds: the pool, its memoryview, the call
        self._idle_refs = sys.getrefcount(self._pool[0])
        self._cur = 0  # index in the pool, or -1: the scratch buffer (copied out)
        self._mv = self._mvs[0]  # (the buffer's own memoryview: no extra reference)
        self.starts: list[int] = []
        self.lens: list[int] = []
        self.off = 0

    def _add(self) -> None:
        a = np.empty(self.size, dtype=np.uint8)
        self._pool.append(a)
        self._mvs.append(memoryview(a.data))

    def __len__(self) -> int:
        return len(self.starts)

    def _idle(self, i: int) -> bool:
        return sys.getrefcount(self._pool[i]) <= self._idle_refs

    def reset(self) -> None:
        """Start a new batch, in a buffer no earlier batch still holds."""
        self.starts.clear()
        self.lens.clear()
        self.off = 0
        cur = self._cur
        if not (cur >= 0 and self._idle(cur)):
            cur = next((i for i in range(len(self._pool)) if self._idle(i)), -1)
            if cur < 0 and len(self._pool) < self.POOL:
                self._add()
                cur = len(self._pool) - 1
        self._cur = cur
        if cur >= 0:
            self._mv = self._mvs[cur]
        else:
            if self._scratch is None:
                a = np.empty(self.size, dtype=np.uint8)
                self._scratch = (a, memoryview(a.data))
            self._mv = self._scratch[1]

    def slot(self) -> memoryview | None:
        s = self.off + self.HEADROOM
        if s + self.max_frame + self.TAILROOM > self.size:
            return None
        return self._mv[s : s + self.max_frame]

    def commit(self, n: int) -> None:
        s = self.off + self.HEADROOM
        self.starts.append(s)
        self.lens.append(n)
        self.off = s + (n + self.TAILROOM + 63) // 64 * 64

    def batch(self) -> Batch:
        n = len(self.starts)
        if n == 0:
            return Batch.empty()
        start = np.array(self.starts, dtype=np.int64)
        length = np.array(self.lens, dtype=np.int64)
        slot_lo = start - self.HEADROOM
        slot_hi = np.empty(n, dtype=np.int64)
        slot_hi[:-1] = slot_lo[1:]
        slot_hi[-1] = self.off
        if self._cur >= 0:
            buf = self._pool[self._cur][: self.off]  # the batch holds it: no copy
        else:
            assert self._scratch is not None
            buf = self._scratch[0][: self.off].copy()
        return Batch(buf, start, length, slot_lo, slot_hi, Ext(n), 0)


# --- filter push-down -------------------------------------------------------------------
@dataclass(frozen=True)
class PushDown:
    """What ``push_down`` did: attached in the kernel, or why not (software keeps filtering)."""

    attached: bool
    reason: str = ""
    instructions: int = 0
    #: rule parts no kernel filter can do (state across packets): they stay in software
    in_software: tuple[str, ...] = ()
    #: the whole filter ran in the kernel (nothing in software): only then does the
    #: device mark ``dos-filter`` done on the packets it reads
    whole: bool = False


def push_down(device: object, rules: object) -> PushDown:
    """Compile classification/DoS ``rules`` to classic BPF and attach them to ``device``.

    Only when the device reported the capability (a ``dos-filter`` record with
    the ``cbpf`` feature: TAP, UDP and packet sockets; a TUN answers EINVAL).
    Anything that fails -- no capability, rules that do not compile or do not
    fit, the kernel refusing the program -- returns ``attached=False`` with the
    reason; the software filter then stays in charge. Never raises for that.

    The device marks ``dos-filter`` done on what it reads only when the program
    is the whole DoS filter (``whole``: a ``DosConfig`` with no part left to
    software). With token buckets, SYN limits or anti-replay configured, the
    kernel has done only the stateless part; the packets still go through the
    software filter (whose stateless checks then pass: the kernel dropped what
    they would), so the stateful rules still run.
    """
    from netoffload.errors import ConfigError, DeviceError
    from netoffload.tasks import Task

    query = getattr(device, "query", None)
    attach = getattr(device, "attach_filter", None)
    if query is None or attach is None:
        return PushDown(False, "device has no filter push-down")
    rec = query().record(Task.DOS_FILTER)
    if rec is None or "cbpf" not in rec.features:
        return PushDown(False, f"{getattr(device, 'name', 'device')}: no cBPF filter capability")
    try:
        from netoffload.bpf.compiler import BASE_NET, compile_filter, uncompiled
    except ImportError as e:  # the compiler is not part of this build
        return PushDown(False, f"no cBPF compiler: {e}")
    try:
        prog = compile_filter(rules, base=BASE_NET)  # type: ignore[arg-type]
    except (ConfigError, TypeError, ValueError, AttributeError) as e:
        return PushDown(False, f"rules do not compile to cBPF: {e}")
    rest: tuple[str, ...] = ()
    try:
        rest = tuple(uncompiled(rules))  # type: ignore[arg-type]
    except (TypeError, AttributeError):
        rest = ()
    if len(prog) > rec.max_rules > 0:
        return PushDown(False, f"program of {len(prog)} instructions > {rec.max_rules}")
    try:
        attach(prog)
    except DeviceError as e:
        return PushDown(False, f"kernel refused the program: {e}")
    from netoffload.soft.rules import DosConfig

    whole = isinstance(rules, DosConfig) and not rest
    if isinstance(device, KernelDevice):
        # the very program attached (a later attach_filter replaces the object)
        device._whole_filter = device._filter if whole else None
    return PushDown(True, "", len(prog), rest, whole)


# --- what the kernel devices share -------------------------------------------------------
class KernelCounters:
    """Base of the kernel devices' counter dataclasses (the fields are theirs, in their order).

    Each has a ``tx_dropped`` and an ``errno_counts`` field.
    """

    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]
    tx_dropped: int
    errno_counts: dict[str, int]

    def note(self, e: OSError) -> None:
        """Count ``e`` under its errno's name."""
        name = errno.errorcode.get(e.errno or 0, str(e.errno))
        self.errno_counts[name] = self.errno_counts.get(name, 0) + 1

    def as_dict(self) -> dict[str, object]:
        """Every field in order; ``errno_counts`` (a copy) under the key ``errno``."""
        out: dict[str, object] = {}
        for f in dataclasses.fields(self):
            if f.name == "errno_counts":
                out["errno"] = dict(self.errno_counts)
            else:
                out[f.name] = getattr(self, f.name)
        return out


def wait_writable(obj: int | socket.socket, until: float, *, exceptional: bool = False) -> bool:
    """Wait until ``obj`` is writable or the monotonic clock reaches ``until``.

    False when the time is up or ``select`` fails. ``exceptional``: ``obj`` is
    in the exception set as well (an exceptional condition alone answers False).
    """
    left = until - time.monotonic()
    if left <= 0:
        return False
    try:
        _, w, _x = select.select([], [obj], [obj] if exceptional else [], left)
    except (OSError, ValueError):
        return False
    return bool(w)


def mark_by_device(e: Ext, rows: Mask, task: Task) -> None:
    """``task`` done, by the device (the kernel), for ``rows``."""
    e.done[rows] |= np.uint16(task)
    e.by_device[rows] |= np.uint16(task)


def gso_segments(b: Batch, gso: Mask) -> None:
    """``ext.segs`` of the super-packets ``gso`` read: payload past ``hdr_len`` in ``gso_size``."""
    e = b.ext
    size = e.gso_size.astype(np.int64)
    np.maximum(size, 1, out=size)
    payload = b.length - e.hdr_len
    np.maximum(payload, 0, out=payload)
    payload += size - 1
    payload //= size
    np.minimum(payload, 65535, out=payload)
    if gso.all():  # the usual read of a TSO stream: no masking
        e.segs[:] = payload
    else:
        e.segs[gso] = payload[gso]


class KernelDevice(SyncDevice, WireDevice):
    """Base of the devices that are the Linux kernel: TUN/TAP, UDP and packet sockets.

    The kernel does their work at ``send`` (or did it before ``recv``), so a
    ``submit`` only checks and marks the batch and its completion waits in a
    list until ``poll``. An I/O error whose errno is in ``GONE`` means the
    device vanished: ``_gone`` makes the DeviceDown to raise and by default
    marks the device down for good (``_down`` says why). ``_close_handles``
    releases the fds; ``close`` then closes ``owns`` too (e.g. the Testbed of
    a throwaway probe).
    """

    #: errnos that mean the device vanished
    GONE: ClassVar[tuple[int, ...]] = ()

    def __init__(self, io: KernelCounters, *, io_timeout: float, owns: object | None) -> None:
        super().__init__()
        self.io_timeout = io_timeout
        self._io = io
        self._owns = owns
        self._filter: list[Insn] | None = None
        #: the attached program when push_down found it to be the whole DoS filter
        self._whole_filter: list[Insn] | None = None
        self._closed = False
        self._down = ""

    # ------------------------------------------------------------------ work
    def _begin(self, batch: Batch) -> Task:
        """Start a submit (a new ticket, the batch counted); the tasks any packet asks for."""
        self._check()
        self._ticket += 1
        self._account(batch)
        return Task(int(np.bitwise_or.reduce(batch.ext.offload)) if len(batch) else 0)

    def _refuse(self, batch: Batch, error: str) -> int:
        """Complete this submit as failed (the batch untouched) and count the error."""
        self.stats.errors += 1
        self._done.append(Completion(self._ticket, batch, ok=False, error=error))
        return self._ticket

    def _cannot_do(self, batch: Batch, extra: Task, why: str = "") -> int:
        """Refuse this submit: the device cannot do the tasks ``extra`` (``why`` follows)."""
        names = ", ".join(t.kebab for t in extra.members())
        return self._refuse(batch, f"{self.name}: cannot do {names}{why}")

    def _finish(self, batch: Batch, rows: Mask, done: NDArray[np.uint16]) -> int:
        """Complete this submit: the task bits ``done`` marked done, by the device, for ``rows``."""
        e = batch.ext
        e.done[rows] |= done[rows]
        e.by_device[rows] |= done[rows]
        self._done.append(Completion(self._ticket, batch))
        return self._ticket

    def _rx_filtered(self, e: Ext) -> None:
        """Every packet read passed the attached program in the kernel; when that
        program is the whole DoS filter (``push_down``'s ``whole``), the filter is
        done. Otherwise the kernel did a part at most, and nothing is marked."""
        if self._filter is not None and self._filter is self._whole_filter:
            e.done |= np.uint16(Task.DOS_FILTER)
            e.by_device |= np.uint16(Task.DOS_FILTER)
            e.filter_verdict[:] = FilterVerdict.PASS

    # ------------------------------------------------------------------ state
    def _check(self) -> None:
        if self._closed:
            raise DeviceDown(f"{self.name}: closed")
        if self._down:
            raise DeviceDown(f"{self.name}: {self._down}")

    def _io_error(self, err: OSError) -> None:
        """Count a failed read or write; raise DeviceDown if its errno is in ``GONE``."""
        self._io.note(err)
        self.stats.errors += 1
        if err.errno in self.GONE:
            raise self._gone(err) from None

    def _gone(self, err: OSError) -> DeviceDown:
        """The device vanished (``err.errno`` is in ``GONE``): the error to raise."""
        return self._went_down(str(err.strerror))

    def _went_down(self, why: str) -> DeviceDown:
        """Mark the device down for good (interface gone: ``why``); it can do nothing now."""
        self._down = f"interface gone ({why})"
        self._buffer = TaskOffloadBuffer(self.name, {}, {})
        return DeviceDown(f"{self.name}: {self._down}")

    @property
    def up(self) -> bool:
        return not (self._closed or self._down)

    def load(self) -> DeviceLoad:
        return DeviceLoad(len(self._done), 0, self.up)

    def counters(self) -> dict[str, object]:
        d = dict(self.stats.as_dict())
        d.update(self._io.as_dict())
        return d

    @abc.abstractmethod
    def _close_handles(self) -> None:
        """Close the device's fds (once, from ``close``)."""

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._close_handles()
        owns, self._owns = self._owns, None
        close = getattr(owns, "close", None)
        if close is not None:
            close()


class ProbedDevice(KernelDevice):
    """A kernel device whose ``probe`` keeps the kernel's answers, by name, in ``_probe``."""

    def __init__(self, io: KernelCounters, *, io_timeout: float, owns: object | None) -> None:
        super().__init__(io, io_timeout=io_timeout, owns=owns)
        self._probe: dict[str, bool] | None = None

    @property
    def probed(self) -> dict[str, bool]:
        """What the kernel answered when probed (probing now if it was not yet)."""
        if self._probe is None:
            self.query()
        assert self._probe is not None
        return dict(self._probe)


class SocketDevice(KernelDevice):
    """A kernel device behind one socket, made non-blocking (UDP, AF_PACKET)."""

    def __init__(
        self, sock: socket.socket, io: KernelCounters, *, io_timeout: float, owns: object | None
    ) -> None:
        super().__init__(io, io_timeout=io_timeout, owns=owns)
        self.sock = sock
        sock.setblocking(False)

    def attach_filter(self, insns: Sequence[Insn]) -> None:
        """SO_ATTACH_FILTER: the kernel drops what the program answers 0 for."""
        try:
            sock_attach_filter(self.sock.fileno(), insns)
        except OSError as e:
            raise DeviceError(f"{self.name}: SO_ATTACH_FILTER: {e.strerror}") from None
        self._filter = list(insns)

    def _send_each(
        self,
        batch: Batch,
        send_one: Callable[[int], object],
        refused: Callable[[int, OSError], bool | None],
    ) -> int:
        """Send each live packet of ``batch`` with ``send_one(i)``; returns how many went out.

        EAGAIN: wait for room, for at most ``io_timeout`` from the first EAGAIN
        since ``send_one`` last succeeded, then count the rest as ``tx_dropped``.
        EINTR: again. Another OSError is counted (DeviceDown if in ``GONE``),
        then ``refused(i, err)`` settles packet ``i``: True it went out after
        all, False it failed (``ext.error = DEVICE_ERROR``), None send it again.
        """
        n = len(batch)
        if n == 0:
            return 0
        e = batch.ext
        alive = e.alive()
        ok = 0
        deadline = 0.0
        i = 0
        while i < n:
            if not alive[i]:
                i += 1
                continue
            try:
                send_one(i)
                ok += 1
                i += 1
                deadline = 0.0
            except BlockingIOError:
                if not deadline:
                    deadline = time.monotonic() + self.io_timeout
                if not self._wait_writable(deadline):
                    self._io.tx_dropped += int(alive[i:].sum())
                    break
            except InterruptedError:
                continue
            except OSError as err:
                self._io_error(err)
                sent = refused(i, err)
                if sent is None:
                    continue
                if sent:
                    ok += 1
                else:
                    e.error[i] = Reason.DEVICE_ERROR
                i += 1
        return ok

    def _wait_writable(self, until: float) -> bool:
        return wait_writable(self.sock, until)

    def wait_readable(self, timeout: float) -> bool:
        self._check()
        r, _, _ = select.select([self.sock], [], [], timeout)
        return bool(r)

    def _read_each(
        self, arena: Arena, max_packets: int, read_one: Callable[[memoryview], object]
    ) -> Batch:
        """Up to ``max_packets`` reads (non-blocking) into ``arena``, as one batch.

        ``read_one(region)`` reads one packet into the arena's next slot and
        commits it (or not). Stops at EAGAIN, a full arena or another OSError,
        which is counted (DeviceDown if in ``GONE``; else the next call tries
        again).
        """
        arena.reset()
        while len(arena) < max_packets:
            region = arena.slot()
            if region is None:
                break
            try:
                read_one(region)
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            except OSError as err:
                self._io_error(err)
                break
        return arena.batch()

    def _close_handles(self) -> None:
        self.sock.close()


D = TypeVar("D", bound=KernelDevice)


def open_group(workers: int, open_one: Callable[[], D]) -> list[D]:
    """``workers`` devices from ``open_one``, their names suffixed ``#0``, ``#1``, ...

    If one fails to open, those already open are closed.
    """
    out: list[D] = []
    try:
        for i in range(workers):
            d = open_one()
            d.name = f"{d.name}#{i}"
            out.append(d)
    except BaseException:
        for d in out:
            d.close()
        raise
    return out


def throwaway_device(
    kind: str, unavailable: Callable[[], str | None], build: Callable[[ProbeBed], D]
) -> D:
    """The device ``caps --device <kind>`` probes, in throwaway namespaces its ``close()`` removes.

    ``unavailable()`` says why this machine can have none (DeviceError);
    ``build(bed)`` makes the device, owning ``bed`` (from the factory given to
    ``registry.set_probe_bed``: ``netoffload.testing.netns.Testbed``). It is
    queried before it is returned; if anything fails, the bed is closed.
    """
    reason = unavailable()
    if reason:
        raise DeviceError(f"{kind}: {reason}")
    tb = probe_bed(kind)
    try:
        dev = build(tb)
        dev.query()
    except BaseException:
        tb.close()
        raise
    return dev
