"""``netoffload bench checksum``: the software checksum task against memcpy and pure Python.

Workload: batches of 1024 IPv4/TCP packets of 1400 bytes (random payloads,
correct checksums), verified by the checksum task (``mode="verify"``).

Metrics, measured side by side in one run (``bench.interleaved``):

- ``checksum_vs_memcpy``: verify throughput over numpy memory-copy bandwidth
  of the same bytes (``np.copyto`` of the batch's 1024x1400 packet bytes into a
  ready buffer). Verify starts from packets as they arrive — layout unknown, so
  the task parses the headers — exactly what a receive engine pays. Target >= 0.5.
- ``checksum_vs_pure_python``: verify throughput over a straightforward
  per-packet pure-Python verifier (IPv4 header and TCP checksums, a loop over
  16-bit words). Target >= 40.

Reported besides: the same with the layout already in the extensions
(``checksum_vs_memcpy_parsed``) and fill throughput.
"""

from __future__ import annotations

import struct

import numpy as np

from netoffload.batch import Batch, CsumVerdict, XFlag
from netoffload.bench import Bench, BenchContext, BenchResult, interleaved, register
from netoffload.soft.checksum import FILL, VERIFY, ChecksumTask
from netoffload.testing.packets import tcp_packet
from netoffload.wire.parse import parse_batch

N_PACKETS = 1024
SIZE = 1400


def workload(n: int = N_PACKETS, size: int = SIZE, seed: int = 1) -> list[bytes]:
    """``n`` IPv4/TCP packets of ``size`` bytes with random payloads and right checksums."""
    rng = np.random.default_rng(seed)
    pay = rng.integers(0, 256, (n, size - 40), dtype=np.uint8)
    return [
        tcp_packet(4, pay[i].tobytes(), seq=i * (size - 40), sport=40000 + i % 64, ident=i)
        for i in range(n)
    ]


def _sum16(b: bytes) -> int:
    s = 0
    for i in range(0, len(b) - 1, 2):
        s += (b[i] << 8) | b[i + 1]
    if len(b) % 2:
        s += b[-1] << 8
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def verify_py(pkt: bytes) -> bool:
    """A straightforward per-packet pure-Python IPv4/TCP-or-UDP checksum verifier."""
    ihl = (pkt[0] & 15) * 4
    if _sum16(pkt[:ihl]) != 0xFFFF:
        return False
    total = struct.unpack_from("!H", pkt, 2)[0]
    seg = pkt[ihl:total]
    pseudo = pkt[12:20] + struct.pack("!BBH", 0, pkt[9], len(seg))
    return _sum16(pseudo + seg) == 0xFFFF


def run(ctx: BenchContext) -> BenchResult:
    pkts = workload()
    nbytes = sum(len(p) for p in pkts)
    ctx.progress(f"{len(pkts)} packets of {SIZE} bytes ({nbytes} bytes)")
    sel = np.ones(len(pkts), dtype=np.bool_)
    verify_task = ChecksumTask(VERIFY)
    fill_task = ChecksumTask(FILL)

    raw = Batch.from_packets(pkts)
    parsed = Batch.from_packets(pkts)
    parse_batch(parsed)
    to_fill = Batch.from_packets(pkts)
    src = raw.flat_bytes()
    dst = np.empty_like(src)
    unparsed_flags = raw.ext.xflags.copy()

    def memcpy() -> None:
        np.copyto(dst, src)

    def verify_unparsed() -> None:
        raw.ext.xflags[:] = unparsed_flags  # as received: layout unknown
        verify_task.process(raw, sel)

    def verify_parsed() -> None:
        verify_task.process(parsed, sel)

    def fill() -> None:
        fill_task.process(to_fill, sel)

    # the pure-Python baseline is slow: time a slice and scale per packet
    py_n = 32 if ctx.quick else 128
    py_pkts = pkts[:py_n]

    def pure_python() -> None:
        for p in py_pkts:
            verify_py(p)

    # sanity: everything verifies GOOD, in both implementations
    verify_unparsed()
    verify_parsed()
    if not (raw.ext.csum_verdict == CsumVerdict.GOOD).all() or not all(map(verify_py, py_pkts)):
        raise RuntimeError("checksum bench: workload does not verify")
    if not (raw.ext.xflags & XFlag.PARSED).all():
        raise RuntimeError("checksum bench: workload does not parse")

    budget = ctx.repeat_time() * 8
    t = interleaved(
        {
            "memcpy": memcpy,
            "verify": verify_unparsed,
            "verify_parsed": verify_parsed,
            "fill": fill,
            "pure_python": pure_python,
        },
        budget,
    )
    t_py = t["pure_python"] * len(pkts) / py_n
    metrics = {
        "checksum_vs_memcpy": t["memcpy"] / t["verify"],
        "checksum_vs_pure_python": t_py / t["verify"],
        "checksum_vs_memcpy_parsed": t["memcpy"] / t["verify_parsed"],
        "checksum_fill_vs_memcpy": t["memcpy"] / t["fill"],
        "verify_gbit_s": nbytes * 8 / t["verify"] / 1e9,
    }
    rows: list[dict[str, object]] = []
    timed = (
        ("memcpy (np.copyto)", t["memcpy"]),
        ("verify, headers parsed by the task", t["verify"]),
        ("verify, layout already in the extension", t["verify_parsed"]),
        ("fill", t["fill"]),
        ("pure-Python verify (scaled)", t_py),
    )
    for name, secs in timed:
        rows.append(
            {
                "path": name,
                "us_per_batch": secs * 1e6,
                "ns_per_packet": secs * 1e9 / len(pkts),
                "GB_s": nbytes / secs / 1e9,
            }
        )
    return BenchResult(
        metrics=metrics,
        targets={
            "checksum_vs_memcpy": (">=", 0.5),
            "checksum_vs_pure_python": (">=", 40.0),
        },
        rows=rows,
        notes=[
            f"batches of {len(pkts)} IPv4/TCP packets of {SIZE} bytes; memcpy copies the same"
            f" {nbytes} bytes with np.copyto; pure Python timed on {py_n} packets and scaled",
        ],
        series={"GB/s": [(float(i), nbytes / secs / 1e9) for i, (_, secs) in enumerate(timed)]},
    )


register(Bench("checksum", run, "software checksum verify vs memcpy and vs pure Python"))
