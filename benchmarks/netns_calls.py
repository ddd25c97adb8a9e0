"""Netns calls benchmark: what one link / address / route call into a container's network
namespace costs, addressed the way the agent addresses it (/proc/<pid>/ns/net), for

  nsenter+ip        the baseline: a fork of `nsenter --net=... -- ip -j ...` per call (what
                    vpnagent.netns does)
  NetNS per call    pyroute2's NetNS(path) per call (pyroute2 forks a helper process that
                    enters the namespace and hands back a netlink socket)
  NetNS kept        one pyroute2 NetNS per namespace, opened once (the open is timed apart)
  setns thread      a short-lived thread setns()es into the namespace, opens a netlink
                    socket there, goes back and ends (setns changes only the calling thread);
                    pyroute2's IPRoute then talks over that socket; per call, nothing kept

for set_default_route (`ip route replace default via`), ipv4_addresses and link_mtu. The
namespace is the benchmark's own: an `unshare --net sleep` process with a veth pair and an
address inside it (no traffic is sent; it goes away with the process).

It also records what each variant does when the namespace's process has died (a holder
container ended), because the agent must notice that rather than "succeed", and whether a
variant hung: pyroute2 calls have no timeout, so each figure is cut off after --hang-s.
The decision taken from it (issue 15): netns.py stays with nsenter+ip and pyroute2 left the
dependencies; docs/performance.md has the numbers. So the benchmark needs pyroute2 installed
on its own (`pip install pyroute2`; measured with 0.9.7).

    .venv/bin/python benchmarks/netns_calls.py            # 200 calls per variant and call
    .venv/bin/python benchmarks/netns_calls.py --quick    # smoke run (20 calls), used by the tests

Needs root. Prints a table and writes JSON (default benchmarks/results/netns_calls.json).
"""
from __future__ import annotations

import argparse
import ctypes
import faulthandler
import ipaddress
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

try:
    import pyroute2
    from pyroute2 import IPRoute, NetNS
except ImportError:  # not a dependency of vpnagent any more (see the docstring)
    sys.exit("netns_calls: needs pyroute2 for its comparison: pip install pyroute2")

from benchmarks.common import report  # noqa: E402
from vpnagent.netns import Netns  # noqa: E402

ADDRESS, GATEWAY = "10.231.0.2/24", "10.231.0.1"  # exist only inside the benchmark's namespace
CALLS = ("set_default_route", "ipv4_addresses", "link_mtu")
# A kept NetNS stopped answering for good (its reply sat unread in its socket; pyroute2
# calls have no timeout) in every run while this was written, after other pyroute2 objects
# had been opened and closed in the process meanwhile (short scripts doing just that did not
# reproduce it). It is measured before "per call" to get figures at all, and every figure
# is cut off after --hang-s and then reads "hung".
VARIANTS = ("nsenter+ip", "NetNS kept", "NetNS per call", "setns thread")
HANG_S = 20  # default of --hang-s: a figure that takes longer is recorded as hung
BASELINE = "nsenter+ip"


# ---------------------------------------------------------------- the baseline, as netns.py does it
def nsenter_set_default_route(ns: Netns, gateway: str) -> None:
    ns.run(["ip", "route", "replace", "default", "via", gateway])


def nsenter_ipv4_addresses(ns: Netns) -> dict[str, list[ipaddress.IPv4Interface]]:
    proc = ns.run(["ip", "-j", "-4", "addr", "show"], check=False)
    if proc.returncode != 0:
        return {}
    return {link["ifname"]: [ipaddress.IPv4Interface(f"{a['local']}/{a['prefixlen']}")
                             for a in link.get("addr_info", []) if a.get("family") == "inet"]
            for link in json.loads(proc.stdout or "[]")}


def nsenter_link_mtu(ns: Netns, ifname: str) -> int | None:
    proc = ns.run(["ip", "-j", "link", "show", "dev", ifname], check=False)
    links = json.loads(proc.stdout or "[]") if proc.returncode == 0 else []
    return int(links[0]["mtu"]) if links else None


# ---------------------------------------------------------------- pyroute2 NetNS
def ipr_set_default_route(ipr, gateway: str) -> None:
    ipr.route("replace", dst="0.0.0.0/0", gateway=gateway)


