"""The UAPI: the text protocol against wireguard-go (the same requests to both,
the same answers), the server against the real ``wg`` tool (show, showconf,
set), round trips and corrupt-input fuzzing of the parser, and the socket
file's life (stale replaced, live refused, mode 0600, bounds)."""

from __future__ import annotations

import base64
import contextlib
import errno
import ipaddress
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netoffload.errors import ConfigError
from netoffload.tunnel.config import parse_config
from netoffload.tunnel.uapi import (
    PeerUpdate,
    RequestReader,
    SetRequest,
    UapiError,
    UapiPeer,
    UapiServer,
    UapiState,
    apply_set,
    format_get,
    format_set,
    parse_set,
    respond,
)

WG = shutil.which("wg")
WG_GO = shutil.which("wireguard-go")
SOCK_DIR = "/var/run/wireguard"

Net = ipaddress.IPv4Network | ipaddress.IPv6Network


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def net(text: str) -> Net:
    return ipaddress.ip_network(text)


# --------------------------------------------------------------------------- an independent reader


def read_get(text: str) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
    """A get answer's lines, read plainly: (interface keys, {public_key hex: keys}),
    allowed_ip as a set; checks the ending errno=0 and empty line."""
    assert text.endswith("errno=0\n\n"), text[-80:]
    dev: dict[str, str] = {}
    peers: dict[str, dict[str, Any]] = {}
    cur: dict[str, Any] | None = None
    for line in text[: -len("errno=0\n\n")].split("\n")[:-1]:
        k, _, v = line.partition("=")
        if k == "public_key":
            cur = peers.setdefault(v, {"allowed_ip": set()})
        elif cur is None:
            assert k not in dev
            dev[k] = v
        elif k == "allowed_ip":
            cur["allowed_ip"].add(ipaddress.ip_network(v))
        else:
            assert k not in cur
            cur[k] = v
    return dev, peers


# --------------------------------------------------------------------------- parse_set

PK1, PK2, PK3 = bytes([0x11]) * 32, bytes([0x22]) * 32, bytes([0x33]) * 32
PRIV = bytes(range(32))


def test_parse_set_every_key() -> None:
    lines = [
        f"private_key={PRIV.hex()}",
        "listen_port=51820",
        "fwmark=0",
        "replace_peers=true",
        f"public_key={PK1.hex()}",
        "update_only=true",
        f"preshared_key={'AB' * 32}",
        "endpoint=198.18.0.2:51820",
        "persistent_keepalive_interval=25",
        "replace_allowed_ips=true",
        "allowed_ip=198.18.5.9/24",
        "allowed_ip=fd00::1/128",
        "protocol_version=1",
        f"public_key={PK2.hex()}",
        "remove=true",
        f"public_key={PK3.hex()}",
        "endpoint=[fe80::1%eth0]:1",
    ]
    assert parse_set(line + "\n" for line in lines) == SetRequest(
        private_key=PRIV,
        listen_port=51820,
        fwmark=0,
        replace_peers=True,
        peers=(
            PeerUpdate(
                public_key=PK1,
                update_only=True,
                preshared_key=bytes([0xAB]) * 32,
                endpoint=("198.18.0.2", 51820),
                persistent_keepalive=25,
                replace_allowed_ips=True,
                allowed_ips=(net("198.18.5.0/24"), net("fd00::1/128")),
                protocol_version=1,
            ),
            PeerUpdate(public_key=PK2, remove=True),
            PeerUpdate(public_key=PK3, endpoint=("fe80::1%eth0", 1)),
        ),
    )
    assert parse_set([]) == SetRequest()


def test_replace_allowed_ips_after_lines_discards_them() -> None:
    req = parse_set(
        [f"public_key={PK1.hex()}", "allowed_ip=198.18.1.0/24", "replace_allowed_ips=true"]
    )
    assert req.peers[0].replace_allowed_ips and req.peers[0].allowed_ips == ()


