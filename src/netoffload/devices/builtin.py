"""Registers the in-process devices: software and loopback."""

from __future__ import annotations

from netoffload import soft
from netoffload.devices.base import Device
from netoffload.devices.loopback import LoopbackPair
from netoffload.devices.registry import register_device
from netoffload.devices.software import SoftwareDevice
from netoffload.errors import ConfigError


def _library() -> soft.SoftLibrary:
    """Every available software task that builds without options (keyed ones need a config)."""
    lib = soft.SoftLibrary()
    for t in soft.available().members():
        try:
            lib.add(soft.make_task(t))
        except ConfigError:
            continue
    return lib


def _software() -> Device:
    return SoftwareDevice(_library())


def _loopback() -> Device:
    return LoopbackPair(_library()).a


register_device("software", _software, "the software task library, in-process")
register_device(
    "loopback", _loopback, "one end of an in-process wire with NIC-like checksum offload"
)
