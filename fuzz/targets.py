"""The fuzz targets: one per parser or decoder that reads bytes from outside.

Each target is a ``Target``: ``make()`` does the expensive setup once and
returns the function libFuzzer calls with each input; ``seeds()`` builds the
seed inputs from the test fixtures (the tests' byte builders, ``examples/``,
the packet helpers): no blob is checked in. A target fails ("crashes") when
the code under test raises anything but the error its API documents (that
one is caught inside the target; ``Target.what`` names it), when an invariant
that an independent check states does not hold (``AssertionError``), or when
one input takes longer than libFuzzer's ``-timeout`` (a hang).

Inputs that carry several packets or messages use ``split``: a 2-byte
big-endian length before each part (the last part may be cut short).

The setup functions import ``netoffload`` lazily, so that the runner can
import them under ``atheris.instrument_imports`` (coverage of netoffload only).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import random
import struct
import sys
import textwrap
import tomllib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
EXAMPLES = ROOT / "examples"

OneInput = Callable[[bytes], None]


@dataclass(frozen=True)
class Target:
    name: str
    what: str  # the code under test, and the errors it may raise
    make: Callable[[], OneInput]
    seeds: Callable[[], Iterable[bytes]]
    max_len: int = 4096
    #: executions in the CI smoke (tests/test_fuzz_smoke.py); fewer for slow targets
    smoke_runs: int = 10_000


def split(data: bytes, limit: int = 64) -> list[bytes]:
    """Parts of ``data``, each after a 2-byte big-endian length (``join``'s inverse)."""
    out: list[bytes] = []
    pos = 0
    while pos + 2 <= len(data) and len(out) < limit:
        n = int.from_bytes(data[pos : pos + 2], "big")
        out.append(data[pos + 2 : pos + 2 + n])
        pos += 2 + n
    return out


def join(parts: Iterable[bytes]) -> bytes:
    return b"".join(len(p).to_bytes(2, "big") + p for p in parts)


def _tests_on_path() -> None:
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))


def _packets(n: int = 24, seed: int = 0) -> list[bytes]:
    """IP packets of every kind the helpers make (v4/v6, TCP/UDP, options, ext headers)."""
    from netoffload.testing.packets import synthetic_flows, tcp_packet, udp_packet

    out = synthetic_flows(n, sizes=(40, 64, 300), seed=seed, n_flows=8)
    out += [
        tcp_packet(4, b"x" * 10, options=b"\x02\x04\x05\xb4", ip_options=b"\x01\x01\x01\x00"),
        tcp_packet(6, b"y" * 7, v6_ext=[(0, 8), (60, 16)]),
        udp_packet(6, b"z" * 5, v6_ext=[(43, 8)]),
        udp_packet(4, b"w" * 3, flags_frag=0x2000),
        tcp_packet(4, b"v", ethernet=True),
        udp_packet(6, b"u" * 20, ethernet=True),
    ]
    return out


# ======================================================================= pcap
def _pcap() -> OneInput:
    from netoffload.errors import CaptureError
    from netoffload.wire.parse import parse_batch
    from netoffload.wire.pcap import (
        SUPPORTED_LINKTYPES,
        CaptureFault,
        PcapWriter,
        read_capture,
        records_to_batch,
    )

    def one(data: bytes) -> None:
        try:
            recs = read_capture(data)
        except CaptureFault as e:
            recs = e.records
            assert 1 <= e.record == len(recs) + 1 and 0 <= e.offset <= len(data), e
        ok = [r for r in recs if r.linktype in SUPPORTED_LINKTYPES]
        if ok:
            parse_batch(records_to_batch(ok))
        other = [r for r in recs if r.linktype not in SUPPORTED_LINKTYPES]
        if other:
            try:
                records_to_batch(other)
                raise AssertionError("records of an unsupported link type made a batch")
            except CaptureError:
                pass
        # what we read, written as pcap and read again, is the same packets
        if recs:
            f = io.BytesIO()
            w = PcapWriter(f, recs[0].linktype & 0x0FFFFFFF, nanosecond=True)
            for r in recs:
                w.write(r.data, r.ts_ns, r.orig_len)
            back = read_capture(f.getvalue())
            assert [r.data for r in back] == [r.data for r in recs]

    return one


