"""Test hosts: network namespaces joined by veth pairs (root only).

The namespace primitives (``Netns``, ``check_address``, ``is_project_netns``,
clean-up on exit) live in ``netoffload.netns``, below the devices; they are
re-exported here so that tests, the demo and the benchmarks find everything in
one place. This module adds the hosts (``Host``: a ``Netns`` that can also open
a TUN), veth links and the ``Testbed`` that removes them all, and hands
``Testbed`` to the device registry as the throwaway namespaces that
``netoffload caps --device tun|udp|packet`` probes in.

Everything here lives inside namespaces this process created, named
``nof-<pid>-<n>-<tag>``; addresses come from 198.18.0.0/15 and fd00::/8 only.

Typical use::

    with Testbed() as tb:
        a, b = tb.host("a"), tb.host("b")
        tb.link(a, b, addrs_a=["198.18.0.1/24"], addrs_b=["198.18.0.2/24"])
        fd, ifname = a.open_tun("tun0")          # TUN inside namespace a
        a.ip("addr", "add", "198.18.1.1/24", "dev", ifname)
        out = b.run(some_function, arg)           # runs in this thread, inside b
        p = b.popen(["ping", "-c1", "198.18.0.1"])  # `ip netns exec`
        child = b.spawn(fn, arg); child.join(5)     # forked child inside b
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from netoffload.devices import kernel_common as kc
from netoffload.devices.registry import set_probe_bed
from netoffload.errors import ConfigError
from netoffload.netns import (
    ALLOWED_NETS,
    NETNS_DIR,
    Netns,
    NsProcess,
    _run,
    available,
    check_address,
    cleanup_all,
    cleanup_stale,
    is_project_netns,
    prefix,
)
from netoffload.netns import create_netns as _create_netns

__all__ = [
    "ALLOWED_NETS",
    "NETNS_DIR",
    "Host",
    "Netns",
    "NsProcess",
    "Testbed",
    "VethPair",
    "available",
    "check_address",
    "cleanup_all",
    "cleanup_stale",
    "create_netns",
    "is_project_netns",
    "prefix",
    "tun_available",
]


def tun_available() -> str | None:
    r = available()
    if r:
        return r
    if not os.path.exists(kc.TUN_PATH):
        return f"no {kc.TUN_PATH}"
    return None


class Host(Netns):
    """A test host: one of our namespaces that can also open a TUN/TAP inside itself."""

    def open_tun(
        self,
        ifname: str = "tun0",
        *,
        tap: bool = False,
        vnet_hdr: bool = True,
        multi_queue: bool = False,
        nonblock: bool = True,
        up: bool = True,
        addrs: Sequence[str] = (),
        mtu: int | None = None,
    ) -> tuple[int, str]:
        """Create (or attach another queue to) a TUN/TAP inside this namespace.

        Returns ``(fd, ifname)``; the caller owns and closes the fd. The
        interface disappears with the namespace.
        """
        return kc.tun_open_in(
            self,
            ifname,
            tap=tap,
            vnet_hdr=vnet_hdr,
            multi_queue=multi_queue,
            nonblock=nonblock,
            up=up,
            addrs=addrs,
            mtu=mtu,
        )


def create_netns(tag: str = "h") -> Host:
    """Create a namespace ``nof-<pid>-<n>-<tag>`` with ``lo`` up (see ``netoffload.netns``)."""
    return Host(_create_netns(tag).name)


@dataclass
class VethPair:
    ns_a: Netns
    if_a: str
    ns_b: Netns
    if_b: str
    addrs_a: list[str] = field(default_factory=list)
    addrs_b: list[str] = field(default_factory=list)


class Testbed:
    """A set of namespaces and links, all removed by ``close()`` / on exit."""

    def __init__(self) -> None:
        self.hosts: list[Host] = []
        self.links: list[VethPair] = []
        self._closed = False

    def host(self, tag: str = "h") -> Host:
        ns = create_netns(tag)
        self.hosts.append(ns)
        return ns

    def link(
        self,
        a: Netns,
        b: Netns,
        *,
        if_a: str = "veth0",
        if_b: str = "veth0",
        addrs_a: Sequence[str] = (),
        addrs_b: Sequence[str] = (),
        mtu: int | None = None,
        up: bool = True,
    ) -> VethPair:
        """A veth pair created directly inside ``a`` and ``b`` (never in the root namespace).

        With addresses on both ends, each side gets permanent neighbour entries
        for the other's addresses (no ARP/ND delays in tests).
        """
        for x in (*addrs_a, *addrs_b):
            check_address(x)
        if a.name == b.name and if_a == if_b:
            raise ConfigError("veth ends in one namespace need different names")
        _run(
            [
                "ip",
                "link",
                "add",
                if_a,
                "netns",
                a.name,
                "type",
                "veth",
                "peer",
                "name",
                if_b,
                "netns",
                b.name,
            ]
        )
        for ns, ifn, addrs in ((a, if_a, addrs_a), (b, if_b, addrs_b)):
            if mtu is not None:
                ns.ip("link", "set", ifn, "mtu", str(mtu))
            for x in addrs:
                ns.add_address(ifn, x)
            if up:
                ns.ip("link", "set", ifn, "up")
        if addrs_a and addrs_b:
            a.static_neighbors(if_a, b, if_b, addrs_b)
            b.static_neighbors(if_b, a, if_a, addrs_a)
        pair = VethPair(a, if_a, b, if_b, list(addrs_a), list(addrs_b))
        self.links.append(pair)
        return pair

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for h in reversed(self.hosts):
            h.delete()

    def __enter__(self) -> Testbed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


set_probe_bed(Testbed)
