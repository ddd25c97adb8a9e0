"""Token scoping and hostile input against the real app. Every rejected request is
checked to leave the store exactly as it was."""
import jwt
import pytest

from server_ext.tokens import TokenService


@pytest.fixture
def task(world):
    for i in range(3):
        world.client.get("/api/vpn", headers=world.node_headers(i))
    return world.create_task([world.orgs[0], world.orgs[1]])


def rejected(world, method, url, status, words="", **kwargs):
    """Send a request that must fail with `status` and change nothing."""
    before = world.snapshot()
    r = getattr(world.client, method)(url, **kwargs)
    assert r.status_code == status, (r.status_code, r.get_json())
    assert r.is_json and r.json["msg"], "errors are JSON with a message"
    assert words.lower() in r.json["msg"].lower(), r.json["msg"]
    assert world.snapshot() == before, "a rejected request changed the store"
    return r


# ------------------------------------------------------------------ tokens
def test_missing_garbage_foreign_and_expired_tokens_are_401(world):
    rejected(world, "get", "/api/node/self", 401, "Authorization")
    rejected(world, "get", "/api/node/self", 401, "invalid", headers={"Authorization": "Bearer x.y.z"})
    foreign = TokenService("s" * 40).issue("node", {"node_id": 1})
    rejected(world, "get", "/api/node/self", 401, "invalid", headers={"Authorization": f"Bearer {foreign}"})
    secret = world.app.extensions["vpnagent"].tokens.secret
    expired = TokenService(secret, {"node": -60}).issue("node", {"node_id": 1, "client_type": "node"})
    rejected(world, "get", "/api/node/self", 401, "expired", headers={"Authorization": f"Bearer {expired}"})
    rejected(world, "post", "/api/token/node", 401, "unknown", json={"api_key": "nope"})
    rejected(world, "post", "/api/token/user", 401, "unknown", json={"api_key": world.node_keys[0]})


def _lifetime(token: str) -> int:
    claims = jwt.decode(token, options={"verify_signature": False})
    return claims["exp"] - claims["iat"]


def test_container_tokens_live_6_hours_by_default(world, task):
    assert _lifetime(world.container_headers(0, task["runs"][0]["id"])["Authorization"][7:]) == 21600


def test_container_token_lifetime_is_the_configured_one(tmp_path, database_url):
    from .conftest import build_world

    w = build_world(tmp_path, database_url, VPNAGENT_CONTAINER_TOKEN_SECONDS=5)
    try:
        run1 = w.create_task([w.orgs[0]])["runs"][0]["id"]
        assert _lifetime(w.container_headers(0, run1)["Authorization"][7:]) == 5
        assert _lifetime(w.node_headers(0)["Authorization"][7:]) == 15 * 60, "node tokens keep theirs"
    finally:
        w.store.close()


def test_container_token_seconds_reaches_the_app_from_the_server_config(tmp_path):
    from server_ext import create_app
    from server_ext.cli import flask_config, load_server_config

    path = tmp_path / "server.yaml"
    path.write_text(f"data_dir: {tmp_path / 'server'}\ncontainer_token_seconds: 5\n")
    cfg = flask_config(load_server_config(path))
    assert cfg["VPNAGENT_CONTAINER_TOKEN_SECONDS"] == 5
    app = create_app({**cfg, "VPNAGENT_DATABASE_URL": f"sqlite:///{tmp_path / 'store.db'}"}, migrate=True)
    assert app.extensions["vpnagent"].tokens.lifetimes["container"] == 5
    app.extensions["vpnagent"].store.close()


@pytest.mark.parametrize("value", [1, 0, -5, 604_801, True, 5.0, "5"])
def test_container_token_seconds_out_of_range_is_refused_naming_the_fix(tmp_path, value):
    from server_ext import create_app
    from server_ext.config import ServerConfigError

    with pytest.raises(ServerConfigError, match=r"container_token_seconds is .*give whole seconds from 2 to 604800"):
        create_app({"VPNAGENT_DATA_DIR": str(tmp_path), "VPNAGENT_CONTAINER_TOKEN_SECONDS": value,
                    "VPNAGENT_DATABASE_URL": f"sqlite:///{tmp_path / 'store.db'}"})


