"""Capture files: our reader against scapy's writers, our writer against scapy's reader,
hand-built pcapng (both byte orders, several sections and interfaces, skipped blocks),
and corrupt or truncated files always giving CaptureError or valid records."""

from __future__ import annotations

import shutil
import struct
import subprocess
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
import scapy.all as S
from hypothesis import given, settings
from hypothesis import strategies as st

from netoffload.batch import XFlag
from netoffload.errors import CaptureError
from netoffload.wire.parse import parse_batch
from netoffload.wire.pcap import (
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_RAW,
    CaptureFault,
    PcapWriter,
    Record,
    iter_records,
    read_capture,
    records_to_batch,
    write_pcap,
)


def scapy_packets(n: int = 6) -> list[S.Packet]:
    out = []
    for i in range(n):
        if i % 2:
            p = (
                S.Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
                / S.IPv6(src="fd00::1", dst="fd00::2")
                / S.TCP()
                / (b"t" * i)
            )
        else:
            p = (
                S.Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
                / S.IP(src="198.18.0.1", dst="198.19.0.1")
                / S.UDP()
                / (b"u" * i)
            )
        p.time = Decimal("1700000000.123456789") + i
        out.append(p)
    return out


def ns_of(t: Decimal | float) -> int:
    return int(Decimal(t) * 1_000_000_000)


@pytest.mark.parametrize("endianness", ["<", ">"])
@pytest.mark.parametrize("nano", [False, True])
def test_reads_pcap_written_by_scapy(tmp_path: Path, endianness: str, nano: bool) -> None:
    pk = scapy_packets()
    f = tmp_path / "a.pcap"
    w = S.PcapWriter(str(f), endianness=endianness, nano=nano)
    for p in pk:
        w.write(p)
    w.close()
    recs = read_capture(f)
    assert [r.data for r in recs] == [bytes(p) for p in pk]
    assert all(r.linktype == LINKTYPE_ETHERNET for r in recs)
    assert [r.orig_len for r in recs] == [len(p) for p in pk]
    # scapy's own reading of its file gives the same timestamps
    back = S.rdpcap(str(f))
    assert [r.ts_ns for r in recs] == [ns_of(p.time) for p in back]
    if nano:
        assert recs[0].ts_ns % 1000 == 789


def test_reads_pcapng_written_by_scapy(tmp_path: Path) -> None:
    pk = scapy_packets()
    f = tmp_path / "a.pcapng"
    w = S.PcapNgWriter(str(f))
    for p in pk:
        w.write(p)
    w.close()
    recs = read_capture(f)
    assert [r.data for r in recs] == [bytes(p) for p in pk]
    back = S.rdpcap(str(f))
    assert [r.ts_ns for r in recs] == [ns_of(p.time) for p in back]


def test_raw_ip_linktype_from_scapy(tmp_path: Path) -> None:
    pk = [S.IP(dst="198.18.0.9") / S.UDP() / b"abc", S.IP(dst="198.18.0.9") / S.TCP()]
    f = tmp_path / "raw.pcap"
    S.wrpcap(str(f), pk)
    recs = read_capture(f)
    assert [r.data for r in recs] == [bytes(p) for p in pk]
    assert recs[0].linktype in (LINKTYPE_RAW, LINKTYPE_IPV4)
    b = records_to_batch(recs)
    assert not (b.ext.xflags & XFlag.ETHERNET).any()
    assert (parse_batch(b) == 0).all()
    assert list(b.ext.l4_proto) == [17, 6]


