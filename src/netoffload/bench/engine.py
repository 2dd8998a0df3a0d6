"""``netoffload bench engine``: what dispatching through the engine costs.

The checksum task (``mode="verify"``) over IPv4/TCP packets of 1400 bytes, run
two ways side by side: called directly (``task.process(batch, sel)``) and
dispatched through an RX ``Engine`` with one stage, policy Never and no
device. Both start every run from the same state (layout unknown, no verdict,
task not done), so the difference is the engine's own work: the policy split,
wanted masks, counters, load monitor, drop accounting and order restoration.

Metrics: ``engine_overhead_ratio_N`` = throughput through the engine / direct,
for batches of N = 1, 32, 256, 1024 packets. Target for 256: >= 0.9.
"""

from __future__ import annotations

import numpy as np

from netoffload.batch import Batch, CsumVerdict
from netoffload.bench import Bench, BenchContext, BenchResult, interleaved, register
from netoffload.bench.checksum import SIZE, workload
from netoffload.engine import Engine
from netoffload.policy import Never
from netoffload.soft import SoftLibrary
from netoffload.soft.checksum import VERIFY, ChecksumTask
from netoffload.tasks import Direction, Task

BATCH_SIZES = (1, 32, 256, 1024)


def _pair(n: int) -> tuple[dict[str, object], Engine]:
    pkts = workload(n, SIZE, seed=n)
    task = ChecksumTask(VERIFY)
    engine = Engine(Direction.RX, Task.CHECKSUM, SoftLibrary({Task.CHECKSUM: task}), Never())
    direct_b = Batch.from_packets(pkts)
    engine_b = Batch.from_packets(pkts)
    sel = np.ones(n, dtype=np.bool_)
    want = np.uint16(Task.CHECKSUM)

    def reset(b: Batch) -> None:
        e = b.ext
        e.xflags[:] = 0
        e.csum_verdict[:] = 0
        e.done[:] = 0
        e.tasks[:] = want

    def direct() -> None:
        reset(direct_b)
        task.process(direct_b, sel)

    def through_engine() -> None:
        reset(engine_b)
        engine.process(engine_b)

    direct()
    through_engine()
    for b in (direct_b, engine_b):
        if not (b.ext.csum_verdict == CsumVerdict.GOOD).all():
            raise RuntimeError("engine bench: workload does not verify")
    return {"direct": direct, "engine": through_engine}, engine


def run(ctx: BenchContext) -> BenchResult:
    metrics: dict[str, float] = {}
    rows = []
    series: list[tuple[float, float]] = []
    for n in BATCH_SIZES:
        fns, engine = _pair(n)
        ctx.progress(f"batches of {n}")
        t = interleaved(fns, ctx.repeat_time() * 4, rounds=7)  # type: ignore[arg-type]
        ratio = t["direct"] / t["engine"]
        metrics[f"engine_overhead_ratio_{n}"] = ratio
        series.append((float(n), ratio))
        rows.append(
            {
                "batch": n,
                "direct_us": t["direct"] * 1e6,
                "engine_us": t["engine"] * 1e6,
                "overhead_us": (t["engine"] - t["direct"]) * 1e6,
                "ratio": ratio,
                "packets_through_engine": engine.packets_out,
            }
        )
    first = "engine_overhead_ratio_256"
    ordered = {first: metrics[first], **{k: v for k, v in metrics.items() if k != first}}
    return BenchResult(
        metrics=ordered,
        targets={"engine_overhead_ratio_256": (">=", 0.9)},
        rows=rows,
        notes=[
            f"checksum verify over IPv4/TCP packets of {SIZE} bytes; RX engine with one stage,"
            " policy Never, no device; ratio = direct time / engine time (throughput ratio)"
        ],
        series={"engine/direct throughput": series},
    )


register(Bench("engine", run, "engine dispatch overhead over calling the software task directly"))
