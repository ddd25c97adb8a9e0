"""The client an algorithm run uses to reach the server through its node's proxy.

Shaped like vantage6 4.x's `vantage6.algorithm.client.AlgorithmClient`: the same sub-clients
(`task`, `result`, `run`, `vpn`, `organization`, `collaboration`), the same calls and the
same return values, so an algorithm written for vantage6 runs with a changed import. Two
differences, both on failure: an HTTP error or an unreachable proxy raises
`AlgorithmClientError` carrying the server's message (vantage6 hands back the error JSON as
if it were data), and `wait_for_results` takes an optional `timeout`.
"""
from __future__ import annotations

import base64
import json as _json  # `request` has a parameter named json, as vantage6's does
import logging
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from .environment import env_int, token_claims, token_from_env, url_from_env
from .environment import server_url as join_server_url
from .errors import AlgorithmClientError

DEFAULT_TIMEOUT_S = 10.0
# Task states in which its runs may still produce results (vantage6's TaskStatus); any other
# state, the failure states included, ends wait_for_results.
RUNNING_STATES = frozenset({"pending", "initializing", "active"})
MAX_PAGES = 1000  # a paginated listing longer than this is a server bug, not data
HTTP_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})

log = logging.getLogger("vpnagent_algorithm")


def encode_input(input_: Any) -> str:
    """A task input as vantage6 sends it per organisation: base64 of its JSON."""
    return base64.b64encode(_json.dumps(input_).encode()).decode()


def decode_result(encoded: str | None) -> Any:
    """A run's result as the server stores it (base64 of JSON), decoded; None when there is
    none or it does not decode (logged), as vantage6's client does."""
    if not encoded:
        return None
    try:
        return _json.loads(base64.b64decode(encoded).decode())
    except ValueError as exc:  # binascii.Error, UnicodeDecodeError and JSONDecodeError are ValueErrors
        log.error("cannot decode a result (%s): %.80r", exc, encoded)
        return None


