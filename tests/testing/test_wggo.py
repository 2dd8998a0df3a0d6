"""testing/wggo: the dump parser (format of wg(8)) and argument checks; the daemon
itself is exercised by tests/tunnel/test_interop_core.py."""

from __future__ import annotations

import base64
import os

import pytest

from netoffload.errors import ConfigError
from netoffload.testing import wggo


def _k(b: int) -> str:
    return base64.b64encode(bytes([b]) * 32).decode()


def test_parse_dump_wg8_format() -> None:
    # wg(8): first line private-key, public-key, listen-port, fwmark; then per peer
    # public-key, preshared-key, endpoint, allowed-ips, latest-handshake, transfer-rx,
    # transfer-tx, persistent-keepalive -- tab separated
    text = (
        f"{_k(1)}\t{_k(2)}\t51820\toff\n"
        f"{_k(3)}\t(none)\t198.18.0.2:51821\t198.18.100.2/32,fd00:100::2/128\t1700000000\t"
        "964\t908\toff\n"
        f"{_k(4)}\t{_k(5)}\t(none)\t(none)\t0\t0\t0\t25\n"
    )
    d = wggo.parse_dump(text)
    assert (d.private_key, d.public_key, d.listen_port) == (bytes([1]) * 32, bytes([2]) * 32, 51820)
    p = d.peers[bytes([3]) * 32]
    assert p.preshared_key is None and p.endpoint == "198.18.0.2:51821"
    assert p.allowed_ips == ("198.18.100.2/32", "fd00:100::2/128")
    assert (p.latest_handshake, p.rx_bytes, p.tx_bytes, p.persistent_keepalive) == (
        1700000000,
        964,
        908,
        0,
    )
    q = d.peers[bytes([4]) * 32]
    assert q.preshared_key == bytes([5]) * 32 and q.endpoint is None and q.allowed_ips == ()
    assert q.persistent_keepalive == 25


def test_names_and_addresses_are_checked() -> None:
    class FakeHost:  # never started: only the constructor's checks run
        name = "x"

    with pytest.raises(ConfigError):
        wggo.WireguardGo(FakeHost(), "a-name-that-is-too-long")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        wggo.WireguardGo(FakeHost(), addresses=["10.0.0.1/24"])  # type: ignore[arg-type]
    w = wggo.WireguardGo(FakeHost())  # type: ignore[arg-type]
    assert w.name.startswith("wg") and len(w.name) <= 15
    assert w.socket_path == f"/var/run/wireguard/{w.name}.sock"
    w.stop()  # nothing was started: nothing to do
    assert not os.path.exists(w.socket_path) and w.log() == ""
