"""WireGuard transport crypto on the emulated NIC: the key table and the NIC's tasks.

The emulated crypto NIC (``devices.emulated_nic``, profile ``crypto``) runs in its
own process behind shared-memory rings. For the tunnel it seals (transmit,
``encrypt``) and opens (receive, ``decrypt``) WireGuard transport messages, in
exactly the format the software tasks ``WgEncrypt``/``WgDecrypt`` of
``tunnel/datapath.py`` produce and consume: the NIC runs those very classes,
their per-packet work unchanged, over a view of the sessions it reads from
shared memory. So a NIC-sealed packet is byte-for-byte the software's.

How the keys reach the NIC
--------------------------
Sessions change at run time (a handshake every two minutes, new peers), so the
host keeps a **key table** in a shared-memory segment of its own (``KeyTable``),
indexed by keypair slot (``ext.sa``, ``Sessions.keypair_slot``) modulo its
capacity. ``KeyTable.bind(datapath)`` makes it the sessions' listener: every
time the host hands a slot to packets (``WgEncrypt.prepare`` on transmit,
``WgFilter`` on receive -- both before the engine splits the packets between
paths, so before any trip carrying the slot is posted), the entry of that slot
gets the slot number, both transport keys, the receiver index of the peer and
the peer's endpoint (written again whenever the endpoint moved); the header
holds the listen port. A forgotten slot's entry is zeroed; ``close()`` zeroes
the table and unlinks it. Live slots never share an entry: ``Sessions`` keeps
at most 4097 consecutive slots and the capacity is 8192.

An entry is written under a sequence lock (its ``seq`` word odd while being
written; one writer, the host): the NIC copies an entry, and takes the copy
only if ``seq`` was even and unchanged around it, else reads again. Entries are
looked up once per batch per slot, not per packet (``NicSessions.load``); the
ChaCha20-Poly1305 contexts are kept per slot while the entry holds the same keys.
(Like the descriptor rings, this relies on stores becoming visible in program
order, as on x86-64.)

What stays on the host
----------------------
Counters are reserved on the host in ``WgEncrypt.prepare`` (the engine runs it
before a split) and the replay window is updated on the host in
``WgDecrypt.settle`` after the trip: whichever path sealed or opened a packet,
protocol state lives in one place. The NIC's tasks have no ``prepare`` of their
own and never touch a keypair's state; it has no replay window at all. A slot
the NIC does not find (cannot happen while the table is bound) fails the packet
as the software path does for an unknown slot on receive (``BAD_ICV``); on
transmit the whole trip fails and the engine redoes it in software (counted as
errors of ``encrypt``).

``WgNicLibrary(table.spec, tasks)`` is the picklable library factory handed to
``EmulatedNIC(library=...)``; it attaches to the table lazily, in the NIC
process, at the first batch.
"""

from __future__ import annotations

import contextlib
import ipaddress
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from multiprocessing import resource_tracker, shared_memory
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from numpy.typing import NDArray

from netoffload.batch import Batch, Mask
from netoffload.errors import ConfigError, DeviceError
from netoffload.soft import SoftLibrary
from netoffload.tasks import Task
from netoffload.tunnel.datapath import Datapath, WgDecrypt, WgEncrypt

#: entries of the table (keypair slot modulo this); more than Sessions keeps live
DEFAULT_CAPACITY = 8192
_MAGIC = 0x5747_4B45_5954_4231  # "WGKEYTB1"
_HDR_WORDS = 8  # magic, capacity, listen port, (spare)
_H_MAGIC, _H_CAP, _H_PORT = 0, 1, 2
#: how long a reader waits for an entry the host is writing
_READ_PATIENCE_S = 1.0

ENTRY = np.dtype(
    [
        ("seq", "<u8"),  # sequence lock: odd while the host writes the entry
        ("slot", "<i8"),  # keypair slot held here, -1: none
        ("remote_index", "<u4"),  # the peer's receiver index (transport header)
        ("ep_port", "<u2"),
        ("ep_family", "u1"),  # 4, 6, or 0: no endpoint
        ("_pad", "u1"),
        ("ep_addr", "u1", (16,)),  # IPv4 in the first 4 bytes
        ("send_key", "u1", (32,)),
        ("recv_key", "u1", (32,)),
    ]
)


@dataclass(frozen=True)
class KeyTableSpec:
    """Enough to attach to a key table from another process (picklable)."""

    name: str
    capacity: int

    @property
    def nbytes(self) -> int:
        return _HDR_WORDS * 8 + self.capacity * ENTRY.itemsize


