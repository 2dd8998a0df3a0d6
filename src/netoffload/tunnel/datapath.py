"""The WireGuard data path as engine tasks: what each of the ten tasks does in the tunnel.

Transmit (TUN read -> UDP send), one engine, stages in this order:

- ``classify`` (``WgRoute``): cryptokey routing. The inner destination is looked
  up by longest prefix over every peer's AllowedIPs; ``ext.class_id`` becomes
  the peer's slot. No peer: ``Reason.NO_PEER``.
- ``tcp-segment`` / ``udp-segment``: the library's tasks cut GSO super-packets
  (from the TUN's virtio_net_hdr) to MTU-sized inner packets.
- ``checksum``: the library's fill completes partial checksums.
- ``encrypt`` (``WgEncrypt``): ``prepare`` (host, in packet order, before any
  split) takes each peer's current sending keypair and reserves its counters for
  the peer's packets in one step; a peer without a usable keypair gets its packets
  staged in the protocol core (``Reason.STAGED``: they are sent once the
  handshake it starts completes). ``process`` pads each plaintext to a multiple
  of 16, seals it with ChaCha20-Poly1305 in place (nonce: 32 zero bits and the
  64-bit little-endian counter, no associated data) and puts the outer IP/UDP
  header for the peer's endpoint and the 16-byte transport header in front: the
  packet leaves the stage as the outer datagram, an IP packet, which the UDP
  device turns into ``UDP_SEGMENT`` sends per destination.

Receive (UDP recv -> TUN write):

- ``udp-assemble`` is the kernel's (``UDP_GRO``); the UDP device splits the
  coalesced datagrams back into IP packets, one per WireGuard message.
- ``digest`` (``WgMac``): for handshake messages, mac1 verified (bad:
  ``Reason.BAD_MAC1``) and mac2 checked against the current cookie secret; the
  result goes to ``ext.class_id`` (1: mac2 valid, 0: not).
- ``dos-filter`` (``WgFilter``): type and exact length; for transport messages an
  unknown receiver index (``UNKNOWN_INDEX``) and the replay pre-check (no state
  change: ``REPLAY``); for handshake messages the per-source rate limit
  (``HANDSHAKE_RATE``) and, under load, the cookie demand (``COOKIE_NEEDED``,
  a cookie reply is sent). Surviving handshake messages leave the engine with
  ``Reason.HANDSHAKE`` for the protocol core.
- ``decrypt`` (``WgDecrypt``): opens the message in place; keepalives are
  consumed (``Reason.KEEPALIVE``); ``settle`` updates the replay window, only
  for packets that authenticated.
- ``classify`` (``WgSource``): the inner source must lie in the AllowedIPs of
  the peer the session belongs to (``BAD_SOURCE``).
- ``checksum`` (verify), ``tcp-assemble``, ``udp-assemble`` (GRO into
  super-packets for the TUN write): the library's tasks.

Sans-IO like the rest of ``soft/``: time is set by the caller (``Datapath.now``)
and outgoing protocol messages collect in ``Datapath.actions``.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import weakref
from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Any
from typing import Protocol as TypingProtocol

import numpy as np
from numpy.typing import NDArray

from netoffload import _native
from netoffload.batch import Batch, Mask, Reason, XFlag, copy_ranges
from netoffload.soft import SoftTask
from netoffload.soft.lpm import NO_MATCH, LpmTable
from netoffload.tasks import Task, bit16
from netoffload.wire.wireguard import (
    COOKIE_LEN,
    DATA_HEADER_LEN,
    INITIATION_LEN,
    MSG_COOKIE,
    MSG_DATA,
    MSG_INITIATION,
    MSG_RESPONSE,
    RESPONSE_LEN,
    TAG_LEN,
    data_headers,
)

I64 = NDArray[np.int64]
U8 = NDArray[np.uint8]

_HANDSHAKE_LEN = {
    MSG_INITIATION: INITIATION_LEN,
    MSG_RESPONSE: RESPONSE_LEN,
    MSG_COOKIE: COOKIE_LEN,
}
DATA_HEADER = DATA_HEADER_LEN
TAG = TAG_LEN
#: outer IPv4 + UDP, IPv6 + UDP header bytes
OUTER4 = 28
OUTER6 = 48
#: headroom / tailroom a batch needs for encryption in place
HEADROOM = OUTER6 + DATA_HEADER
TAILROOM = 15 + TAG

_U_CSUM = bit16(Task.CHECKSUM)
_U_TSO = bit16(Task.TCP_SEGMENT)
_U_USO = bit16(Task.UDP_SEGMENT)
_U_TGRO = bit16(Task.TCP_ASSEMBLE)
_U_UGRO = bit16(Task.UDP_ASSEMBLE)
_U_DEC = bit16(Task.DECRYPT)
_U_CLS = bit16(Task.CLASSIFY)
_U_DIG = bit16(Task.DIGEST)
#: first nibble of an IP packet -> ext.l3_proto (4, 6, else 0)
_L3_OF_NIBBLE = np.zeros(16, dtype=np.uint8)
_L3_OF_NIBBLE[[4, 6]] = [4, 6]
_L3_NIBBLE = _L3_OF_NIBBLE.tolist()


class _Keypair(TypingProtocol):
    """What the data path needs of a session keypair (tunnel.peer.Keypair)."""

    local_index: int
    remote_index: int
    send_aead: Any
    recv_aead: Any
    replay: Any

    def reserve(self, n: int, now: float) -> int | None: ...


class _Peer(TypingProtocol):
    public_key: bytes
    endpoint: tuple[str, int] | None
    allowed_ips: Any

    def send_keypair(self, now: float) -> Any: ...


class SessionListener(TypingProtocol):
    """Told about keypair slots as the host uses them (e.g. the emulated NIC's key
    table, tunnel/nic.py): a slot handed to a packet, a slot forgotten."""

    def keypair_used(self, slot: int, kp: Any, peer: Any) -> None: ...

    def keypair_forgotten(self, slot: int) -> None: ...


@dataclass
class Sessions:
    """Slots the extension refers to: ``ext.class_id`` is a peer slot, ``ext.sa`` a
    keypair slot. Slots are plain ints, made once per peer / keypair.

    ``listener`` (optional) hears of every slot ``keypair_slot`` hands out, before
    the packets carrying it go anywhere, and of every slot forgotten."""

    peers: list[Any] = field(default_factory=list)
    keypairs: dict[int, Any] = field(default_factory=dict)
    kp_owner: dict[int, int] = field(default_factory=dict)  # keypair slot -> peer slot
    _kp_slot: dict[int, int] = field(default_factory=dict)  # id(keypair) -> slot
    _next_kp: int = 0
    listener: SessionListener | None = None

    def peer_slot(self, peer: Any) -> int:
        for i, p in enumerate(self.peers):
            if p is peer:
                return i
        for i, p in enumerate(self.peers):
            if p is None:
                self.peers[i] = peer
                return i
        self.peers.append(peer)
        return len(self.peers) - 1

    def drop_peer(self, peer: Any) -> None:
        for i, p in enumerate(self.peers):
            if p is peer:
                self.peers[i] = None
                for k in [k for k, o in self.kp_owner.items() if o == i]:
                    self._forget(k)

    def keypair_slot(self, kp: Any, peer_slot: int) -> int:
        s = self._kp_slot.get(id(kp))
        if s is None or self.keypairs.get(s) is not kp:
            s = self._next_kp
            self._next_kp = (self._next_kp + 1) & 0x7FFFFFFF
            self.keypairs[s] = kp
            self.kp_owner[s] = peer_slot
            self._kp_slot[id(kp)] = s
            if len(self.keypairs) > 4096:  # old sessions: forget the oldest slots
                for old in list(self.keypairs)[:1024]:
                    self._forget(old)
        if self.listener is not None:
            ps = self.kp_owner.get(s, peer_slot)
            peer = self.peers[ps] if 0 <= ps < len(self.peers) else None
            self.listener.keypair_used(s, kp, peer)
        return s

    def _forget(self, s: int) -> None:
        kp = self.keypairs.pop(s, None)
        self.kp_owner.pop(s, None)
        if kp is not None:
            self._kp_slot.pop(id(kp), None)
            if self.listener is not None:
                self.listener.keypair_forgotten(s)


class Datapath:
    """State the WireGuard tasks share: the protocol core, slots, the clock of the
    current batch and the protocol actions the tasks produced."""

    def __init__(self, protocol: Any, listen_port: int = 0) -> None:
        self.protocol = protocol
        self.listen_port = listen_port
        self.sessions = Sessions()
        self.now = 0.0
        self.under_load = False
        self.actions: list[Any] = []
        #: datagrams the tasks want sent as they are (cookie replies): (destination, bytes)
        self.outbox: list[tuple[tuple[str, int], bytes]] = []
        self._lpm = LpmTable([])
        self.rebuild()

    def rebuild(self) -> None:
        """Refresh peer slots and the AllowedIPs table from the protocol's peers."""
        live = list(self.protocol.peers.values())
        for p in list(self.sessions.peers):
            if p is not None and not any(p is q for q in live):
                self.sessions.drop_peer(p)
        entries: list[tuple[Any, int]] = []
        for p in live:
            slot = self.sessions.peer_slot(p)
            for net in p.allowed_ips:
                entries.append((ipaddress.ip_network(net, strict=False), slot))
        self._lpm = LpmTable(entries)

    def lookup(self, rows: U8, is_v4: Mask) -> I64:
        return self._lpm.lookup(rows, is_v4)

    def take_actions(self) -> list[Any]:
        a, self.actions = self.actions, []
        return a


