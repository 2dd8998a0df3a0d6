"""``netoffload demo``: the tunnel, end to end, with a report.

As root, in network namespaces this process makes (``testing.netns.Testbed``:
veth links, addresses from 198.18.0.0/15 and fd00::/8 only):

1. **netoffload <-> netoffload**: two namespaces joined by a veth, a
   netoffload tunnel in each (``Tunnel``, run in a forked child inside its
   namespace, which hands its ``status()`` back when stopped). A ping each way
   (one after the other: initiations that cross would each void the other's
   handshake until the retry), then real kernel sockets send content-checked
   streams through it both ways
   (``testing.streams``): TCP (``--bytes`` each way, IPv4 one way and IPv6 the
   other) and UDP (``--packets`` datagrams each way, sequence number and digest
   in every datagram), while a live line shows Gb/s, packets and handshakes.
2. **netoffload <-> wireguard-go** (the Debian ``wireguard-go``, configured with
   ``wg``; skipped with the reason if it is not installed): ping both ways,
   then the same TCP streams both ways.

Without root, one line says so and the same protocol runs between two
in-process endpoints: two ``LoopTunnel`` objects (``tunnel/loop.py``: the
tunnel's own engines and protocol core, never started; an in-process wire
instead of UDP sockets, the TUN writes collected) carrying synthetic TCP and
UDP streams (GSO super-packets as a TUN read gives them) both ways.

Each phase is bounded in bytes and in time (``--seconds``). The closing
report gives, per netoffload endpoint, the per-task counts of both engines
(device and software, drops by reason: ``Tunnel.status()``), the policy's
decisions and why, each stream's throughput and whether it was delivered
intact: the receiver's SHA-256 and byte count equal the sender's (for UDP:
every datagram, each intact). The exit code is 0 only if every stream (and
ping) was. ``--json FILE`` writes the report. Ctrl-C leaves nothing behind:
the children and wireguard-go are stopped, the UAPI socket and state files
they made removed, the namespaces deleted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn

from netoffload.batch import Batch
from netoffload.devices.kernel_common import gso_segments
from netoffload.errors import ConfigError, DeviceError
from netoffload.policy.config import policy_from_args
from netoffload.soft.checksum import to_partial
from netoffload.tables import compact_table
from netoffload.testing import streams as st
from netoffload.tunnel import keys
from netoffload.tunnel.config import TunnelConfig, parse_config
from netoffload.tunnel.datapath import HEADROOM, TAILROOM
from netoffload.tunnel.loop import LoopTunnel, LoopWire

MiB = 1 << 20
#: defaults: TCP bytes each way (namespaces; in process), UDP datagrams each way, seconds a phase
TCP_BYTES = 64 * MiB
TCP_BYTES_IN_PROCESS = 8 * MiB
UDP_DATAGRAMS = 3000
SECONDS = 12.0
MTU = 1420
PORT = 51820
#: the tunnel inside addresses of the two ends (both phases) and the veth addresses (per phase)
INNER = {"A": ("198.18.10.1", "fd00:10::1"), "B": ("198.18.10.2", "fd00:10::2")}
INNER_GO = {"A": ("198.18.11.1", "fd00:11::1"), "B": ("198.18.11.2", "fd00:11::2")}
UNDER = ("198.18.0.1", "198.18.0.2")
UNDER_GO = ("198.18.1.1", "198.18.1.2")
#: TCP and UDP ports the streams use inside the tunnel
TCP_PORT = 5201
UDP_PORT = 5301
STATE_DIR = Path("/run/netoffload")
SOCK_DIR = Path("/var/run/wireguard")


@dataclass(frozen=True)
class DemoOptions:
    policy: str | None = None
    policy_file: Path | None = None
    nic: str | None = None
    tcp_bytes: int | None = None  # None: TCP_BYTES (namespaces) / TCP_BYTES_IN_PROCESS
    udp_datagrams: int = UDP_DATAGRAMS
    batch: int = 64  # in process: packets a TUN read gives
    seconds: float = SECONDS
    json: Path | None = None
    in_process: bool = False


def options_from(args: argparse.Namespace) -> DemoOptions:
    o = DemoOptions(
        policy=getattr(args, "policy", None),
        policy_file=getattr(args, "policy_file", None),
        nic=getattr(args, "nic", None),
        tcp_bytes=parse_size(args.bytes) if getattr(args, "bytes", None) else None,
        udp_datagrams=int(getattr(args, "packets", UDP_DATAGRAMS)),
        batch=int(getattr(args, "batch", 64)),
        seconds=float(getattr(args, "seconds", SECONDS)),
        json=getattr(args, "json", None),
        in_process=bool(getattr(args, "in_process", False)),
    )
    if o.udp_datagrams < 1:
        raise ConfigError(f"--packets must be at least 1, not {o.udp_datagrams}")
    if o.batch < 1:
        raise ConfigError(f"--batch must be at least 1, not {o.batch}")
    if o.tcp_bytes is not None and o.tcp_bytes < 1:
        raise ConfigError(f"--bytes must be at least 1, not {o.tcp_bytes}")
    if not 0 < o.seconds <= 600:
        raise ConfigError(f"--seconds must be in (0, 600], not {o.seconds}")
    return o


def parse_size(text: str) -> int:
    """``64M``, ``512k``, ``1G`` or a number of bytes (``--bytes``)."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(t[-1:], 1)
    digits = t[:-1] if mult > 1 else t
    try:
        n = int(float(digits) * mult)
    except (ValueError, OverflowError):
        raise ConfigError(f"--bytes {text!r}: not a size (e.g. 64M)") from None
    return n


