"""Faults in the running tunnel, counted with sequence-numbered UDP streams through it.

Each test makes its own namespaces (198.18.0.0/15, fd00::/8 only): wireguard-go in
``a``, netoffload in ``b`` (``pair`` of test_tunnel_interop). A stream is N
datagrams of one size, each carrying its sequence number, sent through the
tunnel over a lossless veth path; the receiver keeps every number it got, so a
loss and a duplicate are both seen, and the tunnel's own counters are compared
with it.

- the emulated NIC killed mid-stream (``--nic crypto --policy always``): what it
  held is redone in software, nothing lost or sent twice;
- UDP_SEGMENT sends and UDP_GRO reads failing with EIO (injected in a Tunnel run in
  process, in a namespace): the tunnel falls back (one datagram a send; plain
  reads) without losing a packet, and probes the kernel again after a back-off;
- the TUN deleted under the tunnel: a clean exit, one line on stderr, nothing left;
  the veth deleted: no exit and no traceback, sends fail and are counted, and the
  tunnel carries traffic again once a link is back;
- wireguard-go restarted: traffic resumes within REKEY_TIMEOUT plus jitter.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from netoffload.testing import netns, wggo
from netoffload.testing.procs import stop_process
from netoffload.tunnel.timers import REKEY_TIMEOUT, REKEY_TIMEOUT_JITTER_MAX

from .test_tunnel_interop import (
    GO_PORT,
    GO_V4,
    US_PORT,
    US_V4,
    Pair,
    _has_link,
    _ping,
    pair,
)

pytestmark = pytest.mark.kernel

SO_RCVBUFFORCE = 33


# --------------------------------------------------------------------- streams


def _receive(s: socket.socket, n: int, quiet: float, limit: float) -> list[int]:
    """Sequence numbers in arrival order until ``n`` came, ``quiet`` s passed without
    one, or ``limit`` s in all."""
    got: list[int] = []
    end = time.monotonic() + limit
    s.settimeout(quiet)
    with contextlib.suppress(TimeoutError, OSError):
        while len(got) < n and time.monotonic() < end:
            d = s.recv(4096)
            got.append(int.from_bytes(d[:4], "big"))
    return got


def _send(dst: str, port: int, n: int, size: int, burst: int, pause: float) -> float:
    """``n`` datagrams of ``size`` bytes, ``burst`` at a time then ``pause`` s; returns
    the monotonic time the last one left."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    pad = bytes(size - 4)
    for i in range(n):
        s.sendto(i.to_bytes(4, "big") + pad, (dst, port))
        if i % burst == burst - 1:
            time.sleep(pause)
    s.close()
    return time.monotonic()


class Stream:
    """``n`` numbered datagrams from ``src`` to ``addr``:``port`` in ``dst``."""

    def __init__(
        self,
        src: netns.Netns,
        dst: netns.Netns,
        addr: str,
        port: int,
        n: int,
        *,
        size: int = 1000,
        burst: int = 16,
        pause: float = 0.004,
        limit: float = 60.0,
    ) -> None:
        self.n = n
        s = dst.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 16 << 20)  # room for bursts
        s.bind((addr, port))
        self.rx = dst.spawn(_receive, s, n, 3.0, limit)
        s.close()
        time.sleep(0.1)
        self.tx = src.spawn(_send, addr, port, n, size, burst, pause)

    def result(self, timeout: float = 90.0) -> list[int]:
        self.tx.join(timeout)
        got = self.rx.join(timeout)
        assert isinstance(got, list)
        return got


def _check_complete(got: list[int], n: int, what: str, excused: int = 0) -> None:
    """Each of 0..n-1 arrived once; at most ``excused`` missing (drops the kernel counted
    on the way, outside the tunnel)."""
    dups = len(got) - len(set(got))
    missing = sorted(set(range(n)) - set(got))
    assert dups == 0, f"{what}: {dups} datagrams arrived twice"
    assert len(missing) <= excused, (
        f"{what}: {len(missing)} of {n} lost, {excused} dropped by the kernel on the way "
        f"(first lost {missing[:10]})"
    )


