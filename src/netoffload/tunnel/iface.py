"""Interface configuration as wg-quick(8) does it, and the record that lets ``down`` undo it.

``plan()`` is pure: from the ``[Interface]`` keys wg-quick handles itself (Address, MTU,
Table, and the FwMark wg(8) knows) and every peer's AllowedIPs it computes the steps:

- each Address on the interface;
- the MTU (given, else the largest MTU of the route to a peer's endpoint, else of the
  default route, else 1500 -- minus 80) and the link set up;
- the routes, most specific prefix first: ``Table = off`` none; ``Table = N`` every
  AllowedIPs prefix via the interface in table N; ``Table = auto`` (the default) every
  prefix in the main table, except a default route (``0.0.0.0/0``, ``::/0``): that goes to
  a table of its own, numbered after the fwmark (the configured one, else the first table
  from 51820 up that holds no route), with the policy rules ``not fwmark M table M`` and
  ``table main suppress_prefixlength 0`` for its IP family. The device's sockets must carry
  that fwmark (``Plan.fwmark``) so that the tunnel's own datagrams skip the tunnel.

``apply()`` makes the steps over rtnetlink (pyroute2) in the network namespace of the
calling thread, keeping every object it created, in order, in a ``Made`` record; a step
that fails undoes what was made and raises ``ConfigError`` naming the step. ``undo()``
removes what a record names, and nothing else: objects already gone are skipped, and
objects bound to the interface are left alone when the name now belongs to another
interface (the one recorded went away, taking its addresses and routes with it). Policy
rules outlive the interface, which is why the record is kept on disk (``State`` at
``state_path(ifname)``) for ``down`` -- also after the daemon was killed.

What wg-quick does and this does not: the DNS and PreUp/PostUp hooks (the caller's), the
anti-spoofing firewall (nft/iptables) and ``src_valid_mark`` sysctl of the default-route
case. Like wg-quick, ``Table = auto`` adds no main-table route for a prefix that a route
through the interface already covers (an address's own prefix route, say).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import ipaddress
import json
import os
import re
import socket
import tempfile
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

from netoffload.errors import ConfigError

RUN_DIR = "/run/netoffload"
#: the first table (and fwmark) wg-quick tries for a default route
FIRST_FWMARK_TABLE = 51820
DEFAULT_MTU_BASE = 1500
#: what wg-quick takes off the underlay MTU (IPv6 40 + UDP 8 + WireGuard 32)
MTU_OVERHEAD = 80
MIN_MTU, MAX_MTU = 68, 65535
TABLE_MAIN = 254
TABLE_NAMES = {"main": TABLE_MAIN, "local": 255, "default": 253}
RTPROT_BOOT = 3  # what `ip route add` tags its routes with
RT_SCOPE_LINK = 253
FIB_RULE_INVERT = 0x2
IP6_RT_PRIO_USER = 1024  # the kernel's metric of an IPv6 route added without one
IFF_UP = 0x1
_IFNAME = re.compile(r"[a-zA-Z0-9_=+.-]{1,15}")
#: errors that mean "already gone" when removing
_GONE = frozenset({errno.ENOENT, errno.ESRCH, errno.ENODEV, errno.EADDRNOTAVAIL, errno.ENXIO})

Table: TypeAlias = Literal["auto", "off"] | int
Net: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network


# --- steps ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Address:
    """An address on the interface, ``198.18.5.1/24`` (host bits kept, as given)."""

    address: str

    def describe(self) -> str:
        return f"add address {self.address}"


@dataclass(frozen=True)
class Link:
    """The interface's MTU, and the link set up. ``was_*``: the state before (in a record)."""

    mtu: int
    was_mtu: int | None = None
    was_up: bool | None = None

    def describe(self) -> str:
        return f"set mtu {self.mtu} up"


@dataclass(frozen=True)
class Route:
    """A route to ``dst`` through the interface in ``table``, with the metric `ip` gives it."""

    dst: str
    table: int
    metric: int

    @property
    def family(self) -> int:
        return ipaddress.ip_network(self.dst).version

    def describe(self) -> str:
        return f"add route {self.dst} table {_table_name(self.table)}"


