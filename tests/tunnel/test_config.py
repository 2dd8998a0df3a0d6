"""wg-quick configuration files: values, round trips, corrupt input, every error
naming FILE:LINE: KEY, and agreement with the real tools: ``wg pubkey``,
``wg-quick strip`` (its world-accessible warning too) and ``wg setconf``, whose
request is caught by our UAPI server (the wg tool's own parser is the oracle)."""

from __future__ import annotations

import base64
import ipaddress
import os
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netoffload.errors import ConfigError
from netoffload.tunnel import config as config_mod
from netoffload.tunnel.config import (
    InterfaceConfig,
    OffloadConfig,
    PeerConfig,
    TunnelConfig,
    check_key_file_mode,
    load_config,
    parse_config,
    to_wg_setconf,
)
from netoffload.tunnel.uapi import SetRequest, UapiServer, UapiState

WG = shutil.which("wg")
WG_QUICK = shutil.which("wg-quick")


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


PRIV = bytes(range(1, 33))
PEER1 = bytes([0x11]) * 32
PEER2 = bytes([0x22]) * 32
PSK = bytes([0x33]) * 32


FULL = f"""\
# a full example
[Interface]
PrivateKey = {b64(PRIV)}
ListenPort = 51820
FwMark = 0x10
Address = 198.18.1.1/24, fd00:1::1/64
address = 198.18.9.1
MTU = 1420
Table = 1234
DNS = 198.18.0.53
PostUp = echo up %i
SaveConfig = true

[Peer]
PublicKey = {b64(PEER1)}
PresharedKey = {b64(PSK)}
AllowedIPs = 198.18.2.0/24, fd00:2::/64
AllowedIPs = 198.18.3.7
Endpoint = 198.18.0.2:51821
PersistentKeepalive = 25

[peer]
publickey={b64(PEER2)}   # lower case and no spaces
ENDPOINT = [fd00::2]:4500
persistentkeepalive = off

[Offload]
Policy = adaptive+failover
NIC = crypto
"""


def test_full_example() -> None:
    cfg = parse_config(FULL, "wg0")
    i = cfg.interface
    assert i.name == "wg0" and i.private_key == PRIV and i.listen_port == 51820
    assert i.fwmark == 16 and i.mtu == 1420 and i.table == "1234"
    assert [str(a) for a in i.addresses] == ["198.18.1.1/24", "fd00:1::1/64", "198.18.9.1/32"]
    p1, p2 = cfg.peers
    assert p1.public_key == PEER1 and p1.preshared_key == PSK
    assert [str(n) for n in p1.allowed_ips] == ["198.18.2.0/24", "fd00:2::/64", "198.18.3.7/32"]
    assert p1.endpoint == ("198.18.0.2", 51821) and p1.persistent_keepalive == 25
    assert p2.public_key == PEER2 and p2.preshared_key is None and p2.allowed_ips == ()
    assert p2.endpoint == ("fd00::2", 4500) and p2.persistent_keepalive == 0
    assert cfg.offload == OffloadConfig(policy="adaptive+failover", policy_file=None, nic="crypto")
    assert cfg.warnings == (
        "wg0.conf:10: DNS is ignored (netoffload does not manage resolvers)",
        "wg0.conf:11: PostUp is ignored (netoffload runs no hook scripts)",
        "wg0.conf:12: SaveConfig is ignored (netoffload does not write the configuration back)",
    )


def test_defaults() -> None:
    cfg = parse_config(f"[Interface]\nPrivateKey={b64(PRIV)}\n", "x")
    assert cfg == TunnelConfig(
        interface=InterfaceConfig(name="x", private_key=PRIV),
        peers=(),
        offload=OffloadConfig(policy=None, policy_file=None, nic="none"),
        warnings=(),
    )
    i = cfg.interface
    assert i.listen_port is None and i.mtu is None and i.table == "auto" and i.fwmark is None


@pytest.mark.parametrize(
    ("value", "expected"), [("0", None), ("off", None), ("OFF", None), ("7", 7), ("0xff", 255)]
)
def test_fwmark_values(value: str, expected: int | None) -> None:
    cfg = parse_config(f"[Interface]\nPrivateKey={b64(PRIV)}\nFwMark = {value}\n", "x")
    assert cfg.interface.fwmark == expected


