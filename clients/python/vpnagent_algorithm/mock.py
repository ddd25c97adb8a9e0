"""An AlgorithmClient without a server, for an algorithm's unit tests.

Modelled on vantage6's `MockAlgorithmClient(datasets, module, ...)`: `task.create` runs the
requested method of `module` right away, once per organisation, in this process, and keeps
its results, so `wait_for_results`, `result.from_task`, `run.from_task` and the rest answer
as the server would. Runs execute one after another, so methods whose runs must meet each
other (over the VPN) are beyond it; their choreography needs real sockets (see
tests/test_example_ring_sum.py).

How a method is called: a method vantage6's decorators wrapped gets vantage6's mock keywords
(`mock_client`, `mock_data`), so vantage6 algorithms test unchanged; any other method gets
`method(client, *datasets_of_its_organisation, *args, **kwargs)`, the client being a mock
with that run's identity (the convention of vpnagent algorithms, whose entry point calls
`method(AlgorithmClient(), **kwargs)`).
"""
from __future__ import annotations

import copy
import importlib
import json
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from .errors import AlgorithmClientError

MOCK_IMAGE = "mock_image"


@dataclass
class _World:
    """What the server would hold, shared by a mock client and the clients of its runs."""

    module: ModuleType | str
    datasets: dict[int, list[Any]]
    organization_ids: list[int]
    node_ids: dict[int, int]
    collaboration_id: int
    addresses: list[dict]
    tasks: list[dict] = field(default_factory=list)
    runs: list[dict] = field(default_factory=list)

    def load_module(self) -> ModuleType:
        if isinstance(self.module, str):
            self.module = importlib.import_module(self.module)
        return self.module


class MockAlgorithmClient:
    """`MockAlgorithmClient(datasets, module)`: `datasets[i]` is the list of data objects of
    organisation `organization_ids[i]` (any Python objects; [] for none), `module` the
    algorithm's module or its name. Organisation and node ids default to 0, 1, 2, ... as in
    vantage6; this client is the first organisation's. `addresses` is what `vpn.get_addresses`
    answers (filtered by `label`; the other flags are not interpreted), [] by default."""

    def __init__(self, datasets: list[list[Any]], module: ModuleType | str, collaboration_id: int | None = None,
                 organization_ids: list[int] | None = None, node_ids: list[int] | None = None,
                 addresses: list[dict] | None = None) -> None:
        n = len(datasets)
        if organization_ids is not None and len(organization_ids) != n:
            raise ValueError(f"{len(organization_ids)} organization_ids for {n} datasets: give one per dataset list")
        if node_ids is not None and len(node_ids) != n:
            raise ValueError(f"{len(node_ids)} node_ids for {n} datasets: give one per dataset list")
        orgs = list(organization_ids) if organization_ids is not None else list(range(n))
        nodes = list(node_ids) if node_ids is not None else list(range(n))
        world = _World(module=module, datasets={org: list(data) for org, data in zip(orgs, datasets)},
                       organization_ids=orgs, node_ids=dict(zip(orgs, nodes)),
                       collaboration_id=collaboration_id if collaboration_id is not None else 1,
                       addresses=list(addresses or []))
        self._bind(world, orgs[0] if orgs else None, task_id=None, run_id=None)

    def _bind(self, world: _World, organization_id: int | None, task_id: int | None, run_id: int | None) -> None:
        self._world = world
        self.organization_id = organization_id
        self.node_id = world.node_ids.get(organization_id) if organization_id is not None else None
        self.collaboration_id = world.collaboration_id
        self.task_id = task_id
        self.run_id = run_id
        self.image = MOCK_IMAGE
        self.databases: list = []
        self.server_url = "mock://"
        self.token = "mock-token"
        self.task = _Task(self)
        self.result = _Result(self)
        self.run = _Run(self)
        self.vpn = _VPN(self)
        self.organization = _Organization(self)
        self.collaboration = _Collaboration(self)

    def _for_run(self, organization_id: int, task_id: int, run_id: int) -> "MockAlgorithmClient":
        """The client a run of a subtask gets: same world, that run's identity."""
        child = MockAlgorithmClient.__new__(MockAlgorithmClient)
        child._bind(self._world, organization_id, task_id, run_id)
        return child

    def wait_for_results(self, task_id: int, interval: float = 1, timeout: float | None = None) -> list[Any]:
        """The task ran inside task.create, so its results are there already."""
        return self.result.from_task(task_id)


class _SubClient:
    def __init__(self, parent: MockAlgorithmClient) -> None:
        self.parent = parent

    @property
    def world(self) -> _World:
        return self.parent._world


def _not_found(what: str, id_: Any) -> AlgorithmClientError:
    return AlgorithmClientError(f"GET {what}/{id_} failed with HTTP 404: {what} {id_} not found", status=404,
                                msg=f"{what} {id_} not found", method="GET", path=f"{what}/{id_}")


