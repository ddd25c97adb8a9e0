"""A whole vpnagent network on one machine: the server (Flask + its OpenVPN server
container) and N node agents, each a real process with its own isolated Docker network.
The demo and the integration tests both drive it, so what the tests check is what the
demo shows.

With api_processes > 1 the server is scaled out as docs/operator-guide.md ("Scaling out")
describes: the OpenVPN service (`vpnagent-server openvpn`) and N API servers (`serve`),
each with a data directory of its own holding copies of the CA and the token secret, all on
one database (database_url: PostgreSQL); node i talks to API server i mod N."""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import docker
import docker.errors
import requests
import yaml

from vpnagent.serverapi import ServerAPI
from vpnagent.tls import make_session

Progress = Callable[[str], None]


class ClusterError(RuntimeError):
    """The local network did not come up; the message says which part and where its log is."""


def free_port() -> int:
    """A loopback port free now and outside the kernel's ephemeral range: the agents bind
    theirs again at every restart, and a port from that range can meanwhile become the
    local end of any outgoing connection (seen: an agent that could not bind its metrics
    port after a restart)."""
    low, _ = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    for _ in range(200):
        port = random.randint(max(1024, low - 12000), low - 1)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise ClusterError(f"no free loopback port below the ephemeral range ({low})")


@dataclass
class NodeHandle:
    name: str
    organization_id: int
    node_id: int
    api_key: str
    config_path: Path
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen | None = None
    metrics_port: int | None = None  # the agent's metrics_listen port on loopback

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def status(self) -> dict | None:
        try:
            return json.loads((self.data_dir / "status.json").read_text())
        except (OSError, ValueError):
            return None