def test_allowed_ips_normalised_and_moved() -> None:
    text = f"""[Interface]
PrivateKey = {b64(PRIV)}
[Peer]
PublicKey = {b64(PEER1)}
AllowedIPs = 198.18.2.9/24, 198.18.2.0/24, 198.18.4.0/24
[Peer]
PublicKey = {b64(PEER2)}
AllowedIPs = 198.18.4.0/24
"""
    cfg = parse_config(text, "x")
    # host bits cleared (as wg), the duplicate dropped, and the later peer gets 198.18.4.0/24
    assert [str(n) for n in cfg.peers[0].allowed_ips] == ["198.18.2.0/24"]
    assert [str(n) for n in cfg.peers[1].allowed_ips] == ["198.18.4.0/24"]
    assert any(
        w.startswith("x.conf:5: AllowedIPs: 198.18.2.9/24 has host bits") for w in cfg.warnings
    )
    assert any(w.startswith("x.conf:8: AllowedIPs: 198.18.4.0/24 is also") for w in cfg.warnings)


def test_policy_file_relative_to_config(tmp_path: Path) -> None:
    p = tmp_path / "wg7.conf"
    p.write_text(f"[Interface]\nPrivateKey={b64(PRIV)}\n[Offload]\nPolicyFile = pol.toml\n")
    assert load_config(p).offload.policy_file == str(tmp_path / "pol.toml")
    assert parse_config(p.read_text(), "wg7").offload.policy_file == "pol.toml"


# --------------------------------------------------------------------------- endpoints


def test_endpoint_names_need_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    text = f"[Interface]\nPrivateKey={b64(PRIV)}\n[Peer]\nPublicKey={b64(PEER1)}\n"
    text += "Endpoint = vpn.example:51820\n"
    calls: list[tuple[object, ...]] = []

    def fake(host: str, port: int, *args: object, **kw: object) -> list[tuple[object, ...]]:
        calls.append((host, port))
        return [
            (socket.AF_INET6, socket.SOCK_DGRAM, 17, "", ("fd00::9", port, 0, 0)),
            (socket.AF_INET, socket.SOCK_DGRAM, 17, "", ("198.18.0.9", port)),
        ]

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    with pytest.raises(ConfigError) as e:
        parse_config(text, "x")
    assert str(e.value).startswith("x.conf:5: Endpoint: 'vpn.example' is a host name")
    assert "resolve" in str(e.value) and calls == []
    cfg = parse_config(text, "x", resolve=True)
    assert cfg.peers[0].endpoint == ("198.18.0.9", 51820) and calls == [("vpn.example", 51820)]


def test_endpoint_resolution_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kw: object) -> list[tuple[object, ...]]:
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", fail)
    text = f"[Interface]\nPrivateKey={b64(PRIV)}\n[Peer]\nPublicKey={b64(PEER1)}\n"
    with pytest.raises(ConfigError, match=r"^x\.conf:5: Endpoint: cannot resolve 'nx\.example'"):
        parse_config(text + "Endpoint = nx.example:1\n", "x", resolve=True)


# --------------------------------------------------------------------------- errors

BASE_LINES = [
    "[Interface]",  # 1
    f"PrivateKey = {b64(PRIV)}",  # 2
    "[Peer]",  # 3
    f"PublicKey = {b64(PEER1)}",  # 4
]
OWN_PUBLIC = config_mod.public_key_of(PRIV)

