"""Data-plane benchmark: what algorithm-to-algorithm traffic costs on each path, in one run
on the same machine and images, over the networks nodes really have.

Networks (scenarios), each with a cluster and OpenVPN servers of its own:
  wan_1500   the headline: nodes reach the OpenVPN servers over a 1500-byte link behind a
             middlebox that drops every IP fragment (as many firewalls, NAT gateways and
             cloud load balancers do); vpnagent with its default profile
  lan_jumbo  a LAN bridge that passes fragments, vpnagent with the jumbo profile (tun-mtu
             9000, mssfix 0): faster, and only for a path that carries it

Paths (each endpoint is a real network namespace; the measuring tools run inside it with
`nsenter`, so every path is measured with the same binaries):
  a  direct      two containers on one bridge (the physical limit; measured once)
  b  raw         two OpenVPN clients, client-to-client through the server, no agent wiring
  c  vpnagent    two runs of one task on two nodes: holder → VPN client → OpenVPN server →
                 VPN client → DNAT → holder, with the agent's rules (isolation included)
  d  vantage6    two OpenVPN clients with vantage6 4.x's client flags (--connect-retry-max 1,
                 --ping-exit 30, no IPv6) against the same server settings (UDP,
                 AES-256-GCM, client-to-client, default buffers and MTU)

Figures, each min/median/max over the runs: TCP throughput with iperf3 (1 and 4 streams),
ping RTT (not for c: runs are reachable on their TCP ports only), TCP request/response
latency p50/p99 for 1 KiB messages, and CPU seconds of all OpenVPN processes per GB moved.
The JSON says which link MTU, tunnel MTU and fragment policy each figure was measured with.

    .venv/bin/python benchmarks/dataplane.py                        # 3 runs of 5 s, both networks
    .venv/bin/python benchmarks/dataplane.py --scenario wan_1500    # the headline only
    .venv/bin/python benchmarks/dataplane.py --quick                # smoke run (seconds), used by the tests
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import docker  # noqa: E402

from benchmarks.common import report, start  # noqa: E402
from test_algorithms.cluster import LocalCluster  # noqa: E402
from test_algorithms.middlebox import FragmentDropper, host_veth  # noqa: E402
from vpnagent.image_recipes import tar_context  # noqa: E402
from vpnagent.netns import Netns  # noqa: E402

BENCH_IMAGE = "vpnagent/bench-peer:latest"
IPERF_PORT, ECHO_PORT = 5201, 8888
ECHO = r"""
import socket, threading, sys
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", int(sys.argv[1]))); srv.listen(16)
def serve(c):
    with c:
        f = c.makefile("rb")
        for line in f:
            c.sendall(line)
while True:
    c, _ = srv.accept(); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""
REQREP = r"""
import json, socket, sys, time
ip, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
msg = b"x" * 1023 + b"\n"
t_end = time.monotonic() + 20
while True:
    try:
        s = socket.create_connection((ip, port), timeout=3); break
    except OSError:
        if time.monotonic() > t_end: raise
        time.sleep(0.05)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
f = s.makefile("rb"); rtts = []
for _ in range(n):
    t = time.perf_counter(); s.sendall(msg)
    if f.readline() != msg: raise SystemExit("bad echo")
    rtts.append((time.perf_counter() - t) * 1e3)
rtts.sort()
print(json.dumps({"p50": rtts[len(rtts) // 2], "p99": rtts[min(len(rtts) - 1, int(len(rtts) * 0.99))]}))
"""


class BenchError(RuntimeError):
    pass


