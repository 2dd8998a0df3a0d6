"""The configuration-file reader shared by the SA, rules and policy files."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netoffload.configfile import read_document
from netoffload.errors import ConfigError


def test_format_by_suffix_else_the_default(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text("x = 1\n")
    (tmp_path / "a.json").write_text('{"x": 1}')
    (tmp_path / "a.conf").write_text("x = 1\n")
    assert read_document(tmp_path / "a.toml", "t") == {"x": 1}
    assert read_document(tmp_path / "a.json", "t", default="toml") == {"x": 1}
    assert read_document(tmp_path / "a.conf", "t", default="toml") == {"x": 1}
    with pytest.raises(ConfigError, match=r"^t '.*a\.conf': not valid JSON"):
        read_document(tmp_path / "a.conf", "t")


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=80), st.sampled_from([".toml", ".json", ".cfg"]))
def test_any_bytes_parse_like_the_stdlib_or_give_one_config_error(
    tmp_path_factory: pytest.TempPathFactory, raw: bytes, suffix: str
) -> None:
    p = tmp_path_factory.mktemp("c") / f"f{suffix}"
    p.write_bytes(raw)
    try:
        doc = read_document(p, "some file")
    except ConfigError as e:
        assert str(e).startswith(f"some file {str(p)!r}: not valid")
        return
    text = raw.decode("utf-8")
    want = tomllib.loads(text) if suffix == ".toml" else json.loads(text)
    assert repr(doc) == repr(want)  # (repr: NaN is not equal to itself)


@pytest.mark.parametrize(
    ("suffix", "text"),
    [
        (".json", "[" * 100_000),  # json.loads: RecursionError
        (".toml", "a = " + "[" * 100_000),  # tomllib: RecursionError
        (".toml", "a = " + "{b = " * 100_000),
        (".json", "1" * 5000),  # int(): ValueError (more than 4300 digits)
        (".toml", "a = " + "1" * 5000),
    ],
)
def test_nesting_and_huge_integers_are_config_errors(
    tmp_path: Path, suffix: str, text: str
) -> None:
    # found by fuzz/targets.py (sa-config, rules-config): these escaped as
    # RecursionError / ValueError
    p = tmp_path / f"f{suffix}"
    p.write_text(text)
    with pytest.raises(ConfigError, match=r"not valid (JSON|TOML)"):
        read_document(p, "some file")