def run_demo(args: argparse.Namespace, console: Console) -> int:
    """``netoffload demo`` (the CLI entry)."""
    return demo(options_from(args), console)


def demo(opts: DemoOptions, console: Console, *, in_process: bool | None = None) -> int:
    """Run the demo; ``in_process`` forces (True) or forbids (False) the in-process mode
    (default: in process when not root, or with ``opts.in_process``)."""
    # the policy is checked (and named) before anything is made
    policy_name = policy_from_args(opts.policy, opts.policy_file, "adaptive")().name
    t0 = time.monotonic()
    if in_process is None:
        in_process = opts.in_process
        if not in_process:
            from netoffload.testing.netns import tun_available

            why = "not root" if os.geteuid() != 0 else tun_available()
            if why is not None:
                in_process = True
                console.print(
                    f"{why}: no namespaces, so two tunnels in this process over an in-process wire",
                    highlight=False,
                )
    pairs = [run_in_process(opts, console)] if in_process else run_namespaces(opts, console)
    report = _report(pairs, policy_name, "in-process" if in_process else "namespaces", opts)
    report["seconds"] = round(time.monotonic() - t0, 3)
    print_report(console, report)
    if opts.json is not None:
        try:
            opts.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
        except OSError as err:
            raise ConfigError(f"{opts.json}: cannot write: {err.strerror or err}") from None
    return 0 if report["ok"] else 1


# ----------------------------------------------------------------- configuration


def _conf_text(
    private: bytes,
    addrs: Sequence[str],
    peer: bytes,
    allowed: Sequence[str],
    endpoint: str,
) -> str:
    return (
        "[Interface]\n"
        f"PrivateKey = {keys.b64_encode(private)}\n"
        f"ListenPort = {PORT}\n"
        f"Address = {', '.join(addrs)}\n"
        f"MTU = {MTU}\n"
        "\n[Peer]\n"
        f"PublicKey = {keys.b64_encode(peer)}\n"
        f"AllowedIPs = {', '.join(allowed)}\n"
        f"Endpoint = {endpoint}:{PORT}\n"
    )


def _config(
    name: str,
    private: bytes,
    inner: tuple[str, str],
    peer: bytes,
    peer_inner: tuple[str, str],
    endpoint: str,
) -> TunnelConfig:
    text = _conf_text(
        private,
        [f"{inner[0]}/24", f"{inner[1]}/64"],
        peer,
        [f"{peer_inner[0]}/32", f"{peer_inner[1]}/128"],
        endpoint,
    )
    return parse_config(text, name, source=f"demo {name}")


def _tunnel_kw(opts: DemoOptions) -> dict[str, Any]:
    kw: dict[str, Any] = {"policy": opts.policy, "policy_file": opts.policy_file}
    if opts.nic is not None:
        kw["nic"] = opts.nic
    return kw


def _names(tag: str) -> tuple[str, str]:
    """Interface names unique on the machine (the UAPI socket path is shared)."""
    pid = os.getpid() % 10_000_000
    return f"nd{pid}{tag}a", f"nd{pid}{tag}b"