def openvpn_cpu_seconds() -> float:
    """utime+stime of every openvpn process on the machine (server and clients)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        if name == "openvpn":
            fields = stat[stat.rindex(")") + 2:].split()
            total += int(fields[11]) + int(fields[12])
    return total / tick


@dataclass
class Path_:
    key: str
    label: str
    src_pid: int
    dst_pid: int
    dst_ip: str
    iperf_port: int
    echo_port: int
    pingable: bool = True


def ns_run(pid: int, argv: list[str], timeout: float) -> str:
    proc = subprocess.run(["nsenter", f"--net=/proc/{pid}/ns/net", "--", *argv], capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        raise BenchError(f"{argv[0]} failed: {(proc.stderr or proc.stdout).strip()[-400:]}")
    return proc.stdout


def start_servers(pid: int, procs: list) -> None:
    """iperf3 and the echo server inside the destination namespace (host binaries)."""
    procs.append(subprocess.Popen(["nsenter", f"--net=/proc/{pid}/ns/net", "--", "iperf3", "-s", "-p", str(IPERF_PORT)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    procs.append(subprocess.Popen(["nsenter", f"--net=/proc/{pid}/ns/net", "--", sys.executable, "-c", ECHO,
                                   str(ECHO_PORT)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))


def measure(p: Path_, runs: int, seconds: int, messages: int) -> dict:
    out: dict[str, list[float]] = {"tcp_1_mbit": [], "tcp_4_mbit": [], "ping_ms": [], "rr_p50_ms": [],
                                   "rr_p99_ms": [], "cpu_s_per_gb": [], "machine_cpu_s_per_gb": []}
    for _ in range(runs):
        for streams in (1, 4):
            cpu0, busy0 = openvpn_cpu_seconds(), cpu_busy()[0]
            raw = ns_run(p.src_pid, ["iperf3", "-c", p.dst_ip, "-p", str(p.iperf_port), "-t", str(seconds),
                                     "-P", str(streams), "-J", "--connect-timeout", "5000"], timeout=seconds + 60)
            cpu = openvpn_cpu_seconds() - cpu0
            # every CPU's busy time, kernel forwarding included: where the machine is the limit,
            # throughput goes as the inverse of this
            busy = (cpu_busy()[0] - busy0) / os.sysconf("SC_CLK_TCK")
            end = json.loads(raw)["end"]["sum_received"]
            out[f"tcp_{streams}_mbit"].append(end["bits_per_second"] / 1e6)
            if streams == 1:
                out["machine_cpu_s_per_gb"].append(busy / (end["bytes"] / 1e9))
                if p.key != "a":
                    out["cpu_s_per_gb"].append(cpu / (end["bytes"] / 1e9))
        if p.pingable:
            text = ns_run(p.src_pid, ["ping", "-q", "-c", "20", "-i", "0.02", "-W", "2", p.dst_ip], timeout=30)
            out["ping_ms"].append(float(text.rsplit("=", 1)[1].split("/")[1]))
        rr = json.loads(ns_run(p.src_pid, [sys.executable, "-c", REQREP, p.dst_ip, str(p.echo_port), str(messages)],
                               timeout=120))
        out["rr_p50_ms"].append(rr["p50"])
        out["rr_p99_ms"].append(rr["p99"])
    return {k: ({"min": min(v), "median": statistics.median(v), "max": max(v), "n": len(v)} if v else None)
            for k, v in out.items()}


def cpu_busy() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs together, from /proc/stat."""
    fields = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def two_pairs(first: Path_, second: Path_, runs: int, seconds: int) -> dict:
    """Aggregate single-stream throughput of two node pairs sending at the same time,
    against one pair alone, and how busy the machine's CPUs were meanwhile (1.0 = every
    core busy: then no server layout can add throughput)."""
    def iperf(p: Path_) -> subprocess.Popen:
        return subprocess.Popen(["nsenter", f"--net=/proc/{p.src_pid}/ns/net", "--", "iperf3", "-c", p.dst_ip, "-p",
                                 str(p.iperf_port), "-t", str(seconds), "-J"], stdout=subprocess.PIPE, text=True)

    def mbit(proc: subprocess.Popen) -> float | None:
        """Mbit/s, or None when the iperf3 server could not take the test yet: not listening
        yet, or still closing the previous test ("busy"; it serves one at a time). With -J
        iperf3 says so in the JSON and still exits 0."""
        out, _ = proc.communicate(timeout=seconds + 60)
        data = json.loads(out)
        if any(why in str(data.get("error", "")) for why in ("unable to connect", "server is busy")):
            return None
        if "sum_received" not in data.get("end", {}):
            raise BenchError(f"iperf3 to {proc.args[5]}: {data.get('error') or 'no result'}")
        return data["end"]["sum_received"]["bits_per_second"] / 1e6

    def measured(*pair: Path_) -> float:
        """Sum over the pairs sending at the same time; asked again while a server is not
        listening yet (bounded), so the figure is never of a refused connection."""
        for _ in range(20):
            results = [mbit(proc) for proc in [iperf(p) for p in pair]]
            if None not in results:
                return sum(results)
            time.sleep(0.25)
        raise BenchError(f"iperf3 could not connect to {[p.dst_ip for p in pair]} for 20 attempts")

    def busy_since(mark: tuple[int, int]) -> float:
        now = cpu_busy()
        return (now[0] - mark[0]) / max(1, now[1] - mark[1])

    alone, together, busy_one, busy_two = [], [], [], []
    for _ in range(runs):
        mark = cpu_busy()
        alone.append(measured(first))
        busy_one.append(busy_since(mark))
        mark = cpu_busy()
        together.append(measured(first, second))
        busy_two.append(busy_since(mark))
    one, both = statistics.median(alone), statistics.median(together)
    return {"one_pair_mbit": one, "two_pairs_mbit": both, "ratio": both / one,
            "cpu_busy_one_pair": statistics.median(busy_one), "cpu_busy_two_pairs": statistics.median(busy_two)}


