"""``netoffload bench forward``: a TUN<->TUN forwarder with and without kernel offload.

Two namespaces, each with a TUN; our forwarder (this process) holds both
fds and moves packets between them, checking every packet's checksum on the
way (in software unless the kernel already did: DATA_VALID / NEEDS_CSUM). A
kernel TCP stream (Python sockets in forked children, one per namespace) runs
through it, bounded in bytes and time.

*offload*: both TUNs have TUNSETOFFLOAD csum+TSO4+TSO6(+ECN): the kernel hands
64 KiB super-packets with partial checksums up, and segments/checksums what we
write (the GSO header travels through us unchanged). *no offload*: the same
forwarder, TUNSETOFFLOAD 0: the kernel segments to the MTU and checksums in
software before we see the packets, and we verify every checksum.

Metrics: ``forward_offload_ratio`` (throughput offload / no offload, target
>= 10), ``cpu_s_per_gbit_offload`` and ``cpu_s_per_gbit_no_offload`` (CPU
seconds of forwarder + both endpoints per gigabit carried).
"""

from __future__ import annotations

import resource
import select
import socket
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from netoffload.bench import Bench, BenchContext, BenchResult, register
from netoffload.devices import kernel_common as kc
from netoffload.devices.tun import TunDevice
from netoffload.errors import DeviceDown, DeviceError
from netoffload.tasks import Task, bit16
from netoffload.testing import netns

ADDR_A = "198.18.1.1"
ADDR_B = "198.18.2.1"
PORT = 5201
OFFLOAD_BITS = kc.TUN_F_CSUM | kc.TUN_F_TSO4 | kc.TUN_F_TSO6 | kc.TUN_F_TSO_ECN
_U_CSUM = bit16(Task.CHECKSUM)


@dataclass
class StreamResult:
    offload: bool
    bytes: int  # received by the TCP receiver
    seconds: float  # receiver: first byte to end of stream
    cpu_s: float  # forwarder + sender + receiver (user + system)
    packets: int  # packets the forwarder moved
    gso_packets: int  # of them, GSO super-packets
    max_gso_size: int
    errors: int
    note: str = ""

    @property
    def gbit_s(self) -> float:
        return self.bytes * 8 / 1e9 / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_s_per_gbit(self) -> float:
        gbit = self.bytes * 8 / 1e9
        return self.cpu_s / gbit if gbit > 0 else float("inf")


def _cpu(ru: Any) -> float:
    return float(ru.ru_utime + ru.ru_stime)


def _receiver(lsock: socket.socket, limit_s: float) -> tuple[int, float, float, int]:
    lsock.settimeout(limit_s)
    conn, _ = lsock.accept()
    conn.settimeout(limit_s)
    buf = bytearray(1 << 20)
    mv = memoryview(buf)
    total = 0
    t0 = 0.0
    check = 0
    try:
        while True:
            n = conn.recv_into(mv)
            if not n:
                break
            if not t0:
                t0 = time.perf_counter()
            total += n
            check = (check + buf[n - 1]) & 0xFFFFFFFF
    except OSError:
        pass
    dt = time.perf_counter() - t0 if t0 else 0.0
    conn.close()
    return total, dt, _cpu(resource.getrusage(resource.RUSAGE_SELF)), check


def _sender(nbytes: int, seconds: float) -> tuple[int, float]:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(max(2.0, seconds))
    s.connect((ADDR_B, PORT))
    chunk = bytes(range(256)) * 1024  # 256 KiB
    sent = 0
    end = time.perf_counter() + seconds
    try:
        while sent < nbytes and time.perf_counter() < end:
            left = nbytes - sent
            sent += s.send(chunk if left >= len(chunk) else chunk[:left])
        s.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    s.close()
    return sent, _cpu(resource.getrusage(resource.RUSAGE_SELF))


