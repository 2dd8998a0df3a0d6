"""``netoffload up`` / ``down`` / ``show``: the tunnel's commands, as wg-quick users work.

``up CONFIG`` reads a wg-quick file, creates the interface named after it in
the current network namespace and returns once the tunnel serves (the serving
process detaches; ``--foreground`` stays attached). ``down IFACE|CONFIG`` stops
that process and removes whatever is left of what it made (after a SIGKILL, the
state file under /run/netoffload says what). ``show [IFACE] [--json]`` prints
what ``wg show`` prints plus the offload picture: per task, device and software
counts and drops by reason, and the policy's last split and why.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from netoffload import heap
from netoffload.errors import ConfigError

STATE_DIR = Path("/run/netoffload")
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def add_parsers(sub: Any, policy_args: Any) -> None:
    u = sub.add_parser("up", help="bring up a WireGuard-compatible tunnel from a wg-quick file")
    u.add_argument("config", type=Path, metavar="CONFIG", help="wg-quick file (wg0.conf -> wg0)")
    u.add_argument("--foreground", action="store_true", help="stay attached (Ctrl-C stops)")
    u.add_argument(
        "--under-load",
        action="store_true",
        help="answer every handshake without a valid mac2 with a cookie (testing)",
    )
    u.add_argument(
        "--nic",
        choices=("none", "crypto"),
        default=None,
        help="emulated crypto NIC for encrypt/decrypt (default: the file's [Offload] Nic, none)",
    )
    u.add_argument(
        "--no-kernel-offload",
        action="store_true",
        help="no TUN offloads, no UDP GSO/GRO: the kernel hands over MTU packets (comparison)",
    )
    u.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        help="serve Prometheus metrics on this address only, e.g. 127.0.0.1:9586 "
        "(default: the file's [Offload] Metrics, off)",
    )
    u.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="processes moving packets, one TUN queue and UDP socket each (default: one a core)",
    )
    policy_args(u, "adaptive")
    d = sub.add_parser("down", help="remove a tunnel made by `up`")
    d.add_argument("target", metavar="IFACE|CONFIG", help="interface name or its wg-quick file")
    s = sub.add_parser("show", help="peers, handshakes, transfer and offload counters")
    s.add_argument("iface", nargs="?", metavar="IFACE", help="interface (default: all)")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.add_argument("--watch", action="store_true", help="a live view (Ctrl-C ends)")
    s.add_argument("--interval", type=float, metavar="S", help="--watch: seconds a refresh (1)")
    s.add_argument("--count", type=int, metavar="N", help="--watch: end after N refreshes")


def _name_of(target: str) -> str:
    p = Path(target)
    if p.suffix == ".conf" or p.exists():
        return p.stem
    return target


def _need_root(what: str) -> None:
    if os.geteuid() != 0:
        raise ConfigError(f"{what} needs root (CAP_NET_ADMIN to create interfaces)")


def cmd_up(args: argparse.Namespace, console: Console) -> int:
    from netoffload.tunnel.config import check_key_file_mode, load_config
    from netoffload.tunnel.tunnel import Tunnel

    cfg = load_config(args.config)
    for w in cfg.warnings:
        sys.stderr.write(f"netoffload: warning: {w}\n")
    exposed = check_key_file_mode(args.config)  # as wg-quick warns
    if exposed:
        sys.stderr.write(f"netoffload: {exposed}\n")
    metrics = getattr(args, "metrics", None)
    if metrics is not None:  # checked here, before anything is made or forked
        from netoffload.tunnel.metrics import parse_address

        metrics = str(parse_address(metrics))
    from netoffload.tunnel.workers import check_workers, default_workers

    workers = getattr(args, "workers", None)
    if workers is not None:
        workers = check_workers(workers)
    elif (getattr(args, "nic", None) or cfg.offload.nic or "none") != "none":
        workers = 1  # the emulated NIC serves one process
    else:
        workers = default_workers()
    _need_root("up")
    heap.start_trimmer()  # freed per-batch buffers leave RSS (heap.py); forks inherit it
    policy = getattr(args, "policy", None)
    pfile = getattr(args, "policy_file", None)
    nic = getattr(args, "nic", None)

    def build() -> Tunnel:
        return Tunnel(
            cfg,
            policy=policy,
            policy_file=pfile,
            force_under_load=args.under_load,
            nic=nic,
            kernel_offload=not getattr(args, "no_kernel_offload", False),
            metrics=metrics,
            workers=workers,
        )

    if args.foreground:
        tun = build()
        old = {sig: signal.signal(sig, lambda *_: tun.stop()) for sig in _STOP_SIGNALS}
        try:
            tun.start()
            console.print(f"[bold]{tun.name}[/] up, listening on port {tun.listen_port}")
            if tun.metrics is not None:
                console.print(f"metrics on {tun.metrics.address.url}")
            tun.run()
        finally:
            tun.close()
            for sig, h in old.items():
                signal.signal(sig, h)
        return 0

    from netoffload.tunnel import daemon

    def serve(ready: Any) -> None:
        tun = build()
        daemon.install_signal_handlers(tun.stop)
        try:
            tun.start()
            tun.run(ready=ready)
        finally:
            tun.close()

    log = STATE_DIR / f"{cfg.interface.name}.log"
    with contextlib.suppress(OSError):
        STATE_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    pid = daemon.start_detached(serve, name=cfg.interface.name, log_path=str(log))
    console.print(f"[bold]{cfg.interface.name}[/] up (pid {pid})")
    return 0


def cmd_down(args: argparse.Namespace, console: Console) -> int:
    from netoffload.tunnel import daemon, iface

    name = _name_of(args.target)
    _need_root("down")
    state = STATE_DIR / f"{name}.json"
    try:
        rec = json.loads(state.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{name}: not a netoffload interface (no {state})") from None
    except (OSError, ValueError) as e:
        raise ConfigError(f"{name}: cannot read {state}: {e}") from None
    pid = int(rec.get("pid", 0))
    if pid and daemon.is_alive(pid):
        daemon.stop(pid)
    # whatever a killed process left behind
    made = rec.get("made")
    if made:
        with contextlib.suppress(Exception):
            iface.undo(iface.Made.from_json(made))
    with contextlib.suppress(OSError):
        os.unlink(str(rec.get("socket") or f"/var/run/wireguard/{name}.sock"))
    _delete_link(name)
    for p in (state, STATE_DIR / f"{name}.status.json"):
        with contextlib.suppress(OSError):
            p.unlink()
    console.print(f"[bold]{name}[/] down")
    return 0


def _delete_link(name: str) -> None:
    """The TUN goes with its process; a leftover one (process killed mid-way) is removed."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=name)
        if idx:
            with contextlib.suppress(Exception):
                ipr.link("del", index=idx[0])


