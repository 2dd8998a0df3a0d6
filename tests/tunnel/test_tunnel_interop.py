"""The running tunnel against the real thing: wireguard-go (Debian) and the `wg` tool.

Each test makes its own namespaces (198.18.0.0/15, fd00::/8 only): host ``a``
runs wireguard-go, host ``b`` runs ``netoffload up CONF --foreground``. What is
checked is what a user sees: ping, kernel TCP/UDP sockets with content hashes,
``wg show`` on both sides, the reason counters of ``netoffload show --json``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from netoffload.testing import netns, wggo
from netoffload.testing.procs import stop_process
from netoffload.tunnel import keys

pytestmark = pytest.mark.kernel

GO_V4, GO_V6 = "198.18.20.1", "fd00:20::1"
US_V4, US_V6 = "198.18.20.2", "fd00:20::2"
GO_PORT, US_PORT = 51820, 51821


def _skip_reason() -> str | None:
    return netns.tun_available() or wggo.available()


@dataclass
class Pair:
    tb: netns.Testbed
    a: netns.Netns
    b: netns.Netns
    go: wggo.WireguardGo
    name: str
    conf: Path
    us_key: bytes
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    @property
    def us_public(self) -> bytes:
        return keys.public_from_private(self.us_key)

    def up(self, *extra: str, timeout: float = 10.0) -> None:
        assert self.log is not None
        self.proc = self.b.popen(
            [sys.executable, "-m", "netoffload", "up", str(self.conf), "--foreground", *extra],
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
        )
        sock = f"/var/run/wireguard/{self.name}.sock"
        deadline = time.monotonic() + timeout
        while not (os.path.exists(sock) and _has_link(self.b, self.name)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"up failed: {self.log.read_text()[-2000:]}")
            time.sleep(0.05)
        time.sleep(0.2)

    def down(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
        self.proc = None

    def show(self) -> dict[str, Any]:
        time.sleep(1.2)  # the status file is written once a second
        out = self.b.exec([sys.executable, "-m", "netoffload", "show", self.name, "--json"])
        doc = json.loads(out)
        assert isinstance(doc, dict)
        return doc


def _has_link(h: netns.Netns, name: str) -> bool:
    return name in h.ip("-o", "link", "show", check=False)


def _conf(name: str, key: bytes, peer: bytes, psk: bytes | None, keepalive: int = 0) -> str:
    lines = [
        "[Interface]",
        f"PrivateKey = {keys.b64_encode(key)}",
        f"ListenPort = {US_PORT}",
        f"Address = {US_V4}/24, {US_V6}/64",
        "",
        "[Peer]",
        f"PublicKey = {keys.b64_encode(peer)}",
        f"AllowedIPs = {GO_V4}/32, {GO_V6}/128",
        f"Endpoint = 198.18.0.1:{GO_PORT}",
    ]
    if psk is not None:
        lines.append(f"PresharedKey = {keys.b64_encode(psk)}")
    if keepalive:
        lines.append(f"PersistentKeepalive = {keepalive}")
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def pair(
    tmp_path: Path, *, psk: bool = False, start: bool = True, keepalive: int = 0
) -> Iterator[Pair]:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    with netns.Testbed() as tb:
        a, b = tb.host("go"), tb.host("us")
        tb.link(a, b, addrs_a=["198.18.0.1/24"], addrs_b=["198.18.0.2/24"])
        go_key, us_key = keys.generate_private(), keys.generate_private()
        pre = keys.generate_preshared() if psk else None
        name = f"nof{os.getpid() % 100000}{len(os.listdir(tmp_path)) % 10}"
        conf = tmp_path / f"{name}.conf"
        conf.write_text(_conf(name, us_key, keys.public_from_private(go_key), pre, keepalive))
        conf.chmod(0o600)
        with wggo.WireguardGo(
            a, private_key=go_key, listen_port=GO_PORT, addresses=[f"{GO_V4}/24", f"{GO_V6}/64"]
        ) as go:
            go.set_peer(
                keys.public_from_private(us_key),
                allowed_ips=[f"{US_V4}/32", f"{US_V6}/128"],
                endpoint=("198.18.0.2", US_PORT),
                preshared_key=pre,
            )
            p = Pair(tb, a, b, go, name, conf, us_key, log=tmp_path / f"{name}.log")
            try:
                if start:
                    p.up()
                yield p
            finally:
                p.down()
                with contextlib.suppress(OSError):
                    os.unlink(f"/var/run/wireguard/{name}.sock")


def _ping(h: netns.Netns, addr: str, count: int = 3, wait: int = 3) -> bool:
    r = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            h.name,
            "ping",
            "-c",
            str(count),
            "-i",
            "0.2",
            "-w",
            str(wait + count),
            addr,
        ],
        capture_output=True,
        text=True,
    )
    return r.returncode == 0


# --------------------------------------------------------------------- streams


def _tcp_server(lsock: socket.socket, limit: float) -> str:
    lsock.settimeout(limit)
    conn, _ = lsock.accept()
    conn.settimeout(limit)
    h = hashlib.sha256()
    while True:
        d = conn.recv(1 << 16)
        if not d:
            break
        h.update(d)
    conn.close()
    return h.hexdigest()


def _tcp_client(dst: str, port: int, nbytes: int) -> str:
    fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(20)
    s.connect((dst, port))
    h = hashlib.sha256()
    seed = hashlib.sha256(b"netoffload").digest()
    sent = 0
    i = 0
    while sent < nbytes:
        chunk = hashlib.sha256(seed + i.to_bytes(8, "big")).digest() * 2048  # 64 KiB
        chunk = chunk[: nbytes - sent]
        s.sendall(chunk)
        h.update(chunk)
        sent += len(chunk)
        i += 1
    s.shutdown(socket.SHUT_WR)
    s.recv(1)
    s.close()
    return h.hexdigest()


def tcp_stream(
    src: netns.Netns, dst: netns.Netns, addr: str, nbytes: int, port: int = 5301
) -> None:
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    ls = dst.socket(fam, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((addr, port))
    ls.listen(1)
    rx = dst.spawn(_tcp_server, ls, 30.0)
    ls.close()
    tx = src.spawn(_tcp_client, addr, port, nbytes)
    sent = tx.join(40)
    got = rx.join(40)
    assert sent == got, "TCP stream content differs end to end"


def _udp_server(s: socket.socket, n: int, limit: float) -> dict[int, bool]:
    s.settimeout(limit)
    got: dict[int, bool] = {}
    with contextlib.suppress(TimeoutError, OSError):
        while len(got) < n:
            d = s.recv(2048)
            seq = int.from_bytes(d[:4], "big")
            body = d[4:-32]
            got[seq] = hashlib.sha256(body).digest() == d[-32:]
    return got


def _udp_client(dst: str, port: int, n: int) -> int:
    fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_DGRAM)
    for i in range(n):
        body = os.urandom(64 + (i * 37) % 1300)
        s.sendto(i.to_bytes(4, "big") + body + hashlib.sha256(body).digest(), (dst, port))
        if i % 16 == 15:
            time.sleep(0.002)
    return n


def udp_stream(src: netns.Netns, dst: netns.Netns, addr: str, n: int, port: int = 5302) -> None:
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    s = dst.socket(fam, socket.SOCK_DGRAM)
    s.bind((addr, port))
    rx = dst.spawn(_udp_server, s, n, 5.0)
    s.close()
    time.sleep(0.1)
    src.spawn(_udp_client, addr, port, n).join(30)
    got = rx.join(30)
    assert all(got.values()), "a UDP datagram arrived corrupted"
    assert len(got) >= n * 0.98, f"only {len(got)} of {n} datagrams arrived"


# --------------------------------------------------------------------- tests


def test_wireguard_go_initiates_v4_v6_and_wg_show(tmp_path: Path) -> None:
    with pair(tmp_path) as p:
        assert _ping(p.a, US_V4), "ping from wireguard-go's side failed"
        assert _ping(p.a, US_V6)
        dump = p.go.dump().peers[p.us_public]
        assert dump.latest_handshake > 0 and dump.rx_bytes > 0 and dump.tx_bytes > 0
        # the real wg tool on our interface
        out = p.b.exec(["wg", "show", p.name, "dump"]).strip().splitlines()
        iface, peer = out[0].split("\t"), out[1].split("\t")
        assert iface[1] == keys.b64_encode(p.us_public) and iface[2] == str(US_PORT)
        assert peer[0] == keys.b64_encode(p.go.public_key())
        assert int(peer[4]) > 0, "wg show: no latest handshake"
        assert int(peer[5]) > 0 and int(peer[6]) > 0, "wg show: no transfer"
        assert peer[2] == f"198.18.0.1:{GO_PORT}"


def test_netoffload_initiates_tcp_udp_both_ways(tmp_path: Path) -> None:
    with pair(tmp_path) as p:
        assert _ping(p.b, GO_V4), "ping from netoffload's side failed"
        tcp_stream(p.b, p.a, GO_V4, 8 << 20)
        tcp_stream(p.a, p.b, US_V4, 8 << 20, port=5303)
        tcp_stream(p.b, p.a, GO_V6, 2 << 20, port=5304)
        udp_stream(p.b, p.a, GO_V4, 400)
        udp_stream(p.a, p.b, US_V4, 400, port=5305)
        doc = p.show()
        tx = doc["transmit"]["tasks"]
        rx = doc["receive"]["tasks"]
        for name in ("classify", "checksum", "encrypt"):
            assert tx[name]["offloaded"] + tx[name]["software"] > 0, name
        for name in ("dos-filter", "decrypt", "classify", "checksum", "tcp-assemble"):
            assert rx[name]["offloaded"] + rx[name]["software"] > 0, name
        assert tx["tcp-segment"]["offloaded"] + tx["tcp-segment"]["software"] > 0
        assert rx["decrypt"]["reasons"].get("bad_icv", 0) == 0


def test_preshared_key(tmp_path: Path) -> None:
    with pair(tmp_path, psk=True) as p:
        assert _ping(p.b, GO_V4)
        assert _ping(p.a, US_V6)


def test_peer_restart_forces_new_handshake(tmp_path: Path) -> None:
    with pair(tmp_path) as p:
        assert _ping(p.a, US_V4)
        first = p.go.dump().peers[p.us_public].latest_handshake
        key = p.go.private_key
        assert key is not None
        p.go.stop()
        time.sleep(0.5)
        with wggo.WireguardGo(
            p.a, private_key=key, listen_port=GO_PORT, addresses=[f"{GO_V4}/24", f"{GO_V6}/64"]
        ) as go2:
            go2.set_peer(p.us_public, allowed_ips=[f"{US_V4}/32"], endpoint=("198.18.0.2", US_PORT))
            assert _ping(p.a, US_V4, wait=6)
            assert go2.dump().peers[p.us_public].latest_handshake >= first
            # and netoffload's side saw a second handshake
            assert p.show()["stats"]["handshakes_in"] >= 2


def test_roaming_follows_the_source_port(tmp_path: Path) -> None:
    with pair(tmp_path) as p:
        assert _ping(p.a, US_V4)
        p.go.wg("set", p.go.name, "listen-port", "51999")
        assert _ping(p.a, US_V4)
        eps = p.b.exec(["wg", "show", p.name, "endpoints"])
        assert "198.18.0.1:51999" in eps, eps
        # and traffic we originate goes to the new port
        assert _ping(p.b, GO_V4)


def test_cookie_reply_under_load(tmp_path: Path) -> None:
    with pair(tmp_path, start=False) as p:
        p.up("--under-load")
        # wireguard-go gets a cookie reply, retries after REKEY_TIMEOUT with mac2
        assert _ping(p.a, US_V4, count=1, wait=15), "no session through the cookie mechanism"
        doc = p.show()
        assert doc["receive"]["tasks"]["dos-filter"]["reasons"].get("cookie_needed", 0) >= 1
        assert _ping(p.b, GO_V4)


def test_wg_set_adds_peer_and_moves_allowed_ips(tmp_path: Path) -> None:
    with pair(tmp_path) as p:
        assert _ping(p.a, US_V4)
        # a second wireguard-go peer in a third namespace
        c = p.tb.host("go2")
        p.tb.link(
            c, p.b, if_a="veth0", if_b="veth1", addrs_a=["198.18.1.1/24"], addrs_b=["198.18.1.2/24"]
        )
        k2 = keys.generate_private()
        with wggo.WireguardGo(
            c, private_key=k2, listen_port=51830, addresses=["198.18.21.1/24"]
        ) as go2:
            go2.set_peer(
                p.us_public,
                allowed_ips=["198.18.21.2/32", "198.18.20.0/24"],
                endpoint=("198.18.1.2", US_PORT),
            )
            c.ip("addr", "add", "198.18.20.99/32", "dev", go2.name)
            c.ip("route", "add", f"{US_V4}/32", "dev", go2.name)
            pk2 = keys.b64_encode(keys.public_from_private(k2))
            p.b.exec(
                [
                    "wg",
                    "set",
                    p.name,
                    "peer",
                    pk2,
                    "allowed-ips",
                    "198.18.21.1/32",
                    "endpoint",
                    "198.18.1.1:51830",
                ]
            )
            p.b.ip("addr", "add", "198.18.21.2/24", "dev", p.name)
            assert _ping(p.b, "198.18.21.1"), "traffic does not follow the new peer"
            # move an address from peer 1 to peer 2: traffic follows at once
            p.b.exec(
                ["wg", "set", p.name, "peer", pk2, "allowed-ips", "198.18.21.1/32,198.18.20.99/32"]
            )
            assert _ping(p.b, "198.18.20.99")
            shown = p.b.exec(["wg", "show", p.name, "allowed-ips"])
            assert "198.18.20.99/32" in shown
            # the first peer's session is untouched
            assert _ping(p.b, GO_V4)
            p.b.exec(["wg", "set", p.name, "peer", pk2, "remove"])
            assert pk2 not in p.b.exec(["wg", "show", p.name, "peers"])
            assert _ping(p.b, GO_V4)
            conf = p.b.exec(["wg", "showconf", p.name])
            assert keys.b64_encode(p.go.public_key()) in conf


def _send_junk(dst: str, port: int, datagrams: list[bytes]) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for d in datagrams:
        s.sendto(d, (dst, port))
        time.sleep(0.001)
    s.close()


def test_bad_datagrams_are_verdicts_and_the_session_goes_on(tmp_path: Path) -> None:
    with pair(tmp_path) as p:
        assert _ping(p.a, US_V4)
        rnd = [os.urandom(n) for n in (1, 3, 17, 31, 100, 148, 1500)]
        wrong_type = [bytes([9, 0, 0, 0]) + os.urandom(60), bytes([4, 1, 0, 0]) + os.urandom(60)]
        truncated = [bytes([1, 0, 0, 0]) + os.urandom(100), bytes([4, 0, 0, 0]) + os.urandom(20)]
        bad_mac = [bytes([1, 0, 0, 0]) + os.urandom(144), bytes([2, 0, 0, 0]) + os.urandom(88)]
        unknown = [bytes([4, 0, 0, 0]) + os.urandom(4) + bytes(8) + os.urandom(64)]
        p.a.spawn(
            _send_junk, "198.18.0.2", US_PORT, rnd + wrong_type + truncated + bad_mac + unknown
        ).join(10)
        assert _ping(p.a, US_V4), "the session did not survive junk"
        doc = p.show()
        r = doc["receive"]["tasks"]
        reasons = {**r["dos-filter"]["reasons"], **r["digest"]["reasons"]}
        # no WireGuard message by type and length: the kernel's shape filter drops it at the
        # socket (counted there), or the software filter (a reason)
        udp = doc["devices"]["udp"]
        assert udp["shape_filter"] is True
        shapeless = reasons.get("bad_message", 0) + udp["socket_drops"]
        assert shapeless >= len(rnd) + len(wrong_type) + len(truncated) - 1
        # the initiation (no receiver index) reaches the mac check; a response or data
        # message under no live index is dropped by the kernel's live-index filter at the
        # socket (tunnel/index_filter.py), or by the software filter (a reason)
        assert reasons.get("bad_mac1", 0) >= 1
        dropped = shapeless + reasons.get("unknown_index", 0) + reasons.get("bad_mac1", 0)
        junk = rnd + wrong_type + truncated + bad_mac + unknown
        assert dropped >= len(junk) - 1


def test_replayed_datagrams_are_dropped(tmp_path: Path) -> None:
    with pair(tmp_path) as p:
        # capture wireguard-go's transport datagrams to us, then replay them
        cap = p.b.popen(
            [
                "tshark",
                "-i",
                "veth0",
                "-w",
                str(tmp_path / "c.pcap"),
                "-f",
                f"udp dst port {US_PORT}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1.5)
        assert _ping(p.a, US_V4)
        time.sleep(0.5)
        cap.terminate()
        cap.wait(10)
        from netoffload.wire.pcap import read_capture

        pkts = [r.data for r in read_capture(str(tmp_path / "c.pcap"))]
        data = [x[14 + 28 :] for x in pkts if len(x) > 14 + 28 + 32 and x[14 + 28] == 4]
        assert data, "no transport datagrams captured"
        before = p.show()["receive"]["tasks"]["dos-filter"]["reasons"].get("replay", 0)
        p.a.spawn(_send_junk, "198.18.0.2", US_PORT, data).join(10)
        after = p.show()["receive"]["tasks"]["dos-filter"]["reasons"].get("replay", 0)
        assert after - before >= len(data)
        assert _ping(p.a, US_V4)


def test_up_refuses_a_name_in_use_and_replaces_a_stale_socket(tmp_path: Path) -> None:
    with pair(tmp_path, start=False) as p:
        # a stale socket file from a killed process: replaced
        os.makedirs("/var/run/wireguard", exist_ok=True)
        stale = f"/var/run/wireguard/{p.name}.sock"
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(stale)
        s.close()
        p.up()
        assert _ping(p.a, US_V4)
        # a second up on the same name: one clear line, exit 2
        r = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                p.b.name,
                sys.executable,
                "-m",
                "netoffload",
                "up",
                str(p.conf),
                "--foreground",
            ],
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert r.returncode == 2
        assert p.name in r.stderr and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1


def test_sigterm_leaves_nothing_behind(tmp_path: Path) -> None:
    with pair(tmp_path) as p:
        assert _ping(p.a, US_V4)
        routes_before = p.b.ip("route", "show", "table", "all")
        assert p.name in routes_before
        p.down()  # SIGTERM
        assert not _has_link(p.b, p.name)
        assert p.name not in p.b.ip("route", "show", "table", "all")
        assert not os.path.exists(f"/var/run/wireguard/{p.name}.sock")
        assert not os.path.exists(f"/run/netoffload/{p.name}.json")


def _cli(h: netns.Netns, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", h.name, sys.executable, "-m", "netoffload", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_up_detached_then_down_and_down_after_sigkill(tmp_path: Path) -> None:
    with pair(tmp_path, start=False) as p:
        r = _cli(p.b, "up", str(p.conf))
        assert r.returncode == 0, r.stderr
        assert _has_link(p.b, p.name)
        assert _ping(p.a, US_V4)
        r = _cli(p.b, "down", p.name)
        assert r.returncode == 0, r.stderr
        assert not _has_link(p.b, p.name)
        assert not os.path.exists(f"/var/run/wireguard/{p.name}.sock")
        assert not os.path.exists(f"/run/netoffload/{p.name}.json")
        # a killed process: down still removes what it made
        r = _cli(p.b, "up", str(p.conf))
        assert r.returncode == 0, r.stderr
        pid = json.loads(Path(f"/run/netoffload/{p.name}.json").read_text())["pid"]
        os.kill(int(pid), 9)
        time.sleep(0.3)
        r = _cli(p.b, "down", str(p.conf))
        assert r.returncode == 0, r.stderr
        assert not _has_link(p.b, p.name)
        assert p.name not in p.b.ip("route", "show", "table", "all")
        assert not os.path.exists(f"/var/run/wireguard/{p.name}.sock")
        # down on something that is not ours: one line, exit 2
        r = _cli(p.b, "down", "nosuchif0")
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1


def test_bad_config_is_one_line_naming_file_line_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "wgbad.conf"
    bad.write_text("[Interface]\nPrivateKey = notbase64!\n")
    r = subprocess.run(
        [sys.executable, "-m", "netoffload", "up", str(bad)], capture_output=True, text=True
    )
    assert r.returncode == 2
    line = r.stderr.strip()
    assert len(line.splitlines()) == 1 and "wgbad.conf:2" in line and "PrivateKey" in line


def _flood_initiations(dst: str, port: int, go_public: bytes, seconds: float) -> int:
    """Initiations with a valid mac1 for ``go_public`` (and junk inside), as fast as we can,
    for at most ``seconds``: wireguard-go queues each for a Diffie-Hellman it will fail."""
    from netoffload.tunnel.cookie import mac1_key
    from netoffload.tunnel.noise import mac

    key = mac1_key(go_public)
    msgs = []
    for _ in range(64):
        body = bytes([1, 0, 0, 0]) + os.urandom(112)
        msgs.append(body + mac(key, body) + bytes(16))
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setblocking(False)
    sent = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for m in msgs:
            with contextlib.suppress(BlockingIOError):
                s.sendto(m, (dst, port))
                sent += 1
    s.close()
    return sent


def test_cookie_reply_from_wireguard_go_under_load(tmp_path: Path) -> None:
    with pair(tmp_path) as p:
        # a burst of initiations from another source fills wireguard-go's handshake queue:
        # it stays "under load" for a second after; our own initiation, sent just after
        # the burst, gets a cookie reply, and our retry (REKEY_TIMEOUT later) carries mac2
        sent = p.b.spawn(_flood_initiations, "198.18.0.1", GO_PORT, p.go.public_key(), 0.3).join(10)
        assert sent > 1000
        time.sleep(0.1)
        assert _ping(p.b, GO_V4, count=1, wait=12), "no session through the cookie reply"
        log = p.go.log(20_000_000)
        to_us = f"Sending cookie response for denied handshake message for 198.18.0.2:{US_PORT}"
        assert to_us in log, "wireguard-go never sent our tunnel a cookie reply"
        assert p.go.dump().peers[p.us_public].latest_handshake > 0
