"""A classic-BPF interpreter with the kernel's semantics (net/core/filter.c).

``run(prog, packet, net_off=0)`` returns what the program returns (for a
socket filter: 0 = drop, otherwise the number of bytes to keep). As in the
kernel, a load outside the packet ends the program with 0, as does a
division or modulo by zero in X; negative absolute offsets reach the
network header (``SKF_NET_OFF``) and the link-layer header (``SKF_LL_OFF``).
Ancillary loads (``SKF_AD_OFF``) are not supported and end with 0.

Programs are checked first (``check``) the way ``bpf_check_classic`` does:
length 1..4096, known opcodes, jumps inside the program and forward, scratch
indices below 16, and a return as the last instruction.
"""

from __future__ import annotations

from collections.abc import Sequence

Insn = tuple[int, int, int, int]

MAXINSNS = 4096
MEMWORDS = 16
SKF_AD_OFF = -0x1000
SKF_NET_OFF = -0x100000
SKF_LL_OFF = -0x200000

# classes
LD, LDX, ST, STX, ALU, JMP, RET, MISC = range(8)
# sizes
W, H, B = 0x00, 0x08, 0x10
# modes
IMM, ABS, IND, MEM, LEN, MSH = 0x00, 0x20, 0x40, 0x60, 0x80, 0xA0
# alu ops
ADD, SUB, MUL, DIV, OR, AND, LSH, RSH, NEG, MOD, XOR = (
    0x00, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x80, 0x90, 0xA0,
)  # fmt: skip
# jumps
JA, JEQ, JGT, JGE, JSET = 0x00, 0x10, 0x20, 0x30, 0x40
# sources
K, X = 0x00, 0x08
RET_A = 0x10
TAX, TXA = 0x00, 0x80

M32 = 0xFFFFFFFF

_VALID = {
    *(LD | s | m for s in (W, H, B) for m in (ABS, IND)),
    LD | W | LEN,
    LD | W | IMM,
    LD | W | MEM,
    LDX | W | IMM,
    LDX | W | MEM,
    LDX | W | LEN,
    LDX | B | MSH,
    ST,
    STX,
    *(ALU | op | s for op in (ADD, SUB, MUL, DIV, OR, AND, LSH, RSH, MOD, XOR) for s in (K, X)),
    ALU | NEG,
    JMP | JA,
    *(JMP | op | s for op in (JEQ, JGT, JGE, JSET) for s in (K, X)),
    RET | K,
    RET | RET_A,
    MISC | TAX,
    MISC | TXA,
}


class BpfError(ValueError):
    """A program the kernel would refuse."""


def check(prog: Sequence[Insn]) -> None:
    n = len(prog)
    if not 1 <= n <= MAXINSNS:
        raise BpfError(f"program length {n} not in 1..{MAXINSNS}")
    for pc, (code, jt, jf, k) in enumerate(prog):
        if code not in _VALID:
            raise BpfError(f"insn {pc}: unknown opcode {code:#x}")
        cls = code & 7
        if cls == JMP:
            if code == JMP | JA:
                if pc + 1 + k >= n or k < 0:
                    raise BpfError(f"insn {pc}: jump out of the program")
            elif pc + 1 + jt >= n or pc + 1 + jf >= n:
                raise BpfError(f"insn {pc}: jump out of the program")
            if not (0 <= jt <= 255 and 0 <= jf <= 255):
                raise BpfError(f"insn {pc}: jt/jf out of range")
        if (code in (LD | W | MEM, LDX | W | MEM, ST, STX)) and not 0 <= k < MEMWORDS:
            raise BpfError(f"insn {pc}: scratch index {k}")
        if code in (ALU | DIV | K, ALU | MOD | K) and k == 0:
            raise BpfError(f"insn {pc}: division by constant zero")
    if prog[-1][0] & 7 != RET:
        raise BpfError("the last instruction is not a return")


def _load(pkt: bytes, net_off: int, off: int, size: int) -> int | None:
    if off < 0:
        if off >= SKF_AD_OFF:
            return None
        if off >= SKF_NET_OFF:
            off = net_off + (off - SKF_NET_OFF)
        elif off >= SKF_LL_OFF:
            off = off - SKF_LL_OFF
        else:
            return None
    if off < 0 or off + size > len(pkt):
        return None
    return int.from_bytes(pkt[off : off + size], "big")


def run(prog: Sequence[Insn], pkt: bytes, net_off: int = 0, checked: bool = False) -> int:
    """Run ``prog`` over ``pkt``; returns the program's return value (0 = drop)."""
    if not checked:
        check(prog)
    a = 0
    x = 0
    mem = [0] * MEMWORDS
    pc = 0
    n = len(prog)
    while pc < n:
        code, jt, jf, k = prog[pc]
        pc += 1
        cls = code & 7
        if cls == RET:
            return (a if code & RET_A else k) & M32
        if cls == LD:
            mode = code & 0xE0
            if mode == IMM:
                a = k & M32
            elif mode == MEM:
                a = mem[k]
            elif mode == LEN:
                a = len(pkt)
            else:
                size = {W: 4, H: 2, B: 1}[code & 0x18]
                off = k if mode == ABS else (x + _signed(k))
                if mode == ABS:
                    off = _signed(k)
                v = _load(pkt, net_off, off, size)
                if v is None:
                    return 0
                a = v
        elif cls == LDX:
            mode = code & 0xE0
            if mode == IMM:
                x = k & M32
            elif mode == MEM:
                x = mem[k]
            elif mode == LEN:
                x = len(pkt)
            else:  # MSH
                v = _load(pkt, net_off, _signed(k), 1)
                if v is None:
                    return 0
                x = (v & 0xF) * 4
        elif cls == ST:
            mem[k] = a
        elif cls == STX:
            mem[k] = x
        elif cls == ALU:
            op = code & 0xF0
            if op == NEG:
                a = (-a) & M32
            else:
                v = x if code & X else (k & M32)
                if op == ADD:
                    a = (a + v) & M32
                elif op == SUB:
                    a = (a - v) & M32
                elif op == MUL:
                    a = (a * v) & M32
                elif op == DIV:
                    if v == 0:
                        return 0
                    a = a // v
                elif op == MOD:
                    if v == 0:
                        return 0
                    a = a % v
                elif op == OR:
                    a = a | v
                elif op == AND:
                    a = a & v
                elif op == XOR:
                    a = a ^ v
                elif op == LSH:
                    a = (a << (v & 31)) & M32 if v < 32 else 0
                elif op == RSH:
                    a = a >> v if v < 32 else 0
        elif cls == JMP:
            op = code & 0xF0
            if op == JA:
                pc += k
                continue
            v = x if code & X else (k & M32)
            if op == JEQ:
                c = a == v
            elif op == JGT:
                c = a > v
            elif op == JGE:
                c = a >= v
            else:
                c = (a & v) != 0
            pc += jt if c else jf
        else:  # MISC
            if code & 0xF8 == TXA:
                a = x
            else:
                x = a
    return 0


def _signed(k: int) -> int:
    k &= M32
    return k - (1 << 32) if k & 0x80000000 else k