BAD_SETS = [
    ["bogus=1"],
    ["private_key=" + "0" * 63],
    ["private_key=" + "0" * 65],
    ["private_key=" + "g" * 64],
    ["private_key= " + "0" * 63],
    ["listen_port=65536"],
    ["listen_port=-1"],
    ["listen_port=+1"],
    ["listen_port= 1"],
    ["listen_port="],
    ["listen_port=0x10"],
    ["listen_port=" + "9" * 5000],
    ["fwmark=4294967296"],
    ["replace_peers=false"],
    ["replace_peers=1"],
    ["allowed_ip=198.18.0.0/24"],  # before any public_key
    ["endpoint=198.18.0.1:1"],
    ["no equals sign"],
    ["=value"],
    [""],
    [f"public_key={PK1.hex()}", "listen_port=1"],  # interface key inside a peer block
    [f"public_key={PK1.hex()}", "remove=false"],
    [f"public_key={PK1.hex()}", "update_only=yes"],
    [f"public_key={PK1.hex()}", "replace_allowed_ips=TRUE"],
    [f"public_key={PK1.hex()}", "preshared_key=00"],
    [f"public_key={PK1.hex()}", "endpoint=198.18.0.1"],
    [f"public_key={PK1.hex()}", "endpoint=198.18.0.1:65536"],
    [f"public_key={PK1.hex()}", "endpoint=fd00::1:51820"],
    [f"public_key={PK1.hex()}", "endpoint=[198.18.0.1]:1"],
    [f"public_key={PK1.hex()}", "endpoint=[fd00::1]"],
    [f"public_key={PK1.hex()}", "endpoint=host.example:1"],
    [f"public_key={PK1.hex()}", "endpoint=198.18.0.1%eth0:1"],
    [f"public_key={PK1.hex()}", "persistent_keepalive_interval=65536"],
    [f"public_key={PK1.hex()}", "allowed_ip=198.18.0.0"],
    [f"public_key={PK1.hex()}", "allowed_ip=198.18.0.0/33"],
    [f"public_key={PK1.hex()}", "allowed_ip=198.18.0.0/255.255.0.0"],
    [f"public_key={PK1.hex()}", "allowed_ip=fe80::%eth0/64"],
    [f"public_key={PK1.hex()}", "allowed_ip=-198.18.0.0/24"],
    [f"public_key={PK1.hex()}", "protocol_version=2"],
    [f"public_key={PK1.hex()}", "protocol_version=01"],
    [f"public_key={PK1.hex()}", "last_handshake_time_sec=0"],  # a get key, not a set key
    ["public_key=" + "1" * 63],
]
# refused here, accepted by wireguard-go (it applies lines one by one: the last wins)
STRICTER = [
    ["listen_port=1", "listen_port=2"],
    [f"public_key={PK1.hex()}", "endpoint=198.18.0.1:1", "endpoint=198.18.0.1:2"],
    [f"public_key={PK1.hex()}", "endpoint=198.18.0.1:0"],  # a port nothing can be sent to
]


@pytest.mark.parametrize("lines", BAD_SETS + STRICTER)
def test_parse_set_refuses(lines: list[str]) -> None:
    with pytest.raises(UapiError) as e:
        parse_set(lines)
    assert e.value.errno == (errno.EPROTO if "=" not in "".join(lines) else errno.EINVAL)
    assert "\n" not in str(e.value)


# --------------------------------------------------------------------------- generated values

keys = st.binary(min_size=32, max_size=32)
POOL_KEYS = [bytes([i]) * 32 for i in range(0x41, 0x46)]
POOL_NETS = [
    net(n)
    for n in (
        "198.18.1.0/24",
        "198.18.1.0/25",
        "198.18.2.7/32",
        "0.0.0.0/0",
        "fd00::/8",
        "fd00:1::/64",
        "::/0",
        "198.19.0.0/16",
    )
]


@st.composite
def any_networks(draw: st.DrawFn) -> Net:
    addr = draw(st.ip_addresses())
    return ipaddress.ip_network((addr, draw(st.integers(0, addr.max_prefixlen))), strict=False)


@st.composite
def endpoints(draw: st.DrawFn) -> tuple[str, int]:
    port = draw(st.integers(1, 65535))
    if draw(st.booleans()):
        return str(draw(st.ip_addresses(v=4, network="198.18.0.0/15"))), port
    return str(draw(st.ip_addresses(v=6, network="fd00::/8"))), port


@st.composite
def peer_updates(draw: st.DrawFn, pool: bool = False) -> PeerUpdate:
    pk = draw(st.sampled_from(POOL_KEYS)) if pool else draw(keys)
    if draw(st.integers(0, 5)) == 0:
        return PeerUpdate(public_key=pk, remove=True)
    nets = st.sampled_from(POOL_NETS) if pool else any_networks()
    return PeerUpdate(
        public_key=pk,
        update_only=draw(st.booleans()),
        preshared_key=draw(st.none() | st.just(bytes(32)) | keys),
        endpoint=draw(st.none() | endpoints()),
        persistent_keepalive=draw(st.none() | st.integers(0, 65535)),
        replace_allowed_ips=draw(st.booleans()),
        allowed_ips=tuple(draw(st.lists(nets, max_size=4))),
        protocol_version=draw(st.none() | st.just(1)),
    )


@st.composite
def set_requests(draw: st.DrawFn, pool: bool = False) -> SetRequest:
    return SetRequest(
        private_key=draw(st.none() | st.just(bytes(32)) | keys),
        listen_port=draw(
            st.none() | (st.integers(40000, 40999) if pool else st.integers(0, 65535))
        ),
        fwmark=draw(st.none() | st.integers(0, 2**32 - 1)),
        replace_peers=draw(st.integers(0, 4)) == 0,
        peers=tuple(draw(st.lists(peer_updates(pool), max_size=4))),
    )


