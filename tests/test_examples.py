"""The example SA and rules files shipped in examples/ load and work end to end.

The oracle for the encrypt/decrypt round trip is the original capture itself:
what `pcap --rx digest,decrypt` gives back must equal, byte for byte, what went
into `pcap --tx encrypt,digest`. Classification is checked against the
ipaddress-based reference classifier of the classify tests.
"""

from __future__ import annotations

import json
from pathlib import Path

from netoffload.cli import main
from netoffload.sa import load_sa_file
from netoffload.soft.rules import load_classify, parse_dos, read_file
from netoffload.testing.packets import synthetic_flows
from netoffload.wire.pcap import PcapWriter, read_capture

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SA = EXAMPLES / "sa.toml"
RULES = EXAMPLES / "rules.toml"


def _write(path: Path, packets: list[bytes]) -> None:
    with path.open("wb") as f:
        w = PcapWriter(f, 101)
        for i, p in enumerate(packets):
            w.write(p, ts_ns=i * 1000)


def test_example_files_load() -> None:
    table = load_sa_file(SA)
    assert len(table.sas) == 2
    cls = load_classify(RULES)
    assert [r.name for r in cls.rules] == ["ssh", "media", "no-telnet"]
    dos = parse_dos(read_file(RULES)["dos"])
    assert dos.replay_window == 1024


def test_encrypt_then_decrypt_gives_the_capture_back(tmp_path: Path) -> None:
    pkts = synthetic_flows(300, sizes=(60, 576, 1400), seed=3)
    src, enc, dec = tmp_path / "in.pcap", tmp_path / "enc.pcap", tmp_path / "dec.pcap"
    _write(src, pkts)
    assert main(["pcap", "--tx", "encrypt,digest", "--sa", str(SA), str(src), str(enc)]) == 0
    encrypted = [r.data for r in read_capture(enc)]
    assert len(encrypted) == len(pkts)
    assert all(e[9] in (50, 17) or e[6] in (50, 17) for e in encrypted)  # ESP or ESP-in-UDP
    assert not any(p[-32:] in e for p, e in zip(pkts, encrypted, strict=True))
    res = tmp_path / "res.jsonl"
    rc = main(
        [
            "pcap",
            "--rx",
            "digest,decrypt",
            "--sa",
            str(SA),
            str(enc),
            str(dec),
            "--results",
            str(res),
        ]
    )
    assert rc == 0
    assert [r.data for r in read_capture(dec)] == pkts
    lines = [json.loads(x) for x in res.read_text().splitlines()]
    assert len(lines) == len(pkts)


def test_classify_with_example_rules(tmp_path: Path) -> None:
    from scapy.layers.inet import IP, TCP, UDP

    pkts = [
        bytes(IP(src="198.18.0.1", dst="198.19.7.9") / TCP(dport=22)),
        bytes(IP(src="198.18.0.1", dst="198.19.1.1") / TCP(dport=23)),
        bytes(IP(src="198.18.0.1", dst="198.19.7.9", tos=46 << 2) / UDP(dport=12000)),
        bytes(IP(src="198.18.0.1", dst="198.19.7.9") / UDP(dport=53)),
        bytes(IP(src="198.18.0.1", dst="198.19.200.1") / UDP(dport=53)),
    ]
    src, out, res = tmp_path / "in.pcap", tmp_path / "out.pcap", tmp_path / "r.jsonl"
    _write(src, pkts)
    argv = ["pcap", "--rx", "classify", "--rules", str(RULES), str(src), str(out)]
    assert main([*argv, "--results", str(res)]) == 0
    rows = [json.loads(x) for x in res.read_text().splitlines()]
    by_index = {r["index"]: r for r in rows}
    # ssh rule, telnet dropped by its rule, media rule (DSCP 46), LPM /24 beats /16, LPM /16
    assert [by_index[i]["class_id"] for i in range(5)] == [2, 99, 7, 4, 3]
    assert [r.data for r in read_capture(out)] == [pkts[0], *pkts[2:]]


def test_example_policy_file_loads_and_runs_the_demo(tmp_path: Path) -> None:
    from netoffload.policy import Adaptive, Failover
    from netoffload.policy.config import load_policy_file

    p = load_policy_file(EXAMPLES / "policy.toml")()
    assert isinstance(p, Failover) and isinstance(p.inner, Adaptive)
    assert p.inner.bounds == (0.75, 1.33) and p.max_backoff == 30.0
    out = tmp_path / "r.json"
    argv = ["demo", "--in-process", "--bytes", "200k", "--packets", "200", "--json", str(out)]
    assert main([*argv, "--policy-file", str(EXAMPLES / "policy.toml")]) == 0
    assert json.loads(out.read_text())["policy"] == "adaptive+failover"
