"""The OpenVPN service: keeps the OpenVPN server's files and sessions matching the store.

Any API process may change what OpenVPN must enforce (a node gets its address, a
certificate is revoked, a node is removed), and it may run on a host that does not have
the OpenVPN server's files or its management sockets. So the store is the truth and this
service, beside the OpenVPN server, makes OpenVPN match it, level-triggered: each pass
reads the whole desired state and corrects whatever differs, so a missed change, a
restart or two API processes writing at once all come right by the next pass.

One pass:
- reads the connected common names through the management sockets, first (a node the
  store knows only after this read cannot be mistaken for one to disconnect),
- writes the static-address entry (ccd) of every node not removed, removes those of
  removed nodes,
- signs and publishes the CRL when the store's revoked certificates differ from it,
- disconnects every connected node the store has removed,
- records what it saw in the store (openvpn_service), where every API process's metrics
  read it.

`vpnagent-server openvpn` runs it with the OpenVPN server container; `serve --with-openvpn`
runs that command beside the API.

One per database: the address pool, the ccd entries and the CRL are one OpenVPN server's,
and nodes on two OpenVPN hubs would need routing between the hubs, which nothing sets up.
A second service is refused at start (`check_sole_service`) and, should two start at the
same moment, each pass that sees another's fresh report logs it as an error."""
from __future__ import annotations

import datetime as dt
import logging
import re
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from cryptography import x509
from sqlalchemy.exc import SQLAlchemyError

from .config import ServerConfigError
from .ovpn import ccd_dir, render_ccd
from .store import OpenVPNService as ServiceReport
from .store import Store, StoreError
from .vpnserver import Management, OpenVPNFiles

log = logging.getLogger(__name__)

PASS_INTERVAL_S = 1.0  # how soon a change made through any API process reaches OpenVPN
MGMT_TIMEOUT_S = 2.0
# A service's report older than this says nothing about now (a stopped or hung service):
# the metrics then show OpenVPN as down.
STALE_AFTER_S = 15.0
_NODE_CN = re.compile(r"node-\d+")


@dataclass(frozen=True)
class Pass:
    """What one reconcile pass found and changed."""
    openvpn_up: bool
    connected: frozenset[str] | None  # None: the management interface did not answer
    ccd_written: tuple[str, ...] = ()
    ccd_removed: tuple[str, ...] = ()
    crl_published: bool = False
    disconnected: tuple[str, ...] = ()
    others: tuple[str, ...] = ()  # other OpenVPN services reporting on this database ("name on host")

    @property
    def changed(self) -> bool:
        return bool(self.ccd_written or self.ccd_removed or self.crl_published or self.disconnected)


class AnotherOpenVPNService(ServerConfigError):
    """Another OpenVPN service reports on this database: only one may serve it."""


def other_services(store: Store, name: str, host: str) -> list[ServiceReport]:
    """The OpenVPN services other than (`name`, `host`) that reported within STALE_AFTER_S:
    running ones. The same name on the same host is this service, restarted."""
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    return [svc for svc in store.openvpn_services()
            if (svc.name, svc.host) != (name, host) and (now - svc.seen_at).total_seconds() <= STALE_AFTER_S]


def check_sole_service(store: Store, name: str, host: str | None = None) -> None:
    """Refuse to start a second OpenVPN service on one database (see the module docstring)."""
    host = host or socket.gethostname()
    others = other_services(store, name, host)
    if others:
        svc = others[0]
        raise AnotherOpenVPNService(
            f"another OpenVPN service, {svc.name} on {svc.host}, serves the database {store.url} (its last report "
            f"is from {svc.seen_at:%H:%M:%S} UTC): one OpenVPN service per database is supported, because the VPN "
            "addresses, the static-address entries and the CRL are one OpenVPN server's and nodes on two OpenVPN "
            f"servers could not reach each other. Stop that one first (its report goes stale after "
            f"{STALE_AFTER_S:g} s), or give this one a database of its own")


