"""The emulated NIC: a peripheral in its own process, on its own core.

The host reaches it only through shared-memory descriptor rings
(``devices.rings``): ``submit`` copies a batch (packets and extensions, as
numpy arrays — nothing is pickled per packet) into a ring region and posts a
descriptor; the NIC process takes it, does the tasks ``ext.offload`` assigns
with the software task library, in place in the region (an output of another
layout, e.g. after segmentation, is written back into it), and posts a
completion. The host copies the output out of the region — with
``submit_owned`` straight into the batch it submitted, when the layout is
unchanged. Doorbells (semaphores) wake a side that sleeps; the NIC
polls for a moment after each batch, as a poll-mode driver would.

Profiles (``PROFILES``) set the capability set, limits, queue depth and an
optional *added cost* per packet and per byte — real time the NIC process
spends busy-waiting per task it does, so the device can stand for slower
hardware (a positive cost) or, with a cheaper library, faster hardware:

``crypto``  a lookaside crypto card: encrypt, decrypt, digest.
``full``    a SmartNIC: every task the software library has.

Failure: if the NIC process dies, every packet still in flight comes back as
a failed completion carrying the batch as it was submitted (the engine redoes
it in software), completions the NIC had fully posted before dying are kept,
and the device is marked down (``load().up`` is False, ``submit`` raises
``DeviceDown``). So nothing is lost and nothing is done twice.

Start and stop are explicit (``start()``/``close()``, or a ``with`` block) and
also happen at garbage collection and interpreter exit; the NIC process
ignores Ctrl-C (its owner stops it) and exits by itself when its parent dies.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
import time
import traceback
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Semaphore
from typing import Any

import numpy as np

from netoffload import soft
from netoffload.batch import Batch, Mask
from netoffload.caps import CapRecord, TaskOffloadBuffer
from netoffload.devices.base import Completion, Device, DeviceLoad, OffloadTally, offload_tally
from netoffload.devices.registry import register_device
from netoffload.devices.rings import (
    BAD_ORDER_ARG,
    READY,
    STATUS_BAD_ORDER,
    STATUS_INJECTED,
    STATUS_OK,
    STATUS_TASK_FAILED,
    STATUS_TEXT,
    STOP,
    WORKER_PID,
    RingFull,
    Rings,
    RingSpec,
    encoded_size,
    packets_that_fit,
    read_batch,
)
from netoffload.devices.software import library_record
from netoffload.errors import BufferFormatError, ConfigError, DeviceDown, DeviceError
from netoffload.policy.load import LoadMonitor
from netoffload.soft import SoftLibrary
from netoffload.tasks import ALL_TASKS, Task, bit16

ALL = Task(0)
for _t in ALL_TASKS:
    ALL |= _t
SEGMENTING = Task.TCP_SEGMENT | Task.UDP_SEGMENT | Task.TCP_ASSEMBLE | Task.UDP_ASSEMBLE


@dataclass(frozen=True)
class NicProfile:
    """What an emulated NIC model can do and how fast."""

    name: str
    tasks: Task
    queue_depth: int = 4096  # packets in flight
    slots: int = 32  # descriptors (and data regions) per ring
    region_bytes: int = 1 << 20  # bytes per data region (one batch)
    max_offload_size: int = 65535
    max_segments: int = 64
    per_packet_s: float = 0.0  # added cost per packet, per task done
    per_byte_s: float = 0.0  # added cost per byte, per task done
    summary: str = ""


PROFILES: dict[str, NicProfile] = {
    "crypto": NicProfile(
        "crypto",
        Task.ENCRYPT | Task.DECRYPT | Task.DIGEST,
        queue_depth=2048,
        slots=16,
        region_bytes=1 << 19,
        max_offload_size=9216,
        max_segments=1,
        summary="lookaside crypto card: encrypt, decrypt, digest",
    ),
    "full": NicProfile(
        "full",
        ALL,
        queue_depth=4096,
        slots=32,
        region_bytes=1 << 20,
        summary="SmartNIC: every task of the software library",
    ),
}


#: The device's name; with a profile, ``emulated-nic:crypto`` (the registry's
#: and ``caps``' name); an instance of one side, ``emulated-nic:crypto/tx``.
DEVICE = "emulated-nic"


def device_name(profile: str, side: str | None = None) -> str:
    """``emulated-nic:<profile>``, or ``emulated-nic:<profile>/<side>`` for one side's NIC."""
    return f"{DEVICE}:{profile}" + (f"/{side}" if side else "")


