"""Encryption and decryption: ESP tunnel mode (RFC 4303) with AEAD, in software.

``EncryptTask`` (Task.ENCRYPT): for each selected packet, ``ext.sa`` indexes
the SA table; the packet's inner IP packet (after any Ethernet header, which is
kept in front with its EtherType set to the outer family) becomes the ESP
payload. The task assigns the next sequence number of that SA (``ext.seq``),
writes outer IPv4/IPv6 header, optional UDP 4500 header (RFC 3948: checksum 0
over IPv4; over IPv6, where a zero UDP checksum is not allowed (RFC 8200 8.1)
and Linux drops it, the checksum is computed once the packet is complete),
SPI, sequence number and IV into the head room, padding / pad length / next
header (4 or 41) into the tail room, and encrypts in place. The outer header
carries the inner one's DSCP and ECN field (copied: RFC 6040 normal mode, RFC
4301 5.1.2.1); an IPv6 outer header a flow label from the inner flow (RFC 6438:
the inner 4-tuple's Toeplitz hash folded to 20 bits, never 0). A packet whose
ESP packet would not fit the outer length field (65535) fails with TOO_BIG.
Ciphers:
AES-GCM (RFC 4106) or ChaCha20-Poly1305 (RFC 7634), or ESP NULL encryption with
HMAC-SHA-256-128 integrity (RFC 4868). Nonce and AAD: see ``netoffload.sa``.

``DecryptTask`` (Task.DECRYPT): finds the ESP header after the outer IP (and
UDP, when a port is 4500 or an SA's encapsulation port), looks the SA up by
SPI, infers the high half of an extended sequence number (RFC 4303 appendix
A2), authenticates and decrypts in place, checks the padding and next header,
checks the inner packet (RFC 4301 5.2: inside the SA's traffic selectors, else
SELECTOR_MISMATCH; an inner packet shorter than its IP header is BAD_ESP), sets
its ECN field by RFC 6040's decapsulation table (a Not-ECT inner packet in a
CE outer one: ECN_DROP; an IPv4 header checksum is updated), then runs the
SA's anti-replay window (``soft.replay``; only authenticated packets move it)
and leaves the inner packet. ``ext.sa`` and ``ext.seq`` are set.

Per-packet verdicts in ``ext.error``, never an exception out of the batch:
UNKNOWN_SA (no SA for ``ext.sa`` / the SPI), BAD_ICV (authentication failed),
BAD_PADDING, BAD_ESP (not ESP, truncated trailer or header, next header not
4/41 or not matching the inner version — dummy packets included),
REPLAY, TOO_OLD, SEQ_EXHAUSTED (the SA's sequence space is used up), NOT_IP,
TRUNCATED, TOO_BIG, SELECTOR_MISMATCH, ECN_DROP. A packet that fails keeps its
original bytes.

Speed: headers, trailers, nonces and AADs are built with numpy for the whole
batch; the only per-packet work is one AEAD call. On a uniform batch (one run of
equal slots, one SA, packets of one length: what a tunnel sends) encryption and
decryption take a whole-batch path: nonces and AADs are written as integer
columns into reusable scratch rows (``_Rows``, one set per thread), and with the
compiled kernel (``_native.kernel.aead``) one C call makes every
``encrypt_into`` / ``decrypt_into`` call in place in the batch buffer, through
buffer objects it moves from packet to packet: no Python object and no copy per
packet (a packet that fails after decryption in place is encrypted again, which
gives its ciphertext back, and keeps its own ICV). Without the kernel the
packets go through scratch rows whose memoryviews were made once, and one copy
puts the result into the batch (on decryption only for the packets that pass
every check). Other batches use ``encrypt_into`` / ``decrypt_into`` on
memoryview slices of the batch buffer.

Where the time goes (AMD EPYC, 1400-byte packets, batches of 1024, AES-GCM-128):
one ``encrypt_into`` call is ~700 ns, ~500 ns of which is the binding's fixed
cost per call (a 16-byte message costs ~510 ns); the rest of the encrypt task is
~100 ns a packet, of the decrypt task ~200 ns (the trailer, inner length and ECN
checks are one kernel call, ``esp_trailer``, for an SA without traffic
selectors; the anti-replay window, header checks and extension writes are
numpy, ~75 us a batch of 1024 for the window).
"""

from __future__ import annotations

import collections
import hmac
import itertools
import operator
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from numpy.typing import NDArray

from netoffload import _native
from netoffload.batch import Batch, Mask, Reason, XFlag, gather_index, l2_len
from netoffload.errors import ConfigError
from netoffload.sa import ICV_LEN, SATable, SecurityAssociation, load_sa_file
from netoffload.soft import SoftTask, register
from netoffload.soft.checksum import fill
from netoffload.soft.classify import rss_batch
from netoffload.soft.digest import padded_hmac
from netoffload.soft.replay import OK, REPLAY, TOO_OLD, ReplayWindow
from netoffload.soft.rss import Toeplitz
from netoffload.tasks import Task
from netoffload.wire.esp import IPPROTO_ESP, IPPROTO_UDP, NAT_T_PORT, NH_IPV4, NH_IPV6

I64 = NDArray[np.int64]
U8 = NDArray[np.uint8]
Aead = AESGCM | ChaCha20Poly1305

_ETH_P_IP = 0x0800
_ETH_P_IPV6 = 0x86DD


def _trailers(nh: int) -> list[U8]:
    """ESP trailer by pad length: padding 1..pad, pad length, next header."""
    return [np.array([*range(1, p + 1), p, nh], dtype=np.uint8) for p in range(4)]


_TRAILERS4 = _trailers(NH_IPV4)
_TRAILERS6 = _trailers(NH_IPV6)


def sa_table_from(sas: SATable | None = None, sa_file: str | Path | None = None) -> SATable:
    if sas is not None:
        return sas
    if sa_file is not None:
        return load_sa_file(sa_file)
    raise ConfigError("encrypt/decrypt need security associations (sa_file=... or sas=...)")


def _aead(sa: SecurityAssociation) -> Aead | None:
    if sa.algorithm in ("aes-gcm-128", "aes-gcm-256"):
        return AESGCM(sa.cipher_key)
    if sa.algorithm == "chacha20-poly1305":
        return ChaCha20Poly1305(sa.cipher_key)
    return None


def _outer_template(sa: SecurityAssociation) -> U8:
    """Outer IP (+UDP) + SPI + zero seq/IV: the fixed bytes of the ESP head."""
    import ipaddress

    h = bytearray()
    if sa.outer_version == 4:
        proto = IPPROTO_UDP if sa.udp_encap else IPPROTO_ESP
        h += bytes([0x45, 0, 0, 0, 0, 0, 0x40, 0, sa.ttl, proto, 0, 0])
        h += ipaddress.IPv4Address(sa.src).packed + ipaddress.IPv4Address(sa.dst).packed
    else:
        nh = IPPROTO_UDP if sa.udp_encap else IPPROTO_ESP
        h += bytes([0x60, 0, 0, 0, 0, 0, nh, sa.ttl])
        h += ipaddress.IPv6Address(sa.src).packed + ipaddress.IPv6Address(sa.dst).packed
    if sa.udp_encap:
        h += sa.udp_sport.to_bytes(2, "big") + sa.udp_dport.to_bytes(2, "big") + bytes(4)
    h += sa.spi.to_bytes(4, "big") + bytes(4 + sa.iv_len)
    return np.frombuffer(bytes(h), dtype=np.uint8).copy()


def _word_sum(h: U8) -> int:
    w = h.astype(np.int64)
    return int((w[0::2] << 8 | w[1::2]).sum())


def _u16_into(m: U8, col: int, v: I64) -> None:
    m[:, col] = (v >> 8) & 0xFF
    m[:, col + 1] = v & 0xFF


def _be_bytes(v: NDArray[np.uint64], width: int) -> U8:
    """Big-endian bytes of each value, (n, width) with width 4 or 8."""
    if width == 8:
        return v.astype(">u8").view(np.uint8).reshape(len(v), 8)
    return (v & np.uint64(0xFFFFFFFF)).astype(">u4").view(np.uint8).reshape(len(v), 4)


def _ix(rows: I64) -> I64 | slice:
    """``rows`` as a slice when it is a contiguous run (views instead of gathers)."""
    n = len(rows)
    if n and int(rows[-1]) - int(rows[0]) == n - 1:
        return slice(int(rows[0]), int(rows[0]) + n)
    return rows


def _byte(b: Batch, pos: I64, ok: Mask) -> I64:
    """buf[pos] where ok (positions are absolute), 0 elsewhere."""
    if len(b.buf) == 0:
        return np.zeros(len(pos), np.int64)
    return np.where(ok, b.buf[np.where(ok, pos, 0)], 0).astype(np.int64)


def _u16(b: Batch, pos: I64, ok: Mask) -> I64:
    return (_byte(b, pos, ok) << 8) | _byte(b, pos + 1, ok)


def _u32(b: Batch, pos: I64, ok: Mask) -> I64:
    return (_u16(b, pos, ok) << 16) | _u16(b, pos + 2, ok)


def _tos_of(b0: I64, b1: I64) -> I64:
    """The IPv4 TOS / IPv6 traffic class (DSCP and ECN) from an IP header's first
    two bytes."""
    return np.where((b0 >> 4) == 4, b1, ((b0 & 0xF) << 4) | (b1 >> 4))


def _fold(s: I64) -> I64:
    s = (s & 0xFFFF) + (s >> 16)
    return (s & 0xFFFF) + (s >> 16)


def _flow_label(h: NDArray[np.uint32], proto: I64) -> I64:
    """A non-zero 20-bit flow label (RFC 6438) from a hash of the inner flow."""
    x = h.astype(np.int64) ^ (proto << 24)
    lab = (x ^ (x >> 20)) & 0xFFFFF
    return np.where(lab == 0, 1, lab)