def test_each_token_kind_only_opens_its_own_endpoints(world, task):
    run1 = task["runs"][0]["id"]
    ch = world.container_headers(0, run1)
    rejected(world, "get", "/api/vpn/algorithm/addresses", 403, "node token", headers=world.node_headers(0))
    rejected(world, "get", "/api/vpn/algorithm/addresses", 403, "user token", headers=world.user_headers())
    rejected(world, "get", "/api/vpn", 403, "container token", headers=ch)
    rejected(world, "get", "/api/vpn", 403, "user token", headers=world.user_headers())
    # a container cannot register ports (or read the run queue) even for its own run
    rejected(world, "post", "/api/port", 403, "container token", headers=ch, json={"run_id": run1, "port": 6000})
    # GET /run is the node's run queue only for node tokens: others get a task's runs in
    # vantage6's shape, without input or image
    rejected(world, "get", "/api/run", 400, "task_id", headers=ch)
    runs = world.client.get(f"/api/run?task_id={task['id']}", headers=ch).json["data"]
    assert [r["id"] for r in runs] == [r["id"] for r in task["runs"]]
    assert not {"input", "image"} & set(runs[0])
    rejected(world, "post", "/api/token/container", 403, "container token", headers=ch, json={"run_id": run1})


def test_container_token_dies_with_its_run(world, task):
    run1 = task["runs"][0]["id"]
    ch = world.container_headers(0, run1)
    assert world.client.get("/api/vpn/algorithm/addresses", headers=ch).status_code == 200
    assert world.client.patch(f"/api/run/{run1}", headers=world.node_headers(0), json={"status": "failed"}).status_code == 200
    rejected(world, "get", "/api/vpn/algorithm/addresses", 401, "run has ended", headers=ch)
    rejected(world, "post", "/api/token/container", 400, "failed", headers=world.node_headers(0), json={"run_id": run1})


def test_container_subtasks_stay_in_collaboration_and_image(world, task):
    run1 = task["runs"][0]["id"]
    ch = world.container_headers(0, run1)
    base = {"collaboration_id": world.collab, "organizations": [world.orgs[1]], "image": "img:1"}
    rejected(world, "post", "/api/task", 403, "may not create", headers=ch,
             json={**base, "collaboration_id": world.other_collab, "organizations": [world.orgs[3]]})
    rejected(world, "post", "/api/task", 403, "own image", headers=ch, json={**base, "image": "evil:latest"})
    sub = world.create_task([world.orgs[1]], headers=ch)
    assert sub["parent_id"] == task["id"]


def test_users_only_reach_their_collaborations(world, task):
    other = world.user_headers(world.other_user_key)
    rejected(world, "post", "/api/task", 403, "may not create", headers=other,
             json={"collaboration_id": world.collab, "organizations": [world.orgs[0]], "image": "img:1"})
    rejected(world, "get", f"/api/task/{task['id']}", 403, "not in", headers=other)
    rejected(world, "get", f"/api/organization?collaboration_id={world.collab}", 403, "not in", headers=other)
    assert world.client.get(f"/api/task/{task['id']}", headers=world.user_headers()).json["status"] == "pending"


def test_nodes_only_touch_their_own_runs(world, task):
    run2 = task["runs"][1]["id"]  # org2's run, node n2
    n1 = world.node_headers(0)
    rejected(world, "post", "/api/token/container", 403, "another node", headers=n1, json={"run_id": run2})
    rejected(world, "patch", f"/api/run/{run2}", 403, "another node", headers=n1, json={"status": "active"})
    rejected(world, "post", "/api/port", 403, "another node", headers=n1, json={"run_id": run2, "port": 6000})
    rejected(world, "delete", f"/api/port?run_id={run2}", 403, "another node", headers=n1)
    rejected(world, "post", "/api/token/container", 404, "does not exist", headers=n1, json={"run_id": 999})
    rejected(world, "patch", "/api/run/999", 404, "does not exist", headers=n1, json={"status": "active"})
    assert [r["id"] for r in world.client.get("/api/run", headers=n1).json["runs"]] == [task["runs"][0]["id"]]


