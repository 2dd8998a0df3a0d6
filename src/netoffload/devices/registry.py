"""Named devices for the CLI (``netoffload caps --device NAME``) and configuration.

A device module registers a factory; factories that need the kernel may raise
``DeviceError`` with the reason (not root, no /dev/net/tun), which ``caps``
prints instead of the table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from netoffload.devices.base import Device
from netoffload.errors import ConfigError
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
