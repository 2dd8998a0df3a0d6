"""Digest task: RFC 4231 HMAC-SHA-256 vectors (full and -128), BLAKE2s against a
from-the-RFC pure-Python BLAKE2s (RFC 7693, itself checked on published vectors),
CRC32C on the RFC 3720 B.4 examples and a bit-by-bit reference."""

from __future__ import annotations

import hmac

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP
from scapy.packet import Raw

from netoffload.batch import Batch, Reason, XFlag
from netoffload.errors import ConfigError
from netoffload.sa import parse_sa_doc
from netoffload.soft import make_task
from netoffload.soft.digest import DigestTask, PaddedHmac, crc32c, crc32c_batch, padded_hmac
from netoffload.tasks import Task

# ----------------------------------------------------------- reference BLAKE2s
_IV = [
    0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A,
    0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19,
]  # fmt: skip
_SIGMA = [
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
    [14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3],
    [11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4],
    [7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8],
    [9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13],
    [2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9],
    [12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11],
    [13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10],
    [6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5],
    [10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0],
]
_M32 = 0xFFFFFFFF


def _rotr(x: int, n: int) -> int:
    return ((x >> n) | (x << (32 - n))) & _M32


def blake2s_ref(data: bytes, key: bytes = b"", nn: int = 32) -> bytes:
    """BLAKE2s straight from RFC 7693 section 3 (slow, for tests only)."""
    h = list(_IV)
    h[0] ^= 0x01010000 ^ (len(key) << 8) ^ nn
    blocks = [key.ljust(64, b"\0")] if key else []
    blocks += [data[i : i + 64] for i in range(0, len(data), 64)]
    if not blocks:
        blocks = [b""]
    t = 64 if key else 0
    for bi, blk in enumerate(blocks):
        last = bi == len(blocks) - 1
        if key and bi == 0:
            t = 64
        else:
            t += len(blk)
        m = [int.from_bytes(blk.ljust(64, b"\0")[4 * i : 4 * i + 4], "little") for i in range(16)]
        v = h + _IV
        v[12] ^= t & _M32
        v[13] ^= (t >> 32) & _M32
        if last:
            v[14] ^= _M32
        for r in range(10):
            s = _SIGMA[r]
            for i, (a, b, c, d) in enumerate(
                [(0, 4, 8, 12), (1, 5, 9, 13), (2, 6, 10, 14), (3, 7, 11, 15),
                 (0, 5, 10, 15), (1, 6, 11, 12), (2, 7, 8, 13), (3, 4, 9, 14)]
            ):  # fmt: skip
                x, y = m[s[2 * i]], m[s[2 * i + 1]]
                v[a] = (v[a] + v[b] + x) & _M32
                v[d] = _rotr(v[d] ^ v[a], 16)
                v[c] = (v[c] + v[d]) & _M32
                v[b] = _rotr(v[b] ^ v[c], 12)
                v[a] = (v[a] + v[b] + y) & _M32
                v[d] = _rotr(v[d] ^ v[a], 8)
                v[c] = (v[c] + v[d]) & _M32
                v[b] = _rotr(v[b] ^ v[c], 7)
        h = [h[i] ^ v[i] ^ v[i + 8] for i in range(8)]
    return b"".join(x.to_bytes(4, "little") for x in h)[:nn]


def test_reference_blake2s_on_published_vectors() -> None:
    # RFC 7693 appendix B: BLAKE2s-256("abc")
    assert blake2s_ref(b"abc") == bytes.fromhex(
        "508c5e8c327c14e2e1a72ba34eeb452f37458b209ed63a294d999b4c86675982"
    )
    # BLAKE2 reference KAT (blake2s-kat.txt), keyed with 00..1f, empty input
    assert blake2s_ref(b"", bytes(range(32))) == bytes.fromhex(
        "48a8997da407876b3d79c0d92325ad3b89cbb754d86ab71aee047ad345fd2c49"
    )


# ----------------------------------------------------------------- helpers
def ip_packet(payload: bytes) -> bytes:
    return bytes(IP(src="198.18.0.1", dst="198.18.0.2") / UDP(sport=1, dport=2) / Raw(payload))


