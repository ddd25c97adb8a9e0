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
  e  wireguard   two raw WireGuard peers, no hub: Debian's wireguard-go (userspace; these
                 machines have no kernel WireGuard) in containers of the VPN image on the
                 same network as the OpenVPN clients, wg0 MTU 1420, keepalive 25 s, keys made
                 with `cryptography` (benchmarks/wgpeers.py). The fragment dropper sits on
                 each peer's veth as well: it used to sit on the OpenVPN servers' veths only,
                 which peer-to-peer UDP never crosses
  f  vpnagent p2p  as c, on a cluster of its own whose server has `data_plane: wireguard`;
                 measured only when every node reports that data plane in its status
                 (reported as failed, with the reason, otherwise: the run then exits 1)

`--paths` picks paths (default DEFAULT_PATHS; b and d need c's cluster, which is brought up
for them). Clusters, OpenVPN servers and peers are per scenario and removed afterwards.

Figures, each min/median/max over the runs: TCP throughput with iperf3 (1 and 4 streams),
ping RTT (not for c and f: runs are reachable on their TCP ports only), TCP request/response
latency p50/p99 for 1 KiB messages, CPU seconds of all OpenVPN processes per GB moved (OpenVPN
paths), and whole-machine CPU seconds per GB (every CPU's non-idle time from /proc/stat over
the one-stream iperf run, in USER_HZ: the kernel, wireguard-go and everything else included;
on a shared machine other work counts too). Two pairs at once (b, c, e, f): the aggregate
single-stream throughput of two disjoint pairs sending together against one pair alone.
The hub (c), vantage6 (d) and WireGuard (e, f) are put side by side, and issue 18's targets
are computed as ratios of f (e while f is absent) to c: one stream >= 1.4x, whole-machine
CPU per GB <= 0.6x; the JSON names the paths each ratio used.
The JSON says which link MTU, tunnel MTU and fragment policy each figure was measured with.

    .venv/bin/python benchmarks/dataplane.py                        # 3 runs of 5 s, both networks
    .venv/bin/python benchmarks/dataplane.py --scenario wan_1500    # the headline only
    .venv/bin/python benchmarks/dataplane.py --quick                # smoke run (seconds), used by the tests
    .venv/bin/python benchmarks/dataplane.py --quick --scenario wan_1500 --paths e   # WireGuard peers only
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
    openvpn: bool = True  # an OpenVPN path: its OpenVPN processes' CPU per GB is reported


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
            cpu0, busy0 = openvpn_cpu_seconds(), cpu_busy()[0]  # whole machine: every process, the kernel too
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
                if p.openvpn:
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
    """(busy, total) jiffies (USER_HZ) of all CPUs together, from /proc/stat: user, nice,
    system, idle, iowait, irq, softirq, steal; guest and guest_nice are already in user and
    nice, so they are not added again."""
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:9]]
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
        yet, or still closing the previous test ("busy", or it resets the new control
        connection; it serves one test at a time). With -J iperf3 says so in the JSON and
        still exits 0."""
        out, _ = proc.communicate(timeout=seconds + 60)
        data = json.loads(out)
        if any(why in str(data.get("error", "")) for why in ("unable to connect", "server is busy",
                                                             "unable to receive control message")):
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


ALL_PATHS = ("a", "b", "c", "d", "e", "f")
# What a run measures without --paths. Path f needs the node side of `data_plane: wireguard`;
# where it cannot run yet, drop "f" here (the report then takes e for the WireGuard targets).
DEFAULT_PATHS = ("a", "b", "c", "d", "e", "f")
PAIR_PATHS = ("b", "c", "e", "f")  # the two-pairs-at-once figure
WG_SUBNET = "10.78.0.0/24"  # tunnel addresses of the raw WireGuard peers (e)


@dataclass(frozen=True)
class ClusterPath:
    """A path through vpnagent itself: a LocalCluster of its own with these server settings,
    runs of one task per node pair. `data_plane`: what every node must report carrying its
    tunnel before the path is measured (None: not checked, OpenVPN is the default)."""

    key: str
    label: str
    server_extra: dict
    data_plane: str | None
    vpn_subnet: str


CLUSTER_PATHS = {
    "c": ClusterPath("c", "vpnagent (OpenVPN hub)", {}, None, "10.79.0.0/16"),
    "f": ClusterPath("f", "vpnagent p2p (WireGuard)", {"data_plane": "wireguard"}, "wireguard", "10.81.0.0/16"),
}
TARGETS = {  # issue 18: WireGuard (f, else e) against the OpenVPN hub (c)
    "tcp_1_stream": {"field": "tcp_1_mbit", "target": ">= 1.4", "met": lambda r: r >= 1.4},
    "machine_cpu_s_per_gb": {"field": "machine_cpu_s_per_gb", "target": "<= 0.6", "met": lambda r: r <= 0.6},
}


def parse_paths(values: list[str] | None) -> list[str]:
    if not values:
        return list(DEFAULT_PATHS)
    keys = [k.strip() for v in values for k in v.split(",") if k.strip()]
    bad = sorted(set(keys) - set(ALL_PATHS))
    if bad:
        raise SystemExit(f"--paths: unknown path(s) {', '.join(bad)}; choose from {','.join(ALL_PATHS)}")
    return [k for k in ALL_PATHS if k in keys]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 run of 1 s, 200 messages")
    ap.add_argument("--runs", type=int, default=None)
    ap.add_argument("--seconds", type=int, default=None)
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "dataplane.json")
    ap.add_argument("--scenario", choices=sorted(SCENARIOS), action="append",
                    help="network scenario(s) to measure (default: all; wan_1500 is the headline)")
    ap.add_argument("--paths", action="append", metavar="KEYS",
                    help=f"paths to measure, comma-separated or repeated (default: {','.join(DEFAULT_PATHS)})")
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
    paths = parse_paths(args.paths)
    runs = args.runs or (1 if args.quick else 3)
    seconds = args.seconds or (1 if args.quick else 5)
    messages = 200 if args.quick else 2000
    if shutil.which("iperf3") is None:
        raise SystemExit("iperf3 is not installed: apt-get install iperf3 (scripts/setup.sh does)")
    progress, client = start("dataplane")
    build_bench_image(client)
    results = {"machine": {"cpus": os.cpu_count(), "kernel": os.uname().release,
                           "docker": client.version().get("Version")}, "profile_override": args.profile,
               "runs": runs, "seconds": seconds, "messages": messages, "headline": "wan_1500", "paths": paths,
               "direct": direct_bridge(client, progress, runs, seconds, messages) if "a" in paths else None,
               "scenarios": {}}
    for key in args.scenario or list(SCENARIOS):
        sc = SCENARIOS[key]
        if args.profile or args.node_extra:
            sc = Scenario(sc.key, f"{sc.label} + {args.profile or {}} {args.node_extra or ''}".rstrip(), sc.link_mtu,
                          sc.drops_fragments, {**(sc.profile or {}), **(args.profile or {})} or None,
                          {**sc.node_extra, **(args.node_extra or {})}, sc.delay_ms, sc.loss)
        if set(paths) - {"a"}:
            results["scenarios"][key] = measure_scenario(client, sc, progress, runs, seconds, messages,
                                                         pairs=not args.no_pairs, paths=paths)
    report(args.json, results, table(results), progress)
    plot(results, args.plot)
    progress(f"plot written to {args.plot}")
    failed = {f"{sk}/{pk}": p["error"] for sk, sc in results["scenarios"].items()
              for pk, p in sc["paths"].items() if p.get("error")}
    for where, why in failed.items():
        progress(f"FAILED {where}: {why}")
    return 1 if failed else 0


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
                  dst_ip, IPERF_PORT, ECHO_PORT, openvpn=False)
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




class WanNet:
    """A network the scenario's traffic crosses (a bridge with the scenario's link MTU) and
    what the scenario puts on it. The fragment dropper (test_algorithms/middlebox.py) hooks
    the host side of one container's veth, both ways; the hub paths need it only on their
    OpenVPN server's veth (every packet passes it), but peer-to-peer UDP (e, f) never does,
    so each WireGuard endpoint gets a dropper on its own veth too. With a delay, a relay on
    the host stands between each client and its server (or between two peers)."""

    def __init__(self, client: docker.DockerClient, sc: "Scenario", name: str, prefix: str,
                 boxes: list[FragmentDropper], relays: list[subprocess.Popen]):
        import ipaddress

        self.client, self.sc, self.name, self.boxes, self.relays = client, sc, name, boxes, relays
        self.net = client.networks.create(name, driver="bridge", internal=True, labels={"vpnagent.demo": prefix},
                                          options={"com.docker.network.driver.mtu": str(sc.link_mtu)})
        cfg = self.net.attrs["IPAM"]["Config"][0]
        self.gateway, self.subnet = cfg["Gateway"], ipaddress.IPv4Network(cfg["Subnet"])

    def drop_fragments_at(self, container) -> None:
        """The middlebox on the host side of `container`'s interface on this network."""
        if not self.sc.drops_fragments:
            return
        container.reload()
        pid = int(container.attrs["State"]["Pid"])
        ifname = Netns(pid).interface_in(self.subnet)
        if ifname is None:
            raise BenchError(f"{container.name} has no interface in {self.subnet} ({self.name})")
        self.boxes.append(FragmentDropper(host_veth(pid, ifname)).install())

    def relay_to(self, ip: str, port: int, listen: int | None = None) -> int:
        """A relay on the host (gateway:listen -> ip:port) with the scenario's delay and loss."""
        listen = listen or free_udp_port(self.gateway)
        self.relays.append(subprocess.Popen([sys.executable, "-m", "test_algorithms.wanrelay", "--listen",
                                             f"{self.gateway}:{listen}", "--upstream", f"{ip}:{port}", "--delay-ms",
                                             str(self.sc.delay_ms), "--loss", str(self.sc.loss)], cwd=ROOT,
                                            stdout=subprocess.PIPE, text=True))
        return listen

    def server_on_path(self, container_name: str, ports: list[int], own: bool = False) -> dict[int, int]:
        """Put an OpenVPN server behind the scenario's network: the middlebox on its veth and
        a relay per port (relay port -> server port; equal for a cluster's own server, whose
        config names the relay)."""
        c = self.client.containers.get(container_name)
        self.drop_fragments_at(c)
        if not self.sc.delay_ms:
            return {p: p for p in ports}
        ip = c.attrs["NetworkSettings"]["Networks"][self.name]["IPAddress"]
        return {self.relay_to(ip, p, listen=p if own else None): p for p in ports}