def _pcap_seeds() -> Iterator[bytes]:
    import tempfile

    _tests_on_path()
    import scapy.all as S

    from wire.test_pcap import (  # type: ignore[import-not-found]
        handmade,
        scapy_packets,
        valid_capture,
    )

    yield handmade()[0]
    for kind in range(4):
        try:
            yield valid_capture(kind, [b"\x45" + bytes(27), b"ab", b""])
        except Exception:
            continue
    with tempfile.TemporaryDirectory() as d:
        for name, writer in (("a.pcap", S.PcapWriter), ("b.pcapng", S.PcapNgWriter)):
            path = Path(d) / name
            w = writer(str(path))
            for p in scapy_packets(4):
                w.write(p)
            w.close()
            yield path.read_bytes()


# ====================================================================== parse
def _parse() -> OneInput:
    import numpy as np

    from netoffload.batch import Batch, XFlag
    from netoffload.wire import WireError
    from netoffload.wire.ethernet import Ethernet
    from netoffload.wire.ipv4 import IPv4
    from netoffload.wire.ipv6 import IPv6
    from netoffload.wire.parse import parse_batch, parse_subset
    from netoffload.wire.tcp import TCP
    from netoffload.wire.udp import UDP

    def one(data: bytes) -> None:
        if not data:
            return
        mode, pkts = data[0], split(data[1:], 16)
        if not pkts:
            return
        b = Batch.from_packets(pkts)
        eth: bool | None = (None, True, False)[mode % 3]
        if eth is None:  # per packet, from the bits of the mode byte
            flags = np.array([(mode >> (2 + i % 6)) & 1 for i in range(len(pkts))], bool)
            b.ext.xflags[flags] |= np.uint8(XFlag.ETHERNET)
        reason = parse_batch(b, eth)
        e = b.ext
        parsed = (e.xflags & XFlag.PARSED) != 0
        assert not (parsed & (reason != 0)).any()
        for i in np.flatnonzero(parsed).tolist():
            n = len(pkts[i])
            l3, l4, hl = int(e.l3_off[i]), int(e.l4_off[i]), int(e.hdr_len[i])
            assert 0 <= l3 < l4 <= hl <= n, (i, l3, l4, hl, n)
            p = pkts[i]
            # the per-packet slow parsers agree with the batch parser
            if e.l3_proto[i] == 4:
                _, ihl = IPv4.parse(p[l3:])
                assert l3 + ihl <= l4
            else:
                IPv6.parse(p[l3:])
            if e.l4_proto[i] == 6 and hl > l4:
                _, doff = TCP.parse(p[l4:])
                assert l4 + doff == hl
            elif e.l4_proto[i] == 17 and hl > l4:
                UDP.parse(p[l4:])
                assert l4 + 8 == hl
        for p in pkts:  # the slow parsers on anything: WireError only
            for h in (Ethernet, IPv4, IPv6, TCP, UDP):
                with contextlib.suppress(WireError):
                    h.parse(p)
        # parse_subset of some packets gives what parse_batch gave them
        if len(pkts) > 1:
            idx = np.arange(0, len(pkts), 2, dtype=np.int64)
            b2 = Batch.from_packets(pkts)
            b2.ext.xflags[:] = e.xflags & np.uint8(XFlag.ETHERNET)
            r2 = parse_subset(b2, idx)
            assert (r2 == reason[idx]).all()
            for f in ("l3_proto", "l4_off", "l4_proto"):
                assert (getattr(b2.ext, f)[idx] == getattr(e, f)[idx]).all(), f

    return one


def _parse_seeds() -> Iterator[bytes]:
    pk = _packets()
    for i in range(0, len(pk), 4):
        yield bytes([i % 3]) + join(pk[i : i + 4])
    yield b"\x00" + join(pk)


# ======================================================================== esp
_SA_DOC: dict[str, Any] = {
    "sa": [
        {
            "spi": 0x1001,
            "algorithm": "aes-gcm-128",
            "key": "2431d098b68e02773c34ddce8efe5c479ebcfc80",
            "src": "198.18.0.1",
            "dst": "198.19.0.1",
            "replay_window": 64,
        },
        {
            "spi": 0x1002,
            "algorithm": "chacha20-poly1305",
            "key": "8742df1ec7e16969e5af1a0390f5d2ba10acdfbcfa76a9c9449868720ffbb6693cf99d93",
            "src": "fd00::1",
            "dst": "fd00::2",
            "esn": True,
            "udp_encap": True,
        },
        {
            "spi": 0x1003,
            "algorithm": "null",
            "integrity": "hmac-sha256-128",
            "integrity_key": "c9800eb206fa73c71c438e25c40d664c5f59b1f33c3380be437c81ccf01204da",
            "src": "198.18.0.1",
            "dst": "198.19.0.1",
            "replay_window": 0,
        },
        {
            "spi": 0x1004,
            "algorithm": "aes-gcm-256",
            "key": "00" * 32 + "01020304",
            "src": "198.18.0.1",
            "dst": "198.19.0.1",
            "udp_encap": True,
            "udp_sport": 4600,
            "udp_dport": 4601,
            "esn": True,
        },
    ]
}


