"""Wiring benchmark: time from "holder container running" to "run reachable over the VPN
and its ports registered", for (a) vpnagent and (b) a baseline doing what vantage6 4.x's
node does (docker exec into the VPN client to list the nat table and add the DNAT rule,
a `docker run --rm` helper container to set the algorithm's default route).

Both run in one process, on the same images, against the same real server, OpenVPN
server and VPN client. Reachability is checked from another node's VPN client namespace
by a persistent prober (a TCP echo through the tunnel). Then the same is measured with
200 runs already live on the node.

Two more scenarios (issue "Runs survive"):
- restart: N runs live (holder, sleeping algorithm container, rules, ports, journal record);
  the agent process is replaced by a new one, which is timed from start to "every run
  adopted and its rules applied", for N = 1, 50, 200. The baseline is what the agent did
  before (and what a vantage6 4.x node does): every live run removed and reported failed.
- load: K echo tasks sent at once to a three-node cluster whose nodes take 2 top-level runs
  at a time; time until all finished, and how many completed. The baseline is the one the
  issue measured: 10 tasks on a shared limit of 8, all failed after 144 s.

    .venv/bin/python benchmarks/wiring.py            # full run (a few minutes)
    .venv/bin/python benchmarks/wiring.py --quick    # smoke run (seconds), used by the tests

Prints a table and writes JSON (default benchmarks/results/wiring.json).
"""
from __future__ import annotations

import argparse
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import docker  # noqa: E402

from benchmarks.common import report, start  # noqa: E402
from test_algorithms.cluster import LocalCluster  # noqa: E402
from vpnagent.agent import ROLE_ALGORITHM, Agent  # noqa: E402
from vpnagent.config import load_config  # noqa: E402
from vpnagent.journal import RUNNING, RunRecord  # noqa: E402
from vpnagent.ports import PortSpec  # noqa: E402
from vpnagent.runtime.dockerengine import DockerRuntime  # noqa: E402

ECHO_SERVER = (
    "import socketserver\n"
    "class H(socketserver.StreamRequestHandler):\n"
    "    def handle(self):\n"
    "        for line in self.rfile:\n"
    "            self.wfile.write(line)\n"
    "socketserver.ThreadingTCPServer.allow_reuse_address = True\n"
    "socketserver.ThreadingTCPServer(('0.0.0.0', 8888), H).serve_forever()\n"
)

# Runs inside the prober node's VPN client namespace; one request per line on stdin:
# "<ip> <port>" → retries a TCP echo every millisecond, answers "ok <ms>" or "fail <why>".
PROBER = r"""
import socket, sys, time
for line in sys.stdin:
    ip, port = line.split()
    t0 = time.perf_counter(); err = ""
    while time.perf_counter() - t0 < 10:
        try:
            with socket.create_connection((ip, int(port)), timeout=1) as s:
                s.sendall(b"ping\n")
                if s.makefile("rb").readline() == b"ping\n":
                    print("ok %.3f" % ((time.perf_counter() - t0) * 1e3), flush=True); break
        except OSError as exc:
            err = str(exc)
        time.sleep(0.001)
    else:
        print("fail " + err, flush=True)
"""


