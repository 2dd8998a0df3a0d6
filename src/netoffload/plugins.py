"""Import-once module sets: how tasks, devices and benchmarks register themselves.

Each registry (soft tasks, devices, benchmarks) names the modules that register
into it on import; ``ModuleSet.load()`` imports them the first time it is asked,
so that listing a registry never pays for more than one import of each module.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence


class ModuleSet:
    def __init__(self, modules: Sequence[str]) -> None:
        self.modules = tuple(modules)
        self._loaded = False

    def load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for m in self.modules:
            importlib.import_module(m)
