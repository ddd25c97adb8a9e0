"""The node agent: keeps a declarative picture of what the node's network must look like
(VPN client, host exception, one entry per live run: `desired_network()`) and hands it to
the one applier (netapply.py) that makes the kernel match it. Run start, run end, a family
change, start-up and a replaced VPN client all end in the same `apply_network()`; the
applier picks the batch. Containers go through the runtime seam (runtime/), the tunnel
through the data-plane seam (dataplane/).

Runs are level-triggered too: the journal on disk (journal.py) says which runs the node
owns, so a new agent process adopts live runs instead of killing them, and reports wait
there until the server has taken them (docs/architecture.md, "Runs survive")."""
from __future__ import annotations

import ipaddress
import json
import logging
import os
import random
import threading
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from . import admission, contract, firewall, runfiles
from . import metrics as m
from .config import NodeConfig
from .dataplane import DataPlane, SessionState, VPNError
from .dataplane.openvpn import OpenVPN
from .dataplane.wireguard import Peer
from .journal import DONE, RUNNING, Journal, RunRecord
from .netapply import ApplyResult, HostRules, NetworkApplier, NodeNetwork, VpnClientNet, remove_host
from .netns import NetnsError
from .ports import PortAllocator, PortError, exposed_ports
from .proxy import NodeProxy, unverified_claims
from .push import UNSUPPORTED, EventStream
from .runtime import Container, EngineError, Mount, Network, NetworkSpec, NotFound, Runtime, WorkloadSpec
from .runtime import connect_engine
from .serverapi import ServerAPI, ServerError
from .tls import make_session

log = logging.getLogger(__name__)

ROLE_HOLDER, ROLE_ALGORITHM, ROLE_VPN = "holder", "algorithm", "vpn-client"
VPN_RETRY_S = 30.0
VERIFY_S = 10.0
CHECK_S = 2.0  # local checks of the VPN client and its certificate
# What a full resync asks the server again: pending runs, each live run's task family, and
# which runs this node holds (the server fails the others). Events ask for one of them.
RESYNC = frozenset({"runs", "peers", "report"})
# An unchanged list of the runs this node holds is sent again this often at most (every new
# event stream sends it at once): an idle node's resync is then one request.
REPORT_AGAIN_S = 600.0
RENEW_RETRY_S = 3600.0  # a failed or pointless renewal is tried again an hour later, not every check
HOLDER_MEMORY, HOLDER_PIDS = 32 * 2**20, 16  # the pause container only sleeps
LOG_TAIL_BYTES = 8 * 1024  # of an algorithm's log, sent with its result
START_OUTAGE_S = 30.0  # a starting run waits this long for a server that refuses connections
SERVER_BACKOFF_MAX_S = 30.0  # the longest wait between asks while the server is away or refuses
# Test switch (the hostile test's negative control): swap in the token of whichever run a
# token names, from any address. Never set it outside that test.
WEAKEN_TOKEN_SWAP = os.environ.get("VPNAGENT_TEST_WEAKEN_TOKEN_SWAP") == "1"
# Crash tests set this to SIGKILL the agent at a known point in the middle of wiring a run.
FAULT_PAUSE_S = float(os.environ.get("VPNAGENT_FAULT_PAUSE_BEFORE_REGISTER", "0"))


class StartError(RuntimeError):
    """The agent cannot start; the message says why and what to do."""


class RunError(RuntimeError):
    """One run could not be started; it is reported failed, the node goes on."""


@dataclass
class PortMap:
    vpn_port: int
    container_port: int
    label: str | None


@dataclass
class LiveRun:
    run_id: int
    task_id: int
    image: str
    holder_id: str
    holder_ip: str
    holder_pid: int
    ports: list[PortMap] = field(default_factory=list)
    container_id: str | None = None
    started: float = field(default_factory=time.time)
    peer_ips: tuple[str, ...] = ()  # task family, from the server (GET /node/peers)
    peer_run_ids: tuple[int, ...] = ()
    destinations: tuple[tuple[str, int], ...] = ()
    wired_ms: float | None = None  # holder running → rules, route and ports in place (local work)
    registered_ms: float | None = None  # the HTTP calls that register the ports at the server
    output_name: str = "output.json"  # where its container contract puts the result
    parent_id: int | None = None  # of its task: a subtask
    lost: str | None = None  # why the run cannot go on (its holder is gone); reported with it
    registered: bool = False  # its ports were registered at the server (from then on they are converged)