@st.composite
def states(draw: st.DrawFn) -> UapiState:
    pks = draw(st.lists(keys, max_size=4, unique=True))
    peers = []
    taken: set[Net] = set()  # an allowed IP belongs to one peer
    for pk in pks:
        ips = [n for n in draw(st.lists(any_networks(), max_size=4, unique=True)) if n not in taken]
        taken.update(ips)
        peers.append(
            UapiPeer(
                public_key=pk,
                preshared_key=draw(st.none() | keys.filter(any)),
                endpoint=draw(st.none() | endpoints()),
                last_handshake=draw(
                    st.just(0.0) | st.floats(1.0, 4e9, allow_nan=False, allow_infinity=False)
                ),
                tx_bytes=draw(st.integers(0, 2**64 - 1)),
                rx_bytes=draw(st.integers(0, 2**64 - 1)),
                persistent_keepalive=draw(st.integers(0, 65535)),
                allowed_ips=tuple(ips),
            )
        )
    return UapiState(
        private_key=draw(st.none() | keys.filter(any)),
        listen_port=draw(st.integers(0, 65535)),
        fwmark=draw(st.integers(0, 2**32 - 1)),
        peers=tuple(peers),
    )


@given(set_requests())
def test_set_round_trip(req: SetRequest) -> None:
    text = format_set(req)
    assert text.startswith("set=1\n") and text.endswith("\n\n")
    assert parse_set(text.split("\n")[1:-2]) == req


@given(states())
def test_get_reads_back(state: UapiState) -> None:
    dev, peers = read_get(format_get(state))
    if state.private_key is None:
        assert "private_key" not in dev
    else:
        assert bytes.fromhex(dev["private_key"]) == state.private_key
    assert int(dev["listen_port"]) == state.listen_port
    assert int(dev.get("fwmark", "0")) == state.fwmark
    assert set(peers) == {p.public_key.hex() for p in state.peers}
    for p in state.peers:
        got = peers[p.public_key.hex()]
        assert bytes.fromhex(got["preshared_key"]) == (p.preshared_key or bytes(32))
        assert got["protocol_version"] == "1"
        if p.endpoint is None:
            assert "endpoint" not in got
        else:
            host, port = got["endpoint"].rsplit(":", 1)
            assert (ipaddress.ip_address(host.strip("[]")), int(port)) == (
                ipaddress.ip_address(p.endpoint[0]),
                p.endpoint[1],
            )
            assert host.startswith("[") == (":" in p.endpoint[0])
        sec, nsec = int(got["last_handshake_time_sec"]), int(got["last_handshake_time_nsec"])
        assert 0 <= nsec < 10**9
        assert abs(sec + nsec / 1e9 - p.last_handshake) <= 1e-6 * max(1.0, p.last_handshake)
        assert (int(got["tx_bytes"]), int(got["rx_bytes"])) == (p.tx_bytes, p.rx_bytes)
        assert int(got["persistent_keepalive_interval"]) == p.persistent_keepalive
        assert got["allowed_ip"] == set(p.allowed_ips)


@given(states())
def test_get_answer_as_set_request_rebuilds_the_configuration(state: UapiState) -> None:
    """A get answer without its statistics is a set request that, applied to an
    empty interface, gives back the configuration (the private key clamped)."""
    stats = ("last_handshake_time_sec", "last_handshake_time_nsec", "tx_bytes", "rx_bytes")
    lines = [
        line
        for line in format_get(state).split("\n")
        if line and not line.startswith(stats) and line != "errno=0"
    ]
    got = apply_set(UapiState(), parse_set(lines))
    assert got.private_key == (None if state.private_key is None else clamp(state.private_key))
    assert (got.listen_port, got.fwmark) == (state.listen_port, state.fwmark)
    assert got.peers == tuple(
        UapiPeer(
            public_key=p.public_key,
            preshared_key=p.preshared_key,
            endpoint=p.endpoint,
            persistent_keepalive=p.persistent_keepalive,
            allowed_ips=p.allowed_ips,
        )
        for p in state.peers
    )


def clamp(k: bytes) -> bytes:
    b = bytearray(k)
    b[0] &= 248
    b[31] = (b[31] & 127) | 64
    return bytes(b)


def test_handshake_time_edges() -> None:
    def sec_nsec(t: float) -> tuple[str, str]:
        _, peers = read_get(format_get(UapiState(peers=(UapiPeer(PK1, last_handshake=t),))))
        p = peers[PK1.hex()]
        return p["last_handshake_time_sec"], p["last_handshake_time_nsec"]

    assert sec_nsec(0.0) == ("0", "0")
    assert sec_nsec(-5.0) == ("0", "0")
    assert sec_nsec(float("nan")) == ("0", "0")
    assert sec_nsec(1700000000.5) == ("1700000000", "500000000")
    assert sec_nsec(1700000000.9999999999) == ("1700000001", "0")


# --------------------------------------------------------------------------- corrupt input

LINE_TOKENS = [
    "public_key=",
    "private_key=",
    "allowed_ip=",
    "endpoint=",
    "remove=true",
    "update_only=",
    "replace_peers=true",
    "listen_port=",
    "fwmark=",
    "protocol_version=1",
    "preshared_key=",
    "persistent_keepalive_interval=",
    "=",
    "[",
    "]",
    ":",
    "/",
    "%",
    "1",
    "0",
    "65536",
    "-",
    "fd00::1",
    "198.18.0.1",
    "11" * 32,
    "zz" * 32,
    "\x00",
    "\r",
    "é",
    "true",
    " ",
    "9" * 30,
]


