"""What an algorithm container finds when it starts: its environment, the files of its run
directory and the databases mounted into it. Two contracts, chosen per task by the task's
`contract` field (a subtask inherits its parent's), never guessed from the image:

- `vpnagent`: VPNAGENT_* variables, input.json / output.json (docs/algorithm-guide.md);
- `vantage6`: what a vantage6 4.x node gives an algorithm, so `wrap_algorithm()` and the
  `@algorithm_client` decorator of vantage6-algorithm-tools work unchanged: INPUT_FILE,
  OUTPUT_FILE, TOKEN_FILE, TEMPORARY_FOLDER, HOST, PORT, API_PATH and the database
  variables, every value base32-encoded as the vantage6 node encodes it.

Pure: the agent writes the files and starts the container from the ContainerPlan."""
from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from .config import Database

CONTRACTS = ("vpnagent", "vantage6")
RUN_MOUNT = "/mnt/run"  # the run directory, as the vpnagent contract has always had it
V6_DATA = "/mnt/data"  # vantage6's data folder: the run's files and file databases
V6_RUN = f"{V6_DATA}/run"
V6_TMP = "/mnt/tmp"
V6_TMP_DIR = "tmp"  # the run directory's subdirectory mounted at V6_TMP


class ContractError(ValueError):
    """The run cannot be given its contract (unknown contract, unknown database); the
    message becomes the failed run's log."""


@dataclass(frozen=True)
class ContainerPlan:
    env: dict[str, str]
    files: dict[str, bytes]  # name in the run directory -> content, written before the start
    output_name: str  # the file in the run directory the result is read from
    # host path -> (container path, read_only); the run directory itself and its subdirectories
    # are given as names relative to it (see RunMount)
    binds: dict[str, tuple[str, bool]] = field(default_factory=dict)
    run_mounts: tuple[tuple[str, str], ...] = ()  # (subdir of the run dir or "", container path)


@dataclass(frozen=True)
class RunIdentity:
    run_id: int
    task_id: int
    organization_id: Any
    collaboration_id: Any
    image: str


def plan(contract: str | None, ident: RunIdentity, run_input: Any, token: str, proxy_url: str,
         databases: list[dict] | None, node_databases: tuple[Database, ...]) -> ContainerPlan:
    """The container contract of one run. `proxy_url` is the node proxy's URL ending in /api;
    `databases` the task's requested databases ([{"label": ...}])."""
    contract = contract or "vpnagent"
    if contract == "vpnagent":
        return _vpnagent(ident, run_input, token, proxy_url)
    if contract == "vantage6":
        return _vantage6(run_input, token, proxy_url, databases or [], node_databases)
    raise ContractError(f"unknown container contract {contract!r}; this node knows {', '.join(CONTRACTS)} "
                        "(upgrade the node?)")


def _vpnagent(ident: RunIdentity, run_input: Any, token: str, proxy_url: str) -> ContainerPlan:
    env = {
        "VPNAGENT_SERVER_URL": proxy_url,
        "VPNAGENT_TOKEN": token,
        "VPNAGENT_RUN_ID": str(ident.run_id),
        "VPNAGENT_TASK_ID": str(ident.task_id),
        "VPNAGENT_ORGANIZATION_ID": str(ident.organization_id if ident.organization_id is not None else ""),
        "VPNAGENT_COLLABORATION_ID": str(ident.collaboration_id if ident.collaboration_id is not None else ""),
        "VPNAGENT_IMAGE": ident.image,
        "VPNAGENT_INPUT_FILE": f"{RUN_MOUNT}/input.json",
        "VPNAGENT_OUTPUT_FILE": f"{RUN_MOUNT}/output.json",
    }
    return ContainerPlan(env=env, files={"input.json": json.dumps(run_input).encode()}, output_name="output.json",
                         run_mounts=(("", RUN_MOUNT),))


def _vantage6(run_input: Any, token: str, proxy_url: str, requested: list[dict],
              node_databases: tuple[Database, ...]) -> ContainerPlan:
    url = urlsplit(proxy_url)
    env = {
        "INPUT_FILE": f"{V6_RUN}/input",
        "OUTPUT_FILE": f"{V6_RUN}/output",
        "TOKEN_FILE": f"{V6_RUN}/token",
        "TEMPORARY_FOLDER": V6_TMP,
        # vantage6's client joins these as HOST:PORT + API_PATH + "/" + endpoint; our proxy
        # serves under /api (vantage6's node proxy serves at the root, with API_PATH "").
        "HOST": f"{url.scheme}://{url.hostname}",
        "PORT": str(url.port or (443 if url.scheme == "https" else 80)),
        "API_PATH": url.path.rstrip("/"),
    }
    binds: dict[str, tuple[str, bool]] = {}
    by_label = {db.label: db for db in node_databases}
    labels = []
    for entry in requested:
        label = str(entry.get("label", "")) if isinstance(entry, dict) else ""
        if label not in by_label:
            known = ", ".join(sorted(by_label)) or "none"
            raise ContractError(f"the task asks for database {label!r}, which this node does not have "
                                f"(its databases: {known}); fix the task or the node's `databases`")
        labels.append(label)
    # Only the databases the task asked for are visible (vantage6 shows every database of
    # the node): a run sees no data it was not meant to use.
    for label in dict.fromkeys(labels):
        db = by_label[label]
        prefix = label.upper()
        if db.kind == "file":
            inside = f"{V6_DATA}/{PurePosixPath(db.uri).name}"
            binds[db.uri] = (inside, True)
        elif db.kind == "dir":
            inside = f"/mnt/{label}"
            binds[db.uri] = (inside, True)
        else:
            inside = db.uri
        env[f"{prefix}_DATABASE_URI"] = inside
        env[f"{prefix}_DATABASE_TYPE"] = db.type
        for key, value in db.env.items():
            env[f"{prefix}_DB_PARAM_{key.upper()}"] = value
    env["USER_REQUESTED_DATABASE_LABELS"] = ",".join(labels)
    env["DB_LABELS"] = ",".join(dict.fromkeys(labels))
    files = {"input": json.dumps(run_input).encode(), "token": token.encode()}
    return ContainerPlan(env={k: encode_env(v) for k, v in env.items()}, files=files, output_name="output",
                         binds=binds, run_mounts=(("", V6_RUN), (V6_TMP_DIR, V6_TMP)))


def encode_env(value: str) -> str:
    """A value the way the vantage6 node passes it (base32, '=' as '!'); the algorithm's
    wrapper decodes every variable it can."""
    return base64.b32encode(value.encode()).decode().replace("=", "!")


def decode_env(value: str) -> str:
    return base64.b32decode(value.replace("!", "=").encode()).decode()