def bring_up_cluster(sc: "Scenario", cp: ClusterPath, net: WanNet, workdir: Path, prefix: str, n_nodes: int,
                     progress, clusters: list[LocalCluster]) -> LocalCluster:
    """A LocalCluster on `net` with the scenario's profile and `cp`'s server settings, its
    OpenVPN server behind the middlebox before any node connects (and probes its path)."""
    server_extra = {**({"openvpn_profile": sc.profile} if sc.profile else {}), **cp.server_extra}
    if sc.delay_ms:  # the nodes' `remote` is the relay
        server_extra["openvpn_remote_host"] = net.gateway
    cluster = LocalCluster(workdir=workdir, prefix=prefix, n_nodes=n_nodes, vpn_subnet=cp.vpn_subnet,
                           progress=progress, wan_mtu=sc.link_mtu, server_extra=server_extra,
                           node_extra=sc.node_extra)
    clusters.append(cluster)
    assert cluster.wan_network == net.name
    cluster.up(start=[])
    net.server_on_path(cluster.openvpn_container, [1194], own=True)
    for node in cluster.nodes:
        cluster.start_node(node)
    cluster.wait_connected()
    return cluster


def reported_data_plane(status: dict) -> str | None:
    """The data plane a node's status (`vpnagent status --json`, status.json) says the server
    put it on; None for agents from before issue 18 (OpenVPN only)."""
    return ((status.get("data_plane") or {}).get("plane")) or None


