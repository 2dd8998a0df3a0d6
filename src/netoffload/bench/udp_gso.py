"""``netoffload bench udp-gso``: datagrams per second with UDP_SEGMENT vs one sendto each.

Two namespaces joined by veth; a UDP socket in ``a`` sends 1200-byte
datagrams to a socket in ``b`` (which does not read: what it cannot queue the
kernel drops after all the sending work is done). Side by side, interleaved:

- ``sendto``: one ``sendto`` syscall per datagram;
- ``udp_segment``: one ``sendmsg`` per super-datagram of up to 48 datagrams with
  a ``UDP_SEGMENT`` control message (the kernel segments);
- ``device``: the same through ``UdpDevice.send`` with ``gso_size`` set (our
  device's overhead included).

``udp_gso_ratio`` = datagrams/s with UDP_SEGMENT / datagrams/s with sendto (target >= 3).
"""

from __future__ import annotations

import socket
import struct
from typing import Any

from netoffload.batch import Batch
from netoffload.bench import Bench, BenchContext, BenchResult, interleaved, register
from netoffload.devices import kernel_common as kc
from netoffload.devices.udp import UdpDevice
from netoffload.errors import DeviceError
from netoffload.testing import netns

SIZE = 1200
SEGS = 48  # 57600 bytes per super-datagram, within the 65507-byte UDP limit


def run(ctx: BenchContext) -> BenchResult:
    reason = netns.available()
    if reason:
        raise DeviceError(f"udp-gso: {reason}")
    total = 4800 if ctx.quick else 48000  # datagrams per measurement (a multiple of SEGS)
    budget = 3.0 if ctx.quick else 12.0
    with netns.Testbed() as tb:
        a, b = tb.host("ua"), tb.host("ub")
        tb.link(a, b, addrs_a=["198.18.0.1/24"], addrs_b=["198.18.0.2/24"])
        rx = b.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rx.bind(("198.18.0.2", 7000))
        tx = a.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tx.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        tx.connect(("198.18.0.2", 7000))
        dev = UdpDevice.open(a, ("198.18.0.1", 0), ("198.18.0.2", 7000))
        try:
            if not dev.uso:
                raise DeviceError("udp-gso: this kernel has no UDP_SEGMENT")
            one = bytes(SIZE)
            sup = bytes(SIZE * SEGS)
            cmsg = [(kc.SOL_UDP, kc.UDP_SEGMENT, struct.pack("H", SIZE))]
            n_super = total // SEGS
            supers = Batch.from_packets([sup] * n_super)
            supers.ext.gso_size[:] = SIZE
            errors = {"sendto": 0, "udp_segment": 0}

            def per_datagram() -> None:
                for _ in range(total):
                    try:
                        tx.send(one)
                    except OSError:
                        errors["sendto"] += 1

            def segmented() -> None:
                for _ in range(n_super):
                    try:
                        tx.sendmsg([sup], cmsg)
                    except OSError:
                        errors["udp_segment"] += 1

            def device() -> None:
                dev.send(supers)

            ctx.progress(f"{total} datagrams of {SIZE} bytes per run, {SEGS} per UDP_SEGMENT send")
            best = interleaved(
                {"sendto": per_datagram, "udp_segment": segmented, "device": device},
                budget,
                rounds=3 if ctx.quick else 5,
            )
        finally:
            dev.close()
            tx.close()
            rx.close()
    rate = {k: total / v for k, v in best.items()}
    rows: list[dict[str, Any]] = [
        {
            "method": k,
            "datagrams/s": round(r),
            "Gbit/s payload": round(r * SIZE * 8 / 1e9, 3),
            "syscalls per datagram": 1.0 if k == "sendto" else round(1 / SEGS, 4),
            "best time s": round(best[k], 5),
        }
        for k, r in rate.items()
    ]
    metrics = {
        "udp_gso_ratio": rate["udp_segment"] / rate["sendto"],
        "udp_gso_device_ratio": rate["device"] / rate["sendto"],
        "datagrams_per_s_sendto": rate["sendto"],
        "datagrams_per_s_udp_segment": rate["udp_segment"],
    }
    notes = [f"send errors: {errors}" if any(errors.values()) else "no send errors"]
    return BenchResult(metrics, targets={"udp_gso_ratio": (">=", 3.0)}, rows=rows, notes=notes)


register(Bench("udp-gso", run, "UDP_SEGMENT vs one sendto per datagram (datagrams/s)"))
