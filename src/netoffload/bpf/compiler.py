"""Compile classification rules and stateless DoS rules to classic BPF.

``compile_filter(rules, base=BASE_NET, mode="verdict")``:

* ``rules``: a ``ClassifyConfig`` (rules, LPM table, default), a sequence of
  ``Rule`` (default: pass), or a ``DosConfig`` (its stateless part).
* ``base``: where the IP header is. ``BASE_NET`` loads relative to the kernel's
  network header (``SKF_NET_OFF``) and works on any socket (packet, raw, UDP,
  TCP) and on TUN/TAP; ``BASE_IP`` for packets that start with the IP header;
  ``BASE_ETHER`` for untagged Ethernet frames (other EtherTypes, VLAN-tagged
  frames included, are non-IP and get the default).
* ``mode``: ``"verdict"`` returns 0 (drop) for a ``drop`` action and
  0xFFFFFFFF (keep the whole packet) otherwise, as socket and TUN filters
  want; ``"class"`` returns the class id (for ``PACKET_FANOUT_CBPF``-style
  steering; a class id of 0 then also means "drop" to a socket filter).

What compiles (everything a kernel filter can decide from one packet):
classification rules with IPv4/IPv6 source/destination prefixes, protocol,
port and DSCP values or ranges, first match by priority; the longest-prefix
table (prefixes tried longest first); the default action. IPv6 extension
headers (hop-by-hop, routing, destination options, up to 8) are walked like
the software parser does, and fragments carry no ports. From a DoS
configuration: size limits (on the IP header's length field), the fragment
rules and the prefix drop lists. Not compiled — they need state across
packets and stay in software — per-source token buckets, SYN-flood limits and
anti-replay windows (``uncompiled(cfg)`` names them). A program longer than
the kernel's 4,096 instructions raises ``CompileError`` (a 10,000-prefix
table does not fit; a few hundred prefixes do).

Packets the software parser rejects as malformed are passed by the software
task (with an error); the kernel drops a packet whose load runs past its end,
so for truncated packets the two may differ. The program's opcodes follow
``linux/filter.h``; ``netoffload.bpf.interp`` runs them the kernel's way.
"""

from __future__ import annotations

import ctypes
import ipaddress
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from netoffload.bpf import interp as I
from netoffload.errors import ConfigError
from netoffload.soft.rules import ClassifyConfig, DosConfig, LpmConfig, Rule

Insn = tuple[int, int, int, int]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

BASE_NET = "net"
BASE_IP = "ip"
BASE_ETHER = "ether"
ACCEPT = 0xFFFFFFFF

# scratch slots
M_VER, M_PROTO, M_SPORT, M_DPORT, M_L4, M_FRAG, M_FOFF, M_IPLEN, M_DSCP, M_TMP = range(10)
NO_PORT = 0xFFFFFFFF
V6_WALK = (0, 43, 60)
MAX_V6_EXT = 8


class CompileError(ConfigError):
    """The rules do not fit in a classic BPF program."""


# ------------------------------------------------------------------ assembler
@dataclass
class _Op:
    code: int
    k: int = 0
    jt: str | int = 0  # label or relative offset
    jf: str | int = 0


