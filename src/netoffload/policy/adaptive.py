"""Adaptive: split each batch so that host and device finish together.

For the packets of a batch that want a task and that a device can take, the
policy predicts each path's completion time from the load snapshot:

* software: ``f_sw + c_sw * k_sw`` where ``c_sw`` is the measured software cost
  per packet (and ``f_sw`` per run) of every task still ahead of the packet that
  the device could also do (the *chain*: one trip carries them all, so the split
  is made once, at the first such task);
* device: ``wait + f_dev + c_dev * k_dev``, with the device's own service cost
  for the chain (``LoadSnapshot.device_cost``) and the time batches recently
  waited in its queue.

When the host's cores are busy and this process gets only part of them (a CPU
hog), the software costs are divided by that share (``host_share``).

Both finish together when ``k_dev = (f_sw + c_sw * n - wait - f_dev) / (c_sw + c_dev)``.
When the engine pipelines (a backlog: the device works on one batch while the
host starts the next), the two paths are instead kept equally busy per batch,
the host's share counting its time outside the tasks too (``host_other_s``:
splitting, crossings, merging, the caller's loop) and the queue wait not at all:
``k_dev = (other + f_sw + c_sw * n - f_dev) / (c_sw + c_dev)``. No
packet is offloaded when the host's cost of crossing to the device is at least
the cost of doing the chain in software. The model's ``k_dev`` is scaled by a
ratio ``m`` that a hill-climb adjusts every ``period`` seconds (time from the
feedback, never a clock of its own) on the observed throughput — task-packets
per second of batch wall time (software time, or submit-to-complete time of the
device trips, whichever is longer; while pipelining, of the window's time;
the two modes keep a ratio each, and a window ends unused when the mode changes):
keep moving ``m`` the same way while throughput rises by more than
``tolerance`` (5%), turn back when it drops by more. Each turn halves the step
(down to ``min_step``), so ``m`` settles at the best split instead of swinging
a whole step either side of it. A change inside the tolerance is noise, not
evidence: ``m`` steps back toward 1 (the model); after ``probe_after`` quiet
windows there it probes one step to the other side than last time (each probe
costs throughput when the model is right).
(Moving on through noise, it drifted to its bound on chance rises and lost
15% against a fixed split near the model's.) A change of throughput by more than
``regime`` (the offered load or the host's share changed, not the split) starts
again from the model (``m = 1``, its costs measured afresh) with the full step.

A part smaller than ``min_part`` of the packets (15%) goes with the rest
instead: it would save less than its fixed costs (one more run, one more
crossing) and it adds a second path's jitter to the pipeline — with a CPU hog
on the host core, keeping 10% at home made the whole batch wait for the host.
For the host's part the bar is ``min_part`` divided by the host's share of its
core (up to half the batch): with a competitor on the core the host is away for
whole time slices, and a software part the model balanced at 17% still cost 5%
of throughput against sending everything.

Packets keep their path within one engine pass: packets the engine is putting
on a trip stay on that device (look-ahead), and packets whose chain started in
software stay in software, so a packet crosses to the device at most once per
pass. Without measurements for a path the policy splits half and half to learn
both; while one path gets nothing, a small share is sent to it every
``probe_every`` seconds so its cost estimate follows the load (e.g. a CPU hog
that comes and goes) — software every ``probe_every`` divided by the host's
share of its core, since a probe there costs that much more.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from netoffload.batch import Batch, Mask
from netoffload.errors import ConfigError
from netoffload.policy.base import DeviceView, Feedback, Paths, Policy, software_paths
from netoffload.policy.load import SOFTWARE, LoadSnapshot
from netoffload.policy.threshold import Tally, in_trip
from netoffload.tasks import Task


def host_share(load: LoadSnapshot, busy: float = 0.9, floor: float = 0.5) -> float:
    """The share of the host's cores this process gets when it wants them.

    While the host's cores have idle time (utilisation below ``busy``) nobody is
    in our way: 1. Once they are busy, our share is our CPU over theirs — the
    rest went to others — but at least ``floor``: what we use also falls as we
    offload more, which is not what we would get (one competitor of equal
    priority leaves us half). Measured costs are wall time of runs that a
    competitor preempts only some of the time, so they understate this.
    """
    if load.host_cpu < busy or load.process_cpu <= 0:
        return 1.0
    return min(1.0, max(floor, load.process_cpu / load.host_cpu))


class Model(NamedTuple):
    """What the cost model says of one split."""

    k: int  # packets to the device (before the hill-climbed ratio)
    why: str
    terms: tuple[float, float, float, float]  # costs a packet: software, device, crossing; wait


class Adaptive(Policy):
    name = "adaptive"

    def __init__(
        self,
        period: float = 0.3,
        step: float = 1.1,
        bounds: tuple[float, float] = (0.75, 1.33),
        tolerance: float = 0.05,
        probe_share: float = 0.1,
        probe_every: float = 0.5,
        min_step: float = 1.02,
        regime: float = 0.25,
        min_part: float = 0.15,
        probe_after: int = 3,
    ) -> None:
        if period <= 0 or step <= 1.0 or not 0 < bounds[0] <= 1.0 <= bounds[1]:
            raise ConfigError("adaptive: need period > 0, step > 1, bounds lo <= 1 <= hi")
        if not 0 < probe_share <= 0.5 or probe_every <= 0:
            raise ConfigError("adaptive: need 0 < probe_share <= 0.5 and probe_every > 0")
        if not 1.0 < min_step <= step or regime <= 0:
            raise ConfigError("adaptive: need 1 < min_step <= step and regime > 0")
        if not 0 <= min_part < 0.5:
            raise ConfigError("adaptive: need 0 <= min_part < 0.5")
        self.period = period
        self.step = step
        self.min_step = min_step
        self.regime = regime
        self.min_part = min_part
        self.probe_after = max(1, probe_after)
        self._quiet = 0  # windows at the model without evidence since the last probe
        self._step = step  # the step now (halved at each turn)
        self.bounds = bounds
        self.tolerance = tolerance
        self.probe_share = probe_share
        self.probe_every = probe_every
        self.ratio = 1.0  # hill-climbed multiplier on the model's device share
        self.direction = 1
        self.climbs = 0
        self.last_rate = 0.0
        self.last_split: dict[Task, tuple[int, int]] = {}  # task: (to device, fresh packets)
        #: per task, why its last split went as it did (and the model's terms)
        self.last_why: dict[Task, dict[str, object]] = {}
        self._prev_rate: float | None = None
        self._win_start: float | None = None
        self._win_packets = 0
        self._win_sw = 0.0
        self._win_dev = 0.0
        self._last_probe: dict[tuple[int, int], float] = {}  # (device, path probed)
        self._trip_device = -1
        self._pipelined = False  # the last snapshot said the engine pipelines
        #: the climb of the other mode (pipelined or not), kept while this one runs
        self._other_climb: tuple[float, int, float, float | None, int] | None = None
        self.tally = Tally()

    # ------------------------------------------------------------ model
    def device_share(
        self,
        chain: Task,
        device: int,
        avg_bytes: float,
        n: int,
        load: LoadSnapshot,
        avail: float | None = None,
    ) -> Model | None:
        """Packets of ``n`` the model sends to ``device`` (before the ratio), with
        why and the costs it used, or None when a path has not been measured yet.
        ``avail``: ``host_share(load)`` if the caller has it."""
        c_sw = c_dev = f_sw = f_dev = 0.0
        for t in chain.members():
            sw = load.estimate(t, SOFTWARE)
            dv = load.device_cost(t, device)
            if not sw.samples or not dv.samples:
                return None
            c_sw += sw.marginal(avg_bytes)
            c_dev += dv.marginal(avg_bytes)
            f_sw += sw.per_call_s
            f_dev += dv.per_call_s
        # the host core shared with others (a CPU hog): software runs slower than measured
        if avail is None:
            avail = host_share(load)
        c_sw /= avail
        f_sw /= avail
        cross = load.crossing.get(device)
        x = cross.marginal(avg_bytes) if cross is not None and cross.samples else 0.0
        wait = load.queue_wait_s.get(device, 0.0)
        terms = (c_sw, c_dev, x, wait)
        if x >= c_sw or c_sw + c_dev <= 0:
            return Model(0, "crossing costs more than software", terms)
        if load.pipelined:
            # host and device work on different batches: balance their busy time
            # per batch; the host's also has its work outside the tasks
            k = (load.host_other_s + f_sw + c_sw * n - f_dev) / (c_sw + c_dev)
            why = "balance (pipelined)"
        else:
            k = (f_sw + c_sw * n - wait - f_dev) / (c_sw + c_dev)
            why = "finish together"
        return Model(round(min(max(k, 0.0), float(n))), why, terms)

    # ------------------------------------------------------------ split
    def split(
        self,
        task: Task,
        batch: Batch,
        want: Mask,
        devices: Sequence[DeviceView],
        load: LoadSnapshot,
    ) -> Paths:
        out = software_paths(len(batch))
        if load.pipelined != self._pipelined:
            self._switch_mode(load.pipelined)
        if not want.any():
            return out
        ups = [d for d in devices if d.up]
        if in_trip(batch, want):  # look-ahead on a trip: keep it on its device
            for d in ups:
                if d.index == self._trip_device:
                    out[want & d.capable(task, batch)] = d.index
            return out
        e = batch.ext
        best: tuple[float, DeviceView, Mask] | None = None
        none = "no device is up" if not ups else ""
        for d in ups:
            occ = load.device_occupancy[d.index] if d.index < len(load.device_occupancy) else 0.0
            if occ >= 1.0:
                none = none or "device queues full"
                continue
            # packets whose chain started in software stay there
            fresh = (e.done & ~e.by_device & np.uint16(d.buffer.enabled_tasks)) == 0
            fresh &= want
            if not fresh.any():
                none = none or "their chain started in software"
                continue
            fresh &= d.capable(task, batch)
            if not fresh.any():
                none = none or "no device can do them"
                continue
            score = load.device_cost(task, d.index).per_packet_s  # cheapest device first
            if best is None or score < best[0]:
                best = (score, d, fresh)
        if best is None:
            self.tally.count(task, out, want)
            self._explain(task, 0, int(np.count_nonzero(want)), none)
            return out
        _, d, fresh = best
        idx = np.flatnonzero(fresh)
        n = len(idx)
        bits = int(np.bitwise_or.reduce(e.tasks[idx] & ~e.done[idx]))
        chain = Task((bits & int(d.buffer.enabled_tasks)) | int(task))
        ln = batch.length
        avg = float(np.add.reduce(ln if n == len(ln) else ln[idx])) / n
        avail = host_share(load)
        model = self.device_share(chain, d.index, avg, n, load, avail)
        terms = None
        if model is None:
            k = n // 2 if n > 1 else n  # learn both paths
            self.tally.bump(task, "explore")
            why = "learning both paths' costs"
        else:
            why, terms = model.why, model.terms
            k = min(n, round(model.k * self.ratio))
            # a small part on one path saves less than its fixed costs (a run,
            # a crossing) and the jitter of one more path in the pipeline
            # ... the more so for the host's part when others hold the host's core:
            # it is then descheduled for whole time slices while the device waits
            home = min(0.5, self.min_part / avail)
            if 0 < k < self.min_part * n:
                k, why = 0, f"{why}; device part under {self.min_part:.0%}"
            elif 0 < n - k < home * n:
                k, why = n, f"{why}; software part under {home:.0%}"
            probe = max(1, math.ceil(self.probe_share * n))
            if k == 0 and self._probe_due(d.index, d.index, load.now):
                k = probe
                self.tally.bump(task, "probe_device")
                why += "; probing the device"
            elif (
                k == n
                and n > 1
                # a shared host core makes the software probe dearer: probe less often
                and self._probe_due(d.index, SOFTWARE, load.now, self.probe_every / avail)
            ):
                k = n - probe
                self.tally.bump(task, "probe_software")
                why += "; probing software"
        self._explain(task, k, n, why, d.name, terms)
        if k:  # the last k: the engine's merge of [software part, trip] is then in order
            out[idx[n - k :]] = d.index
        self._trip_device = d.index
        self.last_split[task] = (k, n)
        self.tally.count(task, out, want)
        return out

    def _explain(
        self,
        task: Task,
        k: int,
        n: int,
        why: str,
        device: str = "",
        terms: tuple[float, float, float, float] | None = None,
    ) -> None:
        """Keep why the last split of ``task`` went as it did (``describe()["why"]``),
        with the model's ``terms`` (software, device, crossing, queue wait) if any."""
        rec: dict[str, object] = {"device": device, "to_device": k, "of": n, "why": why}
        if terms is not None:
            c_sw, c_dev, x, wait = terms
            rec.update(
                software_us=round(c_sw * 1e6, 3),
                device_us=round(c_dev * 1e6, 3),
                crossing_us=round(x * 1e6, 3),
                queue_wait_us=round(wait * 1e6, 1),
                ratio=round(self.ratio, 4),
            )
        self.last_why[task] = rec

    def _probe_due(self, device: int, path: int, now: float, every: float = 0.0) -> bool:
        key = (device, path)
        last = self._last_probe.get(key)
        if last is None:
            self._last_probe[key] = now
            return False
        if now - last >= (every or self.probe_every):
            self._last_probe[key] = now
            return True
        return False

    # ------------------------------------------------------------ learn
    def observe(self, fb: Feedback) -> None:
        if fb.error:
            return
        if self._win_start is None:
            self._win_start = fb.now
        self._win_packets += fb.packets
        if fb.path == SOFTWARE:
            self._win_sw += fb.seconds
        else:
            self._win_dev += fb.seconds
        if fb.now - self._win_start >= self.period:
            # pipelining (a backlog) all the window: host and device work on different
            # batches, trips overlap, and the throughput is the window's own
            busy = fb.now - self._win_start if self._pipelined else max(self._win_sw, self._win_dev)
            if busy > 0:
                self._climb(self._win_packets / busy)
            self._restart_window(fb.now)

    def _restart_window(self, now: float | None) -> None:
        self._win_start = now
        self._win_packets = 0
        self._win_sw = self._win_dev = 0.0

    def _switch_mode(self, pipelined: bool) -> None:
        """The engine started or stopped pipelining. The two modes balance by
        different models and measure throughput differently (wall time of the
        window, or the paths' busy time), so each keeps its own climb: the
        ratio learnt in one says nothing of the other, and a window that saw
        both would compare the two measures (a jump that looked like a change of
        regime and reset the climb every time the backlog came or went)."""
        mine = (self.ratio, self.direction, self._step, self._prev_rate, self._quiet)
        other = self._other_climb
        if other is None:
            other = (1.0, 1, self.step, None, 0)
        self.ratio, self.direction, self._step, self._prev_rate, self._quiet = other
        self._other_climb = mine
        self._pipelined = pipelined
        self._restart_window(None)

    def _climb(self, rate: float) -> None:
        """One hill-climbing step on the observed throughput ``rate``.

        Only a change beyond ``tolerance`` is evidence: a rise keeps the
        direction, a drop turns back and halves the step. Without evidence (a
        change inside the noise) the ratio steps back toward the model's split,
        and, after ``probe_after`` quiet windows there, probes one step to the
        other side than last time — so on a noisy machine it stays near the model
        instead of drifting to a bound on chance rises."""
        prev = self._prev_rate
        self._prev_rate = rate
        self.last_rate = rate
        self.climbs += 1
        if prev is not None and abs(rate - prev) > self.regime * prev:
            # new conditions: start again from the model (its costs are measured
            # afresh) with the full step
            self._step = self.step
            self.ratio = 1.0
            self.direction = 1
            return
        lo, hi = self.bounds
        if prev is None or rate > prev * (1 + self.tolerance):
            pass  # go on the same way
        elif rate < prev * (1 - self.tolerance):
            self.direction = -self.direction
            self._step = max(self.min_step, 1 + (self._step - 1) / 2)
        elif abs(math.log(self.ratio)) > 1e-9:  # no evidence: back toward the model
            back = 1 if self.ratio < 1 else -1
            r = self.ratio * self._step**back
            self.ratio = min(r, 1.0) if back > 0 else max(r, 1.0)
            self.direction = back  # the next probe: the other side
            self._quiet = 0
            return
        else:  # at the model, no evidence: probe only every probe_after windows
            self._quiet += 1
            if self._quiet < self.probe_after:
                return
            self._quiet = 0
        self.ratio = min(hi, max(lo, self.ratio * self._step**self.direction))
        if self.ratio in (lo, hi):  # at a bound: come back next time
            self.direction = -1 if self.ratio == hi else 1

    def describe(self) -> dict[str, object]:
        return {
            "policy": self.name,
            "ratio": round(self.ratio, 4),
            "climbs": self.climbs,
            "throughput": round(self.last_rate, 1),
            "split": {t.kebab: {"device": k, "of": n} for t, (k, n) in self.last_split.items()},
            "why": {t.kebab: dict(w) for t, w in self.last_why.items()},
            "decisions": self.tally.as_dict(),
        }
