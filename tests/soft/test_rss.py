"""Toeplitz RSS hash against the verification suite of Microsoft's RSS specification."""

from __future__ import annotations

import ipaddress

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from netoffload.batch import Batch
from netoffload.errors import ConfigError
from netoffload.soft.classify import make_classify, rss_batch
from netoffload.soft.rss import DEFAULT_KEY, Toeplitz, parse_key, toeplitz_reference
from netoffload.tasks import Task
from netoffload.testing.packets import tcp_packet, udp_packet
from soft.classify_ref import Pkt, packets

# (destination, dport, source, sport, 2-tuple hash, 4-tuple hash): "Verifying the RSS
# Hash Calculation", Microsoft RSS specification, default key
V4 = [
    ("161.142.100.80", 1766, "66.9.149.187", 2794, 0x323E8FC2, 0x51CCC178),
    ("65.69.140.83", 4739, "199.92.111.2", 14230, 0xD718262A, 0xC626B0EA),
    ("12.22.207.184", 38024, "24.19.198.95", 12898, 0xD2D0A5DE, 0x5C2B394A),
    ("209.142.163.6", 2217, "38.27.205.30", 48228, 0x82989176, 0xAFC7327F),
    ("202.188.127.2", 1303, "153.39.163.191", 44251, 0x5D1809C5, 0x10E828A2),
]
V6 = [
    ("3ffe:2501:200:3::1", 1766, "3ffe:2501:200:1fff::7", 2794, 0x2CC18CD5, 0x40207D3D),
    ("ff02::1", 4739, "3ffe:501:8::260:97ff:fe40:efab", 14230, 0x0F0C461C, 0xDDE51BBF),
    (
        "fe80::200:f8ff:fe21:67cf",
        38024,
        "3ffe:1900:4545:3:200:f8ff:fe21:67cf",
        44251,
        0x4B61E985,
        0x02D1FEEF,
    ),
]


def _inp(dst: str, dp: int, src: str, sp: int, ports: bool) -> bytes:
    b = ipaddress.ip_address(src).packed + ipaddress.ip_address(dst).packed
    return b + (sp.to_bytes(2, "big") + dp.to_bytes(2, "big") if ports else b"")


@pytest.mark.parametrize("vec", V4 + V6)
def test_spec_vectors(vec: tuple[str, int, str, int, int, int]) -> None:
    dst, dp, src, sp, h2, h4 = vec
    t = Toeplitz()
    for ports, want in ((False, h2), (True, h4)):
        data = _inp(dst, dp, src, sp, ports)
        assert toeplitz_reference(DEFAULT_KEY, data) == want
        assert t.hash_bytes(data) == want
        m = np.frombuffer(data, dtype=np.uint8)[None, :]
        assert t.hash_matrix(m).tolist() == [want]


@pytest.mark.parametrize("vec", V4 + V6)
def test_spec_vectors_through_the_task(vec: tuple[str, int, str, int, int, int]) -> None:
    dst, dp, src, sp, h2, h4 = vec
    v = 4 if "." in dst else 6
    pkts = [
        tcp_packet(v=v, src=src, dst=dst, sport=sp, dport=dp),
        udp_packet(v=v, src=src, dst=dst, sport=sp, dport=dp),
    ]
    b = Batch.from_packets(pkts)
    make_classify().process(b, np.ones(2, bool))
    assert b.ext.rss_hash.tolist() == [h4, h4]
    b2 = Batch.from_packets(pkts)
    make_classify({"rss_fields": "2-tuple"}).process(b2, np.ones(2, bool))
    assert b2.ext.rss_hash.tolist() == [h2, h2]
    assert make_classify().task == Task.CLASSIFY


@given(st.binary(min_size=40, max_size=40), st.binary(max_size=36))
def test_table_equals_bitwise_definition(key: bytes, data: bytes) -> None:
    t = Toeplitz(key)
    want = toeplitz_reference(key, data)
    assert t.hash_bytes(data) == want
    if data:
        m = np.frombuffer(data, dtype=np.uint8)[None, :]
        assert t.hash_matrix(m).tolist() == [want]


def test_key_parsing() -> None:
    assert parse_key(DEFAULT_KEY.hex(":")) == DEFAULT_KEY
    with pytest.raises(ConfigError, match="40 bytes"):
        parse_key("00" * 39)
    with pytest.raises(ConfigError, match="not hex"):
        parse_key("zz" * 40)


@given(st.lists(packets(), min_size=1, max_size=30), st.booleans())
def test_rss_batch_equals_the_task(pkts: list[Pkt], four: bool) -> None:
    raw = [p.build() for p in pkts] + [b"\x45\x00", b""]
    fields = "4-tuple" if four else "2-tuple"
    b = Batch.from_packets(raw)
    make_classify({"rss_fields": fields}).process(b, np.ones(len(raw), bool))
    b2 = Batch.from_packets(raw)
    got = rss_batch(b2, np.arange(len(raw)), Toeplitz(), four_tuple=four)
    assert got.tolist() == b.ext.rss_hash.tolist()