#: RFC 6040 section 4.2 (Figure 4), normal mode: the inner packet's outgoing ECN
#: field at [inner ECN * 4 + outer ECN] (codepoints 0 Not-ECT, 1 ECT(1), 2 ECT(0),
#: 3 CE); -1: drop (a Not-ECT inner packet in a CE outer one)
_ECN_DECAP = np.array(
    [
        [0, 0, 0, -1],  # inner Not-ECT
        [1, 1, 1, 3],  # inner ECT(1)
        [2, 1, 2, 3],  # inner ECT(0)
        [3, 3, 3, 3],  # inner CE
    ],
    dtype=np.int64,
).reshape(-1)
_M64 = (1 << 64) - 1


@dataclass(frozen=True)
class _Selectors:
    """An SA's inbound traffic selectors as (value, mask) pairs per family; a
    family with a /0 among its prefixes is not limited (``None``)."""

    src4: tuple[tuple[int, int], ...] | None
    dst4: tuple[tuple[int, int], ...] | None
    src6: tuple[tuple[int, int, int, int], ...] | None
    dst6: tuple[tuple[int, int, int, int], ...] | None

    @classmethod
    def of(cls, sa: SecurityAssociation) -> _Selectors | None:
        def v4(nets: tuple[Any, ...]) -> tuple[tuple[int, int], ...] | None:
            ps = [n for n in nets if n.version == 4]
            if not ps or any(n.prefixlen == 0 for n in ps):
                return None
            return tuple(
                (int(n.network_address), (0xFFFFFFFF << (32 - n.prefixlen)) & 0xFFFFFFFF)
                for n in ps
            )

        def v6(nets: tuple[Any, ...]) -> tuple[tuple[int, int, int, int], ...] | None:
            ps = [n for n in nets if n.version == 6]
            if not ps or any(n.prefixlen == 0 for n in ps):
                return None
            out = []
            for n in ps:
                a = int(n.network_address)
                m = (((1 << 128) - 1) << (128 - n.prefixlen)) & ((1 << 128) - 1)
                out.append((a >> 64, a & _M64, m >> 64, m & _M64))
            return tuple(out)

        sel = cls(v4(sa.inner_src), v4(sa.inner_dst), v6(sa.inner_src), v6(sa.inner_dst))
        if all(x is None for x in (sel.src4, sel.dst4, sel.src6, sel.dst6)):
            return None
        return sel

    def outside(self, head: U8, ver: I64) -> Mask:
        """Which inner packets (first 40 bytes ``head``, version ``ver``) are
        outside the selectors."""
        n = len(ver)
        bad = np.zeros(n, np.bool_)
        v4 = ver == 4
        if v4.any() and (self.src4 is not None or self.dst4 is not None):
            w = np.ascontiguousarray(head[:, 12:20]).view(">u4").astype(np.int64)
            for col, nets in ((0, self.src4), (1, self.dst4)):
                if nets is not None:
                    hit = np.zeros(n, np.bool_)
                    for val, mask in nets:
                        hit |= (w[:, col] & mask) == val
                    bad |= v4 & ~hit
        v6 = ver == 6
        if v6.any() and (self.src6 is not None or self.dst6 is not None):
            q = np.ascontiguousarray(head[:, 8:40]).view(">u8").astype(np.uint64)
            for col, nets6 in ((0, self.src6), (2, self.dst6)):
                if nets6 is not None:
                    hit = np.zeros(n, np.bool_)
                    for vh, vl, mh, ml in nets6:
                        hit |= ((q[:, col] & np.uint64(mh)) == np.uint64(vh)) & (
                            (q[:, col + 1] & np.uint64(ml)) == np.uint64(vl)
                        )
                    bad |= v6 & ~hit
        return bad


def _decap_checks(
    sel: _Selectors | None, head: U8, outer2: U8, ver: I64, L: I64, ok: Mask
) -> tuple[NDArray[np.uint16], I64]:
    """After authentication, for the ``ok`` packets of one SA: the reason each
    fails (0 if none) and the inner packet's new second byte (-1: unchanged).

    ``head``: the first 40 bytes of each inner packet (zero beyond its end);
    ``outer2``: the outer IP header's first two bytes; ``L``: inner bytes. An
    inner packet shorter than its IP header is BAD_ESP; one outside the SA's
    selectors SELECTOR_MISMATCH (RFC 4301 5.2); a Not-ECT one in a CE outer one
    ECN_DROP; the others get the ECN field of RFC 6040's table."""
    n = len(ver)
    reason = np.zeros(n, np.uint16)
    short = ok & (np.where(ver == 4, 20, 40) > L)
    reason[short] = Reason.BAD_ESP
    live = ok & ~short
    if sel is not None and live.any():
        out = live & sel.outside(head, ver)
        reason[out] = Reason.SELECTOR_MISMATCH
        live &= ~out
    b0, b1 = head[:, 0].astype(np.int64), head[:, 1].astype(np.int64)
    inner_ecn = _tos_of(b0, b1) & 3
    outer_ecn = _tos_of(outer2[:, 0].astype(np.int64), outer2[:, 1].astype(np.int64)) & 3
    ecn = _ECN_DECAP[inner_ecn * 4 + outer_ecn]
    drop = live & (ecn < 0)
    reason[drop] = Reason.ECN_DROP
    change = live & (ecn >= 0) & (ecn != inner_ecn)
    new_b1 = np.where(ver == 4, (b1 & ~3) | ecn, (b1 & ~0x30) | (ecn << 4))
    return reason, np.where(change, new_b1, -1)


def _set_ecn(head: U8, new_b1: I64) -> tuple[I64, I64]:
    """(rows to change, their new IPv4 header checksum or -1 for IPv6): the inner
    header's second byte becomes ``new_b1``; an IPv4 header checksum is updated
    incrementally (RFC 1624, eqn. 3) over the word of version, IHL and TOS."""
    rows = np.flatnonzero(new_b1 >= 0)
    h = head[rows].astype(np.int64)
    v4 = (h[:, 0] >> 4) == 4
    old = (h[:, 0] << 8) | h[:, 1]
    new = (h[:, 0] << 8) | new_b1[rows]
    hc = (h[:, 10] << 8) | h[:, 11]
    csum = ~_fold((~hc & 0xFFFF) + (~old & 0xFFFF) + new) & 0xFFFF
    return rows, np.where(v4, csum, -1)


def _ip_lengths(b: Batch, l3: I64, avail: I64) -> tuple[I64, I64]:
    """(version or 0 when not a whole IPv4/IPv6 packet, IP packet length) at absolute l3."""
    n = len(l3)
    if n == 0 or len(b.buf) == 0:
        return np.zeros(n, np.int64), np.zeros(n, np.int64)
    # the first six bytes of every packet in one gather (clipped; masked below)
    idx = np.minimum(l3[:, None] + np.arange(6), len(b.buf) - 1)
    return _ip_lengths_of(b.buf[idx], avail)


def _ip_lengths_of(head6: U8, avail: I64) -> tuple[I64, I64]:
    """``_ip_lengths`` from the first six bytes of each packet, (n, 6)."""
    h = head6.astype(np.int64)
    ver = np.where(avail >= 1, h[:, 0] >> 4, 0)
    v4 = (ver == 4) & (avail >= 20)
    v6 = (ver == 6) & (avail >= 40)
    tot = np.where(v4, h[:, 2] << 8 | h[:, 3], np.where(v6, 40 + (h[:, 4] << 8 | h[:, 5]), 0))
    good = (v4 | v6) & (tot <= avail) & (tot >= np.where(v4, 20, 40))
    return np.where(good, ver, 0), tot


class _Rows:
    """A reusable (capacity, width) byte matrix and a memoryview of ``[lo:hi]`` of
    each row, made once.

    The AEAD calls of a uniform batch read and write these views (``encrypt_into``
    / ``decrypt_into``), so a batch creates no Python object per packet: numpy
    fills the rows before the calls and copies them into the batch after.
    ``fill`` remembers what constant bytes (salt, SPI, trailer, header) the rows
    hold already, so that they are written only when they change.
    """

    __slots__ = ("arr", "fill", "hi", "lo", "views")

    def __init__(self, cap: int, width: int, lo: int, hi: int) -> None:
        self.arr: U8 = np.zeros((cap, width), dtype=np.uint8)
        self.fill: object = None
        self.lo, self.hi = lo, hi
        flat = self.arr.reshape(-1).data
        self.views = [flat[i * width + lo : i * width + hi] for i in range(cap)]


class _Scratch:
    """``_Rows`` by shape, grown to the largest batch seen; a few shapes at most."""

    def __init__(self) -> None:
        self.by_shape: dict[tuple[str, int, int, int], _Rows] = {}

    def rows(self, name: str, width: int, lo: int, hi: int, n: int) -> _Rows:
        key = (name, width, lo, hi)
        r = self.by_shape.get(key)
        if r is None or len(r.views) < n:
            if r is None and len(self.by_shape) >= 12:
                self.by_shape.clear()  # many packet sizes: keep memory bounded
            r = self.by_shape[key] = _Rows(max(n, 64), width, lo, hi)
        return r


_local = threading.local()


def _scratch() -> _Scratch:
    """This thread's scratch rows, shared by its encrypt and decrypt tasks (a task
    made afresh, e.g. for a new SA, finds them ready; ``fill`` tags are by content)."""
    s: _Scratch | None = getattr(_local, "scratch", None)
    if s is None:
        s = _local.scratch = _Scratch()
    return s


