import pytest

from vpnagent.ports import MAX_PORTS_PER_RUN, PortAllocator, PortError, PortSpec, exposed_ports


def test_default_port_when_image_exposes_none():
    assert exposed_ports({}) == [PortSpec(8888, None)]
    assert exposed_ports(None) == [PortSpec(8888, None)]


def test_exposed_tcp_ports_with_labels_udp_ignored():
    cfg = {"ExposedPorts": {"8888/tcp": {}, "9000/tcp": {}, "53/udp": {}},
           "Labels": {"p8888": "echo", "p9000": "grpc", "other": "x"}}
    assert exposed_ports(cfg) == [PortSpec(8888, "echo"), PortSpec(9000, "grpc")]


@pytest.mark.parametrize("cfg, words", [
    ({"ExposedPorts": {"0/tcp": {}}}, "invalid port"),
    ({"ExposedPorts": {"99999/tcp": {}}}, "invalid port"),
    ({"ExposedPorts": {"80-90/tcp": {}}}, "invalid port"),
    ({"ExposedPorts": {"8888/tcp": {}}, "Labels": {"p8888": "$(reboot)"}}, "label p8888"),
    ({"ExposedPorts": {"8888/tcp": {}}, "Labels": {"p8888": "x" * 10000}}, "label p8888"),
    ({"ExposedPorts": {f"{p}/tcp": {} for p in range(1000, 1000 + MAX_PORTS_PER_RUN + 1)}}, "at most"),
    ({"ExposedPorts": ["8888/tcp"]}, "malformed"),
])
def test_hostile_image_metadata_is_refused(cfg, words):
    with pytest.raises(PortError, match=words.replace("$", r"\$").replace("(", r"\(")):
        exposed_ports(cfg)


def test_allocation_is_exact_persistent_and_released(tmp_path):
    state = tmp_path / "ports.json"
    alloc = PortAllocator(6000, 6004, state)
    a = alloc.allocate(1, 2)
    b = alloc.allocate(2, 2)
    assert a == [6000, 6001] and b == [6002, 6003]
    assert alloc.allocate(1, 2) == a  # asking again gives the same ports, not new ones
    # a restarted agent sees the same allocation and never hands a used port out again
    again = PortAllocator(6000, 6004, state)
    assert again.ports_of(1) == a and again.runs() == {1, 2}
    with pytest.raises(PortError, match="no free VPN port left in 6000-6004 for run 3"):
        again.allocate(3, 2)
    assert again.ports_of(3) == []  # a failed allocation takes nothing
    assert again.release(1) == [6000, 6001]
    assert again.allocate(3, 2) == [6000, 6001]
    assert PortAllocator(6000, 6004, state).ports_of(3) == [6000, 6001]


def test_corrupt_port_state_is_a_clear_error(tmp_path):
    state = tmp_path / "ports.json"
    state.write_text("{not json")
    with pytest.raises(PortError, match="unreadable"):
        PortAllocator(6000, 6001, state)
