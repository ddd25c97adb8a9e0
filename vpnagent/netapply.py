"""One entry to the node's network, in the shape of Tailscale's `router.Set(config)`:
`NetworkApplier.apply(desired)` makes the kernel match one declarative picture of the whole
node network (the host's exception for the isolated bridge, the VPN client's rules, every
holder's default route) and may be called again and again with the same or a new picture.

The applier remembers what it last applied successfully and picks the cheapest correct
change itself, so no caller builds or chooses a batch:

- same VPN client namespace, same base rules: one per-run batch (runs added, removed, or
  whose rules changed, e.g. a family peer appearing on this node), routes only for holders
  not routed yet, the host chain only when its part changed. Its size follows the change,
  not the number of live runs (the wiring benchmark's 200-live target).
- anything else (first call, a new namespace, base rules changed, a verify pass, a fast
  batch that failed): the full rewrite: iptables-save, drift report, render_vpn_client,
  one restore, every route.

firewall.py renders; this module decides which render to run and runs it through a small
`Runner` (nsenter today, a fake that interprets the batches in the tests)."""
from __future__ import annotations

import logging
import threading
import time
import types
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol

from . import firewall
from .netns import Netns, NetnsError

log = logging.getLogger(__name__)

HOST = None  # the pid that names the host's own namespace in a Runner call
ApplyPath = Literal["full", "fast", "unchanged", "no-vpn"]


@dataclass(frozen=True)
class HostRules:
    """The host's rules for the node's isolated bridge: firewall.render_host's arguments
    except the VPN client's address, which the VPN part carries (one fact, one place)."""

    chain: str
    bridge: str
    vpn_subnet: str
    gateway: str | None = None  # the node proxy's address on the bridge
    proxy_port: int | None = None


@dataclass(frozen=True)
class VpnClientNet:
    """The VPN client's part of the picture. `pid` names the namespace the rules live in (a
    replaced client is a new namespace: nothing in it can be trusted); `iso_ip` is its address
    on the isolated network, the default gateway of every holder and the one container the
    host chain lets talk on the bridge; `holders` maps run id → holder pid, the namespaces
    whose default route must point at `iso_ip`. A mapping is accepted and kept read-only."""

    pid: int
    iso_ip: str
    rules: firewall.VpnClientRules
    holders: Mapping[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "holders", types.MappingProxyType(dict(self.holders)))


@dataclass(frozen=True)
class NodeNetwork:
    """The whole node network as one value: what `apply` makes true. `vpn` is None while the
    node has no VPN: then only the host part is applied (runs stay unreachable, not open)."""

    host: HostRules
    vpn: VpnClientNet | None = None


@dataclass(frozen=True)
class RouteFailure:
    """A holder whose route could not be set: almost always a holder that is gone. Reported,
    not raised: the other runs are fine, and the agent ends that run on its own check."""

    run_id: int
    holder_pid: int
    error: str


@dataclass(frozen=True)
class ApplyResult:
    """What one apply did, for logs, status, metrics and benchmarks. `path` is about the
    VPN client namespace: "full" rewrite, "fast" per-run batch, "unchanged" (nothing to send
    there) or "no-vpn"; `reason` says why a full rewrite was needed; `fast_error` is the
    error of a fast batch that fell back to it."""

    path: ApplyPath
    reason: str = ""
    pid: int | None = None
    host_applied: bool = False
    batch_lines: int = 0  # lines of the VPN client's batch (0: none sent)
    added: tuple[int, ...] = ()  # run ids, fast path only (a full rewrite rewrites all)
    removed: tuple[int, ...] = ()
    changed: tuple[int, ...] = ()
    routed: tuple[int, ...] = ()  # run ids whose holder route was set
    route_failures: tuple[RouteFailure, ...] = ()
    fixes: tuple[str, ...] = ()  # drift found in namespaces believed in sync, now corrected
    fast_error: str | None = None
    seconds: float = 0.0


class Runner(Protocol):
    """The three things apply needs from the kernel. `pid` None is the host's namespace."""

    def iptables_save(self, pid: int | None, table: str | None = None) -> str: ...

    def iptables_restore(self, pid: int | None, batch: str) -> None:
        """Apply one batch atomically with --noflush; raise NetnsError when it is refused."""

    def set_default_route(self, pid: int, gateway: str) -> None:
        """Raise NetnsError when it cannot (the namespace is gone)."""


