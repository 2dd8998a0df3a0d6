"""Worker processes: one engine pair per core, sharing nothing on the data path.

``netoffload up --workers N`` serves one interface from N processes. The first
(the *control*, the process ``up`` started) holds the protocol core, the UAPI
socket and the timers, and moves packets like any worker; N-1 forked workers
move packets only. The kernel spreads the work:

* the TUN is multi-queue, one queue a worker, and a steering program
  (``TUNSETSTEERINGEBPF``, ``tun_steering_program``) puts each flow on the queue
  its 5-tuple hash names, so the packets of one flow stay in one worker, in order;
* the UDP sockets share the listen port with ``SO_REUSEPORT`` and a classic BPF
  program (``reuseport_program``) picks the socket: handshake messages go to the
  control, a transport message to the worker that owns its receiver index (the
  index's low byte modulo N). A keypair is received by exactly one worker, so its
  replay window lives in that worker alone and a datagram replayed from another
  address meets the same window.

The workers get the peers and keypairs from the control (``Snapshot`` over a
socketpair, whenever they change) and tell it what the protocol core must know
(``Event``: data received under a keypair and from where, bytes sent, packets
to stage until a handshake completes, handshake messages that reached them).
Send counters are the one thing two workers write for the same keypair: they live
in shared memory (``SharedCounters``), taken a batch at a time under a lock, so a
counter is never used twice.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import ipaddress
import mmap
import os
import pickle
import signal
import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from netoffload.devices import kernel_common as kc
from netoffload.errors import ConfigError, DeviceDown, NetoffloadError
from netoffload.tunnel.cookie import CookieChecker
from netoffload.tunnel.peer import Keypair, Peer
from netoffload.tunnel.protocol import Action
from netoffload.tunnel.timers import REJECT_AFTER_MESSAGES

if TYPE_CHECKING:
    from netoffload.devices.udp_ip import UdpIpDevice
    from netoffload.tunnel.tunnel import Tunnel

#: the largest --workers
MAX_WORKERS = 64
SO_ATTACH_REUSEPORT_CBPF = 51
TUNSETSTEERINGEBPF = 0x800454E0
#: messages between control and workers: at most this many bytes
CTL_BUFFER = 4 << 20
#: events a worker keeps while the control cannot take them (then it drops stagings)
PENDING_LIMIT = 1024
#: a worker tells the control of bytes received and sent at most this often (seconds)
EVENT_EVERY = 0.05


def default_workers() -> int:
    """One worker a core this process may run on."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    return max(1, min(n, MAX_WORKERS))


def check_workers(n: int) -> int:
    if not 1 <= n <= MAX_WORKERS:
        raise ConfigError(f"--workers {n}: between 1 and {MAX_WORKERS}")
    return n


def owner_of(index: int, n: int) -> int:
    """The worker that receives transport messages for receiver index ``index``."""
    return (index & 0xFF) % n


# --------------------------------------------------------------------------- counters
class SharedCounters:
    """Send counters of keypairs in memory the forked workers share.

    A slot is (owner tag, next counter); the tag is the keypair's local index + 1, so
    a worker still holding a keypair whose slot was handed on (slots go round) gets
    no counter rather than someone else's. Taking counters holds a POSIX record lock
    (released by the kernel if its holder dies)."""

    def __init__(self, slots: int = 16384) -> None:
        self.slots = slots
        self._mem = mmap.mmap(-1, slots * 16)  # MAP_SHARED | MAP_ANONYMOUS: kept by fork
        self._arr = np.frombuffer(self._mem, dtype=np.uint64).reshape(slots, 2)
        self._lockfd = os.memfd_create("netoffload-counters", os.MFD_CLOEXEC)
        os.ftruncate(self._lockfd, 1)
        self._next = 0

    def __enter__(self) -> SharedCounters:
        fcntl.lockf(self._lockfd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        fcntl.lockf(self._lockfd, fcntl.LOCK_UN)

    def alloc(self, local_index: int, initial: int) -> int:
        """A slot for the keypair ``local_index`` whose next counter is ``initial``."""
        slot = self._next
        self._next = (slot + 1) % self.slots
        with self:
            self._arr[slot, 0] = local_index + 1
            self._arr[slot, 1] = initial
        return slot

    def cell(self, slot: int, local_index: int) -> SharedCell:
        return SharedCell(self, slot, local_index + 1)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._lockfd)


