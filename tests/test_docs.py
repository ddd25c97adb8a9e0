"""The guides say what the code does: the generated sections of docs/operator-guide.md equal
what the code generates, every config key is documented, every key an example config
names exists, and the shipped systemd units parse."""
from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from server_ext import config as server_config
from server_ext.cli import KEYS, ServerConfigError, load_server_config
from vpnagent import config as node_config

REPO = Path(__file__).resolve().parent.parent
GUIDE = REPO / "docs" / "operator-guide.md"


def _update_docs():
    spec = importlib.util.spec_from_file_location("update_docs", REPO / "scripts" / "update_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_sections_match_the_code():
    docs = _update_docs()
    found = [name for rel in docs.DOCS for name in docs.sections_in((REPO / rel).read_text())]
    assert sorted(found) == sorted(docs.SECTIONS), \
        f"{', '.join(docs.DOCS)} must hold the markers of {sorted(docs.SECTIONS)}, each once"
    stale = docs.stale()
    assert not stale, (f"{', '.join(stale)} differ from what the code generates (config schema or "
                       "docs/examples/ changed); fix: run `make docs` and commit the result")


@pytest.mark.parametrize("schema,section", [(node_config.SCHEMA, "node-config-reference"),
                                            (server_config.SCHEMA, "server-config-reference")])
def test_every_schema_key_is_in_the_guide(schema, section):
    text = GUIDE.read_text()
    body = text.split(f"<!-- {section}:start -->")[1].split(f"<!-- {section}:end -->")[0]
    missing = [key for key in schema if f"| `{key}` |" not in body]
    assert not missing, f"keys {missing} are not in the {section} section; fix: run `make docs`"
    assert all(spec.help.strip() for spec in schema.values()), "every key needs a help text"


def _yaml_examples() -> list[tuple[str, str]]:
    """(where, YAML text) of every example config in the docs and the README: the files in
    docs/examples/, ```yaml blocks and <<'YAML' here-documents."""
    found = [(str(p.relative_to(REPO)), p.read_text()) for p in sorted((REPO / "docs" / "examples").glob("*.yaml"))]
    for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        text = path.read_text()
        for i, block in enumerate(re.findall(r"```ya?ml\n(.*?)```", text, re.S)):
            found.append((f"{path.name} yaml block {i + 1}", block))
        for i, block in enumerate(re.findall(r"<<'?YAML'?\n(.*?)\nYAML\n", text, re.S)):
            found.append((f"{path.name} here-document {i + 1}", block))
    return found


def _named_keys(text: str) -> set[str]:
    """Top-level keys, including ones shown commented out (`# key: value`)."""
    keys = set((yaml.safe_load(text) or {}).keys())
    keys |= set(re.findall(r"^# ?([a-z_]+): ", text, re.M))
    return keys


def _kind(keys: set[str]) -> str:
    """Which config a snippet is: the schema that holds all its keys (a fragment such as
    `metrics_listen: ...` alone counts), else the one it overlaps most, to report the rest."""
    node, server = set(node_config.SCHEMA), set(server_config.SCHEMA)
    if "server_url" in keys or "api_key" in keys or (keys <= node and not keys <= server):
        return "node"
    if keys <= server:
        return "server"
    return "node" if len(keys & node) > len(keys & server) else "server"


def test_example_configs_name_only_schema_keys():
    examples = _yaml_examples()
    kinds = {"node": 0, "server": 0}
    for where, text in examples:
        keys = _named_keys(text)
        if not keys & (set(node_config.SCHEMA) | set(server_config.SCHEMA)):
            continue  # some other YAML (e.g. a compose snippet)
        kind = _kind(keys)
        schema = node_config.SCHEMA if kind == "node" else server_config.SCHEMA
        kinds[kind] += 1
        unknown = sorted(keys - set(schema))
        assert not unknown, f"{where}: {kind} config names unknown key(s) {unknown}; allowed: {sorted(schema)}"
        for key, value in (yaml.safe_load(text) or {}).items():
            types = schema[key].types
            types = types if isinstance(types, tuple) else (types,)
            assert value is None or (isinstance(value, bool) == (bool in types) and isinstance(value, types)), \
                f"{where}: '{key}' has a {type(value).__name__}, the schema wants {types}"
    assert kinds["node"] >= 1 and kinds["server"] >= 1, kinds


def test_example_server_config_loads(tmp_path):
    raw = load_server_config(REPO / "docs" / "examples" / "server.yaml")
    assert raw["data_dir"] and raw["openvpn_remote_host"] == "vpn.example.org"


def test_example_node_config_parses(tmp_path):
    raw = yaml.safe_load((REPO / "docs" / "examples" / "node.yaml").read_text())
    ca = tmp_path / "ca.crt"
    ca.write_text("not checked here\n")
    cfg = node_config.parse_config({**raw, "server_ca_file": str(ca), "data_dir": str(tmp_path / "d")})
    assert cfg.server_url.startswith("https://") and cfg.server_ca_file == ca.resolve()


def test_server_keys_come_from_the_schema(tmp_path):
    assert KEYS == {k: v.types for k, v in server_config.SCHEMA.items()}
    bad = tmp_path / "s.yaml"
    bad.write_text("data_dir: /x\nportt: 1\n")
    with pytest.raises(ServerConfigError, match="unknown key 'portt' \\(did you mean 'port'\\?\\)"):
        load_server_config(bad)
    bad.write_text("data_dir: /x\nport: '5000'\n")
    with pytest.raises(ServerConfigError, match="'port'.*wrong type"):
        load_server_config(bad)
    bad.write_text("port: 5000\n")
    with pytest.raises(ServerConfigError, match="data_dir"):
        load_server_config(bad)


def test_config_reference_commands_print_the_tables(capsys):
    from server_ext.cli import main as server_main
    from vpnagent.cli import main as node_main

    assert node_main(["config-reference"]) == 0
    assert capsys.readouterr().out == node_config.reference_markdown()
    assert server_main(["config-reference"]) == 0
    assert capsys.readouterr().out == server_config.reference_markdown()


def test_make_docs_check_passes():
    import sys

    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "update_docs.py"), "--check"],
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 0, proc.stderr


