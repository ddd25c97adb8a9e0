"""The shell commands of the docs: every ```sh block of README.md and docs/*.md, cut into the
commands a reader pastes one by one (a line continued with `\\`, `|` or `&&`, an open
`$(...)` or quote, and a here-document each stay one command), in the order they appear.

tests/test_docs_commands.py decides for each what happens to it; this module only reads."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def documents() -> list[Path]:
    """README.md first, then docs/*.md by name: the order a new operator reads them in."""
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


@dataclass(frozen=True)
class Command:
    doc: str         # path relative to the repository, e.g. "docs/operator-guide.md"
    line: int        # line of the doc the command starts on
    text: str        # as written: comments, continuation lines and here-document included
    code: str        # without comments and here-document body, on one line
    expected: tuple[str, ...]  # what a `# -> TEXT` comment says the command prints

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}: {self.code}"


def sh_blocks(path: Path) -> list[tuple[int, str]]:
    """(line of the first command, body) of each ```sh block."""
    found, lines = [], path.read_text().splitlines()
    start = None
    for number, line in enumerate(lines, 1):
        if start is None and line.strip() == "```sh":
            start, body = number + 1, []
        elif start is not None and line.strip() == "```":
            found.append((start, "\n".join(body)))
            start = None
        elif start is not None:
            body.append(line)
    assert start is None, f"{path}: a ```sh block opened at line {start - 1} is never closed"
    return found


def _scan(text: str) -> tuple[str, bool]:
    """The code of shell text without its comments, and whether it is unfinished (an open
    quote or `$(`, or a last token that continues the command on the next line)."""
    code, quote, depth, i = [], None, 0, 0
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == quote:
                quote = None
            elif ch == "\\" and quote == '"':
                code.append(ch)
                i += 1
                ch = text[i] if i < len(text) else ""
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or text[i - 1] in " \t\n;("):
            while i < len(text) and text[i] != "\n":
                i += 1
            continue
        elif text.startswith("$(", i):
            depth += 1
        elif ch == ")" and depth:
            depth -= 1
        code.append(ch)
        i += 1
    joined = "".join(code)
    tail = joined.rstrip()
    open_ = bool(quote) or depth > 0 or tail.endswith(("\\", "|", "&&"))
    flat = re.sub(r"\\\n", " ", joined)
    flat = re.sub(r"\s*\n\s*", " ", flat)
    return re.sub(r"[ \t]+", " ", flat).strip(), open_


HEREDOC = re.compile(r"<<-?\s*'?\"?(\w+)'?\"?")


def commands(path: Path) -> list[Command]:
    """Every command of the document's ```sh blocks, in order."""
    found = []
    for first, body in sh_blocks(path):
        lines = body.splitlines()
        i = 0
        while i < len(lines):
            if not lines[i].strip() or lines[i].lstrip().startswith("#"):
                i += 1
                continue
            start, chunk = i, [lines[i]]
            code, unfinished = _scan(lines[i])
            heredoc = HEREDOC.search(code)
            i += 1
            if heredoc:
                while i < len(lines) and lines[i] != heredoc.group(1):
                    chunk.append(lines[i])
                    i += 1
                assert i < len(lines), f"{path}:{first + start}: here-document never ends with {heredoc.group(1)}"
                chunk.append(lines[i])
                i += 1
            while unfinished and i < len(lines):
                chunk.append(lines[i])
                code, unfinished = _scan("\n".join(chunk))
                i += 1
            text = "\n".join(chunk)
            expected = tuple(m.strip() for m in re.findall(r"#\s*->\s*(.+)$", text, re.M))
            found.append(Command(str(path.relative_to(REPO)), first + start, text, code, expected))
    return found


def all_commands() -> list[Command]:
    return [c for doc in documents() for c in commands(doc)]
