"""Prometheus metrics of a running tunnel (``netoffload up --metrics HOST:PORT``).

The exporter keeps no counters of its own: at each scrape its collector takes
the tunnel's lock, calls ``Tunnel.status()`` (the document ``netoffload show
--json`` prints) and turns that one snapshot into metric families, so a scrape
and ``show --json`` agree. Worker CPU is read from the kernel (psutil) at the
same moment. The HTTP server (prometheus-client's) listens on the one address
given and nowhere else; without ``--metrics`` (or ``[Offload] Metrics``) there
is none.

Every family carries the label ``interface``. The names, in short:

* per peer (label ``peer``, the base64 public key): ``netoffload_peer_rx_bytes_total``,
  ``netoffload_peer_tx_bytes_total``, ``netoffload_peer_handshake_age_seconds``,
  ``netoffload_peer_last_handshake_timestamp_seconds``;
* the interface: ``netoffload_<stat>_total`` for each of ``show --json``'s ``stats``
  (``tx_packets``, ``rx_packets``, ``tx_bytes``, ``rx_bytes``, ``handshakes_in``, ...),
  ``netoffload_protocol_drops_total{reason}``, ``netoffload_uptime_seconds``;
* per task (labels ``direction``, ``task``): ``netoffload_task_packets_total{path=device|
  software}``, ``netoffload_task_dropped_total``, ``netoffload_task_errors_total``,
  ``netoffload_task_reasons_total{reason}``, ``netoffload_task_bytes_total``,
  ``netoffload_task_seconds_total{path}``;
* the policy: ``netoffload_policy_info{policy}``, ``netoffload_policy_last_split_ratio``
  (the last batch), ``netoffload_policy_offloaded_ratio`` (cumulative),
  ``netoffload_policy_decisions_total{path}``, ``netoffload_policy_events_total{event}``;
* devices (label ``device``): ``netoffload_device_{submits,packets,bytes,errors}_total``,
  ``netoffload_device_task_packets_total{task}``, ``netoffload_device_value{key}``;
* ``netoffload_worker_cpu_seconds_total{worker,pid,mode}``: this process and its
  children (the emulated NIC's processes).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import CollectorRegistry

from netoffload.errors import ConfigError

PREFIX = "netoffload"
METRICS_PATH = "/metrics"
_EXAMPLE = "127.0.0.1:9586"
_STAT_HELP = {
    "tx_packets": "outer datagrams sent to peers (all peers: no per-peer packet count is kept)",
    "rx_packets": "inner packets written to the TUN (all peers)",
    "tx_bytes": "bytes the encrypt task sent to peers (all peers)",
    "rx_bytes": "bytes of authenticated data messages received (all peers)",
    "handshakes_in": "handshake messages received",
    "handshakes_out": "handshake messages sent",
    "keepalives_in": "authenticated keepalives received",
}
_NAME_OK = re.compile(r"[^a-zA-Z0-9_]")


# ---------------------------------------------------------------------------- address
@dataclass(frozen=True)
class MetricsAddress:
    """Where the exporter listens: an IP address (never a name) and a TCP port."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self}{METRICS_PATH}"


def parse_address(text: str, what: str = "--metrics") -> MetricsAddress:
    """``HOST:PORT`` with HOST an IPv4 address or a bracketed IPv6 address, PORT
    1..65535; anything else is a ConfigError naming ``what``."""
    raw = text.strip()

    def bad(why: str) -> ConfigError:
        return ConfigError(f"{what} {text!r}: {why} (expected HOST:PORT, e.g. {_EXAMPLE})")

    if raw.startswith("["):
        host, sep, port_text = raw[1:].partition("]:")
        if not sep:
            raise bad("an IPv6 address needs [ADDRESS]:PORT")
    else:
        host, sep, port_text = raw.rpartition(":")
        if not sep:
            raise bad("no port")
        if ":" in host:
            raise bad("an IPv6 address goes in brackets, [ADDRESS]:PORT")
    if not host:
        raise bad("no address (say 0.0.0.0 or [::] to listen on all)")
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise bad(f"{host!r} is not an IP address") from None
    if raw.startswith("[") and addr.version != 6:
        raise bad("brackets are for IPv6 addresses")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise bad(f"port {port_text!r} is not 1..65535")
    return MetricsAddress(str(addr), int(port_text))


