"""The classify and filter benchmarks time what their metrics name.

No timing is asserted: the timer is replaced (``FakeTimer``) so that each
metric is checked against its definition (packets of the timed batch over the
timed seconds), and the work timed is checked for what it claims — the
classification workload against the reference classifier, the filter's runs
by its packet counters.
"""

from __future__ import annotations

import ast
import ipaddress
import struct

import numpy as np
import pytest
from bench_helpers import FakeTimer, verdicts_follow_targets

from netoffload.bench import BenchContext
from netoffload.bench import classify as classify_bench
from netoffload.bench import filter as filter_bench
from netoffload.bench.classify import make_config, make_packets
from netoffload.bench.filter import N_SOURCES
from netoffload.bench.filter import make_packets as filter_packets
from netoffload.soft.classify import ClassifyTask, flow_keys
from soft.classify_ref import Pkt, reference

QUICK_N = 1 << 15


def _pkt(raw: bytes) -> Pkt:
    """The reference's view of one benchmark packet (no options, no extension headers)."""
    v = raw[0] >> 4
    if v == 4:
        src, dst, proto, l4 = raw[12:16], raw[16:20], raw[9], 20
    else:
        src, dst, proto, l4 = raw[8:24], raw[24:40], raw[6], 40
    sport, dport = struct.unpack_from("!HH", raw, l4)
    a = str(ipaddress.ip_address(src))
    b = str(ipaddress.ip_address(dst))
    return Pkt(v, a, b, proto, sport, dport, 0)


def test_classify_workload_is_as_named_and_classified_right() -> None:
    cfg = make_config()
    assert cfg.lpm is not None and len(cfg.lpm.prefixes) == 10_000
    assert len(cfg.rules) == 100 and all(r.dport is not None for r in cfg.rules)
    b = make_packets(64, v6_share=0.0)
    assert set(b.length.tolist()) == {64}
    k = flow_keys(b, np.arange(64))
    assert (k.ver == 4).all() and k.has_ports.all()
    # what the timed task computes, on a sample: the reference classifier's answers,
    # with rules, prefixes and the default all taking part
    n = 120
    batch = make_packets(4096, v6_share=0.1)
    rows = np.random.default_rng(4).choice(4096, n, replace=False)
    sample = batch.take(rows)
    ClassifyTask(cfg).process(sample, np.ones(n, bool))
    want = [reference(cfg, _pkt(p)) for p in sample.packets()]
    assert sample.ext.class_id.tolist() == [c for _, c in want]
    kinds = {"rule" if c >= 1000 else "prefix" for _, c in want}
    assert kinds == {"rule", "prefix"}


def test_classify_metrics_are_packets_per_timed_second(monkeypatch: pytest.MonkeyPatch) -> None:
    timer = FakeTimer({"classify": 2.0, "parse": 1.0, "rss": 0.5, "rss_hash": 0.25})
    monkeypatch.setattr(classify_bench, "interleaved", timer)
    res = classify_bench._run(BenchContext(quick=True))
    assert res.metrics == {
        "classify_mpps": pytest.approx(QUICK_N / 2.0 / 1e6),
        "rss_mpps": pytest.approx(QUICK_N / 0.5 / 1e6),
    }
    assert set(timer.fns) == {"classify", "parse", "rss", "rss_hash"}
    verdicts_follow_targets(res)


def test_filter_workload_has_many_sources() -> None:
    b = filter_packets(4096, 1, seed=0)
    k = flow_keys(b, np.arange(4096))
    assert (k.proto == 50).all()
    assert len({bytes(r) for r in k.src}) > 3000
    assert N_SOURCES == 100_000


def test_filter_metric_and_what_the_timed_run_filters(monkeypatch: pytest.MonkeyPatch) -> None:
    timer = FakeTimer({"filter": 4.0, "parse": 1.0})
    monkeypatch.setattr(filter_bench, "interleaved", timer)
    res = filter_bench._run(BenchContext(quick=True))
    assert res.metrics == {"filter_mpps": pytest.approx(QUICK_N / 4.0 / 1e6)}
    verdicts_follow_targets(res)
    # the warm-up saw every source once, the one timed run the whole batch
    counters = ast.literal_eval(res.notes[-1].removeprefix("counters: "))
    assert counters["packets"] == N_SOURCES + QUICK_N