class Prober:
    def __init__(self, pid: int) -> None:
        self.proc = subprocess.Popen(["nsenter", f"--net=/proc/{pid}/ns/net", "--", sys.executable, "-u", "-c", PROBER],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def reach_ms(self, ip: str, port: int) -> float:
        self.proc.stdin.write(f"{ip} {port}\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline().strip()
        if not answer.startswith("ok "):
            raise RuntimeError(f"{ip}:{port} not reachable over the VPN: {answer}")
        return float(answer[3:])

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(5)


def stats(values: list[float]) -> dict:
    return {"n": len(values), "min": min(values), "median": statistics.median(values), "max": max(values)}


class Bench:
    def __init__(self, cluster: LocalCluster, agent: Agent, prober: Prober, client: docker.DockerClient) -> None:
        self.cluster, self.agent, self.prober, self.docker = cluster, agent, prober, client
        self.node = cluster.nodes[1]
        self.http = cluster.user_session()
        self.vpn_ip = agent.vpn.state.vpn_ip
        # the prober's node takes part in the benchmark runs' task family, so isolation lets
        # its probes in (as for a real peer run on that node)
        self.family = [{"run_id": 0, "node_id": 0, "ip": cluster.nodes[0].status()["vpn"]["vpn_ip"], "ports": []}]

    def new_runs(self, n: int) -> list[tuple[int, int]]:
        """(run id, task id) of n runs for the benchmark node (pending at the server; nobody
        else picks them up because this node's agent is the one in this process)."""
        out = []
        for _ in range(n):
            r = self.http.post(f"{self.cluster.server_url}/task", timeout=10, json={
                "collaboration_id": self.cluster.collaboration_id, "organizations": [self.node.organization_id],
                "image": "vpnagent/algo-base:latest", "input": None})
            out.append((r.json()["runs"][0]["id"], r.json()["id"]))
        return out

    def holder(self, run_id: int, with_listener: bool = True):
        return self.agent.start_holder(run_id, ["python3", "-c", ECHO_SERVER] if with_listener else None)

    def wait_listening(self, holder) -> None:
        """Until the holder's echo server listens (so we time the wiring, not python start-up)."""
        for _ in range(400):
            r = self.docker.containers.get(holder.id).exec_run(["python3", "-c", "import socket; socket.create_connection(('127.0.0.1', 8888), 1)"])
            if r.exit_code == 0:
                return
            time.sleep(0.01)
        raise RuntimeError("benchmark holder never listened on 8888")

    # ---------------------------------------------------------------- (a) vpnagent
    def sample_agent(self, run_id: int, task_id: int) -> dict:
        holder = self.holder(run_id)
        self.wait_listening(holder)
        t0 = time.perf_counter()
        live = self.agent.wire_run(run_id, task_id, "bench", holder, [PortSpec(8888, "bench")], self.family)
        t_local = time.perf_counter()
        self.agent.register_ports(live)
        t_http = time.perf_counter()
        reach = self.prober.reach_ms(self.vpn_ip, live.ports[0].vpn_port)
        total = (time.perf_counter() - t0) * 1e3
        self.agent._teardown(run_id, holder.id)
        return {"local_ms": (t_local - t0) * 1e3, "http_ms": (t_http - t_local) * 1e3, "reach_ms": reach,
                "total_ms": total}

    # ---------------------------------------------------------------- (b) vantage6 4.x style
    def sample_baseline(self, run_id: int, task_id: int) -> dict:
        holder = self.holder(run_id)
        self.wait_listening(holder)
        vpn = self.docker.containers.get(self.agent.cfg.vpn_container)
        low, high = self.agent.cfg.port_range
        t0 = time.perf_counter()
        algo_ip = self.agent.runtime.inspect(holder.id).networks[self.agent.cfg.isolated_network]
        vpn.reload()
        vpn_iso_ip = vpn.attrs["NetworkSettings"]["Networks"][self.agent.cfg.isolated_network]["IPAddress"]
        # vantage6: list PREROUTING with `iptables -L` in the VPN client and parse the ports
        listed = vpn.exec_run(["sh", "-c", "iptables -t nat -L PREROUTING -n | awk '{print $11}' | cut -c 5-"])
        used = {int(x) for x in listed.output.decode().split() if x.isdigit()}
        port = next(p for p in range(high, low, -1) if p not in used)  # from the top: no clash with the agent
        dnat = f"-t nat -I PREROUTING -i tun0 -p tcp --dport {port} -j DNAT --to-destination {algo_ip}:8888"
        fwd_in = f"-I FORWARD -i tun0 -d {algo_ip} -p tcp --dport 8888 -j ACCEPT"
        for rule in (dnat, fwd_in):  # one exec per rule, as vantage6 does
            r = vpn.exec_run(["sh", "-c", f"iptables {rule}"])
            if r.exit_code:
                raise RuntimeError(f"baseline iptables failed: {r.output.decode()}")
        # vantage6: a throw-away helper container in the algorithm's namespace sets the route
        self.docker.containers.run(self.agent.cfg.vpn_image, ["ip", "route", "replace", "default", "via", vpn_iso_ip],
                                   network_mode=f"container:{holder.id}", cap_add=["NET_ADMIN"], remove=True)
        t_local = time.perf_counter()
        self.agent.api.register_port(run_id, port, "bench")
        t_http = time.perf_counter()
        reach = self.prober.reach_ms(self.vpn_ip, port)
        total = (time.perf_counter() - t0) * 1e3
        # vantage6 never removed its rules; the benchmark does
        for rule in (dnat, fwd_in):
            vpn.exec_run(["sh", "-c", f"iptables {rule.replace('-I ', '-D ', 1)}"])
        self.agent.api.delete_ports(run_id)
        self.docker.containers.get(holder.id).remove(force=True)
        return {"local_ms": (t_local - t0) * 1e3, "http_ms": (t_http - t_local) * 1e3, "reach_ms": reach,
                "total_ms": total}

    # ---------------------------------------------------------------- background load
    def make_live(self, n: int, progress) -> list[int]:
        """n live runs (real holders, rules, ports) as the node would have them."""
        runs = self.new_runs(n)

        def one(rt):
            run_id, task_id = rt
            h = self.holder(run_id, with_listener=False)
            live = self.agent.wire_run(run_id, task_id, "bench", h, [PortSpec(8888, "bench")], self.family)
            self.agent.register_ports(live)
            return run_id

        done = []
        with ThreadPoolExecutor(4) as pool:
            for i, run_id in enumerate(pool.map(one, runs), 1):
                done.append(run_id)
                if i % 50 == 0:
                    progress(f"  {i}/{n} background runs live")
        return done

    def drop_live(self, run_ids: list[int]) -> None:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda r: self.agent._teardown(r, self.agent.runs[r].holder_id), run_ids))