class Agent:
    def __init__(self, cfg: NodeConfig, runtime: Runtime | None = None, api: ServerAPI | None = None,
                 dataplane: DataPlane | None = None) -> None:
        self.cfg = cfg
        self.runtime = runtime or connect_engine()
        self.api = api or ServerAPI(cfg.server_url, cfg.api_key, session=make_session(cfg.tls_verify,
                                                                                    cfg.server_fingerprint))
        self.vpn: DataPlane = dataplane or OpenVPN(cfg, self.runtime, self.api)
        cfg.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.ports = PortAllocator(*cfg.port_range, cfg.data_dir / "ports.json")
        self.runs: dict[int, LiveRun] = {}
        self.journal = Journal(cfg.data_dir / "journal")
        self._records: dict[int, RunRecord] = {}  # runs with a journal record, this process's view
        self._admitted: dict[int, bool] = {}  # runs taken and not finished -> is a subtask
        self._tokens: dict[int, tuple[str, float, float]] = {}  # run -> (container token, iat, exp)
        self._report_lock = threading.Lock()
        self.adopted: list[int] = []  # live runs taken over from an earlier agent process
        self.adopted_at: float | None = None  # when start-up had adopted them and applied their rules
        self.server: dict[str, Any] = {"state": "ok", "since": None, "error": None}
        self._server_has_run_report = True
        self._last_report: tuple[list[int], float] | None = None  # (runs, monotonic time) the server took
        self.session: SessionState | None = None  # of the VPN client, from its log (every check)
        self.stopped = False
        self.proxy: NodeProxy | None = None
        self.network: Network | None = None  # the isolated network runs live on
        self.iso_subnet: ipaddress.IPv4Network | None = None
        self.iso_gateway: str | None = None
        self.node: dict[str, Any] = {}
        self.fixes: list[str] = []
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._last_vpn_attempt = 0.0
        self._last_renewal = -RENEW_RETRY_S
        self.net = NetworkApplier()  # the one way to the kernel: it diffs and picks the batch
        self.reconciles = 0  # full reconcile passes done (status: a test or operator can wait for the next one)
        self.vpn_checks = 0  # VPN health/certificate check passes done
        self.metrics = m.AgentMetrics(self.metrics_snapshot)
        self.metrics_server: m.MetricsServer | None = None
        # the server tells the node what concerns it as it happens (push.py); the loop
        # does what events ask for, and a full resync now and then
        self.push = EventStream(self.api, self.on_event) if cfg.push else None
        self._due: set[str] = set(RESYNC)
        self._stopping: dict[int, str] = {}  # runs the server ended while this node runs them -> why
        self._wake = threading.Event()
        self._plane_stale = True  # the data plane of the collaboration is asked at start (sync_peers)

    # ------------------------------------------------------------------ start-up
    def start(self) -> None:
        self._write_status()  # a status left by an earlier process must not claim a VPN
        if self.cfg.metrics_listen:  # first: a taken port fails before anything is created
            self.metrics_server = m.MetricsServer(self.metrics.render, *self.cfg.metrics_listen).start()
            log.info("metrics at %s", self.metrics_server.url)
        if self.cfg.server_url.startswith("http://"):
            log.warning("server_url %s is plain HTTP (allow_insecure_http): the API key and tokens cross "
                        "the network unencrypted; use https:// outside local development", self.cfg.server_url)
        self.node = self.api.node_self()
        log.info("node %s (server id %s, organisation %s)", self.cfg.name, self.node.get("id"),
                 self.node.get("organization_id"))
        self._ensure_network()
        try:
            self.proxy = NodeProxy(self.iso_gateway, self.cfg.proxy_port, self.cfg.server_url,
                                   session=make_session(self.cfg.tls_verify, self.cfg.server_fingerprint),
                                   on_addresses=self.allow_addresses, fresh_token=self.token_for).start()
        except OSError as exc:
            raise StartError(f"the node proxy cannot listen on {self.iso_gateway}:{self.cfg.proxy_port} "
                             f"({exc.strerror or exc}): another process holds it, often an agent of this node "
                             f"still running; find it with `ss -ltnp | grep :{self.cfg.proxy_port}`") from exc
        log.info("node proxy listening on %s", self.proxy.url)
        self._last_vpn_attempt = time.monotonic()
        # a client left running by the previous agent keeps its session: every tunnel stays up
        if self.vpn.adopt(self.network) is None:
            self.vpn.bring_up(self.network)
        self._adopt_runs()
        self.reconcile()
        self.adopted_at = time.time()
        self._quiet(self._tell_server)  # the loop tells it again: a server away now must not stop the start
        self._write_status()

    def _adopt_runs(self) -> None:
        """Compare what the journal says this node owns with the containers that exist:
        a run that was running keeps running and is watched again; what is left of a run
        whose start was interrupted (or whose containers are gone) is removed and the run
        reported failed; reports the server never confirmed are kept for delivery."""
        records = self.journal.load()
        found: dict[int, dict[str, Container]] = defaultdict(dict)
        for c in self.runtime.list({"vpnagent.node": self.cfg.name}):
            role, run = c.labels.get("vpnagent.role"), c.labels.get("vpnagent.run", "")
            if role in (ROLE_HOLDER, ROLE_ALGORITHM) and run.isdigit():
                found[int(run)][role] = c
        for run_id in sorted(set(records) | set(found) | self.ports.runs()):
            rec = records.get(run_id) or RunRecord(run_id, 0, "")
            holder, algo = found[run_id].get(ROLE_HOLDER), found[run_id].get(ROLE_ALGORITHM)
            if rec.phase == RUNNING and holder is not None and holder.running and algo is not None:
                self._adopt(rec, holder, algo)
                continue
            for c in found[run_id].values():
                self.runtime.remove(c.id)
                self._record_fix(f"removed orphan container {c.name}", m.FIX_ORPHAN)
            if self.ports.release(run_id):
                self._quiet(self.api.delete_ports, run_id)
                self._record_fix(f"released the ports of interrupted run {run_id}", m.FIX_ORPHAN)
            runfiles.remove(self._run_dir(run_id))
            if rec.phase != DONE:
                why = ("its containers were gone when the node agent restarted" if rec.phase == RUNNING
                       else "node agent restarted during the run's start")
                rec.phase, rec.report = DONE, {"status": "failed", "log": f"vpnagent: {why}"}
                self.journal.save(rec)
            self._records[run_id] = rec
        if self.runs:  # their rules are rewritten next: with the family they had, not an empty one
            try:
                self._set_families({int(r["run_id"]): r["peers"] for r in self.api.node_peers()})
            except ServerError as exc:
                log.warning("adopted runs: could not fetch their task families yet (%s)", exc)
        self._deliver_reports()

    def _adopt(self, rec: RunRecord, holder: Container, algo: Container) -> None:
        live = LiveRun(rec.run_id, rec.task_id, rec.image, holder.id, holder.networks.get(self.cfg.isolated_network, ""),
                       holder.pid, ports=[PortMap(**p) for p in rec.ports],
                       container_id=algo.id, output_name=rec.output_name, parent_id=rec.parent_id,
                       registered=True)
        with self._lock:
            self.runs[rec.run_id] = live
            self._records[rec.run_id] = rec
            self._admitted[rec.run_id] = rec.parent_id is not None
        self.adopted.append(rec.run_id)
        log.info("run %s: adopted (algorithm container %s, ports %s)", rec.run_id, algo.status,
                 [p.vpn_port for p in live.ports])
        self._spawn(rec.run_id, self._watch, rec.run_id)

    def _ensure_network(self) -> None:
        """The node's isolated (internal) network: algorithm containers have no way out but
        the VPN client and the node proxy."""
        self.network = self.runtime.ensure_network(NetworkSpec(
            self.cfg.isolated_network, self.cfg.bridge_name,
            str(self.cfg.isolated_subnet) if self.cfg.isolated_subnet else None, self.cfg.isolated_mtu,
            # runs on this node meet only through the VPN client (the host chain drops the
            # rest as well: networks made before this option existed are covered)
            allow_direct=firewall.WEAKEN_SAME_NODE, labels={**self.cfg.labels, "vpnagent.node": self.cfg.name}))
        self.iso_subnet = ipaddress.IPv4Network(self.network.subnet)
        self.iso_gateway = self.network.gateway

    # ------------------------------------------------------------------ reconcile
    def desired_rules(self) -> firewall.VpnClientRules | None:
        st = self.vpn.state
        if st is None:
            return None
        with self._lock:
            runs = tuple(self._run_rules(r) for r in sorted(self.runs.values(), key=lambda r: r.run_id))
        peer_if = self.vpn.peer_if
        return firewall.VpnClientRules(st.vpn_ip, st.iso_if, str(self.iso_subnet), runs=runs, mss=st.path.mss,
                                      tun_if=self.vpn.tunnel_if, p2p_if=peer_if,
                                      p2p_mss=self.vpn.peer_mss if peer_if else None)

    def _run_rules(self, r: LiveRun) -> firewall.RunRules:
        local = tuple(self.runs[i].holder_ip for i in r.peer_run_ids if i in self.runs)
        return firewall.RunRules(r.run_id, r.holder_ip,
                                 tuple(firewall.Forward(p.vpn_port, p.container_port) for p in r.ports),
                                 peer_ips=r.peer_ips, local_peers=local, destinations=r.destinations)

    def sync_peers(self) -> None:
        """Follow each run's task family as runs appear and end: one request for all live
        runs; the applier rewrites the chains of runs whose family changed (and of local
        family runs whose hairpin rules follow)."""
        if self.vpn.state is None:
            return
        if not self.runs and not self._plane_stale:  # no family, no peers: the direct links go quiet
            if self.vpn.peer_if is not None:
                self.vpn.set_peers(self.vpn.plane, [])
            return
        # without runs only at start and on the server's word: the plane may have changed
        self._plane_stale = False
        view = self.api.peers_view()
        families = {int(r["run_id"]): r["peers"] for r in view["runs"]}
        with self._lock:
            ended = [r.run_id for r in self.runs.values() if r.run_id not in families and r.container_id is not None]
        for run_id in ended:  # the safety net for a lost stop event
            self.stop_run(run_id, "the server no longer has this run active (its task was killed or the run failed)")
        self._converge_ports(families)
        links_before = self.vpn.peer_if
        self.vpn.set_peers(view.get("data_plane") or "openvpn", direct_peers(families))
        if self._set_families(families) or self.vpn.peer_if != links_before:
            self.apply_network()  # a new or removed tunnel interface: the applier rewrites all

    def _converge_ports(self, families: dict[int, list[dict]]) -> None:
        """Ports are part of a run's actual state at the server: a registered port the
        server no longer lists for a run it still shows active (a restored database, a lost
        request) is registered again."""
        with self._lock:
            runs = [r for r in self.runs.values() if r.registered]
        for live in runs:
            own = next((p for p in families.get(live.run_id, []) if p["run_id"] == live.run_id), None)
            if own is None:
                continue  # the server does not show it active: nothing to register against
            for p in live.ports:
                if p.vpn_port not in own["ports"]:
                    self.api.register_port(live.run_id, p.vpn_port, p.label)
                    self._record_fix(f"re-registered port {p.vpn_port} of run {live.run_id} at the server",
                                     m.FIX_DRIFT)

    def _set_families(self, families: dict[int, list[dict]]) -> list[int]:
        """Store each live run's task family; returns the runs whose family changed."""
        changed = []
        with self._lock:
            for run_id, live in self.runs.items():
                new = family_fields(families.get(run_id, []))
                if new != (live.peer_ips, live.peer_run_ids, live.destinations):
                    live.peer_ips, live.peer_run_ids, live.destinations = new
                    changed.append(run_id)
        return changed

    def allow_addresses(self, addresses: list[dict]) -> None:
        """An algorithm is about to connect to `addresses`: make sure the sending-side rules
        already allow them (a peer's port registered a moment ago is otherwise only seen at
        the next sync, and the first SYN is dropped: a 1 s retransmit)."""
        with self._lock:
            allowed = {d for live in self.runs.values() for d in live.destinations}
        if any((a.get("ip"), int(a.get("port", 0))) not in allowed for a in addresses):
            self.sync_peers()

    def desired_network(self) -> NodeNetwork:
        """The whole node network as it must be now: host exception, VPN client rules and
        every holder's route."""
        host = HostRules(self.cfg.host_chain, self.cfg.bridge_name, str(self.cfg.vpn_subnet),
                         gateway=self.iso_gateway, proxy_port=self.cfg.proxy_port)
        with self._lock:
            rules = self.desired_rules()
            st = self.vpn.state
            if rules is None or st is None:
                return NodeNetwork(host)
            holders = {r.run_id: r.holder_pid for r in self.runs.values()}
        return NodeNetwork(host, VpnClientNet(st.pid, st.iso_ip, rules, holders))

    def apply_network(self, verify: bool = False) -> ApplyResult:
        """Make the kernel match desired_network(). The applier picks the batch (per-run
        when it knows the namespace is in sync, else a full rewrite); what it had to correct
        in a namespace it believed in sync is recorded for `status` once repaired."""
        with self._lock:
            result = self.net.apply(self.desired_network(), verify=verify)
            if result.path == "full":
                self.reconciles += 1
            for failure in result.route_failures:  # its holder is gone: _check_runs ends the run
                log.warning("run %s: cannot set the route in its holder (%s)", failure.run_id, failure.error)
            for fix in result.fixes:
                self._record_fix(fix, m.FIX_DRIFT)
        if result.path == "full":
            # not on the per-run fast path: the file holds every live run (~10 ms at 200);
            # run start and end write it themselves once they are done
            self._write_status()
        return result

    def reconcile(self) -> None:
        """The level-triggered pass: everything re-read and rewritten (idempotent)."""
        self.apply_network(verify=True)

    def _record_fix(self, fix: str, kind: str) -> None:
        """Called once the fix is in place; status and metrics say so at the same moment."""
        log.warning("reconcile: %s", fix)
        self.fixes.append(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {fix}")
        self.metrics.count_correction(kind)
        self._write_status()

    def check_cert(self) -> None:
        """Renew the VPN certificate when it expires within cert_renew_days."""
        expires = self.vpn.cert_expires
        if self.vpn.state is None or expires is None:
            return
        if expires - time.time() > self.cfg.cert_renew_days * 86400:
            return
        if time.monotonic() - self._last_renewal < RENEW_RETRY_S:
            return
        self._last_renewal = time.monotonic()
        log.info("vpn: certificate expires %s, within cert_renew_days (%g); renewing",
                 time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(expires)), self.cfg.cert_renew_days)
        try:
            with self._lock:
                gap = self.vpn.renew_in_place()
        except (VPNError, ServerError, OSError, EngineError) as exc:
            log.error("vpn: certificate renewal failed (%s); trying again in %.0f min", exc, RENEW_RETRY_S / 60)
            return
        log.info("vpn: renewed; new certificate valid until %s; reconnected in %.2f s",
                 time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.vpn.cert_expires or 0)), gap)
        if (self.vpn.cert_expires or 0) - time.time() <= self.cfg.cert_renew_days * 86400:
            log.warning("vpn: the server issues certificates shorter than cert_renew_days (%g days); lower it",
                        self.cfg.cert_renew_days)
        self._write_status()

    def check_vpn(self) -> None:
        """A VPN client that died or was replaced is brought back, then everything is
        re-applied through reconcile (its namespace, and so its rules, are new)."""
        if self.vpn.state is not None and self.vpn.healthy():
            sessions = self.vpn.reconnects()
            if sessions > 0:
                log.info("vpn: the tunnel re-established its session %d time(s)", sessions)
                self.metrics.count_reconnect(m.RECONNECT_OPENVPN_SESSION, sessions)
            try:  # the tunnel interface outlives a lost session: the data plane tells
                self.session = self.vpn.session()
            except EngineError as exc:
                log.debug("vpn: could not read the client's session: %s", exc)
            return
        self.session = None
        if self.vpn.state is None and time.monotonic() - self._last_vpn_attempt < VPN_RETRY_S:
            return  # without a VPN, retry now and then rather than on every check
        self._last_vpn_attempt = time.monotonic()
        why = "VPN client container is gone or lost its tunnel" if self.vpn.state else "no VPN yet"
        log.warning("vpn: %s; reconnecting", why)
        if self.vpn.bring_up(self.network):
            self.apply_network()  # a new namespace: the applier rewrites everything
            self._plane_stale = True  # the direct links are made again in it
            self.want("peers")
            self.metrics.count_reconnect(m.RECONNECT_CLIENT_RESTARTED)
            self._record_fix(f"reconnected the VPN client ({why}) and re-applied the rules of {len(self.runs)} run(s)",
                             m.FIX_VPN_CLIENT)

    # ------------------------------------------------------------------ runs
    def start_run(self, run: dict) -> LiveRun:
        run_id = int(run["id"])
        image = run["image"]
        found = self.runtime.image(image)
        if found is None:
            raise RunError(f"image {image} is not on this node (no registry is used); build or load it first")
        try:
            admission.check(admission.LocalImage(image, found.id, found.digests), self.cfg.allowed_images)
        except admission.ImageRefused as exc:
            raise RunError(str(exc)) from None
        specs = exposed_ports({"ExposedPorts": dict.fromkeys(found.exposed_ports, {}), "Labels": found.labels})
        token = self._patiently(self._fetch_token, run_id)
        container = contract.plan(
            run.get("contract"), contract.RunIdentity(run_id, int(run["task_id"]), run.get("organization_id"),
                                                      run.get("collaboration_id"), image),
            run.get("input"), token, self.proxy.url if self.proxy else "", run.get("databases"), self.cfg.databases)
        family = next((r["peers"] for r in self._patiently(self.api.node_peers, run_id) if r["run_id"] == run_id), [])
        holder = self.start_holder(run_id)
        try:
            live = self.wire_run(run_id, int(run["task_id"]), image, holder, specs, family)
            if FAULT_PAUSE_S:
                time.sleep(FAULT_PAUSE_S)  # fault injection for the crash tests: rules in, ports not yet registered
            self.register_ports(live)
            rec = self._records.get(run_id)
            if rec is not None:  # wired: a crash from here on leaves a run to remove, not to adopt
                rec.holder_id, rec.ports = holder.id, [asdict(p) for p in live.ports]
                self.journal.save(rec)
            live.container_id = self._start_algorithm(live, container).id
            if rec is not None:  # from here on a restarted agent adopts it
                rec.phase, rec.container_id, rec.output_name = RUNNING, live.container_id, live.output_name
                self.journal.save(rec)
        except Exception:
            self._teardown(run_id, holder_id=holder.id)
            raise
        log.info("run %s: started (ports %s, wired in %.1f ms, registered in %.1f ms)", run_id,
                 [(p.vpn_port, p.container_port, p.label) for p in live.ports], live.wired_ms, live.registered_ms)
        self._write_status()
        return live

    def _patiently(self, call: Callable[..., Any], *args: Any) -> Any:
        """A server call of a starting run: asked again while the server does not answer (a
        restart, or the connection cut mid-request), for up to START_OUTAGE_S, rather than
        failing a run the node has taken. Every call a start makes is idempotent (a container
        token, the task family, a port the server registers once), so a request that may
        have reached the server can be repeated; one it answered with an error is not."""
        deadline, pause = time.monotonic() + START_OUTAGE_S, 0.2
        while True:
            try:
                return call(*args)
            except ServerError as exc:
                if exc.status is not None or time.monotonic() + pause > deadline:
                    raise
            time.sleep(pause)
            pause = min(2 * pause, 2.0)

    def _labels(self, role: str, run_id: int) -> dict[str, str]:
        """The node's own labels (config `labels`) on every container, ours last: they cannot
        be overridden, the agent finds its containers by them."""
        return {**self.cfg.labels, "vpnagent.node": self.cfg.name, "vpnagent.role": role, "vpnagent.run": str(run_id)}

    def start_holder(self, run_id: int, command: tuple[str, ...] | None = None) -> Container:
        """The pause container that owns the run's network namespace, so the network is
        ready before any algorithm code runs."""
        return self.runtime.start_holder(WorkloadSpec(
            name=f"vpnagent-{self.cfg.name}-run{run_id}-holder", image=self.cfg.holder_image,
            command=tuple(command or ("sleep", "infinity")), network=self.cfg.isolated_network,
            memory=HOLDER_MEMORY, pids=HOLDER_PIDS, labels=self._labels(ROLE_HOLDER, run_id)))

    def wire_run(self, run_id: int, task_id: int, image: str, holder: Container, specs: list,
                 family: list[dict] | None = None) -> LiveRun:
        """The local work from "holder running" to "reachable over the VPN": ports
        allocated, rules in the VPN client (for the task family known so far; sync_peers
        follows it afterwards), default route in the holder."""
        t0 = time.perf_counter()
        live = LiveRun(run_id, task_id, image, holder.id, holder.networks[self.cfg.isolated_network], holder.pid,
                       parent_id=self._records[run_id].parent_id if run_id in self._records else None)
        live.peer_ips, live.peer_run_ids, live.destinations = family_fields(family or [])
        if self.vpn.state is not None:
            vpn_ports = self.ports.allocate(run_id, len(specs))
            live.ports = [PortMap(vp, s.port, s.label) for vp, s in zip(vpn_ports, specs)]
        with self._lock:
            self.runs[run_id] = live
        result = self.apply_network()
        if any(f.run_id == run_id for f in result.route_failures):
            raise RunError("its holder container is gone: the run has no network")
        live.wired_ms = (time.perf_counter() - t0) * 1e3
        self.metrics.observe_wiring(live.wired_ms / 1e3)
        return live

    def register_ports(self, live: LiveRun) -> None:
        t0 = time.perf_counter()
        for p in live.ports:
            self._patiently(self.api.register_port, live.run_id, p.vpn_port, p.label)
        live.registered_ms = (time.perf_counter() - t0) * 1e3
        live.registered = True

    def _start_algorithm(self, live: LiveRun, plan: contract.ContainerPlan) -> Container:
        run_dir = self._run_dir(live.run_id)
        runfiles.prepare(run_dir, plan.files, tuple(sub for sub, _ in plan.run_mounts if sub))
        live.output_name = plan.output_name
        mounts = [Mount(str(run_dir / sub), inside, read_only=False) for sub, inside in plan.run_mounts]
        mounts += [Mount(host, inside, read_only=ro) for host, (inside, ro) in plan.binds.items()]
        memory, cpus, pids = self.cfg.run_limits()
        return self.runtime.start_in_holder(live.holder_id, WorkloadSpec(
            name=f"vpnagent-{self.cfg.name}-run{live.run_id}", image=live.image, env=plan.env, mounts=tuple(mounts),
            # no raw sockets (the spec's default): an algorithm cannot forge another container's source address
            memory=memory, cpus=cpus, pids=pids, no_new_privileges=True,
            bounded_logs=True,  # kept on the node's disk: bounded, so a run cannot fill it
            labels=self._labels(ROLE_ALGORITHM, live.run_id)))

    def wait_run(self, run_id: int, timeout: float | None = None) -> tuple[str, Any, str]:
        """Block until the algorithm container exits; returns (status, result, log)."""
        live = self.runs[run_id]
        code = self.runtime.wait(live.container_id, timeout=timeout)
        logs = _tail(self.runtime.log_stream(live.container_id), LOG_TAIL_BYTES)
        try:
            result = runfiles.read_output(self._run_dir(run_id) / live.output_name, self.cfg.max_output_bytes)
        except runfiles.OutputRefused as exc:
            log.warning("run %s: %s", run_id, exc)
            return "failed", None, f"{logs}\nvpnagent: {exc}"
        return ("completed" if code == 0 else "failed"), result, logs

    def _run_dir(self, run_id: int) -> Path:
        return self.cfg.data_dir / "runs" / str(run_id)

    def finish_run(self, run_id: int) -> None:
        """Give back everything the run got: rules, routes, ports (here and at the server),
        holder and algorithm container."""
        live = self.runs.get(run_id)
        self._teardown(run_id, holder_id=live.holder_id if live else None)
        log.info("run %s: finished and cleaned up", run_id)

    def _teardown(self, run_id: int, holder_id: str | None) -> None:
        with self._lock:
            live = self.runs.pop(run_id, None)
            self._tokens.pop(run_id, None)
        try:
            if live is not None:
                self.apply_network()
        except (NetnsError, OSError) as exc:
            log.error("run %s: could not update rules: %s", run_id, exc)
        self.ports.release(run_id)
        self._quiet(self.api.delete_ports, run_id)
        # the live run's holder too: a start that failed after wiring passes holder_id=None
        ids = list(dict.fromkeys(i for i in (live.container_id if live else None, live.holder_id if live else None,
                                             holder_id) if i))
        for cid in ids:
            self.runtime.remove(cid)
        runfiles.remove(self._run_dir(run_id))  # the input may be sensitive; the result is read by now
        self._write_status()

    def _handle(self, run: dict) -> None:
        """One new run, start to report. Every state change goes through the journal, so
        neither an agent restart nor a server outage loses it."""
        run_id = int(run["id"])
        rec = RunRecord(run_id, int(run["task_id"]), run["image"], run.get("parent_id"))
        with self._lock:
            self._records[run_id] = rec
        self._report(rec, {"status": "initializing"})
        try:
            self.start_run(run)
            with self._lock:
                reason = self._stopping.get(run_id)
            if reason is not None:  # stopped while it was starting
                self.stop_run(run_id, reason)
        except (RunError, PortError, ServerError, EngineError, NetnsError, ValueError) as exc:
            log.error("run %s: failed to start: %s", run_id, exc)
            self._teardown(run_id, holder_id=None)
            rec.phase = DONE
            self._report(rec, {"status": "failed", "log": f"vpnagent: {exc}"})
            return
        self._report(rec, {"status": "active"})
        self._watch(run_id)

    def _watch(self, run_id: int) -> None:
        """Wait for a run's algorithm (started by this process or adopted), then journal its
        result before anything is removed, give everything back and report it."""
        rec = self._records[run_id]
        try:
            status, result, logs = self.wait_run(run_id)
        except (EngineError, OSError) as exc:  # the container was removed under us
            status, result, logs = "failed", None, f"vpnagent: lost the run's container: {exc}"
        live = self.runs.get(run_id)
        if live is not None and not live.lost and not self._holder_running(live):
            live.lost = "the run's holder container stopped or was removed: its network is gone"
        if live is not None and live.lost:
            status, logs = "failed", f"{logs}\nvpnagent: {live.lost}"
        rec.phase, rec.report = DONE, {"status": status, "result": result, "log": logs}
        self.journal.save(rec)
        self.finish_run(run_id)
        self._deliver(rec)
        log.info("run %s: %s", run_id, status)

    def _holder_running(self, live: LiveRun) -> bool:
        holder = self.runtime.inspect(live.holder_id)
        return holder is not None and holder.running

    def _spawn(self, run_id: int, target: Any, *args: Any) -> None:
        def body() -> None:
            try:
                target(*args)
            except Exception:  # noqa: BLE001 - a run's failure must not pass silently
                log.exception("run %s: unexpected error", run_id)
            finally:
                with self._lock:
                    self._admitted.pop(run_id, None)
                    self._stopping.pop(run_id, None)
                self.want("runs")  # a slot is free: a run left pending for want of one can go
        t = threading.Thread(target=body, name=f"run-{run_id}", daemon=True)
        self._threads.append(t)
        t.start()

    # ------------------------------------------------------------------ reports
    def _report(self, rec: RunRecord, report: dict[str, Any]) -> None:
        """Journal the run's newest state, then try to tell the server (retried later)."""
        with self._report_lock:
            rec.report = report
            self.journal.save(rec)
        self._deliver(rec)

    def _deliver(self, rec: RunRecord) -> bool:
        """At least once: the server takes a repeated final report as a no-op, and a 409
        means it already holds a final state, so the report is done either way."""
        with self._report_lock:
            report = rec.report
            if report is None:
                return True
            try:
                self.api.update_run(rec.run_id, report["status"], report.get("result"), report.get("log"))
            except ServerError as exc:
                if exc.status not in (403, 404, 409):
                    log.warning("run %s: report %r kept for later delivery (%s)", rec.run_id, report["status"], exc)
                    return False
                log.warning("run %s: report %r not taken (%s); dropped", rec.run_id, report["status"], exc)
            if rec.report is report:
                rec.report, rec.reported = None, report["status"]
            if rec.phase == DONE:
                self.journal.remove(rec.run_id)
                with self._lock:
                    self._records.pop(rec.run_id, None)
            else:
                self.journal.save(rec)
            return True

    def _deliver_reports(self) -> None:
        """Reports no run thread will send: those of runs whose thread ended (its own try
        failed) or that no thread handles (found at start-up). A run still in a thread's
        hands may be giving its containers back right now; the thread reports it after."""
        with self._lock:
            waiting = [r for r in self._records.values() if r.report is not None and r.run_id not in self._admitted]
        for rec in waiting:
            if not self._deliver(rec):
                return  # the server is away: the next pass tries again

    def _tell_server(self) -> None:
        """The runs this node still has (live, starting, or with a report to deliver): the
        server marks its other active runs of this node failed, so none stays active forever.
        Called from the loop thread, which is the only one that admits runs: a run taken
        after this list was made is taken after the server has read it."""
        with self._lock:
            ids = sorted(set(self.runs) | set(self._records) | set(self._admitted))
        if not self._server_has_run_report:
            return
        last = self._last_report
        if last is not None and last[0] == ids and time.monotonic() - last[1] < REPORT_AGAIN_S:
            return  # nothing changed on this side since the server took the list
        try:
            failed = self.api.report_runs(ids)
        except ServerError as exc:
            if exc.status not in (404, 405):
                raise
            log.warning("the server does not take POST /node/runs (an older version): it cannot learn which runs "
                        "this node lost; upgrade it")
            self._server_has_run_report = False
            return
        self._last_report = (ids, time.monotonic())
        if failed:
            log.warning("server marked run(s) %s failed: this node no longer has them", failed)

    # ------------------------------------------------------------------ tokens
    def _fetch_token(self, run_id: int) -> str:
        token = self.api.container_token(run_id)
        with self._lock:
            self._tokens[run_id] = (token, *token_times(token))
        return token

    def token_for(self, source_ip: str, run_id: int) -> str | None:
        """For the node proxy: run `run_id`'s current token, when the call comes from that
        run's holder address (algorithms cannot forge it: no NET_RAW), so a run outlives its
        first token without the container holding a longer-lived one."""
        with self._lock:
            live = self.runs.get(run_id)
            if live is None or run_id not in self._tokens:
                return None
            if live.holder_ip != source_ip and not WEAKEN_TOKEN_SWAP:
                return None
            return self._tokens[run_id][0]

    def _renew_tokens(self) -> None:
        """Each live run's token is renewed once half its lifetime is gone."""
        now = time.time()
        with self._lock:
            due = [r for r in self.runs if r not in self._tokens
                   or now > (self._tokens[r][1] + self._tokens[r][2]) / 2]
        for run_id in due:
            try:
                self._fetch_token(run_id)
            except ServerError as exc:
                log.warning("run %s: container token not renewed (%s); trying again", run_id, exc)

    # ------------------------------------------------------------------ actual state of runs
    def _check_runs(self) -> None:
        """Runs compared with their containers: a run whose holder stopped has lost its
        network, so its algorithm is stopped and the run reported failed; a labelled
        container no run owns is removed."""
        with self._lock:
            owned = set(self.runs) | set(self._admitted)
            live = list(self.runs.values())
        containers = self.runtime.list({"vpnagent.node": self.cfg.name})
        by_id = {c.id: c for c in containers}
        for run in live:
            holder = by_id.get(run.holder_id)
            if holder is not None and holder.running:
                continue
            run.lost = "the run's holder container stopped or was removed: its network is gone"
            algo = by_id.get(run.container_id or "")
            if algo is not None and algo.running and _gone_or(lambda: self.runtime.kill(algo.id)):
                self._record_fix(f"stopped run {run.run_id}: {run.lost}", m.FIX_ORPHAN)
        for c in containers:
            run = c.labels.get("vpnagent.run", "")
            if c.labels.get("vpnagent.role") in (ROLE_HOLDER, ROLE_ALGORITHM) and run.isdigit() \
                    and int(run) not in owned and self.runtime.remove(c.id):
                self._record_fix(f"removed orphan container {c.name}", m.FIX_ORPHAN)

    # ------------------------------------------------------------------ loop
    def want(self, *what: str) -> None:
        """Have the loop ask the server for `what` (RESYNC's parts, or "vpn": check the
        VPN client) now instead of at the next resync."""
        with self._lock:
            self._due.update(what)
        self._wake.set()

    def on_event(self, kind: str, data: dict[str, Any]) -> None:
        """An event from the server's stream (server_ext/events.py lists them)."""
        if kind == "hello":  # a new connection: what happened while there was none is resynced
            self._last_report = None  # the server may have been restored meanwhile: tell it again
            self._plane_stale = True
            self.want(*RESYNC)
        elif kind == "run":
            self.want("runs")
        elif kind == "peers":  # a family changed, or the collaboration's data plane
            self._plane_stale = True
            self.want("peers")
        elif kind == "stop" and isinstance(data.get("run_id"), int):
            self.stop_run(data["run_id"], "the server stopped the run (its task was killed)")
        elif kind == "cert":
            self.want("vpn")
        elif kind == "revoked":
            self._server_failed(ServerError(401, "the server removed this node or replaced its API key: its "
                                                 "tokens stop working; put a new key into api_key (or join "
                                                 "again) and restart the agent"), True)
            self.want("runs")
        else:
            log.debug("push: event %r ignored (a newer server?)", kind)

    def stop_run(self, run_id: int, reason: str) -> None:
        """The server ended a run this node runs: stop its algorithm. The run's thread then
        gives everything back and reports it as usual (the server keeps the state it set).
        A run still starting is stopped as soon as its container exists (_handle)."""
        with self._lock:
            if run_id not in self.runs and run_id not in self._admitted:
                return
            self._stopping[run_id] = reason
            live = self.runs.get(run_id)
            if live is not None:
                live.lost = reason
            container = live.container_id if live is not None else None
        if container is not None and _gone_or(lambda: self.runtime.kill(container)):
            log.info("run %s: stopped: %s", run_id, reason)

    def _polling(self) -> bool:
        """No event stream to wait on: ask every poll_interval instead."""
        return self.push is None or self.push.state == UNSUPPORTED

    def _admit(self) -> None:
        """Take pending runs up to the limits. Subtasks have their own limit and go first:
        their parents hold run slots while they wait for them, so if subtasks queued behind
        other parents, a node full of parents would wait for ever."""
        pending = sorted(self.api.pending_runs(), key=lambda r: r.get("parent_id") is None)
        for run in pending:
            rid, sub = int(run["id"]), run.get("parent_id") is not None
            with self._lock:
                if rid in self._admitted or rid in self._records:
                    continue
                same_kind = sum(1 for s in self._admitted.values() if s == sub)
                if same_kind >= (self.cfg.subtask_limit if sub else self.cfg.max_concurrent_runs):
                    continue  # it stays pending at the server until a slot frees
                self._admitted[rid] = sub
            self._spawn(rid, self._handle, run)

    def serve_forever(self) -> None:
        """Take work, keep the VPN healthy and converge runs until stop() is called. The
        server's events wake the loop for what they concern; a full resync runs every
        resync_interval (every poll_interval without an event stream). While the server is
        away or refuses this node, ask it less and less often (up to 30 s)."""
        if self.push is not None:
            self.push.start()
        last_check = last_verify = time.monotonic()
        next_resync = 0.0
        failures = 0
        while not self._stop.is_set():
            now = time.monotonic()
            polling = self._polling()
            if polling or now >= next_resync:
                self.want(*RESYNC)
                next_resync = now + self.cfg.resync_interval * random.uniform(1.0, 1.1)
            self._wake.clear()
            with self._lock:
                due, self._due = self._due, set()
            wait = self.cfg.poll_interval if polling else max(0.0, min(CHECK_S, next_resync - now))
            try:
                if "runs" in due:
                    self._admit()
                self._threads = [t for t in self._threads if t.is_alive()]
                if "peers" in due:
                    self.sync_peers()
                if "vpn" in due or now - last_check > CHECK_S:
                    last_check = now
                    self.check_vpn()
                    if not self.vpn.refresh_peers():
                        self.want("peers")
                    self.check_cert()
                    self.vpn_checks += 1
                    self._write_status()  # also a heartbeat: `status` can tell a stale file
                if now - last_verify > VERIFY_S:
                    last_verify = now
                    self._check_runs()  # first: a run whose holder is gone has no namespace to reconcile
                    self.reconcile()  # level-triggered: repair whatever drifted meanwhile
                if "report" in due:
                    self._tell_server()
                self._renew_tokens()
                self._deliver_reports()
                if failures:
                    log.info("server: answering again after %d failed attempt(s)", failures)
                    failures = 0
                self._server_ok()
            except ServerError as exc:
                with self._lock:
                    self._due |= due  # asked again after the backoff
                failures += 1
                self._server_failed(exc, failures == 1)
                wait = min(SERVER_BACKOFF_MAX_S, self.cfg.poll_interval * 2 ** min(failures, 8)) * random.uniform(0.8, 1.2)
            except Exception:  # noqa: BLE001 - the loop must outlive any single failure
                log.exception("agent loop error")
            self._wake.wait(wait)

    def _server_ok(self) -> None:
        if self.server["state"] != "ok":
            self.server = {"state": "ok", "since": time.time(), "error": None}
            self._write_status()

    def _server_failed(self, exc: ServerError, first: bool) -> None:
        state = "refused" if exc.status in (401, 403) else "unreachable"
        if first or self.server["state"] != state:
            log.warning("server %s: %s; asking again with backoff (up to %.0f s)", state, exc, SERVER_BACKOFF_MAX_S)
        if self.server["state"] != state:
            self.server = {"state": state, "since": time.time(), "error": str(exc)[:300]}
            self._write_status()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self.push is not None:
            self.push.stop()

    def leave(self) -> None:
        """The agent exits; its runs, VPN client and rules stay for the next agent to adopt
        (as a kubelet restart leaves pods running). `vpnagent cleanup` removes them."""
        self.stop()
        if self.proxy:
            self.proxy.stop()
        if self.metrics_server:
            self.metrics_server.stop()
        self.stopped = True
        self._write_status()
        log.info("node %s: agent stopped; %d run(s) and the VPN client left running for the next agent",
                 self.cfg.name, len(self.runs))

    def shutdown(self) -> None:
        """Stop everything this node made: runs, VPN client, rules, network, proxy."""
        self.stop()
        for run_id in list(self.runs):
            self._teardown(run_id, holder_id=self.runs[run_id].holder_id)
            self._quiet(self.api.update_run, run_id, "failed", None, "node agent stopped")
            self.journal.remove(run_id)
        cleanup(self.cfg, self.runtime)
        self.vpn.state = None
        self._write_status()
        if self.proxy:
            self.proxy.stop()
        if self.metrics_server:
            self.metrics_server.stop()
        log.info("node %s stopped and cleaned up", self.cfg.name)

    # ------------------------------------------------------------------ status
    def status(self) -> dict:
        st, session = self.vpn.state, self.session
        # connected means packets can pass: a client whose session is lost, or a node the
        # server refuses (removed: its session was cut), is not, whatever the tunnel interface says
        connected = (st is not None and (session is None or session.state != "reconnecting")
                     and self.server["state"] != "refused")
        return {
            "node": self.cfg.name,
            "written_at": time.time(), "pid": os.getpid(),
            "reconciles": self.reconciles, "vpn_checks": self.vpn_checks,
            "last_apply": _apply_summary(self.net.last),
            "vpn": {"connected": connected, "session": asdict(session) if session and st else None, "vpn_ip": st.vpn_ip if st else None,
                    "tunnel_mtu": st.path.mtu if st else None, "tunnel_mtu_source": st.path.source if st else None,
                    "tunnel_mtu_detail": st.path.detail if st else None,
                    "since": st.since if st else None, "error": self.vpn.last_error,
                    "cert_expires": self.vpn.cert_expires, "renewals": self.vpn.renewals},
            "runs": [{k: v for k, v in asdict(r).items() if k not in ("lost", "registered")} for r in self.runs.values()],
            "adopted": self.adopted, "adopted_at": self.adopted_at,
            "server": self.server, "stopped": self.stopped,
            "push": self.push.summary() if self.push is not None else {"state": "off"},
            "data_plane": self.vpn.peer_summary(),
            "reports_waiting": sorted(r.run_id for r in list(self._records.values()) if r.report is not None),
            "fixes": self.fixes[-50:],
        }

    def metrics_snapshot(self) -> m.AgentSnapshot:
        """The node's state for a scrape: read now, from the kernel and the files on disk."""
        tun = self.vpn.counters()
        plane = self.vpn.peer_summary()
        paths = dict(Counter(p["path"] for p in plane.get("peers") or [])) if plane.get("interface") else None
        return m.AgentSnapshot(live_runs=len(self.runs), vpn_up=tun is not None, tun=tun,
                               cert_not_after=self.vpn.cert_expires, peer_paths=paths)

    def _write_status(self) -> None:
        path = self.cfg.data_dir / "status.json"
        with self._lock:  # run threads and the loop write it; one at a time through one tmp file
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.status(), indent=2))
            os.replace(tmp, path)

    @staticmethod
    def _quiet(fn, *args) -> Any:
        try:
            return fn(*args)
        except ServerError as exc:
            log.warning("server: %s", exc)
            return None