class _Asm:
    def __init__(self) -> None:
        self.items: list[_Op | str] = []
        self._n = 0

    def label(self, name: str | None = None) -> str:
        if name is None:
            self._n += 1
            name = f"L{self._n}"
        return name

    def put(self, name: str) -> None:
        self.items.append(name)

    def op(self, code: int, k: int = 0, jt: str | int = 0, jf: str | int = 0) -> None:
        self.items.append(_Op(code, k & 0xFFFFFFFF, jt, jf))

    def _positions(self) -> dict[str, int]:
        pos: dict[str, int] = {}
        pc = 0
        for it in self.items:
            if isinstance(it, str):
                pos[it] = pc
            else:
                pc += 1
        return pos

    def _fix_far_jumps(self) -> None:
        """Route conditional jumps farther than 255 through ``ja`` trampolines."""
        while True:
            pos = self._positions()
            pc = 0
            changed = False
            out: list[_Op | str] = []
            for it in self.items:
                if isinstance(it, str):
                    out.append(it)
                    continue
                if it.code & 7 == I.JMP and it.code != I.JMP | I.JA:
                    far = [isinstance(t, str) and pos[t] - pc - 1 > 255 for t in (it.jt, it.jf)]
                    if any(far) and not changed:
                        changed = True
                        tramps: list[_Op | str] = []
                        for which, t in (("jt", it.jt), ("jf", it.jf)):
                            if isinstance(t, str) and pos[t] - pc - 1 > 255:
                                lab = self.label()
                                tramps += [lab, _Op(I.JMP | I.JA, 0, t)]
                                setattr(it, which, lab)
                        out.append(it)
                        skip = self.label()
                        out.append(_Op(I.JMP | I.JA, 0, skip))
                        out += tramps
                        out.append(skip)
                        pc += 1
                        continue
                out.append(it)
                pc += 1
            self.items = out
            if not changed:
                return

    def assemble(self) -> list[Insn]:
        self._fix_far_jumps()
        pos = self._positions()
        out: list[Insn] = []
        pc = 0
        for it in self.items:
            if isinstance(it, str):
                continue

            def rel(t: str | int, here: int = pc) -> int:
                if isinstance(t, int):
                    return t
                d = pos[t] - here - 1
                if d < 0:
                    raise CompileError(f"backward jump to {t}")
                return d

            if it.code == I.JMP | I.JA:
                out.append((it.code, 0, 0, rel(it.jt)))
            elif it.code & 7 == I.JMP:
                out.append((it.code, rel(it.jt), rel(it.jf), it.k))
            else:
                out.append((it.code, 0, 0, it.k))
            pc += 1
        if len(out) > I.MAXINSNS:
            raise CompileError(
                f"the program needs {len(out)} instructions, the kernel allows {I.MAXINSNS}"
            )
        return out