def build_bench_image(client: docker.DockerClient) -> None:
    """The echo image plus an exposed iperf3 port, so a run forwards both (metadata only)."""
    dockerfile = (b"FROM vpnagent/echo:latest\nEXPOSE 5201 8888\nLABEL p5201=iperf p8888=echo\n"
                  b"CMD [\"sleep\", \"3600\"]\n")
    client.images.build(fileobj=tar_context({"Dockerfile": dockerfile}), custom_context=True, tag=BENCH_IMAGE,
                        rm=True, pull=False)


def raw_client(client, cluster, name: str, ovpn: str, workdir: Path, extra: list[str]):
    d = workdir / name
    d.mkdir()
    (d / "client.ovpn").write_text(ovpn)
    os.chmod(d / "client.ovpn", 0o600)
    c = client.containers.run("vpnagent/vpn:latest", ["openvpn", "--config", "/vpn/client.ovpn", *extra], detach=True,
                              name=f"{cluster.prefix}-{name}", cap_add=["NET_ADMIN"],
                              devices=["/dev/net/tun:/dev/net/tun"], volumes={str(d): {"bind": "/vpn", "mode": "ro"}},
                              network=cluster.wan_network, labels={"vpnagent.node": f"{cluster.prefix}-bench"})
    c.reload()
    pid = int(c.attrs["State"]["Pid"])
    for _ in range(1500):
        addrs = Netns(pid).ipv4_addresses("tun0").get("tun0")
        if addrs:
            return c, pid, str(addrs[0].ip)
        time.sleep(0.02)
    raise BenchError(f"raw client {name} got no tun0: {c.logs(tail=10).decode(errors='replace')}")


def vantage6_server(client, cluster, workdir: Path):
    from server_ext.ovpn import VANTAGE6_PROFILE, VPNSettings
    from server_ext.pki import PKI
    from server_ext.vpnserver import OpenVPNFiles, OpenVPNServer

    import ipaddress

    name = f"{cluster.prefix}-v6ovpn"
    settings = VPNSettings(subnet=ipaddress.IPv4Network(cluster.vpn_subnet), remote_host=name,
                           profile=VANTAGE6_PROFILE)
    files = OpenVPNFiles(workdir / "v6" / "openvpn", PKI(cluster.workdir / "server" / "pki"), settings)
    server = OpenVPNServer(files, name=name, network=cluster.wan_network, client=client)
    server.ensure_running()
    return server


def multi_server(client: docker.DockerClient, cluster: LocalCluster, workdir: Path, processes: int,
                 profile: dict | None):
    """A second OpenVPN server like the cluster's (same profile) but with `processes`
    processes, for the aggregate figure."""
    from server_ext import profile_from_config
    from server_ext.ovpn import VPNSettings
    from server_ext.pki import PKI
    from server_ext.vpnserver import OpenVPNFiles, OpenVPNServer

    import ipaddress

    name = f"{cluster.prefix}-mpovpn"
    settings = VPNSettings(subnet=ipaddress.IPv4Network(cluster.vpn_subnet), remote_host=name, processes=processes,
                           profile=profile_from_config(profile))
    files = OpenVPNFiles(workdir / "mp" / "openvpn", PKI(cluster.workdir / "server" / "pki"), settings)
    server = OpenVPNServer(files, name=name, network=cluster.wan_network, client=client)
    server.ensure_running()
    return server