ERRORS: list[tuple[list[str | None], int, str, str]] = [
    # (lines appended to BASE_LINES (or a whole file if it starts with None), line, key, text)
    (["PresharedKey = abc="], 5, "PresharedKey", "base64"),
    (["PresharedKey = " + b64(bytes(31)) + "AA="], 5, "PresharedKey", "base64"),
    (["PresharedKey = " + b64(bytes(33))], 5, "PresharedKey", "base64"),
    (["PublicKey = " + "!" * 43 + "="], 5, "PublicKey", "base64"),
    (["AllowedIPs = 198.18.0.0/33"], 5, "AllowedIPs", "198.18.0.0/33"),
    (["AllowedIPs = 198.18.0.0/8, nonsense"], 5, "AllowedIPs", "nonsense"),
    (["AllowedIPs = fd00::/129"], 5, "AllowedIPs", "fd00::/129"),
    (["AllowedIPs = 198.18.0.0/255.255.0.0"], 5, "AllowedIPs", "prefix"),
    (["AllowedIPs = 198.18.0.0/8,"], 5, "AllowedIPs", "''"),
    (["Endpoint = 198.18.0.2"], 5, "Endpoint", "PORT"),
    (["Endpoint = 198.18.0.2:0"], 5, "Endpoint", "1..65535"),
    (["Endpoint = 198.18.0.2:65536"], 5, "Endpoint", "1..65535"),
    (["Endpoint = fd00::2:51820"], 5, "Endpoint", "[ADDRESS]:PORT"),
    (["Endpoint = [198.18.0.2]:1"], 5, "Endpoint", "IPv6"),
    (["Endpoint = [fd00::2:1"], 5, "Endpoint", "[IPv6]:PORT"),
    (["Endpoint = host.example:1"], 5, "Endpoint", "resolve"),
    (["PersistentKeepalive = 65536"], 5, "PersistentKeepalive", "65536"),
    (["PersistentKeepalive = -1"], 5, "PersistentKeepalive", "-1"),
    (["Bogus = 1"], 5, "Bogus", "unknown key in [Peer]"),
    (["DNS = 198.18.0.53"], 5, "DNS", "unknown key in [Peer]"),
    (["Address = 198.18.0.1/24"], 5, "Address", "unknown key in [Peer]"),
    (["[Peers]"], 5, "[Peers]", "unknown section"),
    (["just words"], 5, "just words", "KEY = VALUE"),
    (["= value"], 5, "= value", "KEY = VALUE"),
    (["[Peer]", f"PublicKey = {b64(PEER1)}"], 6, "PublicKey", "duplicate peer (first at line 4)"),
    (["[Peer]", f"PublicKey = {b64(OWN_PUBLIC)}"], 6, "PublicKey", "own public key"),
    (["[Peer]", "Endpoint = 198.18.0.3:1"], 5, "[Peer]", "PublicKey missing"),
    (["[Interface]"], 5, "[Interface]", "second section (first at line 1)"),
    (["[Offload]", "NIC = gpu"], 6, "NIC", "none, crypto"),
    (["[Offload]", "Policy = nosuch"], 6, "Policy", "unknown policy 'nosuch'"),
    (["[Offload]", "Policy ="], 6, "Policy", "empty"),
    (["[Offload]", "Colour = red"], 6, "Colour", "unknown key in [Offload]"),
    (["[Offload]", "Policy = always", "PolicyFile = p.toml"], 7, "PolicyFile", "not both"),
    (["[Offload]", "[Offload]"], 6, "[Offload]", "second section"),
    ([None, "PrivateKey = " + b64(PRIV)], 1, "PrivateKey", "outside a section"),
    ([None, "", "[Interface]", "ListenPort = 1"], 2, "PrivateKey", "missing"),
    ([None, "# nothing", ""], 2, "[Interface]", "section missing"),
    ([None, "[Interface]", "PrivateKey = AAAA"], 2, "PrivateKey", "base64"),
    ([None, "[Interface]", "ListenPort = 65536"], 2, "ListenPort", "0..65535"),
    ([None, "[Interface]", "ListenPort = http"], 2, "ListenPort", "0..65535"),
    ([None, "[Interface]", "ListenPort = +5"], 2, "ListenPort", "0..65535"),
    ([None, "[Interface]", "FwMark = 0x100000000"], 2, "FwMark", "32-bit"),
    ([None, "[Interface]", "FwMark = -1"], 2, "FwMark", "32-bit"),
    ([None, "[Interface]", "Address = 198.18.0.1/40"], 2, "Address", "198.18.0.1/40"),
    ([None, "[Interface]", "Address = fd00::1%eth0/64"], 2, "Address", "fd00::1%eth0/64"),
    ([None, "[Interface]", "MTU = 575"], 2, "MTU", "576..65535"),
    ([None, "[Interface]", "MTU = 65536"], 2, "MTU", "576..65535"),
    ([None, "[Interface]", "MTU = 1e3"], 2, "MTU", "576..65535"),
    ([None, "[Interface]", "Table = two words"], 2, "Table", "table number or name"),
    ([None, "[Interface]", "Table = 4294967296"], 2, "Table", "table number or name"),
    ([None, "[Interface]", "Colour = red"], 2, "Colour", "unknown key in [Interface]"),
    (
        [None, "[Interface]", f"PrivateKey = {b64(PRIV)}", "MTU = 1000", "Address = fd00::1/64"],
        3,
        "MTU",
        "below 1280, the IPv6 minimum (Address fd00::1/64 at line 4",
    ),
]


