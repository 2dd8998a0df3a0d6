"""Task offload buffer: what a device can do, and what is enabled now.

A device answers ``query()`` with a ``TaskOffloadBuffer``: one ``CapRecord``
per task it supports (IP versions, maximum offload size, segment counts,
algorithms, maximum rules, named features) and the ``Enabled`` settings in force.
Only what the device reported may be enabled, within its limits
(``TaskOffloadBuffer.enable``), else ``CapabilityError`` names device, task and limit.

Two serial forms: JSON (``to_json``/``from_json``) and a compact binary chain::

    buffer  := "NOTB" u8:version u8:name_len name u8:count  record[count]
    record  := u8:version u16:length u8:task_id u32:next  body[length]
    next    := absolute offset of the next record, 0 for the last

All integers big-endian. The record count makes a cut right after the header
detectable (without it, a buffer truncated there would read as a device with
no tasks). Parsing a corrupt or truncated chain raises
``BufferFormatError`` with the offset at fault.
"""

from __future__ import annotations

import functools
import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from netoffload.errors import BufferFormatError, CapabilityError, ConfigError
from netoffload.tasks import ALL_TASKS, Task

MAGIC = b"NOTB"
FORMAT_VERSION = 1
MAX_GSO_SIZE = 65535


def _ipv_bits(v: frozenset[int]) -> int:
    return (1 if 4 in v else 0) | (2 if 6 in v else 0)


def _ipv_set(bits: int) -> frozenset[int]:
    return frozenset(x for x, b in ((4, 1), (6, 2)) if bits & b)


@dataclass(frozen=True)
class CapRecord:
    """What a device can do for one task."""

    task: Task
    ip_versions: frozenset[int] = frozenset({4, 6})
    max_offload_size: int = MAX_GSO_SIZE  # largest packet (or super-packet) accepted
    min_segments: int = 1
    max_segments: int = 1
    algorithms: tuple[str, ...] = ()
    max_rules: int = 0
    features: tuple[str, ...] = ()  # named sub-features, e.g. "ecn", "partial", "verify"

    def __post_init__(self) -> None:
        if not self.ip_versions <= {4, 6}:
            raise ConfigError(f"{self.task.kebab}: ip_versions must be within {{4, 6}}")
        for name, top in (
            ("max_offload_size", 0xFFFFFFFF),
            ("min_segments", 0xFFFF),
            ("max_segments", 0xFFFF),
            ("max_rules", 0xFFFFFFFF),
        ):
            v = getattr(self, name)
            if not 0 <= v <= top:
                raise ConfigError(f"{self.task.kebab}: {name}={v} out of range 0..{top}")
        if self.min_segments > self.max_segments:
            raise ConfigError(f"{self.task.kebab}: min_segments > max_segments")

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task.kebab,
            "ip_versions": sorted(self.ip_versions),
            "max_offload_size": self.max_offload_size,
            "min_segments": self.min_segments,
            "max_segments": self.max_segments,
            "algorithms": list(self.algorithms),
            "max_rules": self.max_rules,
            "features": list(self.features),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CapRecord:
        try:
            return cls(
                task=Task.parse(str(d["task"])),
                ip_versions=frozenset(int(x) for x in d.get("ip_versions", (4, 6))),
                max_offload_size=int(d.get("max_offload_size", MAX_GSO_SIZE)),
                min_segments=int(d.get("min_segments", 1)),
                max_segments=int(d.get("max_segments", 1)),
                algorithms=tuple(str(x) for x in d.get("algorithms", ())),
                max_rules=int(d.get("max_rules", 0)),
                features=tuple(str(x) for x in d.get("features", ())),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"bad capability record {dict(d)!r}: {e}") from None


@dataclass(frozen=True)
class Enabled:
    """The settings a task is enabled with (a subset of its CapRecord)."""

    task: Task
    ip_versions: frozenset[int] = frozenset({4, 6})
    max_offload_size: int = MAX_GSO_SIZE
    max_segments: int = 1
    algorithms: tuple[str, ...] = ()
    rules: int = 0
    features: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task.kebab,
            "ip_versions": sorted(self.ip_versions),
            "max_offload_size": self.max_offload_size,
            "max_segments": self.max_segments,
            "algorithms": list(self.algorithms),
            "rules": self.rules,
            "features": list(self.features),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Enabled:
        try:
            return cls(
                task=Task.parse(str(d["task"])),
                ip_versions=frozenset(int(x) for x in d.get("ip_versions", (4, 6))),
                max_offload_size=int(d.get("max_offload_size", MAX_GSO_SIZE)),
                max_segments=int(d.get("max_segments", 1)),
                algorithms=tuple(str(x) for x in d.get("algorithms", ())),
                rules=int(d.get("rules", 0)),
                features=tuple(str(x) for x in d.get("features", ())),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"bad enabled entry {dict(d)!r}: {e}") from None


