"""The admin lifecycle commands of `vpnagent-server` beyond add/remove: list and show every
kind of object, rotate a node's key, and the admins who use /api/admin. `--json` prints the
dicts of server_ext/inventory.py, the same the admin API answers with; a created or rotated
API key appears in it once, as `api_key`. Errors are StoreErrors, which cli.main prints
as one line with exit status 2."""
from __future__ import annotations

import argparse
import json
from typing import Any, Callable

import yaml

JSON_HELP = "print JSON (what /api/admin answers) instead of lines"
PLANE_CHOICES = ("openvpn", "wireguard", "default")  # config.DATA_PLANES, or the server's
# Admin commands that cli.main defines itself; register() gives them --json too.
EARLIER = ("add-organization", "add-collaboration", "add-node", "join-token", "add-user", "remove-user", "rotate-user-key",
           "remove-node", "remove-organization")


def print_json(data: Any) -> int:
    print(json.dumps(data, indent=2))
    return 0


def view(args: argparse.Namespace, what: str, *ids: Any, **extra: Any) -> Any:
    """The view `what` of server_ext/inventory.py on the server's store (extra keys added,
    e.g. the new api_key). By name, so that importing the CLI loads no database code."""
    from . import inventory
    from .cli import _store

    fn = getattr(inventory, what)
    store = _store(args)
    try:
        with store.session() as s:
            data = fn(s, *ids)
    finally:
        store.close()
    return {**data, **extra} if extra else data


def server_plane(args: argparse.Namespace) -> str:
    """The server config's data_plane: the plane of every collaboration that sets none."""
    from .cli import _config, _get

    return _get(_config(args), "data_plane")


def _show(args: argparse.Namespace, what: str, *ids: Any) -> int:
    """One object with its relations: JSON, or the same as YAML for reading."""
    data = view(args, what, *ids)
    if args.json:
        return print_json(data)
    print(yaml.safe_dump(data, sort_keys=False, default_flow_style=False).rstrip())
    return 0


def _list(args: argparse.Namespace, rows: list[dict], line: Callable[[dict], str], none: str) -> int:
    if args.json:
        return print_json(rows)
    for row in rows:
        print(line(row))
    if not rows:
        print(none)
    return 0


def _gone(row: dict) -> str:
    return f"  removed {row['removed_at'][:16].replace('T', ' ')} UTC" if row.get("removed_at") else ""


# ---------------------------------------------------------------- list and show
def cmd_list_organizations(args: argparse.Namespace) -> int:
    return _list(args, view(args, "organizations"),
                 lambda o: f"organization {o['id']} {o['name']} (collaborations: "
                           f"{', '.join(str(c['id']) for c in o['collaborations']) or 'none'})", "no organizations")


def plane_text(c: dict) -> str:
    """How a line says a collaboration's data plane: "wireguard", "openvpn (server default)"."""
    return f"{c['data_plane']}{' (server default)' if c['data_plane_default'] else ''}"


def cmd_list_collaborations(args: argparse.Namespace) -> int:
    return _list(args, view(args, "collaborations", server_plane(args)),
                 lambda c: f"collaboration {c['id']} {c['name']} (organizations: "
                           f"{', '.join(str(o['id']) for o in c['organizations'])}) data plane {plane_text(c)}",
                 "no collaborations")


def _node_line(n: dict) -> str:
    seen = f"last seen {n['last_seen_at'][:16].replace('T', ' ')} UTC" if n["last_seen_at"] else "never seen"
    return (f"node {n['id']} {n['name']} (organization {n['organization_id']}, collaboration "
            f"{n['collaboration_id']}) VPN IP {n['vpn_ip'] or '-'}, {seen}{_gone(n)}")


def cmd_list_nodes(args: argparse.Namespace) -> int:
    return _list(args, view(args, "nodes", args.org, args.collaboration), _node_line, "no nodes")


def cmd_list_tasks(args: argparse.Namespace) -> int:
    def line(t: dict) -> str:
        runs = ", ".join(f"{n} {state}" for state, n in t["run_states"].items()) or "no runs"
        return f"task {t['id']} {t['name'] or '-'} {t['image']} (collaboration {t['collaboration_id']}) " \
               f"{t['status']}: {runs}"
    return _list(args, view(args, "tasks", args.collaboration), line, "no tasks")


def cmd_list_admins(args: argparse.Namespace) -> int:
    return _list(args, view(args, "admins"), lambda a: f"admin {a['id']} {a['name']}{_gone(a)}", "no admins")


def cmd_show_organization(args: argparse.Namespace) -> int:
    return _show(args, "organization", args.organization_id)


def cmd_show_collaboration(args: argparse.Namespace) -> int:
    return _show(args, "collaboration", args.collaboration_id, server_plane(args))


