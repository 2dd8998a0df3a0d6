"""The WireGuard protocol core of one interface, sans-IO (whitepaper sections 5 and 6).

``Protocol`` owns the interface's static key, its peers, the index table and
the DoS defences, and answers every event with a list of actions for the
caller to carry out:

* ``SendDatagram(dest, data, peer)``: send this UDP payload (handshake
  messages, cookie replies, and keepalives, which the core encrypts itself);
* ``Flush(peer, packets)``: packets staged while no session could send them
  may go now (the data path encrypts them with ``peer.send_keypair(now)``);
* ``HandshakeDone(peer)``: a new session is in use;
* ``Drop(reason)``: something was refused (also counted in ``drops``).

Events: ``handle_handshake`` for message types 1-3 from the network;
``data_received`` / ``data_sent`` from the data path after it opened /
sealed data messages; ``stage`` for inner packets that found no usable
session; ``tick`` when ``next_deadline()`` has passed. Every call takes ``now``
(wall-clock seconds, as ``time.time()``): nothing here reads a clock or a
socket.

How a data path uses it (tests/tunnel/wg_helpers.py has a minimal one)::

    # receive a datagram from src
    t = message_type(d)
    if t in (1, 2, 3): act(proto.handle_handshake(d, src, now, under_load))
    elif t == 4:
        peer, kp = proto.lookup(receiver, now)          # None: drop (unknown index)
        kp.replay.check(counter) / check_many(...)       # cheap pre-check, no change
        counter, plain = kp.open(d)                      # None: drop (forged)
        kp.replay.update(counter)                        # False: drop (replay)
        act(proto.data_received(peer, kp, src, now, len(d), keepalive=not plain))
        # plain carries zero padding: the inner IP header's length says where it ends
    # send an inner packet to peer
    kp = peer.send_keypair(now); first = kp.reserve(n, now) if kp else None
    if first is None: act(proto.stage(peer, packet, now))
    else:
        send kp.seal(first + i, p_i) to peer.endpoint for each packet i
        act(proto.data_sent(peer, now, nbytes, keepalive=False))
    # and: act(proto.tick(now)) whenever now >= proto.next_deadline()

The order of checks on a handshake message (as the whitepaper's 5.3 and the
reference implementations have it): exact type and length, mac1 (cheap, needs
our public key only), then, only under load, mac2 (else a cookie reply and
nothing more) and a per-source-address rate limit, and only then the
Diffie-Hellman work; an initiation must also carry a timestamp newer than
the last one from that peer, and come at most 50 times a second.

Timers (section 6): an initiation is resent after REKEY_TIMEOUT plus up to
1/3 s of jitter until REKEY_ATTEMPT_TIME has passed; the initiator rekeys
when sending with a session older than REKEY_AFTER_TIME or past
REKEY_AFTER_MESSAGES, and when receiving with one older than
REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT; sessions are unusable
after REJECT_AFTER_TIME / REJECT_AFTER_MESSAGES; a peer that received data and
sent nothing for KEEPALIVE_TIMEOUT sends a keepalive; one that sent data and
heard nothing for KEEPALIVE_TIMEOUT + REKEY_TIMEOUT starts a handshake; the
persistent keepalive goes after its interval without any authenticated packet;
keys are dropped REJECT_AFTER_TIME * 3 after the last session was made.
"""

from __future__ import annotations

import ipaddress
import os
import random
import secrets
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from netoffload.errors import ConfigError
from netoffload.tunnel import keys, noise
from netoffload.tunnel.cookie import CookieChecker
from netoffload.tunnel.peer import Handshake, IPNetwork, Keypair, Peer
from netoffload.tunnel.replay import WINDOW_SIZE
from netoffload.tunnel.timers import (
    HANDSHAKE_INITIATION_RATE,
    KEEPALIVE_TIMEOUT,
    NEVER,
    REJECT_AFTER_MESSAGES,
    REKEY_AFTER_MESSAGES,
    REKEY_AFTER_TIME,
    REKEY_ATTEMPT_TIME,
    REKEY_ON_RECEIVE_AGE,
    REKEY_TIMEOUT,
    ZERO_KEYS_AFTER,
    jitter,
)
from netoffload.wire.wireguard import (
    MSG_COOKIE,
    MSG_INITIATION,
    MSG_RESPONSE,
    CookieReply,
    Initiation,
    Response,
    message_type,
)