def _attach_untracked(name: str) -> shared_memory.SharedMemory:
    """Attach without the resource tracker taking ownership (the host owns it;
    Python < 3.13 registers every attach and would unlink it at our exit)."""
    orig = resource_tracker.register

    def _noop(name: str, rtype: str) -> None:
        return None

    resource_tracker.register = _noop  # type: ignore[assignment]
    try:
        return shared_memory.SharedMemory(name=name, create=False)
    finally:
        resource_tracker.register = orig


class _Mapped:
    """The table's arrays over a shared-memory segment."""

    def __init__(self, spec: KeyTableSpec, shm: shared_memory.SharedMemory) -> None:
        self.spec = spec
        self.shm = shm
        buf = shm.buf
        assert buf is not None
        mem = np.ndarray((spec.nbytes,), dtype=np.uint8, buffer=buf)
        self.header: NDArray[np.int64] = mem[: _HDR_WORDS * 8].view(np.int64)
        self.entries: NDArray[Any] = mem[_HDR_WORDS * 8 :].view(ENTRY)
        self.seq: NDArray[np.uint64] = self.entries["seq"]

    def release(self) -> None:
        del self.header, self.entries, self.seq
        with contextlib.suppress(BufferError):
            self.shm.close()


@dataclass(frozen=True)
class Entry:
    """One consistent copy of a table entry."""

    slot: int
    remote_index: int
    send_key: bytes
    recv_key: bytes
    endpoint: tuple[str, int] | None


def _pack_endpoint(ep: tuple[str, int] | None) -> tuple[int, bytes, int]:
    """(family, 16 address bytes, port) of an endpoint; family 0 for none."""
    if ep is None:
        return 0, bytes(16), 0
    # as WgEncrypt reads it (a v4-mapped address stays IPv6, as there)
    a = ipaddress.ip_address(ep[0])
    return a.version, a.packed.ljust(16, b"\0"), int(ep[1])


def read_entry(m: _Mapped, slot: int) -> Entry | None:
    """The entry of ``slot`` (a consistent copy), or None if the table does not hold it."""
    if slot < 0:
        return None
    i = slot % m.spec.capacity
    seq = m.seq
    deadline = 0.0
    while True:
        s1 = int(seq[i])
        if not s1 & 1:
            rec = m.entries[i : i + 1].copy()[0]
            if int(seq[i]) == s1:
                break
        # the host is writing the entry (or was descheduled mid-write): let it go on
        now = time.monotonic()
        if not deadline:
            deadline = now + _READ_PATIENCE_S
        elif now > deadline:  # the writer died mid-write: treat as absent
            return None
        time.sleep(0)
    if int(rec["slot"]) != slot:
        return None
    fam = int(rec["ep_family"])
    ep: tuple[str, int] | None = None
    raw = bytes(rec["ep_addr"])
    if fam == 4:
        ep = (str(ipaddress.IPv4Address(raw[:4])), int(rec["ep_port"]))
    elif fam == 6:
        ep = (str(ipaddress.IPv6Address(raw)), int(rec["ep_port"]))
    return Entry(slot, int(rec["remote_index"]), bytes(rec["send_key"]), bytes(rec["recv_key"]), ep)


