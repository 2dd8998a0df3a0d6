"""Security associations (SAs) for ESP tunnel mode, and the SA file that holds them.

An SA file is TOML (``.toml``) or JSON (any other suffix) with a list ``sa`` of
tables, one per SA, and an optional ``digest`` table for the digest task::

    # sa.toml
    [[sa]]
    name = "a-to-b"                 # optional; used in error messages and results
    spi = 0x00001001                # 256 .. 2**32-1 (0..255 are reserved, RFC 4303 2.1)
    algorithm = "aes-gcm-128"       # aes-gcm-128 | aes-gcm-256 | chacha20-poly1305 | null
    key = "00112233...aabbccdd"     # hex; AEAD: cipher key followed by the 4-byte salt
                                    # (RFC 4106 / RFC 7634 keying material, as `ip xfrm`
                                    # and Wireshark take it): 20, 36 or 36 bytes
    src = "198.18.0.1"              # outer (tunnel) source address, IPv4 or IPv6
    dst = "198.19.0.1"              # outer destination; same family as src
    esn = false                     # extended (64-bit) sequence numbers, RFC 4303 2.2.1
    replay_window = 64              # anti-replay window on decrypt: 0 (off) or 64..4096
    udp_encap = false               # ESP in UDP (RFC 3948)
    udp_sport = 4500                # UDP ports when udp_encap is true
    udp_dport = 4500
    seq_start = 1                   # first sequence number sent (1 .. 2**64-1 with ESN)
    inner_src = "0.0.0.0/0"         # traffic selectors: which inner packets this SA
    inner_dst = "0.0.0.0/0"         # encrypts (first match in file order); per family,
                                    # "::/0" is implied for the other family if omitted
    ttl = 64                        # outer TTL / hop limit

    [[sa]]
    spi = 0x2002
    algorithm = "null"              # ESP NULL encryption (RFC 2410) ...
    integrity = "hmac-sha256-128"   # ... with HMAC-SHA-256-128 integrity (RFC 4868)
    integrity_key = "hex, 32 bytes"
    src = "fd00::1"
    dst = "fd00::2"

    [digest]                        # for the digest task (``--tx/--rx digest``)
    algorithm = "hmac-sha256-128"   # hmac-sha256 | hmac-sha256-128 | blake2s-128 | crc32c
    key = "hex"                     # not used by crc32c

JSON has the same shape: ``{"sa": [{...}, ...], "digest": {...}}``; there, an
SPI may also be a string such as ``"0x1001"``.

Nonce and AAD (what the encrypt and decrypt tasks do with an SA): the 8-byte IV
on the wire is the 64-bit sequence number, big-endian, so it never repeats under
one key; the AEAD nonce is ``salt || IV`` (RFC 4106 section 4, RFC 7634 section
2); the AAD is ``SPI || seq`` (8 bytes) or ``SPI || seq_hi || seq_lo`` with ESN
(RFC 4106 section 5). ICVs are 16 bytes.

SPIs are unique in a file, and so are keys: an SA is one direction, and two
SAs sharing a cipher (or integrity) key -- the two directions of a tunnel
configured with one key -- are refused, since both sides would count sequence
numbers, and so AEAD nonces, from 1 under it. Addresses may be any (the SA file
is also used for offline captures; only the live tunnel restricts addresses).
Every problem raises ``ConfigError`` naming the file and the SA entry (its name
or index).
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from netoffload.configfile import read_document
from netoffload.errors import ConfigError

AEAD_ALGORITHMS: dict[str, int] = {
    # algorithm: key length without salt
    "aes-gcm-128": 16,
    "aes-gcm-256": 32,
    "chacha20-poly1305": 32,
}
NULL = "null"
ALGORITHMS = (*AEAD_ALGORITHMS, NULL)
INTEGRITY = ("hmac-sha256-128",)
SALT_LEN = 4
ICV_LEN = 16
IV_LEN = 8
DIGEST_ALGORITHMS = ("hmac-sha256", "hmac-sha256-128", "blake2s-128", "crc32c")
NAT_T_PORT = 4500

_ANY4 = ipaddress.ip_network("0.0.0.0/0")
_ANY6 = ipaddress.ip_network("::/0")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_KNOWN_KEYS = {
    "name",
    "spi",
    "algorithm",
    "key",
    "integrity",
    "integrity_key",
    "src",
    "dst",
    "esn",
    "replay_window",
    "udp_encap",
    "udp_sport",
    "udp_dport",
    "seq_start",
    "inner_src",
    "inner_dst",
    "ttl",
}


@dataclass(frozen=True)
class SecurityAssociation:
    """One ESP SA (both directions use the same fields; tunnel mode)."""

    spi: int
    algorithm: str
    key: bytes  # AEAD: cipher key || salt; NULL: empty
    src: str
    dst: str
    name: str = ""
    integrity: str = ""  # "hmac-sha256-128" with algorithm "null"
    integrity_key: bytes = b""
    esn: bool = False
    replay_window: int = 64
    udp_encap: bool = False
    udp_sport: int = NAT_T_PORT
    udp_dport: int = NAT_T_PORT
    seq_start: int = 1
    inner_src: tuple[Network, ...] = (_ANY4, _ANY6)
    inner_dst: tuple[Network, ...] = (_ANY4, _ANY6)
    ttl: int = 64

    @property
    def label(self) -> str:
        return self.name or f"spi 0x{self.spi:08x}"

    @property
    def aead(self) -> bool:
        return self.algorithm in AEAD_ALGORITHMS

    @property
    def cipher_key(self) -> bytes:
        return self.key[:-SALT_LEN] if self.aead else b""

    @property
    def salt(self) -> bytes:
        return self.key[-SALT_LEN:] if self.aead else b""

    @functools.cached_property  # (parsing the address costs ~1.7 us; encryption asks per batch)
    def outer_version(self) -> int:
        return ipaddress.ip_address(self.src).version

    @property
    def iv_len(self) -> int:
        return IV_LEN if self.aead else 0

    @property
    def icv_len(self) -> int:
        return ICV_LEN

    @functools.cached_property
    def overhead(self) -> int:
        """Outer header bytes before the encrypted payload (IP, UDP, ESP header, IV)."""
        ip = 20 if self.outer_version == 4 else 40
        return ip + (8 if self.udp_encap else 0) + 8 + self.iv_len

    @property
    def max_seq(self) -> int:
        return (1 << 64) - 1 if self.esn else (1 << 32) - 1


@dataclass(frozen=True)
class DigestConfig:
    """The ``[digest]`` table: algorithm and key of the digest task."""

    algorithm: str
    key: bytes = b""


@dataclass(frozen=True)
class SATable:
    """The SAs of a file, in file order (the index is the packet extension's ``sa``)."""

    sas: tuple[SecurityAssociation, ...]
    digest: DigestConfig | None = None
    _spis: NDArray[np.uint32] = field(init=False, repr=False, compare=False)
    _order: NDArray[np.int32] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        seen: dict[int, str] = {}
        for sa in self.sas:
            if sa.spi in seen:
                raise ConfigError(
                    f"SA {sa.label}: SPI 0x{sa.spi:08x} already used by {seen[sa.spi]}"
                )
            seen[sa.spi] = sa.label
        keys: dict[bytes, str] = {}
        for sa in self.sas:
            # an SA is one direction; the other direction is another SA with its
            # own key: one key for both (both sides count from 1) repeats AEAD
            # nonces, salt || sequence number, whatever the salts
            k = sa.cipher_key if sa.aead else sa.integrity_key
            if k and k in keys:
                raise ConfigError(
                    f"SA {sa.label}: the same key as SA {keys[k]}; an SA is one direction and "
                    "each needs its own key (one key both ways repeats AEAD nonces)"
                )
            keys.setdefault(k, sa.label)
        spis = np.array([sa.spi for sa in self.sas], dtype=np.uint32)
        order = np.argsort(spis, kind="stable").astype(np.int32)
        object.__setattr__(self, "_spis", spis[order])
        object.__setattr__(self, "_order", order)

    def __len__(self) -> int:
        return len(self.sas)

    def __getitem__(self, i: int) -> SecurityAssociation:
        return self.sas[i]

    def index_of_spi(self, spi: int) -> int:
        for i, sa in enumerate(self.sas):
            if sa.spi == spi:
                return i
        return -1

    def lookup(self, spis: NDArray[np.integer[Any]]) -> NDArray[np.int32]:
        """SA index of each SPI (vectorised), -1 where no SA has it."""
        q = np.asarray(spis, dtype=np.int64)
        if len(self.sas) == 0 or len(q) == 0:
            return np.full(len(q), -1, dtype=np.int32)
        pos = np.searchsorted(self._spis.astype(np.int64), q)
        pos = np.minimum(pos, len(self._spis) - 1)
        hit = self._spis[pos].astype(np.int64) == q
        return np.where(hit, self._order[pos], -1).astype(np.int32)

    def select(
        self, version: NDArray[np.integer[Any]], src: Sequence[bytes], dst: Sequence[bytes]
    ) -> NDArray[np.int32]:
        """First SA (file order) whose traffic selectors match each inner packet.

        ``version`` is 4/6 per packet (0: not IP, never matches); ``src``/``dst``
        the packed inner addresses. Slow path per packet (used offline by pcap).
        """
        out = np.full(len(version), -1, dtype=np.int32)
        for i, v in enumerate(np.asarray(version).tolist()):
            if v not in (4, 6):
                continue
            s = ipaddress.ip_address(src[i])
            d = ipaddress.ip_address(dst[i])
            for k, sa in enumerate(self.sas):
                if any(s in n for n in sa.inner_src if n.version == v) and any(
                    d in n for n in sa.inner_dst if n.version == v
                ):
                    out[i] = k
                    break
        return out


# --------------------------------------------------------------------- loading
def load_sa_file(path: str | Path) -> SATable:
    """Read an SA file (TOML if it ends in .toml, else JSON)."""
    where = f"SA file {str(Path(path))!r}"
    return parse_sa_doc(read_document(path, "SA file"), where=where)


def parse_sa_doc(doc: Any, where: str = "SA table") -> SATable:
    """Build an SATable from a parsed document (the file format above)."""
    if not isinstance(doc, Mapping):
        raise ConfigError(f"{where}: top level must be a table/object with a list 'sa'")
    extra = set(doc) - {"sa", "digest"}
    if extra:
        raise ConfigError(f"{where}: unknown top-level key(s) {sorted(extra)} (known: sa, digest)")
    entries = doc.get("sa", [])
    if not isinstance(entries, list):
        raise ConfigError(f"{where}: 'sa' must be a list of tables")
    sas = []
    for i, ent in enumerate(entries):
        label = f"{where}: SA #{i}"
        if isinstance(ent, Mapping) and isinstance(ent.get("name"), str):
            label += f" ({ent['name']!r})"
        sas.append(_parse_sa(ent, label))
    digest = None
    if "digest" in doc:
        digest = _parse_digest(doc["digest"], f"{where}: [digest]")
    try:
        return SATable(tuple(sas), digest)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def _hex(v: Any, label: str, what: str) -> bytes:
    if not isinstance(v, str):
        raise ConfigError(f"{label}: {what} must be a hex string")
    s = v.strip().lower().removeprefix("0x").replace(":", "").replace(" ", "")
    try:
        return bytes.fromhex(s)
    except ValueError:
        raise ConfigError(f"{label}: {what} is not valid hex") from None


def _int(v: Any, label: str, what: str, lo: int, hi: int) -> int:
    if isinstance(v, str):
        try:
            v = int(v, 0)
        except ValueError:
            raise ConfigError(f"{label}: {what} {v!r} is not an integer") from None
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(f"{label}: {what} must be an integer, got {v!r}")
    if not lo <= v <= hi:
        raise ConfigError(f"{label}: {what} {v} out of range {lo}..{hi}")
    return v


def _bool(v: Any, label: str, what: str) -> bool:
    if not isinstance(v, bool):
        raise ConfigError(f"{label}: {what} must be true or false, got {v!r}")
    return v


def _addr(v: Any, label: str, what: str) -> str:
    try:
        return str(ipaddress.ip_address(v))
    except ValueError:
        raise ConfigError(f"{label}: {what} {v!r} is not an IP address") from None


def _nets(v: Any, label: str, what: str) -> tuple[Network, ...]:
    items = v if isinstance(v, list) else [v]
    out: list[Network] = []
    for it in items:
        if not isinstance(it, str):
            raise ConfigError(f"{label}: {what} must be a prefix string or a list of them")
        try:
            out.append(ipaddress.ip_network(it, strict=False))
        except ValueError:
            raise ConfigError(f"{label}: {what} {it!r} is not an IP prefix") from None
    if not any(n.version == 4 for n in out):
        out.append(_ANY4)
    if not any(n.version == 6 for n in out):
        out.append(_ANY6)
    return tuple(out)


def _parse_sa(ent: Any, label: str) -> SecurityAssociation:
    if not isinstance(ent, Mapping):
        raise ConfigError(f"{label}: must be a table/object")
    unknown = set(ent) - _KNOWN_KEYS
    if unknown:
        raise ConfigError(f"{label}: unknown key(s) {sorted(unknown)}")
    for req in ("spi", "algorithm", "src", "dst"):
        if req not in ent:
            raise ConfigError(f"{label}: missing {req!r}")
    name = ent.get("name", "")
    if not isinstance(name, str):
        raise ConfigError(f"{label}: name must be a string")
    spi = _int(ent["spi"], label, "spi", 256, (1 << 32) - 1)
    alg = ent["algorithm"]
    if alg not in ALGORITHMS:
        raise ConfigError(f"{label}: unknown algorithm {alg!r} (known: {', '.join(ALGORITHMS)})")
    key = b""
    integrity = ""
    ikey = b""
    if alg in AEAD_ALGORITHMS:
        if "key" not in ent:
            raise ConfigError(f"{label}: missing 'key' (cipher key followed by 4-byte salt)")
        key = _hex(ent["key"], label, "key")
        want = AEAD_ALGORITHMS[alg] + SALT_LEN
        if len(key) != want:
            raise ConfigError(
                f"{label}: key for {alg} must be {want} bytes "
                f"({AEAD_ALGORITHMS[alg]}-byte key + 4-byte salt), got {len(key)}"
            )
        if "integrity" in ent or "integrity_key" in ent:
            raise ConfigError(f"{label}: {alg} is an AEAD; 'integrity' is only for algorithm null")
    else:
        if "key" in ent:
            raise ConfigError(f"{label}: algorithm null takes no 'key' (use integrity_key)")
        integrity = ent.get("integrity", "")
        if integrity not in INTEGRITY:
            raise ConfigError(
                f"{label}: algorithm null needs integrity = one of {', '.join(INTEGRITY)}"
            )
        if "integrity_key" not in ent:
            raise ConfigError(f"{label}: missing 'integrity_key'")
        ikey = _hex(ent["integrity_key"], label, "integrity_key")
        if len(ikey) != 32:
            raise ConfigError(f"{label}: integrity_key for {integrity} must be 32 bytes (RFC 4868)")
    src = _addr(ent["src"], label, "src")
    dst = _addr(ent["dst"], label, "dst")
    if ipaddress.ip_address(src).version != ipaddress.ip_address(dst).version:
        raise ConfigError(f"{label}: src and dst must be the same IP version")
    esn = _bool(ent.get("esn", False), label, "esn")
    rw = _int(ent.get("replay_window", 64), label, "replay_window", 0, 4096)
    if 0 < rw < 64:
        raise ConfigError(f"{label}: replay_window must be 0 (off) or 64..4096, got {rw}")
    udp = _bool(ent.get("udp_encap", False), label, "udp_encap")
    sport = _int(ent.get("udp_sport", NAT_T_PORT), label, "udp_sport", 1, 65535)
    dport = _int(ent.get("udp_dport", NAT_T_PORT), label, "udp_dport", 1, 65535)
    max_seq = (1 << 64) - 1 if esn else (1 << 32) - 1
    seq_start = _int(ent.get("seq_start", 1), label, "seq_start", 1, max_seq)
    inner_src = _nets(ent.get("inner_src", []), label, "inner_src")
    inner_dst = _nets(ent.get("inner_dst", []), label, "inner_dst")
    ttl = _int(ent.get("ttl", 64), label, "ttl", 1, 255)
    return SecurityAssociation(
        spi=spi,
        algorithm=alg,
        key=key,
        src=src,
        dst=dst,
        name=name,
        integrity=integrity,
        integrity_key=ikey,
        esn=esn,
        replay_window=rw,
        udp_encap=udp,
        udp_sport=sport,
        udp_dport=dport,
        seq_start=seq_start,
        inner_src=inner_src,
        inner_dst=inner_dst,
        ttl=ttl,
    )


def _parse_digest(ent: Any, label: str) -> DigestConfig:
    if not isinstance(ent, Mapping):
        raise ConfigError(f"{label}: must be a table/object")
    unknown = set(ent) - {"algorithm", "key"}
    if unknown:
        raise ConfigError(f"{label}: unknown key(s) {sorted(unknown)}")
    alg = ent.get("algorithm")
    if alg not in DIGEST_ALGORITHMS:
        raise ConfigError(
            f"{label}: algorithm must be one of {', '.join(DIGEST_ALGORITHMS)}, got {alg!r}"
        )
    key = _hex(ent["key"], label, "key") if "key" in ent else b""
    if alg != "crc32c" and not key:
        raise ConfigError(f"{label}: {alg} needs a non-empty 'key'")
    if alg == "blake2s-128" and len(key) > 32:
        raise ConfigError(f"{label}: blake2s key must be at most 32 bytes")
    return DigestConfig(alg, key)
