"""Encrypt/decrypt tasks: published ESP test vectors through our decrypt task (RFC 7634
appendix A, draft-mcgrew-gcm-test-01), and ESP interop with scapy both ways.

scapy.layers.ipsec is the independent ESP implementation: it decrypts what the
encrypt task writes and produces packets the decrypt task must accept.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.ipsec import ESP, SecurityAssociation
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from netoffload.batch import Batch, Reason, XFlag
from netoffload.sa import SATable, load_sa_file
from netoffload.sa import SecurityAssociation as OurSA
from netoffload.soft import make_task
from netoffload.soft.crypto import DecryptTask, EncryptTask, esp_mask
from netoffload.tasks import Task

KEYS = {
    "aes-gcm-128": bytes(range(16)) + b"\xca\xfe\xba\xbe",
    "aes-gcm-256": bytes(range(32)) + b"\xde\xad\xbe\xef",
    "chacha20-poly1305": bytes(range(0x80, 0xA0)) + b"\xa0\xa1\xa2\xa3",
}
SCAPY_ALG = {
    "aes-gcm-128": "AES-GCM",
    "aes-gcm-256": "AES-GCM",
    "chacha20-poly1305": "CHACHA20-POLY1305",
}
HKEY = bytes(range(32))


def our_sa(alg: str, v: int = 4, udp: bool = False, esn: bool = False, **kw: object) -> OurSA:
    src, dst = ("198.18.0.1", "198.19.0.1") if v == 4 else ("fd00::1", "fd00::2")
    if alg == "null":
        return OurSA(
            0x2002,
            "null",
            b"",
            src,
            dst,
            integrity="hmac-sha256-128",
            integrity_key=HKEY,
            udp_encap=udp,
            esn=esn,
            **kw,
        )  # type: ignore[arg-type]
    return OurSA(0x1001, alg, KEYS[alg], src, dst, udp_encap=udp, esn=esn, **kw)  # type: ignore[arg-type]


def scapy_sa(sa: OurSA, seq: int = 1) -> SecurityAssociation:
    tun = IP(src=sa.src, dst=sa.dst) if sa.outer_version == 4 else IPv6(src=sa.src, dst=sa.dst)
    nat = UDP(sport=sa.udp_sport, dport=sa.udp_dport) if sa.udp_encap else None
    if sa.algorithm == "null":
        return SecurityAssociation(
            ESP,
            spi=sa.spi,
            seq_num=seq,
            crypt_algo="NULL",
            crypt_key=None,
            auth_algo="SHA2-256-128",
            auth_key=sa.integrity_key,
            tunnel_header=tun,
            nat_t_header=nat,
            esn_en=sa.esn,
        )
    return SecurityAssociation(
        ESP,
        spi=sa.spi,
        seq_num=seq,
        crypt_algo=SCAPY_ALG[sa.algorithm],
        crypt_key=sa.key,
        tunnel_header=tun,
        nat_t_header=nat,
        esn_en=sa.esn,
    )


def inner_packets(sizes: list[int], v6_every: int = 3) -> list[bytes]:
    out = []
    for i, n in enumerate(sizes):
        if v6_every and i % v6_every == 2:
            p = IPv6(src="fd01::1", dst="fd01::2") / UDP(sport=1000 + i, dport=53) / Raw(b"q" * n)
        elif i % 2:
            p = IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1000 + i, dport=80) / Raw(b"t" * n)
        else:
            p = IP(src="10.0.0.1", dst="10.0.0.2", id=i) / UDP(sport=1000 + i) / Raw(b"u" * n)
        out.append(bytes(p))
    return out


def encrypt(sa: OurSA, pkts: list[bytes], sel: np.ndarray | None = None) -> Batch:
    b = Batch.from_packets(pkts)
    b.ext.sa[:] = 0
    t = EncryptTask(sas=SATable((sa,)))
    return t.process(b, np.ones(len(b), bool) if sel is None else sel)


def outer_parse(sa: OurSA, raw: bytes) -> IP | IPv6:
    return IP(raw) if sa.outer_version == 4 else IPv6(raw)


# --------------------------------------------------------------------- vectors
def _hex(text: str) -> bytes:
    return bytes.fromhex("".join(text.split()))


#: RFC 7634 appendix A: a tunnel-mode ESP packet (ChaCha20-Poly1305) holding an ICMP
#: echo request: keying material (key || salt), SPI, sequence number, IV, the ESP
#: payload in clear (inner packet, padding 01 02, pad length 2, next header 4), and
#: the ciphertext with its 16-byte ICV.
RFC7634_KEY = _hex("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f a0a1a2a3")
RFC7634_SPI, RFC7634_SEQ, RFC7634_IV = 0x01020304, 5, _hex("1011121314151617")
RFC7634_PLAIN = _hex("""
    45000054a6f200004001e778c6336405 c000020508005b7a3a080000553bec10
    000736270809 0a0b0c0d0e0f10111213 1415161718191a1b1c1d1e1f20212223
    2425262728292a2b2c2d2e2f30313233 3435363701020204""")
RFC7634_SEALED = _hex("""
    24039428b97f417e3c13753a4f05087b 67c352e6a7fab1b982d466ef407ae5c6
    14ee8099d52844eb61aa95dfab4c02f7 2aa71e7c4c4f64c9befe2facc638e8f3
    cbec163fac469b502773f6fb94e664da 9165b82829f641e0
    76aaa8266b7fb0f7b11b369907e1ad43""")

#: draft-mcgrew-gcm-test-01 section 4 (the AES-GCM ESP test cases of RFC 4106's
#: authors) with 128- or 256-bit keys and SPIs outside the reserved 0..255: keying
#: material, SPI, full sequence number, whether it is extended (the AAD is then
#: SPI || seq_hi || seq_lo), and the ESP packet as published (SPI, low sequence
#: number, IV, ciphertext, ICV). Their payloads end in next header 1, not a
#: tunnel-mode 4 or 41.
GCM_ESP_CASES = [
    (
        "4c80cdefbb5d10da906ac73c3613a634 2e443b68",
        0x4321,
        0x8765432100000000,
        True,
        """00004321000000004956ed7e3b244cfe fecf537e729d5b07dc30df528dd22b76
        8d1b98736696a6fd348509fa13ceac34 cfa2436f14a3f3cf65925bf1f4a13c5d
        15b21e1884f5ff6247aeabb786b93bce 61bc17d768fd9732459018148f6cbe72
        2fd04796562dfdb4""",
    ),
    (
        "feffe9928665731c6d6a8f9467308308 cafebabe",
        0xA5F8,
        0x0A,
        False,
        """0000a5f80000000afacedbaddecaf888 deb22cd9b07c72c16e3a65beeb8df304
        a5a5897d33ae530f1ba76d5d114d2a5c 3de81827c10e9a4f51330d0eec416642
        cfbb85a5b47e48a4ec3b9ba95d918bd1 83b70d3aa8bc6ee4c309e9d85a41ad4a""",
    ),
    (
        "abbccddef00112233445566778899aababbccddef00112233445566778899aab 11223344",
        0x4A2CBFE3,
        2,
        False,
        """4a2cbfe3000000020102030405060708 ff425c9b724599df7a3bcd510194e00d
        6a78107f1b0b1cbf06efae9d65a5d763 748a637985771d347f0545659f14e99d
        ef842d8eb335f4eecfdbf831824b4c49 15956c96""",
    ),
    (
        "3de09874b388e6491988d0c3607eae1f 57690e43",
        0x42F67E3F,
        0x1010101010101010,
        True,
        """42f67e3f101010104e280000a2fca1a3 fba2caa4853cf9f0f22cb10d86dd83b0
        fec75691cf1a04b00d1138ec9c357917 65acbd8701ad79845bf9fe3fba487bc9
        1755e6662b4c8d0d1f5e22739530320a e0d731cc978ecafaeae88f00e80d6e48""",
    ),
    (
        "abbccddef00112233445566778899aab decaf888",
        0x100,
        1,
        True,
        """0000010000000001cafedebaceface74 18a6fd42f72cbf4ab2a2ea901f73d814
        e3e7f243d95412e1c349c1d2fbec168f 9190feebaf2cb01984e65863965d7472
        b79da345e0e780191f0d2f0e0f496c22 6f2127b27db35724e7845d68651f57e6
        5f354f75ff17015769623436""",
    ),
    (
        "abbccddef00112233445566778899aababbccddef00112233445566778899aab 73616c74",
        0x17405E67,
        0x156F3126DD0DB99B,
        True,
        """17405e67dd0db99b616e640169766563 f2d69ecdbd5a0d5b8d5ef38bad4da58d
        1f278fde98ef67549d524a3018d9a57f f4d3a31ce673119e451626c2415771e3
        b7eebca614c89b35""",
    ),
    (
        "7d773d00c144c525ac619d18c84a3f47 d9664267",
        0x335467AE,
        0xFFFFFFFF,
        False,
        """335467aeffffffff43457e9182443bc6 437f866bcb3f699fe9b0822bac961c45
        04bef270""",
    ),
    (
        "6c6567616c697a656d6172696a75616e61616e64646f69746265666f72656961 7475726e",
        0x796B6963,
        0xFFFFFFFFFFFFFFFF,
        True,
        """796b6963ffffffff333021696765746d f97ab2aa356d8edce17644ac8c78e25d
        d24dedbb29ebf1b64a274b39b49c3a86 4cd3d78ca4ae68a32b42458fb57dbe82
        1dcc63b9d0937ba2945f669368661a32 9fb4c053""",
    ),
]


def _vector_sa(alg: str, key: bytes, spi: int, esn: bool) -> OurSA:
    return OurSA(spi, alg, key, "198.18.0.1", "198.19.0.1", esn=esn, replay_window=64)


def _decrypt_vector(sa: OurSA, seq: int, esp: bytes) -> Batch:
    """The published ESP packet behind an outer IPv4 header, through our decrypt
    task (general path), the receiver's highest sequence number just below ``seq``."""
    wire = bytes(IP(src=sa.src, dst=sa.dst, proto=50) / Raw(esp))
    task = DecryptTask(sas=SATable((sa,)))
    task.tops[0] = max(seq - 1, 0)
    return task.process(Batch.from_packets([wire], uniform=False), np.ones(1, bool))