# ---------------------------------------------------------------------------- families
def _num(v: object) -> float | None:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, int | float):
        return float(v)
    return None


def _flat(d: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, float]]:
    """Numeric leaves of nested dicts, keys joined with dots."""
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            yield from _flat(v, key + ".")
        else:
            x = _num(v)
            if x is not None:
                yield key, x


class _Families:
    """Metric families under construction, in a stable order."""

    def __init__(self, iface: str) -> None:
        self.iface = iface
        self.items: dict[str, tuple[Metric, tuple[str, ...]]] = {}

    def _add(self, kind: str, name: str, doc: str, value: float, labels: dict[str, str]) -> None:
        got = self.items.get(name)
        if got is None:
            cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            names = tuple(labels)
            got = (cls(f"{PREFIX}_{name}", doc, labels=["interface", *names]), names)
            self.items[name] = got
        m, names = got
        values = [self.iface, *(labels[k] for k in names)]
        if isinstance(m, CounterMetricFamily):
            m.add_metric(values, max(0.0, value))
        else:
            assert isinstance(m, GaugeMetricFamily)
            m.add_metric(values, value)

    def counter(self, name: str, doc: str, value: float, **labels: str) -> None:
        self._add("counter", name, doc, value, labels)

    def gauge(self, name: str, doc: str, value: float, **labels: str) -> None:
        self._add("gauge", name, doc, value, labels)

    def metrics(self) -> list[Metric]:
        return [m for m, _ in self.items.values()]


def families(doc: Mapping[str, Any], cpu: Iterable[CpuSample] = ()) -> list[Metric]:
    """The metric families of one status document (``Tunnel.status()``, the shape
    ``show --json`` prints) and CPU samples."""
    f = _Families(str(doc.get("interface", "")))
    f.gauge(
        "tunnel_info",
        "the interface: its public key, UDP port and serving process (value 1)",
        1.0,
        public_key=str(doc.get("public_key", "")),
        listen_port=str(doc.get("listen_port", "")),
        pid=str(doc.get("pid", "")),
    )
    f.gauge("uptime_seconds", "seconds since the tunnel started", float(doc.get("uptime_s") or 0))
    for p in doc.get("peers") or []:
        peer = str(p.get("public_key"))
        rx, tx = float(p.get("rx_bytes") or 0), float(p.get("tx_bytes") or 0)
        f.counter("peer_rx_bytes", "bytes received from the peer (as wg show)", rx, peer=peer)
        f.counter("peer_tx_bytes", "bytes sent to the peer (as wg show)", tx, peer=peer)
        last = _num(p.get("latest_handshake"))
        f.gauge(
            "peer_last_handshake_timestamp_seconds",
            "Unix time of the peer's latest handshake; 0: none yet",
            last or 0.0,
            peer=peer,
        )
        age = _num(p.get("handshake_age_s"))
        if age is not None:
            f.gauge(
                "peer_handshake_age_seconds",
                "seconds since the peer's latest handshake (peers with one only)",
                age,
                peer=peer,
            )
    for key, v in (doc.get("stats") or {}).items():
        x = _num(v)
        if x is None:
            continue
        name = _NAME_OK.sub("_", str(key))
        f.counter(name, _STAT_HELP.get(key, f"the interface's {key} (show --json stats)"), x)
    for reason, v in (doc.get("protocol") or {}).items():
        x = _num(v)
        if x is not None:
            f.counter(
                "protocol_drops",
                "handshake-level refusals of the protocol core, by reason",
                x,
                reason=str(reason),
            )
    for direction in ("transmit", "receive"):
        eng = doc.get(direction) or {}
        _engine(f, direction, eng)
    for dev, counters in (doc.get("devices") or {}).items():
        if isinstance(counters, Mapping):
            _device(f, str(dev), counters)
    for s in cpu:
        for mode, secs in (("user", s.user), ("system", s.system)):
            f.counter(
                "worker_cpu_seconds",
                "CPU seconds of the tunnel's processes (this one and its children, "
                "e.g. the emulated NIC), by mode",
                secs,
                worker=s.worker,
                pid=str(s.pid),
                mode=mode,
            )
    return f.metrics()


