"""``netoffload bench tunnel``: the tunnel next to the tunnels people already run.

Every row is a pair of namespaces joined by a veth (198.18.0.0/15 only), all
set up before the first measurement and left idle between them, so that rounds
interleave the rows side by side. Traffic is iperf3 (one TCP stream, client in
``a`` to server in ``b``), as users compare. Rows:

- ``veth``: no tunnel, the ceiling;
- ``wireguard-go``: the Debian wireguard-go on both ends;
- ``openvpn``: OpenVPN 2.6, AES-256-GCM, userspace (DCO off), TLS with a
  throwaway CA made here; skipped with the reason when not installed;
- ``netoffload-soft``: netoffload on both ends, every task in software and no
  kernel offloads (the TUN hands over MTU packets, no UDP GSO/GRO);
- ``netoffload-always``: netoffload with the kernel offloads, policy ``always``;
- ``netoffload``: netoffload with the default policy (adaptive);
- ``netoffload-wggo``: netoffload in ``b`` against wireguard-go in ``a``;
- ``netoffload-1w`` / ``netoffload-2w``: netoffload with ``--workers 1`` / ``2``
  on both ends, four TCP streams (``iperf3 -P 4``): their ratio is
  ``tunnel_workers_ratio``, a figure of the machine's cores (reported only).

The netoffload rows other than these two run ``up`` with its default number of
workers (one a core).

Per row: Gb/s (iperf3's receiver), CPU seconds per Gbit (user + system time of
both tunnel processes, which includes the kernel work done in their context),
and ping p50/p99 through the tunnel with no other traffic. Each figure is the
median over the rounds. GRO is switched on for the veths (our own), as on a
real NIC, so that UDP GRO has something to hand over.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from netoffload.bench import Bench, BenchContext, BenchResult, register
from netoffload.errors import ConfigError
from netoffload.testing import netns, wggo
from netoffload.testing.procs import stop_process
from netoffload.tunnel import keys
from netoffload.tunnel.workers import default_workers

INNER_A, INNER_B = "198.18.40.1", "198.18.40.2"
PORT = 5201

ROWS = (
    "veth",
    "wireguard-go",
    "openvpn",
    "netoffload-soft",
    "netoffload-always",
    "netoffload",
    "netoffload-wggo",
    "netoffload-1w",
    "netoffload-2w",
)
#: iperf3 streams of a row (default 1)
STREAMS = {"netoffload-1w": 4, "netoffload-2w": 4}


@dataclass
class Row:
    name: str
    a: netns.Netns | None = None
    b: netns.Netns | None = None
    target: str = INNER_B
    pids: list[int] = field(default_factory=list)
    stops: list[Callable[[], None]] = field(default_factory=list)
    skip: str = ""
    gbit: list[float] = field(default_factory=list)
    cpu_per_gbit: list[float] = field(default_factory=list)
    ping_ms: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def cpu(self) -> float:
        """CPU seconds of the tunnel processes and their live children (workers, NICs)."""
        total = 0.0
        for pid in self.pids:
            with contextlib.suppress(psutil.Error):
                me = psutil.Process(pid)
                for pr in (me, *me.children(recursive=True)):
                    with contextlib.suppress(psutil.Error):
                        t = pr.cpu_times()
                        total += t.user + t.system
        return total


def _gro_on(h: netns.Netns, ifname: str = "veth0") -> None:
    # our own veth: GRO on (NAPI) as on a physical NIC, so UDP GRO can coalesce
    h.exec(["ethtool", "-K", ifname, "gro", "on"], check=False)


def _wait_link(h: netns.Netns, name: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while name not in h.ip("-o", "link", "show", check=False):
        if proc.poll() is not None:
            raise ConfigError(f"{name}: tunnel process exited {proc.returncode}")
        if time.monotonic() > deadline:
            raise ConfigError(f"{name}: no interface after {timeout} s")
        time.sleep(0.05)
    deadline = time.monotonic() + timeout
    while not os.path.exists(f"/var/run/wireguard/{name}.sock"):
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)


class Setup:
    """Builds the rows' namespace pairs and tunnels; removes everything on close."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.tb = netns.Testbed()
        self._n = 0

    def pair(self, tag: str) -> tuple[netns.Netns, netns.Netns]:
        a, b = self.tb.host(f"{tag}a"), self.tb.host(f"{tag}b")
        self.tb.link(a, b, addrs_a=["198.18.0.1/24"], addrs_b=["198.18.0.2/24"])
        _gro_on(a)
        _gro_on(b)
        return a, b

    def _name(self) -> str:
        self._n += 1
        return f"nb{os.getpid() % 10000}x{self._n}"

    def netoffload(
        self,
        h: netns.Netns,
        key: bytes,
        peer: bytes,
        mine: str,
        theirs: str,
        port: int,
        peer_ep: str,
        peer_port: int,
        extra: list[str],
        row: Row,
    ) -> None:
        name = self._name()
        conf = self.tmp / f"{name}.conf"
        conf.write_text(
            f"[Interface]\nPrivateKey = {keys.b64_encode(key)}\nListenPort = {port}\n"
            f"Address = {mine}/24\n\n[Peer]\nPublicKey = {keys.b64_encode(peer)}\n"
            f"AllowedIPs = {theirs}/32\nEndpoint = {peer_ep}:{peer_port}\n"
        )
        conf.chmod(0o600)
        log = (self.tmp / f"{name}.log").open("ab")
        proc = h.popen(
            [sys.executable, "-m", "netoffload", "up", str(conf), "--foreground", *extra],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        row.pids.append(proc.pid)

        def stop() -> None:
            stop_process(proc)
            log.close()

        row.stops.append(stop)
        _wait_link(h, name, proc, 15.0)

    def wireguard_go(
        self,
        h: netns.Netns,
        key: bytes,
        peer: bytes,
        mine: str,
        theirs: str,
        port: int,
        peer_ep: str,
        peer_port: int,
        row: Row,
    ) -> None:
        go = wggo.WireguardGo(
            h, private_key=key, listen_port=port, addresses=[f"{mine}/24"], log_level="error"
        )
        go.start()
        row.stops.append(go.stop)
        assert go.proc is not None
        row.pids.append(go.proc.pid)
        go.set_peer(peer, allowed_ips=[f"{theirs}/32"], endpoint=(peer_ep, peer_port))

    def build(self, name: str, rows: dict[str, Row]) -> Row:
        row = rows.setdefault(name, Row(name))
        tag = {
            "veth": "v",
            "wireguard-go": "g",
            "openvpn": "o",
            "netoffload-soft": "s",
            "netoffload-always": "k",
            "netoffload": "n",
            "netoffload-wggo": "x",
            "netoffload-1w": "w",
            "netoffload-2w": "y",
        }[name]
        if name == "openvpn" and shutil.which("openvpn") is None:
            row.skip = "openvpn is not installed (apt-get install openvpn)"
            return row
        if name in ("wireguard-go", "netoffload-wggo") and wggo.available():
            row.skip = str(wggo.available())
            return row
        a, b = self.pair(tag)
        row.a, row.b = a, b
        if name == "veth":
            row.target = "198.18.0.2"
            return row
        if name == "openvpn":
            _openvpn(self, row)
            return row
        ka, kb = keys.generate_private(), keys.generate_private()
        pa, pb = keys.public_from_private(ka), keys.public_from_private(kb)
        # b's side first (the server side of iperf3), then a's
        if name == "wireguard-go":
            self.wireguard_go(b, kb, pa, INNER_B, INNER_A, 51820, "198.18.0.1", 51820, row)
            self.wireguard_go(a, ka, pb, INNER_A, INNER_B, 51820, "198.18.0.2", 51820, row)
        elif name == "netoffload-wggo":
            self.netoffload(b, kb, pa, INNER_B, INNER_A, 51820, "198.18.0.1", 51820, [], row)
            self.wireguard_go(a, ka, pb, INNER_A, INNER_B, 51820, "198.18.0.2", 51820, row)
        else:
            extra = {
                "netoffload-soft": ["--policy", "never", "--no-kernel-offload"],
                "netoffload-always": ["--policy", "always"],
                "netoffload": [],
                "netoffload-1w": ["--workers", "1"],
                "netoffload-2w": ["--workers", "2"],
            }[name]
            self.netoffload(b, kb, pa, INNER_B, INNER_A, 51820, "198.18.0.1", 51820, extra, row)
            self.netoffload(a, ka, pb, INNER_A, INNER_B, 51820, "198.18.0.2", 51820, extra, row)
        return row

    def close(self, rows: dict[str, Row]) -> None:
        for r in rows.values():
            for stop in reversed(r.stops):
                with contextlib.suppress(Exception):
                    stop()
        self.tb.close()


def _openvpn(setup: Setup, row: Row) -> None:
    """Two OpenVPN 2.6 peers in TLS mode with AES-256-GCM, DCO off."""
    assert row.a is not None and row.b is not None
    d = setup.tmp / "ovpn"
    d.mkdir(exist_ok=True)
    _make_pki(d)
    common = [
        "openvpn",
        "--dev",
        "tun",
        "--dev-type",
        "tun",
        "--proto",
        "udp",
        "--data-ciphers",
        "AES-256-GCM",
        "--cipher",
        "AES-256-GCM",
        "--disable-dco",
        "--ca",
        str(d / "ca.pem"),
        "--dh",
        "none",
        "--verb",
        "1",
        "--ping",
        "0",
        "--mute-replay-warnings",
        "--topology",
        "p2p",
    ]
    srv = row.b.popen(
        [
            *common,
            "--tls-server",
            "--cert",
            str(d / "server.pem"),
            "--key",
            str(d / "server.key"),
            "--local",
            "198.18.0.2",
            "--lport",
            "1194",
            "--remote",
            "198.18.0.1",
            "--rport",
            "1194",
            "--ifconfig",
            INNER_B,
            INNER_A,
        ],
        stdout=(setup.tmp / "ovpn-b.log").open("ab"),
        stderr=subprocess.STDOUT,
    )
    cli = row.a.popen(
        [
            *common,
            "--tls-client",
            "--cert",
            str(d / "client.pem"),
            "--key",
            str(d / "client.key"),
            "--local",
            "198.18.0.1",
            "--lport",
            "1194",
            "--remote",
            "198.18.0.2",
            "--rport",
            "1194",
            "--ifconfig",
            INNER_A,
            INNER_B,
            "--remote-cert-tls",
            "server",
        ],
        stdout=(setup.tmp / "ovpn-a.log").open("ab"),
        stderr=subprocess.STDOUT,
    )
    for p in (srv, cli):
        row.pids.append(p.pid)

        row.stops.append(functools.partial(_stop_quietly, p))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if _ping_rtts(row.a, INNER_B, 1, 0.2):
            return
        if srv.poll() is not None or cli.poll() is not None:
            break
        time.sleep(0.3)
    log = (setup.tmp / "ovpn-b.log").read_text(errors="replace")[-300:]
    row.skip = f"openvpn did not connect: {log.strip().splitlines()[-1] if log.strip() else '?'}"


def _stop_quietly(p: subprocess.Popen[bytes]) -> None:
    stop_process(p, 5.0)


def _make_pki(d: Path) -> None:
    """A throwaway CA, server and client certificate (cryptography)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("bench-ca"))
        .issuer_name(name("bench-ca"))
        .public_key(ca_key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(ca_key, hashes.SHA256())
    )
    (d / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for i, (who, eku) in enumerate(
        (("server", ExtendedKeyUsageOID.SERVER_AUTH), ("client", ExtendedKeyUsageOID.CLIENT_AUTH)),
        start=2,
    ):
        k = ec.generate_private_key(ec.SECP256R1())
        c = (
            x509.CertificateBuilder()
            .subject_name(name(who))
            .issuer_name(ca.subject)
            .public_key(k.public_key())
            .serial_number(i)
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(
                x509.KeyUsage(True, False, True, False, True, False, False, False, False),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        (d / f"{who}.pem").write_bytes(c.public_bytes(serialization.Encoding.PEM))
        kp = d / f"{who}.key"
        kp.write_bytes(
            k.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        kp.chmod(0o600)


def _ping_rtts(h: netns.Netns, addr: str, count: int, interval: float) -> list[float]:
    r = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            h.name,
            "ping",
            "-n",
            "-c",
            str(count),
            "-i",
            str(interval),
            "-W",
            "2",
            addr,
        ],
        capture_output=True,
        text=True,
        timeout=count * interval + 10,
    )
    out = []
    for line in r.stdout.splitlines():
        if "time=" in line:
            with contextlib.suppress(ValueError):
                out.append(float(line.split("time=")[1].split()[0]))
    return out


def _iperf(row: Row, seconds: float) -> tuple[float, float]:
    """iperf3 TCP a -> b (STREAMS of the row, default one stream); (Gbit/s, CPU s per
    Gbit of the tunnel processes)."""
    streams = ["-P", str(STREAMS[row.name])] if row.name in STREAMS else []
    assert row.a is not None and row.b is not None
    srv = row.b.popen(
        ["iperf3", "-s", "-1", "-B", row.target, "-p", str(PORT)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.3)
        c0 = row.cpu()
        r = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                row.a.name,
                "iperf3",
                "-c",
                row.target,
                "-p",
                str(PORT),
                "-t",
                str(seconds),
                "-J",
                "--connect-timeout",
                "3000",
                *streams,
            ],
            capture_output=True,
            text=True,
            timeout=seconds + 20,
        )
        c1 = row.cpu()
    finally:
        with contextlib.suppress(subprocess.TimeoutExpired):
            srv.wait(5)
        if srv.poll() is None:
            srv.kill()
    try:
        doc = json.loads(r.stdout)
        bps = float(doc["end"]["sum_received"]["bits_per_second"])
        secs = float(doc["end"]["sum_received"]["seconds"])
    except (ValueError, KeyError, TypeError):
        row.notes.append(f"iperf3 failed: {(r.stderr or r.stdout)[-200:]!r}")
        return 0.0, float("nan")
    gbit = bps * secs / 1e9
    return bps / 1e9, ((c1 - c0) / gbit if gbit > 0 and row.pids else float("nan"))


def _median(xs: list[float]) -> float:
    ys = [x for x in xs if x == x]
    return statistics.median(ys) if ys else float("nan")


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    ys = sorted(xs)
    return ys[min(len(ys) - 1, int(q * len(ys)))]


def run(ctx: BenchContext) -> BenchResult:
    reason = netns.tun_available()
    if reason:
        raise ConfigError(f"bench tunnel: {reason}")
    if shutil.which("iperf3") is None:
        raise ConfigError("bench tunnel: iperf3 is not installed (apt-get install iperf3)")
    seconds = 2.0 if ctx.quick else 5.0
    rounds = 3 if ctx.quick else 5
    pings = 30 if ctx.quick else 100
    rows: dict[str, Row] = {}
    tmp = Path(tempfile.mkdtemp(prefix="nof-bench-tunnel-"))
    setup = Setup(tmp)
    try:
        for name in ROWS:
            ctx.progress(f"setting up {name}")
            try:
                setup.build(name, rows)
            except Exception as e:  # a row that cannot be built is skipped with its reason
                rows.setdefault(name, Row(name)).skip = f"setup failed: {e}"
        live = [r for r in rows.values() if not r.skip]
        # first traffic: handshakes out of the way
        for r in live:
            assert r.a is not None
            _ping_rtts(r.a, r.target, 2, 0.2)
        for i in range(rounds):
            for r in live:
                g, c = _iperf(r, seconds)
                r.gbit.append(g)
                r.cpu_per_gbit.append(c)
                ctx.progress(f"round {i + 1}/{rounds} {r.name}: {g:.3f} Gbit/s")
        for r in live:
            assert r.a is not None
            r.ping_ms = _ping_rtts(r.a, r.target, pings, 0.02)
    finally:
        setup.close(rows)
        shutil.rmtree(tmp, ignore_errors=True)

    table: list[dict[str, Any]] = []
    med: dict[str, float] = {}
    cpu: dict[str, float] = {}
    p99: dict[str, float] = {}
    for name in ROWS:
        r = rows.get(name, Row(name, skip="not built"))
        med[name] = _median(r.gbit) if not r.skip else float("nan")
        cpu[name] = _median(r.cpu_per_gbit) if not r.skip else float("nan")
        p99[name] = _pct(r.ping_ms, 0.99)
        table.append(
            {
                "row": name,
                "Gbit/s": round(med[name], 3),
                "cpu s/Gbit": round(cpu[name], 3),
                "ping p50 ms": round(_pct(r.ping_ms, 0.5), 3),
                "ping p99 ms": round(p99[name], 3),
                "rounds": ", ".join(f"{x:.2f}" for x in r.gbit),
                "note": r.skip or "; ".join(r.notes)[:120],
            }
        )

    def ratio(x: float, y: float) -> float:
        return x / y if x == x and y == y and y > 0 else float("nan")

    peers = [v for v in (med["wireguard-go"], med["openvpn"]) if v == v]
    best_peer = max(peers) if peers else float("nan")
    best_static = max(v for v in (med["netoffload-soft"], med["netoffload-always"], 0.0) if v == v)
    metrics = {
        "tunnel_vs_best_peer": ratio(med["netoffload"], best_peer),
        "tunnel_vs_wireguard_go": ratio(med["netoffload"], med["wireguard-go"]),
        "tunnel_offload_ratio": ratio(med["netoffload-always"], med["netoffload-soft"]),
        "tunnel_cpu_per_gbit_vs_wireguard_go": ratio(cpu["netoffload"], cpu["wireguard-go"]),
        "tunnel_ping_p99_vs_wireguard_go": ratio(p99["netoffload"], p99["wireguard-go"]),
        "tunnel_adaptive_vs_best_static": ratio(med["netoffload"], best_static),
        "tunnel_vs_veth": ratio(med["netoffload"], med["veth"]),
        "interop_vs_wireguard_go": ratio(med["netoffload-wggo"], med["wireguard-go"]),
        "tunnel_workers_ratio": ratio(med["netoffload-2w"], med["netoffload-1w"]),
    }
    for name in ROWS:
        metrics[f"gbit_s_{name.replace('-', '_')}"] = med[name]
    xs = {float(i): n for i, n in enumerate(ROWS)}
    series = {
        "throughput|Gbit/s": [(float(i), med[n]) for i, n in enumerate(ROWS) if med[n] == med[n]],
        "cpu per Gbit|CPU s per Gbit": [
            (float(i), cpu[n]) for i, n in enumerate(ROWS) if cpu[n] == cpu[n]
        ],
        "latency|ping p50 ms": [
            (float(i), _pct(rows[n].ping_ms, 0.5))
            for i, n in enumerate(ROWS)
            if n in rows and rows[n].ping_ms
        ],
        "latency|ping p99 ms": [(float(i), p99[n]) for i, n in enumerate(ROWS) if p99[n] == p99[n]],
    }
    notes = [
        f"iperf3, one TCP stream ({', '.join(f'{k}: {v}' for k, v in STREAMS.items())} "
        f"streams), {seconds:g} s x {rounds} interleaved rounds, medians; CPU = "
        "user+system of both tunnel processes and their workers; ping with no other traffic",
        f"netoffload rows without a worker count: up's default, {default_workers()} workers",
        "veth GRO on (our own veths), as a physical NIC has it",
    ]
    notes += [f"{r.name}: skipped: {r.skip}" for r in rows.values() if r.skip]
    return BenchResult(
        metrics,
        targets={
            "tunnel_vs_best_peer": (">=", 1.5),
            "tunnel_vs_wireguard_go": (">=", 2.0),
            "tunnel_offload_ratio": (">=", 3.0),
            "tunnel_cpu_per_gbit_vs_wireguard_go": ("<=", 1.0),
            "tunnel_ping_p99_vs_wireguard_go": ("<=", 1.5),
            "tunnel_adaptive_vs_best_static": (">=", 0.95),
        },
        rows=table,
        notes=notes,
        series=series,
        xticks=xs,
    )


register(Bench("tunnel", run, "the tunnel vs wireguard-go and OpenVPN (iperf3, CPU, ping)"))
