import ipaddress

import pytest

from vpnagent.config import SCHEMA, ConfigError, load_config, parse_config

BASE = {"name": "n1", "server_url": "https://127.0.0.1:5000/api", "api_key": "k", "data_dir": "/tmp/x"}


def test_minimal_config_gets_defaults():
    cfg = parse_config(dict(BASE))
    assert cfg.vpn_subnet == ipaddress.IPv4Network("10.76.0.0/16")
    assert cfg.port_range == (6000, 6999)
    assert cfg.isolated_network == "vpnagent-n1-net"
    assert len(cfg.bridge_name) <= 15


@pytest.mark.parametrize("change, words", [
    ({"colour": "red"}, "unknown key(s) colour"),
    ({"api_key": None}, "missing required key 'api_key'"),
    ({"name": "Bad_Name"}, "'name'"),
    ({"name": "a" * 17}, "'name'"),
    ({"server_url": "ftp://x"}, "must start with https://"),
    ({"server_url": "http://127.0.0.1:5000/api"}, "allow_insecure_http: true"),
    ({"allow_insecure_http": "yes"}, "must be bool"),
    ({"server_fingerprint": "abc"}, "64 hex digits"),
    ({"server_ca_file": "/nonexistent/ca.crt"}, "does not exist"),
    ({"metrics_listen": "9477"}, "host:port"),
    ({"cert_renew_days": 0}, "positive"),
    ({"tunnel_mtu": "big"}, "'tunnel_mtu' 'big' must be auto or a number"),
    ({"tunnel_mtu": 100}, "within 576-65535"),
    ({"algorithm_memory": "lots"}, "'algorithm_memory'"),
    ({"algorithm_memory": "1m"}, "below 16m"),
    ({"allowed_images": ["ok/*", "bad image"]}, "'allowed_images'"),
    ({"allowed_images": []}, "'allowed_images'"),
    ({"algorithm_pids": 2}, "'algorithm_pids'"),
    ({"vpn_subnet": "10.76.0.1/16"}, "not an IPv4 network"),
    ({"vpn_subnet": "10.76.0.0/30"}, "too small"),
    ({"port_range": [7000, 6000]}, "low <= high"),
    ({"port_range": "a-b"}, "two ports"),
    ({"port_range": [80, 90]}, "1024 <= low"),
    ({"proxy_port": 70000}, "1-65535"),
    ({"proxy_port": True}, "must be int"),
    ({"poll_interval": -1}, "positive"),
    ({"max_concurrent_subtasks": 0}, "'max_concurrent_subtasks' 0 must be within 1-4000"),
])
def test_bad_values_are_named_with_the_fix(change, words):
    with pytest.raises(ConfigError) as err:
        parse_config({**BASE, **change})
    assert words in str(err.value)


def test_load_config_resolves_relative_data_dir(tmp_path):
    path = tmp_path / "node.yaml"
    path.write_text("name: n2\nserver_url: https://127.0.0.1:1/api\napi_key: k\ndata_dir: state\nport_range: 7000-7010\n")
    cfg = load_config(path)
    assert cfg.data_dir == (tmp_path / "state").resolve()
    assert cfg.port_range == (7000, 7010)


def test_load_config_reports_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    notmap = tmp_path / "list.yaml"
    notmap.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(notmap)


def test_insecure_http_needs_the_explicit_flag():
    cfg = parse_config({**BASE, "server_url": "http://127.0.0.1:5000/api", "allow_insecure_http": True})
    assert cfg.allow_insecure_http and cfg.server_url.startswith("http://")


def test_fingerprint_is_normalised_and_ca_file_used_for_verify(tmp_path):
    ca = tmp_path / "ca.crt"
    ca.write_text("pem")
    fp = ":".join(["AB"] * 32)
    cfg = parse_config({**BASE, "server_fingerprint": fp, "server_ca_file": str(ca)})
    assert cfg.server_fingerprint == "ab" * 32
    assert cfg.tls_verify == str(ca)
    assert parse_config(dict(BASE)).tls_verify is True


def test_tunnel_mtu_is_probed_unless_a_number_is_given():
    assert parse_config(dict(BASE)).tunnel_mtu is None
    assert parse_config({**BASE, "tunnel_mtu": "auto"}).tunnel_mtu is None
    assert parse_config({**BASE, "tunnel_mtu": 1400}).tunnel_mtu == 1400
    assert parse_config(dict(BASE)).isolated_mtu is None  # Docker's own, 1500


def test_run_limits_default_from_the_host_and_parse_units():
    import os

    memory, cpus, pids = parse_config(dict(BASE)).run_limits()
    assert 0 < memory < os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert cpus == max(1, (os.cpu_count() or 1) - 1) and pids == 1024
    cfg = parse_config({**BASE, "algorithm_memory": "1.5g", "algorithm_cpus": 0.5, "algorithm_pids": 64,
                        "allowed_images": ["vpnagent/*"]})
    assert cfg.run_limits() == (int(1.5 * (1 << 30)), 0.5, 64)
    assert cfg.allowed_images == ("vpnagent/*",)


def test_labels_may_not_use_the_agents_own_prefix():
    """The agent finds its containers by vpnagent.* labels; a config cannot forge them."""
    raw = {"name": "lb1", "server_url": "https://127.0.0.1:1/api", "api_key": "k", "data_dir": "/tmp/lb1",
           "labels": {"org.example.team": "fl", "vpnagent.role": "holder"}}
    with pytest.raises(ConfigError, match="labels: vpnagent.role: keys starting with 'vpnagent.' are the agent's own"):
        parse_config(raw)
    raw["labels"] = {"org.example.team": "fl"}
    assert parse_config(raw).labels == {"org.example.team": "fl"}


def test_node_config_defaults_are_the_schemas():
    """Each default is written once, in SCHEMA: the loaded config and the reference agree."""
    cfg = parse_config({"name": "n", "server_url": "https://x/api", "api_key": "k", "data_dir": "/tmp/d"})
    plain = {key: spec.default for key, spec in SCHEMA.items() if spec.default is not None}
    assert plain.pop("tunnel_mtu") == "auto" and cfg.tunnel_mtu is None  # auto: probe at connect
    loaded = {key: getattr(cfg, key) for key in plain}
    loaded["vpn_subnet"] = str(loaded["vpn_subnet"])
    loaded["port_range"] = list(loaded["port_range"])
    assert loaded == plain
