"""Policies: per batch and task, which packets go to a device and which stay in software."""

from netoffload.policy.adaptive import Adaptive
from netoffload.policy.base import _REGISTRY as _POLICIES
from netoffload.policy.base import (
    Always,
    DeviceView,
    Feedback,
    Never,
    Policy,
    make_policy,
    register_policy,
)
from netoffload.policy.failover import Failover
from netoffload.policy.load import CostEstimate, LoadMonitor, LoadSnapshot, PsutilSampler
from netoffload.policy.threshold import Threshold


def _with_failover(base: str) -> None:
    inner = _POLICIES[base]
    register_policy(f"{base}+failover", lambda: Failover(inner()))


register_policy("threshold", Threshold)
register_policy("adaptive", Adaptive)
for _name in ("never", "always", "threshold", "adaptive"):
    _with_failover(_name)

__all__ = [
    "Adaptive",
    "Always",
    "CostEstimate",
    "DeviceView",
    "Failover",
    "Feedback",
    "LoadMonitor",
    "LoadSnapshot",
    "Never",
    "Policy",
    "PsutilSampler",
    "Threshold",
    "make_policy",
    "register_policy",
]
