"""``netoffload pcap``: apply tasks to a capture offline.

    netoffload pcap --tx checksum in.pcapng out.pcap --results out.jsonl
    netoffload pcap --rx checksum in.pcap out.pcap --results verdicts.jsonl

The capture (pcap or pcapng; Ethernet or raw-IP link types) is read in batches
of ``BATCH`` records; each batch is parsed, every packet asks for the given
tasks, and an ``Engine`` of the direction runs them (``--policy``, the software
library; no device is needed offline). Delivered packets are written to OUT
as pcap with the input's link type (raw-IP link types 101/228/229 become 101
when they are mixed; Ethernet mixed with raw IP is an error, as a pcap file
holds one link type); failed or dropped packets are not written but appear in
the results. ``--results`` writes one JSON object per output packet::

    {"index": 0, "length": 54, "delivered": true, "tasks": ["checksum"],
     "checksum": "good", "class_id": null, "rss_hash": 0, "dos-filter": "pass",
     "dos-filter-reason": "none", "error": null}

A task's verdict is under the task's own name (``checksum``, ``dos-filter``).

``index`` is the 0-based number of the input record the packet came from
(several lines share it when a task splits a packet); ``gso`` (type, size,
segments) is added where set. A record the capture cut short (captured
length below the original length) passes untouched, with no task done, and
``"truncated": true``.

Per-task options: the soft task of each task is built with the options that
``TASK_HOOKS[task].options(args, direction)`` returns (``make_task`` keyword
arguments), and ``TASK_HOOKS[task].prepare(batch, args, direction)``, when
given, sets per-packet extension fields (a GSO size, an SA index, ...) on each
parsed batch before the engine runs (``ext.tasks`` already holds the asked
tasks then; a hook may clear bits of packets its task should skip). A task
added to the command needs one entry, e.g.::

    TASK_HOOKS[Task.TCP_SEGMENT] = TaskHook(
        options=lambda args, d: {},
        prepare=lambda b, args, d: set_gso(b, need(args.mss, "--mss", Task.TCP_SEGMENT)),
    )

A task without an entry is built with no options.

A truncated or corrupt capture: the records read before the fault are
processed and written as usual (OUT and the results then hold the good
prefix; nothing is written when not even the first record could be read),
and then the command fails with one line naming the record and byte offset at
fault, and exit code 2. A missing or unreadable input, a bad task
list or a task of the wrong direction fail before anything is written.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

from netoffload.batch import Batch, CsumVerdict, FilterVerdict, GsoType, Reason
from netoffload.devices.base import Device
from netoffload.engine import Engine
from netoffload.errors import CaptureError, ConfigError
from netoffload.policy.config import policy_from_namespace
from netoffload.soft import SoftLibrary, make_task
from netoffload.tables import counter_row, counter_table
from netoffload.tasks import Direction, Task, stage_order
from netoffload.wire.parse import parse_batch
from netoffload.wire.pcap import (
    LINKTYPE_ETHERNET,
    LINKTYPE_RAW,
    RAW_IP_LINKTYPES,
    CaptureFault,
    CaptureFile,
    PcapWriter,
    Record,
    records_to_batch,
)

#: records per batch
BATCH = 1024
#: show a progress bar for inputs at least this large
PROGRESS_BYTES = 4 << 20

OptionsHook = Callable[[argparse.Namespace, Direction], dict[str, Any]]
PrepareHook = Callable[[Batch, argparse.Namespace, Direction], None]


@dataclass(frozen=True)
class TaskHook:
    """How the pcap command sets up one task (see the module docstring)."""

    options: OptionsHook
    prepare: PrepareHook | None = None


_TS_MAX = (1 << 63) - 1


def need(value: Any, flag: str, task: Task) -> Any:
    """``value``, or a ConfigError saying that ``task`` needs ``flag``."""
    if value is None:
        raise ConfigError(f"task {task.kebab!r} needs {flag}")
    return value


def _checksum_options(args: argparse.Namespace, d: Direction) -> dict[str, Any]:
    return {"mode": "fill" if d is Direction.TX else "verify"}


def _sa_table(args: argparse.Namespace, task: Task) -> Any:
    """The SA file of ``--sa``, loaded once per command."""
    from netoffload.sa import load_sa_file

    table = getattr(args, "_sa_table", None)
    if table is None:
        table = load_sa_file(need(args.sa, "--sa FILE", task))
        args._sa_table = table
    return table


def _encrypt_prepare(b: Batch, args: argparse.Namespace, d: Direction) -> None:
    """Each packet's SA: the first whose traffic selectors match its inner addresses."""
    table = _sa_table(args, Task.ENCRYPT)
    e = b.ext
    ver = e.l3_proto.astype(np.int64)
    l3 = b.start + e.l3_off
    src, dst = [], []
    for i in range(len(b)):
        o = int(l3[i])
        if ver[i] == 4:
            src.append(bytes(b.buf[o + 12 : o + 16]))
            dst.append(bytes(b.buf[o + 16 : o + 20]))
        elif ver[i] == 6:
            src.append(bytes(b.buf[o + 8 : o + 24]))
            dst.append(bytes(b.buf[o + 24 : o + 40]))
        else:
            src.append(b"")
            dst.append(b"")
    e.sa[:] = table.select(ver, src, dst)


