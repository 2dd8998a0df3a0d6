"""Engine: exactly once, in order, split per packet, faults redone in software."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from netoffload.batch import Batch, Mask, Reason
from netoffload.devices import FaultInjector, SoftwareDevice
from netoffload.engine import Engine
from netoffload.policy import Always, Never
from netoffload.soft import SoftLibrary, SoftTask
from netoffload.tasks import Direction, Task


class Append(SoftTask):
    """Appends a tag byte to each selected packet (in its tail room)."""

    def __init__(self, task: Task, tag: int) -> None:
        self.task = task
        self.tag = tag

    def process(self, batch: Batch, sel: Mask) -> Batch:
        idx = np.flatnonzero(sel)
        ends = batch.start[idx] + batch.length[idx]
        batch.buf[ends] = self.tag
        batch.length[idx] += 1
        return batch


class Split(SoftTask):
    """Splits each selected packet into 1-byte packets (changes counts); empties fail."""

    task = Task.TCP_SEGMENT

    def process(self, batch: Batch, sel: Mask) -> Batch:
        pieces: list[bytes] = []
        rows = []
        for i in range(len(batch)):
            p = bytes(batch.packet(i))
            if sel[i] and len(p) > 0:
                for j in range(len(p)):
                    pieces.append(p[j : j + 1])
                    rows.append(i)
            else:
                pieces.append(p)
                rows.append(i)
        out = Batch.from_packets(pieces)
        out.ext = batch.ext.take(np.array(rows, dtype=np.int64))
        empty = sel & (batch.length == 0)
        bad = np.isin(np.array(rows), np.flatnonzero(empty))
        out.ext.error[bad] = Reason.TRUNCATED
        return out


def lib() -> SoftLibrary:
    return SoftLibrary(
        {
            Task.CHECKSUM: Append(Task.CHECKSUM, 0xC5),
            Task.ENCRYPT: Append(Task.ENCRYPT, 0xE7),
            Task.DIGEST: Append(Task.DIGEST, 0xD1),
            Task.TCP_SEGMENT: Split(),
        }
    )


def expected(pkt: bytes, tasks: int) -> list[bytes]:
    pieces = [pkt[j : j + 1] for j in range(len(pkt))] if tasks & Task.TCP_SEGMENT else [pkt]
    out = []
    for p in pieces:
        if tasks & Task.CHECKSUM:
            p += b"\xc5"
        if tasks & Task.ENCRYPT:
            p += b"\xe7"
        if tasks & Task.DIGEST:
            p += b"\xd1"
        out.append(p)
    return out


packets = st.lists(
    st.tuples(st.binary(min_size=1, max_size=12), st.integers(0, 15)), min_size=0, max_size=40
)


def _run(policy_name: str, pkts: list[tuple[bytes, int]], fault: str | None, share: float) -> None:
    soft = lib()
    dev = SoftwareDevice(soft, name="sw")
    dev.enable(Task.CHECKSUM, Task.ENCRYPT, Task.DIGEST, Task.TCP_SEGMENT)
    devs = [FaultInjector(dev, share=share, mode=fault, seed=7)] if fault else [dev]
    policy = Always() if policy_name == "always" else Never()
    eng = Engine(
        Direction.TX,
        Task.CHECKSUM | Task.ENCRYPT | Task.DIGEST | Task.TCP_SEGMENT,
        soft,
        policy,
        devs,
    )
    b = Batch.from_packets([p for p, _ in pkts])
    b.ext.tasks[:] = [m << 0 for _, m in pkts]
    # map the 4 bits to the 4 tasks
    bits = np.array([m for _, m in pkts], dtype=np.int64)
    tasks = np.zeros(len(pkts), dtype=np.uint16)
    for k, t in enumerate((Task.CHECKSUM, Task.ENCRYPT, Task.DIGEST, Task.TCP_SEGMENT)):
        tasks[(bits >> k) & 1 == 1] |= int(t)
    b.ext.tasks[:] = tasks
    b.ext.l3_proto[:] = 4  # the devices' limits are per IP version
    out = eng.process(b).batch
    want: list[bytes] = []
    for (p, _), t in zip(pkts, tasks.tolist(), strict=True):
        want += expected(p, t)
    assert out.packets() == want
    # origins are non-decreasing and cover every input
    assert (np.diff(out.ext.origin) >= 0).all()
    assert set(out.ext.origin.tolist()) == set(range(len(pkts)))
    rep = eng.counters
    # counters count packets as handed to the task; after a split in the same
    # device trip that is the unsplit packet, in software the pieces
    for t in (Task.CHECKSUM, Task.ENCRYPT, Task.DIGEST):
        c = rep[t]
        asked = [(p, m) for (p, _), m in zip(pkts, tasks.tolist(), strict=True) if m & t]
        lo = len(asked)
        hi = sum(len(expected(p, m)) for p, m in asked)
        assert lo <= c.offloaded + c.software <= hi
    if policy_name == "never":
        assert all(c.offloaded == 0 for c in rep.values())
    elif fault is None and len(pkts):
        assert sum(c.offloaded for c in rep.values()) > 0 or not tasks.any()
        assert all(c.software == 0 for c in rep.values())


@given(packets)
def test_never_policy_exactly_once_in_order(pkts: list[tuple[bytes, int]]) -> None:
    _run("never", pkts, None, 0.0)


@given(packets)
def test_always_policy_exactly_once_in_order(pkts: list[tuple[bytes, int]]) -> None:
    _run("always", pkts, None, 0.0)


@pytest.mark.parametrize("mode", ["refuse", "fail"])
@given(pkts=packets, share=st.sampled_from([0.3, 0.7, 1.0]))
def test_faults_redone_in_software(mode: str, pkts: list[tuple[bytes, int]], share: float) -> None:
    _run("always", pkts, mode, share)
    _run("never", pkts, mode, share)


def test_zero_packet_batch() -> None:
    soft = lib()
    eng = Engine(Direction.TX, Task.CHECKSUM, soft, Never())
    out = eng.process(Batch.empty())
    assert len(out.batch) == 0


def test_consecutive_tasks_one_trip() -> None:
    soft = lib()
    dev = SoftwareDevice(soft)
    dev.enable(Task.CHECKSUM, Task.ENCRYPT, Task.DIGEST)
    eng = Engine(Direction.TX, Task.CHECKSUM | Task.ENCRYPT | Task.DIGEST, soft, Always(), [dev])
    b = Batch.from_packets([b"x"] * 10)
    b.ext.tasks[:] = Task.CHECKSUM | Task.ENCRYPT | Task.DIGEST
    b.ext.l3_proto[:] = 6
    out = eng.process(b).batch
    assert dev.stats.submits == 1
    assert out.packets() == [b"x\xc5\xe7\xd1"] * 10
    assert (out.ext.by_device == (Task.CHECKSUM | Task.ENCRYPT | Task.DIGEST)).all()


def test_errors_counted_as_dropped() -> None:
    soft = lib()
    eng = Engine(Direction.TX, Task.TCP_SEGMENT, soft, Never())
    b = Batch.from_packets([b"ab", b"", b"c"])
    b.ext.tasks[:] = Task.TCP_SEGMENT
    out = eng.process(b)
    assert out.delivered().packets() == [b"a", b"b", b"c"]
    assert len(out.dropped()) == 1
    assert eng.counters[Task.TCP_SEGMENT].dropped == 1
    assert eng.counters[Task.TCP_SEGMENT].reasons == {"truncated": 1}


class Alternate(Always):
    """Sends every other wanted packet to device 0 (a split inside every stage)."""

    name = "alternate"

    def split(self, task, batch, want, devices, load):  # type: ignore[no-untyped-def]
        out = super().split(task, batch, want, devices, load)
        out[1::2] = -1
        return out


@given(packets)
def test_split_after_count_change_keeps_order(pkts: list[tuple[bytes, int]]) -> None:
    """Pieces of one packet split between device and software come back in order."""
    soft = lib()
    dev = SoftwareDevice(soft, name="sw")
    dev.enable(Task.CHECKSUM, Task.ENCRYPT, Task.DIGEST, Task.TCP_SEGMENT)
    eng = Engine(
        Direction.TX,
        Task.CHECKSUM | Task.ENCRYPT | Task.DIGEST | Task.TCP_SEGMENT,
        soft,
        Alternate(),
        [dev],
    )
    bits = np.array([m for _, m in pkts], dtype=np.int64)
    tasks = np.zeros(len(pkts), dtype=np.uint16)
    for k, t in enumerate((Task.CHECKSUM, Task.ENCRYPT, Task.DIGEST, Task.TCP_SEGMENT)):
        tasks[(bits >> k) & 1 == 1] |= int(t)
    b = Batch.from_packets([p for p, _ in pkts])
    b.ext.tasks[:] = tasks
    b.ext.l3_proto[:] = 4
    out = eng.process(b).batch
    want: list[bytes] = []
    for (p, _), t in zip(pkts, tasks.tolist(), strict=True):
        want += expected(p, t)
    assert out.packets() == want


def test_encrypt_split_between_host_and_device_never_repeats_a_sequence_number() -> None:
    """Host and device each hold an encrypt task with its own counter; the engine's
    prepare step reserves numbers on the host first, so no (SPI, seq) — and so no
    AEAD nonce — is used twice when a batch is split between them."""
    import os
    import struct

    from netoffload.sa import parse_sa_doc
    from netoffload.soft import make_task
    from netoffload.testing.packets import synthetic_flows
    from netoffload.wire.parse import parse_batch

    doc = {
        "sa": [
            {
                "spi": 0x1001,
                "algorithm": "aes-gcm-128",
                "key": os.urandom(20).hex(),
                "src": "198.18.0.1",
                "dst": "198.19.0.1",
            },
        ]
    }
    sas = parse_sa_doc(doc, "test SAs")
    host = SoftLibrary({Task.ENCRYPT: make_task(Task.ENCRYPT, sas=sas)})
    dev = SoftwareDevice(SoftLibrary({Task.ENCRYPT: make_task(Task.ENCRYPT, sas=sas)}))
    dev.enable(Task.ENCRYPT)
    eng = Engine(Direction.TX, Task.ENCRYPT, host, Alternate(), [dev])
    seqs: list[int] = []
    pkts = [p for p in synthetic_flows(600, seed=5) if p[0] >> 4 == 4]
    for lo in range(0, len(pkts), 100):
        b = Batch.from_packets(pkts[lo : lo + 100])
        parse_batch(b, ethernet=False)
        b.ext.tasks[:] = Task.ENCRYPT
        b.ext.sa[:] = 0
        out = eng.process(b).delivered()
        for raw in out.packets():
            ihl = (raw[0] & 15) * 4
            spi, seq = struct.unpack_from("!II", raw, ihl)
            assert spi == 0x1001
            seqs.append(seq)
    assert eng.counters[Task.ENCRYPT].offloaded > 0 and eng.counters[Task.ENCRYPT].software > 0
    assert len(seqs) == len(pkts) and len(set(seqs)) == len(seqs)


class Tail(Always):
    """The last ``share`` of the packets no task was done for yet go to device 0
    (the split Adaptive makes); packets on a trip stay on it."""

    name = "tail"

    def __init__(self, share: float) -> None:
        self.share = share

    def split(self, task, batch, want, devices, load):  # type: ignore[no-untyped-def]
        from netoffload.policy.threshold import in_trip

        out = np.full(len(batch), -1, np.int8)
        if in_trip(batch, want):
            out[want] = 0
            return out
        idx = np.flatnonzero(want & (batch.ext.done == 0))
        k = round(self.share * len(idx))
        if k:
            out[idx[len(idx) - k :]] = 0
        return out


@pytest.mark.parametrize("share", [0.0, 0.4, 1.0])
@given(
    st.lists(
        st.lists(st.tuples(st.binary(min_size=1, max_size=12), st.integers(0, 7)), max_size=12),
        max_size=5,
    ),
    st.integers(1, 3),
)
def test_pipelined_batches_exactly_once_in_order(
    share: float, batches: list[list[tuple[bytes, int]]], depth: int
) -> None:
    """start/finish with up to ``depth`` batches in flight gives what process gives."""
    soft = lib()
    dev = SoftwareDevice(soft, name="sw")
    dev.enable(Task.CHECKSUM, Task.ENCRYPT, Task.DIGEST)
    tasks3 = Task.CHECKSUM | Task.ENCRYPT | Task.DIGEST
    eng = Engine(Direction.TX, tasks3, soft, Tail(share), [dev])
    flight = []
    outs: list[Batch] = []
    for pkts in batches:
        b = Batch.from_packets([p for p, _ in pkts], uniform=True)
        bits = np.array([m for _, m in pkts], dtype=np.int64)
        for k, t in enumerate((Task.CHECKSUM, Task.ENCRYPT, Task.DIGEST)):
            b.ext.tasks[(bits >> k) & 1 == 1] |= np.uint16(t)
        b.ext.l3_proto[:] = 4
        flight.append(eng.start(b))
        while len(flight) >= depth:
            outs.append(eng.finish(flight.pop(0)).batch)
    while flight:
        outs.append(eng.finish(flight.pop(0)).batch)
    assert eng.pending == 0
    origin = 0
    for pkts, out in zip(batches, outs, strict=True):
        want: list[bytes] = []
        for p, m in pkts:
            want += expected(p, m)
        assert out.packets() == want
        assert np.array_equal(out.ext.origin, np.arange(origin, origin + len(pkts)))
        assert not out.ext.offload.any()
        origin += len(pkts)
    assert eng.packets_out == origin


def test_batches_finish_in_the_order_they_started() -> None:
    from netoffload.errors import ConfigError

    soft = lib()
    eng = Engine(Direction.TX, Task.CHECKSUM, soft, Never())
    b1, b2 = Batch.from_packets([b"ab"]), Batch.from_packets([b"cd"])
    b1.ext.tasks[:] = b2.ext.tasks[:] = Task.CHECKSUM
    p1, p2 = eng.start(b1), eng.start(b2)
    with pytest.raises(ConfigError):
        eng.finish(p2)
    assert eng.finish(p1).batch.packets() == [b"ab\xc5"]
    assert eng.finish(p2).batch.packets() == [b"cd\xc5"]
    with pytest.raises(ConfigError):
        eng.finish(p2)
    # process() would overtake a started batch
    p3 = eng.start(Batch.from_packets([b"x"]))
    with pytest.raises(ConfigError):
        eng.process(Batch.from_packets([b"y"]))
    assert eng.finish(p3).batch.packets() == [b"x"]
    assert eng.process(Batch.from_packets([b"y"])).batch.packets() == [b"y"]


def test_encrypt_after_segmentation_on_one_device_trip_never_repeats_a_sequence_number() -> None:
    """Segmentation and encryption bound for one device: the segments the device
    makes must be numbered by the host's counter too, one number each (a trip may
    not carry a task whose host-side prepare step would run before the packets it
    numbers exist)."""
    import os
    import struct

    from netoffload.batch import GsoType
    from netoffload.sa import parse_sa_doc
    from netoffload.soft import make_task
    from netoffload.testing.packets import tcp_packet
    from netoffload.wire.parse import parse_batch

    key = os.urandom(20).hex()
    doc = {
        "sa": [
            {
                "spi": 0x2002,
                "algorithm": "aes-gcm-128",
                "key": key,
                "src": "198.18.0.1",
                "dst": "198.19.0.1",
            },
        ]
    }
    sas = parse_sa_doc(doc, "test SAs")

    def library() -> SoftLibrary:
        return SoftLibrary(
            {
                Task.TCP_SEGMENT: make_task(Task.TCP_SEGMENT),
                Task.ENCRYPT: make_task(Task.ENCRYPT, sas=sas),
            }
        )

    class SegmentSplit(Always):
        """Every other super-packet is segmented on the device; all encryption there."""

        def split(self, task, batch, want, devices, load):  # type: ignore[no-untyped-def]
            out = super().split(task, batch, want, devices, load)
            if task == Task.TCP_SEGMENT:
                out[1::2] = -1
            return out

    dev = SoftwareDevice(library())
    dev.enable(Task.TCP_SEGMENT, Task.ENCRYPT)
    stages = Task.TCP_SEGMENT | Task.ENCRYPT
    eng = Engine(Direction.TX, stages, library(), SegmentSplit(), [dev])
    seqs: list[int] = []
    total = 0
    for rnd in range(4):
        pkts = [
            tcp_packet(4, bytes(1000 * (i % 5 + 1)), seq=rnd * 10**6 + i * 10**4) for i in range(10)
        ]
        b = Batch.from_packets(pkts)
        parse_batch(b, ethernet=False)
        b.ext.tasks[:] = stages
        b.ext.sa[:] = 0
        b.ext.gso_type[:] = GsoType.TCPV4
        b.ext.gso_size[:] = 1000
        total += sum(i % 5 + 1 for i in range(10))
        for raw in eng.process(b).delivered().packets():
            ihl = (raw[0] & 15) * 4
            spi, seq = struct.unpack_from("!II", raw, ihl)
            assert spi == 0x2002
            seqs.append(seq)
    assert eng.counters[Task.TCP_SEGMENT].offloaded > 0
    assert eng.counters[Task.TCP_SEGMENT].software > 0
    assert len(seqs) == total
    assert sorted(seqs) == list(range(1, total + 1))


def _esp_pair(window: int) -> tuple[object, SoftLibrary, SoftLibrary, SoftLibrary]:
    """An SA, a transmit library that encrypts under it, and two receive
    libraries (host, device) that decrypt it, each with its own task instance."""
    import os

    from netoffload.sa import parse_sa_doc
    from netoffload.soft import make_task

    doc = {
        "sa": [
            {
                "spi": 0x3003,
                "algorithm": "aes-gcm-128",
                "key": os.urandom(20).hex(),
                "src": "198.18.0.1",
                "dst": "198.19.0.1",
                "replay_window": window,
            },
        ]
    }
    sas = parse_sa_doc(doc, "test SAs")

    def lib(t: Task) -> SoftLibrary:
        return SoftLibrary({t: make_task(t, sas=sas)})

    return sas, lib(Task.ENCRYPT), lib(Task.DECRYPT), lib(Task.DECRYPT)


def _encrypted(tx: SoftLibrary, n: int, seed: int) -> list[bytes]:
    from netoffload.testing.packets import synthetic_flows
    from netoffload.wire.parse import parse_batch

    pkts = [p for p in synthetic_flows(3 * n, seed=seed) if p[0] >> 4 == 4][:n]
    b = Batch.from_packets(pkts)
    parse_batch(b, ethernet=False)
    b.ext.sa[:] = 0
    out = tx[Task.ENCRYPT].process(b, np.ones(len(b), np.bool_))
    assert out.ext.alive().all()
    return out.packets()


def _decrypt_run(eng: Engine, pkts: list[bytes]) -> Batch:
    from netoffload.wire.parse import parse_batch

    b = Batch.from_packets(pkts)
    parse_batch(b, ethernet=False)
    b.ext.tasks[:] = Task.DECRYPT
    return eng.process(b).batch


def test_decrypt_split_keeps_one_replay_window_on_the_host() -> None:
    """Host and device decrypt alternate packets (the device's trips reach it out
    of packet order): with a 64-packet window and batches of 200 nothing is
    falsely too old, and a replay that goes down the other path than its
    original is still caught — the host keeps the only window."""
    _, tx, host, devlib = _esp_pair(64)
    dev = SoftwareDevice(devlib)
    dev.enable(Task.DECRYPT)
    eng = Engine(Direction.RX, Task.DECRYPT, host, Alternate(), [dev])
    wire = _encrypted(tx, 601, seed=11)
    for lo in range(0, 600, 200):
        out = _decrypt_run(eng, wire[lo : lo + 200])
        assert out.ext.alive().all(), [Reason(int(x)).name for x in out.ext.error if x]
    assert eng.counters[Task.DECRYPT].offloaded > 0 and eng.counters[Task.DECRYPT].software > 0
    # one fresh packet first shifts every replayed one onto the other path
    replayed = wire[560:600]
    out = _decrypt_run(eng, [wire[600], *replayed])
    assert out.ext.error[0] == 0
    assert (out.ext.error[1:] == Reason.REPLAY).all()
    # and the same packets again, now on their original paths
    out = _decrypt_run(eng, replayed)
    assert (out.ext.error == Reason.REPLAY).all()


def _dos_pair(burst: int) -> tuple[SoftLibrary, SoftwareDevice]:
    from netoffload.soft.dos import DosFilter
    from netoffload.soft.rules import Bucket, DosConfig

    cfg = DosConfig(rate=Bucket(rate=1e-9, burst=float(burst)))

    def frozen() -> float:
        return 100.0

    host = SoftLibrary({Task.DOS_FILTER: DosFilter(cfg, clock=frozen)})
    dev = SoftwareDevice(SoftLibrary({Task.DOS_FILTER: DosFilter(cfg, clock=frozen)}))
    dev.enable(Task.DOS_FILTER)
    return host, dev


def _one_source(n: int) -> Batch:
    from netoffload.testing.packets import synthetic_flows
    from netoffload.wire.parse import parse_batch

    pkts = [p for p in synthetic_flows(4 * n, seed=3) if p[0] >> 4 == 4][:n]
    src = bytes((198, 18, 0, 7))  # one source address for all
    b = Batch.from_packets([p[:12] + src + p[16:] for p in pkts])
    parse_batch(b, ethernet=False)
    b.ext.tasks[:] = Task.DOS_FILTER
    return b


@pytest.mark.parametrize("policy", [Alternate(), Always(), Never()])
def test_dos_filter_state_never_forks_between_host_and_device(policy: object) -> None:
    """Host and device each hold a token bucket per source. Split per packet,
    one source would get both buckets' bursts; the stateful rules run on the
    host only, so exactly one burst passes whichever the policy prefers."""
    host, dev = _dos_pair(burst=10)
    eng = Engine(Direction.RX, Task.DOS_FILTER, host, policy, [dev])  # type: ignore[arg-type]
    passed = 0
    for _ in range(4):
        out = eng.process(_one_source(30)).batch
        passed += int(np.count_nonzero(out.ext.filter_verdict == 0))
    assert passed == 10


@pytest.mark.parametrize("fail_from", [1, 2, 3])
def test_dos_filter_state_survives_the_device_failing(fail_from: int) -> None:
    """The device does part of the filter, then fails (from its ``fail_from``-th
    trip on) and the host redoes its trips: the token bucket of the one source
    must be the one it was, not a fresh one. It used to be fresh: the device's
    bucket died with it and the host's let another burst through."""
    host, dev = _dos_pair(burst=10)
    faulty = FaultInjector(dev, when=lambda n, b: n >= fail_from)
    eng = Engine(Direction.RX, Task.DOS_FILTER, host, Always(), [faulty])
    passed = 0
    for _ in range(4):
        out = eng.process(_one_source(30)).batch
        assert len(out) == 30
        passed += int(np.count_nonzero(out.ext.filter_verdict == 0))
    assert passed == 10
    c = eng.counters[Task.DOS_FILTER]
    assert c.errors == 30 * (4 - fail_from + 1)  # every failed trip redone on the host
    assert c.offloaded == 30 * (fail_from - 1)


