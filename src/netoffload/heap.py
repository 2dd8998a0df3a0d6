"""The C heap of a long-running process: freed big buffers handed back to the kernel.

glibc serves a ``malloc`` of at least the *mmap threshold* (128 KiB at start) with
its own ``mmap``, which ``free`` unmaps at once. But when such a block is freed,
glibc raises the threshold to its size (the *dynamic* threshold, up to 32 MiB on
64-bit): from then on blocks of that size come from the heap, and a freed one stays
there. A tunnel allocates big per-batch buffers (numpy arrays of a received batch, the
encrypted copy, GRO output) of sizes that wander with the load, so its RSS climbs in
steps to the heap's high-water mark and keeps it (a soak measured +9.9 % RSS after
the warm-up; +0.95 % with the threshold pinned).

Two cures, for the start of a long-running process (``netoffload up``):

- ``start_trimmer()``: a daemon thread calls ``malloc_trim(0)`` every 10 s (in every
  process forked later too: the tunnel's workers), which returns every whole free
  page inside the heaps, not only at their top. The heap is reused at full speed
  between trims. The one ``up`` uses.
- ``pin_mmap_threshold()``: what ``MALLOC_MMAP_THRESHOLD_=131072`` does,
  ``mallopt(M_MMAP_THRESHOLD, 128 KiB)``, which also turns the dynamic threshold off:
  every big block is mapped and unmapped on its own. RSS then never holds a freed
  block, but every batch's big buffers cost a ``mmap``, page faults and a
  ``munmap`` (measured: +0.7..1.0 us a datagram at one allocation site, 600-datagram
  batches; the trimmer at 20 times its interval cost nothing measurable). A threshold
  the user chose in the environment is left alone.

On a C library without them (musl) both do nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading

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


# --------------------------------------------------------------------------- trimming
#: how often the trimmer hands the heap's free pages back (seconds)
TRIM_INTERVAL = 10.0


def trim() -> bool:
    """``malloc_trim(0)``: every whole free page in glibc's heaps (not only at their top)
    goes back to the kernel (``MADV_DONTNEED``). True if some memory was released."""
    lib = _libc()
    if lib is None or not hasattr(lib, "malloc_trim"):
        return False
    fn = lib.malloc_trim
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return bool(fn(0))


class _Trimmer:
    """The process's trimming thread (one at most), restarted in forked children."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.interval = 0.0
        self.thread: threading.Thread | None = None
        self.stop = threading.Event()
        self.trims = 0
        self.registered = False

    def spawn(self, interval: float) -> None:
        self.interval = interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="heap-trim", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        stop = self.stop
        while not stop.wait(self.interval):
            trim()
            self.trims += 1

    def after_fork_in_child(self) -> None:
        # threads do not survive fork: a forked worker or daemon gets its own
        self.lock = threading.Lock()
        if self.thread is not None:
            self.trims = 0
            self.spawn(self.interval)


_TRIMMER = _Trimmer()


def start_trimmer(interval: float = TRIM_INTERVAL) -> bool:
    """A daemon thread that calls ``trim()`` every ``interval`` seconds, in this process
    and in every process it forks later. The alternative to ``pin_mmap_threshold``
    that costs no ``mmap`` per big block: glibc keeps reusing its heap at full speed,
    and what the heap no longer holds stops counting in RSS within ``interval``.
    False (nothing started) without glibc's ``malloc_trim`` or when one already runs."""
    if interval <= 0:
        raise ValueError("trim interval must be positive")
    lib = _libc()
    if lib is None or not hasattr(lib, "malloc_trim"):
        return False
    t = _TRIMMER
    with t.lock:
        if t.thread is not None:
            return False
        t.spawn(interval)
        if not t.registered:
            os.register_at_fork(after_in_child=t.after_fork_in_child)
            t.registered = True
    return True


def trims() -> int:
    """Trims done so far by this process's trimmer."""
    return _TRIMMER.trims
