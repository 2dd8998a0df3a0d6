"""Rule files for classification and DoS filtering (TOML or JSON).

One file may hold both parts; ``.json`` files are JSON, anything else TOML.
Every key is optional except where noted. Example (TOML)::

    [classify]
    default_action = "pass"      # pass | drop | mark, for packets no rule matches
    default_class = 0
    rss_key = "6d5a56da...01fa"  # 40 bytes in hex; default: the RSS spec's key
    rss_fields = "4-tuple"       # or "2-tuple" (4-tuple only for TCP/UDP, not fragments)

    [[classify.rule]]            # first match by priority (lower first, then file order)
    name = "voice"               # used in error messages and results
    priority = 10
    src = "198.18.0.0/15"        # prefix or address, IPv4 or IPv6
    dst = "198.19.1.0/24"
    proto = "udp"                # tcp | udp | icmp | icmpv6 | esp | number | [lo, hi]
    sport = 5060                 # number, [lo, hi] or "lo-hi"; only TCP/UDP match ports
    dport = [10000, 20000]
    dscp = 46                    # number or [lo, hi], 0..63
    action = "mark"
    class = 7

    [classify.lpm]               # longest-prefix table, consulted as one pseudo-rule
    field = "dst"                # or "src"
    priority = 1000              # its place among the rules (default: after all of them)
    prefixes = [ { prefix = "198.19.0.0/16", class = 3 },
                 { prefix = "198.19.7.0/24", class = 4, action = "drop" } ]

    [dos]
    [dos.rate]                   # token bucket per source (IPv4 address, IPv6 /64)
    rate = 1000.0                # packets per second
    burst = 200
    max_sources = 100000         # least recently seen sources are forgotten beyond this
    [dos.syn]                    # SYNs of flows not established: a bucket per source /24 or /64
    rate = 100.0
    burst = 50
    max_flows = 100000
    [dos.drop]
    src = ["203.0.113.0/24"]     # drop lists by prefix
    dst = []
    [dos.size]
    min = 20                     # IP packet bytes
    max = 65535
    [dos.fragments]
    drop_all = false
    min_first = 16               # a first fragment must carry at least this many L4 bytes
    [dos.replay]
    window = 1024                # 64..4096 packets, per SA (ext.sa, else the ESP SPI)

An exact 5-tuple is a rule with host prefixes (``/32`` or ``/128``, or bare
addresses), one protocol and single ports. Rules without any field match every
packet (non-IP frames included); a rule with a port condition matches only
TCP and UDP packets that are not fragments.

A bad entry raises ``ConfigError`` naming the file, the rule and the key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netoffload.configfile import read_document
from netoffload.errors import ConfigError
from netoffload.soft.lpm import Network, parse_prefix
from netoffload.soft.replay import MAX_WINDOW, MIN_WINDOW
from netoffload.soft.rss import parse_key

ACTIONS = {"pass": 0, "drop": 1, "mark": 2}
PROTOCOLS = {"icmp": 1, "tcp": 6, "udp": 17, "gre": 47, "esp": 50, "ah": 51, "icmpv6": 58}
Range = tuple[int, int]


@dataclass(frozen=True)
class Rule:
    name: str
    priority: int = 0
    src: Network | None = None
    dst: Network | None = None
    proto: Range | None = None
    sport: Range | None = None
    dport: Range | None = None
    dscp: Range | None = None
    action: int = 0
    class_id: int = 0

    @property
    def version(self) -> int | None:
        """4 or 6 when an address limits the rule to one IP version."""
        for a in (self.src, self.dst):
            if a is not None:
                return a.version
        return None


@dataclass(frozen=True)
class LpmConfig:
    field: str = "dst"
    priority: int | None = None
    prefixes: tuple[tuple[Network, int, int], ...] = ()  # (prefix, class, action)


@dataclass(frozen=True)
class ClassifyConfig:
    rules: tuple[Rule, ...] = ()
    lpm: LpmConfig | None = None
    default_action: int = 0
    default_class: int = 0
    rss_key: bytes = field(default_factory=lambda: parse_key(None))
    rss_fields: str = "4-tuple"


@dataclass(frozen=True)
class Bucket:
    rate: float
    burst: float


@dataclass(frozen=True)
class DosConfig:
    rate: Bucket | None = None
    max_sources: int = 100_000
    syn: Bucket | None = None
    max_flows: int = 100_000
    drop_src: tuple[Network, ...] = ()
    drop_dst: tuple[Network, ...] = ()
    min_size: int = 0
    max_size: int = 65535
    drop_fragments: bool = False
    min_first_fragment: int = 0
    replay_window: int | None = None


# ---------------------------------------------------------------- helpers
def _int(v: object, where: str, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(f"{where}: must be an integer, got {v!r}")
    if not lo <= v <= hi:
        raise ConfigError(f"{where}: {v} out of range {lo}..{hi}")
    return v


def _num(v: object, where: str, lo: float = 0.0) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ConfigError(f"{where}: must be a number, got {v!r}")
    if not float(v) >= lo or float(v) == float("inf"):
        raise ConfigError(f"{where}: {v} must be a finite number >= {lo}")
    return float(v)


def _range(v: object, where: str, hi: int, names: Mapping[str, int] | None = None) -> Range:
    if isinstance(v, str):
        s = v.strip().lower()
        if names is not None and s in names:
            return (names[s], names[s])
        if "-" in s:
            a, _, b = s.partition("-")
            try:
                v = [int(a), int(b)]
            except ValueError:
                raise ConfigError(f"{where}: bad range {v!r}") from None
        else:
            try:
                v = int(s)
            except ValueError:
                known = f" (known: {', '.join(sorted(names))})" if names else ""
                raise ConfigError(f"{where}: bad value {v!r}{known}") from None
    if isinstance(v, list) and len(v) == 2:
        lo = _int(v[0], where, 0, hi)
        up = _int(v[1], where, 0, hi)
        if lo > up:
            raise ConfigError(f"{where}: empty range {lo}..{up}")
        return (lo, up)
    if isinstance(v, list):
        raise ConfigError(f"{where}: a range is [lo, hi], got {v!r}")
    x = _int(v, where, 0, hi)
    return (x, x)


def _action(v: object, where: str) -> int:
    if not isinstance(v, str) or v.lower() not in ACTIONS:
        raise ConfigError(f"{where}: action must be one of {', '.join(ACTIONS)}, got {v!r}")
    return ACTIONS[v.lower()]


def _table(v: object, where: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise ConfigError(f"{where}: must be a table/object, got {type(v).__name__}")
    return v


def _check_keys(d: Mapping[str, Any], allowed: set[str], where: str) -> None:
    bad = sorted(set(d) - allowed)
    if bad:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(bad)} (known: {', '.join(sorted(allowed))})"
        )


_RULE_KEYS = {
    "name",
    "priority",
    "src",
    "dst",
    "proto",
    "sport",
    "dport",
    "dscp",
    "action",
    "class",
}


def parse_rule(d: object, index: int, where: str) -> Rule:
    name = f"rule {index + 1}"
    if isinstance(d, dict) and isinstance(d.get("name"), str):
        name = f"rule {index + 1} ({d['name']!r})"
    w = f"{where}: {name}"
    t = _table(d, w)
    _check_keys(t, _RULE_KEYS, w)
    src = parse_prefix(t["src"], f"{w}: src") if "src" in t else None
    dst = parse_prefix(t["dst"], f"{w}: dst") if "dst" in t else None
    if src is not None and dst is not None and src.version != dst.version:
        raise ConfigError(f"{w}: src is IPv{src.version} but dst is IPv{dst.version}")
    return Rule(
        name=str(t.get("name", f"rule{index + 1}")),
        priority=_int(t.get("priority", 0), f"{w}: priority", -(2**31), 2**31 - 1),
        src=src,
        dst=dst,
        proto=_range(t["proto"], f"{w}: proto", 255, PROTOCOLS) if "proto" in t else None,
        sport=_range(t["sport"], f"{w}: sport", 65535) if "sport" in t else None,
        dport=_range(t["dport"], f"{w}: dport", 65535) if "dport" in t else None,
        dscp=_range(t["dscp"], f"{w}: dscp", 63) if "dscp" in t else None,
        action=_action(t.get("action", "pass"), f"{w}: action"),
        class_id=_int(t.get("class", 0), f"{w}: class", 0, 2**31 - 1),
    )


def parse_classify(d: object, where: str = "classify") -> ClassifyConfig:
    t = _table(d, where)
    _check_keys(
        t, {"rule", "lpm", "default_action", "default_class", "rss_key", "rss_fields"}, where
    )
    rules_raw = t.get("rule", [])
    if not isinstance(rules_raw, list):
        raise ConfigError(f"{where}: rule must be a list of tables")
    rules = tuple(parse_rule(r, i, where) for i, r in enumerate(rules_raw))
    lpm = None
    if "lpm" in t:
        w = f"{where}: lpm"
        lt = _table(t["lpm"], w)
        _check_keys(lt, {"field", "priority", "prefixes"}, w)
        fld = lt.get("field", "dst")
        if fld not in ("src", "dst"):
            raise ConfigError(f"{w}: field must be 'src' or 'dst', got {fld!r}")
        pr = lt.get("priority")
        prio = None if pr is None else _int(pr, f"{w}: priority", -(2**31), 2**31 - 1)
        raw = lt.get("prefixes", [])
        if not isinstance(raw, list):
            raise ConfigError(f"{w}: prefixes must be a list")
        pfx = []
        for i, e in enumerate(raw):
            we = f"{w}: prefix {i + 1}"
            et = _table(e, we)
            _check_keys(et, {"prefix", "class", "action"}, we)
            if "prefix" not in et:
                raise ConfigError(f"{we}: missing 'prefix'")
            pfx.append(
                (
                    parse_prefix(et["prefix"], f"{we}: prefix"),
                    _int(et.get("class", 0), f"{we}: class", 0, 2**31 - 1),
                    _action(et.get("action", "pass"), f"{we}: action"),
                )
            )
        lpm = LpmConfig(fld, prio, tuple(pfx))
    fields = t.get("rss_fields", "4-tuple")
    if fields not in ("2-tuple", "4-tuple"):
        raise ConfigError(f"{where}: rss_fields must be '2-tuple' or '4-tuple', got {fields!r}")
    try:
        key = parse_key(t.get("rss_key"))
    except ConfigError as e:
        raise ConfigError(f"{where}: rss_key: {e}") from None
    return ClassifyConfig(
        rules=rules,
        lpm=lpm,
        default_action=_action(t.get("default_action", "pass"), f"{where}: default_action"),
        default_class=_int(t.get("default_class", 0), f"{where}: default_class", 0, 2**31 - 1),
        rss_key=key,
        rss_fields=fields,
    )


def _bucket(d: object, where: str) -> tuple[Bucket, dict[str, Any]]:
    t = _table(d, where)
    if "rate" not in t:
        raise ConfigError(f"{where}: missing 'rate'")
    rate = _num(t["rate"], f"{where}: rate")
    burst = _num(t.get("burst", max(1.0, rate)), f"{where}: burst", 1.0)
    return Bucket(rate, burst), t


def parse_dos(d: object, where: str = "dos") -> DosConfig:
    t = _table(d, where)
    _check_keys(t, {"rate", "syn", "drop", "size", "fragments", "replay"}, where)
    kw: dict[str, Any] = {}
    if "rate" in t:
        b, bt = _bucket(t["rate"], f"{where}: rate")
        _check_keys(bt, {"rate", "burst", "max_sources"}, f"{where}: rate")
        kw["rate"] = b
        kw["max_sources"] = _int(
            bt.get("max_sources", 100_000), f"{where}: rate: max_sources", 1, 10**8
        )
    if "syn" in t:
        b, bt = _bucket(t["syn"], f"{where}: syn")
        _check_keys(bt, {"rate", "burst", "max_flows"}, f"{where}: syn")
        kw["syn"] = b
        kw["max_flows"] = _int(bt.get("max_flows", 100_000), f"{where}: syn: max_flows", 1, 10**8)
    if "drop" in t:
        w = f"{where}: drop"
        dt = _table(t["drop"], w)
        _check_keys(dt, {"src", "dst"}, w)
        for k in ("src", "dst"):
            lst = dt.get(k, [])
            if not isinstance(lst, list):
                raise ConfigError(f"{w}: {k} must be a list of prefixes")
            kw[f"drop_{k}"] = tuple(
                parse_prefix(p, f"{w}: {k} entry {i + 1}") for i, p in enumerate(lst)
            )
    if "size" in t:
        w = f"{where}: size"
        st = _table(t["size"], w)
        _check_keys(st, {"min", "max"}, w)
        kw["min_size"] = _int(st.get("min", 0), f"{w}: min", 0, 65535 + 40)
        kw["max_size"] = _int(st.get("max", 65535 + 40), f"{w}: max", 0, 65535 + 40)
        if kw["min_size"] > kw["max_size"]:
            raise ConfigError(f"{w}: min {kw['min_size']} > max {kw['max_size']}")
    if "fragments" in t:
        w = f"{where}: fragments"
        ft = _table(t["fragments"], w)
        _check_keys(ft, {"drop_all", "min_first"}, w)
        da = ft.get("drop_all", False)
        if not isinstance(da, bool):
            raise ConfigError(f"{w}: drop_all must be true or false, got {da!r}")
        kw["drop_fragments"] = da
        kw["min_first_fragment"] = _int(ft.get("min_first", 0), f"{w}: min_first", 0, 65535)
    if "replay" in t:
        w = f"{where}: replay"
        rt = _table(t["replay"], w)
        _check_keys(rt, {"window"}, w)
        kw["replay_window"] = _int(rt.get("window", 1024), f"{w}: window", MIN_WINDOW, MAX_WINDOW)
    return DosConfig(**kw)


def read_file(path: str | Path) -> dict[str, Any]:
    """The raw document of a rule file (TOML, or JSON when it ends in .json)."""
    p = Path(path)
    return rules_doc(read_document(p, "rules file", default="toml"), f"rules file {str(p)!r}")


def rules_doc(doc: object, where: str = "rules") -> dict[str, Any]:
    """A parsed rule document, checked at the top level (``classify`` and ``dos``)."""
    if not isinstance(doc, dict):
        raise ConfigError(f"{where}: the top level must be a table/object")
    _check_keys(doc, {"classify", "dos"}, where)
    return doc


def load_classify(path: str | Path) -> ClassifyConfig:
    doc = read_file(path)
    return parse_classify(doc.get("classify", {}), f"{path}: classify")


def load_dos(path: str | Path) -> DosConfig:
    doc = read_file(path)
    return parse_dos(doc.get("dos", {}), f"{path}: dos")
