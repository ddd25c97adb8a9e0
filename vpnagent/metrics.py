"""The agent's Prometheus endpoint: what an operator graphs and alerts on (live runs, how
long wiring takes, VPN reconnects, tunnel traffic, what reconcile had to repair).

Counters and the histogram are updated where things happen; everything that is a state of
the node (runs, VPN up, tunnel bytes, certificate expiry) is read when scraped, from one
snapshot function, so a scrape never shows a value that was true only some seconds ago.
Each agent has its own CollectorRegistry: two agents in one process (the tests) do not
share numbers, and nothing is registered at import time."""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector

from .config import ConfigError
from .dataplane import TunnelCounters

log = logging.getLogger(__name__)

# Wiring is local work (one nsenter batch, one route) measured at ~5-50 ms; the upper
# buckets catch the slow cases (a full reconcile on the fast path's failure, a busy host).
WIRING_BUCKETS = (0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5)

# Why the VPN came back: the agent recreated the client container (health check failed), or
# OpenVPN re-established its session inside a running client (e.g. the server restarted).
RECONNECT_CLIENT_RESTARTED = "client_restarted"
RECONNECT_OPENVPN_SESSION = "openvpn_session"

# What reconcile corrected (the `kind` label): a closed set, so the label stays small.
FIX_DRIFT = "drift"  # rules missing or changed in a namespace believed in sync
FIX_ORPHAN = "orphan"  # containers or ports of runs a previous agent process left behind
FIX_VPN_CLIENT = "vpn_client"  # the VPN client was replaced and every rule re-applied


class MetricsError(ConfigError):
    """The metrics endpoint could not be served where metrics_listen says; the message says
    what to change (a config error: `vpnagent run` reports it as one and exits)."""


@dataclass(frozen=True)
class AgentSnapshot:
    """The node's state at scrape time."""

    live_runs: int
    vpn_up: bool
    tun: TunnelCounters | None = None
    cert_not_after: float | None = None  # Unix time the VPN certificate expires
    peer_paths: dict[str, int] | None = None  # WireGuard plane: peers per path ("direct", "relay")


class _StateCollector(Collector):
    """Node state read at scrape time; a failing snapshot must not fail the whole scrape."""

    def __init__(self, snapshot: Callable[[], AgentSnapshot]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        try:
            snap = self.snapshot()
        except Exception:  # noqa: BLE001 - the counters are still worth serving
            log.exception("metrics: could not read the node state")
            return
        yield GaugeMetricFamily("vpnagent_agent_live_runs", "Runs wired on this node now (holder up, rules in).",
                                value=snap.live_runs)
        yield GaugeMetricFamily("vpnagent_agent_vpn_up", "1 when the VPN client runs and its tunnel holds the VPN IP.",
                                value=1 if snap.vpn_up else 0)
        if snap.tun is not None:
            # Counters of the current tunnel interface: they restart from 0 when the VPN client is recreated,
            # which Prometheus' rate() treats as a counter reset.
            for direction, value in (("receive", snap.tun.rx_bytes), ("transmit", snap.tun.tx_bytes)):
                yield CounterMetricFamily(f"vpnagent_agent_tun_{direction}_bytes",
                                          f"Bytes {'received on' if direction == 'receive' else 'sent out of'} "
                                          "the tunnel interface in the VPN client's namespace.", value=value)
            for direction, value in (("receive", snap.tun.rx_packets), ("transmit", snap.tun.tx_packets)):
                yield CounterMetricFamily(f"vpnagent_agent_tun_{direction}_packets",
                                          f"Packets {'received on' if direction == 'receive' else 'sent out of'} "
                                          "the tunnel interface.", value=value)
        if snap.peer_paths is not None:
            peers = GaugeMetricFamily("vpnagent_agent_peers", "WireGuard data plane: peers of this node by the way "
                                      "their traffic goes now (direct over wg0, or relay through the OpenVPN hub).",
                                      labels=["path"])
            for path in ("direct", "relay"):
                peers.add_metric([path], snap.peer_paths.get(path, 0))
            yield peers
        if snap.cert_not_after is not None:
            yield GaugeMetricFamily("vpnagent_agent_certificate_expiry_timestamp_seconds",
                                    "Unix time the node's VPN client certificate expires.", value=snap.cert_not_after)


class AgentMetrics:
    """The agent's metrics in a registry of their own."""

    def __init__(self, snapshot: Callable[[], AgentSnapshot]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.wiring = Histogram("vpnagent_agent_wiring_seconds",
                                "Holder running to rules, route and ports in place (the agent's local work per run).",
                                buckets=WIRING_BUCKETS, registry=self.registry)
        self.reconnects = Counter("vpnagent_agent_vpn_reconnects", "Times the VPN came back after being lost.",
                                  ["how"], registry=self.registry)
        self.corrections = Counter("vpnagent_agent_reconcile_corrections",
                                   "Things reconcile found wrong and corrected.", ["kind"], registry=self.registry)
        for how in (RECONNECT_CLIENT_RESTARTED, RECONNECT_OPENVPN_SESSION):
            self.reconnects.labels(how)  # exported as 0 from the start: absent and 0 alert differently
        for kind in (FIX_DRIFT, FIX_ORPHAN, FIX_VPN_CLIENT):
            self.corrections.labels(kind)
        self.registry.register(_StateCollector(snapshot))

    def observe_wiring(self, seconds: float) -> None:
        self.wiring.observe(seconds)

    def count_reconnect(self, how: str, n: int = 1) -> None:
        self.reconnects.labels(how).inc(n)

    def count_correction(self, kind: str) -> None:
        self.corrections.labels(kind).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsServer:
    """A small threaded HTTP server for GET /metrics, bound where metrics_listen says."""

    def __init__(self, render: Callable[[], bytes], host: str, port: int) -> None:
        self.render = render
        self.host, self.port = host, port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def start(self) -> "MetricsServer":
        render = self.render

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                if self.path.split("?", 1)[0] != "/metrics":
                    self.send_error(404, "only /metrics is served here")
                    return
                try:
                    body = render()
                except Exception:  # noqa: BLE001 - answer 500 rather than drop the connection
                    log.exception("metrics: rendering failed")
                    self.send_error(500, "metrics could not be rendered; see the agent's log")
                    return
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE_PLAIN_0_0_4)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args) -> None:
                pass  # a scrape every 15 s would drown the agent's log

        try:
            self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        except OSError as exc:
            raise MetricsError(f"metrics_listen {self.host}:{self.port}: cannot listen ({exc.strerror}); "
                               "another process holds the port or the address is not on this host — "
                               "pick another host:port or remove metrics_listen") from exc
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]  # the real one when 0 was asked for
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
