"""The README's server quick-start, as an operator pastes it: its `vpnagent-server` commands
run in order (serve aside: it needs Docker) on a fresh data_dir, and the node config next to
it fits the server's: the API certificate the server issues for its config covers the host
of the node's server_url, it verifies against the CA file the node names, and the subnets
and port agree."""
from __future__ import annotations

import re
import shlex
from pathlib import Path
from urllib.parse import urlsplit

import yaml
from cryptography import x509

from server_ext.cli import api_tls, main
from server_ext.config import load_server_config
from server_ext.pki import PKI
from vpnagent.config import parse_config

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()


def heredoc(name: str) -> str:
    """The YAML the README writes with `cat > NAME <<'YAML'`."""
    m = re.search(rf"cat > {re.escape(name)} <<'YAML'\n(.*?)\nYAML\n", README, re.S)
    assert m, f"README.md writes no {name}"
    return m.group(1)


def server_block() -> str:
    m = re.search(r"```sh\n(cat > server\.yaml.*?)```", README, re.S)
    assert m, "README.md has no server quick-start block"
    return m.group(1)


def test_the_server_quick_start_runs_in_order(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    server = yaml.safe_load(heredoc("server.yaml"))
    data_dir = server["data_dir"]
    (tmp_path / "server.yaml").write_text(heredoc("server.yaml").replace(data_dir, str(tmp_path / "data")))
    commands = [line.split("#")[0].strip() for line in server_block().splitlines()
                if line.startswith("vpnagent-server ")]
    assert [shlex.split(c)[1] for c in commands][:4] == ["migrate", "add-organization", "add-organization",
                                                         "add-collaboration"]
    printed = []
    for command in commands:
        argv = shlex.split(command)[1:]
        if argv[0] == "serve":
            continue  # starts Docker containers; tests/server/test_serve.py serves
        assert main(argv) == 0, (command, capsys.readouterr().err)
        printed.append(capsys.readouterr().out)
    # the ids the README passes are the ones the commands printed
    assert "organization 1 hospital-a" in printed[1] and "organization 2 hospital-b" in printed[2]
    assert "collaboration 1 study" in printed[3]
    assert (tmp_path / "data" / "pki" / "ca.crt").is_file()


def test_the_node_config_trusts_the_certificate_the_server_issues(tmp_path):
    server_text = heredoc("server.yaml")
    server = yaml.safe_load(server_text)
    (tmp_path / "server.yaml").write_text(server_text.replace(server["data_dir"], str(tmp_path / "data")))
    raw = load_server_config(tmp_path / "server.yaml")
    pki = PKI(tmp_path / "data" / "pki")
    tls = api_tls(raw, pki)
    node_raw = yaml.safe_load(heredoc("node.yaml"))
    # the node's ca.crt is the copy of the server's pki/ca.crt the README says to make
    assert Path(node_raw["server_ca_file"]).name == "ca.crt"
    (tmp_path / "node").mkdir()
    (tmp_path / "node" / "ca.crt").write_bytes((pki.dir / "ca.crt").read_bytes())
    node = parse_config({**node_raw, "data_dir": str(tmp_path / "node" / "state")}, base_dir=tmp_path / "node")
    url = urlsplit(node.server_url)
    cert = x509.load_pem_x509_certificate(tls.cert.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert url.hostname in names.get_values_for_type(x509.DNSName), \
        f"the server's API certificate covers {names}, the node connects to {url.hostname}"
    ca = x509.load_pem_x509_certificate(node.server_ca_file.read_bytes())
    cert.verify_directly_issued_by(ca)
    assert url.port == server["port"] and str(node.vpn_subnet) == server["vpn_subnet"]
