"""The emulated NIC: a real process behind shared-memory rings.

Outputs are checked against packets built independently (testing.packets, itself
checked against scapy); the kill tests check that every packet comes out exactly
once, done, when the NIC process dies mid-flight.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netoffload.batch import Batch
from netoffload.caps import Enabled
from netoffload.devices import FaultInjector, SoftwareDevice
from netoffload.devices.emulated_nic import PROFILES, EmulatedNIC
from netoffload.devices.registry import devices
from netoffload.engine import Engine
from netoffload.errors import CapabilityError, DeviceDown
from netoffload.policy import Always, Failover, make_policy
from netoffload.sa import AEAD_ALGORITHMS, ALGORITHMS, DIGEST_ALGORITHMS, parse_sa_doc
from netoffload.soft import SoftLibrary
from netoffload.tasks import Direction, Task
from netoffload.testing.packets import tcp_packet, udp_packet
from netoffload.wire.parse import parse_batch

CSUM = replace(PROFILES["full"], tasks=Task.CHECKSUM)


def good_packets(n: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        pay = rng.integers(0, 256, int(rng.integers(0, 1400)), dtype=np.uint8).tobytes()
        v = 4 if i % 3 else 6
        out.append(udp_packet(v, pay, sport=1000 + i) if i % 2 else tcp_packet(v, pay))
    return out


def broken_batch(pkts: list[bytes]) -> Batch:
    """The packets with their L4 checksums zeroed (and IPv4 header checksums wrong)."""
    b = Batch.from_packets(pkts)
    parse_batch(b)
    for i in range(len(b)):
        l4 = int(b.start[i] + b.ext.l4_off[i])
        off = 16 if b.ext.l4_proto[i] == 6 else 6
        b.buf[l4 + off : l4 + off + 2] = 0
        if b.ext.l3_proto[i] == 4:
            b.buf[b.start[i] + 10] ^= 0x5A
    b.ext.tasks[:] = Task.CHECKSUM
    return b


def lib() -> SoftLibrary:
    return SoftLibrary.build([Task.CHECKSUM])


@pytest.fixture(scope="module")
def nic() -> Iterator[EmulatedNIC]:
    d = EmulatedNIC(CSUM)
    yield d
    d.close()


def test_profiles_report_their_tasks_and_limits() -> None:
    crypto = EmulatedNIC(
        "crypto", options={Task.DIGEST: {"key": b"k" * 16}}, start=False, enable_all=False
    )
    buf = crypto.query()
    assert buf.supported & ~(Task.ENCRYPT | Task.DECRYPT | Task.DIGEST) == Task(0)
    assert Task.DIGEST in buf.supported and Task.CHECKSUM not in buf.supported
    # offered without keys, usable (enabled when started) only with them
    assert Task.ENCRYPT in buf.supported and Task.ENCRYPT not in crypto.usable
    assert Task.DIGEST in crypto.usable
    assert all(
        r.max_offload_size == PROFILES["crypto"].max_offload_size for r in buf.records.values()
    )
    full = EmulatedNIC("full", start=False, enable_all=False)
    assert Task.CHECKSUM in full.query().supported
    # one name per NIC: the device and its profile, in the registry, caps and instances
    assert crypto.name == "emulated-nic:crypto" and full.name == "emulated-nic:full"
    assert {n for n in devices() if "nic" in n} == {"emulated-nic:full", "emulated-nic:crypto"}
    assert buf.device == crypto.name


def test_records_name_the_algorithms_and_modes_of_the_library_it_runs() -> None:
    buf = EmulatedNIC("full", start=False, enable_all=False).query()
    rec = buf.records
    # every cipher listed is one an SA can be made with, and the other way round
    for alg in rec[Task.ENCRYPT].algorithms:
        ent: dict[str, object] = {"spi": 256, "algorithm": alg}
        ent.update(src="198.18.0.1", dst="198.18.0.2")
        if alg == "null":
            ent.update(integrity="hmac-sha256-128", integrity_key="11" * 32)
        else:
            ent["key"] = "00" * (AEAD_ALGORITHMS[alg] + 4)
        doc = {"sa": [ent]}
        assert parse_sa_doc(doc).sas[0].algorithm == alg
    assert set(rec[Task.ENCRYPT].algorithms) == set(ALGORITHMS) == set(rec[Task.DECRYPT].algorithms)
    assert set(rec[Task.DIGEST].algorithms) == set(DIGEST_ALGORITHMS)
    assert set(rec[Task.CHECKSUM].features) == {"fill", "verify", "partial"}
    # enabling within them works; outside them fails naming device, task and limit
    on = buf.enable(Enabled(Task.ENCRYPT, algorithms=("chacha20-poly1305",)))
    assert on.enabled[Task.ENCRYPT].algorithms == ("chacha20-poly1305",)
    with pytest.raises(CapabilityError, match="aes-cbc-128") as err:
        buf.enable(Enabled(Task.ENCRYPT, algorithms=("aes-cbc-128",)))
    assert err.value.device == buf.device and err.value.task == "encrypt"


@settings(max_examples=15)
@given(st.lists(st.integers(1, 80), min_size=1, max_size=6), st.integers(0, 1000))
def test_nic_does_the_work(nic: EmulatedNIC, sizes: list[int], seed: int) -> None:
    sent = []
    for k, n in enumerate(sizes):
        pkts = good_packets(n, seed + k)
        b = broken_batch(pkts)
        b.ext.offload[:] = Task.CHECKSUM
        b.ext.offload[::3] = 0  # not these: they pass through untouched
        sent.append((nic.submit(b, [Task.CHECKSUM]), pkts, b))
    for ticket, pkts, b in sent:
        c = nic.complete(ticket)
        assert c.ok and c.ticket == ticket
        out = c.batch
        assert len(out) == len(pkts)
        for i in range(len(pkts)):
            if i % 3:
                assert bytes(out.packet(i)) == pkts[i]
                assert out.ext.by_device[i] == Task.CHECKSUM
            else:
                assert bytes(out.packet(i)) == bytes(b.packet(i))
                assert out.ext.done[i] == 0
    assert nic.outstanding() == 0 and nic.load().queued == 0


def test_added_cost_is_spent_in_the_nic() -> None:
    with EmulatedNIC(CSUM, per_packet_s=1e-4, per_byte_s=1e-8) as d:
        assert isinstance(d, EmulatedNIC)
        b = broken_batch(good_packets(20))
        b.ext.offload[:] = Task.CHECKSUM
        c = d.complete(d.submit(b, [Task.CHECKSUM]))
        assert c.ok
        # a lower bound: the NIC busy-waits at least this long
        assert c.elapsed_ns >= (20 * 1e-4 + b.nbytes * 1e-8) * 1e9


def test_kill_mid_flight_none_lost_none_duplicated() -> None:
    d = EmulatedNIC(CSUM, per_packet_s=2e-4)
    try:
        batches = []
        for k in range(6):
            b = broken_batch(good_packets(30, k))
            b.ext.offload[:] = Task.CHECKSUM
            batches.append((d.submit(b, [Task.CHECKSUM]), b))
        first = d.complete(batches[0][0])
        assert first.ok
        d.kill()
        outcomes = {first.ticket: first}
        for ticket, _ in batches[1:]:
            c = d.complete(ticket)
            assert c.ticket not in outcomes
            outcomes[c.ticket] = c
        assert sorted(outcomes) == [t for t, _ in batches]
        failed = [c for c in outcomes.values() if not c.ok]
        assert failed, "the NIC was killed with work in flight"
        for ticket, b in batches:
            c = outcomes[ticket]
            if not c.ok:
                assert c.batch is b  # handed back as submitted, to be redone
        assert not d.load().up
        with pytest.raises(DeviceDown):
            d.submit(batches[0][1], [Task.CHECKSUM])
        assert d.counters()["redone_on_down"] > 0
    finally:
        d.close()


def test_engine_redoes_work_of_a_dead_nic() -> None:
    d = EmulatedNIC(CSUM, die_at=3)
    try:
        eng = Engine(Direction.TX, Task.CHECKSUM, lib(), Always(), [d])
        total = 0
        for k in range(6):
            pkts = good_packets(25, 100 + k)
            out = eng.process(broken_batch(pkts))
            # every packet exactly once, in order, done right
            assert out.batch.packets() == pkts
            assert np.array_equal(out.batch.ext.origin, np.arange(total, total + len(pkts)))
            total += len(pkts)
        c = eng.counters[Task.CHECKSUM]
        assert c.offloaded + c.software == total
        assert c.errors > 0 and c.offloaded > 0 and c.software > 0
        assert not d.load().up
    finally:
        d.close()


def test_device_failing_every_submit_ends_in_software() -> None:
    d = EmulatedNIC(CSUM, fail_every=1)
    now = [0.0]
    try:
        pol = Failover(Always(), backoff=1.0)
        eng = Engine(Direction.TX, Task.CHECKSUM, lib(), pol, [d], clock=lambda: now[0])
        total = 0
        for k in range(12):
            pkts = good_packets(10, 200 + k)
            out = eng.process(broken_batch(pkts))
            assert out.batch.packets() == pkts
            total += len(pkts)
            now[0] += 0.5
        c = eng.counters[Task.CHECKSUM]
        assert c.software == total and c.offloaded == 0
        f = pol.describe()["failover"]
        assert isinstance(f, dict)
        dec = f["decisions"]["checksum"]
        assert dec["disabled"] >= 2 and dec["probes"] >= 1 and dec["suppressed"] > 0
        assert d.counters()["failed"] >= 2
    finally:
        d.close()


def test_refusing_device_with_adaptive_failover() -> None:
    dev = FaultInjector(SoftwareDevice(lib()), share=1.0, mode="refuse")
    dev.enable(Task.CHECKSUM)
    now = [0.0]
    eng = Engine(
        Direction.TX,
        Task.CHECKSUM,
        lib(),
        make_policy("adaptive+failover"),
        [dev],
        clock=lambda: now[0],
    )
    total = 0
    for k in range(20):
        pkts = good_packets(8, 300 + k)
        assert eng.process(broken_batch(pkts)).batch.packets() == pkts
        total += len(pkts)
        now[0] += 0.1
    c = eng.counters[Task.CHECKSUM]
    assert c.software == total and c.offloaded == 0 and c.errors > 0


def test_close_is_clean_and_idempotent() -> None:
    d = EmulatedNIC(CSUM)
    assert d._rings is not None
    shm = "/dev/shm/" + d._rings.spec.name
    proc = d._handle.proc if d._handle else None
    assert os.path.exists(shm) and proc is not None and proc.is_alive()
    d.close()
    d.close()
    assert not os.path.exists(shm)
    assert not d.load().up
    with pytest.raises(DeviceDown):
        d.submit(broken_batch(good_packets(2)), [Task.CHECKSUM])


class _Tail(Always):
    """The last ``share`` of the wanted packets to device 0 (as Adaptive splits)."""

    name = "tail"

    def __init__(self, share: float) -> None:
        self.share = share

    def split(self, task, batch, want, devices, load):  # type: ignore[no-untyped-def]
        out = np.full(len(batch), -1, np.int8)
        idx = np.flatnonzero(want)
        k = round(self.share * len(idx))
        if k:
            out[idx[len(idx) - k :]] = 0
        return out


def _uniform(pkts: list[bytes]) -> Batch:
    b = broken_batch(pkts)
    u = Batch.from_packets(b.packets(), uniform=True)
    u.ext = b.ext
    return u


@pytest.mark.parametrize("die_at", [0, 4])
def test_pipelined_split_in_place_exactly_once_in_order(die_at: int) -> None:
    """Two batches in flight, each split between host and NIC without copies (the
    NIC's output read straight into the batch); a NIC dying mid-flight loses and
    repeats nothing."""
    d = EmulatedNIC(CSUM, die_at=die_at)
    try:
        eng = Engine(Direction.TX, Task.CHECKSUM, lib(), _Tail(0.6), [d])
        flight = []
        sent: list[tuple[Batch, list[bytes]]] = []
        outs = []
        for k in range(8):
            pkts = good_packets(40, 300 + k)
            b = _uniform(pkts)
            sent.append((b, pkts))
            flight.append(eng.start(b))
            if len(flight) == 2:
                outs.append(eng.finish(flight.pop(0)).batch)
        outs.append(eng.finish(flight.pop(0)).batch)
        total = 0
        for (_, pkts), out in zip(sent, outs, strict=True):
            assert out.packets() == pkts
            assert np.array_equal(out.ext.origin, np.arange(total, total + len(pkts)))
            total += len(pkts)
        c = eng.counters[Task.CHECKSUM]
        assert c.offloaded + c.software == total
        if die_at:
            assert c.errors > 0 and not d.load().up
        else:
            assert c.offloaded == 8 * 24 and c.errors == 0
            assert all(out is b for (b, _), out in zip(sent, outs, strict=True))  # no copy
    finally:
        d.close()


def test_host_sleeps_while_a_queued_batch_is_far_from_done() -> None:
    """With a batch queued behind the one awaited and the awaited one due in tens of
    milliseconds, the host sleeps until it is nearly due instead of spinning: the
    CPU it spends waiting is a small part of the wait (spinning, it is all of it)."""
    import time

    with EmulatedNIC(CSUM, per_packet_s=1e-3, host_spin_s=5e-4) as d:
        assert isinstance(d, EmulatedNIC)
        for _ in range(2):  # learn the service time a packet
            b = broken_batch(good_packets(5))
            b.ext.offload[:] = Task.CHECKSUM
            assert d.complete(d.submit(b, [Task.CHECKSUM])).ok
        got = []
        for _ in range(3):
            tickets = []
            for _ in range(2):
                b = broken_batch(good_packets(20))  # 20 ms of NIC time each
                b.ext.offload[:] = Task.CHECKSUM
                tickets.append(d.submit(b, [Task.CHECKSUM]))
            w0, c0 = time.perf_counter(), time.process_time()
            assert all(d.complete(t).ok for t in tickets)
            got.append((time.process_time() - c0) / (time.perf_counter() - w0))
        assert min(got) < 0.5, got


@pytest.mark.parametrize("uniform", [True, False])
def test_a_batch_larger_than_a_ring_region_is_cut_to_fit(uniform: bool) -> None:
    """The engine gives the NIC as many packets as one region holds and keeps the
    rest in software: nothing refused, every packet checked once, in order."""
    pkts = good_packets(120, seed=3)
    with EmulatedNIC(CSUM, region_bytes=64 << 10, slots=4) as d:
        broken = broken_batch(pkts)
        b = Batch.from_packets([bytes(broken.packet(i)) for i in range(120)], uniform=uniform)
        assert (b.stride > 0) == uniform
        parse_batch(b)
        b.ext.tasks[:] = Task.CHECKSUM
        fit = d.submit_limit(b, np.ones(len(b), np.bool_))
        assert 0 < fit < len(b)
        eng = Engine(Direction.TX, Task.CHECKSUM, lib(), Always(), [d])
        out = eng.process(b).batch
        c = eng.counters[Task.CHECKSUM]
        assert c.errors == 0 and d.stats.errors == 0
        assert c.offloaded + c.software == len(pkts) and c.offloaded > 0
        assert [bytes(out.packet(i)) for i in range(len(out))] == pkts
