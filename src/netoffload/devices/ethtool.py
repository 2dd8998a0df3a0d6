"""ethtool offload features (``SIOCETHTOOL``) of interfaces the project created.

Reads the kernel's string set of feature names (``ETH_SS_FEATURES`` via
``ETHTOOL_GSSET_INFO`` + ``ETHTOOL_GSTRINGS``), the feature words
(``ETHTOOL_GFEATURES``) and sets them (``ETHTOOL_SFEATURES``).

Safety: every call names a namespace created by this process's testbed
(``netoffload.netns``); anything else -- the root namespace, someone else's
namespace, a name we did not create -- is refused with ``ConfigError`` before
any ioctl is made. Nothing outside our own namespaces is ever read or changed.
"""

from __future__ import annotations

import ctypes
import fcntl
import socket
import struct
from collections.abc import Mapping
from dataclasses import dataclass

from netoffload.devices import kernel_common as kc
from netoffload.errors import ConfigError, DeviceError
from netoffload.netns import Netns, is_project_netns

_SOCKADDR_PAD = 40


@dataclass(frozen=True)
class Feature:
    name: str
    available: bool  # may be changed
    requested: bool
    active: bool
    fixed: bool  # never changeable

    def as_dict(self) -> dict[str, object]:
        return {
            "available": self.available,
            "requested": self.requested,
            "active": self.active,
            "fixed": self.fixed,
        }


def _guard(ns: object, ifname: str) -> str:
    if not isinstance(ns, Netns) or not is_project_netns(ns.name):
        raise ConfigError(
            f"ethtool: refusing {ifname!r}: only interfaces inside namespaces this "
            "process created may be read or changed"
        )
    if not ifname or len(ifname.encode()) >= kc.IFNAMSIZ or "/" in ifname:
        raise ConfigError(f"ethtool: bad interface name {ifname!r}")
    return ns.name


def _ioctl(sock: socket.socket, ifname: str, data: ctypes.Array[ctypes.c_char]) -> None:
    ifr = struct.pack("16sP", ifname.encode(), ctypes.addressof(data))
    ifr += b"\0" * (_SOCKADDR_PAD - len(ifr))
    fcntl.ioctl(sock.fileno(), kc.SIOCETHTOOL, ifr)


class Ethtool:
    """Offload features of one interface inside one of our namespaces."""

    def __init__(self, ns: object, ifname: str) -> None:
        _guard(ns, ifname)
        self.ns = ns
        self.ifname = ifname
        self._names: list[str] | None = None

    def _sock(self) -> socket.socket:
        assert isinstance(self.ns, Netns)
        return self.ns.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def _call(self, data: ctypes.Array[ctypes.c_char]) -> None:
        _guard(self.ns, self.ifname)  # the namespace may have been removed since
        s = self._sock()
        try:
            _ioctl(s, self.ifname, data)
        except OSError as e:
            raise DeviceError(f"ethtool {self.ifname}: {e.strerror}") from None
        finally:
            s.close()

    def names(self) -> list[str]:
        """The kernel's feature names, in bit order."""
        if self._names is None:
            info = ctypes.create_string_buffer(
                struct.pack("IIQI", kc.ETHTOOL_GSSET_INFO, 0, 1 << kc.ETH_SS_FEATURES, 0)
            )
            self._call(info)
            _, _, mask, count = struct.unpack("IIQI", info.raw[:20])
            if not mask & (1 << kc.ETH_SS_FEATURES) or not 0 < count <= 4096:
                raise DeviceError(f"ethtool {self.ifname}: no feature string set")
            gs = ctypes.create_string_buffer(12 + count * kc.ETH_GSTRING_LEN)
            struct.pack_into("III", gs, 0, kc.ETHTOOL_GSTRINGS, kc.ETH_SS_FEATURES, count)
            self._call(gs)
            raw = gs.raw[12:]
            self._names = [
                raw[i * kc.ETH_GSTRING_LEN : (i + 1) * kc.ETH_GSTRING_LEN]
                .split(b"\0", 1)[0]
                .decode()
                for i in range(count)
            ]
        return self._names

    def features(self) -> dict[str, Feature]:
        names = self.names()
        words = (len(names) + 31) // 32
        buf = ctypes.create_string_buffer(8 + 16 * words)
        struct.pack_into("II", buf, 0, kc.ETHTOOL_GFEATURES, words)
        self._call(buf)
        blocks = [struct.unpack_from("IIII", buf.raw, 8 + 16 * w) for w in range(words)]
        out: dict[str, Feature] = {}
        for i, n in enumerate(names):
            if not n:
                continue
            av, rq, ac, never = blocks[i // 32]
            bit = 1 << (i % 32)
            out[n] = Feature(n, bool(av & bit), bool(rq & bit), bool(ac & bit), bool(never & bit))
        return out

    def active(self) -> dict[str, bool]:
        return {n: f.active for n, f in self.features().items()}

    def set(self, changes: Mapping[str, bool]) -> dict[str, bool]:
        """Request features on/off; returns the active state of those features afterwards.

        Unknown names and features the kernel marks as not changeable raise ConfigError.
        """
        names = self.names()
        feats = self.features()
        words = (len(names) + 31) // 32
        valid = [0] * words
        req = [0] * words
        for n, on in changes.items():
            f = feats.get(n)
            if f is None:
                raise ConfigError(f"ethtool {self.ifname}: unknown feature {n!r}")
            if not f.available or f.fixed:
                if f.active == on:
                    continue
                raise ConfigError(f"ethtool {self.ifname}: feature {n!r} cannot be changed")
            i = names.index(n)
            valid[i // 32] |= 1 << (i % 32)
            if on:
                req[i // 32] |= 1 << (i % 32)
        if any(valid):
            buf = ctypes.create_string_buffer(8 + 8 * words)
            struct.pack_into("II", buf, 0, kc.ETHTOOL_SFEATURES, words)
            for w in range(words):
                struct.pack_into("II", buf, 8 + 8 * w, valid[w], req[w])
            self._call(buf)
        after = self.active()
        return {n: after[n] for n in changes}


def offload_summary(ns: object, ifname: str) -> dict[str, bool]:
    """The offload-related features (tx-/rx- checksum, segmentation, GRO) and their state."""
    act = Ethtool(ns, ifname).active()
    keys = ("tx-checksum", "tx-tcp", "tx-udp", "tx-generic", "rx-gro", "rx-checksum", "tx-scatter")
    return {n: v for n, v in act.items() if n.startswith(keys)}
