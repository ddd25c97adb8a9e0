"""Control-plane benchmark, one run on this machine:

  connect     agent start → its VPN session listed at the OpenVPN server (median of 5
              restarts, config on disk reused as on a real restart)
  echo        echo task created → all pairs verified, three nodes (3 tasks)
  addresses   GET /vpn/algorithm/addresses latency p50/p99 over HTTP with 10,000 runs in
              the store, and the server process's memory
  many nodes  N raw VPN clients (default 50) connecting to one server: time until the last
              is connected, and memory per node (server and client side)

    .venv/bin/python benchmarks/controlplane.py            # full run (a few minutes)
    .venv/bin/python benchmarks/controlplane.py --quick    # smoke run, used by the tests
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from server_ext.store import Port, Run, Store, Task  # noqa: E402
from server_ext.vpnserver import Management  # noqa: E402
from benchmarks.common import remove_containers, report, start, summary  # noqa: E402
from test_algorithms.cluster import LocalCluster  # noqa: E402
from test_algorithms.send_echo import send_echo  # noqa: E402
from vpnagent.tls import make_session  # noqa: E402


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def openvpn_rss_mb(container) -> float:
    container.reload()
    return rss_mb(int(container.attrs["State"]["Pid"]))


def wait_connected(mgmt: Management, names: set[str], timeout: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if names <= mgmt.connected():
            return time.monotonic() - t0
        time.sleep(0.02)
    raise RuntimeError(f"not connected within {timeout} s: {sorted(names - mgmt.connected())}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 sample each, 500 runs, 3 raw nodes")
    ap.add_argument("--nodes", type=int, default=None, help="raw VPN clients for the many-nodes figure (default 50)")
    ap.add_argument("--runs", type=int, default=None, help="runs in the store for the address figure (default 10000)")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "controlplane.json")
    args = ap.parse_args(argv)
    samples = 1 if args.quick else 5
    n_runs = args.runs or (500 if args.quick else 10000)
    n_nodes = args.nodes or (3 if args.quick else 50)


    progress, client = start("controlplane")
    workdir = Path(tempfile.mkdtemp(prefix="vpnagent-cp-"))
    cluster = LocalCluster(workdir=workdir, prefix=f"vcp{int(time.time()) % 10000}", n_nodes=3,
                           vpn_subnet="10.80.0.0/16", progress=progress)
    raw = []
    results: dict = {"machine": {"cpus": os.cpu_count(), "kernel": os.uname().release}}
    try:
        cluster.up()
        mgmt = Management(workdir / "server" / "openvpn-run" / "management.sock")

        # connect time: restart one node's agent, config on disk reused
        node = cluster.nodes[0]
        cn = f"node-{node.node_id}"
        times = []
        for i in range(samples):
            cluster.stop_node(node)
            gone = time.monotonic() + 130
            while cn in mgmt.connected() and time.monotonic() < gone:
                time.sleep(0.05)
            cluster.start_node(node)
            times.append(wait_connected(mgmt, {cn}, 60))
            progress(f"connect {i + 1}/{samples}: {times[-1]:.2f} s")
        cluster.wait_connected(60, nodes=[node])
        results["connect_s"] = summary(times)

        # echo task to all pairs verified
        times = []
        for i in range(max(1, samples - 2)):
            t0 = time.monotonic()
            result = send_echo(cluster.server_url, cluster.user_api_key, cluster.collaboration_id, timeout=180,
                               verify=cluster.tls_verify,
                               progress=lambda m: None)
            if not result.get("ok"):
                raise RuntimeError(f"echo failed: {result}")
            times.append(time.monotonic() - t0)
            progress(f"echo {i + 1}: {times[-1]:.2f} s")
        results["echo_task_s"] = summary(times)

        # address book latency with n_runs runs in the store
        store = Store(f"sqlite:///{workdir / 'server' / 'store.db'}")
        orgs = [n.organization_id for n in cluster.nodes]
        node_ids = [n.node_id for n in cluster.nodes]
        with store.session() as s:
            task = None
            for i in range(n_runs // 3 + 1):
                task = Task(image="vpnagent/echo:latest", collaboration_id=cluster.collaboration_id, input=None)
                s.add(task)
                s.flush()
                for org, nid in zip(orgs, node_ids):
                    status = "active" if i % 10 == 0 else "completed"
                    run = Run(task_id=task.id, organization_id=org, node_id=nid, status=status)
                    s.add(run)
                    s.flush()
                    if status == "active":
                        s.add(Port(run_id=run.id, port=6000 + (run.id % 90), label="echo"))
            run_id = s.query(Run.id).filter(Run.task_id == task.id, Run.node_id == node_ids[0]).scalar()
            s.query(Run).filter(Run.id == run_id).update({"status": "active"})
        total_runs = store.count(Run)
        store.close()
        progress(f"{total_runs} runs in the store")
        ctoken = cluster.node_api(node).container_token(run_id)
        http = make_session(cluster.tls_verify)
        http.headers["Authorization"] = f"Bearer {ctoken}"
        lat = []
        for i in range(200 if args.quick else 2000):
            t0 = time.perf_counter()
            r = http.get(f"{cluster.server_url}/vpn/algorithm/addresses", params={"include_children": "1"}, timeout=10)
            lat.append((time.perf_counter() - t0) * 1e3)
            r.raise_for_status()
        lat.sort()
        results["addresses_ms"] = {"runs_in_store": total_runs, "requests": len(lat), "p50": lat[len(lat) // 2],
                                   "p99": lat[int(len(lat) * 0.99) - 1], "server_rss_mb": rss_mb(cluster.server_proc.pid)}
        progress(f"addresses p50 {results['addresses_ms']['p50']:.2f} ms, p99 {results['addresses_ms']['p99']:.2f} ms")

        # many nodes on one server
        openvpn = client.containers.get(cluster.openvpn_container)
        server_rss0 = openvpn_rss_mb(openvpn)
        handles = [cluster.add_node(f"{cluster.prefix}m{i}") for i in range(n_nodes)]
        configs = [cluster.node_api(h).get_vpn_config() for h in handles]

        def launch(i: int):
            d = workdir / f"raw{i}"
            d.mkdir()
            (d / "client.ovpn").write_text(configs[i])
            return client.containers.run("vpnagent/vpn:latest", ["openvpn", "--config", "/vpn/client.ovpn"],
                                         detach=True, name=f"{cluster.prefix}-m{i}", cap_add=["NET_ADMIN"],
                                         devices=["/dev/net/tun:/dev/net/tun"],
                                         volumes={str(d): {"bind": "/vpn", "mode": "ro"}},
                                         network=cluster.wan_network, labels={"vpnagent.node": f"{cluster.prefix}-bench"})

        t0 = time.monotonic()
        with ThreadPoolExecutor(4) as pool:
            raw = list(pool.map(launch, range(n_nodes)))
        started = time.monotonic() - t0
        names = {f"node-{h.node_id}" for h in handles}
        all_in = wait_connected(mgmt, names, 300) + started
        client_rss = statistics.mean(openvpn_rss_mb(c) for c in raw)
        results["many_nodes"] = {"nodes": n_nodes, "all_connected_s": all_in, "docker_run_s": started,
                                 "server_rss_mb_per_node": (openvpn_rss_mb(openvpn) - server_rss0) / n_nodes,
                                 "client_rss_mb": client_rss}
        progress(f"{n_nodes} nodes connected {all_in:.1f} s after the first docker run")

        report(args.json, results, json.dumps(results, indent=2), progress)
        return 0
    finally:
        remove_containers(raw)
        cluster.down()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