# ----------------------------------------------------------------- live line


class _Live:
    """One transient progress line: bytes delivered of all streams, Gb/s, packets,
    handshake messages."""

    def __init__(self, console: Console, title: str, total: int) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(bar_width=24),
            TextColumn("{task.fields[info]}"),
            console=console,
            transient=True,
        )
        self.title = title
        self.total = max(total, 1)
        self.task = self.progress.add_task(title, total=self.total, info="")
        self._hist: list[tuple[float, int]] = []

    def __enter__(self) -> _Live:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def update(self, done: int, packets: int, handshakes: int) -> None:
        now = time.monotonic()
        self._hist.append((now, done))
        while len(self._hist) > 2 and now - self._hist[0][0] > 1.0:
            self._hist.pop(0)
        t0, d0 = self._hist[0]
        gbps = (done - d0) * 8 / (now - t0) / 1e9 if now > t0 else 0.0
        info = f"{gbps:5.2f} Gb/s  {packets:,} packets  {handshakes} handshake messages"
        self.progress.update(self.task, completed=min(done, self.total), info=info)


def _counts(statuses: Sequence[dict[str, Any] | None]) -> tuple[int, int]:
    """(packets through, handshake messages sent) of our endpoints, from their stats."""
    pk = hs = 0
    for s in statuses:
        if not s:
            continue
        stats = s.get("stats") or {}
        pk += int(stats.get("tx_packets", 0)) + int(stats.get("rx_packets", 0))
        hs += int(stats.get("handshakes_out", 0))
    return pk, hs


# ----------------------------------------------------------------- in process


def tun_batch(pkts: Sequence[st.TunPacket]) -> Batch:
    """Packets as a TUN read with offloads gives them: TCP/UDP checksums partial
    (``NEEDS_CSUM``), GSO super-packets with their type and segment size."""
    b = Batch.from_packets([p for p, _, _ in pkts], headroom=HEADROOM, tailroom=TAILROOM)
    n = len(b)
    to_partial(b, np.ones(n, dtype=np.bool_))
    e = b.ext
    e.gso_type[:] = [g for _, g, _ in pkts]
    e.gso_size[:] = [s for _, _, s in pkts]
    ver = b.buf[b.start] >> 4
    e.l3_proto[:] = np.where(ver == 6, 6, 4)
    tcp = (e.gso_type == st.GSO_TCPV4) | (e.gso_type == st.GSO_TCPV6)
    l4 = b.start + e.csum_start.astype(np.int64)
    doff = (b.buf[np.minimum(l4 + 12, len(b.buf) - 1)] >> 4).astype(np.int64) * 4
    e.hdr_len[:] = e.csum_start.astype(np.int64) + np.where(tcp, doff, 8)
    gso = e.gso_type != 0
    e.hdr_len[~gso] = 0
    gso_segments(b, gso)
    return b


Flow = st.SynthTcp | st.SynthUdp


