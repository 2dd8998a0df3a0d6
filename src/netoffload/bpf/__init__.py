"""Classic BPF: a compiler for the kernel-runnable subset of our rules, and an interpreter.

``compile_filter(rules)`` turns a classification rule table (or the stateless
part of a DoS filter configuration) into a cBPF program — a list of
``(code, jt, jf, k)`` — that socket filters (``SO_ATTACH_FILTER``), TUN
(``TUNATTACHFILTER``) and ``PACKET_FANOUT_CBPF`` can run; ``sock_fprog``
packs it for ``setsockopt``/``ioctl``. ``run(prog, packet)`` interprets a
program the way the kernel does.
"""

from __future__ import annotations

from netoffload.bpf.compiler import (
    BASE_ETHER,
    BASE_IP,
    BASE_NET,
    CompileError,
    SockFprog,
    attach_socket,
    compile_filter,
    sock_fprog,
    uncompiled,
)
from netoffload.bpf.interp import run

__all__ = [
    "BASE_ETHER",
    "BASE_IP",
    "BASE_NET",
    "CompileError",
    "SockFprog",
    "attach_socket",
    "compile_filter",
    "run",
    "sock_fprog",
    "uncompiled",
]
