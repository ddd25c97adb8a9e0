"""`vpnagent doctor` logic without Docker: check ordering, skip propagation, exit codes, the
output formats and the pure parts of individual checks."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from vpnagent import cli, doctor, firewall
from vpnagent.config import parse_config
from vpnagent.doctor import FAIL, PASS, SKIP, Check, CheckFailed, Context, NotApplicable


@pytest.fixture
def cfg(tmp_path):
    return parse_config({"name": "n1", "server_url": "http://127.0.0.1:1/api", "allow_insecure_http": True,
                         "api_key": "k", "data_dir": str(tmp_path / "data")})


def _ok(detail):
    return lambda ctx: detail


def _fail(detail, fix):
    def fn(ctx):
        raise CheckFailed(detail, fix)
    return fn


def test_all_pass_in_order_and_exit_zero(cfg):
    calls = []

    def rec(name):
        def fn(ctx):
            calls.append(name)
            return f"{name} fine"
        return fn

    checks = [Check("a", rec("a")), Check("b", rec("b"), needs=("a",)), Check("c", rec("c"))]
    results = doctor.run_checks(checks, Context(cfg))
    assert calls == ["a", "b", "c"]
    assert [(r.name, r.status) for r in results] == [("a", PASS), ("b", PASS), ("c", PASS)]
    assert doctor.exit_code(results) == 0


def test_failure_skips_dependents_transitively_but_not_independents(cfg):
    ran = []
    checks = [
        Check("a", _fail("a broke", "fix a")),
        Check("b", lambda ctx: ran.append("b") or "", needs=("a",)),
        Check("c", lambda ctx: ran.append("c") or "", needs=("b",)),
        Check("d", lambda ctx: ran.append("d") or "d ok"),
    ]
    results = doctor.run_checks(checks, Context(cfg))
    assert ran == ["d"]  # b and c never ran: their message would only confuse
    assert [(r.name, r.status) for r in results] == [("a", FAIL), ("b", SKIP), ("c", SKIP), ("d", PASS)]
    assert results[1].detail == "needs a"
    assert results[2].detail == "needs b"
    assert doctor.exit_code(results) == 1


def test_not_applicable_skip_does_not_block_dependents(cfg):
    def na(ctx):
        raise NotApplicable("plain HTTP")

    results = doctor.run_checks([Check("tls", na), Check("token", _ok("ok"), needs=("tls",))], Context(cfg))
    assert [(r.status, r.detail) for r in results] == [(SKIP, "not applicable: plain HTTP"), (PASS, "ok")]
    assert doctor.exit_code(results) == 0


def test_unexpected_exception_is_a_failure_and_the_rest_still_runs(cfg):
    def boom(ctx):
        raise KeyError("x")

    results = doctor.run_checks([Check("a", boom), Check("b", _ok("fine"))], Context(cfg))
    assert results[0].status == FAIL and "KeyError" in results[0].detail and results[0].fix
    assert results[1].status == PASS


def test_ctrl_c_is_not_swallowed(cfg):
    def interrupt(ctx):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        doctor.run_checks([Check("a", interrupt)], Context(cfg))


def test_text_and_json_output(cfg):
    results = doctor.run_checks([
        Check("docker reachable", _ok("28.2.2")),
        Check("token valid", _fail("server said 401", "put the key into api_key")),
        Check("self-test", _ok(""), needs=("token valid",)),
    ], Context(cfg))
    assert doctor.render_text(results).splitlines() == [
        "PASS docker reachable (28.2.2)",
        "FAIL token valid: server said 401 -> fix: put the key into api_key",
        "SKIP self-test: needs token valid",
    ]
    data = json.loads(doctor.render_json("n1", results))
    assert data["node"] == "n1" and data["ok"] is False
    assert data["checks"][1] == {"name": "token valid", "status": "fail", "detail": "server said 401",
                                 "fix": "put the key into api_key"}


def test_every_check_names_only_earlier_checks_as_needs():
    seen: set[str] = set()
    for check in doctor.CHECKS:
        assert set(check.needs) <= seen, f"{check.name} needs a check that runs after it"
        seen.add(check.name)
    assert [c.name for c in doctor.CHECKS][:3] == ["docker reachable", "/dev/net/tun", "iptables backend"]


def test_cli_exit_codes(tmp_path, monkeypatch, capsys, cfg):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "n1"}))
    assert cli.main(["doctor", "--config", str(bad)]) == 2  # missing keys: a config error

    good = tmp_path / "node.yaml"
    good.write_text(yaml.safe_dump({"name": "n1", "server_url": "http://127.0.0.1:1/api", "allow_insecure_http": True,
                                    "api_key": "k", "data_dir": str(tmp_path / "data")}))
    monkeypatch.setattr(doctor, "CHECKS", [Check("a", _ok("fine"))])
    assert cli.main(["doctor", "--config", str(good)]) == 0
    assert capsys.readouterr().out == "PASS a (fine)\n"
    monkeypatch.setattr(doctor, "CHECKS", [Check("a", _ok("fine")), Check("b", _fail("broken", "do x"))])
    assert cli.main(["doctor", "--config", str(good), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["ok"] is False


# ----------------------------------------------------------------- single checks, no Docker
def test_tun_check_rejects_missing_and_non_device(tmp_path, cfg):
    ctx = Context(cfg, tun_path=tmp_path / "missing")
    with pytest.raises(CheckFailed) as exc:
        doctor.check_tun(ctx)
    assert "mknod /dev/net/tun c 10 200" in exc.value.fix
    plain = tmp_path / "tun"
    plain.write_text("")
    with pytest.raises(CheckFailed) as exc:
        doctor.check_tun(Context(cfg, tun_path=plain))
    assert "not the TUN character device" in exc.value.detail


@pytest.mark.skipif(not Path("/dev/net/tun").exists(), reason="no /dev/net/tun on this machine")
def test_tun_check_accepts_the_real_device(cfg):
    assert doctor.check_tun(Context(cfg)) == "character device 10:200"


@pytest.mark.parametrize("line,backend", [("iptables v1.8.9 (nf_tables)", "nf_tables"),
                                          ("iptables v1.8.7 (legacy)", "legacy"), ("iptables v1.4.21", None)])
def test_iptables_backend(line, backend):
    assert doctor.iptables_backend(line) == backend


SAVE_WITH_JUMP = """*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:DOCKER-USER - [0:0]
:VA-HOST-n1 - [0:0]
-A DOCKER-USER -j VA-HOST-n1
-A DOCKER-USER -j RETURN
COMMIT
"""


def test_docker_user_problems():
    state = firewall.parse_save(SAVE_WITH_JUMP)
    assert doctor.docker_user_problem(state, "VA-HOST-n1", agent_running=True) is None
    assert "missing" in doctor.docker_user_problem(state, "VA-HOST-n2", agent_running=True)
    assert doctor.docker_user_problem(state, "VA-HOST-n2", agent_running=False) is None  # nothing to expect yet
    no_chain = firewall.parse_save("*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n")
    assert "no DOCKER-USER" in doctor.docker_user_problem(no_chain, "VA-HOST-n1", agent_running=False)
    shadowed = firewall.parse_save(SAVE_WITH_JUMP.replace("-A DOCKER-USER -j VA-HOST-n1",
                                                          "-A DOCKER-USER -i eth9 -j DROP\n-A DOCKER-USER -j VA-HOST-n1"))
    assert "drops traffic first" in doctor.docker_user_problem(shadowed, "VA-HOST-n1", agent_running=True)


def test_vpn_ip_outside_subnet_fails_with_the_subnet_in_the_fix(cfg):
    import ipaddress

    ctx = Context(cfg, vpn_ip=ipaddress.IPv4Interface("10.77.0.3/16"))
    with pytest.raises(CheckFailed) as exc:
        doctor.check_vpn_ip(ctx)  # cfg.vpn_subnet is the default 10.76.0.0/16
    assert "10.77.0.0/16" in exc.value.fix
    ctx.vpn_ip = ipaddress.IPv4Interface("10.76.0.9/16")
    assert doctor.check_vpn_ip(ctx) == "10.76.0.9 in 10.76.0.0/16"


def test_tls_check_not_applicable_on_http(cfg):
    with pytest.raises(NotApplicable):
        doctor.check_tls(Context(cfg))


def test_selftest_batch_adds_and_removes_exactly_its_own_chain():
    add = doctor.render_selftest("VA-DOCTOR-abc123", "10.76.0.3", 59001, "172.20.0.5", present=True)
    assert "-A OUTPUT -d 10.76.0.3/32 -p tcp -m tcp --dport 59001 -j VA-DOCTOR-abc123" in add
    assert "--to-destination 172.20.0.5:8888" in add
    rm = doctor.render_selftest("VA-DOCTOR-abc123", "10.76.0.3", 59001, "", present=False)
    assert rm.splitlines() == ["*nat", "-D OUTPUT -d 10.76.0.3/32 -p tcp -m tcp --dport 59001 -j VA-DOCTOR-abc123",
                               ":VA-DOCTOR-abc123 - [0:0]", "-X VA-DOCTOR-abc123", "COMMIT"]
    # the agent's reconcile deletes unknown run chains; ours must never look like one
    assert not firewall.RUN_CHAIN_RE.match("VA-DOCTOR-abc123")


# ----------------------------------------------------------------- TLS check against a local HTTPS server
@pytest.fixture
def https_server(tmp_path):
    """A loopback HTTPS server with a self-signed certificate for 127.0.0.1 answering /api/health."""
    import datetime
    import hashlib
    import http.server
    import ipaddress
    import ssl
    import threading

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "doctor-test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_pem = tmp_path / "cert.pem"
    key_pem = tmp_path / "key.pem"
    cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/api/health" else 404)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_pem, key_pem)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    fingerprint = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    try:
        yield {"url": f"https://127.0.0.1:{server.server_address[1]}/api", "ca": cert_pem, "fingerprint": fingerprint}
    finally:
        server.shutdown()
        server.server_close()


def _tls_cfg(tmp_path, server, **extra):
    return parse_config({"name": "n1", "server_url": server["url"], "api_key": "k",
                         "data_dir": str(tmp_path / "data"), **extra})


def test_tls_check_accepts_the_right_ca_or_pin(tmp_path, https_server):
    assert doctor.check_tls(Context(_tls_cfg(tmp_path, https_server, server_ca_file=str(https_server["ca"])))) \
        == "certificate accepted: CA cert.pem"
    assert doctor.check_tls(Context(_tls_cfg(tmp_path, https_server, server_fingerprint=https_server["fingerprint"]))) \
        == "certificate accepted: pinned fingerprint"


def test_tls_check_refuses_a_wrong_pin_and_shows_what_the_server_presents(tmp_path, https_server):
    from vpnagent.tls import format_fingerprint

    cfg = _tls_cfg(tmp_path, https_server, server_fingerprint="ab" * 32)
    results = doctor.run_checks([Check("server TLS valid", doctor.check_tls),
                                 Check("token valid", doctor.check_token, needs=("server TLS valid",))], Context(cfg))
    assert [r.status for r in results] == [FAIL, SKIP]
    assert format_fingerprint(https_server["fingerprint"]) in results[0].detail
    assert "server_fingerprint" in results[0].fix
    assert doctor.exit_code(results) == 1


def test_tls_check_refuses_an_unknown_ca(tmp_path, https_server):
    with pytest.raises(CheckFailed) as exc:
        doctor.check_tls(Context(_tls_cfg(tmp_path, https_server)))  # system CAs do not know it
    assert "certificate verify failed" in exc.value.detail
    assert "server_ca_file" in exc.value.fix


def test_troubleshooting_guide_has_a_section_per_check():
    guide = (Path(__file__).resolve().parents[2] / "docs" / "troubleshooting.md").read_text()
    headings = {line[4:].strip() for line in guide.splitlines() if line.startswith("### ")}
    assert [c.name for c in doctor.CHECKS if c.name not in headings] == []


@pytest.mark.parametrize("text,fixed", [("20.10.24+dfsg1", False), ("24.0.9", False), ("25.0.4", False),
                                        ("25.0.5", True), ("26.0.0", True), ("28.2.2", True), ("27.0.0-rc1", True)])
def test_docker_isolation_check_warns_before_25_0_5(text, fixed):
    class Engine:
        def version(self):
            return text

    ctx = Context(None)
    ctx.runtime = Engine()
    results = doctor.run_checks([Check("docker isolation fixes", doctor.check_docker_isolation)], ctx)
    assert results[0].status == (doctor.PASS if fixed else doctor.WARN), results
    if not fixed:
        assert "CVE-2024-29018" in results[0].detail and "upgrade" in results[0].fix
        assert results[0].line().startswith("WARN docker isolation fixes: Docker ")
    assert doctor.exit_code(results) == 0  # a warning is not a failure


def test_unreadable_docker_version_is_a_warning_too():
    class Engine:
        def version(self):
            return "dev"

    ctx = Context(None)
    ctx.runtime = Engine()
    result = doctor.run_checks([Check("docker isolation fixes", doctor.check_docker_isolation)], ctx)[0]
    assert result.status == doctor.WARN and "cannot read the Docker version" in result.detail


@pytest.mark.parametrize("limit,status", [(1500, "pass"), (1400, "fail")])
def test_tunnel_mtu_check_pings_the_settled_size(cfg, monkeypatch, limit, status):
    """The agent settled on 1500 bytes; the path now carries `limit`."""
    from tests.node.test_pathmtu import FakeNs

    cfg.data_dir.mkdir(parents=True)
    (cfg.data_dir / "status.json").write_text(json.dumps({"vpn": {
        "tunnel_mtu": 1500, "tunnel_mtu_source": "probed", "tunnel_mtu_detail": "10.76.0.1 answered up to 1500"}}))
    from tests.fakes import FakeRuntime
    from vpnagent.dataplane import openvpn
    from vpnagent.runtime import WorkloadSpec

    ns = FakeNs(limit=limit)
    monkeypatch.setattr(openvpn, "Netns", lambda pid: ns)
    runtime = FakeRuntime()
    runtime.start_holder(WorkloadSpec(name=cfg.vpn_container, image=cfg.vpn_image))
    ctx = Context(cfg, runtime=runtime, dataplane=openvpn.OpenVPN(cfg, runtime, api=None))
    result = doctor.run_checks([Check("tunnel MTU", doctor.check_tunnel_mtu)], ctx)[0]
    assert result.status == status, result
    assert ns.pings == [1500]
    if status == "fail":
        assert "no longer cross the tunnel" in result.detail and "tunnel_mtu" in result.fix


def test_tunnel_mtu_check_skips_for_an_agent_that_does_not_report_it(cfg):
    cfg.data_dir.mkdir(parents=True)
    (cfg.data_dir / "status.json").write_text(json.dumps({"vpn": {"connected": True}}))
    result = doctor.run_checks([Check("tunnel MTU", doctor.check_tunnel_mtu)], Context(cfg))[0]
    assert result.status == "skip"


def test_ctrl_c_reaches_the_doctor_even_when_the_shell_ignores_it(tmp_path, monkeypatch, cfg):
    """A background job of a non-interactive shell (a CI script, `cmd &`) inherits SIGINT as
    ignored, and Python then installs no KeyboardInterrupt for it: the stress runs found the
    self-test paused, SIGINTed, and never cleaning up. The doctor takes SIGINT itself."""
    import os
    import signal

    good = tmp_path / "node.yaml"
    good.write_text(yaml.safe_dump({"name": "n1", "server_url": "http://127.0.0.1:1/api", "allow_insecure_http": True,
                                    "api_key": "k", "data_dir": str(tmp_path / "data")}))

    def interrupt_me(ctx):
        os.kill(os.getpid(), signal.SIGINT)
        signal.pthread_sigmask(signal.SIG_BLOCK, [])  # a point where Python runs the handler
        raise AssertionError("SIGINT did not interrupt the check")

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        monkeypatch.setattr(doctor, "CHECKS", [Check("a", interrupt_me)])
        assert cli.main(["doctor", "--config", str(good)]) == 130
    finally:
        signal.signal(signal.SIGINT, previous)
