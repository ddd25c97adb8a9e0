"""Admin operations that touch more than the store: taking a node (or a whole
organisation) out revokes its certificates, republishes the CRL, removes its static IP
entry and disconnects its live VPN session through OpenVPN's management interface.
Taking an organisation out removes its researchers too.

The store is what counts: the OpenVPN service (openvpnservice.py) carries the removal out
on its next pass wherever this process runs. When this process shares a host and a data
directory with the OpenVPN server, it also does the same at once, so the command can say
the session is gone."""
from __future__ import annotations

import logging
from dataclasses import dataclass

from .openvpnservice import PASS_INTERVAL_S
from .state import ExtensionState
from .store import User
from .vpnserver import Management

log = logging.getLogger(__name__)


@dataclass
class Removal:
    node_id: int
    common_name: str
    disconnected: bool
    note: str


def remove_node(state: ExtensionState, node_id: int) -> Removal:
    node = state.store.remove_node(node_id)
    state.files.write_crl(state.store.revoked_serials())
    state.files.remove_ccd(node.common_name)  # with ccd-exclusive: no entry, no connection
    try:
        killed = Management(state.files.management_sockets).kill(node.common_name)
        note = "live VPN session disconnected" if killed else "no live VPN session"
    except OSError as exc:  # the OpenVPN server is not running here: its service acts on the store
        killed, note = False, (f"OpenVPN management unreachable from here ({exc.strerror or exc}); the OpenVPN "
                               f"service disconnects the node on its next pass (every {PASS_INTERVAL_S:g} s), and "
                               "the CRL stops its next handshake")
    log.info("node %s (%s) removed: certificates revoked; %s", node.id, node.common_name, note)
    return Removal(node.id, node.common_name, killed, note)


@dataclass
class OrganizationRemoval:
    nodes: list[Removal]
    users: list[User]


def remove_organization(state: ExtensionState, organization_id: int) -> OrganizationRemoval:
    """Every node and every researcher of the organisation: no credential of it works after."""
    nodes = [remove_node(state, node_id) for node_id in state.store.nodes_of_organization(organization_id)]
    users = state.store.remove_users_of_organization(organization_id)
    for user in users:
        log.info("user %s (%s) removed with organisation %s", user.id, user.name, organization_id)
    return OrganizationRemoval(nodes, users)
