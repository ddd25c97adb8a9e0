"""Every shell command of README.md and docs/*.md, as a reader pastes it: the ones that can run
without Docker or root run here, in order per document, on a scratch "machine" (a temporary
directory standing in for /, with vpnagent "installed" at its /opt/vpnagent); the others are
in WHAT below with the reason and the test that covers them instead. A command that is in
none of its rows fails test_every_documented_command_is_classified, so a new command in the
docs is either made runnable here or listed with its reason."""
from __future__ import annotations

import json
import os
import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.docs_commands import REPO, Command, all_commands, commands, documents

# How a command is handled:
RUN = "run"            # runs here, in the scratch machine's working directory
CHECKOUT = "checkout"  # runs here, from the repository root (a developer's command)
SERVED = "served"      # runs here like RUN, against a real `vpnagent-server serve` on loopback (LiveServer)
DOCKER = "docker"      # needs only the local Docker engine: test_documented_docker_commands runs it
ELSEWHERE = "elsewhere"  # needs root, systemd, a network or a live server and nodes: not run; the reason says what covers it

# The one table: (pattern the command must match from its start, how, why). The pattern sees
# the command on one line, without comments, with the document's shell variables ($S, $C, $A)
# expanded and `/opt/vpnagent/bin/` and `.venv/bin/` dropped. First match wins.
WHAT: list[tuple[str, str, str]] = [
    (r"API=https://vpn\.example\.org:5000/api; CA=\S+/pki/ca\.crt$", SERVED,
     "the admin API's URL: the test's `serve` on loopback stands in for vpn.example.org (SERVED_AT)"),
    (r"TOKEN=\$\(|curl ", SERVED, "the admin API, against the test's `serve` (its self-issued certificate, checked "
                                 "with the CA the line names)"),
    (r"[A-Z]+=[^$]*$", RUN, "sets the shell variables later commands use"),
    (r"cat > \S+ <<'YAML'", RUN, "writes a config"),
    (r"install -D -m 0600 \S+/examples/server\.yaml ", RUN, "puts the example config in place"),
    (r"(vpnagent|vpnagent-server) --version$", RUN, "prints the version"),
    (r"ls \S+/share/doc/vpnagent/examples/$", RUN, "the installed example configs"),
    (r"vpnagent-server (migrate|db-current|db-upgrade|add-organization|add-collaboration|add-node|add-user|"
     r"add-admin|list-\w+|show-\w+|rotate-\w+-key|remove-node|remove-user|join-token|set-data-plane) ", RUN,
     "admin commands need only the config and its data_dir"),
    (r"chmod 600 ", RUN, "file mode"),
    (r"cat > \S+ <<'(PY|RECIPE)'", RUN, "writes an algorithm's files"),
    (r"rsync -a ", ELSEWHERE, "copies the CA and secret to another host; tests/server/test_replicas.py shows what "
                              "a replica with other files does"),
    (r"vpnagent-server serve --config \S+ --vantage6 \S+ --with-openvpn$", ELSEWHERE,
     "a sidecar beside a running vantage6 server, with the OpenVPN container (root, Docker): "
     "tests/server/test_vantage6_sidecar.py serves the same app beside the real vantage6-server 4.13.7, behind the "
     "documented nginx routes, with its OpenVPN server in namespaces"),
    (r"vpnagent-server vantage6-status --config ", ELSEWHERE,
     "needs a vantage6 server's database: tests/server/test_vantage6_sidecar.py::"
     "test_vantage6_status_says_which_node_to_restart runs it against the real vantage6-server 4.13.7"),
    (r"vpnagent-server openvpn --config ", ELSEWHERE,
     "runs the OpenVPN service and its container (root, Docker): tests/integration/test_scale_out.py"),
    (r"vpnagent images build-algorithm ", ELSEWHERE,
     "builds an image on the engine; tests/test_algorithm_recipe.py::test_build_algorithm_makes_a_working_image "
     "builds such a recipe and runs it, test_the_ring_sum_example_builds_from_its_directory checks the example's"),
    (r"mkdir -p ", RUN, "makes a directory"),
    (r"python3 -c \"import sqlite3; ", RUN, "the SQLite backup of a server's store"),
    (r"alembic -c server_ext/migrations/alembic\.ini -x url=\S+ upgrade head$", CHECKOUT,
     "a scratch database at the newest revision"),
    (r"alembic .* revision --autogenerate", ELSEWHERE,
     "writes a new revision into the source tree; only meant after a model change "
     "(tests/server/test_migrations.py checks that the models need none)"),
    (r"make (demo|test)$", ELSEWHERE,
     "the whole demo / suite as root with Docker and PostgreSQL (CI runs `make test`); "
     "test_documented_make_targets_exist checks the target"),
    (r"make test-unit$", ELSEWHERE,
     "the unit suite itself (running it here would recurse); test_documented_make_targets_exist checks the target"),
    (r"scripts/stress-tests\.sh ", ELSEWHERE, "runs the Docker tests N times; tests/test_stress_script.py runs it"),
    (r"apt-get install ", ELSEWHERE, "installs Debian packages as root (scripts/setup.sh does the same here)"),
    (r"python3 -m venv /opt/vpnagent$", ELSEWHERE, "the installation; the scratch machine stands in for it (fake_install)"),
    (r"pip install /path/to/vpnagent", ELSEWHERE, "installs from PyPI; the scratch machine stands in for it (fake_install)"),
    (r"pip install \./clients/python", ELSEWHERE,
     "installs into the current environment; tests/test_client_package.py runs it in a scratch virtualenv"),
    (r"createuser |createdb ", ELSEWHERE, "needs a PostgreSQL server (scripts/postgres.sh makes one for `make test`)"),
    (r"vpnagent images build( --agent)?$", DOCKER, "builds the local images"),
    (r"bash scripts/v6-wheels\.sh$", ELSEWHERE, "downloads vantage6's wheels from PyPI (`make test` runs it)"),
    (r"python -m examples\.ring_sum\.build_v6$", ELSEWHERE,
     "needs the wheels of scripts/v6-wheels.sh; tests/integration/test_vantage6.py builds it"),
    (r"python benchmarks/wiring\.py --quick$", DOCKER, "the benchmark's smoke run"),
    (r"python benchmarks/scaleout\.py( --quick)?$", ELSEWHERE,
     "needs PostgreSQL ($VPNAGENT_TEST_POSTGRES_URL) and Docker; tests/test_benchmarks.py::test_scaleout_benchmark_smoke "
     "runs --quick, the full run takes ≈5 min (`make bench`)"),
    (r"python benchmarks/wiring\.py$", ELSEWHERE, "the full benchmark, ≈3 min (`make bench`); --quick runs in the docker test"),
    (r"vpnagent-server serve ", ELSEWHERE,
     "serves until stopped, --with-openvpn starts the OpenVPN container; tests/server/test_serve.py and the "
     "integration cluster (tests/integration/conftest.py) run it"),
    (r"vpnagent join ", ELSEWHERE,
     "needs the server serving at the join string's URL; tests/integration/test_join.py joins a node this way"),
    (r"vpnagent (doctor|run|status|cleanup) --config ", ELSEWHERE,
     "root, Docker and a live server; tests/integration/test_doctor.py, test_agent_startup.py and the cluster run them"),
    (r"docker run -d --name vpnagent-node-a ", ELSEWHERE,
     "a live server and root; tests/integration/test_agent_image.py runs this line (test_the_guide_documents_this_run_line)"),
    (r"install -m 0644 deploy/systemd/", ELSEWHERE, "needs systemd as PID 1; tests/test_docs.py verifies the units"),
    (r"systemctl |journalctl ", ELSEWHERE, "needs systemd as PID 1"),
    (r"rm -rf /var/lib/vpnagent/node-a /etc/vpnagent/node-a\.yaml$", ELSEWHERE,
     "removes what `vpnagent join` and `run` wrote on a node"),
    (r"flask --app yourapp ", ELSEWHERE,
     "`yourapp` is the reader's own app; tests/server/test_embedding.py::test_the_documented_embedding_and_command_run "
     "runs the command on the guide's example app"),
]