def test_dos_filter_state_survives_the_emulated_nic_process_dying() -> None:
    """The same with the emulated NIC, a separate process reached through shared
    rings, that exits at its third submission: one burst in all."""
    from dataclasses import replace

    from netoffload.devices.emulated_nic import PROFILES, EmulatedNIC

    rules = {"rate": {"rate": 1e-9, "burst": 10}, "size": {"min": 20}}
    prof = replace(PROFILES["full"], tasks=Task.DOS_FILTER)
    nic = EmulatedNIC(prof, options={Task.DOS_FILTER: {"rules": rules}}, die_at=3, core=None)
    try:
        host, _ = _dos_pair(burst=10)
        eng = Engine(Direction.RX, Task.DOS_FILTER, host, Always(), [nic])
        passed = 0
        for _ in range(5):
            out = eng.process(_one_source(30)).batch
            assert len(out) == 30
            passed += int(np.count_nonzero(out.ext.filter_verdict == 0))
        c = eng.counters[Task.DOS_FILTER]
        assert c.offloaded >= 60 and c.errors > 0 and not nic.load().up
        assert passed == 10
    finally:
        nic.close()


def test_dos_filter_device_does_the_stateless_part() -> None:
    """Split packet by packet between host and device, the stateless rules run
    where the packet went and the stateful ones on the host: one burst for the
    source whatever the split, the size rule on every packet."""
    from netoffload.soft.dos import DosFilter
    from netoffload.soft.rules import Bucket, DosConfig

    cfg = DosConfig(rate=Bucket(rate=1e-9, burst=10.0), min_size=600)

    def frozen() -> float:
        return 100.0

    host = SoftLibrary({Task.DOS_FILTER: DosFilter(cfg, clock=frozen)})
    dev = SoftwareDevice(SoftLibrary({Task.DOS_FILTER: DosFilter(cfg, clock=frozen)}))
    dev.enable(Task.DOS_FILTER)
    eng = Engine(Direction.RX, Task.DOS_FILTER, host, Alternate(), [dev])
    b = _one_source(40)
    small = b.length < 600
    out = eng.process(b).batch
    r = out.ext.filter_reason
    assert (r[small] == Reason.BAD_SIZE).all()  # every packet, on either path
    assert int(np.count_nonzero(r[~small] == 0)) == 10  # one bucket: the host's
    assert (r[~small] != 0).sum() == (r[~small] == Reason.RATE_LIMIT).sum()
    c = eng.counters[Task.DOS_FILTER]
    assert c.offloaded > 0 and c.software > 0
    assert dev.soft[Task.DOS_FILTER].sources is not None  # type: ignore[attr-defined]
    assert len(dev.soft[Task.DOS_FILTER].sources) == 0  # the device kept no bucket


