"""The options both command lines share (vpnshared/cli.py): --version, --log-level and -v
anywhere on the line, --config with a default location an environment variable overrides,
and a missing config as one line that names the path, the variable and the fix."""
from __future__ import annotations

import logging
import os
from importlib import metadata

import pytest
import yaml

import server_ext.cli as server_cli
import vpnagent.cli as node_cli
from vpnshared.cli import ConfigOption, MissingConfig, package_version, require_config

CLIS = [pytest.param(node_cli, "vpnagent", "VPNAGENT_CONFIG", "/etc/vpnagent/node.yaml", id="node"),
        pytest.param(server_cli, "vpnagent-server", "VPNAGENT_SERVER_CONFIG", "/etc/vpnagent/server.yaml",
                     id="server")]


@pytest.fixture
def levels(monkeypatch) -> list[str]:
    """The level each main() call set up logging with (pytest owns the real root logger)."""
    seen: list[str] = []
    for cli in (node_cli, server_cli):
        monkeypatch.setattr(cli, "setup_logging", lambda level, quiet=(): seen.append(level))
    return seen


@pytest.mark.parametrize("cli,prog,var,default", CLIS)
def test_version_is_the_installed_packages(cli, prog, var, default, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"{prog} {metadata.version('vpnagent')}\n" == f"{prog} {package_version()}\n"


@pytest.mark.parametrize("cli,prog,var,default", CLIS)
@pytest.mark.parametrize("argv,level", [
    (["--log-level", "warning", "config-reference"], "warning"),
    (["config-reference", "--log-level", "ERROR"], "error"),
    (["-v", "config-reference"], "debug"),
    (["config-reference", "-v"], "debug"),
    (["config-reference", "--verbose"], "debug"),
    (["--log-level", "error", "config-reference", "-v"], "debug"),  # the later one wins
    (["config-reference"], "info"),
])
def test_log_level_anywhere_on_the_line(cli, prog, var, default, argv, level, levels, capsys):
    assert cli.main(argv) == 0
    assert levels == [level]


@pytest.mark.parametrize("cli,prog,var,default", CLIS)
@pytest.mark.parametrize("where", ["before", "after"])
def test_a_bad_log_level_is_a_usage_error_naming_the_levels(cli, prog, var, default, where, levels, capsys):
    argv = ["--log-level", "loud", "config-reference"]
    if where == "after":
        argv = ["config-reference", "--log-level", "loud"]
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2 and levels == []
    err = capsys.readouterr().err
    assert "'loud' is not a log level; use one of debug, info, warning, error" in err and "Traceback" not in err


def test_node_subcommands_of_subcommands_take_the_shared_options(levels, monkeypatch):
    from vpnagent.runtime import docker_images

    monkeypatch.setattr(docker_images, "build_images", lambda **kw: None)
    assert node_cli.main(["images", "build", "--log-level", "warning"]) == 0
    assert levels == ["warning"]


@pytest.mark.parametrize("cli,prog,var,default", CLIS)
def test_help_shows_the_default_config_and_its_variable(cli, prog, var, default, monkeypatch, capsys):
    monkeypatch.delenv(var, raising=False)
    with pytest.raises(SystemExit):
        cli.main(["doctor" if cli is node_cli else "serve", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert f"default: ${var} if set, else {default}" in help_text
    assert cli.CONFIG.default() == default
    monkeypatch.setenv(var, "/srv/other.yaml")
    assert cli.CONFIG.default() == "/srv/other.yaml"


@pytest.mark.parametrize("cli,prog,var,default", CLIS)
@pytest.mark.parametrize("how", ["default", "env", "flag"])
def test_a_missing_config_is_one_line_naming_path_variable_and_fix(cli, prog, var, default, how, tmp_path,
                                                                  monkeypatch, capsys):
    missing = tmp_path / "nope.yaml"
    monkeypatch.delenv(var, raising=False)
    argv = ["status"] if cli is node_cli else ["add-organization", "hospital-a"]
    if how == "env":
        monkeypatch.setenv(var, str(missing))
    elif how == "flag":
        argv += ["--config", str(missing)]
    elif os.path.exists(default):
        pytest.skip(f"{default} exists on this machine")
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    path = default if how == "default" else str(missing)
    assert f"{path} (" in err and "does not exist" in err
    assert var in err if how != "flag" else "(given with --config)" in err
    assert "config-reference" in err  # how to create one
    assert list(tmp_path.iterdir()) == []  # nothing was made


def test_require_config_refuses_a_directory(tmp_path):
    option = ConfigOption("/etc/x.yaml", "X_CONFIG", "x config", "write one")
    with pytest.raises(MissingConfig, match=f"x config {tmp_path} \\(given with --config\\) is a directory"):
        require_config(str(tmp_path), option)
    (tmp_path / "x.yaml").write_text("a: 1\n")
    assert require_config(str(tmp_path / "x.yaml"), option) == tmp_path / "x.yaml"


@pytest.mark.parametrize("where", ["before", "after", "short", "env"])
def test_server_config_is_found_before_or_after_the_subcommand_and_by_variable(where, tmp_path, monkeypatch, capsys):
    cfg = tmp_path / "server.yaml"
    cfg.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "data")}))
    monkeypatch.delenv("VPNAGENT_SERVER_CONFIG", raising=False)
    argv = {"before": ["--config", str(cfg), "add-organization", "hospital-a"],
            "after": ["add-organization", "hospital-a", "--config", str(cfg)],
            "short": ["add-organization", "-c", str(cfg), "hospital-a"],
            "env": ["add-organization", "hospital-a"]}[where]
    if where == "env":
        monkeypatch.setenv("VPNAGENT_SERVER_CONFIG", str(cfg))
    assert server_cli.main(argv) == 0
    assert capsys.readouterr().out == "organization 1 hospital-a\n"