# --------------------------------------------------------------------------- helpers


def addr_rows(b: Batch, sel: Mask, which: str) -> tuple[U8, Mask, Mask]:
    """(n_sel, 16) address rows (IPv4 mapped) of the inner IP header, an "is IPv4" mask
    and an "ok" mask (IP version 4 or 6, long enough)."""
    idx = np.flatnonzero(sel)
    st = b.start[idx]
    ln = b.length[idx]
    ver = np.where(ln > 0, b.buf[np.minimum(st, len(b.buf) - 1)] >> 4, 0)
    v4 = ver == 4
    v6 = ver == 6
    ok = (v4 & (ln >= 20)) | (v6 & (ln >= 40))
    rows = np.zeros((len(idx), 16), dtype=np.uint8)
    off4 = 16 if which == "dst" else 12
    off6 = 24 if which == "dst" else 8
    m4 = v4 & ok
    if m4.any():
        pos = st[m4][:, None] + off4 + np.arange(4)
        rows[m4, 10] = 0xFF
        rows[m4, 11] = 0xFF
        rows[m4, 12:16] = b.buf[pos]
    m6 = v6 & ok
    if m6.any():
        pos = st[m6][:, None] + off6 + np.arange(16)
        rows[m6] = b.buf[pos]
    return rows, v4, ok


def outer_len(b: Batch, idx: I64) -> I64:
    """Bytes of the outer IP + UDP header of received datagrams (the UDP device builds it)."""
    ver = b.buf[b.start[idx]] >> 4
    return np.where(ver == 6, OUTER6, OUTER4).astype(np.int64)


def outer_source(b: Batch, i: int, start: int | None = None) -> tuple[str, int]:
    """The outer source address and port of received datagram ``i`` (its outer header
    at ``start``, when the engine has moved ``b.start[i]`` past it)."""
    s = int(b.start[i]) if start is None else start
    raw = bytes(b.buf[s : s + OUTER6])
    if raw[0] >> 4 == 6:
        return str(ipaddress.IPv6Address(raw[8:24])), int.from_bytes(raw[40:42], "big")
    # inet_ntoa: what str(IPv4Address) gives, a tenth of the time (floods come through here)
    return socket.inet_ntoa(raw[12:16]), int.from_bytes(raw[20:22], "big")


def inner_ip_length(b: Batch, idx: I64) -> I64:
    """Total length from each (decrypted) inner IP header; -1 where it is not IP."""
    st = b.start[idx]
    ln = b.length[idx]
    out = np.full(len(idx), -1, dtype=np.int64)
    has = ln >= 20
    ver = np.zeros(len(idx), dtype=np.int64)
    ver[has] = b.buf[st[has]] >> 4
    v4 = has & (ver == 4)
    v6 = (ln >= 40) & (ver == 6)
    if v4.any():
        p = st[v4]
        out[v4] = (b.buf[p + 2].astype(np.int64) << 8) | b.buf[p + 3]
    if v6.any():
        p = st[v6]
        out[v6] = ((b.buf[p + 4].astype(np.int64) << 8) | b.buf[p + 5]) + 40
    return out


_XF_PARSED = np.uint8(XFlag.PARSED)
#: the mac2 of a sender that holds no cookie (whitepaper 5.4.4: 16 zero bytes)
_NO_MAC2 = bytes(16)


def inner_layout(b: Batch, rows: I64) -> NDArray[np.int64]:
    """Header layout of decrypted inner packets (bare IPv4/IPv6 with their lengths already
    checked), straight into the extension; returns the L4 protocol where the packet is
    TCP or UDP with a whole header (unfragmented), else 0. The general parser
    (wire.parse) would need a copy of the rows and does far more than this needs."""
    e = b.ext
    st = b.start[rows]
    ln = b.length[rows]
    buf = b.buf
    v6 = (buf[st] >> 4) == 6
    ihl = np.where(v6, 40, (buf[st] & 0x0F).astype(np.int64) * 4)
    proto = np.where(v6, buf[st + 6], buf[st + 9]).astype(np.int64)
    frag = ~v6 & ((((buf[st + 6].astype(np.int64) & 0x3F) << 8) | buf[st + 7]) != 0)
    okl3 = (ihl >= 20) & (ihl <= ln)
    tcp = okl3 & ~frag & (proto == 6) & (ln >= ihl + 20)
    udp = okl3 & ~frag & (proto == 17) & (ln >= ihl + 8)
    doff = np.zeros(len(rows), dtype=np.int64)
    if tcp.any():
        doff[tcp] = (buf[st[tcp] + ihl[tcp] + 12] >> 4).astype(np.int64) * 4
        tcp &= (doff >= 20) & (ihl + doff <= ln)
    l4 = tcp | udp
    e.l3_off[rows] = 0
    e.l3_proto[rows] = np.where(v6, 6, 4)
    e.l4_proto[rows] = proto
    e.l4_off[rows] = np.where(l4, ihl, -1)
    e.hdr_len[rows] = np.where(tcp, ihl + doff, np.where(udp, ihl + 8, ihl))
    e.xflags[rows] |= _XF_PARSED
    return np.where(l4, proto, 0)


# --------------------------------------------------------------------------- small batches

