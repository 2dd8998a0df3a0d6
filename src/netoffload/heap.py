"""The C heap of a long-running process: glibc's mmap threshold pinned at start.

glibc serves a ``malloc`` of at least the *mmap threshold* (128 KiB at start) with
its own ``mmap``, which ``free`` unmaps at once. But when such a block is freed,
glibc raises the threshold to its size (the *dynamic* threshold, up to 32 MiB on
64-bit): from then on blocks of that size come from the heap, and a freed one stays
there. A tunnel allocates big per-batch buffers (numpy arrays of a received batch, the
encrypted copy, GRO output) of sizes that wander with the load, so its heap climbs in
steps to a high-water mark that it keeps (a soak measured +9.9 % RSS after the warm-up,
+0.95 % with the threshold pinned).

``pin_mmap_threshold()`` does what ``MALLOC_MMAP_THRESHOLD_=131072`` in the environment
does: ``mallopt(M_MMAP_THRESHOLD, 128 KiB)``, which also turns the dynamic threshold
off, so every big block goes back to the kernel when freed. Call it once at the start
of a long-running process (``netoffload up``); a ``fork`` inherits it. A threshold the
user chose in the environment is left alone; on a C library without ``mallopt``
(musl) nothing happens.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

#: mallopt's parameter number for it (glibc malloc.h)
M_MMAP_THRESHOLD = -3
#: glibc's initial threshold; the blocks of a batch of a few datagrams stay below it
DEFAULT_THRESHOLD = 128 << 10


def _libc() -> ctypes.CDLL | None:
    try:
        lib = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    except OSError:
        return None
    return lib if hasattr(lib, "mallopt") else None


def user_chose() -> bool:
    """The environment already sets glibc's mmap threshold (then it is the user's)."""
    if os.environ.get("MALLOC_MMAP_THRESHOLD_"):
        return True
    return "glibc.malloc.mmap_threshold" in os.environ.get("GLIBC_TUNABLES", "")


def pin_mmap_threshold(threshold: int = DEFAULT_THRESHOLD) -> bool:
    """``mallopt(M_MMAP_THRESHOLD, threshold)``: blocks of ``threshold`` bytes or more
    are mapped on their own and unmapped when freed, whatever was freed before (no
    dynamic threshold). True if set; False when the user's environment already chose,
    or the C library has no ``mallopt``."""
    if threshold <= 0:
        raise ValueError("mmap threshold must be positive")
    if user_chose():
        return False
    lib = _libc()
    if lib is None:
        return False
    mallopt = lib.mallopt
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, int(threshold)))