def get_profile(name: str) -> NicProfile:
    p = PROFILES.get(name)
    if p is None:
        raise ConfigError(f"unknown NIC profile {name!r} (known: {', '.join(sorted(PROFILES))})")
    return p


@dataclass(frozen=True)
class _WorkerConfig:
    spec: RingSpec
    tasks: Task
    options: Mapping[Task, Mapping[str, Any]]
    library: Callable[[], SoftLibrary] | None
    per_packet_s: float
    per_byte_s: float
    core: int | None
    parent_pid: int
    fail_every: int
    die_at: int
    spin_s: float
    keep_heap: bool


@dataclass
class _Flight:
    batch: Batch
    packets: int
    nbytes: int
    post_s: float  # host seconds spent copying in
    in_place: bool = False  # the output may be written into ``batch`` (submit_owned)
    #: per task asked: (task, packets, bytes), taken at submit (``batch`` may change)
    per_task: OffloadTally = ()
    ahead: int = 0  # batches in flight before this one when it was submitted
    posted_at: float = 0.0  # time.perf_counter() at submit


@dataclass
class NicCounters:
    completions: int = 0
    failed: int = 0
    redone_on_down: int = 0  # in-flight packets handed back when the NIC died
    wait_ns: int = 0
    service_ns: int = 0
    crossing_ns: int = 0
    extra: dict[str, int] = field(default_factory=dict)


class _Handle:
    """The NIC process and its rings, stoppable without a reference to the device."""

    def __init__(self, proc: BaseProcess, rings: Rings, bell: Semaphore) -> None:
        self.proc = proc
        self.rings = rings
        self.bell = bell
        self.stopped = False

    def stop(self, timeout: float = 2.0) -> None:
        if self.stopped:
            return
        self.stopped = True
        try:
            self.rings.ctrl[STOP] = 1
            self.bell.release()
        except (AttributeError, ValueError, OSError):
            pass
        p = self.proc
        with contextlib.suppress(Exception):
            p.join(timeout)
            if p.is_alive():
                p.terminate()
                p.join(1.0)
            if p.is_alive():
                p.kill()
                p.join(1.0)
        with contextlib.suppress(Exception):
            p.close()
        self.rings.close()


