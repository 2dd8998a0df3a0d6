"""A plain per-packet reference classifier (stdlib ipaddress + struct), for tests.

Also the packet/rule-table generators the classify and BPF tests share.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from hypothesis import strategies as st

from netoffload.soft.rules import ClassifyConfig, LpmConfig, Rule
from netoffload.testing.packets import tcp_packet, udp_packet
from netoffload.wire.ipv4 import IPv4
from netoffload.wire.ipv6 import IPv6

V4_POOL = ["198.18.0.1", "198.18.0.2", "198.18.7.9", "198.19.200.1", "198.19.255.254"]
V6_POOL = ["fd00::1", "fd00::2", "fd00:0:0:7::9", "fd12:3456::1", "fdff::ffff"]


@dataclass(frozen=True)
class Pkt:
    v: int
    src: str
    dst: str
    proto: int
    sport: int
    dport: int
    dscp: int
    frag: bool = False
    v6ext: tuple[tuple[int, int], ...] = ()

    def build(self, tag: bytes = b"") -> bytes:
        """The packet; ``tag`` is appended to its payload (it changes no header field)."""
        tos = self.dscp << 2
        ext = self.v6ext if self.v == 6 else ()
        if self.proto == 6 and not self.frag:
            return tcp_packet(
                v=self.v,
                src=self.src,
                dst=self.dst,
                sport=self.sport,
                dport=self.dport,
                tos=tos,
                payload=tag,
                v6_ext=ext,
            )
        if self.proto == 17 and not self.frag:
            return udp_packet(
                v=self.v,
                src=self.src,
                dst=self.dst,
                sport=self.sport,
                dport=self.dport,
                tos=tos,
                payload=b"x" * 8 + tag,
                v6_ext=ext,
            )
        body = struct.pack("!HH", self.sport, self.dport) + b"\x00" * 12 + tag
        if self.v == 4:
            ff = 0x2000 | 5 if self.frag else 0  # MF, offset 40: a non-first fragment
            return (
                IPv4(self.src, self.dst, self.proto, tos=tos, flags_frag=ff).emit(len(body)) + body
            )
        if self.frag:
            fh = bytes([self.proto, 0, 0, 40 | 1]) + b"\x00\x00\x00\x01"
            return (
                IPv6(self.src, self.dst, 44, traffic_class=tos).emit(len(fh) + len(body))
                + fh
                + body
            )
        return IPv6(self.src, self.dst, self.proto, traffic_class=tos).emit(len(body)) + body

    @property
    def has_ports(self) -> bool:
        return self.proto in (6, 17) and not self.frag


@st.composite
def packets(draw: st.DrawFn) -> Pkt:
    v = draw(st.sampled_from([4, 6]))
    pool = V4_POOL if v == 4 else V6_POOL
    return Pkt(
        v,
        draw(st.sampled_from(pool)),
        draw(st.sampled_from(pool)),
        draw(st.sampled_from([6, 6, 17, 17, 1, 50])),
        draw(st.sampled_from([22, 53, 80, 443, 1024, 5000, 65535])),
        draw(st.sampled_from([22, 53, 80, 443, 1024, 5000, 65535])),
        draw(st.sampled_from([0, 10, 46, 63])),
        draw(st.booleans()) and draw(st.booleans()),
        tuple(draw(st.lists(st.sampled_from([(0, 0), (60, 1), (43, 0)]), max_size=2))),
    )


def _prefix(draw: st.DrawFn, v: int) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    a = draw(st.sampled_from(V4_POOL if v == 4 else V6_POOL))
    ln = draw(st.integers(0, 32) if v == 4 else st.sampled_from([0, 8, 16, 48, 64, 65, 100, 128]))
    return ipaddress.ip_network(f"{a}/{ln}", strict=False)


def _rng(draw: st.DrawFn, hi: int, vals: list[int]) -> tuple[int, int]:
    a = draw(st.sampled_from(vals))
    if draw(st.booleans()):
        return (a, a)
    b = draw(st.sampled_from(vals))
    return (min(a, b), max(a, b))


@st.composite
def rules(draw: st.DrawFn, with_dscp: bool = True) -> Rule:
    v = draw(st.sampled_from([None, 4, 6]))
    kw: dict[str, object] = {}
    if v is not None:
        if draw(st.booleans()):
            kw["src"] = _prefix(draw, v)
        if draw(st.booleans()) or "src" not in kw:
            kw["dst"] = _prefix(draw, v)
    if draw(st.booleans()):
        kw["proto"] = _rng(draw, 255, [1, 6, 17, 50])
    ports = [0, 22, 53, 80, 443, 1024, 5000, 65535]
    if draw(st.integers(0, 3)) == 0:
        kw["sport"] = _rng(draw, 65535, ports)
    if draw(st.integers(0, 2)) == 0:
        kw["dport"] = _rng(draw, 65535, ports)
    if with_dscp and draw(st.integers(0, 3)) == 0:
        kw["dscp"] = _rng(draw, 63, [0, 10, 46, 63])
    return Rule(
        name="r",
        priority=draw(st.integers(0, 5)),
        action=draw(st.sampled_from([0, 1, 2])),
        class_id=draw(st.integers(0, 1000)),
        **kw,  # type: ignore[arg-type]
    )


@st.composite
def configs(draw: st.DrawFn, lpm: bool = True, with_dscp: bool = True) -> ClassifyConfig:
    rs = tuple(draw(st.lists(rules(with_dscp), max_size=12)))
    lc = None
    if lpm and draw(st.booleans()):
        pf = []
        for _ in range(draw(st.integers(0, 8))):
            v = draw(st.sampled_from([4, 6]))
            pf.append(
                (_prefix(draw, v), draw(st.integers(0, 99)), draw(st.sampled_from([0, 1, 2])))
            )
        lc = LpmConfig(
            draw(st.sampled_from(["src", "dst"])),
            draw(st.one_of(st.none(), st.integers(0, 5))),
            tuple(pf),
        )
    return ClassifyConfig(
        rules=rs,
        lpm=lc,
        default_action=draw(st.sampled_from([0, 1, 2])),
        default_class=draw(st.integers(0, 9)),
    )


def _rule_matches(r: Rule, p: Pkt) -> bool:
    src = ipaddress.ip_address(p.src)
    dst = ipaddress.ip_address(p.dst)
    if r.src is not None and (r.src.version != p.v or src not in r.src):
        return False
    if r.dst is not None and (r.dst.version != p.v or dst not in r.dst):
        return False
    if r.proto is not None and not r.proto[0] <= p.proto <= r.proto[1]:
        return False
    for rng, val in ((r.sport, p.sport), (r.dport, p.dport)):
        if rng is not None and (not p.has_ports or not rng[0] <= val <= rng[1]):
            return False
    return r.dscp is None or r.dscp[0] <= p.dscp <= r.dscp[1]


def reference(cfg: ClassifyConfig, p: Pkt) -> tuple[int, int]:
    """(action, class id) by walking the rules in priority order, then file order."""
    entries: list[tuple[float, int, object]] = [(r.priority, i, r) for i, r in enumerate(cfg.rules)]
    if cfg.lpm is not None:
        pr = cfg.lpm.priority
        entries.append((float("inf") if pr is None else pr + 0.5, 10**9, cfg.lpm))
    for _, _, e in sorted(entries, key=lambda x: (x[0], x[1])):
        if isinstance(e, Rule):
            if _rule_matches(e, p):
                return e.action, e.class_id
        else:
            assert isinstance(e, LpmConfig)
            a = ipaddress.ip_address(p.dst if e.field == "dst" else p.src)
            best = None
            for net, cls, act in e.prefixes:
                if (
                    net.version == a.version
                    and a in net
                    and (best is None or net.prefixlen >= best[0])
                ):
                    best = (net.prefixlen, act, cls)
            if best is not None:
                return best[1], best[2]
    return cfg.default_action, cfg.default_class
