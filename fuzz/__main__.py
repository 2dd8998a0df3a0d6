"""Run the fuzz targets.

    python -m fuzz list                    names of the targets, one a line
    python -m fuzz seeds NAME DIR          build NAME's seed corpus into DIR
    python -m fuzz run NAME [LIBFUZZER-ARGS...]
                                           fuzz NAME with atheris (libFuzzer flags and
                                           corpus directories as libFuzzer takes them)
    python -m fuzz repro NAME FILE...      run NAME once on each file, without atheris

``run`` instruments the netoffload modules the target imports (coverage of
netoffload only) and exits as libFuzzer does: 0 when the runs or the time are
used up, non-zero on a crash (an exception the target does not allow) or a
hang (``-timeout``), with the input written as ``crash-*`` / ``timeout-*``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any


def _no_array_compare_leak(atheris: Any) -> None:
    """Route comparisons of numpy arrays around atheris' comparison tracer.

    Instrumented code calls ``atheris._trace_cmp(a, b, op, counter, is_const)`` for
    every ``<``/``==``/...; the native tracer keeps a reference to a result that is
    not a bool, so each array comparison (numpy returns an array) leaks the array:
    a parser target grew by gigabytes per 10^6 runs and hit the RSS limit. Arrays
    carry nothing the tracer could use, so they are compared here, plainly.
    """
    import dis
    import operator

    import numpy as np
    from atheris.version_dependent import CMP_OP_SHIFT_AMOUNT

    ops = {
        "<": operator.lt, "<=": operator.le, "==": operator.eq,
        "!=": operator.ne, ">": operator.gt, ">=": operator.ge,
    }  # fmt: skip
    by_arg = [ops[name] for name in dis.cmp_op]
    native = atheris._trace_cmp
    ndarray = np.ndarray

    def trace_cmp(obj1: Any, obj2: Any, opid: int, counter: int, is_const: bool) -> Any:
        if isinstance(obj1, ndarray) or isinstance(obj2, ndarray):
            return by_arg[opid >> CMP_OP_SHIFT_AMOUNT](obj1, obj2)
        return native(obj1, obj2, opid, counter, is_const)

    atheris._trace_cmp = trace_cmp


def main(argv: list[str]) -> int:
    from fuzz.targets import TARGETS, write_seeds

    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "list":
        for name, t in TARGETS.items():
            print(f"{name}\t{t.max_len}\t{t.smoke_runs}\t{t.what}")
        return 0
    if not rest or rest[0] not in TARGETS:
        print(f"fuzz: {cmd}: name a target ({', '.join(TARGETS)})", file=sys.stderr)
        return 2
    target = TARGETS[rest[0]]
    if cmd == "seeds":
        if len(rest) != 2:
            print("fuzz: seeds NAME DIR", file=sys.stderr)
            return 2
        print(f"{target.name}: {write_seeds(target.name, Path(rest[1]))} seeds")
        return 0
    if cmd == "repro":
        one = target.make()
        for f in rest[1:]:
            one(Path(f).read_bytes())
            print(f"{f}: ok")
        return 0
    if cmd != "run":
        print(f"fuzz: unknown command {cmd!r}", file=sys.stderr)
        return 2
    import atheris

    with atheris.instrument_imports(include=["netoffload"]):
        one = target.make()
    args = [sys.argv[0], *rest[1:]]
    if not any(a.startswith("-max_len=") for a in args):
        args.append(f"-max_len={target.max_len}")
    ours: list[Any] = [None]

    def guarded(data: bytes) -> None:
        # atheris.Fuzz() installs its tracer on the module after Setup: wrap it
        # at the first input (and again should it ever be swapped)
        if atheris._trace_cmp is not ours[0]:
            _no_array_compare_leak(atheris)
            ours[0] = atheris._trace_cmp
        one(data)

    atheris.Setup(args, guarded)
    atheris.Fuzz()
    return 0  # not reached: libFuzzer exits


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
