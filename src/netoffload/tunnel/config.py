"""The tunnel's configuration file: the wg-quick(8) format, read as wg-quick reads it.

A file ``NAME.conf`` configures the interface ``NAME`` (a Linux interface name:
``[a-zA-Z0-9_=+.-]{1,15}``, as wg-quick requires)::

    [Interface]
    PrivateKey = yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=   # required, base64
    ListenPort = 51820                  # 0..65535; absent or 0: chosen at random
    FwMark = 0x10                       # 32-bit, decimal or 0x-hex; 0 or off: none
    Address = 198.18.1.1/24, fd00::1/64 # interface addresses (repeatable)
    MTU = 1420                          # 576..65535 (1280.. with an IPv6 address)
    Table = auto                        # auto (default), off, or a table number/name
    DNS = 198.18.0.53                   # accepted and ignored, with a warning; so are
                                        # PreUp, PostUp, PreDown, PostDown, SaveConfig

    [Peer]                              # any number of peers
    PublicKey = xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=   # required, unique
    PresharedKey = ...                  # optional, base64
    AllowedIPs = 198.18.2.0/24, fd00:2::/64   # repeatable; host bits are cleared
    Endpoint = 198.18.0.2:51820         # IPv4:port or [IPv6]:port (names: see below)
    PersistentKeepalive = 25            # 1..65535 seconds; 0 or off: none (default)

    [Offload]                           # netoffload's own, optional section
    Policy = adaptive+failover          # a policy spec (as --policy) ...
    PolicyFile = policy.toml            # ... or a policy file (relative to this file)
    NIC = crypto                        # none (default) | crypto: the emulated NIC
    Metrics = 127.0.0.1:9586            # Prometheus metrics on this address (default: off)

Keys and section names are case-insensitive; ``#`` starts a comment anywhere;
blank lines and spaces around keys, values and list items do not matter;
lists are comma-separated. An ``[Offload]`` section is netoffload's own: the
real ``wg``/``wg-quick`` tools reject it.

Endpoints must be IP addresses unless name resolution is asked for
(``resolve=True``): a configuration is never a reason to send a DNS query
unasked. Every problem is a :class:`ConfigError` whose message is one line,
``FILE:LINE: KEY: what is wrong``; keys that wg-quick knows but netoffload
does not act on give warnings of the same form in ``TunnelConfig.warnings``.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import re
import socket
import stat
from dataclasses import dataclass, field
from pathlib import Path

from netoffload.errors import ConfigError
from netoffload.tunnel import keys

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

KEY_LEN = 32
MTU_MIN = 576
MTU_MIN_V6 = 1280
MTU_MAX = 65535
NIC_MODES = ("none", "crypto")
IFNAME_RE = re.compile(r"[a-zA-Z0-9_=+.-]{1,15}")
_TABLE_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_DIGITS_RE = re.compile(r"[0-9]+")
_HEX_RE = re.compile(r"0x[0-9a-fA-F]+")

_IGNORED = {
    "dns": ("DNS", "netoffload does not manage resolvers"),
    "preup": ("PreUp", "netoffload runs no hook scripts"),
    "postup": ("PostUp", "netoffload runs no hook scripts"),
    "predown": ("PreDown", "netoffload runs no hook scripts"),
    "postdown": ("PostDown", "netoffload runs no hook scripts"),
    "saveconfig": ("SaveConfig", "netoffload does not write the configuration back"),
}
# canonical spelling of each key, by section (lower-case name -> spelling)
_INTERFACE_KEYS = {
    k.lower(): k for k in ("PrivateKey", "ListenPort", "FwMark", "Address", "MTU", "Table")
}
_PEER_KEYS = {
    k.lower(): k
    for k in ("PublicKey", "PresharedKey", "AllowedIPs", "Endpoint", "PersistentKeepalive")
}
_OFFLOAD_KEYS = {k.lower(): k for k in ("Policy", "PolicyFile", "NIC", "Metrics")}
_REPEATABLE = {"address", "allowedips"}


@dataclass(frozen=True)
class InterfaceConfig:
    name: str
    private_key: bytes = field(repr=False)
    listen_port: int | None = None
    addresses: tuple[IPInterface, ...] = ()
    mtu: int | None = None
    table: str = "auto"
    fwmark: int | None = None  # None: no mark (absent, 0 or "off")

    @property
    def public_key(self) -> bytes:
        return public_key_of(self.private_key)


@dataclass(frozen=True)
class PeerConfig:
    public_key: bytes
    # None: none (an all-zero key is the same); never in repr (logs)
    preshared_key: bytes | None = field(default=None, repr=False)
    allowed_ips: tuple[IPNetwork, ...] = ()
    endpoint: tuple[str, int] | None = None  # (IP address text, port)
    persistent_keepalive: int = 0  # seconds; 0 is off


@dataclass(frozen=True)
class OffloadConfig:
    policy: str | None = None
    policy_file: str | None = None
    nic: str = "none"
    metrics: str | None = None  # HOST:PORT of the Prometheus exporter (tunnel/metrics.py)


@dataclass(frozen=True)
class TunnelConfig:
    interface: InterfaceConfig
    peers: tuple[PeerConfig, ...] = ()
    offload: OffloadConfig = field(default_factory=OffloadConfig)
    warnings: tuple[str, ...] = ()


def public_key_of(private_key: bytes) -> bytes:
    """The X25519 public key of a 32-byte private key (clamped as Curve25519 does)."""
    return keys.public_from_private(private_key)


def valid_ifname(name: str) -> bool:
    """A name wg-quick and Linux both accept for an interface."""
    return bool(IFNAME_RE.fullmatch(name)) and name not in (".", "..")


def key_from_base64(text: str) -> bytes | None:
    """A 32-byte key from its base64 form (44 characters ending in '='), or None."""
    if len(text) != 44 or not text.endswith("=") or text.endswith("=="):
        return None
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        return None
    return raw if len(raw) == KEY_LEN else None


def key_to_base64(key: bytes) -> str:
    return keys.b64_encode(key)


# --------------------------------------------------------------------------- parsing


class _Where:
    """Builds the ``FILE:LINE: KEY: problem`` messages of one file."""

    def __init__(self, source: str) -> None:
        self.source = source

    def error(self, line: int, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.source}:{line}: {key}: {_one_line(problem)}")


def _one_line(text: str) -> str:
    return " ".join(text.splitlines())


def _show(value: str) -> str:
    """A value quoted for a message, on one line and not too long."""
    v = value if len(value) <= 60 else value[:57] + "..."
    return repr(v)


def _items(value: str) -> list[str]:
    """A comma-separated list; an empty value is an empty list."""
    if not value:
        return []
    return [item.strip() for item in value.split(",")]


def _port(text: str, lo: int) -> int | None:
    n = _uint(text, 16)
    return n if n is not None and n >= lo else None


def _uint(text: str, bits: int, allow_hex: bool = False) -> int | None:
    """A decimal (or 0x-hex) number below 2**bits, else None (no sign, no spaces)."""
    if _DIGITS_RE.fullmatch(text):
        digits, base = text.lstrip("0"), 10
    elif allow_hex and _HEX_RE.fullmatch(text):
        digits, base = text[2:].lstrip("0"), 16
    else:
        return None
    if len(digits) > 20:  # also keeps int() under its digit limit
        return None
    n = int(digits or "0", base)
    return n if n < (1 << bits) else None


def _split_prefix(text: str, need_prefix: bool) -> tuple[str, int | None]:
    addr, sep, prefix = text.partition("/")
    if not sep:
        if need_prefix:
            raise ValueError(f"{_show(text)} has no /PREFIX")
        return addr, None
    if not _DIGITS_RE.fullmatch(prefix) or len(prefix) > 3:
        raise ValueError(f"prefix {_show(prefix)} is not a number")
    return addr, int(prefix)


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if "%" in text:
        raise ValueError(f"{_show(text)}: no %zone here")
    return ipaddress.ip_address(text)


def parse_network(text: str, need_prefix: bool = False) -> IPNetwork:
    """``ADDRESS[/PREFIX]`` (a whole address without the prefix) to a network with
    the host bits cleared, as wg and the kernel store allowed IPs. ValueError if bad."""
    addr_text, prefix = _split_prefix(text, need_prefix)
    addr = _address(addr_text)
    if prefix is None:
        prefix = addr.max_prefixlen
    if prefix > addr.max_prefixlen:
        raise ValueError(f"prefix /{prefix} is longer than {addr.max_prefixlen}")
    return ipaddress.ip_network((addr, prefix), strict=False)


def parse_interface(text: str) -> IPInterface:
    """``ADDRESS[/PREFIX]`` to an interface address (host bits kept). ValueError if bad."""
    addr_text, prefix = _split_prefix(text, False)
    addr = _address(addr_text)
    if prefix is None:
        prefix = addr.max_prefixlen
    if prefix > addr.max_prefixlen:
        raise ValueError(f"prefix /{prefix} is longer than {addr.max_prefixlen}")
    return ipaddress.ip_interface((addr, prefix))


def parse_endpoint(text: str, resolve: bool = False) -> tuple[str, int]:
    """``IPv4:port`` or ``[IPv6]:port`` (or ``name:port`` with ``resolve``) to
    ``(address, port)``. Raises ValueError with the reason."""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"{_show(text)} is not [IPv6]:PORT")
        port_text = rest[1:]
        bracketed = True
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError(f"{_show(text)} has no :PORT")
        bracketed = False
    port = _port(port_text, 1)
    if port is None:
        raise ValueError(f"port {_show(port_text)} is not 1..65535")
    if not host:
        raise ValueError(f"{_show(text)} has no address")
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        addr = None
    if addr is not None:
        if addr.version == 6 and not bracketed:
            raise ValueError(f"IPv6 endpoints are written [ADDRESS]:PORT, not {_show(text)}")
        if addr.version == 4 and bracketed:
            raise ValueError(f"brackets are for IPv6 addresses only: {_show(text)}")
        return str(addr), port
    if ":" in host or bracketed:
        raise ValueError(f"{_show(host)} is not an IP address")
    if not resolve:
        raise ValueError(
            f"{_show(host)} is a host name: only IP addresses are accepted unless name "
            "resolution is enabled (resolve=True)"
        )
    return _resolve(host, port)


def _resolve(host: str, port: int) -> tuple[str, int]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except (OSError, UnicodeError) as e:
        raise ValueError(f"cannot resolve {_show(host)}: {e}") from None
    for family in (socket.AF_INET, socket.AF_INET6):  # IPv4 first, as wg prefers
        for fam, _type, _proto, _name, sockaddr in infos:
            if fam == family:
                return str(ipaddress.ip_address(sockaddr[0])), port
    raise ValueError(f"{_show(host)} has no IPv4 or IPv6 address")


class _PeerDraft:
    def __init__(self, line: int) -> None:
        self.line = line
        self.public_key: bytes | None = None
        self.public_key_line = line
        self.preshared_key: bytes | None = None
        self.allowed_ips: list[tuple[IPNetwork, int]] = []
        self.endpoint: tuple[str, int] | None = None
        self.keepalive = 0
        self.seen: dict[str, int] = {}


def parse_config(
    text: str,
    name: str,
    *,
    source: str | None = None,
    resolve: bool = False,
    base_dir: str | Path | None = None,
) -> TunnelConfig:
    """Parse a wg-quick file's text for interface ``name``.

    ``source`` names the file in messages (default ``NAME.conf``); ``resolve``
    lets Endpoint host names be resolved with getaddrinfo; ``base_dir`` is
    where a relative PolicyFile is found (kept as written without it).
    """
    where = _Where(source if source is not None else f"{name}.conf")
    if not valid_ifname(name):
        raise ConfigError(
            f"{where.source}: {name!r} is not a valid interface name "
            "(1..15 of a-z A-Z 0-9 _ = + . -)"
        )
    warnings: list[str] = []
    section: str | None = None
    iface_line: int | None = None
    iface_seen: dict[str, int] = {}
    private_key: bytes | None = None
    listen_port: int | None = None
    fwmark: int | None = None
    addresses: list[tuple[IPInterface, int]] = []
    mtu: int | None = None
    mtu_line = 0
    table = "auto"
    offload_line: int | None = None
    offload_seen: dict[str, int] = {}
    policy: str | None = None
    policy_file: str | None = None
    nic = "none"
    metrics: str | None = None
    peers: list[_PeerDraft] = []

    lines = text.splitlines()
    for number, raw in enumerate(lines, 1):
        content = raw.split("#", 1)[0].strip()
        if not content:
            continue
        if content.startswith("["):
            header = content.lower()
            if header == "[interface]":
                if iface_line is not None:
                    raise where.error(
                        number, "[Interface]", f"a second section (first at line {iface_line})"
                    )
                section, iface_line = "interface", number
            elif header == "[peer]":
                section = "peer"
                peers.append(_PeerDraft(number))
            elif header == "[offload]":
                if offload_line is not None:
                    raise where.error(
                        number, "[Offload]", f"a second section (first at line {offload_line})"
                    )
                section, offload_line = "offload", number
            else:
                raise where.error(
                    number,
                    _show(content)[1:-1],
                    "unknown section (expected [Interface], [Peer] or [Offload])",
                )
            continue
        key_text, eq, value = content.partition("=")
        key_text, value = key_text.strip(), value.strip()
        if not eq or not key_text:
            raise where.error(number, _show(content)[1:-1], "expected KEY = VALUE")
        key = key_text.lower()
        if section is None:
            raise where.error(number, key_text, "outside a section ([Interface], [Peer])")

        if section == "interface":
            if key in _IGNORED:
                spelled, why = _IGNORED[key]
                warnings.append(f"{where.source}:{number}: {spelled} is ignored ({why})")
                continue
            if key not in _INTERFACE_KEYS:
                raise where.error(number, key_text, "unknown key in [Interface]")
            k = _INTERFACE_KEYS[key]
            _note_repeat(where, warnings, iface_seen, key, k, number)
            if key == "privatekey":
                private_key = key_from_base64(value)
                if private_key is None:
                    raise where.error(number, k, "not a base64 key of 32 bytes")
            elif key == "listenport":
                listen_port = _port(value, 0)
                if listen_port is None:
                    raise where.error(number, k, f"{_show(value)} is not a port 0..65535")
            elif key == "fwmark":
                if value.lower() == "off":
                    fwmark = None
                else:
                    mark = _uint(value, 32, allow_hex=True)
                    if mark is None:
                        raise where.error(
                            number, k, f"{_show(value)} is not off or a 32-bit number"
                        )
                    fwmark = mark or None
            elif key == "address":
                for item in _items(value):
                    try:
                        addresses.append((parse_interface(item), number))
                    except ValueError:
                        raise where.error(
                            number, k, f"{_show(item)} is not an IP address[/prefix]"
                        ) from None
            elif key == "mtu":
                n = _uint(value, 32)
                if n is None or not MTU_MIN <= n <= MTU_MAX:
                    raise where.error(number, k, f"{_show(value)} is not {MTU_MIN}..{MTU_MAX}")
                mtu, mtu_line = n, number
            elif key == "table":
                low = value.lower()
                if low in ("auto", "off"):
                    table = low
                elif _uint(value, 32) is not None or (
                    _TABLE_NAME_RE.fullmatch(value) and not value[0].isdigit()
                ):
                    table = value
                else:
                    raise where.error(
                        number, k, f"{_show(value)} is not auto, off, or a table number or name"
                    )

        elif section == "peer":
            peer = peers[-1]
            if key not in _PEER_KEYS:
                raise where.error(number, key_text, "unknown key in [Peer]")
            k = _PEER_KEYS[key]
            _note_repeat(where, warnings, peer.seen, key, k, number)
            if key == "publickey":
                pk = key_from_base64(value)
                if pk is None:
                    raise where.error(number, k, "not a base64 key of 32 bytes")
                peer.public_key, peer.public_key_line = pk, number
            elif key == "presharedkey":
                psk = key_from_base64(value)
                if psk is None:
                    raise where.error(number, k, "not a base64 key of 32 bytes")
                peer.preshared_key = psk if any(psk) else None
            elif key == "allowedips":
                for item in _items(value):
                    try:
                        net = parse_network(item)
                    except ValueError:
                        raise where.error(
                            number, k, f"{_show(item)} is not an IP address[/prefix]"
                        ) from None
                    if "/" in item and parse_interface(item).ip != net.network_address:
                        warnings.append(
                            f"{where.source}:{number}: AllowedIPs: {item} has host bits set; "
                            f"taken as {net}"
                        )
                    peer.allowed_ips.append((net, number))
            elif key == "endpoint":
                try:
                    peer.endpoint = parse_endpoint(value, resolve)
                except ValueError as e:
                    raise where.error(number, k, str(e)) from None
            elif key == "persistentkeepalive":
                if value.lower() == "off":
                    peer.keepalive = 0
                else:
                    ka = _uint(value, 16)
                    if ka is None:
                        raise where.error(number, k, f"{_show(value)} is not off or 0..65535")
                    peer.keepalive = ka

        else:  # offload
            if key not in _OFFLOAD_KEYS:
                raise where.error(number, key_text, "unknown key in [Offload]")
            k = _OFFLOAD_KEYS[key]
            _note_repeat(where, warnings, offload_seen, key, k, number)
            if key == "policy":
                if not value:
                    raise where.error(number, k, "empty policy spec")
                _check_policy(where, number, k, value)
                policy = value
            elif key == "policyfile":
                if not value:
                    raise where.error(number, k, "empty file name")
                p = Path(value)
                if base_dir is not None and not p.is_absolute():
                    p = Path(base_dir) / p
                policy_file = str(p)
            elif key == "nic":
                if value.lower() not in NIC_MODES:
                    raise where.error(number, k, f"{_show(value)} is not one of none, crypto")
                nic = value.lower()
            elif key == "metrics":
                from netoffload.tunnel.metrics import parse_address

                try:
                    metrics = str(parse_address(value, "address"))
                except ConfigError as e:
                    raise where.error(number, k, str(e)) from None

    end = max(1, len(lines))
    if iface_line is None:
        raise where.error(end, "[Interface]", "section missing (PrivateKey is required)")
    if private_key is None:
        raise where.error(iface_line, "PrivateKey", "missing from [Interface]")
    if policy is not None and policy_file is not None:
        raise where.error(
            offload_seen["policyfile"], "PolicyFile", "give Policy or PolicyFile, not both"
        )
    v6 = [(a, n) for a, n in addresses if a.version == 6]
    if mtu is not None and mtu < MTU_MIN_V6 and v6:
        raise where.error(
            mtu_line,
            "MTU",
            f"{mtu} is below {MTU_MIN_V6}, the IPv6 minimum "
            f"(Address {v6[0][0]} at line {v6[0][1]} is IPv6)",
        )
    own = public_key_of(private_key)
    done: dict[bytes, int] = {}
    # an allowed IP belongs to one peer: a later peer takes it (as wg and the kernel do)
    owner: dict[IPNetwork, tuple[int, int]] = {}  # network -> (peer index, line)
    nets: list[list[IPNetwork]] = []
    for index, peer in enumerate(peers):
        if peer.public_key is None:
            raise where.error(peer.line, "[Peer]", "PublicKey missing")
        if peer.public_key == own:
            raise where.error(
                peer.public_key_line, "PublicKey", "is this interface's own public key"
            )
        if peer.public_key in done:
            raise where.error(
                peer.public_key_line,
                "PublicKey",
                f"duplicate peer (first at line {done[peer.public_key]})",
            )
        done[peer.public_key] = peer.public_key_line
        mine: list[IPNetwork] = []
        for net, line in peer.allowed_ips:
            if net in mine:
                continue
            if net in owner:
                other, other_line = owner[net]
                nets[other].remove(net)
                warnings.append(
                    f"{where.source}:{line}: AllowedIPs: {net} is also given to the peer at "
                    f"line {peers[other].line} (line {other_line}); this later peer gets it"
                )
            owner[net] = (index, line)
            mine.append(net)
        nets.append(mine)
    out_peers = [
        PeerConfig(
            public_key=peer.public_key,
            preshared_key=peer.preshared_key,
            allowed_ips=tuple(mine),
            endpoint=peer.endpoint,
            persistent_keepalive=peer.keepalive,
        )
        for peer, mine in zip(peers, nets, strict=True)
        if peer.public_key is not None
    ]
    return TunnelConfig(
        interface=InterfaceConfig(
            name=name,
            private_key=private_key,
            listen_port=listen_port,
            addresses=tuple(a for a, _ in addresses),
            mtu=mtu,
            table=table,
            fwmark=fwmark,
        ),
        peers=tuple(out_peers),
        offload=OffloadConfig(policy=policy, policy_file=policy_file, nic=nic, metrics=metrics),
        warnings=tuple(warnings),
    )


def _note_repeat(
    where: _Where, warnings: list[str], seen: dict[str, int], key: str, spelled: str, line: int
) -> None:
    """Single-valued keys given again: the last one counts (as with wg), with a warning."""
    if key in seen and key not in _REPEATABLE:
        warnings.append(
            f"{where.source}:{line}: {spelled} given again (first at line {seen[key]}); "
            "the last one counts"
        )
    seen.setdefault(key, line)


def _check_policy(where: _Where, line: int, key: str, spec: str) -> None:
    from netoffload.policy.config import parse_policy_spec

    try:
        parse_policy_spec(spec)
    except ConfigError as e:
        raise where.error(line, key, str(e)) from None


def interface_name(path: str | Path) -> str:
    """The interface a configuration file is for: ``wg0`` for ``.../wg0.conf``."""
    p = Path(path)
    if p.suffix != ".conf" or not valid_ifname(p.stem):
        raise ConfigError(
            f"{p!s}: the file name must be INTERFACE.conf, INTERFACE being "
            "1..15 of a-z A-Z 0-9 _ = + . -"
        )
    return p.stem


def load_config(path: str | Path, *, resolve: bool = False) -> TunnelConfig:
    """Read and parse the wg-quick file at ``path`` (interface named after it)."""
    p = Path(path)
    name = interface_name(p)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read {p!s}: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError(f"{p!s}:{line}: not UTF-8 text (byte {e.start})") from None
    return parse_config(text, name, source=str(p), resolve=resolve, base_dir=p.parent)


def check_key_file_mode(path: str | Path) -> str | None:
    """A warning when others may read the file (holding a private key), else None.

    The test is wg-quick's: the file's and its directory's permission bits for
    others share a bit (readable file in a listable directory, and so on).
    """
    p = Path(os.path.realpath(path))
    try:
        fmode = stat.S_IMODE(p.stat().st_mode)
        dmode = stat.S_IMODE(p.parent.stat().st_mode)
    except OSError:
        return None
    if fmode & dmode & 0o007:
        return (
            f"Warning: {str(p)!r} is world accessible (mode {fmode:04o}, directory "
            f"{dmode:04o}): it holds a private key; chmod 600 it"
        )
    return None


# --------------------------------------------------------------------------- output


def format_endpoint(endpoint: tuple[str, int]) -> str:
    host, port = endpoint
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def to_wg_setconf(cfg: TunnelConfig) -> str:
    """The ``wg setconf`` form of ``cfg`` (no wg-quick or netoffload keys)."""
    i = cfg.interface
    out = ["[Interface]", f"PrivateKey = {key_to_base64(i.private_key)}"]
    if i.listen_port is not None:
        out.append(f"ListenPort = {i.listen_port}")
    if i.fwmark is not None:
        out.append(f"FwMark = 0x{i.fwmark:x}")
    for peer in cfg.peers:
        out += ["", "[Peer]", f"PublicKey = {key_to_base64(peer.public_key)}"]
        if peer.preshared_key is not None:
            out.append(f"PresharedKey = {key_to_base64(peer.preshared_key)}")
        if peer.allowed_ips:
            out.append("AllowedIPs = " + ", ".join(str(n) for n in peer.allowed_ips))
        if peer.endpoint is not None:
            out.append(f"Endpoint = {format_endpoint(peer.endpoint)}")
        if peer.persistent_keepalive:
            out.append(f"PersistentKeepalive = {peer.persistent_keepalive}")
    return "\n".join(out) + "\n"
