"""Interoperability of the protocol core with the real wireguard-go (root, namespaces).

Two namespaces joined by a veth (198.18.0.1 / 198.18.0.2, fd00::1 / fd00::2):
wireguard-go runs in ``wg`` with inner addresses 198.18.100.1 and fd00:100::1;
``us`` runs our ``Protocol`` on a plain UDP socket, with the driver of
wg_helpers answering ICMP echo requests to 198.18.100.2 / fd00:100::2 itself
(its only "TUN" is the handler). Pings are the kernel's real ICMP through
wireguard-go's real TUN, so both directions of both handshake roles, the
keys, the counters, the padding and the MACs are checked by the reference
implementation. ``wg show dump`` is read back at the end.
"""

from __future__ import annotations

import base64
import contextlib
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from netoffload.testing import netns, wggo
from netoffload.testing.netns import Netns
from netoffload.tunnel import keys
from netoffload.tunnel.peer import Peer
from netoffload.tunnel.protocol import (
    COOKIE_NEEDED,
    DECRYPT_FAILED,
    HandshakeDone,
    Protocol,
    SendDatagram,
)
from netoffload.tunnel.timers import REKEY_AFTER_TIME
from netoffload.wire.wireguard import INITIATION_LEN

from .wg_helpers import Driver, echo, echo_reply_to, parse_echo

pytestmark = pytest.mark.kernel

WG_V4, WG_V6 = "198.18.100.1", "fd00:100::1"
US_V4, US_V6 = "198.18.100.2", "fd00:100::2"
WG_PORT, US_PORT = 51820, 51821


@pytest.fixture
def wg_ok() -> None:
    reason = netns.available() or wggo.available()
    if reason:
        pytest.skip(f"kernel test skipped: {reason}")


@dataclass
class Bed:
    wg_host: Netns
    us_host: Netns
    wg: wggo.WireguardGo
    proto: Protocol
    peer: Peer
    driver: Driver
    psk: bytes | None


def _answer(peer: Peer, pkt: bytes) -> bytes | None:
    e = parse_echo(pkt)
    if e is None or not e.request or e.dst not in (US_V4, US_V6):
        return None
    return echo_reply_to(pkt)


@contextlib.contextmanager
def bed(
    *,
    psk: bool = False,
    outer_v6: bool = False,
    we_know_endpoint: bool = True,
    keepalive: int = 0,
) -> Iterator[Bed]:
    with netns.Testbed() as tb, contextlib.ExitStack() as stack:
        a, b = tb.host("wg"), tb.host("us")
        tb.link(
            a, b, addrs_a=["198.18.0.1/24", "fd00::1/64"], addrs_b=["198.18.0.2/24", "fd00::2/64"]
        )
        their_sk, our_sk = keys.generate_private(), keys.generate_private()
        shared = keys.generate_preshared() if psk else None
        wg = stack.enter_context(
            wggo.WireguardGo(
                a,
                private_key=their_sk,
                listen_port=WG_PORT,
                addresses=[f"{WG_V4}/24", f"{WG_V6}/64"],
            )
        )
        us_addr, wg_addr = ("fd00::2", "fd00::1") if outer_v6 else ("198.18.0.2", "198.18.0.1")
        wg.set_peer(
            keys.public_from_private(our_sk),
            allowed_ips=[f"{US_V4}/32", f"{US_V6}/128"],
            endpoint=(us_addr, US_PORT),
            preshared_key=shared,
        )
        fam = socket.AF_INET6 if outer_v6 else socket.AF_INET
        sock = b.socket(fam, socket.SOCK_DGRAM)
        sock.bind((us_addr, US_PORT))
        now = time.time()
        proto = Protocol(our_sk, now)
        peer = proto.add_peer(
            keys.public_from_private(their_sk),
            preshared_key=shared,
            endpoint=(wg_addr, WG_PORT) if we_know_endpoint else None,
            allowed_ips=[f"{WG_V4}/32", f"{WG_V6}/128"],
            persistent_keepalive=keepalive,
        )
        driver = stack.enter_context(Driver(proto, sock, handler=_answer))
        try:
            yield Bed(a, b, wg, proto, peer, driver, shared)
        except BaseException:
            print("wireguard-go log:\n" + wg.log())
            print("driver errors:", driver.errors, "drops:", proto.drops)
            raise