def wait_direct(cp: ClusterPath, a, b, timeout: float = 20.0) -> None:
    """On the WireGuard plane, `a` must send to `b` direct before anything is measured, or
    the figure would be the hub's under another name."""
    ip = b.status()["vpn"]["vpn_ip"]
    deadline = time.monotonic() + timeout
    while True:
        peers = {p["vpn_ip"]: p for p in ((a.status() or {}).get("data_plane") or {}).get("peers") or []}
        if (peers.get(ip) or {}).get("path") == "direct":
            return
        if time.monotonic() > deadline:
            raise BenchError(f"({cp.key}) {a.name} -> {b.name} is not direct within {timeout:.0f} s "
                             f"({peers.get(ip)}); not measured")
        time.sleep(0.2)


def check_data_plane(cluster: LocalCluster, cp: ClusterPath, timeout: float = 20.0) -> None:
    """Every node must say it runs `cp.data_plane`; a path is never measured on a data plane
    it does not have (a server setting the node ignores would measure the hub)."""
    deadline = time.monotonic() + timeout
    while True:
        got = {n.name: reported_data_plane(n.status() or {}) for n in cluster.nodes}
        if all(v == cp.data_plane for v in got.values()):
            return
        if time.monotonic() > deadline:
            raise BenchError(f"({cp.key}) the nodes do not report data plane {cp.data_plane!r} in "
                             f"`vpnagent status --json` within {timeout:.0f} s (they report {got}); not measured")
        time.sleep(0.5)