def _classify_options(args: argparse.Namespace, d: Direction) -> dict[str, Any]:
    from netoffload.soft.rules import load_classify

    return {"rules": load_classify(need(args.rules, "--rules FILE", Task.CLASSIFY))}


def _dos_options(args: argparse.Namespace, d: Direction) -> dict[str, Any]:
    """The [dos] part of --rules; its clock is the capture's time (``_dos_prepare``)."""
    from netoffload.soft.rules import load_dos

    cfg = load_dos(need(args.rules, "--rules FILE", Task.DOS_FILTER))
    now = [0.0]
    args._dos_now = now
    return {"rules": cfg, "clock": lambda: now[0]}


def _dos_prepare(b: Batch, args: argparse.Namespace, d: Direction) -> None:
    """Rate limits see the capture's time: the batch is at its last record's timestamp."""
    args._dos_now[0] = float(getattr(args, "_batch_time", 0.0))


def _segment_options(args: argparse.Namespace, task: Task) -> dict[str, Any]:
    """tcp-segment / udp-segment: ``--mss N`` is the segment size; other protocols pass."""
    mss = need(args.mss, "--mss N", task)
    if not 1 <= mss <= 65535:
        raise ConfigError(f"--mss {mss}: the segment size must be 1..65535")
    return {"gso_size": mss, "other": "pass"}


#: per task: its make_task options from the arguments, and per-batch preparation
TASK_HOOKS: dict[Task, TaskHook] = {
    Task.TCP_SEGMENT: TaskHook(lambda args, d: _segment_options(args, Task.TCP_SEGMENT)),
    Task.UDP_SEGMENT: TaskHook(lambda args, d: _segment_options(args, Task.UDP_SEGMENT)),
    # coalesced packets leave a capture with complete checksums
    Task.TCP_ASSEMBLE: TaskHook(lambda args, d: {"csum": "full"}),
    Task.UDP_ASSEMBLE: TaskHook(lambda args, d: {"csum": "full"}),
    Task.CHECKSUM: TaskHook(_checksum_options),
    Task.ENCRYPT: TaskHook(
        lambda args, d: {"sas": _sa_table(args, Task.ENCRYPT)}, _encrypt_prepare
    ),
    Task.DECRYPT: TaskHook(
        lambda args, d: {"sas": _sa_table(args, Task.DECRYPT), "non_esp": "pass"}
    ),
    Task.DIGEST: TaskHook(
        lambda args, d: {
            "sas": _sa_table(args, Task.DIGEST),
            "mode": "compute" if d is Direction.TX else "verify",
        }
    ),
    Task.CLASSIFY: TaskHook(_classify_options),
    Task.DOS_FILTER: TaskHook(_dos_options, _dos_prepare),
}


def _hook(t: Task) -> TaskHook:
    return TASK_HOOKS.get(t, TaskHook(lambda args, d: {}))


def _enum_name(cls: Any, v: int) -> str:
    try:
        return str(cls(v).name).lower()
    except ValueError:
        return str(v)