def _ping(host: Netns, dst: str, count: int = 3, deadline: int = 20) -> str:
    """``ping`` from ``host``; fails unless at least ``count`` echo replies came back."""
    out = host.exec(
        ["ping", "-n", "-c", str(count), "-i", "0.2", "-w", str(deadline), dst],
        timeout=deadline + 10,
    )
    m = re.search(r"(\d+) received", out)
    assert m is not None and int(m.group(1)) >= count, out
    return out


def _check_echoes_seen(d: Driver, src: str, dst: str, n: int) -> None:
    with d.lock:
        reqs = [parse_echo(p) for _, p in d.received]
    mine = [e for e in reqs if e is not None and e.request and e.src == src and e.dst == dst]
    assert len(mine) >= n, f"expected {n} echo requests {src} -> {dst}, saw {reqs}"


def _check_dump(bed: Bed) -> None:
    """wireguard-go reports our key with a recent handshake and the transfer we made."""
    our_pk = bed.proto.public_key
    dump = bed.wg.dump()
    assert our_pk in dump.peers, dump
    p = dump.peers[our_pk]
    assert abs(p.latest_handshake - time.time()) < 120, p
    assert p.rx_bytes > 0 and p.tx_bytes > 0, p
    assert (p.preshared_key is not None) == (bed.psk is not None)
    if bed.psk is not None:
        assert p.preshared_key == bed.psk
    # what wireguard-go counts for the peer is what we counted (whole UDP payloads),
    # plus the initiations we refused with a cookie reply (they count on its side only)
    for _ in range(50):
        with bed.driver.lock:
            ours_rx, ours_tx = bed.peer.rx_bytes, bed.peer.tx_bytes
            refused = bed.proto.drops[COOKIE_NEEDED] * INITIATION_LEN
        if (p.rx_bytes, p.tx_bytes) == (ours_tx, ours_rx + refused):
            break
        time.sleep(0.05)  # a packet may still be on its way
        p = bed.wg.dump().peers[our_pk]
    assert (p.rx_bytes, p.tx_bytes) == (ours_tx, ours_rx + refused), (p, ours_rx, ours_tx)


def test_wireguard_go_initiates(wg_ok: None) -> None:
    with bed(we_know_endpoint=False) as t:
        _ping(t.wg_host, US_V4)
        _check_echoes_seen(t.driver, WG_V4, US_V4, 3)
        _ping(t.wg_host, US_V6)
        _check_echoes_seen(t.driver, WG_V6, US_V6, 3)
        # we learnt its endpoint from the initiation; it initiated, we responded
        assert t.peer.endpoint == ("198.18.0.1", WG_PORT)
        assert [k for k, _ in t.driver.handshakes][:1] == ["init"]
        assert t.peer.current is not None and not t.peer.current.initiator
        assert not t.driver.errors, t.driver.errors
        _check_dump(t)


def _we_ping(t: Bed, src: str, dst: str, ident: int, count: int = 3) -> None:
    d = t.driver
    for seq in range(count):
        d.send(t.peer, echo(src, dst, ident, seq, b"netoffload-" + bytes([seq]) * 20))
        ok = d.wait_for(
            lambda seq=seq: any(  # type: ignore[misc]
                (e := parse_echo(p)) is not None
                and not e.request
                and (e.src, e.dst, e.ident, e.seq) == (dst, src, ident, seq)
                and e.payload == b"netoffload-" + bytes([seq]) * 20
                for _, p in d.received
            ),
            timeout=10,
        )
        assert ok, f"no echo reply {dst} -> {src} seq {seq}; received {d.received}"


@pytest.mark.parametrize("outer_v6", [False, True], ids=["outer-v4", "outer-v6"])
def test_we_initiate(wg_ok: None, outer_v6: bool) -> None:
    with bed(outer_v6=outer_v6) as t:
        _we_ping(t, US_V4, WG_V4, 0x4242)
        _we_ping(t, US_V6, WG_V6, 0x4343)
        assert [k for k, _ in t.driver.handshakes][:1] == ["resp"]
        assert t.peer.current is not None and t.peer.current.initiator
        assert any(isinstance(a, HandshakeDone) for a in t.driver.actions)
        assert not t.driver.errors, t.driver.errors
        _check_dump(t)


def test_preshared_key_both_ways(wg_ok: None) -> None:
    with bed(psk=True) as t:
        _we_ping(t, US_V4, WG_V4, 7)
        _ping(t.wg_host, US_V6)
        assert not t.driver.errors, t.driver.errors
        _check_dump(t)