def cluster_runs(client: docker.DockerClient, cluster: LocalCluster, cp: ClusterPath,
                 node_pairs: list[tuple]) -> list[Path_]:
    """One task per node pair, with a run on each of the two nodes: the path from the first
    run's holder to the second run's VPN address and forwarded ports."""
    http = cluster.user_session()
    tasks = []
    for a, b in node_pairs:
        resp = http.post(f"{cluster.server_url}/task", timeout=10, json={
            "collaboration_id": cluster.collaboration_id, "image": BENCH_IMAGE,
            "organizations": [a.organization_id, b.organization_id], "input": None})
        if resp.status_code >= 300:
            raise BenchError(f"({cp.key}) POST /task: {resp.status_code} {resp.text[:300]}")
        tasks.append((resp.json()["id"], a, b))
    out: list[Path_] = []
    deadline = time.monotonic() + 60
    for task_id, a, b in tasks:
        live: dict[str, dict] = {}
        while len(live) < 2 and time.monotonic() < deadline:
            for n in (a, b):
                for r in (n.status() or {}).get("runs", []):
                    if r["task_id"] == task_id and len(r["ports"]) == 2:
                        live[n.name] = r
            time.sleep(0.1)
        if len(live) < 2:
            raise BenchError(f"({cp.key}) the runs of task {task_id} on {a.name} and {b.name} did not become live")
        if cp.data_plane == "wireguard":
            wait_direct(cp, a, b)
        hpid = {n.name: int(client.containers.get(live[n.name]["holder_id"]).attrs["State"]["Pid"]) for n in (a, b)}
        vport = {p["container_port"]: p["vpn_port"] for p in live[b.name]["ports"]}
        key, label = (cp.key, cp.label) if not out else (f"{cp.key}2", f"{cp.label}, second pair")
        out.append(Path_(key, label, hpid[a.name], hpid[b.name], b.status()["vpn"]["vpn_ip"], vport[IPERF_PORT],
                         vport[ECHO_PORT], pingable=False))
    return out


def wireguard_pairs(client: docker.DockerClient, net: WanNet, prefix: str, n_pairs: int,
                    extra_containers: list) -> list[Path_]:
    """(e) pairs of raw wireguard-go peers on the scenario's network, each peer behind the
    middlebox on its own veth; with a delay, each direction crosses one relay (the delay and
    loss of a node's path to the server, now between the two nodes)."""
    from benchmarks import wgpeers

    peers = []
    for i in range(2 * n_pairs):
        peer = wgpeers.start_peer(client, f"{prefix}-wg{i}", net.name, wgpeers.tunnel_address(WG_SUBNET, i),
                                  labels={"vpnagent.node": f"{prefix}-bench"})
        extra_containers.append(peer.container)
        net.drop_fragments_at(peer.container)
        peers.append(peer)
    out = []
    for k in range(n_pairs):
        a, b = peers[2 * k], peers[2 * k + 1]
        if net.sc.delay_ms:
            wgpeers.connect(a, b, f"{net.gateway}:{net.relay_to(b.wan_ip, wgpeers.WG_PORT)}",
                            f"{net.gateway}:{net.relay_to(a.wan_ip, wgpeers.WG_PORT)}")
        else:
            wgpeers.connect(a, b)
        wgpeers.wait_handshake(a, b)
        key, label = ("e", "wireguard raw (wireguard-go)") if k == 0 else ("e2", "wireguard raw, second pair")
        out.append(Path_(key, label, a.pid, b.pid, b.wg_ip, IPERF_PORT, ECHO_PORT, openvpn=False))
    return out