def _error_text(extra: list[str | None]) -> str:
    lines = [x for x in extra[1:] if x is not None] if extra[0] is None else BASE_LINES + extra
    return "\n".join(str(x) for x in lines) + "\n"


@pytest.mark.parametrize(("extra", "line", "key", "text"), ERRORS)
def test_errors_name_file_line_and_key(
    extra: list[str | None], line: int, key: str, text: str
) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(_error_text(extra), "wg9", source="/etc/x/wg9.conf")
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"/etc/x/wg9.conf:{line}: {key}: "), msg
    assert text in msg, msg


def test_load_errors(tmp_path: Path) -> None:
    missing = tmp_path / "wg0.conf"
    with pytest.raises(ConfigError, match=r"^cannot read .*wg0\.conf: No such file"):
        load_config(missing)
    (tmp_path / "wg1.conf").mkdir()
    with pytest.raises(ConfigError, match=r"^cannot read .*wg1\.conf: Is a directory"):
        load_config(tmp_path / "wg1.conf")
    bad = tmp_path / "wg2.conf"
    bad.write_bytes(b"[Interface]\n# caf\xe9\n")
    with pytest.raises(ConfigError, match=r"wg2\.conf:2: not UTF-8"):
        load_config(bad)
    for name in ("wg 0.conf", "sixteen-chars-xx.conf", "wg0.txt", "..conf", "wg0"):
        with pytest.raises(ConfigError, match=r"INTERFACE\.conf"):
            load_config(tmp_path / name)
    with pytest.raises(ConfigError, match="not a valid interface name"):
        parse_config("", "a/b")


def test_load_names_interface_after_file(tmp_path: Path) -> None:
    p = tmp_path / "wg_lab-1.conf"
    p.write_text(FULL)
    cfg = load_config(p)
    assert cfg.interface.name == "wg_lab-1"
    assert cfg.warnings[0].startswith(f"{p}:10: DNS is ignored")


# --------------------------------------------------------------------------- generated configs

keys = st.binary(min_size=32, max_size=32)