def _first(views: list[memoryview], n: int) -> Iterable[memoryview]:
    """The first ``n`` views (``map`` stops at its shortest argument)."""
    return views if len(views) == n else itertools.islice(views, n)


def _aead_kernel() -> _native.Kernel | None:
    """The compiled kernel when it has the per-packet AEAD loop (``aead``) and the
    decrypt checks (``esp_trailer``), else None."""
    k = _native.kernel
    return k if k is not None and hasattr(k, "aead") and hasattr(k, "esp_trailer") else None


def _aead_loop(
    kern: _native.Kernel,
    fn: Any,
    fail: type[BaseException] | None,
    nonce: tuple[U8, int, int],
    aad: tuple[U8, int, int],
    buf: U8,
    pos: I64,
    slen: int,
    dlen: int,
) -> NDArray[np.bool_]:
    """``fn(nonce_i, buf[pos_i:+slen], aad_i, buf[pos_i:+dlen])`` for every packet in
    one kernel call (no Python object per packet); which calls did not raise ``fail``.
    Nonces and AADs: ``(rows, lo, hi)``, the ``[lo:hi]`` bytes of the first ``len(pos)``
    rows of a C-contiguous 2-D array."""
    n = len(pos)
    ok = np.empty(n, np.uint8)
    (na, nlo, nhi), (aa, alo, ahi) = nonce, aad
    kern.aead(
        fn,
        fail,
        na,
        nlo,
        na.shape[1],
        nhi - nlo,
        aa,
        alo,
        aa.shape[1],
        ahi - alo,
        buf,
        np.ascontiguousarray(pos, np.int64),
        np.array([slen], np.int64),
        np.array([dlen], np.int64),
        ok,
    )
    return ok.view(np.bool_)


_ETHERNET = np.uint8(XFlag.ETHERNET)
_ON_HOST = np.uint8(XFlag.REPLAY_ON_HOST)
_PARSED = np.uint8(XFlag.PARSED)