class _Gen:
    def __init__(self, base: str, mode: str) -> None:
        if base not in (BASE_NET, BASE_IP, BASE_ETHER):
            raise ConfigError(f"bpf base must be net, ip or ether, got {base!r}")
        if mode not in ("verdict", "class"):
            raise ConfigError(f"bpf mode must be verdict or class, got {mode!r}")
        self.a = _Asm()
        self.mode = mode
        self.base = base
        self.off = {BASE_NET: I.SKF_NET_OFF, BASE_IP: 0, BASE_ETHER: 14}[base]

    # helpers ------------------------------------------------------------
    def ld(self, size: int, off: int) -> None:
        self.a.op(I.LD | size | I.ABS, self.off + off)

    def ldi(self, size: int, off: int) -> None:  # [x + off]
        self.a.op(I.LD | size | I.IND, self.off + off)

    def ldm(self, slot: int) -> None:
        self.a.op(I.LD | I.W | I.MEM, slot)

    def st(self, slot: int) -> None:
        self.a.op(I.ST, slot)

    def imm(self, v: int) -> None:
        self.a.op(I.LD | I.W | I.IMM, v)

    def alu(self, op: int, k: int) -> None:
        self.a.op(I.ALU | op | I.K, k)

    def jeq(self, k: int, jt: str | int, jf: str | int) -> None:
        self.a.op(I.JMP | I.JEQ | I.K, k, jt, jf)

    def jgt(self, k: int, jt: str | int, jf: str | int) -> None:
        self.a.op(I.JMP | I.JGT | I.K, k, jt, jf)

    def jge(self, k: int, jt: str | int, jf: str | int) -> None:
        self.a.op(I.JMP | I.JGE | I.K, k, jt, jf)

    def ja(self, target: str) -> None:
        self.a.op(I.JMP | I.JA, 0, target)

    def ret(self, v: int) -> None:
        self.a.op(I.RET | I.K, v)

    def ret_action(self, action: int, class_id: int) -> None:
        if self.mode == "class":
            self.ret(class_id)
        else:
            self.ret(0 if action == 1 else ACCEPT)

    # prologue: fields into scratch memory ----------------------------------
    def prologue(self) -> None:
        a = self.a
        for slot, v in (
            (M_VER, 0), (M_PROTO, 0), (M_SPORT, NO_PORT), (M_DPORT, NO_PORT), (M_L4, 0),
            (M_FRAG, 0), (M_FOFF, 0), (M_IPLEN, 0), (M_DSCP, 0),
        ):  # fmt: skip
            self.imm(v)
            self.st(slot)
        v4, v6, fields_done = a.label(), a.label(), a.label("fields")
        if self.base == BASE_ETHER:
            self.a.op(I.LD | I.H | I.ABS, 12)
            is4, not4 = a.label(), a.label()
            self.jeq(0x0800, is4, not4)
            a.put(not4)
            self.jeq(0x86DD, v6, fields_done)
            a.put(is4)
            self.ja(v4)
        else:
            self.ld(I.B, 0)
            self.alu(I.RSH, 4)
            c6 = a.label()
            self.jeq(4, v4, c6)
            a.put(c6)
            self.jeq(6, v6, fields_done)
        # ---- IPv4
        a.put(v4)
        self.imm(4)
        self.st(M_VER)
        self.ld(I.B, 1)
        self.alu(I.RSH, 2)
        self.st(M_DSCP)
        self.ld(I.B, 9)
        self.st(M_PROTO)
        self.ld(I.H, 2)
        self.st(M_IPLEN)
        self.a.op(I.LDX | I.B | I.MSH, self.off + 0)
        self.a.op(I.STX, M_L4)
        self.ld(I.H, 6)
        self.alu(I.AND, 0x1FFF)
        self.alu(I.LSH, 3)
        self.st(M_FOFF)
        self.ld(I.H, 6)
        self.alu(I.AND, 0x3FFF)
        frag4, nf4 = a.label(), a.label()
        self.jeq(0, nf4, frag4)
        a.put(frag4)
        self._set_frag_kind()
        self.ja(fields_done)
        a.put(nf4)
        self.ja("ports")
        # ---- IPv6
        a.put(v6)
        self.imm(6)
        self.st(M_VER)
        self.ld(I.H, 0)
        self.alu(I.RSH, 6)
        self.alu(I.AND, 0x3F)
        self.st(M_DSCP)
        self.ld(I.H, 4)
        self.alu(I.ADD, 40)
        self.st(M_IPLEN)
        self.imm(40)
        self.st(M_L4)
        self.ld(I.B, 6)
        self.st(M_PROTO)
        for _ in range(MAX_V6_EXT + 1):
            walk, nxt, w2, w3 = a.label(), a.label(), a.label(), a.label()
            self.ldm(M_PROTO)
            self.jeq(0, walk, w2)
            a.put(w2)
            self.jeq(43, walk, w3)
            a.put(w3)
            self.jeq(60, walk, nxt)
            a.put(walk)
            if _ == MAX_V6_EXT:
                # the software parser gives up here (an error): it passes the packet
                self.ret(ACCEPT if self.mode == "verdict" else 0)
                a.put(nxt)
                break
            self.a.op(I.LDX | I.W | I.MEM, M_L4)
            self.ldi(I.B, 0)
            self.st(M_TMP)
            self.ldi(I.B, 1)
            self.alu(I.ADD, 1)
            self.alu(I.LSH, 3)
            self.a.op(I.ALU | I.ADD | I.X)
            self.st(M_L4)
            self.ldm(M_TMP)
            self.st(M_PROTO)
            a.put(nxt)
        # fragment header
        nofrag = a.label()
        isfrag = a.label()
        self.ldm(M_PROTO)
        self.jeq(44, isfrag, nofrag)
        a.put(isfrag)
        self.a.op(I.LDX | I.W | I.MEM, M_L4)
        self.ldi(I.B, 0)
        self.st(M_PROTO)
        self.ldi(I.H, 2)
        self.alu(I.AND, 0xFFF8)
        self.st(M_FOFF)
        self.ldm(M_L4)
        self.alu(I.ADD, 8)
        self.st(M_L4)
        self._set_frag_kind()
        self.ja(fields_done)
        a.put(nofrag)
        # ---- ports (not fragments; TCP or UDP)
        a.put("ports")
        got, np1 = a.label(), a.label()
        self.ldm(M_PROTO)
        self.jeq(6, got, np1)
        a.put(np1)
        self.jeq(17, got, fields_done)
        a.put(got)
        self.a.op(I.LDX | I.W | I.MEM, M_L4)
        self.ldi(I.H, 0)
        self.st(M_SPORT)
        self.ldi(I.H, 2)
        self.st(M_DPORT)
        a.put(fields_done)

    def _set_frag_kind(self) -> None:
        """M_FRAG = 1 for a first fragment (offset 0), 2 for a later one."""
        a = self.a
        first, later, done = a.label(), a.label(), a.label()
        self.ldm(M_FOFF)
        self.jeq(0, first, later)
        a.put(first)
        self.imm(1)
        self.st(M_FRAG)
        self.ja(done)
        a.put(later)
        self.imm(2)
        self.st(M_FRAG)
        a.put(done)

    # conditions -------------------------------------------------------------
    def check_version(self, v: int, fail: str) -> None:
        ok = self.a.label()
        self.ldm(M_VER)
        self.jeq(v, ok, fail)
        self.a.put(ok)

    def check_prefix(self, net: Network, field: str, fail: str) -> None:
        """Version already checked. Compares the prefix's 32-bit words."""
        if net.prefixlen == 0:
            return
        if net.version == 4:
            off = 12 if field == "src" else 16
            words = [(off, int(net.network_address), int(net.netmask))]
        else:
            off = 8 if field == "src" else 24
            na = int(net.network_address)
            nm = int(net.netmask)
            words = []
            for i in range(4):
                m = (nm >> (96 - 32 * i)) & 0xFFFFFFFF
                if m:
                    words.append((off + 4 * i, (na >> (96 - 32 * i)) & 0xFFFFFFFF, m))
        for o, val, mask in words:
            ok = self.a.label()
            self.ld(I.W, o)
            if mask != 0xFFFFFFFF:
                self.alu(I.AND, mask)
            self.jeq(val & mask, ok, fail)
            self.a.put(ok)

    def check_range(self, slot: int, rng: tuple[int, int], fail: str) -> None:
        lo, hi = rng
        ok = self.a.label()
        self.ldm(slot)
        if lo == hi:
            self.jeq(lo, ok, fail)
            self.a.put(ok)
            return
        ok1 = self.a.label()
        if lo > 0:
            self.jge(lo, ok1, fail)
            self.a.put(ok1)
        self.jgt(hi, fail, ok)
        self.a.put(ok)

    def rule(self, r: Rule) -> None:
        fail = self.a.label()
        v = r.version
        if v is not None:
            self.check_version(v, fail)
        if r.src is not None:
            self.check_prefix(r.src, "src", fail)
        if r.dst is not None:
            self.check_prefix(r.dst, "dst", fail)
        if r.proto is not None:
            self.check_range(M_PROTO, r.proto, fail)
        if r.sport is not None:
            self.check_range(M_SPORT, r.sport, fail)
        if r.dport is not None:
            self.check_range(M_DPORT, r.dport, fail)
        if r.dscp is not None:
            self.check_range(M_DSCP, r.dscp, fail)
        self.ret_action(r.action, r.class_id)
        self.a.put(fail)

    def lpm(self, cfg: LpmConfig) -> None:
        a = self.a
        done, t4, t6, c6 = a.label(), a.label(), a.label(), a.label()
        self.ldm(M_VER)
        j4, j6 = a.label(), a.label()
        self.jeq(4, j4, c6)
        a.put(c6)
        self.jeq(6, j6, done)
        a.put(j4)
        self.ja(t4)
        a.put(j6)
        self.ja(t6)
        # longest first; for equal prefixes the last one listed wins (as in the table)
        last: dict[Network, tuple[int, int]] = {}
        for net, cls, act in cfg.prefixes:
            last.pop(net, None)
            last[net] = (act, cls)
        for v, t in ((4, t4), (6, t6)):
            a.put(t)
            nets = sorted((n for n in last if n.version == v), key=lambda n: -n.prefixlen)
            for n in nets:
                fail = a.label()
                self.check_prefix(n, cfg.field, fail)
                act, cls = last[n]
                self.ret_action(act, cls)
                a.put(fail)
            self.ja(done)
        a.put(done)