def ipr_ipv4_addresses(ipr) -> dict[str, list[ipaddress.IPv4Interface]]:
    names = {link["index"]: link.get("ifname") for link in ipr.link("dump")}
    out: dict[str, list[ipaddress.IPv4Interface]] = {}
    for a in ipr.addr("dump", family=2):
        out.setdefault(names[a["index"]], []).append(ipaddress.IPv4Interface(f"{a.get('IFA_LOCAL')}/{a['prefixlen']}"))
    return out


def ipr_link_mtu(ipr, ifname: str) -> int | None:
    links = ipr.link("get", ifname=ifname)
    return int(links[0].get("IFLA_MTU")) if links else None


# ---------------------------------------------------------------- setns from a short-lived thread
CLONE_NEWNET = 0x40000000
LIBC = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:  # os.setns exists from Python 3.12 on
    if LIBC.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def setns_socket(pid: int) -> socket.socket:
    """A NETLINK_ROUTE socket created inside the namespace of `pid` (a socket keeps the
    namespace it was created in) by a thread that enters it, goes back and ends, so no
    other thread of the process ever changes namespace."""
    box: dict = {}

    def enter() -> None:
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            target = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            try:
                _setns(target)
            finally:
                os.close(target)
            try:
                box["sock"] = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC,
                                            socket.NETLINK_ROUTE)
            finally:
                _setns(home)
        except OSError as exc:
            box["error"] = exc
        finally:
            os.close(home)

    thread = threading.Thread(target=enter, daemon=True)
    thread.start()
    thread.join(5)
    if thread.is_alive():
        raise RuntimeError(f"entering the namespace of pid {pid} took over 5 s")
    if "error" in box:
        raise box["error"]
    return box["sock"]


def setns_call(pid: int, fn: Callable, *args):
    with IPRoute(fileno=setns_socket(pid).detach(), groups=0) as ipr:
        return fn(ipr, *args)


def netns_open(path: str) -> NetNS:
    # flags=0: pyroute2 would otherwise try to *create* a namespace at a path that is gone
    return NetNS(path, flags=0, groups=0)


def per_call(path: str, fn: Callable, *args):
    with netns_open(path) as ipr:
        return fn(ipr, *args)


# ---------------------------------------------------------------- the scratch namespace
class Scratch:
    """An `unshare --net sleep` process whose namespace holds a veth pair (both ends up)
    and ADDRESS on va0, so a default route via GATEWAY can be set."""

    def __init__(self, lifetime_s: int = 600) -> None:
        self.proc = subprocess.Popen(["unshare", "--net", "--", "sleep", str(lifetime_s)])
        deadline = time.monotonic() + 10
        while True:  # unshare execs sleep once it is inside the new namespace
            try:
                if os.readlink(f"/proc/{self.proc.pid}/ns/net") != os.readlink("/proc/self/ns/net"):
                    break
            except FileNotFoundError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.close()
                raise RuntimeError("unshare --net did not start (root needed)")
            time.sleep(0.005)
        self.pid = self.proc.pid
        self.path = f"/proc/{self.pid}/ns/net"
        ns = Netns(self.pid)
        try:
            for argv in (["ip", "link", "add", "va0", "type", "veth", "peer", "name", "va1"],
                         ["ip", "addr", "add", ADDRESS, "dev", "va0"],
                         ["ip", "link", "set", "lo", "up"], ["ip", "link", "set", "va1", "up"],
                         ["ip", "link", "set", "va0", "up"]):
                ns.run(argv)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


# ---------------------------------------------------------------- measuring
def timed(fn: Callable[[], object], n: int) -> list[float]:
    for _ in range(min(5, n)):  # warm-up: imports, first fork, page cache
        fn()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


class Hung(Exception):
    pass


hang_s = HANG_S


def guarded(measure: Callable[[], dict]) -> dict:
    """The figure, or {"hung": ...} when it took over hang_s (pyroute2 calls have no timeout;
    SIGALRM interrupts the wait in its event loop)."""
    def alarm(*_):
        raise Hung()

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(hang_s)
    try:
        return measure()
    except Hung:
        return {"hung": f"no answer within {hang_s} s"}
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _fmt(s: dict) -> str:
    return s["hung"] if "hung" in s else f"median {s['median']:.3f} ms"


