"""Interface configuration: plan() against wg-quick(8)'s rules, and the kernel's state against
the real wg-quick's.

The pure tests state what wg-quick(8) does for each kind of configuration (expected steps
written from the man page and the script's semantics, not from our output). The kernel tests
run the real ``wg-quick up`` (falling back to the Debian wireguard-go, as it does without the
kernel module) in one namespace and ``apply(plan_here(...))`` on a TUN of the same name in
another namespace set up alike, then compare the two namespaces' addresses, MTU, routes
(``ip -j route show table all``) and rules (``ip -j rule``). The firewall wg-quick adds for a
default route is not ours: ``nft`` is a no-op stub on wg-quick's PATH. ``undo`` is checked
by a snapshot of the namespace before and after.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netoffload.devices import kernel_common as kc
from netoffload.errors import ConfigError
from netoffload.testing import netns
from netoffload.tunnel import iface
from netoffload.tunnel.iface import Address, Link, Made, Route, Rule, State

MAIN = 254

# --- plan(): wg-quick's rules, case by case ------------------------------------------------


def test_plan_addresses_mtu_and_main_routes() -> None:
    p = iface.plan(
        "wg0",
        ["198.18.5.1/24", "fd00::5:1/64", "198.18.9.9"],
        None,
        [["198.18.6.0/24", "fd00:6::/112"], ["198.18.7.7/32", "198.18.6.0/24"]],
    )
    # addresses as given (no prefix: a host address), MTU 1500 - 80 with nothing to go by,
    # then one main-table route per distinct prefix, longest first (v4 metric 0, v6 1024)
    assert p.steps == (
        Address("198.18.5.1/24"),
        Address("fd00::5:1/64"),
        Address("198.18.9.9/32"),
        Link(1420),
        Route("fd00:6::/112", MAIN, 1024),
        Route("198.18.7.7/32", MAIN, 0),
        Route("198.18.6.0/24", MAIN, 0),
    )
    assert p.fwmark is None and p.rules == () and p.mtu == 1420


def test_plan_default_route_gets_a_table_and_rules() -> None:
    p = iface.plan("wg0", [], 1400, [["0.0.0.0/0", "198.18.8.0/24"], ["::/0"]])
    assert p.fwmark == 51820
    # ::/0 sorts before 0.0.0.0/0 in `sort -nr -k 2 -t /` (ties by the whole line, reversed)
    assert p.steps == (
        Link(1400),
        Route("198.18.8.0/24", MAIN, 0),
        Route("::/0", 51820, 1024),
        Rule(6, 51820, fwmark=51820, invert=True),
        Rule(6, MAIN, suppress_prefixlength=0),
        Route("0.0.0.0/0", 51820, 0),
        Rule(4, 51820, fwmark=51820, invert=True),
        Rule(4, MAIN, suppress_prefixlength=0),
    )


def test_plan_default_route_table_choice() -> None:
    # the first table from 51820 up that holds no route
    p = iface.plan("wg0", [], None, [["0.0.0.0/0"]], busy_tables={51820, 51821, 51823, MAIN})
    assert p.fwmark == 51822 and p.routes == (Route("0.0.0.0/0", 51822, 0),)
    # a configured fwmark is the table; only the family with a default route gets rules
    p = iface.plan("wg0", [], None, [["::/0", "198.18.0.0/16"]], fwmark=0x1234)
    assert p.fwmark == 0x1234
    assert p.rules == (
        Rule(6, 0x1234, fwmark=0x1234, invert=True),
        Rule(6, MAIN, suppress_prefixlength=0),
    )
    # FwMark = 0 is "off": as if none was configured
    assert iface.plan("wg0", [], None, [["::/0"]], fwmark=0).fwmark == 51820


def test_plan_table_number_and_off() -> None:
    p = iface.plan("wg0", ["198.18.5.1/24"], None, [["0.0.0.0/0", "198.18.6.0/24"]], "1234")
    assert p.routes == (Route("198.18.6.0/24", 1234, 0), Route("0.0.0.0/0", 1234, 0))
    assert p.rules == () and p.fwmark is None and p.table == 1234
    p = iface.plan("wg0", [], None, [["0.0.0.0/0"]], "main")
    assert p.routes == (Route("0.0.0.0/0", MAIN, 0),) and p.rules == ()
    p = iface.plan("wg0", ["198.18.5.1/24"], None, [["0.0.0.0/0", "198.18.6.0/24"]], "off")
    assert p.routes == () and p.rules == () and p.fwmark is None
    assert p.steps == (Address("198.18.5.1/24"), Link(1420))
    # a configured fwmark is passed on whatever the table
    assert iface.plan("wg0", [], None, [], "off", fwmark=7).fwmark == 7


@pytest.mark.parametrize(
    ("endpoints", "default", "want"),
    [
        ((), None, 1420),  # nothing known: 1500 - 80
        ((1400,), None, 1320),
        ((1300, 9000, 1500), 1200, 8920),  # the largest endpoint route wins
        ((), 1280, 1200),  # no endpoint: the default route's
        ((), 9000, 8920),
    ],
)
def test_auto_mtu(endpoints: tuple[int, ...], default: int | None, want: int) -> None:
    assert (
        iface.plan("wg0", [], None, [], endpoint_mtus=endpoints, default_route_mtu=default).mtu
        == want
    )
    assert iface.plan("wg0", [], 1280, [], endpoint_mtus=endpoints).mtu == 1280  # MTU = given


def test_plan_normalises_prefixes_like_wg() -> None:
    # wg stores AllowedIPs with the host bits cleared, and a prefix once
    p = iface.plan("wg0", [], 1420, [["198.18.6.77/24"], ["198.18.6.0/24", "198.18.7.1"]])
    assert p.routes == (Route("198.18.7.1/32", MAIN, 0), Route("198.18.6.0/24", MAIN, 0))


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"ifname": "wg/0"}, "interface name"),
        ({"ifname": "a" * 16}, "interface name"),
        ({"ifname": ""}, "interface name"),
        ({"addresses": ["198.18.300.1/24"]}, "Address '198.18.300.1/24'"),
        ({"addresses": ["198.18.5.1/24", "198.18.5.1/24"]}, "given twice"),
        ({"mtu": 67}, "MTU 67"),
        ({"mtu": 65536}, "MTU 65536"),
        ({"peers_allowed_ips": [["198.18.6.0/33"]]}, "AllowedIPs '198.18.6.0/33'"),
        ({"peers_allowed_ips": ["198.18.6.0/24"]}, "a list per peer"),
        ({"table": "mine"}, "Table 'mine'"),
        ({"table": "0"}, "Table '0'"),
        ({"table": 2**32}, "out of range"),
        ({"fwmark": -1}, "FwMark -1"),
    ],
)
def test_plan_refuses(kwargs: dict[str, Any], needle: str) -> None:
    args: dict[str, Any] = {
        "ifname": "wg0",
        "addresses": [],
        "mtu": None,
        "peers_allowed_ips": [],
        **kwargs,
    }
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        iface.plan(**args)


_v4 = st.builds(
    lambda a, n: f"198.18.{a >> 8}.{a & 255}/{n}",
    st.integers(0, 2**9 - 1),
    st.integers(0, 32),
)
_v6 = st.builds(lambda a, n: f"fd00:{a:x}::/{n}", st.integers(0, 0xFFFF), st.integers(0, 128))


@given(
    st.lists(st.lists(st.one_of(_v4, _v6), max_size=6), max_size=4),
    st.sampled_from(["auto", "off", "1234"]),
)
def test_plan_routes_property(peers: list[list[str]], table: str) -> None:
    """Every distinct prefix is routed once, longest first; rules exactly for the families
    with a default route (Table = auto)."""
    import ipaddress

    p = iface.plan("wg0", [], None, peers, table)
    nets = {ipaddress.ip_network(x, strict=False) for peer in peers for x in peer}
    if table == "off":
        assert p.routes == () and p.rules == ()
        return
    got = [ipaddress.ip_network(r.dst) for r in p.routes]
    assert sorted(got, key=str) == sorted(nets, key=str)
    lens = [n.prefixlen for n in got]
    assert lens == sorted(lens, reverse=True)
    defaults = {n.version for n in nets if n.prefixlen == 0}
    if table == "auto":
        assert {r.family for r in p.rules} == defaults
        assert len(p.rules) == 2 * len(defaults)
        for r in p.routes:
            assert r.table == (51820 if r.dst.endswith("/0") else MAIN)
    else:
        assert p.rules == () and {r.table for r in p.routes} <= {1234}


# --- the record ------------------------------------------------------------------------------

_steps = st.one_of(
    st.builds(Address, st.sampled_from(["198.18.5.1/24", "fd00::1/64", "198.18.0.9/32"])),
    st.builds(
        Link,
        st.integers(68, 65535),
        st.none() | st.integers(68, 65535),
        st.none() | st.booleans(),
    ),
    st.builds(
        Route,
        st.sampled_from(["0.0.0.0/0", "::/0", "198.18.6.0/24"]),
        st.integers(1, 2**32 - 1),
        st.integers(0, 2**32 - 1),
    ),
    st.builds(
        Rule,
        st.sampled_from([4, 6]),
        st.integers(1, 2**32 - 1),
        st.none() | st.integers(1, 2**32 - 1),
        st.booleans(),
        st.none() | st.integers(0, 128),
        st.none() | st.integers(0, 2**32 - 1),
    ),
)
_made = st.builds(
    Made,
    st.sampled_from(["wg0", "nof.x-1", "a"]),
    st.integers(1, 2**31),
    st.sampled_from(["auto", "off", 1234, MAIN]),
    st.none() | st.integers(1, 2**32 - 1),
    st.lists(_steps, max_size=8),
)


@given(_made, st.integers(1, 2**22), st.text(max_size=20), st.none() | st.integers(0, 2**62))
def test_record_json_round_trip(made: Made, pid: int, config: str, started: int | None) -> None:
    assert Made.from_json(made.to_json()) == made
    state = State(pid, config, made, "/var/run/wireguard/x.sock", started)
    assert State.from_json(state.to_json()) == state
    # through the standard library's JSON (no private encoding)
    assert Made.from_dict(json.loads(made.to_json())) == made


@given(_made, st.data())
def test_record_corrupted_is_config_error(made: Made, data: st.DataObject) -> None:
    """A damaged state file gives a ConfigError or a valid record, never another exception."""
    text = made.to_json()
    pos = data.draw(st.integers(0, len(text)))
    cut = data.draw(st.integers(0, 8))
    junk = data.draw(st.text(max_size=6))
    bad = text[:pos] + junk + text[pos + cut :]
    with contextlib.suppress(ConfigError):
        Made.from_json(bad)
    with contextlib.suppress(ConfigError):
        State.from_json(bad)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=5),
)


@given(_json | st.fixed_dictionaries({"ifname": st.just("wg0"), "steps": st.lists(_json)}))
def test_record_arbitrary_json_is_config_error(value: Any) -> None:
    with contextlib.suppress(ConfigError):
        Made.from_dict(value)
    with contextlib.suppress(ConfigError):
        State.from_json(json.dumps(value))


def test_state_file(tmp_path: Path) -> None:
    run = str(tmp_path / "run")
    made = Made("wg0", 7, "auto", 51820, [Address("198.18.5.1/24"), Link(1420, 1500, False)])
    state = State(1234, "/etc/wireguard/wg0.conf", made, "/var/run/wireguard/wg0.sock")
    path = iface.write_state(state, run)
    assert path == iface.state_path("wg0", run) == os.path.join(run, "wg0.json")
    assert iface.state_path("wg0") == "/run/netoffload/wg0.json"
    assert stat.S_IMODE(os.stat(run).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert iface.read_state("wg0", run) == state
    assert os.listdir(run) == ["wg0.json"]  # no temporary left
    iface.remove_state("wg0", run)
    iface.remove_state("wg0", run)  # idempotent
    with pytest.raises(ConfigError, match="wg0: not up"):
        iface.read_state("wg0", run)
    with pytest.raises(ConfigError, match="interface name"):
        iface.state_path("../etc/passwd", run)
    bad = json.loads(state.to_json())
    del bad["made"]["ifname"]
    Path(run, "wg0.json").write_text(json.dumps(bad))
    with pytest.raises(ConfigError, match=r"wg0\.json: made: 'ifname' missing$"):
        iface.read_state("wg0", run)
    bad["made"]["ifname"], bad["made"]["steps"][0]["address"] = "wg0", "198.18.5.1/99"
    Path(run, "wg0.json").write_text(json.dumps(bad))
    with pytest.raises(ConfigError, match=r"wg0\.json: made: steps\[0\]: .*198\.18\.5\.1/99"):
        iface.read_state("wg0", run)
    Path(run, "wg1.json").write_text("{")
    with pytest.raises(ConfigError, match=r"wg1\.json: not valid JSON"):
        iface.read_state("wg1", run)


# --- the kernel ------------------------------------------------------------------------------


def _ipj(ns: netns.Netns, *args: str) -> Any:
    return json.loads(ns.ip("-j", *args) or "[]")


def snapshot(ns: netns.Netns) -> dict[str, Any]:
    """The namespace's routes (every table), rules, links and addresses, as `ip -j` shows
    them -- but for each link's qdisc: the kernel attaches the default one the first time a
    link goes up and keeps it (a TUN's goes with it at ``down``)."""
    addrs = _ipj(ns, "addr")
    for link in addrs:
        link.pop("qdisc", None)
        # IPv6 link-local addresses come and go with the kernel's DAD, at its pace (a
        # loaded machine: seconds); they and their routes are not ours to make or undo
        link["addr_info"] = [
            a
            for a in link.get("addr_info", [])
            if not (a.get("family") == "inet6" and a.get("scope") == "link")
        ]
    route6 = [
        r
        for r in _ipj(ns, "-6", "route", "show", "table", "all")
        if not str(r.get("dst", "")).startswith(("fe80", "ff00"))
    ]
    return {
        "route4": _ipj(ns, "-4", "route", "show", "table", "all"),
        "route6": route6,
        "rule4": _ipj(ns, "-4", "rule"),
        "rule6": _ipj(ns, "-6", "rule"),
        "addr": addrs,
    }


def _comparable(ns: netns.Netns, ifname: str) -> dict[str, Any]:
    """What wg-quick configures, minus what differs between any two TUNs (the random IPv6
    link-local address and its routes)."""
    snap = snapshot(ns)
    for key in ("route4", "route6"):
        snap[key] = sorted(
            (r for r in snap[key] if not r["dst"].startswith("fe80")),
            key=lambda r: json.dumps(r, sort_keys=True),
        )
    link = _ipj(ns, "addr", "show", "dev", ifname)[0]
    snap["addr"] = [a for a in link["addr_info"] if a.get("scope") != "link"]
    snap["mtu"] = link["mtu"]
    snap["up"] = "UP" in link["flags"]
    return snap


@pytest.fixture
def tun_host(tun_ok: None, testbed: netns.Testbed) -> Iterator[tuple[netns.Netns, str]]:
    """A namespace with a veth to a peer (198.18.0.1 - .2, MTU 1400) and a TUN, down."""
    h, peer = testbed.host("h"), testbed.host("p")
    testbed.link(h, peer, addrs_a=["198.18.0.1/24"], addrs_b=["198.18.0.2/24"], mtu=1400)
    name = f"nt{os.getpid() % 100000}"
    fd, name = h.run(kc.tun_open, name, vnet_hdr=False)
    try:
        yield h, name
    finally:
        os.close(fd)


@pytest.mark.kernel
def test_apply_undo_leaves_namespace_as_before(tun_host: tuple[netns.Netns, str]) -> None:
    h, name = tun_host
    before = snapshot(h)
    p = iface.plan(
        name,
        ["198.18.5.1/24", "fd00::5:1/64"],
        1380,
        [["198.18.6.0/24", "fd00:6::/112", "198.18.5.0/24", "0.0.0.0/0"], ["::/0"]],
    )
    made = h.run(iface.apply, p)
    during = snapshot(h)
    assert during != before
    link = _ipj(h, "link", "show", "dev", name)[0]
    assert link["mtu"] == 1380 and "UP" in link["flags"]
    # the address's own prefix route was there already: not made, so not to be removed
    assert Route("198.18.5.0/24", MAIN, 0) not in made.steps
    assert Made.from_json(made.to_json()) == made
    h.run(iface.undo, made)
    assert snapshot(h) == before
    h.run(iface.undo, made)  # again: everything is gone, nothing fails
    assert snapshot(h) == before


@pytest.mark.kernel
def test_default_route_rules_steer_by_fwmark(tun_host: tuple[netns.Netns, str]) -> None:
    h, name = tun_host
    h.ip("-4", "route", "add", "default", "via", "198.18.0.2")  # the host's own way out
    made = h.run(iface.apply, iface.plan(name, ["198.18.5.1/24"], None, [["0.0.0.0/0"]]))
    assert made.fwmark == 51820
    rules = _ipj(h, "-4", "rule")
    assert {"priority": 32765, "not": None, "src": "all", "fwmark": "0xca6c", "table": "51820"} in (
        rules
    )
    assert {"priority": 32764, "src": "all", "table": "main", "suppress_prefixlen": 0} in rules
    # the kernel now sends unmarked traffic into the tunnel, marked traffic (the tunnel's
    # own datagrams) the host's way; a main-table route more specific than /0 still wins
    assert _ipj(h, "route", "get", "198.18.99.1")[0]["dev"] == name
    assert _ipj(h, "route", "get", "198.18.99.1", "mark", "51820")[0]["dev"] == "veth0"
    assert _ipj(h, "route", "get", "198.18.0.2")[0]["dev"] == "veth0"
    h.run(iface.undo, made)
    assert _ipj(h, "-4", "rule") == [
        r for r in rules if r["table"] not in ("51820",) and "suppress_prefixlen" not in r
    ]


@pytest.mark.kernel
def test_failure_midway_undoes(tun_host: tuple[netns.Netns, str]) -> None:
    h, name = tun_host
    # ::/0 in table 51820 is taken through another device: the v6 default route fails after
    # the addresses, the link, a route and the v4 default route's two rules were made
    h.ip("-4", "route", "add", "198.18.40.0/24", "via", "198.18.0.2")
    h.ip("-6", "addr", "add", "fd00::1/64", "dev", "veth0", "nodad")
    h.ip("-6", "route", "add", "::/0", "dev", "veth0", "table", "51820")
    before = snapshot(h)
    p = iface.plan(
        name, ["198.18.5.1/24"], None, [["0.0.0.0/0", "198.18.6.0/24"], ["::/0"]], fwmark=51820
    )
    assert [type(s).__name__ for s in p.steps].index("Route") < len(p.steps) - 3
    with pytest.raises(ConfigError, match=rf"{name}: add route ::/0 table 51820: File exists"):
        h.run(iface.apply, p)
    assert snapshot(h) == before
    # a route of the main table taken by another device: refused, nothing left
    p = iface.plan(name, ["198.18.5.1/24"], None, [["198.18.40.0/24"]])
    with pytest.raises(ConfigError, match=r"add route 198\.18\.40\.0/24 table main"):
        h.run(iface.apply, p)
    assert snapshot(h) == before
    with pytest.raises(ConfigError, match="does not exist"):
        h.run(iface.apply, iface.plan("nosuch0", [], None, []))


@pytest.mark.kernel
def test_undo_after_interface_went(tun_ok: None, testbed: netns.Testbed) -> None:
    """The daemon died and its TUN with it: the rules are still there, and undo removes them
    (and touches no interface that now has the name)."""
    h = testbed.host("h")
    before = snapshot(h)
    name = f"nt{os.getpid() % 100000}"
    fd, _ = h.run(kc.tun_open, name, vnet_hdr=False)
    made = h.run(iface.apply, iface.plan(name, ["198.18.5.1/24"], None, [["0.0.0.0/0", "::/0"]]))
    os.close(fd)
    left = snapshot(h)
    assert len(left["rule4"]) == len(before["rule4"]) + 2 and left["addr"] == before["addr"]
    # an interface of the same name, made anew, keeps its address
    fd, _ = h.run(kc.tun_open, name, vnet_hdr=False)
    try:
        h.ip("link", "set", name, "up")
        h.ip("addr", "add", "198.18.5.1/24", "dev", name)
        h.run(iface.undo, made)
        infos = _ipj(h, "addr", "show", "dev", name)[0]["addr_info"]
        assert [a["local"] for a in infos if a["family"] == "inet"] == ["198.18.5.1"]
    finally:
        os.close(fd)
    assert snapshot(h) == before


@pytest.mark.kernel
def test_live_allowed_ips_changes(tun_host: tuple[netns.Netns, str]) -> None:
    h, name = tun_host
    before = snapshot(h)
    made = h.run(iface.apply, iface.plan(name, ["198.18.5.1/24"], None, [["198.18.6.0/24"]]))
    assert h.run(iface.add_route, made, "198.18.7.0/24") is None
    assert any(r["dst"] == "198.18.7.0/24" for r in _ipj(h, "route"))
    assert h.run(iface.add_route, made, "198.18.7.0/24") is None  # once only
    assert made.steps.count(Route("198.18.7.0/24", MAIN, 0)) == 1
    # a first default route picks the table and adds the rules, as up would have
    assert h.run(iface.add_route, made, "::/0") == 51820
    assert [r.table for r in made.steps if isinstance(r, Rule)] == [51820, MAIN]
    assert _ipj(h, "-6", "route", "show", "table", "51820")[0]["dev"] == name
    assert h.run(iface.del_route, made, "::/0") is True
    assert not any(isinstance(s, Rule) for s in made.steps)
    assert _ipj(h, "-6", "rule") == before["rule6"]
    # a prefix the main table routes through another device: refused, the record unchanged
    h.ip("-4", "route", "add", "198.18.50.0/24", "via", "198.18.0.2")
    steps = list(made.steps)
    with pytest.raises(ConfigError, match=r"add route 198\.18\.50\.0/24 table main: File exists"):
        h.run(iface.add_route, made, "198.18.50.0/24")
    assert made.steps == steps
    h.ip("-4", "route", "del", "198.18.50.0/24", "via", "198.18.0.2")
    assert h.run(iface.del_route, made, "198.18.6.0/24") is True
    assert h.run(iface.del_route, made, "198.18.6.0/24") is False
    assert not any(r["dst"] == "198.18.6.0/24" for r in _ipj(h, "route"))
    h.run(iface.undo, made)
    assert snapshot(h) == before


# --- against the real wg-quick ----------------------------------------------------------------


@dataclass
class Case:
    name: str
    addresses: list[str]
    peers: list[list[str]]
    endpoints: list[str] = field(default_factory=list)
    mtu: int | None = None
    table: str | None = None
    fwmark: int | None = None
    setup: list[list[str]] = field(default_factory=list)  # `ip` commands run in both namespaces


CASES = [
    Case(
        "main",
        ["198.18.5.1/24", "fd00::5:1/64"],
        # 198.18.5.128/25 and fd00::5:0/112 are covered by the addresses' own routes
        [["198.18.6.0/24", "198.18.5.128/25"], ["198.18.7.7/32", "fd00:6::/112", "fd00::5:0/112"]],
    ),
    Case(
        "default",
        ["198.18.5.1/24", "fd00::5:1/64"],
        [["0.0.0.0/0", "::/0"], ["198.18.8.0/24"]],
        endpoints=["198.18.0.2"],  # MTU from the veth: 1400 - 80
    ),
    Case(
        "busytable",
        ["198.18.5.1/24"],
        [["0.0.0.0/0"]],
        setup=[["route", "add", "198.18.40.0/24", "via", "198.18.0.2", "table", "51820"]],
    ),
    Case(
        "fwmark",
        ["fd00::5:1/64"],
        [["::/0"]],
        endpoints=["198.18.30.5"],  # a route with its own MTU: 1390 - 80
        fwmark=0x1234,
        setup=[["route", "add", "198.18.30.0/24", "via", "198.18.0.2", "mtu", "1390"]],
    ),
    Case(
        "table",
        ["198.18.5.1/24"],
        [["0.0.0.0/0", "198.18.6.0/24"], ["::/0"]],
        table="1234",
        setup=[["route", "add", "default", "via", "198.18.0.2"]],  # MTU of the default route
    ),
    Case("off", ["198.18.5.1/24"], [["0.0.0.0/0", "198.18.6.0/24"]], mtu=1280, table="off"),
]


def _wg_quick_conf(case: Case, endpoint_port: int = 51820) -> str:
    def run(*argv: str, stdin: str | None = None) -> str:
        return subprocess.run(argv, input=stdin, capture_output=True, text=True, check=True).stdout

    lines = ["[Interface]", f"PrivateKey = {run('wg', 'genkey').strip()}"]
    lines += [f"Address = {a}" for a in case.addresses]
    if case.mtu is not None:
        lines.append(f"MTU = {case.mtu}")
    if case.table is not None:
        lines.append(f"Table = {case.table}")
    if case.fwmark is not None:
        lines.append(f"FwMark = {case.fwmark:#x}")
    for i, allowed in enumerate(case.peers):
        pub = run("wg", "pubkey", stdin=run("wg", "genkey")).strip()
        lines += ["", "[Peer]", f"PublicKey = {pub}", f"AllowedIPs = {', '.join(allowed)}"]
        if i < len(case.endpoints):
            lines.append(f"Endpoint = {case.endpoints[i]}:{endpoint_port}")
    return "\n".join(lines) + "\n"


def _kill_all_in(ns: netns.Netns) -> None:
    """Stop processes left in a namespace of ours (the wireguard-go wg-quick started)."""
    out = subprocess.run(["ip", "netns", "pids", ns.name], capture_output=True, text=True)
    for pid in out.stdout.split():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), 9)


