"""Firewall rules as data. `render_*` turn a whole desired state into one iptables-restore
batch that makes our chains match it exactly (Tailscale's Set(config) idea): declaring a
chain in a --noflush batch empties it, so re-applying is idempotent, and per-run chains
that are no longer wanted are emptied and deleted in the same atomic batch.

Layout inside the VPN client container's namespace:
  nat    PREROUTING  -> VPNAGENT-PRE  -> VA-<run>-N   (DNAT vpn_ip:port -> holder:port)
  nat    POSTROUTING -> VPNAGENT-POST                 (MASQUERADE out of tun0, hairpin)
  filter FORWARD (policy DROP) -> VPNAGENT-FWD -> VA-<run>-F (only tun0/iso <-> holder)
and on the host:
  filter DOCKER-USER -> VA-HOST-<node> (the isolated bridge may talk to the VPN subnet)
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

PRE, POST, FWD = "VPNAGENT-PRE", "VPNAGENT-POST", "VPNAGENT-FWD"
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
    run_id: int
    holder_ip: str
    forwards: tuple[Forward, ...]


@dataclass(frozen=True)
class VpnClientRules:
    """Everything the VPN client namespace must forward, for all live runs of the node."""

    vpn_ip: str
    iso_if: str
    iso_subnet: str
    tun_if: str = "tun0"
    runs: tuple[RunRules, ...] = ()


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
    _check(d.vpn_ip, d.iso_if, d.iso_subnet, d.tun_if)
    nat: list[str] = [f":{PRE} - [0:0]", f":{POST} - [0:0]"]
    flt: list[str] = [":FORWARD DROP [0:0]", f":{FWD} - [0:0]"]
    nat_body: list[str] = []
    flt_body: list[str] = [f"-A {FWD} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT"]
    nat_body.append(f"-A {POST} -o {d.tun_if} -j MASQUERADE")
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
    jumps_flt = [] if current.has_rule("filter", f"-A FORWARD -j {FWD}") else [("FORWARD", FWD)]
    out = ["*nat", *nat, *nat_body]
    out += [f"-A {t} -j {r}" for t, r in jumps_nat]
    out += [f"-X {c}" for c in stale_nat]
    out += ["COMMIT", "*filter", *flt, *flt_body]
    out += [f"-A {t} -j {r}" for t, r in jumps_flt]
    out += [f"-X {c}" for c in stale_flt]
    out.append("COMMIT")
    return "\n".join(out) + "\n"


def _run_lines(d: VpnClientRules, run: RunRules) -> tuple[list[str], list[str]]:
    """One run's chains (declaration first), their rules and the jumps into them."""
    _check(run.holder_ip)
    n, f = nat_chain(run.run_id), filter_chain(run.run_id)
    nat = [f":{n} - [0:0]", f"-A {PRE} -d {d.vpn_ip}/32 -j {n}"]
    flt = [f":{f} - [0:0]", f"-A {FWD} -j {f}"]
    for fw in run.forwards:
        nat.append(f"-A {n} -d {d.vpn_ip}/32 -p tcp -m tcp --dport {fw.vpn_port} "
                   f"-j DNAT --to-destination {run.holder_ip}:{fw.target_port}")
        for in_if in (d.tun_if, d.iso_if):
            flt.append(f"-A {f} -i {in_if} -d {run.holder_ip}/32 -p tcp -m tcp --dport {fw.target_port} -j ACCEPT")
    flt.append(f"-A {f} -i {d.iso_if} -o {d.tun_if} -s {run.holder_ip}/32 -j ACCEPT")
    return nat, flt


def render_run_added(d: VpnClientRules, run: RunRules) -> str:
    """Fast path: add one run to a namespace known to match `d` without it. The batch size
    does not grow with the number of live runs (a full rewrite would)."""
    _check(d.vpn_ip, d.iso_if, d.tun_if)
    nat, flt = _run_lines(d, run)
    return "\n".join(["*nat", *nat, "COMMIT", "*filter", *flt, "COMMIT"]) + "\n"


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
    if not current.has_rule("filter", f"-A FORWARD -j {FWD}") or not current.has_rule("nat", f"-A PREROUTING -j {PRE}"):
        found.append("installed the base rules (FORWARD policy DROP, dispatch chains)")
    return found


def render_host(chain: str, bridge: str, vpn_subnet: str, current: TableState, present: bool = True) -> str:
    """The host's DOCKER-USER exception for one node's isolated bridge (or its removal).
    Docker drops forwarded packets leaving an --internal network's subnet; VPN traffic must
    pass between the algorithm containers and the VPN client on that bridge."""
    _check(chain, bridge, vpn_subnet)
    jump = f"-A DOCKER-USER -j {chain}"
    has_chain = chain in current.chains.get("filter", set())
    has_jump = current.has_rule("filter", jump)
    lines = ["*filter"]
    if present:
        lines += [
            f":{chain} - [0:0]",
            f"-A {chain} -i {bridge} -d {vpn_subnet} -j ACCEPT",
            f"-A {chain} -o {bridge} -s {vpn_subnet} -j ACCEPT",
        ]
        if not has_jump:
            lines.append(f"-I DOCKER-USER 1 -j {chain}")
    else:
        if has_jump:
            lines.append(f"-D DOCKER-USER -j {chain}")
        if has_chain:
            lines += [f":{chain} - [0:0]", f"-X {chain}"]
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"
