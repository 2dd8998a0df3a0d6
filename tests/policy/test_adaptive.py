"""Adaptive: the split from measured costs, stickiness, probes and the hill-climb,
all with fake clocks and scripted loads (deterministic)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from policy_helpers import batch, snap, view, want

from netoffload.errors import ConfigError
from netoffload.policy import Adaptive, Feedback, make_policy
from netoffload.policy.load import SOFTWARE
from netoffload.tasks import Task

C = Task.CHECKSUM


def ndev(p: np.ndarray) -> int:  # type: ignore[type-arg]
    return int((p == 0).sum())


def test_equal_costs_split_half() -> None:
    pol = Adaptive()
    p = pol.split(C, batch(100), want(100), [view()], snap(sw={C: 10e-6}, dev={C: 10e-6}))
    assert ndev(p) == 50
    assert (p[:50] == -1).all() and (p[50:] == 0).all()  # the last ones: merge stays in order


def test_faster_device_gets_more() -> None:
    pol = Adaptive()
    p = pol.split(C, batch(90), want(90), [view()], snap(sw={C: 10e-6}, dev={C: 5e-6}))
    assert ndev(p) == 60  # 10*90 / (10 + 5): both finish after 300 us


def test_host_core_taken_by_others_shifts_to_the_device() -> None:
    pol = Adaptive()
    costs = {"sw": {C: 10e-6}, "dev": {C: 10e-6}}
    # busy host, but all of it is us: no change
    assert ndev(pol.split(C, batch(90), want(90), [view()], snap(1.0, 1.0, 1.0, **costs))) == 45
    # a hog takes half the core: software is twice as slow, the device gets 2/3
    assert ndev(pol.split(C, batch(90), want(90), [view()], snap(1.0, 1.0, 0.5, **costs))) == 60
    # ... and no more when we use less of it (because we offload): at least half is ours
    assert ndev(pol.split(C, batch(90), want(90), [view()], snap(1.0, 1.0, 0.2, **costs))) == 60
    # a share between: 10/0.8 = 12.5 us in software, 90 * 12.5 / 22.5 = 50
    assert ndev(pol.split(C, batch(90), want(90), [view()], snap(1.0, 1.0, 0.8, **costs))) == 50
    # idle time left on the host: nobody is in our way
    assert ndev(pol.split(C, batch(90), want(90), [view()], snap(1.0, 0.6, 0.3, **costs))) == 45


def test_queue_wait_shifts_to_software() -> None:
    pol = Adaptive()
    s = snap(sw={C: 10e-6}, dev={C: 10e-6}, wait=500e-6)
    assert ndev(pol.split(C, batch(100), want(100), [view()], s)) == 25


def test_fixed_costs_per_run() -> None:
    from netoffload.policy.load import CostEstimate, LoadSnapshot

    pol = Adaptive()
    s = LoadSnapshot(
        cost={(C, SOFTWARE): CostEstimate(10e-6, 0.0, 5, per_call_s=200e-6)},
        service={(C, 0): CostEstimate(10e-6, 0.0, 5, per_call_s=0.0)},
        device_occupancy=(0.0,),
    )
    # (200 + 10*100 - 0) / (10 + 10) = 60 packets to the device
    assert ndev(pol.split(C, batch(100), want(100), [view()], s)) == 60


def test_crossing_dearer_than_software_keeps_all_home_then_probes() -> None:
    pol = Adaptive(probe_every=1.0, probe_share=0.1)
    got = []
    for i in range(8):
        s = snap(now=i * 0.4, sw={C: 1e-6}, dev={C: 1e-6}, crossing=2e-6)
        got.append(ndev(pol.split(C, batch(50), want(50), [view()], s)))
    # nothing to the device, except a 10% probe once a second (t=0 starts the clock)
    assert got == [0, 0, 0, 5, 0, 0, 5, 0]
    assert pol.tally[C].extra["probe_device"] == 2


def test_much_faster_device_still_probes_software() -> None:
    pol = Adaptive(probe_every=1.0)
    got = []
    for i in range(4):
        s = snap(now=i * 0.6, sw={C: 100e-6}, dev={C: 1e-9})
        got.append(ndev(pol.split(C, batch(20), want(20), [view()], s)))
    assert got == [20, 20, 18, 20]


def test_unmeasured_paths_are_explored_half_and_half() -> None:
    pol = Adaptive()
    p = pol.split(C, batch(10), want(10), [view()], snap())
    assert ndev(p) == 5


def test_chain_cost_sums_the_tasks_the_device_can_do() -> None:
    pol = Adaptive()
    tasks = Task.ENCRYPT | Task.DIGEST
    s = snap(
        sw={Task.ENCRYPT: 6e-6, Task.DIGEST: 4e-6}, dev={Task.ENCRYPT: 2e-6, Task.DIGEST: 3e-6}
    )
    p = pol.split(Task.ENCRYPT, batch(30, tasks=tasks), want(30), [view(tasks)], s)
    assert ndev(p) == 20  # 10*30 / (10 + 5)


def test_packets_keep_their_path() -> None:
    pol = Adaptive()
    tasks = Task.ENCRYPT | Task.DIGEST
    d = view(tasks)
    s = snap(sw={Task.DIGEST: 10e-6}, dev={Task.DIGEST: 1e-9})
    b = batch(10, tasks=tasks)
    b.ext.done[:] = Task.ENCRYPT
    b.ext.by_device[4:] = Task.ENCRYPT  # done by the device: free to go again
    # (the first four were encrypted in software this pass: they stay there)
    p = pol.split(Task.DIGEST, b, want(10), [d], s)
    assert (p[:4] == -1).all() and (p[4:] == 0).all()
    # look-ahead on a trip: all stay on the trip's device, whatever the costs say
    t = batch(6, tasks=tasks)
    t.ext.offload[:] = Task.ENCRYPT
    s2 = snap(sw={Task.DIGEST: 1e-9}, dev={Task.DIGEST: 1.0})
    assert ndev(pol.split(Task.DIGEST, t, want(6), [d], s2)) == 6


def test_device_down_or_full_means_software() -> None:
    pol = Adaptive()
    s = snap(sw={C: 10e-6}, dev={C: 1e-9})
    assert ndev(pol.split(C, batch(10), want(10), [view(up=False)], s)) == 0
    s = snap(sw={C: 10e-6}, dev={C: 1e-9}, occupancy=1.0)
    assert ndev(pol.split(C, batch(10), want(10), [view()], s)) == 0


def test_hill_climb_follows_throughput() -> None:
    pol = Adaptive(step=1.25, tolerance=0.0, bounds=(0.25, 4.0), regime=10.0)
    ratios = []
    for rate in (1000.0, 2000.0, 3000.0, 1500.0, 1400.0, 1600.0):
        pol._climb(rate)
        ratios.append(pol.ratio)
    # up while throughput rises; a drop turns it back (perturb and observe) and
    # halves the step at each turn (1.25 -> 1.125 -> 1.0625)
    r4 = 1.25**3 / 1.125  # 1500: turn
    r5 = r4 * 1.0625  # 1400: turn again
    r6 = r5 * 1.0625  # 1600: go on
    assert ratios == pytest.approx([1.25, 1.25**2, 1.25**3, r4, r5, r6])
    assert pol.climbs == 6


def test_hill_climb_settles() -> None:
    """Throughput that peaks at m = 1: the swings around it shrink to min_step."""
    pol = Adaptive(step=1.2, tolerance=0.0, bounds=(0.25, 4.0), min_step=1.01)
    for _ in range(60):
        pol._climb(1000.0 * (1 - 0.2 * abs(math.log(pol.ratio))))
    assert pol._step == pytest.approx(1.01)
    assert abs(math.log(pol.ratio)) <= 2 * math.log(1.01)


def test_new_conditions_restart_from_the_model() -> None:
    """A throughput change beyond ``regime`` is new load, not the split's doing:
    the ratio goes back to 1 (the model) with the full step."""
    pol = Adaptive(step=1.2, tolerance=0.0, bounds=(0.25, 4.0), regime=0.25)
    for rate in (1000.0, 1010.0, 990.0, 995.0):
        pol._climb(rate)
    assert pol.ratio != 1.0 and pol._step < 1.2
    pol._climb(600.0)  # -40%: the hog came
    assert pol.ratio == 1.0 and pol._step == 1.2 and pol.direction == 1
    pol._climb(610.0)
    assert pol.ratio == pytest.approx(1.2)


def test_window_throughput_from_feedback() -> None:
    pol = Adaptive(period=0.3)
    pol.observe(Feedback(C, SOFTWARE, 100, 0, 0.05, 0.0))
    pol.observe(Feedback(C, 0, 100, 0, 0.08, 0.1))
    assert pol.climbs == 0
    pol.observe(Feedback(C, SOFTWARE, 100, 0, 0.05, 0.31))  # the window closes
    # 300 task-packets over the longer of 0.1 s software and 0.08 s device time
    assert pol.climbs == 1 and pol.last_rate == pytest.approx(3000.0)


def test_ratio_scales_the_model_and_is_bounded() -> None:
    pol = Adaptive(bounds=(0.5, 2.0))
    pol.ratio = 0.5
    s = snap(sw={C: 10e-6}, dev={C: 10e-6})
    assert ndev(pol.split(C, batch(100), want(100), [view()], s)) == 25
    for _ in range(50):
        pol._climb(1.0)
    assert 0.5 <= pol.ratio <= 2.0


def test_errors_are_not_throughput() -> None:
    pol = Adaptive()
    pol.observe(Feedback(C, 0, 10, 0, 0.0, 0.0, error="boom"))
    assert pol.climbs == 0 and pol._win_start is None


def test_config_and_registry() -> None:
    with pytest.raises(ConfigError):
        Adaptive(step=1.0)
    with pytest.raises(ConfigError):
        Adaptive(probe_share=0.0)
    assert isinstance(make_policy("adaptive"), Adaptive)
    assert "ratio" in make_policy("adaptive").describe()


def test_pipelined_balances_busy_time_with_the_host_s_other_work() -> None:
    from dataclasses import replace

    pol = Adaptive()
    s = snap(sw={C: 10e-6}, dev={C: 10e-6}, wait=500e-6)
    assert ndev(pol.split(C, batch(100), want(100), [view()], s)) == 25
    # pipelining: the queue wait is the device working on the batch before, not a
    # cost of this one; the host's 200 us of other work per batch counts on its side
    p = replace(s, pipelined=True, host_other_s=200e-6)
    assert ndev(pol.split(C, batch(100), want(100), [view()], p)) == 60
    assert ndev(pol.split(C, batch(100), want(100), [view()], replace(p, host_other_s=0))) == 50


def test_window_throughput_while_pipelining_is_over_the_window() -> None:
    from dataclasses import replace

    pol = Adaptive(period=0.3)
    p = replace(snap(sw={C: 10e-6}, dev={C: 10e-6}), pipelined=True)
    pol.split(C, batch(10), want(10), [view()], p)
    pol.observe(Feedback(C, SOFTWARE, 100, 0, 0.05, 0.0))
    pol.observe(Feedback(C, 0, 100, 0, 0.5, 0.1))  # trips overlap the next batches
    pol.split(C, batch(10), want(10), [view()], p)
    pol.observe(Feedback(C, SOFTWARE, 100, 0, 0.05, 0.4))  # the window closes
    assert pol.climbs == 1 and pol.last_rate == pytest.approx(300 / 0.4)


def test_a_small_part_goes_with_the_rest() -> None:
    """Device 9x faster: the model keeps 10% home (100 * 1 / 10). Below
    ``min_part`` (15%) that part joins the device's; with min_part 0 it stays.
    And the other way round: a 9x slower device's 10% stays home."""
    fast = snap(sw={C: 9e-6}, dev={C: 1e-6})
    assert ndev(Adaptive(min_part=0.0).split(C, batch(100), want(100), [view()], fast)) == 90
    assert ndev(Adaptive().split(C, batch(100), want(100), [view()], fast)) == 100
    slow = snap(sw={C: 1e-6}, dev={C: 9e-6})
    assert ndev(Adaptive(min_part=0.0).split(C, batch(100), want(100), [view()], slow)) == 10
    assert ndev(Adaptive().split(C, batch(100), want(100), [view()], slow)) == 0
    with pytest.raises(ConfigError):
        Adaptive(min_part=0.5)