@dataclass(frozen=True)
class TaskOffloadBuffer:
    """A device's answer to ``query()``."""

    device: str
    records: Mapping[Task, CapRecord] = field(default_factory=dict)
    enabled: Mapping[Task, Enabled] = field(default_factory=dict)

    # a buffer is never changed (``enable`` makes a new one): these are worked out once
    @functools.cached_property
    def supported(self) -> Task:
        out = Task(0)
        for t in self.records:
            out |= t
        return out

    @functools.cached_property
    def enabled_tasks(self) -> Task:
        out = Task(0)
        for t in self.enabled:
            out |= t
        return out

    def record(self, task: Task) -> CapRecord | None:
        return self.records.get(task)

    # ------------------------------------------------------------ enabling
    def check(self, req: Enabled) -> None:
        """Raise CapabilityError unless ``req`` is within what was reported."""
        t = req.task
        rec = self.records.get(t)
        dev = self.device
        if rec is None:
            raise CapabilityError(dev, t.kebab, "task not reported by the device")
        if not req.ip_versions:
            raise CapabilityError(dev, t.kebab, "no IP version asked for")
        if not req.ip_versions <= rec.ip_versions:
            raise CapabilityError(
                dev,
                t.kebab,
                f"ip_versions {sorted(req.ip_versions)} not within {sorted(rec.ip_versions)}",
            )
        if req.max_offload_size < 0 or req.rules < 0:
            raise CapabilityError(
                dev,
                t.kebab,
                f"max_offload_size {req.max_offload_size} / rules {req.rules} must not be negative",
            )
        if req.max_offload_size > rec.max_offload_size:
            raise CapabilityError(
                dev,
                t.kebab,
                f"max_offload_size {req.max_offload_size} > limit {rec.max_offload_size}",
            )
        if not rec.min_segments <= req.max_segments <= rec.max_segments:
            raise CapabilityError(
                dev,
                t.kebab,
                f"max_segments {req.max_segments} outside [{rec.min_segments}, {rec.max_segments}]",
            )
        bad = [a for a in req.algorithms if a not in rec.algorithms]
        if bad:
            raise CapabilityError(
                dev, t.kebab, f"algorithm {bad[0]!r} not in {list(rec.algorithms)}"
            )
        if req.rules > rec.max_rules:
            raise CapabilityError(dev, t.kebab, f"rules {req.rules} > max_rules {rec.max_rules}")
        badf = [f for f in req.features if f not in rec.features]
        if badf:
            raise CapabilityError(dev, t.kebab, f"feature {badf[0]!r} not in {list(rec.features)}")

    def default_enable(self, task: Task) -> Enabled:
        """Everything the record allows."""
        rec = self.records.get(task)
        if rec is None:
            raise CapabilityError(self.device, task.kebab, "task not reported by the device")
        return Enabled(
            task=task,
            ip_versions=rec.ip_versions,
            max_offload_size=rec.max_offload_size,
            max_segments=rec.max_segments,
            algorithms=rec.algorithms,
            rules=rec.max_rules,
            features=rec.features,
        )

    def enable(self, *reqs: Enabled | Task) -> TaskOffloadBuffer:
        """A new buffer with these tasks enabled (checked against the records)."""
        en = dict(self.enabled)
        for r in reqs:
            req = self.default_enable(r) if isinstance(r, Task) else r
            self.check(req)
            en[req.task] = req
        return replace(self, enabled=en)

    def disable(self, tasks: Task) -> TaskOffloadBuffer:
        return replace(self, enabled={t: e for t, e in self.enabled.items() if not t & tasks})

    # ------------------------------------------------------------ per packet
    def capable(
        self, task: Task, l3_proto: NDArray[np.uint8], length: NDArray[np.int64]
    ) -> NDArray[np.bool_]:
        """Per packet: is ``task`` enabled here and the packet within its limits."""
        lim = self._limits.get(task)
        if lim is None:
            return np.zeros(len(length), dtype=np.bool_)
        versions, max_size = lim
        # a table lookup: one pass for any set of IP versions
        if l3_proto.dtype == np.uint8:
            ok = versions.take(l3_proto)
        else:  # (another integer type: a value outside 0..255 is no version)
            ok = versions.take(l3_proto, mode="clip") & (l3_proto >= 0) & (l3_proto <= 255)
        ok &= length <= max_size
        return ok

    @functools.cached_property
    def _limits(self) -> dict[Task, tuple[NDArray[np.bool_], int]]:
        """Per enabled task: a table l3_proto -> version enabled, and the max size."""
        out = {}
        for t, en in self.enabled.items():
            table = np.zeros(256, dtype=np.bool_)
            for v in en.ip_versions:
                if 0 <= v <= 255:
                    table[v] = True
            out[t] = (table, en.max_offload_size)
        return out

    # ------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "records": [self.records[t].to_dict() for t in ALL_TASKS if t in self.records],
            "enabled": [self.enabled[t].to_dict() for t in ALL_TASKS if t in self.enabled],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TaskOffloadBuffer:
        try:
            recs = [CapRecord.from_dict(x) for x in d.get("records", [])]
            ens = [Enabled.from_dict(x) for x in d.get("enabled", [])]
            buf = cls(str(d["device"]), {r.task: r for r in recs}, {})
        except (KeyError, TypeError, AttributeError) as e:
            raise ConfigError(f"bad task offload buffer: {e}") from None
        return buf.enable(*ens)

    @classmethod
    def from_json(cls, text: str) -> TaskOffloadBuffer:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"task offload buffer JSON: {e}") from None
        if not isinstance(d, dict):
            raise ConfigError("task offload buffer JSON: not an object")
        return cls.from_dict(d)

    # ------------------------------------------------------------ binary
    def to_bytes(self) -> bytes:
        name = self.device.encode()
        if len(name) > 255:
            raise ConfigError(f"device name {self.device[:40]!r}...: longer than 255 bytes")
        tasks = [t for t in ALL_TASKS if t in self.records]
        out = bytearray(MAGIC + bytes([FORMAT_VERSION, len(name)]) + name + bytes([len(tasks)]))
        for k, t in enumerate(tasks):
            body = _encode_body(self.records[t], self.enabled.get(t))
            here = len(out)
            nxt = here + _REC_HDR.size + len(body) if k + 1 < len(tasks) else 0
            out += _REC_HDR.pack(FORMAT_VERSION, len(body), t.index, nxt) + body
        return bytes(out)

    @classmethod
    def from_bytes(cls, data: bytes) -> TaskOffloadBuffer:
        what = "task offload buffer"
        mv = memoryview(bytes(data))
        if len(mv) < 6:
            raise BufferFormatError(what, len(mv), "truncated header")
        if bytes(mv[:4]) != MAGIC:
            raise BufferFormatError(what, 0, "bad magic")
        if mv[4] != FORMAT_VERSION:
            raise BufferFormatError(what, 4, f"unsupported version {mv[4]}")
        nlen = mv[5]
        if 6 + nlen > len(mv):
            raise BufferFormatError(what, 6, "device name runs past the end")
        try:
            device = bytes(mv[6 : 6 + nlen]).decode()
        except UnicodeDecodeError:
            raise BufferFormatError(what, 6, "device name is not UTF-8") from None
        off = 6 + nlen
        if off >= len(mv):
            raise BufferFormatError(what, off, "truncated header: no record count")
        count = mv[off]
        if count > len(ALL_TASKS):
            raise BufferFormatError(what, off, f"record count {count} > {len(ALL_TASKS)} tasks")
        off += 1
        records: dict[Task, CapRecord] = {}
        enabled: dict[Task, Enabled] = {}
        if count == 0:
            if off != len(mv):
                raise BufferFormatError(what, off, "trailing bytes after an empty record chain")
            return cls(device, records, enabled)
        seen: set[int] = set()
        while True:
            if off in seen:
                raise BufferFormatError(what, off, "record chain loops")
            seen.add(off)
            if off + _REC_HDR.size > len(mv):
                raise BufferFormatError(what, off, "truncated record header")
            ver, length, tid, nxt = _REC_HDR.unpack_from(mv, off)
            if ver != FORMAT_VERSION:
                raise BufferFormatError(what, off, f"unsupported record version {ver}")
            if tid >= len(ALL_TASKS):
                raise BufferFormatError(what, off + 3, f"unknown task id {tid}")
            body_off = off + _REC_HDR.size
            if body_off + length > len(mv):
                raise BufferFormatError(what, off + 1, "record length runs past the end")
            task = Task.from_index(tid)
            if len(records) == count:
                raise BufferFormatError(what, off, f"more records than the count {count}")
            if task in records:
                raise BufferFormatError(what, off + 3, f"duplicate record for {task.kebab}")
            rec, en = _decode_body(task, mv[body_off : body_off + length], body_off, what)
            records[task] = rec
            if en is not None:
                enabled[task] = en
            end = body_off + length
            if nxt == 0:
                if len(records) != count:
                    raise BufferFormatError(
                        what, end, f"chain ends after {len(records)} of {count} records"
                    )
                if end != len(mv):
                    raise BufferFormatError(what, end, "trailing bytes after the last record")
                break
            if nxt != end:
                raise BufferFormatError(what, off + 4, f"next-record offset {nxt} != {end}")
            off = nxt
        buf = cls(device, records, {})
        try:
            return buf.enable(*enabled.values())
        except CapabilityError as e:
            raise BufferFormatError(what, 0, f"enabled set outside the records: {e}") from None


