"""Batch and packet extension.

A ``Batch`` holds its packets in one contiguous ``uint8`` buffer. Packet ``i``
occupies ``buf[start[i] : start[i] + length[i]]`` inside its slot
``buf[slot_lo[i] : slot_hi[i]]``; the bytes of the slot before and after the
packet are its head and tail room, for what tasks add in place (an ESP header,
an ICV). Slots follow each other in packet order.

The packet extension is kept as a struct of arrays (``Ext``): one numpy array
per field, one element per packet, so that every task vectorises over the
batch. ``Batch.view(i)`` gives the per-packet view for the slow path and tests.

At the TUN / packet-socket boundary, and only there, an extension converts to
and from Linux ``struct virtio_net_hdr`` (10 bytes, or 12 with
``num_buffers``), native endian as TUN uses it.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from netoffload._enum import NUMPY_PLAIN
from netoffload.errors import BufferFormatError

U8 = NDArray[np.uint8]
I64 = NDArray[np.int64]
Mask = NDArray[np.bool_]


class GsoType(enum.IntEnum):
    """virtio_net_hdr gso_type values (linux/virtio_net.h)."""

    __array_ufunc__ = NUMPY_PLAIN  # numpy at int speed (see _enum)

    NONE = 0
    TCPV4 = 1
    UDP = 3
    TCPV6 = 4
    UDP_L4 = 5
    ECN = 0x80


class VnetFlag(enum.IntFlag):
    """virtio_net_hdr flags."""

    __array_ufunc__ = NUMPY_PLAIN  # numpy at int speed (see _enum)

    NEEDS_CSUM = 1
    DATA_VALID = 2
    RSC_INFO = 4


class XFlag(enum.IntFlag):
    """netoffload's own per-packet flags (not in virtio)."""

    __array_ufunc__ = NUMPY_PLAIN  # numpy at int speed (see _enum)

    FIXED_ID = 1  # keep the IPv4 ID constant across segments (SKB_GSO_TCP_FIXEDID)
    ETHERNET = 2  # the packet starts with an Ethernet header
    PARSED = 4  # l3/l4 offsets and protocols are filled in
    # the receive anti-replay window of the packet's SA is kept by the host
    # (DecryptTask.prepare checked it, DecryptTask.settle records it); whichever
    # path decrypts the packet leaves the window alone
    REPLAY_ON_HOST = 8
    # the DoS filter's stateful rules (buckets, SYN limits, replay pre-check) are
    # the host's (DosFilter.prepare flagged it, DosFilter.settle runs them); the
    # path that filters the packet does the stateless rules only
    FILTER_ON_HOST = 16


class CsumVerdict(enum.IntEnum):
    __array_ufunc__ = NUMPY_PLAIN  # numpy at int speed (see _enum)
    UNKNOWN = 0
    GOOD = 1
    BAD = 2
    NONE = 3  # UDP over IPv4 with checksum 0: no checksum to check
    PARTIAL = 4  # checksum left for a later stage / device (NEEDS_CSUM)


class FilterVerdict(enum.IntEnum):
    __array_ufunc__ = NUMPY_PLAIN  # numpy at int speed (see _enum)
    PASS = 0
    DROP = 1
    MARK = 2


