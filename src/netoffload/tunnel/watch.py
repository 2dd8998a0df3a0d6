"""``netoffload show --watch [IFACE] [--interval S] [--count N]``: a live terminal view.

The numbers are those of ``show``, read from the same status file
(/run/netoffload/IFACE.status.json, which the tunnel rewrites twice a second):
per peer the endpoint, latest handshake and transfer, with rates between two
status files; per direction and task the device and software counts, drops,
errors and drops by reason, and the policy's split of the last batch where the
policy reports one; the CPU of the tunnel's processes (read from the kernel,
the same figures as the exporter's ``netoffload_worker_cpu_seconds_total``).
Ctrl-C ends it with exit status 0; ``--count N`` ends it after N refreshes.
Not on a terminal, only the last refresh is printed.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from netoffload.errors import ConfigError
from netoffload.tunnel import commands
from netoffload.tunnel.metrics import cpu_samples

DEFAULT_INTERVAL = 1.0
#: a status file older than this: its process is probably gone
STALE_S = 5.0


@dataclass
class _Rate:
    uptime: float
    values: tuple[float, ...]
    rates: tuple[float, ...] | None = None


@dataclass
class WatchView:
    """What one refresh shows, with the memory needed for rates between refreshes."""

    iface: str | None
    interval: float = DEFAULT_INTERVAL
    refreshes: int = 0
    _rates: dict[tuple[str, ...], _Rate] = field(default_factory=dict)
    _cpu: dict[int, tuple[float, float]] = field(default_factory=dict)

    def _rate(self, key: tuple[str, ...], uptime: float, *values: float) -> tuple[float, ...]:
        """Per-second rates of ``values`` between the last two status documents."""
        prev = self._rates.get(key)
        if prev is None or uptime < prev.uptime:
            self._rates[key] = _Rate(uptime, values)
            return ()
        if uptime > prev.uptime:
            dt = uptime - prev.uptime
            rates = tuple(max(0.0, (v - p) / dt) for v, p in zip(values, prev.values, strict=True))
            self._rates[key] = _Rate(uptime, values, rates)
            return rates
        return prev.rates or ()  # the same status file as last time

    def _cpu_percent(self, pid: int) -> tuple[float, float | None]:
        """(CPU seconds so far, percent of one core since the last refresh) of ``pid``
        and its children."""
        total = sum(s.user + s.system for s in cpu_samples(pid))
        now = time.monotonic()
        prev = self._cpu.get(pid)
        self._cpu[pid] = (now, total)
        if prev is None or now <= prev[0]:
            return total, None
        return total, 100.0 * max(0.0, total - prev[1]) / (now - prev[0])

    def render(self) -> RenderableType:
        self.refreshes += 1
        names = [self.iface] if self.iface else commands._names()
        parts: list[RenderableType] = []
        for name in names:
            doc = commands._status(name)
            if doc is None:
                parts.append(Text(f"{name}: not running (waiting for its status file)", "red"))
                continue
            parts.extend(self._interface(name, doc))
        if not names:
            parts.append(Text("no netoffload interface is running", "yellow"))
        foot = f"refresh {self.refreshes}, every {self.interval:g} s; Ctrl-C ends"
        parts.append(Text(foot, "dim"))
        return Group(*parts)

    def _interface(self, name: str, doc: dict[str, Any]) -> list[RenderableType]:
        out: list[RenderableType] = []
        path = commands.STATE_DIR / f"{name}.status.json"
        try:
            age: float | None = time.time() - path.stat().st_mtime
        except OSError:
            age = None
        head = Text()
        head.append("interface ", "bold green")
        head.append(str(doc.get("interface", name)), "green")
        head.append(f"  port {doc.get('listen_port')}  pid {doc.get('pid')}")
        head.append(f"  up {_duration(float(doc.get('uptime_s') or 0))}")
        if age is not None:
            stale = age > STALE_S
            head.append(
                f"  status {age:.0f} s old" + (" (stale: is it still running?)" if stale else ""),
                "red" if stale else "dim",
            )
        out.append(head)
        pid = doc.get("pid")
        if isinstance(pid, int) and pid > 0:
            secs, pct = self._cpu_percent(pid)
            cpu = f"  cpu {secs:.1f} s"
            if pct is not None:
                cpu += f", {pct:.0f}% of a core now"
            out.append(Text(cpu + " (the tunnel's process and its children)"))
        uptime = float(doc.get("uptime_s") or 0)
        for p in doc.get("peers") or []:
            key = str(p.get("public_key"))
            rx, tx = int(p.get("rx_bytes") or 0), int(p.get("tx_bytes") or 0)
            rates = self._rate((name, "peer", key), uptime, rx, tx)
            line = Text()
            line.append("peer ", "bold yellow")
            line.append(key, "yellow")
            out.append(line)
            bits = [f"endpoint {p.get('endpoint') or '(none)'}"]
            bits.append(f"handshake {commands._age(p.get('handshake_age_s'))}")
            rxs = f"rx {commands._size(rx)}"
            txs = f"tx {commands._size(tx)}"
            if rates:
                rxs += f" ({_bps(rates[0])})"
                txs += f" ({_bps(rates[1])})"
            bits += [rxs, txs]
            out.append(Text("  " + "  ".join(bits)))
        stats = doc.get("stats") or {}
        if stats:
            out.append(Text("  " + "  ".join(f"{k} {v}" for k, v in stats.items()), "dim"))
        for side in ("transmit", "receive"):
            out.extend(self._engine(name, side, doc, uptime))
        return out

    def _engine(
        self, name: str, side: str, doc: dict[str, Any], uptime: float
    ) -> list[RenderableType]:
        eng = doc.get(side) or {}
        pol = eng.get("policy")
        split = pol.get("split") if isinstance(pol, dict) else None
        polname = str(pol.get("policy", pol.get("name", ""))) if isinstance(pol, dict) else str(pol)
        t = Table(title=f"{name} {side}: per task (policy {polname})", title_justify="left")
        for col in ("task", "device", "software", "pkt/s", "last split", "dropped", "errors"):
            t.add_column(col, justify="left" if col == "task" else "right")
        t.add_column("drops by reason", justify="left")
        for task, c in (eng.get("tasks") or {}).items():
            dev, soft = int(c.get("offloaded") or 0), int(c.get("software") or 0)
            rate = self._rate((name, side, str(task)), uptime, dev + soft)
            s = split.get(task) if isinstance(split, dict) else None
            last = "-"
            if isinstance(s, dict) and s.get("of"):
                last = f"{int(s.get('device') or 0)}/{int(s['of'])}"
            reasons = ", ".join(f"{k} {v}" for k, v in sorted((c.get("reasons") or {}).items()))
            t.add_row(
                str(task),
                str(dev),
                str(soft),
                f"{rate[0]:.0f}" if rate else "-",
                last,
                str(c.get("dropped", 0)),
                str(c.get("errors", 0)),
                reasons,
            )
        out: list[RenderableType] = [t]
        for d in (doc.get("offload") or {}).get(side) or []:
            tasks = ", ".join(d.get("tasks", []))
            out.append(Text(f"  device {d.get('device')}: {tasks}", "dim"))
        return out


def _duration(s: float) -> str:
    s = int(s)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


def _bps(bytes_per_s: float) -> str:
    bits = bytes_per_s * 8
    for unit in ("b/s", "kb/s", "Mb/s", "Gb/s"):
        if bits < 1000 or unit == "Gb/s":
            return f"{bits:.1f} {unit}" if unit != "b/s" else f"{bits:.0f} {unit}"
        bits /= 1000
    return f"{bits:.1f} Gb/s"


def check_args(args: argparse.Namespace) -> tuple[float, int | None]:
    """(interval, count) of ``show`` arguments; ConfigError for a bad combination."""
    interval = getattr(args, "interval", None)
    count = getattr(args, "count", None)
    if not getattr(args, "watch", False):
        raise ConfigError("--interval and --count go with --watch")
    if getattr(args, "json", False):
        raise ConfigError("--watch and --json: give one of them")
    if interval is None:
        interval = DEFAULT_INTERVAL
    if not (math.isfinite(interval) and interval > 0):
        raise ConfigError(f"--interval {interval:g}: must be a number of seconds > 0")
    if count is not None and count < 1:
        raise ConfigError(f"--count {count}: must be 1 or more")
    return float(interval), count


def watch(args: argparse.Namespace, console: Console) -> int:
    """Run the live view until Ctrl-C or ``--count`` refreshes; exit status 0."""
    interval, count = check_args(args)
    iface = getattr(args, "iface", None)
    if iface and commands._status(iface) is None:
        raise ConfigError(f"{iface}: not a running netoffload interface")
    view = WatchView(iface, interval)
    try:
        with Live(view.render(), console=console, auto_refresh=False) as live:
            live.refresh()
            while count is None or view.refreshes < count:
                time.sleep(interval)
                live.update(view.render(), refresh=True)
    except KeyboardInterrupt:
        pass
    return 0
