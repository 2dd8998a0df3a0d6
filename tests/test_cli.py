"""The command line: --help everywhere, bad arguments give one line and exit 2, caps --json
(as root: the kernel devices work and report what the kernel really offers)."""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import socket
import struct
import subprocess
import sys
from typing import Any

import pytest

from netoffload.caps import TaskOffloadBuffer
from netoffload.cli import COMMANDS, main
from netoffload.testing import netns


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


# the kernel's own numbers (linux/if_tun.h, linux/udp.h, linux/if_packet.h,
# asm-generic/socket.h), independent of netoffload.devices
_TUNSETIFF, _TUNSETOFFLOAD, _TUNATTACHFILTER = 0x400454CA, 0x400454D0, 0x401054D5
_IFF_TUN, _IFF_NO_PI, _IFF_VNET_HDR = 0x0001, 0x1000, 0x4000
_TUN_F_CSUM, _TUN_F_TSO4, _TUN_F_TSO6, _TUN_F_USO4, _TUN_F_USO6 = 1, 2, 4, 0x20, 0x40
_SOL_UDP, _UDP_SEGMENT, _UDP_GRO = 17, 103, 104
_SOL_PACKET, _PACKET_VNET_HDR, _SO_ATTACH_FILTER = 263, 15, 26


def _accept_all_fprog() -> tuple[bytes, ctypes.Array[ctypes.c_char]]:
    """A struct sock_fprog of one instruction, ret #-1 (and the array it points to)."""
    insn = ctypes.create_string_buffer(struct.pack("HBBI", 0x06, 0, 0, 0xFFFFFFFF), 8)
    return struct.pack("HxxxxxxP", 1, ctypes.addressof(insn)), insn


def _works(fn: Any, *args: Any) -> bool:
    try:
        fn(*args)
        return True
    except OSError:
        return False


def _kernel_offers() -> dict[str, set[str]]:
    """What this kernel lets a TUN, a UDP socket and a packet socket do, asked
    directly with the kernel's ioctls and socket options (run inside a namespace)."""
    prog, _keep = _accept_all_fprog()
    out: dict[str, set[str]] = {}
    fd = os.open("/dev/net/tun", os.O_RDWR)
    try:
        ifr = struct.pack("16sH", b"nofcapsref0", _IFF_TUN | _IFF_NO_PI | _IFF_VNET_HDR)
        fcntl.ioctl(fd, _TUNSETIFF, ifr)
        tun: set[str] = set()
        if _works(fcntl.ioctl, fd, _TUNSETOFFLOAD, _TUN_F_CSUM):
            tun.add("checksum")
        if _works(fcntl.ioctl, fd, _TUNSETOFFLOAD, _TUN_F_CSUM | _TUN_F_TSO4 | _TUN_F_TSO6):
            tun |= {"tcp-segment", "tcp-assemble"}
        if _works(fcntl.ioctl, fd, _TUNSETOFFLOAD, _TUN_F_CSUM | _TUN_F_USO4 | _TUN_F_USO6):
            tun |= {"udp-segment", "udp-assemble"}
        if _works(fcntl.ioctl, fd, _TUNATTACHFILTER, prog):
            tun.add("dos-filter")
        out["tun"] = tun
    finally:
        os.close(fd)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        udp = {"checksum"}  # the kernel computes and checks UDP checksums itself
        if _works(s.getsockopt, _SOL_UDP, _UDP_SEGMENT):
            udp.add("udp-segment")
        if _works(s.setsockopt, _SOL_UDP, _UDP_GRO, 1):
            udp.add("udp-assemble")
        if _works(s.setsockopt, socket.SOL_SOCKET, _SO_ATTACH_FILTER, prog):
            udp.add("dos-filter")
        out["udp"] = udp
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003)) as s:
        pkt: set[str] = set()
        if _works(s.setsockopt, _SOL_PACKET, _PACKET_VNET_HDR, 1):
            pkt |= {"checksum", "tcp-segment", "udp-segment", "tcp-assemble"}
        if _works(s.setsockopt, socket.SOL_SOCKET, _SO_ATTACH_FILTER, prog):
            pkt.add("dos-filter")
        out["packet"] = pkt
    return out


@pytest.mark.kernel
def test_caps_kernel_devices_work_as_root(capsys: Any) -> None:
    """As root, `caps --json` shows the TUN, UDP and packet-socket devices available,
    each with the tasks this kernel really lets it do, asked of the kernel directly
    in a namespace of the test's own. A kernel device that fails to open, or whose
    probe loses or invents a task, fails this test."""
    if os.geteuid() != 0:
        pytest.skip("not root")
    with netns.Testbed() as tb:
        want = tb.host("capsref").run(_kernel_offers)
    # what any Linux this project runs on gives (UDP_SEGMENT: 4.18 and later)
    assert {"checksum", "tcp-segment"} <= want["tun"] and "udp-segment" in want["udp"]
    assert main(["caps", "--json"]) == 0
    docs = {str(d["device"]).split(":")[0]: d for d in json.loads(capsys.readouterr().out)}
    for kind in ("tun", "udp", "packet"):
        d = docs.get(kind)
        assert d is not None, f"caps lists no {kind} device"
        assert "unavailable" not in d, f"{kind}: unavailable: {d['unavailable']}"
        got = {str(r["task"]) for r in d["records"]}
        assert got == want[kind], (
            f"{kind}: caps says {sorted(got)}, the kernel {sorted(want[kind])}"
        )


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