# ------------------------------------------------------------------ actions


@dataclass(frozen=True, slots=True)
class SendDatagram:
    """Send ``data`` as one UDP payload to ``dest``."""

    dest: tuple[str, int]
    data: bytes
    peer: Peer | None


@dataclass(frozen=True, slots=True)
class Flush:
    """``packets`` staged for ``peer`` can be encrypted and sent now."""

    peer: Peer
    packets: list[bytes]


@dataclass(frozen=True, slots=True)
class HandshakeDone:
    """``peer`` has a new session."""

    peer: Peer


@dataclass(frozen=True, slots=True)
class Drop:
    """Something was refused; ``reason`` is a key of ``Protocol.drops``."""

    reason: str


Action = SendDatagram | Flush | HandshakeDone | Drop

# reasons (keys of Protocol.drops)
NOT_HANDSHAKE = "not a handshake message"
BAD_MAC1 = "bad mac1"
COOKIE_NEEDED = "mac2 needed (cookie sent)"
RATE_LIMITED = "rate limited"
DECRYPT_FAILED = "decrypt failed"
UNKNOWN_PEER = "unknown peer"
REPLAYED_TIMESTAMP = "replayed timestamp"
INITIATION_FLOOD = "initiation flood"
UNEXPECTED_RESPONSE = "unexpected response"
BAD_COOKIE_REPLY = "bad cookie reply"
NO_ENDPOINT = "no endpoint"
STAGED_OVERFLOW = "staged queue full"
HANDSHAKE_GAVE_UP = "handshake gave up"
REASONS = (
    NOT_HANDSHAKE,
    BAD_MAC1,
    COOKIE_NEEDED,
    RATE_LIMITED,
    DECRYPT_FAILED,
    UNKNOWN_PEER,
    REPLAYED_TIMESTAMP,
    INITIATION_FLOOD,
    UNEXPECTED_RESPONSE,
    BAD_COOKIE_REPLY,
    NO_ENDPOINT,
    STAGED_OVERFLOW,
    HANDSHAKE_GAVE_UP,
)


# ------------------------------------------------------------ rate limiter


