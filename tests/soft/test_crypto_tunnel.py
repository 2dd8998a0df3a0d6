"""ESP tunnel mode around the inner packet: what the outer header carries and
what decapsulation checks (soft/crypto.py).

- the outer length field's limit: a per-packet TOO_BIG, never a corrupt packet;
- DSCP copied and ECN handled per RFC 6040 normal mode, the decapsulation table
  written out below from the RFC text (Figure 4);
- the IPv6 outer flow label from the inner flow (RFC 6438);
- inbound traffic selectors checked after decryption (RFC 4301 5.2).

scapy's ESP (scapy.layers.ipsec) is the independent implementation that
decrypts what we send and parses the outer headers.
"""

from __future__ import annotations

import numpy as np
import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.ipsec import ESP, SecurityAssociation
from scapy.packet import Raw

from netoffload.batch import Batch, Reason
from netoffload.sa import SATable
from netoffload.sa import SecurityAssociation as OurSA
from netoffload.soft.crypto import EncryptTask

KEY = bytes(range(16)) + b"\xca\xfe\xba\xbe"


def our_sa(v: int = 4, udp: bool = False, **kw: object) -> OurSA:
    src, dst = ("198.18.0.1", "198.19.0.1") if v == 4 else ("fd00::1", "fd00::2")
    return OurSA(0x1001, "aes-gcm-128", KEY, src, dst, udp_encap=udp, **kw)  # type: ignore[arg-type]


def scapy_sa(sa: OurSA) -> SecurityAssociation:
    tun = IP(src=sa.src, dst=sa.dst) if sa.outer_version == 4 else IPv6(src=sa.src, dst=sa.dst)
    nat = UDP(sport=sa.udp_sport, dport=sa.udp_dport) if sa.udp_encap else None
    return SecurityAssociation(
        ESP,
        spi=sa.spi,
        crypt_algo="AES-GCM",
        crypt_key=sa.key,
        tunnel_header=tun,
        nat_t_header=nat,
        esn_en=sa.esn,
    )


def outer_parse(sa: OurSA, raw: bytes) -> IP | IPv6:
    return IP(raw) if sa.outer_version == 4 else IPv6(raw)


# ------------------------------------------------------------- outer header limits
def _inner_of_length(n: int, v: int = 4, i: int = 0) -> bytes:
    """A whole IPv4/IPv6 UDP packet of exactly ``n`` bytes."""
    if v == 4:
        return bytes(IP(src="10.0.0.1", dst="10.0.0.2", id=i) / UDP(sport=7) / Raw(b"b" * (n - 28)))
    return bytes(IPv6(src="fd01::1", dst="fd01::2") / UDP(sport=7) / Raw(b"b" * (n - 48)))


@pytest.mark.parametrize(("v", "udp"), [(4, False), (4, True), (6, False), (6, True)])
@pytest.mark.parametrize("uniform", [True, False])
def test_too_big_for_the_outer_header_is_a_verdict_not_a_corrupt_packet(
    v: int, udp: bool, uniform: bool
) -> None:
    """An inner packet whose ESP packet would not fit the outer length field
    (IPv4 total length, IPv6 payload length: 65535) gets TOO_BIG and keeps its
    bytes; the largest that fits is encrypted whole (scapy decrypts it, and reads
    the outer length it carries). A 65535-byte inner packet used to come out as a
    65592-byte datagram whose IPv4 total length read 56."""
    sa = our_sa(v, udp)
    limit = 65535 + (40 if v == 6 else 0)  # the largest outer IP packet
    # encrypted part (inner + padding + 2) is a multiple of 4: the largest inner that fits
    room = limit - sa.overhead - 16
    fit = room - room % 4 - 2
    big = [_inner_of_length(n, v, i) for i, n in enumerate([fit + 1, 65535, fit + 4])]
    ok = [_inner_of_length(fit, v, 9)] * 2
    for pk in (big[:2], ok, [ok[0], big[0], ok[1]]):
        b = Batch.from_packets(pk, uniform=uniform)
        b.ext.sa[:] = 0
        out = EncryptTask(sas=SATable((sa,))).process(b, np.ones(len(pk), bool))
        for i, raw in enumerate(out.packets()):
            if len(pk[i]) > fit:
                assert out.ext.error[i] == Reason.TOO_BIG
                assert raw == pk[i]
            else:
                assert out.ext.error[i] == 0
                total = sa.overhead + fit + 2 + 16  # within 3 bytes of the limit
                assert len(raw) == total and limit - 4 < total <= limit
                outer = outer_parse(sa, raw)
                assert (outer.len if v == 4 else outer.plen + 40) == total
                ssa = scapy_sa(sa)
                assert bytes(ssa.decrypt(outer)) == pk[i]