@given(st.lists(st.text(max_size=80), max_size=12))
def test_fuzz_parse_set_text(lines: list[str]) -> None:
    try:
        parse_set(lines)
    except UapiError as e:
        assert e.errno in (errno.EINVAL, errno.EPROTO)


@given(st.lists(st.lists(st.sampled_from(LINE_TOKENS), max_size=6).map("".join), max_size=12))
def test_fuzz_parse_set_tokens(lines: list[str]) -> None:
    try:
        parse_set(lines)
    except UapiError as e:
        assert e.errno in (errno.EINVAL, errno.EPROTO)


@given(set_requests(), st.data())
def test_fuzz_parse_set_mutated(req: SetRequest, data: st.DataObject) -> None:
    lines = format_set(req).split("\n")[1:-2]
    if not lines:
        return
    n = data.draw(st.integers(0, len(lines) - 1))
    at = data.draw(st.integers(0, len(lines[n])))
    cut = data.draw(st.integers(0, 3))
    lines[n] = lines[n][:at] + data.draw(st.sampled_from(LINE_TOKENS)) + lines[n][at + cut :]
    try:
        parse_set(lines)
    except UapiError as e:
        assert e.errno in (errno.EINVAL, errno.EPROTO)


# --------------------------------------------------------------------------- framing, respond


class DictHandler:
    """Keeps the interface in plain dicts and records every set request; the
    semantics written out independently of ``apply_set``."""

    def __init__(self) -> None:
        self.dev: dict[str, Any] = {"private_key": None, "listen_port": 51820, "fwmark": 0}
        self.peers: dict[bytes, dict[str, Any]] = {}
        self.requests: list[SetRequest] = []
        self.refuse: UapiError | None = None
        self.gets = 0

    def uapi_get(self) -> UapiState:
        self.gets += 1
        return UapiState(
            private_key=self.dev["private_key"],
            listen_port=self.dev["listen_port"],
            fwmark=self.dev["fwmark"],
            peers=tuple(
                UapiPeer(
                    public_key=pk,
                    preshared_key=p["psk"],
                    endpoint=p["endpoint"],
                    last_handshake=p["handshake"],
                    tx_bytes=p["tx"],
                    rx_bytes=p["rx"],
                    persistent_keepalive=p["keepalive"],
                    allowed_ips=tuple(p["ips"]),
                )
                for pk, p in self.peers.items()
            ),
        )

    def uapi_set(self, req: SetRequest) -> None:
        if self.refuse is not None:
            raise self.refuse
        self.requests.append(req)
        if req.private_key is not None:
            self.dev["private_key"] = req.private_key if any(req.private_key) else None
        if req.listen_port is not None:
            self.dev["listen_port"] = req.listen_port
        if req.fwmark is not None:
            self.dev["fwmark"] = req.fwmark
        if req.replace_peers:
            self.peers.clear()
        for u in req.peers:
            if u.remove:
                self.peers.pop(u.public_key, None)
                continue
            if u.public_key not in self.peers:
                if u.update_only:
                    continue
                self.peers[u.public_key] = {
                    "psk": None, "endpoint": None, "handshake": 0.0, "tx": 0, "rx": 0,
                    "keepalive": 0, "ips": [],
                }  # fmt: skip
            p = self.peers[u.public_key]
            if u.preshared_key is not None:
                p["psk"] = u.preshared_key if any(u.preshared_key) else None
            if u.endpoint is not None:
                p["endpoint"] = u.endpoint
            if u.persistent_keepalive is not None:
                p["keepalive"] = u.persistent_keepalive
            if u.replace_allowed_ips:
                p["ips"] = []
            for n in u.allowed_ips:
                for other in self.peers.values():
                    if n in other["ips"]:
                        other["ips"].remove(n)
                p["ips"].append(n)


@given(st.lists(set_requests(pool=True), min_size=1, max_size=5))
def test_apply_set_matches_plain_dicts(reqs: list[SetRequest]) -> None:
    h = DictHandler()
    state = h.uapi_get()
    for req in reqs:
        h.uapi_set(req)
        state = apply_set(state, req)
    want = h.uapi_get()
    assert state.listen_port == want.listen_port and state.fwmark == want.fwmark
    assert state.private_key == (None if want.private_key is None else clamp(want.private_key))

    def peers(s: UapiState) -> dict[bytes, tuple[UapiPeer, frozenset[Net]]]:
        # the order of allowed IPs means nothing (wireguard-go reports its trie's order)
        return {
            p.public_key: (replace(p, allowed_ips=()), frozenset(p.allowed_ips)) for p in s.peers
        }

    assert peers(state) == peers(want)