UNITS = sorted((REPO / "deploy" / "systemd").glob("*.service"))


def test_systemd_units_are_shipped_and_verify(tmp_path):
    names = {u.name for u in UNITS}
    assert {"vpnagent-server.service", "vpnagent@.service"} <= names
    agent = (REPO / "deploy" / "systemd" / "vpnagent@.service").read_text()
    for needed in ("CAP_NET_ADMIN", "CAP_SYS_ADMIN", "AF_NETLINK", "docker.service", "ReadWritePaths=/var/lib/vpnagent /run"):
        assert needed in agent, needed
    assert "PrivateNetwork" not in agent.split("# Not set on purpose")[0]
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed")
    for unit in UNITS:
        target = tmp_path / unit.name.replace("@.", "@node-a.")
        target.write_text(unit.read_text())
        proc = subprocess.run(["systemd-analyze", "verify", str(target)], capture_output=True, text=True, timeout=60)
        # The binaries are not installed at /opt/vpnagent on a build machine; anything else is an error.
        problems = [line for line in proc.stderr.splitlines()
                    if line.strip() and "is not executable" not in line]
        assert not problems, f"{unit.name}: {problems}"


def _installed_data_files() -> dict[str, Path]:
    """Path under the installation prefix -> the file of this tree that setup.cfg's
    [options.data_files] installs there (its globs expanded as setuptools does)."""
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    installed = {}
    for target, sources in cfg["options.data_files"].items():
        for pattern in (s.strip() for s in sources.split(",") if s.strip()):
            for source in sorted(REPO.glob(pattern)):
                installed[f"{target}/{source.name}"] = source
    return installed


def test_systemd_units_document_themselves_with_installed_guides():
    """Documentation= names files the package's own install puts next to the binaries the
    unit starts (ExecStart=/opt/vpnagent/bin/...), not paths nothing installs."""
    installed = _installed_data_files()
    for unit in UNITS:
        text = unit.read_text()
        prefix = re.search(r"^ExecStart=(/\S+)/bin/", text, re.M).group(1)
        docs = re.findall(r"^Documentation=(\S+)$", text, re.M)
        assert docs, f"{unit.name} has no Documentation="
        for uri in docs:
            assert uri.startswith(f"file://{prefix}/"), f"{unit.name}: {uri} is not under the install {prefix}"
            relative = uri.removeprefix(f"file://{prefix}/")
            assert relative in installed, f"{unit.name}: nothing installs {relative}; setup.cfg [options.data_files]"
            assert installed[relative].is_file()
    assert "share/doc/vpnagent/examples/node.yaml" in installed  # a missing node config names it (vpnagent/cli.py)
    assert "share/doc/vpnagent/examples/server.yaml" in installed


def test_server_defaults_are_the_schemas(tmp_path):
    """The HTTP server's limits, the OpenVPN settings and the Flask extension take their
    defaults from server_ext/config.py, where the reference is rendered from."""
    from server_ext import create_app
    from server_ext.ovpn import VPNSettings
    from server_ext.wsgi import Limits

    schema = server_config.SCHEMA
    assert {f"api_{k}": v for k, v in vars(Limits()).items()} == \
        {k: spec.default for k, spec in schema.items() if k.startswith("api_")}
    settings = VPNSettings()
    assert (str(settings.subnet), settings.remote_host, settings.remote_port, settings.proto, settings.processes) == \
        tuple(schema[k].default for k in ("vpn_subnet", "openvpn_remote_host", "openvpn_remote_port",
                                          "openvpn_proto", "openvpn_processes"))
    app = create_app({"VPNAGENT_DATA_DIR": str(tmp_path)})
    state = app.extensions["vpnagent"]
    assert state.settings == settings and state.cert_days == schema["cert_days"].default
    assert state._container_seconds == schema["container_token_seconds"].default
    assert [r.rule for r in app.url_map.iter_rules() if r.endpoint == "vpnagent.health"] == ["/api/health"]
    assert list(tmp_path.iterdir()) == []  # building it wrote nothing


def test_extension_keys_are_server_keys_or_documented_extension_only():
    assert set(server_config.EXTENSION_KEYS) <= set(server_config.SCHEMA)
    assert not set(server_config.EXTENSION_ONLY) & set(server_config.SCHEMA)
    assert all(spec.help.strip() for spec in server_config.EXTENSION_ONLY.values())
    text = GUIDE.read_text()
    for key in (*server_config.EXTENSION_KEYS, *server_config.EXTENSION_ONLY):
        assert f"| `{server_config.flask_key(key)}` |" in text, key
