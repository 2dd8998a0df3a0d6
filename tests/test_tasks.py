"""Tasks: the ten names, directions, parsing, stage order, Linux feature names (the kernel's)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netoffload.errors import ConfigError
from netoffload.tasks import (
    ALL_TASKS,
    RX_ORDER,
    TASK_INFO,
    TX_ORDER,
    Direction,
    Task,
    members_of,
    stage_order,
)

# DESIGN.md's table: name and direction of each of the ten tasks
DESIGN = {
    "checksum": Direction.BOTH,
    "encrypt": Direction.TX,
    "digest": Direction.BOTH,
    "tcp-segment": Direction.TX,
    "udp-segment": Direction.TX,
    "decrypt": Direction.RX,
    "tcp-assemble": Direction.RX,
    "udp-assemble": Direction.RX,
    "classify": Direction.BOTH,
    "dos-filter": Direction.RX,
}


def test_ten_tasks_names_and_directions() -> None:
    assert len(ALL_TASKS) == 10 and set(TASK_INFO) == set(ALL_TASKS)
    assert {t.kebab: t.direction for t in ALL_TASKS} == DESIGN
    assert [t.index for t in ALL_TASKS] == list(range(10))
    for t in ALL_TASKS:
        assert Task.from_index(t.index) is t
        assert Task.parse(t.kebab) is t
        assert t.kebab == t.kebab.lower() and " " not in t.kebab and "_" not in t.kebab


def test_stable_ids() -> None:
    # ids appear in binary forms: they must never change
    assert [t.kebab for t in ALL_TASKS] == [
        "checksum",
        "encrypt",
        "digest",
        "tcp-segment",
        "udp-segment",
        "decrypt",
        "tcp-assemble",
        "udp-assemble",
        "classify",
        "dos-filter",
    ]


@pytest.mark.parametrize(
    "text", ["", "nope", "checksum,", ",checksum", "checksum,,digest", "tcp_segment", "tso"]
)
def test_parse_errors_name_the_item(text: str) -> None:
    with pytest.raises(ConfigError, match="unknown task"):
        Task.parse_list(text)


def test_parse_is_lenient_about_case_and_spaces() -> None:
    assert Task.parse_list(" Checksum , TCP-SEGMENT") == Task.CHECKSUM | Task.TCP_SEGMENT


@given(st.lists(st.sampled_from(ALL_TASKS), unique=True))
def test_parse_list_round_trip(tasks: list[Task]) -> None:
    want = Task(0)
    for t in tasks:
        want |= t
    if tasks:
        assert Task.parse_list(",".join(t.kebab for t in tasks)) == want
    assert list(want.members()) == sorted(tasks, key=lambda t: t.index)


def test_index_of_a_set_and_bad_ids() -> None:
    with pytest.raises(ValueError):
        _ = (Task.CHECKSUM | Task.DIGEST).index
    with pytest.raises(ValueError):
        _ = Task(0).index
    for bad in (-1, 10, 99):
        with pytest.raises(ValueError):
            Task.from_index(bad)


@given(
    st.lists(st.sampled_from(ALL_TASKS), unique=True), st.sampled_from([Direction.TX, Direction.RX])
)
def test_stage_order(tasks: list[Task], d: Direction) -> None:
    wrong = sorted((t for t in tasks if not t.direction & d), key=lambda t: t.index)
    if wrong:
        with pytest.raises(ConfigError, match=wrong[0].kebab):
            stage_order(d, tasks)
        return
    order = stage_order(d, tasks)
    assert set(order) == set(tasks)
    ref = TX_ORDER if d is Direction.TX else RX_ORDER
    assert list(order) == [t for t in ref if t in tasks]


def test_every_task_has_a_stage_in_its_directions() -> None:
    for t in ALL_TASKS:
        assert (t in TX_ORDER) == bool(t.direction & Direction.TX)
        assert (t in RX_ORDER) == bool(t.direction & Direction.RX)


_FEATURES = textwrap.dedent(
    """
    import ctypes, fcntl, json, socket, struct
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    def call(buf):
        fcntl.ioctl(s.fileno(), 0x8946, struct.pack("16sP", b"lo", ctypes.addressof(buf)))
    info = ctypes.create_string_buffer(struct.pack("=IIQI", 0x37, 0, 1 << 4, 0))  # GSSET_INFO
    call(info)
    n = struct.unpack_from("=I", info.raw, 16)[0]
    gs = ctypes.create_string_buffer(struct.pack("=III", 0x1B, 4, n) + bytes(32 * n))
    call(gs)  # ETHTOOL_GSTRINGS of ETH_SS_FEATURES
    names = [gs.raw[12 + 32 * i : 44 + 32 * i].split(b"\\0")[0] for i in range(n)]
    print(json.dumps([x.decode() for x in names]))
    """
)


def test_linux_feature_names_are_the_kernels() -> None:
    """Every Linux feature name we map to is in the kernel's ETH_SS_FEATURES string set,
    read with SIOCETHTOOL on the loopback of a fresh network namespace."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) to read the kernel's feature names in a netns")
    out = subprocess.run(
        ["unshare", "-n", sys.executable, "-c", _FEATURES],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    kernel = set(json.loads(out.stdout))
    assert "tx-checksum-ip-generic" in kernel
    for t in ALL_TASKS:
        for name in TASK_INFO[t].linux_features:
            assert name in kernel, f"{t.kebab}: {name!r} is not a kernel feature name"


@given(st.integers(0, (1 << 16) - 1))
def test_members_are_the_set_bits_in_id_order(bits: int) -> None:
    # independent: the ids of the set bits below the ten tasks, one by one
    expect = [i for i in range(len(ALL_TASKS)) if bits >> i & 1]
    assert [t.index for t in Task(bits & 0x3FF).members()] == expect
    assert [t.index for t in members_of(bits)] == expect
    small = bits & 0x3FF
    assert members_of(small) is members_of(small)  # made once per set of the ten


def test_numpy_treats_the_enums_as_plain_ints() -> None:
    """Same results and dtypes as the int values, and no EnumType.__getattr__ on
    the way (the slow lookup of __array_ufunc__ that NUMPY_PLAIN avoids)."""
    import enum

    import numpy as np

    from netoffload.batch import CsumVerdict, FilterVerdict, GsoType, Reason, VnetFlag, XFlag
    from netoffload.soft.assemble import GroResult
    from netoffload.soft.replay import ReplayVerdict

    a = np.arange(64, dtype=np.uint16)
    members = [
        *ALL_TASKS,
        *XFlag,
        *VnetFlag,
        *GsoType,
        *CsumVerdict,
        *FilterVerdict,
        *Reason,
        *ReplayVerdict,
        *GroResult,
    ]

    def check() -> None:
        for m in members:
            v = int(m)
            for got, want in ((a & m, a & v), (a == m, a == v), (a | m, a | v)):
                assert np.array_equal(got, want)
            assert (a == m).dtype == np.bool_

    check()
    orig = getattr(enum.EnumType, "__getattr__", None)
    if orig is None:  # Python >= 3.12: no such hook, nothing slow to avoid
        return
    looked: list[str] = []

    def spy(cls: type, name: str) -> object:
        looked.append(name)
        return orig(cls, name)

    setattr(enum.EnumType, "__getattr__", spy)  # noqa: B010
    try:
        check()
    finally:
        setattr(enum.EnumType, "__getattr__", orig)  # noqa: B010
    assert "__array_ufunc__" not in looked
