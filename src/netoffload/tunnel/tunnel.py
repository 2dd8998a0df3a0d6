"""The running tunnel: a TUN, a UDP socket, two engines, the protocol core and the UAPI.

``Tunnel.from_config(cfg)`` builds it; ``start()`` creates the interface (named
after the configuration) in the current network namespace with its addresses,
MTU and routes, binds the UDP socket and the UAPI socket; ``run()`` serves
until stopped; ``close()`` removes everything it made. One thread moves packets
(``run``); the UAPI server's thread changes configuration under ``lock``.

Transmit: TUN read (GSO super-packets through the virtio header) -> the
transmit engine (tunnel/datapath.py) -> the UDP device (UDP_SEGMENT sends).
Receive: UDP read (UDP_GRO) -> the receive engine -> handshake messages to the
protocol core, data to the TUN (GSO super-packets again).
"""

from __future__ import annotations

import contextlib
import gc
import ipaddress
import json
import os
import select
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from netoffload.batch import Batch, CsumVerdict, FilterVerdict, Reason, VnetFlag
from netoffload.devices import kernel_common as kc
from netoffload.devices.tun import TunDevice
from netoffload.devices.udp_ip import UdpIpDevice
from netoffload.engine import Engine
from netoffload.errors import ConfigError, DeviceDown, NetoffloadError
from netoffload.policy.config import policy_from_args
from netoffload.policy.load import LoadMonitor, PsutilSampler
from netoffload.soft import SoftLibrary, make_task
from netoffload.tasks import Direction, Task
from netoffload.tunnel import datapath as dpm
from netoffload.tunnel import index_filter
from netoffload.tunnel import metrics as prom
from netoffload.tunnel.config import TunnelConfig
from netoffload.tunnel.offload import TunnelOffload, outer_rows
from netoffload.tunnel.protocol import Flush, Protocol, SendDatagram
from netoffload.tunnel.timers import REKEY_AFTER_TIME
from netoffload.tunnel.uapi import (
    PeerUpdate,
    SetRequest,
    UapiError,
    UapiPeer,
    UapiServer,
    UapiState,
)
from netoffload.wire.wireguard import MSG_INITIATION, MSG_RESPONSE, message_type

STATE_DIR = Path("/run/netoffload")
DEFAULT_MTU = 1420
DEFAULT_PORT = 51820
#: handshake messages a second above which the interface is "under load"
UNDER_LOAD_RATE = 200.0
TX_BATCH = 256
#: under load, a UDP read that found handshake messages only is followed by this much
#: time without UDP reads: a handshake flood then comes in batches, not one batch a
#: message or two (each batch has a fixed cost); data waits at most this long
RX_HOLD_UNDER_LOAD = 0.01
RX_BATCH = 512
#: the status file is written twice a second, in a gap of this long without packets
#: (writing it costs the loop ~0.1-0.4 ms: not in the middle of a ping's round trip),
#: or STATUS_LATE after it was due when traffic leaves no such gap
STATUS_EVERY = 0.5
#: a worker's report to the control (which folds it into the next status)
WORKER_STATUS_EVERY = 0.25
STATUS_QUIET = 0.002
STATUS_LATE = 0.15
TUN_OFFLOADS = kc.TUN_F_CSUM | kc.TUN_F_TSO4 | kc.TUN_F_TSO6 | kc.TUN_F_TSO_ECN


#: testing only (scripts/soak.sh): seconds after which the initiator rekeys instead of
#: REKEY_AFTER_TIME (a new handshake still waits REKEY_TIMEOUT after the last one)
REKEY_AFTER_ENV = "NETOFFLOAD_TEST_REKEY_AFTER"


def _rekey_after_from_env() -> float:
    raw = os.environ.get(REKEY_AFTER_ENV)
    if raw is None or raw == "":
        return REKEY_AFTER_TIME
    try:
        v = float(raw)
    except ValueError:
        v = float("nan")
    if not 0 < v <= REKEY_AFTER_TIME:
        raise ConfigError(f"{REKEY_AFTER_ENV}={raw!r}: seconds, > 0 and <= {REKEY_AFTER_TIME:g}")
    return v


def _zero_key(k: bytes | None) -> bool:
    return k is None or k == bytes(32)


