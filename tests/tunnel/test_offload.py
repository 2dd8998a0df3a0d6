"""The tunnel's engine devices (tunnel/offload.py): the TUN's receive checksum,
the NIC set-up and tear-down, and the outer UDP rows of ``status()``."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from netoffload.batch import Batch, CsumVerdict, VnetFlag
from netoffload.tasks import Task
from netoffload.tunnel import datapath as dpm
from netoffload.tunnel.offload import TunChecksum, TunnelOffload, outer_rows


class _NoProtocol:
    def __init__(self) -> None:
        self.peers: dict[bytes, object] = {}


def _batch(n: int) -> Batch:
    b = Batch.from_packets([bytes([0x45]) + bytes(39)] * n)
    b.ext.l3_proto[:] = 4
    return b


def test_tun_checksum_marks_only_authenticated_packets() -> None:
    dev = TunChecksum("nofx0")
    b = _batch(6)
    e = b.ext
    e.offload[:] = np.uint16(Task.CHECKSUM)
    e.offload[5] = 0  # not asked
    e.done[:4] = np.uint16(Task.DECRYPT)  # 0..3 authenticated by the data path
    e.error[3] = 1  # ... but 3 failed later
    c = dev.complete(dev.submit(b, [Task.CHECKSUM]))
    assert c.ok
    valid = (c.batch.ext.vflags & VnetFlag.DATA_VALID) != 0
    assert valid.tolist() == [True, True, True, False, False, False]
    assert (c.batch.ext.csum_verdict[:3] == CsumVerdict.GOOD).all()
    assert c.batch.ext.csum_verdict[4] == CsumVerdict.UNKNOWN  # the kernel checks it
    by = (c.batch.ext.by_device & np.uint16(Task.CHECKSUM)) != 0
    assert by.tolist() == [True] * 5 + [False]
    assert dev.counters()["data_valid"] == 3 and dev.counters()["kernel_verifies"] == 1


def test_tun_checksum_refuses_other_tasks() -> None:
    dev = TunChecksum("nofx0")
    b = _batch(2)
    b.ext.offload[:] = np.uint16(Task.CHECKSUM | Task.DECRYPT)
    c = dev.complete(dev.submit(b, [Task.DECRYPT, Task.CHECKSUM]))
    assert not c.ok and (b.ext.vflags == 0).all()
    assert Task.DECRYPT not in dev.query().enabled and Task.CHECKSUM in dev.query().enabled


def test_no_nic_means_the_tun_alone() -> None:
    off = TunnelOffload("none", "nofx0", dpm.Datapath(_NoProtocol()))
    assert off.tx_devices == [] and off.rx_devices == [off.tun_csum]
    assert off.pids == [] and off.describe()["transmit"] == []
    off.close()


def test_crypto_nic_up_and_down_restores_affinity() -> None:
    before = os.sched_getaffinity(0)
    dp = dpm.Datapath(_NoProtocol())
    off = TunnelOffload("crypto", "nofx0", dp)
    try:
        assert dp.sessions.listener is off.table
        assert [d.name for d in off.tx_devices] == ["emulated-nic:crypto/tx"]
        assert [d.name for d in off.rx_devices] == ["tun:nofx0", "emulated-nic:crypto/rx"]
        assert len(off.pids) == 2
        if len(before) > 1 and off.nic_tx is not None and off.nic_tx.core is not None:
            assert off.nic_tx.core not in os.sched_getaffinity(0)  # the host stays off it
    finally:
        off.close()
    assert os.sched_getaffinity(0) == before
    assert dp.sessions.listener is None


@dataclass
class _Udp:
    gso_datagrams_out: int
    gro_datagrams_in: int


def test_outer_rows_are_the_kernels() -> None:
    tx, rx = outer_rows(_Udp(7, 3))
    assert tx["udp-segment (outer)"]["offloaded"] == 7
    assert tx["udp-segment (outer)"]["software"] == 0
    assert rx["udp-assemble (outer)"]["offloaded"] == 3
    assert outer_rows(None) == ({}, {})
