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
