"""One rule per kind of name (vpnshared/names.py): the node's config check and the server's
add-node take the same rule, and each refusal names the value, the rule and an example.
(docs/operator-guide.md shows the rules rendered from the code: tests/test_docs.py.)"""
from __future__ import annotations

import pytest

from vpnagent.config import NAME_RE
from vpnshared import names


@pytest.mark.parametrize("name, ok", [("node-a", True), ("n1", True), ("a" * 16, True), ("a" * 17, False),
                                      ("-a", False), ("Node-a", False), ("node_a", False), ("", False),
                                      ("node-a\n", False)])
def test_the_node_rule_is_the_node_configs(name, ok):
    assert names.NODE.matches(name) is ok
    assert bool(NAME_RE.match(name)) is ok, "the node config checks the same rule"


@pytest.mark.parametrize("rule, good, bad", [
    (names.ORGANIZATION, ["hospital-a", "Hospital.A_2"], ["hospital a", "-a", "", "a" * 65, "ä"]),
    (names.COLLABORATION, ["study", "Study-2026"], ["my study", "_x", "a/b"]),
    (names.USER, ["alice", "bob.smith@example.org", "a+b"], ["bob smith", "@bob", "a\x00"]),
    (names.ADMIN, ["ops", "ops@example.org"], ["", "ops team"]),
])
def test_rules(rule, good, bad):
    assert all(rule.matches(name) for name in good)
    assert not any(rule.matches(name) for name in bad)


def test_a_refusal_names_the_value_the_rule_and_an_example():
    with pytest.raises(names.InvalidName) as exc:
        names.NODE.check("Node A")
    assert str(exc.value) == ("node name 'Node A' must be 1-16 of a-z, 0-9 and '-', not starting with '-' (the node "
                              "names its containers, network and firewall chains after it); for example 'node-a'")
    with pytest.raises(names.InvalidName, match=r"\.\.\.'"):
        names.USER.check("x " * 100)  # a long value is cut short in the message

