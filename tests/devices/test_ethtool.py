"""ethtool features via SIOCETHTOOL, checked against pyroute2's independent ethtool client."""

from __future__ import annotations

import pytest

from netoffload.devices.ethtool import Ethtool, offload_summary
from netoffload.errors import ConfigError
from netoffload.testing import netns

Hosts = tuple[netns.Testbed, netns.Netns, netns.Netns]


def _pyroute2_features(ns: netns.Netns, ifname: str) -> dict[str, bool]:
    def read() -> dict[str, bool]:
        from pyroute2.ethtool import Ethtool as P2Ethtool

        e = P2Ethtool()
        try:
            return {k: bool(v.enable) for k, v in e.get_features(ifname).features.items() if k}
        finally:
            e.close()

    return ns.run(read)


def test_features_match_pyroute2(two_hosts: Hosts) -> None:
    _tb, a, _b = two_hosts
    ours = Ethtool(a, "veth0").active()
    ref = _pyroute2_features(a, "veth0")
    assert len(ours) > 20
    assert ours == ref
    assert "tx-tcp-segmentation" in offload_summary(a, "veth0")


def test_set_features_round_trip(two_hosts: Hosts) -> None:
    _tb, a, _b = two_hosts
    et = Ethtool(a, "veth0")
    assert et.active()["tx-tcp-segmentation"]
    after = et.set({"tx-tcp-segmentation": False, "rx-gro": True})
    assert after == {"tx-tcp-segmentation": False, "rx-gro": True}
    ref = _pyroute2_features(a, "veth0")
    assert ref["tx-tcp-segmentation"] is False and ref["rx-gro"] is True
    assert et.set({"tx-tcp-segmentation": True}) == {"tx-tcp-segmentation": True}
    assert _pyroute2_features(a, "veth0")["tx-tcp-segmentation"] is True


def test_refuses_anything_not_ours(two_hosts: Hosts) -> None:
    _tb, a, _b = two_hosts
    with pytest.raises(ConfigError):
        Ethtool(None, "lo")  # the root namespace: never
    with pytest.raises(ConfigError):
        Ethtool(netns.Netns("someone-else"), "veth0")
    with pytest.raises(ConfigError):
        Ethtool(a, "x" * 20)
    et = Ethtool(a, "veth0")
    with pytest.raises(ConfigError):
        et.set({"no-such-feature": True})
    fixed = [n for n, f in et.features().items() if f.fixed or not f.available]
    assert fixed
    f = et.features()[fixed[0]]
    with pytest.raises(ConfigError):
        et.set({fixed[0]: not f.active})


def test_namespace_removed_under_ethtool(testbed: netns.Testbed) -> None:
    a, b = testbed.host("a"), testbed.host("b")
    testbed.link(a, b)
    et = Ethtool(a, "veth0")
    assert et.names()
    a.delete()
    with pytest.raises(ConfigError):  # no longer ours: refused before any ioctl
        et.active()
