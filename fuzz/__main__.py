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
    atheris.Setup(args, one)
    atheris.Fuzz()
    return 0  # not reached: libFuzzer exits


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
