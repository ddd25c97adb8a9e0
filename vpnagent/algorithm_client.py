"""The client an algorithm container uses to talk to the server (through the node proxy).

Standard library only: it is copied into algorithm images that have python3 and no pip.
The VPN part follows vantage6 4.x's `AlgorithmClient.vpn` (same `get_addresses` signature and
helpers), so algorithms written for vantage6 port with a changed import.
"""
from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

DEFAULT_TIMEOUT_S = 10.0


class AlgorithmClientError(RuntimeError):
    """A call to the server failed; `status` is the HTTP status (None: no answer at all) and
    `msg` the server's explanation."""

    def __init__(self, message: str, status: int | None = None, msg: str | None = None,
                 method: str = "", path: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.msg = msg if msg is not None else message
        self.method = method
        self.path = path


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    try:
        return int(value) if value else None
    except ValueError:
        return None


class AlgorithmClient:
    """`AlgorithmClient()` inside a container needs no arguments: URL and token come from
    VPNAGENT_SERVER_URL (the node proxy, ending in /api) and VPNAGENT_TOKEN."""

    def __init__(self, server_url: str | None = None, token: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT_S) -> None:
        url = server_url if server_url is not None else os.environ.get("VPNAGENT_SERVER_URL", "")
        tok = token if token is not None else os.environ.get("VPNAGENT_TOKEN", "")
        if not url:
            raise AlgorithmClientError("no server URL: pass server_url or set VPNAGENT_SERVER_URL "
                                       "(the node sets it for algorithm containers)")
        if not tok:
            raise AlgorithmClientError("no token: pass token or set VPNAGENT_TOKEN "
                                       "(the node sets it for algorithm containers)")
        self.server_url = url.rstrip("/")
        self.token = tok
        self.timeout = timeout
        self.vpn = VPNSubClient(self)
        self.task = TaskSubClient(self)
        self.organization = OrganizationSubClient(self)

    # identity of this run, as the node passed it
    @property
    def run_id(self) -> int | None:
        return _env_int("VPNAGENT_RUN_ID")

    @property
    def task_id(self) -> int | None:
        return _env_int("VPNAGENT_TASK_ID")

    @property
    def organization_id(self) -> int | None:
        return _env_int("VPNAGENT_ORGANIZATION_ID")

    @property
    def collaboration_id(self) -> int | None:
        return _env_int("VPNAGENT_COLLABORATION_ID")

    @property
    def image(self) -> str | None:
        return os.environ.get("VPNAGENT_IMAGE") or None

    def request(self, method: str, path: str, params: dict[str, Any] | None = None,
                json_body: Any = None, timeout: float | None = None) -> Any:
        """One HTTP call; returns the decoded JSON body or raises AlgorithmClientError."""
        url = f"{self.server_url}/{path.lstrip('/')}"
        if params:
            query = {k: v for k, v in params.items() if v is not None}
            if query:
                url += "?" + urllib.parse.urlencode(query)
        data = None
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        if json_body is not None:
            data = json.dumps(json_body).encode()
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read() or b""
            try:
                body = json.loads(raw)
                msg = body.get("msg") if isinstance(body, dict) else None
            except ValueError:
                msg = None
            msg = msg or raw.decode(errors="replace")[:300] or exc.reason
            raise AlgorithmClientError(f"{method} {path} failed with HTTP {exc.code}: {msg}",
                                       status=exc.code, msg=str(msg), method=method, path=path) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise AlgorithmClientError(f"{method} {path}: no answer from {self.server_url} ({reason}); "
                                       "is the node proxy reachable from this container?",
                                       method=method, path=path) from None
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise AlgorithmClientError(f"{method} {path}: answer is not JSON: {raw[:200]!r}",
                                       method=method, path=path) from None


class _SubClient:
    def __init__(self, parent: AlgorithmClient) -> None:
        self.parent = parent


class VPNSubClient(_SubClient):
    """Addresses of the other runs' exposed ports, reachable over the VPN."""

    def get_addresses(self, only_children: bool = False, only_parent: bool = False,
                      only_siblings: bool = False, only_self: bool = False,
                      include_children: bool = False, include_parent: bool = False,
                      label: str | None = None) -> list[dict]:
        """List of {"ip", "port", "label", "organization_id", "task_id", "parent_id", "run_id"}.
        The flags are vantage6's; the server rejects a bad combination with 400."""
        flags = {"only_children": only_children, "only_parent": only_parent, "only_siblings": only_siblings,
                 "only_self": only_self, "include_children": include_children,
                 "include_parent": include_parent}
        params: dict[str, Any] = {k: "true" for k, v in flags.items() if v}
        if label is not None:
            params["label"] = label
        body = self.parent.request("GET", "vpn/algorithm/addresses", params=params)
        return list((body or {}).get("addresses") or [])

    def get_own_address(self) -> dict:
        """This run's own address (its first exposed port)."""
        return self._one(self.get_addresses(only_self=True), "own")

    def get_parent_address(self) -> dict:
        """The address of the parent task's run (the central that created this task)."""
        return self._one(self.get_addresses(only_parent=True), "parent")

    def get_child_addresses(self) -> list[dict]:
        return self.get_addresses(only_children=True)

    def get_sibling_addresses(self) -> list[dict]:
        return self.get_addresses(only_siblings=True)

    @staticmethod
    def _one(addresses: list[dict], what: str) -> dict:
        if not addresses:
            raise AlgorithmClientError(f"no {what} address registered (yet): the run has no exposed "
                                       "port, the node has no VPN, or it has not registered the port yet")
        return addresses[0]


class TaskSubClient(_SubClient):
    def create(self, organizations: list[int], input_: Any, name: str | None = None,
               image: str | None = None, collaboration_id: int | None = None) -> dict:
        """Create a subtask (its parent is this run's task); image and collaboration default
        to this run's."""
        image = image or self.parent.image
        collaboration_id = collaboration_id if collaboration_id is not None else self.parent.collaboration_id
        if not image or collaboration_id is None:
            raise AlgorithmClientError("task.create needs image and collaboration_id (or VPNAGENT_IMAGE and "
                                       "VPNAGENT_COLLABORATION_ID in the environment)")
        body: dict[str, Any] = {"collaboration_id": int(collaboration_id),
                                "organizations": [int(o) for o in organizations],
                                "image": image, "input": input_}
        if name is not None:
            body["name"] = name
        return self.parent.request("POST", "task", json_body=body)

    def get(self, task_id: int) -> dict:
        return self.parent.request("GET", f"task/{int(task_id)}")

    def wait_for_results(self, task_id: int, timeout: float = 300.0, interval: float = 1.0) -> list[Any]:
        """Wait until the task completed and return its runs' results (in run order). Raises
        AlgorithmClientError when it failed or the timeout passed."""
        deadline = time.monotonic() + timeout
        while True:
            task = self.get(task_id)
            status = task.get("status")
            if status == "completed":
                return [run.get("result") for run in task.get("runs", [])]
            if status == "failed":
                failed = [r for r in task.get("runs", []) if r.get("status") == "failed"]
                logs = "; ".join(f"run {r.get('id')} (org {r.get('organization_id')}): "
                                 f"{(r.get('log') or '')[-300:]}" for r in failed)
                raise AlgorithmClientError(f"task {task_id} failed: {logs or 'no log'}")
            if time.monotonic() >= deadline:
                raise AlgorithmClientError(f"task {task_id} did not complete within {timeout:.0f} s "
                                           f"(status {status})")
            time.sleep(max(0.05, min(interval, deadline - time.monotonic())))


class OrganizationSubClient(_SubClient):
    def list(self, collaboration_id: int | None = None) -> list[dict]:
        """The organisations of a collaboration (default: this run's)."""
        cid = collaboration_id if collaboration_id is not None else self.parent.collaboration_id
        body = self.parent.request("GET", "organization",
                                   params={"collaboration_id": cid} if cid is not None else None)
        return list((body or {}).get("organizations") or [])
