"""Compiled cBPF, run in the interpreter, against the software classifier and DoS filter."""

from __future__ import annotations

import ipaddress

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from netoffload.batch import Batch, FilterVerdict
from netoffload.bpf import BASE_ETHER, BASE_IP, BASE_NET, CompileError, compile_filter, run
from netoffload.bpf.compiler import sock_fprog, uncompiled
from netoffload.bpf.interp import BpfError, check
from netoffload.errors import ConfigError
from netoffload.soft.classify import make_classify
from netoffload.soft.dos import make_dos
from netoffload.soft.rules import ClassifyConfig, DosConfig, LpmConfig, Rule, parse_dos
from netoffload.testing.packets import udp_packet
from netoffload.wire.ethernet import ETH_P_IP, ETH_P_IPV6, Ethernet
from netoffload.wire.ipv4 import IPv4
from soft.classify_ref import Pkt, configs, packets


def _frame(p: bytes) -> bytes:
    return Ethernet(ethertype=ETH_P_IP if p[0] >> 4 == 4 else ETH_P_IPV6).emit() + p


def _soft(cfg: ClassifyConfig, raw: list[bytes]) -> tuple[list[bool], list[int]]:
    b = Batch.from_packets(raw)
    make_classify(cfg).process(b, np.ones(len(raw), bool))
    return (b.ext.filter_verdict != FilterVerdict.DROP).tolist(), b.ext.class_id.tolist()


@given(configs(), st.lists(packets(), min_size=1, max_size=30))
def test_verdicts_equal_software(cfg: ClassifyConfig, pkts: list[Pkt]) -> None:
    raw = [p.build() for p in pkts]
    keep, classes = _soft(cfg, raw)
    prog_ip = compile_filter(cfg, base=BASE_IP)
    prog_eth = compile_filter(cfg, base=BASE_ETHER)
    prog_net = compile_filter(cfg, base=BASE_NET)
    prog_cls = compile_filter(cfg, base=BASE_IP, mode="class")
    for i, p in enumerate(raw):
        f = _frame(p)
        assert (run(prog_ip, p) != 0) == keep[i]
        assert (run(prog_eth, f) != 0) == keep[i]
        assert (run(prog_net, f, net_off=14) != 0) == keep[i]
        assert run(prog_cls, p) == classes[i]


@given(st.lists(packets(), min_size=1, max_size=30), st.data())
def test_dos_stateless_equal_software(pkts: list[Pkt], data: st.DataObject) -> None:
    size = {
        "min": data.draw(st.sampled_from([0, 40, 60])),
        "max": data.draw(st.sampled_from([60, 80, 65535])),
    }
    if size["min"] > size["max"]:
        size["min"] = 0
    doc: dict[str, object] = {
        "size": size,
        "fragments": {
            "drop_all": data.draw(st.booleans()),
            "min_first": data.draw(st.sampled_from([0, 8, 30])),
        },
        "drop": {
            "src": data.draw(st.sampled_from([[], ["198.18.0.0/24"], ["fd00::/120"]])),
            "dst": data.draw(st.sampled_from([[], ["198.19.0.0/16", "fd12::/16"]])),
        },
    }
    cfg = parse_dos(doc)
    raw = [p.build() for p in pkts]
    body = b"\x00" * 40
    raw += [  # fragments of all kinds
        IPv4("198.18.0.1", "198.19.0.1", 6, flags_frag=1).emit(len(body)) + body,
        IPv4("198.18.0.1", "198.19.0.1", 17, flags_frag=0x2000).emit(8) + b"\x00" * 8,
        IPv4("198.18.0.1", "198.19.0.1", 17, flags_frag=8189).emit(len(body)) + body,
        IPv4("198.18.0.1", "198.19.0.1", 17, flags_frag=0x2000).emit(len(body)) + body,
    ]
    b = Batch.from_packets(raw)
    make_dos(cfg).process(b, np.ones(len(raw), bool), now=0.0)
    keep = (b.ext.filter_verdict != FilterVerdict.DROP).tolist()
    prog = compile_filter(cfg, base=BASE_IP)
    assert [run(prog, p) != 0 for p in raw] == keep


def test_non_ip_and_vlan_get_the_default() -> None:
    cfg = ClassifyConfig(default_action=1)
    prog = compile_filter(cfg, base=BASE_ETHER)
    arp = Ethernet(ethertype=0x0806).emit() + b"\x00" * 28
    assert run(prog, arp) == 0
    prog = compile_filter(ClassifyConfig(), base=BASE_ETHER)
    assert run(prog, arp) != 0


def test_too_big_for_the_kernel() -> None:
    nets = [(ipaddress.ip_network(f"198.{i // 256}.{i % 256}.0/24"), i, 0) for i in range(2000)]
    cfg = ClassifyConfig(lpm=LpmConfig("dst", None, tuple(nets)))
    with pytest.raises(CompileError, match="4096"):
        compile_filter(cfg)
    small = ClassifyConfig(lpm=LpmConfig("dst", None, tuple(nets[:500])))
    assert len(compile_filter(small)) <= 4096


def test_checker_and_fprog() -> None:
    with pytest.raises(BpfError):
        check([])
    with pytest.raises(BpfError, match="jump out"):
        check([(0x15, 5, 0, 1), (0x06, 0, 0, 0)])
    with pytest.raises(BpfError, match="last instruction"):
        check([(0x00, 0, 0, 1)])
    prog = compile_filter(ClassifyConfig())
    fp = sock_fprog(prog)
    assert len(fp) == len(prog) and len(fp.bytes) == 16
    assert uncompiled(DosConfig()) == []
    assert "replay: anti-replay windows" in uncompiled(parse_dos({"replay": {"window": 64}}))


_insn = st.tuples(
    st.sampled_from(
        [
            0x00,
            0x20,
            0x28,
            0x30,
            0x40,
            0x48,
            0x50,
            0x60,
            0x80,
            0x01,
            0x61,
            0xB1,
            0x02,
            0x03,
            0x04,
            0x14,
            0x24,
            0x34,
            0x3C,
            0x44,
            0x54,
            0x64,
            0x74,
            0x84,
            0x94,
            0x9C,
            0xA4,
            0x05,
            0x15,
            0x1D,
            0x25,
            0x35,
            0x45,
            0x06,
            0x16,
            0x07,
            0x87,
            0xFF,
        ]
    ),
    st.integers(0, 3),
    st.integers(0, 3),
    st.one_of(st.integers(0, 70), st.sampled_from([0xFFF00000, 0xFFF00001, 0xFFFFF000, 2**32 - 1])),
)


@given(st.lists(_insn, min_size=0, max_size=12), st.binary(max_size=64))
def test_interpreter_fuzz_never_raises_unexpectedly(
    prog: list[tuple[int, int, int, int]], pkt: bytes
) -> None:
    try:
        check(prog)
    except BpfError:
        return
    v = run(prog, pkt, net_off=min(14, len(pkt)), checked=True)
    assert 0 <= v <= 0xFFFFFFFF


def test_compile_bad_input_and_rule_list() -> None:
    with pytest.raises(ConfigError, match="compile_filter wants"):
        compile_filter({"rule": []})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="base"):
        compile_filter([], base="vlan")
    r = Rule(name="x", proto=(17, 17), dport=(53, 53), action=1)
    prog = compile_filter([r], base=BASE_IP)
    assert run(prog, udp_packet(dport=53)) == 0
    assert run(prog, udp_packet(dport=54)) != 0
