"""Hatch build hook: compile netoffload's C kernel (``src/netoffload/_native/_kernel.c``).

The extension module is written next to its source, into
``src/netoffload/_native/`` (so an editable install finds it in place), and
added to the wheel for regular builds. Compiling is best effort: without a C
compiler or Python headers the build goes on with a warning and the package
uses its numpy code (``netoffload._native.status()`` says which path is in use).

With numpy importable at build time (a build requirement), its headers are
used so that the kernel reads ndarrays through their struct; without, it uses
the buffer protocol. Flags: ``-O3`` and no ``-march``: the AVX2 loop is chosen at run time by CPU
detection, so the built file runs on any CPU of its architecture. ``CC`` and
``CFLAGS`` from the environment are honoured; ``NETOFFLOAD_NATIVE=0`` at build
time skips the compilation.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

SOURCE = Path("src/netoffload/_native/_kernel.c")


def _target(root: Path) -> Path:
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    return root / SOURCE.parent / f"_kernel{suffix}"


def build_kernel(root: Path, log: Any = print) -> Path | None:
    """Compile the kernel in place; returns the built file, or None (with a warning)."""
    src = root / SOURCE
    out = _target(root)
    if os.environ.get("NETOFFLOAD_NATIVE", "1").strip().lower() in ("0", "no", "off", "false"):
        log("netoffload: NETOFFLOAD_NATIVE=0, C kernel not built (numpy fallback)")
        return None
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    cc_argv = shlex.split(cc)
    if not cc_argv or shutil.which(cc_argv[0]) is None:
        cc_argv = next(([c] for c in ("cc", "gcc", "clang") if shutil.which(c)), [])
    if not cc_argv:
        log("netoffload: WARNING: no C compiler found, C kernel not built (numpy fallback)")
        return None
    include = sysconfig.get_paths()["include"]
    flags = shlex.split(os.environ.get("CFLAGS", ""))
    try:  # numpy's headers: ndarrays read through their struct (faster calls)
        import numpy

        flags += ["-DNO_NUMPY", f"-I{numpy.get_include()}"]
    except ImportError:
        log("netoffload: numpy headers not found, C kernel reads arrays as buffers")
    tmp = out.with_name(out.name + ".tmp")
    cmd = [
        *cc_argv,
        "-O3",
        "-fPIC",
        "-shared",
        "-std=c11",
        "-Wall",
        "-fno-strict-aliasing",
        *flags,
        f"-I{include}",
        str(src),
        "-o",
        str(tmp),
    ]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    except OSError as exc:
        log(f"netoffload: WARNING: C kernel not built ({exc}); numpy fallback")
        return None
    if res.returncode != 0:
        log(
            "netoffload: WARNING: C kernel not built (numpy fallback):\n"
            + " ".join(cmd)
            + "\n"
            + res.stderr[-4000:]
        )
        tmp.unlink(missing_ok=True)
        return None
    os.replace(tmp, out)  # atomic: a running process keeps its mapped copy
    log(f"netoffload: built {out.relative_to(root)}")
    return out


class CustomBuildHook(BuildHookInterface):  # type: ignore[type-arg]
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel":
            return
        root = Path(self.root)
        built = build_kernel(root, lambda msg: print(msg, file=sys.stderr))
        if built is None:
            return
        # a platform wheel: the extension is in it (editable: found in src/ in place)
        build_data["pure_python"] = False
        build_data["infer_tag"] = True
        if version != "editable":
            rel = built.relative_to(root / "src").as_posix()
            build_data["force_include"][str(built)] = rel