#: a batch of at most this many packets takes the tasks' scalar paths: plain Python
#: ints instead of numpy, whose every call costs a microsecond or more whatever the
#: size (one packet -- a ping, a keepalive, a keystroke -- paid ~100 us a task for
#: them). Results are the batch path's, byte for byte (tests/tunnel/test_datapath_small.py
#: runs both on the same inputs); 0 turns the scalar paths off. Measured (one core,
#: ICMP batches, per task): the scalar paths are faster up to ~48 packets (at 32:
#: filter 59 vs 119 us, encrypt 125 vs 200, classify 32 vs 58), even at 64.
SMALL = 32


class _ScalarLpm:
    """The answers of one ``LpmTable`` for one address at a time: a bisection of
    its interval starts, which is what its ``searchsorted`` does."""

    __slots__ = ("has4", "has6", "s4", "s6", "v4", "v6")

    def __init__(self, t: LpmTable) -> None:
        self.has4 = t.has4
        self.has6 = t.has6
        self.s4: list[int] = t._s4.tolist()
        self.v4: list[int] = t._v4.tolist()
        # (S16 items come back without their trailing zero bytes)
        self.s6 = [int.from_bytes(x.ljust(16, b"\0"), "big") for x in t._s6.tolist()]
        self.v6: list[int] = t._v6.tolist()

    def lookup(self, v4: bool, addr: int) -> int:
        if v4:
            return self.v4[bisect_right(self.s4, addr) - 1] if self.has4 else NO_MATCH
        return self.v6[bisect_right(self.s6, addr) - 1] if self.has6 else NO_MATCH


_SCALAR_LPM: weakref.WeakKeyDictionary[LpmTable, _ScalarLpm] = weakref.WeakKeyDictionary()


def _scalar_lpm(dp: Any) -> _ScalarLpm | None:
    """The scalar form of ``dp``'s AllowedIPs table (made once per table)."""
    t = getattr(dp, "_lpm", None)
    if not isinstance(t, LpmTable):
        return None
    s = _SCALAR_LPM.get(t)
    if s is None:
        try:
            s = _ScalarLpm(t)
        except (AttributeError, TypeError):  # a table laid out otherwise: the batch path
            return None
        _SCALAR_LPM[t] = s
    return s


def _addr_one(mv: memoryview, nbuf: int, st: int, ln: int, dst: bool) -> tuple[bool, bool, int]:
    """``addr_rows`` for one packet: (ok, is IPv4, the address as an int)."""
    ver = mv[min(st, nbuf - 1)] >> 4 if ln > 0 else 0
    if ver == 4:
        if ln < 20:
            return False, True, 0
        o = st + (16 if dst else 12)
        return True, True, int.from_bytes(mv[o : o + 4], "big")
    if ver == 6 and ln >= 40:
        o = st + (24 if dst else 8)
        return True, False, int.from_bytes(mv[o : o + 16], "big")
    return False, False, 0


def _outer_one(mv: memoryview, st: int) -> int:
    """``outer_len`` for one datagram."""
    return OUTER6 if mv[st] >> 4 == 6 else OUTER4


def _inner_ip_length_one(mv: memoryview, st: int, ln: int) -> int:
    """``inner_ip_length`` for one packet."""
    if ln < 20:
        return -1
    ver = mv[st] >> 4
    if ver == 4:
        return (mv[st + 2] << 8) | mv[st + 3]
    if ver == 6 and ln >= 40:
        return ((mv[st + 4] << 8) | mv[st + 5]) + 40
    return -1


_PARSED = int(XFlag.PARSED)
_TX_BASE = int(Task.CLASSIFY | Task.ENCRYPT)
_RX_BASE = int(Task.DOS_FILTER | Task.DECRYPT | Task.DIGEST)
_I_TSO, _I_USO, _I_CSUM = int(_U_TSO), int(_U_USO), int(_U_CSUM)
_I_DIG, _I_DEC = int(_U_DIG), int(_U_DEC)
_I_CLS, _I_TGRO, _I_UGRO = int(_U_CLS), int(_U_TGRO), int(_U_UGRO)
#: outer headers of a sealed datagram: IPv4 (version/IHL, total length, TTL 64, UDP,
#: destination) or IPv6 (version, payload length, UDP, hop limit 64, destination),
#: then UDP (ports, length); the transport header (type, receiver index, counter)
_OUT4 = struct.Struct("!BxH4xBB2x4x4sHHH2x")
_OUT6 = struct.Struct("!B3xHBB16x16sHHH2x")
_WG_HDR = struct.Struct("<B3xIQ")
_PACKED: dict[object, tuple[bytes, bool]] = {}
#: slot alignment of Batch.alloc
_SLOT_ALIGN = 64


def _packed(host: object) -> tuple[bytes, bool]:
    """An endpoint address's bytes and whether it is IPv6 (remembered: ipaddress
    costs microseconds a call)."""
    r = _PACKED.get(host)
    if r is None:
        a = ipaddress.ip_address(host)  # type: ignore[arg-type]
        r = (a.packed, a.version == 6)
        if len(_PACKED) >= 1024:
            _PACKED.clear()
        _PACKED[host] = r
    return r


def _inner_layout_one(b: Batch, mv: memoryview, i: int, st: int, ln: int) -> int:
    """``inner_layout`` for packet ``i``: the extension written, the L4 protocol returned."""
    v6 = (mv[st] >> 4) == 6
    ihl = 40 if v6 else (mv[st] & 0x0F) * 4
    proto = mv[st + 6] if v6 else mv[st + 9]
    frag = not v6 and (((mv[st + 6] & 0x3F) << 8) | mv[st + 7]) != 0
    okl3 = 20 <= ihl <= ln
    tcp = okl3 and not frag and proto == 6 and ln >= ihl + 20
    udp = okl3 and not frag and proto == 17 and ln >= ihl + 8
    hdr = ihl
    if tcp:
        doff = (mv[st + ihl + 12] >> 4) * 4
        tcp = doff >= 20 and ihl + doff <= ln
        if tcp:
            hdr = ihl + doff
    if udp:
        hdr = ihl + 8
    l4 = tcp or udp
    e = b.ext
    e.l3_off[i] = 0
    e.l3_proto[i] = 6 if v6 else 4
    e.l4_proto[i] = proto
    e.l4_off[i] = ihl if l4 else -1
    e.hdr_len[i] = hdr
    e.xflags[i] |= _PARSED
    return proto if l4 else 0


# --------------------------------------------------------------------------- transmit


class WgRoute(SoftTask):
    """Transmit ``classify``: cryptokey routing, inner destination -> peer slot."""

    task = Task.CLASSIFY

    def __init__(self, dp: Datapath) -> None:
        self.dp = dp

    def process(self, batch: Batch, sel: Mask) -> Batch:
        if len(batch.length) <= SMALL:
            lpm = _scalar_lpm(self.dp)
            if lpm is not None:
                return self._small(batch, sel, lpm)
        rows, v4, ok = addr_rows(batch, sel, "dst")
        slot = self.dp.lookup(rows, v4)
        idx = np.flatnonzero(sel)
        e = batch.ext
        e.class_id[idx] = np.where(ok, slot, NO_MATCH)
        bad = idx[~ok]
        e.error[bad] = Reason.NOT_IP
        none = idx[ok & (slot == NO_MATCH)]
        e.error[none] = Reason.NO_PEER
        return batch

    def _small(self, batch: Batch, sel: Mask, lpm: _ScalarLpm) -> Batch:
        e = batch.ext
        mv = batch.buf.data
        nbuf = len(batch.buf)
        st = batch.start.tolist()
        ln = batch.length.tolist()
        for i in np.flatnonzero(sel).tolist():
            ok, v4, addr = _addr_one(mv, nbuf, st[i], ln[i], True)
            if not ok:
                e.class_id[i] = NO_MATCH
                e.error[i] = Reason.NOT_IP
                continue
            slot = lpm.lookup(v4, addr)
            e.class_id[i] = slot
            if slot == NO_MATCH:
                e.error[i] = Reason.NO_PEER
        return batch

    def describe(self) -> dict[str, object]:
        return {"task": self.task.kebab, "what": "cryptokey routing (LPM over AllowedIPs)"}