def test_hill_climb_does_not_drift_on_noise() -> None:
    """Throughput flat but noisy (within the tolerance): the ratio dithers
    around the model, one step either side, and never walks off to a bound;
    a real gradient still carries it away."""
    rng = np.random.default_rng(3)
    pol = Adaptive(step=1.1, tolerance=0.05, bounds=(0.5, 2.0), regime=0.25)
    seen = []
    for _ in range(200):
        pol._climb(1000.0 * (1 + rng.uniform(-0.02, 0.02)))
        seen.append(pol.ratio)
    assert max(seen) <= 1.1 + 1e-9 and min(seen) >= 1 / 1.1 - 1e-9
    assert max(seen) > 1.0 and min(seen) < 1.0  # it probes both sides
    # more device share pays 10% a step: it climbs straight to the bound (once the
    # halved steps change throughput by less than the tolerance, that is no
    # evidence any more and it relaxes toward the model)
    pol = Adaptive(step=1.1, tolerance=0.05, bounds=(0.5, 2.0), regime=0.25)
    seen = []
    for _ in range(8):
        pol._climb(1000.0 * pol.ratio)
        seen.append(pol.ratio)
    assert seen == sorted(seen) and seen[-1] == pytest.approx(2.0)


def test_pipelined_and_serial_modes_climb_apart() -> None:
    """Pipelining and not are two models with two throughput measures: each mode
    keeps its own ratio, and a window that sees the mode change is dropped
    rather than compared across the two measures."""
    from dataclasses import replace

    pol = Adaptive(period=0.25, step=1.2, tolerance=0.01, regime=10.0)
    base = snap(sw={C: 10e-6}, dev={C: 10e-6})
    piped = replace(base, pipelined=True)

    # pipelined: rising throughput (packets per second of wall time) moves the
    # ratio up, window after window
    pol.split(C, batch(10), want(10), [view()], piped)
    pol.observe(Feedback(C, SOFTWARE, 0, 0, 0.0, 0.0))  # the first window opens
    for i, r in enumerate((1000.0, 1200.0, 1500.0)):
        pol.observe(Feedback(C, SOFTWARE, round(r * 0.3), 0, 0.0, 0.3 * (i + 1)))
    assert pol.climbs == 3 and pol.ratio > 1.0
    learnt = pol.ratio
    # the backlog drains: the serial mode starts from the model, with its own climb
    pol.split(C, batch(10), want(10), [view()], base)
    assert pol.ratio == 1.0
    # a window begun serial that ends pipelined is not used
    pol.observe(Feedback(C, SOFTWARE, 10, 0, 1e-3, 10.0))
    pol.split(C, batch(10), want(10), [view()], piped)
    assert pol.ratio == learnt  # back to what the pipelined mode had learnt
    pol.observe(Feedback(C, SOFTWARE, 10, 0, 1e-3, 10.4))
    assert pol.climbs == 3 and pol.ratio == learnt


