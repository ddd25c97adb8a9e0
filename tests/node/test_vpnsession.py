"""A restarted agent adopts the VPN client it finds running instead of replacing it (which
would drop every tunnel of the node), and only a client exactly as it would start one; and
whether openvpn's session is up is read from openvpn's own log, since persist-tun keeps tun0
and its address while openvpn reconnects.

The log fixtures are verbatim OpenVPN 2.6.14 client output, captured from the host's
openvpn against our server config in two network namespaces (tests/openvpn_netns.py);
the ping-restart/TLS-error capture ran with keepalive 1 4 and hand-window 4, hence "4
seconds". Only the AUTH_FAILED and TCP reset lines are written from OpenVPN's source
texts (our server refuses a removed node before TLS, so a client never sees AUTH_FAILED)."""
from __future__ import annotations

import copy
import ipaddress
import logging
import os
import shutil
import subprocess
import uuid
from datetime import datetime, timezone

import pytest

from server_ext.ovpn import VPNSettings, render_client
from server_ext.pki import PKI
from tests.waiting import wait_for
from tests.fakes import FakeRuntime
from vpnagent.config import parse_config
from vpnagent.dataplane import SessionState
from vpnagent.dataplane import Tunnel as VPNState
from vpnagent.dataplane import openvpn as vpnclient
from vpnagent.dataplane.openvpn import OPENVPN_ARGV, session_from_log
from vpnagent.dataplane.openvpn import OpenVPN as VPNClient
from vpnagent.dataplane.pathmtu import PathMTU
from vpnagent.netns import Netns
from vpnagent.runtime import Image, Network, rfc3339_time
from vpnagent.runtime.dockerengine import _container