class Reason(enum.IntEnum):
    """Why a packet failed or was dropped. One counter per reason.

    Value ranges by area: 1-29 foundation/parsing, 30-49 segmentation and
    assembly, 50-69 crypto and digest, 70-99 classification and DoS filtering,
    100-119 kernel devices, 120-139 emulated NIC and policies.
    """

    __array_ufunc__ = NUMPY_PLAIN  # numpy at int speed (see _enum)

    NONE = 0
    TRUNCATED = 1
    BAD_IP_VERSION = 2
    BAD_IHL = 3
    BAD_IP_LENGTH = 4
    BAD_L4_LENGTH = 5
    NOT_TCP_OR_UDP = 6
    BAD_CSUM_OFFSETS = 7
    BAD_CHECKSUM = 8
    IPV6_EXT_UNSUPPORTED = 9
    FRAGMENT = 10
    NOT_IP = 11
    BAD_VNET_HDR = 12
    TOO_BIG = 13
    DEVICE_ERROR = 14
    # segmentation and assembly
    GSO_SIZE_ZERO = 30
    GSO_SIZE_TOO_BIG = 31
    NOT_TCP = 32
    NOT_UDP = 33
    BAD_HDR_LEN = 34
    SUPER_TOO_BIG = 35
    TOO_MANY_SEGMENTS = 36
    # crypto and digest
    UNKNOWN_SA = 50
    BAD_ICV = 51
    BAD_PADDING = 52
    BAD_ESP = 53
    BAD_DIGEST = 54
    REPLAY = 55
    TOO_OLD = 56
    SEQ_EXHAUSTED = 57
    # WireGuard transport (tunnel/datapath.py)
    STAGED = 58  # no session key yet: handed to the protocol core, sent after the handshake
    KEEPALIVE = 59  # an authenticated keepalive (empty payload): consumed, not delivered
    NO_ENDPOINT = 60  # the peer has no known endpoint to send to
    HANDSHAKE = 61  # a handshake message: handed to the protocol core
    BAD_MAC1 = 62
    # ESP decapsulation (soft/crypto.py)
    ECN_DROP = 63  # a Not-ECT inner packet arrived in a CE-marked outer one (RFC 6040)
    SELECTOR_MISMATCH = 64  # the inner packet is outside the SA's traffic selectors (RFC 4301)
    # classification and DoS
    RULE_DROP = 70
    RATE_LIMIT = 71
    SYN_FLOOD = 72
    DROP_LIST = 73
    BAD_SIZE = 74
    BAD_FRAGMENT = 75
    NO_PEER = 76  # transmit: no peer's AllowedIPs hold the destination
    BAD_SOURCE = 77  # receive: the inner source is not in the sending peer's AllowedIPs
    UNKNOWN_INDEX = 78  # receive: no session has this receiver index
    BAD_MESSAGE = 79  # receive: not a WireGuard message (type / length)
    HANDSHAKE_RATE = 80  # receive: the source sent handshakes over its rate
    COOKIE_NEEDED = 81  # receive: under load, a handshake without a valid mac2 (cookie sent)
    # kernel devices
    KERNEL_DROP = 100
    # emulated NIC, policies
    NIC_DOWN = 120


@dataclass(frozen=True)
class FieldSpec:
    dtype: type[np.generic]
    default: int


#: The packet extension, field by field.
EXT_FIELDS: dict[str, FieldSpec] = {
    # what is asked and what was done
    "tasks": FieldSpec(np.uint16, 0),  # Task bits requested
    "done": FieldSpec(np.uint16, 0),  # Task bits performed (by anyone)
    "by_device": FieldSpec(np.uint16, 0),  # Task bits performed by a device
    "offload": FieldSpec(np.uint16, 0),  # Task bits handed to a device in the current trip
    "origin": FieldSpec(np.int64, -1),  # index of the engine input packet this came from
    "sub": FieldSpec(np.uint64, 0),  # order among packets of one origin (see refine_sub)
    # header layout
    "l3_off": FieldSpec(np.int32, 0),
    "l4_off": FieldSpec(np.int32, -1),
    "hdr_len": FieldSpec(np.int32, 0),  # L2+L3+L4 header bytes (virtio hdr_len)
    "l3_proto": FieldSpec(np.uint8, 0),  # 4, 6 or 0
    "l4_proto": FieldSpec(np.uint8, 0),  # IP protocol number of the L4 header
    # offload requests (virtio semantics)
    "vflags": FieldSpec(np.uint8, 0),  # VnetFlag
    "gso_type": FieldSpec(np.uint8, 0),  # GsoType
    "gso_size": FieldSpec(np.uint16, 0),
    "csum_start": FieldSpec(np.int32, 0),
    "csum_offset": FieldSpec(np.int32, 0),
    "num_buffers": FieldSpec(np.uint16, 0),
    "xflags": FieldSpec(np.uint8, 0),  # XFlag
    # context for keyed tasks
    "sa": FieldSpec(np.int32, -1),  # security association index, -1 none
    "seq": FieldSpec(np.uint64, 0),  # ESP sequence number (64-bit, ESN)
    "segs": FieldSpec(np.uint16, 0),  # segments merged into this packet (assembly)
    # results
    "csum_verdict": FieldSpec(np.uint8, 0),  # CsumVerdict
    "class_id": FieldSpec(np.int32, -1),
    "rss_hash": FieldSpec(np.uint32, 0),
    "filter_verdict": FieldSpec(np.uint8, 0),  # FilterVerdict
    "filter_reason": FieldSpec(np.uint16, 0),  # Reason
    "error": FieldSpec(np.uint16, 0),  # Reason; non-zero: the packet failed
}


