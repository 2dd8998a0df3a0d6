"""Capture files: read pcap and pcapng, write pcap.

Reading (``read_capture``, ``iter_records``, ``CaptureReader``) understands

* pcap in either byte order, with the microsecond (``0xa1b2c3d4``) or the
  nanosecond (``0xa1b23c4d``) magic;
* pcapng: Section Header Blocks in either byte order (several sections per
  file), Interface Description Blocks (per-interface link type, snap length,
  ``if_tsresol`` and ``if_tsoffset``), Enhanced, Simple and obsolete Packet
  Blocks; every other block type is skipped.

Each packet becomes a ``Record``: timestamp in nanoseconds since the epoch,
link type, the captured bytes and the original length on the wire. Readers
accept any link type; ``records_to_batch`` turns records of the link types
netoffload processes — Ethernet (1) and raw IP (101, 228 IPv4, 229 IPv6) —
into a ``Batch`` (Ethernet frames get ``XFlag.ETHERNET``) and raises
``CaptureError`` for others.

A truncated or corrupt file raises ``CaptureFault`` (a ``CaptureError``) naming
the record number (1-based, as Wireshark counts frames) and the byte offset
at fault, and never any other exception. Iteration yields every record read
before the fault, so a caller streaming records keeps them; ``read_capture``
attaches them to the error as ``err.records``.

Writing (``PcapWriter``, ``write_pcap``): classic pcap, little endian, with
the microsecond or nanosecond magic.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from netoffload.batch import Batch, XFlag
from netoffload.errors import CaptureError

LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
RAW_IP_LINKTYPES = frozenset({LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6})
SUPPORTED_LINKTYPES = frozenset({LINKTYPE_ETHERNET}) | RAW_IP_LINKTYPES

PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D
PCAPNG_SHB = 0x0A0D0D0A
PCAPNG_BOM = 0x1A2B3C4D
BLOCK_IDB = 1
BLOCK_OPB = 2  # obsolete Packet Block
BLOCK_SPB = 3
BLOCK_EPB = 6

#: largest record accepted (a guard against garbage lengths; pcap's own limit is 256 KiB)
MAX_RECORD = 1 << 24
DEFAULT_SNAPLEN = 262144


@dataclass(frozen=True)
class Record:
    """One captured packet."""

    ts_ns: int  # nanoseconds since the epoch (0 when the format has none: pcapng SPB)
    linktype: int
    data: bytes
    orig_len: int  # length on the wire (>= len(data) when the capture was cut short)
    interface: int = 0


class CaptureFault(CaptureError):
    """A capture is truncated or corrupt at ``offset``, while reading record ``record``."""

    def __init__(self, source: str, record: int, offset: int, problem: str) -> None:
        self.source = source
        self.record = record
        self.offset = offset
        self.problem = problem
        #: the records read before the fault (filled in by ``read_capture``)
        self.records: list[Record] = []
        super().__init__(f"{source}: record {record} (byte offset {offset}): {problem}")


@dataclass
class _Iface:
    linktype: int
    snaplen: int
    units_per_s: int = 1_000_000  # timestamp units per second (10^x or 2^x)
    offset_s: int = 0


def _ts_ns(units: int, per_s: int) -> int:
    if per_s == 1_000_000_000:
        return units
    return units * 1_000_000_000 // per_s


class CaptureReader:
    """Iterates the records of a capture held in memory (bytes, memoryview, mmap).

    ``offset`` is the byte offset reached (for progress), ``nanosecond`` tells
    whether timestamps are finer than microseconds (pcap ns magic, or a pcapng
    interface with a finer ``if_tsresol``), ``count`` how many records were read.
    """

    def __init__(self, data: bytes | memoryview | mmap.mmap, source: str = "capture") -> None:
        self.mv = memoryview(data)
        self.source = source
        self.offset = 0
        self.count = 0
        self.nanosecond = False
        self.format = ""
        #: link type of the pcap header, or of the first pcapng interface (-1: none yet)
        self.linktype = -1

    @property
    def size(self) -> int:
        return len(self.mv)

    def _fail(self, offset: int, problem: str) -> CaptureFault:
        return CaptureFault(self.source, self.count + 1, offset, problem)

    def __iter__(self) -> Iterator[Record]:
        mv = self.mv
        if len(mv) == 0:
            raise self._fail(0, "empty file, not a capture")
        if len(mv) < 4:
            raise self._fail(0, "too short for a capture header")
        head = bytes(mv[:4])
        le = struct.unpack("<I", head)[0]
        if le == PCAPNG_SHB:
            self.format = "pcapng"
            yield from self._pcapng()
            return
        for endian in ("<", ">"):
            magic = struct.unpack(endian + "I", head)[0]
            if magic in (PCAP_MAGIC_US, PCAP_MAGIC_NS):
                self.format = "pcap"
                yield from self._pcap(endian, magic == PCAP_MAGIC_NS)
                return
        raise self._fail(0, f"not a pcap or pcapng file (magic {head.hex()})")

    # ------------------------------------------------------------------ pcap
    def _pcap(self, e: str, ns: bool) -> Iterator[Record]:
        mv = self.mv
        if len(mv) < 24:
            raise self._fail(len(mv), f"truncated pcap file header ({len(mv)} of 24 bytes)")
        major, _minor, _tz, _sig, snaplen, linktype = struct.unpack_from(e + "HHiIII", mv, 4)
        if major != 2:
            raise self._fail(4, f"unsupported pcap version {major}")
        linktype &= 0x0FFFFFFF  # the upper bits carry FCS information
        self.linktype = linktype
        self.nanosecond = ns
        per_s = 1_000_000_000 if ns else 1_000_000
        limit = max(snaplen, DEFAULT_SNAPLEN, 65535)
        hdr = struct.Struct(e + "IIII")
        off = 24
        self.offset = off
        end = len(mv)
        while off < end:
            if off + 16 > end:
                raise self._fail(off, f"truncated record header ({end - off} of 16 bytes)")
            sec, frac, caplen, origlen = hdr.unpack_from(mv, off)
            if caplen > limit or caplen > MAX_RECORD:
                raise self._fail(off + 8, f"captured length {caplen} exceeds the limit {limit}")
            if off + 16 + caplen > end:
                raise self._fail(
                    off + 16, f"truncated packet data ({end - off - 16} of {caplen} bytes)"
                )
            data = bytes(mv[off + 16 : off + 16 + caplen])
            off += 16 + caplen
            self.offset = off
            self.count += 1
            yield Record(sec * 1_000_000_000 + _ts_ns(frac, per_s), linktype, data, origlen)

    # ------------------------------------------------------------------ pcapng
    def _pcapng(self) -> Iterator[Record]:
        mv = self.mv
        end = len(mv)
        off = 0
        e = "<"
        ifaces: list[_Iface] = []
        while off < end:
            if off + 12 > end:
                raise self._fail(off, f"truncated block header ({end - off} bytes left)")
            btype = struct.unpack_from("<I", mv, off)[0]
            if btype == PCAPNG_SHB:
                if off + 16 > end:
                    raise self._fail(off, "truncated section header block")
                bom = bytes(mv[off + 8 : off + 12])
                if bom == struct.pack("<I", PCAPNG_BOM):
                    e = "<"
                elif bom == struct.pack(">I", PCAPNG_BOM):
                    e = ">"
                else:
                    raise self._fail(off + 8, f"bad byte-order magic {bom.hex()}")
                ifaces = []
            blen = struct.unpack_from(e + "I", mv, off + 4)[0]
            if blen < 12 or blen % 4:
                raise self._fail(off + 4, f"bad block length {blen}")
            if off + blen > end:
                raise self._fail(
                    off + 4, f"truncated block (length {blen}, {end - off} bytes left)"
                )
            trailer = struct.unpack_from(e + "I", mv, off + blen - 4)[0]
            if trailer != blen:
                raise self._fail(
                    off + blen - 4, f"block length {blen} and trailing length {trailer} differ"
                )
            btype = struct.unpack_from(e + "I", mv, off)[0]
            body = mv[off + 8 : off + blen - 4]
            boff = off + 8
            if btype == PCAPNG_SHB:
                if len(body) < 16:
                    raise self._fail(boff, "section header block too short")
                major = struct.unpack_from(e + "H", body, 4)[0]
                if major != 1:
                    raise self._fail(boff + 4, f"unsupported pcapng version {major}")
            elif btype == BLOCK_IDB:
                ifaces.append(self._idb(body, boff, e))
            elif btype in (BLOCK_EPB, BLOCK_OPB):
                yield self._epb(body, boff, e, ifaces, btype == BLOCK_OPB)
            elif btype == BLOCK_SPB:
                yield self._spb(body, boff, e, ifaces)
            off += blen
            self.offset = off

    def _idb(self, body: memoryview, boff: int, e: str) -> _Iface:
        if len(body) < 8:
            raise self._fail(boff, "interface description block too short")
        linktype, _res, snaplen = struct.unpack_from(e + "HHI", body, 0)
        if self.linktype < 0:
            self.linktype = linktype
        ifc = _Iface(linktype, snaplen)
        for code, val, voff in self._options(body, 8, boff, e):
            if code == 9 and len(val) >= 1:  # if_tsresol
                r = val[0]
                exp = r & 0x7F
                ifc.units_per_s = (1 << exp) if r & 0x80 else 10**exp
                if ifc.units_per_s > 1_000_000:
                    self.nanosecond = True
            elif code == 14:  # if_tsoffset
                if len(val) < 8:
                    raise self._fail(voff, "if_tsoffset option shorter than 8 bytes")
                ifc.offset_s = struct.unpack_from(e + "q", val, 0)[0]
        return ifc

    def _options(
        self, body: memoryview, pos: int, boff: int, e: str
    ) -> Iterator[tuple[int, memoryview, int]]:
        while pos + 4 <= len(body):
            code, ln = struct.unpack_from(e + "HH", body, pos)
            if code == 0:  # opt_endofopt
                return
            if pos + 4 + ln > len(body):
                raise self._fail(
                    boff + pos + 2, f"option {code} of length {ln} runs past its block"
                )
            yield code, body[pos + 4 : pos + 4 + ln], boff + pos + 4
            pos += 4 + ((ln + 3) & ~3)

    def _iface(self, ifaces: list[_Iface], idx: int, at: int) -> _Iface:
        if idx >= len(ifaces):
            raise self._fail(
                at, f"packet on interface {idx}, but {len(ifaces)} interfaces are described"
            )
        return ifaces[idx]

    def _epb(
        self, body: memoryview, boff: int, e: str, ifaces: list[_Iface], obsolete: bool
    ) -> Record:
        if len(body) < 20:
            raise self._fail(boff, "packet block too short")
        if obsolete:
            idx, _drops, hi, lo, caplen, origlen = struct.unpack_from(e + "HHIIII", body, 0)
        else:
            idx, hi, lo, caplen, origlen = struct.unpack_from(e + "IIIII", body, 0)
        ifc = self._iface(ifaces, idx, boff)
        if 20 + caplen > len(body):
            raise self._fail(
                boff + 12, f"captured length {caplen} runs past its block ({len(body) - 20} bytes)"
            )
        data = bytes(body[20 : 20 + caplen])
        ts = ifc.offset_s * 1_000_000_000 + _ts_ns((hi << 32) | lo, ifc.units_per_s)
        self.count += 1
        return Record(ts, ifc.linktype, data, origlen, idx)

    def _spb(self, body: memoryview, boff: int, e: str, ifaces: list[_Iface]) -> Record:
        if len(body) < 4:
            raise self._fail(boff, "simple packet block too short")
        ifc = self._iface(ifaces, 0, boff)
        origlen = struct.unpack_from(e + "I", body, 0)[0]
        caplen = min(origlen, len(body) - 4)
        if ifc.snaplen:
            caplen = min(caplen, ifc.snaplen)
        self.count += 1
        return Record(0, ifc.linktype, bytes(body[4 : 4 + caplen]), origlen, 0)


class CaptureFile:
    """A capture file opened for reading (memory-mapped); use as a context manager."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            self._f: BinaryIO = open(self.path, "rb")  # noqa: SIM115 - closed in close()
        except OSError as err:
            raise CaptureError(f"{self.path}: cannot open: {err.strerror or err}") from None
        self._map: mmap.mmap | None = None
        try:
            size = os.fstat(self._f.fileno()).st_size
            data: bytes | mmap.mmap
            if size:
                self._map = mmap.mmap(self._f.fileno(), 0, access=mmap.ACCESS_READ)
                data = self._map
            else:
                data = b""
        except (OSError, ValueError) as err:
            self._f.close()
            raise CaptureError(f"{self.path}: cannot read: {err}") from None
        self.reader = CaptureReader(data, str(self.path))

    def __iter__(self) -> Iterator[Record]:
        return iter(self.reader)

    def close(self) -> None:
        try:
            self.reader.mv.release()
            if self._map is not None:
                self._map.close()
        except BufferError:
            pass  # a suspended iteration still holds a view; the mapping goes with it
        self._map = None
        self._f.close()

    def __enter__(self) -> CaptureFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def iter_records(data: bytes | memoryview, source: str = "capture") -> Iterator[Record]:
    """The records of a capture in memory; raises CaptureFault after the good ones."""
    return iter(CaptureReader(data, source))


