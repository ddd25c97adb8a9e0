"""Nodes that connect at the same moment each get an address of their own, on SQLite and on
PostgreSQL (where the server's threads really do run these transactions in parallel)."""
from __future__ import annotations

import ipaddress
import threading
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import select

from server_ext.store import Node, Store

NODES = 8
SUBNET = ipaddress.IPv4Network("10.76.0.0/16")


def test_nodes_connecting_at_once_get_distinct_vpn_ips(database_url):
    store = Store(database_url)
    try:
        orgs = [store.create_organization(f"org{i}").id for i in range(NODES)]
        collab = store.create_collaboration("C", orgs).id
        node_ids = [store.create_node(org, collab, f"n{i}")[0].id for i, org in enumerate(orgs)]
        barrier = threading.Barrier(NODES)

        def connect(node_id: int) -> str:
            with store.session() as s:
                node = s.get(Node, node_id)
                barrier.wait(timeout=10)  # every transaction has read its node before any allocates
                return store.allocate_vpn_ip(s, node, SUBNET)

        with ThreadPoolExecutor(NODES) as pool:
            handed_out = list(pool.map(connect, node_ids, timeout=60))
        assert len(set(handed_out)) == NODES, sorted(handed_out)
        with store.session() as s:
            stored = dict(s.execute(select(Node.id, Node.vpn_ip)).all())
        assert [stored[i] for i in node_ids] == handed_out
        assert str(next(SUBNET.hosts())) not in handed_out, ".1 is the OpenVPN server's"
    finally:
        store.close()
