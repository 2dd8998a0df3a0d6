"""Test hosts: namespaces, veth, running code inside, TUN inside, clean-up."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netoffload.errors import ConfigError
from netoffload.testing import netns


def _ns_names() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {ln.split()[0] for ln in out.splitlines() if ln.strip()}


@pytest.mark.parametrize("addr", ["198.18.0.1/24", "198.19.255.254/32", "fd00::1/64", "fdff::9"])
def test_check_address_accepts_test_ranges(addr: str) -> None:
    assert netns.check_address(addr).ip.version in (4, 6)


@pytest.mark.parametrize(
    "addr", ["10.0.0.1/8", "198.20.0.1/24", "198.18.0.1/8", "2001:db8::1/64", "fe80::1", "nonsense"]
)
def test_check_address_refuses_others(addr: str) -> None:
    with pytest.raises(ConfigError):
        netns.check_address(addr)


def test_two_hosts_ping_and_run_inside(
    two_hosts: tuple[netns.Testbed, netns.Netns, netns.Netns],
) -> None:
    _tb, a, b = two_hosts
    assert a.name.startswith(netns.prefix()) and netns.is_project_netns(a.name)
    assert a.name in _ns_names() and b.name in _ns_names()
    # a process started inside a sees a's interfaces only
    out = a.exec(
        [sys.executable, "-c", "import socket; print(sorted(n for _, n in socket.if_nameindex()))"]
    )
    assert out.strip() == "['lo', 'veth0']"
    # a function run inside b sees b's interfaces, and the thread is back home afterwards
    home = os.readlink("/proc/thread-self/ns/net")
    inside = b.run(
        lambda: (os.readlink("/proc/thread-self/ns/net"), socket.if_nametoindex("veth0"))
    )
    assert inside[0] != home and inside[1] > 0
    assert os.readlink("/proc/thread-self/ns/net") == home
    # UDP between a socket made in a and one made in b
    rx = b.socket()
    rx.bind(("198.18.0.2", 9000))
    rx.settimeout(5)
    tx = a.socket()
    tx.sendto(b"hello", ("198.18.0.2", 9000))
    assert rx.recvfrom(100)[0] == b"hello"
    rx.close()
    tx.close()


def _ifaces() -> list[str]:
    return sorted(n for _, n in socket.if_nameindex())


def test_spawn_runs_in_child_inside_namespace(testbed: netns.Testbed) -> None:
    h = testbed.host("c")
    child = h.spawn(_ifaces)
    assert child.join(10) == ["lo"]


def test_run_restores_namespace_after_exception(testbed: netns.Testbed) -> None:
    h = testbed.host("e")
    home = os.readlink("/proc/thread-self/ns/net")

    def boom() -> None:
        raise RuntimeError("inside")

    with pytest.raises(RuntimeError):
        h.run(boom)
    assert os.readlink("/proc/thread-self/ns/net") == home


def test_open_tun_inside_namespace(testbed: netns.Testbed, tun_ok: None) -> None:
    h = testbed.host("t")
    fd, name = h.open_tun("tun0", addrs=["198.18.5.1/24"])
    try:
        assert name == "tun0"
        assert "198.18.5.1/24" in h.ip("addr", "show", "dev", "tun0")
        assert "tun0" not in [n for _, n in socket.if_nameindex()]  # not in the root namespace
    finally:
        os.close(fd)


def test_veth_refuses_foreign_addresses(testbed: netns.Testbed) -> None:
    a, b = testbed.host("a"), testbed.host("b")
    with pytest.raises(ConfigError):
        testbed.link(a, b, addrs_a=["192.168.1.1/24"])


def test_context_manager_cleans_up_after_exception(netns_ok: None) -> None:
    names = []
    with pytest.raises(ValueError), netns.Testbed() as tb:
        names.append(tb.host("x").name)
        raise ValueError
    assert names and names[0] not in _ns_names()


_SCRIPT = """
import sys, time
from netoffload.testing import netns
tb = netns.Testbed()
h = tb.host("sig")
print(h.name, flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_namespaces_removed_when_process_is_signalled(netns_ok: None, sig: int) -> None:
    p = subprocess.Popen([sys.executable, "-c", _SCRIPT], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None
        name = p.stdout.readline().strip()
        assert name.startswith("nof-") and name in _ns_names()
        p.send_signal(sig)
        p.wait(20)
        assert name not in _ns_names()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_cleanup_stale_removes_namespaces_of_dead_processes(netns_ok: None) -> None:
    p = subprocess.Popen([sys.executable, "-c", _SCRIPT], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    name = p.stdout.readline().strip()
    assert name in _ns_names()
    p.kill()  # SIGKILL: no clean-up possible in the process itself
    p.wait()
    # (another test process starting up may sweep it first: the outcome is the same)
    netns.cleanup_stale()
    assert name not in _ns_names()


@given(
    st.one_of(
        st.text(max_size=40),
        st.ip_addresses().map(str),
        st.tuples(st.ip_addresses(), st.integers(0, 128)).map(lambda t: f"{t[0]}/{t[1]}"),
    )
)
def test_check_address_never_lets_other_ranges_through(text: str) -> None:
    import ipaddress

    try:
        iface = netns.check_address(text)
    except ConfigError:
        return
    # compare within the address family (subnet_of raises across families)
    allowed = ipaddress.ip_network("198.18.0.0/15" if iface.version == 4 else "fd00::/8")
    assert iface.network.subnet_of(allowed)  # type: ignore[arg-type]


def test_namespace_primitives_are_those_of_netoffload_netns() -> None:
    """testing.netns re-exports the primitives the devices use (one Netns class, one
    registry of our namespaces), and its hosts are such namespaces."""
    import netoffload.netns as base

    for name in ("Netns", "NsProcess", "check_address", "is_project_netns", "available"):
        assert getattr(netns, name) is getattr(base, name)
    for name in ("prefix", "cleanup_all", "cleanup_stale", "NETNS_DIR", "ALLOWED_NETS"):
        assert getattr(netns, name) is getattr(base, name)
    assert issubclass(netns.Host, base.Netns)
