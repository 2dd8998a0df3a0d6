"""``netoffload pcap``: checksums filled and verified on scapy-made captures, judged by scapy."""

from __future__ import annotations

import contextlib
import io
import json
import struct
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import scapy.all as S
from hypothesis import given, settings
from hypothesis import strategies as st

import netoffload.pcapjob as pcapjob
from netoffload.cli import main

MAC = {"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02"}


def l4_and_ip(p: S.Packet) -> list[S.Packet]:
    return [p[layer] for layer in (S.IP, S.TCP, S.UDP) if layer in p]


def scapy_says_good(raw: bytes, ethernet: bool = True) -> bool:
    """scapy's view: every IPv4-header/TCP/UDP checksum equals the one scapy computes."""
    p = S.Ether(raw) if ethernet else (S.IP(raw) if raw[0] >> 4 == 4 else S.IPv6(raw))
    for layer in l4_and_ip(p):
        if isinstance(layer, S.UDP) and layer.chksum == 0 and S.IP in p:
            continue  # IPv4 UDP without a checksum
        q = p.copy()
        q[type(layer)].chksum = None  # scapy computes it afresh, pseudo-header included
        if layer.chksum != type(p)(bytes(q))[type(layer)].chksum:
            return False
    return True


def mixed_packets(bad: bool) -> list[S.Packet]:
    """IPv4/IPv6 × TCP/UDP, odd sizes and options; checksums wrong when ``bad``."""
    out = []
    for i in range(12):
        payload = bytes(range(i * 7 % 256)) * 2 + b"z" * (i % 3)
        kw: dict[str, Any] = {"chksum": 0x1234 + i} if bad else {}
        if i % 4 == 0:
            ip: S.Packet = S.IP(
                src="198.18.0.1", dst="198.19.0.1", options=[S.IPOption_NOP()] * 4, **kw
            )
        elif i % 4 == 1:
            ip = S.IP(src="198.18.0.1", dst="198.19.0.1", **kw)
        else:
            ip = S.IPv6(src="fd00::1", dst="fd00::2")
        l4 = (
            S.TCP(sport=1000 + i, dport=80, options=[("MSS", 1400)], **kw)
            if i % 2
            else S.UDP(sport=1000 + i, dport=53, **kw)
        )
        p = S.Ether(**MAC) / ip / l4 / payload
        p.time = Decimal(1_700_000_000 + i) + Decimal("0.000123")
        out.append(p)
    return out


def run(*argv: str) -> int:
    return main(list(argv))


