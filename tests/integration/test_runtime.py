"""The Docker implementation of the runtime seam, against the real engine: what the agent
relies on from any runtime (docs/architecture.md, "Seams"). The fake in tests/fakes.py
promises the same to the unit tests; these tests keep the real one honest."""
from __future__ import annotations

import os
import time
import uuid

import pytest

from vpnagent.runtime import Mount, NetworkSpec, NotFound, WorkloadSpec
from vpnagent.runtime.dockerengine import DockerRuntime

pytestmark = pytest.mark.docker
IMAGE = "vpnagent/algo-base:latest"


@pytest.fixture
def rt(docker_client, images):
    return DockerRuntime(docker_client)


@pytest.fixture
def scratch(rt):
    """A unique label and network for one test; everything carrying the label and the network
    are removed afterwards, also on failure."""
    tag = f"vart{uuid.uuid4().hex[:6]}"
    net = rt.ensure_network(NetworkSpec(f"{tag}-net", f"{tag}br", labels={"vpnagent.test": tag}))
    yield tag, net
    for c in rt.list({"vpnagent.test": tag}):
        rt.remove(c.id)
    rt.remove_network(net.name)


def _spec(tag: str, name: str, **kw) -> WorkloadSpec:
    return WorkloadSpec(name=f"{tag}-{name}", image=IMAGE, labels={"vpnagent.test": tag, "role": name}, **kw)


def test_an_algorithm_shares_its_holders_namespace_and_is_found_by_labels(rt, scratch):
    tag, net = scratch
    holder = rt.start_holder(_spec(tag, "holder", command=("sleep", "300"), network=net.name, memory=32 * 2**20, pids=16))
    assert holder.running and holder.pid > 0 and holder.networks[net.name]
    algo = rt.start_in_holder(holder.id, _spec(tag, "algo", command=("sleep", "300"), no_new_privileges=True,
                                              bounded_logs=True, cpus=0.5))
    # the same network namespace: the holder owns the network, the algorithm only uses it
    assert os.readlink(f"/proc/{algo.pid}/ns/net") == os.readlink(f"/proc/{holder.pid}/ns/net")
    assert {c.name for c in rt.list({"vpnagent.test": tag})} == {f"{tag}-holder", f"{tag}-algo"}
    assert [c.id for c in rt.list({"vpnagent.test": tag, "role": "algo"})] == [algo.id]
    # no raw sockets by default: an algorithm cannot forge another container's address
    status = open(f"/proc/{algo.pid}/status").read()
    cap_eff = int(next(line.split()[1] for line in status.splitlines() if line.startswith("CapEff")), 16)
    assert not cap_eff & (1 << 13)  # CAP_NET_RAW


def test_wait_logs_kill_remove_and_not_found(rt, scratch, tmp_path):
    tag, net = scratch
    (tmp_path / "in.txt").write_text("from the host\n")
    holder = rt.start_holder(_spec(tag, "holder", command=("sleep", "300"), network=net.name))
    algo = rt.start_in_holder(holder.id, _spec(tag, "algo", command=("sh", "-c", "cat /data/in.txt; exit 3"),
                                              mounts=(Mount(str(tmp_path), "/data"),)))
    assert rt.wait(algo.id, timeout=60) == 3
    assert rt.logs(algo.id) == b"from the host\n"
    assert b"".join(rt.log_stream(algo.id)) == b"from the host\n"
    assert rt.inspect(algo.id).status == "exited"
    rt.kill(holder.id)
    assert rt.wait(holder.id, timeout=60) != 0 and not rt.inspect(holder.id).running
    assert rt.remove(algo.id) is True and rt.remove(algo.id) is False  # gone: False, not an error
    assert rt.inspect(algo.id) is None
    with pytest.raises(NotFound):
        rt.kill(algo.id)
    assert rt.image("vpnagent/no-such-image:latest") is None
    assert rt.image(IMAGE).id.startswith("sha256:")


def test_events_say_when_a_labelled_container_started_and_died(rt, scratch):
    tag, net = scratch
    since = time.time() - 1
    c = rt.start_holder(_spec(tag, "short", command=("true",), network=net.name))
    rt.wait(c.id, timeout=60)
    actions = [(e.action, e.container_id) for e in rt.events({"vpnagent.test": tag}, since, time.time() + 1)]
    assert ("start", c.id) in actions and ("die", c.id) in actions
    assert list(rt.events({"vpnagent.test": f"{tag}-other"}, since, time.time() + 1)) == []


def test_the_isolated_network_is_internal_and_kept_as_it_is(rt, scratch, docker_client):
    tag, net = scratch
    attrs = docker_client.networks.get(net.name).attrs
    assert attrs["Internal"] is True
    assert attrs["Options"]["com.docker.network.bridge.enable_icc"] == "false"
    again = rt.ensure_network(NetworkSpec(net.name, "otherbr", subnet="10.99.0.0/24"))
    assert again == net  # an existing network is found, not changed
    assert rt.network(f"{tag}-missing") is None and rt.remove_network(f"{tag}-missing") is False