class WgEncrypt(SoftTask):
    """Transmit ``encrypt``: WireGuard transport messages, sealed in batch memory."""

    task = Task.ENCRYPT

    def __init__(self, dp: Datapath) -> None:
        self.dp = dp
        #: keypair slot -> padded plaintext bytes of the packets given counters (in
        #: ``prepare``: what gets sealed, by software or a device); the caller resets it
        self.sent_bytes: dict[int, int] = {}

    def prepare(self, batch: Batch, sel: Mask) -> None:
        """Per peer, in packet order: a sending keypair and its counters (ext.sa, ext.seq)."""
        if len(batch.length) <= SMALL:
            self._prepare_small(batch, sel)
            return
        e = batch.ext
        todo = sel & (e.sa < 0) & (e.error == 0)
        idx = np.flatnonzero(todo)
        if not len(idx):
            return
        dp = self.dp
        peers = e.class_id[idx]
        for ps in np.unique(peers).tolist():
            rows = idx[peers == ps]
            peer = dp.sessions.peers[ps] if 0 <= ps < len(dp.sessions.peers) else None
            if peer is None:
                e.error[rows] = Reason.NO_PEER
                continue
            kp = peer.send_keypair(dp.now)
            first = kp.reserve(len(rows), dp.now) if kp is not None else None
            if kp is None or first is None or peer.endpoint is None:
                if kp is not None and first is not None:
                    pass  # cannot happen: endpoint None handled below
                if peer.endpoint is None and kp is not None:
                    e.error[rows] = Reason.NO_ENDPOINT
                    continue
                for r in rows.tolist():
                    s = int(batch.start[r])
                    pkt = bytes(batch.buf[s : s + int(batch.length[r])])
                    dp.actions.extend(dp.protocol.stage(peer, pkt, dp.now))
                e.error[rows] = Reason.STAGED
                continue
            slot = dp.sessions.keypair_slot(kp, ps)
            e.sa[rows] = slot
            e.seq[rows] = np.arange(first, first + len(rows), dtype=np.uint64)
            # counted here, where the counters are taken: whichever path seals them
            plen = batch.length[rows]
            sealed = int(np.add.reduce(plen + ((-plen) & 15)))
            self.sent_bytes[slot] = self.sent_bytes.get(slot, 0) + sealed

    def process(self, batch: Batch, sel: Mask) -> Batch:
        if len(batch.length) <= SMALL:
            return self._small(batch, sel)
        self.prepare(batch, sel)  # (the engine runs it only before a split; idempotent)
        e = batch.ext
        go = sel & (e.sa >= 0) & (e.error == 0)
        if not go.any():
            return batch
        dp = self.dp
        idx = np.flatnonzero(go)
        n = len(batch)
        plen = batch.length.copy()
        pad = (-plen) & 15
        outer = np.zeros(n, dtype=np.int64)
        fam6 = np.zeros(n, dtype=np.bool_)
        # outer family per peer endpoint
        kps = e.sa[idx]
        ends: dict[int, tuple[bytes, int, bool]] = {}
        uslots, slot_of = np.unique(kps, return_inverse=True)
        for s in uslots.tolist():
            ps = dp.sessions.kp_owner[s]
            ep = dp.sessions.peers[ps].endpoint
            a = ipaddress.ip_address(ep[0])
            ends[s] = (a.packed, int(ep[1]), a.version == 6)
        # per slot, then per packet by the slot's position (no Python step a packet)
        six = np.array([ends[s][2] for s in uslots.tolist()], dtype=np.bool_)[slot_of]
        fam6[idx] = six
        outer[idx] = np.where(six, OUTER6, OUTER4)
        new_len = batch.length.copy()
        new_len[idx] = outer[idx] + DATA_HEADER + plen[idx] + pad[idx] + TAG
        out = Batch.alloc(new_len, headroom=0, tailroom=0, uniform=False)
        out.ext = batch.ext
        # copy: sealed packets' plaintext after their headers, others as they are
        dst_off = np.zeros(n, dtype=np.int64)
        dst_off[idx] = outer[idx] + DATA_HEADER
        copy_ranges(out.buf, out.start + dst_off, batch.buf, batch.start, batch.length)
        st = out.start[idx]
        o = outer[idx]
        ln = new_len[idx]
        # WireGuard transport header: type 4, receiver index, counter (little endian)
        h = st + o
        out.buf[h] = MSG_DATA
        recv_idx = np.array(
            [dp.sessions.keypairs[s].remote_index for s in uslots.tolist()], dtype="<u4"
        )[slot_of]
        out.buf[h[:, None] + 4 + np.arange(4)] = recv_idx.view(np.uint8).reshape(-1, 4)
        ctr = e.seq[idx].astype("<u8")
        out.buf[h[:, None] + 8 + np.arange(8)] = ctr.view(np.uint8).reshape(-1, 8)
        # outer IP/UDP headers
        udp_len = ln - o + 8
        for s, (packed, port, v6) in ends.items():
            m = kps == s
            rs = st[m]
            if v6:
                out.buf[rs] = 0x60
                pl = udp_len[m]
                out.buf[rs + 4] = (pl >> 8) & 0xFF
                out.buf[rs + 5] = pl & 0xFF
                out.buf[rs + 6] = 17
                out.buf[rs + 7] = 64
                out.buf[rs[:, None] + 24 + np.arange(16)] = np.frombuffer(packed, np.uint8)
                u = rs + 40
            else:
                tot = ln[m]
                out.buf[rs] = 0x45
                out.buf[rs + 2] = (tot >> 8) & 0xFF
                out.buf[rs + 3] = tot & 0xFF
                out.buf[rs + 8] = 64
                out.buf[rs + 9] = 17
                out.buf[rs[:, None] + 16 + np.arange(4)] = np.frombuffer(packed, np.uint8)
                u = rs + 20
            ul = udp_len[m]
            out.buf[u] = (dp.listen_port >> 8) & 0xFF
            out.buf[u + 1] = dp.listen_port & 0xFF
            out.buf[u + 2] = (port >> 8) & 0xFF
            out.buf[u + 3] = port & 0xFF
            out.buf[u + 4] = (ul >> 8) & 0xFF
            out.buf[u + 5] = ul & 0xFF
        # seal in place: one AEAD call a packet (one kernel call a keypair slot)
        body = st + o + DATA_HEADER
        clen = plen[idx] + pad[idx]
        kern = _aead_kernel()
        if kern is not None:
            _aead_slots(kern, dp.sessions.keypairs, True, kps, body, clen, e.seq[idx], out.buf)
        else:
            mv = memoryview(out.buf.data)
            bl = body.tolist()
            cl = clen.tolist()
            nonce = bytearray(12)
            nmv = memoryview(nonce)
            seqs = e.seq[idx].tolist()
            for j, s in enumerate(kps.tolist()):
                aead = dp.sessions.keypairs[s].send_aead
                nmv[4:12] = seqs[j].to_bytes(8, "little")
                p0 = bl[j]
                c = cl[j]
                aead.encrypt_into(nonce, mv[p0 : p0 + c], b"", mv[p0 : p0 + c + TAG])
        # the extension now describes the outer datagram
        e.l3_off[idx] = 0
        e.l4_off[idx] = o - 8
        e.hdr_len[idx] = o
        e.l3_proto[idx] = np.where(six, 6, 4)
        e.l4_proto[idx] = 17
        e.vflags[idx] = 0
        e.gso_type[idx] = 0
        e.gso_size[idx] = 0
        e.csum_start[idx] = 0
        e.csum_offset[idx] = 0
        return out

    def _prepare_small(self, batch: Batch, sel: Mask) -> None:
        e = batch.ext
        sa = e.sa.tolist()
        err = e.error.tolist()
        idx = [i for i in np.flatnonzero(sel).tolist() if sa[i] < 0 and not err[i]]
        if not idx:
            return
        dp = self.dp
        cls = e.class_id.tolist()
        ln = batch.length.tolist()
        peers = dp.sessions.peers
        for ps in sorted({cls[i] for i in idx}):  # per peer slot, as np.unique
            rows = [i for i in idx if cls[i] == ps]
            peer = peers[ps] if 0 <= ps < len(peers) else None
            if peer is None:
                for r in rows:
                    e.error[r] = Reason.NO_PEER
                continue
            kp = peer.send_keypair(dp.now)
            first = kp.reserve(len(rows), dp.now) if kp is not None else None
            if kp is None or first is None or peer.endpoint is None:
                if peer.endpoint is None and kp is not None:
                    for r in rows:
                        e.error[r] = Reason.NO_ENDPOINT
                    continue
                st = batch.start.tolist()
                for r in rows:
                    pkt = bytes(batch.buf[st[r] : st[r] + ln[r]])
                    dp.actions.extend(dp.protocol.stage(peer, pkt, dp.now))
                for r in rows:
                    e.error[r] = Reason.STAGED
                continue
            slot = dp.sessions.keypair_slot(kp, ps)
            sealed = 0
            for j, r in enumerate(rows):
                e.sa[r] = slot
                e.seq[r] = first + j
                sealed += ln[r] + ((-ln[r]) & 15)
            self.sent_bytes[slot] = self.sent_bytes.get(slot, 0) + sealed

    def _small(self, batch: Batch, sel: Mask) -> Batch:
        self.prepare(batch, sel)
        e = batch.ext
        sa = e.sa.tolist()
        err = e.error.tolist()
        idx = [i for i in np.flatnonzero(sel).tolist() if sa[i] >= 0 and not err[i]]
        if not idx:
            return batch
        dp = self.dp
        sessions = dp.sessions
        ln = batch.length.tolist()
        new_len = list(ln)
        dst_off = [0] * len(ln)
        ends: dict[int, tuple[bytes, int, bool]] = {}
        for i in idx:
            s = sa[i]
            end = ends.get(s)
            if end is None:
                ep = sessions.peers[sessions.kp_owner[s]].endpoint
                packed, v6 = _packed(ep[0])
                end = ends[s] = (packed, int(ep[1]), v6)
            o = OUTER6 if end[2] else OUTER4
            new_len[i] = o + DATA_HEADER + ln[i] + ((-ln[i]) & 15) + TAG
            dst_off[i] = o + DATA_HEADER
        # the slots Batch.alloc(new_len, 0, 0, uniform=False) lays out, without the
        # extension it would make (the batch's goes with the packets)
        hi = 0
        ost = []
        for x in new_len:
            ost.append(hi)
            hi += (x + _SLOT_ALIGN - 1) // _SLOT_ALIGN * _SLOT_ALIGN
        lo = np.array(ost, dtype=np.int64)
        out = Batch(
            np.zeros(hi, np.uint8),
            lo,
            np.array(new_len, dtype=np.int64),
            lo.copy(),
            np.array([*ost[1:], hi], dtype=np.int64),
            e,
            0,
        )
        copy_ranges(out.buf, out.start + dst_off, batch.buf, batch.start, batch.length)
        mv = memoryview(out.buf.data)
        seq = e.seq.tolist()
        lp = dp.listen_port & 0xFFFF
        nonce = bytearray(12)
        nmv = memoryview(nonce)
        for i in idx:
            s = sa[i]
            packed, port, v6 = ends[s]
            kp = sessions.keypairs[s]
            r0 = ost[i]
            total = new_len[i]
            o = OUTER6 if v6 else OUTER4
            ul = (total - o + 8) & 0xFFFF
            # outer IP/UDP header (no source address, no checksums: the socket's), then
            # the transport header: type 4, receiver index, counter (little endian)
            if v6:
                _OUT6.pack_into(mv, r0, 0x60, ul, 17, 64, packed, lp, port & 0xFFFF, ul)
            else:
                _OUT4.pack_into(mv, r0, 0x45, total & 0xFFFF, 64, 17, packed, lp, port & 0xFFFF, ul)
            _WG_HDR.pack_into(mv, r0 + o, MSG_DATA, kp.remote_index, seq[i])
            # seal in place
            nmv[4:12] = seq[i].to_bytes(8, "little")
            p0 = r0 + o + DATA_HEADER
            c = ln[i] + ((-ln[i]) & 15)
            kp.send_aead.encrypt_into(nonce, mv[p0 : p0 + c], b"", mv[p0 : p0 + c + TAG])
            # the extension now describes the outer datagram
            e.l3_off[i] = 0
            e.l4_off[i] = o - 8
            e.hdr_len[i] = o
            e.l3_proto[i] = 6 if v6 else 4
            e.l4_proto[i] = 17
            e.vflags[i] = 0
            e.gso_type[i] = 0
            e.gso_size[i] = 0
            e.csum_start[i] = 0
            e.csum_offset[i] = 0
        return out

    def describe(self) -> dict[str, object]:
        return {"task": self.task.kebab, "format": "wireguard transport, chacha20-poly1305"}


