"""The classification task in software (``Task.CLASSIFY``), vectorised over the batch.

Each selected packet gets ``ext.class_id``, ``ext.rss_hash`` and an action:
``pass`` leaves ``filter_verdict`` PASS, ``drop`` sets DROP with reason
``RULE_DROP``, ``mark`` sets MARK. The rule table (see ``netoffload.soft.rules``
for the file format) is evaluated first match by priority; the optional
longest-prefix table sits among the rules as one pseudo-rule at its priority;
packets nothing matches get the default action and class.

How rules are matched (the bit-vector scheme of Lakshman and Stiliadis):
for every packet field (IP version, source/destination address as two 64-bit
halves, protocol, ports, DSCP) the rules' intervals cut the value space into
elementary intervals, each with the bit set of rules that accept it. A packet
costs one ``np.searchsorted`` per field that any rule constrains, an AND of the
bit sets, and a lowest-set-bit (rules are numbered in priority order). A prefix
constrains the high half to an interval when it is at most 64 bits long, or to
one value plus the low half to an interval, so the conjunction is exact.

IPv4 addresses live in the IPv4-mapped IPv6 space (``::ffff:a.b.c.d``); a rule
with an IPv4 (IPv6) address only matches IPv4 (IPv6) packets. Ports exist
only for TCP and UDP packets that are not fragments; a rule with a port
condition never matches another packet.

Packets that fail to parse get ``ext.error`` (the parse reason), except non-IP
frames, which get the default action and class with ``rss_hash`` 0.

The Toeplitz RSS hash (``netoffload.soft.rss``) covers the 4-tuple of TCP and
UDP packets that are not fragments and the 2-tuple of other IP packets
(``rss_fields = "2-tuple"``: always the 2-tuple).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from netoffload.batch import Batch, FilterVerdict, Mask, Reason, XFlag
from netoffload.errors import ConfigError
from netoffload.soft import SoftTask, register
from netoffload.soft.lpm import LpmTable
from netoffload.soft.rss import Toeplitz
from netoffload.soft.rules import ClassifyConfig, Rule, load_classify, parse_classify
from netoffload.tasks import Task
from netoffload.wire.parse import be_words, parse_subset

I64 = NDArray[np.int64]
U64 = NDArray[np.uint64]
U8 = NDArray[np.uint8]
U32 = NDArray[np.uint32]

_MAP4 = np.uint64(0xFFFF << 32)
MAX_RULES = 4096


# ====================================================================== flow keys
@dataclass
class FlowKeys:
    """Header fields of a set of packets (rows ``idx`` of a batch)."""

    idx: I64
    reason: NDArray[np.uint16]  # parse reason, 0 = IP packet parsed
    ver: I64  # 4, 6 or 0
    src: U8  # (n, 16) address rows, IPv4 mapped
    dst: U8
    proto: I64
    has_ports: Mask  # TCP/UDP, not a fragment
    sport: I64  # -1 without ports
    dport: I64
    dscp: I64
    frag: Mask  # any fragment
    frag_off: I64  # fragment offset in bytes (IPv4; IPv6 fragment header)
    more_frags: Mask
    ip_len: I64  # bytes from the IP header to the end of the packet
    tcp_flags: I64  # 0 unless TCP
    l4_off: I64  # absolute offset in batch.buf of the L4 header (-1 none)
    l4_avail: I64  # bytes from the L4 header to the end of the packet

    @property
    def ok(self) -> Mask:
        return np.asarray(self.reason == 0)

    @property
    def is_v4(self) -> Mask:
        return np.asarray(self.ver == 4)


def flow_keys(batch: Batch, idx: I64) -> FlowKeys:
    """Fields of packets ``idx`` (parsing those whose extension is not PARSED)."""
    e = batch.ext
    n = len(idx)
    reason = np.zeros(n, dtype=np.uint16)
    parsed = (e.xflags[idx] & np.uint8(XFlag.PARSED)) != 0
    if not parsed.all():
        reason[~parsed] = parse_subset(batch, idx[~parsed])
    buf = batch.buf
    base = batch.start[idx]
    plen = batch.length[idx]
    l3o = e.l3_off[idx].astype(np.int64)
    l4o = e.l4_off[idx].astype(np.int64)
    ver = e.l3_proto[idx].astype(np.int64)
    ok = reason == 0
    ver = np.where(ok, ver, 0)
    # a stale extension must not lead out of bounds
    need = np.where(ver == 4, 20, np.where(ver == 6, 40, 0))
    bad = (ver != 0) & ((l3o < 0) | (l3o + need > plen))
    reason[bad] = Reason.TRUNCATED
    ver[bad] = 0
    reason[ok & ~bad & (ver == 0)] = Reason.NOT_IP
    v4 = ver == 4
    v6 = ver == 6
    ip = v4 | v6
    allip = bool(ip.all())
    l3 = base + l3o if allip else np.where(ip, base + l3o, 0)
    if len(buf) == 0:
        buf = np.zeros(1, dtype=np.uint8)

    def take(i: I64, m: Mask, every: bool) -> I64:
        v = buf.take(i, mode="clip").astype(np.int64)
        return v if every else np.where(m, v, 0)

    # addresses as 64-bit halves; IPv4 in the ::ffff:0:0/96 space
    src_hi = np.zeros(n, dtype=np.uint64)
    src_lo = np.zeros(n, dtype=np.uint64)
    dst_hi = np.zeros(n, dtype=np.uint64)
    dst_lo = np.zeros(n, dtype=np.uint64)
    if v4.any():
        w = be_words(buf, l3 + 12, 8)  # source address, destination address
        src_lo = np.where(v4, _MAP4 | (w >> np.uint64(32)), src_lo)
        dst_lo = np.where(v4, _MAP4 | (w & np.uint64(0xFFFFFFFF)), dst_lo)
    if v6.any():
        r6 = l3[v6]
        src_hi[v6], src_lo[v6] = be_words(buf, r6 + 8, 8), be_words(buf, r6 + 16, 8)
        dst_hi[v6], dst_lo[v6] = be_words(buf, r6 + 24, 8), be_words(buf, r6 + 32, 8)
    src = _rows(src_hi, src_lo)
    dst = _rows(dst_hi, dst_lo)
    # the first 8 bytes of the IP header (every IP packet has them)
    h8 = be_words(buf, l3, 8)
    b0 = (h8 >> np.uint64(56)).astype(np.int64)
    b1 = ((h8 >> np.uint64(48)) & np.uint64(0xFF)).astype(np.int64)
    fw = (h8 & np.uint64(0xFFFF)).astype(np.int64)  # IPv4 flags and fragment offset
    if not allip:
        b0 = np.where(ip, b0, 0)
        b1 = np.where(ip, b1, 0)
    dscp = np.where(v4, b1 >> 2, np.where(v6, (((b0 & 0xF) << 4) | (b1 >> 4)) >> 2, 0))
    proto = np.where(ip, e.l4_proto[idx].astype(np.int64), 0)
    # fragments
    frag_off = np.where(v4, (fw & 0x1FFF) * 8, 0)
    more = v4 & ((fw & 0x2000) != 0)
    frag = v4 & ((fw & 0x3FFF) != 0)
    l4abs = np.where(ip & (l4o >= 0), base + l4o, -1)
    fr6 = v6 & (proto == 44) & (l4o >= 0) & (l4o + 8 <= plen)
    if fr6.any():
        fo = l4abs[fr6]
        w = (buf[fo + 2].astype(np.int64) << 8) | buf[fo + 3]
        frag_off[fr6] = w & 0xFFF8
        more[fr6] = (w & 1) != 0
        proto[fr6] = buf[fo].astype(np.int64)
        frag[fr6] = True
        l4abs[fr6] = fo + 8
    frag |= v6 & (proto == 44)
    l4avail = np.where(l4abs >= 0, base + plen - l4abs, 0)
    has_ports = ip & ~frag & ((proto == 6) | (proto == 17)) & (l4avail >= 4)
    pi = np.where(has_ports, l4abs, 0)

    all_ports = bool(has_ports.all())

    def u8(i: I64, m: Mask) -> I64:
        return take(i, m, all_ports and m is has_ports)

    pw = be_words(buf, pi, 4).astype(np.int64)  # source port, destination port
    sport = np.where(has_ports, pw >> 16, -1)
    dport = np.where(has_ports, pw & 0xFFFF, -1)
    tcp = has_ports & (proto == 6) & (l4avail >= 14)
    tcp_flags = u8(pi + 13, tcp)
    ip_len = np.where(ip, plen - l3o, 0)
    return FlowKeys(
        idx=idx,
        reason=reason,
        ver=ver,
        src=src,
        dst=dst,
        proto=proto,
        has_ports=has_ports,
        sport=sport,
        dport=dport,
        dscp=dscp,
        frag=frag,
        frag_off=frag_off,
        more_frags=more,
        ip_len=ip_len,
        tcp_flags=tcp_flags,
        l4_off=l4abs,
        l4_avail=l4avail,
    )


def _rows(hi: U64, lo: U64) -> U8:
    """64-bit halves → (n, 16) big-endian address rows."""
    return np.stack([hi, lo], axis=1).astype(">u8").view(np.uint8).reshape(len(hi), 16)


def halves(rows: U8) -> tuple[U64, U64]:
    """(n, 16) address rows → high and low 64-bit halves."""
    v = np.ascontiguousarray(rows).view(">u8").astype(np.uint64)
    return v[:, 0].copy(), v[:, 1].copy()


# ====================================================================== rule engine
_FULL64 = (0, 2**64 - 1)


def _addr_intervals(net: Any) -> tuple[tuple[int, int], tuple[int, int]]:
    """(hi interval, lo interval) of a prefix in the mapped 128-bit space."""
    lo = int(net.network_address)
    hi = int(net.broadcast_address)
    if net.version == 4:
        lo |= 0xFFFF << 32
        hi |= 0xFFFF << 32
    h0, h1 = lo >> 64, hi >> 64
    if h0 != h1:  # prefix of at most 64 bits
        return (h0, h1), _FULL64
    return (h0, h0), (lo & (2**64 - 1), hi & (2**64 - 1))


class _Field:
    __slots__ = ("bounds", "word_masks")

    def __init__(self, bounds: U64, masks: U64) -> None:
        self.bounds = bounds
        #: per 64-rule word, the rule bits of every elementary interval
        self.word_masks = [np.ascontiguousarray(masks[:, w]) for w in range(masks.shape[1])]


class RuleMatcher:
    """First-matching rule (in the given order) for every packet, vectorised."""

    FIELDS: ClassVar[tuple[str, ...]] = (
        "ver",
        "src_hi",
        "src_lo",
        "dst_hi",
        "dst_lo",
        "proto",
        "sport",
        "dport",
        "dscp",
    )
    FULL: ClassVar[dict[str, tuple[int, int]]] = {
        "ver": (0, 6),
        "src_hi": _FULL64,
        "src_lo": _FULL64,
        "dst_hi": _FULL64,
        "dst_lo": _FULL64,
        "proto": (0, 255),
        "sport": (0, 65536),  # port + 1; 0 = no port
        "dport": (0, 65536),
        "dscp": (0, 63),
    }

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.n = len(rules)
        self.words = max(1, (self.n + 63) // 64)
        iv: dict[str, list[tuple[int, int]]] = {f: [] for f in self.FIELDS}
        for r in rules:
            d = dict(self.FULL)
            v = r.version
            if v is not None:
                d["ver"] = (v, v)
            if r.src is not None:
                d["src_hi"], d["src_lo"] = _addr_intervals(r.src)
            if r.dst is not None:
                d["dst_hi"], d["dst_lo"] = _addr_intervals(r.dst)
            if r.proto is not None:
                d["proto"] = r.proto
            if r.sport is not None:
                d["sport"] = (r.sport[0] + 1, r.sport[1] + 1)
            if r.dport is not None:
                d["dport"] = (r.dport[0] + 1, r.dport[1] + 1)
            if r.dscp is not None:
                d["dscp"] = r.dscp
            for f in self.FIELDS:
                iv[f].append(d[f])
        self.fields: dict[str, _Field] = {}
        for f in self.FIELDS:
            full = self.FULL[f]
            if all(x == full for x in iv[f]):
                continue  # no rule constrains this field
            edges = {full[0]}
            for a, b in iv[f]:
                edges.add(a)
                if b < full[1]:
                    edges.add(b + 1)
            bounds_py = sorted(edges)
            bounds = np.array(bounds_py, dtype=np.uint64)
            masks = np.zeros((len(bounds_py), self.words), dtype=np.uint64)
            for ri, (a, b) in enumerate(iv[f]):
                sel = (bounds >= np.uint64(a)) & (bounds <= np.uint64(b))
                masks[sel, ri // 64] |= np.uint64(1 << (ri % 64))
            self.fields[f] = _Field(bounds, masks)
        all_ones = np.zeros(self.words, dtype=np.uint64)
        for ri in range(self.n):
            all_ones[ri // 64] |= np.uint64(1 << (ri % 64))
        self._all = all_ones

    def match(self, values: dict[str, U64]) -> I64:
        """Index of the first matching rule per packet, -1 when none."""
        n = len(next(iter(values.values()))) if values else 0
        if self.n == 0 or n == 0:
            return np.full(n, -1, dtype=np.int64)
        acc: list[U64] = []
        for f, fld in self.fields.items():
            i = np.searchsorted(fld.bounds, values[f], side="right") - 1
            for w in range(self.words):
                got = fld.word_masks[w].take(i)
                if len(acc) <= w:
                    acc.append(got)
                else:
                    acc[w] &= got
        if not acc:
            acc = [np.full(n, self._all[w], dtype=np.uint64) for w in range(self.words)]
        out = np.full(n, -1, dtype=np.int64)
        for w in reversed(range(self.words)):  # the lowest word with a bit set wins
            x = acc[w]
            low = x & (~x + np.uint64(1))
            _, e = np.frexp(low.astype(np.float64))
            out = np.where(x != 0, w * 64 + e.astype(np.int64) - 1, out)
        return out


def field_values(k: FlowKeys) -> dict[str, U64]:
    sh, sl = halves(k.src)
    dh, dl = halves(k.dst)
    return {
        "ver": k.ver.astype(np.uint64),
        "src_hi": sh,
        "src_lo": sl,
        "dst_hi": dh,
        "dst_lo": dl,
        "proto": k.proto.astype(np.uint64),
        "sport": (k.sport + 1).astype(np.uint64),
        "dport": (k.dport + 1).astype(np.uint64),
        "dscp": k.dscp.astype(np.uint64),
    }


# ====================================================================== classifier
class Classifier:
    """Rules + LPM table + defaults → (action, class id, rule index) per packet."""

    def __init__(self, cfg: ClassifyConfig) -> None:
        if len(cfg.rules) > MAX_RULES:
            raise ConfigError(f"classify: {len(cfg.rules)} rules, at most {MAX_RULES}")
        self.cfg = cfg
        order = sorted(range(len(cfg.rules)), key=lambda i: (cfg.rules[i].priority, i))
        self.rules = [cfg.rules[i] for i in order]
        lpm = cfg.lpm
        split = len(self.rules)
        if lpm is not None and lpm.priority is not None:
            split = sum(1 for r in self.rules if r.priority <= lpm.priority)
        self.before = RuleMatcher(self.rules[:split])
        self.after = RuleMatcher(self.rules[split:])
        self.split = split
        self.rule_action = np.array([r.action for r in self.rules] or [0], dtype=np.int64)
        self.rule_class = np.array([r.class_id for r in self.rules] or [0], dtype=np.int64)
        self.lpm: LpmTable | None = None
        if lpm is not None:
            self.lpm = LpmTable((p, i) for i, (p, _, _) in enumerate(lpm.prefixes))
            self.lpm_class = np.array([c for _, c, _ in lpm.prefixes] or [0], dtype=np.int64)
            self.lpm_action = np.array([a for _, _, a in lpm.prefixes] or [0], dtype=np.int64)
        self.rss = Toeplitz(cfg.rss_key)

    def classify_keys(self, k: FlowKeys) -> tuple[I64, I64, I64]:
        """(action, class id, matched rule index in priority order; -1 LPM/default)."""
        n = len(k.ver)
        action = np.full(n, self.cfg.default_action, dtype=np.int64)
        cls = np.full(n, self.cfg.default_class, dtype=np.int64)
        which = np.full(n, -1, dtype=np.int64)
        if n == 0:
            return action, cls, which
        vals = field_values(k)
        done = np.zeros(n, dtype=np.bool_)
        r1 = self.before.match(vals)
        hit = r1 >= 0
        which[hit] = r1[hit]
        done |= hit
        if self.lpm is not None and not done.all():
            rest = ~done & (k.ver != 0)
            rows = k.dst if self.cfg.lpm is not None and self.cfg.lpm.field == "dst" else k.src
            li = np.full(n, -1, dtype=np.int64)
            li[rest] = self.lpm.lookup(rows[rest], k.is_v4[rest])
            lh = li >= 0
            action[lh] = self.lpm_action[li[lh]]
            cls[lh] = self.lpm_class[li[lh]]
            done |= lh
        if self.after.n and not done.all():
            sub = {f: v[~done] for f, v in vals.items()}
            r2 = self.after.match(sub)
            r2 = np.where(r2 >= 0, r2 + self.split, -1)
            which[~done] = r2
        rh = which >= 0
        action[rh] = self.rule_action[which[rh]]
        cls[rh] = self.rule_class[which[rh]]
        return action, cls, which

    def rss_hash(self, k: FlowKeys) -> NDArray[np.uint32]:
        n = len(k.ver)
        out = np.zeros(n, dtype=np.uint32)
        four = self.cfg.rss_fields == "4-tuple"
        for v, lo in ((4, 12), (6, 0)):
            m = k.ver == v
            if not m.any():
                continue
            s = k.src[m, lo:]
            d = k.dst[m, lo:]
            if four:
                p = k.has_ports[m]
                mat4 = _rss_rows(s[p], d[p], k.sport[m][p], k.dport[m][p])
                mat2 = np.ascontiguousarray(np.concatenate([s[~p], d[~p]], axis=1))
                h = np.zeros(int(m.sum()), dtype=np.uint32)
                h[p] = self.rss.hash_matrix(mat4)
                h[~p] = self.rss.hash_matrix(mat2)
            else:
                h = self.rss.hash_matrix(np.ascontiguousarray(np.concatenate([s, d], axis=1)))
            out[m] = h
        return out


def _rss_rows(s: U8, d: U8, sp: I64, dp: I64) -> U8:
    n, w = s.shape
    m = np.empty((n, 2 * w + 4), dtype=np.uint8)
    m[:, :w] = s
    m[:, w : 2 * w] = d
    m[:, 2 * w] = sp >> 8
    m[:, 2 * w + 1] = sp & 0xFF
    m[:, 2 * w + 2] = dp >> 8
    m[:, 2 * w + 3] = dp & 0xFF
    return m


class ClassifyTask(SoftTask):
    task = Task.CLASSIFY

    def __init__(self, cfg: ClassifyConfig) -> None:
        self.classifier = Classifier(cfg)
        self.counters: dict[str, int] = {"packets": 0, "pass": 0, "drop": 0, "mark": 0, "error": 0}

    def process(self, batch: Batch, sel: Mask) -> Batch:
        idx = np.flatnonzero(np.asarray(sel, dtype=np.bool_)[: len(batch)]).astype(np.int64)
        if len(idx) == 0:
            return batch
        e = batch.ext
        k = flow_keys(batch, idx)
        action, cls, _ = self.classifier.classify_keys(k)
        four = self.classifier.cfg.rss_fields == "4-tuple"
        rss = rss_batch(batch, idx, self.classifier.rss, four_tuple=four)
        bad = (k.reason != 0) & (k.reason != Reason.NOT_IP)
        good = ~bad
        gi = idx[good]
        e.class_id[gi] = cls[good]
        e.rss_hash[gi] = rss[good]
        a = action[good]
        fv = np.where(a == 1, FilterVerdict.DROP, np.where(a == 2, FilterVerdict.MARK, 0))
        e.filter_verdict[gi] = fv
        e.filter_reason[gi[a == 1]] = Reason.RULE_DROP
        e.error[idx[bad]] = k.reason[bad]
        c = self.counters
        c["packets"] += len(idx)
        c["pass"] += int((a == 0).sum())
        c["drop"] += int((a == 1).sum())
        c["mark"] += int((a == 2).sum())
        c["error"] += int(bad.sum())
        return batch

    def describe(self) -> dict[str, object]:
        cfg = self.classifier.cfg
        return {
            "task": self.task.kebab,
            "rules": len(cfg.rules),
            "lpm_prefixes": len(cfg.lpm.prefixes) if cfg.lpm else 0,
            "rss_fields": cfg.rss_fields,
            "counters": dict(self.counters),
        }


def make_classify(
    rules: str | Path | ClassifyConfig | dict[str, Any] | None = None, **_: Any
) -> ClassifyTask:
    """``rules``: a rule file path, a parsed ClassifyConfig, or the [classify] table."""
    if rules is None:
        cfg = ClassifyConfig()
    elif isinstance(rules, ClassifyConfig):
        cfg = rules
    elif isinstance(rules, dict):
        cfg = parse_classify(rules)
    else:
        cfg = load_classify(rules)
    return ClassifyTask(cfg)


register(Task.CLASSIFY, make_classify)


def rss_batch(batch: Batch, idx: I64, toeplitz: Toeplitz, four_tuple: bool = True) -> U32:
    """Toeplitz hashes of packets ``idx`` straight from their parsed layout (for steering).

    The same values as the classification task's ``rss_hash`` (4-tuple for TCP
    and UDP that are not fragments, else 2-tuple; 0 for non-IP or malformed
    packets), without extracting the other fields.
    """
    e = batch.ext
    n = len(idx)
    out = np.zeros(n, dtype=np.uint32)
    if n == 0:
        return out
    parsed = (e.xflags[idx] & np.uint8(XFlag.PARSED)) != 0
    if not parsed.all():
        parse_subset(batch, idx[~parsed])
        parsed = (e.xflags[idx] & np.uint8(XFlag.PARSED)) != 0
    ver = np.where(parsed, e.l3_proto[idx], 0)
    base = batch.start[idx]
    l3 = base + e.l3_off[idx]
    l4o = e.l4_off[idx].astype(np.int64)
    proto = e.l4_proto[idx]
    ports = (l4o >= 0) & ((proto == 6) | (proto == 17)) & (e.hdr_len[idx] > l4o)
    l4 = base + l4o
    buf = batch.buf
    for v, aoff, alen in ((4, 12, 8), (6, 8, 32)):
        m = ver == v
        if not m.any():
            continue
        p = ports & m if four_tuple else np.zeros(n, dtype=np.bool_)
        q = m & ~p
        if p.any():
            rows = np.empty((int(p.sum()), alen + 4), dtype=np.uint8)
            rows[:, :alen] = buf.take(l3[p][:, None] + np.arange(aoff, aoff + alen), mode="clip")
            rows[:, alen:] = buf.take(l4[p][:, None] + np.arange(4), mode="clip")
            out[p] = toeplitz.hash_matrix(rows)
        if q.any():
            rows = buf.take(l3[q][:, None] + np.arange(aoff, aoff + alen), mode="clip")
            out[q] = toeplitz.hash_matrix(rows)
    return out
