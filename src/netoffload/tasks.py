"""The ten tasks: names, directions, and the Linux feature names they map to.

One flag type (``Task``) for every set of tasks, one table of names
(``TASK_INFO``), as Linux does with ``netdev_features_t`` and its string set.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from netoffload._enum import NUMPY_PLAIN
from netoffload.errors import ConfigError


class Direction(enum.Flag):
    TX = 1
    RX = 2
    BOTH = 3


class Task(enum.IntFlag):
    """A task, or a set of tasks (bit flags). ``Task(0)`` is the empty set."""

    __array_ufunc__ = NUMPY_PLAIN  # numpy at int speed (see _enum)

    CHECKSUM = 1 << 0
    ENCRYPT = 1 << 1
    DIGEST = 1 << 2
    TCP_SEGMENT = 1 << 3
    UDP_SEGMENT = 1 << 4
    DECRYPT = 1 << 5
    TCP_ASSEMBLE = 1 << 6
    UDP_ASSEMBLE = 1 << 7
    CLASSIFY = 1 << 8
    DOS_FILTER = 1 << 9

    @property
    def index(self) -> int:
        """Stable numeric id of a single task (0..9), used in binary forms."""
        v = int(self)
        if v == 0 or v & (v - 1):
            raise ValueError("index of a set of tasks")
        return v.bit_length() - 1

    @property
    def kebab(self) -> str:
        return TASK_INFO[self].name

    @property
    def direction(self) -> Direction:
        return TASK_INFO[self].direction

    def members(self) -> Iterator[Task]:
        """The single tasks in this set, in id order."""
        return iter(members_of(int(self)))

    @classmethod
    def from_index(cls, index: int) -> Task:
        if not 0 <= index < len(ALL_TASKS):
            raise ValueError(f"no task with id {index}")
        return cls(1 << index)

    @classmethod
    def parse(cls, name: str) -> Task:
        """A kebab-case task name to its Task; raises ConfigError naming it."""
        t = _BY_NAME.get(name.strip().lower())
        if t is None:
            raise ConfigError(f"unknown task {name!r} (known: {', '.join(sorted(_BY_NAME))})")
        return t

    @classmethod
    def parse_list(cls, text: str) -> Task:
        """``"checksum,tcp-segment"`` to a task set; empty items are errors."""
        out = cls(0)
        for item in text.split(","):
            out |= cls.parse(item)
        return out


@dataclass(frozen=True)
class TaskInfo:
    name: str
    direction: Direction
    linux_features: tuple[str, ...]
    summary: str


TASK_INFO: dict[Task, TaskInfo] = {
    Task.CHECKSUM: TaskInfo(
        "checksum",
        Direction.BOTH,
        ("tx-checksum-ip-generic", "tx-checksum-ipv4", "tx-checksum-ipv6", "rx-checksum"),
        "IPv4 header and TCP/UDP checksums: compute on tx, verify on rx",
    ),
    Task.ENCRYPT: TaskInfo("encrypt", Direction.TX, ("esp-hw-offload",), "AEAD encryption (ESP)"),
    Task.DIGEST: TaskInfo(
        "digest", Direction.BOTH, (), "HMAC-SHA-256(-128), keyed BLAKE2s, CRC32C"
    ),
    Task.TCP_SEGMENT: TaskInfo(
        "tcp-segment",
        Direction.TX,
        ("tx-tcp-segmentation", "tx-tcp6-segmentation", "tx-tcp-ecn-segmentation"),
        "TCP segmentation (TSO)",
    ),
    Task.UDP_SEGMENT: TaskInfo(
        "udp-segment", Direction.TX, ("tx-udp-segmentation",), "UDP segmentation (USO)"
    ),
    Task.DECRYPT: TaskInfo("decrypt", Direction.RX, ("esp-hw-offload",), "AEAD decryption (ESP)"),
    Task.TCP_ASSEMBLE: TaskInfo("tcp-assemble", Direction.RX, ("rx-gro",), "TCP assembly (GRO)"),
    Task.UDP_ASSEMBLE: TaskInfo(
        "udp-assemble", Direction.RX, ("rx-udp-gro-forwarding",), "UDP assembly (UDP GRO)"
    ),
    Task.CLASSIFY: TaskInfo(
        "classify",
        Direction.BOTH,
        ("rx-ntuple-filter", "rx-hashing"),
        "rule tables, LPM, Toeplitz RSS hash",
    ),
    Task.DOS_FILTER: TaskInfo(
        "dos-filter", Direction.RX, (), "rate limits, SYN flood, drop lists, anti-replay"
    ),
}

ALL_TASKS: tuple[Task, ...] = tuple(Task(1 << i) for i in range(10))
_MEMBERS: dict[int, tuple[Task, ...]] = {}


_U16: dict[int, np.uint16] = {int(t): np.uint16(t) for t in ALL_TASKS}


def bit16(t: Task) -> np.uint16:
    """The bits of ``t`` as a numpy uint16 scalar, the operand numpy is fastest with
    (the ten single tasks made once)."""
    b = _U16.get(t)
    return np.uint16(t) if b is None else b


def members_of(bits: int) -> tuple[Task, ...]:
    """The single tasks of the set ``bits`` (an int or a Task), in id order; one
    tuple per set, made once (IntFlag ``&`` costs about a microsecond a call, and
    the engine and devices ask for the members of a few sets on every batch)."""
    m = _MEMBERS.get(bits)
    if m is None:
        b = int(bits)
        m = tuple(t for i, t in enumerate(ALL_TASKS) if b >> i & 1)
        if len(_MEMBERS) < 4096:  # 1024 sets of the ten tasks (more: bits above them)
            _MEMBERS[b] = m
    return m


#: The tasks that change packet counts (one packet in, several out, or the reverse).
RESHAPING: Task = Task.TCP_SEGMENT | Task.UDP_SEGMENT | Task.TCP_ASSEMBLE | Task.UDP_ASSEMBLE
_BY_NAME: dict[str, Task] = {info.name: t for t, info in TASK_INFO.items()}

#: Default stage order of each direction (a tunnel's view: inner work first on
#: transmit, outer work first on receive).
TX_ORDER: tuple[Task, ...] = (
    Task.CLASSIFY,
    Task.TCP_SEGMENT,
    Task.UDP_SEGMENT,
    Task.CHECKSUM,
    Task.ENCRYPT,
    Task.DIGEST,
)
RX_ORDER: tuple[Task, ...] = (
    Task.DOS_FILTER,
    Task.DIGEST,
    Task.DECRYPT,
    Task.CHECKSUM,
    Task.TCP_ASSEMBLE,
    Task.UDP_ASSEMBLE,
    Task.CLASSIFY,
)


def stage_order(direction: Direction, tasks: Iterable[Task] | Task) -> tuple[Task, ...]:
    """The tasks of ``tasks`` in the default order of ``direction``.

    Raises ConfigError for a task that does not run in that direction.
    """
    wanted = Task(0)
    for t in tasks if not isinstance(tasks, Task) else [tasks]:
        wanted |= t
    order = TX_ORDER if direction is Direction.TX else RX_ORDER
    for t in wanted.members():
        if not (t.direction & direction):
            raise ConfigError(f"task {t.kebab!r} does not run in direction {direction.name}")
    return tuple(t for t in order if wanted & t)
