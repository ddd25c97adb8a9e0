"""The node's HTTP client for the server API (docs/api.md). It holds the node token and
renews it on a 401, so callers never see an expired-token error."""
from __future__ import annotations

import http.client
import threading
from typing import Any

import requests
import urllib3

from .tls import short_reason


class ServerError(RuntimeError):
    """The server refused or could not be reached; `status` is None when unreachable.
    `sent` is False when the request never left the node (the connection was refused or
    never completed), so repeating it cannot do anything twice."""

    def __init__(self, status: int | None, msg: str, sent: bool = True, retry_after: float | None = None) -> None:
        super().__init__(f"server said {status}: {msg}" if status else msg)
        self.status = status
        self.msg = msg
        self.sent = sent
        self.retry_after = retry_after  # seconds, when the server said when to ask again


def never_sent(exc: requests.RequestException) -> bool:
    """The connection was refused or never completed: the request did not leave the node."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    seen, cause = set(), exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, urllib3.exceptions.NewConnectionError):
            return True
        cause = getattr(cause, "reason", None) or (cause.args[0] if cause.args and
                                                    isinstance(cause.args[0], BaseException) else None)
    return False


# Sent again once when the server closed the connection without answering (a kept-alive
# connection it closed as idle just as we reused it): these change nothing when repeated.
# POST /port is not among them (it would register the port twice), nor POST /vpn/update
# (the first one may have revoked the certificate the second presents).
REPEATABLE = {"GET", "PATCH", "DELETE", "PUT"}
REPEATABLE_POSTS = ("/token/node", "/token/container", "/node/runs")


def _closed_without_answer(exc: requests.RequestException) -> bool:
    cause = exc.args[0] if exc.args else None
    reasons = cause.args if isinstance(cause, Exception) else ()
    return any(isinstance(r, (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError))
               for r in (cause, *reasons))


class ServerAPI:
    def __init__(self, base_url: str, api_key: str, timeout: float = 15.0,
                 session: requests.Session | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        # The session carries the TLS checks (vpnagent.tls.make_session); a bare one
        # verifies against the system CAs.
        self._session = session or requests.Session()
        self._token: str | None = None
        self._lock = threading.Lock()

    def _authenticate(self) -> str:
        data = self._send("POST", "/token/node", json={"api_key": self.api_key}, auth=False)
        return data["access_token"]

    def _send(self, method: str, path: str, auth: bool = True, **kwargs: Any) -> Any:
        resp = self._request(method, path, auth, **kwargs)
        return resp.json() if resp.content else None

    def _request(self, method: str, path: str, auth: bool = True, **kwargs: Any) -> requests.Response:
        """The answer to a request, with the node token (renewed once on a 401); a refusal
        or no answer is a ServerError."""
        url = f"{self.base_url}{path}"
        kwargs.setdefault("timeout", self.timeout)
        repeatable = method in REPEATABLE or path in REPEATABLE_POSTS
        renewed = resent = False
        while True:
            headers = {}
            if auth:
                with self._lock:
                    if self._token is None:
                        self._token = self._authenticate()
                    headers["Authorization"] = f"Bearer {self._token}"
            try:
                resp = self._session.request(method, url, headers=headers, **kwargs)
            except requests.exceptions.SSLError as exc:
                raise ServerError(None, f"the server at {self.base_url} failed the TLS check ({short_reason(exc)}); "
                                        "check server_ca_file / server_fingerprint in the node config") from exc
            except requests.RequestException as exc:
                if repeatable and not resent and _closed_without_answer(exc):
                    resent = True
                    continue
                raise ServerError(None, f"cannot reach the server at {self.base_url}: {exc}",
                                  sent=not never_sent(exc)) from exc
            if resp.status_code == 401 and auth and not renewed:
                renewed = True
                resp.close()
                with self._lock:
                    self._token = None  # expired: get a fresh node token and retry once
                continue
            if resp.status_code >= 400:
                try:
                    msg = resp.json().get("msg", resp.text)
                except ValueError:
                    msg = resp.text[:200]
                retry = resp.headers.get("Retry-After", "")
                raise ServerError(resp.status_code, f"{method} {path}: {msg}",
                                  retry_after=float(retry) if retry.isdigit() else None)
            return resp

    # --- node identity and VPN configuration
    def node_self(self) -> dict:
        return self._send("GET", "/node/self")

    def get_vpn_config(self) -> str:
        return self._send("GET", "/vpn")["ovpn_config"]

    def renew_vpn_config(self, current: str) -> str:
        return self._send("POST", "/vpn/update", json={"vpn_config": current})["ovpn_config"]

    def node_peers(self, run_id: int | None = None) -> list[dict]:
        params = {"run_id": run_id} if run_id is not None else None
        return self._send("GET", "/node/peers", params=params)["runs"]

    def peers_view(self) -> dict:
        """GET /node/peers whole: the task families and the collaboration's data plane."""
        return self._send("GET", "/node/peers")

    def register_wireguard(self, public_key: str, port: int, endpoints: list[str]) -> dict:
        """Tell the server this node's WireGuard public key and where peers may reach it;
        the answer says which data plane the node's collaboration uses."""
        return self._send("PUT", "/node/wireguard", json={"public_key": public_key, "port": port,
                                                          "endpoints": endpoints})

    def wireguard(self) -> dict:
        return self._send("GET", "/node/wireguard")

    def open_events(self, read_timeout: float) -> requests.Response:
        """GET /node/events, open: its body is the node's event stream (vpnagent/push.py).
        A read that waits longer than `read_timeout` fails (the server writes at least
        every 15 s)."""
        return self._request("GET", "/node/events", stream=True, timeout=(self.timeout, read_timeout))

    # --- runs
    def pending_runs(self) -> list[dict]:
        return self._send("GET", "/run", params={"state": "pending"})["runs"]

    def update_run(self, run_id: int, status: str, result: Any = None, log: str | None = None) -> dict:
        body: dict[str, Any] = {"status": status}
        if result is not None:
            body["result"] = result
        if log is not None:
            body["log"] = log[-20000:]
        return self._send("PATCH", f"/run/{run_id}", json=body)

    def report_runs(self, run_ids: list[int]) -> list[int]:
        """Tell the server which runs this node still has; returns those it then marked failed."""
        return self._send("POST", "/node/runs", json={"runs": run_ids})["failed"]

    def container_token(self, run_id: int) -> str:
        return self._send("POST", "/token/container", json={"run_id": run_id})["container_token"]

    # --- ports
    def register_port(self, run_id: int, port: int, label: str | None) -> dict:
        return self._send("POST", "/port", json={"run_id": run_id, "port": port, "label": label})

    def delete_ports(self, run_id: int) -> int:
        return self._send("DELETE", "/port", params={"run_id": run_id})["deleted"]
