"""How the node checks the server's HTTPS certificate: against the configured CA file (or
the system CAs), and, when a SHA-256 fingerprint is pinned, against exactly that
certificate. One `requests.Session` factory so the agent, its proxy and `vpnagent doctor`
all check the same way. There is no switch that turns checking off."""
from __future__ import annotations

import hashlib
import logging
import socket
import ssl
from typing import Any

import requests
from requests.adapters import HTTPAdapter

log = logging.getLogger(__name__)


class NodeTLSAdapter(HTTPAdapter):
    """HTTPS checked the node's way, whatever the environment says: requests lets
    REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE replace a session's CA file, so the adapter fixes
    `verify` itself. With a pinned fingerprint only that certificate is accepted; with a
    CA file as well the chain is checked too. Without a CA file the pin is the check
    (chain and hostname would say nothing more than "this exact certificate")."""

    def __init__(self, verify: str | bool = True, fingerprint: str | None = None) -> None:
        self.verify = verify
        self.fingerprint = fingerprint
        super().__init__()

    def send(self, request: Any, **kwargs: Any) -> Any:
        kwargs["verify"] = self.verify
        return super().send(request, **kwargs)

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        if self.fingerprint and not isinstance(self.verify, str):
            conn.cert_reqs, conn.ca_certs, conn.ca_cert_dir = "CERT_NONE", None, None
        else:
            super().cert_verify(conn, url, self.verify, cert)
        conn.assert_fingerprint = self.fingerprint


def make_session(verify: str | bool = True, fingerprint: str | None = None) -> requests.Session:
    """A session that checks the server as the node config says (NodeConfig.tls_verify,
    NodeConfig.server_fingerprint)."""
    if verify is False:
        raise ValueError("certificate checking cannot be turned off; use allow_insecure_http with http://")
    s = requests.Session()
    s.mount("https://", NodeTLSAdapter(verify, fingerprint))
    return s


def server_fingerprint(host: str, port: int, timeout: float = 5.0) -> str:
    """SHA-256 of the certificate a TLS server presents (hex), read without trusting it:
    for `vpnagent doctor` to show what the server really sends next to the pinned value."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # reading the certificate only; nothing is sent over this socket
    with socket.create_connection((host, port), timeout=timeout) as raw, ctx.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    return hashlib.sha256(der).hexdigest()


def short_reason(exc: BaseException) -> str:
    """The useful part of a requests/urllib3 error chain (its innermost reason)."""
    text = str(exc)
    for marker in ("Fingerprints did not match", "certificate verify failed", "hostname mismatch",
                   "Connection refused", "No such file or directory"):
        if marker in text:
            start = text.find(marker)
            return text[start:start + 160].split("')")[0].split('")')[0]
    return text[:200]


def format_fingerprint(hex_digest: str) -> str:
    return ":".join(hex_digest[i:i + 2] for i in range(0, len(hex_digest), 2)).upper()