_DROP = int(FilterVerdict.DROP)  # a plain int (cheaper for numpy than an IntEnum)
_ZERO_FIELDS = tuple((k, np.dtype(f.dtype)) for k, f in EXT_FIELDS.items() if f.default == 0)
_FILLED_FIELDS = tuple(
    (k, np.dtype(f.dtype), f.default) for k, f in EXT_FIELDS.items() if f.default != 0
)


class Ext:
    """Packet extensions of a batch, as a struct of arrays."""

    __slots__ = tuple(EXT_FIELDS)

    tasks: NDArray[np.uint16]
    done: NDArray[np.uint16]
    by_device: NDArray[np.uint16]
    offload: NDArray[np.uint16]
    origin: NDArray[np.int64]
    sub: NDArray[np.uint64]
    l3_off: NDArray[np.int32]
    l4_off: NDArray[np.int32]
    hdr_len: NDArray[np.int32]
    l3_proto: NDArray[np.uint8]
    l4_proto: NDArray[np.uint8]
    vflags: NDArray[np.uint8]
    gso_type: NDArray[np.uint8]
    gso_size: NDArray[np.uint16]
    csum_start: NDArray[np.int32]
    csum_offset: NDArray[np.int32]
    num_buffers: NDArray[np.uint16]
    xflags: NDArray[np.uint8]
    sa: NDArray[np.int32]
    seq: NDArray[np.uint64]
    segs: NDArray[np.uint16]
    csum_verdict: NDArray[np.uint8]
    class_id: NDArray[np.int32]
    rss_hash: NDArray[np.uint32]
    filter_verdict: NDArray[np.uint8]
    filter_reason: NDArray[np.uint16]
    error: NDArray[np.uint16]

    def __init__(self, n: int, **arrays: Any) -> None:
        if not arrays:  # every field its default (np.zeros is 5x faster than np.full)
            for name, dt in _ZERO_FIELDS:
                setattr(self, name, np.zeros(n, dt))
            for name, dt, v in _FILLED_FIELDS:
                a = np.empty(n, dt)
                a.fill(v)
                setattr(self, name, a)
            return
        for name, spec in EXT_FIELDS.items():
            a = arrays.pop(name, None)
            if a is None:
                arr = np.full(n, spec.default, dtype=spec.dtype)
            else:
                arr = np.asarray(a, dtype=spec.dtype)
                if arr.shape != (n,):
                    raise ValueError(f"ext field {name}: shape {arr.shape}, want ({n},)")
            setattr(self, name, arr)
        if arrays:
            raise TypeError(f"unknown ext fields: {sorted(arrays)}")

    @classmethod
    def _of(cls, arrays: Iterable[NDArray[Any]]) -> Ext:
        """An Ext of arrays made here, one per field in EXT_FIELDS order, already
        of their dtype and length (no checks: take, copy and concat)."""
        e = cls.__new__(cls)
        for name, a in zip(EXT_FIELDS, arrays, strict=True):
            setattr(e, name, a)
        return e

    def __len__(self) -> int:
        return len(self.tasks)

    def take(self, idx: NDArray[np.integer[Any]] | Mask) -> Ext:
        return Ext._of([getattr(self, f)[idx] for f in EXT_FIELDS])

    def copy(self) -> Ext:
        return Ext._of([getattr(self, f).copy() for f in EXT_FIELDS])

    @staticmethod
    def concat(parts: Sequence[Ext]) -> Ext:
        if not parts:
            return Ext(0)
        return Ext._of([np.concatenate([getattr(p, f) for p in parts]) for f in EXT_FIELDS])

    def alive(self) -> Mask:
        """Packets that have neither failed nor been dropped by a filter."""
        return np.asarray((self.error == 0) & (self.filter_verdict != _DROP))

    def row(self, i: int) -> dict[str, int]:
        return {f: int(getattr(self, f)[i]) for f in EXT_FIELDS}

    def set_row(self, i: int, values: dict[str, int]) -> None:
        for f, v in values.items():
            if f not in EXT_FIELDS:
                raise KeyError(f"unknown ext field {f!r}")
            getattr(self, f)[i] = v

    def equals(self, other: Ext) -> bool:
        return len(self) == len(other) and all(
            np.array_equal(getattr(self, f), getattr(other, f)) for f in EXT_FIELDS
        )