@given(
    st.lists(
        st.sampled_from(["get=1\n\n", "set=1\nlisten_port=7\n\n", "bad\n\n", "\n"]), max_size=8
    ),
    st.data(),
)
def test_reader_any_chunking(requests: list[str], data: st.DataObject) -> None:
    stream = "".join(requests).encode()
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    r = RequestReader()
    got = []
    last = 0
    for cut in [*cuts, len(stream)]:
        r.feed(stream[last:cut])
        last = cut
        while (lines := r.next()) is not None:
            got.append(lines)
    want = [x.split("\n")[:-2] if x != "\n" else [] for x in requests]
    assert got == want and r.pending == 0 and not r.overflow


def test_reader_overflow() -> None:
    r = RequestReader(limit=100)
    r.feed(b"set=1\n" + b"x" * 100)
    assert r.next() is None and r.overflow
    r = RequestReader(limit=100)
    r.feed(b"set=1\n" + b"x=1\n" * 30 + b"\n")  # a whole request, but too big
    assert r.next() is None and r.overflow
    r = RequestReader(limit=100)
    r.feed(b"get=1\n\n" + b"y" * 99)
    assert r.next() == ["get=1"] and r.next() is None and not r.overflow


def test_respond() -> None:
    h = DictHandler()
    assert respond(["get=1"], h).endswith("errno=0\n\n") and h.gets == 1
    assert respond(["get=1", "x=1"], h) == "errno=22\n\n"  # a get's errno is positive
    assert respond(["set=1", "listen_port=9"], h) == "errno=0\n\n"
    assert h.dev["listen_port"] == 9
    assert respond(["set=1", "listen_port=9", "bogus=1"], h) == "errno=-22\n\n"
    assert len(h.requests) == 1  # a refused request changes nothing
    assert respond([], h) == "errno=-22\n\n"
    assert respond(["put=1"], h) == "errno=-22\n\n"
    assert respond(["\x00invalid utf-8"], h) == "errno=-22\n\n"
    h.refuse = UapiError(errno.EADDRINUSE, "port in use")
    assert respond(["set=1", "listen_port=1"], h) == f"errno=-{errno.EADDRINUSE}\n\n"

    class Broken(DictHandler):
        def uapi_get(self) -> UapiState:
            raise RuntimeError("bug")

    assert respond(["get=1"], Broken()) == f"errno={errno.EIO}\n\n"
    assert respond(["set=1"], Broken()) == "errno=0\n\n"


# --------------------------------------------------------------------------- the server


def _talk(path: Path | str, data: bytes, answers: int = 1, timeout: float = 10.0) -> str:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(str(path))
    try:
        s.sendall(data)
        buf = b""
        while buf.count(b"\n\n") < answers:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
        return buf.decode()
    finally:
        s.close()


@pytest.fixture
def sock_dir(tmp_path: Path) -> Path:
    return tmp_path / "run" / "wg"


def test_server_socket_file(sock_dir: Path) -> None:
    h = DictHandler()
    srv = UapiServer("nt0", h, sock_dir=sock_dir).start()
    try:
        st_ = os.stat(srv.path)
        assert oct(st_.st_mode & 0o777) == oct(0o600)
        assert oct(os.stat(sock_dir).st_mode & 0o777) == oct(0o755)
        assert srv.path == sock_dir / "nt0.sock"
        assert os.listdir(sock_dir) == ["nt0.sock"]  # no temporary name left behind
    finally:
        srv.close()
    assert not srv.path.exists()
    srv.close()  # idempotent


def test_server_several_requests_and_bad_ones(sock_dir: Path) -> None:
    h = DictHandler()
    with UapiServer("nt1", h, sock_dir=sock_dir) as srv:
        out = _talk(
            srv.path,
            b"get=1\n\nset=1\nlisten_port=4242\n\nnonsense\n\nset=1\nbogus=1\n\nget=1\n\n",
            answers=5,
        )
        answers = out.split("\n\n")[:-1]
        assert len(answers) == 5
        assert answers[0].endswith("errno=0") and "listen_port=51820" in answers[0]
        assert answers[1:4] == ["errno=0", "errno=-22", "errno=-22"]
        assert "listen_port=4242" in answers[4] and answers[4].endswith("errno=0")
        assert h.dev["listen_port"] == 4242 and len(h.requests) == 1
        assert _talk(srv.path, b"\xff\xfe\n\nget=1\n\n", answers=2).startswith("errno=-22\n\n")


def test_server_stale_socket_replaced(sock_dir: Path) -> None:
    sock_dir.mkdir(parents=True)
    path = sock_dir / "nt2.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()  # the file stays; connect() is refused: a killed process's left-over
    with pytest.raises(ConnectionRefusedError):
        _talk(path, b"get=1\n\n")
    with UapiServer("nt2", DictHandler(), sock_dir=sock_dir) as srv:
        assert _talk(srv.path, b"get=1\n\n").endswith("errno=0\n\n")
    assert not path.exists()