class Tunnel:
    """One WireGuard-compatible interface served by this process."""

    def __init__(
        self,
        cfg: TunnelConfig,
        *,
        policy: str | None = None,
        policy_file: str | Path | None = None,
        force_under_load: bool = False,
        manage_interface: bool = True,
        sock_dir: str = "/var/run/wireguard",
        log: Callable[[str], None] | None = None,
        nic: str | None = None,
        kernel_offload: bool = True,
        metrics: str | None = None,
        workers: int = 1,
        protocol: Any = None,
        worker_index: int = 0,
    ) -> None:
        from netoffload.tunnel import workers as wk

        self.cfg = cfg
        #: processes serving the interface (tunnel/workers.py); this one is worker
        #: ``worker_index`` (0: the control, with the protocol core and the UAPI)
        self.n_workers = wk.check_workers(workers)
        self.worker_index = worker_index
        self.workers: wk.Workers | None = None
        #: fds the loop also waits for, and what to call when one is readable
        self.watch: dict[int, Callable[[], None]] = {}
        #: called after every turn of the loop
        self.after_turn: list[Callable[[], None]] = []
        #: called after each UDP read, before its engine pass (a worker: the control's
        #: news, so a session announced before the datagram arrived is known)
        self.after_recv: Callable[[], None] | None = None
        #: replaces write_status (a worker reports to the control instead)
        self.status_hook: Callable[[], None] | None = None
        # the Prometheus exporter's HOST:PORT (tunnel/metrics.py; None: off)
        mspec = metrics if metrics is not None else cfg.offload.metrics
        self.metrics_address = prom.parse_address(mspec) if mspec else None
        self.metrics: prom.MetricsServer | None = None
        #: False: no TUN offloads and no UDP GSO/GRO (the all-software comparison)
        self.kernel_offload = kernel_offload
        self.name = cfg.interface.name
        self.force_under_load = force_under_load
        self.manage_interface = manage_interface
        self.sock_dir = sock_dir
        self.log = log or (lambda _m: None)
        self.lock = threading.RLock()
        now = time.time()
        if protocol is None:
            protocol = Protocol(
                cfg.interface.private_key, now, rekey_after_time=_rekey_after_from_env()
            )
            for p in cfg.peers:
                protocol.add_peer(
                    p.public_key,
                    preshared_key=p.preshared_key,
                    endpoint=p.endpoint,
                    persistent_keepalive=p.persistent_keepalive,
                    allowed_ips=tuple(p.allowed_ips),
                )
        self.protocol = protocol
        if self.n_workers > 1 and worker_index == 0:
            protocol.pin_index_byte = True  # a peer's sessions share one receiving worker
        self.listen_port = cfg.interface.listen_port or 0
        self.fwmark = cfg.interface.fwmark or 0
        self.mtu = cfg.interface.mtu or DEFAULT_MTU
        off = cfg.offload
        spec = policy if policy is not None else off.policy
        pfile = policy_file if policy_file is not None else off.policy_file
        self.policy_spec, self.policy_file = spec, pfile
        self._policy_factory = policy_from_args(spec, pfile, "adaptive")
        if self.n_workers > 1 and worker_index == 0:
            # receiver indices another worker owns are not received here
            self.dp = dpm.Datapath(wk.OwnedView(self.protocol, self.n_workers))
        else:
            self.dp = dpm.Datapath(self.protocol)
        self.tun: TunDevice | None = None
        self.udp: UdpIpDevice | None = None
        self.uapi: UapiServer | None = None
        self.made: Any = None
        # the engines' devices (TUN checksum; the emulated crypto NIC with nic=crypto)
        nic = nic if nic is not None else off.nic
        if self.n_workers > 1 and nic not in (None, "none"):
            raise ConfigError(f"--nic {nic} serves one process: use --workers 1 with it")
        self.offload = TunnelOffload(nic, self.name, self.dp)
        try:
            self.tx_engine = self._engine(Direction.TX)
            self.rx_engine = self._engine(Direction.RX)
        except BaseException:
            self.offload.close()
            raise
        self.offload.attach(self.tx_engine, self.rx_engine)
        self._stop_r, self._stop_w = os.pipe()
        os.set_blocking(self._stop_r, False)
        self._stopping = False
        self._hs_times: deque[float] = deque(maxlen=4096)
        self._load_until = 0.0
        self.stats: dict[str, int] = {
            "tx_packets": 0,
            "rx_packets": 0,
            "tx_bytes": 0,
            "rx_bytes": 0,
            "handshakes_in": 0,
            "handshakes_out": 0,
            "keepalives_in": 0,
        }
        self.started = 0.0
        self._status_at = 0.0
        self.status_every = STATUS_EVERY if worker_index == 0 else WORKER_STATUS_EVERY
        self._status_writer = StatusWriter()
        #: the kernel drops what is no WireGuard message at the socket (_shape_filter)
        self.shape_filter = False
        #: the last receive batch held handshake messages only
        self._handshakes_only = False

    @classmethod
    def from_config(cls, cfg: TunnelConfig | str | Path, **kw: Any) -> Tunnel:
        if not isinstance(cfg, TunnelConfig):
            from netoffload.tunnel.config import load_config

            cfg = load_config(cfg)
        return cls(cfg, **kw)

    # ------------------------------------------------------------------ engines
    def _engine(self, direction: Direction) -> Engine:
        dp = self.dp
        if direction is Direction.TX:
            lib = SoftLibrary(
                {
                    Task.CLASSIFY: dpm.WgRoute(dp),
                    Task.TCP_SEGMENT: make_task(Task.TCP_SEGMENT),
                    Task.UDP_SEGMENT: make_task(Task.UDP_SEGMENT),
                    Task.CHECKSUM: make_task(Task.CHECKSUM, mode="fill"),
                    Task.ENCRYPT: dpm.WgEncrypt(dp),
                }
            )
            order = dpm.TX_ORDER
        else:
            lib = SoftLibrary(
                {
                    Task.DIGEST: dpm.WgMac(dp),
                    Task.DOS_FILTER: dpm.WgFilter(dp),
                    Task.DECRYPT: dpm.WgDecrypt(dp),
                    Task.CLASSIFY: dpm.WgSource(dp),
                    Task.CHECKSUM: make_task(Task.CHECKSUM, mode="verify"),
                    Task.TCP_ASSEMBLE: make_task(Task.TCP_ASSEMBLE),
                    Task.UDP_ASSEMBLE: make_task(Task.UDP_ASSEMBLE),
                }
            )
            order = dpm.RX_ORDER
        tasks = Task(0)
        for t in order:
            tasks |= t
        off = self.offload
        devices = off.tx_devices if direction is Direction.TX else off.rx_devices
        monitor = LoadMonitor(sampler=PsutilSampler()) if devices else None
        return Engine(direction, tasks, lib, self._policy_factory(), devices, monitor, order=order)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Create the interface, sockets and UAPI; on any failure undo and raise."""
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> None:
        name = self.name
        try:
            socket.if_nametoindex(name)
            exists = True
        except OSError:
            exists = False
        if exists:
            raise ConfigError(f"interface {name} already exists (is it up already?)")
        # UAPI first: a live socket means another process serves this name
        self.uapi = UapiServer(name, self, sock_dir=self.sock_dir)
        self.lock = self.uapi.lock
        socks: list[UdpIpDevice] = []
        fds: list[int] = []
        if self.n_workers > 1:
            from netoffload.tunnel.workers import Workers

            self.workers = Workers(self, self.n_workers)
            try:
                fds, actual, socks = self.workers.open_devices(name, self.kernel_offload)
            except OSError as e:
                raise ConfigError(f"cannot create interface {name}: {e.strerror}") from None
            fd = fds[0]
        else:
            try:
                fd, actual = kc.tun_open(name, vnet_hdr=True)
            except OSError as e:
                raise ConfigError(f"cannot create interface {name}: {e.strerror}") from None
        self.tun = TunDevice([fd], actual, direction=Direction.TX)
        caps = kc.tun_probe_offloads(fd)
        bits = TUN_OFFLOADS
        if caps.get("uso"):
            bits |= kc.TUN_F_USO4 | kc.TUN_F_USO6
        try:
            self.tun.set_offload(bits if self.kernel_offload else 0)
        except NetoffloadError:
            self.tun.set_offload(kc.TUN_F_CSUM | kc.TUN_F_TSO4 | kc.TUN_F_TSO6)
        if socks:
            self.udp = socks[0]
        else:
            self.udp = UdpIpDevice.bind_here(
                self.listen_port,
                fwmark=self.fwmark or None,
                name=f"udp:{name}",
                gro=self.kernel_offload,
            )
            socks = [self.udp]
        for u in socks:
            if not self.kernel_offload:
                u.disable_gso()
            self._shape_filter(u)
        self.listen_port = self.udp.local_port
        self.dp.listen_port = self.listen_port
        if self.workers is not None:
            self.workers.fork(fds, actual, socks)
            for h in self.workers.handles:
                self.watch[h.ctl.fileno()] = self._worker_events(h.ctl.fileno())
            self.after_turn.append(self._sync_workers)
            self.workers.sync(force=True)
        if self.manage_interface:
            self._configure_interface()
        self.uapi.start()
        if self.metrics_address is not None:
            self.metrics = prom.serve(self, self.metrics_address, self.log)
        self.started = time.time()
        self._write_state()

    def _shape_filter(self, udp: UdpIpDevice) -> None:
        """The kernel drops datagrams that are no WireGuard message (type, length) before
        they queue at the socket (datapath.shape_filter); not with kernel_offload off."""
        self.shape_filter = False
        if self.kernel_offload and udp.probed.get("filter"):
            try:
                udp.attach_filter(dpm.shape_filter())
                self.shape_filter = True
            except NetoffloadError as e:
                self.log(f"{self.name}: no kernel shape filter: {e}")

    def _configure_interface(self) -> None:
        from netoffload.tunnel import iface

        ic = self.cfg.interface
        plan = iface.plan(
            self.name,
            [str(a) for a in ic.addresses],
            ic.mtu,
            [[str(n) for n in p.allowed_ips] for p in self.cfg.peers],
            table=ic.table,
            fwmark=ic.fwmark,
        )
        self.mtu = plan.mtu
        if plan.fwmark and not self.fwmark:
            self.fwmark = plan.fwmark
            assert self.udp is not None
            self.udp.set_fwmark(self.fwmark)
        self.made = iface.apply(plan)

    def _write_state(self) -> None:
        with contextlib.suppress(OSError):
            STATE_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
            rec = {
                "pid": os.getpid(),
                "name": self.name,
                "made": self.made.to_json() if self.made is not None else None,
                "socket": str(Path(self.sock_dir) / f"{self.name}.sock"),
            }
            p = STATE_DIR / f"{self.name}.json"
            p.write_text(json.dumps(rec))
            p.chmod(0o600)

    def stop(self) -> None:
        """Ask ``run`` to return (safe from a signal handler or another thread)."""
        self._stopping = True
        with contextlib.suppress(OSError):
            os.write(self._stop_w, b"x")

    def _sockets(self) -> list[UdpIpDevice]:
        """Every UDP socket of the interface (the workers' too: a filter is the socket's)."""
        if self.workers is not None:
            return self.workers.sockets
        return [self.udp] if self.udp is not None else []

    def _sync_workers(self) -> None:
        """Peers and keypairs to the workers (under the lock: the UAPI thread edits them)."""
        if self.workers is not None:
            with self.lock:
                self.workers.sync()

    def _worker_events(self, fd: int) -> Callable[[], None]:
        def handle() -> None:
            assert self.workers is not None
            with self.lock:
                self.workers.handle_readable(fd, time.time())

        return handle

    def close(self) -> None:
        """Remove everything this tunnel made (idempotent)."""
        self._status_writer.close()  # before the status file goes, not to write it again
        if self.workers is not None:
            self.workers.close()
            self.workers = None
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None
        self.offload.close()  # the NIC processes and their key table
        if self.uapi is not None:
            with contextlib.suppress(Exception):
                self.uapi.close()
            self.uapi = None
        if self.made is not None:
            from netoffload.tunnel import iface

            with contextlib.suppress(Exception):
                iface.undo(self.made)
            self.made = None
        for dev in (self.udp, self.tun):
            if dev is not None:
                with contextlib.suppress(Exception):
                    dev.close()
        self.udp = None
        self.tun = None
        for p in (STATE_DIR / f"{self.name}.json", STATE_DIR / f"{self.name}.status.json"):
            with contextlib.suppress(OSError):
                p.unlink()
        for fd in (self._stop_r, self._stop_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._stop_r = self._stop_w = -1

    def __enter__(self) -> Tunnel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ loop
    def run(self, ready: Callable[[], None] | None = None, until: float | None = None) -> None:
        """Move packets until ``stop()`` (or monotonic time ``until``)."""
        assert self.tun is not None and self.udp is not None
        tfd = self.tun.fds[0]
        ufd = self.udp.sock.fileno()
        # what exists now lives as long as the tunnel: out of the collector's way, so a
        # full collection (~10 ms over everything imported) never lands on a packet
        gc.collect()
        gc.freeze()
        if ready is not None:
            ready()
        hold = 0.0  # no UDP read before this (monotonic): see RX_HOLD_UNDER_LOAD
        while not self._stopping:
            now = time.time()
            mono = time.monotonic()
            if until is not None and mono >= until:
                break
            with self.lock:
                self._handle(self.protocol.tick(now))
                deadline = self.protocol.next_deadline()
            timeout = min(max(deadline - time.time(), 0.0), 0.5)
            due = self._status_at + self.status_every
            # the status is due: wait for a quiet moment (see STATUS_QUIET)
            timeout = min(timeout, STATUS_QUIET if mono >= due else due - mono)
            if hold > mono:
                rl = [tfd, self._stop_r, *self.watch]
                timeout = min(timeout, hold - mono)
            else:
                rl = [tfd, ufd, self._stop_r, *self.watch]
            try:
                r, _, _ = select.select(rl, [], [], timeout)
            except InterruptedError:
                continue
            except (OSError, ValueError) as e:
                raise DeviceDown(f"{self.name}: {e}") from None
            if self._stop_r in r:
                break
            for fd in r:
                w = self.watch.get(fd)
                if w is not None:
                    w()
            got = self.receive() if ufd in r else 0
            if got and self._handshakes_only and self.dp.under_load:
                hold = time.monotonic() + RX_HOLD_UNDER_LOAD
            if tfd in r:
                self.transmit()
            for f in self.after_turn:
                f()
            mono = time.monotonic()
            if mono >= due and (not r or mono >= due + STATUS_LATE):
                self._status_at = mono
                self.write_status()

    def transmit(self, batch: Batch | None = None) -> int:
        """One transmit batch: TUN read (or ``batch``) -> engine -> UDP send."""
        if batch is None:
            assert self.tun is not None
            batch = self.tun.recv(TX_BATCH)
        b = batch
        if not len(b):
            return 0
        dpm.tx_wants(b)
        with self.lock:
            now = time.time()
            self.dp.now = now
            out = self.tx_engine.process(b).batch
            sent = self.send_outer(out)
            self.stats["tx_packets"] += sent
            enc = self.tx_engine.soft[Task.ENCRYPT]
            per_slot = getattr(enc, "sent_bytes", {})
            for s, nbytes in per_slot.items():
                owner = self.dp.sessions.kp_owner.get(s)
                peer = self.dp.sessions.peers[owner] if owner is not None else None
                if peer is not None:
                    self.stats["tx_bytes"] += nbytes
                    self._handle(self.protocol.data_sent(peer, now, nbytes + 32, False))
            enc.sent_bytes = {}  # type: ignore[attr-defined]
            self._handle(self.dp.take_actions())
        return len(b)

    def receive(self, batch: Batch | None = None) -> int:
        """One receive batch: UDP read (or ``batch``: outer datagrams as the UDP device
        reads them) -> engine -> handshakes to the core, data to the TUN."""
        if batch is None:
            assert self.udp is not None
            batch = self.udp.recv(RX_BATCH)
            if self.after_recv is not None:
                # a datagram read now was sent after the peer had our handshake message,
                # i.e. after the control sent the session: it is there to read now
                self.after_recv()
        b = batch
        n = len(b)
        if not n:
            return 0
        handshakes = dpm.rx_wants(b)
        b_start = b.start.copy()
        b_len = b.length.copy()
        with self.lock:
            now = time.time()
            self.dp.now = now
            self.dp.under_load = self._under_load(now, n, handshakes)
            base = self.rx_engine._next_origin
            out = self.rx_engine.process(b).batch
            if len(out.length) <= dpm.SMALL:  # a few packets: plain ints (numpy ~1 us a call)
                self._received_small(b, out, base, now, b_start.tolist(), b_len.tolist())
                return n
            e = out.ext
            # handshake messages: to the protocol core
            hs = np.flatnonzero(e.error == Reason.HANDSHAKE)
            for i in hs.tolist():
                k = int(e.origin[i]) - base
                src = dpm.outer_source(b, k, int(b_start[k]))
                s = int(b_start[k])
                ol = dpm.OUTER6 if b.buf[s] >> 4 == 6 else dpm.OUTER4
                msg = bytes(b.buf[s + ol : s + int(b_len[k])])
                self.stats["handshakes_in"] += 1
                self._handle(self.protocol.handle_handshake(msg, src, now, False))
            # data: to the TUN; authenticated packets drive timers and roaming
            auth = (e.sa >= 0) & ((e.error == 0) | (e.error == Reason.KEEPALIVE))
            idx = np.flatnonzero(auth)
            if len(idx):
                slots = e.sa[idx]
                for s in np.unique(slots).tolist():
                    rows = idx[slots == s]
                    kp = self.dp.sessions.keypairs.get(s)
                    owner = self.dp.sessions.kp_owner.get(s)
                    peer = self.dp.sessions.peers[owner] if owner is not None else None
                    if kp is None or peer is None:
                        continue
                    last = int(e.origin[rows[-1]]) - base
                    src = dpm.outer_source(b, last, int(b_start[last]))
                    nbytes = int(out.length[rows].sum()) + 32 * len(rows)
                    ka = bool((e.error[rows] == Reason.KEEPALIVE).all())
                    self.stats["keepalives_in"] += int((e.error[rows] == Reason.KEEPALIVE).sum())
                    self.stats["rx_bytes"] += nbytes
                    self._handle(self.protocol.data_received(peer, kp, src, now, nbytes, ka))
            live = e.alive()
            if live.any():
                # authenticated by the AEAD and checked (or merged by us): the kernel need not
                good = live & (e.csum_verdict == CsumVerdict.GOOD) & (e.vflags == 0)
                e.vflags[good] = VnetFlag.DATA_VALID
                self.stats["rx_packets"] += self.write_inner(out)
            for dest, data in self.dp.outbox:
                self._send_raw(dest, data)
            self.dp.outbox.clear()
            self._handle(self.dp.take_actions())
        return n

    def _received_small(
        self, b: Batch, out: Batch, base: int, now: float, b_start: list[int], b_len: list[int]
    ) -> None:
        """``receive``'s work after the engine for a few packets, a packet at a time (the
        same calls in the same order): handshakes to the core, per keypair slot (in
        ascending order) the authenticated packets to the timers, data to the TUN."""
        e = out.ext
        err = e.error.tolist()
        origin = e.origin.tolist()
        hs_reason, ka_reason = int(Reason.HANDSHAKE), int(Reason.KEEPALIVE)
        for i, r in enumerate(err):
            if r == hs_reason:
                k = origin[i] - base
                s = b_start[k]
                src = dpm.outer_source(b, k, s)
                ol = dpm.OUTER6 if b.buf[s] >> 4 == 6 else dpm.OUTER4
                msg = bytes(b.buf[s + ol : s + b_len[k]])
                self.stats["handshakes_in"] += 1
                self._handle(self.protocol.handle_handshake(msg, src, now, False))
        sa = e.sa.tolist()
        rows: dict[int, list[int]] = {}
        for i, s in enumerate(sa):
            if s >= 0 and (err[i] == 0 or err[i] == ka_reason):
                rows.setdefault(s, []).append(i)
        if rows:
            ln = out.length.tolist()
            sessions = self.dp.sessions
            for s in sorted(rows):
                r = rows[s]
                kp = sessions.keypairs.get(s)
                owner = sessions.kp_owner.get(s)
                peer = sessions.peers[owner] if owner is not None else None
                if kp is None or peer is None:
                    continue
                last = origin[r[-1]] - base
                src = dpm.outer_source(b, last, b_start[last])
                nbytes = sum(ln[i] for i in r) + 32 * len(r)
                kas = sum(1 for i in r if err[i] == ka_reason)
                self.stats["keepalives_in"] += kas
                self.stats["rx_bytes"] += nbytes
                self._handle(self.protocol.data_received(peer, kp, src, now, nbytes, kas == len(r)))
        verdict = e.filter_verdict.tolist()
        live = False
        for i, r in enumerate(err):
            if r == 0 and verdict[i] != FilterVerdict.DROP:
                live = True
                # authenticated by the AEAD and checked: the kernel need not
                if e.csum_verdict[i] == CsumVerdict.GOOD and e.vflags[i] == 0:
                    e.vflags[i] = VnetFlag.DATA_VALID
        if live:
            self.stats["rx_packets"] += self.write_inner(out)
        for dest, data in self.dp.outbox:
            self._send_raw(dest, data)
        self.dp.outbox.clear()
        self._handle(self.dp.take_actions())

    # the two ends (seams: tunnel/loop.py joins two tunnels in one process through these
    # and ``_send_raw``)
    def send_outer(self, out: Batch) -> int:
        """Send the transmit engine's outer datagrams; returns how many went."""
        assert self.udp is not None
        return self.udp.send(out)

    def write_inner(self, out: Batch) -> int:
        """Write the receive engine's inner packets to the TUN; returns how many it took."""
        assert self.tun is not None
        return self.tun.send(out)

    def _under_load(self, now: float, n: int, k: int) -> bool:
        """Under load after ``k`` handshake messages of a batch of ``n`` datagrams?"""
        if self.force_under_load:
            return True
        self._handshakes_only = k == n
        if k:
            self._hs_times.extend([now] * k)  # the last 4096 (maxlen)
            cut = now - 1.0
            while self._hs_times and self._hs_times[0] < cut:
                self._hs_times.popleft()
            if len(self._hs_times) >= UNDER_LOAD_RATE:
                self._load_until = now + 1.0
        return now < self._load_until

    # ------------------------------------------------------------------ actions
    def _send_raw(self, dest: tuple[str, int], data: bytes) -> None:
        assert self.udp is not None
        a = dest[0]
        try:  # inet_pton: ipaddress's answer in a tenth of the time (cookie replies in floods)
            packed = socket.inet_pton(socket.AF_INET6 if ":" in a else socket.AF_INET, a)
        except OSError:
            packed = ipaddress.ip_address(a).packed
        to = self.udp._dest(packed, int(dest[1]))
        try:
            self.udp.sock.sendto(data, to)
        except OSError as e:
            self.udp.udp.note(e)

    def _handle(self, actions: list[Any]) -> None:
        if not actions:
            return
        if self.workers is not None:
            # a new session reaches every worker before anything that announces it
            # leaves (the peer answers under it within a round trip)
            self.workers.sync(force=True)
        for a in actions:
            if isinstance(a, SendDatagram):
                if message_type(a.data) in (MSG_INITIATION, MSG_RESPONSE):
                    self.stats["handshakes_out"] += 1
                    if self.shape_filter:  # the kernel's filter learns the new index first
                        index_filter.keep_live(self._sockets(), self.protocol._index)
                self._send_raw(a.dest, a.data)
            elif isinstance(a, Flush) and a.packets:
                self._flush(a.packets)

    def _flush(self, packets: list[bytes]) -> None:
        b = Batch.from_packets(packets, headroom=dpm.HEADROOM, tailroom=dpm.TAILROOM)
        self.transmit(b)

    # ------------------------------------------------------------------ UAPI
    def uapi_get(self) -> UapiState:
        peers = []
        for p in self.protocol.peers.values():
            peers.append(
                UapiPeer(
                    public_key=p.public_key,
                    preshared_key=None if _zero_key(p.preshared_key) else p.preshared_key,
                    endpoint=p.endpoint,
                    last_handshake=p.last_handshake,
                    tx_bytes=p.tx_bytes,
                    rx_bytes=p.rx_bytes,
                    persistent_keepalive=p.persistent_keepalive,
                    allowed_ips=tuple(p.allowed_ips),
                )
            )
        return UapiState(
            private_key=self.protocol.private_key,
            listen_port=self.listen_port,
            fwmark=self.fwmark,
            peers=tuple(peers),
        )

    def uapi_set(self, req: SetRequest) -> None:
        now = time.time()
        if req.private_key is not None:
            if _zero_key(req.private_key):
                raise UapiError(message="removing the private key is not supported")
            self.protocol.set_private_key(req.private_key, now)
        if req.listen_port is not None and req.listen_port != self.listen_port:
            if self.workers is not None:  # the workers' sockets share the port
                raise UapiError(
                    95, f"listen-port cannot change under --workers {self.n_workers} (use 1)"
                )
            self._rebind(req.listen_port)
        if req.fwmark is not None:
            self.fwmark = req.fwmark
            if self.udp is not None:
                self.udp.set_fwmark(req.fwmark)
        if req.replace_peers:
            keep = {u.public_key for u in req.peers if not u.remove}
            for pk in list(self.protocol.peers):
                if pk not in keep:
                    self.protocol.remove_peer(pk)
        for u in req.peers:
            self._apply_peer(u, now)
        self.dp.rebuild()

    def _apply_peer(self, u: PeerUpdate, now: float) -> None:
        peer = self.protocol.peers.get(u.public_key)
        if u.remove:
            if peer is not None:
                self.protocol.remove_peer(u.public_key)
            return
        if peer is None:
            if u.update_only:
                return
            peer = self.protocol.add_peer(u.public_key)
        if u.preshared_key is not None:
            peer.preshared_key = bytes(32) if _zero_key(u.preshared_key) else u.preshared_key
        if u.endpoint is not None:
            peer.endpoint = u.endpoint
        if u.persistent_keepalive is not None:
            self.protocol.set_persistent_keepalive(peer, u.persistent_keepalive)
        if u.replace_allowed_ips:
            peer.allowed_ips = list(u.allowed_ips)
        elif u.allowed_ips:
            # an allowed IP belongs to one peer: take it from any other
            for other in self.protocol.peers.values():
                if other is not peer:
                    other.allowed_ips = [n for n in other.allowed_ips if n not in u.allowed_ips]
            peer.allowed_ips = list(peer.allowed_ips) + [
                n for n in u.allowed_ips if n not in peer.allowed_ips
            ]

    def _rebind(self, port: int) -> None:
        old = self.udp
        try:
            new = UdpIpDevice.bind_here(port, fwmark=self.fwmark or None, name=f"udp:{self.name}")
        except OSError as e:
            raise UapiError(e.errno or 98, f"listen-port {port}: {e.strerror}") from None
        self._shape_filter(new)
        self.udp = new
        self.listen_port = new.local_port
        self.dp.listen_port = self.listen_port
        if old is not None:
            old.close()

    # ------------------------------------------------------------------ status
    def status(self) -> dict[str, Any]:
        """What ``netoffload show --json`` prints: peers, counters, drops, the policy."""
        from netoffload.tunnel.keys import b64_encode

        def engine(en: Engine) -> dict[str, Any]:
            tasks = {t.kebab: c.as_dict() for t, c in en.counters.items()}
            pol = en.policy
            describe = getattr(pol, "describe", None)
            return {
                "tasks": tasks,
                "policy": describe() if callable(describe) else type(pol).__name__,
            }

        peers = []
        now = time.time()
        for p in self.protocol.peers.values():
            peers.append(
                {
                    "public_key": b64_encode(p.public_key),
                    "endpoint": f"{p.endpoint[0]}:{p.endpoint[1]}" if p.endpoint else None,
                    "allowed_ips": [str(n) for n in p.allowed_ips],
                    "latest_handshake": p.last_handshake,
                    "handshake_age_s": (now - p.last_handshake) if p.last_handshake else None,
                    "rx_bytes": p.rx_bytes,
                    "tx_bytes": p.tx_bytes,
                    "persistent_keepalive": p.persistent_keepalive,
                }
            )
        devs: dict[str, Any] = {}
        if self.tun is not None:
            devs["tun"] = self.tun.counters()
        if self.udp is not None:
            devs["udp"] = {**self.udp.counters(), **_socket_drops(self.udp.sock)}
            devs["udp"]["shape_filter"] = self.shape_filter
        devs.update(self.offload.counters())
        transmit, receive = engine(self.tx_engine), engine(self.rx_engine)
        # the outer UDP tasks the kernel does at the socket (not engine stages)
        tx_outer, rx_outer = outer_rows(self.udp)
        transmit["tasks"].update(tx_outer)
        receive["tasks"].update(rx_outer)
        workers: list[dict[str, Any]] = []
        if self.workers is not None:
            from netoffload.tunnel.workers import add_counts

            workers.append({"worker": 0, "alive": True, **self.worker_stats()})
            for w in self.workers.status():
                workers.append(w)
                add_counts(transmit["tasks"], w.get("transmit", {}))
                add_counts(receive["tasks"], w.get("receive", {}))
                add_counts(devs, w.get("devices", {}))  # device totals of all queues
        stats = dict(self.stats)
        for w in workers[1:]:
            for k, v in w.get("stats", {}).items():
                if k != "handshakes_in":  # the control counts those it was handed
                    stats[k] = stats.get(k, 0) + v
        return {
            "interface": self.name,
            "public_key": b64_encode(self.protocol.public_key),
            "listen_port": self.listen_port,
            "fwmark": self.fwmark,
            "pid": os.getpid(),
            "uptime_s": now - self.started if self.started else 0.0,
            "peers": peers,
            "transmit": transmit,
            "receive": receive,
            "offload": self.offload.describe(),
            "devices": devs,
            "protocol": {k: v for k, v in self.protocol.drops.items() if v},
            "stats": stats,
            "workers": workers,
            "steering": self.workers.steering if self.workers is not None else None,
        }

    def worker_stats(self) -> dict[str, Any]:
        """What a worker reports to the control each second (merged into ``status``)."""
        t = os.times()

        def tasks(en: Engine) -> dict[str, Any]:
            return {k.kebab: c.as_dict() for k, c in en.counters.items()}

        devs: dict[str, Any] = {}
        if self.tun is not None:
            devs["tun"] = self.tun.counters()
        if self.udp is not None:
            devs["udp"] = {**self.udp.counters(), **_socket_drops(self.udp.sock)}
        return {
            "pid": os.getpid(),
            "cpu_s": t.user + t.system,
            "stats": dict(self.stats),
            "transmit": tasks(self.tx_engine),
            "receive": tasks(self.rx_engine),
            "devices": devs,
        }

    def write_status(self) -> None:
        if self.status_hook is not None:
            self.status_hook()
            return
        with contextlib.suppress(TypeError, ValueError):
            text = json.dumps(self.status(), default=str)
            self._status_writer.put(STATE_DIR / f"{self.name}.status.json", text)


