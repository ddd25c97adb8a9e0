"""What a node lets its openvpn read: exactly the directives our server's configs hold
(server_ext/ovpn.py render_client), each with the arguments it may have, and the four
inline blocks. Anything else is refused by name before openvpn sees the file.

The config comes from the server or from disk; either may be someone else's work. A
blocklist loses against a program that reads the file differently from it, so this reads
lines the way OpenVPN 2.6 does (options_util.c parse_line, read_config_file): split only
at '\\n'; a leading `--` is dropped from the first word; `#` or `;` at the start of a
word ends the line; quotes group words; a line that is exactly `<tag>` opens an inline
block that ends at the first line starting (after blanks) with `</tag>`. What OpenVPN
reads in a way this parser would need more rules for is refused outright: backslashes,
control characters other than tab, non-ASCII, and lines near its 256-byte line buffer
(it splits a longer line in two and reads the tail as a new directive)."""
from __future__ import annotations

import re
from dataclasses import dataclass

# shared with the server, which renders the configs this allows
from vpnshared.openvpn import AEAD_CIPHERS, CIPHERS, HOST

MAX_BYTES = 64 * 1024
MAX_LINE = 200
_NUMBER = r"[0-9]{1,7}"
_BLANKS = " \t"


class ConfigRefused(ValueError):
    """The .ovpn holds something our server never writes; the message names it."""


@dataclass(frozen=True)
class Directive:
    args: str  # a regex the arguments, joined by single spaces, must match in full
    form: str  # how the message shows what we allow
    required: bool = False


def _flag(name: str) -> Directive:
    return Directive("", name)


def _number(name: str) -> Directive:
    return Directive(_NUMBER, f"{name} NUMBER")


DIRECTIVES: dict[str, Directive] = {
    "client": Directive("", "client", required=True),
    "dev": Directive("tun", "dev tun", required=True),
    "proto": Directive("udp|tcp-client", "proto udp|tcp-client", required=True),
    "remote": Directive(rf"{HOST} [0-9]{{1,5}}", "remote HOST PORT", required=True),
    "nobind": _flag("nobind"),
    "resolv-retry": Directive("infinite", "resolv-retry infinite"),
    "connect-retry": Directive("[0-9]{1,4}(?: [0-9]{1,4})?", "connect-retry SECONDS [MAX_SECONDS]"),
    "remote-cert-tls": Directive("server", "remote-cert-tls server", required=True),
    # the name itself is the server's business (the <ca> block is too); that it is pinned is ours
    "verify-x509-name": Directive("[A-Za-z0-9][A-Za-z0-9._-]{0,63} name", "verify-x509-name CN name",
                                  required=True),
    "data-ciphers": Directive(CIPHERS, f"data-ciphers {'|'.join(AEAD_CIPHERS)} (':'-separated)"),
    "persist-key": _flag("persist-key"),
    "persist-tun": _flag("persist-tun"),
    "verb": Directive("[0-4]", "verb 0-4"),  # higher levels log packet and key details
    "tun-mtu": _number("tun-mtu"),
    "mssfix": _number("mssfix"),
    "sndbuf": _number("sndbuf"),
    "rcvbuf": _number("rcvbuf"),
    "txqueuelen": _number("txqueuelen"),
    "fragment": _number("fragment"),
    "fast-io": _flag("fast-io"),
    "explicit-exit-notify": Directive("(?:[0-9]{1,2})?", "explicit-exit-notify [NUMBER]"),
}

# inline block -> the PEM label it holds; each block exactly once (<ca> may hold several certificates)
BLOCKS: dict[str, str] = {
    "ca": "CERTIFICATE",
    "cert": "CERTIFICATE",
    "key": "PRIVATE KEY",
    "tls-crypt-v2": "OpenVPN tls-crypt-v2 client key",
}
_PEM_LINE = re.compile(r"[A-Za-z0-9+/=]{1,76}")


def _refuse(lineno: int, what: str) -> ConfigRefused:
    return ConfigRefused(f"VPN config line {lineno} holds {what}, which our server never writes; refused "
                         "(a fresh config comes from GET /vpn)")


