"""The soak behind ``scripts/soak.sh [MINUTES]``: iperf3 through a netoffload pair for a
long while, rekeying every few seconds, watching error counters and memory.

Two namespaces joined by a veth (198.18.0.0/15 only), ``netoffload up --foreground`` in
each, one iperf3 TCP stream from ``a`` to ``b`` through the tunnel for the whole run.
Rekeys are forced by the testing knob ``NETOFFLOAD_TEST_REKEY_AFTER`` (seconds; the
initiator starts a new handshake when it sends with a session that old, instead of
REKEY_AFTER_TIME = 120 s; as always, no initiation comes less than REKEY_TIMEOUT =
5 s after the last): with the default 6 s, a rekey about every 6 s under traffic.

Every ``--every`` seconds each tunnel's status (``/run/netoffload/NAME.status.json``)
and RSS are sampled. At the end a summary: throughput, handshakes, every counter that
rose with whether it is expected, RSS at the start, after the warm-up and at the end.
Expected to rise: handshake messages and keepalives (``handshake``, ``keepalive``
reasons; the tunnel's own counters of them) and packets that waited for a handshake
(``staged``). Any other drop or error reason, a device's error count, or a protocol
refusal is unexpected. (The namespaces get no IPv6 autoconfiguration on new links: the
kernel's router solicitations to ff02::2 have no peer and went on all run, backed off to
minutes, as ``no_peer`` drops.) Counters and RSS are judged from the end of the warm-up
(the first ``--warmup`` seconds, 120 by default, at most a third of the run: Python's
allocator and the batch buffers settle -- in 10-minute runs RSS climbed ~15 MB in the
first two minutes, then stayed flat -- and a new link's chatter is over) to the end;
the RSS target is a growth below 5 %, between the median RSS of the first minute after
the warm-up and that of the last minute (RSS is the sum over the tunnel's processes:
``up`` and its workers). The growth between single samples and over the second half
of that span is shown too (a leak keeps climbing there). With glibc, RSS used to climb
in steps to the heap's high-water mark (freed big buffers stay in the heap);
``netoffload up`` now starts ``heap.start_trimmer()``, which hands freed heap pages back
every 10 s (RSS then wanders by a few % between trims, hence the medians).

Exit status: 0 when nothing unexpected rose and RSS growth < 5 %, 1 otherwise,
2 when the soak cannot run here.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from netoffload.errors import ConfigError
from netoffload.testing import netns
from netoffload.testing.procs import stop_process
from netoffload.tunnel import keys
from netoffload.tunnel.tunnel import REKEY_AFTER_ENV

A_LINK, B_LINK = "198.18.0.1", "198.18.0.2"
INNER_A, INNER_B = "198.18.50.1", "198.18.50.2"
PORT = 51820
IPERF_PORT = 5201
RSS_TARGET = 0.05
#: RSS growth compares the median of this many seconds after the warm-up and at the end
WINDOW = 60.0
#: reasons that rise in a healthy tunnel (they route or consume packets; no loss)
EXPECTED = frozenset({"handshake", "keepalive", "staged"})


@dataclass
class Side:
    name: str
    host: netns.Netns
    proc: subprocess.Popen[bytes]
    log: Path
    samples: list[tuple[float, int, dict[str, Any]]] = field(default_factory=list)
    #: the most processes seen serving the tunnel (``up`` and its workers)
    nprocs: int = 0

    def rss(self) -> int:
        """The resident memory of the tunnel's processes: ``up`` and the workers it
        forked (``--workers``), added up."""
        try:
            top = psutil.Process(self.proc.pid)
            procs = [top, *top.children(recursive=True)]
        except psutil.Error:
            return 0
        total = 0
        for p in procs:
            with contextlib.suppress(psutil.Error):
                total += int(p.memory_info().rss)
        return total

    def processes(self) -> int:
        try:
            return 1 + len(psutil.Process(self.proc.pid).children(recursive=True))
        except psutil.Error:
            return 0

    def status(self) -> dict[str, Any]:
        try:
            doc = json.loads(Path(f"/run/netoffload/{self.name}.status.json").read_text())
        except (OSError, ValueError):
            return {}
        return doc if isinstance(doc, dict) else {}


def counters(doc: dict[str, Any]) -> dict[str, int]:
    """Every error-like counter of a status document, flat: ``transmit/encrypt/reason``,
    ``receive/dos-filter/reason``, ``protocol/reason``, ``device/NAME/errors`` ..."""
    out: dict[str, int] = {}
    for side in ("transmit", "receive"):
        for task, c in (doc.get(side, {}).get("tasks") or {}).items():
            for reason, n in (c.get("reasons") or {}).items():
                out[f"{side}/{task}/{reason}"] = int(n)
            for k in ("errors",):
                if isinstance(c.get(k), int):
                    out[f"{side}/{task}/{k}"] = int(c[k])
    for reason, n in (doc.get("protocol") or {}).items():
        out[f"protocol/{reason}"] = int(n)
    for dev, c in (doc.get("devices") or {}).items():
        if not isinstance(c, dict):
            continue
        for k in ("errors", "tx_dropped", "eio", "path_errors", "failed", "socket_drops"):
            if isinstance(c.get(k), int) and not isinstance(c.get(k), bool):
                out[f"device/{dev}/{k}"] = int(c[k])
        for name, n in (c.get("errno") or {}).items():
            out[f"device/{dev}/errno/{name}"] = int(n)
    return out


def _median_rss(samples: list[tuple[float, int, dict[str, Any]]]) -> float:
    return float(statistics.median(x[1] for x in samples))


def expected(key: str) -> bool:
    return key.rsplit("/", 1)[-1] in EXPECTED


def _config(key: bytes, peer: bytes, mine: str, theirs: str, peer_ep: str) -> str:
    return (
        f"[Interface]\nPrivateKey = {keys.b64_encode(key)}\nListenPort = {PORT}\n"
        f"Address = {mine}/24\n\n[Peer]\nPublicKey = {keys.b64_encode(peer)}\n"
        f"AllowedIPs = {theirs}/32\nEndpoint = {peer_ep}:{PORT}\n"
    )


def _up(
    h: netns.Netns, name: str, text: str, tmp: Path, rekey_after: float, extra: list[str]
) -> Side:
    conf = tmp / f"{name}.conf"
    conf.write_text(text)
    conf.chmod(0o600)
    log = tmp / f"{name}.log"
    env = dict(os.environ, **{REKEY_AFTER_ENV: f"{rekey_after:g}"})
    proc = h.popen(
        [sys.executable, "-m", "netoffload", "up", str(conf), "--foreground", *extra],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        env=env,
    )
    deadline = time.monotonic() + 20
    while not os.path.exists(f"/var/run/wireguard/{name}.sock"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise ConfigError(f"soak: {name} did not come up: {log.read_text()[-500:]}")
        time.sleep(0.05)
    return Side(name, h, proc, log)


def _stop(side: Side) -> None:
    stop_process(side.proc)
    with contextlib.suppress(OSError):
        os.unlink(f"/var/run/wireguard/{side.name}.sock")


def soak(
    minutes: float,
    *,
    rekey_after: float = 6.0,
    every: float = 10.0,
    warmup: float = 120.0,
    extra: list[str] | None = None,
    progress: Any = print,
) -> dict[str, Any]:
    """Run the soak; returns the summary (see the module docstring)."""
    reason = netns.tun_available()
    if reason:
        raise ConfigError(f"soak: {reason}")
    if shutil.which("iperf3") is None:
        raise ConfigError("soak: iperf3 is not installed")
    seconds = minutes * 60.0
    warmup = min(warmup, seconds / 3)
    tmp = Path(tempfile.mkdtemp(prefix="nof-soak-"))
    tag = f"nsk{os.getpid() % 10000}"
    sides: list[Side] = []
    iperf: dict[str, Any] = {}
    try:
        with netns.Testbed() as tb:
            a, b = tb.host("soaka"), tb.host("soakb")
            tb.link(a, b, addrs_a=[f"{A_LINK}/24"], addrs_b=[f"{B_LINK}/24"])
            for h in (a, b):
                h.exec(["ethtool", "-K", "veth0", "gro", "on"], check=False)
                # no IPv6 autoconfiguration on the tunnels' interfaces: the kernel's router
                # solicitations (RFC 7559 backs them off to minutes, so they go on all run)
                # have no peer and would count as no_peer drops
                h.sysctl("net.ipv6.conf.default.addr_gen_mode", "1")
                h.sysctl("net.ipv6.conf.default.router_solicitations", "0")
            ka, kb = keys.generate_private(), keys.generate_private()
            pa, pb = keys.public_from_private(ka), keys.public_from_private(kb)
            x = extra or []
            sides.append(_up(b, f"{tag}b", _config(kb, pa, INNER_B, INNER_A, A_LINK), tmp,
                             rekey_after, x))  # fmt: skip
            sides.append(_up(a, f"{tag}a", _config(ka, pb, INNER_A, INNER_B, B_LINK), tmp,
                             rekey_after, x))  # fmt: skip
            a.exec(["ping", "-c", "3", "-i", "0.2", "-W", "2", INNER_B], check=False)
            srv = b.popen(
                ["iperf3", "-s", "-1", "-B", INNER_B, "-p", str(IPERF_PORT)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(0.3)
            out = tmp / "iperf3.json"
            cli = a.popen(
                ["iperf3", "-c", INNER_B, "-p", str(IPERF_PORT), "-t", f"{seconds:.0f}",
                 "-i", f"{every:g}", "-J"],
                stdout=out.open("wb"),
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
            t0 = time.monotonic()
            try:
                while True:
                    t = time.monotonic() - t0
                    for s in sides:
                        s.samples.append((t, s.rss(), s.status()))
                        s.nprocs = max(s.nprocs, s.processes())
                    if cli.poll() is not None or t >= seconds + 15:
                        break
                    dead = [s.name for s in sides if s.proc.poll() is not None]
                    if dead:
                        progress(f"soak: tunnel {dead} exited")
                        break
                    hs = sum(
                        int(s.samples[-1][2].get("stats", {}).get("handshakes_out", 0))
                        for s in sides
                    )
                    progress(
                        f"soak: {t / 60:5.1f} min  RSS "
                        + " ".join(f"{s.samples[-1][1] / 1e6:.1f}" for s in sides)
                        + f" MB  handshakes sent {hs}"
                    )
                    time.sleep(max(0.0, every - (time.monotonic() - t0 - t)))
                cli.wait(30)
            finally:
                for p in (cli, srv):
                    if p.poll() is None:
                        p.kill()
                        p.wait(5)
            time.sleep(1.2)
            for s in sides:  # the last word: status after the run
                s.samples.append((time.monotonic() - t0, s.rss(), s.status()))
            with contextlib.suppress(OSError, ValueError):
                iperf = json.loads(out.read_text())
            for s in sides:
                _stop(s)
    finally:
        for s in sides:
            _stop(s)
        logs = {s.name: s.log.read_text(errors="replace")[-2000:] for s in sides if s.log.exists()}
        shutil.rmtree(tmp, ignore_errors=True)
    return summarize(sides, iperf, seconds, warmup, rekey_after, logs)


def summarize(
    sides: list[Side],
    iperf: dict[str, Any],
    seconds: float,
    warmup: float,
    rekey_after: float,
    logs: dict[str, str],
) -> dict[str, Any]:
    intervals = [
        float(iv["sum"]["bits_per_second"]) / 1e9
        for iv in iperf.get("intervals", [])
        if "sum" in iv
    ]
    end = iperf.get("end", {}).get("sum_received", {})
    out: dict[str, Any] = {
        "minutes": seconds / 60,
        "rekey_after_s": rekey_after,
        "gbit_s": float(end.get("bits_per_second", 0.0)) / 1e9,
        "gbit_s_interval_min": min(intervals) if intervals else 0.0,
        "gbit_s_interval_max": max(intervals) if intervals else 0.0,
        "iperf_error": iperf.get("error"),
        "tunnels": {},
        "unexpected": {},
    }
    worst_growth = 0.0
    for s in sides:
        if not s.samples:
            continue
        first, last = s.samples[0], s.samples[-1]
        base = next((x for x in s.samples if x[0] >= warmup), first)
        c0, cw, c1 = counters(first[2]), counters(base[2]), counters(last[2])
        rose = {k: c1[k] - cw.get(k, 0) for k in c1 if c1[k] > cw.get(k, 0)}
        warm = {k: cw[k] - c0.get(k, 0) for k in cw if cw[k] > c0.get(k, 0)}
        bad = {k: v for k, v in rose.items() if not expected(k)}
        point = (last[1] - base[1]) / base[1] if base[1] else float("nan")
        # judged: the median RSS of the last minute over that of the first minute after
        # the warm-up (one sample may fall just before or after a heap trim: +-4 %)
        later = [x for x in s.samples if x[0] >= base[0]]
        head = _median_rss([x for x in later if x[0] < base[0] + WINDOW] or [base])
        tail = _median_rss([x for x in later if x[0] > last[0] - WINDOW] or [last])
        growth = (tail - head) / head if head else float("nan")
        # and over the second half of what follows the warm-up: a leak keeps climbing
        mid = later[len(later) // 2] if later else base
        late = (last[1] - mid[1]) / mid[1] if mid[1] else float("nan")
        worst_growth = max(worst_growth, growth) if growth == growth else float("inf")
        st0, st1 = first[2].get("stats", {}), last[2].get("stats", {})
        out["tunnels"][s.name] = {
            "exit": s.proc.returncode,
            "processes": s.nprocs,
            "rss_start_mb": first[1] / 1e6,
            "rss_after_warmup_mb": base[1] / 1e6,
            "rss_end_mb": last[1] / 1e6,
            "rss_max_mb": max(x[1] for x in s.samples) / 1e6,
            "rss_growth": growth,
            "rss_growth_samples": point,
            "rss_window_mb": (head / 1e6, tail / 1e6),
            "rss_growth_second_half": late,
            "handshakes_out": int(st1.get("handshakes_out", 0)) - int(st0.get("handshakes_out", 0)),
            "handshakes_in": int(st1.get("handshakes_in", 0)) - int(st0.get("handshakes_in", 0)),
            "rose": rose,
            "rose_in_warmup": warm,
        }
        if bad:
            out["unexpected"][s.name] = bad
        if s.proc.returncode not in (None, 0, -15):
            out["unexpected"].setdefault(s.name, {})["exit"] = s.proc.returncode
            out["tunnels"][s.name]["log"] = logs.get(s.name, "")
    out["rss_growth_max"] = worst_growth
    out["ok"] = not out["unexpected"] and worst_growth < RSS_TARGET and not out["iperf_error"]
    return out


def _print(summary: dict[str, Any]) -> None:
    s = summary
    print(f"soak: {s['minutes']:g} min, a rekey every ~{s['rekey_after_s']:g} s")
    err = f"  error: {s['iperf_error']}" if s["iperf_error"] else ""
    lo, hi = s["gbit_s_interval_min"], s["gbit_s_interval_max"]
    print(f"  iperf3 a->b: {s['gbit_s']:.3f} Gbit/s (intervals {lo:.3f}..{hi:.3f}){err}")
    for name, t in s["tunnels"].items():
        print(
            f"  {name}: {t['processes']} process(es), handshakes out {t['handshakes_out']} in "
            f"{t['handshakes_in']}; RSS (all its processes) "
            f"{t['rss_start_mb']:.1f} MB at start, {t['rss_after_warmup_mb']:.1f} after the "
            f"warm-up, {t['rss_end_mb']:.1f} at the end (max {t['rss_max_mb']:.1f}); "
            f"median of a minute {t['rss_window_mb'][0]:.1f} after the warm-up, "
            f"{t['rss_window_mb'][1]:.1f} at the end: {t['rss_growth'] * 100:+.2f} % "
            f"(samples: {t['rss_growth_samples'] * 100:+.2f} %, "
            f"{t['rss_growth_second_half'] * 100:+.2f} % in the second half)"
        )
        for k, v in sorted(t["rose"].items()):
            print(f"    {'expected  ' if expected(k) else 'UNEXPECTED'} +{v:<8d} {k}")
        odd = {k: v for k, v in t["rose_in_warmup"].items() if not expected(k)}
        if odd:  # e.g. the kernel's IPv6 router solicitations on a new link: no peer
            print(f"    (in the warm-up, not judged: {odd})")
    verdict = "ok" if s["ok"] else "FAILED"
    print(
        f"soak: {verdict}: unexpected counters {s['unexpected'] or 'none'}; RSS growth "
        f"{s['rss_growth_max'] * 100:.2f} % (target < {RSS_TARGET * 100:g} %)"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="soak.sh", description=__doc__.split("\n\n")[0])
    ap.add_argument("minutes", nargs="?", type=float, default=10.0)
    ap.add_argument("--rekey-after", type=float, default=6.0, metavar="S")
    ap.add_argument("--every", type=float, default=10.0, metavar="S", help="sample interval")
    ap.add_argument("--warmup", type=float, default=120.0, metavar="S")
    ap.add_argument("--json", type=Path, metavar="FILE", help="write the summary here")
    ap.add_argument("extra", nargs="*", help="more `netoffload up` options (after --)")
    argv = list(sys.argv[1:] if argv is None else argv)
    rest: list[str] = []
    if "--" in argv:  # argparse takes the positionals at once: `5 -- --workers 1` fails
        cut = argv.index("--")
        argv, rest = argv[:cut], argv[cut + 1 :]
    args = ap.parse_args(argv)
    args.extra = [*args.extra, *rest]
    try:
        summary = soak(
            args.minutes,
            rekey_after=args.rekey_after,
            every=args.every,
            warmup=args.warmup,
            extra=list(args.extra),
        )
    except ConfigError as e:
        print(f"soak: {e}", file=sys.stderr)
        return 2
    _print(summary)
    if args.json is not None:
        args.json.write_text(json.dumps(summary, indent=2, default=str))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
