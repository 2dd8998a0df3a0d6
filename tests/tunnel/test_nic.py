"""The emulated NIC's WireGuard transport crypto (tunnel/nic.py).

The key table is checked against a plain dict model (hypothesis) and under a
concurrent reader. The NIC is checked against the software path on the very
same batch (counters and slots assigned once on the host, then one copy sealed
or opened by software, the other by the NIC process): every byte and every
extension field the tasks write must agree. The NIC's sealed packets must also
open with the single-packet reference (``Keypair.open``, itself checked against
wireguard-go in test_interop_core), and what the reference seals must open on
the NIC. Inner packets are built with scapy.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing import shared_memory
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6

from netoffload.batch import Batch, Reason
from netoffload.devices.emulated_nic import EmulatedNIC
from netoffload.tasks import Task
from netoffload.tunnel import datapath as dpm
from netoffload.tunnel import keys
from netoffload.tunnel.loop import handshake_offline, offline_tunnel
from netoffload.tunnel.nic import KeyTable, NicSessions, WgNicLibrary
from netoffload.tunnel.peer import Keypair
from netoffload.tunnel.tunnel import Tunnel

NOW = 1_800_000_000.0
A_EP = ("198.18.0.1", 51820)
B_EP = ("198.18.0.2", 51821)
#: what the transmit/receive tasks write into the extension besides the bytes
EXT_CHECKED = (
    "l3_off",
    "l4_off",
    "hdr_len",
    "l3_proto",
    "l4_proto",
    "xflags",
    "vflags",
    "gso_type",
    "gso_size",
    "csum_start",
    "csum_offset",
    "tasks",
    "error",
    "sa",
    "seq",
    "class_id",
)


# --------------------------------------------------------------------------- key table


@dataclass
class _Kp:
    remote_index: int
    send_key: bytes
    recv_key: bytes


@dataclass
class _Peer:
    endpoint: tuple[str, int] | None


def _kp(i: int) -> _Kp:
    return _Kp(0x1000 + i, bytes([i % 256]) * 31 + b"s", bytes([i % 256]) * 31 + b"r")


def test_key_table_entries_follow_the_sessions() -> None:
    dp = dpm.Datapath(_NoProtocol())
    with KeyTable(capacity=16) as kt:
        kt.bind(dp)
        peer = _Peer(("198.18.0.7", 4000))
        dp.sessions.peers.append(peer)
        kp = _kp(3)
        s = dp.sessions.keypair_slot(kp, 0)
        e = kt.read(s)
        assert e is not None
        assert (e.remote_index, e.send_key, e.recv_key) == (
            kp.remote_index,
            kp.send_key,
            kp.recv_key,
        )
        assert e.endpoint == ("198.18.0.7", 4000)
        # the peer roams: the next use rewrites the endpoint only
        peer.endpoint = ("fd00:1::9", 5000)
        assert dp.sessions.keypair_slot(kp, 0) == s
        e = kt.read(s)
        assert e is not None and e.endpoint == ("fd00:1::9", 5000)
        assert kt.endpoint_writes == 1 and kt.writes == 1
        # the listen port travels in the header
        dp.listen_port = 51999
        dp.sessions.keypair_slot(kp, 0)
        assert NicSessions(kt.spec).listen_port == 51999
        # a forgotten slot is gone, its keys zeroed
        dp.sessions.drop_peer(peer)
        assert kt.read(s) is None and kt.held() == 0
        name = kt.spec.name
    assert dp.sessions.listener is None
    with pytest.raises(FileNotFoundError):
        shared_memory.SharedMemory(name=name)


class _NoProtocol:
    def __init__(self) -> None:
        self.peers: dict[bytes, Any] = {}


ops = st.lists(
    st.tuples(
        st.sampled_from(["use", "forget", "move"]),
        st.integers(0, 40),
        st.sampled_from([None, ("198.18.1.1", 1), ("198.18.1.2", 65535), ("fd00::5", 7)]),
    ),
    max_size=60,
)


@settings(max_examples=60, deadline=None)
@given(ops)
def test_key_table_matches_a_dict_model(script: list[tuple[str, int, Any]]) -> None:
    """Arbitrary slots (colliding modulo the capacity) used, re-used with another
    endpoint and forgotten: the table answers what a dict of live slots holds."""
    with KeyTable(capacity=8) as kt:
        model: dict[int, tuple[_Kp, tuple[str, int] | None]] = {}
        for op, slot, ep in script:
            if op == "forget":
                kt.keypair_forgotten(slot)
                model.pop(slot, None)
                continue
            kp = model[slot][0] if slot in model else _kp(slot)
            # the host never holds two live slots of one entry: drop the older
            for other in [s for s in model if s % 8 == slot % 8 and s != slot]:
                kt.keypair_forgotten(other)
                del model[other]
            kt.keypair_used(slot, kp, _Peer(ep))
            model[slot] = (kp, ep)
        for slot in range(41):
            e = kt.read(slot)
            if slot not in model:
                assert e is None
                continue
            kp, ep = model[slot]
            assert e is not None
            assert (e.remote_index, e.send_key, e.recv_key, e.endpoint) == (
                kp.remote_index,
                kp.send_key,
                kp.recv_key,
                ep,
            )


def test_key_table_reader_never_sees_a_torn_entry() -> None:
    """A reader copying entries while the host rewrites them sees one whole
    version or the other, never a mix (the sequence lock)."""
    with KeyTable(capacity=4) as kt:
        eps = [("198.18.2.1", 1111), ("fd00:2::2", 2222)]
        kp = _kp(1)
        kt.keypair_used(1, kp, _Peer(eps[0]))
        stop = threading.Event()
        seen: list[tuple[str, int] | None] = []

        def read() -> None:
            while not stop.is_set():
                e = kt.read(1)
                assert e is not None
                seen.append(e.endpoint)

        t = threading.Thread(target=read)
        t.start()
        try:
            for i in range(20000):
                kt.keypair_used(1, kp, _Peer(eps[i % 2]))
        finally:
            stop.set()
            t.join()
        assert seen and set(seen) <= set(eps)


# --------------------------------------------------------------------------- NIC vs software


def _tunnel(name: str, sk: bytes, peer: bytes, port: int, ep: tuple[str, int]) -> Tunnel:
    return offline_tunnel(
        name,
        sk,
        peer,
        port=port,
        endpoint=ep,
        address="198.18.30.1/24",
        allowed="198.18.30.0/24, fd00:30::/64",
    )


@dataclass
class Rig:
    a: Tunnel  # seals toward b
    b: Tunnel  # opens what a sealed
    nic_a: EmulatedNIC  # a's NIC over a's key table
    nic_b: EmulatedNIC
    kt_a: KeyTable
    kt_b: KeyTable

    @property
    def kp_a(self) -> Keypair:
        kp = next(iter(self.a.protocol.peers.values())).current
        assert kp is not None
        return kp

    @property
    def kp_b(self) -> Keypair:
        kp = next(iter(self.b.protocol.peers.values())).current
        assert kp is not None
        return kp


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    ka, kb = keys.generate_private(), keys.generate_private()
    pa, pb = keys.public_from_private(ka), keys.public_from_private(kb)
    a = _tunnel("nofna", ka, pb, A_EP[1], B_EP)
    b = _tunnel("nofnb", kb, pa, B_EP[1], A_EP)
    handshake_offline(a, b, A_EP, B_EP, NOW)
    # b takes its next keypair as current once it sees data from a: a keepalive
    peer_b = a.protocol.peers[pb]
    kp = peer_b.current
    assert kp is not None
    ka_msg = kp.seal(kp.reserve(1, NOW) or 0, b"")
    found = b.protocol.lookup(int.from_bytes(ka_msg[4:8], "little"))
    assert found is not None
    b.protocol.data_received(found[0], found[1], A_EP, NOW, 32, True)
    kt_a, kt_b = KeyTable(), KeyTable()
    nics: list[EmulatedNIC] = []
    try:
        kt_a.bind(a.dp)
        kt_b.bind(b.dp)
        for kt in (kt_a, kt_b):
            nics.append(EmulatedNIC("crypto", library=WgNicLibrary(kt.spec), slots=2, core=None))
        yield Rig(a, b, nics[0], nics[1], kt_a, kt_b)
    finally:
        for n in nics:
            n.close()
        for kt in (kt_a, kt_b):
            kt.close()
        a.close()
        b.close()


def _inner(sizes: list[int], six: list[bool], tcp: list[bool]) -> list[bytes]:
    out = []
    for i, (n, v6, t) in enumerate(zip(sizes, six, tcp, strict=True)):
        pay = bytes((i * 7 + j) % 251 for j in range(n))
        if v6:
            l3: Any = IPv6(src="fd00:30::1", dst="fd00:30::2")
        else:
            l3 = IP(src="198.18.30.1", dst="198.18.30.2")
        l4: Any = TCP(sport=1000 + i, dport=80, seq=i) if t else UDP(sport=1000 + i, dport=53)
        if not v6 and n % 5 == 0:
            l4 = ICMP(id=i)
        out.append(bytes(l3 / l4 / pay))
    return out


def _tx_batch(pkts: list[bytes]) -> Batch:
    b = Batch.from_packets(pkts, headroom=dpm.HEADROOM, tailroom=dpm.TAILROOM)
    b.ext.l3_proto[:] = [p[0] >> 4 for p in pkts]
    dpm.tx_wants(b)
    return b


def _on_nic(nic: EmulatedNIC, b: Batch, task: Task, sel: np.ndarray) -> Batch:
    b.ext.offload[:] = 0
    b.ext.offload[sel] = np.uint16(task)
    before = nic.nic.completions
    c = nic.complete(nic.submit(b, [task]))
    assert c.ok, c.error
    assert nic.nic.completions == before + 1  # done in the NIC process
    assert (c.batch.ext.by_device[sel] & np.uint16(task)).all()
    c.batch.ext.offload[:] = 0
    return c.batch


def _same(x: Batch, y: Batch) -> None:
    assert len(x) == len(y)
    for i in range(len(x)):
        assert bytes(x.packet(i)) == bytes(y.packet(i)), f"packet {i} differs"
    for f in EXT_CHECKED:
        assert np.array_equal(getattr(x.ext, f), getattr(y.ext, f)), f


def _seal_both(r: Rig, pkts: list[bytes]) -> tuple[Batch, Batch]:
    """The host's transmit steps up to encrypt, then the same batch sealed twice."""
    a = r.a
    b = _tx_batch(pkts)
    a.dp.now = NOW + 1
    sel = np.ones(len(b), dtype=np.bool_)
    b = a.tx_engine.soft[Task.CLASSIFY].process(b, sel)
    enc = a.tx_engine.soft[Task.ENCRYPT]
    enc.prepare(b, sel)
    soft = enc.process(b.copy(), sel)
    nic = _on_nic(r.nic_a, b.copy(), Task.ENCRYPT, sel)
    return soft, nic


