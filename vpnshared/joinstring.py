"""The join string: what `vpnagent-server add-node` (or `join-token`) prints and `vpnagent
join` reads. One pasteable line that carries where the server is, how to recognise it and
a credential that can be spent once:

    vpnagent-join-1.<base64url of {"url", "ca", "node", "token"}>

- url: the API's base URL (https:// only: the pin would protect nothing over plain HTTP);
- ca: the pin of the server's CA, "sha256:<hex>" of the CA certificate's
  SubjectPublicKeyInfo (as kubeadm's --discovery-token-ca-cert-hash). It names the CA's key,
  not the HTTPS certificate, so a new API certificate with other names, or a renewed one,
  leaves it valid;
- node: the node's name, checked by the server against the token's node;
- token: a single-use, expiring join token (not the API key: the node gets its key by
  spending the token over TLS checked against the pinned CA).

Standard library only (vpnshared imports neither side): each side derives the
SubjectPublicKeyInfo bytes with its own `cryptography` and calls spki_pin here, so the two
cannot compute the pin differently."""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from dataclasses import dataclass

PREFIX = "vpnagent-join-1."
PIN_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{32,128}$")
MAX_LENGTH = 4096  # far more than a real one (about 300 characters); a longer paste is not one
FIELDS = ("url", "ca", "node", "token")


class JoinStringError(ValueError):
    """A join string cannot be used; the message says what is wrong and where a good one
    comes from."""


WHERE_FROM = ("copy the whole line `vpnagent-server add-node` (or `vpnagent-server join-token NODE_ID`) "
              "printed, or issue a new one")


def spki_pin(spki_der: bytes) -> str:
    """The pin of a CA: SHA-256 of its DER SubjectPublicKeyInfo, as "sha256:<hex>"."""
    return "sha256:" + hashlib.sha256(spki_der).hexdigest()


def pins_match(a: str, b: str) -> bool:
    return hmac.compare_digest(a.lower(), b.lower())


@dataclass(frozen=True)
class JoinString:
    url: str
    ca: str
    node: str
    token: str

    def __post_init__(self) -> None:
        check(self)

    def encode(self) -> str:
        data = json.dumps({"url": self.url, "ca": self.ca, "node": self.node, "token": self.token},
                          separators=(",", ":"), sort_keys=True)
        return PREFIX + base64.urlsafe_b64encode(data.encode()).decode("ascii").rstrip("=")


def check(js: JoinString) -> None:
    """Every field well-formed, else JoinStringError naming the field."""
    if not isinstance(js.url, str) or not re.match(r"^https://[^/\s?#]+(/[^\s?#]*)?$", js.url):
        raise JoinStringError(f"its server URL {js.url!r} is not an https:// URL (a join needs HTTPS: the CA pin "
                              "is checked over TLS)")
    if not isinstance(js.ca, str) or not PIN_RE.match(js.ca):
        raise JoinStringError(f"its CA pin {js.ca!r} is not sha256:<64 hex digits>")
    if not isinstance(js.node, str) or not 1 <= len(js.node) <= 128:
        raise JoinStringError(f"its node name {js.node!r} is not a name of 1-128 characters")
    if not isinstance(js.token, str) or not TOKEN_RE.match(js.token):
        raise JoinStringError("its join token is not 32-128 of A-Z, a-z, 0-9, '-' and '_'")


def extract(text: str) -> str:
    """The one join string in a longer text (what `vpnagent-server add-node` printed, read
    from a file or a pipe); JoinStringError when it holds none or several."""
    if len(text) > 64 * 1024:
        raise JoinStringError(f"the input is {len(text)} characters long; it is not add-node's output")
    found = [word for word in text.split() if word.startswith(PREFIX)]
    if len(found) != 1:
        raise JoinStringError(f"the input holds {len(found)} join strings, not one (a line starting with "
                              f"{PREFIX!r}); {WHERE_FROM}")
    return found[0]


def decode(text: str) -> JoinString:
    """The join string in `text` (surrounding white space is ignored), or JoinStringError."""
    text = text.strip()
    if len(text) > MAX_LENGTH:
        raise JoinStringError(f"this is {len(text)} characters long, not a join string; {WHERE_FROM}")
    if not text.startswith(PREFIX):
        raise JoinStringError(f"a join string starts with {PREFIX!r}; {WHERE_FROM}")
    body = text[len(PREFIX):]
    try:
        data = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode())
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise JoinStringError(f"the join string is damaged (cut short or changed while copying?); {WHERE_FROM}") \
            from None
    if not isinstance(data, dict) or sorted(data) != sorted(FIELDS):
        raise JoinStringError(f"the join string does not hold {', '.join(FIELDS)}; {WHERE_FROM}")
    try:
        return JoinString(data["url"], data["ca"], data["node"], data["token"])
    except JoinStringError as exc:
        raise JoinStringError(f"the join string is not usable: {exc}; {WHERE_FROM}") from None
