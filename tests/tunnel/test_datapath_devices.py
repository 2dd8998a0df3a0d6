"""The tunnel's engines with their devices: the emulated crypto NIC and the TUN.

In process (no root): two tunnels built from wg-quick text, never started, shake
hands in process; ``nic=crypto`` gives each engine its NIC process. With policy
``always`` every packet's encrypt/decrypt is done by the NIC and the receive
checksum by the TUN; with ``never`` none is. Either way the sealed packets open
with the single-packet reference (``Keypair.open``), the receive engine gives
back the original packets, and the replay window (the host's) stops a replay.

Against the real thing (root): wireguard-go in one namespace,
``netoffload up --nic crypto`` in another; TCP streams with content hashes both
ways, and ``netoffload show --json`` must say which path did the work.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from multiprocessing import shared_memory
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6

from netoffload.batch import Batch, CsumVerdict, Reason, VnetFlag
from netoffload.errors import ConfigError
from netoffload.tunnel import datapath as dpm
from netoffload.tunnel import keys
from netoffload.tunnel.loop import handshake_offline, offline_tunnel
from netoffload.tunnel.tunnel import Tunnel

from .test_tunnel_interop import GO_V4, GO_V6, US_V4, _ping, pair, tcp_stream

NOW = 1_800_000_000.0
A_EP = ("198.18.0.1", 51820)
B_EP = ("198.18.0.2", 51821)


def _tunnel(name: str, sk: bytes, peer: bytes, port: int, ep: tuple[str, int], **kw: Any) -> Tunnel:
    kw.setdefault("policy", None)
    return offline_tunnel(
        name,
        sk,
        peer,
        port=port,
        endpoint=ep,
        address="198.18.30.1/24",
        allowed="198.18.30.0/24, fd00:30::/64",
        **kw,
    )


@contextlib.contextmanager
def _pair(**kw: Any) -> Iterator[tuple[Tunnel, Tunnel]]:
    ka, kb = keys.generate_private(), keys.generate_private()
    pa, pb = keys.public_from_private(ka), keys.public_from_private(kb)
    a = _tunnel("nofda", ka, pb, A_EP[1], B_EP, **kw)
    try:
        b = _tunnel("nofdb", kb, pa, B_EP[1], A_EP, **kw)
    except BaseException:
        a.close()
        raise
    try:
        handshake_offline(a, b, A_EP, B_EP, NOW)
        yield a, b
    finally:
        a.close()
        b.close()


def _inner(n: int) -> list[bytes]:
    """Packets of distinct flows (nothing for GRO to merge), v4 and v6, TCP/UDP/ICMP."""
    out = []
    for i in range(n):
        pay = bytes((i * 11 + j) % 253 for j in range(1 + (i * 97) % 1300))
        if i % 4 == 3:
            p: Any = IPv6(src="fd00:30::1", dst="fd00:30::2") / UDP(sport=3000 + i, dport=9)
        elif i % 4 == 2:
            p = IP(src="198.18.30.1", dst="198.18.30.2") / ICMP(id=i)
        elif i % 4 == 1:
            p = IP(src="198.18.30.1", dst="198.18.30.2") / UDP(sport=2000 + i, dport=9)
        else:
            p = IP(src="198.18.30.1", dst="198.18.30.2") / TCP(sport=1000 + i, dport=80, flags="PA")
        out.append(bytes(p / pay))
    return out


def _transmit(t: Tunnel, pkts: list[bytes]) -> Batch:
    b = Batch.from_packets(pkts, headroom=dpm.HEADROOM, tailroom=dpm.TAILROOM)
    dpm.tx_wants(b)  # (sets the IP version where a TUN read would have)
    t.dp.now = NOW + 1
    return t.tx_engine.process(b).batch


def _receive(t: Tunnel, outer: Batch) -> Batch:
    """The sealed datagrams as the UDP device hands them to the receive engine."""
    msgs = [bytes(outer.packet(i)) for i in range(len(outer)) if outer.ext.alive()[i]]
    rb = Batch.from_packets(msgs)
    rb.ext.l3_proto[:] = [m[0] >> 4 for m in msgs]
    dpm.rx_wants(rb)
    t.dp.now = NOW + 1
    return t.rx_engine.process(rb).batch


def _counts(t: Tunnel) -> dict[str, dict[str, tuple[int, int, int]]]:
    out = {}
    for side in ("transmit", "receive"):
        tasks = t.status()[side]["tasks"]
        out[side] = {k: (v["offloaded"], v["software"], v["errors"]) for k, v in tasks.items()}
    return out


def _opens(t_from: Tunnel, t_to: Tunnel, out: Batch, pkts: list[bytes]) -> None:
    peer = next(iter(t_to.protocol.peers.values()))
    kp = peer.next or peer.current
    assert kp is not None
    for i, orig in enumerate(pkts):
        raw = bytes(out.packet(i))
        opened = kp.open(raw[28:])
        assert opened is not None, f"packet {i} does not open with the reference"
        assert opened[1][: len(orig)] == orig


@pytest.mark.parametrize("policy", ["always", "never"])
def test_engines_with_the_crypto_nic(policy: str) -> None:
    n = 64
    pkts = _inner(n)
    l4 = sum(1 for i in range(n) if i % 4 != 2)  # TCP/UDP: the receive checksum applies
    with _pair(policy=policy, nic="crypto") as (a, b):
        assert len(a.offload.pids) == 2 and len(b.offload.pids) == 2
        out = _transmit(a, pkts)
        assert out.ext.alive().all()
        _opens(a, b, out, pkts)
        got = _receive(b, out)
        live = got.ext.alive()
        assert sorted(bytes(got.packet(i)) for i in range(len(got)) if live[i]) == sorted(pkts)
        enc = _counts(a)["transmit"]["encrypt"]
        dec = _counts(b)["receive"]["decrypt"]
        csum = _counts(b)["receive"]["checksum"]
        if policy == "always":
            assert enc == (n, 0, 0) and dec == (n, 0, 0) and csum == (l4, 0, 0)
            good = live & (got.ext.csum_verdict == CsumVerdict.GOOD)
            assert (got.ext.vflags[good] & VnetFlag.DATA_VALID).all()
            assert int(np.count_nonzero(good)) == l4
            assert a.offload.nic_tx is not None and a.offload.nic_tx.nic.completions >= 1
        else:
            assert enc == (0, n, 0) and dec == (0, n, 0) and csum == (0, l4, 0)
        # a replay of the same datagrams: the host's window (moved in settle after
        # whichever path decrypted) stops every one before decryption
        again = _receive(b, out)
        assert (again.ext.error == Reason.REPLAY).all()
        assert _counts(b)["receive"]["decrypt"][:2] == dec[:2]


def test_adaptive_accounts_every_packet_once() -> None:
    n = 48
    pkts = _inner(n)
    with _pair(nic="crypto") as (a, b):  # the default policy: adaptive
        total = 0
        for _ in range(6):
            out = _transmit(a, pkts)
            _opens(a, b, out, pkts)
            got = _receive(b, out)
            assert int(np.count_nonzero(got.ext.alive())) == n
            total += n
        for t, side, task in ((a, "transmit", "encrypt"), (b, "receive", "decrypt")):
            off, soft, err = _counts(t)[side][task]
            assert off + soft == total and err == 0


def test_a_wrong_inner_checksum_under_either_path() -> None:
    """What the receive checksum's paths really do, told apart: software verifies
    and drops a packet whose inner checksum is wrong; the TUN path hands the
    authenticated packet to the kernel as DATA_VALID, unverified (kernel WireGuard's
    choice), so it is delivered and counted as the device's."""
    bad = bytearray(_inner(1)[0])  # TCP over IPv4
    bad[20 + 16] ^= 0xFF  # the TCP checksum
    for policy, delivered in (("never", False), ("always", True)):
        with _pair(policy=policy) as (a, b):
            got = _receive(b, _transmit(a, [bytes(bad)]))
            assert bool(got.ext.alive()[0]) is delivered
            csum = _counts(b)["receive"]["checksum"]
            if delivered:
                assert csum[0] == 1 and got.ext.vflags[0] & VnetFlag.DATA_VALID
            else:
                assert csum[1] == 1 and got.ext.error[0] == Reason.BAD_CHECKSUM