def run_in_process(
    opts: DemoOptions,
    console: Console,
    *,
    tamper: Callable[[bytes], bytes | None] | None = None,
) -> dict[str, Any]:
    """Two ``LoopTunnel`` objects on one ``LoopWire``; synthetic streams both ways.

    ``tamper`` sees (and may change or drop) every datagram on the wire."""
    nbytes = opts.tcp_bytes if opts.tcp_bytes is not None else TCP_BYTES_IN_PROCESS
    count = opts.udp_datagrams
    ska, skb = keys.generate_private(), keys.generate_private()
    pka, pkb = keys.public_from_private(ska), keys.public_from_private(skb)
    na, nb = _names("p")
    cfg_a = _config(na, ska, INNER["A"], pkb, INNER["B"], UNDER[1])
    cfg_b = _config(nb, skb, INNER["B"], pka, INNER["A"], UNDER[0])
    wire = LoopWire(tamper)
    (a4, a6), (b4, b6) = INNER["A"], INNER["B"]
    with contextlib.ExitStack() as stack:
        a = LoopTunnel(cfg_a, wire, UNDER[0], **_tunnel_kw(opts))
        stack.callback(a.close)
        b = LoopTunnel(cfg_b, wire, UNDER[1], **_tunnel_kw(opts))
        stack.callback(b.close)
        flows: dict[str, list[Flow]] = {
            "A": [
                st.SynthTcp("tcp A→B", a4, b4, 40001, TCP_PORT, nbytes, MTU - 40),
                st.SynthUdp("udp A→B", a6, b6, 40003, UDP_PORT, count),
            ],
            "B": [
                st.SynthTcp("tcp B→A", b6, a6, 40002, TCP_PORT + 1, nbytes, MTU - 60, seed=3),
                st.SynthUdp("udp B→A", b4, a4, 40004, UDP_PORT + 1, count, seed=4),
            ],
        }
        ends = {"A": a, "B": b}
        by_key = {f.key: f for fl in flows.values() for f in fl}
        unexpected = 0
        total = sum(f.total for f in by_key.values())

        def collect() -> int:
            nonlocal unexpected
            now = time.monotonic()
            for t in ends.values():
                for inner in t.take_delivered():
                    got = st.split_ip(inner.data)
                    f = by_key.get(got[0]) if got is not None else None
                    if got is None or f is None:
                        unexpected += 1
                        continue
                    f.deliver(got[1], got[2], inner.gso_size, now)
            return sum(f.done for f in by_key.values())

        a.handshake()
        wire.pump()
        t0 = time.monotonic()
        stop_at = t0 + opts.seconds
        last_tick = t0
        with _Live(console, "in process", total) as live:
            while True:
                busy = False
                for side, fl in flows.items():
                    pkts: list[st.TunPacket] = []
                    while len(pkts) < opts.batch:
                        got_any = False
                        for f in fl:
                            p = f.next_packet() if time.monotonic() < stop_at else None
                            if p is not None:
                                pkts.append(p)
                                got_any = True
                        if not got_any:
                            break
                    if pkts:
                        busy = True
                        ends[side].transmit(tun_batch(pkts))
                    wire.pump()
                done = collect()
                if time.monotonic() - last_tick > 0.25:
                    last_tick = time.monotonic()
                    wire.tick()
                    pk, hs = _counts([a.status(), b.status()])
                    live.update(done, pk, hs)
                if not busy:
                    break
            wire.tick()
            collect()
        results = [f.finish() for f in by_key.values()]
        return {
            "name": "netoffload ⇄ netoffload (in process)",
            "skipped": None,
            "where": f"an in-process wire: A {UNDER[0]}:{PORT} ⇄ B {UNDER[1]}:{PORT}",
            "endpoints": {"A": _plain(a.status()), "B": _plain(b.status())},
            "peer": None,
            "streams": [r.to_dict() for r in results],
            "pings": [],
            "wire": wire.counters.as_dict(),
            "unexpected_packets": unexpected,
        }


# ----------------------------------------------------------------- namespaces


def _plain(doc: Any) -> Any:
    """JSON-safe (numpy scalars, paths, ... become plain values or text)."""
    return json.loads(json.dumps(doc, default=_jsonable))


def _jsonable(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    return str(x)


def _serve(cfg: TunnelConfig, kw: dict[str, Any], ready_fd: int, limit: float) -> Any:
    """In the forked child, inside its namespace: run the tunnel until SIGTERM/SIGINT
    (or ``limit`` seconds), then hand back its status."""
    from netoffload.tunnel.tunnel import Tunnel

    tun = Tunnel(cfg, **kw)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: tun.stop())
    try:
        tun.start()
        tun.run(ready=lambda: _tell(ready_fd), until=time.monotonic() + limit)
        return _plain(tun.status())
    finally:
        tun.close()


def _tell(fd: int) -> None:
    os.write(fd, b"r")


