"""The engine: runs the task stages of one direction over batches.

For every batch and task, the policy splits the packets that want the task
between the devices and software, per packet. Packets bound for a device leave
the batch for a *trip*; before the trip is submitted the engine looks ahead
and adds the following tasks the policy also gives to that device, so that
consecutive tasks for one device go over in one crossing. While a device works,
the engine carries on with the software part. A failed trip is redone in
software. Every packet leaves exactly once and in order (by ``ext.origin``),
and every task keeps counters (offloaded, software, dropped, errors, bytes, time).
Costs go to the load monitor (and feedback to the policy) only when the engine
has devices, i.e. a choice to make; without, a batch costs only its counters.

``process(batch)`` runs one batch to the end. ``start(batch)`` and
``finish(pending)`` split it in two, so that a caller with more batches
waiting can pipeline them: ``start`` does the software part of a batch and
leaves its device trips in flight; while a device works on them, the host
starts the next batch, and ``finish`` (oldest first) collects the trips, runs
what is left and merges the parts. A device thus works on batch N while the
host does its share of batch N+1, and every batch still comes out whole and in
order.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from netoffload._native import kernel as _native
from netoffload.batch import (
    EXT_FIELDS,
    Batch,
    FilterVerdict,
    Mask,
    Reason,
    merge_by_origin,
    refine_sub,
)
from netoffload.devices.base import Device, DeviceLoad, offload_tally
from netoffload.errors import ConfigError, DeviceError
from netoffload.policy.base import DeviceView, Feedback, Policy
from netoffload.policy.load import SOFTWARE, LoadMonitor, LoadSnapshot
from netoffload.soft import SoftLibrary, SoftTask
from netoffload.tasks import ALL_TASKS, RESHAPING, Direction, Task, bit16, stage_order


@dataclass
class TaskCounters:
    offloaded: int = 0  # packets a device did this task for
    software: int = 0  # packets the software fallback did it for
    dropped: int = 0  # packets this task dropped or failed
    errors: int = 0  # device failures redone in software (in packets)
    bytes: int = 0  # bytes of packets the task was done for
    soft_ns: int = 0
    device_ns: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {
            "offloaded": self.offloaded,
            "software": self.software,
            "dropped": self.dropped,
            "errors": self.errors,
            "bytes": self.bytes,
            "soft_ns": self.soft_ns,
            "device_ns": self.device_ns,
            "reasons": dict(self.reasons),
        }


class Output:
    """What one ``Engine.process`` gives back: every packet, with its verdicts."""

    __slots__ = ("batch",)

    def __init__(self, batch: Batch) -> None:
        self.batch = batch

    def __repr__(self) -> str:
        return f"Output({self.batch!r})"

    @property
    def alive(self) -> Mask:
        return self.batch.ext.alive()

    def delivered(self) -> Batch:
        a = self.alive
        return self.batch if a.all() else self.batch.take(a)

    def dropped(self) -> Batch:
        return self.batch.take(~self.alive)


@dataclass
class _Trip:
    device: int
    ticket: int
    batch: Batch
    tasks: Task
    rest: tuple[Task, ...]  # stages still to run after the trip
    t0: float
    dead_before: dict[int, int] = field(default_factory=dict)  # taken before submit
    #: per task given to the device: (task, packets, bytes) at submit
    asked: tuple[tuple[Task, int, int], ...] = ()


@dataclass
class _InPlace:
    """A split made without copying: the software part is ``parent[:m]`` and the
    one trip ``parent[m:]``, both views. If both come back as the very views,
    arrays and all (every task worked in place, the device wrote its output
    into the trip's view), ``parent`` already holds the whole result."""

    parent: Batch
    m: int
    rest: Batch
    rest_arrays: tuple[object, ...]
    trip: _Trip
    trip_arrays: tuple[object, ...]


def _arrays(b: Batch) -> tuple[object, ...]:
    e = b.ext
    return (b.buf, b.start, b.length, b.slot_lo, b.slot_hi, *(getattr(e, f) for f in EXT_FIELDS))


def _same(b: Batch, arrays: tuple[object, ...]) -> bool:
    return all(x is y for x, y in zip(_arrays(b), arrays, strict=True))


def _devices_in(paths: np.ndarray, ndevices: int) -> tuple[int, ...]:
    """The devices ``paths`` sends packets to, in index order."""
    if not len(paths):
        return ()
    hi = int(paths.max())
    if hi < 0:
        return ()
    if ndevices == 1 or int(np.where(paths < 0, hi, paths).min()) == hi:
        return (hi,)
    return tuple(np.unique(paths[paths >= 0]).tolist())


def _tail_start(sel: Mask) -> int:
    """m when ``sel`` is exactly packets m..n-1 (0 < m < n), else -1."""
    n = len(sel)
    m = n - int(np.count_nonzero(sel))
    return m if 0 < m < n and bool(sel[m:].all()) else -1


class Pending:
    """A batch that ``Engine.start`` began: its software part done, its device
    trips in flight. ``Engine.finish`` turns it into an ``Output``."""

    __slots__ = ("finished", "in_place", "rest", "trips", "views")

    def __init__(
        self,
        rest: Batch,
        trips: list[_Trip],
        views: list[DeviceView],
        in_place: _InPlace | None = None,
    ) -> None:
        self.rest = rest
        self.trips = trips
        self.views = views
        self.in_place = in_place
        self.finished = False

    @property
    def in_flight(self) -> int:
        """Device trips not yet collected."""
        return 0 if self.finished else len(self.trips)


class Engine:
    """Runs the stages of one direction."""

    def __init__(
        self,
        direction: Direction,
        tasks: Task | Sequence[Task],
        soft: SoftLibrary,
        policy: Policy,
        devices: Sequence[Device] = (),
        monitor: LoadMonitor | None = None,
        clock: Callable[[], float] = time.perf_counter,
        order: Sequence[Task] | None = None,
    ) -> None:
        if direction not in (Direction.TX, Direction.RX):
            raise ConfigError("an engine runs one direction, TX or RX")
        self.direction = direction
        self.stages: tuple[Task, ...] = (
            tuple(order) if order is not None else stage_order(direction, tasks)
        )
        for t in self.stages:
            if t not in soft:
                raise ConfigError(f"engine: no software fallback for {t.kebab!r}")
        self.soft = soft
        self.policy = policy
        self.devices = list(devices)
        self.monitor = monitor or LoadMonitor()
        self.clock = clock
        self._counters: dict[Task, TaskCounters] = {t: TaskCounters() for t in self.stages}
        self.batches = 0
        self.packets_in = 0
        self.packets_out = 0
        self._next_origin = 0
        self._pending: deque[Pending] = deque()  # started, not finished (oldest first)
        # pipelining: host time from one start to the next, less software and waits
        self._last_start: float | None = None
        self._soft_s = 0.0  # software task time since the last start
        self._blocked_s = 0.0  # time waiting for device completions since the last start
        # per stage, looked up once: its software task and whether it settles
        self._tasks: dict[Task, SoftTask] = {t: soft[t] for t in self.stages}
        self._settles = frozenset(t for t in self.stages if soft[t].has_settle)
        # the path without devices, run by the C kernel (_kernel.soft_run): per
        # stage its bit (0 where the stage must go through _soft) and process;
        # the counts it adds (packets, bytes, ns per stage) wait in _acc until
        # the counters are read
        self._cplan: tuple[tuple[int, Callable[[Batch, Mask], Batch]], ...] = tuple(
            (0 if t in self._settles else _INT[t], self._tasks[t].process) for t in self.stages
        )
        self._acc = np.zeros(3 * len(self.stages), dtype=np.int64)
        self._observer: tuple[Policy | None, bool] = (None, False)
        self._snap: LoadSnapshot | None = None  # the load snapshot of this batch
        self._costed = -1  # task bits whose software runs go to the monitor (start() sets it)

    @property
    def counters(self) -> dict[Task, TaskCounters]:
        """Per task: offloaded, software, dropped, errors, bytes, time."""
        acc = self._acc
        if acc.any():  # what the C path counted since the last read
            v = acc.tolist()
            acc.fill(0)
            for i, c in enumerate(self._counters.values()):
                c.software += v[3 * i]
                c.bytes += v[3 * i + 1]
                c.soft_ns += v[3 * i + 2]
        return self._counters

    # ------------------------------------------------------------------ views
    def device_views(self, loads: Sequence[DeviceLoad] | None = None) -> list[DeviceView]:
        """What the policy sees of each device (``loads``: their ``load()``, if taken)."""
        if loads is None:
            loads = [d.load() for d in self.devices]
        return [
            DeviceView(i, d.name, d.query(), x.up)
            for i, (d, x) in enumerate(zip(self.devices, loads, strict=True))
        ]

    def report(self) -> dict[str, object]:
        return {
            "direction": "tx" if self.direction is Direction.TX else "rx",
            "policy": self.policy.describe(),
            "batches": self.batches,
            "packets_in": self.packets_in,
            "packets_out": self.packets_out,
            "tasks": {t.kebab: c.as_dict() for t, c in self.counters.items()},
        }

    # ------------------------------------------------------------------ run
    def process(self, batch: Batch) -> Output:
        """Run every stage over ``batch`` (whose extensions say what each packet wants).

        Batches started (``start``) must be finished first: their output would
        otherwise come after this one's."""
        if self._pending:
            raise ConfigError("engine: finish the batches started before processing another")
        if self.devices:
            return self.finish(self.start(batch))
        # without devices: every stage in software, straight through (what start
        # and finish would do, without their pipelining and trip bookkeeping,
        # which only devices need). The C kernel drives the stages; what it hands
        # back (a stage that settles, dead packets to count by reason, a batch
        # that changed size) is done here, and it goes on. (Inline, and len() of
        # the arrays: a Python call or two here cost as much as the engine's work.)
        if self.monitor.device_up:  # the devices were taken away
            self.monitor.set_devices((), ())
        n = len(batch.length)
        self.batches += 1
        self.packets_in += n
        base = self._next_origin
        self._next_origin += n
        if _native is None:
            r: object = NotImplemented
        else:
            r = _native.soft_run(batch, base, self._cplan, _DROP_I, self._acc, 0)
        if r is NotImplemented:  # the Python path, every stage
            _begin(batch, base)
            batch.ext.offload.fill(0)
            out = self._stages_from(batch, 0, len(self.stages))
        else:
            while type(r) is tuple:
                out, i, n_in, dead = r
                t = self.stages[i]
                if n_in < 0:  # stage i is ours
                    out = self._stages_from(out, i, i + 1)
                else:  # stage i ran; what follows it is ours
                    if len(out) != n_in:
                        refine_sub(out)
                    if dead < 0:
                        dead = _mark(out, t)
                    if dead:
                        self._count_drops(t, out, {})
                if i + 1 == len(self.stages):
                    r = out
                else:
                    r = _native.soft_run(out, base, self._cplan, _DROP_I, self._acc, i + 1)  # type: ignore[union-attr]
            out = r  # type: ignore[assignment]
        self.packets_out += len(out.length)
        return Output(out)

    def _stages_from(self, out: Batch, lo: int, hi: int) -> Batch:
        """Stages ``lo`` to ``hi`` (exclusive) in software, in Python."""
        for t in self.stages[lo:hi]:
            if not len(out):
                break
            want, nwant, nbytes, ndead = _scan(out, t)
            if nwant:
                out = self._soft(t, out, want, (nwant, nbytes, ndead))
        return out

    @property
    def pending(self) -> int:
        """Batches started and not yet finished."""
        return len(self._pending)

    def start(self, batch: Batch) -> Pending:
        """Begin ``batch``: do its software part and put its device trips in flight.

        ``finish`` must be called on every ``Pending``, in the order they were
        started; in between, the host is free to start more batches (pipelining).
        """
        if self.devices:  # pipelining is host and devices working at once
            self._pipeline_tick(bool(self._pending))
        self._snap = None
        n = len(batch)
        self.batches += 1
        self.packets_in += n
        _begin(batch, self._next_origin)
        self._next_origin += n
        if n == 0:
            p = Pending(batch, [], [])
        else:
            views: list[DeviceView] = []
            if self.devices:
                loads = [d.load() for d in self.devices]  # once: a load may ask the OS
                views = self.device_views(loads)
                # software costs are kept for the tasks a device has enabled: only those
                # are ever weighed against a device (the rest would only queue up runs
                # for the cost fit to fold, 1024 runs a task at once every 1024 pings)
                costed = 0
                for v in views:
                    costed |= int(v.buffer.enabled_tasks)
                self._costed = costed
                self.monitor.set_devices(
                    tuple(x.occupancy for x in loads), tuple(v.up for v in views)
                )
            elif self.monitor.device_up:  # the devices were taken away
                self.monitor.set_devices((), ())
            rest, trips, ip = self._start(batch, self.stages, views)
            p = Pending(rest, trips, views, ip)
        self._pending.append(p)
        return p

    def _pipeline_tick(self, pipelined: bool) -> None:
        """At a start: tell the monitor whether the engine is pipelining and, if it
        was since the last start too, how much host time that batch took besides
        its software tasks and its waits for devices."""
        now = time.perf_counter()
        if pipelined and self._last_start is not None:
            busy = now - self._last_start - self._blocked_s
            self.monitor.record_host_other(busy - self._soft_s)
        self.monitor.pipelined = pipelined
        self._last_start = now
        self._soft_s = self._blocked_s = 0.0

    def finish(self, p: Pending) -> Output:
        """Collect the device trips of ``p`` (waiting for them), run what is left
        of its stages and give the batch back whole, in order."""
        if p.finished:
            raise ConfigError("engine: this batch was already finished")
        if not self._pending or self._pending[0] is not p:
            raise ConfigError("engine: batches must be finished in the order they were started")
        self._pending.popleft()
        p.finished = True
        out = self._join(p.rest, p.trips, p.views, p.in_place) if p.trips else p.rest
        out.ext.offload.fill(0)
        self.packets_out += len(out)
        return Output(out)

    def _want(self, b: Batch, t: Task) -> Mask:
        return _scan(b, t)[0]

    def _run(self, b: Batch, stages: Sequence[Task], views: list[DeviceView]) -> Batch:
        rest, trips, ip = self._start(b, stages, views)
        return self._join(rest, trips, views, ip)

    def _start(
        self, b: Batch, stages: Sequence[Task], views: list[DeviceView]
    ) -> tuple[Batch, list[_Trip], _InPlace | None]:
        """Run ``stages`` over ``b``: the software part here, the device parts put
        on trips (submitted, not waited for)."""
        trips: list[_Trip] = []
        ip: _InPlace | None = None
        rest = b
        # the tasks some device that is up has enabled: a stage none of them can do
        # runs in software straight away, as without devices (no prepare, no load
        # snapshot, no split to ask the policy for: every packet would stay home)
        able = _able(views)
        for si, t in enumerate(stages):
            if len(rest) == 0:
                break
            want, nwant, nbytes, ndead = _scan(rest, t)
            if not nwant:
                continue
            pre: tuple[int, int, int] | None = (nwant, nbytes, ndead)
            if able & _INT[t]:
                pre = None  # without devices every packet stays in software
                self.soft[t].prepare(rest, want)
                snap = self._snapshot()
                paths = np.asarray(self.policy.split(t, rest, want, views, snap), np.int8)
                paths[~want] = SOFTWARE
                if len(paths) and int(paths.max()) >= 0:
                    # a device may only get what it can do
                    for v in views:
                        sel = paths == v.index
                        if sel.any():
                            paths[sel & ~v.capable(t, rest)] = SOFTWARE
                if self.soft[t].keeps_state:
                    # state no path may fork or lose with a device: the host's
                    paths[:] = SOFTWARE
                for k in _devices_in(paths, len(views)):
                    sel = paths == k
                    nsel = int(np.count_nonzero(sel))
                    fit = self.devices[k].submit_limit(rest, sel)
                    if fit < nsel:
                        # more than the device takes at once: the first ones stay
                        # home (the device's part stays the batch's tail)
                        home = np.flatnonzero(sel)[: nsel - fit]
                        sel[home] = False
                        paths[home] = SOFTWARE
                        if not fit:
                            continue
                    m = -1
                    # every trip is the engine's to give away (the batch handed to it,
                    # views of it, or a copy): the device may write its output into it
                    if sel.all():
                        trip, rest = rest, _EMPTY
                    elif rest.stride > 0 and not trips and (m := _tail_start(sel)) > 0:
                        # the device gets the last packets: views, no copy
                        parent = rest
                        trip, rest = parent.slice(m, len(parent)), parent.slice(0, m)
                        want, paths = want[:m], paths[:m]
                    else:
                        trip, rest = rest.take(sel), rest.take(~sel)
                        # the next device's packets are counted in what is left
                        want, paths = want[~sel], paths[~sel]
                    tr = self._open_trip(int(k), trip, stages, si, views)
                    trips.append(tr)
                    if m > 0:
                        ip = _InPlace(parent, m, rest, _arrays(rest), tr, _arrays(trip))
                if not len(rest) or not want.any():
                    continue
            rest = self._soft(t, rest, want, pre)
        return rest, trips, ip

    def _join(
        self,
        rest: Batch,
        trips: list[_Trip],
        views: list[DeviceView],
        ip: _InPlace | None = None,
    ) -> Batch:
        """Collect the trips and merge them with the software part, in order."""
        if not trips:
            return rest  # one part, already in origin order
        parts = [rest]
        for tr in trips:
            parts.append(self._finish_trip(tr, views))
        if (
            ip is not None
            and len(trips) == 1
            and trips[0] is ip.trip
            and rest is ip.rest
            and parts[1] is ip.trip.batch
            and _same(rest, ip.rest_arrays)
            and _same(parts[1], ip.trip_arrays)
        ):
            # both parts were done in place in the parent: only the trip's packet
            # starts (rebased in its view) go back
            p, m = ip.parent, ip.m
            np.add(parts[1].start, m * p.stride, out=p.start[m:])
            return p
        return merge_by_origin(parts)

    def _soft(self, t: Task, b: Batch, sel: Mask, pre: tuple[int, int, int] | None = None) -> Batch:
        """Run task ``t``'s software over the packets ``sel`` of ``b``. ``pre``:
        what ``_scan`` found for exactly this ``sel`` (packets, bytes, dead)."""
        c = self._counters[t]
        n_in = len(b)
        if pre is None:
            nsel = _cnz(sel)
            nbytes = int(np.add.reduce(b.length if nsel == n_in else b.length[sel]))
            before = _dead_reasons(b)
        else:
            nsel, nbytes, ndead = pre
            before = _dead_reasons(b) if ndead else {}
        task = self._tasks[t]
        t0 = time.perf_counter_ns()
        out = task.process(b, sel)
        dt = time.perf_counter_ns() - t0
        same = len(out) == n_in
        if not same:
            refine_sub(out)
        if t in self._settles:
            task.settle(out, sel if same else (out.ext.tasks & bit16(t)) != 0)
        dead = _mark(out, t)
        c.software += nsel
        c.bytes += nbytes
        c.soft_ns += dt
        self._soft_s += dt / 1e9
        if dead or before:
            self._count_drops(t, out, before)
        if self.devices:  # costs and feedback only matter where there is a choice
            if self._costed & _INT[t]:  # (the policies' cost models read no other task)
                self.monitor.record(t, SOFTWARE, nsel, nbytes, dt / 1e9)
            if self._observes():  # else a no-op: skip building the feedback
                self.policy.observe(Feedback(t, SOFTWARE, nsel, nbytes, dt / 1e9, self.clock()))
        return out

    def _snapshot(self) -> LoadSnapshot:
        """The load snapshot the policy sees: one per batch started (taken when the
        first split needs it), so the stages and look-aheads of a batch are
        decided on the same picture, and it is built once."""
        if self._snap is None:
            self._snap = self.monitor.snapshot(self.clock())
        return self._snap

    def _observes(self) -> bool:
        """Whether the policy's ``observe`` does anything (remembered per policy)."""
        pol, yes = self._observer
        if pol is not self.policy:
            yes = _observes(self.policy)
            self._observer = (self.policy, yes)
        return yes

    def _count_drops(self, t: Task, b: Batch, before: dict[int, int]) -> None:
        """Charge to task ``t`` the packets that died since ``before`` was taken."""
        after = _dead_reasons(b)
        c = self._counters[t]
        for r, k in after.items():
            inc = k - before.get(r, 0)
            if inc > 0:
                c.dropped += inc
                name = _reason_name(r)
                c.reasons[name] = c.reasons.get(name, 0) + inc

    def _open_trip(
        self,
        k: int,
        trip: Batch,
        stages: Sequence[Task],
        si: int,
        views: list[DeviceView],
    ) -> _Trip:
        """Submit ``trip`` to device ``k`` with the tasks from stage ``si`` on that
        the policy also gives it. The trip is the engine's to give away, so the
        device may write its output into it (``submit_owned``)."""
        t = stages[si]
        trip.ext.offload[:] = 0
        want = self._want(trip, t)
        trip.ext.offload[want] = np.uint16(t)
        tasks = t
        sj = si + 1
        while sj < len(stages):
            t2 = stages[sj]
            w2 = self._want(trip, t2)
            if self.soft[stages[sj - 1]].has_settle and tasks & stages[sj - 1]:
                # the host settles that task before a later one may see the packets
                break
            if w2.any():
                if tasks & RESHAPING and self.soft[t2].has_prepare:
                    # its prepare step must see the packets an earlier task of
                    # this trip has yet to make (e.g. number the segments)
                    break
                if not views[k].capable(t2, trip)[w2].all() or self.soft[t2].keeps_state:
                    break
                snap = self._snapshot()
                p2 = np.asarray(self.policy.split(t2, trip, w2, views, snap), np.int8)
                if not (p2[w2] == k).all():
                    break
                self.soft[t2].prepare(trip, w2)
                trip.ext.offload[w2] |= np.uint16(t2)
                tasks |= t2
            sj += 1
        dev = self.devices[k]
        # a device may work in place: count its drops against the state before submit
        dead_before = _dead_reasons(trip)
        t0 = self.clock()
        try:
            ticket = dev.submit_owned(trip, self.stages)
        except DeviceError as e:
            ticket = -1
            self._device_failed(k, trip, tasks, str(e))
        asked = offload_tally(trip)
        tr = _Trip(k, ticket, trip, tasks, tuple(stages[sj:]), t0, dead_before, asked)
        return tr

    def _device_failed(self, k: int, trip: Batch, tasks: Task, why: str) -> None:
        for t in tasks.members():
            # no task's state is lost here: a task that keeps state never goes to
            # a device, and the filter and decryption keep theirs on the host
            # (prepare / settle), so the redo in software goes on from it
            n = int(((trip.ext.offload & t) != 0).sum())
            self._counters[t].errors += n
            self.policy.observe(
                Feedback(t, k, n, 0, 0.0, self.clock(), error=why or "device error")
            )

    def _finish_trip(self, trip: _Trip, views: list[DeviceView]) -> Batch:
        dev = self.devices[trip.device]
        ok = False
        out = trip.batch
        if trip.ticket >= 0:
            try:
                w0 = time.perf_counter()
                comp = dev.complete(trip.ticket)
                self._blocked_s += time.perf_counter() - w0
                ok, out = comp.ok, comp.batch
                if ok and len(out) != len(trip.batch):
                    refine_sub(out)
                if not ok:
                    self._device_failed(trip.device, trip.batch, trip.tasks, comp.error)
            except DeviceError as e:
                self._device_failed(trip.device, trip.batch, trip.tasks, str(e))
        if ok:
            elapsed = self.clock() - trip.t0
            tb = int(trip.tasks)
            members = [t for t in self.stages if tb & _INT[t]]  # in stage order
            for t in members:
                task = self.soft[t]
                if task.has_settle:
                    task.settle(out, (out.ext.tasks & bit16(t)) != 0)
            self.monitor.record_latency(trip.device, elapsed)
            for t, n, nbytes in trip.asked:
                c = self._counters[t]
                c.offloaded += n
                c.bytes += nbytes
                c.device_ns += int(elapsed * 1e9 / len(members))
                share = elapsed / len(members)
                self.monitor.record(t, trip.device, n, nbytes, share)
                self.policy.observe(Feedback(t, trip.device, n, nbytes, share, self.clock()))
            # a trip's drops are charged to its first task (the device does not say which)
            self._count_drops(members[0], out, trip.dead_before)
            out.ext.offload[:] = 0
        else:
            # redo in software, in stage order, what the device was asked to do
            out = trip.batch
            for t in self.stages:
                if not trip.tasks & t:
                    continue
                sel = ((out.ext.offload & t) != 0) & out.ext.alive()
                if sel.any():
                    out = self._soft(t, out, sel)
            out.ext.offload[:] = 0
        if trip.rest and len(out):
            out = self._run(out, trip.rest, views)
        return out


def _observes(p: Policy) -> bool:
    """Whether ``p.observe`` does anything (the base class's is a no-op)."""
    return type(p).observe is not Policy.observe or "observe" in getattr(p, "__dict__", ())


def _reason_name(v: int) -> str:
    try:
        return Reason(v).name.lower()
    except ValueError:
        return f"reason-{v}"


def _cnz(a: np.ndarray) -> int:
    return int(np.count_nonzero(a))


_DROP_I = int(FilterVerdict.DROP)
#: what is left at home when a whole batch goes on a trip (read only, never handed
#: out: a Batch.empty() costs 7 us, its 27 extension arrays)
_EMPTY = Batch.empty()
_INT: dict[Task, int] = {t: int(t) for t in ALL_TASKS}


def _able(views: Sequence[DeviceView]) -> int:
    """The task bits enabled on the devices of ``views`` that are up."""
    out = 0
    for v in views:
        if v.up:
            out |= int(v.buffer.enabled_tasks)
    return out


def _begin(b: Batch, base: int) -> None:
    """Number the packets of a batch entering the engine (``origin``, ``sub``)."""
    e = b.ext
    if _native is not None:
        try:
            _native.begin(e.origin, e.sub, base)
            return
        except (ValueError, BufferError):  # not contiguous: numpy does it
            pass
    np.add(np.arange(len(e.origin), dtype=np.int64), base, out=e.origin)
    e.sub.fill(0)


def _scan(b: Batch, t: Task) -> tuple[Mask, int, int, int]:
    """The packets of ``b`` that want ``t`` and have not had it (and are alive),
    with their number and bytes, and the number of dead packets in ``b``."""
    e = b.ext
    n = len(e.tasks)
    if _native is not None:
        want = np.empty(n, dtype=np.bool_)
        try:
            nw, nb, nd = _native.want(
                e.tasks, e.done, e.error, e.filter_verdict, b.length, _INT[t], _DROP_I, want
            )
            return want, nw, nb, nd
        except (ValueError, BufferError):  # not contiguous: numpy does it
            pass
    bit = bit16(t)
    want = (e.tasks & bit) != 0
    want &= (e.done & bit) == 0
    dead = 0
    if _cnz(e.error) or _cnz(e.filter_verdict):  # only dead packets need masking out
        alive = e.alive()
        dead = n - _cnz(alive)
        want &= alive
    nw = _cnz(want)
    nb = int(np.add.reduce(b.length if nw == n else b.length[want])) if nw else 0
    return want, nw, nb, dead


def _mark(b: Batch, t: Task) -> int:
    """Mark task ``t`` done where asked (alive or not); the number of dead packets."""
    e = b.ext
    if _native is not None:
        try:
            return _native.mark(e.tasks, e.done, e.error, e.filter_verdict, _INT[t], _DROP_I)
        except (ValueError, BufferError):  # not contiguous: numpy does it
            pass
    np.bitwise_or(e.done, e.tasks & bit16(t), out=e.done)
    if not _cnz(e.error) and not _cnz(e.filter_verdict):
        return 0
    return len(e.tasks) - _cnz(e.alive())


def _dead_reasons(b: Batch) -> dict[int, int]:
    """Histogram of the reasons of the packets that failed or were dropped."""
    e = b.ext
    # count_nonzero is the cheapest test; a MARK verdict alone is not a drop
    if not np.count_nonzero(e.error) and not np.count_nonzero(e.filter_verdict):
        return {}
    dead = ~e.alive()
    if not np.count_nonzero(dead):
        return {}
    reasons = np.where(e.error != 0, e.error, e.filter_reason)[dead]
    vals, counts = np.unique(reasons, return_counts=True)
    return dict(zip(vals.tolist(), counts.tolist(), strict=True))