def _udp_drops(h: netns.Netns, port: int) -> int:
    """Datagrams the kernel dropped at the UDP sockets bound to ``port`` in ``h``."""

    def read() -> int:
        total = 0
        for name in ("udp", "udp6"):
            with open(f"/proc/thread-self/net/{name}") as f:
                for line in list(f)[1:]:
                    cols = line.split()
                    if int(cols[1].rsplit(":", 1)[1], 16) == port:
                        total += int(cols[-1])
        return total

    return h.run(read)


def _show(h: netns.Netns, name: str) -> dict[str, Any]:
    time.sleep(1.2)  # the status file is written once a second
    import sys

    out = h.exec([sys.executable, "-m", "netoffload", "show", name, "--json"])
    doc = json.loads(out)
    assert isinstance(doc, dict)
    return doc


# --------------------------------------------------------------------- the NIC


def test_nic_killed_mid_stream_nothing_lost_nothing_twice(tmp_path: Path) -> None:
    with pair(tmp_path, start=False) as p:
        p.up("--nic", "crypto", "--policy", "always")
        assert _ping(p.b, GO_V4) and _ping(p.a, US_V4)
        before = _show(p.b, p.name)
        pids = [d["pid"] for side in ("transmit", "receive") for d in before["offload"][side]
                if "pid" in d]  # fmt: skip
        assert len(pids) == 2, before["offload"]
        # room in the TUN's queue for what comes while the NICs are stopped (below): a
        # datagram the kernel drops there never reached the tunnel
        p.b.ip("link", "set", p.name, "txqueuelen", "20000")
        tun0 = p.b.link_stats(p.name)
        go_drops0 = _udp_drops(p.a, GO_PORT)
        n = 6000
        out = Stream(p.b, p.a, GO_V4, 5401, n)  # encrypted by b's transmit NIC
        inn = Stream(p.a, p.b, US_V4, 5402, n)  # decrypted by b's receive NIC
        time.sleep(1.0)  # mid-stream (~1/3 sent)
        # stopped first, so that batches are surely in flight on them when they die
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        time.sleep(0.3)
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        got_out, got_in = out.result(), inn.result()
        tun1 = p.b.link_stats(p.name)
        assert tun1["tx_dropped"] == tun0["tx_dropped"], "the kernel dropped at the TUN"
        # wireguard-go's socket (its default buffer) overflows in the burst b sends once
        # the NICs are gone; the kernel counts those drops: every datagram missing at the
        # receiver is one of them -- the tunnel sent each (tx_packets below)
        go_drops = _udp_drops(p.a, GO_PORT) - go_drops0
        _check_complete(got_out, n, "b -> a (NIC encrypt killed)", go_drops)
        _check_complete(got_in, n, "a -> b (NIC decrypt killed)")
        assert p.proc is not None and p.proc.poll() is None, "the tunnel died with its NIC"
        after = _show(p.b, p.name)

        # the tunnel's counters agree with the receivers: each datagram sealed once, each
        # authenticated datagram written once
        def count(doc: dict[str, Any], side: str, task: str, path: str) -> int:
            return int(doc[side]["tasks"][task][path])

        for side, task in (("transmit", "encrypt"), ("receive", "decrypt")):
            dev = count(after, side, task, "offloaded") - count(before, side, task, "offloaded")
            soft = count(after, side, task, "software") - count(before, side, task, "software")
            assert dev > 0 and soft > 0, (side, dev, soft)  # the NIC, then software
            assert dev + soft >= n, (side, dev, soft)  # each datagram sealed/opened once
        nics = [v for k, v in after["devices"].items() if k.startswith("emulated-nic")]
        assert len(nics) == 2
        assert sum(int(v.get("redone_on_down", 0)) for v in nics) > 0, nics
        sent = after["stats"]["tx_packets"] - before["stats"]["tx_packets"]
        assert sent >= n, "datagrams the UDP device sent"
        drops = after["devices"]["udp"]["socket_drops"] - before["devices"]["udp"]["socket_drops"]
        assert drops == 0, "b's socket dropped datagrams: the way in was not lossless"
        # and the tunnel goes on in software
        assert _ping(p.b, GO_V4) and _ping(p.a, US_V4)