def test_close_stops_the_nic_and_removes_the_keys() -> None:
    with _pair(policy="always", nic="crypto") as (a, b):
        pids = a.offload.pids + b.offload.pids
        assert a.offload.table is not None
        name = a.offload.table.spec.name
        _receive(b, _transmit(a, _inner(4)))
        a.close()
        a.close()  # idempotent
        assert a.offload.table.closed
        with pytest.raises(FileNotFoundError):
            shared_memory.SharedMemory(name=name)
    for pid in pids:
        assert not _alive(pid), f"NIC process {pid} left behind"


def test_nic_mode_is_checked() -> None:
    with pytest.raises(ConfigError, match="nic"):
        _tunnel("nofdx", keys.generate_private(), bytes(32), 1, A_EP, nic="full")


def _alive(pid: int) -> bool:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(") ")[-1].startswith("Z"):
                    return False
        except FileNotFoundError:
            return False
        time.sleep(0.05)
    return True


# --------------------------------------------------------------------------- kernel


def _nic_pids(doc: dict[str, Any]) -> list[int]:
    out = []
    for side in ("transmit", "receive"):
        for dev in doc["offload"][side]:
            if "pid" in dev:
                out.append(int(dev["pid"]))
    return out


@pytest.mark.kernel
@pytest.mark.parametrize("policy", ["always", "never"])
def test_against_wireguard_go_with_the_crypto_nic(tmp_path: Path, policy: str) -> None:
    with pair(tmp_path, start=False) as p:
        p.up("--nic", "crypto", "--policy", policy, timeout=60.0)
        assert _ping(p.b, GO_V4), "ping through the tunnel failed"
        tcp_stream(p.b, p.a, GO_V4, 4 << 20)
        tcp_stream(p.a, p.b, US_V4, 4 << 20, port=5303)
        tcp_stream(p.b, p.a, GO_V6, 1 << 20, port=5304)
        doc = p.show()
        assert doc["offload"]["nic"] == "crypto"
        tx, rx = doc["transmit"]["tasks"], doc["receive"]["tasks"]
        enc, dec, csum = tx["encrypt"], rx["decrypt"], rx["checksum"]
        if policy == "always":
            assert enc["offloaded"] > 0 and enc["software"] == 0
            assert dec["offloaded"] > 0 and dec["software"] == 0
            assert csum["offloaded"] > 0 and csum["software"] == 0
        else:
            for c in (enc, dec, csum):
                assert c["offloaded"] == 0 and c["software"] > 0
        assert enc["errors"] == 0 and dec["errors"] == 0
        assert dec["reasons"].get("bad_icv", 0) == 0
        # the kernel's outer UDP work, shown beside the engine's tasks
        assert tx["udp-segment (outer)"]["offloaded"] > 0
        assert "udp-assemble (outer)" in rx
        pids = _nic_pids(doc)
        assert len(pids) == 2 and all(_alive_now(x) for x in pids)
        assert p.proc is not None
        p.proc.send_signal(signal.SIGTERM)
        p.proc.wait(20)
        for pid in pids:
            assert not _alive(pid), f"NIC process {pid} outlived SIGTERM"


def _alive_now(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