# ---------------------------------------------------------------- the AEAD calls


def _aead_kernel() -> _native.Kernel | None:
    """The compiled kernel when it has the per-packet AEAD loop (``aead``), else None
    (the tasks then loop in Python: the same calls, the same results)."""
    k = _native.kernel
    return k if k is not None and hasattr(k, "aead") else None


#: the associated data of every transport message: none (rows of 0 bytes)
_NO_AAD = np.zeros(1, dtype=np.uint8)


def _aead_slots(
    kern: _native.Kernel,
    keys: dict[int, Any],
    seal: bool,
    slots: NDArray[np.integer[Any]],
    pos: I64,
    clen: I64,
    seqs: NDArray[np.uint64],
    buf: U8,
) -> NDArray[np.bool_]:
    """Seal (``clen`` plaintext bytes in, tag after) or open (``clen`` bytes with the
    tag in, plaintext out) each packet at ``buf[pos:]`` in place, with its keypair
    slot's key and the nonce of its counter; one kernel call a slot. Which packets
    succeeded: opening fails for a bad tag or an unknown slot (as the Python loop,
    any exception of the AEAD counts as a failure there); sealing raises."""
    n = len(pos)
    ok = np.zeros(n, dtype=np.uint8)
    # 16-byte rows, bytes 4..16 the nonce: 32 zero bits, then the counter (little endian)
    nonce = np.zeros((n, 2), dtype="<u8")
    nonce[:, 1] = seqs
    rows = nonce.view(np.uint8)
    pos = np.ascontiguousarray(pos, dtype=np.int64)
    clen = np.ascontiguousarray(clen, dtype=np.int64)
    dlen = clen + TAG if seal else clen - TAG
    fail = None if seal else Exception
    if not seal and (dlen < 0).any():  # shorter than a tag: fails (never reaches the AEAD)
        slots = np.where(dlen < 0, np.int64(-1), slots)
    uniq = np.unique(slots).tolist()
    for s in uniq:
        kp = keys[s] if seal else keys.get(s)
        if kp is None:
            continue
        fn = kp.send_aead.encrypt_into if seal else kp.recv_aead.decrypt_into
        if len(uniq) == 1:
            kern.aead(fn, fail, rows, 4, 16, 12, _NO_AAD, 0, 0, 0, buf, pos, clen, dlen, ok)
            break
        m = np.flatnonzero(slots == s)
        sub = np.zeros(len(m), dtype=np.uint8)
        kern.aead(
            fn, fail, rows[m], 4, 16, 12, _NO_AAD, 0, 0, 0, buf, pos[m], clen[m], dlen[m], sub
        )
        ok[m] = sub
    return ok.view(np.bool_)


