"""The server config is checked when it is loaded, for every command: each bad value is
refused with exit status 2 and one line naming the key, the value and the fix, every
problem of a file is reported at once, and a refused config creates nothing (not even the
data directory)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from server_ext import config as server_config
from server_ext.cli import main
from server_ext.wsgi import Limits

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, **keys) -> Path:
    path = tmp_path / "server.yaml"
    path.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "data"), **keys}))
    return path


def run(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


# (keys, words of the fix the message must hold); the key and its value are checked too.
BAD = [
    ({"vpn_subnet": "10.76.0.0/33"}, "not an IPv4 network"),
    ({"vpn_subnet": "10.76.0.1/16"}, "give the network address, 10.76.0.0/16"),
    ({"vpn_subnet": "10.76.0.0/30"}, "give a prefix from /8 to /29"),
    ({"vpn_subnet": "10.0.0.0/4"}, "give a prefix from /8 to /29"),
    ({"vpn_subnet": "fd00::/64"}, "not an IPv4 network"),
    ({"openvpn_proto": "quic"}, "must be udp or tcp"),
    ({"port": 99999}, "within 1-65535"),
    ({"port": -1}, "within 1-65535"),
    ({"port": "5000"}, "give integer"),
    ({"openvpn_remote_port": 99999}, "within 1-65535"),
    ({"openvpn_remote_port": 0}, "within 1-65535"),
    ({"openvpn_processes": 99}, "within 1-16"),
    ({"openvpn_processes": 0}, "within 1-16"),
    ({"api_threads": 2000}, "within 1-1024"),
    ({"api_max_connections": 200_000}, "at most 100000"),
    ({"api_header_timeout": 0}, "more than 0, at most 3600 seconds"),
    ({"api_request_timeout": 4000}, "more than 0, at most 3600 seconds"),
    ({"api_keepalive": -1}, "more than 0, at most 3600 seconds"),
    ({"api_shutdown_timeout": 0}, "more than 0, at most 3600 seconds"),
    ({"cert_days": 0}, "more than 0, at most 3650 days"),
    ({"cert_days": -2.5}, "more than 0, at most 3650 days"),
    ({"container_token_seconds": 1}, "within 2-604800 seconds"),
    ({"container_token_seconds": 604_801}, "within 2-604800 seconds"),
    ({"database_url": "no url at all"}, "is not a database URL (SQLAlchemy's form): give sqlite:"),
    ({"database_url": "mysqlx://db/vpnagent"}, "unknown database kind"),
    ({"openvpn_profile": {"mtu": 1500}}, "unknown openvpn_profile key 'mtu' (did you mean 'tun_mtu'?)"),
    ({"openvpn_profile": {"cipher": "BF-CBC"}}, "AEAD"),
    ({"openvpn_profile": {"tun_mtu": 100}}, "within 576-65535"),
    ({"openvpn_profile": {"fast_io": "yes"}}, "true or false"),
    ({"tls_hostnames": ["vpn.example.org", "bad name!"]}, "neither a DNS name nor an IP address"),
    ({"tls_hostnames": []}, "leave the key out for the defaults"),
    ({"host": "a b"}, "give an IP address"),
    ({"openvpn_remote_host": "-x"}, "give one DNS name or IP address"),
    ({"openvpn_container": "bad/name"}, "Docker container name"),
    ({"data_plane": "wg"}, "must be openvpn or wireguard"),
    ({"tls_cert": "/nonexistent/api.crt", "tls_key": "/nonexistent/api.key"}, "is not a file"),
]


@pytest.mark.parametrize("keys, fix", BAD, ids=[f"{next(iter(k))}={next(iter(k.values()))!r}" for k, _ in BAD])
def test_each_bad_value_is_refused_naming_key_value_and_fix_and_creates_nothing(tmp_path, capsys, keys, fix):
    code, err = run(capsys, "add-organization", "--config", str(write(tmp_path, **keys)), "hospital-a")
    key, value = next(iter(keys.items()))
    assert code == 2, err
    assert err.startswith("vpnagent-server: ") and "Traceback" not in err
    assert f"'{key}'" in err and repr(value) in err and fix in err, err
    assert not (tmp_path / "data").exists(), "a refused config created the data directory"


@pytest.mark.parametrize("keys, words", [
    ({"vpn_subnet": "10.76.0.0/28", "openvpn_processes": 16}, "'vpn_subnet' is '10.76.0.0/28': too small for 16"),
    ({"openvpn_remote_port": 65535, "openvpn_processes": 2}, "ports up to 65536; give at most 65534"),
    ({"one_port": True, "openvpn_proto": "udp"}, "'openvpn_proto' is 'udp': one_port needs tcp"),
    ({"one_port": True, "openvpn_processes": 2}, "'openvpn_processes' is 2: one_port serves one"),
    ({"api_threads": 8, "api_max_connections": 8}, "'api_max_connections' is 8: must be more than api_threads (8)"),
])
def test_rules_between_keys_name_the_key_and_the_fix(tmp_path, capsys, keys, words):
    code, err = run(capsys, "add-organization", "--config", str(write(tmp_path, **keys)), "hospital-a")
    assert code == 2 and words in err, err
    assert not (tmp_path / "data").exists()


def test_tls_cert_without_tls_key_is_refused(tmp_path, capsys):
    cert = tmp_path / "api.crt"
    cert.write_text("x")
    code, err = run(capsys, "add-organization", "--config", str(write(tmp_path, tls_cert=str(cert))), "o")
    assert code == 2 and f"'tls_cert' is {str(cert)!r} but 'tls_key' is not set: give both or neither" in err, err


def test_secrets_and_database_passwords_are_not_echoed(tmp_path, capsys):
    path = write(tmp_path, secret="hunter2-too-short", database_url="postgres://vpn:s3cr3t-pw@db/vpnagent")
    code, err = run(capsys, "add-organization", "--config", str(path), "o")
    assert code == 2
    assert "'secret' is <17 characters, not shown>: must be at least 32 characters" in err, err
    assert "'database_url' is 'postgres://vpn:***@db/vpnagent': names an unknown database kind" in err, err
    assert "hunter2" not in err and "s3cr3t" not in err


def test_every_problem_is_reported_at_once_without_a_traceback(tmp_path):
    path = write(tmp_path, vpn_subnet="10.76.0.1/16", openvpn_proto="quic", port=99999, openvpn_processes=99,
                 secret="short", portt=5000)
    out = subprocess.run([sys.executable, "-m", "server_ext.cli", "add-organization", "--config", str(path), "o"],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out
    assert "Traceback" not in out.stderr and out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert lines[0] == f"vpnagent-server: {path} has 6 problems:", out.stderr
    for words in ("unknown key 'portt' (did you mean 'port'?)", "'vpn_subnet' is '10.76.0.1/16'",
                  "'openvpn_proto' is 'quic'", "'port' is 99999", "'openvpn_processes' is 99", "'secret' is <5"):
        assert sum(words in line for line in lines[1:]) == 1, (words, out.stderr)
    assert not (tmp_path / "data").exists()


def test_unknown_keys_get_a_did_you_mean_or_the_way_to_the_list(tmp_path, capsys):
    code, err = run(capsys, "add-organization", "--config",
                    str(write(tmp_path, vpn_subnett="10.76.0.0/16", openvpn_remote_hots="x", zzz=1)), "o")
    assert code == 2
    assert "unknown key 'vpn_subnett' (did you mean 'vpn_subnet'?)" in err
    assert "unknown key 'openvpn_remote_hots' (did you mean 'openvpn_remote_host'?)" in err
    assert "unknown key 'zzz' (`vpnagent-server config-reference` lists the keys)" in err


def test_a_missing_data_dir_is_named(tmp_path, capsys):
    path = tmp_path / "server.yaml"
    path.write_text("port: 5000\n")
    code, err = run(capsys, "add-organization", "--config", str(path), "o")
    assert code == 2 and "'data_dir' is missing: it is required" in err, err


COMMANDS = [
    ["add-organization", "o"], ["add-collaboration", "c", "--org", "1"],
    ["add-node", "n", "--org", "1", "--collaboration", "1"], ["add-user", "u", "--org", "1"],
    ["list-users"], ["remove-user", "1"], ["rotate-user-key", "1"], ["remove-node", "1"],
    ["remove-organization", "1"], ["migrate"], ["db-upgrade"], ["db-current"], ["serve"],
]


@pytest.mark.parametrize("argv", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_every_command_checks_the_config_before_touching_anything(tmp_path, capsys, argv):
    path = write(tmp_path, vpn_subnet="10.76.0.0/33")
    code, err = run(capsys, argv[0], "--config", str(path), *argv[1:])
    assert code == 2 and "'vpn_subnet' is '10.76.0.0/33'" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["server.yaml"]


def test_good_configs_load(tmp_path):
    assert server_config.load_server_config(write(tmp_path))["data_dir"] == str(tmp_path / "data")
    good = dict(port=0, vpn_subnet="10.80.0.0/29", openvpn_processes=1, secret="x" * 32, cert_days=0.5,
                database_url=f"sqlite:///{tmp_path / 's.db'}", tls_hostnames=["vpn.example.org", "10.1.2.3", "::1"],
                openvpn_profile={"tun_mtu": 9000, "mssfix": 0, "cipher": "AES-128-GCM:AES-256-GCM", "fast_io": True,
                                 "sndbuf": None})
    assert server_config.problems({"data_dir": "/x", **good}) == []
    assert server_config.problems({"data_dir": "/x", "vpn_subnet": "10.0.0.0/20", "openvpn_processes": 16}) == []
    assert server_config.problems({"data_dir": "/x", "database_url": "postgresql://u:p@db:5432/v"}) == []
    # one_port's own defaults (tcp on 443) are what its rules see
    assert server_config.problems({"data_dir": "/x", "one_port": True}) == []
    assert server_config.problems({"data_dir": "/x", "one_port": True, "openvpn_processes": 16,
                                   "openvpn_proto": "tcp"})[0].startswith("'openvpn_processes' is 16: one_port")


def test_limits_built_in_code_get_the_same_checks():
    with pytest.raises(server_config.ServerConfigError, match=r"the API limits: 'api_threads' is 0: must be within"):
        Limits(threads=0)


def test_the_reference_shows_the_allowed_values_from_the_checks():
    table = server_config.reference_markdown()
    assert "| key | type | default | allowed | meaning |" in table
    assert "| `openvpn_processes` | integer | `1` | 1-16 (1 with one_port) |" in table
    assert "| `openvpn_proto` | string | `udp` | `udp` or `tcp` (`tcp` with one_port) |" in table
    assert "| `api_threads` | integer | `16` | 1-1024 |" in table
    assert "| `vpn_subnet` | string | `10.76.0.0/16` | an IPv4 network, /8 to /29;" in table
    # every key with a check shows it; the node table (no checks) keeps its four columns
    from vpnagent.config import reference_markdown as node_reference

    assert node_reference().startswith("| key | type | default | meaning |")


def test_the_default_certificate_names_are_what_the_reference_says():
    """tls_hostnames' default in the reference: `host` (unless 0.0.0.0), localhost,
    127.0.0.1, `openvpn_remote_host`."""
    shown = server_config.SCHEMA["tls_hostnames"].default_markdown()
    assert shown == "`host` (unless 0.0.0.0), localhost, 127.0.0.1, `openvpn_remote_host`"
    assert server_config.default_tls_hostnames({"host": "0.0.0.0", "openvpn_remote_host": "vpn.example.org"}) == \
        ["localhost", "127.0.0.1", "vpn.example.org"]
    assert server_config.default_tls_hostnames({"host": "10.0.0.5"}) == ["10.0.0.5", "localhost", "127.0.0.1"]
