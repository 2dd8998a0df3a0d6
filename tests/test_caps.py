"""Task offload buffer: round trips (JSON, binary), enable rules, corrupt binary buffers."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netoffload.caps import (
    FORMAT_VERSION,
    MAGIC,
    CapRecord,
    Enabled,
    TaskOffloadBuffer,
)
from netoffload.errors import BufferFormatError, CapabilityError, ConfigError
from netoffload.tasks import ALL_TASKS, Task

U32 = 0xFFFFFFFF
names = st.lists(st.text(max_size=12), max_size=4, unique=True).map(tuple)
IPV_SETS = [frozenset({4}), frozenset({6}), frozenset({4, 6})]
ipvs = st.sampled_from(IPV_SETS)


@st.composite
def cap_records(draw: st.DrawFn, task: Task | None = None) -> CapRecord:
    t = task if task is not None else draw(st.sampled_from(ALL_TASKS))
    lo = draw(st.integers(0, 0xFFFF))
    hi = draw(st.integers(lo, 0xFFFF))
    return CapRecord(
        task=t,
        ip_versions=draw(ipvs | st.just(frozenset())),
        max_offload_size=draw(st.integers(0, U32)),
        min_segments=lo,
        max_segments=hi,
        algorithms=draw(names),
        max_rules=draw(st.integers(0, U32)),
        features=draw(names),
    )


@st.composite
def enabled_within(draw: st.DrawFn, rec: CapRecord) -> Enabled:
    """An Enabled that the record allows."""
    ipv = draw(st.sampled_from([s for s in IPV_SETS if s <= rec.ip_versions]))
    return Enabled(
        task=rec.task,
        ip_versions=ipv,
        max_offload_size=draw(st.integers(0, rec.max_offload_size)),
        max_segments=draw(st.integers(rec.min_segments, rec.max_segments)),
        algorithms=tuple(draw(st.lists(st.sampled_from(rec.algorithms), unique=True)))
        if rec.algorithms
        else (),
        rules=draw(st.integers(0, rec.max_rules)),
        features=tuple(draw(st.lists(st.sampled_from(rec.features), unique=True)))
        if rec.features
        else (),
    )


@st.composite
def buffers(draw: st.DrawFn) -> TaskOffloadBuffer:
    tasks = draw(st.lists(st.sampled_from(ALL_TASKS), unique=True, max_size=10))
    recs = {t: draw(cap_records(t)) for t in tasks}
    buf = TaskOffloadBuffer(draw(st.text(max_size=20)), recs, {})
    ens = []
    for r in recs.values():
        if r.ip_versions and draw(st.booleans()):
            ens.append(draw(enabled_within(r)))
    return buf.enable(*ens)


def same(a: TaskOffloadBuffer, b: TaskOffloadBuffer) -> bool:
    return (
        a.device == b.device
        and dict(a.records) == dict(b.records)
        and dict(a.enabled) == dict(b.enabled)
    )


# ------------------------------------------------------------------ round trips
@given(cap_records())
def test_cap_record_round_trip(rec: CapRecord) -> None:
    assert CapRecord.from_dict(rec.to_dict()) == rec
    assert CapRecord.from_dict(json.loads(json.dumps(rec.to_dict()))) == rec


@given(cap_records().filter(lambda r: bool(r.ip_versions)).flatmap(enabled_within))
def test_enabled_round_trip(en: Enabled) -> None:
    assert Enabled.from_dict(json.loads(json.dumps(en.to_dict()))) == en


@given(buffers())
def test_buffer_round_trips_json_and_binary(buf: TaskOffloadBuffer) -> None:
    assert same(TaskOffloadBuffer.from_json(buf.to_json()), buf)
    raw = buf.to_bytes()
    assert raw[:4] == MAGIC and raw[4] == FORMAT_VERSION
    back = TaskOffloadBuffer.from_bytes(raw)
    assert same(back, buf)
    assert back.to_bytes() == raw
    assert back.supported == buf.supported and back.enabled_tasks == buf.enabled_tasks


def test_binary_layout_by_hand() -> None:
    """The chain as the module docstring describes it, packed independently."""
    rec = CapRecord(Task.DIGEST, frozenset({4}), 9000, 1, 1, ("crc32c",), 0, ())
    buf = TaskOffloadBuffer("nic0", {Task.DIGEST: rec, Task.CHECKSUM: CapRecord(Task.CHECKSUM)})
    buf = buf.enable(Task.CHECKSUM)
    raw = buf.to_bytes()
    head = MAGIC + bytes([1, 4]) + b"nic0" + bytes([2])  # two records
    assert raw.startswith(head)
    off = len(head)
    ver, length, tid, nxt = struct.unpack_from("!BHBI", raw, off)
    assert (ver, tid) == (1, Task.CHECKSUM.index)
    assert nxt == off + 8 + length
    ver2, length2, tid2, nxt2 = struct.unpack_from("!BHBI", raw, nxt)
    assert (ver2, tid2, nxt2) == (1, Task.DIGEST.index, 0)
    assert nxt + 8 + length2 == len(raw)
    body = raw[nxt + 8 :]
    assert body[:13] == struct.pack("!BIHHI", 1, 9000, 1, 1, 0)
    assert body[13:] == bytes([1, 6]) + b"crc32c" + bytes([0]) + bytes([0])


def test_empty_buffer_round_trips() -> None:
    b = TaskOffloadBuffer("")
    assert same(TaskOffloadBuffer.from_bytes(b.to_bytes()), b)
    assert same(TaskOffloadBuffer.from_json(b.to_json()), b)


# ------------------------------------------------------------------ enabling
BASE = TaskOffloadBuffer(
    "nic7",
    {
        Task.TCP_SEGMENT: CapRecord(
            Task.TCP_SEGMENT, frozenset({4}), 16000, 2, 32, ("a",), 10, ("ecn",)
        )
    },
)


@pytest.mark.parametrize(
    "req, limit",
    [
        (Enabled(Task.UDP_SEGMENT), "not reported"),
        (Enabled(Task.TCP_SEGMENT, frozenset({6}), 1000, 4), "ip_versions"),
        (Enabled(Task.TCP_SEGMENT, frozenset(), 1000, 4), "no IP version"),
        (Enabled(Task.TCP_SEGMENT, frozenset({4}), 16001, 4), "max_offload_size 16001 > limit"),
        (Enabled(Task.TCP_SEGMENT, frozenset({4}), 1000, 1), "max_segments 1 outside [2, 32]"),
        (Enabled(Task.TCP_SEGMENT, frozenset({4}), 1000, 33), "max_segments 33"),
        (Enabled(Task.TCP_SEGMENT, frozenset({4}), 1000, 4, ("b",)), "algorithm 'b'"),
        (Enabled(Task.TCP_SEGMENT, frozenset({4}), 1000, 4, (), 11), "rules 11 > max_rules 10"),
        (Enabled(Task.TCP_SEGMENT, frozenset({4}), 1000, 4, (), 0, ("x",)), "feature 'x'"),
        (Enabled(Task.TCP_SEGMENT, frozenset({4}), -1, 4), "max_offload_size"),
        (Enabled(Task.TCP_SEGMENT, frozenset({4}), 1000, 4, (), -1), "rules"),
    ],
)
def test_bad_enable_names_device_task_limit(req: Enabled, limit: str) -> None:
    with pytest.raises(CapabilityError) as ei:
        BASE.enable(req)
    e = ei.value
    assert e.device == "nic7" and e.task == req.task.kebab and limit in e.limit
    assert "nic7" in str(e) and req.task.kebab in str(e)


def test_good_enable_and_disable() -> None:
    ok = BASE.enable(Enabled(Task.TCP_SEGMENT, frozenset({4}), 16000, 32, ("a",), 10, ("ecn",)))
    assert ok.enabled_tasks == Task.TCP_SEGMENT
    assert BASE.enabled_tasks == Task(0)  # buffers are values
    assert ok.disable(Task.TCP_SEGMENT).enabled_tasks == Task(0)
    with pytest.raises(CapabilityError, match="not reported"):
        BASE.default_enable(Task.CHECKSUM)


@given(buffers(), st.data())
def test_capable_matches_reference(buf: TaskOffloadBuffer, data: st.DataObject) -> None:
    n = data.draw(st.integers(0, 20))
    l3v = st.one_of(st.sampled_from([0, 4, 6]), st.integers(0, 255))
    l3 = np.array(data.draw(st.lists(l3v, min_size=n, max_size=n)), np.uint8)
    ln = np.array(data.draw(st.lists(st.integers(0, 1 << 20), min_size=n, max_size=n)), np.int64)
    for t in ALL_TASKS:
        got = buf.capable(t, l3, ln)
        en = buf.enabled.get(t)
        want = [
            en is not None and int(v) in en.ip_versions and int(x) <= en.max_offload_size
            for v, x in zip(l3, ln, strict=True)
        ]
        assert got.tolist() == want
        # the same for wider integer types, values out of range included
        wide = l3.astype(np.int64)
        if n:
            wide[0] = data.draw(st.sampled_from([-4, 256 + 4, 4]))
        want_wide = [
            en is not None and int(v) in en.ip_versions and int(x) <= en.max_offload_size
            for v, x in zip(wide, ln, strict=True)
        ]
        assert buf.capable(t, wide, ln).tolist() == want_wide  # type: ignore[arg-type]


def test_limits_of_the_binary_form() -> None:
    with pytest.raises(ConfigError, match="max_segments"):
        CapRecord(Task.TCP_SEGMENT, max_segments=0x10000)
    with pytest.raises(ConfigError, match="255 bytes"):
        TaskOffloadBuffer("é" * 200).to_bytes()
    with pytest.raises(ConfigError, match="too long"):
        TaskOffloadBuffer(
            "d", {Task.DIGEST: CapRecord(Task.DIGEST, algorithms=("a" * 256,))}
        ).to_bytes()


def test_bad_json() -> None:
    for text in ("{", "[1]", '{"records": []}', '{"device": "d", "records": [{"task": "nope"}]}'):
        with pytest.raises(ConfigError):
            TaskOffloadBuffer.from_json(text)
    # an enabled entry outside the records is a capability error naming it
    doc = {"device": "d", "records": [], "enabled": [{"task": "checksum"}]}
    with pytest.raises(CapabilityError, match="checksum"):
        TaskOffloadBuffer.from_json(json.dumps(doc))
    with pytest.raises(ConfigError):
        CapRecord(Task.CHECKSUM, min_segments=3, max_segments=2)
    with pytest.raises(ConfigError):
        CapRecord(Task.CHECKSUM, frozenset({5}))


# ------------------------------------------------------------------ corruption
def outcome(data: bytes) -> None:
    """A parse gives a buffer or a BufferFormatError with an offset inside the data."""
    try:
        buf = TaskOffloadBuffer.from_bytes(data)
    except BufferFormatError as e:
        assert 0 <= e.offset <= len(data), (e.offset, len(data))
        assert e.what == "task offload buffer" and str(e.offset) in str(e)
        return
    assert isinstance(buf, TaskOffloadBuffer)
    # whatever parsed is a consistent buffer: it serialises again and parses to itself
    assert same(TaskOffloadBuffer.from_bytes(buf.to_bytes()), buf)


def record_offsets(raw: bytes) -> list[int]:
    off = 7 + raw[5]  # magic, version, name length, name, record count
    out = []
    while off < len(raw):
        out.append(off)
        nxt = struct.unpack_from("!I", raw, off + 4)[0]
        if nxt == 0:
            break
        off = nxt
    return out


@settings(max_examples=200)
@given(buffers(), st.data())
def test_bit_flips(buf: TaskOffloadBuffer, data: st.DataObject) -> None:
    raw = bytearray(buf.to_bytes())
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] ^= 1 << data.draw(st.integers(0, 7))
    outcome(bytes(raw))


@settings(max_examples=200)
@given(buffers(), st.data())
def test_truncations_and_extensions(buf: TaskOffloadBuffer, data: st.DataObject) -> None:
    raw = buf.to_bytes()
    cut = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(BufferFormatError) as ei:
        TaskOffloadBuffer.from_bytes(raw[:cut])
    assert 0 <= ei.value.offset <= cut
    extra = data.draw(st.binary(min_size=1, max_size=20))
    outcome(raw + extra)


@settings(max_examples=200)
@given(buffers(), st.data())
def test_altered_lengths_and_offsets(buf: TaskOffloadBuffer, data: st.DataObject) -> None:
    raw = bytearray(buf.to_bytes())
    offs = record_offsets(bytes(raw))
    field = data.draw(st.sampled_from(["length", "next", "version", "task", "name_len"]))
    if field == "name_len" or not offs:
        raw[5] = data.draw(st.integers(0, 255))
    else:
        off = data.draw(st.sampled_from(offs))
        if field == "length":
            struct.pack_into("!H", raw, off + 1, data.draw(st.integers(0, 0xFFFF)))
        elif field == "next":
            struct.pack_into("!I", raw, off + 4, data.draw(st.integers(0, U32)))
        elif field == "version":
            raw[off] = data.draw(st.integers(0, 255))
        else:
            raw[off + 3] = data.draw(st.integers(0, 255))
    outcome(bytes(raw))


@settings(max_examples=200)
@given(st.binary(max_size=300))
def test_random_bytes(data: bytes) -> None:
    outcome(data)
    outcome(MAGIC + bytes([FORMAT_VERSION]) + data)


@settings(max_examples=200)
@given(buffers(), st.data())
def test_random_overwrites(buf: TaskOffloadBuffer, data: st.DataObject) -> None:
    raw = bytearray(buf.to_bytes())
    i = data.draw(st.integers(0, len(raw) - 1))
    chunk = data.draw(st.binary(min_size=1, max_size=12))
    raw[i : i + len(chunk)] = chunk
    outcome(bytes(raw))


def test_specific_errors() -> None:
    raw = BASE.enable(Task.TCP_SEGMENT).to_bytes()
    cases = [
        (b"XOTB" + raw[4:], 0, "magic"),
        (raw[:4] + b"\x09" + raw[5:], 4, "version"),
        (raw[:3], 3, "truncated"),
    ]
    off = record_offsets(raw)[0]
    bad_task = bytearray(raw)
    bad_task[off + 3] = 10
    cases.append((bytes(bad_task), off + 3, "unknown task id 10"))
    for data, at, what in cases:
        with pytest.raises(BufferFormatError, match=what) as ei:
            TaskOffloadBuffer.from_bytes(data)
        assert ei.value.offset == at