class StatusWriter:
    """Writes the newest status document to its file in a thread of its own, off the
    packet loop: replacing a file costs ~1 ms where /run is ext4 (the data is flushed
    before the rename), which the loop paid each time on whatever packet came
    next. Only the newest document waits; the thread starts with the first one."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._job: tuple[Path, str] | None = None
        self._closed = False
        self._thread: threading.Thread | None = None

    def put(self, path: Path, text: str) -> None:
        with self._cond:
            if self._closed:
                return
            self._job = (path, text)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="netoffload-status", daemon=True
                )
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._job is None and not self._closed:
                    self._cond.wait()
                job, self._job = self._job, None
            if job is None:
                return
            path, text = job
            with contextlib.suppress(OSError):
                tmp = path.with_suffix(".tmp")
                tmp.write_text(text)
                os.replace(tmp, path)

    def close(self, timeout: float = 2.0) -> None:
        """Write what waits, then stop (idempotent)."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout)


SO_MEMINFO = 55
SK_MEMINFO_DROPS = 8


def _socket_drops(sock: socket.socket) -> dict[str, int]:
    """Datagrams the kernel dropped at the socket: the shape filter's and a full queue's."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 4 * 9)
    except OSError:
        return {}
    if len(raw) < 4 * (SK_MEMINFO_DROPS + 1):
        return {}
    return {"socket_drops": int(struct.unpack_from("=I", raw, 4 * SK_MEMINFO_DROPS)[0])}