@pytest.mark.kernel
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_matches_wg_quick(case: Case, tun_ok: None, testbed: netns.Testbed, tmp_path: Path) -> None:
    if not os.path.exists("/usr/bin/wg-quick") or not os.path.exists("/usr/bin/wireguard-go"):
        pytest.skip("wg-quick or wireguard-go not installed")
    ifname = f"nq{os.getpid() % 100000}{CASES.index(case)}"
    sock = f"/var/run/wireguard/{ifname}.sock"
    theirs, ours = testbed.host("wgq"), testbed.host("ours")
    for ns in (theirs, ours):
        testbed.link(
            ns, testbed.host("p"), addrs_a=["198.18.0.1/24"], addrs_b=["198.18.0.2/24"], mtu=1400
        )
        for cmd in case.setup:
            ns.ip(*cmd)
    conf = tmp_path / f"{ifname}.conf"
    conf.write_text(_wg_quick_conf(case))
    conf.chmod(0o600)
    stub = tmp_path / "bin"
    stub.mkdir()
    (stub / "nft").write_text("#!/bin/sh\nexit 0\n")  # the firewall is not compared
    (stub / "nft").chmod(0o755)
    env = {**os.environ, "PATH": f"{stub}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    before = snapshot(ours)
    fd = -1
    try:
        up = subprocess.run(
            ["ip", "netns", "exec", theirs.name, "wg-quick", "up", str(conf)],
            capture_output=True,
            text=True,
            env=env,
            timeout=30,
        )
        assert up.returncode == 0, up.stderr
        fd, _ = ours.run(kc.tun_open, ifname, vnet_hdr=False)
        p = ours.run(
            iface.plan_here,
            ifname,
            case.addresses,
            case.mtu,
            case.peers,
            case.table,
            case.fwmark,
            case.endpoints,
        )
        made = ours.run(iface.apply, p)
        assert _comparable(ours, ifname) == _comparable(theirs, ifname)
        fwmark = theirs.exec(["wg", "show", ifname, "fwmark"]).strip()
        assert (p.fwmark or 0) == (0 if fwmark == "off" else int(fwmark, 0))
        down = subprocess.run(
            ["ip", "netns", "exec", theirs.name, "wg-quick", "down", str(conf)],
            capture_output=True,
            text=True,
            env=env,
            timeout=30,
        )
        assert down.returncode == 0, down.stderr
        ours.run(iface.undo, made)
        os.close(fd)
        fd = -1
        assert snapshot(ours) == before
    finally:
        if fd >= 0:
            os.close(fd)
        _kill_all_in(theirs)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(sock)


@pytest.mark.kernel
def test_endpoint_mtu_v6(tun_ok: None, testbed: netns.Testbed) -> None:
    h = testbed.host("h")
    testbed.link(h, testbed.host("p"), addrs_a=["fd00::1/64"], addrs_b=["fd00::2/64"], mtu=1350)
    assert h.run(iface.endpoint_mtu, "[fd00::2]") == 1350
    assert h.run(iface.endpoint_mtu, "198.18.0.2") is None  # no route
    assert h.run(iface.default_route_mtu) is None
    with pytest.raises(ConfigError, match=r"endpoint 'vpn\.example\.com': not an IP address"):
        h.run(iface.endpoint_mtu, "vpn.example.com")
