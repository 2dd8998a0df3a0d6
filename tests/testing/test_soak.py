"""testing/soak: the summary's judgement of RSS and the command line (no tunnel run)."""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

import pytest

from netoffload.errors import ConfigError
from netoffload.testing import soak


def _side(name: str, rss: list[int], every: float = 10.0) -> soak.Side:
    proc: Any = types.SimpleNamespace(returncode=0)
    side = soak.Side(name, host=None, proc=proc, log=Path("/nonexistent"))  # type: ignore[arg-type]
    side.samples = [(k * every, v, {}) for k, v in enumerate(rss)]
    return side


def _summary(*sides: soak.Side) -> dict[str, Any]:
    return soak.summarize(list(sides), {}, 600.0, 120.0, 6.0, {})


def test_wandering_rss_is_no_growth() -> None:
    # 100 MB +-4 % between trims, no trend: the last sample happens to be a high one
    wander = [100_000_000 + (4_000_000 if k % 3 == 0 else -2_000_000) for k in range(61)]
    wander[12] = 96_000_000  # the sample right after the warm-up: a low one
    out = _summary(_side("a", wander))
    t = out["tunnels"]["a"]
    assert t["rss_growth_samples"] > soak.RSS_TARGET  # one sample against one: fails
    assert abs(t["rss_growth"]) < 0.01 and out["rss_growth_max"] < soak.RSS_TARGET


def test_a_leak_is_growth() -> None:
    leak = [100_000_000 + 250_000 * k for k in range(61)]  # +0.25 MB every 10 s
    out = _summary(_side("a", [100_000_000] * 61), _side("b", leak))
    assert out["tunnels"]["b"]["rss_growth"] > soak.RSS_TARGET
    assert out["tunnels"]["a"]["rss_growth"] == 0.0
    assert not out["ok"]


def test_up_options_after_a_double_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def fake(minutes: float, **kw: Any) -> dict[str, Any]:
        seen.update(kw, minutes=minutes)
        raise ConfigError("stop here")

    monkeypatch.setattr(soak, "soak", fake)
    assert soak.main(["5", "--every", "3", "--", "--workers", "1"]) == 2
    assert seen["minutes"] == 5.0 and seen["every"] == 3.0
    assert seen["extra"] == ["--workers", "1"]
