"""Pytest fixtures for kernel tests (registered by tests/conftest.py via ``pytest_plugins``).

- ``netns_ok``: skips (with the reason shown) unless namespaces can be used.
- ``tun_ok``: same, also needs /dev/net/tun.
- ``testbed``: a fresh ``Testbed`` per test, closed afterwards (also on failure).
- ``two_hosts``: ``(testbed, a, b)`` joined by veth0 with 198.18.0.1/24 + fd00::1/64
  on ``a`` and 198.18.0.2/24 + fd00::2/64 on ``b``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from netoffload.testing import netns


@pytest.fixture
def netns_ok() -> None:
    reason = netns.available()
    if reason:
        pytest.skip(f"kernel test skipped: {reason}")


@pytest.fixture
def tun_ok() -> None:
    reason = netns.tun_available()
    if reason:
        pytest.skip(f"kernel test skipped: {reason}")


@pytest.fixture
def testbed(netns_ok: None) -> Iterator[netns.Testbed]:
    tb = netns.Testbed()
    try:
        yield tb
    finally:
        tb.close()


@pytest.fixture
def two_hosts(testbed: netns.Testbed) -> tuple[netns.Testbed, netns.Netns, netns.Netns]:
    a, b = testbed.host("a"), testbed.host("b")
    testbed.link(
        a, b, addrs_a=["198.18.0.1/24", "fd00::1/64"], addrs_b=["198.18.0.2/24", "fd00::2/64"]
    )
    return testbed, a, b