def stats(values: list[float]) -> dict:
    ordered = sorted(values)
    return {"n": len(values), "median": statistics.median(values),
            "p95": ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))],
            "min": ordered[0], "max": ordered[-1]}


def calls_for(variant: str, scratch: Scratch, kept) -> dict[str, Callable[[], object]]:
    ns, path = Netns(scratch.pid), scratch.path
    if variant == "nsenter+ip":
        return {"set_default_route": lambda: nsenter_set_default_route(ns, GATEWAY),
                "ipv4_addresses": lambda: nsenter_ipv4_addresses(ns),
                "link_mtu": lambda: nsenter_link_mtu(ns, "va0")}
    if variant == "NetNS per call":
        return {"set_default_route": lambda: per_call(path, ipr_set_default_route, GATEWAY),
                "ipv4_addresses": lambda: per_call(path, ipr_ipv4_addresses),
                "link_mtu": lambda: per_call(path, ipr_link_mtu, "va0")}
    if variant == "NetNS kept":
        return {"set_default_route": lambda: ipr_set_default_route(kept, GATEWAY),
                "ipv4_addresses": lambda: ipr_ipv4_addresses(kept),
                "link_mtu": lambda: ipr_link_mtu(kept, "va0")}
    return {"set_default_route": lambda: setns_call(scratch.pid, ipr_set_default_route, GATEWAY),
            "ipv4_addresses": lambda: setns_call(scratch.pid, ipr_ipv4_addresses),
            "link_mtu": lambda: setns_call(scratch.pid, ipr_link_mtu, "va0")}


def check_answers(scratch: Scratch, kept) -> None:
    """Every variant must read the same thing, or the timings compare different work."""
    want_addrs = {"va0": [ipaddress.IPv4Interface(ADDRESS)], "lo": [ipaddress.IPv4Interface("127.0.0.1/8")]}
    for variant in VARIANTS:
        fns = calls_for(variant, scratch, kept)
        fns["set_default_route"]()
        got = (fns["ipv4_addresses"](), fns["link_mtu"]())
        if got != (want_addrs, 1500):
            raise RuntimeError(f"{variant} read {got}, expected {(want_addrs, 1500)}")


def after_death(progress) -> dict[str, str]:
    """What each variant does when the namespace's process has died: an error is right,
    a 'success' in a namespace nobody uses any more is not."""
    scratch = Scratch()
    try:
        kept = netns_open(scratch.path)
    finally:
        scratch.close()
    pid, path = scratch.pid, scratch.path
    out = {}
    attempts = {
        "nsenter+ip": lambda: nsenter_set_default_route(Netns(pid), GATEWAY),
        "NetNS per call": lambda: per_call(path, ipr_set_default_route, GATEWAY),
        "NetNS kept": lambda: ipr_set_default_route(kept, GATEWAY),
        "setns thread": lambda: setns_call(pid, ipr_set_default_route, GATEWAY),
    }
    for variant, fn in attempts.items():
        try:
            if "hung" in guarded(lambda: {"ok": fn()}):
                raise Hung(f"no answer within {hang_s} s")
            out[variant] = "succeeded (in the dead process's namespace, kept alive by the open socket)"
        except Exception as exc:  # noqa: BLE001 - recording what each raises is the point
            out[variant] = f"{type(exc).__name__}: {str(exc)[:160]}"
        progress(f"  after death, {variant}: {out[variant]}")
    kept.close()
    return out


def _clone_count() -> int:
    """The last pid handed out on the host (it grows by one per process or thread started)."""
    with open("/proc/loadavg") as f:
        return int(f.read().split()[-1])