def read_capture(src: str | os.PathLike[str] | bytes | memoryview) -> list[Record]:
    """Every record of a capture (a path, or the bytes of one).

    On a fault, raises ``CaptureFault`` whose ``records`` holds the records read before it.
    """
    out: list[Record] = []
    try:
        if isinstance(src, bytes | memoryview):
            out.extend(iter_records(src))
        else:
            with CaptureFile(src) as f:
                out.extend(f)
    except CaptureFault as err:
        err.records = out
        raise
    return out


# ---------------------------------------------------------------------- batches
def records_to_batch(records: Sequence[Record], first: int = 1) -> Batch:
    """A batch of the records' packets; Ethernet frames get ``XFlag.ETHERNET``.

    ``first`` is the record number of ``records[0]`` (for the error message of a
    record whose link type netoffload does not process).
    """
    for k, r in enumerate(records):
        if r.linktype not in SUPPORTED_LINKTYPES:
            raise CaptureError(
                f"record {first + k}: link type {r.linktype} is not supported "
                "(Ethernet 1, raw IP 101/228/229)"
            )
    b = Batch.from_packets(r.data for r in records)
    if len(records):
        eth = np.fromiter(
            (r.linktype == LINKTYPE_ETHERNET for r in records), dtype=np.bool_, count=len(records)
        )
        b.ext.xflags[eth] |= np.uint8(XFlag.ETHERNET)
    return b