def test_rfc7634_esp_example_decrypts_to_its_inner_packet() -> None:
    sa = _vector_sa("chacha20-poly1305", RFC7634_KEY, RFC7634_SPI, False)
    esp = struct.pack("!II", RFC7634_SPI, RFC7634_SEQ) + RFC7634_IV + RFC7634_SEALED
    out = _decrypt_vector(sa, RFC7634_SEQ, esp)
    assert out.ext.error.tolist() == [0]
    inner = RFC7634_PLAIN[:-4]  # padding 01 02, pad length 2, next header 4
    assert out.packets() == [inner] and out.ext.seq.tolist() == [RFC7634_SEQ]
    forged = bytearray(esp)
    forged[-1] ^= 1
    assert _decrypt_vector(sa, RFC7634_SEQ, bytes(forged)).ext.error.tolist() == [Reason.BAD_ICV]


@pytest.mark.parametrize(("key", "spi", "seq", "esn", "packet"), GCM_ESP_CASES)
def test_gcm_esp_test_cases_authenticate(
    key: str, spi: int, seq: int, esn: bool, packet: str
) -> None:
    """Each published packet passes our ICV check (nonce salt || IV from the
    packet, AAD with the inferred high sequence half under ESN) and its trailer
    check; it is then refused for its next header 1 (BAD_ESP, not BAD_ICV or
    BAD_PADDING). One flipped bit anywhere authenticated fails the ICV."""
    k = _hex(key)
    sa = _vector_sa("aes-gcm-128" if len(k) == 20 else "aes-gcm-256", k, spi, esn)
    esp = _hex(packet)
    assert esp[:4] == spi.to_bytes(4, "big") and esp[4:8] == (seq & 0xFFFFFFFF).to_bytes(4, "big")
    out = _decrypt_vector(sa, seq, esp)
    assert out.ext.error.tolist() == [Reason.BAD_ESP]
    assert out.packets()[0][20:] == esp  # refused: the packet keeps its bytes
    for at in (7, 8, len(esp) // 2, len(esp) - 1):  # sequence number, IV, ciphertext, ICV
        forged = bytearray(esp)
        forged[at] ^= 0x01
        assert _decrypt_vector(sa, seq, bytes(forged)).ext.error.tolist() == [Reason.BAD_ICV]


def test_nonce_and_aad_layout_rfc4106() -> None:
    """The ESP packet is salt||IV nonce and SPI||seq AAD over the padded payload (RFC 4106)."""
    sa = our_sa("aes-gcm-128")
    inner = inner_packets([5])[0]
    out = encrypt(sa, [inner]).packets()[0]
    esp = out[20:]
    spi_seq, iv, ct = esp[:8], esp[8:16], esp[16:]
    assert spi_seq == (0x1001).to_bytes(4, "big") + (1).to_bytes(4, "big")
    assert iv == (1).to_bytes(8, "big")
    pt = AESGCM(sa.cipher_key).decrypt(sa.salt + iv, ct, spi_seq)
    pad = (-(len(inner) + 2)) % 4
    assert pt == inner + bytes(range(1, pad + 1)) + bytes([pad, 4])


# --------------------------------------------------------------------- interop
CASES = [
    ("aes-gcm-128", 4, False, False),
    ("aes-gcm-256", 6, False, False),
    ("chacha20-poly1305", 4, True, False),
    ("chacha20-poly1305", 6, False, True),
    ("aes-gcm-128", 4, True, True),
    ("null", 4, False, False),
    ("null", 6, True, True),
]


@pytest.mark.parametrize(("alg", "v", "udp", "esn"), CASES)
@pytest.mark.parametrize("uniform", [True, False])
def test_scapy_decrypts_ours(alg: str, v: int, udp: bool, esn: bool, uniform: bool) -> None:
    start = 2**32 - 2 if esn else 1
    sa = our_sa(alg, v, udp, esn, seq_start=start)
    sizes = [300] * 6 if uniform else [0, 1, 2, 3, 100, 1200]
    pkts = inner_packets(sizes, v6_every=0 if uniform else 3)
    b = encrypt(sa, pkts)
    assert (b.ext.error == 0).all()
    assert b.ext.seq.tolist() == list(range(start, start + len(pkts)))
    for i, raw in enumerate(b.packets()):
        outer = outer_parse(sa, raw)
        assert outer.src == sa.src and outer.dst == sa.dst
        if udp:
            assert outer[UDP].dport == 4500 and outer[UDP].len == len(outer[UDP])
        ssa = scapy_sa(sa)
        ssa.esn = (start + i) >> 32
        got = ssa.decrypt(outer)
        assert bytes(got) == pkts[i]


def test_outer_ipv4_header_checksum_is_valid() -> None:
    b = encrypt(our_sa("aes-gcm-128"), inner_packets([10, 20, 30]))
    for raw in b.packets():
        p = IP(raw)
        want = p.chksum
        del p.chksum
        assert IP(bytes(p)).chksum == want
        assert p.len == len(raw) and p.proto == 50 and p.flags == "DF"


@pytest.mark.parametrize(("alg", "v", "udp", "esn"), CASES)
def test_we_decrypt_scapy(alg: str, v: int, udp: bool, esn: bool) -> None:
    sa = our_sa(alg, v, udp, esn, replay_window=128)
    pkts = inner_packets([0, 7, 64, 999, 33])
    ssa = scapy_sa(sa, seq=(2**32 - 2) if esn else 5)
    wire = []
    for p in pkts:
        ssa.esn = ssa.seq_num >> 32 if esn else 0
        if esn:
            cur = ssa.seq_num
            ssa.esn = cur >> 32
            ssa.seq_num = cur & 0xFFFFFFFF
            e = ssa.encrypt(IP(p) if p[0] >> 4 == 4 else IPv6(p))
            ssa.seq_num = cur + 1
        else:
            e = ssa.encrypt(IP(p) if p[0] >> 4 == 4 else IPv6(p))
        wire.append(bytes(e))
    dec = DecryptTask(sas=SATable((sa,)))
    if esn:
        dec.tops[0] = 2**32 - 10  # the receiver has seen packets just below the wrap
    b = dec.process(Batch.from_packets(wire), np.ones(len(wire), bool))
    assert b.ext.error.tolist() == [0] * len(pkts)
    assert b.packets() == pkts
    assert (b.ext.sa == 0).all()
    first = 2**32 - 2 if esn else 5
    assert b.ext.seq.tolist() == list(range(first, first + len(pkts)))
    assert b.ext.l3_proto.tolist() == [p[0] >> 4 for p in pkts]


def test_ethernet_frames_keep_their_header() -> None:
    sa = our_sa("chacha20-poly1305", v=6)
    pkts = [
        bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(p))
        for p in inner_packets([10, 11], v6_every=0)
    ]
    b = Batch.from_packets(pkts)
    b.ext.xflags[:] = XFlag.ETHERNET
    b.ext.sa[:] = 0
    b = EncryptTask(sas=SATable((sa,))).process(b, np.ones(2, bool))
    for raw in b.packets():
        f = Ether(raw)
        assert f.type == 0x86DD and f.src == "02:00:00:00:00:01"
    got = [bytes(scapy_sa(sa).decrypt(Ether(r)[IPv6])) for r in b.packets()]
    assert got == [p[14:] for p in pkts]
    d = DecryptTask(sas=SATable((sa,))).process(b, np.ones(2, bool))
    assert d.ext.error.tolist() == [0, 0]
    assert d.packets() == pkts


