"""Rule files: TOML and JSON load to the same configuration; bad entries are named."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netoffload.errors import ConfigError
from netoffload.soft.rules import (
    ClassifyConfig,
    DosConfig,
    load_classify,
    load_dos,
    parse_classify,
    parse_dos,
)

_KEYS = [
    "rule",
    "lpm",
    "prefixes",
    "prefix",
    "field",
    "priority",
    "src",
    "dst",
    "proto",
    "sport",
    "dport",
    "dscp",
    "action",
    "class",
    "name",
    "default_action",
    "default_class",
    "rss_key",
    "rss_fields",
    "rate",
    "burst",
    "syn",
    "drop",
    "size",
    "min",
    "max",
    "fragments",
    "drop_all",
    "min_first",
    "replay",
    "window",
    "max_sources",
    "max_flows",
]

TOML = """
[classify]
default_action = "pass"
default_class = 1
rss_fields = "2-tuple"

[[classify.rule]]
name = "voice"
priority = 10
src = "198.18.0.0/15"
proto = "udp"
dport = [10000, 20000]
sport = "5000-5100"
dscp = 46
action = "mark"
class = 7

[classify.lpm]
field = "src"
priority = 5
prefixes = [
  { prefix = "fd00::/8", class = 3 },
  { prefix = "198.19.0.0/16", class = 4, action = "drop" },
]

[dos.rate]
rate = 100.0
burst = 20

[dos.replay]
window = 128
"""


def test_toml_and_json_agree(tmp_path: Path) -> None:
    import tomllib

    t = tmp_path / "r.toml"
    t.write_text(TOML)
    j = tmp_path / "r.json"
    j.write_text(json.dumps(tomllib.loads(TOML)))
    a, b = load_classify(t), load_classify(j)
    assert a == b
    r = a.rules[0]
    assert r.name == "voice" and r.proto == (17, 17) and r.dport == (10000, 20000)
    assert r.sport == (5000, 5100) and r.dscp == (46, 46) and r.action == 2 and r.class_id == 7
    assert r.src == ipaddress.ip_network("198.18.0.0/15")
    assert a.lpm is not None and a.lpm.field == "src" and a.lpm.priority == 5
    assert a.lpm.prefixes[1] == (ipaddress.ip_network("198.19.0.0/16"), 4, 1)
    assert a.rss_fields == "2-tuple" and a.default_class == 1
    d = load_dos(t)
    assert d.rate is not None and d.rate.rate == 100.0 and d.rate.burst == 20.0
    assert d.replay_window == 128 and d.syn is None


@pytest.mark.parametrize(
    ("rule", "msg"),
    [
        ({"name": "web", "dst": "198.18.0.0/33"}, r"rule 2 \('web'\): dst: bad prefix"),
        ({"dport": [80]}, r"rule 2: dport: a range is \[lo, hi\]"),
        ({"dport": 70000}, r"rule 2: dport: 70000 out of range"),
        ({"sport": "9-3"}, r"rule 2: sport: empty range"),
        ({"proto": "sctpx"}, r"rule 2: proto: bad value 'sctpx'"),
        ({"dscp": 64}, r"rule 2: dscp: 64 out of range 0..63"),
        ({"action": "reject"}, r"rule 2: action: action must be one of"),
        ({"src": "198.18.0.1", "dst": "fd00::1"}, r"rule 2: src is IPv4 but dst is IPv6"),
        ({"colour": "red"}, r"rule 2: unknown key\(s\) colour"),
        ({"class": -1}, r"rule 2: class: -1 out of range"),
        ({"priority": "high"}, r"rule 2: priority: must be an integer"),
    ],
)
def test_bad_rules_named(rule: dict[str, object], msg: str) -> None:
    with pytest.raises(ConfigError, match=msg):
        parse_classify({"rule": [{"dport": 1}, rule]})


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.toml"):
        load_classify(tmp_path / "missing.toml")
    p = tmp_path / "bad.toml"
    p.write_text("[classify\n")
    with pytest.raises(ConfigError, match=r"bad\.toml"):
        load_classify(p)
    p.write_text("[other]\n")
    with pytest.raises(ConfigError, match="unknown key"):
        load_classify(p)
    j = tmp_path / "bad.json"
    j.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="top level"):
        load_classify(j)
    p.write_text('[classify]\nrss_key = "abcd"\n')
    with pytest.raises(ConfigError, match="rss_key: RSS key must be 40 bytes"):
        load_classify(p)
    p.write_text("[classify.lpm]\nprefixes = [{ class = 3 }]\n")
    with pytest.raises(ConfigError, match="lpm: prefix 1: missing 'prefix'"):
        load_classify(p)


_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**40), 2**40),
        st.floats(allow_nan=True),
        st.sampled_from(["tcp", "198.18.0.0/15", "fd00::/8", "1-2", "drop", "dst", "x", "-"]),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(_KEYS), inner, max_size=4)
    ),
    max_leaves=12,
)


@given(st.dictionaries(st.sampled_from(_KEYS), _values, max_size=6))
def test_fuzzed_documents_give_config_or_error(doc: dict[str, object]) -> None:
    for parse, kind in ((parse_classify, ClassifyConfig), (parse_dos, DosConfig)):
        try:
            cfg = parse(doc)
        except ConfigError as e:
            assert str(e)  # a message naming the entry
        else:
            assert isinstance(cfg, kind)
