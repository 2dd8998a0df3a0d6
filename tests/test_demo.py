"""``netoffload demo``: the in-process mode (any user), a damaged wire, bad arguments,
and, as root, the real thing in namespaces (netoffload and wireguard-go, kernel sockets)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import scapy.all as S
from rich.console import Console
from scapy.utils import checksum

from netoffload import demo
from netoffload.batch import VnetFlag
from netoffload.cli import main
from netoffload.tunnel.datapath import RX_ORDER, TX_ORDER
from netoffload.tunnel.loop import Inner, LoopTunnel

TX_TASKS = {t.kebab for t in TX_ORDER}
RX_TASKS = {t.kebab for t in RX_ORDER}


def _console() -> Console:
    return Console(width=100, force_terminal=False)


def _small(tmp_path: Path, **kw: Any) -> demo.DemoOptions:
    base: dict[str, Any] = {
        "tcp_bytes": 300_000,
        "udp_datagrams": 150,
        "batch": 16,
        "seconds": 30.0,
        "json": tmp_path / "report.json",
    }
    base.update(kw)
    return demo.DemoOptions(**base)


def _all_tasks_listed(rep: dict[str, Any]) -> None:
    for pair in rep["pairs"]:
        if pair["skipped"]:
            continue
        assert pair["endpoints"]
        for doc in pair["endpoints"].values():
            for key, want in (("transmit", TX_TASKS), ("receive", RX_TASKS)):
                tasks = doc[key]["tasks"]
                assert want <= set(tasks), (key, sorted(tasks))
                for c in tasks.values():
                    assert {"offloaded", "software", "dropped", "reasons"} <= set(c)


def test_in_process_delivers_every_stream_intact(tmp_path: Path, monkeypatch: Any) -> None:
    """Forced in-process mode: both streams both ways arrive whole; what the receive
    engine hands the TUN is well-formed IP whose checksums scapy finds right (or, for
    GRO super-packets, left partial as a TUN write may have them)."""
    seen: list[Inner] = []
    real = LoopTunnel.write_inner

    def spy(self: LoopTunnel, out: Any) -> int:
        n = real(self, out)
        seen.extend(self.delivered[len(self.delivered) - n :])
        return n

    monkeypatch.setattr(LoopTunnel, "write_inner", spy)
    opts = _small(tmp_path)
    assert demo.demo(opts, _console(), in_process=True) == 0
    rep = json.loads(opts.json.read_text())  # type: ignore[union-attr]
    assert rep["mode"] == "in-process" and rep["ok"]
    assert rep["streams"] == rep["intact"] == 4
    (pair,) = rep["pairs"]
    for s in pair["streams"]:
        assert s["intact"] and s["sha256_sent"] == s["sha256_received"]
        assert s["bytes_received"] == s["bytes_sent"] > 0
        if s["proto"] == "udp":
            assert s["datagrams_received"] == s["datagrams_sent"] == 150
        else:
            assert s["bytes_sent"] == 300_000
    assert {s["family"] for s in pair["streams"]} == {4, 6}
    assert pair["unexpected_packets"] == 0
    _all_tasks_listed(rep)
    for doc in pair["endpoints"].values():
        assert doc["transmit"]["tasks"]["encrypt"]["software"] > 0
        assert doc["receive"]["tasks"]["decrypt"]["software"] > 0
    assert len(seen) > 20 and any(p.gso_type for p in seen)
    for p in seen:
        _check_l4_checksum(p)


def _check_l4_checksum(p: Inner) -> None:
    """scapy's checksum of the packet equals the field, or, for a packet marked
    NEEDS_CSUM, what completing the partial sum over the L4 bytes gives."""
    pkt = S.IP(p.data) if p.data[0] >> 4 == 4 else S.IPv6(p.data)
    layer = S.TCP if S.TCP in pkt else S.UDP
    q = pkt.copy()
    q[layer].chksum = None
    want = type(pkt)(bytes(q))[layer].chksum
    partial = p.vflags & VnetFlag.NEEDS_CSUM
    got = checksum(bytes(pkt[layer])) if partial else pkt[layer].chksum
    assert got == want, (p.gso_type, p.vflags)


def test_damaged_datagram_is_caught_and_not_intact(tmp_path: Path) -> None:
    """One transport message damaged on the wire: the receiver refuses it (bad_icv),
    its stream is not delivered intact, the exit code is 1."""
    hit = {"n": 0}

    def tamper(d: bytes) -> bytes:
        ol = 48 if d[0] >> 4 == 6 else 28
        if d[ol] == 4 and len(d) > ol + 200:  # a data message with a payload
            hit["n"] += 1
            if hit["n"] == 40:
                b = bytearray(d)
                b[-20] ^= 0x01
                return bytes(b)
        return d

    opts = _small(tmp_path)
    pair = demo.run_in_process(opts, _console(), tamper=tamper)
    rep = demo._report([pair], "adaptive", "in-process", opts)
    assert not rep["ok"] and rep["intact"] == 3
    bad = [s for s in pair["streams"] if not s["intact"]]
    assert len(bad) == 1 and bad[0]["bytes_received"] < bad[0]["bytes_sent"]
    reasons: dict[str, int] = {}
    for doc in pair["endpoints"].values():
        for c in doc["receive"]["tasks"].values():
            for k, v in c["reasons"].items():
                reasons[k] = reasons.get(k, 0) + v
    assert reasons.get("bad_icv") == 1


def test_exit_code_1_when_not_intact(tmp_path: Path, monkeypatch: Any, capsys: Any) -> None:
    real = demo.run_in_process

    def damaged(opts: demo.DemoOptions, console: Console, **kw: Any) -> dict[str, Any]:
        n = {"k": 0}

        def tamper(d: bytes) -> bytes | None:
            n["k"] += 1
            return None if n["k"] == 30 else d  # one datagram lost

        return real(opts, console, tamper=tamper)

    monkeypatch.setattr(demo, "run_in_process", damaged)
    opts = _small(tmp_path)
    assert demo.demo(opts, Console(width=100, force_terminal=False), in_process=True) == 1
    rep = json.loads(opts.json.read_text())  # type: ignore[union-attr]
    assert not rep["ok"] and rep["intact"] < rep["streams"]
    assert f"delivered intact: {rep['intact']} of 4 streams" in capsys.readouterr().out


def test_cli_in_process_with_a_policy(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    argv = ["demo", "--in-process", "--bytes", "200k", "--packets", "100", "--json", str(out)]
    assert main([*argv, "--policy", "always+failover:backoff=1"]) == 0
    rep = json.loads(out.read_text())
    assert rep["policy"] == "always+failover" and rep["ok"]
    # always: the receive checksum goes to the TUN's device for every packet
    for doc in rep["pairs"][0]["endpoints"].values():
        c = doc["receive"]["tasks"]["checksum"]
        assert c["offloaded"] > 0 and c["software"] == 0


@pytest.mark.parametrize(
    "args",
    [
        ["--packets", "0"],
        ["--batch", "0"],
        ["--policy", "nope"],
        ["--bytes", "lots"],
        ["--seconds", "0"],
    ],
)
def test_bad_arguments(args: list[str], capsys: Any) -> None:
    assert main(["demo", "--in-process", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("netoffload: error:")


def test_parse_size() -> None:
    assert demo.parse_size("64M") == 64 << 20
    assert demo.parse_size("512k") == 512 << 10
    assert demo.parse_size("1GiB") == 1 << 30
    assert demo.parse_size("1000") == 1000


@pytest.mark.kernel
def test_namespaces_demo_delivers_everything_intact(tmp_path: Path) -> None:
    """As root: `netoffload demo --json F` exits 0; F says every stream (kernel TCP and
    UDP sockets, through two netoffload tunnels, then netoffload and wireguard-go) was
    delivered intact, and lists every task of both engines of every netoffload end.
    Nothing is left behind."""
    if os.geteuid() != 0:
        pytest.skip("not root")
    from netoffload.testing import wggo

    out = tmp_path / "r.json"
    assert main(["demo", "--json", str(out)]) == 0
    rep = json.loads(out.read_text())
    assert rep["mode"] == "namespaces" and rep["ok"]
    ours, go = rep["pairs"]
    assert len(ours["streams"]) == 4 and len(ours["endpoints"]) == 2
    for s in ours["streams"]:
        assert s["intact"] and s["bytes_received"] == s["bytes_sent"] > 0
    _all_tasks_listed(rep)
    if wggo.available() is None:
        assert go["skipped"] is None and len(go["streams"]) == 2
        assert all(s["intact"] for s in go["streams"])
        assert [p["ok"] for p in go["pings"]] == [True, True]
        # wireguard-go's own counters (wg show dump) saw at least the streams' bytes
        got = sum(s["bytes_received"] for s in go["streams"] if s["name"].endswith("go"))
        assert go["peer"]["rx_bytes"] > got
    else:
        assert go["skipped"]
    assert rep["intact"] == rep["streams"]
    pid = os.getpid()
    assert not [n for n in os.listdir("/var/run/netns") if n.startswith(f"nof-{pid}-")]
    if os.path.isdir("/var/run/wireguard"):
        mine = (f"nd{pid % 10_000_000}", f"wg{pid % 1_000_000}g")
        assert not [f for f in os.listdir("/var/run/wireguard") if f.startswith(mine)]


def test_without_root_it_says_so_and_runs_in_process(
    tmp_path: Path, monkeypatch: Any, capsys: Any
) -> None:
    monkeypatch.setattr(demo.os, "geteuid", lambda: 1000)
    opts = _small(tmp_path, tcp_bytes=100_000, udp_datagrams=50)
    assert demo.demo(opts, _console()) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("not root: no namespaces")
    assert json.loads(opts.json.read_text())["mode"] == "in-process"  # type: ignore[union-attr]
