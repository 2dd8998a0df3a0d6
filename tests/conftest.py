"""Shared test helpers."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

pytest_plugins = ["netoffload.testing.fixtures"]

settings.register_profile(
    "ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=30, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_report_header() -> list[str]:
    return [f"uid={os.geteuid()} tun={os.path.exists('/dev/net/tun')}"]


@pytest.fixture
def rng():  # type: ignore[no-untyped-def]
    import numpy as np

    return np.random.default_rng(1234)
