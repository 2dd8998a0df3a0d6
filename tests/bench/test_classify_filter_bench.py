"""The classify and filter benchmarks run and report the metrics the issue names.

Only the shape of the result is checked (names, targets, finite positive
figures) and that the benchmark workloads are what they claim — never a timing.
"""

from __future__ import annotations

import math

import numpy as np

from netoffload.bench import BenchContext, get
from netoffload.bench.classify import make_config, make_packets
from netoffload.bench.filter import N_SOURCES
from netoffload.bench.filter import make_packets as filter_packets
from netoffload.soft.classify import flow_keys


def test_classify_workload_is_as_named() -> None:
    cfg = make_config()
    assert cfg.lpm is not None and len(cfg.lpm.prefixes) == 10_000
    assert len(cfg.rules) == 100 and all(r.dport is not None for r in cfg.rules)
    b = make_packets(64, v6_share=0.0)
    assert set(b.length.tolist()) == {64}
    k = flow_keys(b, np.arange(64))
    assert (k.ver == 4).all() and k.has_ports.all()


def test_filter_workload_has_many_sources() -> None:
    b = filter_packets(4096, 1, seed=0)
    k = flow_keys(b, np.arange(4096))
    assert (k.proto == 50).all()
    assert len({bytes(r) for r in k.src}) > 3000
    assert N_SOURCES == 100_000


def test_bench_metrics() -> None:
    for name, metrics in (
        ("classify", ("classify_mpps", "rss_mpps")),
        ("filter", ("filter_mpps",)),
    ):
        res = get(name).run(BenchContext(quick=True))
        for m in metrics:
            assert m in res.targets and res.targets[m][0] == ">="
            assert math.isfinite(res.metrics[m]) and res.metrics[m] > 0