class _ByOrigin(Always):
    """Per packet, the path its origin was dealt (-1 software, 0 or 1 a device)."""

    def __init__(self, deal: list[int]) -> None:
        self.deal = np.array(deal, dtype=np.int8)

    def split(self, task, batch, want, devices, load):  # type: ignore[no-untyped-def]
        out = self.deal[batch.ext.origin % len(self.deal)].copy()
        out[~want] = -1
        return out


@given(st.lists(st.tuples(st.binary(min_size=1, max_size=12), st.integers(-1, 1)), max_size=40))
def test_two_devices_and_software_share_a_batch(pkts: list[tuple[bytes, int]]) -> None:
    """Each packet goes the way it was dealt (software, device 0 or device 1) and
    the batch comes back whole, in order, every task done once."""
    soft = lib()
    devs = [SoftwareDevice(soft, name=f"sw{i}") for i in range(2)]
    for d in devs:
        d.enable(Task.CHECKSUM, Task.ENCRYPT, Task.DIGEST)
    deal = [k for _, k in pkts] or [0]
    eng = Engine(
        Direction.TX, Task.CHECKSUM | Task.ENCRYPT | Task.DIGEST, soft, _ByOrigin(deal), devs
    )
    b = Batch.from_packets([p for p, _ in pkts])
    b.ext.tasks[:] = int(Task.CHECKSUM | Task.ENCRYPT | Task.DIGEST)
    b.ext.l3_proto[:] = 4
    out = eng.process(b).batch
    assert out.packets() == [p + b"\xc5\xe7\xd1" for p, _ in pkts]
    for i, d in enumerate(devs):
        assert d.stats.packets == sum(1 for _, k in pkts if k == i)
    assert eng.counters[Task.DIGEST].software == sum(1 for _, k in pkts if k < 0)


