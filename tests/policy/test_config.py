"""Policies from a spec string or a policy file: parameters reach the policy,
anything wrong is one ConfigError naming it, fuzzed specs never crash."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netoffload.cli import main
from netoffload.errors import ConfigError
from netoffload.policy import Adaptive, Failover, Never, Threshold
from netoffload.policy.config import (
    load_policy_file,
    parse_policy_spec,
    policy_from_args,
    policy_from_doc,
)


def test_spec_sets_the_constructor_parameters() -> None:
    p = parse_policy_spec("adaptive:period=0.5, step=1.2,bounds=0.8/1.25,probe_after=4")()
    assert isinstance(p, Adaptive)
    assert (p.period, p.step, p.bounds, p.probe_after) == (0.5, 1.2, (0.8, 1.25), 4)
    assert isinstance(parse_policy_spec("never")(), Never)


def test_failover_parameters_go_to_the_wrapper() -> None:
    p = parse_policy_spec("threshold+failover:load_on=0.9,load_off=0.5,backoff=2")()
    assert isinstance(p, Failover) and isinstance(p.inner, Threshold)
    assert (p.backoff, p.inner.load_on, p.inner.load_off) == (2.0, 0.9, 0.5)


def test_each_call_makes_a_policy_of_its_own() -> None:
    make = parse_policy_spec("adaptive:period=0.4")
    a, b = make(), make()
    assert a is not b and a.period == b.period == 0.4


@pytest.mark.parametrize(
    "spec, needle",
    [
        ("nope", "unknown policy 'nope'"),
        ("adaptive:perio=1", "no parameter 'perio'"),
        ("adaptive:period=x", "period: 'x': not a number"),
        ("adaptive:period=-1", "need period > 0"),
        ("adaptive:bounds=1", "needs 2 values"),
        ("adaptive:step=nan", "finite"),
        ("adaptive:probe_after=1.5", "not an integer"),
        ("adaptive:period", "not key=value"),
        ("adaptive:period=1,period=2", "given twice"),
        ("never:x=1", "no parameter 'x' (known: none)"),
        ("always+failover:backoff=0", "backoff"),
        ("", "empty"),
    ],
)
def test_bad_specs_name_what_is_wrong(spec: str, needle: str) -> None:
    with pytest.raises(ConfigError) as ei:
        parse_policy_spec(spec)
    assert needle in str(ei.value)


@given(st.text(max_size=60))
def test_fuzzed_specs_give_a_policy_or_a_config_error(spec: str) -> None:
    try:
        make = parse_policy_spec(spec)
    except ConfigError:
        return
    assert make().name


def test_policy_file_toml_and_json(tmp_path: Path) -> None:
    t = tmp_path / "p.toml"
    t.write_text(
        '[policy]\nname = "adaptive"\nfailover = { backoff = 1.5 }\n'
        "period = 0.25\nbounds = [0.9, 1.1]\n"
    )
    p = load_policy_file(t)()
    assert isinstance(p, Failover) and isinstance(p.inner, Adaptive)
    assert p.backoff == 1.5 and p.inner.period == 0.25 and p.inner.bounds == (0.9, 1.1)
    j = tmp_path / "p.json"
    j.write_text(json.dumps({"policy": {"name": "threshold", "load_on": 0.7, "failover": True}}))
    q = load_policy_file(j)()
    assert isinstance(q, Failover) and isinstance(q.inner, Threshold) and q.inner.load_on == 0.7


@pytest.mark.parametrize(
    "doc, needle",
    [
        ({}, "needs a table 'policy'"),
        ({"policy": {"period": 1}}, "policy.name"),
        ({"policy": {"name": "adaptive", "period": "fast"}}, "period"),
        ({"policy": {"name": "adaptive", "period": True}}, "not a number"),
        ({"policy": {"name": "adaptive", "failover": 3}}, "policy.failover"),
        ({"policy": {"name": "adaptive", "failover": {"back": 1}}}, "no parameter 'back'"),
        ([1, 2], "needs a table"),
    ],
)
def test_bad_policy_documents(doc: Any, needle: str) -> None:
    with pytest.raises(ConfigError) as ei:
        policy_from_doc(doc, "policy file 'x'")
    assert needle in str(ei.value) and "policy file 'x'" in str(ei.value)


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_policy_file(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[policy\nname=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_policy_file(bad)
    with pytest.raises(ConfigError, match="not both"):
        policy_from_args("adaptive", bad, "never")


def test_cli_demo_takes_a_spec_and_a_file(tmp_path: Path, capsys: Any) -> None:
    out = tmp_path / "r.json"
    argv = ["demo", "--in-process", "--bytes", "200k", "--packets", "200", "--json", str(out)]
    assert main([*argv, "--policy", "always+failover:backoff=1"]) == 0
    assert json.loads(out.read_text())["policy"] == "always+failover"
    f = tmp_path / "p.toml"
    f.write_text('[policy]\nname = "threshold"\nload_on = 0.0\nload_off = 0.0\n')
    assert main([*argv, "--policy-file", str(f)]) == 0
    assert json.loads(out.read_text())["policy"] == "threshold"
    f.write_text('[policy]\nname = "threshold"\nload_on = "high"\n')
    capsys.readouterr()
    assert main([*argv, "--policy-file", str(f)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "load_on" in err and str(f) in err