class EncryptTask(SoftTask):
    """ESP tunnel-mode encapsulation and AEAD encryption (see module docstring)."""

    task = Task.ENCRYPT

    def __init__(self, sas: SATable | None = None, sa_file: str | Path | None = None) -> None:
        self.table = sa_table_from(sas, sa_file)
        self.aeads = [_aead(sa) for sa in self.table.sas]
        self.templates = [_outer_template(sa) for sa in self.table.sas]
        self.next_seq = [sa.seq_start for sa in self.table.sas]
        self.overheads = np.array([sa.overhead for sa in self.table.sas], np.int64)
        self.v4_sums = [_word_sum(t[:20]) for t in self.templates]
        self.versions = [sa.outer_version for sa in self.table.sas]
        #: the RSS hash of the inner flow gives an IPv6 outer header its flow label
        self.toeplitz = Toeplitz()
        #: the largest outer IP packet of each SA (the length field's limit)
        self.max_outer = np.array([65535 + (40 if v == 6 else 0) for v in self.versions], np.int64)
        self.head_rows: dict[tuple[int, int], U8] = {}
        #: SAs whose packets need an outer UDP checksum (IPv6 with UDP encapsulation)
        self.udp6 = np.array(
            [sa.udp_encap and sa.outer_version == 6 for sa in self.table.sas], np.bool_
        )

    def describe(self) -> dict[str, object]:
        return {"task": self.task.kebab, "sas": len(self.table)}

    def prepare(self, batch: Batch, sel: Mask) -> None:
        """Reserve sequence numbers here, on the host, in packet order, before the
        engine splits the packets between paths: whichever path then encrypts a
        packet uses its ``ext.seq``, so host and device never use one twice under
        a key (AES-GCM and ChaCha20-Poly1305 must never repeat a nonce). Packets
        that already have a number keep it; a used-up SA leaves them at 0, and
        ``process`` gives them SEQ_EXHAUSTED."""
        e = batch.ext
        rows = np.flatnonzero(sel)
        rows = rows[e.seq[rows] == 0]
        if len(rows) == 0:
            return
        sa = e.sa[rows].astype(np.int64)
        known = (sa >= 0) & (sa < len(self.table))
        rows, sa = rows[known], sa[known]
        if not len(sa):
            return
        lo, hi = int(sa.min()), int(sa.max())
        for k in (lo,) if lo == hi else np.unique(sa).tolist():  # (one SA: no sort)
            r = rows if lo == hi else rows[sa == k]
            first = self.next_seq[k]
            n = min(len(r), max(self.table.sas[k].max_seq - first + 1, 0))
            e.seq[r[:n]] = np.arange(n, dtype=np.uint64) + np.uint64(first)
            self.next_seq[k] = first + n

    def process(self, batch: Batch, sel: Mask) -> Batch:
        out = self._process(batch, sel)
        if self.udp6.any():
            self._udp6_checksums(out, sel)
        return out

    def _udp6_checksums(self, b: Batch, sel: Mask) -> None:
        """The outer UDP checksum of the packets of IPv6 SAs with UDP encapsulation
        (their layout, set by encryption, is in the extension)."""
        e = b.ext
        sa = e.sa.astype(np.int64)
        known = (sa >= 0) & (sa < len(self.table))
        mask = sel & known & (e.error == 0)
        mask[known] &= self.udp6[sa[known]]
        if mask.any():
            fill(b, mask)

    def _process(self, batch: Batch, sel: Mask) -> Batch:
        rows = np.flatnonzero(sel)
        if len(rows) == 0 or self._encrypt_uniform(batch, rows):
            return batch
        e = batch.ext
        ix = _ix(rows)
        sa = e.sa[ix].astype(np.int64)
        bad_sa = (sa < 0) | (sa >= len(self.table))
        if bad_sa.any():
            e.error[rows[bad_sa]] = Reason.UNKNOWN_SA
            rows, sa = rows[~bad_sa], sa[~bad_sa]
            ix = _ix(rows)
        if len(rows) == 0:
            return batch
        l2 = l2_len(batch, ix)
        avail = batch.length[ix] - l2
        ver, iplen = _ip_lengths(batch, batch.start[ix] + l2, avail)
        notip = ver == 0
        if notip.any():
            e.error[rows[notip]] = Reason.NOT_IP
            rows, sa, l2, ver, iplen = (x[~notip] for x in (rows, sa, l2, ver, iplen))
            ix = _ix(rows)
        if len(rows) == 0:
            return batch
        # the outer length field must hold the ESP packet (IPv4 total length,
        # IPv6 payload length: 65535 bytes); a packet that would not fit fails
        big = self.overheads[sa] + ((iplen + 2 + 3) & ~3) + ICV_LEN > self.max_outer[sa]
        if big.any():
            e.error[rows[big]] = Reason.TOO_BIG
            rows, sa, l2, ver, iplen = (x[~big] for x in (rows, sa, l2, ver, iplen))
            ix = _ix(rows)
            if len(rows) == 0:
                return batch
        # enough room for the largest ESP head and trailer? otherwise re-layout
        need_head = self.overheads[sa]
        room_head = batch.start[ix] - batch.slot_lo[ix]
        room_tail = batch.slot_hi[ix] - batch.start[ix] - batch.length[ix]
        if (room_head < need_head).any() or (room_tail < 24).any():
            batch = _with_room(batch, int(need_head.max()) + 16, 64)
            e = batch.ext
        if len(self.table) == 1:
            self._encrypt_sa(batch, 0, rows, l2, ver, iplen)
            return batch
        for k in np.unique(sa).tolist():
            g = sa == k
            self._encrypt_sa(batch, k, rows[g], l2[g], ver[g], iplen[g])
        return batch

    def _head_row(self, k: int, ip_total: int) -> U8:
        """The outer header of SA ``k`` for this total length (seq and IV zero)."""
        row = self.head_rows.get((k, ip_total))
        if row is None:
            if len(self.head_rows) >= 256:
                self.head_rows.clear()
            m = self.templates[k][None, :].copy()
            self._lengths_into(k, m, np.array([ip_total], np.int64))
            row = self.head_rows[(k, ip_total)] = m[0]
        return row

    def _lengths_into(
        self, k: int, m: U8, ip_total: I64, tos: I64 | None = None, label: I64 | None = None
    ) -> None:
        """Outer IP (and UDP) length fields, TOS / traffic class and flow label,
        and the IPv4 header checksum, of headers ``m``."""
        sa = self.table.sas[k]
        iph = 20 if self.versions[k] == 4 else 40
        t = np.zeros(len(m), np.int64) if tos is None else tos
        if self.versions[k] == 4:
            # ID 0 with DF set (an atomic datagram, RFC 6864): the checksum only
            # depends on the total length and the TOS
            _u16_into(m, 2, ip_total)
            m[:, 1] = t
            _u16_into(m, 10, ~_fold(self.v4_sums[k] + ip_total + t) & 0xFFFF)
        else:
            fl = np.zeros(len(m), np.int64) if label is None else label
            m[:, 0] = 0x60 | (t >> 4)
            m[:, 1] = ((t & 0xF) << 4) | (fl >> 16)
            _u16_into(m, 2, fl & 0xFFFF)
            _u16_into(m, 4, ip_total - 40)
        if sa.udp_encap:
            _u16_into(m, iph + 4, ip_total - iph)

    def _labels(self, b: Batch, rows: I64) -> I64:
        """RFC 6438 flow labels of inner packets ``rows`` (their layout parsed
        in the extension): the Toeplitz hash of the inner 4-tuple (2-tuple when
        not TCP/UDP), folded to 20 bits with the protocol, never 0."""
        h = rss_batch(b, rows, self.toeplitz)
        return _flow_label(h, b.ext.l4_proto[rows].astype(np.int64))

    def _encrypt_uniform(self, b: Batch, rows: I64) -> bool:
        """The common case in a few whole-batch steps: a uniform batch whose selected
        packets are one run of slots, one AEAD SA, bare IP packets of one version and
        length, enough room, sequence numbers available. Returns False, having
        changed nothing, when the batch is not like that (``process`` does the rest).

        Outer headers, nonces and AADs are built in reusable scratch rows; with the
        compiled kernel the trailer and header are written around each packet and
        one kernel call encrypts every packet in place (ciphertext and ICV over the
        plaintext). Without it, plaintext and trailers are gathered into scratch
        rows, one ``encrypt_into`` per packet writes ciphertext and ICV into other
        scratch rows, and one copy puts headers and ciphertexts into the batch.
        """
        ix = _row_run(b, rows)
        if ix is None:
            return False
        n, r0, stride = len(rows), ix.start, b.stride
        e = b.ext
        sa_col = e.sa[ix]
        k = int(sa_col[0])
        if not 0 <= k < len(self.table) or (sa_col != k).any():
            return False
        aead = self.aeads[k]
        if aead is None or (e.xflags[ix] & _ETHERNET).any():
            return False
        start = b.start[ix]
        h0 = int(start[0]) - r0 * stride
        L0 = int(b.length[r0])
        if (start - b.slot_lo[ix] != h0).any() or (b.length[ix] != L0).any():
            return False
        sa = self.table.sas[k]
        H = sa.overhead
        pad = (-(L0 + 2)) % 4
        P = L0 + pad + 2
        if h0 < H or stride - h0 < P + ICV_LEN or L0 < 20:
            return False
        if self.max_outer[k] < H + P + ICV_LEN:
            return False  # too big for the outer header: the general path fails them
        mat = b.matrix()[ix]
        # every packet a whole IP packet of the same version and length
        v0 = int(mat[0, h0]) >> 4
        if v0 == 4:
            lcol, lval = 2, L0
        elif v0 == 6 and L0 >= 40:
            lcol, lval = 4, L0 - 40
        else:
            return False
        if ((mat[:, h0] >> 4) != v0).any() or (mat[:, h0 + lcol] != lval >> 8).any():
            return False
        if (mat[:, h0 + lcol + 1] != lval & 0xFF).any():
            return False
        # sequence numbers: reserved by prepare() or drawn here
        seq_col = e.seq[ix]
        fresh = seq_col == 0
        nf = int(np.count_nonzero(fresh))
        first = self.next_seq[k]
        if nf > max(sa.max_seq - first + 1, 0):
            return False  # some are used up: the general path gives SEQ_EXHAUSTED
        if nf == n:
            seqs = np.arange(n, dtype=np.uint64) + np.uint64(first)
        elif nf:
            seqs = seq_col.copy()
            seqs[fresh] = np.arange(nf, dtype=np.uint64) + np.uint64(first)
        else:
            seqs = seq_col
        self.next_seq[k] = first + nf
        # from here on nothing fails. Scratch rows (see _Rows), laid out so that the
        # 64-bit IVs start at multiples of 8 and the 32-bit sequence numbers at
        # multiples of 4: they are written as integers, one column each
        esp = H - 8 - sa.iv_len
        lead = -esp % 8  # IV at lead + esp + 8, a multiple of 8
        W = -(-(lead + H + P + ICV_LEN) // 8) * 8
        scratch = _scratch()
        kern = _aead_kernel()
        if kern is not None:  # in place in the batch: the scratch rows hold headers only
            out = scratch.rows("enc-hdr", -(-(lead + H) // 8) * 8, 0, 0, n)
        else:
            out = scratch.rows("enc-out", W, lead + H, lead + H + P + ICV_LEN, n)
        ip_total = H + P + ICV_LEN
        head = self._head_row(k, ip_total)[: esp + 4]
        if out.fill != (hb := head.tobytes()):
            out.arr[:, lead : lead + esp + 4] = head
            out.fill = hb
        oa = out.arr[:n]
        # DSCP and ECN copied from the inner header (RFC 6040 normal mode), and
        # an IPv6 outer header's flow label (RFC 6438): per packet, over the head
        tos = _tos_of(mat[:, h0].astype(np.int64), mat[:, h0 + 1].astype(np.int64))
        if self.versions[k] == 4:
            oa[:, lead + 1] = tos
            s0 = ~((int(head[10]) << 8) | int(head[11])) & 0xFFFF
            oa.view(">u2")[:, (lead + 10) // 2] = ~_fold(s0 + tos) & 0xFFFF
        else:
            fl = self._labels(b, rows)
            oa[:, lead] = 0x60 | (tos >> 4)
            oa[:, lead + 1] = ((tos & 0xF) << 4) | (fl >> 16)
            oa.view(">u2")[:, (lead + 2) // 2] = fl & 0xFFFF
        oa.view(">u4")[:, (lead + esp + 4) // 4] = seqs
        oa.view(">u8")[:, (lead + esp + 8) // 8] = seqs
        trailer = (_TRAILERS4 if v0 == 4 else _TRAILERS6)[pad]
        if kern is None:
            pt = scratch.rows("enc-in", P, 0, P, n)
            if pt.fill != (L0, v0):
                pt.arr[:, L0:] = trailer
                pt.fill = (L0, v0)
            pt.arr[:n, :L0] = mat[:, h0 : h0 + L0]
        nonce = scratch.rows("nonce", 16, 4, 16, n)  # salt at 4, IV at 8
        if nonce.fill != sa.salt:
            nonce.arr[:, 4:8] = np.frombuffer(sa.salt, np.uint8)
            nonce.fill = sa.salt
        nonce.arr[:n].view(">u8")[:, 1] = seqs
        # AAD: SPI, seq (at 4) or SPI, seq hi, seq lo (at 4, as one 64-bit number)
        aad = scratch.rows("aad-esn", 16, 4, 16, n) if sa.esn else scratch.rows("aad", 8, 0, 8, n)
        spi_at = 4 if sa.esn else 0
        if aad.fill != sa.spi:
            aad.arr[:, spi_at : spi_at + 4] = np.frombuffer(sa.spi.to_bytes(4, "big"), np.uint8)
            aad.fill = sa.spi
        if sa.esn:
            aad.arr[:n].view(">u8")[:, 1] = seqs
        else:
            aad.arr[:n].view(">u4")[:, 1] = seqs
        hc = h0 - H
        if kern is not None:
            # trailer and outer header around the inner packet, then one kernel call:
            # encrypt_into in place, plaintext in, ciphertext and ICV out
            mat[:, h0 + L0 : h0 + P] = trailer
            mat[:, hc:h0] = oa[:, lead : lead + H]
            _aead_loop(
                kern,
                aead.encrypt_into,
                None,
                (nonce.arr, nonce.lo, nonce.hi),
                (aad.arr, aad.lo, aad.hi),
                b.buf,
                start,
                P,
                P + ICV_LEN,
            )
        else:
            collections.deque(
                map(aead.encrypt_into, _first(nonce.views, n), pt.views, aad.views, out.views),
                maxlen=0,
            )
            mat[:, hc : h0 + P + ICV_LEN] = oa[:, lead : lead + H + P + ICV_LEN]
        b.start[ix] = start - H
        b.length[ix] = H + P + ICV_LEN
        iph = 20 if self.versions[k] == 4 else 40
        e.l3_off[ix] = 0
        e.l3_proto[ix] = self.versions[k]
        e.l4_off[ix] = iph
        e.l4_proto[ix] = IPPROTO_UDP if sa.udp_encap else IPPROTO_ESP
        e.hdr_len[ix] = H
        e.vflags[ix] = 0
        e.gso_type[ix] = 0
        e.gso_size[ix] = 0
        e.csum_start[ix] = 0
        e.csum_offset[ix] = 0
        e.xflags[ix] |= _PARSED
        if nf:
            e.seq[ix] = seqs
        return True

    def _encrypt_sa(self, b: Batch, k: int, rows: I64, l2: I64, ver: I64, L: I64) -> None:
        sa = self.table.sas[k]
        e = b.ext
        n = len(rows)
        # numbers reserved by prepare() are used as they are; the others are drawn here
        seqs = e.seq[_ix(rows)].astype(np.uint64)
        fresh = seqs == 0
        nf = int(np.count_nonzero(fresh))
        if nf:
            first = self.next_seq[k]
            room = max(sa.max_seq - first + 1, 0)
            rank = np.cumsum(fresh) - 1  # position among the fresh packets
            seqs[fresh] = rank[fresh].astype(np.uint64) + np.uint64(first)
            self.next_seq[k] = first + min(nf, room)
            over = fresh & (rank >= room)
            if over.any():
                e.error[rows[over]] = Reason.SEQ_EXHAUSTED
                keep = ~over
                rows, l2, ver, L, seqs = rows[keep], l2[keep], ver[keep], L[keep], seqs[keep]
                n = len(rows)
                if n == 0:
                    return
        ix = _ix(rows)
        e.seq[ix] = seqs
        H = sa.overhead
        pad = (-(L + 2)) % 4
        P = L + pad + 2
        start = b.start[ix]
        inner = start + l2  # the inner IP packet stays where it is
        head = inner - H  # outer header start
        new_start = head - l2
        # move the link-layer header (if any) in front of the outer header
        if (l2 > 0).any():
            h2 = l2 > 0
            b.buf[gather_index(new_start[h2], l2[h2])] = b.buf[gather_index(start[h2], l2[h2])]
            et = _ETH_P_IP if sa.outer_version == 4 else _ETH_P_IPV6
            b.buf[head[h2] - 2] = et >> 8
            b.buf[head[h2] - 1] = et & 0xFF
        ct = inner  # the encrypted part starts right after the IV
        # uniform layout (same offsets and sizes in equal slots): 2-D slices, no index arrays
        uni = False
        sub: U8 | None = None
        off = p0 = 0
        if b.stride > 0 and n > 1:
            rel = ct - b.slot_lo[ix]
            off, p0 = int(rel[0]), int(P[0])
            uni = bool((rel == off).all() and np.equal(P, p0).all())
            if uni and isinstance(ix, slice):
                sub = b.matrix()[ix]
        nh = np.where(ver == 4, NH_IPV4, NH_IPV6)
        # trailer: padding 1..pad, pad length, next header
        if uni:
            pd = p0 - int(L[0]) - 2
            tr = np.empty((n, pd + 2), dtype=np.uint8)
            tr[:, :pd] = np.arange(1, pd + 1, dtype=np.uint8)
            tr[:, pd] = pd
            tr[:, pd + 1] = nh
            self._put(b, sub, rows, off + p0 - pd - 2, tr)
        else:
            tail = inner + L
            for j in range(5):
                is_pad = j < pad
                is_pl = j == pad
                is_nh = j == pad + 1
                w = is_pad | is_pl | is_nh
                val = np.where(is_pad, j + 1, np.where(is_pl, pad, nh))
                b.buf[tail[w] + j] = val[w]
        # outer headers, all packets of this SA at once: DSCP and ECN copied
        # from the inner header (RFC 6040 normal mode), an IPv6 flow label from
        # the inner flow (RFC 6438)
        m = np.empty((n, H), dtype=np.uint8)
        m[:] = self.templates[k]
        tos = _tos_of(b.buf[inner].astype(np.int64), b.buf[inner + 1].astype(np.int64))
        label = self._labels(b, rows) if sa.outer_version == 6 else None
        self._lengths_into(k, m, H + P + ICV_LEN, tos, label)
        iph = 20 if self.versions[k] == 4 else 40
        esp = iph + 8 if sa.udp_encap else iph
        m[:, esp + 4 : esp + 8] = _be_bytes(seqs, 4)
        if sa.iv_len:
            m[:, esp + 8 : esp + 16] = _be_bytes(seqs, 8)
        if uni:
            self._put(b, sub, rows, off - H, m)
        else:
            b.buf[head[:, None] + np.arange(H)] = m
        mv = b.buf.data
        aead = self.aeads[k]
        if aead is not None:
            nonce = np.empty((n, 12), dtype=np.uint8)
            nonce[:, :4] = np.frombuffer(sa.salt, np.uint8)
            nonce[:, 4:] = _be_bytes(seqs, 8)
            nonces = nonce.view("V12").ravel().tolist()
            if sa.esn:
                aad = np.empty((n, 12), dtype=np.uint8)
                aad[:, :4] = m[:, esp : esp + 4]
                aad[:, 4:8] = _be_bytes(seqs >> np.uint64(32), 4)
                aad[:, 8:] = m[:, esp + 4 : esp + 8]
                aads = aad.view("V12").ravel().tolist()
            else:
                aads = np.ascontiguousarray(m[:, esp : esp + 8]).view("V8").ravel().tolist()
            if uni:
                # bytes in, bytes out: the cheapest call the AEAD binding offers
                src = sub if sub is not None else b.matrix()[rows]
                pts = src[:, off : off + p0].view(f"V{p0}")[:, 0].tolist()
                outs = list(map(aead.encrypt, nonces, pts, aads))
                res = np.frombuffer(b"".join(outs), np.uint8).reshape(n, p0 + ICV_LEN)
                self._put(b, sub, rows, off, res)
            else:
                s_l = ct.tolist()
                ins = map(mv.__getitem__, map(slice, s_l, (ct + P).tolist()))
                outs_v = map(mv.__getitem__, map(slice, s_l, (ct + P + ICV_LEN).tolist()))
                collections.deque(map(aead.encrypt_into, nonces, ins, aads, outs_v), maxlen=0)
        else:
            hm = padded_hmac(sa.integrity_key)
            esp_abs = (head + esp).tolist()
            icv_at = (ct + P).tolist()
            hi = _be_bytes(seqs >> np.uint64(32), 4).view("V4").ravel().tolist()
            for i in range(n):
                data: Any = mv[esp_abs[i] : icv_at[i]]
                if sa.esn:
                    data = bytes(data) + hi[i]
                mv[icv_at[i] : icv_at[i] + ICV_LEN] = hm(data)[:ICV_LEN]
        b.start[ix] = new_start
        b.length[ix] = l2 + H + P + ICV_LEN
        e.l3_off[ix] = l2
        e.l3_proto[ix] = sa.outer_version
        e.l4_off[ix] = l2 + iph
        e.l4_proto[ix] = IPPROTO_UDP if sa.udp_encap else IPPROTO_ESP
        e.hdr_len[ix] = l2 + H
        e.vflags[ix] = 0
        e.gso_type[ix] = 0
        e.gso_size[ix] = 0
        e.csum_start[ix] = 0
        e.csum_offset[ix] = 0
        e.xflags[ix] |= np.uint8(XFlag.PARSED)

    @staticmethod
    def _put(b: Batch, sub: U8 | None, rows: I64, col: int, vals: U8) -> None:
        """Write (n, w) values at column ``col`` of the slots of ``rows`` (uniform batch)."""
        w = vals.shape[1]
        if sub is not None:
            sub[:, col : col + w] = vals
        else:
            b.matrix()[rows, col : col + w] = vals


def _with_room(b: Batch, head: int, tail: int) -> Batch:
    """A copy of the batch whose every slot has at least this head and tail room."""
    n = len(b)
    out = Batch.alloc(b.length, headroom=head, tailroom=tail, uniform=b.stride > 0)
    out.buf[gather_index(out.start, out.length)] = b.buf[gather_index(b.start, b.length)]
    out.ext = b.ext
    assert len(out) == n
    return out


def esp_layout(
    b: Batch, rows: I64, udp_ports: frozenset[int] = frozenset({NAT_T_PORT})
) -> tuple[I64, I64, I64, Mask, NDArray[np.uint16]]:
    """Where the ESP part of each packet is: (l2, esp offset, esp end, is_esp, reason).

    Offsets are relative to the packet start; ``esp end`` is the end of the IP
    packet. ``reason`` is non-zero where the packet is not (well-formed) ESP.
    """
    n = len(rows)
    reason = np.zeros(n, dtype=np.uint16)
    l2 = l2_len(b, rows)
    start = b.start[rows]
    avail = b.length[rows] - l2
    ver, iplen = _ip_lengths(b, start + l2, avail)
    reason[ver == 0] = Reason.NOT_IP
    ok = ver != 0
    v4 = ok & (ver == 4)
    l3 = start + l2
    ihl = np.where(v4, (_byte(b, l3, v4) & 15) * 4, 40)
    proto = np.where(v4, _byte(b, l3 + 9, v4), _byte(b, l3 + 6, ok & ~v4))
    frag = v4 & ((_u16(b, l3 + 6, v4) & 0x3FFF) != 0)
    bad_ihl = v4 & ((ihl < 20) | (ihl > iplen))
    reason[bad_ihl] = Reason.BAD_IHL
    reason[ok & ~bad_ihl & frag] = Reason.FRAGMENT
    ok &= ~bad_ihl & ~frag
    esp_off = l2 + ihl
    is_udp = ok & (proto == IPPROTO_UDP)
    if is_udp.any():
        uo = l3 + ihl
        has_udp = is_udp & (iplen >= ihl + 8 + 8)
        sp = _u16(b, uo, has_udp)
        dp = _u16(b, uo + 2, has_udp)
        ports = np.array(sorted(udp_ports), np.int64)
        on_port = np.isin(sp, ports) | np.isin(dp, ports)
        marker = _u32(b, uo + 8, has_udp) == 0
        udp_esp = has_udp & on_port & ~marker
        esp_off = np.where(udp_esp, esp_off + 8, esp_off)
    else:
        udp_esp = np.zeros(n, np.bool_)
    is_esp = ok & ((proto == IPPROTO_ESP) | udp_esp)
    reason[ok & ~is_esp] = Reason.BAD_ESP
    end = l2 + iplen
    return l2, esp_off, end, is_esp, reason


def esp_mask(b: Batch, sas: SATable | None = None) -> Mask:
    """Which packets of the batch are ESP (direct or in UDP on an SA's port)."""
    ports = {NAT_T_PORT}
    if sas is not None:
        for s in sas.sas:
            if s.udp_encap:
                ports |= {s.udp_sport, s.udp_dport}
    rows = np.arange(len(b), dtype=np.int64)
    _, _, _, is_esp, _ = esp_layout(b, rows, frozenset(ports))
    return is_esp


class DecryptTask(SoftTask):
    """ESP tunnel-mode decapsulation and AEAD decryption (see module docstring).

    ``non_esp``: what happens to a selected packet that is not ESP — ``"error"``
    (the default: ``Reason.BAD_ESP``, or ``NOT_IP``) or ``"pass"`` (left
    untouched, no verdict; for captures that mix ESP with other traffic).
    """

    task = Task.DECRYPT

    def __init__(
        self,
        sas: SATable | None = None,
        sa_file: str | Path | None = None,
        non_esp: str = "error",
    ) -> None:
        if non_esp not in ("error", "pass"):
            raise ConfigError(f"decrypt: non_esp must be 'error' or 'pass', not {non_esp!r}")
        self.pass_non_esp = non_esp == "pass"
        self.table = sa_table_from(sas, sa_file)
        self.aeads = [_aead(sa) for sa in self.table.sas]
        self.windows = [
            ReplayWindow(sa.replay_window) if sa.replay_window else None for sa in self.table.sas
        ]
        self.tops = [0 for _ in self.table.sas]  # highest authenticated seq (ESN inference)
        #: inbound traffic selectors per SA, checked after decryption (None: any)
        self.selectors = [_Selectors.of(sa) for sa in self.table.sas]
        ports = {NAT_T_PORT}
        for s in self.table.sas:
            if s.udp_encap:
                ports |= {s.udp_sport, s.udp_dport}
        self.ports = frozenset(ports)

    def describe(self) -> dict[str, object]:
        return {"task": self.task.kebab, "sas": len(self.table)}

    def prepare(self, batch: Batch, sel: Mask) -> None:
        """On the host, in packet order, before the engine splits the packets
        between paths: the anti-replay check RFC 4303 does before authentication,
        against the one window the host keeps for the SA. A replayed or too old
        packet fails here (REPLAY / TOO_OLD) and no path decrypts it; the others
        get ``ext.sa``, their full sequence number in ``ext.seq`` (ESN inferred
        from the host's window) and ``XFlag.REPLAY_ON_HOST``, so whichever path
        decrypts them leaves its own window alone, and ``settle`` records them.
        One window on the host, not one per path: a packet replayed to the other
        path than the original would otherwise get through."""
        e = batch.ext
        rows = np.flatnonzero(sel & e.alive() & ((e.xflags & _ON_HOST) == 0))
        if len(rows) == 0:
            return
        _, esp_off, end, is_esp, _ = esp_layout(batch, rows, self.ports)
        keep = is_esp & (end - esp_off >= 8)
        rows, esp_off = rows[keep], esp_off[keep]
        if len(rows) == 0:
            return
        ok = np.ones(len(rows), np.bool_)
        pos = batch.start[rows] + esp_off
        sa = self.table.lookup(_u32(batch, pos, ok)).astype(np.int64)
        lo = _u32(batch, pos + 4, ok)
        for k in np.unique(sa[sa >= 0]).tolist():
            w = self.windows[k]
            if w is None:
                continue
            g = sa == k
            seqs, bad = self._infer_seq(k, lo[g])
            r, q = rows[g][~bad], seqs[~bad]
            v = w.precheck(q)
            fail = v != OK
            e.error[r[fail]] = np.where(v[fail] == REPLAY, Reason.REPLAY, Reason.TOO_OLD).astype(
                np.uint16
            )
            r, q = r[~fail], q[~fail]
            e.sa[r] = k
            e.seq[r] = q
            e.xflags[r] |= _ON_HOST

    def replay_precheck(self, batch: Batch, rows: I64) -> U8:
        """Anti-replay verdicts (``ReplayVerdict`` values) of packets ``rows``
        against the host's windows as they stand, each on its own, changing
        nothing: for a filter that runs before decryption (the DoS filter's
        pre-check). Only ESP packets of a known SA with a window can fail;
        sequence numbers are inferred as ``prepare`` does (ESN included)."""
        out = np.zeros(len(rows), np.uint8)
        if len(rows) == 0:
            return out
        _, esp_off, end, is_esp, _ = esp_layout(batch, rows, self.ports)
        keep = np.flatnonzero(is_esp & (end - esp_off >= 8))
        if len(keep) == 0:
            return out
        ok = np.ones(len(keep), np.bool_)
        pos = batch.start[rows[keep]] + esp_off[keep]
        sa = self.table.lookup(_u32(batch, pos, ok)).astype(np.int64)
        lo = _u32(batch, pos + 4, ok)
        for k in np.unique(sa[sa >= 0]).tolist():
            w = self.windows[k]
            if w is None:
                continue
            g = sa == k
            seqs, bad = self._infer_seq(k, lo[g])
            v = w.precheck(seqs)
            v[bad] = TOO_OLD
            out[keep[g]] = v
        return out

    def settle(self, batch: Batch, sel: Mask) -> None:
        """After a path decrypted ``sel`` packets that ``prepare`` checked: the
        authenticated ones move the host's window, in the order given; one that the
        window saw meanwhile (a copy that went down the other path, or earlier in
        these packets) fails as REPLAY. A number that has fallen out of the
        window since ``prepare`` is accepted, as it was when it arrived."""
        e = batch.ext
        rows = np.flatnonzero(sel & ((e.xflags & _ON_HOST) != 0))
        if len(rows) == 0:
            return
        e.xflags[rows] &= ~_ON_HOST
        rows = rows[e.alive()[rows]]
        sa = e.sa[rows].astype(np.int64)
        for k in np.unique(sa).tolist():
            w = self.windows[k] if 0 <= k < len(self.windows) else None
            if w is None:
                continue
            r = rows[sa == k]
            q = e.seq[r]
            rep = w.check(q) == REPLAY
            e.error[r[rep]] = Reason.REPLAY
            w.update(q[~rep])
            self.tops[k] = w.top

    def _note_top(self, k: int, seqs: NDArray[np.uint64]) -> None:
        """Highest number decrypted here whose window the host keeps (for ESN
        inference where the host gave no number)."""
        if len(seqs):
            self.tops[k] = max(self.tops[k], int(seqs.max()))

    def process(self, batch: Batch, sel: Mask) -> Batch:
        rows = np.flatnonzero(sel)
        if len(rows) == 0 or self._decrypt_uniform(batch, rows):
            return batch
        e = batch.ext
        l2, esp_off, end, is_esp, reason = esp_layout(batch, rows, self.ports)
        if not self.pass_non_esp:
            e.error[rows[~is_esp]] = reason[~is_esp]
        keep = is_esp
        rows, l2, esp_off, end = rows[keep], l2[keep], esp_off[keep], end[keep]
        start = batch.start[rows]
        short = end - esp_off < 8
        e.error[rows[short]] = Reason.BAD_ESP
        rows, l2, esp_off, end, start = (x[~short] for x in (rows, l2, esp_off, end, start))
        if len(rows) == 0:
            return batch
        ok = np.ones(len(rows), np.bool_)
        spi = _u32(batch, start + esp_off, ok)
        sa = self.table.lookup(spi).astype(np.int64)
        unk = sa < 0
        e.error[rows[unk]] = Reason.UNKNOWN_SA
        for k in np.unique(sa[~unk]).tolist():
            g = sa == k
            self._decrypt_sa(batch, k, rows[g], l2[g], esp_off[g], end[g])
        return batch

    def _decrypt_uniform(self, b: Batch, rows: I64) -> bool:
        """The common case in a few whole-batch steps: a uniform batch whose selected
        packets are one run of slots, all ESP straight in IP (no IPv4 options,
        not fragments) of one outer version and length, under one AEAD SA whose
        sequence numbers can all be inferred. Returns False, having changed nothing,
        when the batch is not like that (``process`` does the rest).

        Nonces and AADs are built in reusable scratch rows from the ESP headers.
        With the compiled kernel one call decrypts every packet in place, and the
        packets that fail a check afterwards (or authentication) are encrypted
        again, which gives their ciphertext back. Without it, ESP header, IV,
        ciphertext and ICV are copied into scratch rows, ``decrypt_into`` writes
        each plaintext into other scratch rows, and only the packets that pass
        every check get their plaintext copied back. Either way a failed packet
        keeps its bytes.
        """
        ix = _row_run(b, rows)
        if ix is None:
            return False
        n, r0, stride = len(rows), ix.start, b.stride
        e = b.ext
        if (e.xflags[ix] & _ETHERNET).any():
            return False
        start = b.start[ix]
        h0 = int(start[0]) - r0 * stride
        L0 = int(b.length[r0])
        if (start - b.slot_lo[ix] != h0).any() or (b.length[ix] != L0).any():
            return False
        mat = b.matrix()[ix]
        v0 = int(mat[0, h0]) >> 4
        want: tuple[tuple[int, int], ...]
        if v0 == 4 and L0 >= 20 + 16 + ICV_LEN:
            iph = 20
            want = ((0, 0x45), (2, L0 >> 8), (3, L0 & 0xFF), (9, IPPROTO_ESP), (7, 0))
        elif v0 == 6 and L0 >= 40 + 16 + ICV_LEN:
            iph = 40
            want = ((4, (L0 - 40) >> 8), (5, (L0 - 40) & 0xFF), (6, IPPROTO_ESP))
        else:
            return False
        # outer IP and ESP headers (SPI, seq, IV) of every packet in one gather: the
        # checks below read this small matrix, not columns of the batch
        eo = h0 + iph  # ESP header column
        hh = mat[:, h0 : eo + 16].copy()
        if iph == 20:
            if (hh[:, 6] & 0x3F).any():  # a fragment (MF or an offset)
                return False
        elif ((hh[:, 0] >> 4) != 6).any():
            return False
        for col, val in want:
            if (hh[:, col] != val).any():
                return False
        spi_b = hh[:, iph : iph + 4]
        if (spi_b != spi_b[0]).any():
            return False
        k = int(self.table.lookup(np.array([int.from_bytes(spi_b[0].tobytes(), "big")]))[0])
        if k < 0 or self.aeads[k] is None:
            return False
        sa = self.table.sas[k]
        aead = self.aeads[k]
        assert aead is not None
        P = L0 - iph - 16 - ICV_LEN  # encrypted payload (trailer included)
        if P < 2:
            return False
        # scratch rows: SPI, seq (at 4), IV (at 8), then ciphertext and ICV (at 16)
        # (with the compiled kernel: the 16 header bytes only; it decrypts in place)
        scratch = _scratch()
        kern = _aead_kernel()
        if kern is not None:
            ia = scratch.rows("dec-hdr", 16, 0, 0, n).arr[:n]
            ia[:] = hh[:, iph:]
        else:
            src = scratch.rows("dec-in", -(-(16 + P + ICV_LEN) // 8) * 8, 16, 16 + P + ICV_LEN, n)
            ia = src.arr[:n]
            ia[:, : 16 + P + ICV_LEN] = mat[:, eo : eo + 16 + P + ICV_LEN]
        lo = ia.view(">u4")[:, 1].astype(np.int64)
        on_host = (e.xflags[ix] & _ON_HOST) != 0
        seqs, unguessable = self._infer_seq(k, lo, np.where(on_host, e.seq[ix], 0))
        if unguessable.any():
            return False
        # from here on the batch takes this path
        nonce = scratch.rows("nonce", 16, 4, 16, n)  # salt at 4, IV at 8
        if nonce.fill != sa.salt:
            nonce.arr[:, 4:8] = np.frombuffer(sa.salt, np.uint8)
            nonce.fill = sa.salt
        nonce.arr[:n].view(np.uint64)[:, 1] = ia.view(np.uint64)[:, 1]
        if sa.esn:
            aad = scratch.rows("aad-esn", 16, 4, 16, n)  # SPI at 4, seq hi and lo at 8
            aad.fill = None
            aad.arr[:n, 4:8] = ia[:, :4]
            aad.arr[:n].view(">u8")[:, 1] = seqs
        else:
            aad = scratch.rows("aad", 8, 0, 8, n)
            aad.fill = None
            aad.arr[:n].view(np.uint64)[:, 0] = ia.view(np.uint64)[:, 0]
        ct = eo + 16
        pos: I64 | None = None
        if kern is not None:
            # one kernel call: decrypt_into in place (ciphertext and ICV in, plaintext
            # out); a packet that fails anywhere below is put back afterwards
            pos = start + (ct - h0)
            ok = _aead_loop(
                kern,
                aead.decrypt_into,
                InvalidTag,
                (nonce.arr, nonce.lo, nonce.hi),
                (aad.arr, aad.lo, aad.hi),
                b.buf,
                pos,
                P + ICV_LEN,
                P,
            )
            oa = mat[:, ct : ct + P]
        else:
            out = scratch.rows("dec-out", P, 0, P, n)
            nv = nonce.views if len(nonce.views) == n else nonce.views[:n]
            it = iter(nv)
            args = (it, iter(src.views), iter(aad.views), iter(out.views))
            ok = np.ones(n, np.bool_)
            while True:
                try:
                    collections.deque(map(aead.decrypt_into, *args), maxlen=0)
                    break
                except InvalidTag:  # this packet fails; go on with the next
                    ok[n - operator.length_hint(it) - 1] = False
            oa = out.arr[:n]
        e.error[ix][~ok] = Reason.BAD_ICV
        Lg_k: I64 | None = None
        if kern is not None and pos is not None and self.selectors[k] is None:
            # trailer, inner header length and ECN (RFC 6040) checks in one kernel
            # call, on the plaintext in place
            why = np.empty(n, np.uint16)
            new_b1 = np.empty(n, np.int64)
            iv, L, Lg_k = np.empty((3, n), np.int64)
            head = np.empty((n, 40), np.uint8)
            kern.esp_trailer(
                b.buf, pos, P, ok.view(np.uint8), hh, hh.shape[1], why, new_b1, iv, L, Lg_k, head
            )
            bad = why != 0
            e.error[ix][bad] = why[bad]
        else:
            # trailer: pad length, next header, padding bytes 1, 2, ...
            padl = oa[:, P - 2].astype(np.int64)
            nh = oa[:, P - 1]
            L = P - 2 - padl
            bad_pad = ok & (L < 0)
            p0 = int(padl[0])
            if p0 <= P - 2 and (padl == p0).all():
                if p0:
                    want_pad = np.arange(1, p0 + 1, dtype=np.uint8)
                    bad_pad |= ok & (oa[:, P - 2 - p0 : P - 2] != want_pad).any(axis=1)
            else:
                ar = np.arange(n)
                for j in range(int(padl[ok].max()) if ok.any() else 0):
                    w = ok & ~bad_pad & (j < padl)
                    got = oa[ar, np.clip(L + j, 0, P - 1)]
                    bad_pad |= w & (got != j + 1)
            iv = np.where(L >= 1, oa[:, 0] >> 4, 0)
            bad_nh = (
                ok & ~bad_pad & ~(((nh == NH_IPV4) & (iv == 4)) | ((nh == NH_IPV6) & (iv == 6)))
            )
            e.error[ix][bad_pad] = Reason.BAD_PADDING
            e.error[ix][bad_nh] = Reason.BAD_ESP
            ok &= ~(bad_pad | bad_nh)
            # the inner packet: its header, the selectors, ECN (RFC 6040)
            head = np.zeros((n, 40), np.uint8)
            head[:, : min(P, 40)] = oa[:, : min(P, 40)]
            why, new_b1 = _decap_checks(
                self.selectors[k], head, hh[:, :2], iv.astype(np.int64), L, ok
            )
            e.error[ix][why != 0] = why[why != 0]
            ok &= why == 0
        # anti-replay: only authenticated packets are judged and move the window
        # (those whose window the host keeps are left to ``settle``)
        self._note_top(k, seqs[ok & on_host])
        acc = np.flatnonzero(ok & ~on_host)
        w_ = self.windows[k]
        if len(acc):
            if w_ is not None:
                v = w_.check(seqs[acc])
                good_v = v == OK
                w_.update(seqs[acc][good_v])
                bad_rows = acc[~good_v]
                e.error[ix][bad_rows] = np.where(
                    v[~good_v] == REPLAY, Reason.REPLAY, Reason.TOO_OLD
                ).astype(np.uint16)
                ok[bad_rows] = False
                self.tops[k] = w_.top
            else:
                self.tops[k] = max(self.tops[k], int(seqs[acc].max()))
        if (new_b1 >= 0).any():
            ch, csum = _set_ecn(head, np.where(ok, new_b1, -1))
            oa[ch, 1] = new_b1[ch]
            c4 = csum >= 0
            oa[ch[c4], 10] = csum[c4] >> 8
            oa[ch[c4], 11] = csum[c4] & 0xFF
        # the inner packets (without TFC padding), in place of the ciphertext
        if Lg_k is not None:
            Lg = Lg_k
        else:
            _, iplen = _ip_lengths_of(head[:, :6], L)
            Lg = np.where((iplen > 0) & (iplen <= L), iplen, L)
        if ok.all():
            g: I64 | slice = ix
            if pos is None:
                mat[:, ct : ct + P] = oa
        else:
            good = np.flatnonzero(ok)
            if pos is None:
                mat[good, ct : ct + P] = oa[good]
            else:
                self._put_back(b, mat, aead, nonce, aad, pos, np.flatnonzero(~ok), ct, P)
            g = good + r0
            start, Lg, seqs, iv = start[good], Lg[good], seqs[good], iv[good]
        b.start[g] = start + (ct - h0)
        b.length[g] = Lg
        e.sa[g] = k
        e.seq[g] = seqs
        e.l3_off[g] = 0
        e.l3_proto[g] = iv
        e.l4_off[g] = -1
        e.l4_proto[g] = 0
        e.hdr_len[g] = 0
        e.xflags[g] &= np.uint8(~XFlag.PARSED & 0xFF)
        return True

    @staticmethod
    def _put_back(
        b: Batch, mat: U8, aead: Aead, nonce: _Rows, aad: _Rows, pos: I64, bad: I64, ct: int, P: int
    ) -> None:
        """Give packets ``bad``, decrypted in place, their ciphertext back: encrypting
        the P bytes again gives it (a stream cipher), in one kernel call; the ICV that
        this writes is replaced by the packet's own (a forged packet keeps its bytes)."""
        kern = _aead_kernel()
        assert kern is not None
        icv = mat[bad, ct + P : ct + P + ICV_LEN].copy()
        _aead_loop(
            kern,
            aead.encrypt_into,
            None,
            (nonce.arr[bad], nonce.lo, nonce.hi),
            (aad.arr[bad], aad.lo, aad.hi),
            b.buf,
            pos[bad],
            P,
            P + ICV_LEN,
        )
        mat[bad, ct + P : ct + P + ICV_LEN] = icv

    def _infer_seq(
        self, k: int, lo: I64, pre: NDArray[np.uint64] | None = None
    ) -> tuple[NDArray[np.uint64], Mask]:
        """Full sequence numbers (RFC 4303 appendix A2.2) and which could not be
        inferred. ``pre``: numbers the host's ``prepare`` inferred (0 where none);
        used where their low half matches the header (a device's own top may lag)."""
        sa = self.table.sas[k]
        lo_u = lo.astype(np.uint64)
        if not sa.esn:
            return lo_u, np.zeros(len(lo), np.bool_)
        if pre is not None:
            use = (pre != 0) & ((pre & np.uint64(0xFFFFFFFF)) == lo_u)
            if use.all():
                return pre.copy(), np.zeros(len(lo), np.bool_)
            seqs, bad = self._infer_seq(k, lo)
            return np.where(use, pre, seqs), bad & ~use
        W = sa.replay_window or 64
        T = self.tops[k]
        Tl, Th = T & 0xFFFFFFFF, T >> 32
        if Tl >= W - 1:
            hi = np.where(lo >= Tl - W + 1, Th, Th + 1)
        else:
            Bl = (Tl - W + 1) % (1 << 32)
            # the window reaches back into the previous epoch, if there is one
            hi = np.where((lo >= Bl) & (Th > 0), Th - 1, Th)
        bad = (hi < 0) | (hi >= 1 << 32)
        hi = np.where(bad, 0, hi)
        return (hi.astype(np.uint64) << np.uint64(32)) | lo_u, bad

    def _decrypt_sa(self, b: Batch, k: int, rows: I64, l2: I64, eo: I64, end: I64) -> None:
        sa = self.table.sas[k]
        e = b.ext
        start = b.start[rows]
        esp = start + eo
        ct = esp + 8 + sa.iv_len
        P = (start + end) - ICV_LEN - ct
        short = P < 2
        e.error[rows[short]] = Reason.BAD_ESP
        ok = ~short
        lo = _u32(b, esp + 4, ok)
        on_host = (e.xflags[rows] & _ON_HOST) != 0
        seqs, unguessable = self._infer_seq(k, lo, np.where(on_host, e.seq[rows], 0))
        e.error[rows[ok & unguessable]] = Reason.TOO_OLD
        ok &= ~unguessable
        mv = b.buf.data
        aead = self.aeads[k]
        idx = np.flatnonzero(ok)
        nonces: list[bytes] = []
        aads: list[bytes] = []
        if aead is not None and len(idx):
            m = len(idx)
            nonce = np.empty((m, 12), dtype=np.uint8)
            nonce[:, :4] = np.frombuffer(sa.salt, np.uint8)
            head16 = b.buf[esp[idx][:, None] + np.arange(16)]  # SPI, seq, IV
            nonce[:, 4:] = head16[:, 8:]
            nonces = nonce.view("V12").ravel().tolist()
            hdr = head16[:, :8]
            if sa.esn:
                aad = np.empty((m, 12), dtype=np.uint8)
                aad[:, :4] = hdr[:, :4]
                aad[:, 4:8] = _be_bytes(seqs[idx] >> np.uint64(32), 4)
                aad[:, 8:] = hdr[:, 4:]
                aads = aad.view("V12").ravel().tolist()
            else:
                aads = np.ascontiguousarray(hdr).view("V8").ravel().tolist()
            rows_i = rows[idx]
            rel = ct[idx] - b.slot_lo[rows_i]
            p0 = int(P[idx[0]])
            if b.stride > 0 and bool((rel == rel[0]).all()) and bool((P[idx] == p0).all()):
                # uniform: bytes in, bytes out (the cheapest AEAD call), one write back
                off = int(rel[0])
                mat = b.matrix()
                ri = _ix(rows_i)
                cts = mat[ri, off : off + p0 + ICV_LEN].view(f"V{p0 + ICV_LEN}")[:, 0].tolist()
                decb = aead.decrypt
                try:  # the common case: every packet authentic
                    plain = list(map(decb, nonces, cts, aads))
                    done: I64 | slice = ri
                except InvalidTag:  # find the forged ones packet by packet
                    plain = []
                    done_j: list[int] = []
                    for j, i in enumerate(idx.tolist()):
                        try:
                            plain.append(decb(nonces[j], cts[j], aads[j]))
                            done_j.append(j)
                        except InvalidTag:
                            ok[i] = False
                            e.error[rows[i]] = Reason.BAD_ICV
                    done = rows_i[np.asarray(done_j, np.int64)]
                if plain:
                    res = np.frombuffer(b"".join(plain), np.uint8).reshape(len(plain), p0)
                    mat[done, off : off + p0] = res
            else:
                c0 = ct[idx].tolist()
                c1 = (ct[idx] + P[idx]).tolist()
                c2 = (ct[idx] + P[idx] + ICV_LEN).tolist()
                dec = aead.decrypt_into
                for j, i in enumerate(idx.tolist()):
                    try:
                        dec(nonces[j], mv[c0[j] : c2[j]], aads[j], mv[c0[j] : c1[j]])
                    except InvalidTag:
                        ok[i] = False
                        e.error[rows[i]] = Reason.BAD_ICV
                        self._restore(k, mv, nonces[j], aads[j], c0[j], c1[j])
        elif len(idx):
            hm = padded_hmac(sa.integrity_key)
            hi = _be_bytes(seqs >> np.uint64(32), 4).view("V4").ravel().tolist()
            esp_l = esp.tolist()
            icv_l = (ct + P).tolist()
            for i in idx.tolist():
                data: Any = mv[esp_l[i] : icv_l[i]]
                if sa.esn:
                    data = bytes(data) + hi[i]
                want = hm(data)[:ICV_LEN]
                if not hmac.compare_digest(want, mv[icv_l[i] : icv_l[i] + ICV_LEN]):
                    ok[i] = False
                    e.error[rows[i]] = Reason.BAD_ICV
        # trailer: pad length, next header, padding bytes 1, 2, ...
        tl = ct + P
        padl = _byte(b, tl - 2, ok)
        nh = _byte(b, tl - 1, ok)
        L = P - 2 - padl
        bad_pad = ok & (L < 0)
        maxpad = int(padl[ok].max()) if ok.any() else 0
        for j in range(maxpad):
            w = ok & ~bad_pad & (j < padl)
            if not w.any():
                continue
            got = _byte(b, ct + L + j, w)
            bad_pad |= w & (got != j + 1)
        iv = _byte(b, ct, ok & ~bad_pad & (L >= 1)) >> 4
        bad_nh = ok & ~bad_pad & ~(((nh == NH_IPV4) & (iv == 4)) | ((nh == NH_IPV6) & (iv == 6)))
        fail = bad_pad | bad_nh
        e.error[rows[bad_pad]] = Reason.BAD_PADDING
        e.error[rows[bad_nh]] = Reason.BAD_ESP
        ok &= ~fail
        # the inner packet: its header, the selectors, ECN (RFC 6040)
        new_b1 = np.full(len(rows), -1, np.int64)
        head = np.zeros((len(rows), 40), np.uint8)
        ii = np.flatnonzero(ok)
        if len(ii):
            head[ii] = b.buf.take(ct[ii][:, None] + np.arange(40), mode="clip")
            outer2 = b.buf.take((start[ii] + l2[ii])[:, None] + np.arange(2), mode="clip")
            why, new_b1[ii] = _decap_checks(
                self.selectors[k], head[ii], outer2, iv[ii], L[ii], np.ones(len(ii), np.bool_)
            )
            bad = why != 0
            e.error[rows[ii[bad]]] = why[bad]
            ok[ii[bad]] = False
            fail[ii[bad]] = True
        # anti-replay: only authenticated packets are judged and move the window
        # (those whose window the host keeps are left to ``settle``)
        self._note_top(k, seqs[ok & on_host])
        acc = np.flatnonzero(ok & ~on_host)
        w_ = self.windows[k]
        if len(acc):
            if w_ is not None:
                v = w_.check(seqs[acc])
                good = v == OK
                w_.update(seqs[acc][good])
                bad_rows = acc[~good]
                e.error[rows[bad_rows]] = np.where(
                    v[~good] == REPLAY, Reason.REPLAY, Reason.TOO_OLD
                ).astype(np.uint16)
                ok[bad_rows] = False
                fail[bad_rows] = True
                self.tops[k] = w_.top
            else:
                self.tops[k] = max(self.tops[k], int(seqs[acc].max()))
        # authenticated but rejected afterwards: put the ciphertext back
        if aead is not None and fail.any():
            pos = {i: j for j, i in enumerate(idx.tolist())}
            for i in np.flatnonzero(fail).tolist():
                j = pos[i]
                self._restore(k, mv, nonces[j], aads[j], int(ct[i]), int(ct[i] + P[i]))
        # the inner packet, with any link-layer header moved in front of it
        good = np.flatnonzero(ok)
        if len(good) == 0:
            return
        if (new_b1[good] >= 0).any():
            ch, csum = _set_ecn(head, np.where(ok, new_b1, -1))
            b.buf[ct[ch] + 1] = new_b1[ch]
            c4 = csum >= 0
            b.buf[ct[ch[c4]] + 10] = csum[c4] >> 8
            b.buf[ct[ch[c4]] + 11] = csum[c4] & 0xFF
        r = rows[good]
        inner = ct[good]
        Lg = L[good]
        ver = iv[good]
        _, iplen = _ip_lengths(b, inner, Lg)
        Lg = np.where((iplen > 0) & (iplen <= Lg), iplen, Lg)  # drop TFC padding
        l2g = l2[good]
        new_start = inner - l2g
        if (l2g > 0).any():
            mm = l2g > 0
            src = gather_index(start[good][mm], l2g[mm])
            b.buf[gather_index(new_start[mm], l2g[mm])] = b.buf[src].copy()
            et = np.where(ver[mm] == 4, _ETH_P_IP, _ETH_P_IPV6)
            b.buf[inner[mm] - 2] = et >> 8
            b.buf[inner[mm] - 1] = et & 0xFF
        b.start[r] = new_start
        b.length[r] = l2g + Lg
        e.sa[r] = k
        e.seq[r] = seqs[good]
        e.l3_off[r] = l2g
        e.l3_proto[r] = ver
        e.l4_off[r] = -1
        e.l4_proto[r] = 0
        e.hdr_len[r] = 0
        e.xflags[r] &= np.uint8(~XFlag.PARSED & 0xFF)

    def _restore(self, k: int, mv: memoryview, nonce: bytes, aad: bytes, c0: int, c1: int) -> None:
        """Undo an in-place decryption (stream cipher: encrypting again gives it back)."""
        aead = self.aeads[k]
        assert aead is not None
        mv[c0:c1] = aead.encrypt(nonce, bytes(mv[c0:c1]), aad)[: c1 - c0]


register(Task.ENCRYPT, EncryptTask)
register(Task.DECRYPT, DecryptTask)


def _row_run(b: Batch, rows: NDArray[np.int64]) -> slice | None:
    """The slice of ``rows`` when they are two or more consecutive rows of a
    batch laid out in equal slots (the whole-run paths need that), else None."""
    n = len(rows)
    if b.stride <= 0 or n < 2:
        return None
    r0 = int(rows[0])
    if int(rows[-1]) - r0 != n - 1:
        return None
    return slice(r0, r0 + n)
