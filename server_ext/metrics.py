"""The server's Prometheus endpoint (GET /metrics, outside the API prefix): how many nodes
are on the VPN, which certificates are about to lapse, how the address book is used.

Every value is read from the store when scraped, so any API process (several gunicorn
workers, several hosts behind a load balancer) answers the same, and none is stale:
certificates and runs are the store's own rows; whether OpenVPN is up and who is connected
is what the OpenVPN service (server_ext/openvpnservice.py) last recorded there; the
address-request counter is summed in the store over every process. The registry belongs
to the app (`app.extensions`), not to prometheus_client's global one: two apps in one
process (the tests) count apart, and nothing is registered at import time."""
from __future__ import annotations

import datetime as dt
import logging
from typing import Callable, Iterator

from flask import Blueprint, Flask, Response, current_app, request
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from .openvpnservice import STALE_AFTER_S
from .store import Certificate, Node, Run, Store

log = logging.getLogger(__name__)

EXPIRY_WINDOW = dt.timedelta(days=7)  # the renewal margin: a node renews within cert_renew_days (7)
ADDRESSES_ENDPOINT = "vpnagent.addresses"  # GET <prefix>/vpn/algorithm/addresses
ADDRESS_REQUESTS = "vpnagent_server_address_requests"

bp = Blueprint("vpnagent_metrics", __name__)


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)  # the store keeps naive UTC


class StateCollector(Collector):
    """Gauges and counters read from the store at scrape time. OpenVPN being down (or its
    service not reporting) is a value (openvpn_up 0), not a failed scrape: that is exactly
    when an operator needs the rest of the numbers."""

    def __init__(self, store: Store, clock: Callable[[], dt.datetime] = _utcnow) -> None:
        self.store = store
        self.clock = clock

    def describe(self) -> Iterator[Metric]:
        """The metrics' names, without reading the store: the registry asks at init_app,
        when the database may not exist yet."""
        for name, doc in GAUGES.items():
            yield GaugeMetricFamily(name, doc)
        yield CounterMetricFamily(ADDRESS_REQUESTS, ADDRESS_REQUESTS_DOC, labels=["code"])

    def collect(self) -> Iterator[Metric]:
        now = self.clock()
        fresh = [svc for svc in self.store.openvpn_services()
                 if (now - svc.seen_at).total_seconds() <= STALE_AFTER_S and svc.openvpn_up]
        yield _gauge("vpnagent_server_openvpn_up", 1 if fresh else 0)
        if fresh:
            yield _gauge("vpnagent_server_nodes_connected", len({cn for svc in fresh for cn in svc.connected or ()}))
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
        counter = CounterMetricFamily(ADDRESS_REQUESTS, ADDRESS_REQUESTS_DOC, labels=["code"])
        for code, value in sorted({"200": 0, **self.store.counters(ADDRESS_REQUESTS)}.items()):
            counter.add_metric([code], value)  # 200 exported as 0 from the start
        yield counter


ADDRESS_REQUESTS_DOC = "GET /vpn/algorithm/addresses requests, by HTTP status code, summed over every API process."
GAUGES = {
    "vpnagent_server_openvpn_up": f"1 when the OpenVPN service reported within {STALE_AFTER_S:g} s that OpenVPN "
                                  "answers on its management socket.",
    "vpnagent_server_nodes_connected": "Nodes with a live VPN session (OpenVPN's client list, as the OpenVPN "
                                       "service last reported it).",
    "vpnagent_server_certificates_expiring": f"Node certificates, not revoked, that expire within "
                                             f"{EXPIRY_WINDOW.days} days.",
    "vpnagent_server_nodes_registered": "Nodes known to the server and not removed.",
    "vpnagent_server_live_runs": "Runs a node has picked up and not finished (initializing or active).",
    "vpnagent_server_pending_runs": "Runs waiting for their node to pick them up.",
}


def _gauge(name: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, GAUGES[name], value=value)


class ServerMetrics:
    """The app's registry: one collector that reads everything from the store."""

    def __init__(self, store: Store) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(StateCollector(store))

    def render(self) -> bytes:
        return generate_latest(self.registry)


def init_metrics(app: Flask, store: Store) -> ServerMetrics:
    """Serve /metrics on `app` and count address requests, whatever their outcome (the
    counter is fed after the response is made, so a 400 or 401 counts too)."""
    metrics = ServerMetrics(store)
    app.extensions["vpnagent_metrics"] = metrics

    @app.after_request
    def _count_address_requests(response: Response) -> Response:
        if request.endpoint == ADDRESSES_ENDPOINT:
            try:  # in the store, so every API process adds to the same count
                store.count_event(ADDRESS_REQUESTS, str(response.status_code))
            except SQLAlchemyError as exc:  # a count lost is no reason to fail the request
                log.debug("metrics: address request not counted: %s", exc)
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
