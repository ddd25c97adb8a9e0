"""Firewall rules as data. `render_*` turn a whole desired state into one iptables-restore
batch that makes our chains match it exactly (Tailscale's Set(config) idea): declaring a
chain in a --noflush batch empties it, so re-applying is idempotent, and per-run chains
that are no longer wanted are emptied and deleted in the same atomic batch.

Layout inside the VPN client container's namespace:
  nat    PREROUTING  -> VPNAGENT-PRE  -> VA-<run>-N   (DNAT vpn_ip:port -> holder:port)
  nat    POSTROUTING -> VPNAGENT-POST                 (MASQUERADE out of tun0, hairpin)
  filter FORWARD (policy DROP) -> VPNAGENT-FWD -> VA-<run>-F (only tun0/iso <-> holder)
With the WireGuard data plane a second tunnel interface (wg0: direct links to peers) gets
exactly the rules tun0 gets: WireGuard only accepts a peer's packets from that peer's VPN
IP (allowed-ips), as the OpenVPN server does, so the source-address rules mean the same.
and on the host:
  filter DOCKER-USER -> VA-HOST-<node> (the isolated bridge may talk to the VPN subnet)
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

PRE, POST, FWD, IN = "VPNAGENT-PRE", "VPNAGENT-POST", "VPNAGENT-FWD", "VPNAGENT-IN"
MSS = "VPNAGENT-MSS"  # mangle: TCP segments through the tunnel fit the path (pathmtu.py)
# A test switch, never a config option: the hostile-algorithm test sets it on one agent to
# show that its same-node attack succeeds without the bridge DROP (so the test can fail).
WEAKEN_SAME_NODE = os.environ.get("VPNAGENT_TEST_WEAKEN_FIREWALL") == "same-node"
RUN_CHAIN_RE = re.compile(r"^VA-(\d+)-[NF]$")
SAFE_TOKEN = re.compile(r"^[A-Za-z0-9_.:/-]+$")


def nat_chain(run_id: int) -> str:
    return f"VA-{run_id}-N"


def filter_chain(run_id: int) -> str:
    return f"VA-{run_id}-F"


@dataclass(frozen=True)
class Forward:
    """VPN-side port on the node's VPN IP → the run's holder address and container port."""

    vpn_port: int
    target_port: int


@dataclass(frozen=True)
class RunRules:
    """One run's wiring. Deny by default: only the peers of its task family may connect to
    its ports, and it may connect only to its family's ports."""

    run_id: int
    holder_ip: str
    forwards: tuple[Forward, ...]
    peer_ips: tuple[str, ...] = ()  # VPN IPs of nodes running runs of the task family
    local_peers: tuple[str, ...] = ()  # holder IPs of family runs on this node (hairpin senders)
    destinations: tuple[tuple[str, int], ...] = ()  # (VPN IP, port) of the family's runs


@dataclass(frozen=True)
class VpnClientRules:
    """Everything the VPN client namespace must forward, for all live runs of the node."""

    vpn_ip: str
    iso_if: str
    iso_subnet: str
    tun_if: str = "tun0"
    runs: tuple[RunRules, ...] = ()
    mss: int | None = None  # largest TCP segment through the tunnel; None: no clamp
    p2p_if: str | None = None  # direct links to peers (wg0), beside tun0; None: hub only
    p2p_mss: int | None = None

    def tunnels(self) -> tuple[tuple[str, int | None], ...]:
        """(interface, MSS clamp) of every tunnel interface: traffic to and from other
        nodes may use any of them, under the same rules."""
        return ((self.tun_if, self.mss),) + (((self.p2p_if, self.p2p_mss),) if self.p2p_if else ())

    def check(self) -> None:
        _check(self.vpn_ip, self.iso_if, *(t for t, _ in self.tunnels()))


@dataclass
class TableState:
    """What iptables-save shows of one namespace: chains per table and the rules."""

    chains: dict[str, set[str]] = field(default_factory=dict)
    rules: dict[str, list[str]] = field(default_factory=dict)

    def has_rule(self, table: str, rule: str) -> bool:
        return rule in self.rules.get(table, [])

    def run_chains(self, table: str) -> set[str]:
        return {c for c in self.chains.get(table, set()) if RUN_CHAIN_RE.match(c)}