def rerender_for(server, ovpn: str, node: dict, vpn_ip: str | None = None) -> str:
    """The node's certificate and key in a client config for `server` (its remote and
    profile); the server gets the node's static IP entry (`vpn_ip`, default the node's)."""
    import re

    from server_ext.ovpn import render_client

    block = {tag: re.search(rf"<{tag}>\n(.*?)\n</{tag}>", ovpn, re.S).group(1)
             for tag in ("ca", "cert", "key", "tls-crypt-v2")}
    ip = vpn_ip or node["vpn_ip"]
    server.files.write_ccd(f"node-{node['id']}", ip)
    return render_client(server.files.settings, block["ca"], block["cert"], block["key"], block["tls-crypt-v2"],
                         index=server.files.settings.process_of(ip))


def free_udp_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def via_relay(ovpn: str, relay_host: str | None, relay_port: dict[int, int]) -> str:
    """A client config whose `remote` is the relay in front of its server (unchanged without)."""
    if relay_host is None:
        return ovpn
    lines = []
    for line in ovpn.splitlines():
        if line.startswith("remote "):
            port = int(line.split()[2])
            line = f"remote {relay_host} {relay_port[port]}"
        lines.append(line)
    return "\n".join(lines) + "\n"


V6_FLAGS = ["--connect-retry-max", "1", "--ping-exit", "30", "--pull-filter", "ignore", "ifconfig-ipv6",
            "--pull-filter", "ignore", "route-ipv6"]


@dataclass(frozen=True)
class Scenario:
    """The network the nodes reach the OpenVPN server over, and vpnagent's profile on it."""

    key: str
    label: str
    link_mtu: int  # of the network between the VPN clients and the servers
    drops_fragments: bool  # a middlebox in front of every OpenVPN server (test_algorithms/middlebox.py)
    profile: dict | None  # server openvpn_profile for (b), (c) and the multi-process server; None: the default
    node_extra: dict
    delay_ms: float = 0.0  # one way, between every node and its OpenVPN server (test_algorithms/wanrelay.py)
    loss: float = 0.0  # per datagram, each direction


