"""The ring_sum example of docs/algorithm-guide.md: its node and central code paths run for
real on 127.0.0.1 (real sockets, one thread per organisation) against a fake algorithm client
that answers like the server; the Docker test runs the built image in the local cluster."""
from __future__ import annotations

import json
import socket
import threading

import pytest

from examples.ring_sum import ring_sum
from examples.ring_sum.ring_sum import MODULUS, RingError, central, node, send, wait_for_ring


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeVPN:
    def __init__(self, addresses: list[dict]) -> None:
        self.addresses = addresses
        self.calls: list[str | None] = []

    def get_addresses(self, label: str | None = None, **flags) -> list[dict]:
        self.calls.append(label)
        return [a for a in self.addresses if label is None or a["label"] == label]


class FakeClient:
    """What node() uses of AlgorithmClient: identity and vpn.get_addresses."""

    def __init__(self, org: int, run_id: int, task_id: int, addresses: list[dict]) -> None:
        self.organization_id, self.run_id, self.task_id = org, run_id, task_id
        self.vpn = FakeVPN(addresses)


def ring_of(orgs: list[int], task_id: int = 7) -> list[dict]:
    # Registered out of order and with a foreign task's run: the ring must sort and filter.
    addrs = [{"ip": "127.0.0.1", "port": free_port(), "label": "ring", "organization_id": o,
              "task_id": task_id, "parent_id": 3, "run_id": 100 + o} for o in reversed(orgs)]
    addrs.append({"ip": "127.0.0.1", "port": 1, "label": "ring", "organization_id": 99, "task_id": 8,
                  "parent_id": 3, "run_id": 999})
    return addrs


def run_ring(orgs: list[int], values: dict[str, int]) -> dict[int, dict]:
    addrs = ring_of(orgs)
    results: dict[int, dict] = {}
    errors: list[BaseException] = []

    def member(a: dict) -> None:
        try:
            client = FakeClient(a["organization_id"], a["run_id"], 7, addrs)
            results[a["organization_id"]] = node(client, values, n_nodes=len(orgs), timeout=10, port=a["port"])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=member, args=(a,)) for a in addrs if a["task_id"] == 7]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert not errors, errors
    return results


@pytest.mark.parametrize("orgs", [[1, 2, 3], [4], [2, 5]])
def test_ring_sums_the_private_values(orgs):
    values = {str(o): 1000 * o + 7 for o in orgs}
    results = run_ring(orgs, values)
    assert set(results) == set(orgs)
    first = results[min(orgs)]
    assert first["position"] == 0 and first["total"] == sum(values.values())
    assert all("total" not in r for o, r in results.items() if o != min(orgs))


def test_a_node_sees_only_a_masked_partial(monkeypatch):
    """What the second node receives is mask + v1, not v1."""
    seen: list[int] = []
    real_receive = ring_sum.Inbox.receive

    def spy(self, timeout):
        value = real_receive(self, timeout)
        seen.append(value)
        return value

    monkeypatch.setattr(ring_sum.Inbox, "receive", spy)
    monkeypatch.setattr(ring_sum.secrets, "randbelow", lambda n: 123456789)
    run_ring([1, 2], {"1": 5, "2": 6})
    assert sorted(seen) == [123456789 + 5, 123456789 + 11]


def test_values_wrap_modulo():
    results = run_ring([1, 2], {"1": MODULUS - 1, "2": 3})
    assert results[1]["total"] == 2


def test_missing_members_and_unreachable_next_are_clear_errors():
    with pytest.raises(RingError, match="only 1 of 3 ring members"):
        wait_for_ring(lambda: ring_of([1])[:1], 7, 3, timeout=0.3)
    with pytest.raises(RingError, match="cannot reach the next node"):
        send("127.0.0.1", free_port(), 1, retry_for=0.3)


def test_central_creates_the_node_task_and_returns_the_total():
    created: list[tuple] = []

    class Task:
        def create(self, input_, organizations=None, name="subtask", description=None):
            created.append((organizations, input_, name))
            return {"id": 42}

    class Org:
        def list(self):
            return [{"id": 2}, {"id": 1}]

    class Client:
        task, organization = Task(), Org()

        def wait_for_results(self, task_id, interval=1, timeout=None):
            assert task_id == 42
            return [{"organization_id": 1, "position": 0, "total": 17}, {"organization_id": 2, "position": 1}]

    out = central(Client(), values={"1": 7, "2": 10}, timeout=5)
    assert out == {"organizations": [1, 2], "total": 17}
    (orgs, input_, _), = created
    assert orgs == [1, 2] and input_["method"] == "node"
    assert input_["kwargs"]["n_nodes"] == 2 and input_["kwargs"]["values"] == {"1": 7, "2": 10}


def test_central_names_the_failed_runs():
    class Task:
        def create(self, input_, organizations=None, name="subtask", description=None):
            return {"id": 42}

    class Run:
        def from_task(self, task_id):
            return [{"id": 1, "organization_id": 1, "status": "completed", "log": ""},
                    {"id": 2, "organization_id": 2, "status": "failed", "log": "Traceback ...\nRingError: boom"}]

    class Client:
        task, run = Task(), Run()

        def wait_for_results(self, task_id, interval=1, timeout=None):
            return [{"organization_id": 2, "position": 1}]  # the first node failed: no total

    with pytest.raises(RingError, match=r"(?s)got 0: .*run 2 \(org 2\) failed: Traceback .*RingError: boom"):
        central(Client(), values={"1": 7, "2": 10}, organizations=[1, 2], timeout=5)


def test_main_reads_input_and_writes_output(tmp_path, monkeypatch):
    addrs = ring_of([1])
    (tmp_path / "in.json").write_text(json.dumps({"method": "node", "kwargs": {
        "values": {"1": 41}, "n_nodes": 1, "timeout": 10, "port": addrs[0]["port"]}}))
    monkeypatch.setenv("VPNAGENT_INPUT_FILE", str(tmp_path / "in.json"))
    monkeypatch.setenv("VPNAGENT_OUTPUT_FILE", str(tmp_path / "out.json"))
    fake = FakeClient(1, 101, 7, addrs)
    monkeypatch.setattr(ring_sum, "AlgorithmClient", lambda: fake)
    assert ring_sum.main() == 0
    assert json.loads((tmp_path / "out.json").read_text())["total"] == 41
    assert fake.vpn.calls and set(fake.vpn.calls) == {"ring"}


def test_image_recipe_exposes_the_ring_port():
    from examples.ring_sum import build
    from vpnagent.algorithm_recipe import load_algorithm

    dockerfile = load_algorithm(build.HERE).dockerfile()
    assert f"EXPOSE {ring_sum.RING_PORT}" in dockerfile and f"LABEL p{ring_sum.RING_PORT}={ring_sum.RING_LABEL}" in dockerfile
    assert build.TAG == "vpnagent/ring-sum:latest"
    from vpnagent.ports import exposed_ports

    specs = exposed_ports({"ExposedPorts": {f"{ring_sum.RING_PORT}/tcp": {}},
                           "Labels": {f"p{ring_sum.RING_PORT}": ring_sum.RING_LABEL}})
    assert [(s.port, s.label) for s in specs] == [(7777, "ring")]
