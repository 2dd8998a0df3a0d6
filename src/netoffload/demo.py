"""``netoffload demo``: the main job on its embedded default, end to end, with a report.

For now (before the tunnel): synthetic TCP and UDP flows over IPv4 and IPv6
(``testing.packets.synthetic_flows``) leave with their checksums blanked, go
through a transmit engine, cross a loopback wire, and pass a receive engine::

    synthetic flows -> TX engine -> loop-a ==wire==> loop-b -> RX engine -> delivered

Each loopback end is also the engine's device, enabled with everything it
reports (checksum fill on transmit, checksum check on receive); ``--policy``
(default ``always``) splits each task between the device and software. At the
end a table gives per-task counters of both directions (offloaded vs
software, dropped, errors, bytes, time) and the count of packets delivered
intact: per flow, the delivered L4 payload bytes are matched in order against
what was sent (a packet whose payload is missing or changed is not intact).
The exit code is 0 only if every packet was delivered intact. ``--json FILE``
also writes the report.

Tasks: a transmit task joins the demo when its software task (and that of
its receive partner) is available (``soft.available()``) and ``DEMO_TASKS``
has an entry for it, saying its options, the receive task that undoes or
matches it, that task's options, and optionally how to prepare each transmit
batch (per-packet extension fields). Entries now: checksum (fill / verify),
classify (both sides), tcp-segment and udp-segment (GSO size 536 on TCP resp.
UDP packets; tcp-assemble / udp-assemble on receive), encrypt / decrypt (ESP
tunnel mode, two fresh AES-GCM-128 SAs, one per IP family) and digest
(HMAC-SHA-256-128 trailer, fresh key). A task added later needs one entry.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from netoffload import soft
from netoffload.batch import Batch
from netoffload.devices.base import Device
from netoffload.devices.emulated_nic import EmulatedNIC, device_name, get_profile
from netoffload.devices.loopback import LoopbackPair
from netoffload.engine import Engine
from netoffload.errors import ConfigError
from netoffload.policy import LoadMonitor
from netoffload.policy.config import policy_from_namespace
from netoffload.policy.load import PsutilSampler
from netoffload.tables import compact_table, counter_row, counter_table
from netoffload.tasks import Direction, Task, stage_order
from netoffload.testing.packets import synthetic_flows
from netoffload.wire.parse import parse_batch


@dataclass
class DemoContext:
    """What the task entries share in one run (built lazily)."""

    mss: int = 536
    _sas: Any = None

    @property
    def sas(self) -> Any:
        """Two ESP SAs (AES-GCM-128, fresh keys): index 0 for IPv4 inner packets, 1 for IPv6,
        and a [digest] table (HMAC-SHA-256-128)."""
        if self._sas is None:
            from netoffload.sa import parse_sa_doc

            def sa(spi: int, src: str, dst: str) -> dict[str, Any]:
                return {
                    "name": f"demo-{spi:#x}",
                    "spi": spi,
                    "algorithm": "aes-gcm-128",
                    "key": os.urandom(20).hex(),
                    "src": src,
                    "dst": dst,
                }

            doc = {
                "sa": [
                    sa(0x1001, "198.18.0.1", "198.19.0.1"),
                    sa(0x1002, "fd00::1", "fd00::2"),
                ],
                "digest": {"algorithm": "hmac-sha256-128", "key": os.urandom(32).hex()},
            }
            self._sas = parse_sa_doc(doc, "demo SAs")
        return self._sas


Options = Callable[[DemoContext], dict[str, Any]]
Prepare = Callable[[Batch, DemoContext], None]


def _no_options(ctx: DemoContext) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class DemoTask:
    """How one transmit task takes part in the demo."""

    tx_options: Options = _no_options
    rx_task: Task | None = None  # the receive task that undoes (or matches) it, if any
    rx_options: Options = _no_options
    prepare: Prepare | None = None  # per-batch setup of the TX batch (after parsing)


def _only_proto(task: Task, proto: int) -> Prepare:
    """Ask for ``task`` only on packets of L4 protocol ``proto``."""

    def prep(b: Batch, ctx: DemoContext) -> None:
        other = b.ext.l4_proto != proto
        b.ext.tasks[other] &= np.uint16(~task & 0xFFFF)

    return prep


def _sa_by_family(b: Batch, ctx: DemoContext) -> None:
    e = b.ext
    e.sa[:] = np.where(e.l3_proto == 4, 0, np.where(e.l3_proto == 6, 1, -1))


#: transmit task -> how it takes part (see the module docstring)
DEMO_TASKS: dict[Task, DemoTask] = {
    Task.CHECKSUM: DemoTask(
        tx_options=lambda ctx: {"mode": "fill"},
        rx_task=Task.CHECKSUM,
        rx_options=lambda ctx: {"mode": "verify"},
    ),
    Task.CLASSIFY: DemoTask(rx_task=Task.CLASSIFY),
    Task.TCP_SEGMENT: DemoTask(
        tx_options=lambda ctx: {"gso_size": ctx.mss},
        rx_task=Task.TCP_ASSEMBLE,
        prepare=_only_proto(Task.TCP_SEGMENT, 6),
    ),
    Task.UDP_SEGMENT: DemoTask(
        tx_options=lambda ctx: {"gso_size": ctx.mss},
        rx_task=Task.UDP_ASSEMBLE,
        prepare=_only_proto(Task.UDP_SEGMENT, 17),
    ),
    Task.ENCRYPT: DemoTask(
        tx_options=lambda ctx: {"sas": ctx.sas},
        rx_task=Task.DECRYPT,
        rx_options=lambda ctx: {"sas": ctx.sas},
        prepare=_sa_by_family,
    ),
    Task.DIGEST: DemoTask(
        tx_options=lambda ctx: {"sas": ctx.sas, "mode": "compute"},
        rx_task=Task.DIGEST,
        rx_options=lambda ctx: {"sas": ctx.sas, "mode": "verify"},
    ),
}

SEED = 1
#: how far past a loss ``count_intact`` looks for the next packet of a flow
RESYNC = 1 << 16


def blank_checksums(b: Batch) -> None:
    """Zero the IPv4 header and TCP/UDP checksums of parsed packets (the TX side fills them)."""
    e = b.ext
    v4 = e.l3_proto == 4
    pos4 = b.start[v4] + e.l3_off[v4] + 10
    l4 = (e.l4_off >= 0) & np.isin(e.l4_proto, (6, 17))
    pos = b.start[l4] + e.l4_off[l4] + np.where(e.l4_proto[l4] == 6, 16, 6)
    for p in (pos4, pos):
        b.buf[p] = 0
        b.buf[p + 1] = 0


def _flow_key(p: bytes) -> tuple[bytes, bytes, int] | None:
    """(addresses, ports, protocol) and the payload offset of an IP TCP/UDP packet."""
    if not p:
        return None
    v = p[0] >> 4
    if v == 4 and len(p) >= 20:
        ihl = (p[0] & 15) * 4
        proto, addrs, l4 = p[9], p[12:20], ihl
    elif v == 6 and len(p) >= 40:
        proto, addrs, l4 = p[6], p[8:40], 40
    else:
        return None
    if proto not in (6, 17) or len(p) < l4 + 8:
        return None
    return addrs + bytes([proto]), p[l4 : l4 + 4], l4 + ((p[l4 + 12] >> 4) * 4 if proto == 6 else 8)


def _payloads(packets: Sequence[bytes]) -> list[tuple[bytes, bytes]]:
    out = []
    for p in packets:
        k = _flow_key(p)
        if k is None:
            out.append((b"", p))
        else:
            out.append((k[0] + k[1], p[k[2] :]))
    return out


def count_intact(sent: Sequence[bytes], delivered: Sequence[bytes]) -> int:
    """Sent packets whose L4 payload arrived unchanged, in order, in its flow.

    Per flow, the delivered payload bytes form a stream (segmentation and
    assembly may cut and join packets, never reorder bytes); each sent payload
    is looked for at its flow's current position, or, after a loss, a little
    further on (within ``RESYNC`` bytes), so a lost or damaged packet costs
    only itself.
    """
    streams: dict[bytes, bytearray] = {}
    for key, pl in _payloads(delivered):
        streams.setdefault(key, bytearray()).extend(pl)
    pos: dict[bytes, int] = {}
    intact = 0
    for key, pl in _payloads(sent):
        s = streams.get(key)
        if s is None:
            continue
        at = pos.get(key, 0)
        if s[at : at + len(pl)] == pl:
            found = at
        elif pl:
            found = s.find(pl, at, at + RESYNC + len(pl))
        else:
            found = -1
        if found >= 0:
            intact += 1
            pos[key] = found + len(pl)
    return intact


class _Rate(TextColumn):
    def __init__(self) -> None:
        super().__init__("{task.fields[rate]}")


def run_demo(args: argparse.Namespace, console: Console) -> int:
    n = int(args.packets)
    bsize = int(args.batch)
    if n < 1:
        raise ConfigError(f"--packets must be at least 1, not {n}")
    if bsize < 1:
        raise ConfigError(f"--batch must be at least 1, not {bsize}")
    new_policy = policy_from_namespace(args, "adaptive")
    avail = soft.available()
    tx_tasks = Task(0)
    rx_tasks = Task(0)
    for t, d in DEMO_TASKS.items():
        if t & avail and (d.rx_task is None or d.rx_task & avail):
            tx_tasks |= t
            if d.rx_task is not None:
                rx_tasks |= d.rx_task
    tx_stages = stage_order(Direction.TX, tx_tasks)
    rx_stages = stage_order(Direction.RX, rx_tasks)
    ctx = DemoContext()
    tx_lib = soft.SoftLibrary(
        {t: soft.make_task(t, **DEMO_TASKS[t].tx_options(ctx)) for t in tx_stages}
    )
    rx_opts = {d.rx_task: d.rx_options(ctx) for d in DEMO_TASKS.values() if d.rx_task is not None}
    rx_lib = soft.SoftLibrary({t: soft.make_task(t, **rx_opts[t]) for t in rx_stages})

    pair = LoopbackPair(tx_lib)
    pair.b.soft = rx_lib  # the receiving end checks with the receive library
    for end in (pair.a, pair.b):
        end.enable(*end.query().records)
    nic_name = getattr(args, "nic", "none")
    with contextlib.ExitStack() as stack:
        tx_devs: list[Device] = [pair.a]
        rx_devs: list[Device] = [pair.b]
        if nic_name != "none":
            # one emulated NIC per direction (each keyed like its side), on the other core
            tx_opts = {t: DEMO_TASKS[t].tx_options(ctx) for t in tx_stages}
            tx_devs.append(stack.enter_context(_nic(nic_name, tx_opts, tx_stages, "tx", bsize)))
            rx_devs.append(stack.enter_context(_nic(nic_name, rx_opts, rx_stages, "rx", bsize)))
        tx = Engine(Direction.TX, tx_tasks, tx_lib, new_policy(), tx_devs, _monitor())
        rx = Engine(Direction.RX, rx_tasks, rx_lib, new_policy(), rx_devs, _monitor())
        nic_cores: set[int] = set()
        for eng in (tx, rx):  # the NICs report their own service time, queue wait, crossing
            for k, dev in enumerate(eng.devices):
                if isinstance(dev, EmulatedNIC):
                    dev.attach(eng.monitor, k)
                    if dev.core is not None:
                        nic_cores.add(dev.core)
        stack.enter_context(_off_cores(nic_cores))
        return _run(args, console, n, bsize, ctx, tx, rx, pair, nic_name)


@contextlib.contextmanager
def _off_cores(cores: set[int]) -> Iterator[None]:
    """Keep this process off the NICs' cores while they run (a NIC polls its ring
    on its core: a host thread scheduled there waits for it, about a millisecond
    a batch here), when other cores are left; the affinity is restored after."""
    try:
        old = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        yield
        return
    rest = old - cores
    if not cores or not rest or rest == old:
        yield
        return
    os.sched_setaffinity(0, rest)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, old)


def _monitor() -> LoadMonitor:
    return LoadMonitor(sampler=PsutilSampler())


#: bytes a demo packet may take in a NIC ring region (the largest frame, its room,
#: its extension fields), with margin
_REGION_BYTES_A_PACKET = 3072


def _nic(
    profile: str,
    options: dict[Task, dict[str, Any]],
    stages: Sequence[Task],
    side: str,
    batch: int,
) -> EmulatedNIC:
    """The NIC of one side, its ring regions large enough for a whole batch (the
    engine gives a device only what one submit holds and keeps the rest in
    software, so with small regions the NIC would get only part of the batch)."""
    prof = get_profile(profile)
    opts = {t: o for t, o in options.items() if t & prof.tasks and t in stages}
    region = prof.region_bytes
    while region < batch * _REGION_BYTES_A_PACKET:
        region *= 2
    slots = max(4, min(prof.slots, (64 << 20) // region))  # at most 64 MB of rings
    return EmulatedNIC(
        prof, options=opts, name=device_name(profile, side), region_bytes=region, slots=slots
    )


def _run(
    args: argparse.Namespace,
    console: Console,
    n: int,
    bsize: int,
    ctx: DemoContext,
    tx: Engine,
    rx: Engine,
    pair: LoopbackPair,
    nic_name: str,
) -> int:
    tx_stages, rx_stages = tx.stages, rx.stages
    tx_tasks = rx_tasks = Task(0)
    for t in tx_stages:
        tx_tasks |= t
    for t in rx_stages:
        rx_tasks |= t

    sent = synthetic_flows(n, seed=SEED)
    delivered: list[bytes] = []
    t0 = time.perf_counter()
    with Progress(
        TextColumn("[bold]demo"),
        BarColumn(),
        MofNCompleteColumn(),
        _Rate(),
        console=console,
        transient=True,
    ) as progress:
        pid = progress.add_task("packets", total=n, rate="")
        for lo in range(0, n, bsize):
            chunk = sent[lo : lo + bsize]
            b = Batch.from_packets(chunk)
            parse_batch(b, ethernet=False)
            blank_checksums(b)
            b.ext.tasks[:] = np.uint16(tx_tasks)
            for t in tx_stages:
                prep = DEMO_TASKS[t].prepare
                if prep is not None:
                    prep(b, ctx)
            out = tx.process(b).delivered()
            pair.a.send(out)
            got = pair.b.recv(max_packets=1 << 30)
            parse_batch(got, ethernet=False)
            got.ext.tasks[:] = np.uint16(rx_tasks)
            delivered.extend(rx.process(got).delivered().packets())
            done = min(n, lo + bsize)
            el = time.perf_counter() - t0
            progress.update(pid, completed=done, rate=f"{done / el:,.0f} packets/s" if el else "")
    seconds = time.perf_counter() - t0
    intact = count_intact(sent, delivered)
    report: dict[str, Any] = {
        "packets": n,
        "batch": bsize,
        "policy": tx.policy.name,
        "nic": nic_name,
        "devices": {"tx": [d.name for d in tx.devices], "rx": [d.name for d in rx.devices]},
        "tasks": {
            "tx": [t.kebab for t in tx_stages],
            "rx": [t.kebab for t in rx_stages],
        },
        "tx": tx.report(),
        "rx": rx.report(),
        "wire": {"loop-a": pair.a.counters(), "loop-b": pair.b.counters()},
        "sent": n,
        "delivered": len(delivered),
        "intact": intact,
        "ok": intact == n,
        "seconds": seconds,
        "packets_per_second": n / seconds if seconds > 0 else 0.0,
    }
    _print(console, report, tx, rx)
    if args.json is not None:
        try:
            args.json.write_text(json.dumps(report, indent=2) + "\n")
        except OSError as err:
            raise ConfigError(f"{args.json}: cannot write: {err.strerror or err}") from None
    return 0 if intact == n else 1


def _why_of(policy: object) -> dict[str, dict[str, object]]:
    """The policy's (or, under failover, its inner policy's) reasons per task."""
    for p in (policy, getattr(policy, "inner", None)):
        describe = getattr(p, "describe", None)
        why = describe().get("why") if describe is not None else None
        if isinstance(why, dict) and why:
            return why
    return {}


def _print_why(console: Console, tx: Engine, rx: Engine) -> None:
    """Why the last split of each task went as it did: the model's costs per packet
    (software, the device's own, the host's crossing) and the reason."""
    rows = [(n, t, w) for n, e in (("tx", tx), ("rx", rx)) for t, w in _why_of(e.policy).items()]
    if not rows:
        return
    t = compact_table("why: the last split of each task (costs in us a packet)")
    for col in ("task", "to device", "sw", "device", "crossing", "why"):
        t.add_column(col, no_wrap=col != "why", overflow="fold")
    for side, task, w in rows:
        t.add_row(
            f"{side} {task}",
            f"{w.get('to_device', 0)}/{w.get('of', 0)}",
            *(str(w.get(k, "-")) for k in ("software_us", "device_us", "crossing_us")),
            str(w.get("why", "")),
        )
    console.print(t)


def _print(console: Console, report: dict[str, Any], tx: Engine, rx: Engine) -> None:
    t = counter_table(
        f"demo: policy {report['policy']}, {report['packets']} packets", extra=("% device",)
    )
    for name, eng in (("tx", tx), ("rx", rx)):
        for task, c in eng.counters.items():
            row = counter_row(task, c)
            done = c.offloaded + c.software
            split = f"{100 * c.offloaded / done:.0f}%" if done else "-"
            t.add_row(f"{name} {row[0]}", *row[1:], split)
        t.add_section()
    console.print(t)
    devs = report.get("devices", {})
    console.print(
        f"devices: tx {', '.join(devs.get('tx', []))}; rx {', '.join(devs.get('rx', []))}"
    )
    for name, eng in (("tx", tx), ("rx", rx)):
        decisions = eng.policy.describe().get("decisions")
        if decisions:
            console.print(f"{name} policy {eng.policy.name} decisions: {decisions}")
    _print_why(console, tx, rx)
    for name, eng in (("tx", tx), ("rx", rx)):
        for task, c in eng.counters.items():
            if c.reasons:
                why = ", ".join(f"{k}={v}" for k, v in sorted(c.reasons.items()))
                console.print(f"{name} {task.kebab} dropped: {why}")
    style = "green" if report["ok"] else "red"
    console.print(
        f"[{style}]delivered intact: {report['intact']} of {report['sent']}[/{style}] "
        f"({report['delivered']} delivered, {report['seconds']:.2f} s, "
        f"{report['packets_per_second']:,.0f} packets/s)"
    )
