"""Rewrite the generated sections of the docs from the code (`make docs`).

A generated section sits between two marker comments:

    <!-- node-config-reference:start -->
    ...generated, do not edit by hand...
    <!-- node-config-reference:end -->

`python scripts/update_docs.py` rewrites every such section; `--check` only reports which
ones differ (exit 1), which is what tests/test_docs.py runs. The sources are the config
schemas (vpnagent/config.py, server_ext/config.py, the algorithm recipe's in
vpnagent/algorithm_recipe.py), the name rules (vpnshared/names.py) and
the example configs in docs/examples/, so the guide shows exactly the files an operator
copies.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# Files that hold generated sections.
DOCS = ("docs/operator-guide.md", "docs/algorithm-guide.md")


def _node_reference() -> str:
    from vpnagent.config import reference_markdown

    return reference_markdown()


def _server_reference() -> str:
    from server_ext.config import reference_markdown

    return reference_markdown()


def _extension_reference() -> str:
    from server_ext.config import extension_reference_markdown

    return extension_reference_markdown()


def _name_rules() -> str:
    from vpnshared.names import rules_markdown

    return rules_markdown()


def _algorithm_recipe_reference() -> str:
    from vpnagent.algorithm_recipe import reference_markdown

    return reference_markdown()


def _example(rel: str) -> Callable[[], str]:
    def render() -> str:
        return f"```yaml\n# {rel}\n{(REPO / rel).read_text().rstrip()}\n```\n"
    return render


SECTIONS: dict[str, Callable[[], str]] = {
    "node-config-reference": _node_reference,
    "server-config-reference": _server_reference,
    "server-extension-reference": _extension_reference,
    "server-config-example": _example("docs/examples/server.yaml"),
    "node-config-example": _example("docs/examples/node.yaml"),
    "name-rules": _name_rules,
    "algorithm-recipe-reference": _algorithm_recipe_reference,
}

_MARKER = re.compile(r"(<!-- (?P<name>[a-z0-9-]+):start -->\n)(?P<body>.*?)(<!-- (?P=name):end -->)", re.S)


class DocsError(ValueError):
    """A marker names no known section, or a known section has no markers."""


def render(text: str, where: str = "") -> str:
    """`text` with every generated section rewritten."""
    def sub(m: re.Match) -> str:
        name = m.group("name")
        if name not in SECTIONS:
            raise DocsError(f"{where}: unknown generated section {name!r}; known: {', '.join(SECTIONS)}")
        return f"{m.group(1)}{SECTIONS[name]()}{m.group(4)}"
    return _MARKER.sub(sub, text)


def sections_in(text: str) -> list[str]:
    return [m.group("name") for m in _MARKER.finditer(text)]


def stale() -> list[str]:
    """Files whose generated sections differ from what the code generates now."""
    out = []
    for rel in DOCS:
        text = (REPO / rel).read_text()
        if render(text, rel) != text:
            out.append(rel)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale files (exit 1 if any)")
    args = parser.parse_args(argv)
    found = {name for rel in DOCS for name in sections_in((REPO / rel).read_text())}
    missing = sorted(set(SECTIONS) - found)
    if missing:
        print(f"no markers for section(s) {', '.join(missing)} in {', '.join(DOCS)}", file=sys.stderr)
        return 1
    if args.check:
        bad = stale()
        for rel in bad:
            print(f"{rel} is out of date; run `make docs`", file=sys.stderr)
        return 1 if bad else 0
    for rel in DOCS:
        path = REPO / rel
        text = path.read_text()
        new = render(text, rel)
        if new != text:
            path.write_text(new)
            print(f"rewrote {rel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
