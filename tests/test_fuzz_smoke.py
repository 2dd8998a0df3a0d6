"""A short run of every fuzz target (fuzz/targets.py) under atheris: fails on a
crash or a hang, with the fuzzer's report in the message.

Each target gets ``smoke_runs`` executions (10,000 for most; fewer for the slow
ones so that the whole file stays near a minute and a half on two cores:
esp-decrypt 5,000, handshake and bpf-compiler 3,000, datapath 1,500 — see
``TARGETS``). The long runs (10^6 executions and more) are ``scripts/fuzz.sh``'s.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fuzz.targets import TARGETS  # noqa: E402

pytest.importorskip("atheris", reason="atheris is not installed (the [test] extra has it)")


def _fuzz(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fuzz", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )


@pytest.mark.parametrize("name", list(TARGETS))
def test_fuzz_target_smoke(name: str, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    seeds = _fuzz("seeds", name, str(corpus), timeout=120)
    assert seeds.returncode == 0, seeds.stderr
    assert any(corpus.iterdir()), f"{name}: no seeds were built"
    runs = TARGETS[name].smoke_runs
    r = _fuzz(
        "run",
        name,
        str(corpus),
        f"-runs={runs}",
        "-seed=1",
        "-timeout=30",
        "-print_final_stats=1",
        f"-artifact_prefix={tmp_path}/",
        timeout=600,
    )
    report = r.stderr[-4000:]
    assert r.returncode == 0, f"{name}: crash or hang\n{report}"
    done = [x for x in r.stderr.splitlines() if x.startswith("stat::number_of_executed_units")]
    assert done and int(done[-1].split()[-1]) >= runs, report
