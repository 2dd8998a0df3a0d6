"""The encrypt/decrypt tasks' whole-batch paths with the compiled AEAD loop
(``_native.kernel.aead``: in place in the batch) and without it (numpy and scratch
rows): byte-identical batches and extensions, and both against scapy's ESP (the
independent implementation tests/soft/test_crypto.py uses) and bare ``cryptography``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.packet import Raw
from test_crypto import craft, our_sa, outer_parse, scapy_sa

from netoffload import _native
from netoffload.batch import Batch, Reason
from netoffload.sa import SATable
from netoffload.soft.crypto import DecryptTask, EncryptTask

_KERNEL = _native.kernel
PATHS = ["native", "numpy"]


@contextmanager
def using(path: str) -> Iterator[None]:
    """Run the tasks on ``path``: the compiled AEAD loop (skips if absent) or numpy."""
    if path == "native" and (_KERNEL is None or not hasattr(_KERNEL, "aead")):
        pytest.skip(f"compiled AEAD loop not in use: {_native.status()}")
    saved = _native.kernel
    _native.kernel = _KERNEL if path == "native" else None
    try:
        yield
    finally:
        _native.kernel = saved


def inner(n: int, v: int, size: int, seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        pay = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        tos = int(rng.integers(0, 256))
        if v == 4:
            out.append(bytes(IP(id=i, tos=tos) / UDP(sport=1000 + i) / Raw(pay)))
        else:
            out.append(bytes(IPv6(tc=tos, fl=i) / UDP(sport=1000 + i) / Raw(pay)))
    return out


def run_encrypt(path: str, sa: Any, pkts: list[bytes], reserved: dict[int, int]) -> Batch:
    with using(path):
        b = Batch.from_packets(pkts, uniform=True)
        b.ext.sa[:] = 0
        for i, q in reserved.items():
            b.ext.seq[i] = q
        return EncryptTask(sas=SATable((sa,))).process(b, np.ones(len(b), bool))


ALGS = ["aes-gcm-128", "aes-gcm-256", "chacha20-poly1305"]


@settings(max_examples=40, deadline=None)
@given(
    alg=st.sampled_from(ALGS),
    outer=st.sampled_from([(4, False, False), (6, True, True), (4, True, False), (6, False, True)]),
    v=st.sampled_from([4, 6]),
    n=st.integers(2, 40),
    size=st.integers(0, 300),
    seed=st.integers(0, 2**16),
    reserve=st.booleans(),
)
def test_encrypt_native_matches_numpy_and_scapy(
    alg: str,
    outer: tuple[int, bool, bool],
    v: int,
    n: int,
    size: int,
    seed: int,
    reserve: bool,
) -> None:
    ov, udp, esn = outer
    sa = our_sa(alg, ov, udp, esn, seq_start=2**32 - 5 if esn else 3)
    pkts = inner(n, v, size, seed)
    reserved = {n // 2: (2**32 + 77 if esn else 77)} if reserve else {}
    fast = run_encrypt("native", sa, pkts, reserved)
    slow = run_encrypt("numpy", sa, pkts, reserved)
    assert fast.packets() == slow.packets()
    assert fast.ext.equals(slow.ext)
    assert (fast.ext.error == 0).all()
    for i, raw in enumerate(fast.packets()):
        ssa = scapy_sa(sa)
        ssa.esn = int(fast.ext.seq[i]) >> 32
        assert bytes(ssa.decrypt(outer_parse(sa, raw))) == pkts[i]


def forge(rng: np.random.Generator, wire: list[bytearray]) -> None:
    """Flip a bit in the ciphertext or the ICV of a few packets."""
    for i in range(len(wire)):
        if rng.random() < 0.2:
            j = int(rng.integers(len(wire[i]) - 20, len(wire[i])))
            wire[i][j] ^= 1 << int(rng.integers(0, 8))


@settings(max_examples=40, deadline=None)
@given(
    alg=st.sampled_from(ALGS),
    outer=st.sampled_from([(4, False), (6, True)]),
    v=st.sampled_from([4, 6]),
    n=st.integers(2, 40),
    size=st.integers(0, 300),
    seed=st.integers(0, 2**16),
    extra=st.sampled_from(["none", "replay", "bad_pad", "bad_nh"]),
)
def test_decrypt_native_matches_numpy_and_cryptography(
    alg: str, outer: tuple[int, bool], v: int, n: int, size: int, seed: int, extra: str
) -> None:
    ov, esn = outer
    start = 2**32 - 3 if esn else 1
    sa = our_sa(alg, ov, esn=esn, replay_window=64, seq_start=start)
    pkts = inner(n, v, size, seed)
    b = Batch.from_packets(pkts, uniform=True)
    b.ext.sa[:] = 0
    wire = [
        bytearray(p) for p in EncryptTask(sas=SATable((sa,))).process(b, np.ones(n, bool)).packets()
    ]
    rng = np.random.default_rng(seed)
    forge(rng, wire)
    L = len(pkts[0])
    pad = (-(L + 2)) % 4
    good_trailer = bytes([*range(1, pad + 1), pad, 4 if v == 4 else 41])
    if extra == "replay":
        wire.append(bytearray(wire[0]))
    elif extra == "bad_pad" and pad:
        wire.append(
            bytearray(
                craft(
                    sa,
                    start + 60,
                    pkts[0] + bytes([9, *range(2, pad + 1), pad, 4 if v == 4 else 41]),
                )
            )
        )
    elif extra == "bad_nh":
        wire.append(bytearray(craft(sa, start + 61, pkts[0] + good_trailer[:-1] + bytes([17]))))
    raw = [bytes(w) for w in wire]
    outs = []
    for path in PATHS:
        with using(path):
            t = DecryptTask(sas=SATable((sa,)))
            t.tops[0] = max(start - 5, 0)
            batch = Batch.from_packets(raw, uniform=True)
            assert t._decrypt_uniform(batch, np.arange(len(raw)))
            outs.append(batch)
    fast, slow = outs
    assert fast.packets() == slow.packets()
    assert fast.ext.equals(slow.ext)
    # against bare cryptography: which packets authenticate, and their plaintext
    aead = ChaCha20Poly1305(sa.cipher_key) if alg == "chacha20-poly1305" else AESGCM(sa.cipher_key)
    iph = 20 if ov == 4 else 40
    got = fast.packets()
    seen: set[bytes] = set()
    for i, r in enumerate(raw):
        esp = r[iph:]
        lo = esp[4:8]
        seq = int.from_bytes(esp[8:16], "big")  # our IV is the full sequence number
        aad = esp[:4] + (seq >> 32).to_bytes(4, "big") + lo if esn else esp[:8]
        try:
            plain = aead.decrypt(sa.salt + esp[8:16], esp[16:], aad)
        except InvalidTag:
            assert fast.ext.error[i] == Reason.BAD_ICV
            assert got[i] == r  # a forged packet keeps its bytes
            continue
        ok_trailer = plain[L:] == good_trailer and len(plain) == L + len(good_trailer)
        if not ok_trailer:
            assert fast.ext.error[i] in (Reason.BAD_PADDING, Reason.BAD_ESP)
            assert got[i] == r
        elif esp[:16] in seen:
            assert fast.ext.error[i] == Reason.REPLAY
            assert got[i] == r
        else:
            assert fast.ext.error[i] == 0
            assert got[i] == plain[:L]
        seen.add(esp[:16])


# ------------------------------------------------------------------ the kernel call itself
def kernel() -> Any:
    if _KERNEL is None or not hasattr(_KERNEL, "aead"):
        pytest.skip(f"compiled AEAD loop not in use: {_native.status()}")
    return _KERNEL


def test_aead_loop_checks_every_range_first() -> None:
    k = kernel()
    calls: list[int] = []
    buf = np.zeros(100, np.uint8)
    nonce = np.zeros((2, 12), np.uint8)
    aad = np.zeros((2, 8), np.uint8)
    ok = np.zeros(2, np.uint8)
    one = np.array([10], np.int64)

    def fn(*a: Any) -> int:
        calls.append(1)
        return 0

    with pytest.raises(ValueError, match="outside"):
        k.aead(fn, None, nonce, 0, 12, 12, aad, 0, 8, 8, buf, np.array([0, 95]), one, one, ok)
    with pytest.raises(ValueError, match="outside"):
        k.aead(fn, None, nonce, 0, 12, 13, aad, 0, 8, 8, buf, np.array([0, 5]), one, one, ok)
    with pytest.raises(ValueError):
        k.aead(fn, None, nonce, 0, 12, 12, aad, 0, 8, 8, buf, np.array([0, 5]), one, one, ok[:1])
    with pytest.raises(ValueError, match="negative"):
        k.aead(fn, None, nonce, -1, 12, 12, aad, 0, 8, 8, buf, np.array([0, 5]), one, one, ok)
    assert calls == []


def test_aead_loop_spans_kept_by_the_callee_stay_valid() -> None:
    """A callee that keeps its arguments gets fresh spans for the next packet; what it
    kept still shows the bytes it was given."""
    k = kernel()
    buf = np.arange(40, dtype=np.uint8)
    nonce = np.arange(24, dtype=np.uint8).reshape(2, 12)
    aad = np.arange(16, dtype=np.uint8).reshape(2, 8)
    kept: list[tuple[memoryview, ...]] = []

    def fn(*a: Any) -> int:
        kept.append(tuple(memoryview(x) for x in a))
        return 0

    ok = np.zeros(2, np.uint8)
    assert (
        k.aead(
            fn,
            None,
            nonce,
            0,
            12,
            12,
            aad,
            0,
            8,
            8,
            buf,
            np.array([0, 20]),
            np.array([4]),
            np.array([6]),
            ok,
        )
        == 0
    )
    assert ok.tolist() == [1, 1]
    (n0, d0, _a0, o0), (n1, d1, a1, o1) = kept
    assert bytes(n0) == bytes(range(12)) and bytes(n1) == bytes(range(12, 24))
    assert bytes(d0) == bytes(range(4)) and bytes(d1) == bytes(range(20, 24))
    assert bytes(a1) == bytes(range(8, 16)) and bytes(o1) == bytes(range(20, 26))
    assert n0.readonly and not o0.readonly


def test_aead_loop_failures_and_other_exceptions() -> None:
    k = kernel()
    buf = np.zeros(64, np.uint8)
    nonce = np.zeros((4, 12), np.uint8)
    aad = np.zeros((4, 8), np.uint8)
    ok = np.zeros(4, np.uint8)
    seen: list[int] = []

    def fn(n: Any, d: Any, a: Any, o: Any) -> int:
        seen.append(len(seen))
        if len(seen) in (2, 4):
            raise InvalidTag
        return 0

    one = np.array([4], np.int64)
    pos = np.array([0, 8, 16, 24], np.int64)
    assert k.aead(fn, InvalidTag, nonce, 0, 12, 12, aad, 0, 8, 8, buf, pos, one, one, ok) == 2
    assert ok.tolist() == [1, 0, 1, 0]

    def boom(*a: Any) -> int:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        k.aead(boom, InvalidTag, nonce, 0, 12, 12, aad, 0, 8, 8, buf, pos, one, one, ok)
    seen.clear()
    with pytest.raises(InvalidTag):  # not caught: fail is None
        k.aead(fn, None, nonce, 0, 12, 12, aad, 0, 8, 8, buf, pos, one, one, ok)


# RFC 6040 section 4.2, normal mode, written out here: the inner ECN field after
# decapsulation, by (inner, outer) codepoint; None: the packet is dropped
_DECAP: dict[tuple[int, int], int | None] = {
    **{(0, o): 0 for o in (0, 1, 2)},
    (0, 3): None,
    **{(1, o): 1 for o in (0, 1, 2)},
    (1, 3): 3,
    (2, 0): 2,
    (2, 1): 1,
    (2, 2): 2,
    (2, 3): 3,
    **{(3, o): 3 for o in (0, 1, 2, 3)},
}


@settings(max_examples=40, deadline=None)
@given(
    alg=st.sampled_from(ALGS),
    ov=st.sampled_from([4, 6]),
    v=st.sampled_from([4, 6]),
    n=st.integers(2, 24),
    size=st.integers(0, 120),
    tfc=st.integers(0, 9),
    seed=st.integers(0, 2**16),
)
def test_decrypt_ecn_and_tfc_padding_on_both_paths(
    alg: str, ov: int, v: int, n: int, size: int, tfc: int, seed: int
) -> None:
    """Outer ECN codepoints set at random (the outer header is not authenticated)
    and TFC padding after the inner packets: both paths give the same batch, with
    the ECN field of RFC 6040's table and the padding cut off."""
    sa = our_sa(alg, ov, replay_window=64)
    rng = np.random.default_rng(seed)
    pkts = inner(n, v, size, seed)
    L = len(pkts[0]) + tfc
    pad = (-(L + 2)) % 4
    trailer = bytes([*range(1, pad + 1), pad, 4 if v == 4 else 41])
    raw = []
    outer_ecn = rng.integers(0, 4, n).tolist()
    for i, p in enumerate(pkts):
        w = bytearray(craft(sa, 10 + i, p + bytes(tfc) + trailer))
        if ov == 4:
            w[1] = (w[1] & ~3) | outer_ecn[i]
        else:
            w[1] = (w[1] & ~0x30) | (outer_ecn[i] << 4)
        raw.append(bytes(w))
    outs = []
    for path in PATHS:
        with using(path):
            batch = Batch.from_packets(raw, uniform=True)
            assert DecryptTask(sas=SATable((sa,)))._decrypt_uniform(batch, np.arange(n))
            outs.append(batch)
    fast, slow = outs
    assert fast.packets() == slow.packets()
    assert fast.ext.equals(slow.ext)
    for i, p in enumerate(pkts):
        tos = p[1] if v == 4 else ((p[0] & 0xF) << 4) | (p[1] >> 4)
        want = _DECAP[(tos & 3, outer_ecn[i])]
        got = fast.packet(i)
        if want is None:
            assert fast.ext.error[i] == Reason.ECN_DROP
            assert bytes(got) == raw[i]
            continue
        assert fast.ext.error[i] == 0
        assert len(got) == len(p)  # TFC padding cut off
        if v == 4:
            assert got[1] & 3 == want
            assert ones_complement_ok(bytes(got[:20]))
        else:
            assert (got[1] >> 4) & 3 == want
        assert bytes(got[2:]) == p[2:] if v == 6 else bytes(got[12:]) == p[12:]


def ones_complement_ok(h: bytes) -> bool:
    s = sum(int.from_bytes(h[i : i + 2], "big") for i in range(0, len(h), 2))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s == 0xFFFF
