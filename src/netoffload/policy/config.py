"""Policies from configuration: a spec string on the command line, or a file.

A *spec* names a registered policy, optionally with parameters of its
constructor::

    adaptive
    adaptive:period=0.5,step=1.2,bounds=0.8/1.25
    threshold+failover:load_on=0.9,load_off=0.5,backoff=1.0

``NAME+failover`` wraps the policy in ``Failover``; ``backoff`` and
``max_backoff`` are its parameters, every other key is the inner policy's. A
tuple parameter (``bounds``) is written ``lo/hi``.

A *policy file* (TOML if it ends in ``.toml``, else JSON) holds a ``policy``
table with the same: ``name``, optionally ``failover`` (true, or a table with
``backoff`` / ``max_backoff``), and the parameters as keys::

    [policy]
    name = "adaptive"
    failover = { backoff = 1.0 }
    period = 0.5
    bounds = [0.8, 1.25]

Anything wrong -- an unknown policy or parameter, a value of the wrong kind, a
value the policy refuses -- raises ``ConfigError`` naming it. The result is a
factory (an engine needs a policy of its own: the demo makes one per direction),
checked by building one policy up front.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from pathlib import Path

from netoffload.configfile import read_document
from netoffload.errors import ConfigError
from netoffload.policy.base import _REGISTRY, Policy, policy_names
from netoffload.policy.failover import Failover

PolicyFactory = Callable[[], Policy]
FAILOVER = "+failover"


def _parameters(factory: Callable[..., Policy]) -> dict[str, inspect.Parameter]:
    """The keyword parameters of ``factory`` that have defaults (what may be set)."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):  # pragma: no cover - builtins only
        return {}
    return {
        k: p
        for k, p in sig.parameters.items()
        if p.default is not inspect.Parameter.empty
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and k != "inner"
    }


def _value(raw: object, default: object, where: str) -> object:
    """``raw`` (a string from a spec, or a TOML/JSON value) as the kind of ``default``."""
    try:
        if isinstance(default, bool):
            if isinstance(raw, bool):
                return raw
            if isinstance(raw, str) and raw.lower() in ("true", "false", "yes", "no", "1", "0"):
                return raw.lower() in ("true", "yes", "1")
            raise ValueError("not a boolean")
        if isinstance(default, int):
            if isinstance(raw, str) and raw.strip().lstrip("+-").isdigit():
                return int(raw.strip())
            if isinstance(raw, int) and not isinstance(raw, bool):
                return raw
            if isinstance(raw, float) and raw.is_integer():
                return int(raw)
            raise ValueError("not an integer")
        if isinstance(default, float):
            if isinstance(raw, bool) or not isinstance(raw, str | int | float):
                raise ValueError("not a number")
            try:
                v = float(raw)
            except ValueError:
                raise ValueError("not a number") from None
            if not math.isfinite(v):
                raise ValueError("not a finite number")
            return v
        if isinstance(default, tuple):
            items = raw.split("/") if isinstance(raw, str) else raw
            if not isinstance(items, list | tuple) or len(items) != len(default):
                raise ValueError(f"needs {len(default)} values")
            return tuple(_value(x, d, where) for x, d in zip(items, default, strict=True))
        if isinstance(default, str):
            if not isinstance(raw, str):
                raise ValueError("not a string")
            return raw
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {raw!r}: {e}") from None
    raise ConfigError(f"{where}: cannot be set from configuration")


def _bind(
    factory: Callable[..., Policy], params: Mapping[str, object], what: str, where: str
) -> dict[str, object]:
    allowed = _parameters(factory)
    out: dict[str, object] = {}
    for k, raw in params.items():
        p = allowed.get(k)
        if p is None:
            known = ", ".join(sorted(allowed)) or "none"
            raise ConfigError(f"{where}: {what} has no parameter {k!r} (known: {known})")
        out[k] = _value(raw, p.default, f"{where}: {what} {k}")
    return out


def policy_factory(
    name: str,
    params: Mapping[str, object] | None = None,
    failover: Mapping[str, object] | bool = False,
    where: str = "policy",
) -> PolicyFactory:
    """A factory of the registered policy ``name`` (``NAME+failover`` allowed) with
    ``params`` for its constructor; ``failover`` wraps it (a mapping: Failover's
    parameters). Builds one policy to check everything (ConfigError if wrong)."""
    params = dict(params or {})
    base = name.strip()
    fo: dict[str, object] = {}
    if base.endswith(FAILOVER):
        base = base[: -len(FAILOVER)]
        failover = failover or True
        for k in _parameters(Failover):  # the wrapper's own parameters
            if k in params:
                fo[k] = params.pop(k)
    if isinstance(failover, Mapping):
        fo.update(failover)
    inner = _REGISTRY.get(base)
    if inner is None:
        raise ConfigError(f"{where}: unknown policy {name!r} (known: {', '.join(policy_names())})")
    kw = _bind(inner, params, f"policy {base!r}", where)
    fkw = _bind(Failover, fo, "failover", where) if failover else {}

    def make() -> Policy:
        p = inner(**kw)
        return Failover(p, **fkw) if failover else p  # type: ignore[arg-type]

    try:
        make()
    except ConfigError as e:  # a value the policy refuses
        raise ConfigError(f"{where}: {e}") from None
    except TypeError as e:  # a registered factory that takes no parameters
        raise ConfigError(f"{where}: policy {base!r}: {e}") from None
    return make


def parse_policy_spec(spec: str) -> PolicyFactory:
    """``NAME[:key=value,...]`` (see the module docstring) to a policy factory."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError("policy: empty policy spec")
    name, _, rest = spec.partition(":")
    params: dict[str, object] = {}
    where = f"policy {spec!r}"
    for item in rest.split(",") if rest.strip() else []:
        k, eq, v = item.partition("=")
        k = k.strip()
        if not eq or not k:
            raise ConfigError(f"{where}: {item!r} is not key=value")
        if k in params:
            raise ConfigError(f"{where}: {k!r} given twice")
        params[k] = v.strip()
    return policy_factory(name, params, where=where)


def policy_from_doc(doc: object, where: str = "policy file") -> PolicyFactory:
    """The ``policy`` table of a parsed policy file to a policy factory."""
    if not isinstance(doc, Mapping) or not isinstance(doc.get("policy"), Mapping):
        raise ConfigError(f"{where}: needs a table 'policy' with a key 'name'")
    table = dict(doc["policy"])
    name = table.pop("name", None)
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{where}: policy.name must be a policy name")
    fo = table.pop("failover", False)
    if not isinstance(fo, bool | Mapping):
        raise ConfigError(f"{where}: policy.failover must be true/false or a table")
    return policy_factory(name, table, fo, where=where)


def load_policy_file(path: str | Path) -> PolicyFactory:
    """Read a policy file (TOML if it ends in .toml, else JSON)."""
    return policy_from_doc(read_document(path, "policy file"), f"policy file {str(path)!r}")


def policy_from_args(spec: str | None, file: str | Path | None, default: str) -> PolicyFactory:
    """The CLI's ``--policy SPEC`` or ``--policy-file FILE`` (not both), else ``default``."""
    if spec is not None and file is not None:
        raise ConfigError("give --policy or --policy-file, not both")
    if file is not None:
        return load_policy_file(file)
    return parse_policy_spec(default if spec is None else spec)


def policy_from_namespace(args: object, default: str) -> PolicyFactory:
    """``policy_from_args`` of a parsed command line (``policy``, ``policy_file``)."""
    return policy_from_args(
        getattr(args, "policy", None),
        getattr(args, "policy_file", None),
        getattr(args, "policy_default", default),
    )
