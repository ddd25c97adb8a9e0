"""The server's Prometheus endpoint (GET /metrics, outside the API prefix): how many nodes
are on the VPN, which certificates are about to lapse, how the address book is used.

State (connected nodes, certificates, runs) is read when scraped — from OpenVPN's
management socket and the store — so it is never stale; only the address-request counter
lives in the process. The registry belongs to the app (`app.extensions`), not to
prometheus_client's global one: two apps in one process (the tests) count apart, and
nothing is registered at import time."""
from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Callable, Iterator

from flask import Blueprint, Flask, Response, current_app, request
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from .store import Certificate, Node, Run, Store
from .vpnserver import Management

log = logging.getLogger(__name__)

EXPIRY_WINDOW = dt.timedelta(days=7)  # the renewal margin: a node renews within cert_renew_days (7)
ADDRESSES_ENDPOINT = "vpnagent.addresses"  # GET <prefix>/vpn/algorithm/addresses
MGMT_TIMEOUT_S = 2.0  # a hung OpenVPN must not hold a scrape for Management's default 5 s

bp = Blueprint("vpnagent_metrics", __name__)


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)  # the store keeps naive UTC


class StateCollector(Collector):
    """Gauges read at scrape time. OpenVPN being down is a value (openvpn_up 0), not a
    failed scrape: that is exactly when an operator needs the rest of the numbers."""

    def __init__(self, store: Store, management_socket: Path | list[Path],
                 clock: Callable[[], dt.datetime] = _utcnow) -> None:
        self.store = store
        self.management_socket = management_socket
        self.clock = clock

    def describe(self) -> Iterator[Metric]:
        """The gauges' names, without reading the store or OpenVPN: the registry asks at
        init_app, when the database may not exist yet."""
        for name, doc in GAUGES.items():
            yield GaugeMetricFamily(name, doc)

    def collect(self) -> Iterator[Metric]:
        try:
            connected = Management(self.management_socket, timeout=MGMT_TIMEOUT_S).connected()
        except (OSError, ValueError, IndexError) as exc:  # no socket, refused, timed out, garbled
            log.debug("metrics: OpenVPN management socket %s: %s", self.management_socket, exc)
            connected = None
        yield _gauge("vpnagent_server_openvpn_up", 0 if connected is None else 1)
        if connected is not None:
            yield _gauge("vpnagent_server_nodes_connected", len(connected))
        now = self.clock()
        with self.store.session() as s:
            expiring = s.scalar(select(func.count(Certificate.id)).where(
                Certificate.revoked_at.is_(None), Certificate.not_after > now,
                Certificate.not_after <= now + EXPIRY_WINDOW)) or 0
            registered = s.scalar(select(func.count(Node.id)).where(Node.removed_at.is_(None))) or 0
            runs = dict(s.execute(select(Run.status, func.count(Run.id))
                                  .where(Run.status.in_(("pending", "initializing", "active")))
                                  .group_by(Run.status)).all())
        yield _gauge("vpnagent_server_certificates_expiring", expiring)
        yield _gauge("vpnagent_server_nodes_registered", registered)
        yield _gauge("vpnagent_server_live_runs", runs.get("initializing", 0) + runs.get("active", 0))
        yield _gauge("vpnagent_server_pending_runs", runs.get("pending", 0))


GAUGES = {
    "vpnagent_server_openvpn_up": "1 when the OpenVPN server answers on its management socket.",
    "vpnagent_server_nodes_connected": "Nodes with a live VPN session (OpenVPN's client list).",
    "vpnagent_server_certificates_expiring": f"Node certificates, not revoked, that expire within "
                                             f"{EXPIRY_WINDOW.days} days.",
    "vpnagent_server_nodes_registered": "Nodes known to the server and not removed.",
    "vpnagent_server_live_runs": "Runs a node has picked up and not finished (initializing or active).",
    "vpnagent_server_pending_runs": "Runs waiting for their node to pick them up.",
}


def _gauge(name: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, GAUGES[name], value=value)


class ServerMetrics:
    """The app's registry: the scrape-time collector and the address-request counter."""

    def __init__(self, store: Store, management_socket: Path | list[Path]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.address_requests = Counter(
            "vpnagent_server_address_requests", "GET /vpn/algorithm/addresses requests, by HTTP status code.",
            ["code"], registry=self.registry)
        self.address_requests.labels("200")  # exported as 0 from the start
        self.registry.register(StateCollector(store, management_socket))

    def render(self) -> bytes:
        return generate_latest(self.registry)


def init_metrics(app: Flask, store: Store, management_socket: Path | list[Path]) -> ServerMetrics:
    """Serve /metrics on `app` and count address requests, whatever their outcome (the
    counter is fed after the response is made, so a 400 or 401 counts too)."""
    metrics = ServerMetrics(store, management_socket)
    app.extensions["vpnagent_metrics"] = metrics

    @app.after_request
    def _count_address_requests(response: Response) -> Response:
        if request.endpoint == ADDRESSES_ENDPOINT:
            metrics.address_requests.labels(str(response.status_code)).inc()
        return response

    app.register_blueprint(bp)
    return metrics


@bp.get("/metrics")
def scrape() -> Response:
    reason = current_app.extensions["vpnagent"].not_ready()
    if reason:  # no tables to count yet
        return Response(f"{reason}\n", status=503, content_type="text/plain; charset=utf-8")
    metrics: ServerMetrics = current_app.extensions["vpnagent_metrics"]
    return Response(metrics.render(), content_type=CONTENT_TYPE_PLAIN_0_0_4)
