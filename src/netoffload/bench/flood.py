"""``netoffload bench flood``: the running tunnel under floods, in namespaces.

Topology (all namespaces ours, every address in 198.18.0.0/15)::

    a (wireguard-go A) --veth-- b (netoffload B, the victim) --veth-- f (flooder, wireguard-go C)
      198.18.0.1                198.18.0.2 | 198.18.2.2              198.18.2.1

A and B hold an established session; iperf3 runs one TCP stream from A to B
through it (B decrypts: the flood and the session share B's UDP socket and its
receive path). C is a second, legitimate peer of B that has not talked yet.
The flooder in ``f`` writes Ethernet frames of whole IPv4/UDP packets on a packet
socket on its veth (``sendmmsg`` in batches, PACKET_QDISC_BYPASS: no route lookup,
IP output, netfilter or qdisc on the sending side, as a traffic generator sends;
the IP raw socket it used before spent 1.9 us a datagram sending, this 1.0 us):
their sources are forged from ``SPOOF_NET`` (198.19.0.0/16, inside 198.18.0.0/15),
and B routes that prefix back to ``f``, so B's answers (cookie replies) stay in the
test topology (``f`` does not forward; it drops them).

Floods:

- ``handshake``: handshake initiations with a valid mac1 for B's key (what an
  attacker who knows B's public key sends; no mac2) at ``HANDSHAKE_FLOOD_X``
  times B's under-load threshold, from ``SPOOF_SOURCES`` forged sources;
- ``junk``: random datagrams (random sizes) to B's listen port, from forged
  sources and ports, as fast as the flooder sends them (line rate here: a veth
  has no wire speed; the rate is reported);
- ``junk-data``: the same, shaped as transport data messages (type 4, 32..512
  bytes) with random receiver indices: they pass a filter of message shapes, so
  they cost B what its filter of receiver indices costs;
- ``junk-closed`` (not with --quick): junk to a port of B where nothing listens:
  the control, what such a flood costs this machine (the flooder's core, the
  kernel's receive path) without the tunnel's socket.

Where the CPU goes: the flooder runs on the same two cores as A, B and iperf3, and
the receiving kernel's work on each datagram (softirq: IP receive, route and
socket look-up, checksum, B's socket filter) mostly runs on the flooder's CPU, in
its time. The figures say, per flood: the flooder's cores and datagrams a second,
B's cores, the machine's idle and softirq cores (/proc/stat), off and on.

Each flood is measured in one iperf3 run through phases of one second, the flood
off, on, off, ... (the flooder keeps the schedule); the goodput of a phase is
what B wrote to its TUN in it. On a small shared machine separate runs drift by
tens of percent; neighbouring phases see the same machine.

Figures: ``flood_handshake_goodput_ratio``, ``flood_junk_goodput_ratio`` and
``flood_junk_data_goodput_ratio`` (the median over the flood phases of the goodput
over the mean of the two neighbouring phases without), ``flood_new_peer_handshake_s``
(C's first initiation, sent into a running handshake flood, to its completed
handshake: through B's cookie reply and C's retry with mac2; the target is 5 s +
REKEY_TIMEOUT), B's CPU seconds per Gbit under each flood over without, and B's
memory (all its processes): RSS at the start and its growth over all floods
(``flood_rss_growth``, a fraction; without --quick also after 30 s of handshake
flood from 65,000 sources).

Every flood is bounded in seconds and packets (``flood()``).
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from netoffload.bench import Bench, BenchContext, BenchResult, register
from netoffload.bench.tunnel import Row, _gro_on, _iperf, _ping_rtts, _wait_link
from netoffload.errors import ConfigError
from netoffload.netns import check_address
from netoffload.testing import netns, wggo
from netoffload.testing.procs import stop_process
from netoffload.tunnel import keys
from netoffload.tunnel.cookie import mac1_key
from netoffload.tunnel.noise import mac
from netoffload.tunnel.timers import REKEY_TIMEOUT
from netoffload.tunnel.tunnel import UNDER_LOAD_RATE
from netoffload.wire.ipv4 import internet_checksum

#: forged sources come from here (inside 198.18.0.0/15, off the links' /24s)
SPOOF_NET = ipaddress.IPv4Network("198.19.0.0/16")
SPOOF_SOURCES = 4096
HANDSHAKE_FLOOD_X = 10.0
#: the hardest bound on any flood, whatever the caller asks
MAX_FLOOD_PACKETS = 50_000_000
MAX_FLOOD_SECONDS = 120.0

A_LINK, B_LINK_A = "198.18.0.1", "198.18.0.2"
F_LINK, B_LINK_F = "198.18.2.1", "198.18.2.2"
INNER_A, INNER_B, INNER_C = "198.18.40.1", "198.18.40.2", "198.18.40.3"
PORT = 51820
FLOODS = ("handshake", "junk", "junk-data", "junk-closed")
IPERF_PORT = 5201
#: nothing listens here in B (the junk flood's control)
CLOSED_PORT = 9


# --------------------------------------------------------------------------- packets


def _spoofed(rng: random.Random) -> tuple[bytes, int]:
    host = rng.randrange(1, SPOOF_NET.num_addresses - 1)
    return (SPOOF_NET.network_address + host).packed, rng.randrange(1024, 65536)


def ipv4_udp(src: bytes, sport: int, dst: bytes, dport: int, payload: bytes) -> bytes:
    """A whole IPv4/UDP packet (both checksums right), as a raw socket sends it."""
    for a in (src, dst):
        if ipaddress.IPv4Address(a) not in netns.ALLOWED_NETS[0]:
            raise ConfigError(f"flood: address {ipaddress.IPv4Address(a)} outside 198.18.0.0/15")
    ulen = 8 + len(payload)
    udp = sport.to_bytes(2, "big") + dport.to_bytes(2, "big") + ulen.to_bytes(2, "big")
    pseudo = src + dst + b"\x00\x11" + ulen.to_bytes(2, "big")
    csum = internet_checksum(pseudo + udp + b"\0\0" + payload) or 0xFFFF
    udp += csum.to_bytes(2, "big") + payload
    hdr = bytearray(20)
    hdr[0] = 0x45
    hdr[2:4] = (20 + ulen).to_bytes(2, "big")
    hdr[6] = 0x40  # DF
    hdr[8] = 64
    hdr[9] = 17
    hdr[12:16] = src
    hdr[16:20] = dst
    hdr[10:12] = internet_checksum(bytes(hdr)).to_bytes(2, "big")
    return bytes(hdr) + udp


def initiation_packets(victim_public: bytes, dst: str, port: int, n: int, seed: int) -> list[bytes]:
    """``n`` handshake initiations from forged sources: random contents, a valid mac1
    for ``victim_public`` (so they pass the mac1 check), no mac2."""
    rng = random.Random(seed)
    key = mac1_key(victim_public)
    d = ipaddress.IPv4Address(dst).packed
    out = []
    for _ in range(n):
        body = b"\x01\x00\x00\x00" + rng.randbytes(112)
        src, sport = _spoofed(rng)
        out.append(ipv4_udp(src, sport, d, port, body + mac(key, body) + bytes(16)))
    return out


def junk_packets(dst: str, port: int, n: int, seed: int) -> list[bytes]:
    """``n`` random datagrams (1..512 bytes) from forged sources and ports."""
    rng = random.Random(seed)
    d = ipaddress.IPv4Address(dst).packed
    out = []
    for _ in range(n):
        src, sport = _spoofed(rng)
        out.append(ipv4_udp(src, sport, d, port, rng.randbytes(rng.randrange(1, 513))))
    return out


def data_junk_packets(dst: str, port: int, n: int, seed: int) -> list[bytes]:
    """``n`` datagrams shaped as WireGuard transport data (type 4, three zero bytes,
    32..512 bytes) with random receiver indices, counters and contents, from forged
    sources: what passes a filter of message shapes, down to the receiver look-up."""
    rng = random.Random(seed)
    d = ipaddress.IPv4Address(dst).packed
    out = []
    for _ in range(n):
        src, sport = _spoofed(rng)
        body = b"\x04\x00\x00\x00" + rng.randbytes(rng.randrange(28, 509))
        out.append(ipv4_udp(src, sport, d, port, body))
    return out


# --------------------------------------------------------------------------- sender


class _Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.POINTER(_Iovec)),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _Msghdr), ("msg_len", ctypes.c_uint)]


@dataclass
class FloodResult:
    sent: int = 0
    seconds: float = 0.0
    errors: int = 0
    #: the flooding process's CPU seconds (user + system) while it ran: its sending,
    #: and the receiving kernel's softirq work that ran on its CPU in its time
    cpu_s: float = 0.0
    #: "packet" (frames on a packet socket, no qdisc) or "raw" (an IP raw socket)
    method: str = ""

    @property
    def pps(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0

    @property
    def cores(self) -> float:
        """The flooder's CPU over its flooding time (its off windows it sleeps)."""
        return self.cpu_s / self.seconds if self.seconds > 0 else 0.0