def test_only_selected_packets_change_and_gaps_work() -> None:
    sa = our_sa("aes-gcm-128")
    pkts = inner_packets([50] * 6, v6_every=0)
    sel = np.array([1, 0, 1, 1, 0, 1], bool)
    b = encrypt(sa, pkts, sel)
    out = b.packets()
    for i in range(6):
        if sel[i]:
            assert bytes(scapy_sa(sa).decrypt(IP(out[i]))) == pkts[i]
        else:
            assert out[i] == pkts[i]
    assert b.ext.seq[sel].tolist() == [1, 2, 3, 4]


def test_registered() -> None:
    t = make_task(Task.ENCRYPT, sas=SATable((our_sa("aes-gcm-128"),)))
    assert isinstance(t, EncryptTask)
    assert isinstance(make_task(Task.DECRYPT, sas=SATable(())), DecryptTask)


# --------------------------------------------------------------------- verdicts
def _good_wire(sa: OurSA, n: int = 4) -> tuple[list[bytes], list[bytes]]:
    pkts = inner_packets([40 + i for i in range(n)])
    return pkts, encrypt(sa, pkts).packets()


def test_bad_icv_unknown_spi_truncated_not_esp_and_rest_survive() -> None:
    sa = our_sa("aes-gcm-128")
    pkts, wire = _good_wire(sa, 4)
    tampered = bytearray(wire[1])
    tampered[60] ^= 0x40
    other = bytearray(wire[2])
    other[20:24] = (0x7777).to_bytes(4, "big")
    trunc = IP(wire[3])
    trunc_raw = bytes(IP(src=sa.src, dst=sa.dst, proto=50) / Raw(bytes(trunc.payload)[:20]))
    batch_in = [
        wire[0],
        bytes(tampered),
        bytes(other),
        trunc_raw,
        bytes(IP() / UDP(dport=53) / Raw(b"dns")),
        b"\x00\x01garbage",
        wire[3],
    ]
    b = DecryptTask(sas=SATable((sa,))).process(
        Batch.from_packets(batch_in), np.ones(len(batch_in), bool)
    )
    assert b.ext.error.tolist() == [
        0,
        Reason.BAD_ICV,
        Reason.UNKNOWN_SA,
        Reason.BAD_ESP,
        Reason.BAD_ESP,
        Reason.NOT_IP,
        0,
    ]
    out = b.packets()
    assert out[0] == pkts[0] and out[6] == pkts[3]
    assert out[1] == bytes(tampered)  # a failed packet keeps its bytes