_REC_HDR = struct.Struct("!BHBI")
_BODY_FIXED = struct.Struct("!BIHHI")  # ipv bits, max_offload_size, min_seg, max_seg, max_rules
_EN_FIXED = struct.Struct("!BIHI")  # ipv bits, max_offload_size, max_segments, rules


def _strs(items: tuple[str, ...]) -> bytes:
    out = bytearray([len(items)])
    for s in items:
        b = s.encode()
        if len(b) > 255 or len(items) > 255:
            raise ConfigError(f"name too long for the binary form: {s!r}")
        out += bytes([len(b)]) + b
    return bytes(out)


def _encode_body(rec: CapRecord, en: Enabled | None) -> bytes:
    body = bytearray(
        _BODY_FIXED.pack(
            _ipv_bits(rec.ip_versions),
            rec.max_offload_size,
            rec.min_segments,
            rec.max_segments,
            rec.max_rules,
        )
    )
    body += _strs(rec.algorithms) + _strs(rec.features)
    if en is None:
        body.append(0)
    else:
        body.append(1)
        body += _EN_FIXED.pack(
            _ipv_bits(en.ip_versions), en.max_offload_size, en.max_segments, en.rules
        )
        body += _strs(en.algorithms) + _strs(en.features)
    return bytes(body)


