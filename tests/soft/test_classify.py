"""Classification task against a per-packet reference classifier (ipaddress-based)."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from netoffload.batch import Batch, FilterVerdict, Reason
from netoffload.soft import make_task
from netoffload.soft.classify import flow_keys, make_classify
from netoffload.soft.rules import ClassifyConfig
from netoffload.tasks import Task
from netoffload.testing.packets import tcp_packet
from soft.classify_ref import Pkt, configs, packets, reference


@given(configs(), st.lists(packets(), min_size=1, max_size=40))
def test_matches_reference(cfg: ClassifyConfig, pkts: list[Pkt]) -> None:
    b = Batch.from_packets([p.build() for p in pkts])
    task = make_classify(cfg)
    task.process(b, np.ones(len(pkts), bool))
    want = [reference(cfg, p) for p in pkts]
    assert b.ext.error.tolist() == [0] * len(pkts)
    assert b.ext.class_id.tolist() == [c for _, c in want]
    assert b.ext.filter_verdict.tolist() == [a for a, _ in want]
    assert b.ext.filter_reason.tolist() == [Reason.RULE_DROP if a == 1 else 0 for a, _ in want]


@given(st.lists(packets(), min_size=1, max_size=20), st.data())
def test_unselected_untouched(pkts: list[Pkt], data: st.DataObject) -> None:
    b = Batch.from_packets([p.build() for p in pkts])
    sel = np.array(data.draw(st.lists(st.booleans(), min_size=len(pkts), max_size=len(pkts))))
    before = b.ext.copy()
    raw = b.packets()
    make_task(Task.CLASSIFY, rules={"default_class": 5, "default_action": "mark"}).process(b, sel)
    after = b.ext
    assert b.packets() == raw
    for f in ("class_id", "filter_verdict", "rss_hash"):
        assert np.array_equal(getattr(after, f)[~sel], getattr(before, f)[~sel])
    assert (after.class_id[sel] == 5).all()
    assert (after.filter_verdict[sel] == FilterVerdict.MARK).all()


@given(st.lists(st.binary(max_size=80), min_size=1, max_size=30))
def test_corrupt_packets_never_raise(blobs: list[bytes]) -> None:
    good = tcp_packet()
    b = Batch.from_packets([*blobs, good])
    make_classify({"rule": [{"dport": 5201, "class": 9}]}).process(b, np.ones(len(b), bool))
    assert b.ext.class_id[-1] == 9
    assert b.ext.error[-1] == 0
    bad = b.ext.error[:-1] != 0
    assert ((b.ext.class_id[:-1] == -1) | ~bad).all()


def test_fragment_and_dscp() -> None:
    pkts = [
        Pkt(4, "198.18.0.1", "198.18.0.2", 6, 1, 80, 46),
        Pkt(4, "198.18.0.1", "198.18.0.2", 6, 1, 80, 46, frag=True),
        Pkt(6, "fd00::1", "fd00::2", 17, 1, 80, 10, frag=True),
        Pkt(6, "fd00::1", "fd00::2", 17, 1, 80, 10),
    ]
    cfg = {
        "rule": [
            {"dport": 80, "dscp": 46, "class": 1},
            {"dport": [0, 100], "class": 2},
            {"proto": "udp", "dscp": [8, 12], "class": 3},
        ]
    }
    b = Batch.from_packets([p.build() for p in pkts])
    make_classify(cfg).process(b, np.ones(4, bool))
    assert b.ext.class_id.tolist() == [1, 0, 3, 2]


def _mapped(addr: bytes) -> list[int]:
    return list(b"\0" * 10 + b"\xff\xff" + addr) if len(addr) == 4 else list(addr)


@given(
    st.lists(packets(), min_size=1, max_size=10),
    st.lists(st.tuples(st.integers(0, 9), st.integers(0, 80), st.integers(0, 255)), max_size=10),
    st.lists(st.binary(max_size=60), max_size=6),
    st.data(),
)
def test_flow_keys_are_the_header_bytes(
    pkts: list[Pkt],
    edits: list[tuple[int, int, int]],
    junk: list[bytes],
    data: st.DataObject,
) -> None:
    """``flow_keys`` fields, byte by byte from the packet at the parsed offsets, also
    for damaged packets (bytes changed, cut short) and garbage."""
    raws = [bytearray(p.build()) for p in pkts]
    for i, pos, val in edits:
        r = raws[i % len(raws)]
        if pos < len(r):
            r[pos] = val
        elif r:
            del r[pos % len(r) :]
    allp = [bytes(r) for r in raws] + [bytes([0x45]) + j for j in junk] + junk
    b = Batch.from_packets(allp)
    idx = np.array(
        sorted(data.draw(st.sets(st.integers(0, len(allp) - 1), min_size=1))), dtype=np.int64
    )
    k = flow_keys(b, idx)
    for j, i in enumerate(idx.tolist()):
        raw = allp[i]
        if k.ver[j] == 0:
            assert k.sport[j] == -1 and not k.has_ports[j]
            continue
        l3 = int(b.ext.l3_off[i])
        v = raw[l3] >> 4
        assert k.ver[j] == v and k.ip_len[j] == len(raw) - l3
        if v == 4:
            assert k.src[j].tolist() == _mapped(raw[l3 + 12 : l3 + 16])
            assert k.dst[j].tolist() == _mapped(raw[l3 + 16 : l3 + 20])
            assert k.dscp[j] == raw[l3 + 1] >> 2
            fw = int.from_bytes(raw[l3 + 6 : l3 + 8], "big")
            assert k.frag[j] == ((fw & 0x3FFF) != 0)
            assert k.frag_off[j] == (fw & 0x1FFF) * 8
            assert k.more_frags[j] == ((fw & 0x2000) != 0)
        else:
            assert k.src[j].tolist() == list(raw[l3 + 8 : l3 + 24])
            assert k.dst[j].tolist() == list(raw[l3 + 24 : l3 + 40])
            assert k.dscp[j] == (((raw[l3] & 0xF) << 4) | (raw[l3 + 1] >> 4)) >> 2
        l4 = int(k.l4_off[j] - b.start[i])
        if k.has_ports[j]:
            assert k.sport[j] == int.from_bytes(raw[l4 : l4 + 2], "big")
            assert k.dport[j] == int.from_bytes(raw[l4 + 2 : l4 + 4], "big")
            if k.proto[j] == 6 and len(raw) - l4 >= 14:
                assert k.tcp_flags[j] == raw[l4 + 13]
        else:
            assert k.sport[j] == -1 and k.dport[j] == -1