class SharedCell:
    """One keypair's counter in ``SharedCounters`` (peer.CounterCell)."""

    __slots__ = ("_c", "slot", "tag")

    def __init__(self, counters: SharedCounters, slot: int, tag: int) -> None:
        self._c = counters
        self.slot = slot
        self.tag = tag

    def value(self) -> int:
        row = self._c._arr[self.slot]
        return int(row[1]) if int(row[0]) == self.tag else REJECT_AFTER_MESSAGES

    def set(self, v: int) -> None:
        with self._c:
            row = self._c._arr[self.slot]
            if int(row[0]) == self.tag:
                row[1] = v

    def reserve(self, n: int, limit: int) -> int | None:
        with self._c:
            row = self._c._arr[self.slot]
            if int(row[0]) != self.tag:
                return None
            first = int(row[1])
            if first + n > limit:
                return None
            row[1] = first + n
        return first


# --------------------------------------------------------------------------- kernel programs
def reuseport_program(n: int) -> tuple[kc.Insn, ...]:
    """Classic BPF for SO_ATTACH_REUSEPORT_CBPF (offsets from the UDP payload): a
    transport message (type 4) goes to socket ``receiver index low byte % n``,
    anything else (handshakes, cookie replies, short junk) to socket 0."""
    return (
        (0x30, 0, 0, 0),  # ldb [0]           message type
        (0x15, 0, 3, 4),  # jeq #4            else -> ret #0
        (0x30, 0, 0, 4),  # ldb [4]           receiver index, low byte (little endian)
        (0x94, 0, 0, n),  # mod #n
        (0x16, 0, 0, 0),  # ret a
        (0x06, 0, 0, 0),  # ret #0
    )


def attach_reuseport_program(sock: socket.socket, n: int) -> None:
    prog = kc.SockFprog(reuseport_program(n))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, prog.pack())


def flow_hash(packet: bytes) -> int:
    """The hash the TUN steering program computes for an IP packet (0 when it cannot):
    XOR of the address words (IPv6: first and last word of each), and for TCP/UDP the
    port word after a 20-byte IPv4 header or the 40-byte IPv6 header; folded to 16 bits."""

    def w(off: int) -> int | None:
        if off + 4 > len(packet):
            return None
        return int.from_bytes(packet[off : off + 4], "big")

    if not packet:
        return 0
    words: list[int | None]
    if packet[0] >> 4 == 6:
        words = [w(8), w(20), w(24), w(36)]
        proto = packet[6] if len(packet) > 6 else -1
        port_off = 40
    else:
        words = [w(12), w(16)]
        proto = packet[9] if len(packet) > 9 else -1
        port_off = 20
    if proto in (6, 17):
        words.append(w(port_off))
    if any(x is None for x in words):
        return 0  # the program's absolute load failed: it returns 0
    h = 0
    for x in words:
        assert x is not None
        h ^= x
    h ^= h >> 16
    return h & 0xFFFF


def queue_of(packet: bytes, n: int) -> int:
    """The TUN queue (worker) the steering program picks for ``packet``."""
    return flow_hash(packet) % n


def _ebpf(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, dst | (src << 4), off, imm)