def _engine(f: _Families, direction: str, eng: Mapping[str, Any]) -> None:
    tasks: Mapping[str, Any] = eng.get("tasks") or {}
    for task, c in tasks.items():
        if not isinstance(c, Mapping):
            continue
        lab = {"direction": direction, "task": str(task)}
        dev, soft = float(c.get("offloaded") or 0), float(c.get("software") or 0)
        f.counter(
            "task_packets",
            "packets a task was done for, by path: device (offloaded) or software",
            dev,
            **lab,
            path="device",
        )
        f.counter(
            "task_packets",
            "packets a task was done for, by path: device (offloaded) or software",
            soft,
            **lab,
            path="software",
        )
        drop = float(c.get("dropped") or 0)
        f.counter("task_dropped", "packets the task dropped or failed", drop, **lab)
        f.counter(
            "task_errors",
            "device failures redone in software (packets)",
            float(c.get("errors") or 0),
            **lab,
        )
        if "bytes" in c:
            nbytes = float(c.get("bytes") or 0)
            f.counter("task_bytes", "bytes of packets the task was done for", nbytes, **lab)
        for path, key in (("software", "soft_ns"), ("device", "device_ns")):
            if key in c:
                f.counter(
                    "task_seconds",
                    "time spent in the task, by path (device: the trip to the device)",
                    float(c.get(key) or 0) / 1e9,
                    **lab,
                    path=path,
                )
        for reason, n in (c.get("reasons") or {}).items():
            x = _num(n)
            if x is not None:
                f.counter(
                    "task_reasons",
                    "packets the task gave a reason, by reason (show's 'drops by reason'; "
                    "most drop the packet, a few divert it: handshake, keepalive, staged)",
                    x,
                    **lab,
                    reason=str(reason),
                )
        if dev + soft > 0:
            f.gauge(
                "policy_offloaded_ratio",
                "cumulative share of the task's packets done by a device since start: "
                "device / (device + software)",
                dev / (dev + soft),
                **lab,
            )
    pol = eng.get("policy")
    if isinstance(pol, Mapping):
        name = str(pol.get("policy", pol.get("name", "")))
    else:
        name, pol = str(pol or ""), {}
    f.gauge(
        "policy_info",
        "the engine's offload policy (value 1)",
        1.0,
        direction=direction,
        policy=name,
    )
    split = pol.get("split")
    if isinstance(split, Mapping):
        for task, s in split.items():
            if not isinstance(s, Mapping):
                continue
            k, n = _num(s.get("device")), _num(s.get("of"))
            if k is not None and n:
                f.gauge(
                    "policy_last_split_ratio",
                    "share of the last batch's packets the policy sent to a device, per task "
                    "(policies that report it: adaptive)",
                    k / n,
                    direction=direction,
                    task=str(task),
                )
    _decisions(f, direction, pol.get("decisions"))
    fo = pol.get("failover")
    if isinstance(fo, Mapping):
        _decisions(f, direction, fo.get("decisions"), only_events=True, prefix="failover_")


def _decisions(
    f: _Families, direction: str, dec: object, *, only_events: bool = False, prefix: str = ""
) -> None:
    if not isinstance(dec, Mapping):
        return
    for task, d in dec.items():
        if not isinstance(d, Mapping):
            continue
        for key, v in d.items():
            x = _num(v)
            if x is None:
                continue
            lab = {"direction": direction, "task": str(task)}
            if key in ("device", "software"):
                if not only_events:
                    f.counter(
                        "policy_decisions",
                        "packets the policy sent to a device or kept in software, by path",
                        x,
                        **lab,
                        path=key,
                    )
            else:
                f.counter(
                    "policy_events",
                    "policy events per task (e.g. failover_disabled, failover_recovered)",
                    x,
                    **lab,
                    event=prefix + str(key),
                )


