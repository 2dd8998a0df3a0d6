"""``netoffload bench digest``: the digest task against bare ``hmac`` calls.

Workload: batches of 1024 IPv4/UDP packets of 1400 bytes.

- ``digest_vs_raw``: packets per second of ``DigestTask("hmac-sha256-128")``
  (compute: the 16-byte trailer appended to every packet of the Batch) divided
  by packets per second of a bare Python loop of ``hmac.digest(key, packet,
  "sha256")[:16]`` over the same packets as ``bytes``. Target >= 0.85. Above 1
  since the task hashes the key's HMAC pads once (``digest.PaddedHmac``) where
  ``hmac.digest`` hashes them again for every packet.

Reported besides: verification (``verify_vs_raw``: check and strip against the
bare loop plus ``hmac.compare_digest``), keyed BLAKE2s-128 and CRC32C the same
way (``blake2s_vs_raw``, ``crc32c_vs_raw`` — raw CRC32C is ``google_crc32c.value``
when installed), and the numpy CRC32C in Gbit/s.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable

import numpy as np

from netoffload.batch import Batch
from netoffload.bench import Bench, BenchContext, BenchResult, register
from netoffload.bench.crypto import _timed_rounds
from netoffload.soft import digest as digest_mod
from netoffload.soft.digest import DigestTask, crc32c_batch
from netoffload.testing.packets import udp_packet

N_PACKETS = 1024
SIZE = 1400
KEY = bytes(range(32))


def workload(n: int = N_PACKETS, size: int = SIZE, seed: int = 2) -> list[bytes]:
    rng = np.random.default_rng(seed)
    pay = rng.integers(0, 256, (n, size - 28), dtype=np.uint8)
    return [udp_packet(4, pay[i].tobytes(), sport=40000 + i % 64) for i in range(n)]


def run(ctx: BenchContext) -> BenchResult:
    pkts = workload()
    n = len(pkts)
    ctx.progress(f"{n} packets of {SIZE} bytes per batch")
    base = Batch.from_packets(pkts)
    sel = np.ones(n, dtype=np.bool_)
    budget = 1.5 if ctx.quick else 6.0

    def task_case(
        alg: str, mode: str, src: Batch
    ) -> tuple[Callable[[], object], Callable[[object], object]]:
        t = DigestTask(alg, KEY, mode=mode)

        def setup() -> Batch:
            return src.copy()

        def go(b: object) -> object:
            assert isinstance(b, Batch)
            return t.process(b, sel)

        return setup, go

    def raw_hmac(_: object) -> list[bytes]:
        out = []
        for p in pkts:
            out.append(hmac.digest(KEY, p, "sha256")[:16])
        return out

    macs = raw_hmac(None)
    signed = DigestTask("hmac-sha256-128", KEY).process(base.copy(), sel)
    signed_pkts = signed.packets()

    def raw_verify(_: object) -> int:
        ok = 0
        for p in signed_pkts:
            body, mac = p[:-16], p[-16:]
            ok += hmac.compare_digest(hmac.digest(KEY, body, "sha256")[:16], mac)
        return ok

    def raw_blake(_: object) -> list[bytes]:
        out = []
        for p in pkts:
            out.append(hashlib.blake2s(p, key=KEY, digest_size=16).digest())
        return out

    hw = digest_mod._HW_CRC

    def raw_crc(_: object) -> list[int]:
        out = []
        if hw is not None:
            for p in pkts:
                out.append(hw(p))
        return out

    def numpy_crc(_: object) -> object:
        return crc32c_batch(base.buf, base.start, base.length)

    none: Callable[[], object] = lambda: None  # noqa: E731
    cases = {
        "raw_hmac": (none, raw_hmac),
        "task_hmac": task_case("hmac-sha256-128", "compute", base),
        "raw_verify": (none, raw_verify),
        "task_verify": task_case("hmac-sha256-128", "verify", signed),
        "raw_blake2s": (none, raw_blake),
        "task_blake2s": task_case("blake2s-128", "compute", base),
        "raw_crc32c": (none, raw_crc),
        "task_crc32c": task_case("crc32c", "compute", base),
        "numpy_crc32c": (none, numpy_crc),
    }
    best = _timed_rounds(cases, budget)
    pps = {k: n / v for k, v in best.items()}
    metrics = {
        "digest_vs_raw": pps["task_hmac"] / pps["raw_hmac"],
        "verify_vs_raw": pps["task_verify"] / pps["raw_verify"],
        "blake2s_vs_raw": pps["task_blake2s"] / pps["raw_blake2s"],
    }
    if hw is not None:
        metrics["crc32c_vs_raw"] = pps["task_crc32c"] / pps["raw_crc32c"]
    metrics["numpy_crc32c_gbps"] = pps["numpy_crc32c"] * SIZE * 8 / 1e9
    assert len(macs) == n
    rows = [
        {"path": k, "Mpps": v / 1e6, "Gbit/s": v * SIZE * 8 / 1e9}
        for k, v in pps.items()
        if not (k == "raw_crc32c" and hw is None)
    ]
    return BenchResult(
        metrics=metrics,
        targets={"digest_vs_raw": (">=", 0.85)},
        rows=rows,
        notes=[
            "task: DigestTask.process on a Batch (trailer appended in place); raw: a bare "
            "for-loop over bytes packets. CRC32C: "
            + ("google-crc32c (hardware)" if hw is not None else "numpy slicing-by-4"),
        ],
    )


register(Bench("digest", run, "digest task (HMAC-SHA-256-128, BLAKE2s, CRC32C) vs bare calls"))