class Asked(Always):
    """Always, remembering which tasks it was asked to split."""

    name = "asked"

    def __init__(self) -> None:
        self.asked: list[Task] = []

    def split(self, task, batch, want, devices, load):  # type: ignore[no-untyped-def]
        self.asked.append(task)
        return super().split(task, batch, want, devices, load)


@given(packets)
def test_a_stage_no_device_can_do_is_not_offered_to_the_policy(
    pkts: list[tuple[bytes, int]],
) -> None:
    """With a device that does only the checksum, the policy is asked about the
    checksum alone, and the batch comes out as with every stage in software."""
    outs = []
    for policy, devs in ((Never(), False), (Asked(), True)):
        soft = lib()
        dev = SoftwareDevice(soft, name="sw")
        dev.enable(Task.CHECKSUM)
        tasks = Task.CHECKSUM | Task.ENCRYPT | Task.DIGEST | Task.TCP_SEGMENT
        eng = Engine(Direction.TX, tasks, soft, policy, [dev] if devs else [])
        b = Batch.from_packets([p for p, _ in pkts])
        b.ext.tasks[:] = [t for _, t in pkts]
        b.ext.l3_proto[:] = 4
        out = eng.process(b).batch
        outs.append(out.packets())
        if isinstance(policy, Asked):
            assert set(policy.asked) <= {Task.CHECKSUM}
            wanted = any(t & Task.CHECKSUM for _, t in pkts)
            assert (Task.CHECKSUM in policy.asked) == wanted
            n_ck = sum(len(expected(p, t)) for p, t in pkts if t & Task.CHECKSUM)
            assert eng.counters[Task.CHECKSUM].offloaded == n_ck
    assert outs[0] == outs[1]


def test_software_costs_kept_only_for_tasks_a_device_has() -> None:
    """Only a task some device has enabled is ever weighed against a device: the
    software runs of the others are not queued for the cost fit (which folded a
    thousand of them at once, a millisecond, every thousand batches)."""
    soft = lib()
    dev = SoftwareDevice(soft, name="sw")
    dev.enable(Task.CHECKSUM)
    eng = Engine(Direction.TX, Task.CHECKSUM | Task.ENCRYPT, soft, Never(), [dev])
    for _ in range(3):
        b = Batch.from_packets([b"abc", b"de"])
        b.ext.tasks[:] = Task.CHECKSUM | Task.ENCRYPT
        b.ext.l3_proto[:] = 4
        eng.process(b)
    cost = eng.monitor.snapshot(0.0).cost
    assert cost[(Task.CHECKSUM, -1)].samples == 3
    assert (Task.ENCRYPT, -1) not in cost
    assert eng.counters[Task.ENCRYPT].software == 6
