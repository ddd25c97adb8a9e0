"""The rule for each kind of name, described once: the server checks a new organisation,
collaboration, node, researcher or admin against it (CLI and admin API alike), and the node
checks its own config's `name` against the same node rule, so the server cannot hand out a
node name the node refuses.

The rules apply to new names only: rows made before them keep their names and can still be
listed, shown, rotated and removed."""
from __future__ import annotations

import re
from dataclasses import dataclass


class InvalidName(ValueError):
    """A new name breaks its kind's rule; the message names the value and the rule."""


@dataclass(frozen=True)
class NameRule:
    """`pattern` must match the whole name; `says` is the rule in words, `why` its reason."""
    kind: str
    pattern: str
    says: str
    why: str
    example: str

    def matches(self, name: str) -> bool:
        return re.fullmatch(self.pattern, name) is not None

    def check(self, name: str) -> str:
        if not isinstance(name, str) or not self.matches(name):
            shown = repr(name) if len(repr(name)) <= 40 else repr(name)[:36] + "...'"
            raise InvalidName(f"{self.kind} name {shown} must be {self.says} ({self.why}); "
                              f"for example {self.example!r}")
        return name


NODE = NameRule("node", r"[a-z0-9][a-z0-9-]{0,15}", "1-16 of a-z, 0-9 and '-', not starting with '-'",
                "the node names its containers, network and firewall chains after it", "node-a")
_LABEL = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
_LABEL_SAYS = "1-64 of A-Z, a-z, 0-9, '.', '_' and '-', starting with a letter or digit"
ORGANIZATION = NameRule("organisation", _LABEL, _LABEL_SAYS, "it is typed on command lines and shown in lists",
                        "hospital-a")
COLLABORATION = NameRule("collaboration", _LABEL, _LABEL_SAYS, "it is typed on command lines and shown in lists",
                         "study")
_PERSON = r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}"
_PERSON_SAYS = "1-64 of A-Z, a-z, 0-9, '.', '_', '@', '+' and '-', starting with a letter or digit"
USER = NameRule("user", _PERSON, _PERSON_SAYS, "a login or an e-mail address fits", "alice")
ADMIN = NameRule("admin", _PERSON, _PERSON_SAYS, "a login or an e-mail address fits", "ops@example.org")

RULES = {rule.kind: rule for rule in (ORGANIZATION, COLLABORATION, NODE, USER, ADMIN)}


def rules_markdown() -> str:
    """The rules as the Markdown table in docs/operator-guide.md (a test keeps them equal)."""
    rows = ["| name of | rule | why | example |", "|---|---|---|---|"]
    for rule in RULES.values():
        rows.append(f"| {rule.kind} | {rule.says} | {rule.why} | `{rule.example}` |")
    return "\n".join(rows) + "\n"