def _apply_summary(result: ApplyResult | None) -> dict[str, Any] | None:
    """How the network was last applied (for `status`: which path, why, how long)."""
    if result is None:
        return None
    return {"path": result.path, "reason": result.reason, "ms": round(result.seconds * 1e3, 2),
            "batch_lines": result.batch_lines, "route_failures": [f.run_id for f in result.route_failures]}


def family_fields(peers: list[dict]) -> tuple[tuple[str, ...], tuple[int, ...], tuple[tuple[str, int], ...]]:
    """Peer VPN IPs, peer run ids and reachable (ip, port) pairs of a run's task family."""
    return (tuple(sorted({p["ip"] for p in peers})),
            tuple(sorted(int(p["run_id"]) for p in peers)),
            tuple(sorted({(p["ip"], int(port)) for p in peers for port in p["ports"]})))


def direct_peers(families: dict[int, list[dict]]) -> list[Peer]:
    """The nodes of all task families that have a WireGuard key at the server, once each
    (the server leaves `wireguard` null on the hub-only plane and for this node itself)."""
    found: dict[str, Peer] = {}
    for peers in families.values():
        for p in peers:
            wg = p.get("wireguard")
            if isinstance(wg, dict) and wg.get("public_key") and p.get("ip"):
                found[wg["public_key"]] = Peer(int(p["node_id"]), p["ip"], wg["public_key"],
                                               tuple(str(e) for e in wg.get("endpoints") or ())[:8])
    return list(found.values())