@dataclass
class PacketView:
    """One packet of a batch, for the slow path and tests (a copy of its bytes)."""

    data: bytes
    ext: dict[str, int]
    headroom: int
    tailroom: int


DEFAULT_HEADROOM = 64
DEFAULT_TAILROOM = 64
_ALIGN = 64


def _round_up(x: int, a: int = _ALIGN) -> int:
    return (x + a - 1) // a * a


class Batch:
    """Packets in contiguous memory with head and tail room, plus extensions."""

    __slots__ = ("buf", "ext", "length", "slot_hi", "slot_lo", "start", "stride")

    def __init__(
        self,
        buf: U8,
        start: I64,
        length: I64,
        slot_lo: I64,
        slot_hi: I64,
        ext: Ext,
        stride: int = 0,
    ) -> None:
        self.buf = buf
        self.start = start
        self.length = length
        self.slot_lo = slot_lo
        self.slot_hi = slot_hi
        self.ext = ext
        #: > 0 when slot i is exactly buf[i*stride:(i+1)*stride] (a 2-D view exists)
        self.stride = stride

    # ----------------------------------------------------------------- build
    @classmethod
    def empty(cls) -> Batch:
        z = np.zeros(0, dtype=np.int64)
        return cls(np.zeros(0, np.uint8), z, z.copy(), z.copy(), z.copy(), Ext(0), 0)

    @classmethod
    def alloc(
        cls,
        lengths: Sequence[int] | I64,
        headroom: int = DEFAULT_HEADROOM,
        tailroom: int = DEFAULT_TAILROOM,
        uniform: bool = True,
    ) -> Batch:
        """A batch of zeroed packets of the given lengths.

        ``uniform`` lays slots at a fixed stride (a 2-D view of the batch is then
        free); otherwise each slot is just large enough (for mixed huge/small).
        """
        lens = np.asarray(lengths, dtype=np.int64)
        n = len(lens)
        if n == 0:
            return cls.empty()
        if (lens < 0).any():
            raise ValueError("negative packet length")
        if uniform:
            stride = _round_up(headroom + int(lens.max()) + tailroom)
            slot_lo = np.arange(n, dtype=np.int64) * stride
            slot_hi = slot_lo + stride
        else:
            stride = 0
            sizes = np.array(
                [_round_up(headroom + int(x) + tailroom) for x in lens], dtype=np.int64
            )
            slot_hi = np.cumsum(sizes)
            slot_lo = slot_hi - sizes
        buf = np.zeros(int(slot_hi[-1]), dtype=np.uint8)
        start = slot_lo + headroom
        return cls(buf, start, lens.copy(), slot_lo, slot_hi, Ext(n), stride)

    @classmethod
    def from_packets(
        cls,
        packets: Iterable[bytes | bytearray | memoryview],
        headroom: int = DEFAULT_HEADROOM,
        tailroom: int = DEFAULT_TAILROOM,
        uniform: bool | None = None,
    ) -> Batch:
        pkts = [bytes(p) for p in packets]
        lens = np.fromiter((len(p) for p in pkts), dtype=np.int64, count=len(pkts))
        if uniform is None:
            # uniform unless very mixed sizes would waste a lot of memory
            uniform = len(pkts) == 0 or int(lens.max()) <= 4 * max(1, int(lens.mean()))
        b = cls.alloc(lens, headroom, tailroom, uniform)
        if len(pkts):
            joined = np.frombuffer(b"".join(pkts), dtype=np.uint8)
            copy_ranges(b.buf, b.start, joined, np.cumsum(lens) - lens, lens)
        return b

    # ----------------------------------------------------------------- access
    def __len__(self) -> int:
        return len(self.length)

    def __repr__(self) -> str:
        return f"Batch(n={len(self)}, bytes={self.nbytes}, stride={self.stride})"

    @property
    def nbytes(self) -> int:
        """Total packet bytes (not counting room)."""
        return int(self.length.sum())

    @property
    def headroom(self) -> I64:
        return self.start - self.slot_lo

    @property
    def tailroom(self) -> I64:
        return self.slot_hi - self.start - self.length

    def packet(self, i: int) -> memoryview:
        s = int(self.start[i])
        return memoryview(self.buf.data)[s : s + int(self.length[i])]

    def packets(self) -> list[bytes]:
        return [bytes(self.packet(i)) for i in range(len(self))]

    def view(self, i: int) -> PacketView:
        return PacketView(
            bytes(self.packet(i)),
            self.ext.row(i),
            int(self.headroom[i]),
            int(self.tailroom[i]),
        )

    def matrix(self) -> NDArray[np.uint8]:
        """(n, stride) view of the slots; only for uniform batches."""
        if self.stride <= 0:
            raise ValueError("batch has no uniform stride")
        return self.buf[: len(self) * self.stride].reshape(len(self), self.stride)

    def flat_bytes(self) -> U8:
        """All packet bytes back to back (a copy)."""
        return self.buf[gather_index(self.start, self.length)]

    # ----------------------------------------------------------------- reshape
    def take(self, idx: NDArray[np.integer[Any]] | Mask) -> Batch:
        """A new batch with the selected packets (copied), same room layout."""
        idx = np.flatnonzero(idx) if idx.dtype == np.bool_ else np.asarray(idx, np.int64)
        n = len(idx)
        if n == 0:
            return Batch.empty()
        lo = self.slot_lo[idx]
        hi = self.slot_hi[idx]
        sizes = hi - lo
        if self.stride > 0:
            stride = self.stride
            new_lo = np.arange(n, dtype=np.int64) * stride
        else:
            stride = 0
            new_hi = np.cumsum(sizes)
            new_lo = new_hi - sizes
        new_hi = new_lo + sizes
        if stride > 0 and (sizes == stride).all():
            # uniform slots: copy whole rows of the (n, stride) view (much faster)
            buf = self.matrix()[idx].reshape(-1)
        else:
            buf = np.empty(int(new_hi[-1]), dtype=np.uint8)
            copy_ranges(buf, new_lo, self.buf, lo, sizes)
        start = new_lo + (self.start[idx] - lo)
        return Batch(
            buf, start, self.length[idx].copy(), new_lo, new_hi, self.ext.take(idx), stride
        )

    def slice(self, lo: int, hi: int) -> Batch:
        """Packets ``lo..hi-1`` as a view: no packet byte is copied.

        The view shares this batch's buffer, lengths and extensions (writes to
        them show through; the slots of two views of disjoint ranges are
        disjoint); its ``start``/``slot_lo``/``slot_hi`` are rebased copies
        unless ``lo`` is 0. Only for uniform batches (``stride > 0``): others
        get ``take`` (a copy)."""
        n = len(self)
        lo, hi = max(0, lo), min(n, hi)
        st = self.stride
        if st <= 0 or len(self.buf) < n * st:
            return self.take(np.arange(lo, hi, dtype=np.int64))
        if hi <= lo:
            return Batch.empty()
        base = lo * st
        e = self.ext
        ext = Ext.__new__(Ext)
        for f in EXT_FIELDS:
            object.__setattr__(ext, f, getattr(e, f)[lo:hi])
        if base == 0:
            start, slot_lo, slot_hi = self.start[:hi], self.slot_lo[:hi], self.slot_hi[:hi]
        else:
            start = self.start[lo:hi] - base
            slot_lo = self.slot_lo[lo:hi] - base
            slot_hi = self.slot_hi[lo:hi] - base
        return Batch(self.buf[base : hi * st], start, self.length[lo:hi], slot_lo, slot_hi, ext, st)

    def copy(self) -> Batch:
        return Batch(
            self.buf.copy(),
            self.start.copy(),
            self.length.copy(),
            self.slot_lo.copy(),
            self.slot_hi.copy(),
            self.ext.copy(),
            self.stride,
        )

    @staticmethod
    def concat(parts: Sequence[Batch]) -> Batch:
        parts = [p for p in parts if len(p)]
        if not parts:
            return Batch.empty()
        if len(parts) == 1:
            return parts[0]
        offs = np.cumsum([0] + [len(p.buf) for p in parts[:-1]])
        buf = np.concatenate([p.buf for p in parts])
        strides = {p.stride for p in parts}
        stride = parts[0].stride if len(strides) == 1 else 0
        # uniform only if every part's buffer is exactly n*stride
        if stride and any(len(p.buf) != len(p) * stride for p in parts):
            stride = 0
        return Batch(
            buf,
            np.concatenate([p.start + o for p, o in zip(parts, offs, strict=True)]),
            np.concatenate([p.length for p in parts]),
            np.concatenate([p.slot_lo + o for p, o in zip(parts, offs, strict=True)]),
            np.concatenate([p.slot_hi + o for p, o in zip(parts, offs, strict=True)]),
            Ext.concat([p.ext for p in parts]),
            stride,
        )

    def equal_packets(self, other: Batch) -> bool:
        return (
            len(self) == len(other)
            and np.array_equal(self.length, other.length)
            and np.array_equal(self.flat_bytes(), other.flat_bytes())
        )


