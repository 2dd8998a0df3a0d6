"""Registers the in-process devices: software and loopback."""

from __future__ import annotations

from netoffload import soft
from netoffload.devices.base import Device
from netoffload.devices.loopback import LoopbackPair
from netoffload.devices.registry import register_device
from netoffload.devices.software import SoftwareDevice


def _software() -> Device:
    return SoftwareDevice(soft.SoftLibrary.build(soft.available().members()))


def _loopback() -> Device:
    return LoopbackPair(soft.SoftLibrary.build(soft.available().members())).a


register_device("software", _software, "the software task library, in-process")
register_device(
    "loopback", _loopback, "one end of an in-process wire with NIC-like checksum offload"
)