@dataclass(frozen=True)
class Rule:
    """A policy rule of one IP family (4 or 6); ``priority`` is known once made."""

    family: int
    table: int
    fwmark: int | None = None
    invert: bool = False
    suppress_prefixlength: int | None = None
    priority: int | None = None

    def same_rule(self, other: Rule) -> bool:
        """Equal but for the priority."""
        return dataclasses.replace(self, priority=None) == dataclasses.replace(other, priority=None)

    def describe(self) -> str:
        words = [f"add -{self.family} rule"]
        if self.fwmark is not None:
            words.append(f"{'not ' if self.invert else ''}fwmark {self.fwmark}")
        words.append(f"table {_table_name(self.table)}")
        if self.suppress_prefixlength is not None:
            words.append(f"suppress_prefixlength {self.suppress_prefixlength}")
        if self.priority is not None:
            words.append(f"priority {self.priority}")
        return " ".join(words)


Step: TypeAlias = Address | Link | Route | Rule
_KINDS: dict[str, type[Address] | type[Link] | type[Route] | type[Rule]] = {
    "address": Address,
    "link": Link,
    "route": Route,
    "rule": Rule,
}
_KIND_OF = {v: k for k, v in _KINDS.items()}


def _table_name(table: int) -> str:
    for name, number in TABLE_NAMES.items():
        if number == table:
            return name
    return str(table)


# --- the plan ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What to make, in order. ``fwmark``: the mark the device's sockets must carry (None:
    leave it as configured -- no default route was planned and none configured)."""

    ifname: str
    steps: tuple[Step, ...]
    mtu: int
    table: Table
    fwmark: int | None

    @property
    def addresses(self) -> tuple[Address, ...]:
        return tuple(s for s in self.steps if isinstance(s, Address))

    @property
    def routes(self) -> tuple[Route, ...]:
        return tuple(s for s in self.steps if isinstance(s, Route))

    @property
    def rules(self) -> tuple[Rule, ...]:
        return tuple(s for s in self.steps if isinstance(s, Rule))


def check_ifname(ifname: str) -> str:
    """wg-quick's interface names: 1..15 of ``a-zA-Z0-9_=+.-``."""
    if not isinstance(ifname, str) or not _IFNAME.fullmatch(ifname):
        raise ConfigError(f"interface name {ifname!r}: 1..15 characters of a-z A-Z 0-9 _=+.-")
    return ifname


def parse_table(table: str | int | None) -> Table:
    """``Table =``: auto (also empty/None), off, a number or main/local/default."""
    if table is None:
        return "auto"
    if isinstance(table, bool):
        raise ConfigError(f"Table {table!r}: auto, off, a number or main")
    if isinstance(table, int):
        number = table
    else:
        text = table.strip().lower()
        if text in ("", "auto"):
            return "auto"
        if text == "off":
            return "off"
        if text in TABLE_NAMES:
            return TABLE_NAMES[text]
        if not text.isdigit():
            raise ConfigError(f"Table {table!r}: auto, off, a number or main")
        number = int(text)
    if not 0 < number < 2**32:
        raise ConfigError(f"Table {table!r}: out of range 1..4294967295")
    return number


def _parse_fwmark(fwmark: int | None) -> int | None:
    if fwmark is None or fwmark == 0:  # FwMark = 0 / off: none
        return None
    if isinstance(fwmark, bool) or not isinstance(fwmark, int) or not 0 < fwmark < 2**32:
        raise ConfigError(f"FwMark {fwmark!r}: out of range 0..4294967295")
    return fwmark


def parse_prefix(text: str) -> Net:
    """An AllowedIPs entry; host bits are cleared, as wg(8) stores them."""
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError as e:
        raise ConfigError(f"AllowedIPs {text!r}: {e}") from None


def _sorted_prefixes(peers_allowed_ips: Iterable[Iterable[str]]) -> list[Net]:
    """Distinct prefixes in wg-quick's order (`sort -nr -k 2 -t /` of `wg show allowed-ips`:
    longest prefix first, ties by the text, descending)."""
    seen: dict[Net, None] = {}
    for allowed in peers_allowed_ips:
        if isinstance(allowed, str):
            raise ConfigError(f"AllowedIPs {allowed!r}: give a list per peer, not a string")
        for text in allowed:
            seen.setdefault(parse_prefix(text), None)
    return sorted(seen, key=lambda n: (n.prefixlen, str(n)), reverse=True)


