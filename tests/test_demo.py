"""``netoffload demo``: small runs, the report, the wire judged by scapy, and a damaged wire."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import scapy.all as S

from netoffload import demo, soft
from netoffload.batch import Batch
from netoffload.cli import main
from netoffload.demo import SEED, count_intact
from netoffload.devices.loopback import LoopbackEnd
from netoffload.tasks import Task
from netoffload.testing.packets import synthetic_flows

N = 300


def run_demo(tmp_path: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    out = tmp_path / "report.json"
    rc = main(["demo", "--packets", str(N), "--batch", "64", "--json", str(out), *extra])
    return rc, json.loads(out.read_text())


CHECKSUM_ONLY = {Task.CHECKSUM: demo.DEMO_TASKS[Task.CHECKSUM]}


@pytest.mark.parametrize("policy", ["always", "never"])
def test_demo_delivers_everything_intact(tmp_path: Path, policy: str) -> None:
    rc, rep = run_demo(tmp_path, "--policy", policy)
    assert rc == 0
    assert rep["sent"] == rep["intact"] == N and rep["ok"]
    assert "checksum" in rep["tasks"]["tx"] and "checksum" in rep["tasks"]["rx"]
    # every transmit task whose software is there takes part (and its receive partner)
    for t, d in demo.DEMO_TASKS.items():
        if t & soft.available():
            assert t.kebab in rep["tasks"]["tx"]
            assert d.rx_task is None or d.rx_task.kebab in rep["tasks"]["rx"]
    for side in ("tx", "rx"):
        for name, c in rep[side]["tasks"].items():
            assert c["dropped"] == 0 and c["errors"] == 0, (side, name)
    # checksum: every packet after segmentation (tx) / on arrival (rx), on the path asked
    wire = rep["tx"]["packets_out"]
    assert rep["wire"]["loop-b"]["received"] == wire == rep["rx"]["packets_in"]
    for side in ("tx", "rx"):
        c = rep[side]["tasks"]["checksum"]
        assert c["offloaded"] + c["software"] == wire
        assert c["offloaded"] == (wire if policy == "always" else 0)


def test_checksum_only_wire_is_right(tmp_path: Path, monkeypatch: Any) -> None:
    """With only the checksum task, what crosses the wire equals the original synthetic
    packets (the demo blanked their checksums before TX) and scapy finds every checksum right."""
    monkeypatch.setattr(demo, "DEMO_TASKS", CHECKSUM_ONLY)
    seen: list[bytes] = []
    real_send = LoopbackEnd.send

    def spy(self: LoopbackEnd, batch: Batch) -> int:
        seen.extend(batch.packets())
        return real_send(self, batch)

    monkeypatch.setattr(LoopbackEnd, "send", spy)
    rc, rep = run_demo(tmp_path)
    assert rc == 0 and rep["tasks"] == {"tx": ["checksum"], "rx": ["checksum"]}
    assert rep["delivered"] == N
    assert seen == synthetic_flows(N, seed=SEED)
    for raw in seen[:60]:
        p = S.IP(raw) if raw[0] >> 4 == 4 else S.IPv6(raw)
        for layer in (S.IP, S.TCP, S.UDP):
            if layer in p:
                q = p.copy()
                q[layer].chksum = None
                assert p[layer].chksum == type(p)(bytes(q))[layer].chksum


@pytest.mark.parametrize("only_checksum", [True, False])
def test_damaged_wire_is_not_intact(
    tmp_path: Path, monkeypatch: Any, capsys: Any, only_checksum: bool
) -> None:
    if only_checksum:
        monkeypatch.setattr(demo, "DEMO_TASKS", CHECKSUM_ONLY)
    real_send = LoopbackEnd.send
    hit = {"done": False}

    def damage(self: LoopbackEnd, batch: Batch) -> int:
        if not hit["done"] and len(batch) > 3:
            batch.buf[batch.start[3] + batch.length[3] - 1] ^= 0xFF  # its last byte
            hit["done"] = True
        return real_send(self, batch)

    monkeypatch.setattr(LoopbackEnd, "send", damage)
    rc, rep = run_demo(tmp_path)
    assert rc == 1
    assert rep["intact"] == N - 1 and not rep["ok"]
    reasons: dict[str, int] = {}
    for c in rep["rx"]["tasks"].values():
        for k, v in c["reasons"].items():
            reasons[k] = reasons.get(k, 0) + v
    # the receiver caught it: a bad checksum, or, with a digest, a bad digest
    assert reasons in ({"bad_checksum": 1}, {"bad_digest": 1}, {"bad_icv": 1})
    if only_checksum:
        assert reasons == {"bad_checksum": 1}
    assert f"delivered intact: {N - 1} of {N}" in capsys.readouterr().out


def test_count_intact() -> None:
    sent = synthetic_flows(40, seed=3)
    assert count_intact(sent, sent) == 40
    assert count_intact(sent, sent[:10] + sent[11:]) == 39  # a loss costs only itself
    bad = bytearray(sent[5])
    bad[-1] ^= 1
    assert count_intact(sent, [*sent[:5], bytes(bad), *sent[6:]]) == 39
    assert count_intact(sent, sent[::-1]) < 40  # order matters within a flow
    assert count_intact(sent, []) == 0


@pytest.mark.parametrize("args", [["--packets", "0"], ["--batch", "0"], ["--policy", "nope"]])
def test_bad_arguments(args: list[str], capsys: Any) -> None:
    assert main(["demo", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("netoffload: error:")


def test_adaptive_demo_reports_why_per_task(tmp_path: Path, capsys: Any) -> None:
    rc, rep = run_demo(tmp_path, "--policy", "adaptive", "--nic", "crypto")
    assert rc == 0
    assert rep["nic"] == "crypto"  # --nic names the profile; each side's NIC is named by it
    for side in ("tx", "rx"):
        assert f"emulated-nic:crypto/{side}" in rep["devices"][side]
    for side in ("tx", "rx"):
        why = rep[side]["policy"]["why"]
        assert set(why) == set(rep["tasks"][side])  # every task's last split is explained
        for w in why.values():
            assert w["why"] and 0 <= w["to_device"] <= w["of"]
    assert "why: the last split of each task" in capsys.readouterr().out


def test_large_batches_fit_the_nics_rings(tmp_path: Path) -> None:
    """Batches of 1024 fit the emulated NICs' ring regions: nothing is refused
    (a refusal is redone in software and counted as an error)."""
    out = tmp_path / "r.json"
    rc = main(["demo", "--packets", "3000", "--batch", "1024", "--json", str(out)])
    rep = json.loads(out.read_text())
    assert rc == 0 and rep["intact"] == rep["sent"] == 3000
    for side in ("tx", "rx"):
        assert all(c["errors"] == 0 for c in rep[side]["tasks"].values()), rep[side]["tasks"]
