"""The kernel's socket filter that also knows the live receiver indices.

``datapath.shape_filter`` drops, at the socket, any datagram that is no WireGuard
message by type and length; random junk ends there. A datagram shaped like a
transport data message (type 4, at least 32 bytes) passes it whatever its receiver
index, reaches the tunnel's process and costs it a read and a look-up before
``WgFilter`` drops it for an unknown index (``unknown_index``). An attacker who knows
the format sends exactly that.

``live_filter(indices)`` is the shape filter plus one more check: a data message, a
handshake response or a cookie reply is kept only if its receiver index is one of
``indices`` -- the tunnel's local indices (keypairs and handshakes in progress, as
``Protocol`` hands them out). Initiations carry no receiver: they are checked by
shape only, as before. The indices are laid out as a balanced binary search tree of
comparisons (cBPF has no maps): about ``2 log2(n) + 8`` instructions a data message for
``n`` live indices. More than ``MAX_INDICES`` of them do not fit a classic-BPF program
(4096 instructions): the filter is then the shape filter alone.

``IndexFilter`` keeps a socket's program in step: ``refresh(indices)`` rebuilds and
re-attaches it when the set changed (``SO_ATTACH_FILTER`` swaps programs atomically).
A new local index must be in the program before the message that announces it leaves
(the peer answers to it within a round trip): call ``refresh`` before sending
handshake messages. ``keep_live(device, indices)`` is that in one call for a device
with ``attach_filter`` (its ``IndexFilter`` made on first use). Offsets are from the
UDP header, as a UDP socket's filter runs; the receiver index is little-endian on the
wire and a cBPF word load is big-endian, so the program compares byte-swapped values.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any

from netoffload.errors import NetoffloadError
from netoffload.wire.wireguard import (
    COOKIE_LEN,
    DATA_MIN_LEN,
    INITIATION_LEN,
    MSG_COOKIE,
    MSG_DATA,
    MSG_INITIATION,
    MSG_RESPONSE,
    RESPONSE_LEN,
)

Insn = tuple[int, int, int, int]

#: the most live indices one program holds (about 2.8 instructions each, of 4096)
MAX_INDICES = 1024
#: indices compared one after the other at a leaf of the tree
_LEAF = 4
_UDP = 8  # the payload starts after the UDP header
#: where the receiver index is in a message of each type (payload offsets)
RECEIVER_AT = {MSG_DATA: 4, MSG_RESPONSE: 8, MSG_COOKIE: 4}

# classic BPF opcodes
_LD_LEN, _LD_W_ABS, _LD_MEM, _ST = 0x80, 0x20, 0x60, 0x02
_SUB_K, _RSH_K, _MOD_K = 0x14, 0x74, 0x94
_JA, _JEQ, _JGT, _JGE, _JSET = 0x05, 0x15, 0x25, 0x35, 0x45
_RET_K = 0x06
KEEP, DROP = 0xFFFFFFFF, 0


def wire_word(index: int) -> int:
    """What a cBPF word load reads where the little-endian ``index`` is."""
    return int.from_bytes((index & 0xFFFFFFFF).to_bytes(4, "little"), "big")


def live_filter(indices: Iterable[int] | None) -> tuple[Insn, ...]:
    """The socket filter (see the module docstring) for these live local indices; None:
    the shape checks alone (``datapath.shape_filter``)."""
    words = sorted({wire_word(i) for i in indices}) if indices is not None else []
    check_index = indices is not None and len(words) <= MAX_INDICES
    # (code, jt, jf, k) with labels for the jumps; resolved below
    prog: list[tuple[int, str | int, str | int, int | str]] = [
        (_LD_LEN, 0, 0, 0),
        (_SUB_K, 0, 0, _UDP),  # A = payload length
        (_ST, 0, 0, 0),  # M[0] = payload length
        (_LD_W_ABS, 0, 0, _UDP),  # A = the first word (a short datagram: dropped)
        (_JSET, "drop", 0, 0x00FFFFFF),  # reserved bytes must be zero
        (_RSH_K, 0, 0, 24),  # A = type
        (_JEQ, "data", 0, MSG_DATA),
        (_JEQ, "init", 0, MSG_INITIATION),
        (_JEQ, "resp", 0, MSG_RESPONSE),
        (_JEQ, "cookie", "drop", MSG_COOKIE),
    ]
    labels: dict[str, int] = {}

    def block(name: str, t: int, ok: list[tuple[int, str | int, str | int, int | str]]) -> None:
        labels[name] = len(prog)
        prog.append((_LD_MEM, 0, 0, 0))
        prog.extend(ok)
        if t in RECEIVER_AT and check_index:
            prog.append((_LD_W_ABS, 0, 0, _UDP + RECEIVER_AT[t]))
            prog.append((_JA, 0, 0, "tree"))
        else:
            prog.append((_RET_K, 0, 0, KEEP))

    block("data", MSG_DATA, [(_JGE, 0, "drop", DATA_MIN_LEN)])
    for name, t, n in (
        ("init", MSG_INITIATION, INITIATION_LEN),
        ("resp", MSG_RESPONSE, RESPONSE_LEN),
        ("cookie", MSG_COOKIE, COOKIE_LEN),
    ):  # UDP_GRO hands up a train of one size: a multiple of the message's length
        block(name, t, [(_MOD_K, 0, 0, n), (_JEQ, 0, "drop", 0)])
    labels["drop"] = len(prog)
    prog.append((_RET_K, 0, 0, DROP))
    labels["tree"] = len(prog)
    _tree(prog, words)

    def rel(i: int, j: str | int) -> int:
        return labels[j] - i - 1 if isinstance(j, str) else j

    out = []
    for i, (c, jt, jf, k) in enumerate(prog):
        kk = rel(i, k) if isinstance(k, str) else k
        out.append((c, rel(i, jt), rel(i, jf), kk))
    return tuple(out)


def _tree(prog: list[tuple[int, str | int, str | int, int | str]], words: list[int]) -> None:
    """A = the loaded receiver word: keep if it is one of ``words`` (sorted), else drop.
    Inner nodes: ``jgt pivot`` (true: a ``ja`` over the left subtree, whose length
    a conditional jump's 8 bits may not reach); leaves compare one by one."""
    if len(words) <= _LEAF:
        for w in words:
            prog.append((_JEQ, 0, 1, w))
            prog.append((_RET_K, 0, 0, KEEP))
        prog.append((_RET_K, 0, 0, DROP))
        return
    mid = len(words) // 2
    prog.append((_JGT, 0, 1, words[mid - 1]))
    at = len(prog)
    prog.append((_JA, 0, 0, 0))  # to the right subtree, patched below
    _tree(prog, words[:mid])
    prog[at] = (_JA, 0, 0, len(prog) - at - 1)
    _tree(prog, words[mid:])


class IndexFilter:
    """A socket's ``live_filter`` kept in step with the live indices.

    ``attach`` installs a program (``UdpIpDevice.attach_filter``; several sockets: a
    function that attaches to each)."""

    def __init__(self, attach: Callable[[Sequence[Insn]], None]) -> None:
        self._attach = attach
        self._live: frozenset[int] | None = None
        #: programs attached so far (a rebuild each time the set changed)
        self.rebuilds = 0
        self.instructions = 0

    @property
    def checks_index(self) -> bool:
        """The attached program checks receiver indices (not too many of them)."""
        return self._live is not None and len(self._live) <= MAX_INDICES

    def refresh(self, indices: Collection[int]) -> bool:
        """Attach the program for ``indices`` if they differ from the last; True if it did.
        An error of ``attach`` propagates (the caller keeps the shape filter then)."""
        live = frozenset(indices)
        if live == self._live:
            return False
        prog = live_filter(live)
        self._attach(prog)
        self._live = live
        self.rebuilds += 1
        self.instructions = len(prog)
        return True

    def describe(self) -> dict[str, object]:
        return {
            "live_indices": len(self._live or ()),
            "checks_index": self.checks_index,
            "rebuilds": self.rebuilds,
            "instructions": self.instructions,
        }


_FILTERS: weakref.WeakKeyDictionary[Any, IndexFilter] = weakref.WeakKeyDictionary()


def keep_live(device: Any, indices: Collection[int]) -> bool:
    """Refresh ``device``'s live-index filter (``device.attach_filter`` installs it; the
    first call makes its ``IndexFilter``); a list or tuple of devices: each of them.
    True if a new program went in. When the kernel refuses one, False: the program
    attached before (the shape filter at least) stays, and the next call tries again."""
    if isinstance(device, (list, tuple)):
        done = [keep_live(d, indices) for d in device]
        return any(done)
    f = _FILTERS.get(device)
    if f is None:
        f = _FILTERS[device] = IndexFilter(device.attach_filter)
    try:
        return f.refresh(indices)
    except NetoffloadError:
        return False


def filter_of(device: Any) -> IndexFilter | None:
    """The ``IndexFilter`` ``keep_live`` keeps for ``device`` (for status reports)."""
    return _FILTERS.get(device)
