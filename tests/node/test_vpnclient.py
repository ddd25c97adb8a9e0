"""The VPN client's start-up path (config on disk -> POST /vpn/update -> GET /vpn -> no
VPN) with a config the allowlist refuses: it moves on as for any bad config, and openvpn
never starts on a refused one. Docker and the server are fakes here; the real path runs
in tests/integration/test_agent_startup.py."""
from __future__ import annotations

import pytest

from server_ext.ovpn import VPNSettings, render_client
from server_ext.pki import PKI
from tests.fakes import FakeRuntime
from vpnagent.config import parse_config
from vpnagent.dataplane import Tunnel
from vpnagent.dataplane.openvpn import OpenVPN
from vpnagent.runtime import Network
from vpnagent.serverapi import ServerError

ISO = Network("iso", "172.29.0.0/24", "172.29.0.1")


class FakeAPI:
    def __init__(self, renewed: str | Exception, fresh: str | Exception) -> None:
        self.answers = {"renew": renewed, "fresh": fresh}
        self.calls: list[str] = []

    def _answer(self, what: str) -> str:
        self.calls.append(what)
        answer = self.answers[what]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def renew_vpn_config(self, current: str) -> str:
        return self._answer("renew")

    def get_vpn_config(self) -> str:
        return self._answer("fresh")


@pytest.fixture
def good(tmp_path) -> str:
    pki = PKI(tmp_path / "pki")
    issued = pki.issue_node_cert("node-4", days=1)
    return render_client(VPNSettings(), pki.ca_pem, issued.cert_pem, issued.key_pem,
                         pki.tls_crypt_v2_client_key("node-4"))


def _client(tmp_path, api: FakeAPI, monkeypatch) -> tuple[OpenVPN, list[str]]:
    cfg = parse_config({"name": "vc1", "server_url": "https://127.0.0.1:1/api", "api_key": "k",
                        "data_dir": str(tmp_path / "node")})
    vpn = OpenVPN(cfg, FakeRuntime(), api)
    started: list[str] = []

    def start(network):  # what openvpn would be started with
        started.append(vpn.ovpn_path.read_text())
        return Tunnel("c", 1, "10.76.0.2", "172.29.0.2", "eth1", 0.0)

    monkeypatch.setattr(vpn, "_start", start)
    return vpn, started


def _attack(good: str, line: str) -> str:
    return good.replace("<ca>", f"{line}\n<ca>", 1)


def test_refused_config_on_disk_is_renewed_and_never_run(tmp_path, good, monkeypatch):
    api = FakeAPI(renewed=good, fresh=ServerError(500, "not asked"))
    vpn, started = _client(tmp_path, api, monkeypatch)
    vpn.dir.mkdir(parents=True)
    vpn.ovpn_path.write_text(_attack(good, "script-security\t2"))
    assert vpn.bring_up(ISO) is not None
    assert api.calls == ["renew"] and started == [good]
    assert vpn.ovpn_path.read_text() == good


def test_refused_everywhere_means_no_vpn_and_each_reason_named(tmp_path, good, monkeypatch):
    api = FakeAPI(renewed=_attack(good, "--up /bin/sh"), fresh=_attack(good, "<connection>\n</connection>"))
    vpn, started = _client(tmp_path, api, monkeypatch)
    vpn.dir.mkdir(parents=True)
    vpn.ovpn_path.write_text(_attack(good, "iproute /bin/sh"))
    assert vpn.bring_up(ISO) is None
    assert api.calls == ["renew", "fresh"] and started == []
    for named in ("'iproute'", "'up' (written '--up')", "<connection>"):
        assert named in vpn.last_error
    assert "iproute" in vpn.ovpn_path.read_text()  # nothing refused was written over it


def test_an_old_tls_crypt_config_on_disk_is_renewed(tmp_path, good, monkeypatch):
    """Migration to tls-crypt-v2: a config from before (shared <tls-crypt> key, no pinned
    server name) is refused at once, so the node renews instead of trying it first."""
    old = good.replace("verify-x509-name vpnagent-openvpn-server name\n", "").replace("tls-crypt-v2>", "tls-crypt>")
    api = FakeAPI(renewed=good, fresh=ServerError(500, "not asked"))
    vpn, started = _client(tmp_path, api, monkeypatch)
    vpn.dir.mkdir(parents=True)
    vpn.ovpn_path.write_text(old)
    assert vpn.bring_up(ISO) is not None
    assert api.calls == ["renew"] and started == [good]
