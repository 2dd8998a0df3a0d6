"""``netoffload show --watch`` (tunnel/watch.py): the live view of the status file.

Without root the status files are those of two in-process tunnels (tunnel/loop.py)
after real traffic, written to a temporary state directory; the command runs as a
separate process (``--count N``, and under a pseudo-terminal ended by SIGINT, as
Ctrl-C does). As root: the view of a tunnel that talks to wireguard-go.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from netoffload.tunnel import commands
from netoffload.tunnel.watch import WatchView

from .test_metrics import _pair, _traffic

_RUN = (
    "import sys; from pathlib import Path; import netoffload.tunnel.commands as c; "
    "c.STATE_DIR = Path(sys.argv[1]); from netoffload.cli import main; "
    "raise SystemExit(main(sys.argv[2:]))"
)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(PYTHONIOENCODING="utf-8", COLUMNS="200", LINES="80", TERM="xterm-256color")
    env.pop("NO_COLOR", None)
    return env


def _states(tmp_path: Path) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    w, a, b = _pair()
    _traffic(a, b, w)
    state = tmp_path / "state"
    state.mkdir()
    docs = []
    for t in (a, b):
        doc = t.status()
        (state / f"{t.name}.status.json").write_text(json.dumps(doc, default=str))
        docs.append(json.loads(json.dumps(doc, default=str)))
    return state, docs[0], docs[1]


def _show(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _RUN, str(state), "show", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(),
    )


def _row(out: str, task: str, side: str) -> list[str]:
    """The cells of ``task``'s row in the ``side`` table of ``out``."""
    block = out[out.index(f" {side}: per task") :]
    for line in block.splitlines():
        cells = [c.strip() for c in re.split(r"[│|┃]", line)]
        if len(cells) > 3 and cells[1] == task:
            return cells[1:-1]
    raise AssertionError(f"no row for {task} in the {side} table:\n{block}")


def test_count_prints_peers_and_task_rows_of_the_status_file(tmp_path: Path) -> None:
    state, da, db = _states(tmp_path)
    r = _show(state, "--watch", "lta", "--count", "2", "--interval", "0.05")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    (peer,) = da["peers"]
    assert peer["public_key"] in out
    assert "lta transmit: per task" in out and "lta receive: per task" in out
    for side in ("transmit", "receive"):
        for task, c in da[side]["tasks"].items():
            cells = _row(out, task, side)
            assert cells[1:3] == [str(c["offloaded"]), str(c["software"])], (task, cells)
            assert cells[5:7] == [str(c["dropped"]), str(c["errors"])], (task, cells)
    assert "refresh 2," in out and "refresh 3," not in out
    # without IFACE: every running interface
    r = _show(state, "--watch", "--count", "1")
    assert r.returncode == 0, r.stderr
    assert "interface lta" in r.stdout and "interface ltb" in r.stdout
    assert db["peers"][0]["public_key"] in r.stdout
    # the drops by reason of b's junk
    reasons = db["receive"]["tasks"]["dos-filter"]["reasons"]
    assert reasons and all(f"{k} {v}" in r.stdout for k, v in reasons.items())


def test_ctrl_c_under_a_terminal_ends_it_with_exit_0(tmp_path: Path) -> None:
    state, da, _ = _states(tmp_path)
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 80, 200, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-c", _RUN, str(state), "show", "--watch", "lta", "--interval", "0.1"],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=_env(),
        start_new_session=True,
    )
    os.close(slave)
    got = b""
    key = da["peers"][0]["public_key"].encode()
    try:
        deadline = time.monotonic() + 30
        while got.count(b"refresh ") < 3 and time.monotonic() < deadline:
            r, _, _ = select.select([master], [], [], 0.5)
            if r:
                with contextlib.suppress(OSError):
                    got += os.read(master, 65536)
        assert key in got and b"encrypt" in got, got[-2000:]
        assert b"\x1b[" in got, "no terminal control: not a live view"
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        rc = proc.wait(20)
        with contextlib.suppress(OSError):
            while select.select([master], [], [], 0.2)[0]:
                chunk = os.read(master, 65536)
                if not chunk:
                    break
                got += chunk
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        os.close(master)
    assert rc == 0
    assert b"Traceback" not in got and b"interrupted" not in got


@pytest.mark.parametrize(
    "args",
    [
        ["--watch", "--json"],
        ["--watch", "--count", "0"],
        ["--watch", "--interval", "0"],
        ["--watch", "--interval", "-1"],
        ["--watch", "--interval", "nan"],
        ["--count", "2"],
        ["--interval", "1"],
        ["--watch", "nosuchif9"],
        ["--watch", "--interval", "soon"],
    ],
)
def test_bad_arguments_are_one_line_exit_2(tmp_path: Path, args: list[str]) -> None:
    state = tmp_path / "state"
    state.mkdir()
    r = _show(state, *args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def _text(view: WatchView) -> str:
    buf = io.StringIO()
    Console(file=buf, width=200, color_system=None).print(view.render())
    return buf.getvalue()


def test_rates_between_status_files_stale_and_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state, da, _ = _states(tmp_path)
    monkeypatch.setattr(commands, "STATE_DIR", state)
    path = state / "lta.status.json"
    view = WatchView("lta", 1.0)
    doc = dict(da)
    peer = dict(doc["peers"][0])
    doc["uptime_s"], peer["rx_bytes"], peer["tx_bytes"] = 10.0, 1000, 0
    doc["peers"] = [peer]
    path.write_text(json.dumps(doc))
    assert "b/s" not in _text(view)  # one file: no rate yet
    doc["uptime_s"], peer["rx_bytes"], peer["tx_bytes"] = 12.0, 5000, 250_000
    path.write_text(json.dumps(doc))
    out = _text(view)
    # 4000 B in 2 s = 16 kb/s; 250 kB in 2 s = 1 Mb/s
    assert "(16.0 kb/s)" in out and "(1.0 Mb/s)" in out
    assert "stale" not in out
    old = time.time() - 60
    os.utime(path, (old, old))
    assert "stale" in _text(view)
    path.unlink()
    assert "lta: not running" in _text(view)


# ------------------------------------------------------------------ as root
@pytest.mark.kernel
def test_watch_of_a_tunnel_talking_to_wireguard_go(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("not root")
    from . import test_tunnel_interop as ti

    with ti.pair(tmp_path) as p:
        assert ti._ping(p.b, ti.GO_V4)
        time.sleep(1.2)  # a status file written after the ping
        r = subprocess.run(
            ["ip", "netns", "exec", p.b.name, sys.executable, "-m", "netoffload", "show",
             "--watch", p.name, "--count", "2", "--interval", "0.2"],
            capture_output=True, text=True, timeout=60, env=_env(),
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        out = r.stdout
        assert ti.keys.b64_encode(p.go.public_key()) in out
        assert "endpoint 198.18.0.1:51820" in out
        cells = _row(out, "encrypt", "transmit")
        assert int(cells[1]) + int(cells[2]) >= 3, cells
        cells = _row(out, "decrypt", "receive")
        assert int(cells[1]) + int(cells[2]) >= 3, cells
        assert "cpu " in out