def parse_save(text: str) -> TableState:
    """Read iptables-save's restore format (made for machines, unlike `iptables -L`)."""
    state = TableState()
    table = ""
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
            state.chains.setdefault(table, set())
            state.rules.setdefault(table, [])
        elif line.startswith(":") and table:
            state.chains[table].add(line[1:].split()[0])
        elif line.startswith("-A ") and table:
            state.rules[table].append(line.strip())
    return state


def _check(*tokens: object) -> None:
    # Values come from Docker and the server; refuse anything that could smuggle a new rule.
    for tok in tokens:
        if not SAFE_TOKEN.match(str(tok)):
            raise ValueError(f"refusing unsafe value {str(tok)[:40]!r} in a firewall rule")


def render_vpn_client(desired: VpnClientRules, current: TableState) -> str:
    """One batch that makes the VPN client namespace match `desired` exactly."""
    d = desired
    d.check()
    _check(d.iso_subnet)
    nat: list[str] = [f":{PRE} - [0:0]", f":{POST} - [0:0]"]
    flt: list[str] = [":FORWARD DROP [0:0]", f":{FWD} - [0:0]", f":{IN} - [0:0]"]
    nat_body: list[str] = []
    flt_body: list[str] = [f"-A {FWD} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT"]
    # Nothing may open a connection to the VPN client itself, neither from the VPN nor from
    # the algorithms (its own OpenVPN traffic runs on the other interface).
    for iface in (*(t for t, _ in d.tunnels()), d.iso_if):
        flt_body += [f"-A {IN} -i {iface} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
                     f"-A {IN} -i {iface} -j DROP"]
    nat_body += [f"-A {POST} -o {tun} -j MASQUERADE" for tun, _ in d.tunnels()]
    # Hairpin: a run reaching its own node's VPN IP is DNATed back onto the isolated
    # network; masquerade so the reply returns through us and gets un-NATed.
    nat_body.append(f"-A {POST} -o {d.iso_if} -s {d.iso_subnet} -d {d.iso_subnet} -j MASQUERADE")
    wanted_nat, wanted_flt = set(), set()
    for run in d.runs:
        rn, rf = _run_lines(d, run)
        wanted_nat.add(nat_chain(run.run_id))
        wanted_flt.add(filter_chain(run.run_id))
        nat.append(rn[0])
        flt.append(rf[0])
        nat_body += rn[1:]
        flt_body += rf[1:]
    stale_nat = sorted(current.run_chains("nat") - wanted_nat)
    stale_flt = sorted(current.run_chains("filter") - wanted_flt)
    # Stale chains: declare (= empty) them, then delete them after the dispatch chains that
    # referenced them have been rewritten without the jump.
    nat += [f":{c} - [0:0]" for c in stale_nat]
    flt += [f":{c} - [0:0]" for c in stale_flt]
    jumps_nat = [(t, r) for t, r in (("PREROUTING", PRE), ("POSTROUTING", POST))
                 if not current.has_rule("nat", f"-A {t} -j {r}")]
    jumps_flt = [(t, r) for t, r in (("FORWARD", FWD), ("INPUT", IN))
                 if not current.has_rule("filter", f"-A {t} -j {r}")]
    out = _render_mss(d, current)
    out += ["*nat", *nat, *nat_body]
    out += [f"-A {t} -j {r}" for t, r in jumps_nat]
    out += [f"-X {c}" for c in stale_nat]
    out += ["COMMIT", "*filter", *flt, *flt_body]
    out += [f"-A {t} -j {r}" for t, r in jumps_flt]
    out += [f"-X {c}" for c in stale_flt]
    out.append("COMMIT")
    return "\n".join(out) + "\n"


def _render_mss(d: VpnClientRules, current: TableState) -> list[str]:
    """SYNs into and out of the tunnel announce at most `mss` (only ever lowered), so both
    ends of every connection send segments the path carries."""
    lines = ["*mangle", f":{MSS} - [0:0]"]
    for tun, mss in d.tunnels():
        if mss is not None:
            lines += [f"-A {MSS} -{flag} {tun} -p tcp -m tcp --tcp-flags SYN,RST SYN -m tcpmss --mss {int(mss) + 1}:65535 "
                      f"-j TCPMSS --set-mss {int(mss)}" for flag in ("o", "i")]
    if not current.has_rule("mangle", f"-A FORWARD -j {MSS}"):
        lines.append(f"-A FORWARD -j {MSS}")
    return lines + ["COMMIT"]