def merge_by_origin(parts: Sequence[Batch]) -> Batch:
    """Concatenate parts and restore engine order by ``(ext.origin, ext.sub)``.

    Every part must itself be in that order; the keys are unique (``refine_sub``
    keeps them so when a task turns one packet into several).
    """
    b = Batch.concat(parts)
    if len(b) < 2:
        return b
    e = b.ext
    o = e.origin
    if (o[1:] > o[:-1]).all():
        return b  # strictly increasing origins: already in order
    order = np.lexsort((e.sub, o))
    if np.array_equal(order, np.arange(len(b))):
        return b
    return b.take(order)


#: bits of ``sub`` given to the piece index at the first level of refinement
_SUB_TOP = 48
_SUB_STEP = 16


def refine_sub(b: Batch) -> None:
    """Make ``(origin, sub)`` unique again after a task turned packets into pieces.

    ``sub`` is a fixed-point fraction: the pieces of a packet keep its key and
    add ``j << shift``, ``j`` the piece's index and ``shift`` 16 bits below the
    lowest bit already in use (48 for a whole packet), so pieces sort between
    their packet and the next one at every depth, including against parts of
    the batch that were split off before. Up to 65536 pieces a packet and three
    nested levels are exact. ``b`` must be in order (as every task leaves it).
    """
    n = len(b)
    if n < 2:
        return
    e = b.ext
    o, s = e.origin, e.sub
    new_run = np.empty(n, dtype=np.bool_)
    new_run[0] = True
    np.logical_or(o[1:] != o[:-1], s[1:] != s[:-1], out=new_run[1:])
    if new_run.all():
        return
    idx = np.arange(n, dtype=np.int64)
    first = np.maximum.accumulate(np.where(new_run, idx, 0))
    j = (idx - first).astype(np.uint64)
    # lowest set bit of s (0 -> treat as the top level)
    low = s & (~s + np.uint64(1))
    lsb = np.where(s == 0, _SUB_TOP + _SUB_STEP, np.log2(np.maximum(low, 1)).astype(np.int64))
    shift = np.maximum(lsb - _SUB_STEP, 0).astype(np.uint64)
    e.sub[:] = s + (j << shift)