def test_bad_padding_and_next_header_after_authentication() -> None:
    """Authentic packets (made here with cryptography) whose trailer is wrong."""
    sa = our_sa("aes-gcm-128")
    aead = AESGCM(sa.cipher_key)
    inner = inner_packets([9], v6_every=0)[0]
    pad = (-(len(inner) + 2)) % 4 or 4
    trailers = {
        "badpad": bytes([9] * pad) + bytes([pad, 4]),
        "badnh": bytes(range(1, pad + 1)) + bytes([pad, 17]),
        "v6nh": bytes(range(1, pad + 1)) + bytes([pad, 41]),
        "padlen": bytes([200, 4]),
    }
    wire = []
    for seq, tr in enumerate(trailers.values(), start=1):
        hdr = sa.spi.to_bytes(4, "big") + seq.to_bytes(4, "big")
        iv = seq.to_bytes(8, "big")
        ct = aead.encrypt(sa.salt + iv, inner + tr, hdr)
        wire.append(bytes(IP(src=sa.src, dst=sa.dst, proto=50) / Raw(hdr + iv + ct)))
    b = DecryptTask(sas=SATable((sa,))).process(Batch.from_packets(wire), np.ones(4, bool))
    assert b.ext.error.tolist() == [
        Reason.BAD_PADDING,
        Reason.BAD_ESP,
        Reason.BAD_ESP,
        Reason.BAD_PADDING,
    ]
    assert b.packets() == wire  # ciphertext put back


