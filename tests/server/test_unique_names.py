"""Names the store keeps unique (organisations, collaborations, nodes): a second one of the
same name is refused with one line naming the name, the one that has it and what to do,
exit status 2, and nothing in the store changes. Through the CLI on SQLite, and through
the store on both backends."""
from __future__ import annotations

import pytest
import yaml
from sqlalchemy import select

from server_ext import store as store_module
from server_ext.cli import main
from server_ext.store import Collaboration, Node, Organization, Store, StoreError, User


def _rows(store: Store) -> tuple:
    with store.session() as s:
        return tuple(sorted((type(o).__name__, o.id, o.name) for model in (Organization, Collaboration, Node, User)
                            for o in s.scalars(select(model))))


def test_duplicate_names_through_the_cli_are_one_line_exit_2_and_change_nothing(tmp_path, capsys):
    cfg = tmp_path / "server.yaml"
    cfg.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "data")}))
    c = ["--config", str(cfg)]
    for argv in (["add-organization", *c, "hospital-a"], ["add-organization", *c, "hospital-b"],
                 ["add-collaboration", *c, "study", "--org", "1", "--org", "2"],
                 ["add-node", *c, "--org", "1", "--collaboration", "1", "node-a"]):
        assert main(argv) == 0
    capsys.readouterr()
    store = Store(f"sqlite:///{tmp_path / 'data' / 'store.db'}")
    before = _rows(store)
    for argv, line in [
        (["add-organization", *c, "hospital-a"],
         "organisation name 'hospital-a' is taken by organisation 1; choose another name"),
        (["add-collaboration", *c, "study", "--org", "1"],
         "collaboration name 'study' is taken by collaboration 1; choose another name"),
        (["add-node", *c, "--org", "2", "--collaboration", "1", "node-a"],
         "node name 'node-a' is taken by node 1; choose another name"),
    ]:
        assert main(argv) == 2, argv
        out = capsys.readouterr()
        assert out.err.startswith(f"vpnagent-server: {line}"), out.err
        assert len(out.err.strip().splitlines()) == 1 and "IntegrityError" not in out.err and out.out == ""
    assert _rows(store) == before
    store.close()


@pytest.fixture
def store(database_url):
    s = Store(database_url)
    yield s
    s.close()


def test_the_store_refuses_taken_names_on_every_backend(store):
    a = store.create_organization("a")
    b = store.create_organization("b")
    collab = store.create_collaboration("c", [a.id, b.id])
    store.create_node(a.id, collab.id, "n")
    before = _rows(store)
    with pytest.raises(StoreError, match=rf"organisation name 'a' is taken by organisation {a.id}"):
        store.create_organization("a")
    with pytest.raises(StoreError, match=rf"collaboration name 'c' is taken by collaboration {collab.id}"):
        store.create_collaboration("c", [a.id])
    with pytest.raises(StoreError, match="node name 'n' is taken by node"):
        store.create_node(b.id, collab.id, "n")
    assert _rows(store) == before


def test_a_name_taken_between_the_check_and_the_insert_gets_the_same_message(store, monkeypatch):
    """Two admins adding the same name at once: the unique index refuses the second insert,
    and that becomes the same StoreError, not the driver's IntegrityError."""
    store.create_organization("a")
    before = _rows(store)
    monkeypatch.setattr(store_module, "_name_is_free", lambda *args: None)  # as if the other insert came later
    with pytest.raises(StoreError, match="organisation name 'a' is taken by another organisation; choose another"):
        store.create_organization("a")
    assert _rows(store) == before
