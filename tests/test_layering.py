"""Layering: which packages of netoffload may import which (DESIGN.md, "Layering").

``tunnel/`` is the application: nothing below it imports it, only its front ends
(``cli.py``, ``demo.py``, ``bench/tunnel*.py``) do. ``devices/`` does not import
``testing/``; ``wire/``, ``soft/`` and ``policy/`` import neither ``devices/`` nor
``testing/``; ``netns.py`` (the namespace primitives) sits below both.

Every module under src/netoffload is parsed with ``ast`` (nothing is imported);
an import counts wherever it stands (module level, inside a function, under
``TYPE_CHECKING``), relative imports are resolved against the package, and a
string constant that names a netoffload module (``importlib.import_module`` or a
plugin list) counts as an import of that module.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from fnmatch import fnmatchcase
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = SRC / "netoffload"
_MODULE_NAME = re.compile(r"netoffload(\.[A-Za-z_][A-Za-z0-9_]*)+")


def module_name(path: Path) -> str:
    """``src/netoffload/devices/tun.py`` -> ``netoffload.devices.tun`` (a package is
    named by its ``__init__.py``)."""
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported(source: str, module: str, is_package: bool) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of each import in ``source``. For ``from X import
    a, b`` both ``X`` and ``X.a``, ``X.b`` are given (a name may be a submodule)."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield node.lineno, target
            for alias in node.names:
                if alias.name != "*":
                    yield node.lineno, f"{target}.{alias.name}"
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and _MODULE_NAME.fullmatch(node.value)
        ):
            yield node.lineno, node.value


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


# (who: module-name patterns, may not import: package, except: module-name patterns)
RULES: list[tuple[tuple[str, ...], str, tuple[str, ...]]] = [
    (
        ("netoffload", "netoffload.*"),
        "netoffload.tunnel",
        (
            *("netoffload.tunnel", "netoffload.tunnel.*"),
            # the application's front ends: commands, the demo, the tunnel's benchmarks
            # (bench tunnel, bench flood) and its soak harness run the tunnel itself
            *("netoffload.cli", "netoffload.demo", "netoffload.bench.tunnel*"),
            *("netoffload.bench.flood", "netoffload.testing.soak"),
        ),
    ),
    (("netoffload.devices", "netoffload.devices.*"), "netoffload.testing", ()),
    *(
        ((f"netoffload.{low}", f"netoffload.{low}.*"), f"netoffload.{high}", ())
        for low in ("wire", "soft", "policy", "netns")
        for high in ("devices", "testing")
    ),
]


def violations(source: str, module: str, is_package: bool) -> list[str]:
    """One line per (source line, forbidden package) found."""
    found: dict[tuple[int, str], str] = {}
    for line, target in imported(source, module, is_package):
        for who, forbidden, exempt in RULES:
            if not any(fnmatchcase(module, p) for p in who):
                continue
            if any(fnmatchcase(module, p) for p in exempt):
                continue
            if within(target, forbidden):
                found.setdefault((line, forbidden), f"{module}:{line} imports {target}")
    return list(found.values())


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_modules_found() -> None:
    names = {module_name(p) for p in MODULES}
    assert {"netoffload", "netoffload.sa", "netoffload.devices.tun", "netoffload.cli"} <= names


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_layering(path: Path) -> None:
    module = module_name(path)
    found = violations(path.read_text(), module, path.name == "__init__.py")
    assert not found, "\n".join(found)


# ------------------------------------------------------- the checker itself


@pytest.mark.parametrize(
    ("module", "is_package", "source"),
    [
        ("netoffload.soft.crypto", False, "from netoffload.tunnel.sa import x"),
        ("netoffload.soft.crypto", False, "import netoffload.tunnel"),
        ("netoffload.soft.crypto", False, "from netoffload import tunnel"),
        ("netoffload.soft.crypto", False, "from ..tunnel import sa"),
        ("netoffload.soft", True, "from ..tunnel.sa import x"),
        ("netoffload.engine", False, "from .tunnel import sa"),
        ("netoffload.engine", False, "def f():\n    import netoffload.tunnel.peer\n"),
        ("netoffload.engine", False, "M = ['netoffload.tunnel.peer']"),
        ("netoffload.bench.crypto", False, "from netoffload.tunnel import x"),
        ("netoffload.wire.esp", False, "from netoffload.devices import tun"),
        ("netoffload.policy.base", False, "from ..testing.netns import Testbed"),
        ("netoffload.soft", True, "from netoffload import testing"),
        ("netoffload.devices.tun", False, "from netoffload.testing.netns import Netns"),
        ("netoffload.devices.udp", False, "def f():\n    from ..testing import netns\n"),
        ("netoffload.devices", True, "from netoffload.testing import netns"),
        ("netoffload.netns", False, "from netoffload.devices import kernel_common"),
        ("netoffload.netns", False, "from .testing.netns import Testbed"),
    ],
)
def test_checker_catches(module: str, is_package: bool, source: str) -> None:
    assert violations(source, module, is_package)


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("netoffload.cli", "from netoffload.tunnel import up"),
        ("netoffload.demo", "import netoffload.tunnel.peer"),
        ("netoffload.bench.tunnel_rate", "from netoffload.tunnel import peer"),
        ("netoffload.tunnel.peer", "from netoffload.tunnel.sa import x"),
        ("netoffload.tunnel.peer", "from . import keys"),
        ("netoffload.soft.crypto", "from netoffload.sa import x"),
        ("netoffload.soft.crypto", "from netoffload.tunnelx import x"),
        ("netoffload.devices.tun", "from netoffload.netns import Netns"),
        ("netoffload.devices.tun", "from ..netns import Netns"),
        ("netoffload.testing.netns", "from netoffload.devices import kernel_common"),
        ("netoffload.testing.netns", "from netoffload.netns import Netns"),
        ("netoffload.engine", "'''netoffload.tunnel is the application'''"),
    ],
)
def test_checker_allows(module: str, source: str) -> None:
    assert not violations(source, module, False)