# ------------------------------------------------------------- DSCP and ECN (RFC 6040)
NOT_ECT, ECT1, ECT0, CE = 0b00, 0b01, 0b10, 0b11
DROP = -1
#: RFC 6040 section 4.2, Figure 4 ("New IP in IP Decapsulation Behaviour"), as
#: written there: rows the arriving inner header, columns the arriving outer
#: header, cells the outgoing (inner) ECN field or <drop>.
#:
#:   +---------+------------------------------------------------+
#:   |Arriving |            Arriving Outer Header               |
#:   |   Inner +---------+------------+------------+------------+
#:   |  Header | Not-ECT | ECT(0)     | ECT(1)     |     CE     |
#:   +---------+---------+------------+------------+------------+
#:   | Not-ECT | Not-ECT |Not-ECT(!!!)|Not-ECT(!!!)| <drop>(!!!)|
#:   |  ECT(0) |  ECT(0) | ECT(0)     | ECT(1)     |     CE     |
#:   |  ECT(1) |  ECT(1) | ECT(1) (!) | ECT(1)     |     CE     |
#:   |    CE   |      CE |     CE     |     CE(!!!)|     CE     |
#:   +---------+---------+------------+------------+------------+
RFC6040_DECAP = {
    (NOT_ECT, NOT_ECT): NOT_ECT,
    (NOT_ECT, ECT0): NOT_ECT,
    (NOT_ECT, ECT1): NOT_ECT,
    (NOT_ECT, CE): DROP,
    (ECT0, NOT_ECT): ECT0,
    (ECT0, ECT0): ECT0,
    (ECT0, ECT1): ECT1,
    (ECT0, CE): CE,
    (ECT1, NOT_ECT): ECT1,
    (ECT1, ECT0): ECT1,
    (ECT1, ECT1): ECT1,
    (ECT1, CE): CE,
    (CE, NOT_ECT): CE,
    (CE, ECT0): CE,
    (CE, ECT1): CE,
    (CE, CE): CE,
}
DSCPS = [0, 10, 46, 63]  # best effort, AF11, EF, the largest


def _inner_tos(v: int, tos: int, i: int = 0, proto: str = "udp") -> bytes:
    from scapy.layers.inet import TCP

    l4 = TCP(sport=1000 + i, dport=80) if proto == "tcp" else UDP(sport=1000 + i, dport=53)
    if v == 4:
        return bytes(IP(src="10.1.0.1", dst="10.2.0.1", tos=tos, id=i) / l4 / Raw(b"p" * 40))
    return bytes(IPv6(src="fd01:1::1", dst="fd01:2::1", tc=tos) / l4 / Raw(b"p" * 40))


def _tos_of(p: IP | IPv6) -> int:
    return int(p.tos) if isinstance(p, IP) else int(p.tc)


def _v4_checksum_ok(raw: bytes) -> bool:
    p = IP(raw)
    want = p.chksum
    del p.chksum
    return int(IP(bytes(p)).chksum) == int(want)