def _words(line: str, lineno: int) -> list[str]:
    """The words of one line as OpenVPN's parse_line splits them (backslashes are refused
    before this, so escapes need no handling)."""
    words: list[str] = []
    i, n = 0, len(line)
    while i < n:
        c = line[i]
        if c in _BLANKS:
            i += 1
        elif c in "#;":
            break  # a comment, but only at the start of a word
        elif c in "\"'":
            end = line.find(c, i + 1)
            if end < 0:
                raise _refuse(lineno, f"an unclosed quote in {line!r}")
            word = line[i + 1:end]
            if not word or any(b in word for b in _BLANKS):
                # one word to openvpn, two (or none) once joined for the pattern: not ours anyway
                raise _refuse(lineno, f"the quoted word {line[i:end + 1]!r}")
            words.append(word)
            i = end + 1
        else:
            j = i
            while j < n and line[j] not in _BLANKS:
                j += 1
            words.append(line[i:j])
            i = j
    return words


def _check_characters(line: str, lineno: int) -> None:
    if len(line) > MAX_LINE:
        raise _refuse(lineno, f"a line of {len(line)} characters (openvpn would read its tail as a line of its own)")
    for c in line:
        if c == "\\":
            raise _refuse(lineno, f"a backslash in {line!r}")
        if not (c == "\t" or " " <= c <= "~"):
            raise _refuse(lineno, f"the character {c!r} in {line!r}")


def _check_block(tag: str, body: list[str], lineno: int) -> None:
    label = BLOCKS[tag]
    count, i = 0, 0
    while i < len(body):
        if body[i] != f"-----BEGIN {label}-----":
            raise _refuse(lineno + i, f"{body[i]!r} in <{tag}>, where a '{label}' PEM block belongs")
        j = i + 1
        while j < len(body) and _PEM_LINE.fullmatch(body[j]):
            j += 1
        if j == i + 1 or j == len(body) or body[j] != f"-----END {label}-----":
            raise _refuse(lineno + j, f"a '{label}' PEM block in <{tag}> that is not well formed")
        count, i = count + 1, j + 1
    if count == 0 or (count > 1 and tag != "ca"):
        raise _refuse(lineno, f"{count} PEM blocks in <{tag}>")


def _read_block(tag: str, lines: list[str], start: int) -> int:
    """Check the block opened just before `lines[start]`; the index after its closing line."""
    i = start
    while i < len(lines) and not lines[i].lstrip(_BLANKS).startswith(f"</{tag}>"):
        _check_characters(lines[i], i + 1)
        i += 1
    # OpenVPN ends the block at a line that starts with the tag and drops the rest: we want nothing there
    if i == len(lines) or lines[i].strip(_BLANKS) != f"</{tag}>":
        raise _refuse(i + 1, f"<{tag}> without a line '</{tag}>' closing it")
    _check_block(tag, lines[start:i], start + 1)
    return i + 1


def check_ovpn(text: str) -> None:
    """Raise ConfigRefused unless `text` is a client config as our server writes it."""
    if len(text.encode()) > MAX_BYTES:
        raise ConfigRefused("VPN config is larger than 64 KiB; our server's configs are about 5 KiB")
    lines = text.split("\n")
    seen: set[str] = set()
    i = 0
    while i < len(lines):
        lineno, line = i + 1, lines[i]
        i += 1
        _check_characters(line, lineno)
        words = _words(line, lineno)
        if not words:
            continue
        name = words[0][2:] if len(words[0]) >= 3 and words[0].startswith("--") else words[0]
        shown = repr(name) if name == words[0] else f"{name!r} (written {words[0]!r})"
        if len(words) == 1 and name.startswith("<") and name.endswith(">"):
            if name[1:-1] not in BLOCKS:
                raise _refuse(lineno, f"the inline block {name}")
            if name in seen:
                raise _refuse(lineno, f"a second {name} block")
            seen.add(name)
            i = _read_block(name[1:-1], lines, i)
            continue
        directive = DIRECTIVES.get(name)
        if directive is None:
            raise _refuse(lineno, f"the directive {shown}")
        args = " ".join(words[1:])
        if not re.fullmatch(directive.args, args):
            raise _refuse(lineno, f"the directive {shown} with {args!r} (allowed: {directive.form})")
        if name in seen:
            raise _refuse(lineno, f"the directive {shown} a second time")
        seen.add(name)
    missing = [f"<{b}>" for b in BLOCKS if f"<{b}>" not in seen]
    missing += [name for name, d in DIRECTIVES.items() if d.required and name not in seen]
    if missing:
        raise ConfigRefused(f"VPN config lacks {', '.join(missing)}, which every config of our server holds; "
                            "refused (a fresh config comes from GET /vpn)")
