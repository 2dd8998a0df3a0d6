"""The command line: --help everywhere, bad arguments give one line and exit 2, caps --json."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from netoffload.caps import TaskOffloadBuffer
from netoffload.cli import COMMANDS, main


@pytest.mark.parametrize("argv", [["--help"], *([c, "--help"] for c in COMMANDS)])
def test_help_everywhere(argv: list[str], capsys: Any) -> None:
    with pytest.raises(SystemExit) as ei:
        main(argv)
    assert ei.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: netoffload") and "--help" in out
    if argv[0] != "--help":
        assert argv[0] in out.splitlines()[0]


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["nonsense"],
        ["caps", "--bogus"],
        ["pcap", "in.pcap", "out.pcap"],  # neither --tx nor --rx
        ["pcap", "--tx", "checksum", "--rx", "checksum", "a", "b"],  # both
        ["pcap", "--tx", "checksum", "only-one"],
        ["pcap", "--tx", "checksum", "a", "b", "--mss", "many"],
        ["demo", "--packets", "lots"],
        ["bench", "x", "y"],
    ],
)
def test_bad_arguments_one_line_exit_2(argv: list[str], capsys: Any) -> None:
    with pytest.raises(SystemExit) as ei:
        main(argv)
    assert ei.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("netoffload: error:"), err


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["caps", "--device", "no-such-device"], "unknown device 'no-such-device'"),
        (["bench", "no-such-bench"], "no-such-bench"),
        (["demo", "--policy", "no-such-policy"], "unknown policy"),
        (["pcap", "--rx", "encrypt", "a.pcap", "b.pcap"], "encrypt"),
    ],
)
def test_bad_values_one_line_exit_2(argv: list[str], needle: str, capsys: Any) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("netoffload: error:") and needle in err


def test_caps_json_parses(capsys: Any) -> None:
    assert main(["caps", "--json"]) == 0
    docs = json.loads(capsys.readouterr().out)
    assert isinstance(docs, list) and docs
    names = set()
    for d in docs:
        names.add(d["device"])
        if "unavailable" in d:
            assert isinstance(d["unavailable"], str)
            continue
        # each document is a task offload buffer that parses back and round trips
        buf = TaskOffloadBuffer.from_dict(d)
        assert buf.to_dict() == d
    assert "software" in names


@pytest.mark.parametrize("device", ["software", "loopback"])
def test_caps_one_device(device: str, capsys: Any) -> None:
    assert main(["caps", "--device", device, "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert isinstance(d, dict) and "checksum" in [r["task"] for r in d["records"]]
    assert main(["caps", "--device", device]) == 0
    assert "checksum" in capsys.readouterr().out


def test_console_script_no_traceback() -> None:
    """The installed entry point: a bad task is one line on stderr, exit 2, no traceback."""
    r = subprocess.run(
        [sys.executable, "-m", "netoffload", "pcap", "--tx", "bogus", "a.pcap", "b.pcap"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "unknown task 'bogus'" in r.stderr
    assert "Traceback" not in r.stderr