class _TunnelChild:
    """A netoffload tunnel served by a forked child inside ``host``'s namespace."""

    def __init__(self, host: Any, cfg: TunnelConfig, opts: DemoOptions, limit: float) -> None:
        self.host = host
        self.cfg = cfg
        self.name = cfg.interface.name
        self.kw = _tunnel_kw(opts)
        self.limit = limit
        self.child: Any = None
        self.final: dict[str, Any] | None = None

    def start(self, timeout: float = 20.0) -> _TunnelChild:
        r, w = os.pipe()
        try:
            self.child = self.host.spawn(_serve, self.cfg, self.kw, w, self.limit)
            os.close(w)
            w = -1
            ready, _, _ = select.select([r], [], [], timeout)
            ok = bool(ready) and os.read(r, 1) == b"r"
        finally:
            os.close(r)
            if w >= 0:
                os.close(w)
        if not ok:
            why = f"not serving within {timeout:.0f} s"
            with contextlib.suppress(DeviceError):
                self.child.join(2)
            try:
                self.child.join(0.1)
            except DeviceError as e:
                why = str(e)
            self.cleanup()
            raise DeviceError(f"tunnel {self.name}: {why}")
        return self

    def status_now(self) -> dict[str, Any] | None:
        """What the serving tunnel last wrote (about once a second)."""
        try:
            doc = json.loads((STATE_DIR / f"{self.name}.status.json").read_text())
        except (OSError, ValueError):
            return None
        return doc if isinstance(doc, dict) else None

    def stop(self, timeout: float = 15.0) -> dict[str, Any]:
        """Stop serving; the tunnel's final ``status()`` (if the child does not give it
        within ``timeout``, it is killed and its last status file is taken)."""
        if self.final is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.child.pid, signal.SIGTERM)
            try:
                self.final = self.child.join(timeout)
            except DeviceError as e:
                self.final = dict(self.status_now() or {})
                self.final["error"] = str(e)
        return self.final or {}

    def cleanup(self) -> None:
        """Kill the child if it still runs; remove what it may have left."""
        if self.child is not None:
            with contextlib.suppress(Exception):
                self.child.kill()
        for p in (
            SOCK_DIR / f"{self.name}.sock",
            STATE_DIR / f"{self.name}.json",
            STATE_DIR / f"{self.name}.status.json",
        ):
            with contextlib.suppress(OSError):
                p.unlink()


Stream = st.TcpStream | st.UdpStream


def _run_streams(
    console: Console,
    title: str,
    streams: Sequence[Stream],
    ours: Sequence[_TunnelChild],
    seconds: float,
    stack: contextlib.ExitStack,
) -> list[st.StreamResult]:
    for s in streams:
        stack.callback(s.abort)
        s.start()
    total = sum(s.total for s in streams)
    with _Live(console, title, total) as live:
        end = time.monotonic() + seconds + 10.0
        while time.monotonic() < end:
            done = sum(s.done for s in streams)
            pk, hs = _counts([t.status_now() for t in ours])
            live.update(done, pk, hs)
            if not any(s.running for s in streams):
                break
            time.sleep(0.25)
    return [s.finish(max(0.1, end - time.monotonic())) for s in streams]


def run_namespaces(opts: DemoOptions, console: Console) -> list[dict[str, Any]]:
    """Both phases in namespaces of a ``Testbed`` (removed at the end, also on error)."""
    from netoffload.testing.netns import Testbed

    pairs: list[dict[str, Any]] = []
    with Testbed() as tb:
        pairs.append(_pair_ours(tb, opts, console))
        from netoffload.testing import wggo

        reason = wggo.available()
        if reason is not None:
            console.print(f"netoffload ⇄ wireguard-go: skipped: {reason}")
            pairs.append(_skipped("netoffload ⇄ wireguard-go", reason))
        else:
            pairs.append(_pair_wggo(tb, opts, console))
    return pairs


def _skipped(name: str, reason: str) -> dict[str, Any]:
    return {
        "name": name,
        "skipped": reason,
        "where": "",
        "endpoints": {},
        "peer": None,
        "streams": [],
        "pings": [],
    }


