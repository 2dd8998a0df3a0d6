"""``netoffload pcap --rx classify|dos-filter --rules FILE``: per-packet results from a capture.

Captures are written by scapy; the expected class ids come from the reference
classifier and the RSS specification's verification vectors.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.utils import PcapReader, wrpcap

from netoffload.cli import main

RULES = """
[classify]
default_class = 9

[[classify.rule]]
name = "dns"
proto = "udp"
dport = 53
class = 1

[[classify.rule]]
name = "block"
src = "198.18.66.0/24"
action = "drop"
class = 2

[classify.lpm]
field = "dst"
prefixes = [ { prefix = "161.142.0.0/16", class = 5 } ]

[dos.rate]
rate = 1.0
burst = 2

[dos.drop]
src = ["198.18.77.0/24"]
"""


def _pkts() -> list[object]:
    e = Ether(dst="02:00:00:00:00:02", src="02:00:00:00:00:01")
    return [
        e / IP(src="198.18.0.1", dst="198.19.0.1") / UDP(sport=1000, dport=53),
        e / IP(src="198.18.66.1", dst="198.19.0.1") / TCP(sport=1000, dport=80),
        # the RSS specification's first IPv4 vector: 4-tuple hash 0x51ccc178
        e / IP(src="66.9.149.187", dst="161.142.100.80") / TCP(sport=2794, dport=1766),
        e / IP(src="198.18.0.9", dst="198.19.0.1") / TCP(sport=1, dport=2),
    ]


def _results(path: Path) -> list[dict[str, object]]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_classify_results(tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES)
    cap = tmp_path / "in.pcap"
    wrpcap(str(cap), _pkts())
    out, res = tmp_path / "out.pcap", tmp_path / "res.jsonl"
    rc = main(
        [
            "pcap",
            "--rx",
            "classify",
            "--rules",
            str(rules),
            str(cap),
            str(out),
            "--results",
            str(res),
        ]
    )
    assert rc == 0
    r = _results(res)
    assert [x["class_id"] for x in r] == [1, 2, 5, 9]
    assert [x["dos-filter"] for x in r] == ["pass", "drop", "pass", "pass"]
    assert r[1]["dos-filter-reason"] == "rule_drop" and r[1]["delivered"] is False
    assert r[2]["rss_hash"] == 0x51CCC178
    assert len(list(PcapReader(str(out)))) == 3


def test_dos_filter_results_use_capture_time(tmp_path: Path) -> None:
    rules = tmp_path / "rules.json"
    rules.write_text(
        json.dumps(
            {"dos": {"rate": {"rate": 1.0, "burst": 2}, "drop": {"src": ["198.18.77.0/24"]}}}
        )
    )
    e = Ether()
    pk = []
    for i in range(4):
        p = e / IP(src="198.18.0.1", dst="198.19.0.1") / UDP(sport=1, dport=2)
        p.time = 1000.0 + i * 0.01
        pk.append(p)
    q = e / IP(src="198.18.77.5", dst="198.19.0.1") / UDP(sport=1, dport=2)
    q.time = 1000.05
    pk.append(q)
    cap = tmp_path / "in.pcap"
    wrpcap(str(cap), pk)
    out, res = tmp_path / "out.pcap", tmp_path / "res.jsonl"
    assert (
        main(
            [
                "pcap",
                "--rx",
                "dos-filter",
                "--rules",
                str(rules),
                str(cap),
                str(out),
                "--results",
                str(res),
            ]
        )
        == 0
    )
    r = _results(res)
    assert [x["dos-filter-reason"] for x in r] == [
        "none",
        "none",
        "rate_limit",
        "rate_limit",
        "drop_list",
    ]


@pytest.mark.parametrize(
    ("text", "msg"),
    [
        ('[[classify.rule]]\ndport = "x"\n', "rule 1: dport: bad value"),
        ("[dos.replay]\nwindow = 5000\n", "window: 5000 out of range"),
    ],
)
def test_bad_rules_file_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, msg: str
) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(text)
    cap = tmp_path / "in.pcap"
    wrpcap(str(cap), _pkts())
    task = "classify" if "classify" in text else "dos-filter"
    rc = main(["pcap", "--rx", task, "--rules", str(rules), str(cap), str(tmp_path / "o.pcap")])
    assert rc == 2
    err = capsys.readouterr().err
    assert msg in err and "rules.toml" in err and err.count("\n") == 1


def test_rules_flag_needed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cap = tmp_path / "in.pcap"
    wrpcap(str(cap), _pkts())
    assert main(["pcap", "--rx", "classify", str(cap), str(tmp_path / "o.pcap")]) == 2
    assert "needs --rules FILE" in capsys.readouterr().err