# What a SERVED command's document says to replace with the reader's own (the comment on its
# line says so): the server's API URL, here the test's `serve`.
SERVED_AT = {"https://vpn.example.org:5000/api": "{url}"}

# Documents that continue where another left off: their commands run after that one's.
CONTINUES = {"docs/database.md": "README.md"}

PLACEHOLDER = re.compile(r"<[a-z][a-z _]*>|\[--?\w+[^\]]*\]")


def _keys(cmds: list[Command]) -> dict[Command, str]:
    """What WHAT's patterns see of each command: its code with the variables set before it
    expanded and the install prefixes dropped."""
    values, keys = {}, {}
    for cmd in cmds:
        code = cmd.code
        for name, value in values.items():
            code = re.sub(rf"\${name}\b", value, code)
        code = re.sub(r"(?<![\w/])(/opt/vpnagent/bin/|\.venv/bin/)", "", code)
        keys[cmd] = code
        if re.fullmatch(r"[A-Z]+=[^$]*", cmd.code):
            for part in shlex.split(cmd.code.replace(";", " ")):
                name, _, value = part.partition("=")
                values[name] = value
    return keys


def classify(cmd: Command, key: str) -> tuple[str, str]:
    for pattern, how, why in WHAT:
        if re.match(pattern, key):
            return how, why
    raise LookupError(f"{cmd}: a command in no row of WHAT in tests/test_docs_commands.py; "
                      "make it runnable here and add it as RUN, or add it with the reason it cannot run")


