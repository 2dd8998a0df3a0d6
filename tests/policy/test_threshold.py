"""Threshold: hysteresis on host load and batch size, under scripted loads."""

from __future__ import annotations

import pytest
from policy_helpers import batch, snap, view, want

from netoffload.errors import ConfigError
from netoffload.policy import Threshold, make_policy
from netoffload.tasks import Task


def run(pol: Threshold, loads: list[float], n: int = 10) -> list[bool]:
    out = []
    for i, cpu in enumerate(loads):
        b = batch(n)
        p = pol.split(Task.CHECKSUM, b, want(n), [view()], snap(now=i * 0.1, host_cpu=cpu))
        assert (p == 0).all() or (p == -1).all()
        out.append(bool((p == 0).all()))
    return out


def test_load_hysteresis() -> None:
    pol = Threshold(load_on=0.8, load_off=0.5)
    script = [0.1, 0.7, 0.85, 0.7, 0.55, 0.49, 0.6, 0.79, 0.8, 0.3]
    assert run(pol, script) == [False, False, True, True, True, False, False, False, True, False]
    dec = pol.describe()["decisions"]
    assert isinstance(dec, dict)
    assert dec["checksum"]["turned_on"] == 2 and dec["checksum"]["turned_off"] == 2
    assert dec["checksum"]["device"] == 40 and dec["checksum"]["software"] == 60


def test_batch_size_threshold() -> None:
    pol = Threshold(load_on=1.0, load_off=1.0, size_on=64, size_off=16)
    seq = []
    for n in (8, 32, 64, 32, 17, 16, 40):
        p = pol.split(Task.CHECKSUM, batch(n), want(n), [view()], snap(host_cpu=0.0))
        seq.append(bool((p == 0).all()))
    assert seq == [False, False, True, True, True, False, False]


def test_only_capable_packets_and_up_devices() -> None:
    pol = Threshold(load_on=0.5, load_off=0.2)
    b = batch(6)
    b.length[:3] = 9500  # above the device's max_offload_size
    w = want(6)
    w[5] = False
    p = pol.split(Task.CHECKSUM, b, w, [view()], snap(host_cpu=0.9))
    assert list(p[:3]) == [-1, -1, -1] and list(p[3:5]) == [0, 0]
    p = pol.split(Task.CHECKSUM, batch(4), want(4), [view(up=False)], snap(host_cpu=0.9))
    assert (p == -1).all()
    p = pol.split(Task.CHECKSUM, batch(4), want(4), [view()], snap(host_cpu=0.9, occupancy=1.0))
    assert (p == -1).all()  # the device's queue is full


def test_lookahead_keeps_state() -> None:
    pol = Threshold(load_on=0.8, load_off=0.5)
    b = batch(4)
    pol.split(Task.CHECKSUM, b, want(4), [view()], snap(host_cpu=0.9))
    b.ext.offload[:] = Task.ENCRYPT  # a trip being assembled
    p = pol.split(Task.CHECKSUM, b, want(4), [view()], snap(host_cpu=0.0))
    assert (p == 0).all() and pol.on[Task.CHECKSUM]


def test_bad_thresholds() -> None:
    with pytest.raises(ConfigError):
        Threshold(load_on=0.4, load_off=0.6)
    with pytest.raises(ConfigError):
        Threshold(size_on=10, size_off=20)


def test_registered() -> None:
    assert isinstance(make_policy("threshold"), Threshold)
    assert make_policy("threshold+failover").name == "threshold+failover"