def copy_ranges(dst: U8, dst_starts: I64, src: U8, src_starts: I64, lengths: I64) -> None:
    """``dst[dst_starts[i]:+lengths[i]] = src[src_starts[i]:+lengths[i]]`` for every i
    (ranges may overlap, also within one buffer). One memmove a range in the C kernel;
    without it, one numpy gather (8 bytes of index a byte copied: for bulk payloads the
    kernel is 10-50x faster)."""
    from netoffload._native import kernel

    ds = np.ascontiguousarray(dst_starts, dtype=np.int64)
    ss = np.ascontiguousarray(src_starts, dtype=np.int64)
    ln = np.ascontiguousarray(lengths, dtype=np.int64)
    if kernel is not None and dst.flags.c_contiguous and src.flags.c_contiguous:
        kernel.copy_ranges(dst, ds, src, ss, ln)
        return
    if len(ln):
        dst[gather_index(ds, ln)] = src[gather_index(ss, ln)]


def gather_index(starts: I64, lengths: I64) -> I64:
    """Flat indices of the byte ranges [starts[i], starts[i]+lengths[i]), in order."""
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    # index = arange(total) + (starts - cumulative lengths) repeated per range
    csum = np.cumsum(lengths) - lengths
    base = np.repeat(np.asarray(starts, dtype=np.int64) - csum, lengths)
    return base + np.arange(total, dtype=np.int64)