def cleanup(cfg: NodeConfig, runtime: Runtime) -> list[str]:
    """Remove everything a node made, whether or not its agent is alive: containers by label,
    the host exception, the isolated network and the port records on disk."""
    removed = []
    for c in runtime.list({"vpnagent.node": cfg.name}):
        try:
            if c.labels.get("vpnagent.role") == ROLE_VPN and c.running:
                runtime.stop(c.id, timeout=3)  # the VPN client tells the server it is leaving
        except NotFound:
            pass
        if runtime.remove(c.id):
            removed.append(f"container {c.name}")
    if remove_host(HostRules(cfg.host_chain, cfg.bridge_name, str(cfg.vpn_subnet))):
        removed.append(f"host chain {cfg.host_chain}")
    if runtime.remove_network(cfg.isolated_network):
        removed.append(f"network {cfg.isolated_network}")
    ports = cfg.data_dir / "ports.json"
    if ports.exists():
        ports.unlink()
        removed.append("port records")
    status = cfg.data_dir / "status.json"  # it would still claim the VPN client just removed
    if status.exists():
        status.unlink()
        removed.append("status file")
    return removed


def _gone_or(action: Callable[[], Any]) -> bool:
    """Run a container action; False when the container went away (or stopped) meanwhile:
    a run's own teardown races the periodic check, and that is not an error."""
    try:
        action()
        return True
    except EngineError as exc:
        log.debug("container action skipped: %s", exc)
        return False


def token_times(token: str) -> tuple[float, float]:
    """(iat, exp) of a JWT, read without checking its signature (the node does not hold the
    server's key; it only needs to know when to ask for a fresh one)."""
    claims = unverified_claims(token) or {}
    try:
        return float(claims["iat"]), float(claims["exp"])
    except (KeyError, TypeError, ValueError):
        now = time.time()
        return now, now + 3600.0  # unknown: renewed half an hour on


def _tail(chunks: Iterable[bytes], limit: int) -> str:
    """The last `limit` bytes of a streamed log, decoded: a run that prints gigabytes cannot
    fill the agent's memory or its result report."""
    kept, total = b"", 0
    for chunk in chunks:
        total += len(chunk)
        kept = (kept + chunk)[-limit:]
    text = kept.decode(errors="replace")
    return text if total <= limit else f"[... {total - limit} bytes cut ...]\n{text}"
