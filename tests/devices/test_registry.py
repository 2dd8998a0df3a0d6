"""The device registry's probe-bed hook: kernel devices are probed in namespaces
handed to them (``set_probe_bed``), never by importing ``testing/``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from netoffload.devices import kernel_common as kc
from netoffload.devices import registry
from netoffload.errors import DeviceError
from netoffload.netns import Netns


class FakeBed:
    def __init__(self) -> None:
        self.hosts: list[str] = []
        self.closed = 0

    def host(self, tag: str = "h") -> Netns:
        self.hosts.append(tag)
        return Netns(f"fake-{tag}")

    def link(self, a: Netns, b: Netns) -> object:
        return (a, b)

    def close(self) -> None:
        self.closed += 1


class FakeDevice:
    def __init__(self, bed: registry.ProbeBed, fail_query: bool = False) -> None:
        self.bed = bed
        self.fail_query = fail_query

    def query(self) -> None:
        if self.fail_query:
            raise DeviceError("query failed")


def fake_device(bed: registry.ProbeBed) -> Any:  # Any: a stand-in for a KernelDevice
    return FakeDevice(bed)


@pytest.fixture
def restore_bed() -> Iterator[None]:
    saved = registry._probe_bed
    yield
    registry._probe_bed = saved


def test_no_bed_set_is_a_device_error_naming_the_kind(restore_bed: None) -> None:
    registry._probe_bed = None
    with pytest.raises(DeviceError, match=r"^tun: no namespaces to probe in"):
        kc.throwaway_device("tun", lambda: None, fake_device)


def test_unavailable_wins_before_any_bed_is_made(restore_bed: None) -> None:
    beds: list[FakeBed] = []

    def new_bed() -> FakeBed:
        beds.append(FakeBed())
        return beds[-1]

    registry.set_probe_bed(new_bed)
    with pytest.raises(DeviceError, match=r"^udp: not root$"):
        kc.throwaway_device("udp", lambda: "not root", fake_device)
    assert beds == []


def test_the_injected_bed_is_used_and_owned_by_the_device(restore_bed: None) -> None:
    bed = FakeBed()
    registry.set_probe_bed(lambda: bed)

    def build(b: registry.ProbeBed) -> Any:
        b.host("caps")
        return FakeDevice(b)

    dev = kc.throwaway_device("tun", lambda: None, build)
    assert dev.bed is bed and bed.hosts == ["caps"] and bed.closed == 0


@pytest.mark.parametrize("where", ["build", "query"])
def test_the_bed_is_closed_when_building_or_querying_fails(restore_bed: None, where: str) -> None:
    bed = FakeBed()
    registry.set_probe_bed(lambda: bed)

    def build(b: registry.ProbeBed) -> Any:
        if where == "build":
            raise DeviceError("build failed")
        return FakeDevice(b, fail_query=True)

    with pytest.raises(DeviceError, match=f"{where} failed"):
        kc.throwaway_device("packet", lambda: None, build)
    assert bed.closed == 1


def test_importing_the_test_hosts_sets_their_testbed() -> None:
    from netoffload.testing import netns

    assert registry._probe_bed is netns.Testbed