class NetnsRunner:
    """The real runner: nsenter into each namespace (netns.Netns). `host_pid` lets a test
    stand a scratch namespace in for the host, so it never touches the host's firewall."""

    def __init__(self, host_pid: int | None = None) -> None:
        self.host_pid = host_pid

    def _ns(self, pid: int | None) -> Netns:
        return Netns(self.host_pid if pid is HOST else pid)

    def iptables_save(self, pid: int | None, table: str | None = None) -> str:
        return self._ns(pid).run(["iptables-save", *(["-t", table] if table else [])]).stdout

    def iptables_restore(self, pid: int | None, batch: str) -> None:
        self._ns(pid).iptables_restore(batch)

    def set_default_route(self, pid: int, gateway: str) -> None:
        Netns(pid).set_default_route(gateway)


class NetworkApplier:
    """Makes the node network match a `NodeNetwork`, idempotently. It believes a namespace
    matches only what it applied there itself and successfully; anything it cannot vouch for
    gets the full rewrite. Thread-safe (one apply at a time)."""

    def __init__(self, runner: Runner | None = None) -> None:
        self.runner: Runner = runner or NetnsRunner()
        self._lock = threading.Lock()
        self._host: tuple[HostRules, str | None] | None = None  # host part as applied
        self._vpn: VpnClientNet | None = None  # VPN part whose rules are in place
        self._routed: dict[int, int] = {}  # run id -> holder pid routed via self._vpn.iso_ip
        self.last: ApplyResult | None = None

    @property
    def synced_pid(self) -> int | None:
        """The VPN client namespace believed to match the last applied picture."""
        return self._vpn.pid if self._vpn else None

    def forget(self) -> None:
        """Believe nothing: the next apply rewrites everything (and reports no drift, since
        nothing it finds contradicts a belief)."""
        with self._lock:
            self._reset()

    def _reset(self) -> None:
        self._host, self._vpn, self._routed = None, None, {}

    def apply(self, desired: NodeNetwork, verify: bool = False) -> ApplyResult:
        """Make the kernel match `desired`. `verify` re-reads and rewrites everything (the
        periodic pass that repairs what others changed). Raises NetnsError (or ValueError
        for a value no rule may carry) only when the namespaces could not be brought in line;
        it then believes nothing, so the next call is a full rewrite."""
        t0 = time.perf_counter()
        with self._lock:
            try:
                host_applied, host_fixes = self._apply_host(desired, verify)
                if desired.vpn is None:
                    self._vpn, self._routed = None, {}
                    result = ApplyResult("no-vpn")
                else:
                    result = self._apply_vpn(desired.vpn, verify)
            except BaseException:
                self._reset()
                raise
            result = replace(result, host_applied=host_applied, fixes=tuple(host_fixes) + result.fixes,
                             seconds=time.perf_counter() - t0)
            self.last = result
            return result

    # ------------------------------------------------------------------ host
    def _apply_host(self, desired: NodeNetwork, verify: bool) -> tuple[bool, list[str]]:
        client_ip = desired.vpn.iso_ip if desired.vpn else None
        key = (desired.host, client_ip)
        if self._host == key and not verify:
            return False, []
        # drift only means something in a chain we wrote ourselves under this name
        believed = self._host is not None and self._host[0].chain == desired.host.chain
        self._host = None
        h = desired.host
        current = firewall.parse_save(self.runner.iptables_save(HOST, "filter"))
        fixes = firewall.host_drift(h.chain, current) if believed else []
        self.runner.iptables_restore(HOST, firewall.render_host(
            h.chain, h.bridge, h.vpn_subnet, current, gateway=h.gateway, proxy_port=h.proxy_port,
            vpn_client_ip=client_ip))
        self._host = key
        return True, fixes

    # ------------------------------------------------------------------ VPN client
    def _apply_vpn(self, vpn: VpnClientNet, verify: bool) -> ApplyResult:
        prev = self._vpn
        if prev is None:
            reason = "no namespace in sync (first apply, or the last one failed)"
        elif prev.pid != vpn.pid:
            reason = f"new VPN client namespace (pid {prev.pid} -> {vpn.pid})"
        elif verify:
            reason = "verify pass"
        elif _base(prev) != _base(vpn):
            reason = "base rules changed"
        else:
            try:
                return self._fast(prev, vpn)
            except NetnsError as exc:  # the batch is atomic: the namespace is as it was
                log.warning("firewall: fast batch refused (%s); full rewrite", exc)
                return self._full(vpn, "fast batch failed", fast_error=str(exc))
        return self._full(vpn, reason)

    def _fast(self, prev: VpnClientNet, vpn: VpnClientNet) -> ApplyResult:
        d = vpn.rules
        old = {r.run_id: r for r in prev.rules.runs}
        new = {r.run_id: r for r in d.runs}
        removed = sorted(old.keys() - new.keys())
        added = sorted(new.keys() - old.keys())
        changed = sorted(i for i in old.keys() & new.keys() if old[i] != new[i])
        parts = [firewall.render_run_removed(d, i) for i in removed]
        parts += [firewall.render_run_added(d, new[i]) for i in added]
        for i in changed:
            # only the family moved (the usual case): the filter chain alone
            same_nat = (old[i].holder_ip, old[i].forwards) == (new[i].holder_ip, new[i].forwards)
            parts.append(firewall.render_run_refreshed(d, new[i]) if same_nat
                         else firewall.render_run_replaced(d, new[i]))
        batch = "".join(parts)
        if batch:
            self.runner.iptables_restore(vpn.pid, batch)
        self._vpn = vpn
        routed, failures = self._route(vpn, only_missing=True)
        return ApplyResult("fast" if batch else "unchanged", pid=vpn.pid, batch_lines=batch.count("\n"),
                           added=tuple(added), removed=tuple(removed), changed=tuple(changed),
                           routed=routed, route_failures=failures)

    def _full(self, vpn: VpnClientNet, reason: str, fast_error: str | None = None) -> ApplyResult:
        prev = self._vpn
        self._vpn, self._routed = None, {}  # believed again only once the batch is in
        current = firewall.parse_save(self.runner.iptables_save(vpn.pid))
        fixes = _drift(prev.rules, vpn.rules, current) if prev is not None and prev.pid == vpn.pid else []
        batch = firewall.render_vpn_client(vpn.rules, current)
        self.runner.iptables_restore(vpn.pid, batch)
        self._vpn = vpn
        routed, failures = self._route(vpn, only_missing=False)
        return ApplyResult("full", reason=reason, pid=vpn.pid, batch_lines=batch.count("\n"), routed=routed,
                           route_failures=failures, fixes=tuple(fixes), fast_error=fast_error)

    def _route(self, vpn: VpnClientNet, only_missing: bool) -> tuple[tuple[int, ...], tuple[RouteFailure, ...]]:
        """Point holders' default routes at the VPN client. A failed one stays unrouted, so
        the next apply tries it again (level-triggered) until its run leaves the picture."""
        self._routed = {r: p for r, p in self._routed.items() if vpn.holders.get(r) == p}
        routed, failures = [], []
        for run_id, pid in sorted(vpn.holders.items()):
            if only_missing and self._routed.get(run_id) == pid:
                continue
            try:
                self.runner.set_default_route(pid, vpn.iso_ip)
            except NetnsError as exc:
                log.warning("run %s: cannot set the route in its holder (%s)", run_id, exc)
                failures.append(RouteFailure(run_id, pid, str(exc)))
                continue
            self._routed[run_id] = pid
            routed.append(run_id)
        return tuple(routed), tuple(failures)