def test_describe_says_why_each_split_went_as_it_did() -> None:
    pol = Adaptive(probe_every=100.0)
    # the crossing costs more than doing the task at home: all software, and why
    s = snap(now=0.0, sw={C: 1e-6}, dev={C: 1e-6}, crossing=2e-6)
    pol.split(C, batch(50), want(50), [view()], s)
    w = pol.describe()["why"]["checksum"]  # type: ignore[index]
    assert w["to_device"] == 0 and w["of"] == 50
    assert w["why"] == "crossing costs more than software"
    assert (w["software_us"], w["device_us"], w["crossing_us"]) == (1.0, 1.0, 2.0)
    # equal costs: half each, to finish together
    pol.split(C, batch(50), want(50), [view()], snap(sw={C: 10e-6}, dev={C: 10e-6}))
    w = pol.describe()["why"]["checksum"]  # type: ignore[index]
    assert (w["to_device"], w["why"]) == (25, "finish together")
    # a device part under min_part goes home, and that is said
    pol.split(C, batch(100), want(100), [view()], snap(sw={C: 1e-6}, dev={C: 10e-6}))
    w = pol.describe()["why"]["checksum"]  # type: ignore[index]
    assert w["to_device"] == 0 and "device part under 15%" in str(w["why"])
    # a full device queue: no costs to show, the reason instead
    pol.split(C, batch(10), want(10), [view()], snap(sw={C: 1e-6}, dev={C: 1e-6}, occupancy=1.0))
    w = pol.describe()["why"]["checksum"]  # type: ignore[index]
    assert w["why"] == "device queues full" and "software_us" not in w