def tun_steering_program() -> bytes:
    """eBPF (socket filter type) for TUNSETSTEERINGEBPF; the kernel takes the low 16 bits
    of its answer modulo the number of queues. Mirrors ``flow_hash``."""
    ld_w, ld_b = 0x20, 0x30  # BPF_LD | BPF_ABS | W/B: r0 = packet[k] (r6 = ctx)
    mov_x, xor_x, and_k, rsh_k = 0xBF, 0xAF, 0x57, 0x77
    jeq_k, jne_k, ja, exit_ = 0x15, 0x55, 0x05, 0x95
    r0, r1, r6, r7 = 0, 1, 6, 7
    p: list[bytes] = []
    p.append(_ebpf(mov_x, r6, r1))  # r6 = ctx
    p.append(_ebpf(ld_b, imm=0))
    p.append(_ebpf(and_k, r0, imm=0xF0))
    jv6 = len(p)
    p.append(b"")  # if r0 == 0x60 goto v6
    # IPv4
    p.append(_ebpf(ld_w, imm=12))
    p.append(_ebpf(mov_x, r7, r0))
    p.append(_ebpf(ld_w, imm=16))
    p.append(_ebpf(xor_x, r7, r0))
    p.append(_ebpf(ld_b, imm=9))
    port4_a = len(p)
    p.append(b"")  # if proto == 6 goto ports4
    port4_b = len(p)
    p.append(b"")  # if proto != 17 goto fold
    ports4 = len(p)
    p.append(_ebpf(ld_w, imm=20))
    p.append(_ebpf(xor_x, r7, r0))
    j_fold1 = len(p)
    p.append(b"")  # goto fold
    v6 = len(p)
    for k in (8, 20, 24, 36):
        p.append(_ebpf(ld_w, imm=k))
        p.append(_ebpf(xor_x, r7, r0) if k != 8 else _ebpf(mov_x, r7, r0))
    p.append(_ebpf(ld_b, imm=6))
    port6_a = len(p)
    p.append(b"")
    port6_b = len(p)
    p.append(b"")
    ports6 = len(p)
    p.append(_ebpf(ld_w, imm=40))
    p.append(_ebpf(xor_x, r7, r0))
    fold = len(p)
    p.append(_ebpf(mov_x, r0, r7))
    p.append(_ebpf(mov_x, r1, r0))
    p.append(_ebpf(rsh_k, r1, imm=16))
    p.append(_ebpf(xor_x, r0, r1))
    p.append(_ebpf(and_k, r0, imm=0xFFFF))
    p.append(_ebpf(exit_))

    def rel(at: int, to: int) -> int:
        return to - at - 1

    p[jv6] = _ebpf(jeq_k, r0, off=rel(jv6, v6), imm=0x60)
    p[port4_a] = _ebpf(jeq_k, r0, off=rel(port4_a, ports4), imm=6)
    p[port4_b] = _ebpf(jne_k, r0, off=rel(port4_b, fold), imm=17)
    p[j_fold1] = _ebpf(ja, off=rel(j_fold1, fold))
    p[port6_a] = _ebpf(jeq_k, r0, off=rel(port6_a, ports6), imm=6)
    p[port6_b] = _ebpf(jne_k, r0, off=rel(port6_b, fold), imm=17)
    return b"".join(p)


_SYS_BPF = {"x86_64": 321, "aarch64": 280, "armv7l": 386, "riscv64": 280, "ppc64le": 361}
BPF_PROG_LOAD = 5
BPF_PROG_TYPE_SOCKET_FILTER = 1


def load_socket_filter(insns: bytes, license: bytes = b"MIT") -> int:
    """bpf(BPF_PROG_LOAD) of an eBPF socket filter; returns its fd (OSError on refusal)."""
    nr = _SYS_BPF.get(os.uname().machine)
    if nr is None:
        raise OSError(0, f"bpf(2) number unknown on {os.uname().machine}")
    code = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(license + b"\0")
    log = ctypes.create_string_buffer(4096)
    attr = struct.pack(
        "=IIQQIIQII16s",
        BPF_PROG_TYPE_SOCKET_FILTER,
        len(insns) // 8,
        ctypes.addressof(code),
        ctypes.addressof(lic),
        1,
        len(log),
        ctypes.addressof(log),
        0,
        0,
        b"netoffload_q",
    )
    attr_buf = ctypes.create_string_buffer(attr + bytes(128 - len(attr)), 128)
    libc = ctypes.CDLL(None, use_errno=True)
    fd = int(libc.syscall(nr, BPF_PROG_LOAD, attr_buf, 128))
    if fd < 0:
        err = ctypes.get_errno()
        msg = log.value.decode(errors="replace").strip().splitlines()
        raise OSError(err, f"{os.strerror(err)}{': ' + msg[-1] if msg else ''}")
    return fd


