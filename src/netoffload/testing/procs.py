"""Processes the tests, demo and benchmarks start (tunnels, wireguard-go, iperf3, ...)."""

from __future__ import annotations

import subprocess
from typing import Any


def stop_process(proc: subprocess.Popen[Any], timeout: float = 10.0) -> int | None:
    """End ``proc``: SIGTERM (its clean-up runs), then SIGKILL after ``timeout`` s.
    Returns its exit status (None if even SIGKILL did not reap it in 5 s)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                return None
    return proc.returncode