SCENARIOS = {
    # the headline: an internet path as it often is (1500 bytes, fragments dropped), defaults
    "wan_1500": Scenario("wan_1500", "1500-byte WAN dropping IP fragments, default profile", 1500, True, None, {}),
    # the same between hospitals: 20 ms round trip to the server and 0.1 % loss each way (a
    # userspace relay: this kernel has no netem)
    "wan_20ms": Scenario("wan_20ms", "1500-byte WAN dropping fragments, 20 ms RTT to the server, 0.1 % loss",
                         1500, True, None, {}, delay_ms=10.0, loss=0.001),
    # where a LAN carries jumbo datagrams (fragments pass): the tuned jumbo profile
    "lan_jumbo": Scenario("lan_jumbo", "LAN bridge (fragments pass), jumbo profile tun-mtu 9000", 1500, False,
                          {"tun_mtu": 9000, "mssfix": 0, "sndbuf": 524288, "rcvbuf": 524288, "fast_io": True},
                          {"isolated_mtu": 9000, "tunnel_mtu": 9000}),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 run of 1 s, 200 messages")
    ap.add_argument("--runs", type=int, default=None)
    ap.add_argument("--seconds", type=int, default=None)
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "dataplane.json")
    ap.add_argument("--scenario", choices=sorted(SCENARIOS), action="append",
                    help="network scenario(s) to measure (default: all; wan_1500 is the headline)")
    ap.add_argument("--plot", type=Path, default=ROOT / "benchmarks" / "results" / "dataplane.png",
                    help="PNG of throughput and latency by path")
    ap.add_argument("--plot-only", type=Path, metavar="JSON", help="only draw the plot of an earlier report")
    ap.add_argument("--no-pairs", action="store_true", help="skip the two-pairs-at-once figures (profile sweeps)")
    ap.add_argument("--node-extra", type=json.loads, default=None,
                    help='more node config keys for (c) in every scenario, e.g. \'{"isolated_mtu": 9000}\'')
    ap.add_argument("--profile", type=json.loads, default=None,
                    help='override vpnagent\'s profile for (b), (c) in every scenario, e.g. \'{"sndbuf": 0}\'')
    args = ap.parse_args(argv)
    if args.plot_only:
        plot(json.loads(args.plot_only.read_text()), args.plot)
        print(f"plot written to {args.plot}")
        return 0
    runs = args.runs or (1 if args.quick else 3)
    seconds = args.seconds or (1 if args.quick else 5)
    messages = 200 if args.quick else 2000
    if shutil.which("iperf3") is None:
        raise SystemExit("iperf3 is not installed: apt-get install iperf3 (scripts/setup.sh does)")
    progress, client = start("dataplane")
    build_bench_image(client)
    results = {"machine": {"cpus": os.cpu_count(), "kernel": os.uname().release,
                           "docker": client.version().get("Version")}, "profile_override": args.profile,
               "runs": runs, "seconds": seconds, "messages": messages, "headline": "wan_1500",
               "direct": direct_bridge(client, progress, runs, seconds, messages), "scenarios": {}}
    for key in args.scenario or list(SCENARIOS):
        sc = SCENARIOS[key]
        if args.profile or args.node_extra:
            sc = Scenario(sc.key, f"{sc.label} + {args.profile or {}} {args.node_extra or ''}".rstrip(), sc.link_mtu,
                          sc.drops_fragments, {**(sc.profile or {}), **(args.profile or {})} or None,
                          {**sc.node_extra, **(args.node_extra or {})}, sc.delay_ms, sc.loss)
        results["scenarios"][key] = measure_scenario(client, sc, progress, runs, seconds, messages,
                                                     pairs=not args.no_pairs)
    report(args.json, results, table(results), progress)
    plot(results, args.plot)
    progress(f"plot written to {args.plot}")
    return 0


def direct_bridge(client: docker.DockerClient, progress, runs: int, seconds: int, messages: int) -> dict:
    """(a) two containers on one internal bridge: the machine's limit, for every scenario."""
    net = client.networks.create(f"vdp-direct-{int(time.time()) % 10000}", driver="bridge", internal=True)
    pair, procs = [], []
    try:
        for i in range(2):
            c = client.containers.run("vpnagent/algo-base:latest", ["sleep", "infinity"], detach=True,
                                      name=f"{net.name}-{i}", network=net.name)
            c.reload()
            pair.append(c)
        dst_ip = pair[1].attrs["NetworkSettings"]["Networks"][net.name]["IPAddress"]
        p = Path_("a", "direct bridge", int(pair[0].attrs["State"]["Pid"]), int(pair[1].attrs["State"]["Pid"]),
                  dst_ip, IPERF_PORT, ECHO_PORT)
        start_servers(p.dst_pid, procs)
        time.sleep(0.5)
        progress("measuring (a) direct bridge")
        return {"label": p.label, "mtu": {"link": 1500, "tunnel": None}, **measure(p, runs, seconds, messages)}
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(5)
        for c in pair:
            c.remove(force=True)
        net.remove()


