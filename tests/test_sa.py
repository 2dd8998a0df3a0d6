"""SA file loading: TOML and JSON, every field, and clear errors naming the entry."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from netoffload.errors import ConfigError
from netoffload.sa import SATable, SecurityAssociation, load_sa_file, parse_sa_doc

KEY20 = "00112233445566778899aabbccddeeff" + "01020304"
KEY36 = "00" * 32 + "01020304"

TOML = f"""
[[sa]]
name = "a-to-b"
spi = 0x1001
algorithm = "aes-gcm-128"
key = "{KEY20}"
src = "198.18.0.1"
dst = "198.19.0.1"
esn = true
replay_window = 128
udp_encap = true
udp_sport = 4501
inner_src = ["10.0.0.0/8", "fd01::/16"]
seq_start = 7

[[sa]]
spi = 0x2002
algorithm = "null"
integrity = "hmac-sha256-128"
integrity_key = "{"ab" * 32}"
src = "fd00::1"
dst = "fd00::2"

[digest]
algorithm = "blake2s-128"
key = "0x000102"
"""


def test_toml_all_fields(tmp_path: Path) -> None:
    p = tmp_path / "sa.toml"
    p.write_text(TOML)
    t = load_sa_file(p)
    assert len(t) == 2
    a, b = t.sas
    assert a.name == "a-to-b" and a.spi == 0x1001 and a.algorithm == "aes-gcm-128"
    assert a.cipher_key == bytes.fromhex(KEY20[:32]) and a.salt == bytes.fromhex("01020304")
    assert a.esn and a.replay_window == 128 and a.udp_encap and a.udp_sport == 4501
    assert a.udp_dport == 4500 and a.seq_start == 7 and a.outer_version == 4
    assert a.overhead == 20 + 8 + 8 + 8
    assert [str(n) for n in a.inner_src] == ["10.0.0.0/8", "fd01::/16"]
    assert str(a.inner_dst[0]) == "0.0.0.0/0"
    assert b.algorithm == "null" and b.integrity == "hmac-sha256-128"
    assert b.integrity_key == b"\xab" * 32 and b.outer_version == 6 and b.overhead == 48
    assert t.digest is not None and t.digest.algorithm == "blake2s-128"
    assert t.digest.key == b"\x00\x01\x02"


def test_json_same_shape(tmp_path: Path) -> None:
    doc = {
        "sa": [
            {
                "spi": "0x3003",
                "algorithm": "chacha20-poly1305",
                "key": KEY36,
                "src": "198.18.0.1",
                "dst": "198.19.0.9",
            }
        ]
    }
    p = tmp_path / "sa.json"
    p.write_text(json.dumps(doc))
    t = load_sa_file(p)
    assert t.sas[0].spi == 0x3003 and len(t.sas[0].cipher_key) == 32
    assert t.sas[0].replay_window == 64 and not t.sas[0].esn


def test_lookup_vectorised() -> None:
    sas = tuple(
        SecurityAssociation(spi, "aes-gcm-128", bytes([i]) * 20, "198.18.0.1", "198.18.0.2")
        for i, spi in enumerate((0x9000, 0x1000, 0x5000))
    )
    t = SATable(sas)
    got = t.lookup(np.array([0x1000, 0x5000, 0x9000, 0x1234, 0, 0xFFFFFFFF]))
    assert got.tolist() == [1, 2, 0, -1, -1, -1]


def test_select_by_traffic_selector(tmp_path: Path) -> None:
    p = tmp_path / "sa.toml"
    p.write_text(TOML)
    t = load_sa_file(p)
    import ipaddress

    ver = np.array([4, 4, 6, 6, 0])
    src = [
        ipaddress.ip_address(x).packed
        for x in ("10.1.2.3", "192.0.2.1", "fd01::5", "fd99::1", "0.0.0.0")
    ]
    dst = (
        [ipaddress.ip_address("10.0.0.1").packed] * 2
        + [ipaddress.ip_address("fd00::9").packed] * 2
        + [b"\x00" * 4]
    )
    # SA 0 takes 10/8 and fd01::/16 sources; SA 1 takes everything else
    assert t.select(ver, src, dst).tolist() == [0, 1, 0, 1, -1]


@pytest.mark.parametrize(
    ("entry", "needle"),
    [
        ({"algorithm": "aes-gcm-128", "key": KEY20, "src": "1.1.1.1", "dst": "1.1.1.2"}, "spi"),
        ({"spi": 5, "algorithm": "aes-gcm-128", "key": KEY20}, "out of range"),
        ({"spi": 300, "algorithm": "des", "key": KEY20}, "unknown algorithm"),
        ({"spi": 300, "algorithm": "aes-gcm-128", "key": "0011"}, "20 bytes"),
        ({"spi": 300, "algorithm": "aes-gcm-256", "key": KEY20}, "36 bytes"),
        ({"spi": 300, "algorithm": "aes-gcm-128", "key": "zz"}, "not valid hex"),
        ({"spi": 300, "algorithm": "null"}, "integrity"),
        ({"spi": 300, "algorithm": "null", "integrity": "hmac-sha256-128"}, "integrity_key"),
        (
            {
                "spi": 300,
                "algorithm": "null",
                "integrity": "hmac-sha256-128",
                "integrity_key": "00",
            },
            "32 bytes",
        ),
        ({"spi": 300, "algorithm": "aes-gcm-128", "key": KEY20, "src": "x"}, "IP address"),
        (
            {"spi": 300, "algorithm": "aes-gcm-128", "key": KEY20, "dst": "fd00::1"},
            "same IP version",
        ),
        ({"spi": 300, "algorithm": "aes-gcm-128", "key": KEY20, "replay_window": 10}, "64..4096"),
        ({"spi": 300, "algorithm": "aes-gcm-128", "key": KEY20, "esn": "yes"}, "true or false"),
        ({"spi": 300, "algorithm": "aes-gcm-128", "key": KEY20, "colour": 1}, "unknown key"),
        ({"spi": 300, "algorithm": "aes-gcm-128", "key": KEY20, "inner_src": "10/33"}, "prefix"),
        ({"spi": 300, "algorithm": "aes-gcm-128", "key": KEY20, "seq_start": 0}, "seq_start"),
    ],
)
def test_errors_name_the_entry(entry: dict[str, object], needle: str) -> None:
    base = {"src": "198.18.0.1", "dst": "198.18.0.2"}
    good = {"name": "ok", "spi": 0x100, "algorithm": "aes-gcm-128", "key": KEY20, **base}
    bad = {"name": "broken", **base, **entry}
    with pytest.raises(ConfigError) as ei:
        parse_sa_doc({"sa": [good, bad]}, where="SA file 'x.toml'")
    msg = str(ei.value)
    assert "SA #1" in msg and "'broken'" in msg and "x.toml" in msg
    assert needle in msg


def test_duplicate_spi_and_file_errors(tmp_path: Path) -> None:
    e = {"spi": 0x100, "algorithm": "aes-gcm-128", "key": KEY20, "src": "::1", "dst": "::2"}
    with pytest.raises(ConfigError, match="already used"):
        parse_sa_doc({"sa": [e, dict(e)]})
    with pytest.raises(ConfigError, match="cannot read"):
        load_sa_file(tmp_path / "missing.toml")
    p = tmp_path / "bad.toml"
    p.write_text("[[sa]\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_sa_file(p)
    p = tmp_path / "bad.json"
    p.write_text("{")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_sa_file(p)
    with pytest.raises(ConfigError, match="top level"):
        parse_sa_doc([1, 2])
    with pytest.raises(ConfigError, match="unknown top-level"):
        parse_sa_doc({"sas": []})
    with pytest.raises(ConfigError, match=r"\[digest\]"):
        parse_sa_doc({"sa": [], "digest": {"algorithm": "md5"}})
    with pytest.raises(ConfigError, match="needs a non-empty"):
        parse_sa_doc({"sa": [], "digest": {"algorithm": "hmac-sha256"}})


_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-5, 2**65)
    | st.text(max_size=8)
    | st.sampled_from([KEY20, KEY36, "198.18.0.1", "fd00::1", "aes-gcm-128", "null", "10.0.0.0/8"]),
    lambda c: st.lists(c, max_size=3),
    max_leaves=6,
)
_KEYS = st.sampled_from(
    [
        "spi",
        "algorithm",
        "key",
        "src",
        "dst",
        "esn",
        "replay_window",
        "udp_encap",
        "udp_sport",
        "seq_start",
        "inner_src",
        "integrity",
        "integrity_key",
        "ttl",
        "x",
    ]
)


@given(st.dictionaries(_KEYS, _VALUES, max_size=8) | _VALUES)
def test_fuzz_entries_give_table_or_config_error(entry: object) -> None:
    try:
        t = parse_sa_doc({"sa": [entry]})
    except ConfigError as e:
        assert "SA #0" in str(e)
        return
    assert len(t) == 1


@pytest.mark.parametrize(
    ("alg", "k1", "k2"),
    [
        ("aes-gcm-128", KEY20, KEY20),  # the same key and salt
        ("aes-gcm-128", KEY20, KEY20[:32] + "0a0b0c0d"),  # the same key, another salt
        ("chacha20-poly1305", KEY36, KEY36),
        ("null", "ab" * 32, "ab" * 32),  # integrity keys
    ],
)
def test_one_key_for_both_directions_is_refused(alg: str, k1: str, k2: str) -> None:
    """An SA is one direction. The two directions of a tunnel sharing a key (both
    sides start at sequence number 1) would repeat AES-GCM / ChaCha20-Poly1305
    nonces (salt || sequence number) under it: refused at load, naming both SAs.
    Such a file used to load."""

    def ent(name: str, spi: int, key: str, src: str, dst: str) -> dict[str, object]:
        e: dict[str, object] = {"name": name, "spi": spi, "algorithm": alg, "src": src, "dst": dst}
        if alg == "null":
            e.update(integrity="hmac-sha256-128", integrity_key=key)
        else:
            e["key"] = key
        return e

    doc = {
        "sa": [
            ent("a-to-b", 0x1001, k1, "198.18.0.1", "198.19.0.1"),
            ent("b-to-a", 0x1002, k2, "198.19.0.1", "198.18.0.1"),
        ]
    }
    with pytest.raises(ConfigError) as ei:
        parse_sa_doc(doc, where="SA file 'x.toml'")
    msg = str(ei.value)
    assert "SA b-to-a: the same key as SA a-to-b" in msg and "x.toml" in msg
    with pytest.raises(ConfigError, match="b-to-a"):
        SATable(tuple(parse_sa_doc({"sa": [e]}).sas[0] for e in doc["sa"]))
    # each direction its own key: fine
    other = "ff" * (len(k1) // 2)
    doc["sa"][1] = ent("b-to-a", 0x1002, other, "198.19.0.1", "198.18.0.1")
    assert len(parse_sa_doc(doc)) == 2