def auto_mtu(endpoint_mtus: Iterable[int] = (), default_route_mtu: int | None = None) -> int:
    """wg-quick's MTU: the largest route MTU towards the endpoints, else the default route's,
    else 1500; minus 80."""
    best = max((m for m in endpoint_mtus if m > 0), default=0)
    if best == 0 and default_route_mtu:
        best = default_route_mtu
    return (best or DEFAULT_MTU_BASE) - MTU_OVERHEAD


def first_free_table(busy_tables: Collection[int]) -> int:
    """The first table from 51820 up holding no route (IPv4 or IPv6)."""
    table = FIRST_FWMARK_TABLE
    while table in busy_tables:
        table += 1
    return table


def _metric(net: Net) -> int:
    return 0 if net.version == 4 else IP6_RT_PRIO_USER


def _default_route_steps(net: Net, mark_table: int) -> list[Step]:
    return [
        Route(str(net), mark_table, _metric(net)),
        Rule(net.version, mark_table, fwmark=mark_table, invert=True),
        Rule(net.version, TABLE_MAIN, suppress_prefixlength=0),
    ]


def plan(
    ifname: str,
    addresses: Iterable[str],
    mtu: int | None,
    peers_allowed_ips: Iterable[Iterable[str]],
    table: str | int | None = "auto",
    fwmark: int | None = None,
    *,
    endpoint_mtus: Iterable[int] = (),
    default_route_mtu: int | None = None,
    busy_tables: Collection[int] = (),
) -> Plan:
    """What ``wg-quick up`` would do to the interface's addresses, MTU, routes and rules.

    ``endpoint_mtus``: the MTU of the route to each peer's endpoint, ``default_route_mtu``:
    of the IPv4 default route, ``busy_tables``: tables that hold routes (for the choice of
    the fwmark table) -- see ``endpoint_mtu()``, ``default_route_mtu()``, ``busy_tables()``
    or ``plan_here()`` to read them from the current namespace.
    """
    check_ifname(ifname)
    table_mode = parse_table(table)
    mark = _parse_fwmark(fwmark)
    steps: list[Step] = []
    given: set[ipaddress.IPv4Interface | ipaddress.IPv6Interface] = set()
    for text in addresses:
        try:
            iface = ipaddress.ip_interface(text.strip())
        except ValueError as e:
            raise ConfigError(f"Address {text!r}: {e}") from None
        if iface in given:
            raise ConfigError(f"Address {text!r}: given twice")
        given.add(iface)
        steps.append(Address(str(iface)))
    if mtu is None:
        mtu = auto_mtu(endpoint_mtus, default_route_mtu)
    if isinstance(mtu, bool) or not isinstance(mtu, int) or not MIN_MTU <= mtu <= MAX_MTU:
        raise ConfigError(f"MTU {mtu!r}: out of range {MIN_MTU}..{MAX_MTU}")
    steps.append(Link(mtu))
    mark_table: int | None = None
    for net in _sorted_prefixes(peers_allowed_ips):
        if table_mode == "off":
            continue
        if isinstance(table_mode, int):
            steps.append(Route(str(net), table_mode, _metric(net)))
        elif net.prefixlen == 0:
            if mark_table is None:
                mark_table = mark if mark is not None else first_free_table(busy_tables)
            steps += _default_route_steps(net, mark_table)
        else:
            steps.append(Route(str(net), TABLE_MAIN, _metric(net)))
    return Plan(ifname, tuple(steps), mtu, table_mode, mark if mark is not None else mark_table)


# --- the record ---------------------------------------------------------------------------


@dataclass
class Made:
    """What ``apply()`` created on interface ``ifname`` (index ``ifindex``), in order."""

    ifname: str
    ifindex: int
    table: Table
    fwmark: int | None
    steps: list[Step] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ifname": self.ifname,
            "ifindex": self.ifindex,
            "table": self.table,
            "fwmark": self.fwmark,
            "steps": [{"kind": _KIND_OF[type(s)], **dataclasses.asdict(s)} for s in self.steps],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Any, what: str = "record") -> Made:
        """Read a record back; anything malformed is a ConfigError naming ``what`` and key."""
        if not isinstance(data, dict):
            raise ConfigError(f"{what}: not an object")
        raw_ifname = _typed(data, "ifname", str, what)
        ifindex = _typed(data, "ifindex", int, what)
        raw_table = _typed(data, "table", (str, int), what)
        raw_fwmark = _typed(data, "fwmark", (int, type(None)), what)
        raw_steps = _typed(data, "steps", list, what)
        try:
            ifname = check_ifname(raw_ifname)
            table = parse_table(raw_table)
            fwmark = _parse_fwmark(raw_fwmark)
        except ConfigError as e:
            raise ConfigError(f"{what}: {e}") from None
        steps = [_step_from_dict(s, f"{what}: steps[{i}]") for i, s in enumerate(raw_steps)]
        return cls(ifname, ifindex, table, fwmark, steps)

    @classmethod
    def from_json(cls, text: str, what: str = "record") -> Made:
        try:
            data = json.loads(text)
        except ValueError as e:
            raise ConfigError(f"{what}: not valid JSON: {e}") from None
        return cls.from_dict(data, what)


