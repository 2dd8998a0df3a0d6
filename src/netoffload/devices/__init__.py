"""Devices behind the device protocol, and middlewares that wrap any device."""

from netoffload.devices.base import Completion, Device, DeviceLoad, WireDevice
from netoffload.devices.faults import FaultInjector
from netoffload.devices.loopback import LoopbackEnd, LoopbackPair
from netoffload.devices.software import SoftwareDevice

__all__ = [
    "Completion",
    "Device",
    "DeviceLoad",
    "FaultInjector",
    "LoopbackEnd",
    "LoopbackPair",
    "SoftwareDevice",
    "WireDevice",
]
