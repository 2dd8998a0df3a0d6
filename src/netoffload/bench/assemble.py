"""``netoffload bench assemble``: TCP and UDP assembly (GRO) in software.

Metrics (issue 4):

* ``gro_mpps``: TCP assembly of 1448-byte segments from 64 interleaved flows,
  million input packets per second (vectorised ``soft.assemble``);
* ``gro_vs_pure_python``: the same against ``gro_pure_python``, a
  straightforward per-packet pure-Python coalescer (same rules), side by side;
* ``udp_gro_mpps``: UDP assembly of 1448-byte datagrams from 64 flows (reported).

Segments arrive with their checksums already verified (``csum_verdict`` GOOD,
as after the receive checksum stage or a device's DATA_VALID); the pure-Python
coalescer is given the same advantage (it does not check checksums either).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from netoffload.batch import Batch, CsumVerdict
from netoffload.bench import Bench, BenchContext, BenchResult, interleaved, register
from netoffload.soft.assemble import IPPROTO_TCP, IPPROTO_UDP, assemble
from netoffload.testing.packets import tcp_packet, udp_packet
from netoffload.wire.ipv4 import internet_checksum

MAX_IP = 65535
_CLOSE = 0x20 | 0x08 | 0x04 | 0x02 | 0x01 | 0x80  # URG PSH RST SYN FIN CWR


@dataclass
class _Seg:
    """The fields GRO looks at in one packet."""

    key: tuple[object, ...]
    ip: tuple[int, int, int, int]  # ttl/hop limit, tos/traffic class, DF, IPv4 ID
    v: int
    hdr: int
    pay: int
    flags: int = 0
    pad: bool = False  # longer than its IP length: not merged, ends the held TCP run
    seq: int = 0
    ack: int = 0
    w3: int = 0
    opts: bytes = b""


@dataclass
class _Held:
    first: _Seg
    slot: int
    mss: int
    size: int
    next_seq: int
    closed: bool
    cnt: int = 1
    fixed: bool = False


@dataclass
class _Out:
    first: bytes
    parts: list[bytes] = field(default_factory=list)
    mss: int = 0
    cnt: int = 1
    or_flags: int = 0


def _v6_l4(p: bytes) -> tuple[int, int]:
    """Offset and protocol of what follows the IPv6 extension headers."""
    off, nh = 40, p[6]
    while nh in (0, 43, 60) and off + 8 <= len(p):
        nh, off = p[off], off + (p[off + 1] + 1) * 8
    return off, nh


def _parse(p: bytes, proto: int) -> _Seg | None:
    """Fields GRO looks at, or None when the packet is flushed straight through."""
    if len(p) < 1:
        return None
    v = p[0] >> 4
    key: tuple[object, ...]
    if v == 4:
        if p[0] != 0x45 or len(p) < 20:
            return None
        tot, ident, ff = struct.unpack_from("!HHH", p, 2)
        if tot > len(p) or ff & 0x3FFF or p[9] != proto:
            return None
        if tot < len(p) and (proto != IPPROTO_TCP or internet_checksum(p[:20])):
            return None
        pad = tot < len(p)
        p = p[:tot]
        l4 = 20
        ip = (p[8], p[1], (ff >> 14) & 1, ident)
        key = (4, p[12:20])
    elif v == 6:
        if len(p) < 40:
            return None
        plen = struct.unpack_from("!H", p, 4)[0] + 40
        if plen > len(p) or (plen < len(p) and proto != IPPROTO_TCP):
            return None
        pad = plen < len(p)
        p = p[:plen]
        l4, nh = _v6_l4(p)
        if nh != proto:
            return None
        w0 = struct.unpack_from("!I", p, 0)[0]
        ip = (p[7], (w0 >> 20) & 0xFF, 0, 0)
        key = (6, p[8:40], w0 & 0xFFFFF, p[40:l4])
    else:
        return None
    if proto == IPPROTO_TCP:
        if len(p) < l4 + 20:
            return None
        thl = (p[l4 + 12] >> 4) * 4
        if thl < 20 or l4 + thl > len(p):
            return None
        seq, ack, w3 = struct.unpack_from("!III", p, l4 + 4)
        return _Seg(
            (*key, p[l4 : l4 + 4]),
            ip,
            v,
            l4 + thl,
            len(p) - l4 - thl,
            (w3 >> 16) & 0xFF,
            pad,
            seq,
            ack,
            w3,
            p[l4 + 20 : l4 + thl],
        )
    if len(p) < l4 + 8:
        return None
    ulen, csum = struct.unpack_from("!HH", p, l4 + 4)
    if ulen != len(p) - l4 or ulen <= 8 or csum == 0:
        return None
    return _Seg((*key, p[l4 : l4 + 4]), ip, v, l4 + 8, ulen - 8)


def gro_pure_python(
    packets: Sequence[bytes], proto: int, max_segs: int | None = None
) -> list[tuple[bytes, int, int]]:
    """A straightforward per-packet GRO (raw IP packets, checksums taken as good).

    Returns ``(packet, gso_size, segs)`` per output packet, a merged packet at
    the place of its first segment, with full checksums.
    """
    limit = max_segs or (65535 if proto == IPPROTO_TCP else 64)
    out: list[_Out] = []
    held: dict[tuple[object, ...], _Held] = {}
    for p in packets:
        f = _parse(p, proto)
        if f is None:
            out.append(_Out(p))
            continue
        st = held.get(f.key)
        if f.pad:  # passes as it is, after flushing the flow's held packet
            if st is not None:
                st.closed = True
            out.append(_Out(p))
            continue
        if st is not None and not st.closed and _compatible(st, f, proto, limit):
            o = out[st.slot]
            o.parts.append(p[f.hdr :])
            o.cnt += 1
            o.or_flags |= f.flags & 0x09
            st.cnt += 1
            st.size += f.pay
            st.next_seq = (st.next_seq + f.pay) & 0xFFFFFFFF
            if f.pay < st.mss or f.flags & _CLOSE:
                st.closed = True
            if proto == IPPROTO_UDP and st.cnt >= limit:
                st.closed = True
            continue
        held[f.key] = _Held(
            f,
            len(out),
            f.pay,
            f.hdr + f.pay,
            (f.seq + f.pay) & 0xFFFFFFFF,
            f.pay == 0 or bool(f.flags & _CLOSE),
        )
        out.append(_Out(p, mss=f.pay))
    result = []
    for o in out:
        if o.cnt < 2:
            result.append((o.first, 0, 1))
        else:
            result.append((_merge(o.first, o.parts, proto, o.or_flags), o.mss, o.cnt))
    return result


def _compatible(st: _Held, f: _Seg, proto: int, limit: int) -> bool:
    first = st.first
    ttl, tos, df, ident = f.ip
    ttl0, tos0, df0, ident0 = first.ip
    if (ttl, tos, df) != (ttl0, tos0, df0) or f.hdr != first.hdr:
        return False
    fixed = st.fixed
    if f.v == 4:
        off = (ident - ident0) & 0xFFFF
        if st.cnt == 1:
            fixed = off == 0  # Linux 6.18: fixed IDs with or without DF
        if off != (0 if fixed else st.cnt & 0xFFFF):
            return False
    if not 1 <= f.pay <= st.mss:
        return False
    if st.size + f.pay > MAX_IP or st.cnt + 1 > limit:
        return False
    if proto == IPPROTO_TCP:
        m = ~((0x80 | 0x08 | 0x01) << 16) & 0xFFFFFFFF
        if f.flags & 0x80 or (f.w3 ^ first.w3) & m:
            return False
        if f.ack != first.ack or f.opts != first.opts or f.seq != st.next_seq:
            return False
    st.fixed = fixed
    return True


def _merge(first: bytes, parts: list[bytes], proto: int, or_flags: int) -> bytes:
    v = first[0] >> 4
    l4 = 20 if v == 4 else _v6_l4(first)[0]
    pkt = bytearray(first + b"".join(parts))
    total = len(pkt)
    if v == 4:
        pkt[2:4] = total.to_bytes(2, "big")
        pkt[10:12] = b"\0\0"
        pkt[10:12] = internet_checksum(bytes(pkt[:20])).to_bytes(2, "big")
        pseudo = bytes(pkt[12:20]) + bytes([0, proto]) + (total - l4).to_bytes(2, "big")
    else:
        pkt[4:6] = (total - 40).to_bytes(2, "big")
        pseudo = bytes(pkt[8:40]) + (total - l4).to_bytes(4, "big") + bytes([0, 0, 0, proto])
    if proto == IPPROTO_TCP:
        pkt[l4 + 13] |= or_flags
        off = l4 + 16
    else:
        pkt[l4 + 4 : l4 + 6] = (total - l4).to_bytes(2, "big")
        off = l4 + 6
    pkt[off : off + 2] = b"\0\0"
    c = internet_checksum(pseudo + bytes(pkt[l4:]))
    if proto == IPPROTO_UDP and c == 0:
        c = 0xFFFF
    pkt[off : off + 2] = c.to_bytes(2, "big")
    return bytes(pkt)


# ---------------------------------------------------------------------------- bench
def _flows(n_flows: int, per_flow: int, proto: int, mss: int = 1448) -> list[bytes]:
    """Round-robin interleaved segments of ``n_flows`` IPv4 flows."""
    payload = bytes(range(256)) * (mss // 256 + 1)
    pkts: list[bytes] = []
    for i in range(per_flow):
        for f in range(n_flows):
            src = f"198.18.{f // 250}.{f % 250 + 1}"
            if proto == IPPROTO_TCP:
                pkts.append(
                    tcp_packet(
                        4,
                        payload[:mss],
                        src=src,
                        sport=40000 + f,
                        seq=1 + i * mss,
                        ack=1,
                        flags=0x10,
                        ident=i,
                    )
                )
            else:
                pkts.append(udp_packet(4, payload[:mss], src=src, sport=40000 + f, ident=i))
    return pkts


def _run(ctx: BenchContext) -> BenchResult:
    n_flows = 64
    per_flow = 32 if ctx.quick else 64
    rows = []
    metrics: dict[str, float] = {}
    for name, proto in (("tcp", IPPROTO_TCP), ("udp", IPPROTO_UDP)):
        pkts = _flows(n_flows, per_flow, proto)
        batch = Batch.from_packets(pkts)
        batch.ext.csum_verdict[:] = CsumVerdict.GOOD
        sel = np.ones(len(batch), dtype=np.bool_)
        n = len(pkts)
        ctx.progress(f"{name}: {n} segments of 1448 bytes, {n_flows} flows")

        fns: dict[str, Callable[[], object]] = {"vectorised": partial(assemble, batch, sel, proto)}
        if proto == IPPROTO_TCP:
            fns["pure_python"] = partial(gro_pure_python, pkts, proto)
        t = interleaved(fns, ctx.repeat_time() * (2 if ctx.quick else 4))
        mpps = n / t["vectorised"] / 1e6
        out, _ = assemble(batch, sel, proto)
        rows.append(
            {
                "proto": name,
                "packets": n,
                "out": len(out),
                "vectorised_ms": t["vectorised"] * 1e3,
                "pure_python_ms": t.get("pure_python", float("nan")) * 1e3,
                "mpps": mpps,
            }
        )
        if proto == IPPROTO_TCP:
            metrics["gro_mpps"] = mpps
            metrics["gro_vs_pure_python"] = t["pure_python"] / t["vectorised"]
        else:
            metrics["udp_gro_mpps"] = mpps
    return BenchResult(
        metrics,
        targets={"gro_mpps": (">=", 1.0), "gro_vs_pure_python": (">=", 20.0)},
        rows=rows,
        notes=[
            "input: 64 interleaved IPv4 flows of 1448-byte segments, checksums already verified",
            "pure_python: per-packet coalescer with the same merge rules (gro_pure_python)",
        ],
    )


register(Bench("assemble", _run, "TCP/UDP assembly (GRO): vectorised vs pure Python"))
