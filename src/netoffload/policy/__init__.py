"""Policies: per batch and task, which packets go to a device and which stay in software."""

from netoffload.policy.base import (
    Always,
    DeviceView,
    Feedback,
    Never,
    Policy,
    make_policy,
    register_policy,
)
from netoffload.policy.load import CostEstimate, LoadMonitor, LoadSnapshot

__all__ = [
    "Always",
    "CostEstimate",
    "DeviceView",
    "Feedback",
    "LoadMonitor",
    "LoadSnapshot",
    "Never",
    "Policy",
    "make_policy",
    "register_policy",
]