def _status(name: str) -> dict[str, Any] | None:
    p = STATE_DIR / f"{name}.status.json"
    try:
        doc = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict):
        return None
    from netoffload.tunnel import daemon

    # a status file left by a process that is gone (killed) describes nothing running
    pid = doc.get("pid")
    if isinstance(pid, int) and pid > 0 and not daemon.is_alive(pid):
        return None
    return doc


def _names() -> list[str]:
    try:
        return sorted(
            p.name[: -len(".status.json")]
            for p in STATE_DIR.iterdir()
            if p.name.endswith(".status.json")
        )
    except OSError:
        return []


def _age(s: float | None) -> str:
    if s is None:
        return "never"
    s = int(s)
    if s < 60:
        return f"{s} s ago"
    if s < 3600:
        return f"{s // 60} min {s % 60} s ago"
    return f"{s // 3600} h {s % 3600 // 60} min ago"


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.2f} {unit}" if unit != "B" else f"{n} B"
        n = n / 1024  # type: ignore[assignment]
    return str(n)


def cmd_show(args: argparse.Namespace, console: Console) -> int:
    if getattr(args, "watch", False) or any(
        getattr(args, k, None) is not None for k in ("interval", "count")
    ):
        from netoffload.tunnel.watch import watch

        return watch(args, console)
    names = [args.iface] if args.iface else _names()
    docs: list[dict[str, Any]] = []
    for n in names:
        doc = _status(n)
        if doc is None:
            if args.iface:
                raise ConfigError(f"{n}: not a running netoffload interface")
            continue
        # the status file is written twice a second: say how old it is
        docs.append(doc)
    if args.json:
        out: Any = docs[0] if args.iface and docs else docs
        print(json.dumps(out, indent=2, default=str))
        return 0
    for doc in docs:
        render(doc, console)
    return 0


def render(doc: dict[str, Any], console: Console) -> None:
    console.print(f"[bold green]interface[/]: [green]{doc['interface']}[/]")
    console.print(f"  public key: {doc['public_key']}")
    console.print(f"  listening port: {doc['listen_port']}")
    if doc.get("fwmark"):
        console.print(f"  fwmark: 0x{int(doc['fwmark']):x}")
    ws = doc.get("workers") or []
    if ws:
        moved = ", ".join(
            f"#{w['worker']} {w.get('stats', {}).get('tx_packets', 0)}/"
            f"{w.get('stats', {}).get('rx_packets', 0)}"
            for w in ws
        )
        console.print(f"  workers: {len(ws)} ({doc.get('steering')}); tx/rx packets {moved}")
    for p in doc.get("peers", []):
        console.print(f"\n[bold yellow]peer[/]: [yellow]{p['public_key']}[/]")
        if p.get("endpoint"):
            console.print(f"  endpoint: {p['endpoint']}")
        console.print(f"  allowed ips: {', '.join(p['allowed_ips']) or '(none)'}")
        console.print(f"  latest handshake: {_age(p.get('handshake_age_s'))}")
        console.print(
            f"  transfer: {_size(int(p['rx_bytes']))} received, {_size(int(p['tx_bytes']))} sent"
        )
        if p.get("persistent_keepalive"):
            console.print(f"  persistent keepalive: every {p['persistent_keepalive']} seconds")
    for side in ("transmit", "receive"):
        eng = doc.get(side) or {}
        t = Table(title=f"{doc['interface']} {side}: per task", title_justify="left")
        for col in ("task", "device", "software", "dropped", "errors", "drops by reason"):
            t.add_column(col, justify="right" if col not in ("task", "drops by reason") else "left")
        for name, c in (eng.get("tasks") or {}).items():
            reasons = ", ".join(f"{k} {v}" for k, v in sorted(c.get("reasons", {}).items()))
            t.add_row(
                name,
                str(c["offloaded"]),
                str(c["software"]),
                str(c["dropped"]),
                str(c["errors"]),
                reasons,
            )
        console.print(t)
        for dev in (doc.get("offload") or {}).get(side) or []:
            tasks = ", ".join(dev.get("tasks", []))
            console.print(f"  device {dev.get('device')}: {tasks} -- {dev.get('how', '')}")
        pol = eng.get("policy")
        if isinstance(pol, dict):
            why = pol.get("why")
            console.print(f"  policy: {pol.get('name', pol.get('policy', ''))}")
            if isinstance(why, dict):
                for task, w in why.items():
                    console.print(f"    {task}: {w}")