# --------------------------------------------------------------------- EIO


class _FaultySock:
    """The tunnel's UDP socket, failing with EIO: every UDP_SEGMENT send until the
    monotonic time ``gso_until``, and ``reads`` reads from ``reads_at`` on. Counts the
    segmented sends that went through after ``gso_until``."""

    def __init__(self, sock: socket.socket, gso_until: float, reads_at: float, reads: int):
        self._sock = sock
        self.gso_until = gso_until
        self.reads_at = reads_at
        self.reads = reads
        self.gso_after = 0
        self.injected_gso = 0
        self.injected_reads = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

    def sendmsg(self, buffers: Any, ancdata: Any = (), *rest: Any) -> int:
        segmented = any(lvl == 17 and typ == 103 for lvl, typ, _ in ancdata)
        if segmented and time.monotonic() < self.gso_until:
            self.injected_gso += 1
            raise OSError(errno.EIO, "injected")
        n = int(self._sock.sendmsg(buffers, ancdata, *rest))
        if segmented:
            self.gso_after += 1
        return n

    def recvmsg_into(self, *args: Any) -> Any:
        if self.reads > 0 and time.monotonic() >= self.reads_at:
            self.reads -= 1
            self.injected_reads += 1
            raise OSError(errno.EIO, "injected")
        return self._sock.recvmsg_into(*args)


def _tunnel_with_eio(conf: str, seconds: float, eio_s: float, reprobe_s: float) -> dict[str, Any]:
    """Runs in the namespace (a forked child): the tunnel of ``conf`` for ``seconds``, its
    socket failing (``_FaultySock``) in the first ``eio_s``; its status at the end."""
    from netoffload.devices import udp as udp_mod
    from netoffload.tunnel.tunnel import Tunnel

    udp_mod.USO_REPROBE_S = reprobe_s  # this child only
    t = Tunnel.from_config(conf)
    t.start()
    try:
        assert t.udp is not None
        now = time.monotonic()
        faulty = _FaultySock(t.udp.sock, now + eio_s, now + 2.0, 2)
        t.udp.sock = faulty  # type: ignore[assignment]
        t.run(until=now + seconds)
        doc = t.status()
        doc["injected"] = {
            "gso": faulty.injected_gso,
            "reads": faulty.injected_reads,
            "gso_after": faulty.gso_after,
        }
        return json.loads(json.dumps(doc, default=str))  # type: ignore[no-any-return]
    finally:
        t.close()


def test_udp_segment_and_gro_eio_fall_back_and_probe_again(tmp_path: Path) -> None:
    with pair(tmp_path, start=False) as p:
        run = p.b.spawn(_tunnel_with_eio, str(p.conf), 14.0, 3.0, 0.3)
        deadline = time.monotonic() + 10
        while not _has_link(p.b, p.name) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        assert _ping(p.b, GO_V4) and _ping(p.a, US_V4)
        go_drops0 = _udp_drops(p.a, GO_PORT)
        n = 6000  # ~5 s: through the EIO (the tunnel's first 3 s) and after it
        out = Stream(p.b, p.a, GO_V4, 5403, n, pause=0.01)  # segmented sends from b
        inn = Stream(p.a, p.b, US_V4, 5404, n, pause=0.01)  # GRO reads in b
        got_out, got_in = out.result(), inn.result()
        go_drops = _udp_drops(p.a, GO_PORT) - go_drops0
        doc = run.join(30)
    assert isinstance(doc, dict)
    _check_complete(got_out, n, "b -> a (UDP_SEGMENT EIO)", go_drops)
    _check_complete(got_in, n, "a -> b (UDP_GRO read EIO)")
    udp, inj = doc["devices"]["udp"], doc["injected"]
    assert inj["gso"] > 0 and udp["eio"] >= inj["gso"]  # refused, counted ...
    assert udp["soft_segmented"] + udp["datagrams_out"] > 0
    assert udp["uso_reprobes"] >= 1 and udp["uso_dropped"] is False  # ... asked again: back
    assert inj["gso_after"] > 0, "no segmented send once the kernel took them again"
    assert inj["reads"] == 2 and udp["errno"].get("EIO", 0) >= 2
    assert udp["gro_reprobes"] >= 1 and udp["gro_dropped"] is False