class EmulatedNIC(Device):
    """A NIC in another process, reached through shared-memory rings."""

    def __init__(
        self,
        profile: str | NicProfile = "full",
        *,
        options: Mapping[Task, Mapping[str, Any]] | None = None,
        library: Callable[[], SoftLibrary] | None = None,
        per_packet_s: float | None = None,
        per_byte_s: float | None = None,
        queue_depth: int | None = None,
        slots: int | None = None,
        region_bytes: int | None = None,
        core: int | None = -1,
        enable_all: bool = True,
        fail_every: int = 0,
        die_at: int = 0,
        spin_s: float = 0.002,
        host_spin_s: float = 0.0005,
        keep_heap: bool = True,
        name: str | None = None,
        start: bool = True,
        ready_timeout: float = 60.0,
    ) -> None:
        """``core``: -1 picks the highest CPU this process may use (when there
        are at least two), None leaves the NIC unpinned. ``library`` is a
        picklable callable (a module-level function) building the NIC's task
        library; by default it is ``SoftLibrary.build`` of the profile's tasks
        with ``options``. ``fail_every``/``die_at`` inject faults (tests): every
        n-th submission completes with an error / the NIC process exits when it
        takes its n-th submission. ``keep_heap`` has the NIC process keep its
        malloc heap between batches (glibc mallopt; ~25% faster service)."""
        super().__init__()
        prof = get_profile(profile) if isinstance(profile, str) else profile
        over: dict[str, Any] = {}
        for k, v in (
            ("per_packet_s", per_packet_s),
            ("per_byte_s", per_byte_s),
            ("queue_depth", queue_depth),
            ("slots", slots),
            ("region_bytes", region_bytes),
        ):
            if v is not None:
                over[k] = v
        prof = replace(prof, **over)
        if prof.per_packet_s < 0 or prof.per_byte_s < 0:
            raise ConfigError("NIC added cost per packet/byte must be >= 0")
        if prof.queue_depth < 1:
            raise ConfigError(f"NIC queue_depth must be >= 1, not {prof.queue_depth}")
        if fail_every < 0 or die_at < 0:
            raise ConfigError("fail_every and die_at must be >= 0")
        self.profile = prof
        self.name = name or device_name(prof.name)
        self.options = {t: dict(o) for t, o in (options or {}).items()}
        self.library = library
        self.tasks, self.usable = self._library_tasks(prof.tasks)
        self.core = _pick_core() if core == -1 else core
        self.enable_all = enable_all
        self.fail_every = fail_every
        self.die_at = die_at
        self.spin_s = spin_s
        self.host_spin_s = host_spin_s
        self.keep_heap = keep_heap
        self.ready_timeout = ready_timeout
        self.nic = NicCounters()
        self._up = False
        self._ticket = 0
        self._inflight: dict[int, _Flight] = {}  # in submission order
        self._svc_per_packet = 0.0  # the NIC's recent service time a packet (moving average)
        self._last_done = 0.0  # time.perf_counter() when the last completion was read
        self._queued = 0
        self._handle: _Handle | None = None
        self._rings: Rings | None = None
        self._cq_bell: Semaphore | None = None
        self._sq_bell: Semaphore | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self._monitor: LoadMonitor | None = None
        self._index = 0
        self.down_reason = ""
        if start:
            self.start()

    # ------------------------------------------------------------ set-up
    def _library_tasks(self, wanted: Task) -> tuple[Task, Task]:
        """(tasks the NIC model offers, those of them usable with ``options``).

        A task is offered when the software library implements it; it is usable
        (built in the NIC, enabled by ``enable_all``) when it can be built with
        the options given — a crypto card reports encryption before it has keys.
        """
        if self.library is not None:
            t = self.library().tasks & wanted
            return t, t
        offered = soft.available() & wanted
        usable = Task(0)
        for t in offered.members():
            try:
                soft.make_task(t, **self.options.get(t, {}))
            except Exception:  # not buildable with these options (no keys, ...)
                continue
            usable |= t
        return offered, usable

    def start(self) -> None:
        """Start the NIC process (no-op when running)."""
        if self._handle is not None and not self._handle.stopped:
            return
        ctx = multiprocessing.get_context("spawn")
        rings = Rings.create(self.profile.slots, self.profile.region_bytes)
        sq_bell = ctx.Semaphore(0)
        cq_bell = ctx.Semaphore(0)
        cfg = _WorkerConfig(
            rings.spec,
            self.usable,
            self.options,
            self.library,
            self.profile.per_packet_s,
            self.profile.per_byte_s,
            self.core,
            os.getpid(),
            self.fail_every,
            self.die_at,
            self.spin_s,
            self.keep_heap,
        )
        proc = ctx.Process(
            target=nic_main, args=(cfg, sq_bell, cq_bell), name=f"netoffload-{self.name}"
        )
        proc.daemon = True
        try:
            with main_hidden():
                proc.start()
        except BaseException:
            rings.close()
            raise
        handle = _Handle(proc, rings, sq_bell)
        self._handle = handle
        self._finalizer = weakref.finalize(self, handle.stop)
        self._rings, self._sq_bell, self._cq_bell = rings, sq_bell, cq_bell
        deadline = time.monotonic() + self.ready_timeout
        try:
            while True:
                state = int(rings.ctrl[READY])
                if state == 1:
                    break
                if state == -1 or not proc.is_alive():
                    raise DeviceError(
                        f"{self.name}: NIC process failed to start (exit code {proc.exitcode})"
                    )
                if time.monotonic() > deadline:
                    raise DeviceError(
                        f"{self.name}: NIC process not ready after {self.ready_timeout}s"
                    )
                cq_bell.acquire(timeout=0.05)
        except BaseException:
            self.close()
            raise
        self._up = True
        self.down_reason = ""
        if self.enable_all and self.usable:
            self.enable(*self.usable.members())

    @property
    def pid(self) -> int | None:
        return (
            self._handle.proc.pid if self._handle is not None and not self._handle.stopped else None
        )

    def attach(self, monitor: LoadMonitor | None, index: int = 0) -> None:
        """Report device-side service time, queue wait and host crossing cost
        to ``monitor`` (as path ``index``) on every completion."""
        self._monitor = monitor
        self._index = index

    def probe(self) -> TaskOffloadBuffer:
        p = self.profile
        recs: dict[Task, CapRecord] = {}
        for t in self.tasks.members():
            segs = p.max_segments if t & SEGMENTING else 1
            recs[t] = library_record(t, segs, p.max_offload_size)
        return TaskOffloadBuffer(self.name, recs, {})

    # ------------------------------------------------------------ work
    def submit(self, batch: Batch, order: Sequence[Task]) -> int:
        return self._submit(batch, order, False)

    def submit_limit(self, batch: Batch, sel: Mask) -> int:
        """As many as one ring region holds (a batch larger than that is refused)."""
        region = self.profile.region_bytes
        if batch.stride > 0:  # uniform slots: the size of a trip is its count times the stride
            n = int(np.count_nonzero(sel))
            if encoded_size(n, n * batch.stride) <= region:
                return n
        return packets_that_fit(region, (batch.slot_hi - batch.slot_lo)[sel])

    def submit_owned(self, batch: Batch, order: Sequence[Task]) -> int:
        """``submit``; the completion is read straight into ``batch`` when the
        output has its layout (one copy out of the ring, no allocation)."""
        return self._submit(batch, order, True)

    def _submit(self, batch: Batch, order: Sequence[Task], in_place: bool) -> int:
        if not self._up or self._rings is None:
            raise DeviceDown(f"{self.name}: device is down{self._why()}")
        rings = self._rings
        n = len(batch)
        # back-pressure: wait for completions while the queue is full
        while self._inflight and (
            self._queued + n > self.profile.queue_depth or not rings.free_regions()
        ):
            self._ready.extend(self._reap(wait=True))
            if not self._up:
                raise DeviceDown(f"{self.name}: device went down{self._why()}")
        self._ticket += 1
        ticket = self._ticket
        t0 = time.perf_counter_ns()
        try:
            rings.post(ticket, batch, order, t0)
        except BufferFormatError as e:
            self.stats.errors += 1
            raise DeviceError(f"{self.name}: batch refused: {e}") from None
        except RingFull:  # cannot happen after the wait above
            raise DeviceError(f"{self.name}: ring full") from None
        post_s = (time.perf_counter_ns() - t0) / 1e9
        assert self._sq_bell is not None
        self._sq_bell.release()
        tally = offload_tally(batch)
        ahead = len(self._inflight)
        self._inflight[ticket] = _Flight(
            batch, n, batch.nbytes, post_s, in_place, tally, ahead, t0 / 1e9
        )
        self._queued += n
        self._account(batch, tally)
        return ticket

    def poll(self, wait: bool = True) -> list[Completion]:
        return self._reap(wait)

    def outstanding(self) -> int:
        return len(self._inflight)

    def _reap(self, wait: bool) -> list[Completion]:
        got = self._reap_now()
        if got or not wait or not self._inflight:
            return got
        assert self._cq_bell is not None and self._handle is not None
        # the oldest batch in flight is not due for a while: sleep until just
        # before it is (the doorbell wakes us at the first completion anyway), then
        # spin -- spinning all that time costs a core that others may want (with a
        # CPU hog on the host's core it was half the host's time per batch).
        # Spin for long only when this is the one batch in flight (a caller waiting on
        # its latency); with more queued behind it the NIC has work while we wake.
        spin = self.host_spin_s if len(self._inflight) <= 1 else min(self.host_spin_s, 5e-5)
        due = self._due_in()
        if due > spin:
            while self._cq_bell.acquire(False):  # stale rings of the doorbell
                pass
            got = self._reap_now()
            if got or not self._inflight:
                return got
            self._cq_bell.acquire(timeout=due - spin)
        spin_until = time.perf_counter() + spin
        while True:
            got = self._reap_now()
            if got or not self._inflight:
                return got
            if time.perf_counter() < spin_until:
                continue
            if not self._handle.proc.is_alive():
                got = self._reap_now()  # what it posted before dying is valid
                return got + self._go_down("NIC process died")
            # drain stale rings of the doorbell, look again, then sleep until rung
            while self._cq_bell.acquire(False):
                pass
            got = self._reap_now()
            if got:
                return got
            self._cq_bell.acquire(timeout=0.02)

    def _due_in(self) -> float:
        """Seconds until the oldest batch in flight should complete: from when the
        NIC could start it (its submit, or the completion before it) and the NIC's
        recent service time per packet; 0 while that is unknown."""
        if not self._inflight or self._svc_per_packet <= 0.0:
            return 0.0
        oldest = next(iter(self._inflight.values()))
        start = max(oldest.posted_at, self._last_done)
        return start + self._svc_per_packet * oldest.packets - time.perf_counter()

    def _reap_now(self) -> list[Completion]:
        out: list[Completion] = []
        rings = self._rings
        if rings is None:
            return out
        while True:
            t0 = time.perf_counter_ns()
            got = rings.reap(self._into)
            if got is None:
                return out
            desc, batch = got
            read_s = (time.perf_counter_ns() - t0) / 1e9
            fl = self._inflight.pop(desc.ticket, None)
            if fl is None:  # not ours (cannot happen): ignore rather than duplicate
                continue
            self._queued -= fl.packets
            self.nic.completions += 1
            self.nic.wait_ns += desc.wait_ns
            self.nic.service_ns += desc.service_ns
            cross = fl.post_s + read_s
            self.nic.crossing_ns += int(cross * 1e9)
            if desc.status == STATUS_OK and batch is not None:
                out.append(Completion(desc.ticket, batch, True, "", desc.service_ns))
                if fl.packets:
                    per = desc.service_ns / 1e9 / fl.packets
                    old = self._svc_per_packet
                    self._svc_per_packet = per if old <= 0.0 else 0.75 * old + 0.25 * per
                self._last_done = time.perf_counter()
                self._report(fl, desc.task_ns, desc.service_ns, desc.wait_ns, cross)
            else:
                self.nic.failed += 1
                self.stats.errors += 1
                why = STATUS_TEXT.get(desc.status, f"status {desc.status}")
                out.append(Completion(desc.ticket, fl.batch, False, f"{self.name}: {why}"))

    def _into(self, ticket: int) -> Batch | None:
        fl = self._inflight.get(ticket)
        return fl.batch if fl is not None and fl.in_place else None

    def _report(
        self, fl: _Flight, task_ns: Sequence[int], service_ns: int, wait_ns: int, cross_s: float
    ) -> None:
        """Tell the monitor; the NIC's own copies in and out of the ring (service
        time outside the tasks) are shared among the tasks in proportion."""
        m = self._monitor
        if m is None:
            return
        k = self._index
        inside = sum(task_ns[t.index] for t, _, _ in fl.per_task)
        scale = service_ns / inside if inside > 0 and service_ns > inside else 1.0
        m.record_queue_wait(k, wait_ns / 1e9, idle=fl.ahead == 0)
        m.record_crossing(k, fl.packets, fl.nbytes, cross_s)
        s = scale / 1e9
        for t, n, nb in fl.per_task:
            if n:
                m.record_service(t, k, n, nb, task_ns[t.index] * s)

    def _go_down(self, why: str) -> list[Completion]:
        """Mark the device down; every in-flight batch fails back to the host as submitted."""
        self._up = False
        self.down_reason = why
        out = []
        for ticket, fl in self._inflight.items():
            self.nic.redone_on_down += fl.packets
            self.stats.errors += 1
            out.append(Completion(ticket, fl.batch, False, f"{self.name}: {why}"))
        self._inflight.clear()
        self._queued = 0
        self._rings = None
        if self._handle is not None:
            self._handle.stop(timeout=0.5)
        return out

    def _why(self) -> str:
        return f" ({self.down_reason})" if self.down_reason else ""

    def check_alive(self) -> bool:
        """Notice a dead NIC without waiting for a completion (marks it down)."""
        if self._up and self._handle is not None and not self._handle.proc.is_alive():
            self._ready.extend(self._reap_now())
            self._ready.extend(self._go_down("NIC process died"))
        return self._up

    def load(self) -> DeviceLoad:
        self.check_alive()
        return DeviceLoad(self._queued, self.profile.queue_depth, self._up)

    def counters(self) -> Mapping[str, object]:
        d = dict(self.stats.as_dict())
        d.update(
            {
                "up": self._up,
                "down_reason": self.down_reason,
                "completions": self.nic.completions,
                "failed": self.nic.failed,
                "redone_on_down": self.nic.redone_on_down,
                "wait_ns": self.nic.wait_ns,
                "service_ns": self.nic.service_ns,
                "crossing_ns": self.nic.crossing_ns,
                "queued": self._queued,
            }
        )
        return d

    def kill(self) -> None:
        """Kill the NIC process abruptly (tests, fault drills); nothing is cleaned up
        until the host notices."""
        if self._handle is not None and self._handle.proc.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._handle.proc.pid, signal.SIGKILL)

    def close(self) -> None:
        """Stop the NIC process and free the rings; in-flight work fails back."""
        if self._inflight:
            self._ready.extend(self._go_down("closed"))
        self._up = False
        if not self.down_reason:
            self.down_reason = "closed"
        if self._handle is not None:
            self._handle.stop()
        if self._finalizer is not None:
            self._finalizer.detach()
        self._rings = None