class RateLimiter:
    """Token buckets per source (an IPv4 address, or the /64 of an IPv6 one).

    ``rate`` handshake messages a second with bursts of ``burst``; at most
    ``max_entries`` sources are remembered. When the table is full, sources
    whose bucket has refilled (indistinguishable from new ones) are forgotten;
    if none has, a new source is refused.
    """

    def __init__(self, rate: float = 20.0, burst: int = 5, max_entries: int = 4096) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.max_entries = max_entries
        self._buckets: OrderedDict[bytes, list[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    @staticmethod
    def key(ip: str) -> bytes:
        a = ipaddress.ip_address(ip)
        if isinstance(a, ipaddress.IPv6Address):
            if a.ipv4_mapped is not None:
                return a.ipv4_mapped.packed
            return a.packed[:8]
        return a.packed

    def _collect(self, now: float) -> None:
        full_after = self.burst / self.rate
        for k in [k for k, (_, last) in self._buckets.items() if now - last >= full_after]:
            del self._buckets[k]

    def allow(self, ip: str, now: float) -> bool:
        k = self.key(ip)
        b = self._buckets.get(k)
        if b is None:
            if len(self._buckets) >= self.max_entries:
                self._collect(now)
                if len(self._buckets) >= self.max_entries:
                    return False
            self._buckets[k] = [self.burst - 1.0, now]
            return True
        tokens = min(self.burst, b[0] + max(0.0, now - b[1]) * self.rate)
        b[1] = max(b[1], now)
        if tokens >= 1.0:
            b[0] = tokens - 1.0
            return True
        b[0] = tokens
        return False


# ----------------------------------------------------------------- protocol


def _network(x: object) -> IPNetwork:
    if isinstance(x, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return x
    try:
        return ipaddress.ip_network(str(x), strict=False)
    except ValueError as e:
        raise ConfigError(f"allowed IP {x!r}: {e}") from None


def _endpoint(ep: object) -> tuple[str, int] | None:
    if ep is None:
        return None
    if not (isinstance(ep, tuple) and len(ep) == 2 and isinstance(ep[1], int)):
        raise ConfigError(f"endpoint {ep!r}: expected (address, port)")
    try:
        addr = str(ipaddress.ip_address(ep[0]))
    except ValueError as e:
        raise ConfigError(f"endpoint {ep!r}: {e}") from None
    if not 0 < ep[1] < 65536:
        raise ConfigError(f"endpoint {ep!r}: port must be 1..65535")
    return (addr, ep[1])


class Protocol:
    """The handshake, sessions and timers of one WireGuard interface."""

    def __init__(
        self,
        private_key: bytes,
        now: float,
        *,
        rng: random.Random | None = None,
        random_bytes: Callable[[int], bytes] = os.urandom,
        staged_limit: int = 128,
        replay_window: int = WINDOW_SIZE,
        rate_limiter: RateLimiter | None = None,
        rekey_after_time: float = REKEY_AFTER_TIME,
    ) -> None:
        self._rng = rng if rng is not None else random.Random()
        #: the initiator starts a new handshake when sending with a session this old
        #: (REKEY_AFTER_TIME; shorter only for testing: soaks that rekey every few seconds)
        self.rekey_after_time = rekey_after_time
        self._random_bytes = random_bytes
        self.staged_limit = staged_limit
        self.replay_window = replay_window
        self.created = now
        self.peers: dict[bytes, Peer] = {}
        self._index: dict[int, Peer] = {}
        self.drops: dict[str, int] = dict.fromkeys(REASONS, 0)
        self.rate_limiter = rate_limiter if rate_limiter is not None else RateLimiter()
        self.private_key = keys.check_key(private_key, "private key")
        self.public_key = keys.public_from_private(self.private_key)
        self.cookie_checker = CookieChecker(self.public_key, random_bytes=random_bytes)
        #: every receiver index of a peer ends in the peer's ``index_byte`` (tunnel/workers.py:
        #: a worker receives by that byte; one peer's sessions then share a worker)
        self.pin_index_byte = False

    # ------------------------------------------------------------ config
    def add_peer(
        self,
        public_key: bytes,
        *,
        preshared_key: bytes | None = None,
        endpoint: tuple[str, int] | None = None,
        persistent_keepalive: int = 0,
        allowed_ips: Iterable[object] = (),
    ) -> Peer:
        """Add the peer with this public key and return it.

        An existing peer is reconfigured, as by ``wg set`` with every field given:
        preshared key, allowed IPs and keepalive are replaced (the endpoint only when
        one is given); its sessions stay. Raises ConfigError for bad values."""
        pk = keys.check_key(public_key, "peer public key")
        if pk == self.public_key:
            raise ConfigError("peer public key is the interface's own public key")
        psk = keys.ZERO_KEY if preshared_key is None else keys.check_key(preshared_key, "psk")
        if not isinstance(persistent_keepalive, int) or not 0 <= persistent_keepalive <= 65535:
            raise ConfigError(f"persistent keepalive {persistent_keepalive!r}: 0..65535 seconds")
        nets = [_network(x) for x in allowed_ips]
        ep = _endpoint(endpoint)
        peer = self.peers.get(pk)
        if peer is None:
            peer = Peer(pk, staged_limit=self.staged_limit)
            self.peers[pk] = peer
        peer.preshared_key = psk
        if ep is not None:
            peer.endpoint = ep
        peer.allowed_ips = nets
        self.set_persistent_keepalive(peer, persistent_keepalive)
        return peer

    def set_persistent_keepalive(self, peer: Peer, seconds: int) -> None:
        """Set the interval; a keepalive goes at the next ``tick`` when it is turned on."""
        was = peer.persistent_keepalive
        peer.persistent_keepalive = seconds
        if seconds <= 0:
            peer.timers.persistent_keepalive = NEVER
        elif was <= 0:
            peer.timers.persistent_keepalive = 0.0  # due now: the next tick sends it

    def remove_peer(self, public_key: bytes) -> None:
        peer = self.peers.pop(public_key, None)
        if peer is None:
            return
        for i in peer.indices:
            self._index.pop(i, None)
        peer.indices.clear()
        peer.current = peer.previous = peer.next = None
        peer.handshake = None
        peer.staged.clear()
        peer.timers.stop_all()

    def set_private_key(self, private_key: bytes, now: float) -> None:
        """New static key: every handshake is void and no session sends any more."""
        sk = keys.check_key(private_key, "private key")
        if sk == self.private_key:
            return
        self.private_key = sk
        self.public_key = keys.public_from_private(sk)
        self.cookie_checker.set_public(self.public_key)
        if self.public_key in self.peers:
            self.remove_peer(self.public_key)
        for peer in self.peers.values():
            peer.handshake = None
            for kp in (peer.current, peer.next):
                if kp is not None:
                    kp.send_counter = REJECT_AFTER_MESSAGES
            peer.timers.last_sent_handshake = -NEVER
            self._sync_indices(peer)

    def _static_static(self, peer: Peer) -> bytes | None:
        """DH of our static key and the peer's, made once per key pair (None: the
        peer's key has small order)."""
        if peer.static_static_for != self.private_key:
            peer.static_static = noise.dh(self.private_key, peer.public_key)
            peer.static_static_for = self.private_key
        return peer.static_static

    def _ss_of_key(self, public_key: bytes) -> bytes | None:
        peer = self.peers.get(public_key)
        return self._static_static(peer) if peer is not None else None

    # ---------------------------------------------------------- indices
    def _new_index(self, peer: Peer) -> int:
        while True:
            i = secrets.randbits(32)
            if self.pin_index_byte:
                i = (i & ~0xFF) | peer.index_byte
            if i not in self._index:
                self._index[i] = peer
                peer.indices.add(i)
                return i

    def _sync_indices(self, peer: Peer) -> None:
        """Free the indices of sessions and handshakes the peer no longer has."""
        live = {k.local_index for k in peer.keypairs()}
        if peer.handshake is not None:
            live.add(peer.handshake.local_index)
        for i in peer.indices - live:
            if self._index.get(i) is peer:
                del self._index[i]
        peer.indices &= live

    def lookup(self, receiver_index: int, now: float | None = None) -> tuple[Peer, Keypair] | None:
        """The peer and keypair a data message's receiver index names (with ``now``:
        None for a keypair older than REJECT_AFTER_TIME)."""
        peer = self._index.get(receiver_index)
        if peer is None:
            return None
        kp = peer.keypair_for(receiver_index)
        if kp is None or (now is not None and kp.expired(now)):
            return None
        return peer, kp

    # ------------------------------------------------------------ helpers
    def _drop(self, reason: str) -> list[Action]:
        self.drops[reason] = self.drops.get(reason, 0) + 1
        return [Drop(reason)]

    def _send(self, peer: Peer, data: bytes) -> SendDatagram | None:
        if peer.endpoint is None:
            return None
        peer.tx_bytes += len(data)
        return SendDatagram(peer.endpoint, data, peer)

    # timer events (the names of the whitepaper's / reference implementations' hooks)
    def _any_authenticated_sent(self, peer: Peer) -> None:
        peer.timers.send_keepalive = NEVER

    def _any_authenticated_received(self, peer: Peer) -> None:
        peer.timers.new_handshake = NEVER

    def _any_authenticated_traversal(self, peer: Peer, now: float) -> None:
        if peer.persistent_keepalive > 0:
            peer.timers.persistent_keepalive = now + peer.persistent_keepalive

    def _session_derived(self, peer: Peer, now: float) -> None:
        peer.timers.zero_key_material = now + ZERO_KEYS_AFTER

    def _handshake_complete(self, peer: Peer, now: float) -> list[Action]:
        t = peer.timers
        t.retransmit_handshake = NEVER
        t.handshake_attempts = 0
        t.sent_last_minute_handshake = False
        peer.last_handshake = now
        return [HandshakeDone(peer)]

    # ------------------------------------------------------- handshakes
    def _start_handshake(self, peer: Peer, now: float, *, retry: bool) -> list[Action]:
        """Send an initiation unless one went out less than REKEY_TIMEOUT ago.

        While an attempt is under way (a retransmission is armed), new packets only
        restart the attempt's clock: the next initiation goes when the jittered
        retransmission timer says. (Sending at once, REKEY_TIMEOUT after the last,
        would keep two peers that initiate at the same moment in lock step: each
        answers the other's initiation, which voids its own.)"""
        t = peer.timers
        if not retry:  # new packets (or a rekey): the attempt starts over
            t.handshake_attempts = 0
            t.attempt_started = now
            if t.retransmit_handshake != NEVER:
                return []
        if now - t.last_sent_handshake < REKEY_TIMEOUT:
            if retry:
                t.retransmit_handshake = t.last_sent_handshake + REKEY_TIMEOUT + jitter(self._rng)
            return []
        if peer.endpoint is None:
            return self._drop(NO_ENDPOINT)
        made = noise.create_initiation(
            self.private_key,
            peer.public_key,
            0,
            now,
            static_public=self.public_key,
            static_static=self._static_static(peer),
        )
        if made is None:  # a peer key of small order: no handshake can ever succeed
            return self._drop(DECRYPT_FAILED)
        old = peer.handshake
        index = self._new_index(peer)
        msg, state = made
        state = noise.InitiatorState(
            state.chain, state.hash, state.ephemeral_private, state.remote_static, index
        )
        peer.handshake = Handshake(state, index)
        if old is not None:
            self._sync_indices(peer)
        wire = Initiation(
            index, msg.ephemeral, msg.encrypted_static, msg.encrypted_timestamp
        ).emit()
        data = peer.cookies.add_macs(wire, now)
        t.last_sent_handshake = now
        out: list[Action] = []
        send = self._send(peer, data)
        if send is not None:
            out.append(send)
        self._any_authenticated_traversal(peer, now)
        self._any_authenticated_sent(peer)
        t.retransmit_handshake = now + REKEY_TIMEOUT + jitter(self._rng)
        return out

    def handle_handshake(
        self, datagram: bytes, src: tuple[str, int], now: float, under_load: bool
    ) -> list[Action]:
        """A handshake message (initiation, response or cookie reply) from ``src``."""
        data = bytes(datagram)
        t = message_type(data)
        if t == MSG_COOKIE:
            return self._cookie_reply(data, now)
        if t not in (MSG_INITIATION, MSG_RESPONSE):
            return self._drop(NOT_HANDSHAKE)
        if not self.cookie_checker.check_mac1(data):
            return self._drop(BAD_MAC1)
        if under_load:
            if not self.cookie_checker.check_mac2(data, src, now):
                sender = int.from_bytes(data[4:8], "little")
                reply = self.cookie_checker.make_reply(data, sender, src, now)
                return [SendDatagram(src, reply, None), *self._drop(COOKIE_NEEDED)]
            if not self.rate_limiter.allow(src[0], now):
                return self._drop(RATE_LIMITED)
        if t == MSG_INITIATION:
            return self._initiation(data, src, now)
        return self._response(data, src, now)

    def _cookie_reply(self, data: bytes, now: float) -> list[Action]:
        reply = CookieReply.parse(data)
        peer = self._index.get(reply.receiver)
        if peer is None or not peer.cookies.consume_reply(reply, now):
            return self._drop(BAD_COOKIE_REPLY)
        return []

    def _initiation(self, data: bytes, src: tuple[str, int], now: float) -> list[Action]:
        msg = Initiation.parse(data)
        st = noise.consume_initiation(
            self.private_key, msg, static_public=self.public_key, static_static=self._ss_of_key
        )
        if st is None:
            return self._drop(DECRYPT_FAILED)
        if isinstance(st, noise.UnknownStatic):
            return self._drop(UNKNOWN_PEER)
        peer = self.peers[st.remote_static]
        if st.timestamp <= peer.last_timestamp:
            return self._drop(REPLAYED_TIMESTAMP)
        if now - peer.last_initiation <= HANDSHAKE_INITIATION_RATE:
            return self._drop(INITIATION_FLOOD)
        index = self._new_index(peer)
        made = noise.create_response(st, peer.preshared_key, index)
        if made is None:
            self._sync_indices(peer)
            return self._drop(DECRYPT_FAILED)
        peer.last_timestamp = st.timestamp
        peer.last_initiation = now
        peer.endpoint = (src[0], src[1])
        peer.rx_bytes += len(data)
        self._any_authenticated_traversal(peer, now)
        self._any_authenticated_received(peer)
        resp, ks = made
        kp = Keypair(
            index, st.remote_index, ks.send, ks.recv, now, False, replay_window=self.replay_window
        )
        # the responder's new session waits in `next` until the initiator uses it;
        # a handshake of our own in flight is superseded
        peer.next = kp
        peer.previous = None
        peer.handshake = None
        self._sync_indices(peer)
        self._session_derived(peer, now)
        out: list[Action] = []
        send = self._send(peer, peer.cookies.add_macs(resp.emit(), now))
        if send is not None:
            out.append(send)
        # no initiation of our own while the response is in flight
        peer.timers.last_sent_handshake = now
        self._any_authenticated_traversal(peer, now)
        self._any_authenticated_sent(peer)
        return out

    def _response(self, data: bytes, src: tuple[str, int], now: float) -> list[Action]:
        msg = Response.parse(data)
        peer = self._index.get(msg.receiver)
        hs = peer.handshake if peer is not None else None
        if peer is None or hs is None or hs.local_index != msg.receiver:
            return self._drop(UNEXPECTED_RESPONSE)
        ks = noise.consume_response(hs.state, self.private_key, peer.preshared_key, msg)
        if ks is None:
            return self._drop(DECRYPT_FAILED)
        peer.endpoint = (src[0], src[1])
        peer.rx_bytes += len(data)
        self._any_authenticated_traversal(peer, now)
        self._any_authenticated_received(peer)
        kp = Keypair(
            hs.local_index, msg.sender, ks.send, ks.recv, now, True,
            replay_window=self.replay_window,
        )  # fmt: skip
        # the initiator sends with the new session at once
        if peer.next is not None:
            peer.previous, peer.next = peer.next, None
        else:
            peer.previous = peer.current
        peer.current = kp
        peer.handshake = None
        self._sync_indices(peer)
        self._session_derived(peer, now)
        out = self._handshake_complete(peer, now)
        out += self._flush(peer, now, keepalive=True)
        return out

    # ----------------------------------------------------------- sending
    def _flush(self, peer: Peer, now: float, *, keepalive: bool) -> list[Action]:
        """Staged packets (or, with none, an owed or requested keepalive) now that a
        session can send."""
        if peer.staged:
            pkts = list(peer.staged)
            peer.staged.clear()
            peer.keepalive_pending = False
            return [Flush(peer, pkts)]
        if keepalive or peer.keepalive_pending:
            return self._keepalive(peer, now)
        return []

    def _keepalive(self, peer: Peer, now: float) -> list[Action]:
        """An encrypted empty data message, or a handshake first if no session can send."""
        kp = peer.send_keypair(now)
        if kp is None:
            peer.keepalive_pending = True
            return self._start_handshake(peer, now, retry=False)
        if peer.endpoint is None:
            return self._drop(NO_ENDPOINT)
        counter = kp.reserve(1, now)
        if counter is None:  # cannot happen after send_keypair, but stay safe
            peer.keepalive_pending = True
            return self._start_handshake(peer, now, retry=False)
        peer.keepalive_pending = False
        msg = kp.seal(counter, b"")
        out: list[Action] = [SendDatagram(peer.endpoint, msg, peer)]
        out += self.data_sent(peer, now, len(msg), keepalive=True)
        return out

    def stage(self, peer: Peer, packet: bytes, now: float) -> list[Action]:
        """Queue an inner packet for ``peer`` until a session can send it (bounded: the
        oldest goes first); flushes at once if one can, else starts a handshake."""
        out: list[Action] = []
        if len(peer.staged) >= peer.staged_limit:
            peer.staged.popleft()
            out += self._drop(STAGED_OVERFLOW)
        peer.staged.append(bytes(packet))
        if peer.send_keypair(now) is not None:
            return out + self._flush(peer, now, keepalive=False)
        return out + self._start_handshake(peer, now, retry=False)

    def send_keepalive(self, peer: Peer, now: float) -> list[Action]:
        """Send a keepalive now (handshaking first if need be)."""
        return self._keepalive(peer, now)

    def data_sent(self, peer: Peer, now: float, nbytes: int, keepalive: bool) -> list[Action]:
        """The data path sent ``nbytes`` (whole data messages) to ``peer``."""
        peer.tx_bytes += nbytes
        self._any_authenticated_traversal(peer, now)
        self._any_authenticated_sent(peer)
        t = peer.timers
        if not keepalive and t.new_handshake == NEVER:
            t.new_handshake = now + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + jitter(self._rng)
        kp = peer.current
        if kp is not None and (
            kp.send_counter > REKEY_AFTER_MESSAGES
            or (kp.initiator and now - kp.created >= self.rekey_after_time)
        ):
            return self._start_handshake(peer, now, retry=False)
        return []

    def data_received(
        self,
        peer: Peer,
        keypair: Keypair,
        src: tuple[str, int],
        now: float,
        nbytes: int,
        keepalive: bool,
    ) -> list[Action]:
        """The data path authenticated a data message of ``nbytes`` from ``src`` under
        ``keypair`` (and recorded its counter)."""
        out: list[Action] = []
        peer.endpoint = (src[0], src[1])
        peer.rx_bytes += nbytes
        if keypair is peer.next:  # the initiator uses our new session: confirm it
            peer.previous = peer.current
            peer.current = keypair
            peer.next = None
            self._sync_indices(peer)
            out += self._handshake_complete(peer, now)
            out += self._flush(peer, now, keepalive=False)
        t = peer.timers
        cur = peer.current
        if (
            not t.sent_last_minute_handshake
            and cur is not None
            and cur.initiator
            and now - cur.created >= REKEY_ON_RECEIVE_AGE
        ):
            t.sent_last_minute_handshake = True
            out += self._start_handshake(peer, now, retry=False)
        self._any_authenticated_traversal(peer, now)
        self._any_authenticated_received(peer)
        if not keepalive:
            if t.send_keepalive == NEVER:
                t.send_keepalive = now + KEEPALIVE_TIMEOUT
            else:
                t.need_another_keepalive = True
        return out

    # ------------------------------------------------------------ timers
    def next_deadline(self) -> float:
        """When ``tick`` has work next (``inf``: nothing armed)."""
        return min((p.timers.next() for p in self.peers.values()), default=NEVER)

    def tick(self, now: float) -> list[Action]:
        """Run every timer due at ``now``."""
        out: list[Action] = []
        for peer in list(self.peers.values()):
            for _ in range(16):  # each expiry disarms or moves its timer; bound anyway
                if peer.timers.next() > now:
                    break
                out += self._expire_one(peer, now)
        return out

    def _give_up(self, peer: Peer, now: float) -> list[Action]:
        """REKEY_ATTEMPT_TIME without an answer: drop what waited and the handshake;
        the keys go ZERO_KEYS_AFTER later."""
        t = peer.timers
        t.send_keepalive = NEVER
        out: list[Action] = []
        for _ in peer.staged:
            out += self._drop(HANDSHAKE_GAVE_UP)
        peer.staged.clear()
        peer.keepalive_pending = False
        peer.handshake = None
        self._sync_indices(peer)
        if t.zero_key_material == NEVER:
            t.zero_key_material = now + ZERO_KEYS_AFTER
        return out

    def _expire_one(self, peer: Peer, now: float) -> list[Action]:
        t = peer.timers
        if t.zero_key_material <= now:
            t.zero_key_material = NEVER
            peer.current = peer.previous = peer.next = None
            peer.handshake = None
            self._sync_indices(peer)
            return []
        if t.retransmit_handshake <= now:
            t.retransmit_handshake = NEVER
            if now - t.attempt_started >= REKEY_ATTEMPT_TIME:
                return self._give_up(peer, now)
            t.handshake_attempts += 1
            return self._start_handshake(peer, now, retry=True)
        if t.send_keepalive <= now:
            t.send_keepalive = NEVER
            out = self._keepalive(peer, now)
            if t.need_another_keepalive:
                t.need_another_keepalive = False
                t.send_keepalive = now + KEEPALIVE_TIMEOUT
            return out
        if t.new_handshake <= now:
            t.new_handshake = NEVER
            return self._start_handshake(peer, now, retry=False)
        if t.persistent_keepalive <= now:
            t.persistent_keepalive = NEVER
            if peer.persistent_keepalive > 0:
                out = self._keepalive(peer, now)
                if t.persistent_keepalive == NEVER and peer.endpoint is not None:
                    # nothing went out (e.g. a handshake rate-limited): try again later
                    t.persistent_keepalive = now + peer.persistent_keepalive
                return out
            return []
        return []
