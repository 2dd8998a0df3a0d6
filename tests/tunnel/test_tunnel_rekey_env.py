"""tunnel.py: the testing knob NETOFFLOAD_TEST_REKEY_AFTER (scripts/soak.sh) reaches the
protocol core; a bad value is a ConfigError naming the variable."""

from __future__ import annotations

import pytest

from netoffload.errors import ConfigError
from netoffload.tunnel import keys
from netoffload.tunnel.config import parse_config
from netoffload.tunnel.timers import REKEY_AFTER_TIME
from netoffload.tunnel.tunnel import REKEY_AFTER_ENV, Tunnel


def _tunnel() -> Tunnel:
    text = f"[Interface]\nPrivateKey = {keys.b64_encode(keys.generate_private())}\n"
    return Tunnel(parse_config(text, "nofrk0"), manage_interface=False)


def test_rekey_after_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REKEY_AFTER_ENV, raising=False)
    t = _tunnel()
    assert t.protocol.rekey_after_time == REKEY_AFTER_TIME
    t.close()
    monkeypatch.setenv(REKEY_AFTER_ENV, "6")
    t = _tunnel()
    assert t.protocol.rekey_after_time == 6.0
    t.close()
    for bad in ("0", "-1", "soon", "nan", "1e9"):
        monkeypatch.setenv(REKEY_AFTER_ENV, bad)
        with pytest.raises(ConfigError, match=REKEY_AFTER_ENV):
            _tunnel()