#: SOL_PACKET options (linux/if_packet.h)
SOL_PACKET = 263
PACKET_QDISC_BYPASS = 20


@dataclass(frozen=True)
class Link:
    """Where a packet-socket flooder writes frames: its interface (in the flooding
    namespace) and the two ends' Ethernet addresses."""

    ifname: str
    src_mac: bytes
    dst_mac: bytes

    def frame(self, packet: bytes) -> bytes:
        return self.dst_mac + self.src_mac + b"\x08\x00" + packet


def _open_sender(dst: str, link: Link | None) -> tuple[socket.socket, int]:
    """The sending socket and how many bytes each message has before the IP packet.

    With ``link``: a packet socket bound to the interface, PACKET_QDISC_BYPASS on,
    protocol 0 (it receives nothing): a frame goes from ``sendmmsg`` straight to the
    driver, with no route lookup, no IP output, no netfilter and no qdisc -- the least
    the flooding side can spend a datagram, as a traffic generator does. Without: an
    IP raw socket connected to ``dst`` (the whole IP output path a datagram)."""
    if link is None:
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        s.connect((dst, 0))
        return s, 0
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        s.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)
        s.bind((link.ifname, 0))
    except BaseException:
        s.close()
        raise
    return s, 14


def flood(
    dst: str,
    packets: list[bytes],
    *,
    rate_pps: float | None,
    seconds: float,
    max_packets: int,
    batch: int = 64,
    stop_file: str | None = None,
    on_off: tuple[float, float, float] | None = None,
    link: Link | None = None,
) -> FloodResult:
    """Send ``packets`` (whole IPv4 packets, cycled) to ``dst`` with ``sendmmsg``, in
    Ethernet frames on a packet socket on ``link`` (the cheapest sending path; see
    ``_open_sender``), else on a raw IP socket: at ``rate_pps`` (None: as fast as they
    go), for at most ``seconds`` and ``max_packets`` (both also capped by MAX_FLOOD_*),
    or until ``stop_file`` exists. ``on_off = (start, on, off)``: only in the windows
    ``[start + k(on+off), start + k(on+off) + on)`` of the monotonic clock. Every
    packet's addresses must lie in 198.18.0.0/15. Run it inside the flooding
    namespace (root)."""
    check_address(dst)
    want = ipaddress.IPv4Address(dst).packed
    net = netns.ALLOWED_NETS[0]
    for p in packets:  # nothing leaves for any address outside 198.18.0.0/15, nor elsewhere
        if p[16:20] != want or ipaddress.IPv4Address(p[12:16]) not in net:
            raise ConfigError("flood: a packet's addresses are not ours (198.18.0.0/15, dst)")
    if not packets:
        return FloodResult()
    seconds = min(seconds, MAX_FLOOD_SECONDS)
    max_packets = min(max_packets, MAX_FLOOD_PACKETS)
    libc = ctypes.CDLL(None, use_errno=True)
    n = len(packets)
    frames = [link.frame(p) for p in packets] if link is not None else packets
    blob = ctypes.create_string_buffer(b"".join(frames))
    base = ctypes.addressof(blob)
    iovs = (_Iovec * n)()
    msgs = (_Mmsghdr * (n + batch))()
    off = 0
    for i, p in enumerate(frames):
        iovs[i].iov_base = base + off
        iovs[i].iov_len = len(p)
        off += len(p)
    for i in range(n + batch):  # the tail repeats the head: any window of `batch` is contiguous
        msgs[i].msg_hdr.msg_iov = ctypes.pointer(iovs[i % n])
        msgs[i].msg_hdr.msg_iovlen = 1
    size = ctypes.sizeof(_Mmsghdr)
    s, _ = _open_sender(dst, link)
    res = FloodResult(method="raw" if link is None else "packet")
    cpu0 = os.times()
    try:
        s.setblocking(False)
        fd = s.fileno()
        t0 = last = time.monotonic()
        end = t0 + seconds
        pos = 0
        loops = 0
        tokens = 0.0
        while res.sent < max_packets:
            now = time.monotonic()
            if now >= end:
                break
            loops += 1
            if stop_file is not None and loops % 64 == 0 and os.path.exists(stop_file):
                break
            if on_off is not None:
                start, on, off_s = on_off
                ph = now - start
                if ph < 0 or ph % (on + off_s) >= on:  # off: wait for the next window
                    wait = -ph if ph < 0 else (on + off_s) - ph % (on + off_s)
                    time.sleep(max(0.0, min(wait, 0.005, end - now)))
                    last = time.monotonic()
                    continue
            res.seconds += now - last  # time spent flooding (the on windows)
            count = min(batch, max_packets - res.sent)
            if rate_pps is not None:  # a token bucket of 5 ms (at least one batch), and
                # a wake-up every 2 ms at most: a flooder waking for each datagram of a
                # slow flood costs the shared machine more than the datagrams do
                tokens = min(tokens + (now - last) * rate_pps, max(float(batch), rate_pps / 200))
                last = now
                if tokens < 1.0:
                    time.sleep(max(0.0, min(0.002, end - now)))
                    continue
                count = min(count, int(tokens))
            last = now
            k = libc.sendmmsg(fd, ctypes.c_void_p(ctypes.addressof(msgs) + pos * size), count, 0)
            if k < 0:
                err = ctypes.get_errno()
                if err not in (11, 105):  # EAGAIN, ENOBUFS: the queue is full, go on
                    res.errors += 1
                time.sleep(0.0002)
                continue
            res.sent += k
            tokens -= k
            pos = (pos + k) % n
    finally:
        s.close()
        cpu1 = os.times()
        res.cpu_s = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    return res