def test_server_live_socket_refused(sock_dir: Path) -> None:
    sock_dir.mkdir(parents=True)
    path = sock_dir / "nt3.sock"
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    live.bind(str(path))
    live.listen(1)
    try:
        with pytest.raises(ConfigError, match="interface nt3 is in use"):
            UapiServer("nt3", DictHandler(), sock_dir=sock_dir).start()
        assert path.exists()
        with UapiServer("nt3", DictHandler(), sock_dir=sock_dir) as first:
            pass  # (the live one is still there: this would have refused too)
    except ConfigError:
        pass
    finally:
        live.close()
        path.unlink()
    with UapiServer("nt3", DictHandler(), sock_dir=sock_dir) as first:
        with pytest.raises(ConfigError, match="in use"):
            UapiServer("nt3", DictHandler(), sock_dir=sock_dir).start()
        assert _talk(first.path, b"get=1\n\n").endswith("errno=0\n\n")


def test_server_not_a_socket(sock_dir: Path) -> None:
    sock_dir.mkdir(parents=True)
    (sock_dir / "nt4.sock").write_text("precious")
    with pytest.raises(ConfigError, match="not a socket"):
        UapiServer("nt4", DictHandler(), sock_dir=sock_dir).start()
    assert (sock_dir / "nt4.sock").read_text() == "precious"
    with pytest.raises(ConfigError, match="not a valid interface name"):
        UapiServer("a/b", DictHandler(), sock_dir=sock_dir)


def test_server_close_leaves_a_newer_file(sock_dir: Path) -> None:
    srv = UapiServer("nt5", DictHandler(), sock_dir=sock_dir).start()
    srv.path.unlink()
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    other.bind(str(srv.path))
    try:
        srv.close()
        assert srv.path.exists()  # not ours any more: left alone
    finally:
        other.close()


