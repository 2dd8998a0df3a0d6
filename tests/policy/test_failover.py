"""Failover: a device error disables that task on that device for a back-off,
then the next batch probes it; back-off doubles on repeated failures."""

from __future__ import annotations

import pytest
from policy_helpers import batch, snap, view, want

from netoffload.errors import ConfigError
from netoffload.policy import Always, Failover, Feedback, Never, make_policy
from netoffload.policy.base import policy_names
from netoffload.tasks import Task

C = Task.CHECKSUM
E = Task.ENCRYPT


def to_device(pol: Failover, now: float, task: Task = C) -> bool:
    p = pol.split(task, batch(4), want(4), [view(C | E)], snap(now=now))
    return bool((p == 0).all())


def test_error_disables_for_backoff_then_probes() -> None:
    pol = Failover(Always(), backoff=1.0, max_backoff=4.0)
    assert to_device(pol, 0.0)
    pol.observe(Feedback(C, 0, 4, 0, 0.0, 0.0, error="refused"))
    assert not to_device(pol, 0.5)
    assert to_device(pol, 0.0 + 0.5) is False
    assert to_device(pol, 0.6, E)  # another task on the same device is unaffected
    assert to_device(pol, 1.0)  # back-off over: this batch is the probe
    pol.observe(Feedback(C, 0, 4, 0, 0.0, 1.0, error="again"))  # probe failed: 2 s now
    assert not to_device(pol, 2.9)
    assert to_device(pol, 3.0)
    pol.observe(Feedback(C, 0, 4, 0, 0.0, 3.0, error="again"))  # 4 s (max)
    assert not to_device(pol, 6.9)
    assert to_device(pol, 7.0)
    pol.observe(Feedback(C, 0, 4, 0, 0.0, 7.0, error="again"))  # stays at max 4 s
    assert not to_device(pol, 10.9)
    assert to_device(pol, 11.0)
    pol.observe(Feedback(C, 0, 4, 4000, 0.001, 11.0))  # the probe went through
    assert to_device(pol, 11.1)
    pol.observe(Feedback(C, 0, 4, 0, 0.0, 12.0, error="once more"))  # back to the base
    assert not to_device(pol, 12.9) and to_device(pol, 13.0)
    dec = pol.tally[C].extra
    assert dec["disabled"] == 5 and dec["recovered"] == 1 and dec["probes"] == 5
    assert dec["suppressed"] == 4 * 6


def test_success_before_probe_does_not_reenable() -> None:
    pol = Failover(Always(), backoff=1.0)
    pol.observe(Feedback(C, 0, 4, 0, 0.0, 0.0, error="x"))
    pol.observe(Feedback(C, 0, 4, 10, 0.001, 0.1))  # a trip submitted before the failure
    assert not to_device(pol, 0.2)


def test_software_feedback_and_inner_never() -> None:
    pol = Failover(Never())
    pol.observe(Feedback(C, -1, 4, 0, 0.0, 0.0, error="software cannot fail the device"))
    assert not pol.disabled
    assert not to_device(pol, 0.0)


def test_names_and_config() -> None:
    for n in ("never", "always", "threshold", "adaptive"):
        assert f"{n}+failover" in policy_names()
        p = make_policy(f"{n}+failover")
        assert isinstance(p, Failover) and p.inner.name == n
        assert p.describe()["policy"] == f"{n}+failover"
    with pytest.raises(ConfigError):
        Failover(Always(), backoff=0.0)
    with pytest.raises(ConfigError):
        make_policy("bogus+failover")