class OpenVPNService:
    """Makes one OpenVPN server (its files in `files`, its management sockets) match the store."""

    def __init__(self, store: Store, files: OpenVPNFiles, name: str = "vpnagent-openvpn",
                 sockets: list[Path] | None = None, host: str | None = None,
                 directory_pass: Callable[[], object] | None = None) -> None:
        """`directory_pass`: first in every pass, makes the store match an outside directory
        (a vantage6 sidecar's removes the nodes vantage6 deleted, sidecar.Sweeper)."""
        self.directory_pass = directory_pass
        self.store = store
        self.files = files
        self.name = name
        self.sockets = sockets if sockets is not None else files.management_sockets
        self.host = host or socket.gethostname()
        self._others: tuple[str, ...] = ()

    def reconcile(self) -> Pass:
        if self.directory_pass is not None:
            self.directory_pass()
        management = Management(self.sockets, timeout=MGMT_TIMEOUT_S)
        try:
            connected: frozenset[str] | None = frozenset(management.connected())
        except (OSError, ValueError, IndexError) as exc:  # not running (yet), refused, hung, garbled
            log.debug("OpenVPN management %s: %s", self.sockets, exc)
            connected = None
        entries = self.store.vpn_entries()  # after the connected list: see the module docstring
        written, removed = self._ccd(entries)
        crl = self._crl()
        gone: list[str] = []
        for cn in sorted((connected or frozenset()) - set(entries)):
            try:
                if management.kill(cn):
                    gone.append(cn)
            except (OSError, ValueError) as exc:
                log.warning("could not disconnect %s, which the store says was removed: %s", cn, exc)
        if gone:
            log.info("disconnected removed node(s) %s", ", ".join(gone))
            connected = connected - set(gone) if connected is not None else None
        # before recording: a service of the same name elsewhere writes the same row
        others = tuple(f"{svc.name} on {svc.host}" for svc in other_services(self.store, self.name, self.host))
        self.store.record_openvpn_service(self.name, self.host, connected is not None,
                                          sorted(connected) if connected is not None else None)
        if others and others != self._others:
            log.error("another OpenVPN service reports on this database (%s): one per database is supported; "
                      "nodes on the other one's OpenVPN server cannot reach the nodes on this one. Stop one of them",
                      ", ".join(others))
        self._others = others
        result = Pass(connected is not None, connected, written, removed, crl, tuple(gone), others)
        if written or removed:
            log.info("static addresses: %d written, %d removed", len(written), len(removed))
        return result

    def _ccd(self, entries: dict[str, str | None]) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Each node's entry in the ccd directory of the process serving its address; none
        for removed or unknown nodes. A node without an address yet keeps what is there: an
        API process on this host may have written it in a transaction not committed yet."""
        settings = self.files.settings
        want: dict[Path, str] = {}
        for cn, ip in entries.items():
            if ip is not None:
                index = settings.process_of(ip)
                want[self.files.dir / ccd_dir(index) / cn] = render_ccd(ip, settings.slices[index])
        removed: list[str] = []
        for index in range(settings.processes):
            directory = self.files.dir / ccd_dir(index)
            if not directory.is_dir():
                continue
            for path in directory.iterdir():
                if not _NODE_CN.fullmatch(path.name):
                    continue
                if path.name not in entries or (entries[path.name] is not None and path not in want):
                    path.unlink(missing_ok=True)
                    removed.append(path.name)
        written: list[str] = []
        for path, text in want.items():
            try:
                if path.read_text() == text:
                    continue
            except FileNotFoundError:
                pass
            self.files.write_ccd(path.name, entries[path.name])
            written.append(path.name)
        return tuple(sorted(written)), tuple(sorted(set(removed)))

    def _crl(self) -> bool:
        """Publish a CRL of the store's revoked certificates when the published one lists others."""
        revoked = self.store.revoked_serials()
        try:
            published = x509.load_pem_x509_crl((self.files.dir / "crl.pem").read_bytes())
            listed = {entry.serial_number for entry in published}
        except (FileNotFoundError, ValueError):
            listed = None
        if listed == {serial for serial, _ in revoked}:
            return False
        self.files.write_crl(revoked)
        return True

    def run(self, stop: threading.Event, interval: float = PASS_INTERVAL_S) -> None:
        """Reconcile every `interval` seconds until `stop` is set. A pass that fails (the
        database is unreachable) is logged; the next one tries again."""
        failing = False
        while not stop.is_set():
            try:
                self.reconcile()
                if failing:
                    log.info("OpenVPN service %s: reconciling again", self.name)
                failing = False
            except (StoreError, SQLAlchemyError, OSError) as exc:
                if not failing:
                    log.warning("OpenVPN service %s: a pass failed (%s); trying again every %g s", self.name, exc,
                                interval)
                failing = True
            stop.wait(interval)