def attach_tun_steering(tun_fd: int) -> None:
    """The TUN's queue for each packet by ``flow_hash`` (OSError if the kernel refuses)."""
    prog = load_socket_filter(tun_steering_program())
    try:
        fcntl.ioctl(tun_fd, TUNSETSTEERINGEBPF, struct.pack("i", prog))
    finally:
        os.close(prog)


# --------------------------------------------------------------------------- messages
@dataclass(frozen=True)
class KeypairState:
    local_index: int
    remote_index: int
    send_key: bytes
    recv_key: bytes
    created: float
    initiator: bool
    slot: int
    role: str  # current | previous | next


@dataclass(frozen=True)
class PeerState:
    public_key: bytes
    endpoint: tuple[str, int] | None
    allowed_ips: tuple[str, ...]
    keypairs: tuple[KeypairState, ...]


@dataclass(frozen=True)
class Snapshot:
    """What a worker needs of the control's protocol state."""

    public_key: bytes
    listen_port: int
    fwmark: int
    peers: tuple[PeerState, ...]


@dataclass
class Events:
    """What a worker tells the control (one message per loop turn, merged while pending)."""

    #: (public key, local index) -> [endpoint, bytes, all keepalives]
    received: dict[tuple[bytes, int], list[Any]] = field(default_factory=dict)
    #: public key -> bytes sent
    sent: dict[bytes, int] = field(default_factory=dict)
    staged: list[tuple[bytes, bytes]] = field(default_factory=list)
    handshakes: list[tuple[bytes, tuple[str, int]]] = field(default_factory=list)
    stats: dict[str, Any] | None = None
    dropped: int = 0

    def __bool__(self) -> bool:
        return bool(
            self.received or self.sent or self.staged or self.handshakes or self.stats
        ) or bool(self.dropped)


def _send_msg(sock: socket.socket, obj: object) -> bool:
    """One message, without blocking; False if the other side cannot take it now."""
    try:
        sock.send(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL), socket.MSG_DONTWAIT)
    except BlockingIOError:
        return False
    return True


def _ctl_pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for s in (a, b):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, CTL_BUFFER)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, CTL_BUFFER)
    return a, b