class ForwardTopology:
    """Namespaces ``a`` (198.18.1.1) and ``b`` (198.18.2.1), each behind a TUN our process holds."""

    def __init__(self) -> None:
        reason = netns.tun_available()
        if reason:
            raise DeviceError(f"forward: {reason}")
        self.tb = netns.Testbed()
        try:
            self.a = self.tb.host("fwa")
            self.b = self.tb.host("fwb")
            self.ta = TunDevice.open_in(self.a, "tun0", addrs=[f"{ADDR_A}/24"])
            self.tbv = TunDevice.open_in(self.b, "tun0", addrs=[f"{ADDR_B}/24"])
            self.a.add_route("198.18.2.0/24", dev="tun0")
            self.b.add_route("198.18.1.0/24", dev="tun0")
            from netoffload.soft import make_task

            self._verify = make_task(Task.CHECKSUM, mode="verify")
        except BaseException:
            self.close()
            raise
        self.packets = 0
        self.gso_packets = 0
        self.max_gso = 0
        self.errors = 0

    def set_offload(self, on: bool) -> None:
        for d in (self.ta, self.tbv):
            d.set_offload(OFFLOAD_BITS if on else 0)

    def pump(self, src: TunDevice, dst: TunDevice, max_packets: int = 256) -> int:
        """Move what ``src`` has to ``dst``; checksums are checked unless the kernel did."""
        g0 = src.tun.gso_in
        b = src.recv(max_packets)
        n = len(b)
        if not n:
            return 0
        e = b.ext
        if np.count_nonzero(e.done & _U_CSUM) < n:
            b = self._verify.process(b, (e.done & _U_CSUM) == 0)
        ngso = src.tun.gso_in - g0  # the device counts the super-packets it read
        if ngso:
            self.gso_packets += ngso
            self.max_gso = max(self.max_gso, int(e.gso_size[(e.gso_type & 0x7F) != 0].max()))
        self.packets += n
        dst.send(b)
        self.errors += int(np.count_nonzero(b.ext.error))
        return n

    def forward_until(self, done: Any, deadline: float) -> None:
        """Forward both ways until ``done()`` or ``deadline`` (monotonic)."""
        fa, fb = self.ta.fds[0], self.tbv.fds[0]
        while time.monotonic() < deadline and not done():
            try:
                r, _, _ = select.select([fa, fb], [], [], 0.05)
            except (OSError, ValueError) as e:
                raise DeviceDown(f"forward: {e}") from None
            if fa in r:
                self.pump(self.ta, self.tbv)
            if fb in r:
                self.pump(self.tbv, self.ta)

    def stream(self, offload: bool, nbytes: int, seconds: float) -> StreamResult:
        """One TCP stream a -> b through the forwarder."""
        self.set_offload(offload)
        self.packets = self.gso_packets = self.max_gso = self.errors = 0
        lsock = self.b.socket(socket.AF_INET, socket.SOCK_STREAM)
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lsock.bind((ADDR_B, PORT))
        lsock.listen(1)
        limit = seconds + 10.0
        rx = self.b.spawn(_receiver, lsock, limit)
        lsock.close()
        tx = self.a.spawn(_sender, nbytes, seconds)
        ru0 = _cpu(resource.getrusage(resource.RUSAGE_SELF))
        note = ""
        try:
            self.forward_until(lambda: not rx.proc.is_alive(), time.monotonic() + limit)
            got, dt, rx_cpu, _ = rx.join(5)
            sent, tx_cpu = tx.join(5)
        except DeviceError as e:
            rx.kill()
            tx.kill()
            got, dt, rx_cpu, sent, tx_cpu = 0, 0.0, 0.0, 0, 0.0
            note = str(e)
        fwd_cpu = _cpu(resource.getrusage(resource.RUSAGE_SELF)) - ru0
        if got != sent and not note:
            note = f"sent {sent} bytes, received {got}"
        return StreamResult(
            offload,
            got,
            dt,
            fwd_cpu + rx_cpu + tx_cpu,
            self.packets,
            self.gso_packets,
            self.max_gso,
            self.errors,
            note,
        )

    def close(self) -> None:
        for d in ("ta", "tbv"):
            dev = getattr(self, d, None)
            if dev is not None:
                dev.close()
        self.tb.close()

    def __enter__(self) -> ForwardTopology:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run(ctx: BenchContext) -> BenchResult:
    seconds = 1.5 if ctx.quick else 4.0
    rounds = 3 if ctx.quick else 4
    nbytes = 8 << 30
    results: dict[bool, list[StreamResult]] = {True: [], False: []}
    rows: list[dict[str, Any]] = []
    with ForwardTopology() as topo:
        for r in range(rounds):
            for off in (True, False):
                res = topo.stream(off, nbytes, seconds)
                ctx.progress(
                    f"round {r + 1} {'offload' if off else 'no offload'}: "
                    f"{res.gbit_s:.3f} Gbit/s, {res.packets} packets ({res.gso_packets} GSO)"
                )
                results[off].append(res)
                rows.append(
                    {
                        "round": r + 1,
                        "offload": "on" if off else "off",
                        "Gbit/s": round(res.gbit_s, 4),
                        "MB": round(res.bytes / 1e6, 1),
                        "cpu s/Gbit": round(res.cpu_s_per_gbit, 3),
                        "packets": res.packets,
                        "gso packets": res.gso_packets,
                        "max gso_size": res.max_gso_size,
                        "note": res.note,
                    }
                )

    def best(rs: list[StreamResult]) -> float:
        return max([x.gbit_s for x in rs], default=0.0)

    def cpu_per_gbit(rs: list[StreamResult]) -> float:
        gbit = sum(x.bytes for x in rs) * 8 / 1e9
        return sum(x.cpu_s for x in rs) / gbit if gbit > 0 else float("inf")

    g_on, g_off = best(results[True]), best(results[False])
    metrics = {
        "forward_offload_ratio": g_on / g_off if g_off > 0 else 0.0,
        "throughput_gbit_s_offload": g_on,
        "throughput_gbit_s_no_offload": g_off,
        "cpu_s_per_gbit_offload": cpu_per_gbit(results[True]),
        "cpu_s_per_gbit_no_offload": cpu_per_gbit(results[False]),
    }
    notes = [
        "one kernel TCP stream a->b through a Python TUN<->TUN forwarder; interleaved rounds, "
        "best throughput per mode; CPU = forwarder + sender + receiver (user+sys, softirq "
        "work done in their context included, ksoftirqd not)",
    ]
    return BenchResult(
        metrics,
        targets={"forward_offload_ratio": (">=", 10.0)},
        rows=rows,
        notes=notes,
        series={
            "offload": [(float(i), x.gbit_s) for i, x in enumerate(results[True])],
            "no offload": [(float(i), x.gbit_s) for i, x in enumerate(results[False])],
        },
    )


register(Bench("forward", run, "TUN<->TUN forwarder: kernel offload on vs off (TSO/GRO/csum)"))