# --------------------------------------------------------------------------- set-up


@dataclass
class Scene:
    tmp: Path
    tb: netns.Testbed
    a: netns.Netns
    b: netns.Netns
    f: netns.Netns
    row: Row
    b_pid: int
    b_public: bytes
    c: wggo.WireguardGo
    b_name: str
    stops: list[Any] = field(default_factory=list)
    #: f's veth to B, for the packet-socket flooder
    link: Link | None = None

    def _b_procs(self) -> list[psutil.Process]:
        """B's processes: ``up`` and the workers it forked."""
        try:
            top = psutil.Process(self.b_pid)
            return [top, *top.children(recursive=True)]
        except psutil.Error:
            return []

    def rss(self) -> int:
        total = 0
        for p in self._b_procs():
            with contextlib.suppress(psutil.Error):
                total += int(p.memory_info().rss)
        return total

    def b_cpu(self) -> float:
        """B's CPU seconds so far (user + system, all its processes)."""
        total = 0.0
        for p in self._b_procs():
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system
        return total

    def close(self) -> None:
        for stop in reversed(self.stops):
            with contextlib.suppress(Exception):
                stop()
        self.tb.close()


def _b_config(name: str, key: bytes, a_pub: bytes, c_pub: bytes) -> str:
    return (
        f"[Interface]\nPrivateKey = {keys.b64_encode(key)}\nListenPort = {PORT}\n"
        f"Address = {INNER_B}/24\n\n"
        f"[Peer]\nPublicKey = {keys.b64_encode(a_pub)}\nAllowedIPs = {INNER_A}/32\n"
        f"Endpoint = {A_LINK}:{PORT}\n\n"
        f"[Peer]\nPublicKey = {keys.b64_encode(c_pub)}\nAllowedIPs = {INNER_C}/32\n"
    )


