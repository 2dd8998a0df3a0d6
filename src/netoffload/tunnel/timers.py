"""WireGuard's protocol constants (whitepaper section 6.1) and the per-peer timers.

Times are float seconds; every function takes the time of the moment, none
reads a clock. The timers of a peer are deadlines (``inf`` when not armed);
``Protocol.tick`` runs those that have passed, and ``next_deadline`` says when
the next one is due.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

REKEY_AFTER_MESSAGES = 1 << 60
REJECT_AFTER_MESSAGES = (1 << 64) - (1 << 13) - 1
REKEY_AFTER_TIME = 120.0
REJECT_AFTER_TIME = 180.0
REKEY_ATTEMPT_TIME = 90.0
REKEY_TIMEOUT = 5.0
KEEPALIVE_TIMEOUT = 10.0
#: retransmissions of an initiation before giving up (REKEY_ATTEMPT_TIME / REKEY_TIMEOUT)
MAX_TIMER_HANDSHAKES = int(REKEY_ATTEMPT_TIME / REKEY_TIMEOUT)
#: random extra delay added to handshake retransmissions (whitepaper 6.1: up to 333 ms)
REKEY_TIMEOUT_JITTER_MAX = 1.0 / 3
#: the initiator rekeys on receive when its session is this old (the paper's
#: Reject-After-Time - Keepalive-Timeout - Rekey-Timeout)
REKEY_ON_RECEIVE_AGE = REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT
#: the responder accepts at most one initiation per peer in this interval (flood check)
HANDSHAKE_INITIATION_RATE = 1.0 / 50
#: keys are erased when no new session was made for this long
ZERO_KEYS_AFTER = REJECT_AFTER_TIME * 3

NEVER = math.inf


def jitter(rng: random.Random) -> float:
    """Retransmission jitter in [0, REKEY_TIMEOUT_JITTER_MAX)."""
    return rng.random() * REKEY_TIMEOUT_JITTER_MAX


@dataclass(slots=True)
class PeerTimers:
    """Deadlines of one peer (``NEVER`` when a timer is not armed)."""

    #: resend the initiation (REKEY_TIMEOUT + jitter after sending one)
    retransmit_handshake: float = NEVER
    #: send a passive keepalive (KEEPALIVE_TIMEOUT after receiving data, unless we sent)
    send_keepalive: float = NEVER
    #: start a handshake (KEEPALIVE + REKEY_TIMEOUT + jitter after sending data unanswered)
    new_handshake: float = NEVER
    #: erase every key (ZERO_KEYS_AFTER after the last session was derived)
    zero_key_material: float = NEVER
    #: the persistent keepalive (its interval after any authenticated packet)
    persistent_keepalive: float = NEVER
    #: a keepalive was due again while one was pending
    need_another_keepalive: bool = False
    #: retransmissions of the current handshake attempt
    handshake_attempts: int = 0
    #: when the current attempt began (new packets or a rekey start one; retries do not)
    attempt_started: float = -NEVER
    #: the one initiation sent on receive for an old session was sent
    sent_last_minute_handshake: bool = False
    #: when the last initiation was sent (no new one within REKEY_TIMEOUT)
    last_sent_handshake: float = -NEVER

    def next(self) -> float:
        return min(
            self.retransmit_handshake,
            self.send_keepalive,
            self.new_handshake,
            self.zero_key_material,
            self.persistent_keepalive,
        )

    def stop_all(self) -> None:
        self.retransmit_handshake = NEVER
        self.send_keepalive = NEVER
        self.new_handshake = NEVER
        self.zero_key_material = NEVER
        self.persistent_keepalive = NEVER
        self.need_another_keepalive = False