@pytest.mark.parametrize(
    ("v", "inner_v", "udp"), [(4, 4, False), (4, 6, True), (6, 4, False), (6, 6, True)]
)
@pytest.mark.parametrize("uniform", [True, False])
def test_encapsulation_copies_dscp_and_ecn(v: int, inner_v: int, udp: bool, uniform: bool) -> None:
    """RFC 6040 normal mode at the ingress: the outer ECN field is the inner one
    (CE included); DSCP is copied too (RFC 4301 5.1.2.1). The outer IPv4 header
    checksum stays right; scapy decrypts the inner packet unchanged. The outer
    TOS / traffic class used to be 0 whatever the inner packet carried."""
    sa = our_sa(v, udp)
    tos = [d << 2 | e for d in DSCPS for e in (NOT_ECT, ECT1, ECT0, CE)]
    pkts = [_inner_tos(inner_v, t, i) for i, t in enumerate(tos)]
    for batch in (pkts, [pkts[5]] * 4):  # mixed, and one TOS in an equal-size run
        b = Batch.from_packets(batch, uniform=uniform)
        b.ext.sa[:] = 0
        out = EncryptTask(sas=SATable((sa,))).process(b, np.ones(len(batch), bool))
        assert not out.ext.error.any()
        for raw, inner in zip(out.packets(), batch, strict=True):
            outer = outer_parse(sa, raw)
            got = _tos_of(outer)
            assert got == _tos_of(IP(inner) if inner_v == 4 else IPv6(inner))
            if v == 4:
                assert _v4_checksum_ok(raw)
            assert bytes(scapy_sa(sa).decrypt(outer)) == inner


def _scapy_encrypted(sa: OurSA, inner: list[bytes], outer_tos: list[int]) -> list[bytes]:
    """scapy encrypts each inner packet with the given outer TOS / traffic class."""
    ssa = scapy_sa(sa)
    out = []
    for p, t in zip(inner, outer_tos, strict=True):
        if sa.outer_version == 4:
            ssa.tunnel_header = IP(src=sa.src, dst=sa.dst, tos=t)
        else:
            ssa.tunnel_header = IPv6(src=sa.src, dst=sa.dst, tc=t)
        out.append(bytes(ssa.encrypt(IP(p) if p[0] >> 4 == 4 else IPv6(p))))
    return out


@pytest.mark.parametrize(
    ("v", "inner_v", "udp"), [(4, 4, False), (6, 4, True), (4, 6, True), (6, 6, False)]
)
@pytest.mark.parametrize("uniform", [True, False])
def test_decapsulation_follows_the_rfc6040_table(
    v: int, inner_v: int, udp: bool, uniform: bool
) -> None:
    """Every (inner, outer) ECN combination, packets encrypted by scapy with the
    outer TOS set: the inner ECN field becomes the table's cell (its DSCP stays,
    an inner IPv4 header checksum stays right); a Not-ECT inner packet in a CE
    outer one is dropped (ECN_DROP) and keeps its bytes. Decapsulation used to
    leave the inner ECN field alone, losing every CE mark."""
    sa = our_sa(v, udp, replay_window=64)
    cells = sorted(RFC6040_DECAP.items())
    dscp = 46
    inner = [_inner_tos(inner_v, dscp << 2 | i_ecn, n) for n, ((i_ecn, _o), _c) in enumerate(cells)]
    outer_tos = [(10 << 2) | o for (_i, o), _c in cells]  # another DSCP outside
    wire = _scapy_encrypted(sa, inner, outer_tos)
    if uniform:  # all of one length: the whole-batch path takes them
        assert len({len(w) for w in wire}) == 1
    from netoffload.soft.crypto import DecryptTask

    b = Batch.from_packets(wire, uniform=uniform)
    out = DecryptTask(sas=SATable((sa,))).process(b, np.ones(len(wire), bool))
    got = out.packets()
    for n, ((_i_ecn, _o_ecn), cell) in enumerate(cells):
        if cell == DROP:
            assert out.ext.error[n] == Reason.ECN_DROP
            assert got[n] == wire[n]
            continue
        assert out.ext.error[n] == 0
        p = IP(got[n]) if inner_v == 4 else IPv6(got[n])
        assert _tos_of(p) == dscp << 2 | cell
        if inner_v == 4:
            assert _v4_checksum_ok(got[n])
        # nothing else changed
        want = IP(inner[n]) if inner_v == 4 else IPv6(inner[n])
        if inner_v == 4:
            want.tos = dscp << 2 | cell
            del want.chksum
        else:
            want.tc = dscp << 2 | cell
        assert got[n] == bytes(want.__class__(bytes(want)))