def test_replay_and_too_old() -> None:
    sa = our_sa("chacha20-poly1305", replay_window=64)
    t = EncryptTask(sas=SATable((sa,)))
    pk = inner_packets([20] * 100, v6_every=0)
    b = Batch.from_packets(pk)
    b.ext.sa[:] = 0
    wire = t.process(b, np.ones(100, bool)).packets()  # seq 1..100
    d = DecryptTask(sas=SATable((sa,)))
    first = d.process(Batch.from_packets(wire[90:]), np.ones(10, bool))
    assert (first.ext.error == 0).all()
    again = [wire[95], wire[10], wire[50], wire[40], wire[40]]
    r = d.process(Batch.from_packets(again), np.ones(5, bool))
    # 96 seen; 11 is 89 below 100 (too old); 51 and 41 are new in the window; 41 twice
    assert r.ext.error.tolist() == [Reason.REPLAY, Reason.TOO_OLD, 0, 0, Reason.REPLAY]
    assert r.packets()[2] == pk[50]


def test_forged_packet_does_not_move_the_window() -> None:
    sa = our_sa("aes-gcm-128")
    _, wire = _good_wire(sa, 2)
    forged = bytearray(wire[1])
    forged[-1] ^= 1
    d = DecryptTask(sas=SATable((sa,)))
    r = d.process(Batch.from_packets([bytes(forged), wire[1]]), np.ones(2, bool))
    assert r.ext.error.tolist() == [Reason.BAD_ICV, 0]  # the genuine seq 2 still accepted


def same_size_packets(n: int, v: int = 4, size: int = 301) -> list[bytes]:
    """Inner packets of one IP version and one length (the uniform fast path)."""
    if v == 4:
        return [bytes(IP(id=i) / UDP(sport=1000 + i) / Raw(bytes([i]) * size)) for i in range(n)]
    return [bytes(IPv6() / UDP(sport=1000 + i) / Raw(bytes([i]) * size)) for i in range(n)]


@pytest.mark.parametrize("alg", ["aes-gcm-128", "aes-gcm-256", "chacha20-poly1305"])
@pytest.mark.parametrize(("v", "udp", "esn", "inner_v"), [(4, False, False, 4), (6, True, True, 6)])
@pytest.mark.parametrize("size", [300, 301, 302, 303])
def test_uniform_fast_path_matches_general_path(
    alg: str, v: int, udp: bool, esn: bool, inner_v: int, size: int
) -> None:
    """A uniform batch (one run of slots, one SA, one length) takes the whole-batch
    path; the same packets in a non-uniform batch take the general one: same bytes,
    same extension, and scapy decrypts them; numbers reserved by prepare are kept."""
    sa = our_sa(alg, v, udp, esn, seq_start=2**32 - 3 if esn else 1)
    pkts = same_size_packets(9, inner_v, size)
    outs = []
    for uniform in (True, False):
        b = Batch.from_packets(pkts, uniform=uniform)
        assert (b.stride > 0) == uniform
        b.ext.sa[:] = 0
        b.ext.seq[[2, 5]] = [2**32 + 40 if esn else 40, 41]  # reserved by a prepare step
        task = EncryptTask(sas=SATable((sa,)))
        outs.append(task.process(b, np.ones(len(b), bool)))
    fast, slow = outs
    assert fast.packets() == slow.packets()
    assert fast.ext.equals(slow.ext)
    assert (fast.ext.error == 0).all()
    for i, raw in enumerate(fast.packets()):
        ssa = scapy_sa(sa)
        ssa.esn = int(fast.ext.seq[i]) >> 32
        assert bytes(ssa.decrypt(outer_parse(sa, raw))) == pkts[i]


def test_uniform_fast_path_batches_of_changing_size() -> None:
    """Scratch rows sized for a large batch serve smaller ones, and a new length."""
    sa = our_sa("aes-gcm-128")
    task = EncryptTask(sas=SATable((sa,)))
    seq = 1
    for n, size in ((70, 100), (3, 100), (2, 101), (70, 100)):
        pkts = same_size_packets(n, 4, size)
        b = Batch.from_packets(pkts, uniform=True)
        b.ext.sa[:] = 0
        out = task.process(b, np.ones(n, bool))
        assert out.ext.seq.tolist() == list(range(seq, seq + n))
        seq += n
        assert [bytes(scapy_sa(sa).decrypt(IP(r))) for r in out.packets()] == pkts


def craft(sa: OurSA, seq: int, plaintext: bytes) -> bytes:
    """An authentic ESP packet with this plaintext (inner packet and trailer) as given."""
    aead = (
        ChaCha20Poly1305(sa.cipher_key)
        if sa.algorithm == "chacha20-poly1305"
        else AESGCM(sa.cipher_key)
    )
    lo = (seq & 0xFFFFFFFF).to_bytes(4, "big")
    spi = sa.spi.to_bytes(4, "big")
    aad = spi + (seq >> 32).to_bytes(4, "big") + lo if sa.esn else spi + lo
    iv = seq.to_bytes(8, "big")
    ct = aead.encrypt(sa.salt + iv, plaintext, aad)
    if sa.outer_version == 4:
        return bytes(IP(src=sa.src, dst=sa.dst, proto=50) / Raw(spi + lo + iv + ct))
    return bytes(IPv6(src=sa.src, dst=sa.dst, nh=50) / Raw(spi + lo + iv + ct))


