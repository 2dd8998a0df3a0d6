"""``netoffload bench classify``: classification and Toeplitz RSS throughput.

* ``classify_mpps``: the classification task (parse included) over 64-byte
  IPv4/IPv6 TCP/UDP packets, with a 10,000-prefix longest-prefix table on the
  destination plus 100 rules with prefixes, port ranges and protocols.
* ``rss_mpps``: the Toeplitz hash of IPv4 TCP/UDP 4-tuples with ``rss_batch``
  (tuples gathered from parsed packets, as a steering device would).

Alongside, the same packets' plain ``parse_batch`` time is shown, for scale.
"""

from __future__ import annotations

import ipaddress

import numpy as np

from netoffload.batch import Batch
from netoffload.bench import Bench, BenchContext, BenchResult, interleaved, register
from netoffload.soft.classify import Classifier, ClassifyTask, flow_keys, rss_batch
from netoffload.soft.rules import ClassifyConfig, LpmConfig, Rule
from netoffload.testing.packets import tcp_packet, udp_packet
from netoffload.wire.parse import parse_batch


def make_packets(n: int, seed: int = 1, v6_share: float = 0.0) -> Batch:
    """``n`` 64-byte packets (IPv4 TCP/UDP, some IPv6) with random addresses and ports."""
    rng = np.random.default_rng(seed)
    t4 = tcp_packet(v=4, payload=b"\x00" * 24)
    u4 = udp_packet(v=4, payload=b"\x00" * 36)
    t6 = tcp_packet(v=6, payload=b"\x00" * 4)
    u6 = udp_packet(v=6, payload=b"\x00" * 16)
    kinds = rng.integers(0, 2, n) + np.where(rng.random(n) < v6_share, 2, 0)
    tmpl = [t4, u4, t6, u6]
    b = Batch.from_packets([tmpl[k] for k in kinds.tolist()])
    m = b.matrix()
    st = int(b.start[0] - b.slot_lo[0])
    v4 = kinds < 2
    # IPv4 src in 198.18.0.0/15, dst anywhere in 10/8, 198.18/15 and random space
    src = (0xC6120000 + rng.integers(0, 1 << 17, n)).astype(np.uint32)
    dst = rng.integers(0, 1 << 32, n, dtype=np.uint64).astype(np.uint32)
    srcb = src.astype(">u4").view(np.uint8).reshape(n, 4)
    dstb = dst.astype(">u4").view(np.uint8).reshape(n, 4)
    r4 = np.flatnonzero(v4)
    m[r4[:, None], st + 12 + np.arange(4)] = srcb[r4]
    m[r4[:, None], st + 16 + np.arange(4)] = dstb[r4]
    r6 = np.flatnonzero(~v4)
    m[r6[:, None], st + 24 + 12 + np.arange(4)] = dstb[r6]
    l4 = np.where(v4, 20, 40) + st
    ports = rng.integers(0, 65536, (n, 2)).astype(">u2").view(np.uint8).reshape(n, 4)
    rows = np.arange(n)[:, None]
    m[rows, l4[:, None] + np.arange(4)] = ports
    return b


def make_config(n_prefixes: int = 10_000, n_rules: int = 100, seed: int = 2) -> ClassifyConfig:
    rng = np.random.default_rng(seed)
    pfx: dict[ipaddress.IPv4Network, int] = {}
    while len(pfx) < n_prefixes:
        ln = int(rng.integers(8, 33))
        a = int(rng.integers(0, 1 << 32))
        pfx[ipaddress.IPv4Network((a, ln), strict=False)] = len(pfx) % 1000
    rules = []
    for i in range(n_rules):
        a = 0xC6120000 + int(rng.integers(0, 1 << 17))
        lo = int(rng.integers(0, 60000))
        rules.append(
            Rule(
                name=f"r{i}",
                priority=i,
                src=ipaddress.IPv4Network((a, int(rng.integers(16, 29))), strict=False),
                proto=(6, 6) if i % 2 else (17, 17),
                dport=(lo, lo + int(rng.integers(0, 5000))),
                sport=(1024, 65535) if i % 3 == 0 else None,
                action=i % 3,
                class_id=1000 + i,
            )
        )
    return ClassifyConfig(
        rules=tuple(rules),
        lpm=LpmConfig("dst", None, tuple((p, c, 0) for p, c in pfx.items())),
    )


def _run(ctx: BenchContext) -> BenchResult:
    n = 1 << 15 if ctx.quick else 1 << 16
    ctx.progress(f"building 10,000-prefix table, 100 rules, {n} packets")
    cfg = make_config()
    task = ClassifyTask(cfg)
    batch = make_packets(n, v6_share=0.1)
    sel = np.ones(n, dtype=np.bool_)
    b4 = make_packets(n, seed=3)
    parse_batch(b4)
    cl: Classifier = task.classifier
    k4 = flow_keys(b4, np.arange(n, dtype=np.int64))

    def classify() -> None:
        b = Batch(
            batch.buf,
            batch.start,
            batch.length,
            batch.slot_lo,
            batch.slot_hi,
            batch.ext.copy(),
            batch.stride,
        )
        task.process(b, sel)

    def parse_only() -> None:
        b = Batch(
            batch.buf,
            batch.start,
            batch.length,
            batch.slot_lo,
            batch.slot_hi,
            batch.ext.copy(),
            batch.stride,
        )
        parse_batch(b)

    allrows = np.arange(n, dtype=np.int64)

    def rss() -> None:
        rss_batch(b4, allrows, cl.rss)

    def rss_hash_only() -> None:
        cl.rss_hash(k4)

    ctx.progress("timing")
    t = interleaved(
        {"classify": classify, "parse": parse_only, "rss": rss, "rss_hash": rss_hash_only},
        budget_s=ctx.repeat_time() * 15,
        rounds=5,
    )
    mpps = {k: n / v / 1e6 for k, v in t.items()}
    rows = [
        {
            "what": "classify task (parse + rules + LPM + RSS)",
            "packets": n,
            "us_per_batch": t["classify"] * 1e6,
            "mpps": mpps["classify"],
        },
        {
            "what": "parse_batch alone",
            "packets": n,
            "us_per_batch": t["parse"] * 1e6,
            "mpps": mpps["parse"],
        },
        {
            "what": "RSS, IPv4 4-tuple (gather + hash)",
            "packets": n,
            "us_per_batch": t["rss"] * 1e6,
            "mpps": mpps["rss"],
        },
        {
            "what": "RSS, hash of gathered tuples",
            "packets": n,
            "us_per_batch": t["rss_hash"] * 1e6,
            "mpps": mpps["rss_hash"],
        },
    ]
    return BenchResult(
        metrics={"classify_mpps": mpps["classify"], "rss_mpps": mpps["rss"]},
        targets={"classify_mpps": (">=", 1.0), "rss_mpps": (">=", 5.0)},
        rows=rows,
        notes=[f"batch of {n} 64-byte packets; classify includes parsing and the RSS hash"],
    )


register(Bench("classify", _run, "classification (rules + 10k-prefix LPM) and Toeplitz RSS"))