sizes = st.lists(st.integers(0, 1400), min_size=1, max_size=48)


@settings(max_examples=25, deadline=None)
@given(sizes, st.data())
def test_nic_seals_the_software_bytes(rig: Rig, lens: list[int], data: st.DataObject) -> None:
    n = len(lens)
    six = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
    tcp = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
    pkts = _inner(lens, six, tcp)
    soft, nic = _seal_both(rig, pkts)
    _same(soft, nic)
    kp = rig.kp_b
    for i, orig in enumerate(pkts):
        raw = bytes(nic.packet(i))
        assert raw[0] == 0x45 and raw[16:20] == bytes([198, 18, 0, 2])
        assert int.from_bytes(raw[22:24], "big") == B_EP[1]
        assert int.from_bytes(raw[20:22], "big") == A_EP[1]
        opened = kp.open(raw[28:])
        assert opened is not None, f"packet {i} does not open with the reference"
        assert opened[1][: len(orig)] == orig


def test_nic_follows_the_peer_to_an_ipv6_endpoint(rig: Rig) -> None:
    peer = next(iter(rig.a.protocol.peers.values()))
    old = peer.endpoint
    peer.endpoint = ("fd00:99::2", 40000)
    try:
        soft, nic = _seal_both(rig, _inner([100, 1300, 0], [False, True, False], [True] * 3))
        _same(soft, nic)
        raw = bytes(nic.packet(0))
        assert raw[0] >> 4 == 6 and raw[24:40] == bytes.fromhex("fd000099" + "0" * 23 + "2")
        assert rig.kt_a.endpoint_writes >= 1
    finally:
        peer.endpoint = old