def restart(bench: Bench, n: int, progress) -> tuple[Agent, dict]:
    """n adoptable runs on the bench agent's node, then a new agent process's start timed
    until they are adopted. Returns the new agent (the bench goes on with it)."""
    old = bench.agent
    runs = bench.new_runs(n)

    def one(rt):
        run_id, task_id = rt
        holder = bench.holder(run_id, with_listener=False)
        live = old.wire_run(run_id, task_id, "bench", holder, [PortSpec(8888, "bench")], bench.family)
        old.register_ports(live)
        old.api.update_run(run_id, "active")
        algo = bench.docker.containers.run(
            old.cfg.holder_image, ["sleep", "infinity"], detach=True, network_mode=f"container:{holder.id}",
            name=f"vpnagent-{old.cfg.name}-run{run_id}",
            labels={"vpnagent.node": old.cfg.name, "vpnagent.role": ROLE_ALGORITHM, "vpnagent.run": str(run_id)})
        old.journal.save(RunRecord(run_id, task_id, "bench", phase=RUNNING, holder_id=holder.id,
                                   container_id=algo.id, ports=[{"vpn_port": p.vpn_port, "container_port": 8888,
                                                                 "label": "bench"} for p in live.ports]))

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, runs))
    old.leave()  # as SIGTERM leaves them: runs, VPN client and rules stay
    new = Agent(old.cfg, DockerRuntime(bench.docker))
    t0 = time.perf_counter()
    new.start()
    took = (time.perf_counter() - t0) * 1e3
    if sorted(new.adopted) != sorted(r for r, _ in runs):
        raise RuntimeError(f"adopted {len(new.adopted)} of {n} runs")
    if new.vpn.state.container_id != old.vpn.state.container_id:
        raise RuntimeError("the new agent replaced a healthy VPN client")
    progress(f"  restart with {n} live run(s): all adopted in {took:.0f} ms")
    for run_id, _ in runs:  # end them the normal way: the watchers collect and report them
        bench.docker.containers.get(f"vpnagent-{old.cfg.name}-run{run_id}").kill()
    deadline = time.monotonic() + 120  # until every watcher has reported its run and given it back
    while any(t.is_alive() for t in new._threads) and time.monotonic() < deadline:
        time.sleep(0.1)
    bench.agent = new
    return new, {"n": n, "adopt_ms": took, "adopted": len(new.adopted), "baseline": f"0 adopted, {n} failed"}