def compile_filter(
    rules: ClassifyConfig | DosConfig | Sequence[Rule], base: str = BASE_NET, mode: str = "verdict"
) -> list[Insn]:
    """A classic BPF program for ``rules``; see the module docstring for the subset."""
    g = _Gen(base, mode)
    g.prologue()
    if isinstance(rules, DosConfig):
        _dos(g, rules)
    else:
        if isinstance(rules, ClassifyConfig):
            cfg = rules
        else:
            items = tuple(rules) if isinstance(rules, (list, tuple)) else ()
            if not isinstance(rules, (list, tuple)) or not all(isinstance(r, Rule) for r in items):
                raise ConfigError(
                    "compile_filter wants a ClassifyConfig, a DosConfig or a list of Rule, "
                    f"got {type(rules).__name__}"
                )
            cfg = ClassifyConfig(rules=items)
        order = sorted(range(len(cfg.rules)), key=lambda i: (cfg.rules[i].priority, i))
        ordered = [cfg.rules[i] for i in order]
        lpm_at = len(ordered)
        if cfg.lpm is not None and cfg.lpm.priority is not None:
            lpm_at = sum(1 for r in ordered if r.priority <= cfg.lpm.priority)
        for i, r in enumerate(ordered):
            if i == lpm_at and cfg.lpm is not None:
                g.lpm(cfg.lpm)
            g.rule(r)
        if lpm_at == len(ordered) and cfg.lpm is not None:
            g.lpm(cfg.lpm)
        g.ret_action(cfg.default_action, cfg.default_class)
    prog = g.a.assemble()
    I.check(prog)
    return prog