class _Task(_SubClient):
    def create(self, input_: Any, organizations: list[int] | None = None, name: str = "mock",
               description: str = "mock") -> dict:
        """Run `input_["method"]` for each organisation now and return the completed task."""
        if isinstance(organizations, dict):
            raise TypeError("task.create takes vantage6's order: create(input_, organizations=[...]); "
                            "pass them as keywords")
        if not organizations:
            raise ValueError("no organizations: a task needs at least one")
        unknown = [o for o in organizations if o not in self.world.datasets]
        if unknown:
            raise ValueError(f"organisation(s) {unknown} have no datasets; known: {self.world.organization_ids}")
        if not isinstance(input_, dict) or "method" not in input_:
            raise ValueError(f"input_ must be {{'method': <name>, 'args': [...], 'kwargs': {{...}}}}, got {input_!r}")
        # the round trip through JSON the server and the node would make
        input_ = json.loads(json.dumps(input_))
        method = getattr(self.world.load_module(), input_["method"])
        args, kwargs = list(input_.get("args") or []), dict(input_.get("kwargs") or {})
        task_id = len(self.world.tasks) + 1
        task = {"id": task_id, "name": name, "description": description, "image": MOCK_IMAGE,
                "collaboration_id": self.world.collaboration_id, "parent_id": self.parent.task_id,
                "databases": list(self.parent.databases), "status": "active", "runs": []}
        self.world.tasks.append(task)
        runs = []
        for org in organizations:  # ids first, as the server hands them out when the task is created
            run_id = len(self.world.runs) + 1
            run = {"id": run_id, "run_id": run_id, "task": {"id": task_id}, "task_id": task_id,
                   "organization": {"id": org}, "organization_id": org, "node_id": self.world.node_ids[org],
                   "status": "pending", "started_at": None, "finished_at": None, "log": "", "result": None}
            self.world.runs.append(run)
            task["runs"].append({"id": run["id"], "organization_id": org, "status": "pending"})
            runs.append(run)
        for run, summary in zip(runs, task["runs"]):
            org, run_id = run["organization_id"], run["id"]
            client = self.parent._for_run(org, task_id, run_id)
            data = copy.deepcopy(self.world.datasets[org])  # each run gets fresh data, as in vantage6
            run["status"] = summary["status"] = "active"
            try:
                result = _call(method, client, data, args, kwargs)
                run["result"] = json.dumps(result)  # JSON, as the node reports it: one that is not fails here
            except BaseException:  # the run failed; the exception goes to the test as it is
                run["status"] = summary["status"] = task["status"] = "failed"
                raise
            run["status"] = summary["status"] = "completed"
        task["status"] = "completed"
        return copy.deepcopy(task)

    def get(self, task_id: int) -> dict:
        for task in self.world.tasks:
            if task["id"] == task_id:
                return copy.deepcopy(task)
        raise _not_found("task", task_id)


def _call(method: Any, client: MockAlgorithmClient, data: list[Any], args: list[Any], kwargs: dict[str, Any]) -> Any:
    """vantage6's mock keywords for a method its decorators wrapped, else ours."""
    wants_client = getattr(method, "wrapped_in_algorithm_client_decorator", False)
    wants_data = getattr(method, "wrapped_in_data_decorator", False)
    if not (wants_client or wants_data):
        return method(client, *data, *args, **kwargs)
    extra: dict[str, Any] = {}
    if wants_client:
        extra["mock_client"] = client
    if wants_data:
        extra["mock_data"] = data
    return method(*args, **kwargs, **extra)


class _Result(_SubClient):
    def get(self, id_: int) -> Any:
        result = self.parent.run.get(id_)["result"]
        return None if result is None else json.loads(result)

    def from_task(self, task_id: int) -> list[Any]:
        return [json.loads(run["result"]) for run in self.world.runs
                if run["task_id"] == task_id and run["result"] is not None]


class _Run(_SubClient):
    def get(self, id_: int) -> dict:
        for run in self.world.runs:
            if run["id"] == id_:
                return copy.deepcopy(run)
        raise _not_found("run", id_)

    def from_task(self, task_id: int) -> list[dict]:
        return [copy.deepcopy(run) for run in self.world.runs if run["task_id"] == task_id]


class _VPN(_SubClient):
    def get_addresses(self, only_children: bool = False, only_parent: bool = False, only_siblings: bool = False,
                      only_self: bool = False, include_children: bool = False, include_parent: bool = False,
                      label: str | None = None) -> list[dict]:
        return [dict(a) for a in self.world.addresses if not label or a.get("label") == label]

    def get_own_address(self) -> list[dict]:
        return self.get_addresses(only_self=True)

    def get_parent_address(self) -> list[dict]:
        return self.get_addresses(only_parent=True)

    def get_child_addresses(self) -> list[dict]:
        return self.get_addresses(only_children=True)

    def get_sibling_addresses(self) -> list[dict]:
        return self.get_addresses(only_siblings=True)


class _Organization(_SubClient):
    def get(self, id_: int) -> dict:
        if id_ not in self.world.datasets:
            raise _not_found("organization", id_)
        return {"id": id_, "name": f"mock-{id_}", "public_key": ""}

    def list(self) -> list[dict]:
        return [self.get(org) for org in self.world.organization_ids]


class _Collaboration(_SubClient):
    def get(self) -> dict:
        return {"id": self.world.collaboration_id, "name": "mock-collaboration",
                "organizations": [{"id": org} for org in self.world.organization_ids], "encrypted": False}