# ------------------------------------------------------------------ VPN configs
def test_vpn_update_refuses_others_configs_and_garbage(world, tmp_path):
    from server_ext.pki import PKI

    own = world.client.get("/api/vpn", headers=world.node_headers(0)).json["ovpn_config"]
    other = world.client.get("/api/vpn", headers=world.node_headers(1)).json["ovpn_config"]
    n1 = world.node_headers(0)
    rejected(world, "post", "/api/vpn/update", 403, "another node", headers=n1, json={"vpn_config": other})
    rejected(world, "post", "/api/vpn/update", 400, "no <cert> block", headers=n1, json={"vpn_config": "garbage"})
    foreign = PKI(tmp_path / "foreign").issue_node_cert("node-1").cert_pem
    rejected(world, "post", "/api/vpn/update", 403, "not issued", headers=n1,
             json={"vpn_config": f"client\n<cert>\n{foreign}</cert>\n"})
    rejected(world, "post", "/api/vpn/update", 400, "required", headers=n1, json={})
    rejected(world, "post", "/api/vpn/update", 400, "wrong type", headers=n1, json={"vpn_config": 5})
    rejected(world, "post", "/api/vpn/update", 413, "64 KiB", headers=n1, json={"vpn_config": own + "x" * 70000})
    renewed = world.client.post("/api/vpn/update", headers=n1, json={"vpn_config": own})
    assert renewed.status_code == 200 and renewed.json["ovpn_config"] != own
    rejected(world, "post", "/api/vpn/update", 403, "revoked", headers=n1, json={"vpn_config": own})


def test_issued_configs_pass_the_node_check_pin_the_server_and_name_the_node(world):
    import re
    import stat

    from server_ext.tlscrypt import VERIFY_HOOK, VERIFY_HOOK_NAME, unwrap_client_key
    from vpnagent.ovpncheck import check_ovpn

    state = world.app.extensions["vpnagent"]
    n1 = world.node_headers(0)
    first = world.client.get("/api/vpn", headers=n1).json["ovpn_config"]
    second = world.client.post("/api/vpn/update", headers=n1, json={"vpn_config": first}).json["ovpn_config"]
    node_id = world.client.get("/api/node/self", headers=n1).json["id"]
    keys = []
    for conf in (first, second):
        check_ovpn(conf)
        assert "verify-x509-name vpnagent-openvpn-server name" in conf.splitlines()
        keys.append(re.search(r"<tls-crypt-v2>\n(.*?)</tls-crypt-v2>", conf, re.S).group(1))
        key = unwrap_client_key(state.pki.tls_crypt_v2_server_key(), keys[-1])
        assert (key.metadata_type, key.metadata) == (0, f"node-{node_id}".encode())
    assert keys[0] != keys[1]  # a fresh client key with every config
    hook = state.files.dir / VERIFY_HOOK_NAME
    assert hook.read_text() == VERIFY_HOOK and stat.S_IMODE(hook.stat().st_mode) == 0o755


def test_vpn_ip_is_stable_across_configs_and_unique(world):
    n1 = world.node_headers(0)
    world.client.get("/api/vpn", headers=n1)
    ip = world.client.get("/api/node/self", headers=n1).json["vpn_ip"]
    world.client.get("/api/vpn", headers=n1)
    assert world.client.get("/api/node/self", headers=n1).json["vpn_ip"] == ip
    world.client.get("/api/vpn", headers=world.node_headers(1))
    assert world.client.get("/api/node/self", headers=world.node_headers(1)).json["vpn_ip"] != ip


# ------------------------------------------------------------------ hostile bodies
@pytest.mark.parametrize("payload, status, words", [
    ("{not json", 400, "JSON object"),
    ([1, 2], 400, "JSON object"),
    ({"organizations": [1], "image": "i"}, 400, "collaboration_id"),
    ({"collaboration_id": "1", "organizations": [1], "image": "i"}, 400, "wrong type"),
    ({"collaboration_id": True, "organizations": [1], "image": "i"}, 400, "wrong type"),
    ({"collaboration_id": 1, "organizations": "1", "image": "i"}, 400, "wrong type"),
    ({"collaboration_id": 1, "organizations": [], "image": "i"}, 400, "non-empty"),
    ({"collaboration_id": 1, "organizations": ["x"], "image": "i"}, 400, "non-empty"),
    ({"collaboration_id": 1, "organizations": [1], "image": "i", "evil": 1}, 400, "unknown field"),
    ({"collaboration_id": 99, "organizations": [1], "image": "i"}, 404, "does not exist"),
    ({"collaboration_id": 1, "organizations": [1, 4], "image": "i"}, 400, "not in collaboration"),
    ({"collaboration_id": 1, "organizations": [1], "image": "i" * 600}, 400, "too long"),
])
def test_bad_task_bodies(world, payload, status, words):
    kwargs = {"data": payload, "content_type": "application/json"} if isinstance(payload, str) else {"json": payload}
    rejected(world, "post", "/api/task", status, words, headers=world.user_headers(), **kwargs)