def _result_lines(
    out: Batch, index: np.ndarray, alive: np.ndarray, cut: np.ndarray
) -> Iterator[str]:
    e = out.ext
    for i in range(len(out)):
        err = int(e.error[i])
        doc: dict[str, Any] = {
            "index": int(index[i]),
            "length": int(out.length[i]),
            "delivered": bool(alive[i]),
            "tasks": [t.kebab for t in Task(int(e.done[i])).members()],
            Task.CHECKSUM.kebab: _enum_name(CsumVerdict, int(e.csum_verdict[i])),
            "class_id": None if int(e.class_id[i]) < 0 else int(e.class_id[i]),
            "rss_hash": int(e.rss_hash[i]),
            Task.DOS_FILTER.kebab: _enum_name(FilterVerdict, int(e.filter_verdict[i])),
            f"{Task.DOS_FILTER.kebab}-reason": _enum_name(Reason, int(e.filter_reason[i])),
            "error": None if err == 0 else _enum_name(Reason, err),
        }
        if int(e.sa[i]) >= 0:  # ESP: the SA index (file order) and sequence number
            doc["sa"] = int(e.sa[i])
            doc["seq"] = int(e.seq[i])
        if cut[i]:
            doc["truncated"] = True
        if e.gso_type[i] or e.gso_size[i] or e.segs[i]:
            doc["gso"] = {
                "type": _enum_name(GsoType, int(e.gso_type[i])),
                "size": int(e.gso_size[i]),
                "segments": int(e.segs[i]),
            }
        yield json.dumps(doc)


class _Job:
    def __init__(
        self,
        args: argparse.Namespace,
        direction: Direction,
        tasks: Task,
        stack: ExitStack,
    ) -> None:
        self.args = args
        self.direction = direction
        self.tasks = tasks
        self.stages = stage_order(direction, tasks)
        opts = {t: _hook(t).options(args, direction) for t in self.stages}
        lib = SoftLibrary({t: make_task(t, **opts[t]) for t in self.stages})
        # the policy splits tasks between software and the devices there are: with
        # --nic, an emulated NIC running the same tasks with the same options
        devices: list[Device] = []
        nic = getattr(args, "nic", "none") or "none"
        if nic != "none":
            from netoffload.devices.emulated_nic import EmulatedNIC

            dev = EmulatedNIC(
                nic,
                options={t: opts[t] for t in self.stages},
                name=f"emulated-nic:{nic}",
            )
            stack.callback(dev.close)
            devices.append(dev)
        policy = policy_from_namespace(args, "adaptive" if devices else "never")()
        self.engine = Engine(direction, tasks, lib, policy, devices=devices)
        self.stack = stack
        self.writer: PcapWriter | None = None
        self.results: IO[str] | None = None
        self.records_in = 0
        self.written = 0
        self.dropped = 0

    def open_outputs(self, linktype: int, nanosecond: bool) -> None:
        out: Path = self.args.output
        try:
            f: BinaryIO = self.stack.enter_context(open(out, "wb"))  # noqa: SIM115
        except OSError as err:
            raise ConfigError(f"{out}: cannot write: {err.strerror or err}") from None
        self.writer = PcapWriter(f, linktype, nanosecond=nanosecond)
        if self.args.results is not None:
            try:
                self.results = self.stack.enter_context(
                    open(self.args.results, "w", encoding="utf-8")  # noqa: SIM115
                )
            except OSError as err:
                raise ConfigError(
                    f"{self.args.results}: cannot write: {err.strerror or err}"
                ) from None

    def _check_linktypes(self, recs: list[Record]) -> None:
        w = self.writer
        assert w is not None
        for k, r in enumerate(recs):
            if r.linktype == w.linktype:
                continue
            if r.linktype in RAW_IP_LINKTYPES and w.linktype in RAW_IP_LINKTYPES:
                w.relink(LINKTYPE_RAW)  # IPv4 and IPv6 mixed: the generic raw-IP type
                continue
            raise CaptureError(
                f"record {self.records_in + k + 1}: link type {r.linktype} differs from "
                f"the output's {w.linktype} (a pcap file holds one link type)"
            )

    def run_batch(self, recs: list[Record]) -> None:
        if not recs:
            return
        self._check_linktypes(recs)
        b = records_to_batch(recs, first=self.records_in + 1)
        parse_batch(b)
        self.args._batch_time = max(r.ts_ns for r in recs) / 1e9  # for time-based tasks
        b.ext.tasks[:] = np.uint16(self.tasks)
        for t in self.stages:
            prep = _hook(t).prepare
            if prep is not None:
                prep(b, self.args, self.direction)
        missing = np.fromiter(
            (max(0, r.orig_len - len(r.data)) for r in recs), dtype=np.int64, count=len(recs)
        )
        # a record cut short by the capture's snap length passes untouched (no task can
        # work on bytes that were not captured); the results mark it "truncated"
        b.ext.tasks[missing > 0] = 0
        base_in = self.engine.packets_in
        base_rec = self.records_in
        res = self.engine.process(b)
        out = res.batch
        alive = res.alive
        index = base_rec + (out.ext.origin - base_in)
        # a corrupt pcapng can claim a time past 2**63 ns: clamp (pcap keeps 32-bit seconds)
        ts = np.fromiter((min(r.ts_ns, _TS_MAX) for r in recs), dtype=np.int64, count=len(recs))
        local = index - base_rec
        assert self.writer is not None
        w = self.writer
        for i in np.flatnonzero(alive):
            k = int(local[i])
            n = int(out.length[i])
            w.write(out.packet(int(i)), int(ts[k]), n + int(missing[k]))
        self.written += int(alive.sum())
        self.dropped += int((~alive).sum())
        if self.results is not None:
            for line in _result_lines(out, index, alive, missing[local] > 0):
                self.results.write(line + "\n")
        self.records_in += len(recs)


