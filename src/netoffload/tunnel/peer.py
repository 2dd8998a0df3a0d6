"""A WireGuard peer and its keypairs (transport sessions).

A ``Keypair`` is one session: the two transport keys a handshake derived, the
index each side chose, the next send counter and the receive window. A
``Peer`` holds up to three keypairs, as the whitepaper's section 6.4 (and the
reference implementations) rotate them:

* ``current``: the session to send with;
* ``previous``: the session before, kept to receive packets still in flight;
* ``next``: the responder's new session, not used to send until the initiator
  proved it has it (its first data packet arrives under it).

The protocol state of a peer (handshake in progress, timers, staged packets,
cookie) lives here too; ``Protocol`` (protocol.py) drives it.
"""

from __future__ import annotations

import ipaddress
import secrets
from collections import deque
from dataclasses import dataclass
from typing import Protocol as TypingProtocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from netoffload.tunnel.cookie import CookieGenerator
from netoffload.tunnel.keys import ZERO_KEY
from netoffload.tunnel.noise import InitiatorState, nonce
from netoffload.tunnel.replay import WINDOW_SIZE, ReplayWindow
from netoffload.tunnel.timers import REJECT_AFTER_MESSAGES, REJECT_AFTER_TIME, PeerTimers
from netoffload.wire.wireguard import (
    DATA_HEADER_LEN,
    DATA_MIN_LEN,
    MSG_DATA,
    data_header,
)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
PAD = 16


def padded_len(n: int) -> int:
    """Plaintext length after WireGuard's zero padding to a multiple of 16."""
    return (n + PAD - 1) // PAD * PAD


class CounterCell(TypingProtocol):
    """A keypair's send counter kept outside the keypair (e.g. in memory that worker
    processes share, tunnel/workers.py): ``reserve`` takes ``n`` consecutive counters
    at once for whoever asks first, so no two senders ever get the same one."""

    def value(self) -> int: ...

    def set(self, v: int) -> None: ...

    def reserve(self, n: int, limit: int) -> int | None: ...


class Keypair:
    """One transport session with a peer."""

    __slots__ = (
        "_sent",
        "cell",
        "created",
        "initiator",
        "local_index",
        "recv_aead",
        "recv_key",
        "remote_index",
        "replay",
        "send_aead",
        "send_key",
    )

    def __init__(
        self,
        local_index: int,
        remote_index: int,
        send_key: bytes,
        recv_key: bytes,
        created: float,
        initiator: bool,
        *,
        replay_window: int = WINDOW_SIZE,
    ) -> None:
        self.local_index = local_index
        self.remote_index = remote_index
        self.send_key = send_key
        self.recv_key = recv_key
        self.send_aead = ChaCha20Poly1305(send_key)
        self.recv_aead = ChaCha20Poly1305(recv_key)
        self.created = created
        self.initiator = initiator
        self.replay = ReplayWindow(replay_window)
        self._sent = 0
        #: where the send counter lives when not here (None: ``_sent``)
        self.cell: CounterCell | None = None

    @property
    def send_counter(self) -> int:
        """The next counter to send with."""
        return self._sent if self.cell is None else self.cell.value()

    @send_counter.setter
    def send_counter(self, v: int) -> None:
        if self.cell is None:
            self._sent = v
        else:
            self.cell.set(v)

    def __repr__(self) -> str:
        role = "initiator" if self.initiator else "responder"
        return (
            f"Keypair(local={self.local_index:#x}, remote={self.remote_index:#x}, {role}, "
            f"created={self.created:.3f}, sent={self.send_counter})"
        )

    def age(self, now: float) -> float:
        return now - self.created

    def expired(self, now: float) -> bool:
        """Older than REJECT_AFTER_TIME: neither sent nor received with any more."""
        return now - self.created >= REJECT_AFTER_TIME

    def can_send(self, now: float) -> bool:
        return self.send_counter < REJECT_AFTER_MESSAGES and not self.expired(now)

    def reserve(self, n: int, now: float) -> int | None:
        """The first of ``n`` consecutive send counters, now taken; None (nothing taken)
        if that would reach REJECT_AFTER_MESSAGES or the keypair is too old."""
        if n < 0 or self.expired(now):
            return None
        if self.cell is not None:
            return self.cell.reserve(n, REJECT_AFTER_MESSAGES)
        first = self._sent
        if first + n > REJECT_AFTER_MESSAGES:
            return None
        self._sent = first + n
        return first

    def seal(self, counter: int, plaintext: bytes) -> bytes:
        """A whole data message carrying ``plaintext`` zero-padded to a multiple of 16."""
        pad = -len(plaintext) % PAD
        if pad:
            plaintext = bytes(plaintext) + bytes(pad)
        ct = self.send_aead.encrypt(nonce(counter), plaintext, None)
        return data_header(self.remote_index, counter) + ct

    def open(self, message: bytes | bytearray | memoryview) -> tuple[int, bytes] | None:
        """``(counter, plaintext with its padding)`` of a data message for this keypair;
        None if it is not one or does not authenticate. The replay window is not touched."""
        if len(message) < DATA_MIN_LEN:
            return None
        m = bytes(message)
        if m[0] != MSG_DATA or m[1:4] != b"\x00\x00\x00":
            return None
        if int.from_bytes(m[4:8], "little") != self.local_index:
            return None
        counter = int.from_bytes(m[8:16], "little")
        if counter >= REJECT_AFTER_MESSAGES:
            return None
        try:
            return counter, self.recv_aead.decrypt(nonce(counter), m[DATA_HEADER_LEN:], None)
        except InvalidTag:
            return None