def test_oversized_body_is_413(world):
    rejected(world, "post", "/api/task", 413, "64 KiB", headers=world.user_headers(),
             data=b"{" + b" " * (65 * 1024) + b"}", content_type="application/json")


def test_bad_port_and_run_updates(world, task):
    run1 = task["runs"][0]["id"]
    n1 = world.node_headers(0)
    for port in (0, 70000):
        rejected(world, "post", "/api/port", 400, "1-65535", headers=n1, json={"run_id": run1, "port": port})
    rejected(world, "post", "/api/port", 400, "1-64", headers=n1, json={"run_id": run1, "port": 6000, "label": "x" * 65})
    rejected(world, "delete", "/api/port", 400, "required", headers=n1)
    rejected(world, "delete", "/api/port?run_id=abc", 400, "integer", headers=n1)
    rejected(world, "patch", f"/api/run/{run1}", 400, "status must be", headers=n1, json={"status": "exploded"})
    rejected(world, "patch", f"/api/run/{run1}", 400, "status must be", headers=n1, json={"status": "pending"})
    rejected(world, "get", "/api/run?state=bogus", 400, "state must be", headers=n1)
    assert world.client.post("/api/port", headers=n1, json={"run_id": run1, "port": 6000}).status_code == 201
    assert world.client.patch(f"/api/run/{run1}", headers=n1, json={"status": "completed", "result": [1]}).status_code == 200
    rejected(world, "patch", f"/api/run/{run1}", 409, "already completed", headers=n1, json={"status": "active"})
    rejected(world, "post", "/api/port", 400, "completed", headers=n1, json={"run_id": run1, "port": 6001})
    assert world.store.count_ports() == 0, "a finished run keeps no ports"


def test_registering_a_port_again_is_a_no_op(world, task):
    """A node repeats a registration whose answer it never got (the server died mid-request):
    the repeat confirms the port, it does not add a second record."""
    run1 = task["runs"][0]["id"]
    n1 = world.node_headers(0)
    first = world.client.post("/api/port", headers=n1, json={"run_id": run1, "port": 6000, "label": "echo"})
    assert first.status_code == 201, first.json
    again = world.client.post("/api/port", headers=n1, json={"run_id": run1, "port": 6000, "label": "echo"})
    assert again.status_code == 200 and again.json == first.json
    assert world.store.count_ports() == 1


def test_a_repeated_final_report_is_200_and_the_first_one_stands(world, task):
    """A node delivers final reports at least once: the repeat confirms, it does not overwrite."""
    run1 = task["runs"][0]["id"]
    n1 = world.node_headers(0)
    first = world.client.patch(f"/api/run/{run1}", headers=n1,
                               json={"status": "completed", "result": [1], "log": "first"})
    assert first.status_code == 200, first.json
    stored = world.snapshot()
    finished = world.client.get(f"/api/run/{run1}", headers=world.user_headers()).json["finished_at"]
    again = world.client.patch(f"/api/run/{run1}", headers=n1,
                               json={"status": "completed", "result": [2], "log": "second"})
    assert again.status_code == 200, again.json
    assert again.json == first.json and again.json["status"] == "completed"
    assert world.snapshot() == stored, "a repeated final report changed the store"
    run = world.client.get(f"/api/run/{run1}", headers=world.user_headers()).json
    assert run["log"] == "first" and run["finished_at"] == finished
    assert world.client.get(f"/api/result/{run1}", headers=world.user_headers()).json["result"] == "WzFd"  # [1]


