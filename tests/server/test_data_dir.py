"""The server's state is readable by its user only, whatever the umask: the data directory
0700, store.db (and its -wal/-shm) 0600, the secret and every private key 0600. A data
directory or store found with wider rights is tightened, with a warning. Real files, real
modes."""
from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest
import yaml

from server_ext.cli import main


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def open_umask():
    """The umask of a careless shell: new files 0666, new directories 0777."""
    old = os.umask(0)
    yield
    os.umask(old)


def config(tmp_path: Path) -> list[str]:
    cfg = tmp_path / "server.yaml"
    cfg.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "srv" / "data")}))
    return ["--config", str(cfg)]


def test_first_command_makes_the_data_dir_0700_and_the_store_0600(tmp_path, open_umask):
    c = config(tmp_path)
    assert main(["add-organization", *c, "hospital-a"]) == 0
    data = tmp_path / "srv" / "data"
    assert mode(data) == 0o700
    assert mode(data / "store.db") == 0o600
    assert main(["migrate", *c]) == 0  # the secret, the PKI and the OpenVPN files
    assert mode(data / "secret") == 0o600
    assert mode(data / "pki") == 0o700
    for key in ("ca.key", "server.key", "tls-crypt-v2-server.key"):
        assert mode(data / "pki" / key) == 0o600, key
    assert mode(data / "openvpn" / "server.conf") == 0o600
    for extra in ("store.db-wal", "store.db-shm"):  # present while a connection is open
        if (data / extra).exists():
            assert mode(data / extra) == 0o600


def test_wider_rights_found_are_tightened_with_a_warning(tmp_path, caplog):
    data = tmp_path / "srv" / "data"
    data.mkdir(parents=True)
    os.chmod(data, 0o755)
    (data / "store.db").touch()
    os.chmod(data / "store.db", 0o644)
    c = config(tmp_path)
    with caplog.at_level(logging.WARNING, logger="server_ext.datadir"):
        assert main(["add-organization", *c, "hospital-a"]) == 0
    assert mode(data) == 0o700 and mode(data / "store.db") == 0o600
    warnings = [r.getMessage() for r in caplog.records if r.name == "server_ext.datadir"]
    assert f"data_dir {data} had mode 0755 (others could read it): tightened to 0700" in warnings
    assert f"the store {data / 'store.db'} had mode 0644 (others could read it): tightened to 0600" in warnings
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="server_ext.datadir"):
        assert main(["add-organization", *c, "hospital-b"]) == 0
    assert not [r for r in caplog.records if r.name == "server_ext.datadir"], "nothing to tighten the second time"


def test_a_data_dir_that_is_a_file_is_refused_and_left_alone(tmp_path, capsys):
    (tmp_path / "srv").mkdir()
    (tmp_path / "srv" / "data").write_text("not a directory\n")
    assert main(["add-organization", *config(tmp_path), "o"]) == 2
    err = capsys.readouterr().err
    assert "'data_dir' is " in err and "not a directory" in err, err
    assert (tmp_path / "srv" / "data").read_text() == "not a directory\n"