def _dos(g: _Gen, cfg: DosConfig) -> None:
    a = g.a
    drop, keep = a.label("drop"), a.label("keep")
    nonip = a.label()
    g.ldm(M_VER)
    g.jeq(0, keep, nonip)
    a.put(nonip)
    # size
    ok1, ok2 = a.label(), a.label()
    g.ldm(M_IPLEN)
    g.jge(cfg.min_size, ok1, drop)
    a.put(ok1)
    g.jgt(cfg.max_size, drop, ok2)
    a.put(ok2)
    # fragments
    isfrag, fdone = a.label(), a.label()
    g.ldm(M_FRAG)
    g.jeq(0, fdone, isfrag)
    a.put(isfrag)
    if cfg.drop_fragments:
        g.ja(drop)
    # ping of death: offset + bytes after the L4 start > 65535
    c1, c2, c3 = a.label(), a.label(), a.label()
    a.op(I.LDX | I.W | I.MEM, M_L4)
    g.ldm(M_IPLEN)
    a.op(I.ALU | I.SUB | I.X)
    g.st(M_TMP)  # L4 bytes available
    a.op(I.MISC | I.TAX)
    g.ldm(M_FOFF)
    a.op(I.ALU | I.ADD | I.X)
    g.jgt(65535, drop, c1)
    a.put(c1)
    # RFC 1858: TCP at offset 8
    g.ldm(M_PROTO)
    g.jeq(6, c2, c3)
    a.put(c2)
    c4 = a.label()
    g.ldm(M_FOFF)
    g.jeq(8, drop, c4)
    a.put(c4)
    a.put(c3)
    # tiny first fragment
    if cfg.min_first_fragment > 0:
        c5 = a.label()
        g.ldm(M_FRAG)
        g.jeq(1, c5, fdone)
        a.put(c5)
        g.ldm(M_TMP)
        g.jge(cfg.min_first_fragment, fdone, drop)
    a.put(fdone)
    # drop lists
    for field, nets in (("src", cfg.drop_src), ("dst", cfg.drop_dst)):
        for n in nets:
            fail = a.label()
            g.check_version(n.version, fail)
            g.check_prefix(n, field, fail)
            g.ja(drop)
            a.put(fail)
    a.put(keep)
    g.ret(ACCEPT)
    a.put(drop)
    g.ret(0)


def uncompiled(cfg: DosConfig | ClassifyConfig) -> list[str]:
    """The parts of a configuration the compiled program leaves to software."""
    if isinstance(cfg, ClassifyConfig):
        return (
            ["rss hash", "mark action (passes)"]
            if any(r.action == 2 for r in cfg.rules)
            else ["rss hash"]
        )
    out = []
    if cfg.rate is not None:
        out.append("rate: per-source token buckets")
    if cfg.syn is not None:
        out.append("syn: SYN-flood limits")
    if cfg.replay_window is not None:
        out.append("replay: anti-replay windows")
    return out


# ------------------------------------------------------------------ for setsockopt
class SockFprog:
    """``struct sock_fprog`` for ``SO_ATTACH_FILTER`` / ``TUNATTACHFILTER``.

    ``bytes`` is the struct (length + pointer); the filter array it points to
    lives as long as this object — keep it alive until the call returns.
    """

    def __init__(self, prog: Sequence[Insn]) -> None:
        n = len(prog)
        self.filters = (ctypes.c_uint8 * (8 * n))()
        raw = b"".join(struct.pack("=HBBI", c, jt, jf, k & 0xFFFFFFFF) for c, jt, jf, k in prog)
        ctypes.memmove(self.filters, raw, len(raw))
        self.len = n
        self.bytes = struct.pack("HL", n, ctypes.addressof(self.filters))

    def __len__(self) -> int:
        return self.len


def sock_fprog(prog: Sequence[Insn]) -> SockFprog:
    I.check(prog)
    return SockFprog(prog)


SO_ATTACH_FILTER = 26
SO_DETACH_FILTER = 27
SO_LOCK_FILTER = 44


def attach_socket(sock: socket.socket, prog: Sequence[Insn]) -> None:
    """``setsockopt(SOL_SOCKET, SO_ATTACH_FILTER)`` with ``prog`` (replaces any filter)."""
    fp = sock_fprog(prog)
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fp.bytes)
    except OSError as e:
        raise ConfigError(f"attaching a {len(fp)}-instruction filter failed: {e}") from None