def load(progress, sends: list[int]) -> list[dict]:
    """K echo tasks at once on a fresh three-node cluster with 2 top-level run slots per node."""
    workdir = Path(tempfile.mkdtemp(prefix="vpnagent-bench-load-"))
    cluster = LocalCluster(workdir=workdir, prefix=f"val{int(time.time()) % 10000}", n_nodes=3,
                           vpn_subnet="10.79.0.0/16", progress=progress, node_extra={"max_concurrent_runs": 2})
    out = []
    try:
        cluster.up()
        http = cluster.user_session()
        org1 = cluster.nodes[0].organization_id
        for k in sends:
            t0 = time.monotonic()
            tasks = []
            for _ in range(k):
                r = http.post(f"{cluster.server_url}/task", timeout=10, json={
                    "collaboration_id": cluster.collaboration_id, "organizations": [org1],
                    "image": "vpnagent/echo:latest", "input": {"method": "central", "kwargs": {"timeout": 60}}})
                tasks.append(r.json()["id"])
            statuses: dict[int, str] = {}
            while len(statuses) < k and time.monotonic() - t0 < 600:
                for t in tasks:
                    if t not in statuses:
                        run = http.get(f"{cluster.server_url}/task/{t}", timeout=10).json()["runs"][0]
                        if run["status"] in ("completed", "failed"):
                            ok = run["status"] == "completed" and (run.get("result") or {}).get("ok")
                            statuses[t] = "completed" if ok else "failed"
                time.sleep(0.2)
            took = time.monotonic() - t0
            done = sum(1 for v in statuses.values() if v == "completed")
            progress(f"  load: {k} echo task(s) at once: {done} completed in {took:.1f} s")
            out.append({"tasks": k, "completed": done, "seconds": took, "slots_per_node": 2})
    finally:
        cluster.down()
        shutil.rmtree(workdir, ignore_errors=True)
    return out


def measure(bench: Bench, samples: int, label: str, progress) -> dict:
    out = {"agent": [], "baseline": []}
    runs = bench.new_runs(2 * samples)
    for i in range(samples):
        out["agent"].append(bench.sample_agent(*runs[2 * i]))
        out["baseline"].append(bench.sample_baseline(*runs[2 * i + 1]))
        progress(f"  {label}: sample {i + 1}/{samples}: agent {out['agent'][-1]['total_ms']:.1f} ms, "
                 f"baseline {out['baseline'][-1]['total_ms']:.1f} ms")
    return {k: {f: stats([s[f] for s in v]) for f in ("local_ms", "http_ms", "reach_ms", "total_ms")}
            for k, v in out.items()}


