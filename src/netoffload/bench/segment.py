"""``netoffload bench segment``: TCP and UDP segmentation (TSO / USO) in software.

Metrics (issue 4):

* ``tso_vs_memcpy``: output bandwidth of segmenting 64 KiB IPv4/TCP
  super-packets (timestamp options) into 1448-byte segments, checksums filled
  in, divided by the bandwidth of a numpy copy of the same number of bytes,
  measured side by side;
* ``uso_vs_memcpy``: the same for 64 KiB IPv4/UDP super-packets (reported).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np

from netoffload.batch import Batch, GsoType
from netoffload.bench import Bench, BenchContext, BenchResult, interleaved, register
from netoffload.soft.segment import IPPROTO_TCP, IPPROTO_UDP, segment
from netoffload.testing.packets import tcp_packet, udp_packet

MSS = 1448
TS_OPTS = b"\x01\x01\x08\x0a" + bytes(range(1, 9))


def _supers(n: int, proto: int) -> Batch:
    if proto == IPPROTO_TCP:
        pay = bytes(range(256)) * 256
        pkts = [
            tcp_packet(4, pay[: 65535 - 52], options=TS_OPTS, seq=i * 65536, flags=0x18, ident=i)
            for i in range(n)
        ]
        gt = GsoType.TCPV4
    else:
        pay = bytes(range(256)) * 256
        pkts = [udp_packet(4, pay[: 65535 - 28], sport=40000 + i, ident=i) for i in range(n)]
        gt = GsoType.UDP_L4
    b = Batch.from_packets(pkts)
    b.ext.gso_size[:] = MSS
    b.ext.gso_type[:] = gt
    return b


def _run(ctx: BenchContext) -> BenchResult:
    n = 64 if ctx.quick else 256
    rows = []
    metrics: dict[str, float] = {}
    for name, proto, metric in (
        ("tcp", IPPROTO_TCP, "tso_vs_memcpy"),
        ("udp", IPPROTO_UDP, "uso_vs_memcpy"),
    ):
        batch = _supers(n, proto)
        sel = np.ones(n, dtype=np.bool_)
        out, _ = segment(batch, sel, proto)
        nbytes = out.nbytes
        src = np.frombuffer(np.random.default_rng(1).bytes(nbytes), dtype=np.uint8)
        dst = np.empty_like(src)
        ctx.progress(f"{name}: {n} super-packets of 64 KiB -> {len(out)} segments")
        fns: dict[str, Callable[[], object]] = {
            "segment": partial(segment, batch, sel, proto),
            "memcpy": partial(np.copyto, dst, src),
        }
        t = interleaved(fns, ctx.repeat_time() * (2 if ctx.quick else 4))
        seg_bw = nbytes / t["segment"]
        cp_bw = nbytes / t["memcpy"]
        metrics[metric] = seg_bw / cp_bw
        rows.append(
            {
                "proto": name,
                "supers": n,
                "segments": len(out),
                "out_bytes": nbytes,
                "segment_GBps": seg_bw / 1e9,
                "memcpy_GBps": cp_bw / 1e9,
                "ratio": seg_bw / cp_bw,
            }
        )
    return BenchResult(
        metrics,
        targets={"tso_vs_memcpy": (">=", 0.25)},
        rows=rows,
        notes=["ratio = output bandwidth of segmentation / numpy copy bandwidth, same bytes"],
    )


register(Bench("segment", _run, "TCP/UDP segmentation (TSO/USO) vs memcpy"))