class _Reader:
    def __init__(self, mv: memoryview, base: int, what: str) -> None:
        self.mv, self.pos, self.base, self.what = mv, 0, base, what

    def fail(self, problem: str) -> BufferFormatError:
        return BufferFormatError(self.what, self.base + self.pos, problem)

    def unpack(self, s: struct.Struct) -> tuple[int, ...]:
        if self.pos + s.size > len(self.mv):
            raise self.fail("truncated record body")
        v = s.unpack_from(self.mv, self.pos)
        self.pos += s.size
        return tuple(int(x) for x in v)

    def byte(self) -> int:
        if self.pos >= len(self.mv):
            raise self.fail("truncated record body")
        v = self.mv[self.pos]
        self.pos += 1
        return int(v)

    def strs(self) -> tuple[str, ...]:
        n = self.byte()
        out = []
        for _ in range(n):
            ln = self.byte()
            if self.pos + ln > len(self.mv):
                raise self.fail("name runs past the record")
            try:
                out.append(bytes(self.mv[self.pos : self.pos + ln]).decode())
            except UnicodeDecodeError:
                raise self.fail("name is not UTF-8") from None
            self.pos += ln
        return tuple(out)


def _decode_body(
    task: Task, mv: memoryview, base: int, what: str
) -> tuple[CapRecord, Enabled | None]:
    r = _Reader(mv, base, what)
    ipv, mos, mins, maxs, rules = r.unpack(_BODY_FIXED)
    if ipv & ~3:
        raise r.fail(f"bad ip-version bits {ipv:#x}")
    algs = r.strs()
    feats = r.strs()
    try:
        rec = CapRecord(task, _ipv_set(ipv), mos, mins, maxs, algs, rules, feats)
    except ConfigError as e:
        raise r.fail(str(e)) from None
    flag = r.byte()
    en: Enabled | None = None
    if flag == 1:
        eipv, emos, emaxs, erules = r.unpack(_EN_FIXED)
        if eipv & ~3:
            raise r.fail(f"bad ip-version bits {eipv:#x}")
        ealgs = r.strs()
        efeats = r.strs()
        en = Enabled(task, _ipv_set(eipv), emos, emaxs, ealgs, erules, efeats)
    elif flag != 0:
        raise r.fail(f"bad enabled flag {flag}")
    if r.pos != len(mv):
        raise r.fail("record longer than its fields")
    return rec, en