def _outer(msgs: list[bytes], src: tuple[str, int], dport: int) -> Batch:
    pkts = [
        bytes(IP(src=src[0], dst="198.18.0.99") / UDP(sport=src[1], dport=dport, chksum=0) / m)
        for m in msgs
    ]
    b = Batch.from_packets(pkts)
    b.ext.l3_proto[:] = 4
    return b


def _open_both(r: Rig, msgs: list[bytes]) -> tuple[Batch, Batch]:
    """The host's receive steps up to decrypt, then the same batch opened twice."""
    t = r.b
    b = _outer(msgs, A_EP, B_EP[1])
    dpm.rx_wants(b)
    t.dp.now = NOW + 1
    sel = (b.ext.tasks & np.uint16(Task.DOS_FILTER)) != 0
    b = t.rx_engine.soft[Task.DOS_FILTER].process(b, sel)
    want = ((b.ext.tasks & np.uint16(Task.DECRYPT)) != 0) & b.ext.alive()
    dec = t.rx_engine.soft[Task.DECRYPT]
    soft = dec.process(b.copy(), want)
    nic = _on_nic(r.nic_b, b.copy(), Task.DECRYPT, want)
    return soft, nic


@settings(max_examples=20, deadline=None)
@given(sizes, st.data())
def test_nic_opens_what_the_reference_seals(rig: Rig, lens: list[int], data: st.DataObject) -> None:
    n = len(lens)
    six = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
    tcp = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
    bad = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
    pkts = _inner(lens, six, tcp)
    kp = rig.kp_a
    first = kp.reserve(n + 1, NOW + 1)
    assert first is not None
    msgs = []
    for i, p in enumerate(pkts):
        m = bytearray(kp.seal(first + i, p))
        if bad[i]:  # a flipped bit in the ciphertext or the tag
            m[16 + (i * 13) % (len(m) - 16)] ^= 0x10
        msgs.append(bytes(m))
    msgs.append(kp.seal(first + n, b""))  # a keepalive
    soft, nic = _open_both(rig, msgs)
    _same(soft, nic)
    err = nic.ext.error.tolist()
    for i, p in enumerate(pkts):
        if bad[i]:
            assert err[i] == Reason.BAD_ICV
        else:
            assert err[i] == 0 and bytes(nic.packet(i)) == p
    assert err[n] == Reason.KEEPALIVE