def _closed_by_server(s: socket.socket, timeout: float = 20.0) -> bool:
    s.settimeout(timeout)
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def test_server_drops_oversized_request(sock_dir: Path) -> None:
    with UapiServer("nt6", DictHandler(), sock_dir=sock_dir) as srv:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(str(srv.path))
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(b"set=1\n" + b"allowed_ip=198.18.0.0/24\n" * ((1 << 20) // 25 + 10))
        assert _closed_by_server(s)
        s.close()
        assert _talk(srv.path, b"get=1\n\n").endswith("errno=0\n\n")  # still serving


def test_server_drops_silent_client(sock_dir: Path) -> None:
    with UapiServer("nt7", DictHandler(), sock_dir=sock_dir, idle_timeout=0.2) as srv:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(str(srv.path))
        s.sendall(b"get=1\n")  # and then nothing
        assert _closed_by_server(s)
        s.close()
        assert _talk(srv.path, b"get=1\n\n").endswith("errno=0\n\n")
    assert UapiServer("x", DictHandler()).idle_timeout == 5.0
    assert UapiServer("x", DictHandler()).max_request == 1 << 20


def test_server_many_clients(sock_dir: Path) -> None:
    h = DictHandler()
    with UapiServer("nt8", h, sock_dir=sock_dir) as srv:
        slow = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        slow.connect(str(srv.path))
        slow.sendall(b"set=1\nlisten_port=1")  # a half request must not hold others up
        results: list[str] = []

        def client(i: int) -> None:
            results.append(_talk(srv.path, f"set=1\nfwmark={i}\n\nget=1\n\n".encode(), 2))

        threads = [threading.Thread(target=client, args=(i,)) for i in range(1, 21)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert len(results) == 20 and all(r.startswith("errno=0\n\n") for r in results)
        slow.sendall(b"\n\n")
        slow.settimeout(10)
        assert slow.recv(100) == b"errno=0\n\n"
        slow.close()
        assert h.dev["listen_port"] == 1 and len(h.requests) == 21


def test_server_lock_serialises_handler(sock_dir: Path) -> None:
    h = DictHandler()
    with UapiServer("nt9", h, sock_dir=sock_dir) as srv:
        answer: list[str] = []
        with srv.lock:
            t = threading.Thread(target=lambda: answer.append(_talk(srv.path, b"get=1\n\n")))
            t.start()
            t.join(0.3)
            assert h.gets == 0 and not answer  # the handler waits for the lock
        t.join(10)
        assert h.gets == 1 and answer[0].endswith("errno=0\n\n")


# --------------------------------------------------------------------------- the real wg tool


def _need_root_wg() -> None:
    if os.geteuid() != 0:
        pytest.skip("not root (wg looks for sockets in /var/run/wireguard only)")
    if WG is None:
        pytest.skip("wg is not installed")


@pytest.fixture
def served() -> Iterator[tuple[str, DictHandler]]:
    _need_root_wg()
    name = f"nof{os.getpid() % 100000}u"
    h = DictHandler()
    srv = UapiServer(name, h)
    try:
        srv.start()
        yield name, h
    finally:
        srv.close()
        assert not os.path.exists(f"{SOCK_DIR}/{name}.sock")


def wg(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([str(WG), *args], capture_output=True, text=True, timeout=30)
    if check:
        assert r.returncode == 0, r.stderr
    return r


def read_dump(text: str) -> tuple[list[str], dict[bytes, list[str]]]:
    lines = text.rstrip("\n").split("\n")
    return lines[0].split("\t"), {
        base64.b64decode(x.split("\t")[0]): x.split("\t") for x in lines[1:]
    }


def endpoint_of(text: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int] | None:
    if text == "(none)":
        return None
    host, port = text.rsplit(":", 1)
    return ipaddress.ip_address(host.strip("[]")), int(port)


def check_dump_matches(name: str, state: UapiState) -> None:
    head, peers = read_dump(wg("show", name, "dump").stdout)
    if state.private_key is None:
        assert head[:2] == ["(none)", "(none)"]
    else:
        assert base64.b64decode(head[0]) == state.private_key
        pub = X25519PrivateKey.from_private_bytes(state.private_key).public_key()
        assert base64.b64decode(head[1]) == pub.public_bytes_raw()
    assert int(head[2]) == state.listen_port
    assert head[3] == ("off" if state.fwmark == 0 else f"0x{state.fwmark:x}")
    assert set(peers) == {p.public_key for p in state.peers}
    for p in state.peers:
        f = peers[p.public_key]
        assert f[1] == ("(none)" if p.preshared_key is None else b64(p.preshared_key))
        want_ep = (
            None if p.endpoint is None else (ipaddress.ip_address(p.endpoint[0]), p.endpoint[1])
        )
        assert endpoint_of(f[2]) == want_ep
        ips = [] if f[3] == "(none)" else [ipaddress.ip_network(x) for x in f[3].split(",")]
        assert ips == list(p.allowed_ips)
        assert int(f[4]) == (int(p.last_handshake) if p.last_handshake > 0 else 0)
        assert (int(f[5]), int(f[6])) == (p.rx_bytes, p.tx_bytes)
        assert f[7] == ("off" if p.persistent_keepalive == 0 else str(p.persistent_keepalive))


@pytest.mark.kernel
@settings(max_examples=30, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(state=states())
def test_wg_show_reads_what_we_serve(served: tuple[str, DictHandler], state: UapiState) -> None:
    name, h = served
    h.uapi_get = lambda: state  # type: ignore[method-assign]
    check_dump_matches(name, state)
    if state.private_key is None:
        return  # showconf then has no PrivateKey: not a file parse_config takes
    # showconf writes a wg-quick file: what parse_config reads
    cfg = parse_config(wg("showconf", name).stdout, name)
    assert cfg.interface.private_key == state.private_key
    assert (cfg.interface.listen_port or 0) == state.listen_port
    assert (cfg.interface.fwmark or 0) == state.fwmark
    assert [p.public_key for p in cfg.peers] == [p.public_key for p in state.peers]
    for mine, theirs in zip(state.peers, cfg.peers, strict=True):
        assert theirs.preshared_key == mine.preshared_key
        ep = mine.endpoint
        assert theirs.endpoint == (
            None if ep is None else (str(ipaddress.ip_address(ep[0])), ep[1])
        )
        assert theirs.persistent_keepalive == mine.persistent_keepalive
        assert theirs.allowed_ips == mine.allowed_ips


def test_showconf_without_private_key_is_refused_by_us() -> None:
    # wg showconf prints no PrivateKey when there is none; that is not a file we run
    with pytest.raises(ConfigError, match="PrivateKey: missing"):
        parse_config("[Interface]\nListenPort = 1\n", "x")


@pytest.mark.kernel
def test_wg_set_commands(served: tuple[str, DictHandler], tmp_path: Path) -> None:
    name, h = served
    pk = bytes([0x5A]) * 32
    wg(
        "set", name, "peer", b64(pk), "allowed-ips", "198.18.5.0/24", "endpoint",
        "198.18.0.2:51820", "persistent-keepalive", "25",
    )  # fmt: skip
    assert h.requests[-1] == SetRequest(
        peers=(
            PeerUpdate(
                public_key=pk,
                endpoint=("198.18.0.2", 51820),
                persistent_keepalive=25,
                replace_allowed_ips=True,
                allowed_ips=(net("198.18.5.0/24"),),
            ),
        )
    )
    check_dump_matches(name, h.uapi_get())

    wg("set", name, "peer", b64(pk), "endpoint", "[fd00::2]:4500", "allowed-ips", "")
    assert h.requests[-1] == SetRequest(
        peers=(PeerUpdate(public_key=pk, endpoint=("fd00::2", 4500), replace_allowed_ips=True),)
    )
    assert h.peers[pk]["ips"] == [] and h.peers[pk]["endpoint"] == ("fd00::2", 4500)

    psk = tmp_path / "psk"
    psk.write_text(b64(bytes([7]) * 32) + "\n")
    wg("set", name, "peer", b64(pk), "preshared-key", str(psk))
    assert h.requests[-1].peers[0].preshared_key == bytes([7]) * 32
    wg("set", name, "peer", b64(pk), "preshared-key", "/dev/null")
    assert h.requests[-1].peers[0].preshared_key == bytes(32)  # all zero: remove
    assert h.peers[pk]["psk"] is None

    h.peers[pk].update(handshake=time.time() - 30, tx=1234, rx=5678)
    check_dump_matches(name, h.uapi_get())
    assert (
        "latest handshake: 30 seconds ago" in wg("show", name).stdout
        or "31 seconds" in wg("show", name).stdout
    )

    wg("set", name, "peer", b64(pk), "remove")
    assert h.requests[-1] == SetRequest(peers=(PeerUpdate(public_key=pk, remove=True),))
    assert h.peers == {}

    priv = bytes(range(100, 132))
    key = tmp_path / "private"
    key.write_text(b64(priv) + "\n")
    wg("set", name, "private-key", str(key), "listen-port", "40123")
    assert h.requests[-1] == SetRequest(private_key=priv, listen_port=40123)
    wg("set", name, "fwmark", "0x20")
    assert h.requests[-1] == SetRequest(fwmark=0x20)
    wg("set", name, "fwmark", "off")
    assert h.requests[-1] == SetRequest(fwmark=0)
    check_dump_matches(name, h.uapi_get())
    n = len(h.requests)

    h.refuse = UapiError(errno.EADDRINUSE, "port taken")
    r = wg("set", name, "listen-port", "1", check=False)
    assert r.returncode != 0 and "Address already in use" in r.stderr
    assert len(h.requests) == n
    h.refuse = None
    r = wg("set", name, "peer", b64(pk), "endpoint", "198.18.0.2:0", check=False)
    assert r.returncode != 0 and "Invalid argument" in r.stderr  # our EINVAL, as wg reads it

    def refuse_get() -> UapiState:
        raise UapiError(errno.EACCES, "no")

    h.uapi_get = refuse_get  # type: ignore[method-assign]
    r = wg("show", name, check=False)
    assert r.returncode != 0 and "Permission denied" in r.stderr


# --------------------------------------------------------------------------- wireguard-go


class WgGoSocket:
    """One connection to a wireguard-go's UAPI socket."""

    def __init__(self, path: str) -> None:
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(10)
        self.s.connect(path)
        self.buf = b""

    def ask(self, request: str) -> str:
        self.s.sendall(request.encode())
        while True:
            at = self.buf.find(b"\n\n")
            if at >= 0 and b"errno=" in self.buf[: at + 2]:
                out, self.buf = self.buf[: at + 2], self.buf[at + 2 :]
                return out.decode()
            chunk = self.s.recv(65536)
            assert chunk, "wireguard-go closed the connection"
            self.buf += chunk


@pytest.fixture(scope="module")
def wggo() -> Iterator[WgGoSocket]:
    if os.geteuid() != 0:
        pytest.skip("not root (wireguard-go needs a TUN in a namespace of ours)")
    if WG_GO is None:
        pytest.skip("wireguard-go is not installed")
    from netoffload.testing.netns import Testbed, tun_available

    why = tun_available()
    if why:
        pytest.skip(why)
    name = f"nof{os.getpid() % 100000}g"
    path = f"{SOCK_DIR}/{name}.sock"
    with Testbed() as tb:
        host = tb.host("uapi")
        env = dict(os.environ, WG_PROCESS_FOREGROUND="1", LOG_LEVEL="silent")
        proc = host.popen(
            [WG_GO, name], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        conn = None
        try:
            deadline = time.monotonic() + 10
            while not os.path.exists(path):
                assert proc.poll() is None, f"wireguard-go exited {proc.returncode}"
                assert time.monotonic() < deadline, "wireguard-go made no socket"
                time.sleep(0.02)
            conn = WgGoSocket(path)
            yield conn
        finally:
            if conn is not None:
                conn.s.close()
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            if os.path.exists(path):
                os.unlink(path)


RESET = SetRequest(private_key=bytes(32), listen_port=40000, fwmark=0, replace_peers=True)


@pytest.mark.kernel
@settings(max_examples=80, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(reqs=st.lists(set_requests(pool=True), min_size=1, max_size=4))
def test_same_answers_as_wireguard_go(wggo: WgGoSocket, reqs: list[SetRequest]) -> None:
    """Each request goes to wireguard-go and through parse_set + apply_set; after
    each, wireguard-go's get answer and format_get of ours say the same (as read
    by an independent reader: peers and allowed IPs as sets)."""
    assert wggo.ask(format_set(RESET)) == "errno=0\n\n"
    state = apply_set(UapiState(), RESET)
    for req in reqs:
        text = format_set(req)
        assert wggo.ask(text) == "errno=0\n\n", text
        state = apply_set(state, parse_set(text.split("\n")[1:-2]))
        assert read_get(wggo.ask("get=1\n\n")) == read_get(format_get(state)), text


@pytest.mark.kernel
@pytest.mark.parametrize("lines", [x for x in BAD_SETS if x != [""]])
def test_refused_as_wireguard_go_refuses(wggo: WgGoSocket, lines: list[str]) -> None:
    """What we refuse, wireguard-go refuses, with the same answer (errno=-22 or -71)."""
    request = "set=1\n" + "".join(x + "\n" for x in lines) + "\n"
    assert wggo.ask(request) == respond(["set=1", *lines], DictHandler())