# ---------------------------------------------------------------------------
# virtio_net_hdr, at the device boundary only.
#   struct virtio_net_hdr { u8 flags; u8 gso_type; u16 hdr_len; u16 gso_size;
#                           u16 csum_start; u16 csum_offset; }  (+ u16 num_buffers)
# Native endian, as TUN uses with IFF_VNET_HDR on a little-endian host.

VNET_HDR_LEN = 10
VNET_HDR_MRG_LEN = 12
_VNET = struct.Struct("=BBHHHH")
_VNET_MRG = struct.Struct("=BBHHHHH")
_VNET_DTYPE = np.dtype(
    [
        ("flags", "u1"),
        ("gso_type", "u1"),
        ("hdr_len", "=u2"),
        ("gso_size", "=u2"),
        ("csum_start", "=u2"),
        ("csum_offset", "=u2"),
    ]
)
_VNET_MRG_DTYPE = np.dtype([*_VNET_DTYPE.descr, ("num_buffers", "=u2")])


def vnet_dtype(size: int) -> np.dtype[Any]:
    if size == VNET_HDR_LEN:
        return _VNET_DTYPE
    if size == VNET_HDR_MRG_LEN:
        return _VNET_MRG_DTYPE
    raise ValueError(f"virtio_net_hdr size must be 10 or 12, not {size}")


def ext_to_vnet(ext: Ext, size: int = VNET_HDR_LEN) -> bytes:
    """The extensions as ``len(ext)`` packed virtio_net_hdr structs."""
    a = np.zeros(len(ext), dtype=vnet_dtype(size))
    a["flags"] = ext.vflags
    a["gso_type"] = ext.gso_type
    a["hdr_len"] = ext.hdr_len
    a["gso_size"] = ext.gso_size
    a["csum_start"] = ext.csum_start
    a["csum_offset"] = ext.csum_offset
    if size == VNET_HDR_MRG_LEN:
        a["num_buffers"] = ext.num_buffers
    return a.tobytes()


def vnet_to_ext(raw: bytes | memoryview, size: int = VNET_HDR_LEN, ext: Ext | None = None) -> Ext:
    """Packed virtio_net_hdr structs into extension fields (the others default)."""
    dt = vnet_dtype(size)
    if len(raw) % size:
        raise BufferFormatError(
            "virtio_net_hdr array", len(raw) - len(raw) % size, "truncated header"
        )
    a = np.frombuffer(raw, dtype=dt)
    out = ext if ext is not None else Ext(len(a))
    out.vflags[:] = a["flags"]
    out.gso_type[:] = a["gso_type"]
    out.hdr_len[:] = a["hdr_len"]
    out.gso_size[:] = a["gso_size"]
    out.csum_start[:] = a["csum_start"]
    out.csum_offset[:] = a["csum_offset"]
    if size == VNET_HDR_MRG_LEN:
        out.num_buffers[:] = a["num_buffers"]
    return out


def pack_vnet(
    flags: int,
    gso_type: int,
    hdr_len: int,
    gso_size: int,
    csum_start: int,
    csum_offset: int,
    num_buffers: int | None = None,
) -> bytes:
    """One virtio_net_hdr (reference packer, for a single packet)."""
    if num_buffers is None:
        return _VNET.pack(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)
    return _VNET_MRG.pack(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, num_buffers)


_XF_ETHERNET = np.uint8(XFlag.ETHERNET)  # (numpy is fastest with numpy scalars)
_XF_PARSED = np.uint8(XFlag.PARSED)


def l2_len(b: Batch, rows: NDArray[np.int64] | slice) -> NDArray[np.int64]:
    """Per selected packet, the bytes before its IP header: 0 for a bare IP packet,
    the parsed L3 offset (or 14 unparsed) for an Ethernet frame."""
    e = b.ext
    xf = e.xflags[rows]
    eth = (xf & _XF_ETHERNET) != 0
    if not eth.any():  # bare IP packets, the usual case
        return np.zeros(len(xf), np.int64)
    parsed = (xf & _XF_PARSED) != 0
    return np.where(eth, np.where(parsed, e.l3_off[rows], 14), 0).astype(np.int64)