def table(results: dict) -> str:
    head = f"{'call':<18} {'variant':<15} {'median':>8} {'p95':>8} {'max':>8}   vs {BASELINE} (median)"
    lines = [head + "   (ms per call)"]
    for call in CALLS:
        base = results["calls"][call][BASELINE]["median"]
        for variant in VARIANTS:
            s = results["calls"][call][variant]
            if "hung" in s:
                lines.append(f"{call:<18} {variant:<15} {'hung: ' + s['hung']:>26}")
                continue
            speedup = base / s["median"]
            ratio = ("baseline" if variant == BASELINE else
                     f"{speedup:.1f}x faster" if speedup >= 1 else f"{1 / speedup:.1f}x slower")
            lines.append(f"{call:<18} {variant:<15} {s['median']:8.3f} {s['p95']:8.3f} {s['max']:8.3f}   {ratio}")
    lines += ["", f"{'one-time open':<34} {'median':>8} {'p95':>8}   (ms)"]
    for name, s in results["open"].items():
        if "hung" in s:
            lines.append(f"{name:<34} hung: {s['hung']}")
            continue
        lines.append(f"{name:<34} {s['median']:8.3f} {s['p95']:8.3f}")
    lines += ["", "processes/threads started per set_default_route call (system pid counter):"]
    for variant, n in results["pids_per_call"].items():
        lines.append(f"  {variant:<15} {n}")
    lines += ["", "set_default_route after the namespace's process died:"]
    for variant, what in results["after_death"].items():
        lines.append(f"  {variant:<15} {what}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: 20 calls per variant and call")
    ap.add_argument("--calls", type=int, default=None, help="timed calls per variant and call (default 200)")
    ap.add_argument("--hang-s", type=int, default=HANG_S, help=f"a figure taking longer is recorded as hung "
                                                               f"(default {HANG_S})")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "netns_calls.json")
    args = ap.parse_args(argv)
    n = args.calls or (20 if args.quick else 200)
    global hang_s
    hang_s = args.hang_s
    if os.geteuid() != 0:
        print("netns_calls: needs root (it creates a network namespace)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the finally below still cleans up
    faulthandler.register(signal.SIGUSR1)  # kill -USR1 <pid>: where a hung call waits

    def progress(msg: str) -> None:
        print(f"[netns_calls {time.strftime('%H:%M:%S')}] {msg}", flush=True)

    scratch = Scratch()
    kept = None
    try:
        t0 = time.perf_counter()
        kept = netns_open(scratch.path)
        first_open = (time.perf_counter() - t0) * 1e3
        checked = guarded(lambda: {"ok": check_answers(scratch, kept)})
        results = {"machine": {"cpus": os.cpu_count(), "kernel": platform.release(),
                               "python": platform.python_version(), "pyroute2": pyroute2.__version__},
                   "calls_per_figure": n, "answers_checked": "hung" not in checked, "baseline": BASELINE,
                   "calls": {c: {} for c in CALLS}}
        for variant in VARIANTS:
            for call in CALLS:
                fn = calls_for(variant, scratch, kept)[call]
                results["calls"][call][variant] = guarded(lambda: stats(timed(fn, n)))
                progress(f"{call:<18} {variant:<15} {_fmt(results['calls'][call][variant])}")

        def open_close_netns() -> None:
            netns_open(scratch.path).close()

        def open_close_socket() -> None:
            setns_socket(scratch.pid).close()

        def open_close_ipr() -> None:
            IPRoute(fileno=setns_socket(scratch.pid).detach(), groups=0).close()

        results["open"] = {"NetNS (first in this process)": {"median": first_open, "p95": first_open},
                           "NetNS open+close": guarded(lambda: stats(timed(open_close_netns, n))),
                           "setns thread: socket only": guarded(lambda: stats(timed(open_close_socket, n))),
                           "setns thread: socket+IPRoute": guarded(lambda: stats(timed(open_close_ipr, n)))}
        pids = {}
        for variant in VARIANTS:
            fn = calls_for(variant, scratch, kept)["set_default_route"]
            # the least of five: other processes on the host start some too
            pids[variant] = guarded(lambda: {"n": min(_pids_used(fn) for _ in range(5))}).get("n", "hung")
        results["pids_per_call"] = pids
        results["after_death"] = after_death(progress)
        figures = results["calls"]
        results["ratios"] = {f"{call}: {BASELINE} / setns thread (x faster)":
                             figures[call][BASELINE]["median"] / figures[call]["setns thread"]["median"]
                             for call in CALLS if "hung" not in figures[call]["setns thread"]}
        report(args.json, results, table(results), progress)
        return 0
    finally:
        if kept is not None:
            kept.close()
        scratch.close()


def _pids_used(fn: Callable[[], object]) -> int:
    """Pids handed out (processes and threads started) during one call, on the whole host:
    the last pid in /proc/loadavg, before and after."""
    before = _clone_count()
    fn()
    return _clone_count() - before


if __name__ == "__main__":
    sys.exit(main())
