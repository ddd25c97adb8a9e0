"""The container contract a run gets: ours (VPNAGENT_*) or vantage6's (encoded variables,
input/output/token files, requested databases only). The real vantage6 wrapper reading it
runs in tests/integration/test_vantage6.py."""
import json

import pytest

from vpnagent.config import ConfigError, Database, parse_config
from vpnagent.contract import ContractError, RunIdentity, decode_env, encode_env, plan

IDENT = RunIdentity(run_id=7, task_id=3, organization_id=2, collaboration_id=1, image="vpnagent/x:1")
PROXY = "http://172.28.0.1:8765/api"


def test_the_vpnagent_contract_is_unchanged():
    p = plan(None, IDENT, {"method": "x"}, "tok", PROXY, None, ())
    assert p.env == {"VPNAGENT_SERVER_URL": PROXY, "VPNAGENT_TOKEN": "tok", "VPNAGENT_RUN_ID": "7",
                     "VPNAGENT_TASK_ID": "3", "VPNAGENT_ORGANIZATION_ID": "2", "VPNAGENT_COLLABORATION_ID": "1",
                     "VPNAGENT_IMAGE": "vpnagent/x:1", "VPNAGENT_INPUT_FILE": "/mnt/run/input.json",
                     "VPNAGENT_OUTPUT_FILE": "/mnt/run/output.json"}
    assert json.loads(p.files["input.json"]) == {"method": "x"}
    assert p.output_name == "output.json" and p.run_mounts == (("", "/mnt/run"),) and p.binds == {}
    assert plan("vpnagent", IDENT, None, "tok", PROXY, None, ()) == plan(None, IDENT, None, "tok", PROXY, None, ())


def test_env_values_are_encoded_like_the_vantage6_node():
    # vantage6-node 4.13.7's TaskRunner._encode_environment_variables documents _encode("abc") == "MFRGG!!!"
    assert encode_env("abc") == "MFRGG!!!"
    for value in ("", "http://172.28.0.1", "/api", "a=b,c d", "ünï"):
        assert decode_env(encode_env(value)) == value


def test_the_vantage6_contract_gives_its_variables_and_files():
    p = plan("vantage6", IDENT, {"method": "central", "kwargs": {}}, "tok.en", PROXY, [], ())
    env = {k: decode_env(v) for k, v in p.env.items()}
    assert env == {"INPUT_FILE": "/mnt/data/run/input", "OUTPUT_FILE": "/mnt/data/run/output",
                   "TOKEN_FILE": "/mnt/data/run/token", "TEMPORARY_FOLDER": "/mnt/tmp",
                   "HOST": "http://172.28.0.1", "PORT": "8765", "API_PATH": "/api",
                   "USER_REQUESTED_DATABASE_LABELS": "", "DB_LABELS": ""}
    assert json.loads(p.files["input"]) == {"method": "central", "kwargs": {}}
    assert p.files["token"] == b"tok.en"
    assert p.output_name == "output"
    assert p.run_mounts == (("", "/mnt/data/run"), ("tmp", "/mnt/tmp"))


def test_only_the_requested_databases_are_mounted_read_only(tmp_path):
    dbs = (Database("default", str(tmp_path / "data.csv"), "csv", "file", {"sep": ";"}),
           Database("images", str(tmp_path / "imgs"), "other", "dir"),
           Database("omop", "postgresql://db.local/omop", "omop", "uri"))
    p = plan("vantage6", IDENT, {}, "t", PROXY, [{"label": "default"}, {"label": "omop", "parameters": "{}"}], dbs)
    env = {k: decode_env(v) for k, v in p.env.items()}
    assert env["USER_REQUESTED_DATABASE_LABELS"] == "default,omop"
    assert env["DEFAULT_DATABASE_URI"] == "/mnt/data/data.csv" and env["DEFAULT_DATABASE_TYPE"] == "csv"
    assert env["DEFAULT_DB_PARAM_SEP"] == ";"
    assert env["OMOP_DATABASE_URI"] == "postgresql://db.local/omop"
    assert not any(k.startswith("IMAGES_") for k in env)
    assert p.binds == {str(tmp_path / "data.csv"): ("/mnt/data/data.csv", True)}


def test_an_unknown_database_or_contract_fails_the_run_with_the_reason():
    dbs = (Database("default", "/x.csv", "csv", "file"),)
    with pytest.raises(ContractError, match=r"database 'secret'.*its databases: default"):
        plan("vantage6", IDENT, {}, "t", PROXY, [{"label": "secret"}], dbs)
    with pytest.raises(ContractError, match="unknown container contract 'kubeflow'"):
        plan("kubeflow", IDENT, {}, "t", PROXY, [], dbs)


BASE = {"name": "n1", "server_url": "https://s/api", "api_key": "k", "data_dir": "d"}


def test_databases_in_the_node_config(tmp_path):
    (tmp_path / "data.csv").write_text("value\n1\n")
    (tmp_path / "dir").mkdir()
    cfg = parse_config({**BASE, "databases": [
        {"label": "default", "uri": "data.csv", "type": "csv", "env": {"sep": ","}},
        {"label": "folder", "uri": str(tmp_path / "dir"), "type": "other"},
        {"label": "omop", "uri": "postgresql://h/db", "type": "omop"}]}, base_dir=tmp_path)
    assert cfg.databases == (Database("default", str(tmp_path / "data.csv"), "csv", "file", {"sep": ","}),
                             Database("folder", str(tmp_path / "dir"), "other", "dir"),
                             Database("omop", "postgresql://h/db", "omop", "uri"))


@pytest.mark.parametrize("entry, message", [
    ({"label": "Default", "uri": "postgresql://h", "type": "csv"}, "label 'Default' must be"),
    ({"label": "a", "uri": "postgresql://h", "type": "xml"}, "type 'xml' must be one of"),
    ({"label": "a", "uri": "missing.csv", "type": "csv"}, "missing.csv does not exist"),
    ({"label": "a", "uri": "", "type": "csv"}, "uri must be"),
    ({"label": "a", "uri": "postgresql://h", "type": "csv", "password": "x"}, "unknown key"),
    ({"label": "a", "uri": "postgresql://h", "type": "csv", "env": {"bad key": 1}}, "env must map"),
    ("default", "must be a mapping"),
])
def test_bad_database_entries_name_the_entry_and_the_fix(tmp_path, entry, message):
    with pytest.raises(ConfigError, match=message):
        parse_config({**BASE, "databases": [entry]}, base_dir=tmp_path)


def test_a_label_used_twice_is_refused(tmp_path):
    entry = {"label": "a", "uri": "postgresql://h", "type": "sql"}
    with pytest.raises(ConfigError, match="used twice"):
        parse_config({**BASE, "databases": [entry, entry]}, base_dir=tmp_path)