def _typed(data: dict[str, Any], key: str, kind: Any, what: str) -> Any:
    if key not in data:
        raise ConfigError(f"{what}: {key!r} missing")
    value = data[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        raise ConfigError(f"{what}: {key!r} is {value!r}")
    if not isinstance(value, kinds):
        raise ConfigError(f"{what}: {key!r} is {value!r}")
    return value


def _step_from_dict(data: Any, what: str) -> Step:
    if not isinstance(data, dict) or data.get("kind") not in _KINDS:
        raise ConfigError(f"{what}: not a step (kind address, link, route or rule)")
    cls = _KINDS[data["kind"]]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    extra = set(data) - set(fields) - {"kind"}
    if extra:
        raise ConfigError(f"{what}: unknown keys {sorted(extra)}")
    values: dict[str, Any] = {}
    for name, f in fields.items():
        optional = f.default is not dataclasses.MISSING
        if name not in data:
            if optional:
                continue
            raise ConfigError(f"{what}: {name!r} missing")
        value = data[name]
        want: tuple[type, ...] = (bool,) if "bool" in str(f.type) else ()
        if not want:
            want = (str,) if str(f.type) == "str" else (int,)
        if value is None and optional:
            values[name] = None
            continue
        if type(value) not in want:
            raise ConfigError(f"{what}: {name!r} is {value!r}")
        values[name] = value
    step = cls(**values)
    try:
        if isinstance(step, Address):
            ipaddress.ip_interface(step.address)
        elif isinstance(step, Route):
            ipaddress.ip_network(step.dst)
        elif isinstance(step, Rule) and step.family not in (4, 6):
            raise ValueError(f"family {step.family}")
    except ValueError as e:
        raise ConfigError(f"{what}: {e}") from None
    return step


@dataclass
class State:
    """What ``up`` leaves for ``down``: the daemon (pid, and its start time so that a reused
    pid is not taken for it: ``daemon.start_time``), its configuration, the record, the UAPI
    socket."""

    pid: int
    config: str
    made: Made
    socket: str
    started: int | None = None

    def to_json(self) -> str:
        return json.dumps(
            {
                "pid": self.pid,
                "config": self.config,
                "socket": self.socket,
                "made": self.made.to_dict(),
                "started": self.started,
            },
            sort_keys=True,
            indent=1,
        )

    @classmethod
    def from_json(cls, text: str, what: str = "state") -> State:
        try:
            data = json.loads(text)
        except ValueError as e:
            raise ConfigError(f"{what}: not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{what}: not an object")
        pid = _typed(data, "pid", int, what)
        config = _typed(data, "config", str, what)
        sock = _typed(data, "socket", str, what)
        started = _typed(data, "started", (int, type(None)), what) if "started" in data else None
        made = Made.from_dict(data.get("made"), f"{what}: made")
        return cls(pid, config, made, sock, started)


def state_path(ifname: str, run_dir: str = RUN_DIR) -> str:
    """``/run/netoffload/IFNAME.json``."""
    return os.path.join(run_dir, check_ifname(ifname) + ".json")


def write_state(state: State, run_dir: str = RUN_DIR) -> str:
    """Write the state file atomically (mode 0600, its directory 0700); returns its path."""
    path = state_path(state.made.ifname, run_dir)
    os.makedirs(run_dir, mode=0o700, exist_ok=True)
    os.chmod(run_dir, 0o700)
    fd, tmp = tempfile.mkstemp(prefix=f".{state.made.ifname}.", dir=run_dir)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(state.to_json())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def read_state(ifname: str, run_dir: str = RUN_DIR) -> State:
    path = state_path(ifname, run_dir)
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        raise ConfigError(f"{ifname}: not up (no {path})") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    return State.from_json(text, path)


def remove_state(ifname: str, run_dir: str = RUN_DIR) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(state_path(ifname, run_dir))


# --- netlink ------------------------------------------------------------------------------


def _netlink_errno(e: BaseException) -> int | None:
    code = getattr(e, "code", None)
    return code if isinstance(code, int) else None


def _describe_error(e: BaseException) -> str:
    code = _netlink_errno(e)
    if code is not None:
        return os.strerror(code)
    return str(e) or type(e).__name__


@contextlib.contextmanager
def _iproute() -> Iterator[Any]:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        yield ipr


def _af(family: int) -> int:
    return socket.AF_INET if family == 4 else socket.AF_INET6


def _ifindex(ipr: Any, ifname: str) -> int | None:
    found = ipr.link_lookup(ifname=ifname)
    return int(found[0]) if found else None


def _link_mtu(ipr: Any, index: int) -> int | None:
    try:
        links = ipr.get_links(index)
    except Exception:
        return None
    return int(links[0].get_attr("IFLA_MTU")) if links else None


def _route_table(msg: Any) -> int:
    table = msg.get_attr("RTA_TABLE")
    return int(table if table is not None else msg["table"])


def _route_net(msg: Any) -> Net:
    fam = 4 if msg["family"] == socket.AF_INET else 6
    dst = msg.get_attr("RTA_DST") or ("0.0.0.0" if fam == 4 else "::")
    return ipaddress.ip_network(f"{dst}/{msg['dst_len']}", strict=False)


def _routes(ipr: Any, family: int) -> list[Any]:
    return list(ipr.route("dump", family=_af(family)))


def _rule_priority(msg: Any) -> int:
    return int(msg.get_attr("FRA_PRIORITY") or 0)


def busy_tables() -> set[int]:
    """The routing tables of the current namespace that hold a route (IPv4 or IPv6)."""
    with _iproute() as ipr:
        return {_route_table(r) for fam in (4, 6) for r in _routes(ipr, fam)}


def _mtu_of_route(ipr: Any, msg: Any) -> int | None:
    metrics = msg.get_attr("RTA_METRICS")
    if metrics is not None:
        mtu = metrics.get_attr("RTAX_MTU")
        if mtu:
            return int(mtu)
    oif = msg.get_attr("RTA_OIF")
    return _link_mtu(ipr, oif) if oif else None


def endpoint_mtu(address: str) -> int | None:
    """The MTU of the route to ``address`` (its ``mtu`` metric, else its device's), as wg-quick
    reads it from ``ip route get``; None when there is no route."""
    try:
        ip = ipaddress.ip_address(address.strip().strip("[]"))
    except ValueError:
        raise ConfigError(f"endpoint {address!r}: not an IP address (resolve it first)") from None
    with _iproute() as ipr:
        try:
            got = ipr.route("get", dst=str(ip), family=_af(ip.version))
        except Exception:
            return None
        return _mtu_of_route(ipr, got[0]) if got else None


def default_route_mtu() -> int | None:
    """The MTU of the first IPv4 default route of the main table (`ip route show default`)."""
    with _iproute() as ipr:
        for r in _routes(ipr, 4):
            if r["dst_len"] == 0 and _route_table(r) == TABLE_MAIN and r["type"] == 1:
                return _mtu_of_route(ipr, r)
    return None


def plan_here(
    ifname: str,
    addresses: Iterable[str],
    mtu: int | None,
    peers_allowed_ips: Iterable[Iterable[str]],
    table: str | int | None = "auto",
    fwmark: int | None = None,
    endpoints: Iterable[str] = (),
) -> Plan:
    """``plan()`` with the MTUs and busy tables read from the current namespace (endpoints
    as IP addresses, without port)."""
    mtus = [m for m in (endpoint_mtu(e) for e in endpoints) if m]
    return plan(
        ifname,
        addresses,
        mtu,
        peers_allowed_ips,
        table,
        fwmark,
        endpoint_mtus=mtus,
        default_route_mtu=None if mtus or mtu is not None else default_route_mtu(),
        busy_tables=busy_tables(),
    )


def _covered(ipr: Any, index: int, net: Net) -> bool:
    """wg-quick's `ip route show dev IF match PREFIX` in the main table: a route through the
    interface already covers the prefix."""
    for r in _routes(ipr, net.version):
        if r.get_attr("RTA_OIF") != index or _route_table(r) != TABLE_MAIN or r["type"] != 1:
            continue
        have = _route_net(r)
        if have.prefixlen <= net.prefixlen and net.subnet_of(have):  # type: ignore[arg-type]
            return True
    return False


def _has_route(ipr: Any, index: int, net: Net, table: int) -> bool:
    for r in _routes(ipr, net.version):
        if _route_table(r) == table and _route_net(r) == net and r.get_attr("RTA_OIF") == index:
            return True
    return False


def _default_rule_priority(ipr: Any, family: int) -> int:
    """The priority the kernel gives a rule added without one: one below the second rule's."""
    rules = list(ipr.get_rules(family=_af(family)))
    if len(rules) >= 2 and _rule_priority(rules[1]) > 0:
        return _rule_priority(rules[1]) - 1
    return 0


def _rule_args(rule: Rule) -> dict[str, Any]:
    args: dict[str, Any] = {
        "family": _af(rule.family),
        "table": rule.table,
        "priority": rule.priority,
        "action": "to_tbl",  # no protocol, as `ip rule add` gives none
    }
    if rule.fwmark is not None:
        args["fwmark"] = rule.fwmark
    if rule.invert:
        args["flags"] = FIB_RULE_INVERT
    if rule.suppress_prefixlength is not None:
        args["suppress_prefixlen"] = rule.suppress_prefixlength
    return args


def _route_args(index: int, route: Route) -> dict[str, Any]:
    net = ipaddress.ip_network(route.dst)
    return {
        "family": _af(net.version),
        "dst": str(net.network_address),
        "dst_len": net.prefixlen,
        "oif": index,
        "table": route.table,
        "priority": route.metric,
        "proto": RTPROT_BOOT,
        "scope": RT_SCOPE_LINK,
        "type": "unicast",
    }


def _make(ipr: Any, index: int, table: Table, step: Step, made: list[Step]) -> None:
    """Make one step, appending to ``made`` what is to be undone (nothing if it was there)."""
    if isinstance(step, Address):
        iface = ipaddress.ip_interface(step.address)
        ipr.addr(
            "add",
            index=index,
            address=str(iface.ip),
            prefixlen=iface.network.prefixlen,
            family=_af(iface.version),
        )
        made.append(step)
    elif isinstance(step, Link):
        link = ipr.get_links(index)[0]
        # recorded first: a half-done change is put back too
        made.append(Link(step.mtu, int(link.get_attr("IFLA_MTU")), bool(link["flags"] & IFF_UP)))
        ipr.link("set", index=index, mtu=step.mtu, state="up")
    elif isinstance(step, Route):
        net = ipaddress.ip_network(step.dst)
        if table == "auto" and step.table == TABLE_MAIN and _covered(ipr, index, net):
            return
        try:
            ipr.route("add", **_route_args(index, step))
        except Exception as e:
            if _netlink_errno(e) == errno.EEXIST and _has_route(ipr, index, net, step.table):
                return  # there already, through this interface: not ours to remove
            raise
        made.append(step)
    else:
        rule = dataclasses.replace(step, priority=_default_rule_priority(ipr, step.family))
        ipr.rule("add", **_rule_args(rule))
        made.append(rule)


def apply(p: Plan) -> Made:
    """Make the plan on interface ``p.ifname`` of the current namespace; on failure undo what
    was made and raise ConfigError naming the step."""
    with _iproute() as ipr:
        index = _ifindex(ipr, p.ifname)
        if index is None:
            raise ConfigError(f"interface {p.ifname!r} does not exist")
        made = Made(p.ifname, index, p.table, p.fwmark)
        step: Step | None = None
        try:
            for step in p.steps:
                _make(ipr, index, p.table, step, made.steps)
        except BaseException as e:
            what = step.describe() if step is not None else "start"
            problems = _undo(ipr, made)
            tail = f" (undo: {'; '.join(problems)})" if problems else ""
            if not isinstance(e, Exception):
                raise
            raise ConfigError(f"{p.ifname}: {what}: {_describe_error(e)}{tail}") from e
    return made


def _remove(ipr: Any, index: int, step: Step) -> None:
    if isinstance(step, Address):
        iface = ipaddress.ip_interface(step.address)
        ipr.addr(
            "del",
            index=index,
            address=str(iface.ip),
            prefixlen=iface.network.prefixlen,
            family=_af(iface.version),
        )
    elif isinstance(step, Link):
        args: dict[str, Any] = {}
        if step.was_mtu is not None:
            args["mtu"] = step.was_mtu
        if step.was_up is False:
            args["state"] = "down"
        if args:
            ipr.link("set", index=index, **args)
    elif isinstance(step, Route):
        ipr.route("del", **_route_args(index, step))
    else:
        ipr.rule("del", **_rule_args(step))


def _undo(ipr: Any, made: Made, steps: Sequence[Step] | None = None) -> list[str]:
    """Remove ``steps`` (default: all of the record), last first; the problems, as text."""
    index = _ifindex(ipr, made.ifname)
    same = index == made.ifindex
    problems = []
    for step in reversed(made.steps if steps is None else steps):
        if not isinstance(step, Rule) and not same:
            continue  # the interface went, and its addresses and routes with it
        try:
            _remove(ipr, made.ifindex, step)
        except Exception as e:
            if _netlink_errno(e) in _GONE:
                continue
            problems.append(f"{step.describe()}: {_describe_error(e)}")
    return problems


def undo(made: Made) -> None:
    """Remove what ``made`` records, in the current namespace (objects already gone are
    skipped). Tries every step; raises ConfigError listing those that failed."""
    with _iproute() as ipr:
        problems = _undo(ipr, made)
    if problems:
        raise ConfigError(f"{made.ifname}: undo: {'; '.join(problems)}")


# --- live AllowedIPs changes ---------------------------------------------------------------


def add_route(made: Made, prefix: str) -> int | None:
    """Route a prefix newly allowed (``wg set ... allowed-ips``) the way ``up`` would have,
    recording it in ``made``. Returns the fwmark the device must carry now (``made.fwmark``:
    a first default route under Table = auto picks one)."""
    net = parse_prefix(prefix)
    if made.table == "off":
        return made.fwmark
    fwmark = made.fwmark
    with _iproute() as ipr:
        index = _ifindex(ipr, made.ifname)
        if index != made.ifindex:
            raise ConfigError(f"interface {made.ifname!r} is gone")
        if isinstance(made.table, int):
            wanted: list[Step] = [Route(str(net), made.table, _metric(net))]
        elif net.prefixlen == 0:
            if made.fwmark is None:
                made.fwmark = first_free_table(
                    {_route_table(r) for fam in (4, 6) for r in _routes(ipr, fam)}
                )
            wanted = _default_route_steps(net, made.fwmark)
        else:
            wanted = [Route(str(net), TABLE_MAIN, _metric(net))]
        new: list[Step] = []
        for step in wanted:
            if any(_same_step(step, s) for s in made.steps):
                continue
            try:
                _make(ipr, index, made.table, step, new)
            except Exception as e:
                problems = _undo(ipr, made, new)
                made.fwmark = fwmark
                tail = f" (undo: {'; '.join(problems)})" if problems else ""
                raise ConfigError(
                    f"{made.ifname}: {step.describe()}: {_describe_error(e)}{tail}"
                ) from e
        made.steps += new
    return made.fwmark


def _same_step(a: Step, b: Step) -> bool:
    if isinstance(a, Rule) and isinstance(b, Rule):
        return a.same_rule(b)
    return a == b


def del_route(made: Made, prefix: str) -> bool:
    """Remove the route ``add_route``/``apply`` made for a prefix no longer allowed (with a
    default route, its family's policy rules); False if the record holds none."""
    net = parse_prefix(prefix)
    doomed: list[Step] = [s for s in made.steps if isinstance(s, Route) and s.dst == str(net)]
    if not doomed:
        return False
    if net.prefixlen == 0 and made.table == "auto" and made.fwmark is not None:
        for rule in _default_route_steps(net, made.fwmark)[1:]:
            doomed += [
                s
                for s in made.steps
                if isinstance(s, Rule) and isinstance(rule, Rule) and s.same_rule(rule)
            ]
    with _iproute() as ipr:
        problems = _undo(ipr, made, [s for s in made.steps if any(s is d for d in doomed)])
    made.steps = [s for s in made.steps if not any(s is d for d in doomed)]
    if problems:
        raise ConfigError(f"{made.ifname}: remove {net}: {'; '.join(problems)}")
    return True
