"""The REAL vantage6-server 4.13.7 for tests, in a process of its own.

vantage6-server pins releases that cannot live in the project's .venv, so it runs under
.venv-v6server's Python (scripts/v6-server.sh) as tests/v6server/driver.py, which serves it
on a loopback port and takes commands as JSON lines (see driver.py for the commands). This
module imports nothing of vantage6:

    with V6Server(tmp_path) as v6:
        world = v6.call({"cmd": "setup"})
        token = v6.call({"cmd": "node_token", "api_key": world["nodes"][0]["api_key"]})

Every wait is bounded; a failing command, a timeout or the driver's death raises
AssertionError with the tail of the driver's log."""
from __future__ import annotations

import json
import os
import secrets
import select
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

ROOT = Path(__file__).resolve().parents[2]
V6SERVER_PYTHON = ROOT / ".venv-v6server" / "bin" / "python"
DRIVER = Path(__file__).with_name("driver.py")
START_TIMEOUT = 120  # the server imports and creates its database in ~2 s; slow CI machines
CALL_TIMEOUT = 60  # the driver answers a stuck command itself after 50 s
LOG_TAIL_LINES = 40


def v6server_python() -> Path:
    """.venv-v6server's Python; without it the test skips, or fails when the environment
    says everything must run (VPNAGENT_REQUIRE_DOCKER=1, as for the vantage6 client test)."""
    if not V6SERVER_PYTHON.exists():
        reason = f"{V6SERVER_PYTHON.relative_to(ROOT)} is missing: run scripts/v6-server.sh"
        if os.environ.get("VPNAGENT_REQUIRE_DOCKER") == "1":
            pytest.fail(f"the vantage6 server harness cannot run: {reason} (VPNAGENT_REQUIRE_DOCKER=1)")
        pytest.skip(reason)
    return V6SERVER_PYTHON


class V6Server:
    """driver.py running vantage6-server in `workdir` (its config, SQLite database, logs).

    `.port`, `.api` ("http://127.0.0.1:P/api"), `.database_url` and `.jwt_secret` describe
    the server; `.call(cmd)` runs one driver command and returns its answer."""

    def __init__(self, workdir: Path, jwt_secret: str | None = None,
                 start_timeout: float = START_TIMEOUT, database_url: str | None = None) -> None:
        """`database_url`: vantage6's database (postgresql://...); default SQLite in `workdir`."""
        python = v6server_python()
        self.workdir = Path(workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.jwt_secret = jwt_secret or secrets.token_hex(32)
        self.log = self.workdir / "driver.log"
        self._stderr = self.log.open("wb")
        self._buf = b""
        self._seq = 0
        home = self.workdir / "home"
        home.mkdir(exist_ok=True)
        env = {k: v for k, v in os.environ.items()
               if k not in ("PYTHONPATH", "PYTHONHOME") and not k.startswith("V6_")}
        # vantage6 keeps user folders under HOME (appdirs): keep them in the workdir
        env["HOME"] = str(home)
        try:
            self.proc = subprocess.Popen([str(python), str(DRIVER), str(self.workdir), self.jwt_secret,
                                          *([database_url] if database_url else [])],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
                                         cwd=str(self.workdir), env=env, bufsize=0)
            ready = self._read(time.monotonic() + start_timeout, seq=None,
                               what="ready line (the server did not start)")
            self.port: int = ready["port"]
            self.api: str = ready["api"]
            self.database_url: str = ready["database_url"]
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> V6Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, cmd: dict, timeout: float = CALL_TIMEOUT, check: bool = True) -> dict:
        """Send one command, return its answer. With check (the default) an {"error": ...}
        answer raises AssertionError; without, it is returned."""
        if self.proc.poll() is not None:
            raise AssertionError(f"the vantage6 driver has ended (exit {self.proc.returncode}):\n{self.tail()}")
        self._seq += 1
        seq = self._seq
        try:
            self.proc.stdin.write((json.dumps({**cmd, "seq": seq}) + "\n").encode())
            self.proc.stdin.flush()
        except OSError as exc:
            raise AssertionError(f"cannot send {cmd.get('cmd')!r} to the vantage6 driver ({exc}):\n"
                                 f"{self.tail()}") from exc
        out = self._read(time.monotonic() + timeout, seq=seq, what=f"answer to {cmd.get('cmd')!r}")
        if check and "error" in out:
            raise AssertionError(f"vantage6 driver command {cmd.get('cmd')!r} failed: {out['error']}\n{self.tail()}")
        return out

    def _read(self, deadline: float, seq: int | None, what: str) -> dict:
        """The next `V6 ` line answering `seq` (answers to earlier commands that timed out
        are skipped), read from the raw pipe so select sees every byte."""
        fd = self.proc.stdout.fileno()
        while True:
            while b"\n" not in self._buf:
                left = deadline - time.monotonic()
                ready = select.select([fd], [], [], max(0.0, left))[0] if left > 0 else []
                if not ready:
                    raise AssertionError(f"the vantage6 driver gave no {what} in time:\n{self.tail()}")
                chunk = os.read(fd, 65536)
                if not chunk:
                    code = self._wait_briefly()
                    raise AssertionError(f"the vantage6 driver ended (exit {code}) before its {what}:\n"
                                         f"{self.tail()}")
                self._buf += chunk
            line, self._buf = self._buf.split(b"\n", 1)
            if not line.startswith(b"V6 "):
                continue
            out: Any = json.loads(line[3:])
            if seq is None or out.get("seq") == seq:
                out.pop("seq", None)
                return out

    def _wait_briefly(self) -> int | None:
        try:
            return self.proc.wait(5)
        except subprocess.TimeoutExpired:
            return None

    def tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The end of the driver's stderr (vantage6's log records and the driver's)."""
        if not self._stderr.closed:
            self._stderr.flush()
        try:
            text = self.log.read_text(errors="replace")
        except OSError as exc:
            return f"(no driver log: {exc})"
        return "\n".join(text.splitlines()[-lines:])

    def close(self) -> None:
        """Ask the driver to stop, then terminate or kill it; always closes the pipes."""
        proc = self.proc if hasattr(self, "proc") else None
        try:
            if proc is not None and proc.poll() is None:
                try:
                    proc.stdin.write(b'{"cmd": "stop"}\n')
                    proc.stdin.flush()
                    proc.wait(10)
                except (OSError, subprocess.TimeoutExpired):
                    pass
                if proc.poll() is None:
                    proc.terminate()
                    try:
                        proc.wait(5)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait(10)
        finally:
            if proc is not None:
                for pipe in (proc.stdin, proc.stdout):
                    try:
                        pipe.close()
                    except OSError:
                        pass
            self._stderr.close()


@pytest.fixture(scope="module")
def v6(tmp_path_factory) -> Iterator[V6Server]:
    """One vantage6 server for a test module (import the fixture into it)."""
    server = V6Server(tmp_path_factory.mktemp("v6server"))
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def world(v6: V6Server) -> dict:
    """Its organisations, collaboration, nodes and user (the driver's `setup`)."""
    return v6.call({"cmd": "setup"})