def test_an_unknown_slot_fails_as_in_software(rig: Rig) -> None:
    """A slot missing from the table: on transmit the NIC refuses the trip (the
    engine redoes it in software, where it is known); on receive the packet
    fails with BAD_ICV, as the software path fails a slot it does not hold."""
    b = _tx_batch(_inner([64], [False], [False]))
    b.ext.sa[:] = 123456
    b.ext.class_id[:] = 0
    b.ext.offload[:] = np.uint16(Task.ENCRYPT)
    c = rig.nic_a.complete(rig.nic_a.submit(b, [Task.ENCRYPT]))
    assert not c.ok and c.batch is b
    kp = rig.kp_a
    first = kp.reserve(1, NOW + 1)
    assert first is not None
    rx = _outer([kp.seal(first, _inner([64], [False], [True])[0])], A_EP, B_EP[1])
    dpm.rx_wants(rx)
    rx.ext.sa[:] = 123456
    rx.ext.seq[:] = first
    sel = np.ones(1, dtype=np.bool_)
    soft = rig.b.rx_engine.soft[Task.DECRYPT].process(rx.copy(), sel)
    nic = _on_nic(rig.nic_b, rx.copy(), Task.DECRYPT, sel)
    _same(soft, nic)
    assert nic.ext.error.tolist() == [int(Reason.BAD_ICV)]