def run(task: DigestTask, pkts: list[bytes], eth: bool = False) -> Batch:
    b = Batch.from_packets(pkts)
    if eth:
        b.ext.xflags[:] = XFlag.ETHERNET
    return task.process(b, np.ones(len(b), bool))


def digest_of(alg: str, key: bytes, covered: bytes) -> bytes:
    """The trailer the task appends to a non-IP 'packet' equal to ``covered``."""
    b = run(DigestTask(alg, key), [covered])
    return b.packets()[0][len(covered) :]


# ----------------------------------------------------------------- RFC 4231
RFC4231 = [
    # (key, data, HMAC-SHA-256) test cases 1, 2, 4, 6, 7
    (b"\x0b" * 20, b"Hi There",
     "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
    (b"Jefe", b"what do ya want for nothing?",
     "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
    (bytes(range(1, 26)), b"\xcd" * 50,
     "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b"),
    (b"\xaa" * 131, b"Test Using Larger Than Block-Size Key - Hash Key First",
     "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"),
    (b"\xaa" * 131,
     b"This is a test using a larger than block-size key and a larger than block-size "
     b"data. The key needs to be hashed before being used by the HMAC algorithm.",
     "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2"),
]  # fmt: skip


@pytest.mark.parametrize(("key", "data", "mac"), RFC4231)
def test_rfc4231_full_and_truncated(key: bytes, data: bytes, mac: str) -> None:
    assert digest_of("hmac-sha256", key, data) == bytes.fromhex(mac)
    assert digest_of("hmac-sha256-128", key, data) == bytes.fromhex(mac)[:16]


def test_rfc4231_case5_truncation() -> None:
    assert digest_of("hmac-sha256-128", b"\x0c" * 20, b"Test With Truncation") == bytes.fromhex(
        "a3b6167473100ee06e0c796c2955552b"
    )


# ----------------------------------------------------------------- BLAKE2s, CRC32C
@given(st.binary(max_size=300), st.binary(min_size=1, max_size=32))
def test_blake2s_128_matches_reference(data: bytes, key: bytes) -> None:
    assert digest_of("blake2s-128", key, data) == blake2s_ref(data, key, 16)


@pytest.mark.parametrize(
    ("data", "crc"),
    [
        (bytes(32), 0x8A9136AA),
        (b"\xff" * 32, 0x62A8AB43),
        (bytes(range(32)), 0x46DD794E),
        (bytes(range(31, -1, -1)), 0x113FDB5C),
        (b"123456789", 0xE3069283),
    ],
)
def test_crc32c_rfc3720(data: bytes, crc: int) -> None:
    assert crc32c(data) == crc
    assert digest_of("crc32c", b"", data) == crc.to_bytes(4, "big")


def crc32c_bitwise(data: bytes) -> int:
    c = 0xFFFFFFFF
    for byte in data:
        c ^= byte
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
    return c ^ 0xFFFFFFFF


@given(st.lists(st.binary(max_size=70), min_size=1, max_size=10))
def test_crc32c_batch_matches_bitwise(blobs: list[bytes]) -> None:
    b = Batch.from_packets(blobs, uniform=False)
    got = crc32c_batch(b.buf, b.start, b.length)
    assert got.tolist() == [crc32c_bitwise(x) for x in blobs]


# ----------------------------------------------------------------- task behaviour
ALGS = ["hmac-sha256", "hmac-sha256-128", "blake2s-128", "crc32c"]


@pytest.mark.parametrize("alg", ALGS)
def test_trailer_after_ip_datagram_and_verify_strips(alg: str) -> None:
    pkts = [ip_packet(b"x" * n) for n in (0, 5, 1400)]
    out = run(DigestTask(alg, b"k" * 16), pkts)
    for raw, orig in zip(out.packets(), pkts, strict=True):
        p = IP(raw)
        assert p.len == len(orig)  # IP length untouched: the trailer is outside the datagram
        assert bytes(p)[: len(orig)] == orig
    ver = DigestTask(alg, b"k" * 16, mode="verify").process(out, np.ones(3, bool))
    assert ver.ext.error.tolist() == [0, 0, 0]
    assert ver.packets() == pkts


@pytest.mark.parametrize("alg", ALGS)
def test_verify_rejects_tampering_and_short(alg: str) -> None:
    pkts = [ip_packet(b"y" * n) for n in (10, 20, 30)]
    out = run(DigestTask(alg, b"k" * 16), pkts)
    before = out.packets()
    out.buf[out.start[1] + 25] ^= 0x01
    out.buf[out.start[2] + out.length[2] - 1] ^= 0x80  # the digest itself
    good = Batch.from_packets([before[0], b"\x45"])
    both = Batch.concat([out.take(np.array([1, 2])), good])
    r = DigestTask(alg, b"k" * 16, mode="verify").process(both, np.ones(4, bool))
    assert r.ext.error.tolist() == [Reason.BAD_DIGEST, Reason.BAD_DIGEST, 0, Reason.TRUNCATED]
    assert r.packets()[2] == pkts[0]


def test_ethernet_header_not_covered() -> None:
    ip = ip_packet(b"z" * 40)
    f1 = b"\x02" * 12 + b"\x08\x00" + ip
    f2 = b"\x04" * 12 + b"\x08\x00" + ip
    out = run(DigestTask("hmac-sha256-128", b"key"), [f1, f2], eth=True)
    a, b = out.packets()
    assert a[-16:] == b[-16:] == digest_of("hmac-sha256-128", b"key", ip)


def test_only_selected_and_relayout_when_no_tailroom() -> None:
    pkts = [ip_packet(b"a" * 10), ip_packet(b"b" * 11)]
    b = Batch.from_packets(pkts, tailroom=0)
    out = DigestTask("hmac-sha256", b"k").process(b, np.array([False, True]))
    assert out.packets()[0] == pkts[0]
    assert len(out.packets()[1]) == len(pkts[1]) + 32


def test_config_from_sa_table_and_errors() -> None:
    t = parse_sa_doc({"sa": [], "digest": {"algorithm": "crc32c"}})
    task = make_task(Task.DIGEST, sas=t)
    assert isinstance(task, DigestTask) and task.algorithm == "crc32c"
    with pytest.raises(ConfigError, match="no \\[digest\\]"):
        DigestTask(sas=parse_sa_doc({"sa": []}))
    with pytest.raises(ConfigError, match="unknown algorithm"):
        DigestTask("md5", b"k")
    with pytest.raises(ConfigError, match="needs a key"):
        DigestTask("hmac-sha256")
    with pytest.raises(ConfigError, match="mode"):
        DigestTask("crc32c", mode="check")
    with pytest.raises(ConfigError, match="at most 32"):
        DigestTask("blake2s-128", b"k" * 33)
    assert DigestTask("hmac-sha256", "0x6b6579").key == b"key"


@given(st.lists(st.binary(max_size=60), min_size=1, max_size=8), st.sampled_from(ALGS))
def test_fuzz_verify_never_raises(blobs: list[bytes], alg: str) -> None:
    b = Batch.from_packets(blobs)
    r = DigestTask(alg, b"k", mode="verify").process(b, np.ones(len(b), bool))
    assert len(r) == len(blobs)
    assert set(r.ext.error.tolist()) <= {0, Reason.BAD_DIGEST, Reason.TRUNCATED}


@given(st.binary(max_size=200), st.binary(max_size=3000))
@example(b"k" * 64, b"block-sized key: used as it is")
@example(b"k" * 65, b"one byte over: hashed first")
def test_padded_hmac_is_hmac_sha256(key: bytes, data: bytes) -> None:
    """Keys shorter and longer than the block (hashed first), empty data, views."""
    want = hmac.digest(key, data, "sha256")
    h = PaddedHmac(key)
    assert h(data) == want
    assert h(memoryview(bytearray(data))) == want
    assert h(data) == want  # the pad states are copied, never consumed
    assert padded_hmac(key)(data) == want