def measure_scenario(client: docker.DockerClient, sc: Scenario, progress, runs: int, seconds: int,
                     messages: int, pairs: bool = True) -> dict:
    """(b), (c), (d) and the aggregate figures over one network scenario, each on a cluster
    and OpenVPN servers of its own, removed afterwards."""
    progress(f"scenario {sc.key}: {sc.label}")
    if sc.delay_ms:  # each request waits two round trips to the server: keep a run to about 15 s
        messages = min(messages, max(100, int(15_000 / (4 * sc.delay_ms))))
    workdir = Path(tempfile.mkdtemp(prefix=f"vpnagent-dataplane-{sc.key}-"))
    prefix = f"vdp{int(time.time()) % 10000}"
    # made here, before the cluster: with a relay the nodes' `remote` is its address on it
    wan = client.networks.create(f"{prefix}-wan", driver="bridge", internal=True, labels={"vpnagent.demo": prefix},
                                 options={"com.docker.network.driver.mtu": str(sc.link_mtu)})
    gateway = wan.attrs["IPAM"]["Config"][0]["Gateway"]
    relays: list[subprocess.Popen] = []
    server_extra = {"openvpn_profile": sc.profile} if sc.profile else {}
    if sc.delay_ms:
        server_extra["openvpn_remote_host"] = gateway
    cluster = LocalCluster(workdir=workdir, prefix=prefix, n_nodes=2, vpn_subnet="10.79.0.0/16", progress=progress,
                           wan_mtu=sc.link_mtu, server_extra=server_extra, node_extra=sc.node_extra)
    procs: list[subprocess.Popen] = []
    extra_containers = []
    boxes: list[FragmentDropper] = []

    def on_the_path(container_name: str, ports: list[int]) -> dict[int, int]:
        """Put an OpenVPN server behind the scenario's network: the middlebox on its veth,
        and a relay on the host per port (relay port -> server port; equal for the cluster's
        own server, whose config names the relay)."""
        c = client.containers.get(container_name)
        if sc.drops_fragments:
            boxes.append(FragmentDropper(host_veth(int(c.attrs["State"]["Pid"]))).install())
        if not sc.delay_ms:
            return {p: p for p in ports}
        ip = c.attrs["NetworkSettings"]["Networks"][wan.name]["IPAddress"]
        mapping = {}
        for p in ports:
            listen = p if container_name == cluster.openvpn_container else free_udp_port(gateway)
            relays.append(subprocess.Popen([sys.executable, "-m", "test_algorithms.wanrelay", "--listen",
                                            f"{gateway}:{listen}", "--upstream", f"{ip}:{p}", "--delay-ms",
                                            str(sc.delay_ms), "--loss", str(sc.loss)], cwd=ROOT,
                                           stdout=subprocess.PIPE, text=True))
            mapping[listen] = p
        return mapping

    try:
        cluster.up(start=[])  # the middlebox goes in before any node connects (and probes its path)
        on_the_path(cluster.openvpn_container, [1194])
        for node in cluster.nodes:
            cluster.start_node(node)
        cluster.wait_connected()
        paths: list[Path_] = []

        # d runs against a second OpenVPN server with vantage6's settings, so that it stays
        # the baseline whatever vpnagent's default profile becomes
        v6 = vantage6_server(client, cluster, workdir)
        extra_containers.append(client.containers.get(v6.name))
        v6_relay = {server: relay for relay, server in on_the_path(v6.name, [1194]).items()}

        # the same profile with one OpenVPN process per core, for the aggregate figure
        mp = multi_server(client, cluster, workdir, max(2, os.cpu_count() or 2), sc.profile)
        extra_containers.append(client.containers.get(mp.name))
        mp_relay = {server: relay for relay, server in
                    on_the_path(mp.name, [1194 + i for i in range(mp.files.settings.processes)]).items()}
        mp_ends = []

        # b and d: raw OpenVPN clients with certificates issued by server_ext
        for key, label, flags in (("b", "raw OpenVPN client-to-client", []),
                                  ("d", "vantage6 4.x defaults", V6_FLAGS), ("m", "multi-process", [])):
            ends = []
            for i in range(2 if key == "d" else 4):  # b, m: a second pair for the aggregate figure
                node = cluster.add_node(f"{cluster.prefix}{key}{i}")
                api = cluster.node_api(node)
                ovpn = api.get_vpn_config()
                if key == "d":
                    ovpn = via_relay(rerender_for(v6, ovpn, api.node_self()), gateway if sc.delay_ms else None,
                                     v6_relay)
                if key == "m":  # spread as the server's allocator does: node i on process i % n
                    net = mp.files.settings.slices[i % mp.files.settings.processes]
                    ovpn = via_relay(rerender_for(mp, ovpn, api.node_self(), str(net.network_address + 2 + i)),
                                     gateway if sc.delay_ms else None, mp_relay)
                c, pid, ip = raw_client(client, cluster, f"{key}{i}", ovpn, workdir, flags)
                extra_containers.append(c)
                ends.append((pid, ip))
            if key == "m":
                mp_ends = ends
                continue
            paths.append(Path_(key, label, ends[0][0], ends[1][0], ends[1][1], IPERF_PORT, ECHO_PORT))
            if key == "b":
                second_pair = Path_("b2", "raw, second pair", ends[2][0], ends[3][0], ends[3][1], IPERF_PORT, ECHO_PORT)

        # c: two runs of one task through the agents
        http = cluster.user_session()
        task = http.post(f"{cluster.server_url}/task", timeout=10, json={
            "collaboration_id": cluster.collaboration_id, "image": BENCH_IMAGE,
            "organizations": [n.organization_id for n in cluster.nodes], "input": None}).json()
        live = {}
        deadline = time.monotonic() + 60
        while len(live) < 2 and time.monotonic() < deadline:
            for n in cluster.nodes:
                for r in (n.status() or {}).get("runs", []):
                    if r["task_id"] == task["id"] and len(r["ports"]) == 2:
                        live[n.name] = r
            time.sleep(0.1)
        if len(live) < 2:
            raise BenchError("the two benchmark runs did not become live")
        dst = live[cluster.nodes[1].name]
        hpid = {n.name: int(client.containers.get(live[n.name]["holder_id"]).attrs["State"]["Pid"]) for n in cluster.nodes}
        vport = {p["container_port"]: p["vpn_port"] for p in dst["ports"]}
        paths.append(Path_("c", "vpnagent", hpid[cluster.nodes[0].name], hpid[cluster.nodes[1].name],
                           cluster.nodes[1].status()["vpn"]["vpn_ip"], vport[IPERF_PORT], vport[ECHO_PORT],
                           pingable=False))
        paths.sort(key=lambda p: p.key)
        time.sleep(1.0)  # let the agents follow the task family (peer rules)

        vpn = cluster.nodes[0].status()["vpn"]
        out = {"label": sc.label, "profile": sc.profile or "default",
               "messages": messages,
               "path": {"rtt_to_server_ms": 2 * sc.delay_ms, "loss_each_way": sc.loss,
                        "how": "userspace UDP relay (no netem on this kernel)" if sc.delay_ms else "none"},
               "mtu": {"link": sc.link_mtu, "fragments": "dropped" if sc.drops_fragments else "pass",
                       "tunnel_c": vpn.get("tunnel_mtu"), "tunnel_c_source": vpn.get("tunnel_mtu_source"),
                       "server_tun_mtu": (sc.profile or {}).get("tun_mtu", 1500)},
               "paths": {}}
        for p in paths:
            start_servers(p.dst_pid, procs)
        time.sleep(0.5)
        for p in paths:
            progress(f"{sc.key}: measuring ({p.key}) {p.label}")
            out["paths"][p.key] = {"label": p.label, **measure(p, runs, seconds, messages)}
        out["fragments_dropped"] = sum(box.dropped() for box in boxes)
        med = {k: v["tcp_1_mbit"]["median"] for k, v in out["paths"].items()}
        out["ratios"] = {"c/b tcp 1 stream": med["c"] / med["b"], "c/d tcp 1 stream": med["c"] / med["d"],
                         "c/d rr p99": (out["paths"]["c"]["rr_p99_ms"]["median"]
                                        / out["paths"]["d"]["rr_p99_ms"]["median"])}
        if not pairs:
            return out
        start_servers(second_pair.dst_pid, procs)
        time.sleep(0.3)
        progress(f"{sc.key}: measuring two raw pairs at once (one OpenVPN server process)")
        out["two_pairs"] = two_pairs([p for p in paths if p.key == "b"][0], second_pair, runs, seconds)
        m_pairs = [Path_(f"m{k}", f"multi-process pair {k}", mp_ends[2 * k][0], mp_ends[2 * k + 1][0],
                         mp_ends[2 * k + 1][1], IPERF_PORT, ECHO_PORT) for k in range(2)]
        for p in m_pairs:
            start_servers(p.dst_pid, procs)
        time.sleep(0.3)
        progress(f"{sc.key}: measuring two raw pairs at once ({mp.files.settings.processes} OpenVPN server processes)")
        out["two_pairs_multi"] = {"processes": mp.files.settings.processes,
                                  **two_pairs(m_pairs[0], m_pairs[1], runs, seconds)}
        return out
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(5)
        for c in extra_containers:
            try:
                c.remove(force=True)
            except docker.errors.NotFound:
                pass
        for box in boxes:
            box.remove()
        for proc in relays:
            proc.terminate()
            proc.wait(10)
        cluster.down()  # removes the wan network too
        shutil.rmtree(workdir, ignore_errors=True)