def test_a_different_status_after_a_final_one_is_409(world, task):
    run1, run2 = (r["id"] for r in task["runs"])
    n1, n2 = world.node_headers(0), world.node_headers(1)
    assert world.client.patch(f"/api/run/{run1}", headers=n1, json={"status": "completed"}).status_code == 200
    rejected(world, "patch", f"/api/run/{run1}", 409, "already completed", headers=n1, json={"status": "failed"})
    assert world.client.patch(f"/api/run/{run2}", headers=n2, json={"status": "failed", "log": "x"}).status_code == 200
    assert world.client.patch(f"/api/run/{run2}", headers=n2, json={"status": "failed"}).status_code == 200
    rejected(world, "patch", f"/api/run/{run2}", 409, "already failed", headers=n2, json={"status": "completed"})
    rejected(world, "patch", f"/api/run/{run2}", 409, "already failed", headers=n2, json={"status": "active"})


# ------------------------------------------------------------------ POST /node/runs
LOST = "no longer has this run"


def _run(world, run_id: int) -> dict:
    return world.client.get(f"/api/run/{run_id}", headers=world.user_headers()).json


def test_node_runs_fails_the_taken_runs_its_node_no_longer_has(world, task):
    run1, run2 = (r["id"] for r in task["runs"])  # n1's and n2's
    listed, starting, waiting = (world.create_task([world.orgs[0]])["runs"][0]["id"] for _ in range(3))
    n1, n2 = world.node_headers(0), world.node_headers(1)
    for run_id, status in ((run1, "active"), (listed, "active"), (starting, "initializing")):
        assert world.client.patch(f"/api/run/{run_id}", headers=n1, json={"status": status}).status_code == 200
    world.client.patch(f"/api/run/{run1}", headers=n1, json={"status": "active", "log": "started"})
    assert world.client.patch(f"/api/run/{run2}", headers=n2, json={"status": "active"}).status_code == 200
    for headers, run_id in ((n1, run1), (n1, listed), (n2, run2)):
        assert world.client.post("/api/port", headers=headers, json={"run_id": run_id, "port": 6000}).status_code == 201
    token = world.container_headers(0, run1)

    r = world.client.post("/api/node/runs", headers=n1, json={"runs": [listed, 999]})
    assert r.status_code == 200, r.json
    assert r.json == {"failed": [run1, starting]}
    lost = _run(world, run1)
    assert lost["status"] == "failed" and lost["finished_at"]
    assert lost["log"].startswith("started\nvpnagent: node n1 " + LOST) and lost["log"].endswith("by the server")
    assert _run(world, starting)["log"] == f"vpnagent: node n1 {LOST} (its agent lost track of it, e.g. its " \
        "containers were removed while the agent was down); marked failed by the server"
    assert world.store.count_ports() == 2, "the lost run's port is gone, the others' stay"
    rejected(world, "get", "/api/vpn/algorithm/addresses", 401, "run has ended", headers=token)
    assert _run(world, listed)["status"] == "active", "a listed run is untouched"
    assert _run(world, waiting)["status"] == "pending", "a pending run was never taken: untouched"
    assert _run(world, run2)["status"] == "active", "another node's run is untouched"

    before = world.snapshot()
    assert world.client.post("/api/node/runs", headers=n1, json={"runs": [listed]}).json == {"failed": []}
    assert world.snapshot() == before, "the same list again changes nothing"
    assert world.client.patch(f"/api/run/{run1}", headers=n1, json={"status": "failed"}).status_code == 200
    rejected(world, "patch", f"/api/run/{run1}", 409, "already failed", headers=n1, json={"status": "completed"})


def test_node_runs_with_nothing_taken_fails_nothing(world, task):
    r = world.client.post("/api/node/runs", headers=world.node_headers(0), json={"runs": []})
    assert r.status_code == 200 and r.json == {"failed": []}
    assert {run["status"] for run in task["runs"]} == {"pending"}