# --------------------------------------------------------------------------- receive


class WgMac(SoftTask):
    """Receive ``digest``: mac1 (and mac2) of handshake messages, in batches."""

    task = Task.DIGEST

    def __init__(self, dp: Datapath) -> None:
        self.dp = dp

    def process(self, batch: Batch, sel: Mask) -> Batch:
        idx = np.flatnonzero(sel)
        if not len(idx):
            return batch
        e = batch.ext
        ol = outer_len(batch, idx)
        checker = self.dp.protocol.cookie_checker
        for j, i in enumerate(idx.tolist()):
            s = int(batch.start[i]) + int(ol[j])
            msg = bytes(batch.buf[s : int(batch.start[i]) + int(batch.length[i])])
            if not checker.check_mac1(msg):
                e.error[i] = Reason.BAD_MAC1
                continue
            if msg[-16:] == _NO_MAC2:  # no cookie held by the sender: nothing to check
                e.class_id[i] = 0
                continue
            src = outer_source(batch, i)
            e.class_id[i] = 1 if checker.check_mac2(msg, src, self.dp.now) else 0
        return batch


class WgFilter(SoftTask):
    """Receive ``dos-filter``: before any per-peer state is touched or any decryption."""

    task = Task.DOS_FILTER

    def __init__(self, dp: Datapath, handshake_rate: float = 20.0, burst: int = 5) -> None:
        self.dp = dp
        self.rate = handshake_rate
        self.burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}  # source ip -> (tokens, time)
        self.max_sources = 4096

    def _allow(self, ip: str, now: float) -> bool:
        tokens, t = self._buckets.get(ip, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - t) * self.rate)
        ok = tokens >= 1.0
        if ok:
            tokens -= 1.0
        if len(self._buckets) >= self.max_sources and ip not in self._buckets:
            # bounded memory: drop the buckets that are full again
            full = [
                k
                for k, (tk, tt) in self._buckets.items()
                if tk + (now - tt) * self.rate >= self.burst
            ]
            for k in full:
                del self._buckets[k]
            if len(self._buckets) >= self.max_sources:
                return False
        self._buckets[ip] = (tokens, now)
        return ok

    def process(self, batch: Batch, sel: Mask) -> Batch:
        if len(batch.length) <= SMALL:
            return self._small(batch, sel)
        idx = np.flatnonzero(sel)
        if not len(idx):
            return batch
        e = batch.ext
        dp = self.dp
        ol = outer_len(batch, idx)
        body = batch.start[idx] + ol
        blen = batch.length[idx] - ol
        has4 = blen >= 4
        typ = np.zeros(len(idx), dtype=np.int64)
        zero3 = np.zeros(len(idx), dtype=np.bool_)
        if has4.any():
            b4 = batch.buf[body[has4][:, None] + np.arange(4)]
            typ[has4] = b4[:, 0]
            zero3[has4] = (b4[:, 1:] == 0).all(axis=1)
        # transport data (type 4, reserved zero, >= 32 bytes) and its header fields
        _, rix_all, ctr_all, data = data_headers(batch.buf, body, blen)
        hs = np.zeros(len(idx), dtype=np.bool_)
        for t, want in _HANDSHAKE_LEN.items():
            hs |= zero3 & (typ == t) & (blen == want)
        bad = ~(data | hs)
        e.error[idx[bad]] = Reason.BAD_MESSAGE
        # transport data: receiver index known, counter not replayed (no state change)
        d = np.flatnonzero(data)
        if len(d):
            rix = rix_all[d]
            ctr = ctr_all[d]
            kslot = np.full(len(d), -1, dtype=np.int64)
            pslot = np.full(len(d), -1, dtype=np.int64)
            for r in np.unique(rix).tolist():
                found = dp.protocol.lookup(int(r))
                m = rix == r
                if found is None:
                    continue
                peer, kp = found
                ps = dp.sessions.peer_slot(peer)
                kslot[m] = dp.sessions.keypair_slot(kp, ps)
                pslot[m] = ps
                ok = kp.replay.check_many(ctr[m])
                rows = idx[d[m]]
                e.error[rows[~ok]] = Reason.REPLAY
            rows = idx[d]
            unk = kslot < 0
            e.error[rows[unk]] = Reason.UNKNOWN_INDEX
            e.sa[rows] = kslot
            e.seq[rows] = ctr
            e.class_id[rows] = pslot
            # the stages after decrypt are asked for there, from the inner packet
        h = np.flatnonzero(hs)
        for j in h.tolist():
            self._handshake(batch, int(idx[j]), int(typ[j]), int(body[j]), int(blen[j]))
        return batch

    def _handshake(self, batch: Batch, i: int, typ: int, body: int, blen: int) -> None:
        """Handshake message ``i`` (its type, body start and length): rate and cookie."""
        e = batch.ext
        dp = self.dp
        if e.error[i]:
            return
        src = outer_source(batch, i)
        if dp.under_load and e.class_id[i] != 1 and typ != MSG_COOKIE:
            msg = bytes(batch.buf[body : body + blen])
            sender = int.from_bytes(msg[4:8], "little")
            reply = dp.protocol.cookie_checker.make_reply(msg, sender, src, dp.now)
            dp.outbox.append((src, reply))
            e.error[i] = Reason.COOKIE_NEEDED
            return
        if typ != MSG_COOKIE and not self._allow(src[0], dp.now):
            e.error[i] = Reason.HANDSHAKE_RATE
            return
        e.error[i] = Reason.HANDSHAKE  # leaves the engine for the protocol core

    def _small(self, batch: Batch, sel: Mask) -> Batch:
        idx = np.flatnonzero(sel).tolist()
        if not idx:
            return batch
        e = batch.ext
        dp = self.dp
        buf = batch.buf
        mv = buf.data
        nbuf = len(buf)
        st = batch.start.tolist()
        ln = batch.length.tolist()
        data: list[tuple[int, int, int]] = []  # (packet, receiver index, counter)
        hs: list[tuple[int, int, int, int]] = []  # (packet, type, body, length)
        for i in idx:
            body = st[i] + (OUTER6 if mv[st[i]] >> 4 == 6 else OUTER4)
            blen = ln[i] - (body - st[i])
            # as data_headers: a datagram reaching past the buffer is cut there
            avail = max(0, min(blen, nbuf - body)) if body >= 0 else 0
            typ = mv[body] if avail > 0 else 0
            if blen >= 4 and mv[body + 1] == 0 and mv[body + 2] == 0 and mv[body + 3] == 0:
                if typ == MSG_DATA and avail >= DATA_HEADER + TAG and avail == blen:
                    rix = int.from_bytes(mv[body + 4 : body + 8], "little")
                    data.append((i, rix, int.from_bytes(mv[body + 8 : body + 16], "little")))
                    continue
                if _HANDSHAKE_LEN.get(typ, -1) == blen:
                    hs.append((i, typ, body, blen))
                    continue
            e.error[i] = Reason.BAD_MESSAGE
        if data:
            # per receiver index in ascending order (the batch path's np.unique): slots
            # are handed out in that order
            found: dict[int, tuple[int, int, Any]] = {}  # index -> (peer slot, kp slot, kp)
            for r in sorted({r for _, r, _ in data}):
                f = dp.protocol.lookup(r)
                if f is not None:
                    peer, kp = f
                    ps = dp.sessions.peer_slot(peer)
                    found[r] = (ps, dp.sessions.keypair_slot(kp, ps), kp)
            seen: set[tuple[int, int]] = set()
            for i, r, ctr in data:
                f2 = found.get(r)
                if f2 is None:
                    e.error[i] = Reason.UNKNOWN_INDEX
                    e.sa[i] = -1
                    e.class_id[i] = -1
                else:
                    # check_many: against the window, and only the first of equal counters
                    if (r, ctr) in seen or not f2[2].replay.check(ctr):
                        e.error[i] = Reason.REPLAY
                    seen.add((r, ctr))
                    e.sa[i] = f2[1]
                    e.class_id[i] = f2[0]
                e.seq[i] = ctr
        for i, typ, body, blen in hs:
            self._handshake(batch, i, typ, body, blen)
        return batch

    def describe(self) -> dict[str, object]:
        return {"task": self.task.kebab, "handshake_rate": self.rate, "burst": self.burst}