def read_results(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
def test_tx_checksum_fixes_every_checksum(tmp_path: Path, fmt: str) -> None:
    pk = mixed_packets(bad=True)
    src = tmp_path / f"in.{fmt}"
    if fmt == "pcap":
        S.wrpcap(str(src), pk)
    else:
        w = S.PcapNgWriter(str(src))
        for p in pk:
            w.write(p)
        w.close()
    assert not any(scapy_says_good(bytes(p)) for p in pk)
    out, res = tmp_path / "out.pcap", tmp_path / "r.jsonl"
    assert run("pcap", "--tx", "checksum", str(src), str(out), "--results", str(res)) == 0
    back = S.rdpcap(str(out))
    assert len(back) == len(pk)
    for p, q in zip(pk, back, strict=True):
        assert scapy_says_good(bytes(q)), q.show(dump=True)
        assert len(q) == len(p)
    assert [q.time for q in back] == [p.time for p in S.rdpcap(str(src))]
    rows = read_results(res)
    assert [r["index"] for r in rows] == list(range(len(pk)))
    assert all(r["tasks"] == ["checksum"] and r["delivered"] and r["error"] is None for r in rows)


def test_tx_checksum_raw_ip_linktype(tmp_path: Path) -> None:
    pk = [p[S.IP] if S.IP in p else p[S.IPv6] for p in mixed_packets(bad=True)]
    v4 = [p for p in pk if isinstance(p, S.IP)]
    src, out = tmp_path / "raw.pcap", tmp_path / "out.pcap"
    S.wrpcap(str(src), v4)  # scapy writes link type 228 (IPv4)
    assert run("pcap", "--tx", "checksum", str(src), str(out)) == 0
    back = S.rdpcap(str(out))
    assert len(back) == len(v4)
    assert all(scapy_says_good(bytes(q), ethernet=False) for q in back)


def test_rx_checksum_verdicts_match_scapy(tmp_path: Path) -> None:
    good = mixed_packets(bad=False)
    bad = mixed_packets(bad=True)
    nock = S.Ether(**MAC) / S.IP(src="198.18.0.1", dst="198.19.0.1") / S.UDP(chksum=0) / b"q"
    arp = S.Ether(**MAC) / S.ARP()
    assert all(scapy_says_good(bytes(p)) for p in good)
    pk = [x for pair in zip(good, bad, strict=True) for x in pair] + [nock, arp]
    src, out, res = tmp_path / "in.pcap", tmp_path / "out.pcap", tmp_path / "r.jsonl"
    S.wrpcap(str(src), pk)
    assert run("pcap", "--rx", "checksum", str(src), str(out), "--results", str(res)) == 0
    rows = read_results(res)
    assert [r["index"] for r in rows] == list(range(len(pk)))
    for p, r in zip(pk, rows, strict=True):
        if p is nock or p is arp:
            assert r["checksum"] == "none" and r["delivered"]
            continue
        want = "good" if scapy_says_good(bytes(p)) else "bad"
        assert r["checksum"] == want
        assert r["delivered"] == (want == "good")
        assert r["error"] == (None if want == "good" else "bad_checksum")
    # only the delivered packets are written, unchanged
    delivered = [bytes(p) for p, r in zip(pk, rows, strict=True) if r["delivered"]]
    assert [bytes(q) for q in S.rdpcap(str(out))] == delivered


def test_truncated_capture_writes_prefix_and_fails(tmp_path: Path, capsys: Any) -> None:
    pk = mixed_packets(bad=True)
    src, out = tmp_path / "in.pcap", tmp_path / "out.pcap"
    S.wrpcap(str(src), pk)
    src.write_bytes(src.read_bytes()[:-10])
    capsys.readouterr()
    assert run("pcap", "--tx", "checksum", str(src), str(out)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"record {len(pk)}" in err and "offset" in err
    back = S.rdpcap(str(out))
    assert len(back) == len(pk) - 1
    assert all(scapy_says_good(bytes(q)) for q in back)


@pytest.mark.parametrize(
    "content, needle",
    [
        (None, "cannot open"),
        (b"", "empty"),
        (b"\x00" * 40, "not a pcap"),
        (bytes.fromhex("0a0d0d0a") + b"\xff" * 40, "record 1"),
    ],
)
def test_bad_input_is_one_line_exit_2(
    tmp_path: Path, capsys: Any, content: bytes | None, needle: str
) -> None:
    src = tmp_path / "in.pcap"
    if content is not None:
        src.write_bytes(content)
    capsys.readouterr()
    assert run("pcap", "--rx", "checksum", str(src), str(tmp_path / "o.pcap")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("netoffload: error:") and needle in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--tx", "nonsense"], "unknown task"),
        (["--rx", "tcp-segment"], "does not run in direction RX"),
        (["--tx", "checksum,"], "unknown task"),
        (["--tx", "checksum", "--policy", "sometimes"], "unknown policy"),
    ],
)
def test_bad_arguments(tmp_path: Path, capsys: Any, args: list[str], needle: str) -> None:
    src = tmp_path / "in.pcap"
    S.wrpcap(str(src), mixed_packets(bad=False)[:2])
    capsys.readouterr()
    assert run("pcap", *args, str(src), str(tmp_path / "o.pcap")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err
    assert not (tmp_path / "o.pcap").exists()


def test_missing_positional_is_exit_2(capsys: Any) -> None:
    with pytest.raises(SystemExit) as ei:
        run("pcap", "--tx", "checksum")
    assert ei.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_empty_capture_gives_empty_output(tmp_path: Path) -> None:
    src, out = tmp_path / "in.pcap", tmp_path / "out.pcap"
    S.wrpcap(str(src), [])
    assert run("pcap", "--tx", "checksum", str(src), str(out)) == 0
    assert len(S.rdpcap(str(out))) == 0


def test_progress_and_many_batches(tmp_path: Path, monkeypatch: Any, capsys: Any) -> None:
    monkeypatch.setattr(pcapjob, "PROGRESS_BYTES", 0)
    monkeypatch.setattr(pcapjob, "BATCH", 7)
    pk = mixed_packets(bad=True) * 3
    src, out, res = tmp_path / "in.pcap", tmp_path / "out.pcap", tmp_path / "r.jsonl"
    S.wrpcap(str(src), pk)
    assert run("pcap", "--tx", "checksum", str(src), str(out), "--results", str(res)) == 0
    assert [r["index"] for r in read_results(res)] == list(range(len(pk)))
    assert all(scapy_says_good(bytes(q)) for q in S.rdpcap(str(out)))
    assert "checksum" in capsys.readouterr().out


def test_padded_short_frames(tmp_path: Path) -> None:
    """Ethernet pads short frames to 60 bytes: the checksums cover the IP packet, not the pad."""
    pk = [
        S.Ether(**MAC) / S.IP(src="198.18.0.1", dst="198.19.0.1", chksum=1) / S.UDP(chksum=2),
        S.Ether(**MAC) / S.IP(src="198.18.0.1", dst="198.19.0.1") / S.TCP(chksum=3) / b"ab",
    ]
    frames = [bytes(p) + b"\xee" * (60 - len(p)) for p in pk]
    src, out, res = tmp_path / "in.pcap", tmp_path / "out.pcap", tmp_path / "r.jsonl"
    S.wrpcap(str(src), [S.Ether(f) for f in frames])
    assert run("pcap", "--tx", "checksum", str(src), str(out), "--results", str(res)) == 0
    back = [bytes(q) for q in S.rdpcap(str(out))]
    assert [len(b) for b in back] == [60, 60]
    assert all(b.endswith(b"\xee" * 4) for b in back)
    assert all(scapy_says_good(b) for b in back)
    assert (
        run("pcap", "--rx", "checksum", str(out), str(tmp_path / "o2.pcap"), "--results", str(res))
        == 0
    )
    assert [r["checksum"] for r in read_results(res)] == ["good", "good"]


@settings(max_examples=40)
@given(st.data())
def test_corrupt_captures_never_crash(data: st.DataObject) -> None:
    """Any damage to a capture: exit 0 (still a readable capture) or exit 2 with one line."""
    import tempfile

    pk = mixed_packets(bad=True)[:4]
    with tempfile.TemporaryDirectory() as d:
        src, out = Path(d) / "in.pcap", Path(d) / "out.pcap"
        if data.draw(st.booleans()):
            S.wrpcap(str(src), pk)
        else:
            w = S.PcapNgWriter(str(src))
            for p in pk:
                w.write(p)
            w.close()
        raw = bytearray(src.read_bytes())
        for _ in range(data.draw(st.integers(1, 4))):
            i = data.draw(st.integers(0, len(raw) - 1))
            raw[i] = data.draw(st.integers(0, 255))
        cut = data.draw(st.integers(1, len(raw)))
        src.write_bytes(bytes(raw[:cut]))
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = run("pcap", "--tx", "checksum", str(src), str(out))
        assert rc in (0, 2)
        if rc == 2:
            assert err.getvalue().count("\n") == 1 and "record" in err.getvalue()


def test_snaplen_cut_records_pass_untouched(tmp_path: Path) -> None:
    """A record captured short of its original length (snap length) is written as it is,
    keeps its original length, and is marked truncated; the others are processed."""
    whole = mixed_packets(bad=True)[:3]
    raws = [bytes(p) for p in whole]
    cut = raws[1][:40]
    # classic pcap, packed by hand: header, then (sec, usec, caplen, origlen) + data
    out_bytes = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 40, 1)
    for k, (data, orig) in enumerate(
        [(raws[0], len(raws[0])), (cut, len(raws[1])), (raws[2], len(raws[2]))]
    ):
        out_bytes += struct.pack("<IIII", 1000 + k, 0, len(data), orig) + data
    src, out, res = tmp_path / "in.pcap", tmp_path / "out.pcap", tmp_path / "r.jsonl"
    src.write_bytes(out_bytes)
    assert run("pcap", "--tx", "checksum", str(src), str(out), "--results", str(res)) == 0
    back = S.rdpcap(str(out))
    assert bytes(back[1]) == cut and back[1].wirelen == len(raws[1])
    assert scapy_says_good(bytes(back[0])) and scapy_says_good(bytes(back[2]))
    rows = read_results(res)
    assert rows[1]["truncated"] is True and rows[1]["tasks"] == [] and rows[1]["delivered"]
    assert "truncated" not in rows[0] and rows[0]["tasks"] == ["checksum"]


def test_pcapng_timestamp_past_int64_is_clamped(tmp_path: Path) -> None:
    """A pcapng EPB may claim 2**64-1 microseconds (past 2**63 ns): processed, not a crash."""
    import struct

    def block(btype: int, body: bytes) -> bytes:
        body += b"\0" * (-len(body) % 4)
        n = 12 + len(body)
        return struct.pack("<II", btype, n) + body + struct.pack("<I", n)

    pkt = bytes(S.IP(src="198.18.0.1", dst="198.18.0.2") / S.UDP() / b"x")
    shb = block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    idb = block(1, struct.pack("<HHI", 101, 0, 65535))
    epb = block(6, struct.pack("<IIIII", 0, 0xFFFFFFFF, 0xFFFFFFFF, len(pkt), len(pkt)) + pkt)
    src, out = tmp_path / "big-ts.pcapng", tmp_path / "out.pcap"
    src.write_bytes(shb + idb + epb)
    assert run("pcap", "--tx", "checksum", str(src), str(out)) == 0
    assert S.rdpcap(str(out))[0].haslayer(S.UDP)


def test_policy_splits_between_software_and_a_nic(tmp_path: Path, capsys: Any) -> None:
    """--nic gives the policy a device: with `always` the NIC does the tasks, with
    `never` software does, and the output is the same bytes either way."""
    pkts = [
        S.IP(src="198.18.0.1", dst="198.18.0.2")
        / S.TCP(sport=1, dport=2, seq=1 + 9000 * i, flags="A")
        / S.Raw(bytes(range(256)) * 35)
        for i in range(3)
    ]
    src = tmp_path / "in.pcap"
    S.wrpcap(str(src), pkts)
    sa = Path(__file__).resolve().parent.parent / "examples" / "sa.toml"
    outs = {}
    for policy in ("always", "never"):
        out = tmp_path / f"{policy}.pcap"
        res = tmp_path / f"{policy}.jsonl"
        argv = ["pcap", "--tx", "tcp-segment,checksum,encrypt", "--mss", "1400"]
        argv += ["--sa", str(sa), "--nic", "full", "--policy", policy, str(src), str(out)]
        assert main([*argv, "--results", str(res)]) == 0
        outs[policy] = out.read_bytes()
        table = capsys.readouterr().out
        row = next(ln.split() for ln in table.splitlines() if ln.startswith("encrypt "))
        device, software = int(row[1]), int(row[2])
        assert (device > 0 and software == 0) if policy == "always" else (device == 0)
    assert outs["always"] == outs["never"]