def classified() -> list[tuple[Command, str, str, str]]:
    out = []
    for doc in documents():
        cmds = commands(doc)
        keys = _keys(cmds)
        out += [(c, keys[c], *classify(c, keys[c])) for c in cmds]
    return out


def test_every_documented_command_is_classified():
    unknown = []
    for doc in documents():
        cmds = commands(doc)
        keys = _keys(cmds)
        for cmd in cmds:
            try:
                classify(cmd, keys[cmd])
            except LookupError as e:
                unknown.append(str(e))
    assert not unknown, "\n".join(unknown)
    assert len(all_commands()) > 50


def test_no_command_line_holds_a_placeholder():
    """`<node_id>` or `[--json]` in a command line fails when pasted; say it in the comment."""
    bad = [str(c) for c in all_commands() if PLACEHOLDER.search(c.code)]
    assert not bad, "placeholders in command lines:\n" + "\n".join(bad)


def test_every_row_of_the_table_is_used():
    used = {(how, why) for _, _, how, why in classified()}
    stale = [pattern for pattern, how, why in WHAT if (how, why) not in used]
    assert not stale, f"rows of WHAT no documented command needs any more: {stale}"


# ---------------------------------------------------------------------------------------------
# The scratch machine

REROOT = re.compile(r"(?<![\w.\-/])(/opt/vpnagent|/etc/vpnagent|/var/lib/vpnagent-server|/var/lib/vpnagent"
                    r"|/srv/vpnagent|/backup)(?=[/\s'\":]|$)")


def reroot(text: str, root: Path) -> str:
    """Absolute paths of the docs moved under `root`, as tests/test_readme_configs.py moves
    the README's data_dir."""
    text = text.replace("sqlite:////tmp/vpnagent-dev.db", f"sqlite:///{root}/tmp/vpnagent-dev.db")
    return REROOT.sub(lambda m: f"{root}{m.group(1)}", text)


SHIM = """#!{python}
import sys
from {module} import main
sys.exit(main())
"""


def fake_install(root: Path) -> Path:
    """What the operator guide's install leaves: the two commands in /opt/vpnagent/bin (this
    checkout's code) and the data files setup.cfg installs, with their paths moved under root."""
    from tests.test_docs import _installed_data_files

    prefix = root / "opt" / "vpnagent"
    (prefix / "bin").mkdir(parents=True)
    for name, module in (("vpnagent", "vpnagent.cli"), ("vpnagent-server", "server_ext.cli")):
        shim = prefix / "bin" / name
        shim.write_text(SHIM.format(python=sys.executable, module=module))
        shim.chmod(shim.stat().st_mode | stat.S_IXUSR)
    for relative, source in _installed_data_files().items():
        target = prefix / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(reroot(source.read_text(), root))
    for d in ("home", "tmp", "work"):
        (root / d).mkdir()
    return prefix


def machine_env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("VPNAGENT_") and k not in ("VIRTUAL_ENV", "PYTHONHOME")}
    env.update(HOME=str(root / "home"), TMPDIR=str(root / "tmp"), PYTHONPATH=str(REPO),
               PATH=f"{root}/opt/vpnagent/bin:{Path(sys.executable).parent}:{os.environ['PATH']}")
    return env


