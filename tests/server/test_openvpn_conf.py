"""Every command that writes the OpenVPN server's config writes the one `serve` writes for
the same server config. The container reads it again whenever it restarts (its restart
policy, a Docker restart), so a command that wrote another (one-port mode without its
`port-share` line, say) would break the VPN at the next restart, long after the command.

No Docker: the Docker network's gateway (one-port mode's port-share target), the OpenVPN
container and the HTTP server are stood in for; the files are real."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import yaml

from server_ext import cli
from server_ext.cli import main

GATEWAY = "172.29.0.1"  # the host's address on the OpenVPN container's Docker network


class FakeDocker:
    """docker.from_env() as far as finding a network's gateway goes."""

    def __init__(self) -> None:
        self.networks = self

    def get(self, name: str) -> SimpleNamespace:
        assert name == "vpn-net", name
        return SimpleNamespace(attrs={"IPAM": {"Config": [{"Subnet": "172.29.0.0/16", "Gateway": GATEWAY}]}})


class FakeOpenVPNServer:
    """The container: writes the files as the real one does before `docker run`."""

    def __init__(self, files, **_) -> None:
        self.files = files

    def ensure_running(self) -> None:
        self.files.write_all()

    def addresses(self) -> list[str]:
        return ["172.29.0.2"]

    def stop(self) -> None:
        pass


@pytest.fixture
def no_docker(monkeypatch):
    import docker

    import server_ext.vpnserver
    import server_ext.wsgi

    monkeypatch.setattr(docker, "from_env", lambda *a, **k: FakeDocker())
    monkeypatch.setattr(server_ext.vpnserver, "OpenVPNServer", FakeOpenVPNServer)
    monkeypatch.setattr(server_ext.wsgi, "serve", lambda *a, **k: 0)
    monkeypatch.setattr(cli, "_openvpn_service_process",
                        lambda args: SimpleNamespace(terminate=lambda: None, wait=lambda timeout=None: 0))


CONFIGS = {
    "one-port": {"one_port": True, "host": "0.0.0.0", "port": 5000, "openvpn_network": "vpn-net"},
    "one-port, API on loopback": {"one_port": True, "host": "127.0.0.1", "port": 5001, "openvpn_network": "vpn-net",
                                  "openvpn_remote_port": 8443},
    "udp, 2 processes": {"openvpn_processes": 2, "openvpn_remote_port": 1300,
                         "openvpn_profile": {"tun_mtu": 9000, "mssfix": 0}},
}


@pytest.mark.parametrize("keys", CONFIGS.values(), ids=list(CONFIGS))
def test_every_command_writes_the_server_conf_serve_writes(tmp_path, no_docker, keys, capsys):
    config = tmp_path / "server.yaml"
    config.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "data"), "openvpn_remote_host": "vpn.example.org",
                                      **keys}))
    conf_dir = tmp_path / "data" / "openvpn"
    assert main(["serve", "--config", str(config), "--with-openvpn"]) == 0
    served = {p.name: p.read_text() for p in sorted(conf_dir.glob("server*.conf"))}
    assert served
    if keys.get("one_port"):
        lines = served["server.conf"].splitlines()
        host = GATEWAY if keys["host"] in ("0.0.0.0", "127.0.0.1") else keys["host"]
        assert f"port-share {host} {keys['port']}" in lines and "proto tcp-server" in lines
        assert f"port {keys.get('openvpn_remote_port', 443)}" in lines

    def run(*argv: str) -> None:
        for path in conf_dir.glob("server*.conf"):
            path.write_text("# left by an earlier version\n")  # each command must write, not keep, the file
        assert main([argv[0], "--config", str(config), *argv[1:]]) == 0, capsys.readouterr().err
        written = {p.name: p.read_text() for p in sorted(conf_dir.glob("server*.conf"))}
        assert written == served, f"`vpnagent-server {' '.join(argv)}` wrote another server config"

    run("migrate")
    for org in ("o1", "o2"):
        assert main(["add-organization", "--config", str(config), org]) == 0  # the store only
    assert main(["add-collaboration", "--config", str(config), "c1", "--org", "1", "--org", "2"]) == 0
    run("add-node", "--org", "1", "--collaboration", "1", "n1")
    run("add-node", "--org", "2", "--collaboration", "1", "n2")
    run("join-token", "1")
    run("remove-node", "2")
    run("remove-organization", "1")
    run("openvpn", "--once", "--no-container")
    run("openvpn", "--once")  # with its container (the fake): ensure_running writes the files too


def test_the_one_port_settings_need_dockers_answer_and_say_so(tmp_path, monkeypatch, capsys):
    """Without the gateway the port-share target is unknown: refuse rather than write a
    config without it (exit 2, the fix in the message), and leave the files alone."""
    import docker

    def unreachable(*a, **k):
        raise docker.errors.DockerException("Error while fetching server API version")

    monkeypatch.setattr(docker, "from_env", unreachable)
    config = tmp_path / "server.yaml"
    config.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "data"), "one_port": True, "host": "0.0.0.0"}))
    assert main(["migrate", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "one_port" in err and "Docker network bridge" in err and "host" in err, err
    assert not (tmp_path / "data" / "openvpn" / "server.conf").exists()


def test_a_one_port_api_on_its_own_address_needs_no_docker(tmp_path, monkeypatch):
    """host: a specific address is where OpenVPN hands the API's connections, as serve does."""
    import docker

    monkeypatch.setattr(docker, "from_env", lambda *a, **k: pytest.fail("asked Docker"))
    config = tmp_path / "server.yaml"
    config.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "data"), "one_port": True, "host": "10.1.2.3",
                                      "port": 5000}))
    assert main(["migrate", "--config", str(config)]) == 0
    lines = (tmp_path / "data" / "openvpn" / "server.conf").read_text().splitlines()
    assert "port-share 10.1.2.3 5000" in lines and "port 443" in lines and "proto tcp-server" in lines