def shape_filter() -> tuple[tuple[int, int, int, int], ...]:
    """The first check of ``WgFilter`` as a classic-BPF socket filter (offset 0: the UDP
    header, as the kernel runs a UDP socket's filter): keep a datagram only if it starts
    with a WireGuard type (1..4) and three zero bytes and has that type's length --
    exactly 148 / 92 / 64 bytes for handshake messages (a multiple, for UDP_GRO's
    coalesced datagrams of one size), at least 32 for transport data. The kernel drops
    the rest before they take room in the socket's queue (a junk flood then cannot
    crowd out the tunnel's traffic there). ``WgFilter`` still checks every datagram
    that comes through: nothing is marked done by the kernel."""
    from netoffload.tunnel.index_filter import live_filter

    return live_filter(None)  # one program builder: the live-index filter without indices


class WgDecrypt(SoftTask):
    """Receive ``decrypt``: opens transport messages in place; replay window in ``settle``."""

    task = Task.DECRYPT

    def __init__(self, dp: Datapath) -> None:
        self.dp = dp
        #: (keypair slot, counter) of authenticated packets waiting for settle
        self.authenticated: list[tuple[int, int, int]] = []

    def process(self, batch: Batch, sel: Mask) -> Batch:
        if len(batch.length) <= SMALL:
            return self._small(batch, sel)
        e = batch.ext
        go = sel & (e.sa >= 0) & (e.error == 0)
        idx = np.flatnonzero(go)
        if not len(idx):
            return batch
        dp = self.dp
        ol = outer_len(batch, idx)
        st = batch.start[idx]
        body = st + ol + DATA_HEADER
        clen = batch.length[idx] - ol - DATA_HEADER
        kern = _aead_kernel()
        if kern is not None:
            ok = _aead_slots(
                kern, dp.sessions.keypairs, False, e.sa[idx], body, clen, e.seq[idx], batch.buf
            )
        else:
            bl = body.tolist()
            cl = clen.tolist()
            kps = e.sa[idx].tolist()
            seqs = e.seq[idx].tolist()
            mv = memoryview(batch.buf.data)
            nonce = bytearray(12)
            nmv = memoryview(nonce)
            ok = np.zeros(len(idx), dtype=np.bool_)
            for j in range(len(idx)):
                kp = dp.sessions.keypairs.get(kps[j])
                if kp is None:
                    continue
                nmv[4:12] = seqs[j].to_bytes(8, "little")
                p0 = bl[j]
                c = cl[j]
                try:
                    kp.recv_aead.decrypt_into(nonce, mv[p0 : p0 + c], b"", mv[p0 : p0 + c - TAG])
                except Exception:  # InvalidTag (or a keypair zeroed under us)
                    continue
                ok[j] = True
        e.error[idx[~ok]] = Reason.BAD_ICV
        good = idx[ok]
        # the packet becomes the inner packet: strip outer, transport header, padding, tag
        batch.start[good] += ol[ok] + DATA_HEADER
        batch.length[good] -= ol[ok] + DATA_HEADER + TAG
        ipl = inner_ip_length(batch, good)
        empty = batch.length[good] == 0
        e.error[good[empty]] = Reason.KEEPALIVE
        badlen = ~empty & ((ipl < 0) | (ipl > batch.length[good]))
        e.error[good[badlen]] = Reason.BAD_IP_LENGTH
        fine = ~empty & ~badlen
        batch.length[good[fine]] = ipl[fine]
        inner = good[fine]
        if len(inner):
            proto = inner_layout(batch, inner)
            # what the later stages do depends on the inner packet; assembly only
            # where there is something to merge (two packets of the protocol or more)
            tcp = proto == 6
            udp = proto == 17
            want = np.full(len(inner), _U_CLS, dtype=np.uint16)
            want[tcp | udp] |= _U_CSUM
            if np.count_nonzero(tcp) > 1:
                want[tcp] |= _U_TGRO
            if np.count_nonzero(udp) > 1:
                want[udp] |= _U_UGRO
            e.tasks[inner] |= want
            e.gso_type[inner] = 0
            e.gso_size[inner] = 0
            e.vflags[inner] = 0
        return batch

    def _small(self, batch: Batch, sel: Mask) -> Batch:
        e = batch.ext
        sa = e.sa.tolist()
        err = e.error.tolist()
        idx = [i for i in np.flatnonzero(sel).tolist() if sa[i] >= 0 and not err[i]]
        if not idx:
            return batch
        keys = self.dp.sessions.keypairs
        buf = batch.buf
        mv = memoryview(buf.data)
        st = batch.start.tolist()
        ln = batch.length.tolist()
        seq = e.seq.tolist()
        nonce = bytearray(12)
        nmv = memoryview(nonce)
        inner: list[tuple[int, int]] = []  # (packet, L4 protocol) of whole inner IP packets
        for i in idx:
            s0 = st[i]
            ol = OUTER6 if mv[s0] >> 4 == 6 else OUTER4
            p0 = s0 + ol + DATA_HEADER
            c = ln[i] - ol - DATA_HEADER
            kp = keys.get(sa[i])
            if kp is None:
                e.error[i] = Reason.BAD_ICV
                continue
            nmv[4:12] = seq[i].to_bytes(8, "little")
            try:
                kp.recv_aead.decrypt_into(nonce, mv[p0 : p0 + c], b"", mv[p0 : p0 + c - TAG])
            except Exception:  # InvalidTag (or a keypair zeroed under us)
                e.error[i] = Reason.BAD_ICV
                continue
            # the inner packet: outer, transport header, padding and tag stripped
            n = c - TAG
            batch.start[i] = p0
            if n == 0:
                batch.length[i] = 0
                e.error[i] = Reason.KEEPALIVE
                continue
            ipl = _inner_ip_length_one(mv, p0, n)
            if ipl < 0 or ipl > n:
                batch.length[i] = n
                e.error[i] = Reason.BAD_IP_LENGTH
                continue
            batch.length[i] = ipl
            inner.append((i, _inner_layout_one(batch, mv, i, p0, ipl)))
        if inner:
            # as the batch path: assembly only where two packets of a protocol or more
            ntcp = sum(1 for _, p in inner if p == 6)
            nudp = sum(1 for _, p in inner if p == 17)
            for i, p in inner:
                w = _I_CLS
                if p == 6:
                    w |= _I_CSUM | (_I_TGRO if ntcp > 1 else 0)
                elif p == 17:
                    w |= _I_CSUM | (_I_UGRO if nudp > 1 else 0)
                e.tasks[i] |= w
                e.gso_type[i] = 0
                e.gso_size[i] = 0
                e.vflags[i] = 0
        return batch

    def settle(self, batch: Batch, sel: Mask) -> None:
        """The replay window moves only for packets that authenticated."""
        e = batch.ext
        done = sel & (e.sa >= 0) & ((e.error == 0) | (e.error == Reason.KEEPALIVE))
        idx = np.flatnonzero(done)
        keys = self.dp.sessions.keypairs
        if len(idx) <= SMALL:
            kps = e.sa[idx].tolist()
            seqs = e.seq[idx].tolist()
            for j, i in enumerate(idx.tolist()):
                kp = keys.get(kps[j])
                if kp is None or not kp.replay.update(seqs[j]):
                    e.error[i] = Reason.REPLAY
            return
        # per keypair slot, its counters in packet order: one window update a slot
        sa = e.sa[idx]
        seq = e.seq[idx]
        uniq = np.unique(sa).tolist()
        for s in uniq:
            rows, ctr = (idx, seq) if len(uniq) == 1 else (idx[sa == s], seq[sa == s])
            kp = keys.get(s)
            if kp is None:
                e.error[rows] = Reason.REPLAY
                continue
            e.error[rows[~kp.replay.update_many(ctr)]] = Reason.REPLAY


