"""Reading the project's configuration files (SA, rules, policy): TOML or JSON."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from netoffload.errors import ConfigError


def read_document(path: str | Path, what: str, default: str = "json") -> Any:
    """The parsed document of the ``what`` file at ``path``: TOML for a ``.toml``
    name, JSON for ``.json``, else ``default`` ("toml" or "json"). A file that
    cannot be read or parsed is a ConfigError naming it."""
    p = Path(path)
    where = f"{what} {str(p)!r}"
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise ConfigError(f"{where}: cannot read: {e.strerror or e}") from None
    suffix = p.suffix.lower()
    fmt = "toml" if suffix == ".toml" else "json" if suffix == ".json" else default
    return parse_document(raw, where, fmt)


def parse_document(raw: bytes, where: str, fmt: str) -> Any:
    """The parsed document of ``raw`` (UTF-8 text; ``fmt`` "toml" or "json"); bytes
    that are not such a document are a ConfigError starting with ``where``: also
    arrays or tables nested too deeply for the parsers (RecursionError) and
    integers longer than Python converts (ValueError)."""
    try:
        text = raw.decode("utf-8")
        return tomllib.loads(text) if fmt == "toml" else json.loads(text)
    except ValueError as e:  # UnicodeDecodeError, JSONDecodeError, TOMLDecodeError
        raise ConfigError(f"{where}: not valid {fmt.upper()}: {e}") from None
    except RecursionError:
        raise ConfigError(f"{where}: not valid {fmt.upper()}: nested too deeply") from None