def _esp_seal(plain: bytes, seq: int) -> bytes:
    """An ESP packet of the first SA (AES-GCM-128, IPv4, no ESN) carrying ``plain``
    (inner packet, padding, pad length and next header as the fuzzer gave them),
    built from RFC 4303 / RFC 4106 with the cryptography library only."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    key = bytes.fromhex(_SA_DOC["sa"][0]["key"])
    spi = struct.pack("!I", _SA_DOC["sa"][0]["spi"])
    iv = struct.pack("!Q", seq)
    sealed = AESGCM(key[:16]).encrypt(key[16:] + iv, plain, spi + iv[4:])
    esp = spi + iv[4:] + iv + sealed
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(esp), 0, 0x4000, 64, 50, 0,
                     bytes([198, 18, 0, 1]), bytes([198, 19, 0, 1]))  # fmt: skip
    return ip + esp


def _esp() -> OneInput:
    import numpy as np

    from netoffload.batch import Batch
    from netoffload.sa import parse_sa_doc
    from netoffload.soft.crypto import DecryptTask

    table = parse_sa_doc(_SA_DOC)

    def one(data: bytes) -> None:
        if len(data) < 2:
            return
        mode, parts = data[0], split(data[1:])
        if not parts:
            return
        sealed: list[bytes] = []
        if mode & 1:  # parts are plaintexts for the harness to seal (4-byte seq first)
            pkts = []
            for p in parts:
                seq = int.from_bytes(p[:4].ljust(4, b"\0"), "big")
                sealed.append(p[4:])
                pkts.append(_esp_seal(p[4:], seq))
        else:
            pkts = parts
        if mode & 2:  # one packet again and again: the uniform whole-batch path
            pkts = pkts[:1] * (1 + (mode >> 4))
            sealed = sealed[:1] * len(pkts)
        b = Batch.from_packets(pkts)
        task = DecryptTask(sas=table, non_esp="pass" if mode & 4 else "error")
        sel = np.ones(len(b), np.bool_)
        task.prepare(b, sel)
        b = task.process(b, sel)
        task.settle(b, sel)
        assert len(b) == len(pkts)
        if not sealed:
            return
        alive = b.ext.alive()
        seen: set[bytes] = set()
        for i, plain in enumerate(sealed):
            if not alive[i]:
                continue
            # decrypted: the trailer was right and the packet is the inner one, cut
            # to its IP length when that is shorter (TFC padding, RFC 4303 2.7)
            pad = plain[-2]
            assert plain[-1] in (4, 41) and plain[-2 - pad : -2] == bytes(range(1, pad + 1))
            inner = plain[: -2 - pad]
            assert inner[0] >> 4 == (4 if plain[-1] == 4 else 6)
            tot = 0
            if inner[0] >> 4 == 4 and len(inner) >= 20:
                tot = int.from_bytes(inner[2:4], "big")
            elif inner[0] >> 4 == 6 and len(inner) >= 40:
                tot = 40 + int.from_bytes(inner[4:6], "big")
            want = inner[:tot] if 0 < tot <= len(inner) else inner
            assert bytes(b.packet(i)) == want, (i, plain.hex())
            seq_no = pkts[i][24:28]
            assert seq_no not in seen, "a replayed sequence number was decrypted twice"
            seen.add(seq_no)

    return one


def _esp_seeds() -> Iterator[bytes]:
    import numpy as np

    from netoffload.batch import Batch
    from netoffload.sa import parse_sa_doc
    from netoffload.soft.crypto import EncryptTask

    table = parse_sa_doc(_SA_DOC)
    pk = [p for p in _packets(8) if p[0] >> 4 in (4, 6)]
    for k in range(len(table)):
        b = Batch.from_packets(pk[:4])
        b.ext.sa[:] = k
        out = EncryptTask(sas=table).process(b, np.ones(len(b), np.bool_))
        yield bytes([0]) + join(out.packets())
        yield bytes([2 | 0x30]) + join(out.packets()[:1])
    for p in pk[:4]:
        pad = (-(len(p) + 2)) % 4
        trailer = bytes(range(1, pad + 1)) + bytes([pad, 4 if p[0] >> 4 == 4 else 41])
        yield bytes([1]) + join([struct.pack("!I", 7) + p + trailer])


# ================================================================== wireguard
def _wireguard() -> OneInput:
    import numpy as np

    from netoffload.wire import wireguard as wg

    kinds: dict[int, Any] = {
        wg.MSG_INITIATION: wg.Initiation,
        wg.MSG_RESPONSE: wg.Response,
        wg.MSG_COOKIE: wg.CookieReply,
    }

    def one(data: bytes) -> None:
        parts = split(data, 16) or [data]
        for p in parts:
            t = wg.message_type(p)
            for k, cls in kinds.items():
                try:
                    msg = cls.parse(p)
                except ValueError:
                    assert t != k
                    continue
                assert t == k and msg.emit() == p
            try:
                receiver, counter = wg.parse_data_header(p)
            except ValueError:
                assert t != wg.MSG_DATA
            else:
                assert t == wg.MSG_DATA
                assert wg.data_header(receiver, counter) == p[:16]
        # the batch header reader agrees with the per-message one
        buf = np.frombuffer(b"".join(parts), np.uint8)
        lengths = np.array([len(p) for p in parts], np.int64)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        types, recv, ctr, ok = wg.data_headers(buf, starts, lengths)
        for i, p in enumerate(parts):
            is_data = wg.message_type(p) == wg.MSG_DATA
            assert bool(ok[i]) == is_data
            assert types[i] == (p[0] if p else 0)
            if is_data:
                assert (int(recv[i]), int(ctr[i])) == wg.parse_data_header(p)

    return one


def _handshake_messages() -> list[bytes]:
    """Real handshake messages between the fixed keys of ``_handshake``."""
    from netoffload.tunnel.protocol import Protocol, SendDatagram

    ini = Protocol(_KEY_I, _NOW)
    res = Protocol(_KEY_R, _NOW)
    from netoffload.tunnel import keys

    pi, pr = keys.public_from_private(_KEY_I), keys.public_from_private(_KEY_R)
    peer_r = ini.add_peer(pr, endpoint=("198.18.0.2", 51820), allowed_ips=["198.18.2.0/24"])
    res.add_peer(pi, endpoint=("198.18.0.1", 51820), allowed_ips=["198.18.1.0/24"])
    init = next(a for a in ini.stage(peer_r, b"", _NOW) if isinstance(a, SendDatagram)).data
    out = [init]
    for a in res.handle_handshake(init, ("198.18.0.1", 51820), _NOW, False):
        if isinstance(a, SendDatagram):
            out.append(a.data)
    reply = res.cookie_checker.make_reply(init, 7, ("198.18.0.1", 51820), _NOW)
    out.append(reply)
    return out


def _wireguard_seeds() -> Iterator[bytes]:
    from netoffload.wire.wireguard import data_header

    msgs = _handshake_messages()
    yield join(msgs)
    yield join([data_header(5, 9) + bytes(16), data_header(1, 2**64 - 1) + bytes(48)])
    yield from msgs


# ================================================================== handshake
_KEY_R = bytes(range(1, 33))
_KEY_I = bytes(range(101, 133))
_NOW = 1_800_000_000.0


def _mac1(spub: bytes, msg: bytes) -> bytes:
    """``msg`` with its mac1 made right (whitepaper 5.4.4, written out with hashlib)."""
    key = hashlib.blake2s(b"mac1----" + spub).digest()
    off = len(msg) - 32
    return (
        msg[:off] + hashlib.blake2s(msg[:off], digest_size=16, key=key).digest() + msg[off + 16 :]
    )


def _handshake() -> OneInput:
    from netoffload.tunnel import keys
    from netoffload.tunnel.protocol import Drop, Flush, HandshakeDone, Protocol, SendDatagram

    pi, pr = keys.public_from_private(_KEY_I), keys.public_from_private(_KEY_R)

    def one(data: bytes) -> None:
        rnd = random.Random(0)
        proto = Protocol(_KEY_R, _NOW, rng=rnd, random_bytes=rnd.randbytes)
        proto.add_peer(pi, endpoint=("198.18.0.1", 51820), allowed_ips=["198.18.1.0/24"])
        now = _NOW
        for part in split(data, 16):
            if not part:
                continue
            flags, msg = part[0], part[1:]
            if flags & 1 and len(msg) in (148, 92):
                msg = _mac1(pr, msg)
            now += flags >> 3
            src = ("198.18.0.1", 51820) if flags & 4 else ("fd00::9", 1 + flags)
            acts = proto.handle_handshake(msg, src, now, bool(flags & 2))
            assert all(isinstance(a, SendDatagram | Flush | HandshakeDone | Drop) for a in acts)
            for a in acts:
                if isinstance(a, SendDatagram):
                    assert a.dest[0] in (src[0], "198.18.0.1")
        proto.tick(now + 1.0)

    return one


def _handshake_seeds() -> Iterator[bytes]:
    msgs = _handshake_messages()
    yield join([bytes([4]) + msgs[0]])
    yield join([bytes([4]) + msgs[0], bytes([4 | 2]) + msgs[0]])
    yield join([bytes([5]) + msgs[1], bytes([0]) + msgs[2]])
    yield join([bytes([4 | 2 | 1]) + msgs[0]])


# ================================================================== data path
_A_EP = ("198.18.0.1", 51820)
_B_EP = ("198.18.0.2", 51821)


def _tunnel_pair() -> tuple[Any, Any, Any]:
    """Two never-started tunnels that shook hands in process (as tests/tunnel/
    test_datapath.py builds them); returns (a, b, a's send keypair)."""
    from netoffload.tunnel import keys
    from netoffload.tunnel.config import parse_config
    from netoffload.tunnel.protocol import SendDatagram
    from netoffload.tunnel.tunnel import Tunnel

    def tunnel(name: str, sk: bytes, peer: bytes, port: int, ep: tuple[str, int], mine: str,
               theirs: str) -> Tunnel:  # fmt: skip
        text = (
            f"[Interface]\nPrivateKey = {keys.b64_encode(sk)}\nListenPort = {port}\n"
            f"Address = {mine}\n\n[Peer]\nPublicKey = {keys.b64_encode(peer)}\n"
            f"AllowedIPs = {theirs}\nEndpoint = {ep[0]}:{ep[1]}\n"
        )
        t = Tunnel(parse_config(text, name), policy="never")
        t.dp.listen_port = port
        return t

    pa, pb = keys.public_from_private(_KEY_I), keys.public_from_private(_KEY_R)
    a = tunnel("fuzza", _KEY_I, pb, _A_EP[1], _B_EP, "198.18.30.1/24",
               "198.18.30.2/32, fd00:30::2/128")  # fmt: skip
    b = tunnel("fuzzb", _KEY_R, pa, _B_EP[1], _A_EP, "198.18.30.2/24",
               "198.18.30.1/32, fd00:30::1/128")  # fmt: skip
    peer_b = a.protocol.peers[pb]
    init = next(x for x in a.protocol.stage(peer_b, b"", _NOW) if isinstance(x, SendDatagram))
    resp = next(
        x
        for x in b.protocol.handle_handshake(init.data, _A_EP, _NOW, False)
        if isinstance(x, SendDatagram)
    )
    a.protocol.handle_handshake(resp.data, _B_EP, _NOW, False)
    kp = peer_b.send_keypair(_NOW)
    assert kp is not None
    return a, b, kp


def _udp4(src: tuple[str, int], dst: tuple[str, int], payload: bytes) -> bytes:
    import ipaddress

    udp = struct.pack("!HHHH", src[1], dst[1], 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0,
                     ipaddress.IPv4Address(src[0]).packed,
                     ipaddress.IPv4Address(dst[0]).packed)  # fmt: skip
    return ip + udp


def _datapath() -> OneInput:
    from netoffload.batch import Batch
    from netoffload.tunnel import datapath as dpm

    a, b, kp = _tunnel_pair()
    now = [_NOW + 1]

    def one(data: bytes) -> None:
        if not data:
            return
        mode, parts = data[0], split(data[1:], 32)
        if not parts:
            return
        now[0] += 0.001
        if mode & 1:  # transmit: the parts are inner packets read from the TUN
            batch = Batch.from_packets(parts, headroom=dpm.HEADROOM, tailroom=dpm.TAILROOM)
            dpm.tx_wants(batch)
            a.dp.now = now[0]
            a.tx_engine.process(batch)
            return
        msgs = []
        for p in parts:
            if p and p[0] & 1:  # seal the rest as an inner packet from a, with a's session
                c = kp.reserve(1, now[0])
                msgs.append(kp.seal(c, p[1:]) if c is not None else p[1:])
            else:
                msgs.append(p[1:])
        src = _A_EP if mode & 2 else ("198.18.0.77", 4000)
        pkts = [_udp4(src, ("198.18.0.99", _B_EP[1]), m) for m in msgs]
        batch = Batch.from_packets(pkts)
        dpm.rx_wants(batch)
        b.dp.now = now[0]
        b.rx_engine.process(batch)

    return one


def _datapath_seeds() -> Iterator[bytes]:
    msgs = _handshake_messages()
    pk = [p for p in _packets(12) if p[0] >> 4 in (4, 6)]
    yield bytes([2]) + join([b"\x01" + p for p in pk[:6]])
    yield bytes([2]) + join([b"\x00" + m for m in msgs])
    yield bytes([1]) + join(pk[:8])
    from netoffload.testing.packets import udp_packet

    own = [
        udp_packet(4, b"hello" * i, src="198.18.30.1", dst="198.18.30.2") for i in range(1, 5)
    ] + [udp_packet(6, b"v6" * 9, src="fd00:30::1", dst="fd00:30::2")]
    yield bytes([2]) + join([b"\x01" + p for p in own])
    yield bytes([1]) + join(
        [udp_packet(4, b"x" * 50, src="198.18.30.2", dst="198.18.30.1") for _ in range(3)]
    )


# ============================================================ config readers
def _doc_example(doc: str | None, start: str, end: str) -> str:
    """The example file in a module docstring, from ``start`` to ``end`` (dedented;
    lines holding an elided value ``...`` left out)."""
    text = (doc or "")[(doc or "").index(start) : (doc or "").index(end)]
    lines = textwrap.dedent("    " + text).splitlines()
    return "\n".join(x for x in lines if "..." not in x)


def _doc(data: bytes, what: str) -> Any:
    """``data[0]`` picks TOML (even) or JSON (odd) for the rest: the files' reader."""
    from netoffload.configfile import parse_document

    return parse_document(data[1:], what, "json" if data[:1] and data[0] & 1 else "toml")


def _doc_seeds(*texts: str) -> Iterator[bytes]:
    for t in texts:
        yield b"\x00" + t.encode()
        yield b"\x01" + json.dumps(tomllib.loads(t)).encode()


def _sa() -> OneInput:
    from netoffload.errors import ConfigError
    from netoffload.sa import parse_sa_doc
    from netoffload.soft.crypto import DecryptTask, EncryptTask

    def one(data: bytes) -> None:
        try:
            table = parse_sa_doc(_doc(data, "SA file"))
        except ConfigError:
            return
        EncryptTask(sas=table)
        DecryptTask(sas=table)

    return one


def _sa_seeds() -> Iterator[bytes]:
    yield from _doc_seeds((EXAMPLES / "sa.toml").read_text())
    yield b"\x01" + json.dumps(_SA_DOC).encode()


def _rules() -> OneInput:
    from netoffload.errors import ConfigError
    from netoffload.soft.classify import make_classify
    from netoffload.soft.dos import make_dos
    from netoffload.soft.rules import parse_classify, parse_dos, rules_doc

    def one(data: bytes) -> None:
        try:
            doc = rules_doc(_doc(data, "rules file"))
            cls = parse_classify(doc.get("classify", {}))
            dos = parse_dos(doc.get("dos", {}))
        except ConfigError:
            return
        make_classify(cls)
        make_dos(dos)

    return one


def _rules_seeds() -> Iterator[bytes]:
    from netoffload.soft import rules

    text = (EXAMPLES / "rules.toml").read_text()
    example = _doc_example(rules.__doc__, "[classify]", "An exact 5-tuple")
    yield from _doc_seeds(text, example)


def _policy() -> OneInput:
    from netoffload.errors import ConfigError
    from netoffload.policy.config import parse_policy_spec, policy_from_doc

    def one(data: bytes) -> None:
        try:
            if data[:1] == b"s":  # a --policy spec
                factory = parse_policy_spec(data[1:].decode("utf-8", "replace"))
            else:
                factory = policy_from_doc(_doc(data, "policy file"))
        except ConfigError:
            return
        factory()

    return one


def _policy_seeds() -> Iterator[bytes]:
    yield from _doc_seeds((EXAMPLES / "policy.toml").read_text())
    for spec in (
        "adaptive",
        "adaptive:period=0.5,step=1.2,bounds=0.8/1.25",
        "threshold+failover:load_on=0.9,load_off=0.5,backoff=1.0",
        "never",
        "always+failover",
    ):
        yield b"s" + spec.encode()


def _wgconf() -> OneInput:
    from netoffload.errors import ConfigError
    from netoffload.tunnel.config import parse_config, to_wg_setconf

    def one(data: bytes) -> None:
        try:
            text = data.decode("utf-8")  # load_config refuses other bytes (ConfigError)
        except UnicodeDecodeError:
            return
        try:
            cfg = parse_config(text, "wg0")
        except ConfigError:
            return
        to_wg_setconf(cfg)

    return one


def _wgconf_seeds() -> Iterator[bytes]:
    _tests_on_path()
    from tunnel import test_config as tc  # type: ignore[import-not-found]

    yield tc.FULL.encode()
    yield "\n".join(x for x in tc.BASE_LINES if x is not None).encode()
    from netoffload.tunnel import config

    yield _doc_example(config.__doc__, "[Interface]", "Keys and").encode()


# ======================================================================= uapi
def _uapi() -> OneInput:
    from netoffload.tunnel.uapi import (
        EIO,
        RequestReader,
        SetRequest,
        UapiError,
        UapiState,
        apply_set,
        format_get,
        format_set,
        parse_set,
        respond,
    )

    class Handler:
        def __init__(self) -> None:
            self.state = UapiState(private_key=None, listen_port=51820, fwmark=0, peers=())

        def uapi_get(self) -> UapiState:
            return self.state

        def uapi_set(self, req: SetRequest) -> None:
            self.state = apply_set(self.state, req)

    def one(data: bytes) -> None:
        if not data:
            return
        r = RequestReader(limit=2048)
        h = Handler()
        step = 1 + data[0] % 64
        body = data[1:]
        for pos in range(0, max(len(body), 1), step):
            r.feed(body[pos : pos + step])
            while (lines := r.next()) is not None:
                answer = respond(lines, h)
                assert answer.endswith("\n\n") and f"errno=-{EIO}\n" not in answer, answer
                assert f"errno={EIO}\n" not in answer, answer
                if lines and lines[0] == "set=1":
                    try:
                        req = parse_set(lines[1:])
                    except UapiError:
                        continue
                    again = format_set(req).split("\n")[1:-2]
                    assert parse_set(again) == req
        format_get(h.state)

    return one


def _uapi_seeds() -> Iterator[bytes]:
    k1, k2 = "11" * 32, "22" * 32
    yield b"\x07get=1\n\n"
    yield (
        b"\x3fset=1\nprivate_key=" + k1.encode() + b"\nlisten_port=51820\nfwmark=7\n"
        b"replace_peers=true\npublic_key=" + k2.encode() + b"\nreplace_allowed_ips=true\n"
        b"preshared_key=" + k1.encode() + b"\nendpoint=[fd00::2%1]:51820\n"
        b"persistent_keepalive_interval=25\nallowed_ip=198.18.0.0/24\n"
        b"allowed_ip=fd00::/64\nprotocol_version=1\n\nget=1\n\n"
    )
    yield b"\x01set=1\npublic_key=" + k2.encode() + b"\nremove=true\n\nset=1\nbogus=1\n\n"
    yield b"\x02set=1\npublic_key=" + k2.encode() + b"\nupdate_only=true\nendpoint=1.2.3.4:5\n\n"


# =================================================================== compiler
def _compiler() -> OneInput:
    import numpy as np

    from netoffload.batch import Batch, FilterVerdict
    from netoffload.bpf import BASE_ETHER, BASE_IP, BASE_NET, compile_filter, run
    from netoffload.bpf.compiler import uncompiled
    from netoffload.errors import ConfigError
    from netoffload.soft.classify import make_classify
    from netoffload.soft.dos import make_dos
    from netoffload.soft.rules import parse_classify, parse_dos, rules_doc
    from netoffload.wire.parse import parse_batch

    bases = (BASE_IP, BASE_ETHER, BASE_NET)

    def one(data: bytes) -> None:
        if len(data) < 2:
            return
        mode, parts = data[0], split(data[1:], 32)
        if not parts:
            return
        base, kind = bases[mode % 3], "class" if mode & 4 else "verdict"
        dos = bool(mode & 8)
        try:
            doc = rules_doc(_doc(bytes([mode >> 4]) + parts[0], "rules file"))
            cfg: Any = (
                parse_dos(doc.get("dos", {})) if dos else parse_classify(doc.get("classify", {}))
            )
            prog = compile_filter(cfg, base=base, mode=kind)
        except ConfigError:  # CompileError included: a program too long for the kernel
            return
        uncompiled(cfg)
        pkts = parts[1:]
        if not pkts:
            return
        got = [run(prog, p, checked=True) for p in pkts]
        if base != BASE_IP:
            return
        # for packets the software parser accepts, the kernel program decides as
        # the software task does (stateless parts only)
        b = Batch.from_packets(pkts)
        good = parse_batch(b.take(np.arange(len(pkts))), False) == 0
        sel = np.ones(len(pkts), np.bool_)
        if dos:
            if uncompiled(cfg):
                return
            make_dos(cfg).process(b, sel, now=0.0)
        else:
            make_classify(cfg).process(b, sel)
        keep = b.ext.filter_verdict != FilterVerdict.DROP
        for i in np.flatnonzero(good).tolist():
            if kind == "verdict" or dos:
                assert (got[i] != 0) == bool(keep[i]), (i, got[i], bool(keep[i]))
            else:
                assert got[i] == int(b.ext.class_id[i]), (i, got[i], int(b.ext.class_id[i]))

    return one


def _compiler_seeds() -> Iterator[bytes]:
    from netoffload.soft import rules

    pk = [p for p in _packets(16) if p[0] >> 4 in (4, 6)]
    text = (EXAMPLES / "rules.toml").read_text()
    example = _doc_example(rules.__doc__, "[classify]", "An exact 5-tuple")
    for t in (text, example):
        for mode in (0, 1, 2, 4, 8):
            yield bytes([mode]) + join([t.encode(), *pk[:8]])
        js = json.dumps(tomllib.loads(t)).encode()
        yield bytes([0x10]) + join([js, *pk[8:]])


# ==================================================================== registry
TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("pcap", "wire/pcap.py read_capture, records_to_batch: CaptureError", _pcap,
               _pcap_seeds, max_len=8192),
        Target("parse", "wire/parse.py parse_batch, parse_subset (never raise); "
               "Ethernet/IPv4/IPv6/TCP/UDP.parse: WireError", _parse, _parse_seeds),
        Target("esp-decrypt", "soft/crypto.py DecryptTask prepare/process/settle (never raises)",
               _esp, _esp_seeds, smoke_runs=5_000),
        Target("wireguard", "wire/wireguard.py message parsers: ValueError", _wireguard,
               _wireguard_seeds),
        Target("handshake", "tunnel/protocol.py Protocol.handle_handshake (never raises)",
               _handshake, _handshake_seeds, smoke_runs=3_000),
        Target("datapath", "tunnel/datapath.py receive and transmit engines (never raise)",
               _datapath, _datapath_seeds, smoke_runs=1_500),
        Target("sa-config", "sa.py parse_sa_doc via configfile.parse_document: ConfigError",
               _sa, _sa_seeds),
        Target("rules-config", "soft/rules.py parse_classify/parse_dos: ConfigError", _rules,
               _rules_seeds),
        Target("policy-config", "policy/config.py parse_policy_spec/policy_from_doc: "
               "ConfigError", _policy, _policy_seeds),
        Target("wg-config", "tunnel/config.py parse_config: ConfigError", _wgconf,
               _wgconf_seeds),
        Target("uapi", "tunnel/uapi.py RequestReader, respond, parse_set: UapiError", _uapi,
               _uapi_seeds),
        Target("bpf-compiler", "bpf/compiler.py compile_filter: ConfigError (CompileError); "
               "the program agrees with the software task", _compiler, _compiler_seeds,
               smoke_runs=3_000),
    )
}  # fmt: skip


def write_seeds(name: str, out: Path) -> int:
    """Write the seeds of target ``name`` into ``out`` (named by content); returns how many."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("seed-*"):  # seeds of an earlier build; found inputs stay
        old.unlink()
    n = 0
    for s in TARGETS[name].seeds():
        (out / f"seed-{hashlib.sha1(s).hexdigest()[:16]}").write_bytes(s)
        n += 1
    return n


def environment_ok() -> str | None:
    """Why fuzzing cannot run here, or None."""
    try:
        import atheris  # noqa: F401
    except ImportError:
        return "atheris is not installed (pip install atheris)"
    if not os.path.isdir(TESTS):
        return f"{TESTS} is missing (seeds are built from the tests)"
    return None