@pytest.mark.parametrize("alg", ["aes-gcm-128", "aes-gcm-256", "chacha20-poly1305"])
@pytest.mark.parametrize(("v", "esn"), [(4, False), (6, True)])
def test_uniform_decrypt_matches_general_path(alg: str, v: int, esn: bool) -> None:
    """Equal-length ESP packets in a uniform batch take the whole-batch decrypt path;
    in a non-uniform batch the general one: same verdicts, bytes and extension,
    with forged packets first, inside and last, a replay, a bad padding and a bad
    next header among them."""
    start = 2**32 - 3 if esn else 1
    sa = our_sa(alg, v, esn=esn, replay_window=64, seq_start=start)
    pkts = same_size_packets(8, 4, 301)  # 329-byte inner packets: one byte of padding
    b = Batch.from_packets(pkts)
    b.ext.sa[:] = 0
    wire = [
        bytearray(p) for p in EncryptTask(sas=SATable((sa,))).process(b, np.ones(8, bool)).packets()
    ]
    wire[0][-1] ^= 1  # ICV
    wire[4][80] ^= 0x10  # ciphertext
    wire[7][-20] ^= 0x80
    wire.append(bytearray(wire[2]))  # a replay
    wire.append(bytearray(craft(sa, start + 20, pkts[0] + bytes([9, 1, 4]))))  # bad padding
    wire.append(bytearray(craft(sa, start + 21, pkts[0] + bytes([1, 1, 17]))))  # bad next header
    wire.append(bytearray(craft(sa, start + 22, pkts[1] + bytes([1, 1, 4]))))  # good
    raw = [bytes(w) for w in wire]

    def task() -> DecryptTask:
        t = DecryptTask(sas=SATable((sa,)))
        t.tops[0] = max(start - 5, 0)  # the receiver has seen packets just below (ESN: the wrap)
        return t

    assert task()._decrypt_uniform(Batch.from_packets(raw, uniform=True), np.arange(len(raw)))
    outs = []
    for uniform in (True, False):
        batch = Batch.from_packets(raw, uniform=uniform)
        assert (batch.stride > 0) == uniform
        outs.append(task().process(batch, np.ones(len(raw), bool)))
    fast, slow = outs
    assert fast.ext.error.tolist() == [
        Reason.BAD_ICV,
        0,
        0,
        0,
        Reason.BAD_ICV,
        0,
        0,
        Reason.BAD_ICV,
        Reason.REPLAY,
        Reason.BAD_PADDING,
        Reason.BAD_ESP,
        0,
    ]
    assert fast.ext.equals(slow.ext)
    assert fast.packets() == slow.packets()
    got = fast.packets()
    assert [got[i] for i in (1, 2, 3, 5, 6, 11)] == [pkts[i] for i in (1, 2, 3, 5, 6)] + [pkts[1]]
    for i in (0, 4, 7, 8, 9, 10):
        assert got[i] == raw[i]  # a failed packet keeps its bytes


@pytest.mark.parametrize("plain", [bytes([0, 0, 0xFF]), bytes([1, 2, 2, 1]), bytes([0, 4])])
def test_uniform_decrypt_of_short_authentic_plaintexts(plain: bytes) -> None:
    """Authentic ESP packets whose payload is shorter than an IP header (the last
    one is a dummy packet, RFC 4303 2.6) get a verdict on both paths, never an
    exception, and keep their bytes. Found by fuzz/targets.py (esp-decrypt): the
    uniform decrypt path read six bytes of inner header from shorter plaintexts
    (IndexError)."""
    sa = our_sa("aes-gcm-128", replay_window=64)
    raw = [craft(sa, 7 + i, plain) for i in range(6)]
    for uniform in (False, True):
        out = DecryptTask(sas=SATable((sa,))).process(
            Batch.from_packets(raw, uniform=uniform), np.ones(len(raw), bool)
        )
        assert out.ext.error.tolist() == [Reason.BAD_ESP] * len(raw)
        assert out.packets() == raw


def test_encrypt_verdicts_unknown_sa_not_ip_and_exhausted() -> None:
    sa = our_sa("aes-gcm-128", seq_start=2**32 - 2)
    pk = inner_packets([10, 10, 10, 10], v6_every=0)
    b = Batch.from_packets([*pk, b"\x00\x11\x22"])
    b.ext.sa[:] = [0, -1, 0, 0, 0]
    b.ext.sa[1] = 7
    out = EncryptTask(sas=SATable((sa,))).process(b, np.ones(5, bool))
    assert out.ext.error.tolist() == [0, Reason.UNKNOWN_SA, 0, Reason.SEQ_EXHAUSTED, Reason.NOT_IP]
    assert out.packets()[1] == pk[1]


def test_small_headroom_is_relaid_out() -> None:
    sa = our_sa("aes-gcm-256", v=6, udp=True)
    pk = inner_packets([30, 31], v6_every=0)
    b = Batch.from_packets(pk, headroom=0, tailroom=0)
    b.ext.sa[:] = 0
    out = EncryptTask(sas=SATable((sa,))).process(b, np.ones(2, bool))
    assert [bytes(scapy_sa(sa).decrypt(IPv6(r))) for r in out.packets()] == pk


def test_esp_mask() -> None:
    sa = our_sa("aes-gcm-128", udp=True)
    _, wire = _good_wire(sa, 2)
    other = [bytes(IP() / UDP(sport=4500, dport=4500) / Raw(bytes(8))), bytes(IP() / ICMP())]
    m = esp_mask(Batch.from_packets(wire + other), SATable((sa,)))
    assert m.tolist() == [True, True, False, False]


@given(
    st.lists(st.integers(0, 1500), min_size=1, max_size=12),
    st.sampled_from(["aes-gcm-128", "chacha20-poly1305", "null"]),
    st.booleans(),
)
def test_round_trip_property(sizes: list[int], alg: str, udp: bool) -> None:
    sa = our_sa(alg, v=4, udp=udp)
    pkts = inner_packets(sizes)
    enc = encrypt(sa, pkts)
    dec = DecryptTask(sas=SATable((sa,))).process(enc, np.ones(len(pkts), bool))
    assert dec.ext.error.tolist() == [0] * len(pkts)
    assert dec.packets() == pkts


