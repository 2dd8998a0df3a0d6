"""The DoS filtering task in software (``Task.DOS_FILTER``), vectorised, sans-IO.

Checks, in this order; the first that fails drops the packet
(``filter_verdict = DROP``, ``filter_reason`` = the reason, one counter each):

1. size: IP packet bytes outside ``[min, max]`` → ``BAD_SIZE``
2. fragments → ``BAD_FRAGMENT``: any fragment when ``drop_all``; a TCP fragment
   at offset 8 bytes (RFC 1858 overlapping-header attack); a first fragment with
   fewer than ``min_first`` L4 bytes (tiny fragments); a fragment whose end lies
   past 65,535 bytes (ping of death)
3. drop lists: source or destination inside a listed prefix → ``DROP_LIST``
4. rate: a token bucket per source (``rate`` packets/s, ``burst`` deep); an
   IPv4 source is its address, an IPv6 source its /64 → ``RATE_LIMIT``
5. SYN flood → ``SYN_FLOOD``: a TCP SYN (without ACK) whose flow is not
   established spends a token of its source prefix's bucket (IPv4 /24, IPv6
   /64), or of its own bucket when the source completed a handshake through
   the filter; a flow is established only by a whole handshake (SYN let
   through, SYN-ACK acknowledging it, ACK acknowledging that). See ``SynGuard``.
6. anti-replay pre-check → ``REPLAY`` / ``TOO_OLD``. The filter runs before
   decryption, so it cannot tell a genuine packet from a forged one: it only
   reads windows that authenticated packets moved, each packet on its own, and
   changes nothing (RFC 4303 3.4.3). ESP packets are judged against the host
   windows of the decrypt task of the same ``SoftLibrary`` (``bind``; its SPIs,
   encapsulation ports and ESN inference); without a decrypt task there is no
   authenticated state and ESP passes (the decrypt task still checks). Packets
   with ``ext.sa`` >= 0 and ``ext.seq`` (64-bit) are judged against the
   filter's own windows, which only ``record`` (authenticated numbers) moves.

Checks 1-3 are stateless; 4-6 keep state across packets, and that state never
leaves the host: when the engine may split the packets between paths,
``prepare`` flags them (``XFlag.FILTER_ON_HOST``), the path filtering a packet
(a device's copy of this filter, a kernel cBPF program) does 1-3, and
``settle`` runs 4-6 on the host for those that passed, in the order the paths
hand them back. A device that fails takes no bucket or window with it.

Packets dropped by an earlier check spend no tokens.
Packets that fail to parse get ``ext.error``; non-IP frames pass untouched.

Time is passed in: ``process(batch, sel, now=...)``, ``set_time(now)``
beforehand, or a ``clock`` callable given when the task is made (the caller's
time, e.g. capture timestamps) — seconds, any origin, non-decreasing; the
filter never reads the system clock.
Inside one batch every packet is at the same instant, taken in batch order.

State tables (buckets, handshakes, established flows, known sources) are
sorted ``uint64`` key arrays with parallel value arrays, bounded by
``max_sources`` (rate) / ``max_flows`` (every SYN table): beyond
the bound the entries seen least recently are forgotten (a forgotten bucket
comes back full, as a new source would).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from netoffload.batch import Batch, FilterVerdict, Mask, Reason, XFlag
from netoffload.soft import SoftLibrary, SoftTask, register
from netoffload.soft.classify import FlowKeys, flow_keys, halves
from netoffload.soft.lpm import LpmTable
from netoffload.soft.replay import REPLAY, TOO_OLD, ReplayTable, in_batch_order, sort_groups
from netoffload.soft.rules import Bucket, DosConfig, load_dos, parse_dos
from netoffload.tasks import Task
from netoffload.wire.parse import be_words

U64 = NDArray[np.uint64]
I64 = NDArray[np.int64]
F64 = NDArray[np.float64]

_TOP = np.uint64(1 << 63)
_LOW63 = np.uint64((1 << 63) - 1)
_MIX = np.uint64(0x9E3779B97F4A7C15)
TCP_SYN = 0x02
TCP_ACK = 0x10


@runtime_checkable
class ReplayOracle(Protocol):
    """Where authenticated anti-replay state lives (the decrypt task)."""

    def replay_precheck(self, batch: Batch, rows: I64) -> NDArray[np.uint8]:
        """Verdicts of packets ``rows`` against the windows as they stand; no change."""
        ...


def source_keys(k: FlowKeys) -> U64:
    """Bucket keys of sources: IPv4 address (top bit set) or IPv6 /64."""
    hi, lo = halves(k.src)
    return np.where(k.ver == 4, _TOP | (lo & np.uint64(0xFFFFFFFF)), hi & _LOW63)


def address_keys(rows: NDArray[np.uint8], ver: I64) -> U64:
    """Keys of whole addresses: IPv4 exact, IPv6 a 63-bit mix of all 128 bits."""
    hi, lo = halves(rows)
    with np.errstate(over="ignore"):
        mixed = (hi * _MIX) ^ lo ^ (lo >> np.uint64(29))
    return np.where(ver == 4, _TOP | (lo & np.uint64(0xFFFFFFFF)), mixed & _LOW63)


def flow_hash(k: FlowKeys) -> U64:
    """A 64-bit hash of the 5-tuple (for the established-flow set)."""
    return flow_hash_of(k.src, k.dst, k.sport, k.dport, k.proto)


def flow_hash_of(
    src: NDArray[np.uint8], dst: NDArray[np.uint8], sport: I64, dport: I64, proto: I64
) -> U64:
    """``flow_hash`` of explicit fields (e.g. a reply's, with the ends swapped)."""
    sh, sl = halves(src)
    dh, dl = halves(dst)
    ports = (sport.astype(np.uint64) << np.uint64(16)) ^ dport.astype(np.uint64)
    h = np.zeros(len(sh), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for part in (sh, sl, dh, dl, ports, proto.astype(np.uint64)):
            h = (h ^ part) * _MIX
            h ^= h >> np.uint64(31)
    return h


class KeyTable:
    """Sorted uint64 keys with a ``last seen`` time; bounded, forgets the oldest."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.keys = np.zeros(0, dtype=np.uint64)
        self.last = np.zeros(0, dtype=np.float64)

    def __len__(self) -> int:
        return len(self.keys)

    def _extra(self) -> list[str]:
        return []

    def find(self, uk: U64) -> tuple[I64, Mask]:
        """Positions of sorted unique keys ``uk`` and whether they are present."""
        pos = np.searchsorted(self.keys, uk).astype(np.int64)
        cl = np.minimum(pos, max(len(self.keys) - 1, 0))
        found = (
            (pos < len(self.keys)) & (self.keys[cl] == uk)
            if len(self.keys)
            else np.zeros(len(uk), dtype=np.bool_)
        )
        return pos, found

    def insert(self, new_keys: U64, now: float, **values: NDArray[Any]) -> None:
        """Add keys (sorted, unique, absent) with initial values; trims to capacity."""
        if len(new_keys) == 0:
            return
        pos = np.searchsorted(self.keys, new_keys)
        self.keys = np.insert(self.keys, pos, new_keys)
        self.last = np.insert(self.last, pos, np.full(len(new_keys), now))
        for name in self._extra():
            setattr(self, name, np.insert(getattr(self, name), pos, values[name]))
        if len(self.keys) > self.capacity:
            drop = len(self.keys) - self.capacity
            # keep the most recently seen; new entries (last = now) are kept first
            order = np.argsort(self.last, kind="stable")
            keep = np.sort(order[drop:])
            self.keys = self.keys[keep]
            self.last = self.last[keep]
            for name in self._extra():
                setattr(self, name, getattr(self, name)[keep])

    def upsert(self, uk: U64, now: float, **values: NDArray[Any]) -> None:
        """Set the values of keys ``uk`` (sorted, unique), adding the absent ones."""
        pos, found = self.find(uk)
        fp = pos[found]
        self.last[fp] = now
        for name, v in values.items():
            getattr(self, name)[fp] = v[found]
        self.insert(uk[~found], now, **{name: v[~found] for name, v in values.items()})

    def remove(self, keys: U64) -> None:
        """Forget ``keys`` (those present)."""
        pos, found = self.find(keys)
        if not found.any():
            return
        keep = np.ones(len(self.keys), dtype=np.bool_)
        keep[pos[found]] = False
        self.keys = self.keys[keep]
        self.last = self.last[keep]
        for name in self._extra():
            setattr(self, name, getattr(self, name)[keep])


class BucketTable(KeyTable):
    """Token buckets by key (``rate`` tokens/s up to ``burst``), one token per packet."""

    def __init__(self, bucket: Bucket, capacity: int) -> None:
        super().__init__(capacity)
        self.rate = bucket.rate
        self.burst = bucket.burst
        self.tokens = np.zeros(0, dtype=np.float64)

    def _extra(self) -> list[str]:
        return ["tokens"]

    def take(self, keys: U64, now: float) -> Mask:
        """Which packets (in batch order, all at ``now``) get a token."""
        n = len(keys)
        if n == 0:
            return np.zeros(0, dtype=np.bool_)
        # one sort gives the unique keys and each packet's group
        order, newgrp = sort_groups(keys, stable=False)
        starts = np.flatnonzero(newgrp)
        uk = keys[order[starts]]
        pos, found = self.find(uk)
        if not found.all():
            missing = uk[~found]
            self.insert(missing, now, tokens=np.full(len(missing), self.burst))
            pos, found = self.find(uk)
        # keys trimmed away right after insertion (batch larger than capacity): fresh buckets
        tok = np.full(len(uk), self.burst)
        fp = pos[found]
        tok[found] = np.minimum(
            self.burst, self.tokens[fp] + self.rate * np.maximum(0.0, now - self.last[fp])
        )
        # the packet of rank r (0-based, batch order) in its group gets a token if r + 1 <= tok
        count = np.diff(starts, append=n).astype(np.float64)
        if (count <= tok + 1e-9).all():  # enough for every packet: ranks do not matter
            self.tokens[fp] = tok[found] - count[found]
            self.last[fp] = now
            return np.ones(n, dtype=np.bool_)
        order = in_batch_order(order, newgrp)
        gid = np.cumsum(newgrp) - 1  # group of each sorted packet
        rank_sorted = np.arange(n) - starts[gid]
        ok_sorted = rank_sorted.astype(np.float64) + 1.0 <= tok[gid] + 1e-9
        used = np.bincount(gid[ok_sorted], minlength=len(uk)).astype(np.float64)
        self.tokens[fp] = tok[found] - used[found]
        self.last[fp] = now
        allowed = np.empty(n, dtype=np.bool_)
        allowed[order] = ok_sorted
        return allowed


class FlowSet(KeyTable):
    def add(self, keys: U64, now: float) -> None:
        uk = np.unique(keys)
        pos, found = self.find(uk)
        self.last[pos[found]] = now
        self.insert(uk[~found], now)

    def contains(self, keys: U64) -> Mask:
        if len(self.keys) == 0:
            return np.zeros(len(keys), dtype=np.bool_)
        _, found = self.find(keys)
        return found


class Handshakes(KeyTable):
    """TCP handshakes in progress, by the flow hash of client → server.

    ``state`` 1: the client's SYN passed the filter (``isn_c`` its sequence
    number); 2: the server's SYN-ACK acknowledged it (``isn_s`` the server's).
    """

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity)
        self.state = np.zeros(0, dtype=np.uint8)
        self.isn_c = np.zeros(0, dtype=np.uint32)
        self.isn_s = np.zeros(0, dtype=np.uint32)

    def _extra(self) -> list[str]:
        return ["state", "isn_c", "isn_s"]


_SYN_ONLY = TCP_SYN
_SYN_ACK = TCP_SYN | TCP_ACK
_ACK_ONLY = TCP_ACK
_M32 = 0xFFFFFFFF


def prefix_keys(k: FlowKeys) -> U64:
    """Keys of source prefixes: IPv4 /24 (top bit set) or IPv6 /64."""
    hi, lo = halves(k.src)
    return np.where(k.ver == 4, _TOP | ((lo & np.uint64(0xFFFFFFFF)) >> np.uint64(8)), hi & _LOW63)


class SynGuard:
    """SYN-flood limits and the handshakes that lift them.

    A TCP SYN (without ACK) whose flow is not established spends a token: from
    its source's own bucket when the source is *known* (it completed a
    handshake through the filter), else from its source prefix's bucket (IPv4
    /24, IPv6 /64), so a flood spoofed from some prefixes cannot spend the
    budget of others, nor that of the known sources inside them.

    A flow is established, and its client known, only after the whole
    handshake: a SYN the filter let through, then the server's SYN-ACK whose
    acknowledgment number is the SYN's sequence number + 1, then the client's
    ACK acknowledging the SYN-ACK's sequence number + 1. A bare ACK establishes
    nothing. The filter must see both directions for that (a gateway, a
    capture); a filter that sees only the inbound one establishes nothing and
    limits every SYN by its prefix.

    Within a batch the handshake steps are taken in packet order; which flows
    are established and which sources known is what it was when the batch
    began (a handshake completed in a batch lifts limits from the next one).
    Every table is bounded by ``capacity`` (least recently seen forgotten).
    """

    def __init__(self, bucket: Bucket, capacity: int) -> None:
        self.burst = bucket.burst
        self.prefixes = BucketTable(bucket, capacity)
        self.known = BucketTable(bucket, capacity)  # sources that completed a handshake
        self.pending = Handshakes(capacity)
        self.established = FlowSet(capacity)

    def sizes(self) -> dict[str, int]:
        return {
            "prefixes": len(self.prefixes),
            "known_sources": len(self.known),
            "handshakes": len(self.pending),
            "established": len(self.established),
        }

    def limit(self, buf: NDArray[np.uint8], k: FlowKeys, live: Mask, now: float) -> Mask:
        """Which packets are over their SYN budget; then the handshake steps of the
        packets that remain (the caller drops the flood before later checks,
        none of which concerns TCP)."""
        n = len(live)
        flood = np.zeros(n, dtype=np.bool_)
        tcp = k.has_ports & (k.proto == 6)
        if not tcp.any():
            return flood
        fl = k.tcp_flags & (TCP_SYN | TCP_ACK)
        syn = live & tcp & (fl == _SYN_ONLY)
        track = np.zeros(n, dtype=np.bool_)
        if syn.any():
            si = np.flatnonzero(syn)
            sk = _sub(k, si)
            charge = ~self.established.contains(flow_hash(sk))
            si = si[charge]
            if len(si):
                addr = address_keys(k.src[si], k.ver[si])
                _, known = self.known.find(addr)
                ok = np.ones(len(si), dtype=np.bool_)
                if known.any():
                    ok[known] = self.known.take(addr[known], now)
                if not known.all():
                    ok[~known] = self.prefixes.take(prefix_keys(_sub(k, si[~known])), now)
                flood[si[~ok]] = True
                track[si[ok]] = True  # SYNs let through start handshakes
        steps = live & ~flood & tcp & (k.l4_avail >= 16)
        steps &= track | (fl == _SYN_ACK) | (fl == _ACK_ONLY)
        if steps.any():
            self._handshakes(buf, k, np.flatnonzero(steps), track, now)
        return flood

    def _handshakes(
        self, buf: NDArray[np.uint8], k: FlowKeys, rows: I64, track: Mask, now: float
    ) -> None:
        """Advance handshakes with the SYNs let through (``track``), SYN-ACKs and
        ACKs among ``rows`` (batch order)."""
        w = be_words(buf, k.l4_off[rows] + 4, 8)
        seq = (w >> np.uint64(32)).astype(np.int64)
        ack = (w & np.uint64(_M32)).astype(np.int64)
        fl = k.tcp_flags[rows] & (TCP_SYN | TCP_ACK)
        is_syn = track[rows]
        is_sa = fl == _SYN_ACK
        is_ack = fl == _ACK_ONLY
        # the client -> server flow of each: a SYN-ACK's is its reverse
        key = flow_hash_of(k.src[rows], k.dst[rows], k.sport[rows], k.dport[rows], k.proto[rows])
        if is_sa.any():
            r = rows[is_sa]
            key[is_sa] = flow_hash_of(k.dst[r], k.src[r], k.dport[r], k.sport[r], k.proto[r])
        syn_keys = np.unique(key[is_syn])
        pend = self.pending

        def member(q: U64, sorted_keys: U64) -> Mask:
            if len(sorted_keys) == 0:
                return np.zeros(len(q), dtype=np.bool_)
            p = np.minimum(np.searchsorted(sorted_keys, q), len(sorted_keys) - 1)
            return np.asarray(sorted_keys[p] == q)

        sa_rel = is_sa & (member(key, pend.keys) | member(key, syn_keys))
        k1 = np.unique(key[sa_rel])
        acked = pend.keys[pend.state == 2]
        ack_rel = is_ack & (member(key, acked) | member(key, k1))
        hot = np.union1d(k1, key[ack_rel])  # flows whose handshake moves past the SYN
        in_hot = member(key, hot)
        # SYNs of other flows: (re)start their handshakes, the last SYN of a flow wins
        cold = is_syn & ~in_hot
        if cold.any():
            ck = key[cold][::-1]
            uk, first = np.unique(ck, return_index=True)
            x = seq[cold][::-1][first]
            pend.upsert(
                uk,
                now,
                state=np.ones(len(uk), np.uint8),
                isn_c=x.astype(np.uint32),
                isn_s=np.zeros(len(uk), np.uint32),
            )
        if not len(hot):
            return
        # the few flows with a SYN-ACK or an ACK that may count: packet by packet
        pos, found = pend.find(hot)
        st: dict[int, list[int]] = {}
        for h, p in zip(hot[found].tolist(), pos[found].tolist(), strict=True):
            st[h] = [int(pend.state[p]), int(pend.isn_c[p]), int(pend.isn_s[p])]
        done_flows: list[int] = []
        done_src: list[int] = []
        ev = np.flatnonzero(in_hot & (is_syn | is_sa | is_ack))
        src_keys = address_keys(k.src[rows[ev]], k.ver[rows[ev]]).tolist()
        for j, i in enumerate(ev.tolist()):
            h = int(key[i])
            if is_syn[i]:
                st[h] = [1, int(seq[i]), 0]
                continue
            cur = st.get(h)
            if cur is None:
                continue
            if is_sa[i]:
                if int(ack[i]) == (cur[1] + 1) & _M32:
                    cur[0], cur[2] = 2, int(seq[i])
            elif cur[0] == 2 and int(ack[i]) == (cur[2] + 1) & _M32:
                del st[h]
                done_flows.append(h)
                done_src.append(src_keys[j])
        pend.remove(hot)
        if st:
            left = np.array(sorted(st), dtype=np.uint64)
            vals = np.array([st[int(h)] for h in left], dtype=np.int64).reshape(-1, 3)
            pend.upsert(
                left,
                now,
                state=vals[:, 0].astype(np.uint8),
                isn_c=vals[:, 1].astype(np.uint32),
                isn_s=vals[:, 2].astype(np.uint32),
            )
        if done_flows:
            self.established.add(np.array(done_flows, dtype=np.uint64), now)
            src = np.unique(np.array(done_src, dtype=np.uint64))
            p2, f2 = self.known.find(src)
            self.known.last[p2[f2]] = now
            new = src[~f2]
            self.known.insert(new, now, tokens=np.full(len(new), self.burst))


class _Drops:
    """Verdicts being made for packets: which are still live, and why the others
    were dropped. Called with a mask and a reason, it drops the live ones in it."""

    def __init__(self, live: Mask) -> None:
        self.live = live
        self.reason = np.zeros(len(live), dtype=np.uint16)

    def __call__(self, mask: Mask, why: Reason) -> None:
        m = self.live & mask
        self.reason[m] = why
        self.live[m] = False


_ON_HOST = np.uint8(XFlag.FILTER_ON_HOST)


class DosFilter(SoftTask):
    """The DoS filter (module docstring). Its stateful rules never leave the host:
    when the engine may split the packets between paths, ``prepare`` flags them
    (``XFlag.FILTER_ON_HOST``), the path that filters a packet does the
    stateless rules, and ``settle`` runs the stateful ones on the host, in
    packet order, on the packets that passed. A device that fails takes no
    state with it; every path's verdicts use the same buckets and windows."""

    task = Task.DOS_FILTER

    def __init__(self, cfg: DosConfig, clock: Callable[[], float] | None = None) -> None:
        self.cfg = cfg
        self.clock = clock
        self.now = 0.0
        self.sources = BucketTable(cfg.rate, cfg.max_sources) if cfg.rate else None
        self.syn = SynGuard(cfg.syn, cfg.max_flows) if cfg.syn else None
        self.drop_src = LpmTable((p, 0) for p in cfg.drop_src) if cfg.drop_src else None
        self.drop_dst = LpmTable((p, 0) for p in cfg.drop_dst) if cfg.drop_dst else None
        self.replay = ReplayTable(cfg.replay_window) if cfg.replay_window else None
        #: the authenticated ESP windows (the decrypt task of the library), if any
        self.esp_replay: ReplayOracle | None = None
        self.counters: dict[str, int] = {"packets": 0, "pass": 0, "error": 0}

    @property
    def stateful(self) -> bool:
        """Whether any rule keeps state across packets."""
        return self.sources is not None or self.syn is not None or self.replay is not None

    def set_time(self, now: float) -> None:
        self.now = float(now)

    def bind(self, library: SoftLibrary) -> None:
        """The ESP replay pre-check reads the windows of the library's decrypt task."""
        self.esp_replay = None
        if Task.DECRYPT in library:
            dec = library[Task.DECRYPT]
            if isinstance(dec, ReplayOracle):
                self.esp_replay = dec

    def record(self, sas: NDArray[np.integer[Any]] | list[int], seqs: NDArray[np.uint64]) -> None:
        """Authenticated (sa, seq) pairs (``ext.sa`` / ``ext.seq`` numbering) move the
        filter's own windows; nothing else does."""
        if self.replay is not None:
            self.replay.record(np.asarray(sas, np.int64), np.asarray(seqs, np.uint64))

    def _count(self, reason: Reason, n: int) -> None:
        if n:
            key = reason.name.lower()
            self.counters[key] = self.counters.get(key, 0) + n

    def _count_reasons(self, reason: NDArray[np.uint16]) -> None:
        if (reason != 0).any():
            for v, m in enumerate(np.bincount(reason).tolist()):
                if v and m:
                    self._count(Reason(v), m)

    # ------------------------------------------------------------ host steps
    def prepare(self, batch: Batch, sel: Mask) -> None:
        """Before the engine splits ``sel`` packets between paths: the stateful
        rules are left to the host (``settle``); the time is the clock's now."""
        if self.clock is not None:
            self.now = float(self.clock())
        if self.stateful:
            e = batch.ext
            rows = np.flatnonzero(np.asarray(sel, dtype=np.bool_) & e.alive())
            e.xflags[rows] |= _ON_HOST

    def settle(self, batch: Batch, sel: Mask) -> None:
        """After a path filtered ``sel`` packets that ``prepare`` flagged: the
        stateful rules, on the host, in packet order, for those that passed."""
        e = batch.ext
        rows = np.flatnonzero(np.asarray(sel, dtype=np.bool_) & ((e.xflags & _ON_HOST) != 0))
        if len(rows) == 0:
            return
        e.xflags[rows] &= ~_ON_HOST
        rows = rows[e.alive()[rows]]
        if len(rows) == 0:
            return
        k = flow_keys(batch, rows)
        d = _Drops(k.ver != 0)
        self._stateful(batch, k, rows, d, self.now)
        out = d.reason != 0
        e.filter_verdict[rows[out]] = FilterVerdict.DROP
        e.filter_reason[rows[out]] = d.reason[out]
        self.counters["pass"] += int(np.count_nonzero(d.live))
        self._count_reasons(d.reason)

    # ------------------------------------------------------------ the rules
    def process(self, batch: Batch, sel: Mask, now: float | None = None) -> Batch:
        if now is not None:
            self.now = float(now)
        elif self.clock is not None:
            self.now = float(self.clock())
        t = self.now
        idx = np.flatnonzero(np.asarray(sel, dtype=np.bool_)[: len(batch)]).astype(np.int64)
        if len(idx) == 0:
            return batch
        e = batch.ext
        k = flow_keys(batch, idx)
        n = len(idx)
        bad = (k.reason != 0) & (k.reason != Reason.NOT_IP)
        ip = k.ver != 0
        d = _Drops(ip.copy())
        self._stateless(k, d)
        host = (e.xflags[idx] & _ON_HOST) != 0  # stateful rules: the host's settle
        if not host.any():
            self._stateful(batch, k, idx, d, t)
        elif not host.all():
            later = d.live & host
            d.live &= ~host
            self._stateful(batch, k, idx, d, t)
            d.live |= later
        # write results
        reason = d.reason
        ii = idx[ip]
        e.filter_verdict[ii] = np.where(reason[ip] != 0, FilterVerdict.DROP, FilterVerdict.PASS)
        e.filter_reason[ii] = reason[ip]
        e.error[idx[bad]] = k.reason[bad]
        c = self.counters
        c["packets"] += n
        c["pass"] += int((ip & (reason == 0) & ~host).sum())
        c["error"] += int(bad.sum())
        self._count_reasons(reason)
        return batch

    def _stateless(self, k: FlowKeys, drop: _Drops) -> None:
        """Size, fragments, drop lists (what a cBPF program can do too)."""
        cfg = self.cfg
        n = len(k.ver)
        drop((k.ip_len < cfg.min_size) | (k.ip_len > cfg.max_size), Reason.BAD_SIZE)
        first = k.frag & (k.frag_off == 0)
        badfrag = k.frag & (k.frag_off + k.l4_avail > 65535)
        badfrag |= k.frag & (k.proto == 6) & (k.frag_off == 8)
        badfrag |= first & (k.l4_avail < cfg.min_first_fragment)
        if cfg.drop_fragments:
            badfrag |= k.frag
        drop(badfrag, Reason.BAD_FRAGMENT)
        live = drop.live
        if self.drop_src is not None and live.any():
            hit = np.zeros(n, dtype=np.bool_)
            hit[live] = self.drop_src.lookup(k.src[live], k.is_v4[live]) >= 0
            drop(hit, Reason.DROP_LIST)
        live = drop.live
        if self.drop_dst is not None and live.any():
            hit = np.zeros(n, dtype=np.bool_)
            hit[live] = self.drop_dst.lookup(k.dst[live], k.is_v4[live]) >= 0
            drop(hit, Reason.DROP_LIST)

    def _stateful(self, batch: Batch, k: FlowKeys, idx: I64, drop: _Drops, t: float) -> None:
        """Rate, SYN flood, anti-replay pre-check, for the live packets in order."""
        n = len(idx)
        if self.sources is not None and drop.live.any():
            li = np.flatnonzero(drop.live)
            keys = source_keys(k)[li]
            ok = self.sources.take(keys, t)
            over = np.zeros(n, dtype=np.bool_)
            over[li[~ok]] = True
            drop(over, Reason.RATE_LIMIT)
        if self.syn is not None and drop.live.any():
            drop(self.syn.limit(batch.buf, k, drop.live, t), Reason.SYN_FLOOD)
        if self.replay is not None and drop.live.any():
            self._replay(batch, k, idx, drop.live, drop)

    def _replay(self, batch: Batch, k: FlowKeys, idx: I64, live: Mask, drop: Any) -> None:
        """The anti-replay pre-check (changes nothing; see the module docstring)."""
        assert self.replay is not None
        e = batch.ext
        n = len(idx)
        sa = e.sa[idx].astype(np.int64)
        has = live & (sa >= 0)
        v = np.zeros(n, dtype=np.uint8)
        if has.any():
            hi = np.flatnonzero(has)
            v[hi] = self.replay.precheck(sa[hi], e.seq[idx[hi]])
        esp = live & ~has & ((k.proto == 50) | ((k.proto == 17) & k.has_ports))
        if self.esp_replay is not None and esp.any():
            ei = np.flatnonzero(esp)
            v[ei] = self.esp_replay.replay_precheck(batch, idx[ei])
        drop(v == REPLAY, Reason.REPLAY)
        drop(v == TOO_OLD, Reason.TOO_OLD)

    def describe(self) -> dict[str, object]:
        return {
            "task": self.task.kebab,
            "sources": len(self.sources) if self.sources else 0,
            "established": len(self.syn.established) if self.syn else 0,
            "syn_state": self.syn.sizes() if self.syn else {},
            "counters": dict(self.counters),
        }


