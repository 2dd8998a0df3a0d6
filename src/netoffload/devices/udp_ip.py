"""A UDP socket that carries IP packets: the UDP device in the form the engine's tasks expect.

``UdpDevice`` moves bare UDP payloads (the socket owns the IP and UDP headers).
The engine's tasks work on IP packets, so at this device's boundary, and only
here, the outer headers are made and read, as the virtio header is at the TUN:

- ``send``: every live packet is an IPv4 or IPv6 packet with a UDP header; its
  destination address and port say where the payload goes (source address and
  port are the socket's). Consecutive packets to one destination with one
  payload size (the last may be shorter) leave in one ``sendmsg`` with a
  ``UDP_SEGMENT`` control message, their payloads as the iovecs (no copy): the
  ``udp-segment`` task done by the kernel, up to 64 segments a send. Without
  the capability, or after the kernel refused it twice with ``EIO``, one
  ``sendto`` a datagram.
- ``recv``: datagrams (``UDP_GRO`` coalesced ones carry their segment size:
  the ``udp-assemble`` task done by the kernel) are split into one IP packet per
  datagram with an outer header built from the source address and port and the
  socket's own port (destination address left 0: the socket's). One gather
  copy for the whole batch.

A few packets (``SMALL``: a ping, a keepalive) take scalar paths both ways --
plain ints and ``struct`` instead of numpy, whose fixed cost per call is what a
small batch pays -- with the very same results (tests/devices/test_udp_ip_small.py).
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
import sys
import time
from typing import Any

import numpy as np
from numpy.typing import NDArray

from netoffload.batch import Batch, CsumVerdict, Ext, FilterVerdict, Reason, copy_ranges
from netoffload.devices import kernel_common as kc
from netoffload.devices.udp import MAX_PAYLOAD, MAX_SEGMENTS, Addr, UdpDevice
from netoffload.errors import DeviceDown
from netoffload.tasks import Task

OUTER4 = 28
OUTER6 = 48
#: a receive of at most this many datagrams (none a UDP_GRO super-datagram to split) and
#: a send of at most this many packets take the scalar paths: plain Python ints and one
#: struct pack a header instead of ~50 numpy calls, whose fixed cost (a microsecond or
#: more each, whatever the size) is all a ping pays. Same batches, byte for byte
#: (tests/devices/test_udp_ip_small.py runs both); 0 turns them off (``UdpIpDevice.small``).
#: Measured (timeit medians over a veth, 120-byte datagrams, load ~2 on 2 cores), batch
#: path -> scalar path: recv of 1 datagram 127 -> 18 us, 8: 150 -> 42-61, 16: 180 -> 70,
#: 32: 230 -> 125-186; send of 1: 39 -> 8.5, 8: 49 -> 20, 32: 71 -> 51. As the engines'
#: tasks (tunnel.datapath.SMALL), 32.
SMALL = 32
#: the outer headers recv builds (the general path's bytes: no IP ID, flags, checksums
#: or destination address; TTL / hop limit 64): IPv4 + UDP, IPv6 + UDP
_HDR4 = struct.Struct("!BBH4xBBH4s4xHHHH")
_HDR6 = struct.Struct("!B3xHBB16s16xHHHH")
#: send's destination key per packet: 16 address bytes (IPv4 in the last 4), port, v6 flag
_KEY = 19
_DROP = int(FilterVerdict.DROP)
_NOT_IP = int(Reason.NOT_IP)
_Z12 = bytes(12)
#: recv's slots start at multiples of this (as Batch.alloc lays them)
SLOT_ALIGN = 64


def _packed(addr: Any) -> tuple[bytes, int]:
    """An address tuple from recvmsg as (packed IP, version); v4-mapped v6 -> IPv4."""
    ip = ipaddress.ip_address(str(addr[0]).split("%")[0])
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.packed, ip.version


#: SO_SNDBUFFORCE / SO_RCVBUFFORCE (asm-generic/socket.h): past net.core.[rw]mem_max, root only
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33


def _buffers(s: socket.socket, size: int) -> None:
    """Socket buffers of ``size`` bytes: a tunnel's loop can be off the CPU for a
    scheduler slice while datagrams keep coming. SO_*BUFFORCE goes past the sysctl
    maxima (208 KiB by default, some 140 full datagrams) when we may; else the most
    the sysctls allow."""
    for force, plain in ((SO_RCVBUFFORCE, socket.SO_RCVBUF), (SO_SNDBUFFORCE, socket.SO_SNDBUF)):
        try:
            s.setsockopt(socket.SOL_SOCKET, force, size)
        except OSError:
            s.setsockopt(socket.SOL_SOCKET, plain, size)


class OutPool:
    """Reused buffers for the batches ``recv`` builds (one gather copy a batch).

    A new buffer for every batch (``Batch.alloc``) costs its zeroing and, for a big
    batch, glibc's mapping or heap growth; the heap then keeps its high-water mark.
    Here a batch is laid in the first of at most ``POOL`` persistent buffers that no
    earlier batch still holds (a batch's buffer is a view: the pooled array's
    reference count says whether one is alive, as ``kc.Arena`` does), grown (never
    shrunk) to the largest batch seen; when every one is held, a fresh buffer, as
    before. The caller writes every byte of each packet."""

    POOL = 4
    #: a buffer never starts smaller (a batch of 1 KiB datagrams needs ~1 MiB)
    MIN_BYTES = 256 << 10

    def __init__(self) -> None:
        self._bufs: list[NDArray[np.uint8]] = []
        self._idle_refs = 0
        #: batches that found every pooled buffer held (made in a fresh one)
        self.fresh = 0

    def _idle(self, i: int) -> bool:
        return sys.getrefcount(self._bufs[i]) <= self._idle_refs

    def buffer(self, need: int) -> NDArray[np.uint8]:
        """``need`` bytes in the first pooled buffer no batch holds (grown if short),
        or a fresh one when every pooled buffer is held; contents undefined."""
        i = next((k for k in range(len(self._bufs)) if self._idle(k)), -1)
        if i < 0 and len(self._bufs) < self.POOL:
            self._bufs.append(np.empty(0, dtype=np.uint8))
            i = len(self._bufs) - 1
            self._idle_refs = sys.getrefcount(self._bufs[i])
        if i < 0:
            self.fresh += 1
            return np.empty(need, dtype=np.uint8)
        if len(self._bufs[i]) < need:
            grown = max(need + need // 4, self.MIN_BYTES)
            self._bufs[i] = np.empty(grown, dtype=np.uint8)
        return self._bufs[i][:need]

    def batch(self, lengths: NDArray[np.int64]) -> Batch:
        """Slots of ``lengths`` bytes (no head or tail room, each rounded up to
        ``ALIGN``), contents undefined."""
        n = len(lengths)
        sizes = (lengths + (SLOT_ALIGN - 1)) // SLOT_ALIGN * SLOT_ALIGN
        slot_hi = np.cumsum(sizes)
        slot_lo = slot_hi - sizes
        need = int(slot_hi[-1]) if n else 0
        buf = self.buffer(need)
        return Batch(buf, slot_lo.copy(), lengths.astype(np.int64), slot_lo, slot_hi, Ext(n))


class UdpIpDevice(UdpDevice):
    """A UDP socket whose batches are outer IP/UDP packets (see the module docstring)."""

    def __init__(self, sock: socket.socket, **kw: Any) -> None:
        super().__init__(sock, None, **kw)
        self.local_port = int(sock.getsockname()[1])
        self.dual = sock.family == socket.AF_INET6
        self._src_cache: dict[Any, tuple[bytes, int]] = {}
        #: datagrams the kernel segmented (sent in UDP_SEGMENT sends) / coalesced
        #: (received in UDP_GRO super-datagrams): the outer udp-segment/-assemble
        self.gso_datagrams_out = 0
        self.gro_datagrams_in = 0
        #: the buffers recv's batches are built in, reused (OutPool)
        self._out = OutPool()
        #: batches of at most this many packets take the scalar paths (``SMALL``)
        self.small = SMALL
        self.last_gro = 0
        self._dest_cache: dict[tuple[bytes, int], Addr] = {}
        #: the small path's extensions by (IPv6 flags, done bits): copied, never handed out
        self._ext_tmpl: dict[tuple[tuple[bool, ...], int], Ext] = {}
        self.query()  # probe now: turns UDP_GRO on (when wanted) before the first read

    def disable_gso(self) -> None:
        """No UDP_SEGMENT sends from now on (one sendto a datagram)."""
        self._drop_uso(reprobe=False)

    @classmethod
    def bind_here(
        cls, port: int = 0, *, fwmark: int | None = None, reuseport: bool = False, **kw: Any
    ) -> UdpIpDevice:
        """A dual-stack socket on ``port`` (0: any) in the current network namespace."""
        try:
            s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            any_addr: tuple[Any, ...] = ("::", port)
        except OSError:  # no IPv6 in this namespace / kernel
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            any_addr = ("0.0.0.0", port)
        try:
            if reuseport:
                s.setsockopt(socket.SOL_SOCKET, kc.SO_REUSEPORT, 1)
            if fwmark:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, fwmark)
            _buffers(s, 8 << 20)
            s.bind(any_addr)
            s.setblocking(False)
        except BaseException:
            s.close()
            raise
        return cls(s, **kw)

    def set_fwmark(self, mark: int) -> None:
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)

    # ------------------------------------------------------------------ send
    def _dest(self, packed: bytes, port: int) -> Addr:
        to = self._dest_cache.get((packed, port))
        if to is None:
            if len(packed) == 4:
                ip = str(ipaddress.IPv4Address(packed))
                to = (f"::ffff:{ip}", port) if self.dual else (ip, port)
            else:
                to = (str(ipaddress.IPv6Address(packed)), port)
            if len(self._dest_cache) > 4096:
                self._dest_cache.clear()
            self._dest_cache[(packed, port)] = to
        return to

    def send(self, batch: Batch, dest: Addr | None = None) -> int:
        """Send each live packet's UDP payload to its header's destination; returns how many."""
        self._check()
        n = len(batch)
        if not n:
            return 0
        if n <= self.small:
            return self._send_small(batch)
        e = batch.ext
        live = np.flatnonzero(e.alive())
        if not len(live):
            return 0
        st = batch.start[live]
        ver = batch.buf[st] >> 4
        v6 = ver == 6
        hdr = np.where(v6, OUTER6, OUTER4).astype(np.int64)
        bad = (ver != 4) & ~v6
        bad |= batch.length[live] < hdr
        if bad.any():
            e.error[live[bad]] = Reason.NOT_IP
            keep = ~bad
            live, st, v6, hdr = live[keep], st[keep], v6[keep], hdr[keep]
        # destination key per packet: 16 address bytes (IPv4 in the last 4), port, v6 flag
        key = np.zeros((len(live), _KEY), dtype=np.uint8)
        if (~v6).any():
            key[~v6, 12:16] = batch.buf[st[~v6][:, None] + 16 + np.arange(4)]
        if v6.any():
            key[v6, 0:16] = batch.buf[st[v6][:, None] + 24 + np.arange(16)]
        key[:, 16:18] = batch.buf[(st + hdr - 6)[:, None] + np.arange(2)]
        key[:, 18] = v6
        plen = batch.length[live] - hdr
        pstart = st + hdr
        # runs: same destination and size as the run's first, the last may be shorter
        same = np.zeros(len(live), dtype=np.bool_)
        if len(live) > 1:
            same[1:] = (key[1:] == key[:-1]).all(axis=1) & (plen[1:] <= plen[:-1])
        return self._send_runs(
            batch, live.tolist(), key.tobytes(), same.tolist(), plen.tolist(), pstart.tolist()
        )

    def _send_small(self, batch: Batch) -> int:
        """``send`` of a few packets with plain ints: what the general path computes with
        numpy (live packets, their version and destination key, runs), a packet at a time."""
        e = batch.ext
        errs = e.error.tolist()
        verdicts = e.filter_verdict.tolist()
        mv = memoryview(batch.buf.data)
        live: list[int] = []
        keys: list[bytes] = []
        sames: list[bool] = []
        pls: list[int] = []
        pss: list[int] = []
        prev = b""
        prev_pl = 0
        for i, (s, ln) in enumerate(zip(batch.start.tolist(), batch.length.tolist(), strict=True)):
            if errs[i] or verdicts[i] == _DROP:
                continue
            ver = mv[s] >> 4
            if ver == 4 and ln >= OUTER4:
                hdr = OUTER4
                k = _Z12 + mv[s + 16 : s + 20] + mv[s + 22 : s + 24] + b"\0"
            elif ver == 6 and ln >= OUTER6:
                hdr = OUTER6
                k = mv[s + 24 : s + 40].tobytes() + mv[s + 42 : s + 44] + b"\1"
            else:
                e.error[i] = _NOT_IP
                continue
            pl = ln - hdr
            sames.append(bool(live) and k == prev and pl <= prev_pl)
            live.append(i)
            keys.append(k)
            pls.append(pl)
            pss.append(s + hdr)
            prev, prev_pl = k, pl
        return self._send_runs(batch, live, b"".join(keys), sames, pls, pss)

    def _send_runs(
        self,
        batch: Batch,
        live: list[int],
        keys: bytes,
        sames: list[bool],
        pls: list[int],
        pss: list[int],
    ) -> int:
        """Send the payloads ``pss[x]:+pls[x]`` of the packets ``live`` in runs: packets
        after the first of a run have its destination (``keys``, ``_KEY`` bytes each) and
        size (``sames``; the last may be shorter; empty payloads each alone), up to
        MAX_SEGMENTS and MAX_PAYLOAD: one UDP_SEGMENT sendmsg a run. A run that fails marks
        its packets DEVICE_ERROR."""
        mv = memoryview(batch.buf.data)
        sent = 0
        i = 0
        m = len(live)
        while i < m:
            j = i + 1
            size = pls[i]
            total = size
            while (
                size  # (an empty payload in a UDP_SEGMENT send is no datagram: alone)
                and j < m
                and sames[j]
                and pls[j]
                and pls[j - 1] == size
                and j - i < MAX_SEGMENTS
                and total + pls[j] <= MAX_PAYLOAD
                and self.uso
            ):
                total += pls[j]
                j += 1
            k = keys[i * _KEY : i * _KEY + _KEY]
            packed = k[0:16] if k[18] else k[12:16]
            to = self._dest(packed, int.from_bytes(k[16:18], "big"))
            iov = [mv[pss[x] : pss[x] + pls[x]] for x in range(i, j)]
            if self._send_run(iov, size, to):
                sent += j - i
            else:
                batch.ext.error[live[i:j]] = Reason.DEVICE_ERROR
            i = j
        return sent

    def _send_run(self, iov: list[memoryview], size: int, to: Addr) -> bool:
        deadline = 0.0
        while True:
            try:
                if len(iov) == 1:
                    self.sock.sendto(iov[0], to)
                    self.udp.sends += 1
                    self.udp.datagrams_out += 1
                else:
                    cmsg = [(kc.SOL_UDP, kc.UDP_SEGMENT, struct.pack("H", size))]
                    self.sock.sendmsg(iov, cmsg, 0, to)
                    self.udp.sends += 1
                    self.udp.gso_sends += 1
                    self.udp.datagrams_out += len(iov)
                    self.gso_datagrams_out += len(iov)
                    self._uso_ok()
                return True
            except BlockingIOError:
                if not deadline:
                    deadline = time.monotonic() + self.io_timeout
                if not self._wait_writable(deadline):
                    return False
            except InterruptedError:
                continue
            except OSError as err:
                if err.errno in self.GONE:
                    raise DeviceDown(f"{self.name}: {err.strerror}") from None
                self.udp.note(err)
                if err.errno == errno.EIO and len(iov) > 1:
                    self.udp.eio += 1
                    self._drop_uso()
                    return all(self._send_run([v], size, to) for v in iov)
                return False

    # ------------------------------------------------------------------ recv
    def recv(self, max_packets: int = 1024) -> Batch:
        """Waiting datagrams, one outer IP/UDP packet each (GRO'd ones split)."""
        gsos = self._read_datagrams(max_packets)
        n = len(gsos)
        if not n:
            return Batch.empty()
        if n <= self.small and (
            not any(gsos)
            or all(
                g <= 0 or ln <= min(g, 0xFFFF) for g, ln in zip(gsos, self._arena.lens, strict=True)
            )
        ):
            return self._split_small()
        return self._split(self._raw_batch(gsos))

    def _source(self, addr: Addr) -> tuple[bytes, int]:
        """(packed address, IP version) of a source recvmsg gave (cached)."""
        cache = self._src_cache
        p = cache.get(addr[0])
        if p is None:
            p = _packed(addr)
            if len(cache) > 4096:
                cache.clear()
            cache[addr[0]] = p
        return p

    def _split_small(self) -> Batch:
        """``_split`` of a few datagrams none of which is a super-datagram, with plain
        ints: one struct pack a header, one slice copy a payload, the extensions copied
        from a template of what ``_split`` sets. The same batch, in the same pooled buffer."""
        regions = self.last_regions
        lens = self._arena.lens
        local = self.local_port
        hdrs: list[bytes] = []
        los: list[int] = []
        his: list[int] = []
        lengths: list[int] = []
        six: list[bool] = []
        off = 0
        for addr, pl in zip(self.last_sources, lens, strict=True):
            packed, ver = self._source(addr)
            sport = int(addr[1]) & 0xFFFF
            if ver == 6:
                h = _HDR6.pack(
                    0x60, (pl + 8) & 0xFFFF, 17, 64, packed, sport, local, (pl + 8) & 0xFFFF, 0
                )
            else:
                h = _HDR4.pack(
                    0x45,
                    0,
                    (pl + OUTER4) & 0xFFFF,
                    64,
                    17,
                    0,
                    packed,
                    sport,
                    local,
                    (pl + 8) & 0xFFFF,
                    0,
                )
            hdrs.append(h)
            six.append(ver == 6)
            total = len(h) + pl
            lengths.append(total)
            los.append(off)
            off += (total + (SLOT_ALIGN - 1)) // SLOT_ALIGN * SLOT_ALIGN
            his.append(off)
        buf = self._out.buffer(off)
        mv = buf.data
        for h, pl, lo, region in zip(hdrs, lens, los, regions, strict=True):
            hl = len(h)
            mv[lo : lo + hl] = h
            mv[lo + hl : lo + hl + pl] = region[:pl]
        del mv
        done = int(Task.CHECKSUM)
        if self._filter is not None and self._filter is self._whole_filter:
            done |= int(Task.DOS_FILTER)  # as _rx_filtered marks the datagrams
        key = (tuple(six), done)
        tmpl = self._ext_tmpl.get(key)
        if tmpl is None:
            tmpl = self._template(six, done)
        self.udp.datagrams_in += len(lens)
        self.last_gro = 0
        return Batch(
            buf,
            np.array(los, dtype=np.int64),
            np.array(lengths, dtype=np.int64),
            np.array(los, dtype=np.int64),
            np.array(his, dtype=np.int64),
            tmpl.copy(),
        )

    def _template(self, six: list[bool], done: int) -> Ext:
        """The extensions ``_split`` gives datagrams from these IP versions (``six``) that
        the kernel did ``done`` for, kept for ``_split_small`` to copy."""
        v6 = np.array(six, dtype=np.bool_)
        e = Ext(len(six))
        e.l3_off[:] = 0
        e.l4_off[:] = np.where(v6, OUTER6 - 8, OUTER4 - 8)
        e.hdr_len[:] = np.where(v6, OUTER6, OUTER4)
        e.l3_proto[:] = np.where(v6, 6, 4)
        e.l4_proto[:] = 17
        e.segs[:] = 1
        e.done[:] = done
        e.by_device[:] = done
        e.csum_verdict[:] = CsumVerdict.GOOD
        if len(self._ext_tmpl) > 256:
            self._ext_tmpl.clear()
        self._ext_tmpl[(tuple(six), done)] = e
        return e

    def _split(self, raw: Batch) -> Batch:
        """The payloads of ``raw`` (``UdpDevice``'s batch, super-datagrams with their
        ``gso_size``) as one outer IP/UDP packet a datagram, in one gather copy."""
        n = len(raw)
        g = raw.ext.gso_size.astype(np.int64)
        ln = raw.length
        seg = np.where((g > 0) & (ln > g), g, np.maximum(ln, 1))
        k = np.where(ln > 0, (ln + seg - 1) // seg, 1)
        total = int(k.sum())
        parent = np.repeat(np.arange(n), k)
        first = np.cumsum(k) - k
        j = np.arange(total) - np.repeat(first, k)
        off = j * seg[parent]
        plen = np.minimum(seg[parent], ln[parent] - off)
        plen = np.maximum(plen, 0)
        srcs: list[tuple[bytes, int]] = []
        ports = np.zeros(n, dtype=np.int64)
        for i, a in enumerate(self.last_sources):
            srcs.append(self._source(a))
            ports[i] = int(a[1])
        is6 = np.array([v == 6 for _, v in srcs], dtype=np.bool_)
        hdr_p = np.where(is6, OUTER6, OUTER4)
        hdr = hdr_p[parent]
        out = self._out.batch(hdr + plen)
        # payloads
        copy_ranges(out.buf, out.start + hdr, raw.buf, raw.start[parent] + off, plen)
        st = out.start
        tot = hdr + plen
        udp_len = plen + 8
        six = is6[parent]
        four = ~six
        b = out.buf
        # the headers' other bytes are 0 (a reused buffer holds the last batch's bytes)
        b[(st[four][:, None] + np.arange(OUTER4)).ravel()] = 0
        b[(st[six][:, None] + np.arange(OUTER6)).ravel()] = 0
        if four.any():
            s4 = st[four]
            b[s4] = 0x45
            b[s4 + 2] = (tot[four] >> 8) & 0xFF
            b[s4 + 3] = tot[four] & 0xFF
            b[s4 + 8] = 64
            b[s4 + 9] = 17
            a4 = np.frombuffer(
                b"".join(srcs[p][0] if not is6[p] else b"\0" * 4 for p in range(n)), np.uint8
            ).reshape(n, 4)
            b[s4[:, None] + 12 + np.arange(4)] = a4[parent[four]]
        if six.any():
            s6 = st[six]
            b[s6] = 0x60
            b[s6 + 4] = (udp_len[six] >> 8) & 0xFF
            b[s6 + 5] = udp_len[six] & 0xFF
            b[s6 + 6] = 17
            b[s6 + 7] = 64
            a6 = np.frombuffer(
                b"".join(srcs[p][0] if is6[p] else b"\0" * 16 for p in range(n)), np.uint8
            ).reshape(n, 16)
            b[s6[:, None] + 8 + np.arange(16)] = a6[parent[six]]
        u = st + hdr - 8
        sp = ports[parent]
        b[u] = (sp >> 8) & 0xFF
        b[u + 1] = sp & 0xFF
        b[u + 2] = (self.local_port >> 8) & 0xFF
        b[u + 3] = self.local_port & 0xFF
        b[u + 4] = (udp_len >> 8) & 0xFF
        b[u + 5] = udp_len & 0xFF
        e = out.ext
        e.l3_off[:] = 0
        e.l4_off[:] = hdr - 8
        e.hdr_len[:] = hdr
        e.l3_proto[:] = np.where(six, 6, 4)
        e.l4_proto[:] = 17
        e.segs[:] = 1
        e.done[:] = raw.ext.done[parent]
        e.by_device[:] = raw.ext.by_device[parent]
        e.csum_verdict[:] = raw.ext.csum_verdict[parent]
        self.last_gro = int(np.count_nonzero(k > 1))
        if self.last_gro:
            self.gro_datagrams_in += int(k[k > 1].sum())
        return out

    def counters(self) -> dict[str, object]:
        return {
            **super().counters(),
            "gso_datagrams_out": self.gso_datagrams_out,
            "gro_datagrams_in": self.gro_datagrams_in,
        }
