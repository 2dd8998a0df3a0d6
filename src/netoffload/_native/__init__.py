"""Compiled kernels behind the software tasks (C, built at install time).

``_kernel`` is a small CPython extension written in C (``_kernel.c``), compiled
by the hatch build hook (``hatch_build.py``) when the package is installed. It
does the Internet checksum (RFC 1071) over whole batches — one call per batch,
never one per packet: range sums, the checksum task's verify mode, and
segmentation with the payload summed while it is copied — and the engine's
per-stage bookkeeping (which packets want a task, their bytes, how many are
dead) in one pass instead of a handful of numpy calls; for an engine without
devices, ``soft_run`` drives all its stages in one call. ``aead`` is the
encrypt and decrypt tasks' per-packet loop: one AEAD call a packet, in place in
the batch buffer, with no Python object made per packet.

Everything here is optional: when the extension is missing (no compiler at
install time, an unusual platform) or ``NETOFFLOAD_NATIVE=0`` is set in the
environment, ``kernel`` is None and the tasks use their numpy code, which gives
the same results. ``status()`` says which path is in use and why.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Protocol

#: the environment variable that turns the compiled kernels off ("0")
ENV = "NETOFFLOAD_NATIVE"


class Kernel(Protocol):
    """The functions of ``_kernel`` (see ``_kernel.c`` for their contracts)."""

    def range_sums(self, buf: Any, a: Any, b: Any, out: Any, /) -> None: ...
    def copy_ranges(self, dst: Any, ds: Any, src: Any, ss: Any, length: Any, /) -> None: ...
    def verify(self, *arrays: Any) -> int: ...
    def fill(self, *arrays: Any) -> int: ...
    def segment(self, *args: Any) -> None: ...
    def layout(self, *arrays: Any) -> int: ...
    def plan(self, *args: Any) -> int: ...
    def want(self, *args: Any) -> tuple[int, int, int]: ...
    def mark(self, *args: Any) -> int: ...
    def begin(self, origin: Any, sub: Any, base: int, /) -> None: ...
    def enter(self, batch: Any, base: int, /) -> bool: ...
    def soft_run(
        self,
        batch: Any,
        base: int,
        plan: tuple[tuple[int, Any], ...],
        drop: int,
        acc: Any,
        start: int,
        /,
    ) -> Any: ...
    def aead(self, *args: Any) -> int: ...
    def gro_plan(self, *args: Any) -> tuple[int, int, int]: ...
    def gro_build(self, *args: Any) -> None: ...
    def esp_trailer(self, *args: Any) -> None: ...
    def simd(self) -> str: ...
    def set_simd(self, on: bool, /) -> str: ...


def _load() -> tuple[Kernel | None, str]:
    if os.environ.get(ENV, "1").strip().lower() in ("0", "no", "off", "false"):
        return None, f"disabled by {ENV}={os.environ[ENV]}"
    try:
        from netoffload._native import _kernel
    except ImportError as exc:
        return None, f"not built ({exc})"
    return _kernel, "loaded"


#: the compiled kernels, or None (the numpy fallbacks are used)
kernel: Kernel | None
kernel, _why = _load()


def available() -> bool:
    """Whether the compiled kernels are in use."""
    return kernel is not None


def status() -> str:
    """``"native (avx2)"``, ``"native (c)"``, or ``"numpy: <why not native>"``."""
    if kernel is not None:
        return f"native ({kernel.simd()})"
    return f"numpy: {_why}"


__all__: Sequence[str] = ("ENV", "Kernel", "available", "kernel", "status")