@pytest.mark.parametrize("where", ["before", "after", "env"])
def test_node_config_is_found_before_or_after_the_subcommand_and_by_variable(where, tmp_path, monkeypatch, capsys):
    cfg = tmp_path / "node.yaml"
    cfg.write_text(yaml.safe_dump({"name": "cli1", "server_url": "https://127.0.0.1:1/api", "api_key": "k",
                                   "data_dir": str(tmp_path / "node")}))
    monkeypatch.delenv("VPNAGENT_CONFIG", raising=False)
    argv = {"before": ["-c", str(cfg), "status"], "after": ["status", "--config", str(cfg)], "env": ["status"]}[where]
    if where == "env":
        monkeypatch.setenv("VPNAGENT_CONFIG", str(cfg))
    assert node_cli.main(argv) == 1  # the config was read: it is the agent's status that is missing
    assert "is the agent for node cli1 running?" in capsys.readouterr().err


def test_gunicorns_log_follows_the_servers_log_level():
    from server_ext.wsgi import _log_level

    root = logging.getLogger()
    before = root.level
    try:
        root.setLevel(logging.WARNING)
        assert _log_level() == "warning"
        root.setLevel(logging.DEBUG)
        assert _log_level() == "debug"
    finally:
        root.setLevel(before)


@pytest.mark.parametrize("cli,prog,var,default", CLIS)
def test_a_missing_config_names_the_installed_example(cli, prog, var, default, tmp_path, monkeypatch, capsys):
    kind = "node" if cli is node_cli else "server"
    example = tmp_path / "share" / "doc" / "vpnagent" / "examples" / f"{kind}.yaml"
    example.parent.mkdir(parents=True)
    example.write_text("# example\n")
    monkeypatch.setattr("sys.prefix", str(tmp_path))
    monkeypatch.setenv(var, str(tmp_path / "missing.yaml"))
    assert cli.main(["status"] if cli is node_cli else ["migrate"]) == 2
    assert f"(example: {example})" in capsys.readouterr().err


def test_a_new_subcommand_gets_the_shared_options_and_may_define_its_own_config():
    """How other subcommands slot in: made with add_subcommands they accept the shared
    options; one that means something else by --config (e.g. where to write one) keeps its own."""
    from vpnshared.cli import add_subcommands, top_parser

    option = ConfigOption("/etc/x.yaml", "X_CONFIG", "x config", "write one")
    parser = top_parser("x", "test", option)
    sub = add_subcommands(parser, option, dest="cmd", required=True)
    sub.add_parser("plain")
    own = sub.add_parser("join")
    own.add_argument("--config", dest="output", default="/etc/x-out.yaml")
    args = parser.parse_args(["plain", "--log-level", "debug", "-c", "/a.yaml"])
    assert (args.log_level, args.config) == ("debug", "/a.yaml")
    args = parser.parse_args(["--config", "/a.yaml", "join", "--config", "/b.yaml", "-v"])
    assert (args.config, args.output, args.log_level) == ("/a.yaml", "/b.yaml", "debug")



def test_a_subcommands_own_config_option_leaves_the_others_theirs():
    """`vpnagent join --config` means where to write; resolving that conflict must not take
    --config away from the subcommands made before or after it (argparse shares a parent's
    actions between its children)."""
    from vpnshared.cli import ConfigOption, add_subcommands, top_parser

    option = ConfigOption("/etc/x.yaml", "X_CONFIG", "x config", "write one")
    parser = top_parser("x", "x", option)
    sub = add_subcommands(parser, option, dest="cmd")
    sub.add_parser("a")
    own = sub.add_parser("b")
    own.add_argument("--config", help="where to write")
    sub.add_parser("c")
    for name in ("a", "c"):
        assert parser.parse_args([name, "--config", "/y.yaml"]).config == "/y.yaml"
    assert parser.parse_args(["b", "--config", "/z.yaml"]).config == "/z.yaml"
