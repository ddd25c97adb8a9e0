"""The README's server quick-start, as an operator pastes it: its `vpnagent-server` commands
run in order (serve aside: it needs Docker) on a fresh data_dir, and the join strings they
write fit the server: the API certificate the server issues for its config covers the host
of the string's URL, the string pins the server's CA, and the port agrees."""
from __future__ import annotations

import re
import shlex
from pathlib import Path
from urllib.parse import urlsplit

import yaml
from cryptography import x509

from server_ext.cli import api_tls, main
from server_ext.config import load_server_config
from server_ext.join import ca_pin
from server_ext.pki import PKI
from vpnshared.joinstring import decode, extract

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


def run_quick_start(tmp_path: Path, capsys, monkeypatch) -> list[str]:
    """Each `vpnagent-server` line of the block, in order, in tmp_path (a `> FILE` redirect
    writes the output there, as the shell would); what each printed."""
    monkeypatch.chdir(tmp_path)
    server = yaml.safe_load(heredoc("server.yaml"))
    (tmp_path / "server.yaml").write_text(heredoc("server.yaml").replace(server["data_dir"], str(tmp_path / "data")))
    commands = [line.split("#")[0].strip() for line in server_block().splitlines()
                if line.startswith("vpnagent-server ")]
    assert [shlex.split(c)[1] for c in commands][:4] == ["migrate", "add-organization", "add-organization",
                                                         "add-collaboration"]
    printed = []
    for command in commands:
        argv = shlex.split(command)[1:]
        if argv[0] == "serve":
            continue  # starts Docker containers; tests/server/test_serve.py serves
        target = None
        if ">" in argv:
            argv, target = argv[:argv.index(">")], argv[argv.index(">") + 1]
        assert main(argv) == 0, (command, capsys.readouterr().err)
        out = capsys.readouterr().out
        if target:
            (tmp_path / target).write_text(out)
        printed.append(out)
    return printed


def test_the_server_quick_start_runs_in_order(tmp_path, capsys, monkeypatch):
    printed = run_quick_start(tmp_path, capsys, monkeypatch)
    # the ids the README passes are the ones the commands printed
    assert "organization 1 hospital-a" in printed[1] and "organization 2 hospital-b" in printed[2]
    assert "collaboration 1 study" in printed[3]
    assert (tmp_path / "data" / "pki" / "ca.crt").is_file()
    for name in ("node-a", "node-b"):
        assert decode(extract((tmp_path / f"{name}.join").read_text())).node == name


def test_the_join_string_fits_the_certificate_the_server_issues(tmp_path, capsys, monkeypatch):
    run_quick_start(tmp_path, capsys, monkeypatch)
    server = yaml.safe_load(heredoc("server.yaml"))
    raw = load_server_config(tmp_path / "server.yaml")
    pki = PKI(tmp_path / "data" / "pki")
    tls = api_tls(raw, pki)
    joined = decode(extract((tmp_path / "node-a.join").read_text()))
    url = urlsplit(joined.url)
    cert = x509.load_pem_x509_certificate(tls.cert.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert url.hostname in names.get_values_for_type(x509.DNSName), \
        f"the server's API certificate covers {names}, the join string's URL names {url.hostname}"
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate((pki.dir / "ca.crt").read_bytes()))
    assert joined.ca == ca_pin((pki.dir / "ca.crt").read_bytes())
    assert url.port == server["port"]