@given(st.lists(st.binary(max_size=120), min_size=1, max_size=8), st.data())
def test_fuzz_decrypt_never_raises(blobs: list[bytes], data: st.DataObject) -> None:
    sa = our_sa("aes-gcm-128")
    _, wire = _good_wire(sa, 2)
    mutated = []
    for w in wire:
        ba = bytearray(w)
        k = data.draw(st.integers(0, len(ba) - 1))
        ba[k] ^= data.draw(st.integers(1, 255))
        mutated.append(bytes(ba[: data.draw(st.integers(0, len(ba)))]))
    esp_like = [bytes(IP(src=sa.src, dst=sa.dst, proto=50) / Raw(x)) for x in blobs]
    pkts = mutated + esp_like + blobs
    b = DecryptTask(sas=SATable((sa,))).process(Batch.from_packets(pkts), np.ones(len(pkts), bool))
    assert len(b) == len(pkts)
    assert ((b.ext.error != 0) | (b.ext.sa == 0)).all()


# --------------------------------------------------------------------- pcap + tshark
SA_TOML = """
[[sa]]
name = "gcm"
spi = 0x1001
algorithm = "aes-gcm-128"
key = "000102030405060708090a0b0c0d0e0fcafebabe"
src = "198.18.0.1"
dst = "198.19.0.1"
inner_src = "10.0.0.0/8"

[[sa]]
name = "null-hmac"
spi = 0x2002
algorithm = "null"
integrity = "hmac-sha256-128"
integrity_key = "000102030405060708090a0b0c0d0e0f000102030405060708090a0b0c0d0e0f"
src = "198.18.0.1"
dst = "198.19.0.2"

[digest]
algorithm = "hmac-sha256-128"
key = "6b6579"
"""
ESP_SA_UAT = (
    '"IPv4","198.18.0.1","198.19.0.1","0x00001001","AES-GCM with 16 octet ICV [RFC4106]",'
    '"0x000102030405060708090a0b0c0d0e0fcafebabe","NULL",""\n'
    '"IPv4","198.18.0.1","198.19.0.2","0x00002002","NULL","","HMAC-SHA-256-128 [RFC4868]",'
    '"0x000102030405060708090a0b0c0d0e0f000102030405060708090a0b0c0d0e0f"\n'
)


def _capture(tmp_path: Path) -> tuple[Path, Path, list[bytes]]:
    from scapy.utils import wrpcap

    frames = [
        Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
        / IP(src="10.0.0.1", dst="10.0.0.2")
        / UDP(sport=1000 + i, dport=7000)
        / Raw(b"hello %d" % i)
        for i in range(5)
    ]
    frames.append(
        Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
        / IP(src="192.0.2.1", dst="192.0.2.2")
        / TCP(sport=20, dport=21)
        / Raw(b"x" * 100)
    )
    sa = tmp_path / "sa.toml"
    sa.write_text(SA_TOML)
    cap = tmp_path / "in.pcap"
    wrpcap(str(cap), frames)
    return sa, cap, [bytes(f) for f in frames]


def _cli(*argv: str) -> int:
    from netoffload.cli import main

    return main(list(argv))


def test_pcap_encrypt_then_decrypt(tmp_path: Path) -> None:
    from scapy.utils import rdpcap

    sa, cap, frames = _capture(tmp_path)
    enc, dec = tmp_path / "enc.pcap", tmp_path / "dec.pcap"
    res = tmp_path / "enc.jsonl"
    assert _cli("pcap", "--tx", "encrypt,digest", "--sa", str(sa), str(cap), str(enc),
                "--results", str(res)) == 0  # fmt: skip
    lines = [json.loads(x) for x in res.read_text().splitlines()]
    assert [(r["sa"], r["seq"], r["error"]) for r in lines] == [
        (0, 1, None), (0, 2, None), (0, 3, None), (0, 4, None), (0, 5, None), (1, 1, None)
    ]  # fmt: skip
    # scapy (independent) decrypts the ESP inside the frames (digest trailer is past the IP end)
    table = load_sa_file(sa)
    for k, f in enumerate(rdpcap(str(enc))):
        s = table.sas[0 if k < 5 else 1]
        ip = f[IP]
        assert ip.proto == 50 and ip.dst == s.dst
        assert bytes(scapy_sa(s).decrypt(IP(bytes(ip)[: ip.len]))) == frames[k][14:]
    res2 = tmp_path / "dec.jsonl"
    assert _cli("pcap", "--rx", "digest,decrypt", "--sa", str(sa), str(enc), str(dec),
                "--results", str(res2)) == 0  # fmt: skip
    assert [bytes(f) for f in rdpcap(str(dec))] == frames
    assert all(json.loads(x)["error"] is None for x in res2.read_text().splitlines())