def _run_lines(d: VpnClientRules, run: RunRules) -> tuple[list[str], list[str]]:
    """One run's chains (declaration first), the jumps into them and their rules."""
    n, f = nat_chain(run.run_id), filter_chain(run.run_id)
    nat = [f":{n} - [0:0]", f"-A {PRE} -d {d.vpn_ip}/32 -j {n}"] + _nat_rules(d, run)
    flt = [f":{f} - [0:0]", f"-A {FWD} -j {f}"] + _filter_rules(d, run)
    return nat, flt


def _nat_rules(d: VpnClientRules, run: RunRules) -> list[str]:
    _check(run.holder_ip)
    n = nat_chain(run.run_id)
    return [f"-A {n} -d {d.vpn_ip}/32 -p tcp -m tcp --dport {fw.vpn_port} "
            f"-j DNAT --to-destination {run.holder_ip}:{fw.target_port}" for fw in run.forwards]


def _filter_rules(d: VpnClientRules, run: RunRules) -> list[str]:
    _check(run.holder_ip, *run.peer_ips, *run.local_peers, *(ip for ip, _ in run.destinations))
    f, h = filter_chain(run.run_id), run.holder_ip
    rules = []
    for fw in run.forwards:
        # from other nodes: masqueraded, so the source is the sending node's VPN IP
        rules += [f"-A {f} -s {ip}/32 -d {h}/32 -i {tun} -p tcp -m tcp --dport {fw.target_port} -j ACCEPT"
                  for tun, _ in d.tunnels() for ip in sorted(set(run.peer_ips))]
        # from this node (hairpin through our VPN IP): the source is the sending holder
        rules += [f"-A {f} -s {ip}/32 -d {h}/32 -i {d.iso_if} -p tcp -m tcp --dport {fw.target_port} -j ACCEPT"
                  for ip in sorted(set(run.local_peers))]
    for ip, port in sorted(set(run.destinations)):
        if ip != d.vpn_ip:  # own node: DNATed back onto the isolated network, checked above
            rules += [f"-A {f} -s {h}/32 -d {ip}/32 -i {d.iso_if} -o {tun} -p tcp -m tcp --dport {int(port)} -j ACCEPT"
                      for tun, _ in d.tunnels()]
    return rules


def render_run_refreshed(d: VpnClientRules, run: RunRules) -> str:
    """Fast path: the run's task family changed; rewrite its filter chain (declaring it
    empties it; the jump into it stays)."""
    d.check()
    return "\n".join(["*filter", f":{filter_chain(run.run_id)} - [0:0]", *_filter_rules(d, run), "COMMIT"]) + "\n"


def render_run_added(d: VpnClientRules, run: RunRules) -> str:
    """Fast path: add one run to a namespace known to match `d` without it. The batch size
    does not grow with the number of live runs (a full rewrite would)."""
    d.check()
    nat, flt = _run_lines(d, run)
    return "\n".join(["*nat", *nat, "COMMIT", "*filter", *flt, "COMMIT"]) + "\n"


def render_run_replaced(d: VpnClientRules, run: RunRules) -> str:
    """Fast path: a live run's holder address or ports changed (not only its family):
    rewrite both of its chains. Declaring them empties them; the jumps into them depend only
    on the VPN IP, so they stay."""
    d.check()
    n, f = nat_chain(run.run_id), filter_chain(run.run_id)
    return "\n".join(["*nat", f":{n} - [0:0]", *_nat_rules(d, run), "COMMIT",
                      "*filter", f":{f} - [0:0]", *_filter_rules(d, run), "COMMIT"]) + "\n"


def render_run_removed(d: VpnClientRules, run_id: int) -> str:
    """Fast path: remove one run's jumps and chains exactly (the jump specs match the ones
    render_run_added wrote, so -D finds them)."""
    _check(d.vpn_ip)
    n, f = nat_chain(run_id), filter_chain(run_id)
    return "\n".join([
        "*nat", f"-D {PRE} -d {d.vpn_ip}/32 -j {n}", f":{n} - [0:0]", f"-X {n}", "COMMIT",
        "*filter", f"-D {FWD} -j {f}", f":{f} - [0:0]", f"-X {f}", "COMMIT",
    ]) + "\n"


