"""``netoffload demo``: small runs, the report, the wire judged by scapy, and a damaged wire."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import scapy.all as S

from netoffload.batch import Batch
from netoffload.cli import main
from netoffload.demo import SEED, count_intact
from netoffload.devices.loopback import LoopbackEnd
from netoffload.testing.packets import synthetic_flows

N = 300


def run_demo(tmp_path: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    out = tmp_path / "report.json"
    rc = main(["demo", "--packets", str(N), "--batch", "64", "--json", str(out), *extra])
    return rc, json.loads(out.read_text())


@pytest.mark.parametrize("policy", ["always", "never"])
def test_demo_delivers_everything_intact(tmp_path: Path, policy: str) -> None:
    rc, rep = run_demo(tmp_path, "--policy", policy)
    assert rc == 0
    assert rep["sent"] == rep["delivered"] == rep["intact"] == N and rep["ok"]
    assert rep["tasks"]["tx"][0] == "checksum" and "checksum" in rep["tasks"]["rx"]
    for side in ("tx", "rx"):
        c = rep[side]["tasks"]["checksum"]
        assert c["offloaded"] + c["software"] == N
        assert c["dropped"] == 0 and c["errors"] == 0
        if policy == "always":
            assert c["offloaded"] == N  # the loopback end did it
        else:
            assert c["software"] == N
    assert rep["wire"]["loop-b"]["received"] == N


def test_wire_carries_correct_checksums(tmp_path: Path, monkeypatch: Any) -> None:
    """What crosses the wire has every checksum right (scapy's view) and equals the
    original synthetic packets, though the demo blanked their checksums before TX."""
    seen: list[bytes] = []
    real_send = LoopbackEnd.send

    def spy(self: LoopbackEnd, batch: Batch) -> int:
        seen.extend(batch.packets())
        return real_send(self, batch)

    monkeypatch.setattr(LoopbackEnd, "send", spy)
    rc, _ = run_demo(tmp_path)
    assert rc == 0
    assert seen == synthetic_flows(N, seed=SEED)
    for raw in seen[:60]:
        p = S.IP(raw) if raw[0] >> 4 == 4 else S.IPv6(raw)
        for layer in (S.IP, S.TCP, S.UDP):
            if layer in p:
                q = p.copy()
                q[layer].chksum = None
                assert p[layer].chksum == type(p)(bytes(q))[layer].chksum


def test_damaged_wire_is_not_intact(tmp_path: Path, monkeypatch: Any, capsys: Any) -> None:
    real_send = LoopbackEnd.send
    hit = {"done": False}

    def damage(self: LoopbackEnd, batch: Batch) -> int:
        if not hit["done"] and len(batch) > 3:
            batch.buf[batch.start[3] + batch.length[3] - 1] ^= 0xFF  # last payload byte
            hit["done"] = True
        return real_send(self, batch)

    monkeypatch.setattr(LoopbackEnd, "send", damage)
    rc, rep = run_demo(tmp_path)
    assert rc == 1
    assert rep["intact"] == N - 1 and not rep["ok"]
    assert rep["rx"]["tasks"]["checksum"]["reasons"] == {"bad_checksum": 1}
    assert "delivered intact: 299 of 300" in capsys.readouterr().out


def test_count_intact() -> None:
    sent = synthetic_flows(40, seed=3)
    assert count_intact(sent, sent) == 40
    assert count_intact(sent, sent[:10] + sent[11:]) == 39  # a loss costs only itself
    bad = bytearray(sent[5])
    bad[-1] ^= 1
    assert count_intact(sent, [*sent[:5], bytes(bad), *sent[6:]]) < 40
    assert count_intact(sent, []) == 0


@pytest.mark.parametrize("args", [["--packets", "0"], ["--batch", "0"], ["--policy", "nope"]])
def test_bad_arguments(args: list[str], capsys: Any) -> None:
    assert main(["demo", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("netoffload: error:")
