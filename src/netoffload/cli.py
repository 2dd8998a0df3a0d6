"""``netoffload`` command line.

Bad arguments or files: one line on stderr, exit code 2, no traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from netoffload.errors import NetoffloadError
from netoffload.tables import compact_table


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"netoffload: error: {message}\n")
        raise SystemExit(2)


def _policy_args(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument(
        "--policy",
        metavar="SPEC",
        help=f"offload policy: NAME[+failover][:key=value,...] (default: {default})",
    )
    p.add_argument(
        "--policy-file", type=Path, metavar="FILE", help="the policy from a TOML/JSON file"
    )
    p.set_defaults(policy_default=default)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="netoffload",
        description="Per-packet, load-aware offload of packet-processing tasks.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    c = sub.add_parser("caps", help="what each device offers and has enabled")
    c.add_argument("--device", action="append", help="device name (repeatable); default: all")
    c.add_argument("--json", action="store_true", help="print JSON instead of tables")

    pc = sub.add_parser("pcap", help="apply tasks to a capture offline")
    g = pc.add_mutually_exclusive_group(required=True)
    g.add_argument("--tx", metavar="TASKS", help="transmit tasks, comma-separated")
    g.add_argument("--rx", metavar="TASKS", help="receive tasks, comma-separated")
    pc.add_argument("input", type=Path, metavar="IN", help="pcap or pcapng capture")
    pc.add_argument("output", type=Path, metavar="OUT", help="pcap file to write")
    pc.add_argument("--results", type=Path, metavar="FILE.jsonl", help="per-packet results")
    pc.add_argument("--mss", type=int, help="segment size for tcp-segment/udp-segment")
    pc.add_argument("--sa", type=Path, metavar="FILE", help="security associations (keys, SPIs)")
    pc.add_argument("--rules", type=Path, metavar="FILE", help="classification / filter rules")
    pc.add_argument(
        "--nic",
        choices=("none", "crypto", "full"),
        default="none",
        help="an emulated NIC (a process on its own core) the policy may give tasks to "
        "(default none: everything in software)",
    )
    _policy_args(pc, "never")

    d = sub.add_parser("demo", help="the tunnel end to end (namespaces as root), with a report")
    _policy_args(d, "adaptive")
    d.add_argument(
        "--nic",
        choices=("none", "crypto"),
        help="the tunnels' emulated NIC (default: none)",
    )
    d.add_argument("--packets", type=int, default=3000, help="UDP datagrams each way")
    d.add_argument(
        "--bytes", metavar="SIZE", help="TCP bytes each way (default 64M; 8M in process)"
    )
    d.add_argument("--seconds", type=float, default=12.0, help="time limit of each phase")
    d.add_argument("--batch", type=int, default=64, help="packets a TUN read (in process)")
    d.add_argument(
        "--in-process", action="store_true", help="two tunnels in this process (also as root)"
    )
    d.add_argument("--json", type=Path, metavar="FILE", help="also write the report as JSON")

    from netoffload.tunnel.commands import add_parsers

    add_parsers(sub, _policy_args)

    b = sub.add_parser("bench", help="benchmarks (ratios measured side by side)")
    b.add_argument("name", nargs="?", help="benchmark name; omit to list them")
    b.add_argument("--quick", action="store_true", help="finish within a minute on 2 cores")
    b.add_argument("--json", type=Path, metavar="FILE", help="write {bench, metrics} JSON")
    return p


def cmd_caps(args: argparse.Namespace, console: Console) -> int:
    from netoffload.devices.registry import devices, get_device, set_probe_bed
    from netoffload.errors import DeviceError
    from netoffload.testing.netns import Testbed

    set_probe_bed(Testbed)  # kernel devices are probed in throwaway namespaces
    names = args.device or sorted(devices())
    entries = [get_device(n) for n in names]
    docs: list[dict[str, object]] = []
    for e in entries:
        try:
            dev = e.factory()
        except (DeviceError, OSError) as err:
            docs.append({"device": e.name, "unavailable": str(err)})
            continue
        try:
            docs.append(dev.query().to_dict())
        finally:
            dev.close()
    if args.json:
        print(json.dumps(docs if len(docs) != 1 else docs[0], indent=2))
        return 0
    for doc in docs:
        if "unavailable" in doc:
            console.print(f"[bold]{doc['device']}[/bold]: unavailable: {doc['unavailable']}")
            continue
        t = compact_table(f"device {doc['device']}")
        # fixed columns never cut; lists (algorithms, features) wrap at their commas
        for col, wrap in (
            ("task", False),
            ("on", False),
            ("ip", False),
            ("max size", False),
            ("segs", False),
            ("algorithms", True),
            ("rules", False),
            ("features", True),
        ):
            t.add_column(col, no_wrap=not wrap, overflow="fold")
        enabled = {str(x["task"]) for x in doc["enabled"]}  # type: ignore[attr-defined]
        for r in doc["records"]:  # type: ignore[attr-defined]
            t.add_row(
                str(r["task"]),
                "yes" if r["task"] in enabled else "no",
                ",".join(f"v{v}" for v in r["ip_versions"]),
                str(r["max_offload_size"]),
                f"{r['min_segments']}-{r['max_segments']}",
                ", ".join(r["algorithms"]) or "-",
                str(r["max_rules"] or "-"),
                ", ".join(r["features"]) or "-",
            )
        console.print(t)
    return 0


def cmd_bench(args: argparse.Namespace, console: Console) -> int:
    from netoffload.bench import benches
    from netoffload.bench.runner import run_bench

    if not args.name:
        t = compact_table("benchmarks")
        t.add_column("name")
        t.add_column("what")
        for b in benches().values():
            t.add_row(b.name, b.summary)
        console.print(t)
        return 0
    run_bench(args.name, args.quick, args.json, console)
    return 0


def cmd_pcap(args: argparse.Namespace, console: Console) -> int:
    from netoffload.pcapjob import run_pcap

    return run_pcap(args, console)


def cmd_demo(args: argparse.Namespace, console: Console) -> int:
    from netoffload.demo import run_demo

    return run_demo(args, console)


def cmd_up(args: argparse.Namespace, console: Console) -> int:
    from netoffload.tunnel.commands import cmd_up as run

    return run(args, console)


def cmd_down(args: argparse.Namespace, console: Console) -> int:
    from netoffload.tunnel.commands import cmd_down as run

    return run(args, console)


def cmd_show(args: argparse.Namespace, console: Console) -> int:
    from netoffload.tunnel.commands import cmd_show as run

    return run(args, console)


COMMANDS = {
    "caps": cmd_caps,
    "pcap": cmd_pcap,
    "demo": cmd_demo,
    "bench": cmd_bench,
    "up": cmd_up,
    "down": cmd_down,
    "show": cmd_show,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console(stderr=False)
    try:
        return COMMANDS[args.command](args, console)
    except NetoffloadError as e:
        sys.stderr.write(f"netoffload: error: {e}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("netoffload: interrupted\n")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