def paste(cmd: Command, how: str, root: Path, variables: list[str]) -> subprocess.CompletedProcess:
    """Runs the command as bash would when pasted, after the document's variable lines."""
    text = reroot(cmd.text, root)
    if how == CHECKOUT:
        text = re.sub(r"(?<![\w/])\.venv/bin/", f"{Path(sys.executable).parent}/", text)
    script = "\n".join([*variables, text]) + "\n"
    return subprocess.run(["bash", "-c", script], cwd=REPO if how == CHECKOUT else root / "work",
                          env=machine_env(root), capture_output=True, text=True, timeout=120)


def _runnable(doc: str) -> list[tuple[Command, str]]:
    return [(c, how) for c, _, how, _ in classified() if c.doc == doc and how in (RUN, CHECKOUT, SERVED)]


RUN_DOCS = sorted({c.doc for c, _, how, _ in classified() if how in (RUN, CHECKOUT, SERVED)})
ASSIGNED = re.compile(r"([A-Z]+)=\$\(")  # NAME=$(...): later commands use NAME


class LiveServer:
    """`vpnagent-server serve` on the scratch machine, started from the config the document's
    commands used (same data_dir, store and CA), listening on a free loopback port with a
    certificate for 127.0.0.1, which stands in for the document's server name."""

    def __init__(self, root: Path, config: Path) -> None:
        import yaml

        raw = yaml.safe_load(config.read_text())
        served = root / "work" / "served-server.yaml"
        served.write_text(yaml.safe_dump({**raw, "host": "127.0.0.1", "port": 0, "tls_hostnames": ["127.0.0.1"]}))
        self.log = root / "tmp" / "serve.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(["vpnagent-server", "serve", "--config", str(served)], cwd=root / "work",
                                         env=machine_env(root), stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        from tests.waiting import wait_for

        try:
            found = wait_for(lambda: re.search(r"serving on (https://\S+)", self.log.read_text())
                             or self.proc.poll() is not None, "the documented server to serve", 60)
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
        except BaseException:
            self.stop()
            raise
        self.url = found.group(1)

    def stop(self) -> None:
        import signal

        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


def _config_of(cmds: list[tuple[Command, str]], root: Path) -> Path:
    """The server config the document's admin commands read (its `--config`)."""
    for key in _keys([c for c, _ in cmds]).values():
        found = re.search(r"--config (\S+server\.yaml)", key)
        if found:
            return Path(reroot(found.group(1), root))
    raise AssertionError("a document with SERVED commands names no server config")


def run_document(doc: str, root: Path) -> list[tuple[Command, subprocess.CompletedProcess]]:
    done = run_document(CONTINUES[doc], root) if doc in CONTINUES else []
    variables = []
    runnable = _runnable(doc)
    server = None
    try:
        for cmd, how in runnable:
            text, code = cmd.text, cmd.code
            if how == SERVED:
                if server is None:
                    server = LiveServer(root, _config_of(runnable, root))
                for theirs, ours in SERVED_AT.items():
                    text, code = (t.replace(theirs, ours.format(url=server.url)) for t in (text, code))
            assigned = ASSIGNED.match(cmd.code)
            if assigned:  # hand the value on to the next commands, as the reader's shell does
                text += f'\n__status=$?; printf "\\n{assigned[1]}=%q" "${assigned[1]}"; exit $__status'
            proc = paste(Command(cmd.doc, cmd.line, text, cmd.code, cmd.expected), how, root, variables)
            assert proc.returncode == 0, f"{cmd}\nexit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
            for expected in cmd.expected:
                assert expected in proc.stdout, f"{cmd}: the docs say it prints {expected!r}, it printed {proc.stdout!r}"
            if assigned:
                proc.stdout, _, line = proc.stdout.rpartition("\n")
                assert line.startswith(f"{assigned[1]}=") and len(line) > len(assigned[1]) + 1, f"{cmd}: {line!r}"
                variables.append(line)
            elif re.fullmatch(r"[A-Z]+=[^$]*", cmd.code):
                variables.append(reroot(code, root))
            done.append((cmd, proc))
    finally:
        if server is not None:
            server.stop()
    return done


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """Each document run once on a machine of its own: doc -> (root, [(command, process)])."""
    cache = {}

    def run(doc: str):
        if doc not in cache:
            root = tmp_path_factory.mktemp(Path(doc).stem)
            fake_install(root)
            cache[doc] = root, run_document(doc, root)
        return cache[doc]
    return run


