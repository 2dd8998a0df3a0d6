"""bench/tunnel.py in its --quick form, run whole: every row gives a figure or says
why it was skipped. Figures are never asserted here (speed is the benchmark's
business, measured side by side, not a test's)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from netoffload.bench import tunnel as bt
from netoffload.testing import netns

pytestmark = pytest.mark.kernel


def test_quick_bench_every_row_has_a_figure_or_a_reason(tmp_path: Path) -> None:
    reason = netns.tun_available()
    if reason:
        pytest.skip(reason)
    out = tmp_path / "tunnel.json"
    r = subprocess.run(
        [sys.executable, "-m", "netoffload", "bench", "tunnel", "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert doc["bench"] == "tunnel"
    metrics = doc["metrics"]
    text = r.stdout
    for row in bt.ROWS:
        figure = metrics[f"gbit_s_{row.replace('-', '_')}"]
        if isinstance(figure, float) and not math.isnan(figure) and figure > 0:
            continue
        # no figure: the run must have said why (a note "ROW: skipped: ...")
        assert f"{row}: skipped:" in text, f"row {row} has neither a figure nor a reason"
    for name in (
        "tunnel_vs_best_peer",
        "tunnel_vs_wireguard_go",
        "tunnel_offload_ratio",
        "tunnel_cpu_per_gbit_vs_wireguard_go",
        "tunnel_ping_p99_vs_wireguard_go",
        "tunnel_adaptive_vs_best_static",
        "tunnel_vs_veth",
        "interop_vs_wireguard_go",
    ):
        assert name in metrics
    assert (tmp_path / "tunnel.png").exists()
    assert not netns.cleanup_stale()  # nothing left behind