@contextlib.contextmanager
def main_hidden() -> Iterator[None]:
    """Start a spawned child without re-running the parent's ``__main__``.

    The NIC process needs nothing from the parent's main script (its target and
    configuration live in importable modules), and re-running a script without
    an ``if __name__ == "__main__"`` guard would start another NIC, recursively.
    """
    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    saved: dict[str, Any] = {
        k: main.__dict__[k] for k in ("__file__", "__spec__") if k in main.__dict__
    }
    main.__dict__.pop("__file__", None)
    main.__dict__["__spec__"] = None
    try:
        yield
    finally:
        main.__dict__.pop("__spec__", None)
        main.__dict__.update(saved)


def _pick_core() -> int | None:
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None
    return cpus[-1] if len(cpus) >= 2 else None


def _set_pdeathsig() -> None:
    """Have the kernel kill this process when its parent dies (Linux)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _keep_heap() -> None:
    """glibc: serve batch-sized allocations from a heap that is kept, instead of
    fresh mmaps that page-fault on every batch (this process only)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None)
        libc.mallopt(-3, 256 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 512 << 20)  # M_TRIM_THRESHOLD


def _busy_wait(seconds: float) -> None:
    if seconds <= 0:
        return
    end = time.perf_counter_ns() + int(seconds * 1e9)
    while time.perf_counter_ns() < end:
        pass