def test_a_small_home_part_goes_too_when_the_host_core_is_shared() -> None:
    """With a competitor on the host's core, a software part under min_part / share
    goes to the device as well (the host is away for whole time slices)."""
    costs = {"sw": {C: 10e-6}, "dev": {C: 5e-6}}
    # the host is ours: 10 / (10 + 5) = 2/3 to the device, a third stays
    alone = Adaptive(probe_every=100.0)
    assert ndev(alone.split(C, batch(90), want(90), [view()], snap(1.0, 0.5, 0.5, **costs))) == 60
    # half the core is a hog's: software costs 20 us, the model keeps 20% (18 of 90)
    # home, under 15% / 0.5 = 30%: all go, and that is said
    shared = Adaptive(probe_every=100.0)
    assert ndev(shared.split(C, batch(90), want(90), [view()], snap(1.0, 1.0, 0.5, **costs))) == 90
    assert "software part under 30%" in str(shared.last_why[C]["why"])


def test_software_probes_are_rarer_on_a_shared_host_core() -> None:
    """All to the device, software probed every probe_every s -- every
    probe_every / share s when a hog holds half the host's core."""

    def probes(process_cpu: float) -> list[int]:
        pol = Adaptive(probe_every=1.0, probe_share=0.1)
        got = []
        for i in range(9):
            s = snap(i * 0.5, 1.0, process_cpu, sw={C: 100e-6}, dev={C: 1e-6})
            got.append(100 - ndev(pol.split(C, batch(100), want(100), [view()], s)))
        return got

    assert probes(1.0) == [0, 0, 10, 0, 10, 0, 10, 0, 10]  # our core: once a second
    assert probes(0.5) == [0, 0, 0, 0, 10, 0, 0, 0, 10]  # half of it: every 2 s