# --------------------------------------------------------------------- links deleted


def _up(p: Pair, *extra: str) -> subprocess.Popen[str]:
    """``netoffload up --foreground`` in ``b`` with stderr of its own (a pipe)."""
    import sys

    proc = p.b.popen(
        [sys.executable, "-m", "netoffload", "up", str(p.conf), "--foreground", *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 15
    sock = f"/var/run/wireguard/{p.name}.sock"
    while not (os.path.exists(sock) and _has_link(p.b, p.name)):
        assert proc.poll() is None and time.monotonic() < deadline, "up failed"
        time.sleep(0.05)
    time.sleep(0.2)
    return proc


def _children(pid: int) -> list[int]:
    import psutil

    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


@pytest.mark.parametrize("nic", ["none", "crypto"])
def test_tun_deleted_under_the_tunnel_clean_exit_one_line(tmp_path: Path, nic: str) -> None:
    import psutil

    with pair(tmp_path, start=False) as p:
        proc = _up(p, "--nic", nic)
        try:
            assert _ping(p.b, GO_V4)
            kids = _children(proc.pid)
            assert len(kids) >= (2 if nic == "crypto" else 0)
            routes = p.b.ip("route", "show", "table", "all")
            assert p.name in routes
            p.b.ip("link", "del", p.name)
            try:
                _, err = proc.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                pytest.fail("the tunnel went on without its TUN")
        finally:
            stop_process(proc)
        assert proc.returncode == 2
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in err, err
        assert p.name in lines[0] and "gone" in lines[0], lines[0]
        # nothing left behind: no link, routes, UAPI socket, state files, NIC processes
        assert not _has_link(p.b, p.name)
        assert p.name not in p.b.ip("route", "show", "table", "all")
        assert not os.path.exists(f"/var/run/wireguard/{p.name}.sock")
        assert not os.path.exists(f"/run/netoffload/{p.name}.json")
        assert not os.path.exists(f"/run/netoffload/{p.name}.status.json")
        time.sleep(0.5)
        left = []
        for k in kids:
            with contextlib.suppress(psutil.Error):
                pr = psutil.Process(k)
                if pr.status() != psutil.STATUS_ZOMBIE:
                    left.append((k, pr.status(), " ".join(pr.cmdline())[:200]))
        assert not left, f"processes left running: {left}"
        assert not [f for f in os.listdir("/dev/shm") if p.name in f]


def test_veth_deleted_under_the_tunnel(tmp_path: Path) -> None:
    """The underlay link going away is not the tunnel's end (as with wireguard-go and the
    kernel's WireGuard): no exit, no traceback, the failed sends counted; once a link
    is back, traffic flows again on the same session."""
    with pair(tmp_path, start=False) as p:
        proc = _up(p)
        try:
            assert _ping(p.b, GO_V4)
            p.b.ip("link", "del", "veth0")  # both ends: the pair goes
            p.b.exec(["ping", "-c", "3", "-i", "0.2", "-W", "1", GO_V4], check=False)
            time.sleep(0.5)
            assert proc.poll() is None, "the tunnel exited when the veth went"
            udp = _show(p.b, p.name)["devices"]["udp"]
            assert sum(udp["errno"].values()) > 0, udp  # the sends that failed, counted
            p.tb.link(p.a, p.b, addrs_a=["198.18.0.1/24"], addrs_b=["198.18.0.2/24"])
            assert _ping(p.b, GO_V4, wait=5), "no traffic once the link was back"
            assert _ping(p.a, US_V4)
            assert proc.poll() is None
        finally:
            stop_process(proc)
        _, err = proc.communicate()
        assert "Traceback" not in err and not err.strip(), err


# --------------------------------------------------------------------- peer restart


def _receive_timed(s: socket.socket, limit: float) -> list[tuple[int, float]]:
    """(sequence number, monotonic arrival time) of each datagram for ``limit`` s."""
    got: list[tuple[int, float]] = []
    end = time.monotonic() + limit
    s.settimeout(0.2)
    while time.monotonic() < end:
        try:
            d = s.recv(4096)
        except TimeoutError:
            continue
        got.append((int.from_bytes(d[:4], "big"), time.monotonic()))
    return got


def _send_for(dst: str, port: int, seconds: float, interval: float) -> int:
    """A numbered datagram every ``interval`` s for ``seconds``; failed sends (no route
    while the peer is down) are skipped. Returns how many were tried."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end:
        with contextlib.suppress(OSError):
            s.sendto(i.to_bytes(4, "big") + bytes(200), (dst, port))
        i += 1
        time.sleep(interval)
    s.close()
    return i


def test_peer_restart_traffic_resumes_within_rekey_timeout(tmp_path: Path) -> None:
    """wireguard-go stopped and started again (same key and port, a fresh process) in the
    middle of a stream each way: the restarted peer initiates as soon as it has something
    to send, and both streams flow again within REKEY_TIMEOUT plus its jitter. (With
    traffic one way only, from us, the whitepaper's timers start a handshake only after
    KEEPALIVE_TIMEOUT + REKEY_TIMEOUT without an answer: that is the protocol's.)"""
    with pair(tmp_path) as p:
        assert _ping(p.a, US_V4) and _ping(p.b, GO_V4)
        key = p.go.private_key
        assert key is not None
        seconds = 12.0
        rb = p.b.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rb.bind((US_V4, 5405))
        ra = p.a.socket(socket.AF_INET, socket.SOCK_DGRAM)
        ra.bind(("0.0.0.0", 5406))  # wireguard-go's address goes and comes back with it
        rx_b = p.b.spawn(_receive_timed, rb, seconds + 2)
        rx_a = p.a.spawn(_receive_timed, ra, seconds + 2)
        rb.close()
        ra.close()
        tx_a = p.a.spawn(_send_for, US_V4, 5405, seconds, 0.01)
        tx_b = p.b.spawn(_send_for, GO_V4, 5406, seconds, 0.01)
        time.sleep(3.0)
        down = time.monotonic()
        p.go.stop()
        time.sleep(1.0)
        go2 = wggo.WireguardGo(p.a, private_key=key, listen_port=GO_PORT, addresses=[f"{GO_V4}/24"])
        try:
            go2.start()
            go2.set_peer(p.us_public, allowed_ips=[f"{US_V4}/32"], endpoint=("198.18.0.2", US_PORT))
            up = time.monotonic()
            tx_a.join(seconds + 10)
            tx_b.join(seconds + 10)
            at_b, at_a = rx_b.join(seconds + 10), rx_a.join(seconds + 10)
        finally:
            go2.stop()
    bound = REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX
    for what, got in (("a -> b", at_b), ("b -> a", at_a)):
        before = [t for _, t in got if t < down]
        after = [t for _, t in got if t > up]
        assert before, f"{what}: nothing before the restart"
        assert after, f"{what}: nothing after the restart"
        took = after[0] - up
        print(f"{what}: resumed {took:.3f} s after the peer was back")
        assert took <= bound, f"{what}: traffic resumed {took:.2f} s after the peer was back"
        seqs = [q for q, _ in got]
        assert len(seqs) == len(set(seqs)), f"{what}: a datagram arrived twice"