def drift(desired: VpnClientRules, current: TableState) -> list[str]:
    """What a full reconcile is about to correct, in words (for `vpnagent status`)."""
    want = {run.run_id for run in desired.runs}
    have = {int(RUN_CHAIN_RE.match(c).group(1)) for c in current.run_chains("nat") | current.run_chains("filter")}
    found = []
    if want - have:
        found.append(f"restored missing rules of run(s) {', '.join(map(str, sorted(want - have)))}")
    if have - want:
        found.append(f"removed stale rules of run(s) {', '.join(map(str, sorted(have - want)))}")
    if not (current.has_rule("filter", f"-A FORWARD -j {FWD}") and current.has_rule("nat", f"-A PREROUTING -j {PRE}")
            and current.has_rule("mangle", f"-A FORWARD -j {MSS}")):
        found.append("installed the base rules (FORWARD policy DROP, dispatch chains, MSS clamp)")
    return found


def host_drift(chain: str, current: TableState) -> list[str]:
    """What a host rewrite is about to correct, in words: our chains or the jumps into them
    are gone (a restarted dockerd rebuilds DOCKER-USER; someone flushed INPUT)."""
    in_chain = f"{chain}-IN"
    have = current.chains.get("filter", set())
    missing = [c for c in (chain, in_chain) if c not in have]
    missing += [f"{hook} -> {target}" for hook, target in (("DOCKER-USER", chain), ("INPUT", in_chain))
                if target in have and not current.has_rule("filter", f"-A {hook} -j {target}")]
    return [f"restored the host rules of the isolated bridge ({', '.join(missing)})"] if missing else []


def render_host(chain: str, bridge: str, vpn_subnet: str, current: TableState, present: bool = True,
                gateway: str | None = None, proxy_port: int | None = None, vpn_client_ip: str | None = None) -> str:
    """The host's rules for one node's isolated bridge (or their removal):
    - DOCKER-USER → `chain`: Docker drops forwarded packets leaving an --internal network's
      subnet; VPN traffic between the algorithms and the VPN client on that bridge must
      pass. Only bridged traffic (in and out of the same bridge): nothing is routed off it.
      Everything else between two containers on the bridge is dropped: runs on the same
      node meet only through the VPN client (`vpn_client_ip`), whose rules decide per task
      family, never directly (that would bypass them; Docker's ICC would let it through).
    - INPUT → `chain`-IN: from the bridge, the host accepts only the node proxy; every other
      service of the host (and other nodes' proxies) is out of the algorithms' reach."""
    _check(chain, bridge, vpn_subnet)
    in_chain = f"{chain}-IN"
    jumps = [("DOCKER-USER", chain, "-I DOCKER-USER 1"), ("INPUT", in_chain, "-I INPUT 1")]
    lines = ["*filter"]
    if present:
        lines += [
            f":{chain} - [0:0]",
            f"-A {chain} -i {bridge} -o {bridge} -d {vpn_subnet} -j ACCEPT",
            f"-A {chain} -i {bridge} -o {bridge} -s {vpn_subnet} -j ACCEPT",
        ]
        if vpn_client_ip:
            _check(vpn_client_ip)
            lines += [f"-A {chain} -i {bridge} -o {bridge} -s {vpn_client_ip}/32 -j ACCEPT",
                      f"-A {chain} -i {bridge} -o {bridge} -d {vpn_client_ip}/32 -j ACCEPT"]
        if not WEAKEN_SAME_NODE:
            lines.append(f"-A {chain} -i {bridge} -o {bridge} -j DROP")
        lines += [
            f":{in_chain} - [0:0]",
            f"-A {in_chain} -i {bridge} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
        ]
        if gateway and proxy_port:
            _check(gateway)
            lines.append(f"-A {in_chain} -i {bridge} -d {gateway}/32 -p tcp -m tcp --dport {int(proxy_port)} -j ACCEPT")
        lines.append(f"-A {in_chain} -i {bridge} -j DROP")
        lines += [f"{insert} -j {target}" for hook, target, insert in jumps
                  if not current.has_rule("filter", f"-A {hook} -j {target}")]
    else:
        lines += [f"-D {hook} -j {target}" for hook, target, _ in jumps
                  if current.has_rule("filter", f"-A {hook} -j {target}")]
        for c in (chain, in_chain):
            if c in current.chains.get("filter", set()):
                lines += [f":{c} - [0:0]", f"-X {c}"]
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"