@pytest.mark.parametrize("nano", [False, True])
def test_written_pcap_read_by_scapy(tmp_path: Path, nano: bool) -> None:
    pk = scapy_packets()
    recs = [
        Record(ns_of(p.time), LINKTYPE_ETHERNET, bytes(p), len(p) + (7 if i == 2 else 0))
        for i, p in enumerate(pk)
    ]
    f = tmp_path / "out.pcap"
    assert write_pcap(f, recs, LINKTYPE_ETHERNET, nanosecond=nano) == len(recs)
    back = S.rdpcap(str(f))
    assert [bytes(p) for p in back] == [r.data for r in recs]
    assert [p.wirelen for p in back] == [r.orig_len for r in recs]
    want = [r.ts_ns if nano else r.ts_ns // 1000 * 1000 for r in recs]
    assert [ns_of(p.time) for p in back] == want
    # and our round trip keeps everything (timestamps to the written precision)
    again = read_capture(f)
    assert [(r.data, r.orig_len, r.ts_ns) for r in again] == [
        (r.data, r.orig_len, w) for r, w in zip(recs, want, strict=True)
    ]


def test_batch_from_ethernet_records() -> None:
    pk = scapy_packets(4)
    b = records_to_batch([Record(0, LINKTYPE_ETHERNET, bytes(p), len(p)) for p in pk])
    assert (b.ext.xflags & XFlag.ETHERNET).all()
    assert (parse_batch(b) == 0).all()
    assert list(b.ext.l3_proto) == [4, 6, 4, 6]
    assert b.packets() == [bytes(p) for p in pk]


def test_unsupported_linktype_names_record() -> None:
    recs = [Record(0, LINKTYPE_ETHERNET, b"x" * 20, 20), Record(0, 113, b"y" * 20, 20)]
    with pytest.raises(CaptureError, match="record 12: link type 113"):
        records_to_batch(recs, first=11)
    assert len(records_to_batch([])) == 0


# --------------------------------------------------------------- hand-built pcapng
def opt(e: str, code: int, val: bytes) -> bytes:
    return struct.pack(e + "HH", code, len(val)) + val + b"\0" * (-len(val) % 4)


def block(e: str, btype: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    n = len(body) + 12
    return struct.pack(e + "II", btype, n) + body + struct.pack(e + "I", n)


def shb(e: str) -> bytes:
    return block(e, 0x0A0D0D0A, struct.pack(e + "IHHq", 0x1A2B3C4D, 1, 0, -1))


def idb(e: str, linktype: int, tsresol: int | None = None, tsoffset: int = 0) -> bytes:
    opts = b""
    if tsresol is not None:
        opts += opt(e, 9, bytes([tsresol]))
    if tsoffset:
        opts += opt(e, 14, struct.pack(e + "q", tsoffset))
    if opts:
        opts += opt(e, 0, b"")
    return block(e, 1, struct.pack(e + "HHI", linktype, 0, 0) + opts)


def epb(e: str, iface: int, ts: int, data: bytes, orig: int | None = None) -> bytes:
    hdr = struct.pack(e + "IIIII", iface, ts >> 32, ts & 0xFFFFFFFF, len(data), orig or len(data))
    return block(e, 6, hdr + data + opt(e, 1, b"comment") + opt(e, 0, b""))


def spb(e: str, data: bytes) -> bytes:
    return block(e, 3, struct.pack(e + "I", len(data)) + data)


def opb(e: str, iface: int, ts: int, data: bytes) -> bytes:
    hdr = struct.pack(e + "HHIIII", iface, 0, ts >> 32, ts & 0xFFFFFFFF, len(data), len(data))
    return block(e, 2, hdr + data)


def handmade() -> tuple[bytes, list[Record]]:
    """Two sections (little, then big endian), three interfaces, skipped blocks."""
    p = [bytes(range(i, i + 30 + i)) for i in range(6)]
    le = (
        shb("<")
        + idb("<", 1)  # default microseconds
        + block("<", 4, b"\x00" * 8)  # name resolution block: skipped
        + idb("<", 101, tsresol=9, tsoffset=100)  # nanoseconds, +100 s
        + epb("<", 0, 1_700_000_000_123_456, p[0])
        + block("<", 0x0BAD, b"custom!")  # unknown: skipped
        + epb("<", 1, 5_000_000_007, p[1], orig=500)
        + spb("<", p[2])
    )
    be = (
        shb(">")
        + idb(">", 229, tsresol=0x80 | 10)  # 2^-10 s units
        + block(">", 5, b"\x00" * 12)  # interface statistics: skipped
        + epb(">", 0, 3 * 1024 + 512, p[3])
        + opb(">", 0, 2048, p[4])
    )
    want = [
        Record(1_700_000_000_123_456_000, 1, p[0], len(p[0]), 0),
        Record(100_000_000_000 + 5_000_000_007, 101, p[1], 500, 1),
        Record(0, 1, p[2], len(p[2]), 0),
        Record(3_500_000_000, 229, p[3], len(p[3]), 0),
        Record(2_000_000_000, 229, p[4], len(p[4]), 0),
    ]
    return le + be, want


def test_handmade_pcapng_both_byte_orders() -> None:
    data, want = handmade()
    assert read_capture(data) == want


def test_handmade_pcapng_agrees_with_scapy(tmp_path: Path) -> None:
    data, want = handmade()
    f = tmp_path / "h.pcapng"
    f.write_bytes(data)
    ours = read_capture(f)
    # scapy reads the packet blocks (it does not read SPB/OPB the same way; compare EPBs)
    with S.PcapNgReader(str(f)) as r:
        theirs = [bytes(p) for p in r]
    epb_data = [w.data for w in want if w.ts_ns and w.interface in (0, 1)]
    assert set(theirs) >= set(epb_data[:2])
    assert ours == want


def test_packet_on_undescribed_interface() -> None:
    data = shb("<") + idb("<", 1) + epb("<", 3, 0, b"x" * 20)
    with pytest.raises(CaptureFault, match=r"record 1 .*interface 3"):
        read_capture(data)


def test_errors_name_record_and_offset(tmp_path: Path) -> None:
    pk = scapy_packets(3)
    f = tmp_path / "t.pcap"
    S.wrpcap(str(f), pk)
    raw = f.read_bytes()
    f.write_bytes(raw[:-5])
    with pytest.raises(CaptureFault) as ei:
        read_capture(f)
    assert ei.value.record == 3
    assert str(f) in str(ei.value) and "record 3" in str(ei.value)
    assert [r.data for r in ei.value.records] == [bytes(p) for p in pk[:2]]
    assert 24 <= ei.value.offset <= len(raw)
    with pytest.raises(CaptureError, match="cannot open"):
        read_capture(tmp_path / "missing.pcap")
    (tmp_path / "e.pcap").write_bytes(b"")
    with pytest.raises(CaptureError, match="empty"):
        read_capture(tmp_path / "e.pcap")
    with pytest.raises(CaptureError, match="not a pcap"):
        read_capture(b"hello world, not a capture")


def test_writer_batch(tmp_path: Path) -> None:
    pk = scapy_packets(3)
    b = records_to_batch([Record(0, 1, bytes(p), len(p)) for p in pk])
    f = tmp_path / "w.pcap"
    with open(f, "wb") as fh:
        PcapWriter(fh, LINKTYPE_ETHERNET, nanosecond=True).write_batch(
            b, np.array([1, 2, 3]), np.array([0, 0, 999])
        )
    back = S.rdpcap(str(f))
    assert [bytes(p) for p in back] == [bytes(p) for p in pk]
    assert back[2].wirelen == 999


# --------------------------------------------------------------- corruption
def valid_capture(kind: int, payloads: list[bytes]) -> bytes:
    if kind == 0:
        out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
        for i, p in enumerate(payloads):
            out += struct.pack("<IIII", i, 5, len(p), len(p)) + p
        return out
    if kind == 1:
        out = struct.pack(">IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 65535, 101)
        for i, p in enumerate(payloads):
            out += struct.pack(">IIII", i, 5, len(p), len(p)) + p
        return out
    e = "<" if kind == 2 else ">"
    out = shb(e) + idb(e, 1, tsresol=9) + idb(e, 228)
    for i, p in enumerate(payloads):
        out += epb(e, i % 2, i, p) if i % 3 else spb(e, p)
    return out


payload_lists = st.lists(st.binary(min_size=0, max_size=80), min_size=0, max_size=6)


def check_outcome(data: bytes) -> list[Record] | CaptureFault:
    try:
        recs = read_capture(data)
    except CaptureFault as err:
        assert 0 <= err.offset <= len(data)
        assert err.record == len(err.records) + 1
        assert all(isinstance(r, Record) for r in err.records)
        return err
    except CaptureError as err:  # pragma: no cover - every parse error is a CaptureFault
        pytest.fail(f"plain CaptureError {err}")
    for r in recs:
        assert isinstance(r, Record) and isinstance(r.data, bytes)
        assert isinstance(r.ts_ns, int) and isinstance(r.linktype, int)
    return recs


@settings(max_examples=300)
@given(st.integers(0, 3), payload_lists, st.data())
def test_truncation_keeps_the_records_before(
    kind: int, payloads: list[bytes], data: st.DataObject
) -> None:
    full = valid_capture(kind, payloads)
    assert [r.data for r in read_capture(full)] == payloads
    cut = data.draw(st.integers(0, len(full) - 1))
    out = check_outcome(full[:cut])
    got = out.records if isinstance(out, CaptureFault) else out
    # what was read is a prefix of what was written
    assert [r.data for r in got] == payloads[: len(got)]
    if not isinstance(out, CaptureFault):  # cut at a record boundary
        assert len(got) < len(payloads) or not payloads


@settings(max_examples=400)
@given(
    st.integers(0, 3),
    payload_lists,
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255), st.integers(0, 3)), max_size=6),
)
def test_corruption_gives_error_or_records(
    kind: int, payloads: list[bytes], edits: list[tuple[int, int, int]]
) -> None:
    buf = bytearray(valid_capture(kind, payloads))
    for pos, val, how in edits:
        if not buf:
            break
        i = pos % len(buf)
        if how == 0:  # flip a bit
            buf[i] ^= 1 << (val % 8)
        elif how == 1:  # overwrite a byte
            buf[i] = val
        elif how == 2:  # insert a byte
            buf.insert(i, val)
        else:  # alter a 32-bit length/offset field (aligned), both byte orders
            j = i - i % 4
            if j + 4 <= len(buf):
                buf[j : j + 4] = struct.pack("<I" if val % 2 else ">I", val * 2654435761 % 2**32)
    check_outcome(bytes(buf))


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_random_bytes(data: bytes) -> None:
    check_outcome(data)
    check_outcome(b"\x0a\x0d\x0d\x0a" + data)
    check_outcome(struct.pack("<I", 0xA1B2C3D4) + data)