def measure_scenario(client: docker.DockerClient, sc: Scenario, progress, runs: int, seconds: int,
                     messages: int, pairs: bool = True, paths: list[str] | tuple[str, ...] = DEFAULT_PATHS) -> dict:
    """The selected paths of (b)-(f) and the aggregate figures over one network scenario,
    each on clusters, servers and peers of its own, removed afterwards.

    Two pairs at once: b and e have four peers (two pairs); the cluster paths c and f run a
    4-node cluster (2 without the pairs figure) and one task per node pair (nodes 1->2 and
    3->4), so the second pair shares no node, VPN client or WireGuard peer with the first.
    A cluster path other than c that cannot be brought up or measured (f before the node
    side of `data_plane: wireguard` exists) is reported as failed with the reason; the
    others are still measured."""
    progress(f"scenario {sc.key}: {sc.label}")
    want = set(paths)
    if sc.delay_ms:  # each request waits two round trips to the server: keep a run to about 15 s
        messages = min(messages, max(100, int(15_000 / (4 * sc.delay_ms))))
    workdir = Path(tempfile.mkdtemp(prefix=f"vpnagent-dataplane-{sc.key}-"))
    prefix = f"vdp{int(time.time()) % 10000}"
    n_nodes = 4 if pairs else 2
    procs: list[subprocess.Popen] = []
    relays: list[subprocess.Popen] = []
    extra_containers: list = []
    boxes: list[FragmentDropper] = []
    clusters: list[LocalCluster] = []
    nets: list[WanNet] = []
    measured: list[Path_] = []
    second: dict[str, Path_] = {}  # path key -> its second pair
    failed: dict[str, str] = {}
    tunnels: dict[str, dict] = {}
    try:
        # made here, before any cluster: with a relay the nodes' `remote` is its address on it
        net = WanNet(client, sc, f"{prefix}-wan", prefix, boxes, relays)
        nets.append(net)
        cluster = None
        if want & {"b", "c", "d"}:  # b and d take their certificates from c's cluster
            cluster = bring_up_cluster(sc, CLUSTER_PATHS["c"], net, workdir, prefix,
                                       n_nodes if "c" in want else 2, progress, clusters)
        mp = mp_relay = v6 = v6_relay = None
        mp_ends = []
        if "d" in want:
            # d runs against a second OpenVPN server with vantage6's settings, so that it stays
            # the baseline whatever vpnagent's default profile becomes
            v6 = vantage6_server(client, cluster, workdir)
            extra_containers.append(client.containers.get(v6.name))
            v6_relay = {server: relay for relay, server in net.server_on_path(v6.name, [1194]).items()}
        if "b" in want and pairs:
            # the same profile with one OpenVPN process per core, for the aggregate figure
            mp = multi_server(client, cluster, workdir, max(2, os.cpu_count() or 2), sc.profile)
            extra_containers.append(client.containers.get(mp.name))
            mp_relay = {server: relay for relay, server in
                        net.server_on_path(mp.name, [1194 + i for i in range(mp.files.settings.processes)]).items()}

        # b and d: raw OpenVPN clients with certificates issued by server_ext
        for key, label, flags, count in (("b", "raw OpenVPN client-to-client", [], 4 if pairs else 2),
                                         ("d", "vantage6 4.x defaults", V6_FLAGS, 2), ("m", "multi-process", [], 4)):
            if (key == "m" and mp is None) or (key != "m" and key not in want):
                continue
            ends = []
            for i in range(count):  # b, m: a second pair for the aggregate figure
                node = cluster.add_node(f"{cluster.prefix}{key}{i}")
                api = cluster.node_api(node)
                ovpn = api.get_vpn_config()
                if key == "d":
                    ovpn = via_relay(rerender_for(v6, ovpn, api.node_self()), net.gateway if sc.delay_ms else None,
                                     v6_relay)
                if key == "m":  # spread as the server's allocator does: node i on process i % n
                    slice_ = mp.files.settings.slices[i % mp.files.settings.processes]
                    ovpn = via_relay(rerender_for(mp, ovpn, api.node_self(), str(slice_.network_address + 2 + i)),
                                     net.gateway if sc.delay_ms else None, mp_relay)
                c, pid, ip = raw_client(client, cluster, f"{key}{i}", ovpn, workdir, flags)
                extra_containers.append(c)
                ends.append((pid, ip))
            if key == "m":
                mp_ends = ends
                continue
            measured.append(Path_(key, label, ends[0][0], ends[1][0], ends[1][1], IPERF_PORT, ECHO_PORT))
            if len(ends) == 4:
                second[key] = Path_(f"{key}2", f"{label}, second pair", ends[2][0], ends[3][0], ends[3][1],
                                    IPERF_PORT, ECHO_PORT)

        if "e" in want:
            progress(f"{sc.key}: starting {4 if pairs else 2} wireguard-go peers on {net.name}")
            e_paths = wireguard_pairs(client, net, prefix, 2 if pairs else 1, extra_containers)
            measured.append(e_paths[0])
            second.update({"e": e_paths[1]} if len(e_paths) > 1 else {})

        for key in ("c", "f"):
            if key not in want:
                continue
            cp = CLUSTER_PATHS[key]
            try:
                if key == "c":
                    cl = cluster
                else:
                    progress(f"{sc.key}: ({key}) a cluster of its own with server settings {cp.server_extra}")
                    own = WanNet(client, sc, f"{prefix}{key}-wan", prefix, boxes, relays)
                    nets.append(own)
                    cl = bring_up_cluster(sc, cp, own, workdir / key, f"{prefix}{key}", n_nodes, progress, clusters)
                    if cp.data_plane:
                        check_data_plane(cl, cp)
                    for n in cl.nodes:  # peer to peer: the nodes' own veths must drop fragments too
                        for c in client.containers.list(filters={"label": ["vpnagent.role=vpn-client",
                                                                           f"vpnagent.node={n.name}"]}):
                            own.drop_fragments_at(c)
                node_pairs = [(cl.nodes[0], cl.nodes[1])] + ([(cl.nodes[2], cl.nodes[3])] if len(cl.nodes) >= 4
                                                             else [])
                got = cluster_runs(client, cl, cp, node_pairs)
                vpn = cl.nodes[0].status()["vpn"]
                tunnels[key] = {"mtu": vpn.get("tunnel_mtu"), "source": vpn.get("tunnel_mtu_source")}
                measured.append(got[0])
                if len(got) > 1:
                    second[key] = got[1]
            except Exception as exc:  # noqa: BLE001 - reported, and the run exits 1
                if key == "c":
                    raise
                failed[key] = f"{type(exc).__name__}: {exc}"
                progress(f"{sc.key}: ({key}) {cp.label} FAILED: {failed[key][:500]}")
        measured.sort(key=lambda p: p.key)
        time.sleep(1.0)  # let the agents follow the task family (peer rules)

        c_tun, f_tun = tunnels.get("c", {}), tunnels.get("f", {})
        out = {"label": sc.label, "profile": sc.profile or "default",
               "messages": messages,
               "path": {"rtt_to_server_ms": 2 * sc.delay_ms, "loss_each_way": sc.loss,
                        "how": "userspace UDP relay (no netem on this kernel)" if sc.delay_ms else "none",
                        "wireguard_peers": ("one relay between the two peers (the same delay and loss)"
                                            if sc.delay_ms else "direct on the scenario's network")},
               "mtu": {"link": sc.link_mtu, "fragments": "dropped" if sc.drops_fragments else "pass",
                       "tunnel_c": c_tun.get("mtu"), "tunnel_c_source": c_tun.get("source"),
                       "tunnel_e": 1420 if "e" in want else None,  # wgpeers.WG_MTU
                       "tunnel_f": f_tun.get("mtu"), "tunnel_f_source": f_tun.get("source"),
                       "server_tun_mtu": (sc.profile or {}).get("tun_mtu", 1500)},
               "fragment_droppers": ("on the OpenVPN servers' veths; for e and f also on every WireGuard "
                                     "endpoint's veth" if sc.drops_fragments else None),
               "paths": {}}
        for p in measured:
            start_servers(p.dst_pid, procs)
        time.sleep(0.5)
        for p in measured:
            progress(f"{sc.key}: measuring ({p.key}) {p.label}")
            out["paths"][p.key] = {"label": p.label, **measure(p, runs, seconds, messages)}
        for key, why in failed.items():
            out["paths"][key] = {"label": CLUSTER_PATHS[key].label, "error": why}
        out["paths"] = dict(sorted(out["paths"].items()))
        ok = {k: v for k, v in out["paths"].items() if not v.get("error")}
        out["ratios"] = path_ratios(ok)
        out["targets"] = wireguard_targets(ok)
        if pairs:
            out["two_pairs"] = {}
            for p in measured:
                if p.key not in second:
                    continue
                start_servers(second[p.key].dst_pid, procs)
                time.sleep(0.3)
                progress(f"{sc.key}: measuring two ({p.key}) pairs at once")
                out["two_pairs"][p.key] = two_pairs(p, second[p.key], runs, seconds)
            if mp is not None:
                m_pairs = [Path_(f"m{k}", f"multi-process pair {k}", mp_ends[2 * k][0], mp_ends[2 * k + 1][0],
                                 mp_ends[2 * k + 1][1], IPERF_PORT, ECHO_PORT) for k in range(2)]
                for p in m_pairs:
                    start_servers(p.dst_pid, procs)
                time.sleep(0.3)
                progress(f"{sc.key}: measuring two raw pairs at once ({mp.files.settings.processes} OpenVPN server "
                         "processes)")
                out["two_pairs_multi"] = {"processes": mp.files.settings.processes,
                                          **two_pairs(m_pairs[0], m_pairs[1], runs, seconds)}
        out["fragments_dropped"] = sum(box.dropped() for box in boxes)
        out["side_by_side"] = side_by_side(ok, out.get("two_pairs", {}))
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
        for cl in clusters:
            try:
                cl.down()  # removes its wan network too
            except Exception as exc:  # noqa: BLE001 - the other clusters still go
                progress(f"clean-up of cluster {cl.prefix}: {exc}")
        for n in nets:
            try:
                n.net.remove()
            except docker.errors.NotFound:
                pass
        shutil.rmtree(workdir, ignore_errors=True)


