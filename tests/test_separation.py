"""A server install does not drag in the node agent: every server_ext module imports, and the
standalone app is built and set up, in a fresh interpreter that then holds no vpnagent module
and no Docker SDK (only the path that starts the OpenVPN container imports docker, lazily).
What both sides share lives in vpnshared, which imports neither."""
from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import server_ext

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN_IN_SERVER = ("vpnagent", "docker")


def foreign(modules: list[str], forbidden: tuple[str, ...]) -> list[str]:
    """The modules that are, or are inside, one of the forbidden top-level packages."""
    return sorted(m for m in modules if m.split(".")[0] in forbidden)


def modules_after(code: str, cwd: Path) -> list[str]:
    """sys.modules of a fresh interpreter that ran `code`."""
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", script], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


def server_modules() -> list[str]:
    """Every module of server_ext but the migration scripts (alembic runs those itself)."""
    found = ["server_ext"]
    for info in pkgutil.walk_packages(server_ext.__path__, "server_ext."):
        if not info.name.startswith("server_ext.migrations"):
            found.append(info.name)
    return found


def test_the_helper_flags_the_agent_and_docker_and_nothing_else():
    assert foreign(["vpnagent", "vpnagent.config", "docker.errors", "docker", "os", "server_ext.api",
                    "vpnagent_algorithm", "vpnshared.schema", "dockerfile_parse"], FORBIDDEN_IN_SERVER) == \
        ["docker", "docker.errors", "vpnagent", "vpnagent.config"]


def test_server_modules_and_setup_import_no_agent_and_no_docker(tmp_path):
    imports = "\n".join(f"import {name}" for name in server_modules())
    assert "import server_ext.cli" in imports and "import server_ext.wsgi" in imports
    code = (f"{imports}\nfrom server_ext import create_app\n"
            f"app = create_app({{'VPNAGENT_DATA_DIR': {str(tmp_path / 'server')!r}}}, migrate=True)\n"
            "assert app.test_client().get('/api/health').status_code == 200\n"
            "app.extensions['vpnagent'].store.close()\n"
            "from server_ext.cli import main\nassert main(['config-reference']) == 0")
    assert foreign(modules_after(code, tmp_path), FORBIDDEN_IN_SERVER) == []


def test_the_check_catches_a_server_that_imports_the_agent(tmp_path):
    """The same check, fed an interpreter that did import the agent, fails it."""
    loaded = modules_after("import server_ext.cli\nimport vpnagent.config", tmp_path)
    assert "vpnagent.config" in foreign(loaded, FORBIDDEN_IN_SERVER)


def test_the_shared_package_imports_neither_side(tmp_path):
    loaded = modules_after("import vpnshared, vpnshared.schema, vpnshared.openvpn, vpnshared.cli", tmp_path)
    assert foreign(loaded, ("vpnagent", "server_ext", "docker", "flask", "sqlalchemy", "yaml")) == []


def test_the_node_config_does_not_import_the_server(tmp_path):
    loaded = modules_after("import vpnagent.config, vpnagent.ovpncheck", tmp_path)
    assert foreign(loaded, ("server_ext", "flask", "sqlalchemy")) == []
