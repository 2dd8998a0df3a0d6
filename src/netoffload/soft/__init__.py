"""Software fallbacks of the ten tasks: batch-vectorised, sans-IO.

Every task implements ``SoftTask.process(batch, sel)``: do the task for the
packets where ``sel`` is true, pass the others through untouched, and return
the batch (the same object when the task works in place; a new one, in the
same packet order, when it changes packet counts — each output packet keeps
the ``ext.origin`` of the input it came from). Malformed packets get
``ext.error`` set to a ``Reason``; nothing raises out of ``process``.

Task modules register a factory with ``register``; ``make_task`` builds one
from options (keys, rule tables, ...) given as keyword arguments.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from netoffload.batch import Batch, Mask
from netoffload.errors import ConfigError
from netoffload.plugins import ModuleSet
from netoffload.tasks import Task


class SoftTask(abc.ABC):
    """The software implementation of one task."""

    task: Task
    #: The task keeps state across batches that host and device cannot share,
    #: and has no ``prepare`` / ``settle`` to keep it on the host: the engine runs
    #: it on the host only (state on a device would fork, or be lost with it).
    #: Tasks with such state should rather keep it on the host through
    #: ``prepare`` / ``settle`` (the DoS filter, decryption) and so still offload.
    keeps_state: bool = False

    @abc.abstractmethod
    def process(self, batch: Batch, sel: Mask) -> Batch:
        """Do the task for ``sel`` packets; see the module docstring."""

    def prepare(self, batch: Batch, sel: Mask) -> None:
        """Host-side step run by the engine before it splits ``sel`` packets between
        paths, in packet order: state that must not fork between host and device
        (e.g. ESP sequence numbers) is assigned into the extension here, so that
        whichever path then does the task uses it. Must be idempotent."""

    def settle(self, batch: Batch, sel: Mask) -> None:
        """Host-side step run by the engine after a path (host or device) has done
        the task for ``sel`` packets, before any later task sees them: host state
        that the paths must share (e.g. the anti-replay window) is brought up to
        date from the packets' results, and packets may still be failed here. A
        device trip ends with a task that has this step."""

    def bind(self, library: SoftLibrary) -> None:
        """Called when the task joins ``library`` (and again when another task
        does): a task that reads another's host state finds it here (the DoS
        filter's replay pre-check reads the decrypt task's authenticated windows)."""

    @property
    def has_settle(self) -> bool:
        """Whether this task has a host-side ``settle`` step."""
        return type(self).settle is not SoftTask.settle

    @property
    def has_prepare(self) -> bool:
        """Whether this task has a host-side ``prepare`` step."""
        return type(self).prepare is not SoftTask.prepare

    def describe(self) -> dict[str, object]:
        return {"task": self.task.kebab}


Factory = Callable[..., SoftTask]
_FACTORIES: dict[Task, Factory] = {}

#: modules that register soft tasks on import (a missing module is skipped)
_MODULES = (
    "netoffload.soft.checksum",
    "netoffload.soft.segment",
    "netoffload.soft.assemble",
    "netoffload.soft.crypto",
    "netoffload.soft.digest",
    "netoffload.soft.classify",
    "netoffload.soft.dos",
)
_PLUGINS = ModuleSet(_MODULES)


def register(task: Task, factory: Factory) -> None:
    _FACTORIES[task] = factory


def _load() -> None:
    _PLUGINS.load()


def available() -> Task:
    _load()
    out = Task(0)
    for t in _FACTORIES:
        out |= t
    return out


def make_task(task: Task, **options: Any) -> SoftTask:
    _load()
    f = _FACTORIES.get(task)
    if f is None:
        raise ConfigError(f"task {task.kebab!r} has no software implementation yet")
    return f(**options)


class SoftLibrary:
    """The software tasks an engine or device falls back to, built once."""

    def __init__(self, tasks: Mapping[Task, SoftTask] | None = None) -> None:
        self._tasks: dict[Task, SoftTask] = dict(tasks or {})
        self._bind()

    def _bind(self) -> None:
        for st in self._tasks.values():
            st.bind(self)

    @classmethod
    def build(
        cls, tasks: Iterable[Task], options: Mapping[Task, Mapping[str, Any]] | None = None
    ) -> SoftLibrary:
        opts = options or {}
        return cls({t: make_task(t, **dict(opts.get(t, {}))) for t in tasks})

    def __contains__(self, task: Task) -> bool:
        return task in self._tasks

    def __getitem__(self, task: Task) -> SoftTask:
        st = self._tasks.get(task)
        if st is None:
            raise ConfigError(f"no software implementation configured for {task.kebab!r}")
        return st

    def add(self, st: SoftTask) -> None:
        self._tasks[st.task] = st
        self._bind()

    @property
    def tasks(self) -> Task:
        out = Task(0)
        for t in self._tasks:
            out |= t
        return out