class WgSource(SoftTask):
    """Receive ``classify``: the inner source must lie in the sending peer's AllowedIPs."""

    task = Task.CLASSIFY

    def __init__(self, dp: Datapath) -> None:
        self.dp = dp

    def process(self, batch: Batch, sel: Mask) -> Batch:
        if len(batch.length) <= SMALL:
            lpm = _scalar_lpm(self.dp)
            if lpm is not None:
                return self._small(batch, sel, lpm)
        rows, v4, ok = addr_rows(batch, sel, "src")
        slot = self.dp.lookup(rows, v4)
        idx = np.flatnonzero(sel)
        e = batch.ext
        owner = e.class_id[idx]
        bad = ~ok | (slot != owner)
        e.error[idx[bad & (e.error[idx] == 0)]] = Reason.BAD_SOURCE
        return batch

    def _small(self, batch: Batch, sel: Mask, lpm: _ScalarLpm) -> Batch:
        e = batch.ext
        mv = batch.buf.data
        nbuf = len(batch.buf)
        st = batch.start.tolist()
        ln = batch.length.tolist()
        for i in np.flatnonzero(sel).tolist():
            ok, v4, addr = _addr_one(mv, nbuf, st[i], ln[i], False)
            if (not ok or lpm.lookup(v4, addr) != int(e.class_id[i])) and not e.error[i]:
                e.error[i] = Reason.BAD_SOURCE
        return batch


# --------------------------------------------------------------------------- wants


def tx_wants(b: Batch) -> None:
    """What each packet read from the TUN asks of the transmit engine."""
    e = b.ext
    n = len(b.length)
    if n <= SMALL:
        gts = e.gso_type.tolist()
        gss = e.gso_size.tolist()
        vfs = e.vflags.tolist()
        l3s = e.l3_proto.tolist()
        lns = b.length.tolist()
        sts = b.start.tolist()
        mv = b.buf.data
        for i in range(n):
            want = _TX_BASE
            g = gts[i] & 0x7F
            if gss[i] > 0:
                if g == 1 or g == 4:
                    want |= _I_TSO
                elif g == 5:
                    want |= _I_USO
            if vfs[i] & 1:
                want |= _I_CSUM
            e.tasks[i] = want
            if l3s[i] == 0 and lns[i] > 0:
                e.l3_proto[i] = _L3_NIBBLE[mv[sts[i]] >> 4]
        e.done.fill(0)
        e.by_device.fill(0)
        e.sa.fill(-1)
        return
    gt = e.gso_type & 0x7F
    tcp = (gt == 1) | (gt == 4)
    udp = gt == 5
    w = np.full(len(b), int(Task.CLASSIFY | Task.ENCRYPT), dtype=np.uint16)
    w |= np.where(tcp & (e.gso_size > 0), _U_TSO, 0).astype(np.uint16)
    w |= np.where(udp & (e.gso_size > 0), _U_USO, 0).astype(np.uint16)
    w |= np.where((e.vflags & 1) != 0, _U_CSUM, 0).astype(np.uint16)
    e.tasks[:] = w
    # the TUN read marks receive-side results (it is the kernel's rx view); start clean
    e.done[:] = 0
    e.by_device[:] = 0
    e.sa[:] = -1
    # the IP version, as a TUN read sets it (packets staged during a handshake come
    # back as plain bytes): what a device's capability is checked against
    unset = e.l3_proto == 0
    if unset.any():
        has = unset & (b.length > 0)
        e.l3_proto[has] = _L3_OF_NIBBLE[b.buf[b.start[has]] >> 4]


def rx_wants(b: Batch) -> int:
    """What each datagram asks of the receive engine (decrypt adds the inner stages);
    returns how many datagrams are handshake messages by their type byte."""
    e = b.ext
    n = len(b.length)
    if n <= SMALL:
        e.done.fill(0)
        e.by_device.fill(0)
        e.sa.fill(-1)
        e.class_id.fill(-1)
        mv = b.buf.data
        sts = b.start.tolist()
        lns = b.length.tolist()
        k = 0
        for i in range(n):
            s = sts[i]
            o = OUTER6 if mv[s] >> 4 == 6 else OUTER4
            if 1 <= (mv[s + o] if lns[i] > o else 0) <= 3:
                e.tasks[i] = _RX_BASE & ~_I_DEC
                k += 1
            else:
                e.tasks[i] = _RX_BASE & ~_I_DIG
        return k
    e.tasks[:] = _RX_BASE
    e.done[:] = 0
    e.by_device[:] = 0
    e.sa[:] = -1
    e.class_id[:] = -1
    # only handshake messages want the digest; cheap pre-look at the type byte
    idx = np.arange(len(b))
    if len(idx):
        ol = outer_len(b, idx)
        has = b.length > ol
        typ = np.zeros(len(b), dtype=np.int64)
        typ[has] = b.buf[b.start[has] + ol[has]]
        hs = (typ >= 1) & (typ <= 3)
        e.tasks[~hs] &= ~_U_DIG
        e.tasks[hs] &= ~_U_DEC
        return int(np.count_nonzero(hs))
    return 0


RX_ORDER: tuple[Task, ...] = (
    Task.DIGEST,
    Task.DOS_FILTER,
    Task.DECRYPT,
    Task.CLASSIFY,
    Task.CHECKSUM,
    Task.TCP_ASSEMBLE,
    Task.UDP_ASSEMBLE,
)
TX_ORDER: tuple[Task, ...] = (
    Task.CLASSIFY,
    Task.TCP_SEGMENT,
    Task.UDP_SEGMENT,
    Task.CHECKSUM,
    Task.ENCRYPT,
)
