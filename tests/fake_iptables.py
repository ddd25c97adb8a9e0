"""A small model of `iptables-restore --noflush` and `iptables-save` over parsed tables, and
a fake netapply.Runner on top of it that records every call.

It knows the statements firewall.py emits (table sections, chain declarations, -A, -I, -D,
-F, -N, -X, COMMIT) and is strict where iptables is strict, so a batch the kernel would
refuse is refused here too: a rule in or a jump to a chain that does not exist, deleting a
rule that is not there, deleting a chain that is built in, still referenced or not empty, a
policy on a user chain, a section without COMMIT. A batch applies entirely or not at all
(iptables-nft commits one restore as one transaction).

Declaring a chain follows iptables-restore with --noflush: a user chain is created, or
emptied when it exists; a built-in chain only gets its policy (it is never flushed)."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

from vpnagent.netns import NetnsError

BUILTIN_CHAINS = {
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
    "raw": ("PREROUTING", "OUTPUT"),
}
TARGETS = {"ACCEPT", "DROP", "RETURN", "REJECT", "LOG", "MASQUERADE", "DNAT", "SNAT", "TCPMSS", "MARK",
           "CONNMARK"}


class IptablesError(Exception):
    """What iptables-restore would refuse, with the line number."""


@dataclass
class Table:
    name: str
    policies: dict[str, str] = field(default_factory=dict)  # built-in chain -> policy
    chains: dict[str, list[str]] = field(default_factory=dict)  # chain -> rule specs, in order

    @classmethod
    def new(cls, name: str) -> Table:
        if name not in BUILTIN_CHAINS:
            raise IptablesError(f"unknown table {name!r}")
        return cls(name, {c: "ACCEPT" for c in BUILTIN_CHAINS[name]}, {c: [] for c in BUILTIN_CHAINS[name]})

    def user_chains(self) -> list[str]:
        return sorted(c for c in self.chains if c not in self.policies)

    def referenced(self, chain: str) -> bool:
        return any(_target(spec) == chain for rules in self.chains.values() for spec in rules)


def _target(spec: str) -> str | None:
    tokens = spec.split()
    return tokens[tokens.index("-j") + 1] if "-j" in tokens[:-1] else None


class Tables:
    """One namespace's iptables state."""

    def __init__(self) -> None:
        self.tables: dict[str, Table] = {}

    def save(self, table: str | None = None) -> str:
        """iptables-save's format: the tables in use, built-in chains first."""
        out = []
        for name in ([table] if table else sorted(self.tables)):
            t = self.tables.get(name)
            if t is None:
                continue
            order = list(BUILTIN_CHAINS[name]) + t.user_chains()
            out.append(f"*{name}")
            out += [f":{c} {t.policies.get(c, '-')} [0:0]" for c in order]
            out += [f"-A {c} {spec}" for c in order for spec in t.chains[c]]
            out.append("COMMIT")
        return "\n".join(out) + ("\n" if out else "")

    def restore(self, batch: str) -> None:
        """iptables-restore --noflush: all of the batch, or (IptablesError) nothing."""
        work = copy.deepcopy(self.tables)
        table: Table | None = None
        for number, raw in enumerate(batch.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            try:
                if line.startswith("*"):
                    if table is not None:
                        raise IptablesError(f"table {table.name} not committed before {line}")
                    name = line[1:]
                    table = work.setdefault(name, Table.new(name))
                elif table is None:
                    raise IptablesError(f"{line!r} outside a table section")
                elif line == "COMMIT":
                    table = None
                elif line.startswith(":"):
                    _declare(table, line[1:].split())
                elif line.startswith("-"):
                    _command(table, line.split())
                else:
                    raise IptablesError(f"cannot parse {line!r}")
            except IptablesError as exc:
                raise IptablesError(f"line {number}: {exc}") from None
        if table is not None:
            raise IptablesError(f"COMMIT expected at the end (table {table.name})")
        self.tables = work

    def view(self, unordered: frozenset[str] = frozenset()) -> dict:
        """The state as comparable data; the rules of chains in `unordered` as a sorted list
        (for chains whose rule order carries no meaning)."""
        return {name: {c: (t.policies.get(c, "-"), sorted(rules) if c in unordered else list(rules))
                       for c, rules in t.chains.items()}
                for name, t in self.tables.items()}


def _declare(t: Table, parts: list[str]) -> None:
    if len(parts) < 2:
        raise IptablesError(f"bad chain declaration {parts!r}")
    chain, policy = parts[0], parts[1]
    if chain in t.policies:
        if policy != "-":
            t.policies[chain] = policy
    elif policy != "-":
        raise IptablesError(f"user chain {chain} cannot have a policy")
    else:
        t.chains[chain] = []  # created, or emptied when it exists


def _command(t: Table, tokens: list[str]) -> None:
    op, rest = tokens[0], tokens[1:]
    if op == "-N":
        if rest[0] in t.chains:
            raise IptablesError(f"chain {rest[0]} already exists")
        t.chains[rest[0]] = []
        return
    if op == "-F":
        for chain in rest[:1] or list(t.chains):
            _rules(t, chain).clear()
        return
    if op == "-X":
        if not rest:
            raise IptablesError("-X without a chain is not modelled")
        chain = rest[0]
        if chain in t.policies:
            raise IptablesError(f"cannot delete built-in chain {chain}")
        if _rules(t, chain):
            raise IptablesError(f"chain {chain} is not empty")
        if t.referenced(chain):
            raise IptablesError(f"chain {chain} is still referenced")
        del t.chains[chain]
        return
    if not rest:
        raise IptablesError(f"{op} needs a chain")
    chain, args = rest[0], rest[1:]
    rules = _rules(t, chain)
    if op == "-D":
        if len(args) == 1 and args[0].isdigit():
            if not 1 <= int(args[0]) <= len(rules):
                raise IptablesError(f"index {args[0]} of chain {chain} is too big")
            del rules[int(args[0]) - 1]
            return
        spec = " ".join(args)
        if spec not in rules:
            raise IptablesError(f"bad rule (does a matching rule exist in {chain}?): {spec}")
        rules.remove(spec)
        return
    if op not in ("-A", "-I"):
        raise IptablesError(f"command {op} is not modelled")
    position = len(rules)
    if op == "-I":
        position = 0
        if args and args[0].isdigit():
            position = int(args.pop(0)) - 1
            if not 0 <= position <= len(rules):
                raise IptablesError(f"index {position + 1} of chain {chain} is too big")
    spec = " ".join(args)
    target = _target(spec)
    if target is not None and target not in TARGETS:
        if target in t.policies:
            raise IptablesError(f"cannot jump to built-in chain {target}")
        if target not in t.chains:
            raise IptablesError(f"couldn't load target {target}: no such chain")
    rules.insert(position, spec)


def _rules(t: Table, chain: str) -> list[str]:
    if chain not in t.chains:
        raise IptablesError(f"chain {chain} does not exist in table {t.name}")
    return t.chains[chain]


class FakeRunner:
    """A netapply.Runner over Tables per namespace (pid None = host), recording each call as
    ("save", pid, table), ("restore", pid, batch) or ("route", pid, gateway)."""

    def __init__(self) -> None:
        self.namespaces: dict[int | None, Tables] = {}
        self.routes: dict[int, str] = {}
        self.gone: set[int] = set()  # pids whose namespace has vanished
        self.calls: list[tuple] = []

    def ns(self, pid: int | None) -> Tables:
        return self.namespaces.setdefault(pid, Tables())

    def take_calls(self) -> list[tuple]:
        calls, self.calls = self.calls, []
        return calls

    def _alive(self, pid: int | None) -> None:
        if pid in self.gone:
            raise NetnsError(f"nsenter: cannot open /proc/{pid}/ns/net: No such file or directory")

    def iptables_save(self, pid: int | None, table: str | None = None) -> str:
        self.calls.append(("save", pid, table))
        self._alive(pid)
        return self.ns(pid).save(table)

    def iptables_restore(self, pid: int | None, batch: str) -> None:
        self.calls.append(("restore", pid, batch))
        self._alive(pid)
        try:
            self.ns(pid).restore(batch)
        except IptablesError as exc:
            raise NetnsError(f"iptables-restore -w 5 failed in netns of pid {pid}: {exc}") from None

    def set_default_route(self, pid: int, gateway: str) -> None:
        self.calls.append(("route", pid, gateway))
        self._alive(pid)
        self.routes[pid] = gateway
