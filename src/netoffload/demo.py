"""Placeholder: being written in this session (replaced before landing)."""

from __future__ import annotations

import argparse

from rich.console import Console

from netoffload.errors import ConfigError


def run_demo(args: argparse.Namespace, console: Console) -> int:
    raise ConfigError("'demo' is not built yet")