def test_cookie_reply_under_load(wg_ok: None) -> None:
    with bed(we_know_endpoint=False) as t:
        t.driver.under_load = True
        # wireguard-go's first initiation gets a cookie reply; it resends after
        # REKEY_TIMEOUT with mac2, which we accept: the session comes up
        _ping(t.wg_host, US_V4, count=3, deadline=25)
        kinds = [k for k, _ in t.driver.handshakes]
        assert kinds.count("init") >= 2, kinds
        inits = [m for m in t.driver.handshake_bytes if m[0] == 1]
        assert inits[0][-16:] == bytes(16)  # no cookie yet: mac2 zero
        assert inits[-1][-16:] != bytes(16)  # the retry carries mac2 from our cookie
        assert t.proto.drops[COOKIE_NEEDED] >= 1, t.proto.drops
        assert not t.driver.errors, t.driver.errors
        _check_dump(t)


def test_persistent_keepalive_starts_a_session(wg_ok: None) -> None:
    """With no traffic at all, our persistent keepalive makes a handshake and encrypted
    keepalives that wireguard-go authenticates (it counts only what authenticates)."""
    with bed(keepalive=1) as t:
        assert t.driver.wait_for(lambda: len(_keepalives_sent(t)) >= 3, timeout=10)
        assert [k for k, _ in t.driver.handshakes][:1] == ["resp"]
        assert not t.driver.errors, t.driver.errors
        _check_dump(t)
        assert t.wg.dump().peers[t.proto.public_key].rx_bytes >= INITIATION_LEN + 3 * 32


def _keepalives_sent(t: Bed) -> list[object]:
    return [
        a
        for a in t.driver.actions
        if isinstance(a, SendDatagram) and a.data[0] == 4 and len(a.data) == 32
    ]


def test_we_rekey_after_time_while_traffic_flows(wg_ok: None) -> None:
    """Our clock jumps past REKEY_AFTER_TIME: the next packet we send goes under the
    old session and starts a new handshake; wireguard-go moves to the new session
    (its `next`, confirmed by our data) and traffic goes on both ways."""
    with bed() as t:
        _we_ping(t, US_V4, WG_V4, 1)
        first = t.peer.current
        assert first is not None
        with t.driver.lock:
            t.driver.clock_offset = REKEY_AFTER_TIME + 1
        _we_ping(t, US_V4, WG_V4, 2)
        _we_ping(t, US_V6, WG_V6, 3)
        assert t.driver.wait_for(lambda: t.peer.current is not first, 10)
        assert [k for k, _ in t.driver.handshakes].count("resp") == 2
        assert t.peer.previous is first
        _we_ping(t, US_V4, WG_V4, 4)  # and the new session carries traffic
        _ping(t.wg_host, US_V4)
        assert not t.driver.errors, t.driver.errors


def test_wireguard_go_restarts_we_rotate_as_responder(wg_ok: None) -> None:
    """A new wireguard-go with the same key initiates while we still hold the old
    session: the new one waits in `next` until its data confirms it."""
    with bed(we_know_endpoint=False) as t:
        _ping(t.wg_host, US_V4)
        first = t.peer.current
        assert first is not None and not first.initiator
        their_sk = base64.b64decode(t.wg.wg("show", t.wg.name, "private-key").strip())
        t.wg.stop()
        with wggo.WireguardGo(
            t.wg_host,
            private_key=their_sk,
            listen_port=WG_PORT,
            addresses=[f"{WG_V4}/24", f"{WG_V6}/64"],
        ) as wg2:
            wg2.set_peer(
                t.proto.public_key,
                allowed_ips=[f"{US_V4}/32", f"{US_V6}/128"],
                endpoint=("198.18.0.2", US_PORT),
            )
            _ping(t.wg_host, US_V6)
            with t.driver.lock:
                assert t.peer.current is not first and t.peer.previous is first
                assert t.peer.next is None
            _we_ping(t, US_V4, WG_V4, 5)
            assert not t.driver.errors, t.driver.errors


def test_preshared_key_mismatch_fails(wg_ok: None) -> None:
    """The PSK really enters the keys: with a different one, wireguard-go's response
    does not authenticate here and no session comes up."""
    with bed(psk=True) as t:
        with t.driver.lock:
            t.peer.preshared_key = bytes(a ^ 1 for a in t.peer.preshared_key)
        t.driver.send(t.peer, echo(US_V4, WG_V4, 9, 0, b"x"))
        assert t.driver.wait_for(lambda: t.proto.drops[DECRYPT_FAILED] >= 1, timeout=10)
        with t.driver.lock:
            assert t.peer.current is None and t.driver.received == []