@dataclass
class LocalCluster:
    workdir: Path
    prefix: str = "vademo"
    n_nodes: int = 3
    vpn_subnet: str = "10.76.0.0/16"
    progress: Progress = print
    api_port: int = 0
    ports_per_node: int = 100
    server_extra: dict = field(default_factory=dict)  # more server.yaml keys (e.g. openvpn_profile)
    node_extra: dict = field(default_factory=dict)  # more node.yaml keys (e.g. isolated_mtu)
    server_proc: subprocess.Popen | None = None
    nodes: list[NodeHandle] = field(default_factory=list)
    extra_nodes: list[NodeHandle] = field(default_factory=list)  # add_node(): outside the collaboration
    collaboration_id: int = 0
    user_api_key: str = ""
    one_port: bool = False  # API and OpenVPN (TCP) share port 443 of the OpenVPN container
    wan_mtu: int | None = None  # MTU of the network between the nodes' VPN clients and the server
    database_url: str = ""  # the store; "" for SQLite in the server's data directory
    api_processes: int = 1  # > 1: that many API servers and a separate OpenVPN service (module docstring)
    api_ports: list[int] = field(default_factory=list)
    api_procs: list[subprocess.Popen] = field(default_factory=list)
    openvpn_proc: subprocess.Popen | None = None
    _openvpn_ip: str = ""

    @property
    def store_url(self) -> str:
        return self.database_url or f"sqlite:///{self.workdir / 'server' / 'store.db'}"

    @property
    def api_urls(self) -> list[str]:
        """Every API server's URL (one unless api_processes > 1); server_url is the first."""
        if self.api_processes == 1:
            return [self.server_url]
        return [f"https://127.0.0.1:{port}/api" for port in self.api_ports]

    @property
    def metrics_url(self) -> str:
        """The server's Prometheus endpoint: /metrics at the root, beside the API prefix."""
        return self.server_url.rsplit("/api", 1)[0] + "/metrics"

    @property
    def wan_network(self) -> str:
        return f"{self.prefix}-wan"

    @property
    def openvpn_container(self) -> str:
        return f"{self.prefix}-openvpn"

    @property
    def server_url(self) -> str:
        if self.one_port:
            return f"https://{self.openvpn_ip()}:443/api"
        return f"https://127.0.0.1:{self.api_ports[0] if self.api_ports else self.api_port}/api"

    def openvpn_ip(self) -> str:
        """The OpenVPN container's address on the wan network ("" before it runs)."""
        if not self._openvpn_ip:
            try:
                c = docker.from_env().containers.get(self.openvpn_container)
                self._openvpn_ip = c.attrs["NetworkSettings"]["Networks"][self.wan_network]["IPAddress"]
            except (docker.errors.NotFound, KeyError):
                return ""
        return self._openvpn_ip

    @property
    def ca_file(self) -> Path:
        """The server's CA (made when the server first starts); it signs the API's certificate."""
        return self.workdir / "server" / "pki" / "ca.crt"

    @property
    def tls_verify(self) -> str:
        """What a client of this cluster passes to requests as verify=."""
        return str(self.ca_file)

    def user_session(self) -> requests.Session:
        """An HTTPS session logged in as the cluster's researcher."""
        s = make_session(self.tls_verify)
        tok = s.post(f"{self.server_url}/token/user", json={"api_key": self.user_api_key}, timeout=10)
        tok.raise_for_status()
        s.headers["Authorization"] = f"Bearer {tok.json()['access_token']}"
        return s

    def node_api(self, node: "NodeHandle") -> ServerAPI:
        """The server API as `node` sees it (its key, the cluster's CA)."""
        return ServerAPI(self.server_url, node.api_key, session=make_session(self.tls_verify))

    # ------------------------------------------------------------------ up
    def up(self, start: list[int] | None = None) -> "LocalCluster":
        """Bring everything up; `start` picks which nodes' agents run (default: all)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "logs").mkdir(exist_ok=True)
        client = docker.from_env()
        try:
            client.networks.get(self.wan_network)
        except docker.errors.NotFound:
            # Internal: the nodes reach the OpenVPN server here and nothing else.
            client.networks.create(self.wan_network, driver="bridge", internal=True,
                                   labels={"vpnagent.demo": self.prefix},
                                   options={"com.docker.network.driver.mtu": str(self.wan_mtu)} if self.wan_mtu else {})
        self.progress(f"network {self.wan_network} ready")
        self._seed()
        self._start_server()
        if self.one_port:  # the nodes' server_url is the OpenVPN container's 443, known only now
            for node in self.nodes:
                cfg = yaml.safe_load(node.config_path.read_text())
                node.config_path.write_text(yaml.safe_dump({**cfg, "server_url": self.server_url}))
        started = [n for i, n in enumerate(self.nodes) if start is None or i in start]
        for node in started:
            self.start_node(node)
        self.wait_connected(nodes=started)
        return self

    def _seed(self) -> None:
        from server_ext.store import Store

        if self.api_processes > 1 and (self.one_port or not self.database_url.startswith("postgresql")):
            raise ClusterError("api_processes > 1 needs database_url (PostgreSQL) and no one_port")
        self.api_port = self.api_port or free_port()
        if self.api_processes > 1:
            self.api_ports = [self.api_port] + [free_port() for _ in range(self.api_processes - 1)]
        server_dir = self.workdir / "server"
        server_dir.mkdir(exist_ok=True)
        store = Store(self.store_url)
        orgs = [store.create_organization(f"org-{i + 1}") for i in range(self.n_nodes)]
        collab = store.create_collaboration(f"{self.prefix}-collab", [o.id for o in orgs])
        self.collaboration_id = collab.id
        _, self.user_api_key = store.create_user(orgs[0].id, "researcher")
        self.nodes = []
        for i, org in enumerate(orgs):
            name = f"{self.prefix}{i + 1}"
            node, key = store.create_node(org.id, collab.id, name)
            self.nodes.append(self._write_node_config(name, org.id, node.id, key, port_base=6000 + self.ports_per_node * i,
                                                      server_url=self.api_urls[i % len(self.api_urls)]))
        store.close()
        self.progress(f"store seeded: {self.n_nodes} organisations, 1 collaboration, {self.n_nodes} nodes")

    def add_node(self, name: str, **overrides) -> NodeHandle:
        """One more node, in an organisation and collaboration of its own (not started)."""
        from server_ext.store import Store

        store = Store(self.store_url)
        try:
            org = store.create_organization(f"org-{name}")
            collab = store.create_collaboration(f"collab-{name}", [org.id])
            node, key = store.create_node(org.id, collab.id, name)
        finally:
            store.close()
        node_handle = self._write_node_config(name, org.id, node.id, key,
                                              port_base=20000 + self.ports_per_node * len(self.extra_nodes), overrides=overrides)
        self.extra_nodes.append(node_handle)
        return node_handle

    def _write_node_config(self, name: str, org_id: int, node_id: int, key: str, port_base: int,
                           overrides: dict | None = None, server_url: str | None = None) -> NodeHandle:
        data_dir = self.workdir / "nodes" / name
        data_dir.mkdir(parents=True, exist_ok=True)
        metrics_port = free_port()
        cfg = {
            "name": name, "server_url": server_url or self.server_url, "api_key": key, "data_dir": str(data_dir),
            "vpn_subnet": self.vpn_subnet, "vpn_client_network": self.wan_network,
            "port_range": [port_base, port_base + self.ports_per_node - 1], "poll_interval": 0.25,
            # the nodes act on the server's events at once; what bypasses them (rows changed
            # behind the API's back, tests of drift) is repaired at the resync
            "resync_interval": 15,
            "metrics_listen": f"127.0.0.1:{metrics_port}",
            "server_ca_file": str(self.ca_file),
            **self.node_extra, **(overrides or {}),
        }
        cfg_path = self.workdir / "nodes" / f"{name}.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg))
        os.chmod(cfg_path, 0o600)
        return NodeHandle(name, org_id, node_id, key, cfg_path, data_dir, self.workdir / "logs" / f"{name}.log",
                          metrics_port=metrics_port)

    def reconfigure_nodes(self, changes: Callable[[NodeHandle], dict], timeout: float = 90) -> None:
        """Stop every node agent, merge changes(node) into its node.yaml, start them again and
        wait until they are connected (the agent reads its config at start only)."""
        for node in self.nodes:
            self.stop_node(node)
        for node in self.nodes:
            cfg = yaml.safe_load(node.config_path.read_text())
            node.config_path.write_text(yaml.safe_dump({**cfg, **changes(node)}))
        for node in self.nodes:
            self.start_node(node)
        self.wait_connected(timeout)

    def stop_node(self, node: NodeHandle, clean: bool = True) -> None:
        """SIGTERM the agent. It leaves its runs and VPN client for the next agent to adopt;
        with `clean` they are removed too (`vpnagent cleanup`), so the next start is fresh."""
        _stop(node.proc, 20)
        node.proc = None
        if clean:
            self.clean_node(node, docker.from_env())

    def clean_node(self, node: NodeHandle, client: docker.DockerClient) -> None:
        from vpnagent.agent import cleanup
        from vpnagent.config import parse_config
        from vpnagent.runtime.dockerengine import DockerRuntime

        if node.config_path.exists():
            raw = yaml.safe_load(node.config_path.read_text())
            raw.pop("server_ca_file", None)  # absent when the server never started; cleanup needs no TLS
            cleanup(parse_config(raw, node.config_path.parent), DockerRuntime(client))

    def kill_server(self) -> None:
        """SIGKILL the API server (its OpenVPN server container keeps running, as after a crash)."""
        for proc in [self.server_proc, *self.api_procs, self.openvpn_proc]:
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        self.server_proc, self.api_procs, self.openvpn_proc = None, [], None

    def restart_server(self, **extra) -> None:
        """Start the API server again, with `extra` server.yaml keys from now on. It is killed
        first: a clean stop would take its OpenVPN server down and every tunnel with it."""
        self.kill_server()
        self.server_extra = {**self.server_extra, **extra}
        self._start_server()

    def _server_config(self, data_dir: Path, port: int) -> Path:
        cfg = {
            "host": "127.0.0.1", "port": port,
            "data_dir": str(data_dir),
            "database_url": self.store_url,
            "vpn_subnet": self.vpn_subnet,
            "openvpn_remote_host": self.openvpn_container, "openvpn_remote_port": 1194,
            "openvpn_container": self.openvpn_container, "openvpn_network": self.wan_network,
            **({"one_port": True, "openvpn_proto": "tcp", "openvpn_remote_port": 443} if self.one_port else {}),
            **self.server_extra,
        }
        data_dir.mkdir(parents=True, exist_ok=True)
        cfg_path = data_dir / "server.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg))
        return cfg_path

    def _start_server(self) -> None:
        if self.api_processes > 1:
            self._start_scaled_out()
            return
        cfg_path = self._server_config(self.workdir / "server", self.api_port)
        log_path = self.workdir / "logs" / "server.log"
        self.progress("starting the server and its OpenVPN server container")
        self.server_proc = _server_process(["serve", "--config", str(cfg_path), "--with-openvpn"], log_path)
        self._wait_answers(self.server_proc, lambda: self.server_url, log_path)

    def _start_scaled_out(self) -> None:
        """The OpenVPN service with the data directory `server/` (its CA is the cluster's),
        then API server i with `api-<i>/`, which holds copies of that CA and token secret
        only: the operator guide's steps for a new host."""
        server_dir = self.workdir / "server"
        cfg_path = self._server_config(server_dir, self.api_port)
        migrate = subprocess.run([sys.executable, "-m", "server_ext.cli", "migrate", "--config", str(cfg_path)],
                                 capture_output=True, text=True, timeout=120)
        if migrate.returncode != 0:
            raise ClusterError(f"vpnagent-server migrate failed: {migrate.stderr[-2000:]}")
        log_path = self.workdir / "logs" / "openvpn-service.log"
        self.progress("starting the OpenVPN service (vpnagent-server openvpn)")
        self.openvpn_proc = _server_process(["openvpn", "--config", str(cfg_path)], log_path)
        self.api_procs = []
        for i, port in enumerate(self.api_ports):
            data_dir = self.workdir / f"api-{i}"
            if not (data_dir / "pki").exists():
                data_dir.mkdir(parents=True, exist_ok=True)
                shutil.copytree(server_dir / "pki", data_dir / "pki")
                shutil.copy2(server_dir / "secret", data_dir / "secret")
            api_cfg = self._server_config(data_dir, port)
            self.progress(f"starting API server {i} on port {port}")
            self.api_procs.append(_server_process(["serve", "--config", str(api_cfg)],
                                                  self.workdir / "logs" / f"api-{i}.log"))
        for i, (proc, url) in enumerate(zip(self.api_procs, self.api_urls)):
            self._wait_answers(proc, url, self.workdir / "logs" / f"api-{i}.log")
        from server_ext.store import Store

        store = Store(self.store_url)
        try:
            deadline = time.monotonic() + 60
            while not any(svc.openvpn_up for svc in store.openvpn_services()):
                if self.openvpn_proc.poll() is not None or time.monotonic() > deadline:
                    raise ClusterError(f"the OpenVPN service did not report OpenVPN up; see {log_path}:\n"
                                       f"{_tail(log_path)}")
                time.sleep(0.2)
        finally:
            store.close()
        self.progress("the OpenVPN service reports OpenVPN up")

    def _wait_answers(self, proc: subprocess.Popen, url: str | Callable[[], str], log_path: Path) -> None:
        """Until the server answers at `url`: a callable is asked again each time (one-port's
        URL names the OpenVPN container's address, known only once it runs)."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ClusterError(f"server exited with {proc.returncode}; see {log_path}:\n{_tail(log_path)}")
            now = url() if callable(url) else url
            try:
                requests.get(f"{now}/health", timeout=1, verify=self.tls_verify)
                self.progress(f"server answers at {now}")
                return
            except (requests.RequestException, OSError):  # OSError: its CA file is not written yet
                time.sleep(0.1)
        raise ClusterError(f"server did not answer within 60 s; see {log_path}:\n{_tail(log_path)}")

    def start_node(self, node: NodeHandle, env: dict[str, str] | None = None) -> None:
        self.progress(f"starting node agent {node.name} (organisation {node.organization_id})")
        # a status left by an agent that was killed would look connected until the new one writes
        (node.data_dir / "status.json").unlink(missing_ok=True)
        node.proc = subprocess.Popen(
            [sys.executable, "-m", "vpnagent.cli", "run", "--config", str(node.config_path)],
            stdout=open(node.log_path, "ab"), stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, **(env or {})})

    def wait_connected(self, timeout: float = 90, nodes: list[NodeHandle] | None = None) -> None:
        deadline = time.monotonic() + timeout
        pending = {n.name: n for n in (self.nodes if nodes is None else nodes)}
        while pending and time.monotonic() < deadline:
            for name, node in list(pending.items()):
                if node.proc and node.proc.poll() is not None:
                    raise ClusterError(f"agent {name} exited with {node.proc.returncode}; see {node.log_path}:\n{_tail(node.log_path)}")
                st = node.status()
                if st and st["vpn"]["connected"]:
                    self.progress(f"node {name} connected, VPN IP {st['vpn']['vpn_ip']}")
                    del pending[name]
            time.sleep(0.1)
        if pending:
            names = ", ".join(pending)
            raise ClusterError(f"node(s) {names} did not connect within {timeout:.0f} s; logs in {self.workdir / 'logs'}")

    # ------------------------------------------------------------------ down
    def down(self) -> None:
        """Stop agents and server and remove every container, network and rule they made.
        Safe to call on a half-built cluster and more than once."""
        every = self.nodes + self.extra_nodes
        for node in every:
            _stop(node.proc, 20)
        client = docker.from_env()
        for node in every:
            self.clean_node(node, client)
        _stop(self.server_proc, 20)
        for proc in self.api_procs:
            _stop(proc, 20)
        _stop(self.openvpn_proc, 20)
        for c in client.containers.list(all=True, filters={"name": self.openvpn_container}):
            if c.name == self.openvpn_container:
                c.remove(force=True)
        try:
            client.networks.get(self.wan_network).remove()
        except docker.errors.NotFound:
            pass

    @classmethod
    def teardown_dir(cls, workdir: Path, prefix: str, progress: Progress = print) -> None:
        """Tear down a cluster left running (`demo --keep`) by another process."""
        cluster = cls(workdir=workdir, prefix=prefix, progress=progress)
        state = workdir / "cluster.json"
        pids = json.loads(state.read_text()) if state.exists() else {}
        for pid in pids.get("pids", []):
            try:
                os.killpg(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(_alive(p) for p in pids.get("pids", [])):
            time.sleep(0.1)
        for cfg_path in sorted((workdir / "nodes").glob("*.yaml")) if (workdir / "nodes").exists() else []:
            cluster.nodes.append(NodeHandle(cfg_path.stem, 0, 0, "", cfg_path, workdir / "nodes" / cfg_path.stem,
                                            workdir / "logs" / f"{cfg_path.stem}.log"))
        cluster.down()

    def save_state(self) -> None:
        pids = [p.pid for p in [self.server_proc, *self.api_procs, self.openvpn_proc,
                                *(n.proc for n in self.nodes + self.extra_nodes)] if p]
        (self.workdir / "cluster.json").write_text(json.dumps({"pids": pids, "prefix": self.prefix}))

    def wipe(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def _stop(proc: subprocess.Popen | None, timeout: float) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def _server_process(args: list[str], log_path: Path) -> subprocess.Popen:
    """`vpnagent-server ARGS` in a session of its own, its output appended to log_path."""
    return subprocess.Popen([sys.executable, "-m", "server_ext.cli", *args], stdout=open(log_path, "ab"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
