"""Benchmark plots: the metrics panel, plus one panel per series group."""

from __future__ import annotations

import struct
from pathlib import Path

from netoffload.bench import BenchResult
from netoffload.bench.runner import _plot


def _png_width(path: Path) -> int:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return int(struct.unpack(">I", head[16:20])[0])


def test_series_groups_get_panels_of_their_own(tmp_path: Path) -> None:
    pts = [(0.0, 1.0), (1.0, 2.0)]
    widths = []
    for series in (
        {},
        {"a": pts, "b": pts},  # one panel: the bench's
        {"kpps|a": pts, "kpps|b": pts, "ms|a": pts, "cpu|a": pts},  # three
    ):
        res = BenchResult(metrics={"m": 1.0}, targets={"m": (">=", 0.5)}, series=series)
        out = tmp_path / f"p{len(widths)}.png"
        _plot("x", res, out)
        widths.append(_png_width(out))
    assert widths[0] < widths[1] < widths[2]