@st.composite
def networks(draw: st.DrawFn) -> tuple[str, ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """(text as written, possibly with host bits, the network wg stores)."""
    addr = draw(st.ip_addresses(v=4) | st.ip_addresses(v=6))
    prefix = draw(st.integers(0, addr.max_prefixlen))
    net = ipaddress.ip_network((addr, prefix), strict=False)
    bare = prefix == addr.max_prefixlen and draw(st.booleans())
    return (str(addr) if bare else f"{addr}/{prefix}"), net


@st.composite
def endpoints(draw: st.DrawFn) -> tuple[str, tuple[str, int]]:
    port = draw(st.integers(1, 65535))
    if draw(st.booleans()):
        a4 = draw(st.ip_addresses(v=4, network="198.18.0.0/15"))
        return f"{a4}:{port}", (str(a4), port)
    a6 = draw(st.ip_addresses(v=6, network="fd00::/8"))
    return f"[{a6}]:{port}", (str(a6), port)


@dataclass
class Spec:
    """A generated configuration: the expected value and the pieces to write it."""

    cfg: TunnelConfig
    allowed_text: list[list[str]]
    endpoint_text: list[str | None]
    psk_given: list[bool]


@st.composite
def specs(draw: st.DrawFn, offload: bool = True) -> Spec:
    priv = draw(keys)
    own = config_mod.public_key_of(priv)
    addrs = draw(st.lists(st.ip_addresses(), max_size=3, unique=True))
    addresses = tuple(
        ipaddress.ip_interface((a, draw(st.integers(1, a.max_prefixlen)))) for a in addrs
    )
    v6 = any(a.version == 6 for a in addresses)
    mtu = draw(st.none() | st.integers(1280 if v6 else 576, 65535))
    iface = InterfaceConfig(
        name="wgt",
        private_key=priv,
        listen_port=draw(st.none() | st.integers(0, 65535)),
        addresses=addresses,
        mtu=mtu,
        table=draw(st.sampled_from(["auto", "off", "51820", "vpn_table"])),
        fwmark=draw(st.none() | st.integers(1, 2**32 - 1)),
    )
    pks = draw(st.lists(keys.filter(lambda k: k != own), max_size=4, unique=True))
    taken: set[object] = set()
    peers, allowed_text, endpoint_text, psk_given = [], [], [], []
    for pk in pks:
        nets = [n for n in draw(st.lists(networks(), max_size=4)) if n[1] not in taken]
        mine: list[tuple[str, ipaddress.IPv4Network | ipaddress.IPv6Network]] = []
        for t, n in nets:
            if all(n != m for _, m in mine):
                mine.append((t, n))
        taken.update(n for _, n in mine)
        ep = draw(st.none() | endpoints())
        psk = draw(st.none() | keys)
        peers.append(
            PeerConfig(
                public_key=pk,
                preshared_key=psk if psk is not None and any(psk) else None,
                allowed_ips=tuple(n for _, n in mine),
                endpoint=None if ep is None else ep[1],
                persistent_keepalive=draw(st.integers(0, 65535)),
            )
        )
        allowed_text.append([t for t, _ in mine])
        endpoint_text.append(None if ep is None else ep[0])
        psk_given.append(psk is not None)
    off = OffloadConfig()
    if offload and draw(st.booleans()):
        off = OffloadConfig(
            policy=draw(st.none() | st.sampled_from(["adaptive", "never", "always+failover"])),
            nic=draw(st.sampled_from(["none", "crypto"])),
        )
    cfg = TunnelConfig(interface=iface, peers=tuple(peers), offload=off, warnings=())
    return Spec(cfg, allowed_text, endpoint_text, psk_given)


def render(spec: Spec, data: st.DataObject, extras: bool = False) -> str:
    """wg-quick text for ``spec``, written in one of the many ways people write it."""

    def case(key: str) -> str:
        return data.draw(st.sampled_from([key, key.lower(), key.upper()]))

    def line(key: str, value: str) -> str:
        eq = data.draw(st.sampled_from(["=", " = ", "= ", "\t=\t"]))
        comment = data.draw(st.sampled_from(["", "", " # note", "#=x"]))
        indent = data.draw(st.sampled_from(["", "", "  "]))
        return f"{indent}{case(key)}{eq}{value}{comment}"

    def split_list(key: str, items: list[str]) -> list[str]:
        if not items:
            return []
        cuts = sorted(set(data.draw(st.lists(st.integers(1, len(items)), max_size=2))))
        out, start = [], 0
        for cut in [*cuts, len(items)]:
            if cut > start:
                sep = data.draw(st.sampled_from([",", ", ", " ,  "]))
                out.append(line(key, sep.join(items[start:cut])))
                start = cut
        return out

    i = spec.cfg.interface
    out = [data.draw(st.sampled_from(["", "# generated"])), case("[Interface]")]
    body = [line("PrivateKey", b64(i.private_key))]
    if i.listen_port is not None:
        body.append(line("ListenPort", str(i.listen_port)))
    if i.fwmark is not None:
        body.append(line("FwMark", data.draw(st.sampled_from([str(i.fwmark), hex(i.fwmark)]))))
    elif data.draw(st.booleans()):
        body.append(line("FwMark", data.draw(st.sampled_from(["0", "off", "Off"]))))
    body += split_list("Address", [str(a) for a in i.addresses])
    if i.mtu is not None:
        body.append(line("MTU", str(i.mtu)))
    if i.table != "auto" or data.draw(st.booleans()):
        body.append(line("Table", i.table))
    if extras:
        body += [
            line("DNS", "198.18.0.53, lab"),
            line("PostUp", "true"),
            line("SaveConfig", "false"),
        ]
    # order of interface keys does not matter, except Address lines keep theirs
    out += body
    for n, p in enumerate(spec.cfg.peers):
        out += ["", case("[Peer]"), line("PublicKey", b64(p.public_key))]
        if spec.psk_given[n]:
            out.append(line("PresharedKey", b64(p.preshared_key or bytes(32))))
        out += split_list("AllowedIPs", spec.allowed_text[n])
        ep = spec.endpoint_text[n]
        if ep is not None:
            out.append(line("Endpoint", ep))
        ka = p.persistent_keepalive
        if ka or data.draw(st.booleans()):
            out.append(line("PersistentKeepalive", str(ka) if ka else "off"))
    o = spec.cfg.offload
    if o != OffloadConfig() or (not extras and data.draw(st.booleans())):
        out += ["", case("[Offload]")]
        if o.policy is not None:
            out.append(line("Policy", o.policy))
        out.append(line("NIC", o.nic))
    return "\n".join(out) + data.draw(st.sampled_from(["\n", "", "\n\n"]))


@given(spec=specs(), data=st.data())
def test_round_trip(spec: Spec, data: st.DataObject) -> None:
    text = render(spec, data)
    cfg = parse_config(text, "wgt")
    assert cfg.interface == spec.cfg.interface
    assert cfg.peers == spec.cfg.peers
    assert cfg.offload == spec.cfg.offload
    assert all(re.match(r"wgt\.conf:\d+: AllowedIPs: .* has host bits", w) for w in cfg.warnings)
    # the wg part written by to_wg_setconf reads back to the same wg part
    again = parse_config(to_wg_setconf(cfg), "wgt")
    assert again.peers == cfg.peers and again.warnings == ()
    assert (again.interface.private_key, again.interface.listen_port, again.interface.fwmark) == (
        cfg.interface.private_key,
        cfg.interface.listen_port,
        cfg.interface.fwmark,
    )


# --------------------------------------------------------------------------- corrupt input

TOKENS = [
    "[Interface]",
    "[Peer]",
    "[Offload]",
    "[",
    "]",
    "=",
    "#",
    ",",
    "/",
    ":",
    "[fd00::1]",
    "PrivateKey",
    "PublicKey",
    "AllowedIPs",
    "Endpoint",
    "MTU",
    "Address",
    "Table",
    "FwMark",
    "ListenPort",
    "PersistentKeepalive",
    "PresharedKey",
    "Policy",
    "PolicyFile",
    "NIC",
    "DNS",
    "0x",
    "off",
    "198.18.0.1",
    "fd00::",
    "%eth0",
    "65536",
    "-1",
    "\x00",
    "\r",
    "\u2028",
    "\x85",
    "\ufeff",
    "é",
    b64(PRIV),
    b64(PEER1),
    "AAAA=",
    " ",
    "\t",
    "\n",
    "99999999999999999999999",
]


def _only_config_errors(text: str, resolve: bool = False) -> None:
    try:
        parse_config(text, "wgz", resolve=resolve)
    except ConfigError as e:
        msg = str(e)
        assert msg and "\n" not in msg and "\r" not in msg
        assert len(msg.splitlines()) == 1
        assert msg.startswith("wgz.conf:"), msg


@given(st.text(max_size=400))
def test_fuzz_arbitrary_text(text: str) -> None:
    _only_config_errors(text)


@given(st.lists(st.sampled_from(TOKENS), max_size=60))
def test_fuzz_token_soup(tokens: list[str]) -> None:
    _only_config_errors("".join(tokens))


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(spec=specs(), data=st.data())
def test_fuzz_mutated_valid_files(spec: Spec, data: st.DataObject) -> None:
    lines = render(spec, data, extras=True).split("\n")
    for _ in range(data.draw(st.integers(1, 4))):
        n = data.draw(st.integers(0, len(lines) - 1))
        op = data.draw(st.sampled_from(["drop", "dup", "cut", "insert", "swap"]))
        if op == "drop":
            del lines[n]
        elif op == "dup":
            lines.insert(n, lines[n])
        elif op == "cut":
            lines[n] = lines[n][: data.draw(st.integers(0, max(0, len(lines[n]))))]
        elif op == "insert":
            at = data.draw(st.integers(0, len(lines[n])))
            lines[n] = lines[n][:at] + data.draw(st.sampled_from(TOKENS)) + lines[n][at:]
        else:
            m = data.draw(st.integers(0, len(lines) - 1))
            lines[n], lines[m] = lines[m], lines[n]
        if not lines:
            lines = [""]
    _only_config_errors("\n".join(lines))


def test_huge_numbers_are_config_errors() -> None:
    big = "9" * 5000  # int() of this would raise ValueError (digit limit), not ConfigError
    for key in ("ListenPort", "MTU", "FwMark", "Table"):
        _only_config_errors(f"[Interface]\nPrivateKey={b64(PRIV)}\n{key} = {big}\n")
    _only_config_errors(
        f"[Interface]\nPrivateKey={b64(PRIV)}\n[Peer]\nPublicKey={b64(PEER1)}\n"
        f"PersistentKeepalive = {big}\nEndpoint = 198.18.0.1:{big}\nAllowedIPs = ::/{big}\n"
    )


# --------------------------------------------------------------------------- the real tools

needs_wg = pytest.mark.skipif(WG is None or WG_QUICK is None, reason="wg/wg-quick not installed")


def _root() -> None:
    if os.geteuid() != 0:
        pytest.skip("not root (wg-quick strip and the UAPI socket directory need root)")


@needs_wg
@given(priv=keys)
@settings(max_examples=10)
def test_public_key_matches_wg_pubkey(priv: bytes) -> None:
    cfg = parse_config(f"[Interface]\nPrivateKey = {b64(priv)}\n", "x")
    out = subprocess.run(
        [str(WG), "pubkey"], input=b64(priv) + "\n", capture_output=True, text=True, check=True
    )
    assert base64.b64decode(out.stdout.strip()) == cfg.interface.public_key


class Recorder:
    """A UAPI handler that only records what wg asks to set."""

    def __init__(self) -> None:
        self.requests: list[SetRequest] = []

    def uapi_get(self) -> UapiState:
        return UapiState()

    def uapi_set(self, req: SetRequest) -> None:
        self.requests.append(req)


@pytest.fixture(scope="module")
def recorder() -> Iterator[tuple[str, Recorder]]:
    if os.geteuid() != 0:
        pytest.skip("not root (the UAPI socket lives in /var/run/wireguard)")
    name = f"nof{os.getpid()}c"
    rec = Recorder()
    with UapiServer(name, rec):
        yield name, rec
    assert not os.path.exists(f"/var/run/wireguard/{name}.sock")


def _semantic_cfg(cfg: TunnelConfig) -> object:
    """What a configuration means to WireGuard (absent and zero are the same)."""
    i = cfg.interface
    return (
        i.private_key,
        i.listen_port or 0,
        i.fwmark or 0,
        {
            p.public_key: (
                p.preshared_key,
                None
                if p.endpoint is None
                else (ipaddress.ip_address(p.endpoint[0]), p.endpoint[1]),
                p.persistent_keepalive,
                frozenset(p.allowed_ips),
            )
            for p in cfg.peers
        },
    )


def _semantic_setconf(req: SetRequest) -> object:
    """The same, from the request `wg setconf` sent (which replaces everything)."""
    assert req.replace_peers
    peers = {}
    for p in req.peers:
        assert p.replace_allowed_ips and not p.remove and not p.update_only
        assert p.public_key not in peers
        peers[p.public_key] = (
            p.preshared_key if p.preshared_key is not None and any(p.preshared_key) else None,
            None if p.endpoint is None else (ipaddress.ip_address(p.endpoint[0]), p.endpoint[1]),
            p.persistent_keepalive or 0,
            frozenset(p.allowed_ips),
        )
    return (req.private_key, req.listen_port or 0, req.fwmark or 0, peers)


def _wg_setconf(name: str, rec: Recorder, text: str) -> SetRequest:
    with tempfile.NamedTemporaryFile("w", suffix=".conf") as f:
        f.write(text)
        f.flush()
        before = len(rec.requests)
        r = subprocess.run([str(WG), "setconf", name, f.name], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert len(rec.requests) == before + 1
        return rec.requests[-1]


@needs_wg
@pytest.mark.kernel
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=specs(offload=False), data=st.data())
def test_wg_tools_read_the_same_configuration(
    recorder: tuple[str, Recorder], spec: Spec, data: st.DataObject
) -> None:
    """wg-quick strips the file, wg parses it and sends it to our UAPI socket: that
    request means the same as our parse; so does wg's parse of to_wg_setconf."""
    _root()
    name, rec = recorder
    text = render(spec, data, extras=True)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "wgt.conf"
        path.write_text(text)
        path.chmod(0o600)
        cfg = load_config(path)
        strip = subprocess.run([str(WG_QUICK), "strip", str(path)], capture_output=True, text=True)
        assert strip.returncode == 0, strip.stderr
    want = _semantic_cfg(cfg)
    assert _semantic_setconf(_wg_setconf(name, rec, strip.stdout)) == want
    assert _semantic_setconf(_wg_setconf(name, rec, to_wg_setconf(cfg))) == want


@needs_wg
@pytest.mark.kernel
def test_wg_parses_full_example(recorder: tuple[str, Recorder], tmp_path: Path) -> None:
    _root()
    name, rec = recorder
    path = tmp_path / "wg0.conf"
    path.write_text(FULL.split("[Offload]")[0])
    path.chmod(0o600)
    strip = subprocess.run([str(WG_QUICK), "strip", str(path)], capture_output=True, text=True)
    assert strip.returncode == 0, strip.stderr
    want = _semantic_cfg(load_config(path))
    assert _semantic_setconf(_wg_setconf(name, rec, strip.stdout)) == want


@needs_wg
@pytest.mark.kernel
@pytest.mark.parametrize("fmode", [0o600, 0o640, 0o644, 0o604, 0o606, 0o601], ids=oct)
@pytest.mark.parametrize("dmode", [0o700, 0o755, 0o711, 0o744], ids=oct)
def test_world_accessible_warning_as_wg_quick(tmp_path: Path, fmode: int, dmode: int) -> None:
    _root()
    d = tmp_path / "etc"
    d.mkdir()
    p = d / "wg0.conf"
    p.write_text(f"[Interface]\nPrivateKey = {b64(PRIV)}\n")
    p.chmod(fmode)
    d.chmod(dmode)
    try:
        r = subprocess.run([str(WG_QUICK), "strip", str(p)], capture_output=True, text=True)
        warned = "world accessible" in r.stderr
        ours = check_key_file_mode(p)
    finally:
        d.chmod(0o700)
    assert r.returncode == 0, r.stderr
    assert (ours is not None) == warned, (oct(fmode), oct(dmode), r.stderr)
    if ours is not None:
        assert "world accessible" in ours and str(p) in ours


def test_key_file_mode_missing_file(tmp_path: Path) -> None:
    assert check_key_file_mode(tmp_path / "nope.conf") is None


def test_keys_never_in_repr(tmp_path: Path) -> None:
    """A configuration printed into a log or an error shows no private or preshared key."""
    from netoffload.tunnel import keys
    from netoffload.tunnel.uapi import PeerUpdate, SetRequest, UapiPeer, UapiState

    sk, psk = keys.generate_private(), keys.generate_preshared()
    pk = keys.public_from_private(keys.generate_private())
    text = (
        f"[Interface]\nPrivateKey = {keys.b64_encode(sk)}\n\n[Peer]\n"
        f"PublicKey = {keys.b64_encode(pk)}\nPresharedKey = {keys.b64_encode(psk)}\n"
        "AllowedIPs = 198.18.0.0/24\n"
    )
    cfg = parse_config(text, "wg0")
    shown = [
        repr(cfg),
        repr(SetRequest(private_key=sk, peers=(PeerUpdate(pk, preshared_key=psk),))),
        repr(UapiState(private_key=sk, peers=(UapiPeer(pk, preshared_key=psk),))),
    ]
    for s in shown:
        for secret in (sk, psk):
            assert repr(secret) not in s and keys.b64_encode(secret) not in s
            assert secret.hex() not in s


def test_up_warns_like_wg_quick_about_a_world_readable_key_file(tmp_path: Path) -> None:
    import subprocess
    import sys

    from netoffload.tunnel import keys

    d = tmp_path / "etc"
    d.mkdir(mode=0o755)
    d.chmod(0o755)
    conf = d / "wgx0.conf"
    conf.write_text(f"[Interface]\nPrivateKey = {keys.b64_encode(keys.generate_private())}\n")
    conf.chmod(0o644)
    # a bad --metrics stops `up` (exit 2) before anything is made, after the file checks
    r = subprocess.run(
        [sys.executable, "-m", "netoffload", "up", str(conf), "--metrics", "nowhere"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert "world accessible" in r.stderr
    conf.chmod(0o600)
    r = subprocess.run(
        [sys.executable, "-m", "netoffload", "up", str(conf), "--metrics", "nowhere"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and "world accessible" not in r.stderr