def remove_host(host: HostRules, runner: Runner | None = None) -> bool:
    """Take the host exception out (`vpnagent cleanup`, whether or not an agent runs): the
    node's chain and its jumps. False when there was none. The VPN client's rules go with
    its namespace."""
    runner = runner or NetnsRunner()
    current = firewall.parse_save(runner.iptables_save(HOST, "filter"))
    if host.chain not in current.chains.get("filter", set()):
        return False
    runner.iptables_restore(HOST, firewall.render_host(host.chain, host.bridge, host.vpn_subnet, current,
                                                       present=False))
    return True


def _base(vpn: VpnClientNet) -> tuple[str, firewall.VpnClientRules]:
    """Everything of the VPN part that is not per run: when it differs, per-run batches
    cannot express the change (every run's rules and every route mention it)."""
    return vpn.iso_ip, replace(vpn.rules, runs=())


def _drift(believed: firewall.VpnClientRules, desired: firewall.VpnClientRules,
           current: firewall.TableState) -> list[str]:
    """firewall.drift measured against what this applier wrote, not against the new picture:
    a run that is being added or removed in this very apply is not drift, whether or not its
    chains are there (a fast batch that failed on a missing chain is the common case)."""
    kept = {r.run_id for r in believed.runs} & {r.run_id for r in desired.runs}
    moving = {r.run_id for r in believed.runs} ^ {r.run_id for r in desired.runs}
    hide = {c for i in moving for c in (firewall.nat_chain(i), firewall.filter_chain(i))}
    view = firewall.TableState({t: cs - hide for t, cs in current.chains.items()}, current.rules)
    return firewall.drift(replace(desired, runs=tuple(r for r in desired.runs if r.run_id in kept)), view)
