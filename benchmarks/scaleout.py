"""Scale-out benchmark (docs/operator-guide.md, "Scaling out the server"), one run on this
machine, on PostgreSQL:

  api         a node's request mix (GET /run?state=pending, GET /node/peers, PATCH /run)
              from a fixed number of client threads, each one node with its own token,
              over HTTPS: requests/s and p50/p99 latency with one API process, one `serve`
              with api_workers 2, and two `serve` processes on the same database (the client
              spreads requests over them round-robin: the load balancer's part; it keeps no
              state of ours). Also the CPU share of the client itself, of the API processes
              and of PostgreSQL's processes: on 2 cores they share one machine.
  writes      PostgreSQL write capacity as the API sees it: port registrations/s (POST
              /port, one INSERT each) and run updates/s (PATCH /run), same three layouts;
              and the database alone (one INSERT per transaction through the store's
              engine, no HTTP) for comparison.
  connect     first connect of a node whose API server is not beside the OpenVPN service
              (needs Docker): node added and its VPN config fetched through API server B,
              the OpenVPN service (`vpnagent-server openvpn`, its own process) writes the
              node's static-address entry on its next pass, a real OpenVPN client connects;
              and, for comparison, the same client's reconnect once the entry exists.

    .venv/bin/python benchmarks/scaleout.py            # full run (≈5 min)
    .venv/bin/python benchmarks/scaleout.py --quick    # smoke run, used by the tests

PostgreSQL: --database-url, else $VPNAGENT_TEST_POSTGRES_URL (scripts/postgres.sh prints
one); a role that may create databases: the benchmark makes one of its own and drops it.
"""
from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from server_ext.store import Node, Port, Run, Store, Task  # noqa: E402
from vpnagent.tls import make_session  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
LAYOUTS = {  # name -> one api_workers value per `serve` process
    "1 process": [1],
    "1 serve, api_workers 2": [2],
    "2 serves (replicas)": [1, 1],
}


def progress(msg: str) -> None:
    print(f"[scaleout {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------- CPU accounting (/proc)
def _proc_stats() -> dict[int, tuple[str, int, float]]:
    """pid -> (command name, process group, CPU seconds) of every process."""
    out = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            text = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        name = text[text.index("(") + 1:text.rindex(")")]
        fields = text[text.rindex(")") + 2:].split()
        out[int(entry.name)] = (name, int(fields[2]), (int(fields[11]) + int(fields[12])) / CLK_TCK)
    return out


def _machine() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return (sum(values) - idle) / CLK_TCK, sum(values) / CLK_TCK


@dataclass
class CPUSample:
    client: float
    processes: dict[int, tuple[str, int, float]]
    busy: float
    total: float

    @classmethod
    def take(cls) -> CPUSample:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        busy, total = _machine()
        return cls(usage.ru_utime + usage.ru_stime, _proc_stats(), busy, total)

    def shares(self, later: CPUSample, wall: float, server_groups: list[int]) -> dict:
        """Each part's CPU over the interval as a share of the machine (all cores). A process
        that started in the interval counts whole; one that ended in it is not seen."""
        cores = os.cpu_count() or 1

        def used(pick) -> float:
            return sum(cpu - (self.processes[pid][2] if pid in self.processes else 0.0)
                       for pid, (name, group, cpu) in later.processes.items() if pick(name, group))

        out = {"client": (later.client - self.client) / (wall * cores),
               "api_servers": used(lambda name, group: group in server_groups) / (wall * cores),
               "postgres": used(lambda name, group: name == "postgres") / (wall * cores),
               "machine_busy": (later.busy - self.busy) / max(later.total - self.total, 1e-9)}
        # the rest of the busy time: the kernel's own work for these (loopback networking), and
        # other work on the machine
        out["other"] = max(0.0, out["machine_busy"] - out["client"] - out["api_servers"] - out["postgres"])
        return out


# ---------------------------------------------------------------- API servers
@dataclass
class Served:
    proc: subprocess.Popen
    url: str
    log: Path


def serve(config: Path, log: Path) -> Served:
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "server_ext.cli", "serve", "--config", str(config)],
                                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = re.search(r"serving on (https://\S+)", log.read_text())
        if found:
            return Served(proc, found.group(1), log)
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    stop(proc)
    raise RuntimeError(f"serve did not start; {log}:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def server_config(workdir: Path, name: str, database_url: str, **keys) -> Path:
    data_dir = workdir / name
    data_dir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"data_dir": str(data_dir), "database_url": database_url, "host": "127.0.0.1",
                                    "port": 0, "vpn_subnet": "10.91.0.0/16", **keys}))
    return path