def _pair_ours(tb: Any, opts: DemoOptions, console: Console) -> dict[str, Any]:
    nbytes = opts.tcp_bytes if opts.tcp_bytes is not None else TCP_BYTES
    ha, hb = tb.host("demoa"), tb.host("demob")
    tb.link(ha, hb, addrs_a=[f"{UNDER[0]}/24"], addrs_b=[f"{UNDER[1]}/24"])
    ska, skb = keys.generate_private(), keys.generate_private()
    pka, pkb = keys.public_from_private(ska), keys.public_from_private(skb)
    na, nb = _names("n")
    (a4, a6), (b4, b6) = INNER["A"], INNER["B"]
    limit = opts.seconds + 60.0
    with contextlib.ExitStack() as stack:
        ta = _TunnelChild(ha, _config(na, ska, INNER["A"], pkb, INNER["B"], UNDER[1]), opts, limit)
        stack.callback(ta.cleanup)
        ta.start()
        tb_ = _TunnelChild(hb, _config(nb, skb, INNER["B"], pka, INNER["A"], UNDER[0]), opts, limit)
        stack.callback(tb_.cleanup)
        tb_.start()
        # one way first: the handshake (both at once would cross, and each side's
        # answer would void its own initiation until the retry, REKEY_TIMEOUT later)
        pings = [st.ping(ha, b4, "ping A→B (IPv4)"), st.ping(hb, a6, "ping B→A (IPv6)")]
        secs = opts.seconds
        n = opts.udp_datagrams
        streams: list[Stream] = [
            st.TcpStream("tcp A→B", ha, hb, b4, TCP_PORT, nbytes, secs, seed=1),
            st.TcpStream("tcp B→A", hb, ha, a6, TCP_PORT + 1, nbytes, secs, seed=3),
            st.UdpStream("udp A→B", ha, hb, b6, UDP_PORT, n, secs, seed=2),
            st.UdpStream("udp B→A", hb, ha, a4, UDP_PORT + 1, n, secs, seed=4),
        ]
        results = _run_streams(console, "netoffload ⇄ netoffload", streams, [ta, tb_], secs, stack)
        sa, sb = ta.stop(), tb_.stop()
    return {
        "name": "netoffload ⇄ netoffload",
        "skipped": None,
        "where": f"namespaces {ha.name} ⇄ {hb.name}, veth {UNDER[0]} ⇄ {UNDER[1]}",
        "endpoints": {"A": sa, "B": sb},
        "peer": None,
        "streams": [r.to_dict() for r in results],
        "pings": [p.to_dict() for p in pings],
    }


def _pair_wggo(tb: Any, opts: DemoOptions, console: Console) -> dict[str, Any]:
    from netoffload.testing.wggo import WireguardGo

    nbytes = opts.tcp_bytes if opts.tcp_bytes is not None else TCP_BYTES
    ha, hb = tb.host("democ"), tb.host("demod")
    tb.link(ha, hb, addrs_a=[f"{UNDER_GO[0]}/24"], addrs_b=[f"{UNDER_GO[1]}/24"])
    ska, skb = keys.generate_private(), keys.generate_private()
    pka, pkb = keys.public_from_private(ska), keys.public_from_private(skb)
    na, _ = _names("g")
    (a4, a6), (b4, b6) = INNER_GO["A"], INNER_GO["B"]
    limit = opts.seconds + 60.0
    go = WireguardGo(
        hb, private_key=skb, listen_port=PORT, addresses=[f"{b4}/24", f"{b6}/64"], mtu=MTU
    )
    with contextlib.ExitStack() as stack:
        stack.enter_context(go)
        go.set_peer(pka, allowed_ips=[f"{a4}/32", f"{a6}/128"], endpoint=(UNDER_GO[0], PORT))
        ta = _TunnelChild(
            ha, _config(na, ska, INNER_GO["A"], pkb, INNER_GO["B"], UNDER_GO[1]), opts, limit
        )
        stack.callback(ta.cleanup)
        ta.start()
        pings = [st.ping(ha, b4, "ping A→go (IPv4)"), st.ping(hb, a6, "ping go→A (IPv6)")]
        secs = opts.seconds
        streams: list[Stream] = [
            st.TcpStream("tcp A→go", ha, hb, b4, TCP_PORT, nbytes, secs, seed=5),
            st.TcpStream("tcp go→A", hb, ha, a6, TCP_PORT + 1, nbytes, secs, seed=6),
        ]
        results = _run_streams(console, "netoffload ⇄ wireguard-go", streams, [ta], secs, stack)
        peer: dict[str, Any] | None = None
        with contextlib.suppress(Exception):
            p = go.dump().peers[pka]
            peer = {
                "software": "wireguard-go",
                "interface": go.name,
                "endpoint": p.endpoint,
                "latest_handshake": p.latest_handshake,
                "rx_bytes": p.rx_bytes,
                "tx_bytes": p.tx_bytes,
            }
        sa = ta.stop()
    return {
        "name": "netoffload ⇄ wireguard-go",
        "skipped": None,
        "where": f"namespaces {ha.name} ⇄ {hb.name}, veth {UNDER_GO[0]} ⇄ {UNDER_GO[1]}",
        "endpoints": {"A": sa},
        "peer": peer,
        "streams": [r.to_dict() for r in results],
        "pings": [p.to_dict() for p in pings],
    }


# ----------------------------------------------------------------- the report