_DEVICE_COUNTERS = {
    "submits": "batches handed to the device",
    "packets": "packets handed to the device",
    "bytes": "bytes handed to the device",
    "errors": "device errors",
}


def _device(f: _Families, dev: str, counters: Mapping[str, Any]) -> None:
    for key, x in _flat(counters):
        if key in _DEVICE_COUNTERS:
            f.counter(f"device_{key}", _DEVICE_COUNTERS[key], x, device=dev)
        elif key.startswith("per_task."):
            f.counter(
                "device_task_packets",
                "packets handed to the device with the task requested",
                x,
                device=dev,
                task=key[len("per_task.") :],
            )
        else:
            f.gauge(
                "device_value",
                "other numbers a device reports (its show --json devices entry, by key)",
                x,
                device=dev,
                key=key,
            )


# ---------------------------------------------------------------------------- CPU
@dataclass(frozen=True)
class CpuSample:
    worker: str
    pid: int
    user: float
    system: float


def cpu_samples(pid: int | None = None) -> list[CpuSample]:
    """CPU seconds of process ``pid`` (default: this one) and its live children."""
    import psutil

    out: list[CpuSample] = []
    try:
        me = psutil.Process(pid if pid is not None else os.getpid())
        procs = [me, *me.children(recursive=True)]
    except psutil.Error:
        return out
    for i, p in enumerate(procs):
        try:
            t = p.cpu_times()
            name = "tunnel" if i == 0 else p.name()
        except psutil.Error:
            continue
        out.append(CpuSample(name, p.pid, float(t.user), float(t.system)))
    return out


# ---------------------------------------------------------------------------- collector
class _HasStatus(Protocol):
    lock: Any

    def status(self) -> dict[str, Any]: ...


class TunnelCollector:
    """A prometheus-client collector reading ``tunnel.status()`` under its lock at
    scrape time."""

    def __init__(
        self,
        tunnel: _HasStatus,
        cpu: Callable[[], list[CpuSample]] = cpu_samples,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.tunnel = tunnel
        self.cpu = cpu
        self.log = log or (lambda _m: None)

    def collect(self) -> Iterator[Metric]:
        ok = GaugeMetricFamily(
            f"{PREFIX}_status_ok", "1 if the tunnel's status could be read at this scrape"
        )
        try:
            with self.tunnel.lock:  # the lock at this moment (start() replaces it)
                doc = self.tunnel.status()
        except Exception as e:  # a scrape must not take the tunnel down
            self.log(f"metrics: status failed: {type(e).__name__}: {e}")
            ok.add_metric([], 0.0)
            yield ok
            return
        ok.add_metric([], 1.0)
        yield ok
        yield from families(doc, self.cpu())


class MetricsServer:
    """prometheus-client's HTTP server for one tunnel, on one address."""

    def __init__(
        self, tunnel: _HasStatus, address: MetricsAddress, log: Callable[[str], None] | None = None
    ) -> None:
        self.address = address
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(TunnelCollector(tunnel, log=log))
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        from prometheus_client.exposition import start_http_server

        a = self.address
        try:
            self._server, self._thread = start_http_server(a.port, a.host, self.registry)
        except OSError as e:
            raise ConfigError(f"metrics {a}: cannot listen: {e.strerror or e}") from None

    @property
    def port(self) -> int:
        return int(self._server.server_port) if self._server is not None else self.address.port

    def close(self) -> None:
        """Stop listening (idempotent)."""
        srv, self._server = self._server, None
        if srv is not None:
            with contextlib.suppress(Exception):
                srv.shutdown()
            with contextlib.suppress(Exception):
                srv.server_close()
        t, self._thread = self._thread, None
        if t is not None:
            t.join(5)


def serve(
    tunnel: _HasStatus, address: MetricsAddress | str, log: Callable[[str], None] | None = None
) -> MetricsServer:
    """Start the exporter for ``tunnel`` on ``address``; ConfigError if it cannot listen."""
    a = parse_address(address) if isinstance(address, str) else address
    s = MetricsServer(tunnel, a, log)
    s.start()
    return s
