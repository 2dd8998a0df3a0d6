"""TCP/UDP assembly by the compiled kernel (``gro_plan`` / ``gro_build``) and by the
numpy code: the same output batch (bytes, extension, layout) and outcome, and both
against the per-packet reference coalescer (``gro_pure_python``) that
tests/soft/test_assemble.py uses."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_assemble import flow_segments, full, interleave, perturb

import netoffload.soft.assemble as asm
from netoffload import _native
from netoffload.batch import Batch, CsumVerdict
from netoffload.bench.assemble import gro_pure_python
from netoffload.soft.assemble import GroResult, Outcome, assemble

_KERNEL = _native.kernel


@contextmanager
def using(path: str) -> Iterator[None]:
    """Run assembly on ``path``: the compiled kernel (skips if absent) or numpy."""
    if path == "native" and (_KERNEL is None or not hasattr(_KERNEL, "gro_plan")):
        pytest.skip(f"compiled GRO not in use: {_native.status()}")
    saved = _native.kernel
    _native.kernel = _KERNEL if path == "native" else None
    try:
        yield
    finally:
        _native.kernel = saved


@contextmanager
def counting() -> Iterator[dict[str, int]]:
    """How many calls the kernel did and how many it left to numpy."""
    seen = {"native": 0, "numpy": 0}
    orig = asm._assemble_native

    def wrap(*a: Any) -> Any:
        r = orig(*a)
        seen["native" if r is not None else "numpy"] += 1
        return r

    asm._assemble_native = wrap
    try:
        yield seen
    finally:
        asm._assemble_native = orig


def run(
    path: str, pkts: list[bytes], proto: int, trusted: bool, **kw: Any
) -> tuple[Batch, Outcome]:
    with using(path):
        b = Batch.from_packets(pkts)
        if trusted:
            b.ext.csum_verdict[:] = CsumVerdict.GOOD
        return assemble(b, np.ones(len(b), dtype=np.bool_), proto, **kw)


def same(a: tuple[Batch, Outcome], b: tuple[Batch, Outcome]) -> None:
    (oa, ca), (ob, cb) = a, b
    assert oa.packets() == ob.packets()
    assert oa.ext.equals(ob.ext)
    assert oa.start.tolist() == ob.start.tolist()
    assert oa.slot_lo.tolist() == ob.slot_lo.tolist()
    assert oa.slot_hi.tolist() == ob.slot_hi.tolist()
    assert ca.result.tolist() == cb.result.tolist()
    assert ca.out_index.tolist() == cb.out_index.tolist()
    assert ca.segs.tolist() == cb.segs.tolist()


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    proto=st.sampled_from([6, 17]),
    nflows=st.integers(1, 5),
    odd=st.booleans(),
    reorder=st.sampled_from([0.0, 0.05, 0.3]),
    loss=st.sampled_from([0.0, 0.05]),
    dup=st.sampled_from([0.0, 0.05]),
    trusted=st.booleans(),
    other=st.booleans(),
)
def test_native_matches_numpy_and_reference(
    seed: int,
    proto: int,
    nflows: int,
    odd: bool,
    reorder: float,
    loss: float,
    dup: float,
    trusted: bool,
    other: bool,
) -> None:
    rnd = random.Random(seed)
    flows = [
        flow_segments(
            rnd,
            f,
            proto,
            rnd.choice([4, 6]),
            rnd.randint(1, 70),
            rnd.choice([1, 100, 1448, 3000]),
            odd,
        )
        for f in range(nflows)
    ]
    if other:  # packets of the other protocol pass through among them
        flows.append(flow_segments(rnd, 9, 23 - proto, 4, rnd.randint(1, 5), 100, False))
    pkts = perturb(rnd, interleave(rnd, flows), reorder, loss, dup)
    limit = rnd.choice([None, None, 3])
    fast = run("native", pkts, proto, trusted, max_segs=limit)
    slow = run("numpy", pkts, proto, trusted, max_segs=limit)
    same(fast, slow)
    if trusted:  # the reference takes checksums as good
        ref = gro_pure_python(pkts, proto, max_segs=limit)
        assert full(fast[0]) == [r[0] for r in ref]
        assert list(fast[0].ext.segs.clip(1)) == [r[2] for r in ref]


def test_the_kernel_does_plain_batches_and_leaves_odd_ones_to_numpy() -> None:
    rnd = random.Random(5)
    pkts = interleave(rnd, [flow_segments(rnd, f, 6, 4, 20, 1448, False) for f in range(3)])
    with counting() as seen:
        fast = run("native", pkts, 6, True)
    assert seen == {"native": 1, "numpy": 0}
    same(fast, run("numpy", pkts, 6, True))
    assert len(fast[0]) < len(pkts)
    # checksums not known good: checked by the kernel; a bad one passes unmerged
    bad = [bytearray(p) for p in pkts]
    bad[7][-1] ^= 0x55
    with counting() as seen:
        unchecked = run("native", [bytes(p) for p in bad], 6, False)
    assert seen == {"native": 1, "numpy": 0}
    same(unchecked, run("numpy", [bytes(p) for p in bad], 6, False))
    assert unchecked[1].result[7] == GroResult.FLUSHED
    # link padding after one packet: numpy
    with counting() as seen:
        odd = run("native", [*pkts[:5], pkts[5] + b"\0\0", *pkts[6:]], 6, True)
    assert seen == {"native": 0, "numpy": 1}
    assert len(odd[0]) > len(fast[0])


def test_gro_build_refuses_ranges_outside_its_buffers() -> None:
    if _KERNEL is None or not hasattr(_KERNEL, "gro_build"):
        pytest.skip(f"compiled GRO not in use: {_native.status()}")
    z = np.zeros(1, np.int64)
    with pytest.raises(ValueError, match="outside"):
        _KERNEL.gro_build(
            np.zeros(100, np.uint8),
            np.array([90], np.int64),
            np.zeros(100, np.uint8),
            z,
            np.array([50], np.int64),
            z,
            np.array([-1], np.int64),
            1,
            np.zeros(0, np.int64),
            np.zeros(1, np.uint8),
            *(np.zeros(0, np.int64) for _ in range(5)),
            6,
        )


@settings(max_examples=300, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    proto=st.sampled_from([6, 17]),
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 79), st.integers(0, 255))),
    cut=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 80)), max_size=2),
    trusted=st.booleans(),
)
def test_mangled_headers_same_on_both_paths(
    seed: int,
    proto: int,
    flips: list[tuple[int, int, int]],
    cut: list[tuple[int, int]],
    trusted: bool,
) -> None:
    """Header bytes overwritten and packets cut short at random, checksums taken as
    good or checked: both paths agree, and nothing raises."""
    rnd = random.Random(seed)
    flows = [flow_segments(rnd, f, proto, rnd.choice([4, 6]), 6, 64, False) for f in range(2)]
    pkts = [bytearray(p) for p in interleave(rnd, flows)]
    for i, off, val in flips:
        p = pkts[i % len(pkts)]
        p[off % len(p)] = val
    for i, at in cut:
        j = i % len(pkts)
        pkts[j] = pkts[j][:at]
    raw = [bytes(p) for p in pkts]
    same(run("native", raw, proto, trusted), run("numpy", raw, proto, trusted))
