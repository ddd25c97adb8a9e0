"""`vpnagent join STRING`: turn a join string (vpnshared/joinstring.py) into a working node
config, as `kubeadm join --discovery-token-ca-cert-hash` does.

1. Decode the string and check what the config will say (the node name, where it goes)
   before any network traffic: a mistake here costs nothing.
2. Read the server's CA from GET /node/ca without trusting anything yet (nothing secret
   is sent) and accept it only when the SHA-256 of its SubjectPublicKeyInfo is the pin in
   the string.
3. Spend the join token on POST /node/join over TLS checked against that CA only: the
   node's API key comes back, and only there.
4. Write the CA (server_ca_file) and the config (0600), each in one rename.

Every failure before step 4 leaves the disk as it was; the token is spent only after
every check that can fail on this side has passed."""
from __future__ import annotations

import http.client
import json
import os
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import requests
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from vpnshared.joinstring import JoinString, JoinStringError, decode, pins_match, spki_pin

from .config import NAME_RE, ConfigError, parse_config
from .tls import make_session, short_reason

CONFIG_DIR = Path("/etc/vpnagent")  # the systemd unit vpnagent@NAME runs /etc/vpnagent/NAME.yaml
DATA_ROOT = Path("/var/lib/vpnagent")
MAX_CA_RESPONSE = 64 * 1024
TIMEOUT = 15.0


class JoinFailed(Exception):
    """The node could not join; the message says why and what to do. `code` is the exit
    status: 2 for a bad join string or command line, 1 for what the server or network did."""

    def __init__(self, msg: str, code: int = 1) -> None:
        super().__init__(msg)
        self.code = code


@dataclass(frozen=True)
class Joined:
    name: str
    server_url: str
    config_path: Path
    ca_path: Path
    data_dir: Path


def ca_file_for(config_path: Path) -> Path:
    """Where the server's CA goes: beside the config, named after it."""
    return config_path.with_name(f"{config_path.stem}.server-ca.crt")


def join(text: str, config_path: Path | None = None, data_dir: Path | None = None, force: bool = False,
         timeout: float = TIMEOUT) -> Joined:
    """Join the server the string names and write the node's config; JoinFailed otherwise,
    with nothing written."""
    try:
        js = decode(text)
    except JoinStringError as exc:
        raise JoinFailed(f"not a usable join string: {exc}", 2) from None
    if not NAME_RE.match(js.node):
        raise JoinFailed(f"the server named this node {js.node!r}, which a node cannot be called (1-16 of a-z, 0-9 "
                         "and '-'; it names containers and firewall chains): add the node again on the server under "
                         "such a name", 2)
    config_path = Path(config_path or CONFIG_DIR / f"{js.node}.yaml").absolute()
    data_dir = Path(data_dir or DATA_ROOT / js.node).absolute()
    ca_path = ca_file_for(config_path)
    _check_destination(config_path, ca_path, force)
    raw = {"name": js.node, "server_url": js.url, "api_key": "not yet", "data_dir": str(data_dir)}
    _check_config(raw)
    ca_pem = fetch_pinned_ca(js, timeout)
    answer = _redeem(js, ca_pem, timeout)
    raw.update(api_key=answer["api_key"], vpn_subnet=answer["vpn_subnet"])
    _check_config(raw)
    _write(config_path, ca_path, {**raw, "server_ca_file": str(ca_path)}, ca_pem)
    return Joined(js.node, js.url, config_path, ca_path, data_dir)


def _check_config(raw: dict) -> None:
    """What `vpnagent run` will check, without the CA file that is written last."""
    try:
        parse_config(raw)
    except ConfigError as exc:
        raise JoinFailed(f"the node config would not load: {exc}", 2) from None


def _check_destination(config_path: Path, ca_path: Path, force: bool) -> None:
    for path in (config_path, ca_path):
        if path.is_dir():
            raise JoinFailed(f"{path} is a directory; give --config a file path", 2)
        if path.exists() and not force:
            raise JoinFailed(f"{path} exists already; pass --force to replace it (its node stops working: the join "
                             "replaces the node's API key), or choose another --config", 2)
    parent = config_path.parent
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK | os.X_OK):
        raise JoinFailed(f"cannot write under {parent} (run as root, or choose another --config)", 2)


