"""The Prometheus exporter (tunnel/metrics.py), read with prometheus-client's own parser.

Without root: the collector on two tunnels joined in process (tunnel/loop.py), its
text against the status document taken at the same moment; the address syntax
(fuzzed); the config key; a bad ``--metrics`` through the CLI. As root: ``netoffload
up --metrics`` against wireguard-go in namespaces, scraped over HTTP inside the
namespace and compared with ``netoffload show --json`` once traffic has stopped;
the socket listens on the one address given and nowhere else.
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import json
import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from netoffload.errors import ConfigError
from netoffload.tunnel import keys
from netoffload.tunnel.config import parse_config
from netoffload.tunnel.metrics import CpuSample, MetricsAddress, TunnelCollector, parse_address

from .test_loop import _batch, _pair
from .wg_helpers import echo

Key = tuple[str, ...]


# ------------------------------------------------------------------ comparison helpers
def from_text(text: str) -> dict[Key, float]:
    """The counters of an exposition, parsed by prometheus-client, keyed as from_status."""
    out: dict[Key, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            n, lab, v = s.name, s.labels, float(s.value)
            if not n.startswith("netoffload_") or not n.endswith("_total"):
                continue
            base = n[len("netoffload_") : -len("_total")]
            if base in ("peer_rx_bytes", "peer_tx_bytes"):
                out[(base, lab["peer"])] = v
            elif base == "task_packets":
                field = "offloaded" if lab["path"] == "device" else "software"
                out[("task", lab["direction"], lab["task"], field)] = v
            elif base in ("task_dropped", "task_errors", "task_bytes"):
                out[("task", lab["direction"], lab["task"], base[5:])] = v
            elif base == "task_reasons":
                out[("reason", lab["direction"], lab["task"], lab["reason"])] = v
            elif base == "protocol_drops":
                out[("protocol", lab["reason"])] = v
            elif base in ("device_submits", "device_packets", "device_bytes", "device_errors"):
                out[("device", lab["device"], base[7:])] = v
            elif base == "device_task_packets":
                out[("device", lab["device"], "per_task", lab["task"])] = v
            elif base == "policy_decisions":
                out[("decision", lab["direction"], lab["task"], lab["path"])] = v
            elif base in ("task_seconds", "worker_cpu_seconds", "policy_events"):
                continue
            else:
                out[("stat", base)] = v
    return out


def from_status(doc: Mapping[str, Any]) -> dict[Key, float]:
    """The counters of a status document (``show --json``)."""
    out: dict[Key, float] = {}
    for p in doc["peers"]:
        out[("peer_rx_bytes", p["public_key"])] = p["rx_bytes"]
        out[("peer_tx_bytes", p["public_key"])] = p["tx_bytes"]
    for k, v in doc["stats"].items():
        out[("stat", k)] = v
    for k, v in doc["protocol"].items():
        out[("protocol", k)] = v
    for d in ("transmit", "receive"):
        for task, c in doc[d]["tasks"].items():
            for f in ("offloaded", "software", "dropped", "errors", "bytes"):
                out[("task", d, task, f)] = c[f]
            for r, v in c["reasons"].items():
                out[("reason", d, task, r)] = v
        pol = doc[d]["policy"]
        for task, dd in (pol.get("decisions") or {}).items() if isinstance(pol, dict) else ():
            for path in ("device", "software"):
                out[("decision", d, task, path)] = dd[path]
    for dev, c in doc["devices"].items():
        for k in ("submits", "packets", "bytes", "errors"):
            if k in c:
                out[("device", dev, k)] = c[k]
        for t, v in (c.get("per_task") or {}).items():
            out[("device", dev, "per_task", t)] = v
    return {k: float(v) for k, v in out.items()}


def _families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def _scrape_registry(collector: TunnelCollector) -> str:
    r = CollectorRegistry(auto_describe=False)
    r.register(collector)
    return generate_latest(r).decode()


def _traffic(a: Any, b: Any, w: Any, n: int = 40) -> None:
    a.handshake()
    w.pump()
    pk = [echo("198.18.10.1", "198.18.10.2", 7, i, os.urandom(20 + 37 * i % 900)) for i in range(n)]
    a.transmit(_batch(pk))
    w.pump()
    back = [echo("198.18.10.2", "198.18.10.1", 7, i, b"r" * (i + 1)) for i in range(n // 2)]
    b.transmit(_batch(back))
    w.pump()
    # junk at b: reason counters
    b.receive(_junk_batch(b))


def _junk_batch(t: Any) -> Any:
    from netoffload.tunnel.loop import _received, outer_header

    data = [bytes([4, 0, 0, 0]) + os.urandom(60), os.urandom(3), bytes([9]) + bytes(40)]
    return _received([outer_header(("198.18.0.9", 4000), t.endpoint, len(d)) + d for d in data])


# ------------------------------------------------------------------ without root
def test_collector_text_parses_and_agrees_with_status() -> None:
    w, a, b = _pair()
    _traffic(a, b, w)
    for t in (a, b):
        text = _scrape_registry(TunnelCollector(t, cpu=lambda: []))
        with t.lock:
            doc = t.status()
        got, want = from_text(text), from_status(doc)
        assert got == want
        fams = _families(text)
        # every task row has both paths, the sum of which the status row has
        assert fams["netoffload_status_ok"].samples[0].value == 1
        peers = {s.labels["peer"] for s in fams["netoffload_peer_handshake_age_seconds"].samples}
        assert peers == {p["public_key"] for p in doc["peers"]}
        for s in fams["netoffload_policy_offloaded_ratio"].samples:
            assert 0.0 <= s.value <= 1.0
        assert fams["netoffload_peer_rx_bytes"].type == "counter"
    # traffic went through: the comparison is not between zeros
    got = from_text(_scrape_registry(TunnelCollector(b, cpu=lambda: [])))
    assert got[("task", "receive", "decrypt", "software")] >= 40
    assert sum(v for k, v in got.items() if k[0] == "reason") >= 3


def _split_ratios(text: str) -> dict[tuple[str, str], float]:
    fam = _families(text).get("netoffload_policy_last_split_ratio")
    return {(s.labels["direction"], s.labels["task"]): s.value for s in fam.samples} if fam else {}


def _doc_split_ratios(doc: Mapping[str, Any]) -> dict[tuple[str, str], float]:
    out = {}
    for d in ("transmit", "receive"):
        pol = doc[d]["policy"]
        for task, s in (pol.get("split") or {}).items() if isinstance(pol, dict) else ():
            if s["of"]:
                out[(d, task)] = s["device"] / s["of"]
    return out


def test_policy_split_of_the_last_batch_is_device_over_of() -> None:
    w, a, b = _pair()
    _traffic(a, b, w)
    doc = a.status()
    # what the adaptive policy's describe() gives after batches that had a device
    doc["transmit"]["policy"]["split"] = {"encrypt": {"device": 3, "of": 4}}
    doc["receive"]["policy"]["split"] = {"checksum": {"device": 0, "of": 9}, "x": {"of": 0}}
    from netoffload.tunnel.metrics import families

    r = CollectorRegistry(auto_describe=False)

    class _Doc:
        def collect(self) -> Any:
            return families(doc)

    r.register(_Doc())
    text = generate_latest(r).decode()
    assert _split_ratios(text) == {("transmit", "encrypt"): 0.75, ("receive", "checksum"): 0.0}
    assert "last batch" in _families(text)["netoffload_policy_last_split_ratio"].documentation
    assert "cumulative" in _families(text)["netoffload_policy_offloaded_ratio"].documentation
    info = _families(text)["netoffload_policy_info"].samples
    assert {(s.labels["direction"], s.labels["policy"]) for s in info} == {
        ("transmit", doc["transmit"]["policy"]["policy"]),
        ("receive", doc["receive"]["policy"]["policy"]),
    }


def test_worker_cpu_is_this_process_as_getrusage_says() -> None:
    _, a, _ = _pair()
    before = resource.getrusage(resource.RUSAGE_SELF)
    text = _scrape_registry(TunnelCollector(a))
    after = resource.getrusage(resource.RUSAGE_SELF)
    fam = _families(text)["netoffload_worker_cpu_seconds"]
    mine = {s.labels["mode"]: s.value for s in fam.samples if s.labels["pid"] == str(os.getpid())}
    assert set(mine) == {"user", "system"}
    # psutil (/proc) against getrusage: clock ticks apart at most
    tick = 2.0 / os.sysconf("SC_CLK_TCK")
    assert before.ru_utime - tick <= mine["user"] <= after.ru_utime + tick
    assert before.ru_stime - tick <= mine["system"] <= after.ru_stime + tick
    assert {s.labels["worker"] for s in fam.samples if s.labels["pid"] == str(os.getpid())} == {
        "tunnel"
    }


def test_cpu_samples_are_counters_per_worker() -> None:
    _, a, _ = _pair()
    samples = [CpuSample("tunnel", 10, 1.5, 0.25), CpuSample("nic-tx", 11, 3.0, 0.0)]
    fam = _families(_scrape_registry(TunnelCollector(a, cpu=lambda: samples)))[
        "netoffload_worker_cpu_seconds"
    ]
    got = {(s.labels["worker"], s.labels["pid"], s.labels["mode"]): s.value for s in fam.samples}
    assert got == {
        ("tunnel", "10", "user"): 1.5,
        ("tunnel", "10", "system"): 0.25,
        ("nic-tx", "11", "user"): 3.0,
        ("nic-tx", "11", "system"): 0.0,
    }


class _Broken:
    lock = contextlib.nullcontext()

    def status(self) -> dict[str, Any]:
        raise RuntimeError("boom")


def test_a_failing_status_is_status_ok_0_not_an_error() -> None:
    said: list[str] = []
    text = _scrape_registry(TunnelCollector(_Broken(), cpu=lambda: [], log=said.append))
    fams = _families(text)
    assert fams["netoffload_status_ok"].samples[0].value == 0
    assert said and "boom" in said[0]


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("127.0.0.1:9586", "127.0.0.1", 9586),
        (" 198.18.0.2:1 ", "198.18.0.2", 1),
        ("[::1]:65535", "::1", 65535),
        ("[fd00:0::1]:9100", "fd00::1", 9100),
        ("0.0.0.0:9586", "0.0.0.0", 9586),
    ],
)
def test_address_parses(text: str, host: str, port: int) -> None:
    a = parse_address(text)
    assert (a.host, a.port) == (host, port)
    assert parse_address(str(a)) == a


@pytest.mark.parametrize(
    "text",
    [
        "",
        "9586",
        ":9586",
        "127.0.0.1",
        "127.0.0.1:",
        "127.0.0.1:0",
        "127.0.0.1:65536",
        "127.0.0.1:-1",
        "127.0.0.1:http",
        "localhost:9586",
        "::1:9586",
        "[::1]9586",
        "[127.0.0.1]:9586",
        "[::1:9586",
        "300.1.1.1:9586",
    ],
)
def test_bad_address_is_a_config_error_naming_it(text: str) -> None:
    with pytest.raises(ConfigError) as ei:
        parse_address(text)
    msg = str(ei.value)
    assert "--metrics" in msg and repr(text) in msg and "\n" not in msg


@given(st.text(max_size=40))
def test_address_fuzz_parses_or_config_error(text: str) -> None:
    try:
        a = parse_address(text)
    except ConfigError:
        return
    fam = socket.AF_INET6 if ":" in a.host else socket.AF_INET
    socket.inet_pton(fam, a.host)  # a real address, as the kernel reads it
    assert 1 <= a.port <= 65535
    assert parse_address(str(a)) == a


@given(
    st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)), st.integers(min_value=1, max_value=65535)
)
def test_address_of_any_ip_and_port(ip: Any, port: int) -> None:
    text = f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"
    a = parse_address(text)
    assert a == MetricsAddress(str(ip), port)


def _conf(extra: str) -> str:
    k, peer = keys.generate_private(), keys.public_from_private(keys.generate_private())
    return (
        f"[Interface]\nPrivateKey = {keys.b64_encode(k)}\n"
        f"[Peer]\nPublicKey = {keys.b64_encode(peer)}\nAllowedIPs = 198.18.30.0/24\n"
        f"[Offload]\n{extra}\n"
    )


def test_config_key_metrics() -> None:
    cfg = parse_config(_conf("Metrics = [::1]:9586"), "wgm")
    assert cfg.offload.metrics == "[::1]:9586"
    assert parse_config(_conf("NIC = none"), "wgm").offload.metrics is None
    with pytest.raises(ConfigError) as ei:
        parse_config(_conf("metrics = nowhere"), "wgm")
    assert ":7: Metrics:" in str(ei.value) and "\n" not in str(ei.value)


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "netoffload", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )


@pytest.mark.parametrize("bad", ["nowhere", "127.0.0.1:99999", "[::1]", ":9586"])
def test_up_with_a_bad_metrics_value_is_one_line_exit_2(tmp_path: Path, bad: str) -> None:
    conf = tmp_path / "wgbadm.conf"
    conf.write_text(_conf("NIC = none"))
    conf.chmod(0o600)
    r = _cli("up", str(conf), "--foreground", "--metrics", bad)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "--metrics" in lines[0] and "Traceback" not in r.stderr
    assert not os.path.exists("/var/run/wireguard/wgbadm.sock")


def test_up_with_a_bad_metrics_key_is_one_line_exit_2(tmp_path: Path) -> None:
    conf = tmp_path / "wgbadk.conf"
    conf.write_text(_conf("Metrics = 127.0.0.1:0"))
    conf.chmod(0o600)
    r = _cli("up", str(conf), "--foreground")
    assert r.returncode == 2
    line = r.stderr.strip()
    assert len(line.splitlines()) == 1 and "wgbadk.conf:7" in line and "Metrics" in line


# ------------------------------------------------------------------ as root, in namespaces
def _http_get(host: str, port: int, path: str = "/metrics") -> tuple[int, str, str]:
    c = http.client.HTTPConnection(host, port, timeout=10)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.getheader("Content-Type") or "", r.read().decode()
    finally:
        c.close()


def _refused(host: str, port: int) -> bool:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(3)
    try:
        s.connect((host, port))
    except OSError as e:
        return e.errno in (errno.ECONNREFUSED, errno.ENETUNREACH, errno.EADDRNOTAVAIL)
    finally:
        s.close()
    return False


def _listeners(h: Any, port: int) -> list[str]:
    """Local addresses of TCP listening sockets on ``port`` in ``h`` (ss, the kernel's view)."""
    out = h.exec(["ss", "-H", "-l", "-t", "-n"])
    got = []
    for line in out.splitlines():
        cols = line.split()
        if len(cols) >= 4 and cols[3].rsplit(":", 1)[-1] == str(port):
            got.append(cols[3])
    return got


def _status_mtime(name: str) -> float:
    try:
        return os.stat(f"/run/netoffload/{name}.status.json").st_mtime
    except OSError:
        return 0.0


def _snapshot(p: Any, port: int, tries: int = 8) -> tuple[dict[Key, float], dict[str, Any], str]:
    """A scrape and a ``show --json`` of the same moment: scrape, wait for a status file
    written after it, show, scrape again; if the two scrapes agree, nothing moved in
    between and ``show`` saw that same state."""
    for _ in range(tries):
        t0 = time.time()
        _, _, before = p.b.run(_http_get, "127.0.0.1", port)
        deadline = time.monotonic() + 5
        while _status_mtime(p.name) <= t0 and time.monotonic() < deadline:
            time.sleep(0.05)
        out = p.b.exec([sys.executable, "-m", "netoffload", "show", p.name, "--json"])
        _, _, after = p.b.run(_http_get, "127.0.0.1", port)
        first, second = from_text(before), from_text(after)
        if first == second:
            return first, json.loads(out), after
        time.sleep(0.5)
    raise AssertionError("the counters never stood still for a snapshot")


def _interop() -> Any:
    from . import test_tunnel_interop as ti

    return ti


@pytest.mark.kernel
def test_up_metrics_agree_with_show_json_and_listen_on_one_address(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("not root")
    ti = _interop()
    port = 9586
    with ti.pair(tmp_path, start=False) as p:
        p.up("--metrics", f"127.0.0.1:{port}")
        assert ti._ping(p.b, ti.GO_V4), "no session"
        ti.tcp_stream(p.b, p.a, ti.GO_V4, 2 << 20)
        ti.tcp_stream(p.a, p.b, ti.US_V4, 1 << 20, port=5303)
        # junk: reason counters that must show up on both sides
        p.a.spawn(
            ti._send_junk, "198.18.0.2", ti.US_PORT, [os.urandom(7), bytes([9]) + bytes(60)]
        ).join(10)
        got, doc, text = _snapshot(p, port)
        assert got == from_status(doc)
        assert (
            got[("task", "transmit", "encrypt", "software")]
            + got[("task", "transmit", "encrypt", "offloaded")]
            > 0
        )
        assert sum(v for k, v in got.items() if k[0] == "reason") >= 2
        (peer,) = doc["peers"]
        assert got[("peer_rx_bytes", peer["public_key"])] > 1 << 20
        assert _split_ratios(text) == pytest.approx(_doc_split_ratios(doc))
        fams = _families(text)
        age = fams["netoffload_peer_handshake_age_seconds"].samples[0].value
        assert 0 <= age < 180
        cpu = fams["netoffload_worker_cpu_seconds"].samples
        assert {s.labels["pid"] for s in cpu} >= {str(doc["pid"])}
        assert sum(s.value for s in cpu) > 0
        # the kernel's view: one listener on that port, on 127.0.0.1 only
        assert _listeners(p.b, port) == [f"127.0.0.1:{port}"]
        assert _listeners(p.a, port) == []
        assert p.b.run(_refused, "198.18.0.2", port)
        assert p.b.run(_refused, ti.US_V4, port)
        assert p.a.run(_refused, "198.18.0.2", port)
        status, ctype, _ = p.b.run(_http_get, "127.0.0.1", port)
        assert status == 200 and ctype.startswith("text/plain")
        # stopped with the tunnel
        p.down()
        assert _listeners(p.b, port) == []


@pytest.mark.kernel
def test_offload_metrics_key_ipv6_and_a_bind_failure(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("not root")
    ti = _interop()
    port = 9587
    with ti.pair(tmp_path, start=False) as p:
        base = p.conf.read_text()
        p.conf.write_text(base + f"\n[Offload]\nMetrics = [::1]:{port}\n")
        p.up()
        assert _listeners(p.b, port) == [f"[::1]:{port}"]
        status, _, text = p.b.run(_http_get, "::1", port)
        assert status == 200
        assert any(
            f.name == "netoffload_peer_rx_bytes" for f in text_string_to_metric_families(text)
        )
        # the command line wins over the file; an address the namespace lacks fails the start
        p.down()
        r = subprocess.run(
            ["ip", "netns", "exec", p.b.name, sys.executable, "-m", "netoffload", "up",
             str(p.conf), "--foreground", "--metrics", f"198.18.99.1:{port}"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert r.returncode == 2, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "198.18.99.1" in lines[0] and "Traceback" not in r.stderr
        assert not ti._has_link(p.b, p.name), "a failed start left the interface behind"
        assert not os.path.exists(f"/var/run/wireguard/{p.name}.sock")