# ---------------------------------------------------------------------- writing
class PcapWriter:
    """Writes classic pcap (little endian) to a binary file object."""

    def __init__(
        self,
        f: BinaryIO,
        linktype: int,
        snaplen: int = DEFAULT_SNAPLEN,
        nanosecond: bool = False,
    ) -> None:
        self.f = f
        self.linktype = linktype
        self.nanosecond = nanosecond
        self.count = 0
        magic = PCAP_MAGIC_NS if nanosecond else PCAP_MAGIC_US
        f.write(struct.pack("<IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype))

    def relink(self, linktype: int) -> None:
        """Change the link type in the file header (the file must be seekable)."""
        if linktype == self.linktype:
            return
        pos = self.f.tell()
        self.f.seek(20)
        self.f.write(struct.pack("<I", linktype))
        self.f.seek(pos)
        self.linktype = linktype

    def write(self, data: bytes | memoryview, ts_ns: int = 0, orig_len: int | None = None) -> None:
        n = len(data)
        sec, rem = divmod(max(0, ts_ns), 1_000_000_000)
        frac = rem if self.nanosecond else rem // 1000
        ol = n if orig_len is None else max(n, orig_len)
        self.f.write(struct.pack("<IIII", sec & 0xFFFFFFFF, frac, n, ol & 0xFFFFFFFF))
        self.f.write(data)
        self.count += 1

    def write_batch(
        self,
        batch: Batch,
        ts_ns: Sequence[int] | np.ndarray | None = None,
        orig_len: Sequence[int] | np.ndarray | None = None,
    ) -> None:
        for i in range(len(batch)):
            self.write(
                batch.packet(i),
                0 if ts_ns is None else int(ts_ns[i]),
                None if orig_len is None else int(orig_len[i]),
            )


def write_pcap(
    path: str | os.PathLike[str],
    records: Iterable[Record | bytes],
    linktype: int = LINKTYPE_ETHERNET,
    nanosecond: bool = False,
) -> int:
    """Write records (or bare packets, timestamp 0) to a pcap file; returns the count."""
    try:
        with open(path, "wb") as f:
            w = PcapWriter(f, linktype, nanosecond=nanosecond)
            for r in records:
                if isinstance(r, Record):
                    w.write(r.data, r.ts_ns, r.orig_len)
                else:
                    w.write(r)
            return w.count
    except OSError as err:
        raise CaptureError(f"{path}: cannot write: {err.strerror or err}") from None