def table(results: dict) -> str:
    lines = [f"{'scenario':<14} {'variant':<9} {'figure':<9} {'min':>8} {'median':>8} {'max':>8}   (ms)"]
    for scenario, data in results["scenarios"].items():
        for variant in ("agent", "baseline"):
            for fig in ("local_ms", "http_ms", "reach_ms", "total_ms"):
                s = data[variant][fig]
                lines.append(f"{scenario:<14} {variant:<9} {fig[:-3]:<9} {s['min']:8.2f} {s['median']:8.2f} {s['max']:8.2f}")
    lines.append("")
    for key, value in results["ratios"].items():
        lines.append(f"{key:<52} {value:8.2f}")
    if results.get("restart"):
        lines += ["", f"{'restart: live runs':<20} {'agent: adopted in (ms)':>24}   baseline (before; vantage6 4.x)"]
        for r in results["restart"]:
            lines.append(f"{r['n']:<20} {r['adopt_ms']:>24.0f}   {r['baseline']}")
    if results.get("load"):
        lines += ["", f"{'load: tasks at once':<20} {'completed':>10} {'seconds':>9}   baseline (issue): "
                      f"{results['load_baseline']}"]
        for r in results["load"]:
            lines.append(f"{r['tasks']:<20} {r['completed']:>10} {r['seconds']:>9.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: 3 samples, 10 live runs")
    ap.add_argument("--samples", type=int, default=None, help="samples per variant and scenario (default 30)")
    ap.add_argument("--live", type=int, default=None, help="runs already live in the second scenario (default 200)")
    ap.add_argument("--restart", default=None, help="live runs per restart scenario, comma-separated "
                                                    "(default 1,50,200; quick: 1,3; 'none' skips)")
    ap.add_argument("--load", default=None, help="echo tasks sent at once per load scenario, comma-separated "
                                                 "(default 1,6,12; quick: none; 'none' skips)")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "wiring.json")
    args = ap.parse_args(argv)
    samples = args.samples or (3 if args.quick else 30)
    n_live = args.live if args.live is not None else (10 if args.quick else 200)
    restarts = _counts(args.restart, "1,3" if args.quick else "1,50,200")
    sends = _counts(args.load, "none" if args.quick else "1,6,12")


    progress, client = start("wiring")
    workdir = Path(tempfile.mkdtemp(prefix="vpnagent-bench-"))
    cluster = LocalCluster(workdir=workdir, prefix=f"vab{int(time.time()) % 10000}", n_nodes=2,
                           vpn_subnet="10.78.0.0/16", progress=progress, ports_per_node=max(100, 2 * n_live + 100))
    agent = prober = None
    try:
        cluster.up(start=[0])  # node 1: a real agent whose VPN client is the prober's vantage point
        cfg = load_config(cluster.nodes[1].config_path)
        agent = Agent(cfg, DockerRuntime(client))  # node 2: in this process, so its steps can be timed
        agent.start()
        a_vpn = client.containers.get(f"vpnagent-{cluster.nodes[0].name}-vpn")
        prober = Prober(int(a_vpn.attrs["State"]["Pid"]))
        bench = Bench(cluster, agent, prober, client)
        bench.sample_agent(*bench.new_runs(1)[0])  # warm-up (imports, first connection)
        results = {"machine": {"cpus": __import__("os").cpu_count(), "kernel": platform.release(),
                               "python": platform.python_version(),
                               "iptables": subprocess.run(["iptables", "--version"], capture_output=True,
                                                          text=True).stdout.strip(),
                               "docker": client.version().get("Version")},
                   "samples": samples, "live_runs": n_live, "scenarios": {}}
        progress(f"measuring {samples} samples each with no other run live")
        results["scenarios"]["first"] = measure(bench, samples, "first", progress)
        progress(f"starting {n_live} background runs")
        live = bench.make_live(n_live, progress)
        progress(f"measuring {samples} samples each with {n_live} runs live")
        results["scenarios"][f"{n_live}_live"] = measure(bench, samples, f"{n_live} live", progress)
        bench.drop_live(live)
        results["restart"] = []
        for n in restarts:
            agent, row = restart(bench, n, progress)
            results["restart"].append(row)
        first, loaded = results["scenarios"]["first"], results["scenarios"][f"{n_live}_live"]
        results["ratios"] = {
            "baseline/agent total, first run (x faster)": first["baseline"]["total_ms"]["median"] / first["agent"]["total_ms"]["median"],
            "baseline/agent local work, first run (x faster)": first["baseline"]["local_ms"]["median"] / first["agent"]["local_ms"]["median"],
            f"agent local, {n_live} live / first (target <= 1.5)": loaded["agent"]["local_ms"]["median"] / first["agent"]["local_ms"]["median"],
            f"agent total, {n_live} live / first": loaded["agent"]["total_ms"]["median"] / first["agent"]["total_ms"]["median"],
        }
        if sends:
            prober.close()
            prober = None
            agent.shutdown()
            agent = None
            cluster.down()
            results["load"] = load(progress, sends)
            results["load_baseline"] = "10 tasks on a shared limit of 8: all failed, after 144 s"
        report(args.json, results, table(results), progress)
        return 0
    finally:
        try:
            if prober:
                prober.close()
            if agent:
                agent.shutdown()
        finally:  # a failing shutdown must not leave the cluster's agents and server running
            cluster.down()
            shutil.rmtree(workdir, ignore_errors=True)


def _counts(value: str | None, default: str) -> list[int]:
    text = value or default
    return [] if text == "none" else [int(x) for x in text.split(",")]


if __name__ == "__main__":
    sys.exit(main())