def plot(results: dict, path: Path) -> None:
    """Single-stream throughput and request/response p99 by path, one bar per network
    scenario (the direct bridge is the same in all), medians with min-max whiskers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = list(results["scenarios"])
    keys = ["a", "b", "c", "d"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))

    def stat(scenario: str, key: str, field: str) -> dict | None:
        return (results["direct"] if key == "a" else results["scenarios"][scenario]["paths"][key]).get(field)

    for ax, field, ylabel in ((ax1, "tcp_1_mbit", "TCP throughput, 1 stream, Mbit/s (log)"),
                              (ax2, "rr_p99_ms", "1 KiB request/response p99, ms (log)")):
        width = 0.8 / len(scenarios)
        for j, sc in enumerate(scenarios):
            stats = [stat(sc, k, field) for k in keys]
            med = [s["median"] if s else 0 for s in stats]
            err = [[s["median"] - s["min"] if s else 0 for s in stats], [s["max"] - s["median"] if s else 0 for s in stats]]
            xs = [i + (j - (len(scenarios) - 1) / 2) * width for i in range(len(keys))]
            ax.bar(xs, med, width, yerr=err, capsize=3, label=results["scenarios"][sc]["label"])
        ax.set_xticks(range(len(keys)))
        ax.set_xticklabels([f"({k})" for k in keys])
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7)
    ax1.set_yscale("log")
    ax2.set_yscale("log")  # a 20 ms path next to sub-millisecond ones
    ax1.set_title("Throughput by path and network")
    ax2.set_title("Latency by path and network")
    fig.text(0.01, 0.01, "(a) direct bridge   (b) raw OpenVPN client-to-client   (c) vpnagent   (d) vantage6 4.x "
                         "defaults", fontsize=8)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(results: dict) -> str:
    cols = ["tcp_1_mbit", "tcp_4_mbit", "ping_ms", "rr_p50_ms", "rr_p99_ms", "cpu_s_per_gb", "machine_cpu_s_per_gb"]

    def row(key: str, v: dict) -> str:
        cells = [f"{'n/a':>26}" if v.get(c) is None else
                 f" {v[c]['min']:.1f}/{v[c]['median']:.1f}/{v[c]['max']:.1f}".rjust(26) for c in cols]
        return f"({key}) {v['label']:<30}" + "".join(cells)

    lines = [f"{'path':<34}" + "".join(f"{c:>26}" for c in cols),
             f"{'':<34}" + "".join(f"{'min/median/max':>26}" for _ in cols), row("a", results["direct"])]
    for key, sc in results["scenarios"].items():
        mtu = sc["mtu"]
        head = "HEADLINE " if key == results.get("headline") else ""
        lines += ["", f"{head}{key}: {sc['label']}; link MTU {mtu['link']}, fragments {mtu['fragments']}, server "
                      f"tun-mtu {mtu['server_tun_mtu']}, (c) tunnel MTU {mtu['tunnel_c']} ({mtu['tunnel_c_source']}); "
                      f"fragments dropped by the middlebox: {sc['fragments_dropped']}"]
        lines += [row(k, v) for k, v in sc["paths"].items()]
        lines += [f"  {k:<22} {v:6.3f}" for k, v in sc["ratios"].items()]
        for tp_key in ("two_pairs", "two_pairs_multi"):
            tp = sc.get(tp_key)
            if tp:
                what = (f"{tp['processes']} OpenVPN server processes" if tp_key == "two_pairs_multi"
                        else "1 OpenVPN server process")
                lines.append(f"  two raw pairs at once: {tp['two_pairs_mbit']:.0f} Mbit/s vs one pair "
                             f"{tp['one_pair_mbit']:.0f} (x{tp['ratio']:.2f}; {what}); CPUs busy "
                             f"{tp.get('cpu_busy_one_pair', 0):.0%} with one pair, {tp.get('cpu_busy_two_pairs', 0):.0%} "
                             "with two")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