@pytest.mark.parametrize("payload, words", [
    ({}, "field 'runs' is required"),
    ({"runs": None}, "field 'runs' is required"),
    ({"runs": 1}, "wrong type"),
    ({"runs": {"1": 1}}, "wrong type"),
    ({"runs": [True]}, "list of integer ids"),
    ({"runs": [1, False]}, "list of integer ids"),
    ({"runs": ["1"]}, "list of integer ids"),
    ({"runs": [1.0]}, "list of integer ids"),
    ({"runs": [None]}, "list of integer ids"),
    ({"runs": [-1]}, "from 0 to"),
    ({"runs": [2**31]}, "from 0 to"),
    ({"runs": [], "evil": 1}, "unknown field"),
    ([1, 2], "JSON object"),
])
def test_node_runs_bad_bodies_are_400(world, task, payload, words):
    n1 = world.node_headers(0)
    world.client.patch(f"/api/run/{task['runs'][0]['id']}", headers=n1, json={"status": "active"})
    rejected(world, "post", "/api/node/runs", 400, words, headers=n1, json=payload)


def test_node_runs_takes_at_most_100000_ids(tmp_path, database_url):
    from .conftest import build_world

    w = build_world(tmp_path, database_url, VPNAGENT_MAX_BODY=1024 * 1024)  # room for the list
    try:
        n1 = w.node_headers(0)
        rejected(w, "post", "/api/node/runs", 400, "at most 100000", headers=n1, json={"runs": [0] * 100_001})
        assert w.client.post("/api/node/runs", headers=n1, json={"runs": [0] * 100_000}).status_code == 200
    finally:
        w.store.close()


def test_node_runs_needs_a_node_token(world, task):
    run1 = task["runs"][0]["id"]
    rejected(world, "post", "/api/node/runs", 403, "container token", headers=world.container_headers(0, run1),
             json={"runs": []})
    rejected(world, "post", "/api/node/runs", 403, "user token", headers=world.user_headers(), json={"runs": []})
    rejected(world, "post", "/api/node/runs", 401, "Authorization", json={"runs": []})


def test_node_without_vpn_ip_cannot_register_ports(world):
    t = world.create_task([world.orgs[2]])
    rejected(world, "post", "/api/port", 409, "no VPN IP", headers=world.node_headers(2),
             json={"run_id": t["runs"][0]["id"], "port": 6000})


def test_unknown_endpoints_and_methods_answer_json(world):
    r = world.client.get("/api/nope")
    assert r.status_code == 404 and r.json["msg"]
    r = world.client.put("/api/vpn")
    assert r.status_code == 405 and r.json["msg"]