class AlgorithmClient:
    """`AlgorithmClient()` inside a container needs no arguments.

    The server URL and token come from VPNAGENT_SERVER_URL / VPNAGENT_TOKEN (a vpnagent
    node), else from HOST, PORT, API_PATH and TOKEN_FILE (a vantage6 node, values decoded
    the way it encodes them). `AlgorithmClient(token=..., host=..., port=..., path=...)` is
    vantage6's constructor; `server_url=` names the whole base URL at once. Identity
    (node, organisation, collaboration, task, run, image, databases) is read from the
    token's `sub` claim, with the VPNAGENT_* variables as fallback."""

    def __init__(self, token: str | None = None, host: str | None = None, port: int | str | None = None,
                 path: str | None = None, *, server_url: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT_S) -> None:
        if server_url is None:
            server_url = join_server_url(host, port, path) if host else url_from_env()
        self.server_url = server_url.rstrip("/")
        self.token = token or token_from_env()
        self.timeout = timeout

        claims = token_claims(self.token)

        def claim_or_env(key: str, env: str | None) -> int | None:
            value = claims.get(key)
            return int(value) if isinstance(value, int) else (env_int(env) if env else None)

        self.node_id = claim_or_env("node_id", None)  # no node sets it in the environment
        self.organization_id = claim_or_env("organization_id", "VPNAGENT_ORGANIZATION_ID")
        self.collaboration_id = claim_or_env("collaboration_id", "VPNAGENT_COLLABORATION_ID")
        self.task_id = claim_or_env("task_id", "VPNAGENT_TASK_ID")
        self.run_id = claim_or_env("run_id", "VPNAGENT_RUN_ID")
        self.image: str | None = claims.get("image") or os.environ.get("VPNAGENT_IMAGE") or None
        databases = claims.get("databases")
        self.databases: list = list(databases) if isinstance(databases, list) else []

        self.task = Task(self)
        self.result = Result(self)
        self.run = Run(self)
        self.vpn = VPN(self)
        self.organization = Organization(self)
        self.collaboration = Collaboration(self)

    def request(self, endpoint: str, json: Any = None, method: str = "get",
                params: dict[str, Any] | None = None, timeout: float | None = None) -> Any:
        """One call, vantage6's signature: `request("task/7")`, `request("task", method="post",
        json={...})`. Returns the decoded JSON answer (None for an empty one); raises
        AlgorithmClientError for an HTTP error (with the server's `msg`) or no answer."""
        if endpoint.upper() in HTTP_METHODS and isinstance(json, str):
            raise TypeError(f"request() takes vantage6's order: request({json!r}, method={endpoint.lower()!r}, "
                            "params=..., json=...)")
        verb = method.upper()
        path = endpoint.lstrip("/")
        url = f"{self.server_url}/{path}"
        if params:
            query = {k: v for k, v in params.items() if v is not None}
            if query:
                url += "?" + urllib.parse.urlencode(query)
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        data = None
        if json is not None:
            data = _json.dumps(json).encode()
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(url, data=data, headers=headers, method=verb)
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read() or b""
            try:
                body = _json.loads(raw)
                msg = body.get("msg") if isinstance(body, dict) else None
            except ValueError:
                msg = None
            msg = msg or raw.decode(errors="replace")[:300] or str(exc.reason)
            raise AlgorithmClientError(f"{verb} {path} failed with HTTP {exc.code}: {msg}",
                                       status=exc.code, msg=str(msg), method=verb, path=path) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise AlgorithmClientError(f"{verb} {path}: no answer from {self.server_url} ({reason}); is the "
                                       "node proxy reachable from this container?", method=verb, path=path) from None
        if not raw:
            return None
        try:
            return _json.loads(raw)
        except ValueError:
            raise AlgorithmClientError(f"{verb} {path}: the answer is not JSON: {raw[:200]!r}",
                                       method=verb, path=path) from None

    def wait_for_results(self, task_id: int, interval: float = 1, timeout: float | None = None) -> list[Any]:
        """Poll `task/<id>/status` every `interval` seconds until the task left pending,
        initializing and active, then return `result.from_task(task_id)`: the results of the
        runs that have one. A failed task ends the wait too (compare the count with the
        organisations, and ask `run.from_task` for the failed runs' logs). With `timeout`,
        AlgorithmClientError after that many seconds; vantage6 waits forever."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            answer = self.request(f"task/{int(task_id)}/status")
            status = answer.get("status") if isinstance(answer, dict) else None
            if status not in RUNNING_STATES:
                return self.result.from_task(task_id)
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AlgorithmClientError(f"task {task_id} is still {status} after {timeout:g} s")
                time.sleep(max(0.01, min(interval, left)))
            else:
                time.sleep(interval)

    def _multi_page_request(self, endpoint: str, params: dict[str, Any] | None = None) -> list[Any]:
        """All pages of a listing (`data`), following `links.next`."""
        params = dict(params or {})
        items: list[Any] = []
        for page in range(1, MAX_PAGES + 1):
            params["page"] = page
            answer = self.request(endpoint, params=params)
            if not isinstance(answer, dict):
                raise AlgorithmClientError(f"GET {endpoint}: expected a page {{'data': [...], 'links': ...}}, "
                                           f"got {str(answer)[:120]}", method="GET", path=endpoint)
            items.extend(answer.get("data") or [])
            if not (answer.get("links") or {}).get("next"):
                return items
        raise AlgorithmClientError(f"GET {endpoint}: more than {MAX_PAGES} pages; the server's links.next never ends",
                                   method="GET", path=endpoint)




class SubClient:
    def __init__(self, parent: AlgorithmClient) -> None:
        self.parent = parent


class Task(SubClient):
    def get(self, task_id: int) -> dict:
        return self.parent.request(f"task/{int(task_id)}")

    def create(self, input_: Any, organizations: list[int] | None = None, name: str = "subtask",
               description: str | None = None) -> dict:
        """A subtask of this run's task (same image and collaboration), one run per
        organisation, each given `input_` (base64 of its JSON, vantage6's body)."""
        if isinstance(organizations, dict):  # the old call create(organizations, input_)
            raise TypeError("task.create takes vantage6's order: create(input_, organizations=[...], name=...); "
                            "pass them as keywords")
        image, collaboration_id = self.parent.image, self.parent.collaboration_id
        if not image or collaboration_id is None:
            raise AlgorithmClientError("task.create needs this run's image and collaboration: the token has no "
                                       "'image'/'collaboration_id' claim and VPNAGENT_IMAGE / "
                                       "VPNAGENT_COLLABORATION_ID are not set")
        encoded = encode_input(input_)
        body = {
            "name": name,
            "image": image,
            "collaboration_id": collaboration_id,
            "description": description or f"task from container on node_id={self.parent.node_id}",
            "organizations": [{"id": int(org), "input": encoded} for org in organizations or []],
            "databases": self.parent.databases,
        }
        return self.parent.request("task", method="post", json=body)


class Result(SubClient):
    def get(self, id_: int) -> Any:
        """The decoded result of one run (None when it has none)."""
        answer = self.parent.request(f"result/{int(id_)}")
        return decode_result(answer.get("result") if isinstance(answer, dict) else None)

    def from_task(self, task_id: int) -> list[Any]:
        """The decoded results of a task's runs, skipping runs without one."""
        runs = self.parent._multi_page_request("result", params={"task_id": int(task_id)})
        return [decode_result(run.get("result")) for run in runs if run.get("result")]


class Run(SubClient):
    def get(self, id_: int) -> dict:
        return self.parent.request(f"run/{int(id_)}")

    def from_task(self, task_id: int) -> list[dict]:
        """The runs of a task: status, times, log, result (still encoded)."""
        return self.parent._multi_page_request("run", params={"task_id": int(task_id)})


class VPN(SubClient):
    """Addresses (`ip:port` over the VPN) of the ports runs expose."""

    def get_addresses(self, only_children: bool = False, only_parent: bool = False, only_siblings: bool = False,
                      only_self: bool = False, include_children: bool = False, include_parent: bool = False,
                      label: str | None = None) -> list[dict] | dict:
        """A list of {"ip", "port", "label", "organization_id", "task_id", "parent_id", "run_id"}.
        Only true flags are sent (as "1": the server takes any value as true). An answer
        without "addresses" gives vantage6's {"message": "Obtaining VPN addresses failed!"}."""
        flags = {"only_children": only_children, "only_parent": only_parent, "only_siblings": only_siblings,
                 "only_self": only_self, "include_children": include_children, "include_parent": include_parent}
        params: dict[str, Any] = {name: "1" for name, value in flags.items() if value}
        if label:
            params["label"] = label
        answer = self.parent.request("vpn/algorithm/addresses", params=params)
        if not isinstance(answer, dict) or "addresses" not in answer:
            return {"message": "Obtaining VPN addresses failed!"}
        return answer["addresses"]

    def get_own_address(self) -> list[dict] | dict:
        """This run's addresses (one per exposed port); [] when none is registered."""
        return self.get_addresses(only_self=True)

    def get_parent_address(self) -> list[dict] | dict:
        """The parent task's runs' addresses (for a top-level task: its own task's)."""
        return self.get_addresses(only_parent=True)

    def get_child_addresses(self) -> list[dict] | dict:
        return self.get_addresses(only_children=True)

    def get_sibling_addresses(self) -> list[dict] | dict:
        """The runs of this task at the other organisations."""
        return self.get_addresses(only_siblings=True)


class Organization(SubClient):
    def get(self, id_: int) -> dict:
        return self.parent.request(f"organization/{int(id_)}")

    def list(self) -> list[dict]:
        """The organisations of this run's collaboration."""
        return self.parent._multi_page_request("organization",
                                               params={"collaboration_id": self.parent.collaboration_id})


class Collaboration(SubClient):
    def get(self) -> dict:
        return self.parent.request(f"collaboration/{self.parent.collaboration_id}")