def _utc(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()


def _lines(text: str) -> list[str]:
    return [line for line in text.strip().splitlines()]


CONNECTING = _lines("""
2026-11-27 14:47:17 OpenVPN 2.6.14 x86_64-pc-linux-gnu [SSL (OpenSSL)] [LZO] [LZ4] [EPOLL] [PKCS11] [MH/PKTINFO] [AEAD] [DCO]
2026-11-27 14:47:17 TCP/UDP: Preserving recently used remote address: [AF_INET]192.0.2.1:1194
2026-11-27 14:47:17 UDPv4 link local: (not bound)
2026-11-27 14:47:17 UDPv4 link remote: [AF_INET]192.0.2.1:1194
2026-11-27 14:47:17 read UDPv4 [ECONNREFUSED]: Connection refused (fd=3,code=111)
2026-11-27 14:47:19 TLS: Initial packet from [AF_INET]192.0.2.1:1194, sid=370bd857 d207918a
2026-11-27 14:47:19 VERIFY OK: depth=1, CN=vpnagent-ca
2026-11-27 14:47:19 VERIFY X509NAME OK: CN=vpnagent-openvpn-server
""")

CONNECTED = CONNECTING + _lines("""
2026-11-27 14:47:19 [vpnagent-openvpn-server] Peer Connection Initiated with [AF_INET]192.0.2.1:1194
2026-11-27 14:47:19 PUSH: Received control message: 'PUSH_REPLY,route-gateway 10.99.0.1,topology subnet,ping 10,ping-restart 60,ifconfig 10.99.0.7 255.255.255.0,peer-id 0,cipher AES-256-GCM,protocol-flags cc-exit tls-ekm dyn-tls-crypt,tun-mtu 1500'
2026-11-27 14:47:19 TUN/TAP device tun0 opened
2026-11-27 14:47:19 net_addr_v4_add: 10.99.0.7/24 dev tun0
2026-11-27 14:47:19 Initialization Sequence Completed
2026-11-27 14:47:19 Data Channel: cipher 'AES-256-GCM', peer-id: 0
2026-11-27 14:47:19 Timers: ping 10, ping-restart 60
2026-11-27 14:47:19 Protocol options: explicit-exit-notify 1, protocol-flags cc-exit tls-ekm dyn-tls-crypt
""")

# what the agent's SIGUSR1 does: openvpn drops its session and makes a new one (persist-tun)
HARD_RESTART = _lines("""
2026-11-27 14:47:20 event_wait : Interrupted system call (fd=-1,code=4)
2026-11-27 14:47:20 SIGUSR1[hard,] received, process restarting
2026-11-27 14:47:20 Restart pause, 1 second(s)
2026-11-27 14:47:21 TCP/UDP: Preserving recently used remote address: [AF_INET]192.0.2.1:1194
2026-11-27 14:47:21 TLS: Initial packet from [AF_INET]192.0.2.1:1194, sid=fa35a7d3 aa6ac646
2026-11-27 14:47:21 [vpnagent-openvpn-server] Peer Connection Initiated with [AF_INET]192.0.2.1:1194
2026-11-27 14:47:21 Preserving previous TUN/TAP instance: tun0
""")

RECONNECTED = _lines("""
2026-11-27 14:47:21 Initialization Sequence Completed
2026-11-27 14:47:21 Data Channel: cipher 'AES-256-GCM', peer-id: 1
""")

# certificate renewal: SIGHUP makes openvpn re-read its config
SIGHUP = _lines("""
2026-11-27 14:47:22 event_wait : Interrupted system call (fd=-1,code=4)
2026-11-27 14:47:22 Closing TUN/TAP interface
2026-11-27 14:47:22 net_addr_v4_del: 10.99.0.7 dev tun0
2026-11-27 14:47:22 SIGHUP[hard,] received, process restarting
2026-11-27 14:47:22 Note: Kernel support for ovpn-dco missing, disabling data channel offload.
2026-11-27 14:47:22 Restart pause, 1 second(s)
2026-11-27 14:47:23 TLS: Initial packet from [AF_INET]192.0.2.1:1194, sid=a577162f 02ab2e9c
""")

# the server stops (explicit-exit-notify tells its clients)
SERVER_STOPPED = _lines("""
2026-11-27 14:47:24 Connection reset command was pushed by server ('')
2026-11-27 14:47:24 SIGUSR1[soft,server-pushed-connection-reset] received, process restarting
2026-11-27 14:47:24 Restart pause, 1 second(s)
2026-11-27 14:47:25 TCP/UDP: Preserving recently used remote address: [AF_INET]192.0.2.1:1194
2026-11-27 14:47:28 read UDPv4 [ECONNREFUSED]: Connection refused (fd=3,code=111)
""")

# the server goes silent (link down, or it dropped this node): ping-restart, then TLS errors
SERVER_SILENT = _lines("""
2026-11-27 14:48:12 [vpnagent-openvpn-server] Inactivity timeout (--ping-restart), restarting
2026-11-27 14:48:12 SIGUSR1[soft,ping-restart] received, process restarting
2026-11-27 14:48:12 Restart pause, 1 second(s)
2026-11-27 14:48:13 TCP/UDP: Preserving recently used remote address: [AF_INET]192.0.2.1:1194
2026-11-27 14:48:13 UDPv4 link local: (not bound)
2026-11-27 14:48:13 UDPv4 link remote: [AF_INET]192.0.2.1:1194
2026-11-27 14:48:17 TLS Error: TLS key negotiation failed to occur within 4 seconds (check your network connectivity)
2026-11-27 14:48:17 TLS Error: TLS handshake failed
2026-11-27 14:48:17 SIGUSR1[soft,tls-error] received, process restarting
2026-11-27 14:48:17 Restart pause, 1 second(s)
2026-11-27 14:48:18 TCP/UDP: Preserving recently used remote address: [AF_INET]192.0.2.1:1194
""")

TLS_FAILING = _lines("""
2026-11-27 14:48:23 TLS Error: TLS key negotiation failed to occur within 4 seconds (check your network connectivity)
2026-11-27 14:48:23 TLS Error: TLS handshake failed
2026-11-27 14:48:23 SIGUSR1[soft,tls-error] received, process restarting
2026-11-27 14:48:23 Restart pause, 1 second(s)
2026-11-27 14:48:24 TCP/UDP: Preserving recently used remote address: [AF_INET]192.0.2.1:1194
""")

AUTH_FAILED = _lines("""
2026-11-27 14:49:02 AUTH: Received control message: AUTH_FAILED
2026-11-27 14:49:02 SIGTERM[soft,auth-failure] received, process exiting
""")

TCP_RESET = _lines("""
2026-11-27 14:49:30 Connection reset, restarting [0]
2026-11-27 14:49:30 SIGUSR1[soft,connection-reset] received, process restarting
2026-11-27 14:49:30 Restart pause, 5 second(s)
""")

# hourly renegotiation: no new "Initialization Sequence Completed"; a long-lived client's
# bounded tail holds only these
RENEGOTIATION = _lines("""
2026-11-27 15:47:19 VERIFY OK: depth=1, CN=vpnagent-ca
2026-11-27 15:47:19 VERIFY X509NAME OK: CN=vpnagent-openvpn-server
2026-11-27 15:47:19 VERIFY OK: depth=0, CN=vpnagent-openvpn-server
2026-11-27 15:47:19 Control Channel: TLSv1.3, cipher TLSv1.3 TLS_AES_256_GCM_SHA384, peer certificate: 256 bits ECprime256v1, signature: ecdsa-with-SHA256, peer temporary key: 253 bits X25519
""")


# --- session_from_log

def test_connected_client_is_up_since_its_completion():
    assert session_from_log(CONNECTED) == SessionState("up", _utc("2026-11-27 14:47:19"),
                                                       "Initialization Sequence Completed")


def test_a_client_still_connecting_is_starting():
    found = session_from_log(CONNECTING)
    assert found.state == "starting" and found.since == _utc("2026-11-27 14:47:17")
    assert found.detail == "VERIFY X509NAME OK: CN=vpnagent-openvpn-server"


def test_empty_log_is_starting():
    assert session_from_log([]) == SessionState("starting", None, "openvpn has logged nothing yet")


def test_restart_after_completion_is_reconnecting_until_the_next_completion():
    lost = session_from_log(CONNECTED + HARD_RESTART)
    assert lost == SessionState("reconnecting", _utc("2026-11-27 14:47:20"),
                                "SIGUSR1[hard,] received, process restarting")
    back = session_from_log(CONNECTED + HARD_RESTART + RECONNECTED)
    assert back.state == "up" and back.since == _utc("2026-11-27 14:47:21")


def test_sighup_counts_only_until_the_next_completion():
    log = CONNECTED + HARD_RESTART + RECONNECTED + SIGHUP
    assert session_from_log(log).state == "reconnecting"
    assert session_from_log(log).detail == "SIGHUP[hard,] received, process restarting"
    again = _lines("2026-11-27 14:47:23 Initialization Sequence Completed")
    assert session_from_log(log + again) == SessionState("up", _utc("2026-11-27 14:47:23"),
                                                         "Initialization Sequence Completed")


def test_silent_server_is_reconnecting_since_the_loss_with_the_latest_reason():
    """tun0 keeps 10.99.0.7 through all of this (persist-tun): only the log knows."""
    found = session_from_log(CONNECTED + SERVER_SILENT + TLS_FAILING)
    assert found.state == "reconnecting"
    assert found.since == _utc("2026-11-27 14:48:12"), "since the session was lost, not since the last retry"
    assert found.detail == ("TLS Error: TLS key negotiation failed to occur within 4 seconds "
                            "(check your network connectivity)")


def test_only_the_ping_restart_so_far_is_the_reason():
    found = session_from_log(CONNECTED + SERVER_SILENT[:3])
    assert found.detail == "[vpnagent-openvpn-server] Inactivity timeout (--ping-restart), restarting"


def test_server_pushed_reset_is_reconnecting():
    found = session_from_log(CONNECTED + SERVER_STOPPED)
    assert found == SessionState("reconnecting", _utc("2026-11-27 14:47:24"),
                                 "Connection reset command was pushed by server ('')")


@pytest.mark.parametrize("tail, detail", [
    (AUTH_FAILED, "SIGTERM[soft,auth-failure] received, process exiting"),
    (TCP_RESET, "Connection reset, restarting [0]"),
])
def test_other_session_losses(tail, detail):
    found = session_from_log(CONNECTED + tail)
    assert found.state == "reconnecting" and found.detail == detail
    assert found.since == _dated_first(tail)


def _dated_first(lines: list[str]) -> float:
    return _utc(lines[0][:19])


def test_first_connection_failing_is_starting_with_the_reason():
    found = session_from_log(CONNECTING + TLS_FAILING)
    assert found.state == "starting"
    assert found.detail.startswith("TLS Error: TLS key negotiation failed")


def test_completion_older_than_the_lines_read():
    """A client that had tun0 up completed once; a tail of renegotiations keeps it up, a
    tail of restarts means it is reconnecting, not starting."""
    up = session_from_log(RENEGOTIATION * 3, connected_before=True)
    assert up.state == "up" and up.since is None and "12 log line(s)" in up.detail
    assert session_from_log(RENEGOTIATION * 3).state == "starting"
    lost = session_from_log(RENEGOTIATION + TLS_FAILING, connected_before=True)
    assert lost.state == "reconnecting" and lost.since == _utc("2026-11-27 14:48:23")


def test_dockers_timestamp_is_preferred_over_openvpns():
    """container.logs(timestamps=True) puts Docker's RFC 3339 time (UTC, nanoseconds) first."""
    lines = [f"2026-11-27T13:47:19.123456789Z {line}" for line in CONNECTED]
    found = session_from_log(lines)
    assert found == SessionState("up", _utc("2026-11-27 13:47:19.123456"), "Initialization Sequence Completed")


def test_rfc3339_time():
    assert rfc3339_time("2026-11-27T14:31:02.123456789Z") == _utc("2026-11-27 14:31:02.123456")
    assert rfc3339_time("2026-11-27T14:31:02Z") == _utc("2026-11-27 14:31:02")
    assert rfc3339_time("2026-11-27T15:31:02.5+01:00") == _utc("2026-11-27 14:31:02.5")
    with pytest.raises(ValueError):
        rfc3339_time("yesterday")


# --- adopt() against a fake runtime and namespace

@pytest.fixture
def ovpn(tmp_path_factory) -> str:
    pki = PKI(tmp_path_factory.mktemp("pki"))
    issued = pki.issue_node_cert("node-4", days=3)
    return render_client(VPNSettings(), pki.ca_pem, issued.cert_pem, issued.key_pem,
                         pki.tls_crypt_v2_client_key("node-4"))


ISO_NET, ISO_SUBNET = "vpnagent-ad1-net", ipaddress.IPv4Network("172.30.0.0/24")
ISO = Network(ISO_NET, str(ISO_SUBNET), "172.30.0.1")
VPN_IMAGE_ID = "sha256:" + "a" * 64
STARTED = "2026-11-27T14:31:02.123456789Z"


class _Touched(AssertionError):
    pass


class _Container:
    """A container as Docker reports it: its inspect attributes."""

    def __init__(self, attrs: dict) -> None:
        self.attrs, self.id, self.name, self.status = attrs, attrs["Id"], attrs["Name"], attrs["State"]["Status"]


class _Docker(FakeRuntime):
    """Reads work (through the Docker implementation's own translation of inspect
    attributes), anything that would change a container fails."""

    def __init__(self, container: _Container | None, image_id: str | None = VPN_IMAGE_ID) -> None:
        super().__init__()
        self.container, self.image_id = container, image_id

    def inspect(self, ref):
        if self.container is None or ref != self.container.attrs["Name"].lstrip("/"):
            return None
        return _container(self.container)

    def image(self, ref):
        return None if self.image_id is None else Image(self.image_id)

    def __getattribute__(self, name):  # stop, remove, kill, connect, start_*: changes
        if name in ("start_holder", "start_in_holder", "stop", "remove", "kill", "connect"):
            raise _Touched(f"adopt() used runtime.{name}")
        return super().__getattribute__(name)


class _Netns:
    tun0: list[ipaddress.IPv4Interface] = [ipaddress.IPv4Interface("10.76.0.9/16")]
    mtu: int | None = 1400
    iso_if: str | None = "eth1"

    def __init__(self, pid):
        assert pid == 4242
        self.pid = pid

    def ipv4_addresses(self, ifname=None):
        return {"tun0": list(_Netns.tun0)} if ifname == "tun0" else {}

    def interface_in(self, subnet):
        return _Netns.iso_if

    def link_mtu(self, ifname):
        assert ifname == "tun0"
        return _Netns.mtu

    def __getattr__(self, name):  # run, iptables_restore, set_default_route: changes
        raise _Touched(f"adopt() used Netns.{name}")


def _attrs(client: VPNClient) -> dict:
    """A running client as _start leaves it."""
    cfg = client.cfg
    return {
        "Id": "c0ffee", "Name": f"/{cfg.vpn_container}", "Image": VPN_IMAGE_ID,
        "Config": {"Labels": {"vpnagent.node": cfg.name, "vpnagent.role": "vpn-client"}, "Cmd": list(OPENVPN_ARGV)},
        "State": {"Status": "running", "Pid": 4242, "StartedAt": STARTED},
        "Mounts": [{"Type": "bind", "Source": str(client.dir), "Destination": "/vpn", "Mode": "ro"}],
        "NetworkSettings": {"Networks": {"bridge": {"IPAddress": "172.17.0.5"},
                                         ISO_NET: {"IPAddress": "172.30.0.2"}}},
    }


@pytest.fixture
def client(tmp_path, ovpn, monkeypatch) -> VPNClient:
    monkeypatch.setattr(vpnclient, "Netns", _Netns)
    monkeypatch.setattr(_Netns, "tun0", [ipaddress.IPv4Interface("10.76.0.9/16")])
    monkeypatch.setattr(_Netns, "mtu", 1400)
    monkeypatch.setattr(_Netns, "iso_if", "eth1")
    cfg = parse_config({"name": "ad1", "server_url": "https://127.0.0.1:1/api", "api_key": "k",
                        "data_dir": str(tmp_path / "node")})
    vpn = VPNClient(cfg, _Docker(None), api=None)
    vpn.dir.mkdir(parents=True)
    vpn.ovpn_path.write_text(ovpn)
    vpn.runtime.container = _Container(_attrs(vpn))
    return vpn


def test_adopts_a_client_exactly_as_connect_would_start_it(client, caplog):
    caplog.set_level(logging.INFO, logger="vpnagent.dataplane.openvpn")
    state = client.adopt(ISO)
    assert state == VPNState("c0ffee", 4242, "10.76.0.9", "172.30.0.2", "eth1", rfc3339_time(STARTED),
                             PathMTU(1400, "adopted", "tun0's MTU 1400 as the previous agent left it"))
    assert client.state is state
    assert client.cert_expires == vpnclient.cert_not_after(client.ovpn_path.read_text()) is not None
    assert "vpn: adopted the running client vpnagent-ad1-vpn (VPN IP 10.76.0.9" in caplog.text


REFUSALS = {  # what differs from the client _start would run now → the reason logged
    "other node": (lambda a: a["Config"]["Labels"].update({"vpnagent.node": "someone-else"}),
                   "is not labelled as node ad1's VPN client (vpnagent.role=vpn-client, vpnagent.node=someone-else)"),
    "no role": (lambda a: a["Config"]["Labels"].pop("vpnagent.role"), "vpnagent.role=None"),
    "not running": (lambda a: a["State"].update({"Status": "exited"}),
                    "VPN client vpnagent-ad1-vpn is exited, not running"),
    "other image": (lambda a: a.update({"Image": "sha256:" + "b" * 64}),
                    f"VPN client runs image sha256:{'b' * 64}, config wants vpnagent/vpn:latest ({VPN_IMAGE_ID})"),
    "other command": (lambda a: a["Config"].update({"Cmd": ["openvpn", "--config", "/vpn/client.ovpn"]}),
                      "this agent runs ['openvpn'"),
    "other config dir": (lambda a: a["Mounts"][0].update({"Source": "/elsewhere/vpn"}),
                         "VPN client reads its config from /elsewhere/vpn, config wants"),
    "not on the isolated network": (lambda a: a["NetworkSettings"]["Networks"].pop(ISO_NET),
                                    f"VPN client is not attached to network {ISO_NET} (it is on bridge)"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refuses_a_client_unlike_the_one_it_would_start(client, caplog, case):
    change, reason = REFUSALS[case]
    attrs = copy.deepcopy(client.runtime.container.attrs)
    change(attrs)
    client.runtime.container = _Container(attrs)
    _assert_refused(client, caplog, reason)


def _assert_refused(client: VPNClient, caplog, reason: str) -> None:
    caplog.set_level(logging.INFO, logger="vpnagent.dataplane.openvpn")
    assert client.adopt(ISO) is None
    assert client.state is None and client.cert_expires is None
    refusals = [r for r in caplog.records if r.levelno == logging.INFO and r.getMessage().endswith(": replacing it")]
    assert len(refusals) == 1 and reason in refusals[0].getMessage(), caplog.text


def test_nothing_to_adopt_without_a_container(client, caplog):
    caplog.set_level(logging.INFO, logger="vpnagent.dataplane.openvpn")
    client.runtime.container = None
    assert client.adopt(ISO) is None and client.state is None
    assert "vpn: no VPN client container vpnagent-ad1-vpn to adopt" in caplog.text


def test_refuses_when_the_configured_image_is_not_on_the_host(client, caplog):
    client.runtime.image_id = None
    _assert_refused(client, caplog, "config wants image vpnagent/vpn:latest, which is not on this host")


def test_refuses_without_the_config_on_disk(client, caplog):
    client.ovpn_path.unlink()
    _assert_refused(client, caplog, "cannot be read")


def test_refuses_a_config_on_disk_the_allowlist_refuses(client, caplog):
    client.ovpn_path.write_text(client.ovpn_path.read_text().replace("<ca>", "script-security 2\n<ca>", 1))
    _assert_refused(client, caplog, "the client's config on disk is refused")


@pytest.mark.parametrize("tun0, reason", [
    ([], "VPN client's tun0 holds no address in vpn_subnet 10.76.0.0/16 (it holds none)"),
    ([ipaddress.IPv4Interface("10.99.0.7/24")], "(it holds 10.99.0.7/24)"),
])
def test_refuses_a_tun0_without_a_vpn_address(client, caplog, tun0, reason):
    _Netns.tun0 = tun0
    _assert_refused(client, caplog, reason)


def test_refuses_without_an_interface_in_the_isolated_subnet(client, caplog):
    _Netns.iso_if = None
    _assert_refused(client, caplog, "VPN client has no interface in the isolated subnet 172.30.0.0/24")


# --- session() reads a bounded, dated log

def _with_log(lines: list[str]) -> tuple[VPNClient, FakeRuntime]:
    cfg = parse_config({"name": "se1", "server_url": "https://127.0.0.1:1/api", "api_key": "k",
                        "data_dir": "/nonexistent"})
    runtime = FakeRuntime()
    client = runtime.start_holder(vpnclient.WorkloadSpec(name="client", image="vpn"))
    runtime.log_text[client.id] = "".join(line + "\n" for line in lines).encode()
    vpn = VPNClient(cfg, runtime, api=None)
    vpn.state = VPNState(client.id, 1, "10.76.0.9", "172.30.0.2", "eth1", 0.0)
    return vpn, runtime


def _docker_dated(lines: list[str], fraction: str = "500000000") -> list[str]:
    return [f"{line[:10]}T{line[11:19]}.{fraction}Z {line}" for line in lines]


def test_session_reads_the_last_lines_with_dockers_timestamps():
    vpn, container = _with_log(_docker_dated(CONNECTED + SERVER_SILENT))
    found = vpn.session()
    assert container.log_calls == [{"timestamps": True, "tail": vpnclient.LOG_TAIL, "since": None, "until": None}]
    assert found.state == "reconnecting" and found.since == _utc("2026-11-27 14:48:12.5")


def test_session_since_drops_what_docker_returns_from_earlier_in_that_second():
    vpn, container = _with_log(_docker_dated(CONNECTED + HARD_RESTART, "100000000"))
    found = vpn.session(since=_utc("2026-11-27 14:47:20.2"))
    assert container.log_calls[0]["since"] == int(_utc("2026-11-27 14:47:20"))
    # everything Docker returned is from before 14:47:20.2 except the 14:47:21 lines: no
    # restart line is left, and the client had tun0 up, so the session is up
    assert found.state == "up" and found.since is None


def test_session_without_a_client():
    vpn, _ = _with_log([])
    vpn.state = None
    assert vpn.session() == SessionState("starting", None, "no VPN client runs")


# --- Netns.link_mtu in a real namespace

@pytest.fixture
def namespace_with_tun0():
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 for a network namespace")
    name = f"vatest-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
    proc = None
    try:
        # a persistent tun device, as openvpn's tun0 is one (deleted with the namespace)
        subprocess.run(["ip", "-n", name, "tuntap", "add", "dev", "tun0", "mode", "tun"], check=True, timeout=10)
        subprocess.run(["ip", "-n", name, "link", "set", "tun0", "mtu", "1372"], check=True, timeout=10)
        proc = subprocess.Popen(["ip", "netns", "exec", name, "sleep", "60"])
        wait_for(lambda: os.readlink(f"/proc/{proc.pid}/ns/net") != os.readlink("/proc/self/ns/net"),
                 f"process {proc.pid} to enter namespace {name}", 10, 0.01, ignore=(FileNotFoundError,))
        yield proc.pid
    finally:
        if proc is not None:
            proc.kill()
            proc.wait(timeout=10)
        subprocess.run(["ip", "netns", "del", name], check=False, timeout=10)


def test_link_mtu_reads_the_links_mtu(namespace_with_tun0):
    ns = Netns(namespace_with_tun0)
    assert ns.link_mtu("tun0") == 1372
    assert ns.link_mtu("tun9") is None


# --- adopt() against the real Docker engine, through the runtime seam

@pytest.mark.docker
def test_a_client_from_another_image_is_refused_and_left_alone(docker_client, tmp_path, ovpn, caplog):
    """A container named and labelled as the node's VPN client, but from another image (an
    agent upgrade changed vpn_image): adopt() returns None and does not touch it; replacing
    it is bring_up()'s job."""
    import docker.errors

    from vpnagent.runtime.dockerengine import DockerRuntime

    cfg = parse_config({"name": f"ad{uuid.uuid4().hex[:6]}", "server_url": "https://127.0.0.1:1/api", "api_key": "k",
                        "data_dir": str(tmp_path / "node")})
    other = cfg.holder_image
    for image in (cfg.vpn_image, other):
        try:
            docker_client.images.get(image)
        except docker.errors.ImageNotFound:
            from tests.conftest import docker_unavailable
            docker_unavailable(f"needs the image {image} (vpnagent images build)")
    assert docker_client.images.get(other).id != docker_client.images.get(cfg.vpn_image).id
    vpn = VPNClient(cfg, DockerRuntime(docker_client), api=None)
    vpn.dir.mkdir(parents=True)
    vpn.ovpn_path.write_text(ovpn)
    container = None
    try:
        container = docker_client.containers.run(
            other, ["sleep", "300"], name=cfg.vpn_container, detach=True, network_mode="none",
            labels={"vpnagent.node": cfg.name, "vpnagent.role": "vpn-client"})
        container.reload()
        started = container.attrs["State"]["StartedAt"]
        caplog.set_level(logging.INFO, logger="vpnagent.dataplane.openvpn")
        assert vpn.adopt(Network("vpnagent-unused-net", str(ISO_SUBNET), "172.30.0.1")) is None
        assert vpn.state is None
        assert f"VPN client runs image {container.attrs['Image']}, config wants {cfg.vpn_image}" in caplog.text
        container.reload()
        assert container.status == "running" and container.attrs["State"]["StartedAt"] == started
    finally:
        if container is not None:
            container.remove(force=True)