def _median(paths: dict, key: str, field: str) -> float | None:
    v = (paths.get(key) or {}).get(field)
    return v["median"] if v else None


def path_ratios(paths: dict) -> dict[str, float]:
    """Ratios of medians between the measured paths (those with both ends measured)."""
    want = {"c/b tcp 1 stream": ("c", "b", "tcp_1_mbit"), "c/d tcp 1 stream": ("c", "d", "tcp_1_mbit"),
            "c/d rr p99": ("c", "d", "rr_p99_ms"),
            "e/c tcp 1 stream": ("e", "c", "tcp_1_mbit"), "e/c machine CPU s/GB": ("e", "c", "machine_cpu_s_per_gb"),
            "f/c tcp 1 stream": ("f", "c", "tcp_1_mbit"), "f/c machine CPU s/GB": ("f", "c", "machine_cpu_s_per_gb")}
    out = {}
    for name, (x, y, field) in want.items():
        a, b = _median(paths, x, field), _median(paths, y, field)
        if a is not None and b:
            out[name] = a / b
    return out


def wireguard_targets(paths: dict) -> dict:
    """Issue 18's two targets, as ratios of medians: vpnagent's WireGuard data plane (f; the
    raw WireGuard peers e stand in while f is absent or failed) against the OpenVPN hub (c)."""
    wg = "f" if "f" in paths else "e" if "e" in paths else None
    if wg is None or "c" not in paths:
        return {"note": "needs path c and path e or f"}
    out: dict = {}
    for name, t in TARGETS.items():
        ratio = _median(paths, wg, t["field"]) / _median(paths, "c", t["field"])
        out[name] = {"path": wg, "vs": "c", "field": t["field"], "ratio": ratio, "target": t["target"],
                     "met": t["met"](ratio)}
    out["note"] = ("vpnagent's WireGuard data plane (f)" if wg == "f" else
                   "path f absent or failed: the raw wireguard-go peers (e) stand in for vpnagent's WireGuard data "
                   "plane (no agent rules, no DNAT)")
    return out