def fetch_pinned_ca(js: JoinString, timeout: float = TIMEOUT) -> str:
    """The server's CA (PEM), read over an unchecked TLS connection and accepted only when its
    pin is the string's. Nothing secret is sent on that connection."""
    where = urlsplit(js.url)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the pin below is the check; the token goes over a checked connection
    conn = http.client.HTTPSConnection(where.hostname or "", where.port or 443, timeout=timeout, context=ctx)
    try:
        conn.request("GET", where.path.rstrip("/") + "/node/ca", headers={"Accept": "application/json"})
        resp = conn.getresponse()
        data = resp.read(MAX_CA_RESPONSE + 1)
    except (OSError, http.client.HTTPException) as exc:
        raise JoinFailed(f"cannot reach the server at {js.url}: {exc}; check that it runs and that this host "
                         "reaches it (the URL comes from the server's tls_hostnames or --server-url)") from None
    finally:
        conn.close()
    if resp.status != 200 or len(data) > MAX_CA_RESPONSE:
        raise JoinFailed(f"{js.url}/node/ca answered HTTP {resp.status}: not a vpnagent server of this version, or "
                         "the URL in the join string is wrong")
    try:
        ca_pem = json.loads(data)["ca_pem"]
        cert = x509.load_pem_x509_certificate(ca_pem.encode())
    except (ValueError, KeyError, TypeError, AttributeError):
        raise JoinFailed(f"{js.url}/node/ca did not answer with a PEM certificate: not a vpnagent server") from None
    pin = spki_pin(cert.public_key().public_bytes(serialization.Encoding.DER,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    if not pins_match(pin, js.ca):
        raise JoinFailed(f"the server at {js.url} presents a CA whose pin is {pin}, but the join string pins {js.ca}: "
                         "refusing to trust it (someone may be in between, or the string belongs to another server); "
                         "check the URL, and ask the server's operator for a fresh join string")
    return ca_pem


def _redeem(js: JoinString, ca_pem: str, timeout: float) -> dict:
    """POST /node/join over TLS checked against the pinned CA alone (chain and host name)."""
    with tempfile.TemporaryDirectory(prefix="vpnagent-join-") as tmp:
        ca = Path(tmp) / "ca.crt"
        ca.write_text(ca_pem)
        session = make_session(str(ca))
        try:
            resp = session.post(f"{js.url}/node/join", json={"token": js.token, "name": js.node}, timeout=timeout,
                                allow_redirects=False)  # the token goes to this URL and nowhere else
        except requests.exceptions.SSLError as exc:
            raise JoinFailed(f"the server's HTTPS certificate is not accepted with the pinned CA "
                             f"({short_reason(exc)}): the join string's URL must use a name the server's certificate "
                             "covers (its tls_hostnames); the join token was not sent") from None
        except requests.RequestException as exc:
            raise JoinFailed(f"cannot reach the server at {js.url}: {short_reason(exc)}") from None
        finally:
            session.close()
    try:
        answer = resp.json()
    except ValueError:
        answer = {}
    if resp.status_code != 200:
        msg = answer.get("msg") if isinstance(answer, dict) else None
        raise JoinFailed(f"the server refused the join (HTTP {resp.status_code}): {msg or resp.reason}")
    if not isinstance(answer, dict) or not isinstance(answer.get("api_key"), str) \
            or answer.get("name") != js.node or not isinstance(answer.get("vpn_subnet"), str):
        raise JoinFailed("the server's answer to the join is not what this vpnagent expects; are the server and "
                         "the node the same version?")
    return answer


def _write(config_path: Path, ca_path: Path, raw: dict, ca_pem: str) -> None:
    config_path.parent.mkdir(parents=True, exist_ok=True)
    _replace(ca_path, ca_pem, 0o644)
    _replace(config_path, "# written by `vpnagent join`; every key: `vpnagent config-reference`\n"
             + yaml.safe_dump(raw, sort_keys=False), 0o600)


def _replace(path: Path, text: str, mode: int) -> None:
    """Write `text` to `path` with `mode` from the first byte, in one rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
