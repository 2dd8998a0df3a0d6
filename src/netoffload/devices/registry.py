"""Named devices for the CLI (``netoffload caps --device NAME``) and configuration.

A device module registers a factory; factories that need the kernel may raise
``DeviceError`` with the reason (not root, no /dev/net/tun), which ``caps``
prints instead of the table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from netoffload.devices.base import Device
from netoffload.errors import ConfigError, DeviceError
from netoffload.netns import Netns
from netoffload.plugins import ModuleSet


@dataclass(frozen=True)
class DeviceEntry:
    name: str
    factory: Callable[[], Device]
    summary: str


_DEVICES: dict[str, DeviceEntry] = {}
_MODULES = (
    "netoffload.devices.builtin",
    "netoffload.devices.tun",
    "netoffload.devices.udp",
    "netoffload.devices.packet",
    "netoffload.devices.emulated_nic",
)
_PLUGINS = ModuleSet(_MODULES)


def register_device(name: str, factory: Callable[[], Device], summary: str) -> None:
    _DEVICES[name] = DeviceEntry(name, factory, summary)


class ProbeBed(Protocol):
    """Throwaway namespaces a kernel device is probed in (``caps --device tun``);
    ``close()`` removes them with all they hold. ``netoffload.testing.netns.Testbed``
    is one."""

    def host(self, tag: str = ...) -> Netns: ...

    def link(self, a: Netns, b: Netns) -> object: ...

    def close(self) -> None: ...


_probe_bed: Callable[[], ProbeBed] | None = None


def set_probe_bed(factory: Callable[[], ProbeBed]) -> None:
    """Give the kernel devices' probe factories their namespaces (devices do not import
    ``testing/``: importing ``netoffload.testing.netns`` sets its ``Testbed`` here)."""
    global _probe_bed
    _probe_bed = factory


def probe_bed(kind: str) -> ProbeBed:
    """A new ``ProbeBed`` from the factory set by ``set_probe_bed``."""
    if _probe_bed is None:
        raise DeviceError(
            f"{kind}: no namespaces to probe in (nothing called "
            "devices.registry.set_probe_bed; importing netoffload.testing.netns does)"
        )
    return _probe_bed()


def _load() -> None:
    _PLUGINS.load()


def devices() -> dict[str, DeviceEntry]:
    _load()
    return dict(_DEVICES)


def get_device(name: str) -> DeviceEntry:
    d = devices().get(name)
    if d is None:
        raise ConfigError(f"unknown device {name!r} (known: {', '.join(sorted(devices()))})")
    return d