def _mac(h: netns.Netns, ifname: str) -> bytes:
    """An interface's Ethernet address, as ``ip -j link`` gives it."""
    import json

    doc = json.loads(h.ip("-j", "link", "show", "dev", ifname))
    return bytes.fromhex(str(doc[0]["address"]).replace(":", ""))


def build(tmp: Path, extra: list[str] | None = None) -> Scene:
    """The three namespaces, A and B with a session, C configured but silent."""
    tb = netns.Testbed()
    stops: list[Any] = []
    try:
        a, b, f = tb.host("fla"), tb.host("flb"), tb.host("flf")
        tb.link(a, b, addrs_a=[f"{A_LINK}/24"], addrs_b=[f"{B_LINK_A}/24"])
        tb.link(f, b, if_b="veth1", addrs_a=[f"{F_LINK}/24"], addrs_b=[f"{B_LINK_F}/24"])
        for h, ifn in ((a, "veth0"), (b, "veth0"), (b, "veth1"), (f, "veth0")):
            _gro_on(h, ifn)
        # B's answers to forged sources go back to f (which drops them), never elsewhere
        b.add_route(str(SPOOF_NET), via=F_LINK)
        ka, kb, kc = (keys.generate_private() for _ in range(3))
        pa, pb, pc = (keys.public_from_private(k) for k in (ka, kb, kc))
        row = Row("flood", a=a, b=b, target=INNER_B)
        name = f"nfl{os.getpid() % 100000}"
        conf = tmp / f"{name}.conf"
        conf.write_text(_b_config(name, kb, pa, pc))
        conf.chmod(0o600)
        log = (tmp / f"{name}.log").open("ab")
        proc = b.popen(
            [sys.executable, "-m", "netoffload", "up", str(conf), "--foreground", *(extra or [])],
            stdout=log,
            stderr=subprocess.STDOUT,
        )

        def stop_b() -> None:
            stop_process(proc)
            log.close()
            with contextlib.suppress(OSError):
                os.unlink(f"/var/run/wireguard/{name}.sock")

        stops.append(stop_b)
        _wait_link(b, name, proc, 15.0)
        row.pids.append(proc.pid)
        go_a = wggo.WireguardGo(
            a, private_key=ka, listen_port=PORT, addresses=[f"{INNER_A}/24"], log_level="error"
        )
        go_a.start()
        stops.append(go_a.stop)
        go_a.set_peer(pb, allowed_ips=[f"{INNER_B}/32"], endpoint=(B_LINK_A, PORT))
        go_c = wggo.WireguardGo(
            f, private_key=kc, listen_port=PORT, addresses=[f"{INNER_C}/24"], log_level="error"
        )
        go_c.start()
        stops.append(go_c.stop)
        go_c.set_peer(pb, allowed_ips=[f"{INNER_B}/32"], endpoint=(B_LINK_F, PORT))
        link = Link("veth0", _mac(f, "veth0"), _mac(b, "veth1"))
        return Scene(tmp, tb, a, b, f, row, proc.pid, pb, go_c, name, stops, link)
    except BaseException:
        for stop in reversed(stops):
            with contextlib.suppress(Exception):
                stop()
        tb.close()
        raise