# --------------------------------------------------------------------------- the worker's view
class MirrorProtocol:
    """What a worker's data path asks of the protocol core, answered from the last
    ``Snapshot``; what the core must hear goes into ``events``."""

    def __init__(self, worker: int, n: int) -> None:
        self.worker = worker
        self.n = n
        self.peers: dict[bytes, Peer] = {}
        self.public_key = b""
        self.cookie_checker = CookieChecker(bytes(32))
        self.drops: dict[str, int] = {}
        self.events = Events()
        self._index: dict[int, tuple[Peer, Keypair]] = {}
        self._keys: dict[int, Keypair] = {}

    def apply(self, snap: Snapshot, counters: SharedCounters) -> None:
        if snap.public_key != self.public_key:
            self.public_key = snap.public_key
            self.cookie_checker = CookieChecker(snap.public_key)
        seen: set[bytes] = set()
        keys: dict[int, Keypair] = {}
        index: dict[int, tuple[Peer, Keypair]] = {}
        for ps in snap.peers:
            seen.add(ps.public_key)
            peer = self.peers.get(ps.public_key)
            if peer is None:
                peer = self.peers[ps.public_key] = Peer(ps.public_key)
            peer.endpoint = ps.endpoint
            peer.allowed_ips = [ipaddress.ip_network(a, strict=False) for a in ps.allowed_ips]
            peer.current = peer.previous = peer.next = None
            for k in ps.keypairs:
                kp = self._keys.get(k.local_index)
                if kp is None or kp.recv_key != k.recv_key:
                    kp = Keypair(
                        k.local_index,
                        k.remote_index,
                        k.send_key,
                        k.recv_key,
                        k.created,
                        k.initiator,
                    )
                    kp.cell = counters.cell(k.slot, k.local_index)
                keys[k.local_index] = kp
                setattr(peer, k.role, kp)
                if owner_of(k.local_index, self.n) == self.worker:
                    index[k.local_index] = (peer, kp)
        for pk in [pk for pk in self.peers if pk not in seen]:
            del self.peers[pk]
        self._keys = keys
        self._index = index

    # the data path's questions
    def lookup(self, receiver_index: int, now: float | None = None) -> tuple[Peer, Keypair] | None:
        found = self._index.get(receiver_index)
        if found is None or (now is not None and found[1].expired(now)):
            return None
        return found

    def stage(self, peer: Peer, packet: bytes, now: float) -> list[Action]:
        ev = self.events
        if len(ev.staged) < PENDING_LIMIT:
            ev.staged.append((peer.public_key, packet))
        else:
            ev.dropped += 1
        return []

    def data_received(
        self, peer: Peer, keypair: Keypair, src: tuple[str, int], now: float, nbytes: int, ka: bool
    ) -> list[Action]:
        peer.endpoint = (src[0], src[1])  # roaming: this worker answers there at once
        rec = self.events.received.get((peer.public_key, keypair.local_index))
        if rec is None:
            self.events.received[(peer.public_key, keypair.local_index)] = [src, nbytes, ka]
        else:
            rec[0] = src
            rec[1] += nbytes
            rec[2] = rec[2] and ka
        return []

    def data_sent(self, peer: Peer, now: float, nbytes: int, keepalive: bool) -> list[Action]:
        s = self.events.sent
        s[peer.public_key] = s.get(peer.public_key, 0) + nbytes
        return []

    def handle_handshake(
        self, datagram: bytes, src: tuple[str, int], now: float, under_load: bool
    ) -> list[Action]:
        ev = self.events
        if len(ev.handshakes) < PENDING_LIMIT:
            ev.handshakes.append((bytes(datagram), src))
        else:
            ev.dropped += 1
        return []

    def tick(self, now: float) -> list[Action]:
        return []

    def next_deadline(self) -> float:
        return float("inf")


class OwnedView:
    """The control's protocol as its own data path sees it: receiver indices of the
    other workers are unknown here (they are received there)."""

    def __init__(self, protocol: Any, n: int) -> None:
        self._p = protocol
        self._n = n

    def __getattr__(self, name: str) -> Any:
        return getattr(self._p, name)

    def lookup(self, receiver_index: int, now: float | None = None) -> Any:
        if owner_of(receiver_index, self._n) != 0:
            return None
        return self._p.lookup(receiver_index, now)


# --------------------------------------------------------------------------- control side
@dataclass
class WorkerHandle:
    index: int
    pid: int
    ctl: socket.socket
    stats: dict[str, Any] = field(default_factory=dict)
    snapshot_due: bool = True
    alive: bool = True
    error: str = ""