# ------------------------------------------------------------- IPv6 flow label (RFC 6438)
@pytest.mark.parametrize("uniform", [True, False])
def test_ipv6_outer_flow_label_comes_from_the_inner_flow(uniform: bool) -> None:
    """RFC 6438: the outer flow label is a non-zero 20-bit value computed from the
    inner flow, so equal-cost paths can spread tunnelled flows: every packet of an
    inner flow gets the same label, in any batch and on either encryption path,
    and different flows (almost always) different labels. It used to be 0."""
    sa = our_sa(6, False)
    flows = [
        (inner_v, proto, i) for inner_v in (4, 6) for proto in ("tcp", "udp") for i in range(32)
    ]
    label: dict[tuple[int, str, int], int] = {}
    for rnd in range(3):
        batch = (
            [_inner_tos(v, 0, i, proto) for v, proto, i in flows[rnd::3]]
            if not uniform
            else [_inner_tos(4, 0, i, "udp") for i in range(rnd * 20, rnd * 20 + 40)]
        )
        keys = (
            flows[rnd::3]
            if not uniform
            else [(4, "udp", i) for i in range(rnd * 20, rnd * 20 + 40)]
        )
        b = Batch.from_packets(batch, uniform=uniform)
        b.ext.sa[:] = 0
        out = EncryptTask(sas=SATable((sa,))).process(b, np.ones(len(batch), bool))
        for key, raw, inner in zip(keys, out.packets(), batch, strict=True):
            outer = IPv6(raw)
            fl = int(outer.fl)
            assert 0 < fl < 1 << 20
            assert label.setdefault(key, fl) == fl
            assert bytes(scapy_sa(sa).decrypt(outer)) == inner
    assert len(set(label.values())) >= len(label) - 2
    # an IPv4 outer header has no flow label, and the inner packet's stays as it was
    v6 = bytes(IPv6(src="fd01:1::1", dst="fd01:2::1", fl=0xABCDE) / UDP() / Raw(b"x"))
    b = Batch.from_packets([v6])
    b.ext.sa[:] = 0
    raw = EncryptTask(sas=SATable((our_sa(4),))).process(b, np.ones(1, bool)).packets()[0]
    assert int(IPv6(bytes(scapy_sa(our_sa(4)).decrypt(IP(raw)))).fl) == 0xABCDE


# ------------------------------------------------------------- inbound selectors (RFC 4301 5.2)
@pytest.mark.parametrize("uniform", [True, False])
def test_inner_packets_outside_the_selectors_are_dropped_after_decryption(uniform: bool) -> None:
    """RFC 4301 5.2: after decryption the inner packet must match the SA's traffic
    selectors; a peer holding the key cannot inject packets for other networks.
    Those outside fail with SELECTOR_MISMATCH and keep their bytes; a family the
    SA names no selector for is not limited (``::/0`` implied). Nothing used to
    be checked."""
    import ipaddress

    from netoffload.soft.crypto import DecryptTask

    sa = our_sa(
        4,
        replay_window=64,
        inner_src=(ipaddress.ip_network("10.1.0.0/16"), ipaddress.ip_network("::/0")),
        inner_dst=(ipaddress.ip_network("10.2.0.0/24"), ipaddress.ip_network("::/0")),
    )
    cases = [
        ("10.1.2.3", "10.2.0.9", True),
        ("10.1.255.255", "10.2.0.255", True),
        ("10.3.0.1", "10.2.0.9", False),  # source outside
        ("10.1.0.1", "10.2.1.1", False),  # destination outside
        ("192.0.2.1", "198.51.100.1", False),
        ("fd01::1", "fd02::1", True),  # IPv6: no selector given, any
    ]
    inner = []
    for i, (s, d, _ok) in enumerate(cases):
        l3 = IP(src=s, dst=d, id=i) if ":" not in s else IPv6(src=s, dst=d)
        inner.append(bytes(l3 / UDP(sport=5000 + i) / Raw(b"s" * (40 if ":" not in s else 20))))
    wire = _scapy_encrypted(sa, inner, [0] * len(inner))
    if uniform:
        assert len({len(w) for w in wire}) == 1
    out = DecryptTask(sas=SATable((sa,))).process(
        Batch.from_packets(wire, uniform=uniform), np.ones(len(wire), bool)
    )
    got = out.packets()
    for n, (_s, _d, ok) in enumerate(cases):
        if ok:
            assert out.ext.error[n] == 0 and got[n] == inner[n]
        else:
            assert out.ext.error[n] == Reason.SELECTOR_MISMATCH
            assert got[n] == wire[n]
