"""Shared-memory descriptor rings between the host and the emulated NIC.

One ``multiprocessing.shared_memory`` segment holds, as numpy views:

``ctrl``
    int64 words: submission head/tail, completion head/tail (monotonic
    counters; slot = counter % slots), a stop flag and the worker's pid.
``sq`` / ``cq``
    the submission and completion rings: ``slots`` fixed-size descriptors
    each (structured numpy arrays). A submission descriptor names a ticket,
    a data region, the task order and the time it was posted; a completion
    descriptor names the ticket, its region, a status, and device-side times.
``regions``
    ``slots`` packet data areas of ``region_bytes`` each. A batch is laid out
    in its region as a small header, the slot arrays (start, length, slot_lo,
    slot_hi), one array per extension field, and the packet buffer — plain
    numpy copies, nothing is pickled. The device writes its output batch back
    into the same region.

Each ring has exactly one producer and one consumer (host → device for
``sq``, device → host for ``cq``): the producer writes the descriptor, then
advances the tail; the consumer reads it, then advances the head. Only the
host allocates and frees regions (a region is free again once its completion
has been read), so no locks are needed. Doorbells (semaphores, optional) wake
a consumer that sleeps instead of polling.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing import resource_tracker, shared_memory
from typing import Any

import numpy as np
from numpy.typing import NDArray

from netoffload.batch import EXT_FIELDS, Batch, Ext
from netoffload.errors import BufferFormatError, ConfigError
from netoffload.tasks import ALL_TASKS, Task

# ctrl words
SQ_HEAD, SQ_TAIL, CQ_HEAD, CQ_TAIL, STOP, WORKER_PID, READY = range(7)
CTRL_WORDS = 16

SQ_DTYPE = np.dtype(
    [
        ("ticket", "<i8"),
        ("region", "<i8"),
        ("order", "<i8"),  # packed task order, see pack_order
        ("posted_ns", "<i8"),  # CLOCK_MONOTONIC (time.perf_counter_ns), same in both processes
        ("arg", "<i8"),  # spare word for the consumer (e.g. a debug command)
    ]
)
NTASKS = len(ALL_TASKS)
CQ_DTYPE = np.dtype(
    [
        ("ticket", "<i8"),
        ("region", "<i8"),
        ("status", "<i8"),  # 0 ok, else an error code (the output region is not valid)
        ("wait_ns", "<i8"),  # posted -> taken by the device
        ("service_ns", "<i8"),  # taken -> completed
        ("task_ns", "<i8", (NTASKS,)),  # service time per task (by task index)
    ]
)

_HDR_WORDS = 4  # n, buflen, stride, used bytes
_ALIGN = 8
#: per packet: start, length, slot_lo, slot_hi (int64) + every extension field
_SLOT_ARRAYS = ("start", "length", "slot_lo", "slot_hi")


def _a8(x: int) -> int:
    return (x + _ALIGN - 1) // _ALIGN * _ALIGN


@functools.lru_cache(maxsize=4096)
def _ext_layout(n: int) -> tuple[tuple[str, np.dtype[Any], int, int], ...]:
    """(name, dtype, byte size, offset from the header's end) of each per-packet
    array of an ``n``-packet batch."""
    out: list[tuple[str, np.dtype[Any], int, int]] = []
    off = _HDR_WORDS * 8
    for name in _SLOT_ARRAYS:
        out.append((name, np.dtype(np.int64), 8 * n, off))
        off += _a8(8 * n)
    for name, spec in EXT_FIELDS.items():
        dt = np.dtype(spec.dtype)
        out.append((name, dt, dt.itemsize * n, off))
        off += _a8(dt.itemsize * n)
    return tuple(out)


@functools.lru_cache(maxsize=4096)
def _arrays_end(n: int) -> int:
    """Where the packet buffer starts in the region of an ``n``-packet batch."""
    _, _, nbytes, off = _ext_layout(n)[-1]
    return off + _a8(nbytes)


def encoded_size(n: int, buflen: int) -> int:
    """Bytes a batch of ``n`` packets with a ``buflen``-byte buffer needs in a region."""
    return _arrays_end(n) + _a8(buflen)


def packets_that_fit(region_bytes: int, slot_bytes: NDArray[np.int64]) -> int:
    """The most of the packets with these slot sizes, counted from the last, that
    one region of ``region_bytes`` holds (as a batch of their slots)."""
    n = len(slot_bytes)
    if not n or encoded_size(n, int(slot_bytes.sum())) <= region_bytes:
        return n
    tail = np.cumsum(slot_bytes[::-1])  # buffer bytes of the last k packets, k = 1..n
    lo, hi = 0, n  # encoded_size grows with k: the largest that fits, by bisection
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if encoded_size(mid, int(tail[mid - 1])) <= region_bytes:
            lo = mid
        else:
            hi = mid - 1
    return lo


@dataclass
class RegionViews:
    """Views of one region laid out for ``n`` packets and a ``buflen``-byte buffer."""

    arrays: dict[str, NDArray[Any]]
    buf: NDArray[np.uint8]


#: per region: its views by (n, buflen). An adaptive split sends trips of a few
#: dozen sizes around its balance point, and making the views of a layout costs
#: about 25 us (two dozen slices and casts): keep that many, oldest out first.
ViewCache = dict[tuple[int, int], RegionViews]
_CACHE_LAYOUTS = 64


def region_views(
    region: NDArray[np.uint8], n: int, buflen: int, cache: ViewCache | None = None
) -> RegionViews:
    """The arrays of an ``n``-packet batch laid out in ``region`` (which must be
    large enough), made once per layout when ``cache`` is given: a batch read in
    place then holds the very array objects a later write compares against."""
    key = (n, buflen)
    if cache is not None:
        v = cache.get(key)
        if v is not None:
            return v
    arrays = {name: region[off : off + nb].view(dt) for name, dt, nb, off in _ext_layout(n)}
    end = _arrays_end(n)
    v = RegionViews(arrays, region[end : end + buflen])
    if cache is not None:
        if len(cache) >= _CACHE_LAYOUTS:
            del cache[next(iter(cache))]
        cache[key] = v
    return v


def pack_order(order: Sequence[Task]) -> int:
    """A task order as one integer: 4 bits per task (index + 1), first task lowest."""
    if len(order) > 15:
        raise ConfigError("a task order has at most 15 entries")
    word = 0
    for i, t in enumerate(order):
        word |= (t.index + 1) << (4 * i)
    return word


def unpack_order(word: int) -> tuple[Task, ...]:
    out: list[Task] = []
    while word:
        v = word & 0xF
        if not 1 <= v <= NTASKS:
            raise BufferFormatError("task order word", len(out), f"bad task id {v - 1}")
        out.append(Task.from_index(v - 1))
        word >>= 4
    return tuple(out)


def write_batch(region: NDArray[np.uint8], batch: Batch, cache: ViewCache | None = None) -> int:
    """Lay ``batch`` out in ``region``; returns the bytes used.

    Raises ``BufferFormatError`` (nothing written that matters) if it does not fit.
    Arrays of a batch read in place (``read_batch(copy=False)`` with the same
    ``cache``) are the region's own views and are not copied onto themselves.
    """
    n = len(batch)
    buflen = len(batch.buf)
    need = encoded_size(n, buflen)
    if need > len(region):
        raise BufferFormatError("ring region", len(region), f"batch needs {need} bytes")
    v = region_views(region, n, buflen, cache)
    e = batch.ext
    for name, dst in v.arrays.items():
        src = getattr(batch, name) if name in _SLOT_ARRAYS else getattr(e, name)
        if src is not dst:  # (numpy copes with memory that overlaps)
            dst[...] = src
    if batch.buf is not v.buf:
        v.buf[...] = batch.buf
    hdr = region[: _HDR_WORDS * 8].view(np.int64)
    hdr[0] = n
    hdr[1] = buflen
    hdr[2] = batch.stride
    hdr[3] = need
    return need


def _header(region: NDArray[np.uint8]) -> tuple[int, int, int, int]:
    if len(region) < _HDR_WORDS * 8:
        raise BufferFormatError("ring region", 0, "region smaller than its header")
    n, buflen, stride, used = region[: _HDR_WORDS * 8].view(np.int64).tolist()
    if n < 0 or buflen < 0 or stride < 0:
        raise BufferFormatError("ring region", 0, f"bad header n={n} buflen={buflen}")
    need = encoded_size(n, buflen)
    if need != used or need > len(region):
        raise BufferFormatError("ring region", 24, f"header says {used} bytes, layout {need}")
    return n, buflen, stride, need


def read_batch(
    region: NDArray[np.uint8], copy: bool = True, cache: ViewCache | None = None
) -> Batch:
    """The batch laid out in ``region``: copied out of the shared memory, or with
    ``copy=False`` as views of it (to work on it in place; ``write_batch`` of a
    batch of the same layout whose arrays are still these views copies nothing).
    """
    n, buflen, stride, _ = _header(region)
    v = region_views(region, n, buflen, cache)
    arrays = {k: a.copy() for k, a in v.arrays.items()} if copy else v.arrays
    buf = v.buf.copy() if copy else v.buf
    ext = Ext(n, **{k: arrays[k] for k in EXT_FIELDS})
    b = Batch(
        buf,
        arrays["start"],
        arrays["length"],
        arrays["slot_lo"],
        arrays["slot_hi"],
        ext,
        stride,
    )
    if n and (
        (b.slot_lo < 0).any()
        or (b.slot_hi > buflen).any()
        or (b.start < b.slot_lo).any()
        or (b.start + b.length > b.slot_hi).any()
    ):
        raise BufferFormatError("ring region", _arrays_end(n), "packet outside its slot")
    return b


def read_batch_into(region: NDArray[np.uint8], dst: Batch, cache: ViewCache | None = None) -> bool:
    """Copy the batch laid out in ``region`` straight into ``dst`` when it has
    ``dst``'s layout (packet count, buffer size, stride and slots): one copy,
    no allocation. Returns False, with ``dst`` untouched, when the layout
    differs (then use ``read_batch``); raises ``BufferFormatError``, with
    ``dst`` untouched, when the region is not valid."""
    n, buflen, stride, _ = _header(region)
    if n != len(dst) or buflen != len(dst.buf) or stride != dst.stride or n == 0:
        return False
    views = region_views(region, n, buflen, cache).arrays
    if not (
        np.array_equal(views["slot_lo"], dst.slot_lo)
        and np.array_equal(views["slot_hi"], dst.slot_hi)
    ):
        return False
    start, length = views["start"], views["length"]
    if ((start < dst.slot_lo) | (start + length > dst.slot_hi) | (length < 0)).any():
        raise BufferFormatError("ring region", _arrays_end(n), "packet outside its slot")
    dst.start[...] = start
    dst.length[...] = length
    e = dst.ext
    for name in EXT_FIELDS:
        getattr(e, name)[...] = views[name]
    end = _arrays_end(n)
    dst.buf[...] = region[end : end + buflen]
    return True


@dataclass(frozen=True)
class RingSpec:
    """Enough to attach to rings from another process (picklable)."""

    name: str
    slots: int
    region_bytes: int

    @property
    def total_bytes(self) -> int:
        return (
            CTRL_WORDS * 8
            + _a8(self.slots * SQ_DTYPE.itemsize)
            + _a8(self.slots * CQ_DTYPE.itemsize)
            + self.slots * self.region_bytes
        )


@dataclass(frozen=True)
class Submission:
    ticket: int
    region: int
    order: tuple[Task, ...]
    posted_ns: int
    arg: int


@dataclass(frozen=True)
class CompletionDesc:
    ticket: int
    region: int
    status: int
    wait_ns: int
    service_ns: int
    task_ns: tuple[int, ...]


class RingFull(Exception):
    """No free descriptor or region: complete something first."""


def _attach_untracked(name: str) -> shared_memory.SharedMemory:
    """Attach without registering with the resource tracker (the creator owns it).

    Python < 3.13 registers every attach, so a consumer process exiting would
    make the tracker unlink (or warn about) a segment it does not own.
    """
    orig = resource_tracker.register

    def _noop(name: str, rtype: str) -> None:
        return None

    resource_tracker.register = _noop  # type: ignore[assignment]
    try:
        return shared_memory.SharedMemory(name=name, create=False)
    finally:
        resource_tracker.register = orig


class Rings:
    """Both rings and the data regions, on one shared-memory segment."""

    def __init__(self, spec: RingSpec, shm: shared_memory.SharedMemory, owner: bool) -> None:
        self.spec = spec
        self.shm = shm
        self.owner = owner
        buf = shm.buf
        assert buf is not None
        mem = np.ndarray((spec.total_bytes,), dtype=np.uint8, buffer=buf)
        off = 0
        self.ctrl: NDArray[np.int64] = mem[: CTRL_WORDS * 8].view(np.int64)
        off = CTRL_WORDS * 8
        sqb = spec.slots * SQ_DTYPE.itemsize
        self.sq: NDArray[Any] = mem[off : off + sqb].view(SQ_DTYPE)
        off += _a8(sqb)
        cqb = spec.slots * CQ_DTYPE.itemsize
        self.cq: NDArray[Any] = mem[off : off + cqb].view(CQ_DTYPE)
        off += _a8(cqb)
        self.regions: NDArray[np.uint8] = mem[off : off + spec.slots * spec.region_bytes].reshape(
            spec.slots, spec.region_bytes
        )
        # host side: free regions (only the host allocates)
        self._free: list[int] = list(range(spec.slots - 1, -1, -1)) if owner else []
        #: per region, its views by layout (see ``region_views``)
        self.views: list[ViewCache] = [{} for _ in range(spec.slots)]
        self._closed = False

    # ------------------------------------------------------------- life cycle
    @classmethod
    def create(cls, slots: int = 32, region_bytes: int = 1 << 18) -> Rings:
        if not 1 <= slots <= 4096:
            raise ConfigError(f"ring slots must be within 1..4096, not {slots}")
        if region_bytes < 4096 or region_bytes % _ALIGN:
            raise ConfigError(f"ring region_bytes must be >= 4096 and 8-aligned: {region_bytes}")
        size = RingSpec("", slots, region_bytes).total_bytes
        shm = shared_memory.SharedMemory(create=True, size=size)
        spec = RingSpec(shm.name, slots, region_bytes)
        r = cls(spec, shm, owner=True)
        r.ctrl[:] = 0
        r.regions[:] = 0  # fault every page in now, not on the first batches
        return r

    @classmethod
    def attach(cls, spec: RingSpec) -> Rings:
        return cls(spec, _attach_untracked(spec.name), owner=False)

    def close(self) -> None:
        """Drop the views and the mapping; the owner also unlinks the segment."""
        if self._closed:
            return
        self._closed = True
        self.views = []  # they hold the mapping too
        del self.ctrl, self.sq, self.cq, self.regions
        with contextlib.suppress(BufferError):
            self.shm.close()
        if self.owner:
            with contextlib.suppress(FileNotFoundError):
                self.shm.unlink()

    def views_of(self, region: int) -> ViewCache | None:
        """The view cache of ``region`` (None for an index out of range: the
        descriptor was corrupt, and the read or write fails on its own)."""
        return self.views[region] if 0 <= region < len(self.views) else None

    # ------------------------------------------------------------- counters
    def sq_pending(self) -> int:
        return int(self.ctrl[SQ_TAIL] - self.ctrl[SQ_HEAD])

    def cq_pending(self) -> int:
        return int(self.ctrl[CQ_TAIL] - self.ctrl[CQ_HEAD])

    def free_regions(self) -> int:
        return len(self._free)

    # ------------------------------------------------------------- host: submit
    def post(
        self, ticket: int, batch: Batch, order: Sequence[Task], posted_ns: int, arg: int = 0
    ) -> int:
        """Producer side of ``sq``: copy ``batch`` into a free region and post it.

        Raises ``RingFull`` (nothing posted) when no region is free, and
        ``BufferFormatError`` when the batch does not fit in one region.
        """
        if not self._free or self.sq_pending() >= self.spec.slots:
            raise RingFull("no free submission slot")
        word = pack_order(order)
        region = self._free[-1]
        write_batch(self.regions[region], batch, self.views[region])
        self._free.pop()
        tail = int(self.ctrl[SQ_TAIL])
        d = self.sq[tail % self.spec.slots]
        d["ticket"] = ticket
        d["region"] = region
        d["order"] = word
        d["posted_ns"] = posted_ns
        d["arg"] = arg
        self.ctrl[SQ_TAIL] = tail + 1  # publish after the descriptor is written
        return region

    # ------------------------------------------------------------- device: take
    def take(self) -> Submission | None:
        """Consumer side of ``sq``: the next submission, or None."""
        head = int(self.ctrl[SQ_HEAD])
        if head >= int(self.ctrl[SQ_TAIL]):
            return None
        d = self.sq[head % self.spec.slots]
        arg = int(d["arg"])
        try:
            order = unpack_order(int(d["order"]))
        except BufferFormatError:
            order, arg = (), BAD_ORDER_ARG
        sub = Submission(int(d["ticket"]), int(d["region"]), order, int(d["posted_ns"]), arg)
        self.ctrl[SQ_HEAD] = head + 1
        return sub

    def finish(
        self,
        sub: Submission,
        out: Batch | None,
        status: int,
        wait_ns: int,
        service_ns: int,
        task_ns: Sequence[int] = (),
    ) -> int:
        """Producer side of ``cq``: write ``out`` (if any) into the region, post.

        Returns the status posted (an output too big for its region becomes
        status ``STATUS_TOO_BIG``).
        """
        if out is not None and status == 0:
            try:
                write_batch(self.regions[sub.region], out, self.views_of(sub.region))
            except BufferFormatError:
                status = STATUS_TOO_BIG
        tail = int(self.ctrl[CQ_TAIL])
        while tail - int(self.ctrl[CQ_HEAD]) >= self.spec.slots:  # cannot happen: regions bound it
            pass
        d = self.cq[tail % self.spec.slots]
        d["ticket"] = sub.ticket
        d["region"] = sub.region
        d["status"] = status
        d["wait_ns"] = wait_ns
        d["service_ns"] = service_ns
        tn = np.zeros(NTASKS, np.int64)
        tn[: len(task_ns)] = task_ns
        d["task_ns"] = tn
        self.ctrl[CQ_TAIL] = tail + 1
        return status

    # ------------------------------------------------------------- host: reap
    def reap(
        self, into: Callable[[int], Batch | None] | None = None
    ) -> tuple[CompletionDesc, Batch | None] | None:
        """Consumer side of ``cq``: the next completion and its output batch
        (None when the status is not ok); frees its region.

        ``into(ticket)`` may name a batch the output is to be written into (when
        it has that batch's layout, see ``read_batch_into``); the output batch
        returned is then that very batch."""
        head = int(self.ctrl[CQ_HEAD])
        if head >= int(self.ctrl[CQ_TAIL]):
            return None
        ticket, region_i, status, wait_ns, service_ns, task_ns = self.cq[
            head % self.spec.slots
        ].item()
        desc = CompletionDesc(
            int(ticket),
            int(region_i),
            int(status),
            int(wait_ns),
            int(service_ns),
            tuple(task_ns.tolist()),
        )
        out: Batch | None = None
        if desc.status == 0:
            try:
                dst = into(desc.ticket) if into is not None else None
                region = self.regions[desc.region]
                cache = self.views_of(desc.region)
                if dst is not None and read_batch_into(region, dst, cache):
                    out = dst
                else:
                    out = read_batch(region, cache=cache)
            except BufferFormatError:
                desc = CompletionDesc(
                    desc.ticket,
                    desc.region,
                    STATUS_CORRUPT,
                    desc.wait_ns,
                    desc.service_ns,
                    desc.task_ns,
                )
        self.ctrl[CQ_HEAD] = head + 1
        if 0 <= desc.region < self.spec.slots and desc.region not in self._free:
            self._free.append(desc.region)
        return desc, out


BAD_ORDER_ARG = -1  # Submission.arg when the order word could not be decoded

STATUS_OK = 0
STATUS_TASK_FAILED = 1  # a task raised inside the device
STATUS_TOO_BIG = 2  # the output does not fit in the region
STATUS_CORRUPT = 3  # the host could not read the output region
STATUS_BAD_ORDER = 4  # the device could not decode the submission
STATUS_INJECTED = 5  # a fault the device was told to inject

STATUS_TEXT = {
    STATUS_OK: "ok",
    STATUS_TASK_FAILED: "a task failed inside the device",
    STATUS_TOO_BIG: "output larger than its ring region",
    STATUS_CORRUPT: "output region unreadable",
    STATUS_BAD_ORDER: "submission descriptor unreadable",
    STATUS_INJECTED: "injected device error",
}