def replica_dir(workdir: Path, first: str, name: str) -> None:
    """What the operator guide copies to a new API host: the CA and the token secret."""
    target = workdir / name
    if not (target / "pki").exists():
        target.mkdir(parents=True, exist_ok=True)
        shutil.copytree(workdir / first / "pki", target / "pki")
        shutil.copy2(workdir / first / "secret", target / "secret")


# ---------------------------------------------------------------- the store's contents
@dataclass
class World:
    node_keys: list[str]
    active: list[list[int]]  # per node: its active runs
    pending: int             # pending runs per node


def seed(store: Store, nodes: int, active: int, pending: int) -> World:
    """One collaboration of `nodes` organisations, a node each (with a VPN IP); `active` +
    `pending` tasks, each with a run at every node."""
    orgs = [store.create_organization(f"org-{i}") for i in range(nodes)]
    collab = store.create_collaboration("bench", [o.id for o in orgs])
    keys, ids = [], []
    for i, org in enumerate(orgs):
        node, key = store.create_node(org.id, collab.id, f"n{i}")
        keys.append(key)
        ids.append(node.id)
    runs: list[list[int]] = [[] for _ in ids]
    with store.session() as s:
        for i, node_id in enumerate(ids):
            s.get(Node, node_id).vpn_ip = f"10.91.{1 + i // 200}.{2 + i % 200}"
        for t in range(active + pending):
            task = Task(image="bench:1", collaboration_id=collab.id, input={"t": t})
            s.add(task)
            s.flush()
            for i, (org, node_id) in enumerate(zip(orgs, ids)):
                run = Run(task_id=task.id, organization_id=org.id, node_id=node_id,
                          status="active" if t < active else "pending")
                s.add(run)
                s.flush()
                if t < active:
                    runs[i].append(run.id)
                    s.add(Port(run_id=run.id, port=8888, label="echo"))
    return World(keys, runs, pending)


# ---------------------------------------------------------------- load
# Each mix yields its responses one by one, as they come: each request is timed on its own.
def node_mix(http, url: Callable[[], str], k: int, i: int, world: World) -> Iterator:
    """What an agent does every poll: pending runs, its peers, a run's status."""
    run = world.active[k][i % len(world.active[k])]
    yield http.get(f"{url()}/run", params={"state": "pending"}, timeout=30)
    yield http.get(f"{url()}/node/peers", timeout=30)
    yield http.patch(f"{url()}/run/{run}", json={"status": "active", "log": f"step {i}"}, timeout=30)


def port_registration(http, url: Callable[[], str], k: int, i: int, world: World) -> Iterator:
    runs = world.active[k]
    yield http.post(f"{url()}/port", json={"run_id": runs[i % len(runs)], "port": 1000 + i // len(runs),
                                           "label": "bench"}, timeout=30)


def run_update(http, url: Callable[[], str], k: int, i: int, world: World) -> Iterator:
    runs = world.active[k]
    yield http.patch(f"{url()}/run/{runs[i % len(runs)]}", json={"status": "active", "log": f"line {i}"},
                     timeout=30)


MIXES = {"node mix": node_mix, "port registrations": port_registration, "run updates": run_update}


