"""ring_sum as a vantage6 4.x algorithm: the guide's example, written the way vantage6
documents algorithms (functions with vantage6-algorithm-tools' `@algorithm_client` and
`@data` decorators, dispatched by its `wrap_algorithm()`), run unchanged on vpnagent nodes.

`central` creates a `partial` subtask at every organisation of the collaboration, listens on
its own port for the total and waits for the subtask's results. Each `partial` reads its
value from the node's database (the sum of its `value` column), finds the others of its task
with `client.vpn.get_own_address()` + `get_sibling_addresses()`, passes the masked sum round
the ring over the VPN (the ring mechanics are ring_sum's), and the first member reports the
total to `client.vpn.get_parent_address()`. `central` sees its children with
`get_child_addresses()`. No value reaches the server or central unmasked.

The image (examples/ring_sum/build_v6.py) installs vantage6-algorithm-tools 4.13.7 from
PyPI wheels and sets PKG_NAME to this module.
"""
from __future__ import annotations

import secrets
import time
from typing import Any, Callable

import pandas as pd
from vantage6.algorithm.client import AlgorithmClient
from vantage6.algorithm.tools.decorators import algorithm_client, data

from examples.ring_sum.ring_sum import MODULUS, POLL_S, RING_PORT, Inbox, RingError, send


def _addresses(fetch: Callable[[], Any], want: int, timeout: float, what: str) -> list[dict]:
    """Poll a vantage6 address call until it lists `want` runs (by organisation)."""
    deadline = time.monotonic() + timeout
    found: list[dict] = []
    while time.monotonic() < deadline:
        answer = fetch()
        found = answer if isinstance(answer, list) else []  # vantage6 returns {"message"} on failure
        if len({a["organization_id"] for a in found}) >= want:
            return found
        time.sleep(POLL_S)
    raise RingError(f"only {len(found)} of {want} {what} address(es) registered within {timeout:.0f} s: {found}")


@algorithm_client
def central(client: AlgorithmClient, timeout: float = 60) -> dict:
    orgs = sorted(int(o["id"]) for o in client.organization.list())
    inbox = Inbox(RING_PORT)  # the ring's first member sends the total here
    try:
        task = client.task.create(input_={"method": "partial", "kwargs": {"n_nodes": len(orgs), "timeout": timeout}},
                                  organizations=orgs, name="ring_sum partials")
        children = _addresses(client.vpn.get_child_addresses, len(orgs), timeout, "child")
        total = inbox.receive(timeout)
    finally:
        inbox.close()
    partials = client.wait_for_results(task_id=task["id"], interval=POLL_S)
    return {"organizations": orgs, "total": total, "partials": partials,
            "children_seen": sorted({a["organization_id"] for a in children})}


@data(1)
@algorithm_client
def partial(client: AlgorithmClient, df: pd.DataFrame, n_nodes: int, timeout: float = 60) -> dict:
    me = client.organization_id
    value = int(df["value"].sum()) % MODULUS
    inbox = Inbox(RING_PORT)  # listen before anyone can look us up and send
    try:
        own = _addresses(client.vpn.get_own_address, 1, timeout, "own")
        siblings = _addresses(client.vpn.get_sibling_addresses, n_nodes - 1, timeout, "sibling")
        ring = sorted([own[0], *siblings], key=lambda a: a["organization_id"])
        position = next(i for i, a in enumerate(ring) if a["organization_id"] == me)
        nxt = ring[(position + 1) % len(ring)]
        if position == 0:
            mask = secrets.randbelow(MODULUS)
            send(nxt["ip"], nxt["port"], (mask + value) % MODULUS)
            total = (inbox.receive(timeout) - mask) % MODULUS
            parent = _addresses(client.vpn.get_parent_address, 1, timeout, "parent")[0]
            send(parent["ip"], parent["port"], total)
        else:
            send(nxt["ip"], nxt["port"], (inbox.receive(timeout) + value) % MODULUS)
    finally:
        inbox.close()
    return {"organization_id": me, "position": position, "rows": int(len(df))}
