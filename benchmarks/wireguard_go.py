"""Which wireguard-go the VPN image ships: Debian 12's (0.0.20220316) against Debian 13's
(0.0.20231211, what vpnagent/vpn:latest has since issue 18), in one run on this machine.

Two containers of each image on an internal Docker network of this benchmark's own, wg0 made
and kept by the agent's own code (vpnagent.dataplane.wireguard.PeerLinks: MTU 1420, one
peer each), then iperf3 (the host's, run in the namespaces with nsenter) through wg0, one
TCP stream: throughput and the whole machine's CPU seconds per GB (/proc/stat). The Debian
12 variant is built from the VPN recipe without the Debian 13 source, tagged
vpnagent/vpn-wg-bookworm:bench, and removed afterwards.

    .venv/bin/python benchmarks/wireguard_go.py            # 3 runs of 5 s each
    .venv/bin/python benchmarks/wireguard_go.py --quick    # 1 run of 1 s
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import docker  # noqa: E402

from benchmarks.common import remove_containers, report, start  # noqa: E402
from vpnagent.dataplane.wireguard import DIRECT, Peer, PeerLinks  # noqa: E402
from vpnagent.image_recipes import SUITE, VPN_IMAGE, VPN_RECIPE  # noqa: E402
from vpnagent.netns import Netns  # noqa: E402

BOOKWORM_TAG = "vpnagent/vpn-wg-bookworm:bench"


def bookworm_recipe():
    """The VPN recipe with every package from Debian 12, wireguard-go included."""
    packages = tuple(p.split("/")[0] for p in VPN_RECIPE.packages)
    return dataclasses.replace(VPN_RECIPE, tag=BOOKWORM_TAG, packages=packages, later_suite=None)


def busy() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs; guest time is already in user time."""
    v = [int(x) for x in open("/proc/stat").readline().split()[1:9]]
    return sum(v) - v[3] - v[4], sum(v)


def measure(client: docker.DockerClient, image: str, runs: int, seconds: int, progress) -> dict:
    prefix = f"wgb{uuid.uuid4().hex[:6]}"
    net = client.networks.create(f"{prefix}-net", internal=True, labels={"vpnagent.bench": prefix})
    containers = []
    try:
        links = []
        for i in range(2):
            key_dir = Path(tempfile.mkdtemp(prefix=f"{prefix}-"))
            c = client.containers.run(image, ["sleep", "3600"], name=f"{prefix}-{i}", detach=True,
                                      cap_add=["NET_ADMIN"], devices=["/dev/net/tun"], network=net.name,
                                      volumes={str(key_dir): {"bind": "/vpn", "mode": "ro"}},
                                      labels={"vpnagent.bench": prefix})
            containers.append(c)
            c.reload()
            links.append(PeerLinks(key_dir, 51820, 1420))
            links[i].up(c.attrs["State"]["Pid"], f"10.97.0.{i + 1}")
        ips = [c.attrs["NetworkSettings"]["Networks"][net.name]["IPAddress"] for c in containers]
        for i in range(2):
            other = 1 - i
            links[i].set_peers([Peer(other + 1, f"10.97.0.{other + 1}", links[other].public_key(),
                                     (f"{ips[other]}:51820",))])
        deadline = time.monotonic() + 20
        while not all(lk.paths and lk.paths[0].path == DIRECT for lk in links):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{image}: no handshake within 20 s")
            time.sleep(0.1)
            for lk in links:
                lk.refresh()
        version = client.containers.get(containers[0].id).exec_run(["dpkg-query", "-W", "-f", "${Version}",
                                                                     "wireguard-go"]).output.decode()
        pids = [c.attrs["State"]["Pid"] for c in containers]
        mbit, cpu = [], []
        for _ in range(runs):
            server = subprocess.Popen(["nsenter", f"--net=/proc/{pids[1]}/ns/net", "--", "iperf3", "-s", "-1"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                time.sleep(0.3)
                b0 = busy()
                out = Netns(pids[0]).run(["iperf3", "-c", "10.97.0.2", "-t", str(seconds), "-J"]).stdout
                b1 = busy()
            finally:
                server.kill()
                server.wait(5)
            got = json.loads(out)["end"]["sum_received"]
            mbit.append(got["bits_per_second"] / 1e6)
            cpu.append((b1[0] - b0[0]) / 100 / (got["bytes"] / 1e9))
        progress(f"{image}: wireguard-go {version}: {statistics.median(mbit):.0f} Mbit/s")
        return {"image": image, "wireguard_go": version, "mbit": mbit, "machine_cpu_s_per_gb": cpu,
                "mbit_median": statistics.median(mbit), "cpu_median": statistics.median(cpu)}
    finally:
        remove_containers(containers)
        net.remove()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 run of 1 s (a smoke run)")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "wireguard-go.json")
    args = ap.parse_args()
    runs, seconds = (1, 1) if args.quick else (3, 5)
    progress, client = start("wireguard-go")
    from vpnagent.runtime.docker_images import _build_debootstrap

    try:
        _build_debootstrap(client, bookworm_recipe(), progress, force=False)
        rows = [measure(client, BOOKWORM_TAG, runs, seconds, progress),
                measure(client, VPN_IMAGE, runs, seconds, progress)]
    finally:
        try:
            client.images.remove(BOOKWORM_TAG, force=True)
        except docker.errors.ImageNotFound:
            pass
    old, new = rows
    text = "\n".join([f"{'image':<34} {'wireguard-go':<22} {'Mbit/s':>8} {'machine CPU s/GB':>17}",
                      *(f"{r['image']:<34} {r['wireguard_go']:<22} {r['mbit_median']:>8.0f} {r['cpu_median']:>17.1f}"
                        for r in rows),
                      f"Debian 13's / Debian 12's: x{new['mbit_median'] / old['mbit_median']:.2f} throughput, "
                      f"x{new['cpu_median'] / old['cpu_median']:.2f} CPU per GB ({SUITE} base; one TCP stream, "
                      "wg0 MTU 1420, two containers on one bridge)"])
    report(args.json, {"runs": runs, "seconds": seconds, "rows": rows}, text, progress)
    return 0


if __name__ == "__main__":
    sys.exit(main())