@pytest.mark.parametrize("doc", RUN_DOCS)
def test_the_documented_commands_run_in_order(doc, ran):
    root, done = ran(doc)
    assert done, f"{doc} has no command to run"


def _printed(done, pattern: str) -> str:
    found = [p.stdout for c, p in done if re.match(pattern, c.code)]
    assert found, pattern
    return found[0]


def test_the_operator_guide_walkthrough_prints_what_it_shows(ran):
    """The outputs the operator guide shows, from its own commands in order."""
    tmp_path, done = ran("docs/operator-guide.md")
    guide = (REPO / "docs" / "operator-guide.md").read_text()
    shown = re.search(r"prints the node's \*\*join string\*\* instead of a key:\n\n```\n(.*?)```", guide, re.S).group(1)
    written = (tmp_path / "work" / "node-a.join").read_text()
    for doc_line, line in zip(shown.splitlines(), written.splitlines(), strict=True):
        # the documented line up to its elision, e.g. "join_string vpnagent-join-1.eyJ"
        assert line.startswith(doc_line.split("...")[0].split("<")[0]), (doc_line, line)
    version = _printed(done, r"\S*vpnagent --version")
    assert re.fullmatch(r"vpnagent \S+\n", version), version
    assert _printed(done, r"ls ").split() == ["node.yaml", "server.yaml"]
    assert '"name": "node-a"' in _printed(done, r"\$S show-node \$C 1 --json")
    assert "organization 1 hospital-a" in _printed(done, r"\$S list-organizations")
    admin = tmp_path / "work" / "admin.json"
    assert stat.S_IMODE(admin.stat().st_mode) == 0o600 and '"api_key"' in admin.read_text()
    # the admin API's lines, pasted against a live `serve`: the admin's token, then its node list
    nodes = json.loads(_printed(done, r"curl "))
    assert [n["name"] for n in nodes] == ["node-a", "node-b"], nodes


def test_the_database_guides_upgrade_output_is_what_an_empty_database_prints(tmp_path):
    """docs/database.md shows db-upgrade on an empty database: the same lines, in order."""
    fake_install(tmp_path)
    guide = (REPO / "docs" / "database.md").read_text()
    shown = re.search(r"one line per step\n  ```\n\n  ```\n(.*?)  ```", guide, re.S).group(1)
    shown = [line.strip() for line in shown.splitlines()]
    config = tmp_path / "work" / "server.yaml"
    config.write_text(f"data_dir: {tmp_path}/data\n")
    proc = subprocess.run(["vpnagent-server", "db-upgrade", "--config", str(config)], cwd=tmp_path / "work",
                          env=machine_env(tmp_path), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    printed = proc.stdout.splitlines()
    assert printed[:-1] == shown[:-1], proc.stdout
    assert printed[-1].endswith(": up to date") and shown[-1].endswith(": up to date")


def test_documented_make_targets_exist():
    targets = {m.group(1) for m in re.finditer(r"^make (\S+)", "\n".join(c.code for c in all_commands()), re.M)}
    assert targets
    for target in sorted(targets):
        proc = subprocess.run(["make", "-n", target], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, f"`make {target}` from the docs: {proc.stderr}"


@pytest.mark.docker
def test_documented_docker_commands(tmp_path, docker_client):
    """The commands that need only this machine's Docker engine, in the docs' order (the
    docker_client fixture skips, or fails under VPNAGENT_REQUIRE_DOCKER=1, without one)."""
    fake_install(tmp_path)
    for cmd, _, how, _ in classified():
        if how != DOCKER:
            continue
        text = reroot(cmd.text, tmp_path)
        text = re.sub(r"(?<![\w/])\.venv/bin/", f"{Path(sys.executable).parent}/", text)
        proc = subprocess.run(["bash", "-c", text], cwd=REPO, env=machine_env(tmp_path),
                              capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"{cmd}\nexit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"


def test_a_command_in_no_row_is_refused_with_the_fix():
    new = Command("docs/x.md", 3, "vpnagent frobnicate --all", "vpnagent frobnicate --all", ())
    with pytest.raises(LookupError, match="docs/x.md:3: .*no row of WHAT.*make it runnable"):
        classify(new, new.code)