def _report(
    pairs: list[dict[str, Any]], policy: str, mode: str, opts: DemoOptions
) -> dict[str, Any]:
    streams = [s for p in pairs for s in p["streams"]]
    pings = [x for p in pairs for x in p["pings"]]
    for p in pairs:
        ran = bool(p["streams"]) and all(s["intact"] for s in p["streams"])
        ran = ran and all(x["ok"] for x in p["pings"]) and not p.get("unexpected_packets")
        # an endpoint whose status did not come back (it is then the last one it wrote)
        ran = ran and not any("error" in d for d in p["endpoints"].values())
        p["ok"] = p["skipped"] is not None or ran
    intact = sum(1 for s in streams if s["intact"])
    return {
        "mode": mode,
        "policy": policy,
        "nic": opts.nic or "none",
        "pairs": pairs,
        "streams": len(streams),
        "intact": intact,
        "pings": len(pings),
        "pings_ok": sum(1 for x in pings if x["ok"]),
        "ok": bool(streams) and all(p["ok"] for p in pairs),
    }


def _fmt_bytes(n: float) -> str:
    for unit, k in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= k:
            return f"{n / k:.1f}{unit}"
    return f"{int(n)}B"


def _fmt_ns(ns: float) -> str:
    ms = ns / 1e6
    return f"{ms:.1f}ms" if ms < 10 else f"{ms:,.0f}ms"


#: reasons a packet leaves an engine without being lost
_NOT_LOST = {
    "handshake": "to the protocol core",
    "keepalive": "a keepalive, consumed",
    "staged": "held for the handshake",
    "cookie_needed": "answered with a cookie",
}


def _engine_rows(side: str, eng: dict[str, Any]) -> Iterator[list[str]]:
    for task, c in (eng.get("tasks") or {}).items():
        yield [
            f"{side} {task}",
            str(c.get("offloaded", 0)),
            str(c.get("software", 0)),
            str(c.get("dropped", 0)),
            str(c.get("errors", 0)),
            _fmt_bytes(int(c.get("bytes", 0))),
            _fmt_ns(int(c.get("soft_ns", 0)) + int(c.get("device_ns", 0))),
        ]


def _drop_line(ep: str, doc: dict[str, Any]) -> str:
    parts = []
    for side, key in (("tx", "transmit"), ("rx", "receive")):
        for task, c in ((doc.get(key) or {}).get("tasks") or {}).items():
            for r, n in sorted((c.get("reasons") or {}).items()):
                note = f" ({_NOT_LOST[r]})" if r in _NOT_LOST else ""
                parts.append(f"{side} {task} {r} {n}{note}")
    return f"{ep} drops by reason: {'; '.join(parts) or 'none'}"


def _policy_lines(ep: str, side: str, pol: Any) -> Iterator[str]:
    """The policy's decisions per task (device / software), and why the last split of
    each task a device could take went as it did."""
    if not isinstance(pol, dict):
        yield f"{ep} {side} policy {pol}"
        return
    name = pol.get("policy", "?")
    decisions = pol.get("decisions") or (pol.get("failover") or {}).get("decisions") or {}
    split, soft_only = [], []
    for task, d in decisions.items() if isinstance(decisions, dict) else ():
        if not isinstance(d, dict):
            continue
        if d.get("device"):
            extra = ", ".join(
                f"{k} {v}" for k, v in d.items() if k not in ("device", "software") and v
            )
            split.append(
                f"{task} {d['device']} device / {d.get('software', 0)} software"
                + (f" ({extra})" if extra else "")
            )
        else:
            soft_only.append(task)
    parts = split + ([f"software only: {', '.join(soft_only)}"] if soft_only else [])
    yield f"{ep} {side} policy {name}: " + ("; ".join(parts) or "no decisions (no device)")
    why = pol.get("why") or {}
    for task, w in why.items() if isinstance(why, dict) else ():
        if not isinstance(w, dict) or w.get("why") == "no device can do them":
            continue
        costs = ", ".join(f"{k.removesuffix('_us')} {w[k]}us" for (k,) in _COSTS if k in w)
        yield (
            f"  {task}: last split {w.get('to_device', 0)}/{w.get('of', 0)} to the device"
            + (f" (a packet: {costs})" if costs else "")
            + f": {w.get('why', '')}"
        )


_COSTS = (("software_us",), ("device_us",), ("crossing_us",))