class Flooding:
    """A flood running in ``f`` for the length of a ``with`` block (bounded anyway)."""

    def __init__(
        self,
        scene: Scene,
        packets: list[bytes],
        rate: float | None,
        seconds: float,
        on_off: tuple[float, float, float] | None = None,
        packet_socket: bool = True,
    ) -> None:
        self.scene = scene
        self.packet_socket = packet_socket
        self.stop_file = str(scene.tmp / f"stop-{time.monotonic_ns()}")
        self.packets = packets
        self.rate = rate
        self.seconds = seconds
        self.on_off = on_off
        self.result = FloodResult()
        self._child: netns.NsProcess | None = None

    def __enter__(self) -> Flooding:
        self._child = self.scene.f.spawn(
            _flood_args,
            B_LINK_F,
            self.packets,
            self.rate,
            self.seconds,
            self.stop_file,
            self.on_off,
            self.scene.link if self.packet_socket else None,
        )
        if self.on_off is None:
            time.sleep(0.2)
        return self

    def __exit__(self, *exc: object) -> None:
        Path(self.stop_file).touch()
        if self._child is not None:
            try:
                self.result = self._child.join(self.seconds + 10)
            except Exception:  # a failed flood shows as 0 packets sent
                self.result = FloodResult()


def _flood_args(
    dst: str,
    packets: list[bytes],
    rate: float | None,
    seconds: float,
    stop_file: str,
    on_off: tuple[float, float, float] | None,
    link: Link | None = None,
) -> FloodResult:
    return flood(
        dst,
        packets,
        rate_pps=rate,
        seconds=seconds,
        max_packets=MAX_FLOOD_PACKETS if rate is None else int(rate * seconds) + 1,
        stop_file=stop_file,
        on_off=on_off,
        link=link,
    )


def _rx_bytes(ifname: str) -> int:
    """Bytes the interface received (for a TUN: what the tunnel wrote), in this namespace."""
    with open("/proc/thread-self/net/dev") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name.strip() == ifname:
                return int(rest.split()[0])
    return 0


@dataclass
class Phase:
    flooding: bool
    gbit: float
    cpu_per_gbit: float
    #: B's CPU (cores), and the machine's (/proc/stat): busy and softirq cores (the
    #: softirq ticks: the receive work of the kernel that lands in softirq context)
    b_cores: float = 0.0
    busy_cores: float = 0.0
    softirq_cores: float = 0.0