class KeyTable:
    """The host's side: owns the segment, writes entries as slots are used.

    ``bind(dp)`` makes it ``dp.sessions.listener`` (and writes the slots the
    sessions already hold); ``close()`` unbinds, zeroes and unlinks it.
    """

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if not 1 <= capacity <= 1 << 20:
            raise ConfigError(f"key table capacity must be within 1..{1 << 20}, not {capacity}")
        size = KeyTableSpec("", capacity).nbytes
        shm = shared_memory.SharedMemory(
            name=f"nof-keys-{secrets.token_hex(6)}", create=True, size=size
        )
        self.spec = KeyTableSpec(shm.name, capacity)
        self._m: _Mapped | None = _Mapped(self.spec, shm)
        m = self._m
        m.header[:] = 0
        m.entries.view(np.uint8)[:] = 0
        m.entries["slot"] = -1
        m.header[_H_CAP] = capacity
        m.header[_H_MAGIC] = _MAGIC
        #: per entry index: (slot, endpoint) as last written (the host's mirror)
        self._held: dict[int, tuple[int, tuple[str, int] | None]] = {}
        self._dp: Datapath | None = None
        self.writes = 0  # entries written (keys and endpoint)
        self.endpoint_writes = 0  # endpoint-only rewrites (the peer roamed)

    @property
    def closed(self) -> bool:
        return self._m is None

    def bind(self, dp: Datapath) -> None:
        """Listen to ``dp.sessions`` and write the slots it already holds."""
        self._dp = dp
        dp.sessions.listener = self
        self._port(dp.listen_port)
        s = dp.sessions
        for slot, kp in list(s.keypairs.items()):
            ps = s.kp_owner.get(slot, -1)
            peer = s.peers[ps] if 0 <= ps < len(s.peers) else None
            self.keypair_used(slot, kp, peer)

    # -- the sessions' listener ---------------------------------------------------
    def keypair_used(self, slot: int, kp: Any, peer: Any) -> None:
        m = self._m
        if m is None:
            return
        if self._dp is not None:
            self._port(self._dp.listen_port)
        i = slot % self.spec.capacity
        ep = getattr(peer, "endpoint", None) if peer is not None else None
        held = self._held.get(i)
        if held is not None and held[0] == slot:
            if held[1] == ep:
                return
            fam, addr, port = _pack_endpoint(ep)
            self._write(i, ep_family=fam, ep_addr=np.frombuffer(addr, np.uint8), ep_port=port)
            self._held[i] = (slot, ep)
            self.endpoint_writes += 1
            return
        fam, addr, port = _pack_endpoint(ep)
        self._write(
            i,
            slot=slot,
            remote_index=int(kp.remote_index),
            send_key=np.frombuffer(bytes(kp.send_key), np.uint8),
            recv_key=np.frombuffer(bytes(kp.recv_key), np.uint8),
            ep_family=fam,
            ep_addr=np.frombuffer(addr, np.uint8),
            ep_port=port,
        )
        self._held[i] = (slot, ep)
        self.writes += 1

    def keypair_forgotten(self, slot: int) -> None:
        m = self._m
        if m is None:
            return
        i = slot % self.spec.capacity
        held = self._held.get(i)
        if held is None or held[0] != slot:
            return
        self._clear(i)
        del self._held[i]

    # -- writing ------------------------------------------------------------------
    def _port(self, port: int) -> None:
        m = self._m
        if m is not None and int(m.header[_H_PORT]) != port:
            m.header[_H_PORT] = port  # one aligned word: a single store

    def _write(self, i: int, **fields: Any) -> None:
        m = self._m
        assert m is not None
        e = m.entries
        m.seq[i] += np.uint64(1)  # odd: being written
        for k, v in fields.items():
            e[k][i] = v
        m.seq[i] += np.uint64(1)  # even again: consistent

    def _clear(self, i: int) -> None:
        zero = np.zeros(32, np.uint8)
        self._write(
            i,
            slot=-1,
            remote_index=0,
            send_key=zero,
            recv_key=zero,
            ep_family=0,
            ep_addr=zero[:16],
            ep_port=0,
        )

    def read(self, slot: int) -> Entry | None:
        """The entry of ``slot`` as the NIC would read it (tests, diagnostics)."""
        return None if self._m is None else read_entry(self._m, slot)

    def held(self) -> int:
        """Entries holding a slot now."""
        return len(self._held)

    def close(self) -> None:
        """Stop listening, zero every key, unlink the segment (idempotent)."""
        if self._dp is not None and self._dp.sessions.listener is self:
            self._dp.sessions.listener = None
        self._dp = None
        m = self._m
        if m is None:
            return
        self._m = None
        with contextlib.suppress(Exception):
            m.entries.view(np.uint8)[:] = 0
        shm = m.shm
        m.release()
        with contextlib.suppress(FileNotFoundError):
            shm.unlink()
        self._held.clear()

    def __enter__(self) -> KeyTable:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------------ the NIC side


class _NicKeypair:
    """What WgEncrypt/WgDecrypt use of a keypair, built from a table entry."""

    __slots__ = ("keys", "recv_aead", "remote_index", "send_aead")

    def __init__(self, e: Entry) -> None:
        self.keys = (e.send_key, e.recv_key)
        self.remote_index = e.remote_index
        self.send_aead = ChaCha20Poly1305(e.send_key)
        self.recv_aead = ChaCha20Poly1305(e.recv_key)


class _NicPeer:
    __slots__ = ("endpoint",)

    def __init__(self, endpoint: tuple[str, int] | None) -> None:
        self.endpoint = endpoint