def run_timed(
    lib: SoftLibrary, batch: Batch, order: Sequence[Task], per_packet_s: float, per_byte_s: float
) -> tuple[Batch, list[int]]:
    """Do the assigned tasks in ``order`` (as ``software.run_assigned``), timing
    each and adding the profile's busy-wait cost."""
    task_ns = [0] * len(ALL_TASKS)
    out = batch
    cost = per_packet_s > 0 or per_byte_s > 0
    for t in order:
        bit = bit16(t)
        e = out.ext
        sel = (e.offload & bit) != 0
        if e.error.any() or e.filter_verdict.any():
            sel &= e.alive()
        if not sel.any():
            continue
        t0 = time.perf_counter_ns()
        if cost:
            n = int(np.count_nonzero(sel))
            nbytes = int(np.add.reduce(out.length[sel]))
        out = lib[t].process(out, sel)
        e = out.ext
        asked = (e.offload & bit) != 0
        np.bitwise_or(e.done, bit, out=e.done, where=asked)
        np.bitwise_or(e.by_device, bit, out=e.by_device, where=asked)
        if cost:
            _busy_wait(per_packet_s * n + per_byte_s * nbytes)
        task_ns[t.index] += time.perf_counter_ns() - t0
    return out, task_ns


def nic_main(cfg: _WorkerConfig, sq_bell: Semaphore, cq_bell: Semaphore) -> None:
    """The NIC process: take submissions, do the work, post completions."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the owner stops us
    _set_pdeathsig()
    if cfg.keep_heap:
        _keep_heap()
    if cfg.core is not None:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {cfg.core})
    rings = Rings.attach(cfg.spec)
    try:
        lib = (
            cfg.library()
            if cfg.library is not None
            else SoftLibrary.build(cfg.tasks.members(), cfg.options)
        )
    except Exception:
        traceback.print_exc(file=sys.stderr)
        rings.ctrl[READY] = -1
        cq_bell.release()
        rings.close()
        return
    rings.ctrl[WORKER_PID] = os.getpid()
    rings.ctrl[READY] = 1
    cq_bell.release()
    taken = 0
    reported = False
    spin_ns = int(cfg.spin_s * 1e9)
    idle_since = time.perf_counter_ns()
    try:
        while not rings.ctrl[STOP]:
            sub = rings.take()
            if sub is None:
                if time.perf_counter_ns() - idle_since < spin_ns:
                    continue
                # drain stale rings of the doorbell, look again, then sleep until rung
                while sq_bell.acquire(False):
                    pass
                if rings.sq_pending():
                    continue
                if sq_bell.acquire(timeout=0.05):
                    idle_since = time.perf_counter_ns()  # rung: poll for a while again
                if os.getppid() != cfg.parent_pid:
                    break
                continue
            taken += 1
            if cfg.die_at and taken == cfg.die_at:
                os._exit(17)  # a crash mid-flight: no completion, no clean-up
            t_take = time.perf_counter_ns()
            wait_ns = max(0, t_take - sub.posted_ns)
            out: Batch | None = None
            task_ns: list[int] = []
            if sub.arg == BAD_ORDER_ARG:
                status = STATUS_BAD_ORDER
            elif cfg.fail_every and taken % cfg.fail_every == 0:
                status = STATUS_INJECTED
            else:
                try:
                    # work in place in the ring region: no copy in, none out
                    region = rings.regions[sub.region]
                    inb = read_batch(region, copy=False, cache=rings.views_of(sub.region))
                    shape = (len(inb), len(inb.buf), inb.stride)
                    out, task_ns = run_timed(lib, inb, sub.order, cfg.per_packet_s, cfg.per_byte_s)
                    if (len(out), len(out.buf), out.stride) != shape:
                        # another layout: its arrays may still be views of the region
                        # where the new layout writes, so write from a private copy
                        out = out.copy()
                    status = STATUS_OK
                except Exception:
                    if not reported:  # once: the host sees every failure in its counters
                        traceback.print_exc(file=sys.stderr)
                        reported = True
                    status = STATUS_TASK_FAILED
            rings.finish(sub, out, status, wait_ns, time.perf_counter_ns() - t_take, task_ns)
            cq_bell.release()
            idle_since = time.perf_counter_ns()
    finally:
        rings.close()


def _full() -> Device:
    return EmulatedNIC("full")


def _crypto() -> Device:
    return EmulatedNIC("crypto")


register_device(
    device_name("full"), _full, "SmartNIC in its own process on its own core (all tasks)"
)
register_device(
    device_name("crypto"), _crypto, "lookaside crypto card in its own process (encrypt, digest)"
)