def _proc_stat() -> tuple[float, float]:
    """(busy, softirq) CPU seconds of the whole machine so far (/proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    hz = os.sysconf("SC_CLK_TCK")
    idle = v[3] + v[4]
    return (sum(v[:8]) - idle) / hz, v[6] / hz


def phased(
    scene: Scene,
    packets: list[bytes],
    rate: float | None,
    pairs: int,
    phase: float,
    packet_socket: bool = True,
) -> tuple[list[Phase], FloodResult]:
    """One iperf3 stream A->B through ``2 * pairs + 1`` phases of ``phase`` seconds,
    the flood off, on, off, ..., off (the flooder keeps the schedule itself); each
    phase's goodput is what B wrote to its TUN in it (read at the phase boundaries),
    with B's CPU seconds per Gbit."""
    n = 2 * pairs + 1
    warm = 1.0
    srv = scene.b.popen(
        ["iperf3", "-s", "-1", "-B", INNER_B, "-p", str(IPERF_PORT)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    cli: subprocess.Popen[bytes] | None = None
    samples: list[tuple[float, int, float, tuple[float, float]]] = []
    fl: Flooding | None = None
    try:
        time.sleep(0.3)
        total = warm + n * phase + 0.5
        cli = scene.a.popen(
            ["iperf3", "-c", INNER_B, "-p", str(IPERF_PORT), "-t", f"{total:.1f}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        t_s = time.monotonic() + warm
        on_off = (t_s + phase, phase, phase)
        with Flooding(scene, packets, rate, warm + n * phase + 1.0, on_off, packet_socket) as fl:
            for k in range(n + 1):
                time.sleep(max(0.0, t_s + k * phase - time.monotonic()))
                got = scene.b.run(_rx_bytes, scene.b_name)
                samples.append((time.monotonic(), got, scene.b_cpu(), _proc_stat()))
        cli.wait(total + 10)
    finally:
        for p in (cli, srv):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait(5)
    out = []
    for k in range(n):
        (t0, b0, c0, m0), (t1, b1, c1, m1) = samples[k], samples[k + 1]
        dt = max(t1 - t0, 1e-6)
        g = (b1 - b0) * 8 / 1e9 / dt
        cpg = (c1 - c0) / (g * dt) if g > 0 else float("nan")
        busy, sirq = (m1[0] - m0[0]) / dt, (m1[1] - m0[1]) / dt
        out.append(Phase(k % 2 == 1, g, cpg, (c1 - c0) / dt, busy, sirq))
    return out, fl.result if fl is not None else FloodResult()


def paired_ratio(phases: list[Phase], what: str = "gbit") -> float:
    """Median over the flood phases of each one's figure over its two neighbours' mean."""
    rs = []
    for k in range(1, len(phases) - 1, 2):
        on = getattr(phases[k], what)
        off = (getattr(phases[k - 1], what) + getattr(phases[k + 1], what)) / 2
        if off > 0 and on == on:
            rs.append(on / off)
    return _median(rs)


def new_peer_handshake(scene: Scene, limit: float) -> float:
    """Seconds from C's first initiation (a ping into the tunnel starts it) to C's
    completed handshake with B; ``inf`` if not within ``limit``."""
    pub = scene.b_public
    ping = scene.f.popen(
        ["ping", "-n", "-q", "-i", "0.5", "-w", str(int(limit) + 1), INNER_B],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < limit:
            with contextlib.suppress(Exception):
                p = scene.c.dump().peers.get(pub)
                if p is not None and p.latest_handshake > 0:
                    return time.monotonic() - t0
            time.sleep(0.1)
        return float("inf")
    finally:
        if ping.poll() is None:
            ping.kill()
        ping.wait(5)


# --------------------------------------------------------------------------- the bench


def _median(xs: list[float]) -> float:
    ys = [x for x in xs if x == x]
    return statistics.median(ys) if ys else float("nan")


def run(ctx: BenchContext) -> BenchResult:
    reason = netns.tun_available() or wggo.available()
    if reason:
        raise ConfigError(f"bench flood: {reason}")
    if shutil.which("iperf3") is None:
        raise ConfigError("bench flood: iperf3 is not installed (apt-get install iperf3)")
    # --quick: the floods at the tunnel's port (no control run), fewer phases; junk-data
    # (no target: without a filter of receiver indices it costs B tenfold) the fewest
    pairs = 7 if ctx.quick else 15
    pairs_of = {"junk-data": 4} if ctx.quick else {}
    kinds = FLOODS[:3] if ctx.quick else FLOODS
    phase = 1.0
    hs_rate = HANDSHAKE_FLOOD_X * UNDER_LOAD_RATE
    tmp = Path(tempfile.mkdtemp(prefix="nof-bench-flood-"))
    runs: dict[str, list[Phase]] = {}
    floods: dict[str, FloodResult] = {}
    rss: list[tuple[str, int]] = []
    hs_s = float("inf")
    scene: Scene | None = None
    status: dict[str, Any] = {}
    try:
        ctx.progress("setting up a, b, f")
        scene = build(tmp)
        pk: dict[str, tuple[list[bytes], float | None]] = {
            "handshake": (
                initiation_packets(scene.b_public, B_LINK_F, PORT, SPOOF_SOURCES, 1),
                hs_rate,
            ),
            "junk": (junk_packets(B_LINK_F, PORT, SPOOF_SOURCES, 2), None),
            "junk-data": (data_junk_packets(B_LINK_F, PORT, SPOOF_SOURCES, 4), None),
            "junk-closed": (junk_packets(B_LINK_F, CLOSED_PORT, SPOOF_SOURCES, 2), None),
        }
        _ping_rtts(scene.a, INNER_B, 3, 0.2)  # the session A-B
        _iperf(scene.row, 1.0)  # warm-up
        rss.append(("start", scene.rss()))
        # C's handshake into a running handshake flood
        ctx.progress("new peer handshake during a handshake flood")
        limit = 5.0 + REKEY_TIMEOUT + 5.0
        with Flooding(scene, pk["handshake"][0], hs_rate, limit + 3.0) as fl:
            hs_s = new_peer_handshake(scene, limit)
        floods["new-peer"] = fl.result
        ctx.progress(f"new peer: handshake after {hs_s:.2f} s")
        rss.append(("after new peer", scene.rss()))
        for cond in kinds:
            packets, rate = pk[cond]
            n_pairs = pairs_of.get(cond, pairs)
            runs[cond], floods[cond] = phased(scene, packets, rate, n_pairs, phase)
            rss.append((f"after {cond}", scene.rss()))
            ctx.progress(
                f"{cond}: goodput flood/no flood {paired_ratio(runs[cond]):.3f} "
                f"({floods[cond].pps:.0f} pps)"
            )
        if not ctx.quick:  # a long flood from more sources: does memory stay put?
            ctx.progress("memory: 30 s of handshake flood from 65k sources")
            many = initiation_packets(scene.b_public, B_LINK_F, PORT, 65_000, 3)
            with Flooding(scene, many, hs_rate, 30.0):
                time.sleep(30.0)
            rss.append(("after 30 s flood, 65k sources", scene.rss()))
        status = _show(scene)
    finally:
        if scene is not None:
            scene.close()
        shutil.rmtree(tmp, ignore_errors=True)

    def ratio(x: float, y: float) -> float:
        return x / y if x == x and y == y and y > 0 else float("nan")

    def med(cond: str, flooding: bool, what: str = "gbit") -> float:
        return _median([getattr(p, what) for p in runs[cond] if p.flooding == flooding])

    ncpu = float(os.cpu_count() or 1)
    rss0 = rss[0][1]
    rss_max = max(v for _, v in rss)
    rss_end = rss[-1][1]
    metrics = {
        "flood_handshake_goodput_ratio": paired_ratio(runs["handshake"]),
        "flood_junk_goodput_ratio": paired_ratio(runs["junk"]),
        "flood_new_peer_handshake_s": hs_s,
        "flood_junk_data_goodput_ratio": paired_ratio(runs["junk-data"]),
        "flood_junk_closed_port_goodput_ratio": (
            paired_ratio(runs["junk-closed"]) if "junk-closed" in runs else float("nan")
        ),
        "flood_handshake_cpu_per_gbit_ratio": paired_ratio(runs["handshake"], "cpu_per_gbit"),
        "flood_junk_cpu_per_gbit_ratio": paired_ratio(runs["junk"], "cpu_per_gbit"),
        "flood_junk_data_cpu_per_gbit_ratio": paired_ratio(runs["junk-data"], "cpu_per_gbit"),
        "flood_rss_start_mb": rss0 / 1e6,
        "flood_rss_max_mb": rss_max / 1e6,
        "flood_rss_growth": ratio(rss_end - rss0, rss0),
    }
    for c in kinds:
        key = c.replace("-", "_")
        metrics[f"gbit_s_{key}_off"] = med(c, False)
        metrics[f"gbit_s_{key}_on"] = med(c, True)
        metrics[f"flood_{key}_pps"] = floods[c].pps
        # where the CPU went: the flooder's process (its sending and the receive
        # softirq that ran in its time), B, the machine's softirq ticks, idle
        metrics[f"flood_{key}_flooder_cores"] = floods[c].cores
        for on, tag in ((False, "off"), (True, "on")):
            metrics[f"flood_{key}_b_cores_{tag}"] = med(c, on, "b_cores")
            metrics[f"flood_{key}_softirq_cores_{tag}"] = med(c, on, "softirq_cores")
            metrics[f"flood_{key}_idle_cores_{tag}"] = ncpu - med(c, on, "busy_cores")
    rows: list[dict[str, Any]] = []
    for c in kinds:
        rows.append(
            {
                "flood": c,
                "Gbit/s off": round(med(c, False), 3),
                "Gbit/s on": round(med(c, True), 3),
                "on/off": round(paired_ratio(runs[c]), 3),
                "B cpu s/Gbit off": round(med(c, False, "cpu_per_gbit"), 2),
                "B cpu s/Gbit on": round(med(c, True, "cpu_per_gbit"), 2),
                "B cores off/on": f"{med(c, False, 'b_cores'):.2f}/{med(c, True, 'b_cores'):.2f}",
                "idle cores off/on": (
                    f"{ncpu - med(c, False, 'busy_cores'):.2f}/"
                    f"{ncpu - med(c, True, 'busy_cores'):.2f}"
                ),
                "softirq cores off/on": (
                    f"{med(c, False, 'softirq_cores'):.2f}/{med(c, True, 'softirq_cores'):.2f}"
                ),
                "flooder cores": round(floods[c].cores, 2),
                "flood pps": round(floods[c].pps),
                "packets": floods[c].sent,
            }
        )
    rx = status.get("receive", {}).get("tasks", {})
    dos = rx.get("dos-filter", {}).get("reasons", {})
    dig = rx.get("digest", {}).get("reasons", {})
    udp = status.get("devices", {}).get("udp", {})
    notes = [
        f"one iperf3 TCP stream A->B a flood, through {2 * pairs + 1} phases of {phase:g} s "
        f"({', '.join(f'{k}: {2 * v + 1}' for k, v in pairs_of.items()) or 'each flood'}): "
        "off, on, off, ...; goodput = what B wrote to its TUN in a phase; ratios: median over "
        "the flood phases of on / mean of the two neighbouring off phases",
        f"handshake flood: {hs_rate:g}/s ({HANDSHAKE_FLOOD_X:g} x under-load threshold "
        f"{UNDER_LOAD_RATE:g}/s), valid mac1, {SPOOF_SOURCES} forged sources in {SPOOF_NET}",
        "junk flood: random 1..512-byte datagrams, forged sources/ports, as fast as the "
        "flooder sends them (sendmmsg of frames on a packet socket, no qdisc); junk-data: "
        "the same shaped as transport data (type 4, 32..512 bytes) with random receiver "
        "indices; junk-closed: junk to a closed port of B (the control: what such a flood "
        "costs this machine without the tunnel's socket)",
        *(
            f"{c}: the flooder's process took {floods[c].cores:.2f} cores at "
            f"{floods[c].pps:.0f} datagrams/s ({_us(floods[c])} us a datagram: its sending and "
            "the receiving kernel's softirq that ran in its time); the machine's idle cores "
            f"off/on {ncpu - med(c, False, 'busy_cores'):.2f}/"
            f"{ncpu - med(c, True, 'busy_cores'):.2f}"
            for c in kinds
            if c != "handshake"
        ),
        f"new peer: C's handshake {hs_s:.2f} s during the handshake flood "
        f"(target <= {5.0 + REKEY_TIMEOUT:g} s; {floods['new-peer'].sent} initiations sent)",
        *(
            f"{c} phases (Gbit/s, * flooding): "
            + " ".join(f"{p.gbit:.2f}{'*' if p.flooding else ''}" for p in runs[c])
            for c in kinds
        ),
        "B's RSS: " + ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in rss),
        f"B's drop reasons: dos-filter {dict(dos)}, digest {dict(dig)}",
        f"B's socket: shape filter {udp.get('shape_filter')}, kernel drops "
        f"{udp.get('socket_drops')}, datagrams read {udp.get('datagrams_in')}",
    ]
    series = {f"{c}|Gbit/s": [(float(k), p.gbit) for k, p in enumerate(runs[c])] for c in kinds}
    return BenchResult(
        metrics,
        targets={
            "flood_handshake_goodput_ratio": (">=", 0.9),
            "flood_junk_goodput_ratio": (">=", 0.9),
            "flood_new_peer_handshake_s": ("<=", 5.0 + REKEY_TIMEOUT),
        },
        rows=rows,
        notes=notes,
        series=series,
    )


def _us(r: FloodResult) -> str:
    return f"{r.cpu_s / r.sent * 1e6:.2f}" if r.sent else "-"


def _show(scene: Scene) -> dict[str, Any]:
    import json

    time.sleep(1.2)  # the status file is written once a second
    try:
        out = scene.b.exec([sys.executable, "-m", "netoffload", "show", scene.b_name, "--json"])
        doc = json.loads(out)
    except Exception:
        return {}
    return doc if isinstance(doc, dict) else {}


register(Bench("flood", run, "the tunnel under handshake and junk floods (iperf3 goodput)"))
