"""The WireGuard encrypt and decrypt tasks with the compiled AEAD loop against their
Python loop.

With the C extension (``_native.kernel.aead``) the batch paths make every
ChaCha20-Poly1305 call of a keypair slot in one kernel call; without it
(``NETOFFLOAD_NATIVE=0``) they loop in Python over the same calls. Two identical
worlds (the fakes of ``test_datapath_small``) get the same batches, one with the
kernel, one without, with the scalar small-batch paths off in both, and everything
is compared: packet bytes, every extension field, layout, counters taken, replay
windows, staged packets. The inputs mix good packets with tampered, replayed and
unknown-index ones, handshakes and junk, and keypair slots forgotten between the
filter and the decrypt. What the AEAD itself gives is checked against the real
thing elsewhere (``test_datapath``: the reference keypair; ``test_tunnel_interop``:
wireguard-go).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netoffload import _native
from netoffload.batch import Batch
from netoffload.engine import Engine
from netoffload.policy import Never
from netoffload.soft import SoftLibrary, make_task
from netoffload.tasks import Direction, Task
from netoffload.tunnel import datapath as dpm

from .test_datapath_small import (
    RxMessage,
    TxPacket,
    WorldSpec,
    make_world,
    rx_batch,
    rx_messages,
    same_batch,
    same_world,
    tx_batch,
    tx_packets,
    worlds,
)

pytestmark = pytest.mark.skipif(
    dpm._aead_kernel() is None, reason=f"no compiled AEAD loop: {_native.status()}"
)

SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def both(
    monkeypatch: pytest.MonkeyPatch, spec: WorldSpec, run: Callable[[dpm.Datapath], Any]
) -> tuple[tuple[dpm.Datapath, Any], tuple[dpm.Datapath, Any]]:
    """``run`` in a world without the kernel, then in its twin with it (batch paths)."""
    monkeypatch.setattr(dpm, "SMALL", 0)
    real = dpm._aead_kernel
    out = []
    for kern in (lambda: None, real):
        monkeypatch.setattr(dpm, "_aead_kernel", kern)
        dp = make_world(spec)
        out.append((dp, run(dp)))
    return out[0], out[1]


@SETTINGS
@given(worlds, st.lists(tx_packets, min_size=0, max_size=40), st.integers(0, 1 << 40))
def test_encrypt_kernel_equals_python(
    monkeypatch: pytest.MonkeyPatch, spec: WorldSpec, pkts: list[TxPacket], pick: int
) -> None:
    def run(dp: dpm.Datapath) -> tuple[Batch, Batch, dict[int, int]]:
        b = tx_batch(pkts)
        dpm.tx_wants(b)
        n = len(b)
        mask = np.array([(pick >> (i % 40)) & 1 == 0 or i % 3 == 0 for i in range(n)], np.bool_)
        dpm.WgRoute(dp).process(b, mask)
        routed = Batch(
            b.buf.copy(), b.start.copy(), b.length.copy(), b.slot_lo, b.slot_hi, b.ext.copy()
        )
        enc = dpm.WgEncrypt(dp)
        return routed, enc.process(b, mask), enc.sent_bytes

    (dpa, ra), (dpb, rb) = both(monkeypatch, spec, run)
    same_batch(ra[0], rb[0])
    same_batch(ra[1], rb[1])
    assert ra[2] == rb[2]
    same_world(dpa, dpb)


@SETTINGS
@given(worlds, st.lists(tx_packets, min_size=1, max_size=40))
def test_transmit_engine_kernel_equals_python(
    monkeypatch: pytest.MonkeyPatch, spec: WorldSpec, pkts: list[TxPacket]
) -> None:
    def run(dp: dpm.Datapath) -> Batch:
        lib = SoftLibrary(
            {
                Task.CLASSIFY: dpm.WgRoute(dp),
                Task.TCP_SEGMENT: make_task(Task.TCP_SEGMENT),
                Task.UDP_SEGMENT: make_task(Task.UDP_SEGMENT),
                Task.CHECKSUM: make_task(Task.CHECKSUM, mode="fill"),
                Task.ENCRYPT: dpm.WgEncrypt(dp),
            }
        )
        eng = Engine(Direction.TX, Task(0), lib, Never(), order=dpm.TX_ORDER)
        b = tx_batch(pkts)
        dpm.tx_wants(b)
        return eng.process(b).batch

    (dpa, a), (dpb, b) = both(monkeypatch, spec, run)
    same_batch(a, b, whole=False)
    same_world(dpa, dpb)


#: receive batches: many transport messages (several per peer and counter, so
#: replays within the batch, and runs long enough for the windows' batch update)
rx_lists = st.lists(
    st.one_of(rx_messages, rx_messages.map(lambda m: dataclasses.replace(m, kind="data"))),
    min_size=0,
    max_size=48,
)


@SETTINGS
@given(worlds, rx_lists, st.sets(st.integers(0, 2), max_size=2), st.integers(0, 1 << 48))
def test_decrypt_kernel_equals_python(
    monkeypatch: pytest.MonkeyPatch,
    spec: WorldSpec,
    msgs: list[RxMessage],
    forget: set[int],
    pick: int,
) -> None:
    def run(dp: dpm.Datapath) -> list[Batch]:
        b = rx_batch(msgs)
        n = len(b)
        dpm.rx_wants(b)
        mask = np.array([(pick >> (i % 48)) & 1 == 0 or i % 4 == 0 for i in range(n)], np.bool_)
        dpm.WgFilter(dp).process(b, mask)
        steps = [b.ext.copy()]
        for s in sorted(forget):  # a slot forgotten after the filter found it
            dp.sessions.keypairs.pop(s, None)
        dec = dpm.WgDecrypt(dp)
        dec.process(b, mask)
        steps.append(b.ext.copy())
        dec.settle(b, mask)
        dpm.WgSource(dp).process(b, mask)
        return [Batch(b.buf, b.start, b.length, b.slot_lo, b.slot_hi, x) for x in steps] + [b]

    (dpa, a), (dpb, b) = both(monkeypatch, spec, run)
    for x, y in zip(a, b, strict=True):
        same_batch(x, y)
    same_world(dpa, dpb)