def test_iter_records_streams_before_fault() -> None:
    data = valid_capture(0, [b"a" * 10, b"b" * 10, b"c" * 10])
    it = iter_records(data[:-3])
    assert next(it).data == b"a" * 10
    assert next(it).data == b"b" * 10
    with pytest.raises(CaptureFault, match="record 3"):
        next(it)


# --------------------------------------------------------------- Wireshark's tools
def wireshark_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} (Wireshark) is not installed; install.sh installs it for tests")
    return path


def tshark_frames(path: Path) -> list[tuple[int, int, int]]:
    """(timestamp ns, original length, captured length) of each frame, as tshark reads it."""
    out = subprocess.run(
        [
            *(wireshark_tool("tshark"), "-r", str(path), "-T", "fields"),
            *("-e", "frame.time_epoch", "-e", "frame.len", "-e", "frame.cap_len"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    rows = []
    for line in out.splitlines():
        t, ln, cap = line.split("\t")
        rows.append((ns_of(Decimal(t)), int(ln), int(cap)))
    return rows


def test_pcapng_converted_by_editcap(tmp_path: Path) -> None:
    """editcap (Wireshark) writes pcapng with a nanosecond if_tsresol and a comment."""
    pk = scapy_packets()
    src, ng = tmp_path / "ns.pcap", tmp_path / "ns.pcapng"
    w = S.PcapWriter(str(src), nano=True)
    for p in pk:
        w.write(p)
    w.close()
    subprocess.run([wireshark_tool("editcap"), "-F", "pcapng", str(src), str(ng)], check=True)
    recs = read_capture(ng)
    assert [r.data for r in recs] == [bytes(p) for p in pk]
    assert [(r.ts_ns, r.orig_len, len(r.data)) for r in recs] == tshark_frames(ng)
    assert recs[0].ts_ns % 1_000_000_000 == 123_456_789


@pytest.mark.parametrize("nano", [False, True])
def test_our_pcap_read_by_tshark(tmp_path: Path, nano: bool) -> None:
    pk = scapy_packets()
    recs = [
        Record(ns_of(p.time), LINKTYPE_ETHERNET, bytes(p), len(p) + i) for i, p in enumerate(pk)
    ]
    f = tmp_path / "ours.pcap"
    write_pcap(f, recs, nanosecond=nano)
    want = [(r.ts_ns if nano else r.ts_ns // 1000 * 1000, r.orig_len, len(r.data)) for r in recs]
    assert tshark_frames(f) == want