def side_by_side(paths: dict, two: dict) -> dict:
    """The hub (c), vantage6 (d) and WireGuard (e, f) in one place: medians."""
    out = {}
    for key in ("c", "d", "e", "f"):
        if key in paths:
            out[key] = {"label": paths[key]["label"],
                        **{field: _median(paths, key, field) for field in
                           ("tcp_1_mbit", "tcp_4_mbit", "rr_p50_ms", "rr_p99_ms", "machine_cpu_s_per_gb",
                            "cpu_s_per_gb")},
                        "two_pairs_mbit": (two.get(key) or {}).get("two_pairs_mbit"),
                        "two_pairs_ratio": (two.get(key) or {}).get("ratio")}
    return out


def plot(results: dict, path: Path) -> None:
    """Single-stream throughput and request/response p99 by path, one bar per network
    scenario (the direct bridge is the same in all), medians with min-max whiskers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = list(results["scenarios"])
    keys = [k for k in ALL_PATHS if (k == "a" and results.get("direct"))
            or any(k in sc["paths"] for sc in results["scenarios"].values())]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))

    def stat(scenario: str, key: str, field: str) -> dict | None:
        v = results["direct"] if key == "a" else results["scenarios"][scenario]["paths"].get(key)
        return (v or {}).get(field)

    for ax, field, ylabel in ((ax1, "tcp_1_mbit", "TCP throughput, 1 stream, Mbit/s (log)"),
                              (ax2, "rr_p99_ms", "1 KiB request/response p99, ms (log)")):
        width = 0.8 / max(1, len(scenarios))
        for j, sc in enumerate(scenarios):
            stats = [stat(sc, k, field) for k in keys]
            med = [s["median"] if s else 0 for s in stats]
            err = [[s["median"] - s["min"] if s else 0 for s in stats], [s["max"] - s["median"] if s else 0 for s in stats]]
            xs = [i + (j - (len(scenarios) - 1) / 2) * width for i in range(len(keys))]
            ax.bar(xs, med, width, yerr=err, capsize=3, label=results["scenarios"][sc]["label"])
        ax.set_xticks(range(len(keys)))
        ax.set_xticklabels([f"({k})" for k in keys])
        ax.set_ylabel(ylabel)
        if scenarios:
            ax.legend(fontsize=7)
    ax1.set_yscale("log")
    ax2.set_yscale("log")  # a 20 ms path next to sub-millisecond ones
    ax1.set_title("Throughput by path and network")
    ax2.set_title("Latency by path and network")
    fig.text(0.01, 0.01, "(a) direct bridge   (b) raw OpenVPN client-to-client   (c) vpnagent, OpenVPN hub   "
                         "(d) vantage6 4.x defaults   (e) raw WireGuard (wireguard-go)   (f) vpnagent, WireGuard p2p",
             fontsize=8)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(results: dict) -> str:
    cols = ["tcp_1_mbit", "tcp_4_mbit", "ping_ms", "rr_p50_ms", "rr_p99_ms", "cpu_s_per_gb", "machine_cpu_s_per_gb"]

    def row(key: str, v: dict) -> str:
        if v.get("error"):
            return f"({key}) {v['label']:<30} FAILED: {v['error'][:300]}"
        cells = [f"{'n/a':>26}" if v.get(c) is None else
                 f" {v[c]['min']:.1f}/{v[c]['median']:.1f}/{v[c]['max']:.1f}".rjust(26) for c in cols]
        return f"({key}) {v['label']:<30}" + "".join(cells)

    def num(x: float | None, fmt: str) -> str:
        return "n/a" if x is None else format(x, fmt)

    lines = [f"{'path':<34}" + "".join(f"{c:>26}" for c in cols),
             f"{'':<34}" + "".join(f"{'min/median/max':>26}" for _ in cols)]
    if results.get("direct"):
        lines.append(row("a", results["direct"]))
    lines.append("cpu_s_per_gb: OpenVPN processes only; machine_cpu_s_per_gb: every CPU's busy time (/proc/stat), "
                 "1 stream")
    for key, sc in results["scenarios"].items():
        mtu = sc["mtu"]
        head = "HEADLINE " if key == results.get("headline") else ""
        lines += ["", f"{head}{key}: {sc['label']}; link MTU {mtu['link']}, fragments {mtu['fragments']}, server "
                      f"tun-mtu {mtu['server_tun_mtu']}, (c) tunnel MTU {mtu['tunnel_c']} ({mtu['tunnel_c_source']}), "
                      f"(e) wg0 MTU {mtu.get('tunnel_e')}, (f) tunnel MTU {mtu.get('tunnel_f')}; "
                      f"fragments dropped by the middlebox: {sc['fragments_dropped']}"]
        lines += [row(k, v) for k, v in sc["paths"].items()]
        lines += [f"  {k:<22} {v:6.3f}" for k, v in sc["ratios"].items()]
        sbs = sc.get("side_by_side") or {}
        if sbs:
            lines += ["", f"  {'side by side (medians)':<36}{'1 stream':>10}{'4 streams':>10}{'rr p99':>8}"
                          f"{'machine':>9}{'OpenVPN':>9}{'2 pairs':>9}{'x 1 pair':>9}",
                      f"  {'':<36}{'Mbit/s':>10}{'Mbit/s':>10}{'ms':>8}{'s/GB':>9}{'s/GB':>9}{'Mbit/s':>9}{'':>9}"]
            for k, v in sbs.items():
                lines.append(f"  ({k}) {v['label']:<32}{num(v['tcp_1_mbit'], '.0f'):>10}"
                             f"{num(v['tcp_4_mbit'], '.0f'):>10}"
                             f"{num(v['rr_p99_ms'], '.2f'):>8}{num(v['machine_cpu_s_per_gb'], '.1f'):>9}"
                             f"{num(v['cpu_s_per_gb'], '.1f'):>9}{num(v['two_pairs_mbit'], '.0f'):>9}"
                             f"{num(v['two_pairs_ratio'], '.2f'):>9}")
        for name, t in (sc.get("targets") or {}).items():
            if name == "note":
                lines.append(f"  targets: {t}")
            else:
                lines.append(f"  target {name}: ({t['path']})/({t['vs']}) = {t['ratio']:.2f}, want {t['target']}: "
                             f"{'met' if t['met'] else 'NOT met'}")
        for pk, tp in (sc.get("two_pairs") or {}).items():
            lines.append(f"  two ({pk}) pairs at once: {tp['two_pairs_mbit']:.0f} Mbit/s vs one pair "
                         f"{tp['one_pair_mbit']:.0f} (x{tp['ratio']:.2f}); CPUs busy {tp['cpu_busy_one_pair']:.0%} "
                         f"with one pair, {tp['cpu_busy_two_pairs']:.0%} with two")
        tp = sc.get("two_pairs_multi")
        if tp:
            lines.append(f"  two raw pairs at once, {tp['processes']} OpenVPN server processes: "
                         f"{tp['two_pairs_mbit']:.0f} Mbit/s vs one pair {tp['one_pair_mbit']:.0f} "
                         f"(x{tp['ratio']:.2f}); CPUs busy {tp['cpu_busy_one_pair']:.0%} with one pair, "
                         f"{tp['cpu_busy_two_pairs']:.0%} with two")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