def test_pcap_decrypt_verdicts_in_results(tmp_path: Path) -> None:
    from scapy.utils import rdpcap, wrpcap

    sa, cap, frames = _capture(tmp_path)
    enc = tmp_path / "enc.pcap"
    assert _cli("pcap", "--tx", "encrypt", "--sa", str(sa), str(cap), str(enc)) == 0
    fs = [bytes(f) for f in rdpcap(str(enc))]
    bad = bytearray(fs[1])
    bad[-3] ^= 1
    plain = bytes(Ether() / IP(src="10.9.9.9", dst="10.9.9.8") / UDP() / Raw(b"clear"))
    wrpcap(str(tmp_path / "mixed.pcap"), [Ether(x) for x in (fs[0], bytes(bad), fs[0], plain)])
    res = tmp_path / "r.jsonl"
    assert _cli("pcap", "--rx", "decrypt", "--sa", str(sa), str(tmp_path / "mixed.pcap"),
                str(tmp_path / "out.pcap"), "--results", str(res)) == 0  # fmt: skip
    got = [(r["error"], r["delivered"]) for r in map(json.loads, res.read_text().splitlines())]
    assert got == [(None, True), ("bad_icv", False), ("replay", False), (None, True)]
    out = [bytes(f) for f in rdpcap(str(tmp_path / "out.pcap"))]
    assert out == [frames[0], plain]


def test_pcap_sa_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, cap, _ = _capture(tmp_path)
    assert _cli("pcap", "--tx", "encrypt", str(cap), str(tmp_path / "o.pcap")) == 2
    assert "needs --sa" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text('[[sa]]\nname = "x"\nspi = 0x1001\nalgorithm = "aes-gcm-128"\nkey = "00"\n'
                   'src = "198.18.0.1"\ndst = "198.18.0.2"\n')  # fmt: skip
    assert (
        _cli("pcap", "--rx", "decrypt", "--sa", str(bad), str(cap), str(tmp_path / "o.pcap")) == 2
    )
    err = capsys.readouterr().err
    assert "SA #0 ('x')" in err and "20 bytes" in err and err.count("\n") == 1


def test_tshark_decrypts_our_capture(tmp_path: Path) -> None:
    """Standard ESP tooling: Wireshark's ESP dissector decrypts and checks what we wrote."""
    tshark = shutil.which("tshark")
    if tshark is None:
        print("SKIP reason: tshark is not installed (apt-get install tshark)")
        pytest.skip("tshark is not installed")
    sa, cap, _ = _capture(tmp_path)
    enc = tmp_path / "enc.pcap"
    assert _cli("pcap", "--tx", "encrypt", "--sa", str(sa), str(cap), str(enc)) == 0
    conf = tmp_path / "wireshark"
    conf.mkdir()
    (conf / "esp_sa").write_text(ESP_SA_UAT)
    env = {**os.environ, "WIRESHARK_CONFIG_DIR": str(conf)}
    fields = ["frame.number", "esp.spi", "esp.sequence", "ip.src", "ip.dst", "udp.srcport",
              "udp.payload", "tcp.payload", "esp.icv_good", "esp.pad_len",
              "esp.protocol"]  # fmt: skip
    cmd = [tshark, "-n", "-r", str(enc), "-o", "esp.enable_encryption_decode:TRUE",
           "-o", "esp.enable_authentication_check:TRUE", "-T", "fields",
           "-E", "separator=|"]  # fmt: skip
    for f in fields:
        cmd += ["-e", f]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60, check=True)
    rows = [dict(zip(fields, ln.split("|"), strict=True)) for ln in out.stdout.splitlines()]
    assert len(rows) == 6
    for i, r in enumerate(rows[:5]):
        assert r["esp.spi"] == "0x00001001" and r["esp.sequence"] == str(i + 1)
        assert r["ip.src"] == "198.18.0.1,10.0.0.1" and r["ip.dst"] == "198.19.0.1,10.0.0.2"
        assert r["udp.srcport"] == str(1000 + i)
        assert bytes.fromhex(r["udp.payload"].replace(":", "")) == b"hello %d" % i
    last = rows[5]
    assert last["esp.spi"] == "0x00002002" and last["ip.src"] == "198.18.0.1,192.0.2.1"
    assert bytes.fromhex(last["tcp.payload"].replace(":", "")) == b"x" * 100
    assert last["esp.icv_good"] in ("1", "True")  # Wireshark checked our HMAC-SHA-256-128 ICV
    assert last["esp.protocol"] == "0x04"


@pytest.mark.parametrize("alg", ["aes-gcm-128", "chacha20-poly1305", "null"])
@pytest.mark.parametrize("uniform", [True, False])
def test_udp_encapsulation_over_ipv6_has_a_udp_checksum(alg: str, uniform: bool) -> None:
    """RFC 8200 8.1: a UDP checksum over IPv6 is never zero (Linux drops those).
    The outer UDP checksum of IPv6 ESP-in-UDP is what scapy computes for the same
    datagram; over IPv4 it stays 0 (RFC 3948); scapy still decrypts both."""
    for v in (6, 4):
        sa = our_sa(alg, v=v, udp=True)
        # one SA, one inner version, one size: the whole-batch path; else per packet
        pk = same_size_packets(3) if uniform else inner_packets([40, 41, 300])
        out = encrypt(sa, pk)
        assert not out.ext.error.any()
        for raw, inner in zip(out.packets(), pk, strict=True):
            outer = outer_parse(sa, raw)
            got = outer[UDP].chksum
            if v == 6:
                fresh = IPv6(raw)
                del fresh[UDP].chksum
                assert got != 0 and IPv6(bytes(fresh))[UDP].chksum == got
            else:
                assert got == 0
            assert bytes(scapy_sa(sa).decrypt(outer)) == inner
    # and our own decryption takes them back
    sa = our_sa(alg, v=6, udp=True)
    wire = encrypt(sa, inner_packets([100, 200]))
    dec = DecryptTask(sas=SATable((sa,))).process(wire, np.ones(len(wire), bool))
    assert not dec.ext.error.any()