def load(urls: list[str], ca: str, world: World, op, threads: int, seconds: float, warmup: float,
         server_groups: list[int]) -> dict:
    """`threads` clients (client k is node k) run `op` back to back for warmup + seconds;
    the requests that end within the measured window count."""
    tokens = []
    with make_session(ca) as http:
        for k in range(threads):
            r = http.post(f"{urls[0]}/token/node", json={"api_key": world.node_keys[k]}, timeout=30)
            r.raise_for_status()
            tokens.append(r.json()["access_token"])
    turn = iter(range(10 ** 12))
    lock = threading.Lock()

    def next_url() -> str:  # round-robin over the API servers, per request
        with lock:
            return urls[next(turn) % len(urls)]

    start = time.monotonic() + warmup
    end = start + seconds
    latencies: list[list[tuple[str, float]]] = [[] for _ in range(threads)]
    errors: list[list[str]] = [[] for _ in range(threads)]

    def client(k: int) -> None:
        http = make_session(ca)
        http.headers["Authorization"] = f"Bearer {tokens[k]}"
        i = 0
        while True:
            t0 = time.monotonic()
            if t0 >= end:
                break
            for r in op(http, next_url, k, i, world):
                t1 = time.monotonic()
                if start <= t1 < end:
                    path = re.sub(r"/\d+", "/<id>", r.request.path_url.split("?")[0].split("/api", 1)[-1])
                    latencies[k].append((f"{r.request.method} {path}", (t1 - t0) * 1e3))
                    if r.status_code >= 300:
                        errors[k].append(f"{r.status_code} {r.text[:200]}")
                t0 = t1
            i += 1
        http.close()

    workers = [threading.Thread(target=client, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    time.sleep(max(0.0, start - time.monotonic()))
    before = CPUSample.take()
    time.sleep(max(0.0, end - time.monotonic()))
    after = CPUSample.take()
    for w in workers:
        w.join()
    timed = [x for per in latencies for x in per]
    errs = [e for per in errors for e in per]
    if not timed:
        raise RuntimeError("no request completed in the measured window")
    kinds = sorted({kind for kind, _ in timed})
    return {**percentiles([ms for _, ms in timed], seconds), "errors": len(errs),
            "first_error": errs[0] if errs else None, "cpu_share": before.shares(after, seconds, server_groups),
            "by_request": {kind: percentiles([ms for k, ms in timed if k == kind], seconds) for kind in kinds}}


def percentiles(values: list[float], seconds: float) -> dict:
    lat = sorted(values)
    return {"requests": len(lat), "per_s": len(lat) / seconds, "p50_ms": lat[len(lat) // 2],
            "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))]}


def database_alone(store: Store, world: World, threads: int, seconds: float) -> dict:
    """INSERTs of a port, one transaction each, straight through the store's engine."""
    count = [0] * threads
    end = time.monotonic() + seconds

    def writer(k: int) -> None:
        runs = world.active[k]
        i = 0
        while time.monotonic() < end:
            with store.session() as s:
                s.add(Port(run_id=runs[i % len(runs)], port=40000 + (i // len(runs)) % 20000, label="db"))
            i += 1
        count[k] = i

    workers = [threading.Thread(target=writer, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return {"commits": sum(count), "per_s": sum(count) / seconds}


def measure_api(args, database_url: str, workdir: Path) -> dict:
    first = server_config(workdir, "api-0", database_url, api_workers=1)
    migrate = subprocess.run([sys.executable, "-m", "server_ext.cli", "migrate", "--config", str(first)], cwd=ROOT,
                             capture_output=True, text=True, timeout=120)
    if migrate.returncode != 0:
        raise RuntimeError(f"migrate failed: {migrate.stderr[-2000:]}")
    replica_dir(workdir, "api-0", "api-1")
    store = Store(database_url)
    try:
        world = seed(store, nodes=args.threads, active=args.active_runs, pending=args.pending_runs)
    finally:
        store.close()
    ca = str(workdir / "api-0" / "pki" / "ca.crt")
    progress(f"store seeded: {args.threads} nodes, {args.active_runs} active and {args.pending_runs} pending runs each")
    results: dict = {}
    for mix_name, op in MIXES.items():
        for layout, workers in LAYOUTS.items():
            procs = []
            try:
                for n, w in enumerate(workers):
                    cfg = server_config(workdir, f"api-{n}", database_url, api_workers=w)
                    procs.append(serve(cfg, workdir / f"api-{n}.log"))
                got = load([p.url for p in procs], ca, world, op, args.threads, args.seconds, args.warmup,
                           [p.proc.pid for p in procs])
            finally:
                for p in procs:
                    stop(p.proc)
            results.setdefault(mix_name, {})[layout] = got
            cpu = got["cpu_share"]
            progress(f"{mix_name}, {layout}: {got['per_s']:.0f}/s, p50 {got['p50_ms']:.1f} ms, p99 "
                     f"{got['p99_ms']:.1f} ms, errors {got['errors']}; CPU client {cpu['client']:.0%}, API "
                     f"{cpu['api_servers']:.0%}, postgres {cpu['postgres']:.0%}, other {cpu['other']:.0%}, "
                     f"machine {cpu['machine_busy']:.0%}")
    store = Store(database_url)
    try:
        results["database alone"] = database_alone(store, world, args.threads, args.seconds)
    finally:
        store.close()
    progress(f"database alone: {results['database alone']['per_s']:.0f} commits/s")
    return results


# ---------------------------------------------------------------- first connect (Docker)
def measure_connect(args, database_url: str, workdir: Path) -> dict:
    import docker
    import requests

    from benchmarks.common import remove_containers, summary
    from server_ext.vpnserver import Management
    from test_algorithms.cluster import LocalCluster

    from vpnagent.runtime.docker_images import build_images

    client = docker.from_env(timeout=300)
    build_images(client, progress=progress)  # found cached after `vpnagent images build`
    cluster = LocalCluster(workdir=workdir / "cluster", prefix=f"vso{os.getpid() % 10000}", n_nodes=1,
                           vpn_subnet="10.92.0.0/16", database_url=database_url, api_processes=2,
                           progress=progress)
    containers = []
    try:
        cluster.up(start=[])  # the OpenVPN service, API servers A and B; no agent
        mgmt = Management(cluster.workdir / "server" / "openvpn-run" / "management.sock")
        ccd = cluster.workdir / "server" / "openvpn" / "ccd"
        b = cluster.api_urls[1]  # not beside the OpenVPN service: it has none of its files
        store = Store(database_url)
        try:
            _, admin_key = store.create_admin("bench")
        finally:
            store.close()
        http = make_session(cluster.tls_verify)
        admin = http.post(f"{b}/token/admin", json={"api_key": admin_key}, timeout=30).json()["access_token"]
        http.headers["Authorization"] = f"Bearer {admin}"
        samples: dict[str, list[float]] = {"add_to_entry_s": [], "config_to_entry_s": [],
                                           "config_to_connected_s": [], "reconnect_s": []}
        for i in range(args.connects):
            org = http.post(f"{b}/admin/organization", json={"name": f"org-c{i}"}, timeout=30).json()["id"]
            collab = http.post(f"{b}/admin/collaboration", json={"name": f"collab-c{i}", "organizations": [org]},
                               timeout=30).json()["id"]
            t_add = time.monotonic()
            node = http.post(f"{b}/admin/node", json={"name": f"c{i}", "organization_id": org,
                                                       "collaboration_id": collab}, timeout=30).json()
            token = requests.post(f"{b}/token/node", json={"api_key": node["api_key"]}, verify=cluster.tls_verify,
                                  timeout=30).json()["access_token"]
            config = requests.get(f"{b}/vpn", headers={"Authorization": f"Bearer {token}"},
                                  verify=cluster.tls_verify, timeout=30).json()["ovpn_config"]
            t_config = time.monotonic()
            cn = f"node-{node['id']}"
            d = workdir / f"client{i}"
            d.mkdir()
            (d / "client.ovpn").write_text(config)
            name = f"{cluster.prefix}-c{i}"

            def run_client():
                return client.containers.run("vpnagent/vpn:latest", ["openvpn", "--config", "/vpn/client.ovpn"],
                                             detach=True, name=name, cap_add=["NET_ADMIN"],
                                             devices=["/dev/net/tun:/dev/net/tun"],
                                             volumes={str(d): {"bind": "/vpn", "mode": "ro"}},
                                             network=cluster.wan_network, labels={"vpnagent.node": "bench-scaleout"})

            containers.append(run_client())
            entry = connected = None
            deadline = time.monotonic() + 120
            while (entry is None or connected is None) and time.monotonic() < deadline:
                now = time.monotonic()
                if entry is None and (ccd / cn).exists():
                    entry = now
                if connected is None and cn in mgmt.connected():
                    connected = now
                time.sleep(0.01)
            if entry is None or connected is None:
                raise RuntimeError(f"{cn}: entry {entry}, connected {connected} within 120 s")
            samples["add_to_entry_s"].append(entry - t_add)
            samples["config_to_entry_s"].append(entry - t_config)
            samples["config_to_connected_s"].append(connected - t_config)
            # the same client again: its entry exists now
            containers[-1].stop(timeout=10)  # SIGTERM: explicit-exit-notify ends the session at once
            gone = time.monotonic() + 60
            while cn in mgmt.connected() and time.monotonic() < gone:
                time.sleep(0.02)
            containers[-1].remove(force=True)
            t_again = time.monotonic()
            containers[-1] = run_client()
            while cn not in mgmt.connected():
                if time.monotonic() - t_again > 120:
                    raise RuntimeError(f"{cn} did not reconnect within 120 s")
                time.sleep(0.01)
            samples["reconnect_s"].append(time.monotonic() - t_again)
            containers[-1].remove(force=True)
            progress(f"connect {i + 1}/{args.connects}: entry {samples['config_to_entry_s'][-1]:.2f} s and "
                     f"connected {samples['config_to_connected_s'][-1]:.2f} s after its config (through B); "
                     f"reconnect {samples['reconnect_s'][-1]:.2f} s")
        return {k: summary(v) for k, v in samples.items()}
    finally:
        remove_containers(containers)
        cluster.down()


def table(results: dict) -> str:
    lines = ["| mix | layout | requests/s | p50 ms | p99 ms | errors | CPU: client / API / postgres / other / machine |",
             "|---|---|---:|---:|---:|---:|---|"]
    for mix in MIXES:
        for layout, got in results["api"].get(mix, {}).items():
            c = got["cpu_share"]
            lines.append(f"| {mix} | {layout} | {got['per_s']:.0f} | {got['p50_ms']:.1f} | {got['p99_ms']:.1f} | "
                         f"{got['errors']} | {c['client']:.0%} / {c['api_servers']:.0%} / {c['postgres']:.0%} / "
                         f"{c['other']:.0%} / {c['machine_busy']:.0%} |")
    mix = results["api"].get("node mix", {})
    if mix:
        lines.append("\n| node mix, by request | layout | requests/s | p50 ms | p99 ms |\n|---|---|---:|---:|---:|")
        for layout, got in mix.items():
            for kind, one in got["by_request"].items():
                lines.append(f"| {kind} | {layout} | {one['per_s']:.0f} | {one['p50_ms']:.1f} | {one['p99_ms']:.1f} |")
    alone = results["api"].get("database alone")
    if alone:
        lines.append(f"\ndatabase alone (INSERT, one transaction each, {results['threads']} threads): "
                     f"{alone['per_s']:.0f} commits/s")
    if "connect" in results:
        lines.append("\n| first connect through API server B | min | median | max (s) |\n|---|---:|---:|---:|")
        for key, s in results["connect"].items():
            lines.append(f"| {key} | {s['min']:.2f} | {s['median']:.2f} | {s['max']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 s per figure, 1 connect")
    ap.add_argument("--database-url", default=os.environ.get("VPNAGENT_TEST_POSTGRES_URL"),
                    help="PostgreSQL whose role may create databases (default $VPNAGENT_TEST_POSTGRES_URL)")
    ap.add_argument("--threads", type=int, default=8, help="client threads, each one node (default 8)")
    ap.add_argument("--seconds", type=float, default=None, help="measured seconds per figure (default 15)")
    ap.add_argument("--connects", type=int, default=None, help="first connects to time (default 5)")
    ap.add_argument("--no-connect", action="store_true", help="skip the first-connect part (it needs Docker)")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "scaleout.json")
    args = ap.parse_args(argv)
    args.seconds = args.seconds or (1.0 if args.quick else 15.0)
    args.warmup = 0.5 if args.quick else 2.0
    args.connects = args.connects or (1 if args.quick else 5)
    args.active_runs, args.pending_runs = 3, 2
    if not args.database_url or not args.database_url.startswith("postgresql"):
        print("scaleout: needs PostgreSQL: --database-url or $VPNAGENT_TEST_POSTGRES_URL (`bash scripts/postgres.sh "
              "| tail -1` prints one)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the clean-up below still runs

    from benchmarks.common import report
    from tests.server.postgres import PostgresDatabases

    databases = PostgresDatabases(args.database_url)
    workdir = Path(tempfile.mkdtemp(prefix="vpnagent-scaleout-"))
    made: list[str] = []
    results: dict = {"machine": {"cpus": os.cpu_count(), "kernel": os.uname().release},
                     "threads": args.threads, "seconds": args.seconds}
    try:
        made.append(databases.create())
        results["api"] = measure_api(args, made[-1], workdir / "api")
        if not args.no_connect:
            made.append(databases.create())
            results["connect"] = measure_connect(args, made[-1], workdir / "connect")
        report(args.json, results, table(results), progress)
        return 0
    finally:
        for url in made:
            databases.drop(url)
        databases.close()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
