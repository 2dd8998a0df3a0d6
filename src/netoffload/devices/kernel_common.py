"""Linux constants, ioctl and struct helpers shared by the kernel devices.

TUN/TAP (linux/if_tun.h), socket options (UDP_SEGMENT, PACKET_*), classic BPF
attach (struct sock_fprog) and the bits of ``SIOCETHTOOL`` we use. Only
values and thin wrappers live here; the devices hold the logic.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from netoffload.batch import Batch

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
) -> tuple[int, str]:
    """Open /dev/net/tun and attach/create ``name``; returns (fd, actual name).

    The interface is created in the network namespace of the calling thread.
    """
    fd = os.open(TUN_PATH, os.O_RDWR | os.O_CLOEXEC | (os.O_NONBLOCK if nonblock else 0))
    try:
        flags = (IFF_TAP if tap else IFF_TUN) | IFF_NO_PI
        if vnet_hdr:
            flags |= IFF_VNET_HDR
        if multi_queue:
            flags |= IFF_MULTI_QUEUE
        out = fcntl.ioctl(fd, TUNSETIFF, ifreq(name, flags))
        actual = out[:IFNAMSIZ].split(b"\0", 1)[0].decode()
        if vnet_hdr:
            fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", vnet_hdr_len))
    except BaseException:
        os.close(fd)
        raise
    return fd, actual


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
    prog = SockFprog([(0x06, 0, 0, 0xFFFFFFFF)])
    fcntl.ioctl(fd, TUNDETACHFILTER, prog.pack())


def sock_attach_filter(sock_fd: int, insns: Sequence[Insn]) -> None:
    import socket

    prog = SockFprog(insns)
    s = socket.socket(fileno=os.dup(sock_fd))
    try:
        s.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, prog.pack())
    finally:
        s.close()


# --- namespaces ---------------------------------------------------------------------
CLONE_NEWNET = 0x40000000
_libc: ctypes.CDLL | None = None


def setns(fd: int, nstype: int = CLONE_NEWNET) -> None:
    """setns(2) for the calling thread (Python 3.11 has no os.setns)."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, nstype) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"setns: {os.strerror(e)}")


# --- batches from reads ---------------------------------------------------------------
class Arena:
    """Reads land straight in slots of a persistent buffer; ``batch()`` copies them out once.

    ``slot()`` gives the next writable region (``max_frame`` bytes after the
    headroom) or None when the arena is full; ``commit(n)`` keeps ``n`` bytes.
    """

    HEADROOM = 64
    TAILROOM = 64

    def __init__(self, size: int = 4 << 20, max_frame: int = 65535 + 14) -> None:
        import numpy as np

        self.max_frame = max_frame
        self.arena = np.empty(size, dtype=np.uint8)
        self._mv = memoryview(self.arena.data)
        self.starts: list[int] = []
        self.lens: list[int] = []
        self.off = 0

    def __len__(self) -> int:
        return len(self.starts)

    def reset(self) -> None:
        self.starts.clear()
        self.lens.clear()
        self.off = 0

    def slot(self) -> memoryview | None:
        s = self.off + self.HEADROOM
        if s + self.max_frame + self.TAILROOM > len(self.arena):
            return None
        return self._mv[s : s + self.max_frame]

    def commit(self, n: int) -> None:
        s = self.off + self.HEADROOM
        self.starts.append(s)
        self.lens.append(n)
        self.off = s + (n + self.TAILROOM + 63) // 64 * 64

    def batch(self) -> Batch:
        import numpy as np

        from netoffload.batch import Batch as _Batch
        from netoffload.batch import Ext

        n = len(self.starts)
        if n == 0:
            return _Batch.empty()
        start = np.array(self.starts, dtype=np.int64)
        length = np.array(self.lens, dtype=np.int64)
        slot_lo = start - self.HEADROOM
        slot_hi = np.empty(n, dtype=np.int64)
        slot_hi[:-1] = slot_lo[1:]
        slot_hi[-1] = self.off
        return _Batch(self.arena[: self.off].copy(), start, length, slot_lo, slot_hi, Ext(n), 0)


# --- filter push-down -------------------------------------------------------------------
@dataclass(frozen=True)
class PushDown:
    """What ``push_down`` did: attached in the kernel, or why not (software keeps filtering)."""

    attached: bool
    reason: str = ""
    instructions: int = 0
    #: rule parts no kernel filter can do (state across packets): they stay in software
    in_software: tuple[str, ...] = ()


def push_down(device: object, rules: object) -> PushDown:
    """Compile classification/DoS ``rules`` to classic BPF and attach them to ``device``.

    Only when the device reported the capability (a ``dos-filter`` record with
    the ``cbpf`` feature: TAP, UDP and packet sockets; a TUN answers EINVAL).
    Anything that fails -- no capability, rules that do not compile or do not
    fit, the kernel refusing the program -- returns ``attached=False`` with the
    reason; the software filter then stays in charge. Never raises for that.
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
    return PushDown(True, "", len(prog), rest)