def test_removed_node_loses_key_token_certificates_and_runs(world, task):
    from cryptography import x509

    from server_ext.admin import remove_node
    from server_ext.pki import cert_from_ovpn

    state = world.app.extensions["vpnagent"]
    n1 = world.node_headers(0)
    cfg = world.client.get("/api/vpn", headers=n1).json["ovpn_config"]
    run1 = task["runs"][0]["id"]
    world.client.post("/api/port", headers=n1, json={"run_id": run1, "port": 6000})
    node_id = world.client.get("/api/node/self", headers=n1).json["id"]

    removal = remove_node(state, node_id)
    assert not removal.disconnected and "unreachable" in removal.note  # no OpenVPN server in this test
    assert world.client.get("/api/node/self", headers=n1).status_code == 401  # its token dies at once
    assert world.client.post("/api/token/node", json={"api_key": world.node_keys[0]}).status_code == 401
    serial = x509.load_pem_x509_certificate(cert_from_ovpn(cfg).encode()).serial_number
    crl = x509.load_pem_x509_crl((state.files.dir / "crl.pem").read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(serial) is not None
    assert not (state.files.dir / "ccd" / f"node-{node_id}").exists()
    t = world.client.get(f"/api/task/{task['id']}", headers=world.user_headers()).json
    assert t["runs"][0]["status"] == "failed" and world.store.count_ports() == 0
    assert t["runs"][1]["status"] == "pending"  # the other node's run is untouched


def test_several_openvpn_processes_get_nodes_spread_over_them(tmp_path, database_url):
    from .conftest import build_world

    w = build_world(tmp_path, database_url, VPNAGENT_OPENVPN_PROCESSES=2)
    try:
        files = w.app.extensions["vpnagent"].files
        configs = [w.client.get("/api/vpn", headers=w.node_headers(i)).json["ovpn_config"] for i in range(4)]
        ips = [w.client.get("/api/node/self", headers=w.node_headers(i)).json["vpn_ip"] for i in range(4)]
        assert ips == ["10.76.0.2", "10.76.128.2", "10.76.0.3", "10.76.128.3"]  # alternating halves
        for i, (ip, conf) in enumerate(zip(ips, configs)):
            process = 0 if ip.startswith("10.76.0.") else 1
            assert f"remote 127.0.0.1 {1194 + process}" in conf.splitlines()
            ccd = files.dir / ("ccd" if process == 0 else "ccd-1") / f"node-{i + 1}"
            assert ccd.read_text() == f"ifconfig-push {ip} 255.255.128.0\n"
            assert not (files.dir / ("ccd-1" if process == 0 else "ccd") / f"node-{i + 1}").exists()
        assert (files.dir / "server.conf").exists() and (files.dir / "server-1.conf").exists()
        # each process's verify hook looks in that process's own ccd directory
        assert any(line.endswith('tls-crypt-v2-verify.sh /etc/openvpn/vpnagent/ccd-1"')
                   for line in (files.dir / "server-1.conf").read_text().splitlines())
    finally:
        w.store.close()


def test_a_node_holds_one_valid_certificate_and_the_crl_lists_the_rest(world):
    from cryptography import x509
    from sqlalchemy import select

    from server_ext.pki import cert_from_ovpn
    from server_ext.store import Certificate

    def serial(conf: str) -> str:
        return str(x509.load_pem_x509_certificate(cert_from_ovpn(conf).encode()).serial_number)

    h = world.node_headers(0)
    first = world.client.get("/api/vpn", headers=h).json["ovpn_config"]
    second = world.client.get("/api/vpn", headers=h).json["ovpn_config"]  # e.g. a retry without VPN
    third = world.client.post("/api/vpn/update", headers=h, json={"vpn_config": second}).json["ovpn_config"]
    with world.store.session() as s:
        state = {c.serial: c.revoked_at is None for c in s.scalars(select(Certificate).where(Certificate.node_id == 1))}
    assert state == {serial(first): False, serial(second): False, serial(third): True}
    crl = x509.load_pem_x509_crl((world.app.extensions["vpnagent"].files.dir / "crl.pem").read_bytes())
    listed = {str(r.serial_number) for r in crl}
    assert {serial(first), serial(second)} <= listed and serial(third) not in listed
    # the spare from the retry cannot be renewed either
    r = world.client.post("/api/vpn/update", headers=h, json={"vpn_config": first})
    assert r.status_code == 403 and "revoked" in r.json["msg"]


def test_expired_revoked_certificates_leave_the_crl(world):
    import datetime as dt

    from server_ext.store import Certificate

    with world.store.session() as s:
        s.add(Certificate(node_id=1, serial="4242", not_after=dt.datetime(2020, 1, 1), revoked_at=dt.datetime(2019, 6, 1)))
        s.add(Certificate(node_id=1, serial="4343", not_after=dt.datetime(2999, 1, 1), revoked_at=dt.datetime(2019, 6, 1)))
    assert [serial for serial, _ in world.store.revoked_serials()] == [4343]


# ------------------------------------------------------------------ values the store cannot hold
HUGE = 2**70  # past SQLite's 64-bit integers; anything past 2**31 - 1 overflows PostgreSQL's
DEEP = "[" * 30000 + "]" * 30000  # 60 KB: under the body limit, far past the parser's recursion


def test_huge_ids_in_the_path_are_400_naming_the_parameter(world, task):
    n1, user = world.node_headers(0), world.user_headers()
    for number in (HUGE, 2**31):
        rejected(world, "patch", f"/api/run/{number}", 400, "path parameter 'run_id'", headers=n1,
                 json={"status": "active"})
        rejected(world, "get", f"/api/task/{number}", 400, "path parameter 'task_id'", headers=user)
        for path, name in ((f"/api/task/{number}/status", "task_id"), (f"/api/result/{number}", "run_id"),
                           (f"/api/run/{number}", "run_id"), (f"/api/organization/{number}", "organization_id"),
                           (f"/api/collaboration/{number}", "collaboration_id")):
            rejected(world, "get", path, 400, f"path parameter '{name}'", headers=user)
    assert world.client.get(f"/api/task/{2**31 - 1}", headers=user).status_code == 404  # the largest id is an id


@pytest.mark.parametrize("url, who", [
    ("/api/port?run_id={}", "node"), ("/api/node/peers?run_id={}", "node"),
    ("/api/organization?collaboration_id={}", "user"), ("/api/result?task_id={}", "user"),
    ("/api/run?task_id={}", "user"), ("/api/result?page={}&task_id=1", "user"), ("/api/run?page={}&task_id=1", "user"),
])
def test_huge_or_non_ascii_ids_in_the_query_are_400_naming_the_parameter(world, task, url, who):
    method = "delete" if url.startswith("/api/port") else "get"
    headers = world.node_headers(0) if who == "node" else world.user_headers()
    name = url.split("?")[1].split("=")[0]
    for raw in (str(HUGE), str(2**31), "99999999999", "\u00b2", "-1", "1.0"):
        rejected(world, method, url.format(raw), 400, f"query parameter '{name}'", headers=headers)


def test_huge_integers_in_json_fields_are_400_naming_the_field(world, task):
    run1 = task["runs"][0]["id"]
    n1, user = world.node_headers(0), world.user_headers()
    rejected(world, "post", "/api/token/container", 400, "field 'run_id'", headers=n1, json={"run_id": HUGE})
    rejected(world, "post", "/api/port", 400, "field 'run_id'", headers=n1, json={"run_id": HUGE, "port": 6000})
    rejected(world, "post", "/api/port", 400, "field 'port'", headers=n1, json={"run_id": run1, "port": HUGE})
    base = {"collaboration_id": world.collab, "organizations": [world.orgs[0]], "image": "img:1"}
    rejected(world, "post", "/api/task", 400, "field 'collaboration_id'", headers=user,
             json={**base, "collaboration_id": HUGE})
    rejected(world, "post", "/api/task", 400, "field 'organizations'", headers=user,
             json={**base, "organizations": [world.orgs[0], 2**31]})
    # inside free-form JSON (task input, run result) a big integer is just data
    assert world.create_task([world.orgs[0]], input={"n": HUGE})["id"]


DEEP_TARGETS = [("post", "/api/token/node", "none"), ("post", "/api/token/user", "none"),
                ("post", "/api/token/container", "node"), ("post", "/api/vpn/update", "node"),
                ("post", "/api/port", "node"), ("patch", "/api/run/{run}", "node"), ("post", "/api/task", "user")]


@pytest.mark.parametrize("method, url, who", DEEP_TARGETS)
@pytest.mark.parametrize("payload, words", [
    (DEEP, "nested deeper than 32"),
    ('{"result": ' + DEEP + "}", "nested deeper than 32"),
    ('{"api_key": 1e999, "run_id": 1}', "too large for a float"),
    ('{"api_key": NaN, "input": NaN}', "NaN"),
    ('{"api_key": Infinity}', "Infinity"),
    ('{"api_key": "a\\u0000b", "name": "a\\u0000b", "status": "a\\u0000b"}', "NUL character"),
    (b'{"api_key": "\xff"}', "not UTF-8"),
    ('{"api_key": ' + "9" * 5000 + "}", "not valid JSON"),
])
def test_bodies_the_store_or_parser_cannot_take_are_400_on_every_endpoint(world, task, method, url, who,
                                                                        payload, words):
    headers = {"none": {}, "node": world.node_headers(0), "user": world.user_headers()}[who]
    rejected(world, method, url.format(run=task["runs"][0]["id"]), 400, words, headers=headers,
             data=payload, content_type="application/json")


def test_json_nested_up_to_the_limit_is_accepted(world, task):
    n1 = world.node_headers(0)
    run1 = task["runs"][0]["id"]
    result = [[[["ok"]]]]
    for _ in range(27):
        result = {"r": result}  # 31 levels, 32 with the body object itself
    r = world.client.patch(f"/api/run/{run1}", headers=n1, json={"status": "completed", "result": result})
    assert r.status_code == 200, r.json
    assert r.json["id"] == run1


def test_nul_in_a_query_string_is_400(world, task):
    ch = world.container_headers(0, task["runs"][0]["id"])
    rejected(world, "get", "/api/vpn/algorithm/addresses?label=a%00b", 400, "query parameter 'label'", headers=ch)
    rejected(world, "get", "/api/vpn/algorithm/addresses?only_self=a%00b", 400, "query parameter 'only_self'",
             headers=ch)