class NicSessions:
    """The NIC's view of ``Sessions``, loaded from the key table for one batch.

    ``keypairs``, ``kp_owner`` and ``peers`` have the shape the data-path tasks
    index (a keypair slot is its own peer slot here: the NIC needs of a peer only
    the endpoint its entry carries)."""

    def __init__(self, spec: KeyTableSpec) -> None:
        self.spec = spec
        self._m: _Mapped | None = None
        self.keypairs: dict[int, _NicKeypair] = {}
        self.kp_owner: dict[int, int] = {}
        self.peers: dict[int, _NicPeer] = {}
        self._cache: dict[int, _NicKeypair] = {}

    def _mapped(self) -> _Mapped:
        if self._m is None:
            m = _Mapped(self.spec, _attach_untracked(self.spec.name))
            if int(m.header[_H_MAGIC]) != _MAGIC or int(m.header[_H_CAP]) != self.spec.capacity:
                m.release()
                raise DeviceError(f"key table {self.spec.name}: not a key table")
            self._m = m
        return self._m

    @property
    def listen_port(self) -> int:
        return int(self._mapped().header[_H_PORT])

    def load(self, slots: Iterable[int]) -> list[int]:
        """Look up ``slots`` in the table for this batch; the slots not found."""
        m = self._mapped()
        self.keypairs.clear()
        self.kp_owner.clear()
        self.peers.clear()
        missing: list[int] = []
        for s in slots:
            e = read_entry(m, s)
            if e is None:
                self._cache.pop(s, None)
                missing.append(s)
                continue
            kp = self._cache.get(s)
            if kp is None or kp.keys != (e.send_key, e.recv_key):
                if len(self._cache) >= 4096:
                    self._cache.clear()
                kp = self._cache[s] = _NicKeypair(e)
            kp.remote_index = e.remote_index
            self.keypairs[s] = kp
            self.kp_owner[s] = s
            self.peers[s] = _NicPeer(e.endpoint)
        return missing

    def close(self) -> None:
        if self._m is not None:
            self._m.release()
            self._m = None
        self._cache.clear()


class NicDatapath:
    """What the data-path tasks read of ``Datapath``, on the NIC."""

    def __init__(self, spec: KeyTableSpec) -> None:
        self.sessions = NicSessions(spec)
        self.listen_port = 0
        self.now = 0.0

    def load(self, sa: NDArray[np.int32]) -> list[int]:
        slots = np.unique(sa[sa >= 0]).tolist()
        missing = self.sessions.load(slots)
        self.listen_port = self.sessions.listen_port
        return missing


def _slots(batch: Batch, sel: Mask) -> NDArray[np.int32]:
    e = batch.ext
    out: NDArray[np.int32] = e.sa[sel & (e.error == 0)]
    return out


class NicWgEncrypt(WgEncrypt):
    """``WgEncrypt`` on the NIC: counters and slots come from the host's prepare."""

    def __init__(self, dp: NicDatapath) -> None:
        super().__init__(dp)  # type: ignore[arg-type]
        self.nic = dp

    def prepare(self, batch: Batch, sel: Mask) -> None:
        """Nothing: the host reserved the counters before the split."""

    def process(self, batch: Batch, sel: Mask) -> Batch:
        missing = self.nic.load(_slots(batch, sel))
        if missing:  # the host redoes the trip in software
            raise DeviceError(f"key table: no keys for slots {missing[:4]}")
        return super().process(batch, sel)


class NicWgDecrypt(WgDecrypt):
    """``WgDecrypt`` on the NIC (the replay window is the host's, in ``settle``)."""

    def __init__(self, dp: NicDatapath) -> None:
        super().__init__(dp)  # type: ignore[arg-type]
        self.nic = dp

    def process(self, batch: Batch, sel: Mask) -> Batch:
        self.nic.load(_slots(batch, sel))  # a slot not found fails its packets (BAD_ICV)
        return super().process(batch, sel)


@dataclass(frozen=True)
class WgNicLibrary:
    """Picklable factory of the NIC's task library: WireGuard ``encrypt`` and/or
    ``decrypt`` over the key table ``table``."""

    table: KeyTableSpec
    tasks: Task = Task.ENCRYPT | Task.DECRYPT

    def __call__(self) -> SoftLibrary:
        dp = NicDatapath(self.table)
        lib = SoftLibrary()
        if self.tasks & Task.ENCRYPT:
            lib.add(NicWgEncrypt(dp))
        if self.tasks & Task.DECRYPT:
            lib.add(NicWgDecrypt(dp))
        return lib
