"""The example SA and rules files shipped in examples/ load and work end to end.

The oracle for the encrypt/decrypt round trip is the original capture itself:
what `pcap --rx digest,decrypt` gives back must equal, byte for byte, what went
into `pcap --tx encrypt,digest`. Classification is checked against the
ipaddress-based reference classifier of the classify tests.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from netoffload.cli import main
from netoffload.sa import load_sa_file
from netoffload.soft.rules import ACTIONS, load_classify, parse_dos, read_file
from netoffload.testing.packets import synthetic_flows
from netoffload.wire.pcap import PcapWriter, read_capture
from soft.classify_ref import Pkt, reference

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


def _example_packets(n: int = 400) -> list[Pkt]:
    """Packets that reach every rule and prefix of examples/rules.toml, and miss them."""
    rnd = random.Random(7)
    v4 = ["198.18.0.1", "198.18.200.3", "198.19.7.9", "198.19.1.1", "198.19.0.5", "203.0.113.9"]
    v6 = ["fd00::1", "fd00:1::5", "fd00:1:ffff::1", "fd00:2::1"]
    out = []
    for _ in range(n):
        v = rnd.choice([4, 4, 4, 6])
        pool = v4 if v == 4 else v6
        proto = rnd.choice([6, 6, 17, 17, 1, 50])
        out.append(
            Pkt(
                v,
                rnd.choice(pool),
                rnd.choice(pool),
                proto,
                rnd.choice([22, 23, 1024, 40000]),
                rnd.choice([22, 23, 53, 9999, 10000, 12000, 20000, 20001]),
                rnd.choice([0, 0, 46, 45]),
                proto in (6, 17) and rnd.random() < 0.05,
            )
        )
    return out


def test_classify_with_example_rules_matches_the_reference(tmp_path: Path) -> None:
    """`pcap --rx classify --rules examples/rules.toml` gives every packet the action
    and class id of the reference classifier (tests/soft/classify_ref.py: rules in
    priority order with ipaddress matching, then the longest prefix), and writes
    exactly the packets not dropped."""
    cfg = load_classify(RULES)
    pkts = _example_packets()
    raw = [p.build() for p in pkts]
    want = [reference(cfg, p) for p in pkts]
    # the packets exercise every rule, every prefix and the default
    assert {c for _, c in want} == {2, 7, 99, 3, 4, 5, 0}
    src, out, res = tmp_path / "in.pcap", tmp_path / "out.pcap", tmp_path / "r.jsonl"
    _write(src, raw)
    argv = ["pcap", "--rx", "classify", "--rules", str(RULES), str(src), str(out)]
    assert main([*argv, "--results", str(res)]) == 0
    rows = sorted((json.loads(x) for x in res.read_text().splitlines()), key=lambda r: r["index"])
    names = {v: k for k, v in ACTIONS.items()}
    assert [(r["dos-filter"], r["class_id"]) for r in rows] == [(names[a], c) for a, c in want]
    assert [r["delivered"] for r in rows] == [a != ACTIONS["drop"] for a, _ in want]
    kept = [p for p, (a, _) in zip(raw, want, strict=True) if a != ACTIONS["drop"]]
    assert [r.data for r in read_capture(out)] == kept


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