def _sub(k: FlowKeys, rows: I64, src: NDArray[np.uint8] | None = None) -> FlowKeys:
    """The keys of some of the packets."""
    return FlowKeys(
        idx=k.idx[rows],
        reason=k.reason[rows],
        ver=k.ver[rows],
        src=k.src[rows] if src is None else src,
        dst=k.dst[rows],
        proto=k.proto[rows],
        has_ports=k.has_ports[rows],
        sport=k.sport[rows],
        dport=k.dport[rows],
        dscp=k.dscp[rows],
        frag=k.frag[rows],
        frag_off=k.frag_off[rows],
        more_frags=k.more_frags[rows],
        ip_len=k.ip_len[rows],
        tcp_flags=k.tcp_flags[rows],
        l4_off=k.l4_off[rows],
        l4_avail=k.l4_avail[rows],
    )


def make_dos(
    rules: str | Path | DosConfig | dict[str, Any] | None = None,
    clock: Callable[[], float] | None = None,
    **_: Any,
) -> DosFilter:
    """``rules``: a rule file path, a parsed DosConfig, or the [dos] table."""
    if rules is None:
        cfg = DosConfig()
    elif isinstance(rules, DosConfig):
        cfg = rules
    elif isinstance(rules, dict):
        cfg = parse_dos(rules)
    else:
        cfg = load_dos(rules)
    return DosFilter(cfg, clock)


register(Task.DOS_FILTER, make_dos)
