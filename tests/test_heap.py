"""heap.pin_mmap_threshold against glibc itself: what mallinfo2 says of a freed and
re-allocated 1 MiB block, in a fresh interpreter with and without the pin."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from netoffload import heap

# malloc 1 MiB, free it (glibc's dynamic threshold rises past 1 MiB), malloc 1 MiB again:
# is the second block mapped on its own (mallinfo2.hblkhd) or carved from the heap?
_PROBE = r"""
import ctypes, json, sys
from netoffload import heap
pinned = heap.pin_mmap_threshold() if sys.argv[1] == "pin" else False
libc = ctypes.CDLL(None)
class MI(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
        "uordblks", "fordblks", "keepcost")]
libc.mallinfo2.restype = MI
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
size = 1 << 20
before = libc.mallinfo2().hblkhd
p = libc.malloc(size)
first = libc.mallinfo2().hblkhd - before
libc.free(p)
q = libc.malloc(size)
second = libc.mallinfo2().hblkhd - before
libc.free(q)
print(json.dumps({"pinned": pinned, "first": first, "second": second}))
"""


def _probe(mode: str, **env: str) -> dict[str, int]:
    clean = {k: v for k, v in os.environ.items() if k not in ("MALLOC_MMAP_THRESHOLD_",
                                                              "GLIBC_TUNABLES")}  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, mode],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    doc: dict[str, int] = json.loads(out)
    return doc


glibc = pytest.mark.skipif(heap._libc() is None, reason="no glibc mallopt here")


@glibc
def test_unpinned_glibc_keeps_a_freed_big_block_in_the_heap() -> None:
    # the control: glibc's dynamic threshold, the cause of the RSS steps
    r = _probe("none")
    assert r["first"] >= 1 << 20  # mapped on its own at first
    assert r["second"] < 1 << 20  # after a free, the same size comes from the heap


@glibc
def test_pinned_threshold_maps_every_big_block() -> None:
    r = _probe("pin")
    assert r["pinned"]
    assert r["first"] >= 1 << 20
    assert r["second"] >= 1 << 20  # still mapped: freeing it returns it to the kernel


@glibc
def test_the_users_environment_wins() -> None:
    r = _probe("pin", MALLOC_MMAP_THRESHOLD_="4194304")
    assert not r["pinned"]
    assert r["second"] < 1 << 20  # the user's 4 MiB threshold: 1 MiB from the heap


def test_bad_threshold() -> None:
    with pytest.raises(ValueError):
        heap.pin_mmap_threshold(0)


# 400 blocks of 64 KiB (below the threshold: from the heap), all freed but the last (the
# heap cannot shrink from its top): RSS as /proc/self/statm gives it, before and after
_TRIM_PROBE = r"""
import ctypes, json, os, sys, time
from netoffload import heap
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
blocks = [libc.malloc(64 << 10) for _ in range(400)]
for b in blocks:
    libc.memset(b, 1, 64 << 10)
full = rss()
for b in blocks[:-1]:
    libc.free(b)
freed = rss()
if sys.argv[1] == "trim":
    heap.trim()
elif sys.argv[1] == "thread":
    assert heap.start_trimmer(0.05)
    pid = os.fork()
    if pid == 0:  # the child's own trimmer runs
        time.sleep(0.5)
        os._exit(0 if heap.trims() > 0 and heap._TRIMMER.thread.is_alive() else 3)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "no trimmer in the forked child"
    time.sleep(0.3)
print(json.dumps({"full": full, "freed": freed, "after": rss()}))
"""


def _trim_probe(mode: str) -> dict[str, int]:
    clean = {k: v for k, v in os.environ.items() if k not in ("MALLOC_MMAP_THRESHOLD_",
                                                              "GLIBC_TUNABLES")}  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-c", _TRIM_PROBE, mode],
        env=clean,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    doc: dict[str, int] = json.loads(out)
    return doc


@glibc
def test_freed_heap_pages_stay_resident_without_a_trim() -> None:
    r = _trim_probe("none")  # the control: glibc keeps them
    assert r["after"] > r["full"] - (4 << 20)


@glibc
@pytest.mark.parametrize("mode", ["trim", "thread"])
def test_trim_hands_freed_heap_pages_back(mode: str) -> None:
    r = _trim_probe(mode)
    # ~25 MiB were freed inside the heap: most of it leaves RSS
    assert r["after"] < r["full"] - (20 << 20)


def test_bad_interval() -> None:
    with pytest.raises(ValueError):
        heap.start_trimmer(0)
