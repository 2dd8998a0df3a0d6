"""The tables the commands print: compact, so that they fit a log's 80 columns
(rich cuts every cell of a wider table to an ellipsis in a pipe)."""

from __future__ import annotations

from rich import box
from rich.table import Table

from netoffload.engine import TaskCounters
from netoffload.tasks import Task

#: the columns of ``counter_row``
COUNTER_COLUMNS = ("task", "device", "software", "dropped", "errors", "bytes", "time")


def compact_table(title: str) -> Table:
    """A table without edges, one space between columns."""
    return Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 1, 0, 0))


def counter_table(title: str, extra: tuple[str, ...] = ()) -> Table:
    """A compact table with the ``COUNTER_COLUMNS`` (and ``extra`` ones after)."""
    t = compact_table(title)
    for col in (*COUNTER_COLUMNS, *extra):
        t.add_column(col, justify="left" if col == "task" else "right", no_wrap=True)
    return t


def counter_row(task: Task, c: TaskCounters) -> list[str]:
    """A task's counters as the cells of ``COUNTER_COLUMNS`` (device: offloaded)."""
    return [
        task.kebab,
        str(c.offloaded),
        str(c.software),
        str(c.dropped),
        str(c.errors),
        _fmt_bytes(c.bytes),
        _fmt_ns(c.soft_ns + c.device_ns),
    ]


def _fmt_ns(ns: int) -> str:
    ms = ns / 1e6
    return f"{ms:.1f}ms" if ms < 10 else f"{ms:,.0f}ms"


def _fmt_bytes(n: int) -> str:
    for unit, k in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= k:
            return f"{n / k:.1f}{unit}"
    return f"{n}B"