def _batches(f: CaptureFile, size: int, faults: list[CaptureFault]) -> Iterator[list[Record]]:
    """Chunks of records; on a fault, the records before it, then the fault in ``faults``."""
    chunk: list[Record] = []
    try:
        for r in f:
            chunk.append(r)
            if len(chunk) >= size:
                yield chunk
                chunk = []
    except CaptureFault as err:
        faults.append(err)
    if chunk:
        yield chunk


def _parse_direction(args: argparse.Namespace) -> tuple[Direction, Task]:
    if args.tx is not None:
        flag, text, d = "--tx", args.tx, Direction.TX
    else:
        flag, text, d = "--rx", args.rx, Direction.RX
    try:
        tasks = Task.parse_list(text)
        stage_order(d, tasks)
    except ConfigError as err:
        raise ConfigError(f"{flag} {text!r}: {err}") from None
    return d, tasks


def run_pcap(args: argparse.Namespace, console: Console) -> int:
    direction, tasks = _parse_direction(args)
    if args.input.resolve() == args.output.resolve():
        raise ConfigError(f"{args.output}: the output would overwrite the input")
    t0 = time.perf_counter()
    faults: list[CaptureFault] = []
    with ExitStack() as stack:
        job = _Job(args, direction, tasks, stack)
        cap = stack.enter_context(CaptureFile(args.input))
        reader = cap.reader
        progress: Progress | None = None
        task_id = None
        if reader.size >= PROGRESS_BYTES:
            progress = stack.enter_context(
                Progress(
                    TextColumn("[bold]{task.description}"),
                    BarColumn(),
                    DownloadColumn(),
                    TextColumn("{task.fields[packets]} packets"),
                    TimeRemainingColumn(),
                    console=console,
                    transient=True,
                )
            )
            task_id = progress.add_task(str(args.input.name), total=reader.size, packets=0)
        for recs in _batches(cap, BATCH, faults):
            if job.writer is None:
                job.open_outputs(recs[0].linktype, reader.nanosecond)
            job.run_batch(recs)
            if progress is not None and task_id is not None:
                progress.update(task_id, completed=reader.offset, packets=job.records_in)
        if job.writer is None and not faults:
            # an empty capture still gives a valid (empty) output
            lt = reader.linktype if reader.linktype >= 0 else LINKTYPE_ETHERNET
            job.open_outputs(lt, reader.nanosecond)
        cap.close()
    _summary(console, job, time.perf_counter() - t0)
    if faults:
        raise CaptureError(
            f"{faults[0]} ({job.records_in} records before it were processed and written)"
        )
    return 0


def _summary(console: Console, job: _Job, seconds: float) -> None:
    d = "tx" if job.direction is Direction.TX else "rx"
    t = counter_table(
        f"pcap {d}: {job.records_in} records in, "
        f"{job.written} written, {job.dropped} dropped ({seconds:.2f} s)"
    )
    for task, c in job.engine.counters.items():
        t.add_row(*counter_row(task, c))
    console.print(t)
    for task, c in job.engine.counters.items():
        if c.reasons:
            why = ", ".join(f"{k}={v}" for k, v in sorted(c.reasons.items()))
            console.print(f"{task.kebab} dropped: {why}")