@dataclass(slots=True)
class Handshake:
    """A handshake this side started and whose response it awaits."""

    state: InitiatorState
    local_index: int


class Peer:
    """A configured peer: identity, addresses, sessions, counters and protocol state."""

    def __init__(
        self,
        public_key: bytes,
        *,
        preshared_key: bytes = ZERO_KEY,
        endpoint: tuple[str, int] | None = None,
        persistent_keepalive: int = 0,
        allowed_ips: list[IPNetwork] | None = None,
        staged_limit: int = 128,
    ) -> None:
        self.public_key = public_key
        self.preshared_key = preshared_key
        self.endpoint = endpoint
        self.persistent_keepalive = persistent_keepalive
        self.allowed_ips: list[IPNetwork] = list(allowed_ips or [])
        self.current: Keypair | None = None
        self.previous: Keypair | None = None
        self.next: Keypair | None = None
        self.rx_bytes = 0
        self.tx_bytes = 0
        #: wall time of the last completed handshake (0: never)
        self.last_handshake = 0.0
        # protocol state (driven by Protocol)
        self.handshake: Handshake | None = None
        self.timers = PeerTimers()
        self.cookies = CookieGenerator(public_key)
        self.staged: deque[bytes] = deque()
        self.staged_limit = staged_limit
        #: a keepalive is owed as soon as a session can send
        self.keepalive_pending = False
        #: greatest TAI64N timestamp of an initiation accepted from this peer
        self.last_timestamp = b""
        #: when the last initiation from this peer was accepted
        self.last_initiation = float("-inf")
        #: local indices this peer owns in the protocol's index table
        self.indices: set[int] = set()
        #: the low byte of every receiver index of this peer when the protocol pins it
        #: (Protocol.pin_index_byte: the worker a session is received by follows the peer,
        #: so old and new sessions of a rekey land in the same worker)
        self.index_byte = secrets.randbits(8)
        #: DH(our static private key, this peer's public key), and for which private key
        self.static_static: bytes | None = None
        self.static_static_for = b""

    def __repr__(self) -> str:
        import base64

        return f"Peer({base64.b64encode(self.public_key).decode()}, endpoint={self.endpoint})"

    def keypairs(self) -> list[Keypair]:
        return [k for k in (self.current, self.previous, self.next) if k is not None]

    def send_keypair(self, now: float) -> Keypair | None:
        """The keypair to send with now (``current`` if it is neither too old nor used up)."""
        kp = self.current
        if kp is not None and kp.can_send(now):
            return kp
        return None

    def keypair_for(self, local_index: int) -> Keypair | None:
        for k in (self.current, self.previous, self.next):
            if k is not None and k.local_index == local_index:
                return k
        return None
