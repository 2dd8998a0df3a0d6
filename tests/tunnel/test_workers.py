"""``up --workers N``: the kernel spreads flows over worker processes, nothing is shared
on the data path but the send counters, and a flow stays in one worker, in order.

The kernel is the oracle for both steering programs: it picks the socket / queue, the
test predicts the choice from the packets with its own arithmetic. The running tunnel
is checked against wireguard-go: flows whose hashes differ are moved by different
workers (their counters say so), and every datagram of each flow arrives once, in order.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import os
import select
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from tests.tunnel.test_tunnel_interop import GO_V4, US_V4, _ping, _tcp_server, pair

from netoffload.devices import kernel_common as kc
from netoffload.testing import netns
from netoffload.testing.procs import stop_process
from netoffload.tunnel import workers as wk
from netoffload.tunnel.peer import Keypair
from netoffload.tunnel.timers import REJECT_AFTER_MESSAGES


# --------------------------------------------------------------------- shared counters
def _reserver(counters: wk.SharedCounters, slot: int, tag: int, w: int, rounds: int) -> None:
    cell = counters.cell(slot, tag)
    out = []
    for i in range(rounds):
        n = 1 + (i * 7 + os.getpid()) % 13
        first = cell.reserve(n, REJECT_AFTER_MESSAGES)
        assert first is not None
        out.append((first, n))
    os.write(w, struct.pack(f"<{2 * len(out)}Q", *[x for r in out for x in r]))


def test_shared_counters_never_hand_out_a_counter_twice() -> None:
    c = wk.SharedCounters(slots=8)
    slot = c.alloc(0x1234, 5)
    procs, rounds = 4, 300
    r, w = os.pipe()
    pids = []
    for _ in range(procs):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                _reserver(c, slot, 0x1234, w, rounds)
            except BaseException:
                code = 1
            os._exit(code)
        pids.append(pid)
    os.close(w)
    raw = b""
    while chunk := os.read(r, 1 << 16):
        raw += chunk
    os.close(r)
    for pid in pids:
        assert os.waitpid(pid, 0)[1] == 0
    vals = struct.unpack(f"<{len(raw) // 8}Q", raw)
    ranges = sorted(zip(vals[::2], vals[1::2], strict=True))
    assert len(ranges) == procs * rounds
    at = 5  # the initial counter: contiguous from there, no overlap, no gap
    for first, n in ranges:
        assert first == at
        at += n
    assert c.cell(slot, 0x1234).value() == at


def test_a_slot_handed_on_refuses_its_old_keypair() -> None:
    c = wk.SharedCounters(slots=2)
    old = c.cell(c.alloc(7, 0), 7)
    assert old.reserve(3, REJECT_AFTER_MESSAGES) == 0
    c.alloc(8, 0)
    new = c.cell(c.alloc(9, 100), 9)  # round the ring: old's slot now belongs to 9
    assert new.slot == old.slot
    assert old.reserve(1, REJECT_AFTER_MESSAGES) is None
    assert old.value() == REJECT_AFTER_MESSAGES  # cannot send: a new handshake is due
    assert new.reserve(2, REJECT_AFTER_MESSAGES) == 100
    assert new.reserve(1, 102) is None  # the limit holds


def test_keypair_with_a_cell_counts_there() -> None:
    c = wk.SharedCounters(slots=4)
    kp = Keypair(3, 4, bytes(32), bytes(range(32)), 0.0, True)
    assert kp.reserve(10, 1.0) == 0
    kp.cell = c.cell(c.alloc(3, kp.send_counter), 3)
    twin = Keypair(3, 4, bytes(32), bytes(range(32)), 0.0, True)
    twin.cell = c.cell(kp.cell.slot, 3)
    assert twin.reserve(5, 1.0) == 10
    assert kp.reserve(1, 1.0) == 15
    assert kp.send_counter == twin.send_counter == 16


# --------------------------------------------------------------------- the mirror
def test_mirror_knows_only_the_indices_its_worker_receives() -> None:
    c = wk.SharedCounters(slots=16)
    n = 3
    kps = []
    for idx in (0x100, 0x101, 0x102, 0x2FF):
        slot = c.alloc(idx, 0)
        kps.append(
            wk.KeypairState(
                idx, idx + 1, bytes(32), bytes([idx & 0xFF]) * 32, 0.0, True, slot, "previous"
            )
        )
    cur = wk.KeypairState(0x505, 9, bytes(32), bytes(32), 0.0, True, c.alloc(0x505, 0), "current")
    peer = wk.PeerState(b"P" * 32, ("198.18.0.9", 1), ("198.18.9.0/24",), (kps[0], cur))
    peer2 = wk.PeerState(b"Q" * 32, None, (), (kps[1], kps[2]))
    snap = wk.Snapshot(b"K" * 32, 51820, 0, (peer, peer2))
    for worker in range(n):
        m = wk.MirrorProtocol(worker, n)
        m.apply(snap, c)
        for ks in (kps[0], kps[1], kps[2], cur):
            mine = ks.local_index % 256 % n == worker
            assert (m.lookup(ks.local_index) is not None) == mine
        # every worker sends with the peer's current keypair, counters shared
        p = m.peers[b"P" * 32]
        kp = p.send_keypair(1.0)
        assert kp is not None and kp.local_index == 0x505
        assert kp.reserve(2, 1.0) == 2 * worker
    # the replay window survives a new snapshot of the same keypair
    m = wk.MirrorProtocol(0, 1)
    m.apply(snap, c)
    kp0 = m.lookup(0x100)
    assert kp0 is not None and kp0[1].replay.update(5)
    m.apply(snap, c)
    again = m.lookup(0x100)
    assert again is not None and not again[1].replay.update(5)


# --------------------------------------------------------------------- kernel: steering
def _skip() -> None:
    if os.geteuid() != 0:
        pytest.skip("not root: the steering programs need CAP_NET_ADMIN and namespaces")
    r = netns.tun_available()
    if r:
        pytest.skip(r)


def _recv_all(socks: list[socket.socket], timeout: float) -> list[list[bytes]]:
    got: list[list[bytes]] = [[] for _ in socks]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r, _, _ = select.select(socks, [], [], 0.2)
        if not r:
            break
        for s in r:
            got[socks.index(s)].append(s.recv(4096))
    return got


def _reuseport_case(n: int) -> tuple[list[list[bytes]], list[bytes]]:
    socks = []
    port = 0
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, kc.SO_REUSEPORT, 1)
        s.bind(("198.18.30.1", port))
        port = s.getsockname()[1]
        socks.append(s)
    wk.attach_reuseport_program(socks[0], n)
    sent = []
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.bind(("198.18.30.1", 0))
    for i in range(60):
        if i % 5 == 0:
            d = bytes([1 + i % 3, 0, 0, 0]) + os.urandom(40)  # handshake-ish
        elif i % 7 == 0:
            d = bytes([4, i])  # too short for an index
        else:
            d = bytes([4, 0, 0, 0]) + os.urandom(4) + bytes(8) + os.urandom(i)
        sent.append(d)
        tx.sendto(d, ("198.18.30.1", port))
    got = _recv_all(socks, 3.0)
    for s in socks:
        s.close()
    tx.close()
    return got, sent


def test_reuseport_program_steers_transport_by_receiver_index() -> None:
    _skip()
    n = 3
    with netns.Testbed() as tb:
        a, b = tb.host("ra"), tb.host("rb")
        tb.link(a, b, addrs_a=["198.18.30.1/24"], addrs_b=["198.18.30.2/24"])
        got, sent = a.run(_reuseport_case, n)
    where = {d: i for i, ds in enumerate(got) for d in ds}
    assert len(where) == len(sent), "a datagram was lost"
    for d in sent:
        want = d[4] % n if d[0] == 4 and len(d) >= 5 else 0
        assert where[d] == want, (d[:8].hex(), where[d], want)


def _hash(pkt: bytes) -> int:
    """The flow hash, written from its description: XOR of the address words (IPv6:
    first and last word of each address), then the port word for TCP/UDP."""
    v = pkt[0] >> 4
    if v == 4:
        ihl_end = 20
        src = ipaddress.IPv4Address(pkt[12:16]).packed
        dst = ipaddress.IPv4Address(pkt[16:20]).packed
        words = [int.from_bytes(src, "big"), int.from_bytes(dst, "big")]
        proto = pkt[9]
    else:
        ihl_end = 40
        src = ipaddress.IPv6Address(pkt[8:24]).packed
        dst = ipaddress.IPv6Address(pkt[24:40]).packed
        words = [int.from_bytes(x[o : o + 4], "big") for x in (src, dst) for o in (0, 12)]
        proto = pkt[6]
    if proto in (6, 17):
        words.append(struct.unpack("!I", pkt[ihl_end : ihl_end + 4])[0])
    h = 0
    for x in words:
        h ^= x
    return (h ^ (h >> 16)) & 0xFFFF


def _tun_case(n: int) -> list[list[bytes]]:
    fds = []
    fd, name = kc.tun_open("nofq0", vnet_hdr=False, multi_queue=True)
    fds.append(fd)
    for _ in range(1, n):
        fds.append(kc.tun_open(name, vnet_hdr=False, multi_queue=True)[0])
    wk.attach_tun_steering(fds[0])
    subprocess.run(["ip", "addr", "add", "198.18.31.1/24", "dev", name], check=True)
    subprocess.run(["ip", "-6", "addr", "add", "fd00:31::1/64", "dev", name, "nodad"], check=True)
    subprocess.run(["ip", "link", "set", name, "up"], check=True)
    time.sleep(0.3)
    for f in fds:  # whatever the kernel sent on its own (router solicitations ...)
        with contextlib.suppress(BlockingIOError):
            while os.read(f, 65536):
                pass
    s4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    for port in range(40000, 40040):
        for s, dst in ((s4, "198.18.31.2"), (s6, "fd00:31::2")):
            x = socket.socket(s.family, socket.SOCK_DGRAM)
            x.bind(("198.18.31.1" if s is s4 else "fd00:31::1", port))
            x.sendto(b"q" * 20, (dst, 7000 + port % 3))
            x.close()
    t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # a TCP SYN too (no one answers)
    t.setblocking(False)
    with contextlib.suppress(BlockingIOError, OSError):
        t.connect(("198.18.31.2", 5555))
    time.sleep(0.3)
    out: list[list[bytes]] = [[] for _ in fds]
    for i, f in enumerate(fds):
        with contextlib.suppress(BlockingIOError):
            while True:
                out[i].append(os.read(f, 65536))
    t.close()
    s4.close()
    s6.close()
    for f in fds:
        os.close(f)
    return out


def test_tun_steering_keeps_a_flow_on_the_queue_its_hash_names() -> None:
    _skip()
    n = 3
    with netns.Testbed() as tb:
        h = tb.host("tq")
        got = h.run(_tun_case, n)
    seen = 0
    for q, pkts in enumerate(got):
        for p in pkts:
            if p[0] >> 4 == 6 and p[6] == 58:
                continue  # ICMPv6 from the kernel itself: not part of the case
            assert _hash(p) % n == q, (q, p[:48].hex())
            seen += 1
    assert seen >= 81  # 40 UDP v4 + 40 UDP v6 + the SYN
    assert all(got), "some queue got nothing: the flows were not spread"


# --------------------------------------------------------------------- the running tunnel
def _flow_sender(dst: str, port: int, sport: int, n: int) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((US_V4, sport))
    for i in range(n):
        s.sendto(struct.pack("!II", sport, i) + bytes(200), (dst, port))
        if i % 16 == 15:
            time.sleep(0.003)
    s.close()


def _flow_receiver(s: socket.socket, total: int, limit: float) -> list[tuple[int, int]]:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.settimeout(limit)
    got = []
    with contextlib.suppress(TimeoutError, OSError):
        while len(got) < total:
            d = s.recv(2048)
            got.append(struct.unpack("!II", d[:8]))
    return got


def _udp4(src: str, dst: str, sport: int, dport: int) -> bytes:
    """Enough of an IPv4/UDP header for the hash."""
    hdr = bytearray(28)
    hdr[0] = 0x45
    hdr[9] = 17
    hdr[12:16] = ipaddress.IPv4Address(src).packed
    hdr[16:20] = ipaddress.IPv4Address(dst).packed
    hdr[20:24] = struct.pack("!HH", sport, dport)
    return bytes(hdr)


def _tcp4(src: str, dst: str, sport: int, dport: int) -> bytes:
    h = bytearray(_udp4(src, dst, sport, dport))
    h[9] = 6
    return bytes(h)


def _show(h: netns.Netns, name: str) -> dict[str, Any]:
    import json

    time.sleep(2.6)  # a worker reports each second, the control writes the file each second
    out = h.exec([sys.executable, "-m", "netoffload", "show", name, "--json"])
    doc = json.loads(out)
    assert isinstance(doc, dict)
    return doc


def _tun_reads(doc: dict[str, Any]) -> dict[int, int]:
    return {int(w["worker"]): int(w["devices"]["tun"]["read"]) for w in doc["workers"]}


def test_workers_spread_flows_in_order_without_duplicates(tmp_path: Path) -> None:
    with pair(tmp_path, start=False) as p:
        p.up("--workers", "2")
        assert _ping(p.b, GO_V4)
        doc = _show(p.b, p.name)
        assert [w["worker"] for w in doc["workers"]] == [0, 1]
        assert doc["steering"].startswith("5-tuple"), doc["steering"]
        text = p.b.exec([sys.executable, "-m", "netoffload", "show", p.name])
        assert "workers: 2 (5-tuple" in text, text
        # two UDP flows whose hashes put them on different queues
        dport = 6001
        by_q: dict[int, int] = {}
        for sport in range(42000, 42100):
            by_q.setdefault(_hash(_udp4(US_V4, GO_V4, sport, dport)) % 2, sport)
        assert len(by_q) == 2
        before = _tun_reads(doc)
        n = 3000
        rs = p.a.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rs.bind((GO_V4, dport))
        rx = p.a.spawn(_flow_receiver, rs, 2 * n, 8.0)
        rs.close()
        time.sleep(0.1)
        txs = [p.b.spawn(_flow_sender, GO_V4, dport, sport, n) for sport in by_q.values()]
        for t in txs:
            t.join(30)
        got = rx.join(30)
        after = _tun_reads(_show(p.b, p.name))
        for q in (0, 1):
            assert after[q] - before[q] >= n * 0.9, (q, before, after)
        for sport in by_q.values():
            seqs = [i for s, i in got if s == sport]
            # UDP: wireguard-go or a socket may drop under a burst; what a worker must not
            # do is reorder or duplicate
            assert len(seqs) >= n * 0.9, f"flow {sport}: {len(seqs)} of {n} arrived"
            assert len(set(seqs)) == len(seqs), f"flow {sport}: a datagram arrived twice"
            assert seqs == sorted(seqs), f"flow {sport}: reordered"
        # two TCP streams on different queues: both intact, both workers moved them
        tq: dict[int, int] = {}
        for sport in range(43000, 43100):
            tq.setdefault(_hash(_tcp4(US_V4, GO_V4, sport, 5301)) % 2, sport)
        before = _tun_reads(_show(p.b, p.name))
        for sport in tq.values():
            ls = p.a.socket(socket.AF_INET, socket.SOCK_STREAM)
            ls.bind((GO_V4, 5301))
            ls.listen(1)
            srv = p.a.spawn(_tcp_server, ls, 30.0)
            ls.close()
            sent = p.b.spawn(_tcp_client_from, sport, GO_V4, 5301, 2_000_000).join(40)
            assert srv.join(40) == sent, "TCP stream content differs end to end"
        after = _tun_reads(_show(p.b, p.name))
        assert all(after[q] > before[q] for q in (0, 1)), (before, after)
        assert _ping(p.a, US_V4)


def _tcp_client_from(sport: int, dst: str, port: int, nbytes: int) -> str:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((US_V4, sport))
    s.connect((dst, port))
    h = hashlib.sha256()
    left = nbytes
    while left:
        chunk = os.urandom(min(left, 65536))
        s.sendall(chunk)
        h.update(chunk)
        left -= len(chunk)
    s.shutdown(socket.SHUT_WR)
    s.recv(1)
    s.close()
    return h.hexdigest()


def test_a_worker_killed_ends_the_tunnel_with_one_line(tmp_path: Path) -> None:
    import psutil

    with pair(tmp_path, start=False) as p:
        proc = p.b.popen(
            [
                sys.executable,
                "-m",
                "netoffload",
                "up",
                str(p.conf),
                "--foreground",
                "--workers",
                "3",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + 15
            while not os.path.exists(f"/var/run/wireguard/{p.name}.sock"):
                assert proc.poll() is None and time.monotonic() < deadline, "up failed"
                time.sleep(0.05)
            kids = psutil.Process(proc.pid).children()
            assert len(kids) == 2
            kids[0].kill()
            try:
                _, err = proc.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                pytest.fail("the tunnel went on without a worker")
        finally:
            stop_process(proc)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "worker" in lines[0] and "Traceback" not in err, err
        assert proc.returncode != 0
        time.sleep(0.3)
        assert not any(k.is_running() and k.status() != psutil.STATUS_ZOMBIE for k in kids)
        assert p.name not in p.b.ip("-o", "link", "show", check=False)


def test_pinned_index_byte_keeps_a_peers_sessions_on_one_worker() -> None:
    """With pin_index_byte (the control of several workers) every session of a peer, on
    either side of a rekey, ends in the peer's byte; without, indices are random."""
    from tests.tunnel.sim import Sim

    from netoffload.tunnel.timers import REKEY_AFTER_TIME

    sim = Sim()
    sim.a.proto.pin_index_byte = True
    sim.b.proto.pin_index_byte = True
    seen_a, seen_b = set(), set()
    for r in range(4):
        sim.send(sim.a, b"\x45" + bytes(43))
        sim.deliver()
        sim.send(sim.b, b"\x45" + bytes(43))
        sim.deliver()
        for side, seen in ((sim.a, seen_a), (sim.b, seen_b)):
            for kp in side.peer.keypairs():
                seen.add(kp.local_index)
        sim.now += REKEY_AFTER_TIME + 1 + r
    assert len(seen_a) >= 3 and len(seen_b) >= 3
    assert {i & 0xFF for i in seen_a} == {sim.a.peer.index_byte}
    assert {i & 0xFF for i in seen_b} == {sim.b.peer.index_byte}
    assert len({i >> 8 for i in seen_a}) == len(seen_a)  # the rest stays random


def test_wg_set_under_workers_fwmark_reaches_every_socket_port_refused(tmp_path: Path) -> None:
    with pair(tmp_path, start=False) as p:
        p.up("--workers", "3")
        assert _ping(p.b, GO_V4)
        p.b.exec(["wg", "set", p.name, "listen-port", "51999"], check=False)  # refused
        assert p.b.exec(["wg", "show", p.name, "listen-port"]).strip() == "51821"
        p.b.exec(["wg", "set", p.name, "fwmark", "0x4242"])
        assert p.b.exec(["wg", "show", p.name, "fwmark"]).strip() == "0x4242"
        deadline = time.monotonic() + 5
        while True:
            ss = p.b.exec(["ss", "-uanpe", "sport", "=", ":51821"])
            socks = [ln for ln in ss.splitlines() if ":51821" in ln]
            marked = [ln for ln in socks if "fwmark:0x4242" in ln]
            if len(socks) == 3 and len(marked) == 3:
                break
            assert time.monotonic() < deadline, ss
            time.sleep(0.2)
        assert _ping(p.b, GO_V4)