def _offload_lines(ep: str, doc: dict[str, Any]) -> Iterator[str]:
    off = doc.get("offload")
    if not isinstance(off, dict):
        return
    for side, key in (("tx", "transmit"), ("rx", "receive")):
        devs = off.get(key) or []
        names = [f"{d.get('device')} ({', '.join(d.get('tasks', []))})" for d in devs]
        yield f"{ep} {side} devices: {', '.join(names) or 'none (every stage in software)'}"


def _device_line(ep: str, doc: dict[str, Any]) -> str | None:
    parts = []
    for name, c in (doc.get("devices") or {}).items():
        if not isinstance(c, dict):
            continue
        shown = {k: v for k, v in c.items() if isinstance(v, int) and v and not isinstance(v, bool)}
        keep = list(shown.items())[:6]
        if keep:
            parts.append(f"{name}: " + ", ".join(f"{k} {v}" for k, v in keep))
    return f"{ep} devices: " + "; ".join(parts) if parts else None


def print_report(console: Console, report: dict[str, Any]) -> None:
    for pair in report["pairs"]:
        console.rule(f"[bold]{pair['name']}")
        if pair["skipped"] is not None:
            console.print(f"skipped: {pair['skipped']}")
            continue
        console.print(pair["where"])
        for ep, doc in pair["endpoints"].items():
            t = compact_table(
                f"{ep}: {doc.get('interface', '?')} (netoffload), policy "
                f"{report['policy']}, per task"
            )
            for col in ("task", "device", "software", "dropped", "errors", "bytes", "time"):
                t.add_column(col, justify="left" if col == "task" else "right", no_wrap=True)
            for side, key in (("tx", "transmit"), ("rx", "receive")):
                for row in _engine_rows(side, doc.get(key) or {}):
                    t.add_row(*row)
                t.add_section()
            console.print(t)
            if doc.get("error"):
                console.print(f"[red]{ep}: {doc['error']} (its last status shown)[/]")
            console.print(_drop_line(ep, doc), highlight=False)
            for line in _offload_lines(ep, doc):
                console.print(line, highlight=False)
            for side, key in (("tx", "transmit"), ("rx", "receive")):
                for line in _policy_lines(ep, side, (doc.get(key) or {}).get("policy")):
                    console.print(line, highlight=False)
            dl = _device_line(ep, doc)
            if dl:
                console.print(dl, highlight=False)
            proto = doc.get("protocol") or {}
            if proto:
                console.print(f"{ep} protocol drops: {proto}", highlight=False)
        if pair.get("peer"):
            p = pair["peer"]
            console.print(
                f"wireguard-go ({p['interface']}): {p['rx_bytes']:,} bytes received, "
                f"{p['tx_bytes']:,} sent, endpoint {p['endpoint']}",
                highlight=False,
            )
        t = compact_table("streams (content checked end to end)")
        for col in ("stream", "sent", "received", "datagrams", "s", "Gb/s", "sha256", "intact"):
            t.add_column(col, justify="left" if col in ("stream", "sha256") else "right")
        for s in pair["streams"]:
            dg = "-"
            if s["proto"] == "udp":
                dg = f"{s['datagrams_received']}/{s['datagrams_sent']}"
            mark = "[green]yes[/]" if s["intact"] else "[red]NO[/]"
            note = " (time limit)" if s.get("time_limited") else ""
            t.add_row(
                f"{s['name']} IPv{s['family']}{note}",
                _fmt_bytes(s["bytes_sent"]),
                _fmt_bytes(s["bytes_received"]),
                dg,
                f"{s['seconds']:.2f}",
                f"{s['gbps']:.3f}",
                s["sha256_received"][:12],
                mark,
            )
        console.print(t)
        for s in pair["streams"]:
            if s["error"]:
                console.print(f"[red]{s['name']}: {s['error']}[/]")
        for x in pair["pings"]:
            style = "green" if x["ok"] else "red"
            console.print(f"[{style}]{x['name']}: {x['received']} of {x['sent']} answered[/]")
    style = "green" if report["ok"] else "red"
    pings = f", pings {report['pings_ok']} of {report['pings']} answered" if report["pings"] else ""
    console.print(
        f"[{style}]delivered intact: {report['intact']} of {report['streams']} streams{pings}"
        f"[/{style}] ({report['mode']}, {report.get('seconds', 0):.1f} s)"
    )