def cmd_set_data_plane(args: argparse.Namespace) -> int:
    """Every node of the collaboration is told at once (a `peers` event) and switches."""
    from .cli import _store

    _store(args).set_data_plane(args.collaboration_id, args.data_plane)
    data = view(args, "collaboration", args.collaboration_id, server_plane(args))
    if args.json:
        return print_json(data)
    print(f"collaboration {data['id']} {data['name']}: data plane {plane_text(data)}; its nodes were told and "
          "switch within seconds")
    return 0


def cmd_show_node(args: argparse.Namespace) -> int:
    return _show(args, "node", args.node_id)


def cmd_show_user(args: argparse.Namespace) -> int:
    return _show(args, "user", args.user_id)


def cmd_show_task(args: argparse.Namespace) -> int:
    return _show(args, "task", args.task_id)


# ---------------------------------------------------------------- keys and admins
def _new_key(args: argparse.Namespace, kind: str, data: dict, key: str, note: str = "") -> int:
    if args.json:
        return print_json({**data, "api_key": key})
    from .cli import _show_key

    _show_key(kind, data["id"], data["name"], key, note)
    return 0


def cmd_rotate_node_key(args: argparse.Namespace) -> int:
    from .cli import _store

    node, key = _store(args).rotate_node_key(args.node_id)
    return _new_key(args, "node", view(args, "node", node.id), key,
                    "; the old key and its tokens stopped working: put this one into the node config's api_key "
                    "and restart the agent")


def cmd_add_admin(args: argparse.Namespace) -> int:
    from .cli import _store

    admin, key = _store(args).create_admin(args.name)
    from .inventory import admin_json

    return _new_key(args, "admin", admin_json(admin), key,
                    "; exchange it at POST /api/token/admin for a token of the admin API")


def cmd_remove_admin(args: argparse.Namespace) -> int:
    from .cli import _store

    from .inventory import admin_json

    admin = _store(args).remove_admin(args.admin_id)
    if args.json:
        return print_json(admin_json(admin))
    print(f"admin {admin.id} ({admin.name}) removed: its API key and every token issued with it stopped working")
    return 0


def cmd_rotate_admin_key(args: argparse.Namespace) -> int:
    from .cli import _store

    admin, key = _store(args).rotate_admin_key(args.admin_id)
    from .inventory import admin_json

    return _new_key(args, "admin", admin_json(admin), key, "; the old key and its tokens stopped working")


def register(sub: argparse._SubParsersAction, add: Callable[..., argparse.ArgumentParser],
             db_id: Callable[[str], int]) -> None:
    """Add these commands to `vpnagent-server`'s subcommands (`add` makes one with
    --config), and --json to the admin commands cli.main defines itself."""
    for name in EARLIER:
        sub.choices[name].add_argument("--json", action="store_true", help=JSON_HELP)

    def command(name: str, fn: Callable, help_: str, *ids: str) -> argparse.ArgumentParser:
        sp = add(name, fn, help_)
        for ident in ids:
            sp.add_argument(ident, type=db_id)
        sp.add_argument("--json", action="store_true", help=JSON_HELP)
        return sp

    command("list-organizations", cmd_list_organizations, "list the organisations with their collaborations")
    command("show-organization", cmd_show_organization, "one organisation: collaborations, nodes, researchers",
            "organization_id")
    command("list-collaborations", cmd_list_collaborations, "list the collaborations with their organisations")
    command("show-collaboration", cmd_show_collaboration, "one collaboration: organisations, data plane, nodes, "
            "number of tasks", "collaboration_id")
    s = command("set-data-plane", cmd_set_data_plane, "move a collaboration's algorithm traffic to a data plane "
                "(default: the server config's data_plane); its nodes switch at once", "collaboration_id")
    s.add_argument("data_plane", choices=PLANE_CHOICES)
    s = command("list-nodes", cmd_list_nodes, "list the nodes: VPN IP, last seen, removed ones included")
    s.add_argument("--org", type=db_id, help="only this organisation's")
    s.add_argument("--collaboration", type=db_id, help="only this collaboration's")
    command("show-node", cmd_show_node, "one node: organisation, collaboration, VPN IP, last seen, certificates, "
            "runs in progress", "node_id")
    command("rotate-node-key", cmd_rotate_node_key, "give a node a new API key (printed once); the old key and its "
            "tokens stop working at once, its VPN session stays up", "node_id")
    command("show-user", cmd_show_user, "one researcher and its organisation", "user_id")
    s = command("list-tasks", cmd_list_tasks, "list the tasks with their status and run states")
    s.add_argument("--collaboration", type=db_id, help="only this collaboration's")
    command("show-task", cmd_show_task, "one task: its runs (state, node, times, ports) and subtasks", "task_id")
    s = command("add-admin", cmd_add_admin, "create an administrator for the admin API; prints its API key once")
    s.add_argument("name")
    command("list-admins", cmd_list_admins, "list the administrators, removed ones included")
    command("remove-admin", cmd_remove_admin, "take an administrator out: its API key and tokens stop working at once",
            "admin_id")
    command("rotate-admin-key", cmd_rotate_admin_key, "give an administrator a new API key (printed once); the old "
            "key and its tokens stop working at once", "admin_id")
