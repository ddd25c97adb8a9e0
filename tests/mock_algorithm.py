"""A tiny algorithm for tests/test_mock_algorithm_client.py, written the way vpnagent
algorithms are (the client first, then the organisation's data objects, then the task's
arguments) plus one in vantage6's decorated style."""
from __future__ import annotations


def central(client, *_data, factor: int = 1) -> dict:
    """Start `partial` at every organisation and add up what they return (its own data unused)."""
    orgs = [o["id"] for o in client.organization.list()]
    task = client.task.create(input_={"method": "partial", "kwargs": {"factor": factor}}, organizations=orgs,
                              name="partials")
    results = client.wait_for_results(task["id"])
    return {"total": sum(r["sum"] for r in results), "task_id": task["id"], "n": len(results)}


def partial(client, numbers: list[int], factor: int = 1) -> dict:
    numbers.append(1000)  # mutating its data must not leak into the next run
    return {"organization_id": client.organization_id, "sum": sum(numbers[:-1]) * factor,
            "task_id": client.task_id, "run_id": client.run_id, "node_id": client.node_id}


def positional(client, a: int, b: int) -> list[int]:
    return [client.organization_id, a, b]


def peers(client, *_data) -> list[dict]:
    return client.vpn.get_addresses(label="ring")


def not_json(client, *_data) -> set:
    return {1, 2}


def v6_style(x: int, mock_client=None, mock_data=None) -> dict:
    """What vantage6's @algorithm_client and @data(1) make of `f(client, df, x)`: both
    decorators turn the mock keywords into leading arguments."""
    return {"org": mock_client.organization_id, "rows": len(mock_data[0]), "x": x}


v6_style.wrapped_in_algorithm_client_decorator = True
v6_style.wrapped_in_data_decorator = True