class Workers:
    """The control's side: makes the queues and sockets, forks, syncs, hears events."""

    def __init__(self, tunnel: Tunnel, n: int) -> None:
        self.tunnel = tunnel
        self.n = n
        self.counters = SharedCounters()
        self.handles: list[WorkerHandle] = []
        self.steering: str = ""
        #: every UDP socket of the interface, the control's first
        self.sockets: list[UdpIpDevice] = []
        self._sig: object = None
        self._last_sync = 0.0

    # ---- making
    def open_devices(
        self, name: str, kernel_offload: bool
    ) -> tuple[list[int], str, list[UdpIpDevice]]:
        """N TUN queues (the first creates the interface) and N UDP sockets on one port."""
        from netoffload.devices.udp_ip import UdpIpDevice

        t = self.tunnel
        fds: list[int] = []
        socks: list[UdpIpDevice] = []
        try:
            fd, actual = kc.tun_open(name, vnet_hdr=True, multi_queue=True)
            fds.append(fd)
            for _ in range(1, self.n):
                fds.append(kc.tun_open(actual, vnet_hdr=True, multi_queue=True)[0])
            try:
                attach_tun_steering(fds[0])
                self.steering = "5-tuple hash (eBPF)"
            except OSError as e:
                self.steering = f"kernel automq ({e.strerror or e})"
                t.log(f"{name}: no TUN steering program, the kernel spreads flows: {e}")
            port = t.listen_port
            for i in range(self.n):
                u = UdpIpDevice.bind_here(
                    port,
                    fwmark=t.fwmark or None,
                    reuseport=True,
                    name=f"udp:{name}" if i == 0 else f"udp:{name}#{i}",
                    gro=kernel_offload,
                )
                socks.append(u)
                port = u.local_port
            attach_reuseport_program(socks[0].sock, self.n)
        except BaseException:
            for f in fds:
                with contextlib.suppress(OSError):
                    os.close(f)
            for u in socks:
                with contextlib.suppress(Exception):
                    u.close()
            raise
        return fds, actual, socks

    def fork(self, fds: Sequence[int], actual: str, socks: Sequence[UdpIpDevice]) -> None:
        """Fork workers 1..N-1, each with its queue and socket; the control keeps #0."""
        t = self.tunnel
        for i in range(1, self.n):
            mine, theirs = _ctl_pair()
            pid = os.fork()
            if pid == 0:  # the worker
                code = 1
                try:
                    mine.close()
                    for h in self.handles:
                        h.ctl.close()
                    for j, f in enumerate(fds):
                        if j != i:
                            os.close(f)
                    for j, u in enumerate(socks):
                        if j != i:
                            u.sock.close()
                    code = _worker_main(t, i, self.n, fds[i], actual, socks[i], theirs, self)
                except BaseException as e:
                    with contextlib.suppress(Exception):
                        os.write(2, f"netoffload: worker {i}: {e}\n".encode())
                finally:
                    os._exit(code)
            theirs.close()
            mine.setblocking(False)
            self.handles.append(WorkerHandle(i, pid, mine))
        for j in range(1, self.n):
            os.close(fds[j])
        # the control keeps every socket open (not reading the workers'): a socket's
        # filter is set on it (index_filter.keep_live) before a new index is announced
        self.sockets = list(socks)

    # ---- running
    def fds(self) -> list[int]:
        return [h.ctl.fileno() for h in self.handles if h.alive]

    def snapshot(self) -> Snapshot:
        p = self.tunnel.protocol
        peers = []
        for peer in p.peers.values():
            kps = []
            for role in ("current", "previous", "next"):
                kp = getattr(peer, role)
                if kp is None:
                    continue
                if kp.cell is None:
                    slot = self.counters.alloc(kp.local_index, kp.send_counter)
                    kp.cell = self.counters.cell(slot, kp.local_index)
                kps.append(
                    KeypairState(
                        kp.local_index,
                        kp.remote_index,
                        kp.send_key,
                        kp.recv_key,
                        kp.created,
                        kp.initiator,
                        kp.cell.slot,
                        role,
                    )
                )
            peers.append(
                PeerState(
                    peer.public_key,
                    peer.endpoint,
                    tuple(str(a) for a in peer.allowed_ips),
                    tuple(kps),
                )
            )
        return Snapshot(p.public_key, self.tunnel.listen_port, self.tunnel.fwmark, tuple(peers))

    def sync(self, force: bool = False) -> None:
        """Send the workers the state if it changed (checked at most every 5 ms)."""
        now = time.monotonic()
        if not force and now - self._last_sync < 0.005:
            return
        self._last_sync = now
        p = self.tunnel.protocol
        peers = tuple(
            (
                pk,
                peer.endpoint,
                tuple(peer.allowed_ips),
                tuple(
                    (role, id(getattr(peer, role)))
                    for role in ("current", "previous", "next")
                    if getattr(peer, role) is not None
                ),
            )
            for pk, peer in p.peers.items()
        )
        sig = (peers, p.public_key, self.tunnel.listen_port, self.tunnel.fwmark)
        if sig != self._sig:
            self._sig = sig
            for h in self.handles:
                h.snapshot_due = True
        snap: Snapshot | None = None
        for h in self.handles:
            if h.snapshot_due and h.alive:
                snap = snap or self.snapshot()
                h.snapshot_due = not _send_msg(h.ctl, ("state", snap))

    def handle_readable(self, fd: int, now: float) -> None:
        """Events from the worker behind ``fd``."""
        t = self.tunnel
        for h in self.handles:
            if h.ctl.fileno() != fd:
                continue
            for _ in range(64):
                try:
                    raw = h.ctl.recv(CTL_BUFFER)
                except BlockingIOError:
                    break
                except OSError:
                    raw = b""
                if not raw:
                    h.alive = False
                    raise DeviceDown(h.error or f"{t.name}: worker {h.index} (pid {h.pid}) exited")
                kind, ev = pickle.loads(raw)  # our own forked worker's
                if kind == "events":
                    self._apply(h, ev, now)
                elif kind == "error":
                    h.error = str(ev)
            return

    def _apply(self, h: WorkerHandle, ev: Events, now: float) -> None:
        t = self.tunnel
        p = t.protocol
        if ev.stats is not None:
            h.stats = ev.stats
        for (pk, local), (src, nbytes, ka) in ev.received.items():
            peer = p.peers.get(pk)
            kp = peer.keypair_for(local) if peer is not None else None
            if peer is not None and kp is not None:
                t._handle(p.data_received(peer, kp, src, now, nbytes, ka))
        for pk, nbytes in ev.sent.items():
            peer = p.peers.get(pk)
            if peer is not None:
                t._handle(p.data_sent(peer, now, nbytes, False))
        for pk, pkt in ev.staged:
            peer = p.peers.get(pk)
            if peer is not None:
                t._handle(p.stage(peer, pkt, now))
        for msg, src in ev.handshakes:
            t.stats["handshakes_in"] += 1
            t._handle(p.handle_handshake(msg, src, now, t.dp.under_load))
        if ev.dropped:
            t.stats["worker_events_dropped"] = t.stats.get("worker_events_dropped", 0) + ev.dropped

    def status(self) -> list[dict[str, Any]]:
        return [
            {"worker": h.index, "pid": h.pid, "alive": h.alive, **h.stats} for h in self.handles
        ]

    def close(self, timeout: float = 5.0) -> None:
        for h in self.handles:
            with contextlib.suppress(OSError):
                _send_msg(h.ctl, ("stop", None))
        deadline = time.monotonic() + timeout
        for h in self.handles:
            while True:
                try:
                    pid, _ = os.waitpid(h.pid, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid:
                    break
                if time.monotonic() > deadline:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(h.pid, signal.SIGKILL)
                    with contextlib.suppress(ChildProcessError):
                        os.waitpid(h.pid, 0)
                    break
                time.sleep(0.01)
            h.ctl.close()
            h.alive = False
        self.handles = []
        for u in self.sockets[1:]:
            with contextlib.suppress(Exception):
                u.close()
        self.sockets = []
        self.counters.close()


# --------------------------------------------------------------------------- worker side
PR_SET_PDEATHSIG = 1


def _worker_main(
    control: Tunnel,
    index: int,
    n: int,
    tun_fd: int,
    actual: str,
    udp: UdpIpDevice,
    ctl: socket.socket,
    workers: Workers,
) -> int:
    """A forked worker: serve queue ``index`` until the control says stop or goes away."""
    from netoffload.devices.tun import TunDevice
    from netoffload.tunnel.tunnel import Tunnel

    with contextlib.suppress(Exception):
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    mirror = MirrorProtocol(index, n)
    w = Tunnel(
        control.cfg,
        policy=control.policy_spec,
        policy_file=control.policy_file,
        manage_interface=False,
        kernel_offload=control.kernel_offload,
        protocol=mirror,
        workers=n,
        worker_index=index,
    )
    signal.signal(signal.SIGTERM, lambda *_: w.stop())
    w.tun = TunDevice([tun_fd], actual, direction=_tx_direction())
    w.udp = udp
    w.listen_port = control.listen_port
    w.dp.listen_port = control.listen_port
    w.shape_filter = control.shape_filter
    ctl.setblocking(False)
    pending = Events()

    def on_ctl() -> None:
        while True:
            try:
                raw = ctl.recv(CTL_BUFFER)
            except BlockingIOError:
                return
            except OSError:
                raw = b""
            if not raw:
                w.stop()
                return
            kind, obj = pickle.loads(raw)  # from our own control process
            if kind == "stop":
                w.stop()
                return
            if kind == "state":
                mirror.apply(obj, workers.counters)
                w.listen_port = w.dp.listen_port = obj.listen_port
                if obj.fwmark != w.fwmark:
                    w.fwmark = obj.fwmark
                    udp.set_fwmark(obj.fwmark)
                w.dp.rebuild()

    last = 0.0

    def flush() -> None:
        nonlocal pending, last
        ev = mirror.events
        if ev:
            _merge(pending, ev)
            mirror.events = Events()
        if not pending:
            return
        now = time.monotonic()
        # bytes received/sent only move timers of seconds: sent every EVENT_EVERY at most
        # (each message wakes the control, a context switch a packet batch otherwise);
        # packets to stage, handshake messages and reports go at once
        urgent = pending.staged or pending.handshakes or pending.stats is not None
        if not urgent and now - last < EVENT_EVERY:
            return
        if _send_msg(ctl, ("events", pending)):
            pending = Events()
            last = now

    def stats() -> None:
        mirror.events.stats = w.worker_stats()

    w.watch[ctl.fileno()] = on_ctl
    w.after_recv = on_ctl
    w.after_turn.append(flush)
    w.status_hook = stats
    try:
        w.run()
    except NetoffloadError as e:
        # the control says it (one line for the tunnel, not one a worker)
        with contextlib.suppress(OSError):
            _send_msg(ctl, ("error", str(e)))
        return 1
    finally:
        with contextlib.suppress(Exception):
            flush()
    return 0


def _tx_direction() -> Any:
    from netoffload.tasks import Direction

    return Direction.TX


def _merge(into: Events, ev: Events) -> None:
    for k, (src, nbytes, ka) in ev.received.items():
        rec = into.received.get(k)
        if rec is None:
            into.received[k] = [src, nbytes, ka]
        else:
            rec[0] = src
            rec[1] += nbytes
            rec[2] = rec[2] and ka
    for pk, nbytes in ev.sent.items():
        into.sent[pk] = into.sent.get(pk, 0) + nbytes
    room = PENDING_LIMIT - len(into.staged)
    into.staged.extend(ev.staged[:room])
    room2 = PENDING_LIMIT - len(into.handshakes)
    into.handshakes.extend(ev.handshakes[:room2])
    into.dropped += ev.dropped + max(0, len(ev.staged) - room) + max(0, len(ev.handshakes) - room2)
    if ev.stats is not None:
        into.stats = ev.stats


def add_counts(into: dict[str, Any], more: dict[str, Any]) -> None:
    """Add the numbers of ``more`` into ``into`` (nested dicts of ints and floats)."""
    for k, v in more.items():
        if isinstance(v, bool):
            continue
        if isinstance(v, int | float):
            cur = into.get(k, 0)
            if isinstance(cur, int | float) and not isinstance(cur, bool):
                into[k] = cur + v
        elif isinstance(v, dict):
            sub = into.setdefault(k, {})
            if isinstance(sub, dict):
                add_counts(sub, v)
