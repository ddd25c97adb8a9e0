"""Send the echo task to a server as a researcher and show its result as a matrix.

    python -m test_algorithms.send_echo --server http://127.0.0.1:5000/api --api-key KEY --collaboration 1

Exit code 0 only when every pair echoed correctly.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Callable

import requests

from vpnagent.tls import make_session

ECHO_IMAGE = "vpnagent/echo:latest"
HTTP_TIMEOUT_S = 10


class SendEchoError(RuntimeError):
    """The echo task could not be sent or did not finish; the message says why."""


def _call(session: requests.Session, method: str, url: str, **kw: Any) -> Any:
    try:
        resp = session.request(method, url, timeout=HTTP_TIMEOUT_S, **kw)
    except requests.RequestException as exc:
        raise SendEchoError(f"{method} {url}: no answer ({exc}); is the server running?") from None
    if resp.status_code >= 400:
        try:
            msg = resp.json().get("msg")
        except ValueError:
            msg = None
        raise SendEchoError(f"{method} {url} failed with HTTP {resp.status_code}: {msg or resp.text[:300]}")
    return resp.json()


def send_echo(server_url: str, api_key: str, collaboration_id: int, organization_ids: list[int] | None = None,
              timeout: float = 180, progress: Callable[[str], None] = print, image: str = ECHO_IMAGE,
              payload_size: int = 1024, verify: str | bool = True) -> dict:
    """Create the echo central task at one organisation (the first), wait for it, return its
    result ({"organizations", "pairs", "ok", ...}). Raises SendEchoError when it failed."""
    base = server_url.rstrip("/")
    s = make_session(verify)  # the server's CA file, or True for the system CAs
    token = _call(s, "POST", f"{base}/token/user", json={"api_key": api_key})["access_token"]
    s.headers["Authorization"] = f"Bearer {token}"
    explicit = bool(organization_ids)
    if not organization_ids:
        orgs = _call(s, "GET", f"{base}/organization", params={"collaboration_id": collaboration_id})
        organization_ids = sorted(int(o["id"]) for o in orgs.get("organizations", []))
    if not organization_ids:
        raise SendEchoError(f"collaboration {collaboration_id} has no organisations")
    # The algorithm's own timeout stays well inside ours, so it reports instead of being cut off.
    algo_timeout = max(10, int(timeout * 0.6))
    kwargs: dict[str, Any] = {"timeout": algo_timeout, "payload_size": payload_size}
    if explicit:
        kwargs["organizations"] = list(organization_ids)
    task = _call(s, "POST", f"{base}/task", json={
        "collaboration_id": collaboration_id, "organizations": [organization_ids[0]], "image": image,
        "name": "echo", "input": {"method": "central", "kwargs": kwargs}})
    task_id = task["id"]
    progress(f"echo task {task_id} created at org{organization_ids[0]} (collaboration {collaboration_id})")
    deadline = time.monotonic() + timeout
    last = None
    t0 = time.monotonic()
    while True:
        task = _call(s, "GET", f"{base}/task/{task_id}")
        status = task.get("status")
        runs = task.get("runs") or []
        if status != last:
            progress(f"echo task {task_id}: {status} after {time.monotonic() - t0:.1f} s")
            last = status
        if status in ("completed", "failed"):
            break
        if time.monotonic() >= deadline:
            raise SendEchoError(f"echo task {task_id} did not finish within {timeout:.0f} s (status {status}); "
                                "see the node logs")
        time.sleep(0.5)
    result = runs[0].get("result") if runs else None
    if status == "failed" or not isinstance(result, dict) or "pairs" not in result:
        log = (runs[0].get("log") or "")[-1500:] if runs else ""
        why = result.get("error") if isinstance(result, dict) else None
        raise SendEchoError(f"echo task {task_id} {status}: {why or 'no result'}" + (f"\nlog:\n{log}" if log else ""))
    return result


def _org_key(name: str) -> tuple[int, int, str]:
    """Sort "central@orgN" first, then orgN by number."""
    central = 0 if name.startswith("central") else 1
    digits = "".join(c for c in name.rsplit("org", 1)[-1] if c.isdigit())
    return central, int(digits) if digits else 0, name


def format_matrix(result: dict) -> str:
    """Rows = sender, columns = receiver, cells ok / FAIL / -, then the errors and a summary."""
    pairs = result.get("pairs") or []
    senders = sorted({p["from"] for p in pairs}, key=_org_key)
    receivers = sorted({p["to"] for p in pairs}, key=_org_key)
    cell = {(p["from"], p["to"]): p for p in pairs}
    first = max([len("from \\ to")] + [len(s) for s in senders])
    width = max([6] + [len(r) for r in receivers])
    lines = ["from \\ to".ljust(first) + "  " + "  ".join(r.rjust(width) for r in receivers)]
    for s in senders:
        cells = []
        for r in receivers:
            p = cell.get((s, r))
            cells.append(("-" if p is None else "ok" if p.get("ok") else "FAIL").rjust(width))
        lines.append(s.ljust(first) + "  " + "  ".join(cells))
    ms = [p["ms"] for p in pairs if p.get("ok") and isinstance(p.get("ms"), (int, float))]
    failed = [p for p in pairs if not p.get("ok")]
    if failed:
        lines.append("")
        lines.append("errors:")
        lines += [f"  {p['from']} -> {p['to']}: {p.get('error') or 'failed'}" for p in failed]
    other = result.get("errors") or []
    if other:
        lines.append("")
        lines.append("other problems:")
        lines += [f"  {e}" for e in other]
    lines.append("")
    if not failed:
        summary = f"all {len(pairs)} pairs ok"
    else:
        summary = f"{len(failed)} of {len(pairs)} pairs failed"
    if ms:
        summary += f" (round trip {min(ms):.1f}-{max(ms):.1f} ms)"
    lines.append(summary)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m test_algorithms.send_echo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", required=True, help="server API URL, e.g. https://127.0.0.1:5000/api")
    parser.add_argument("--ca-file", help="CA that signed the server's certificate (the server's pki/ca.crt); "
                                          "default: the system CAs")
    parser.add_argument("--api-key", required=True, help="a researcher's (user) API key")
    parser.add_argument("--collaboration", type=int, required=True, help="collaboration id")
    parser.add_argument("--organization", type=int, action="append", dest="organizations",
                        help="organisation id to include (repeatable; default: all of the collaboration)")
    parser.add_argument("--timeout", type=float, default=180, help="seconds to wait (default 180)")
    parser.add_argument("--json", action="store_true", help="also print the raw result as JSON")
    args = parser.parse_args(argv)
    try:
        result = send_echo(args.server, args.api_key, args.collaboration, args.organizations,
                           timeout=args.timeout, progress=lambda m: print(m, flush=True),
                           verify=args.ca_file or True)
    except SendEchoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(format_matrix(result))
    if args.json:
        print(json.dumps(result, indent=2))
    return 0 if result.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
