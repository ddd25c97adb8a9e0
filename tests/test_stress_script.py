"""scripts/stress-tests.sh, the developers' flake finder: its argument check, its table from
JUnit XML, and one real (short) run of it on the namespace tests."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "stress-tests.sh"

RUN = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">
<testcase classname="tests.integration.test_faults" name="test_a" time="1.0"/>
<testcase classname="tests.integration.test_faults" name="test_b" time="1.0">{b}</testcase>
<testcase classname="tests.integration.test_doctor" name="test_c" time="0.1"><skipped message="no"/></testcase>
</testsuite></testsuites>"""


def _table(tmp_path, *runs: str) -> subprocess.CompletedProcess:
    files = []
    for i, text in enumerate(runs):
        f = tmp_path / f"run{i + 1}.xml"
        f.write_text(text)
        files.append(str(f))
    return subprocess.run([sys.executable, str(REPO / "scripts" / "stress_table.py"), *files],
                          capture_output=True, text=True, timeout=60)


def test_table_counts_failures_per_test_over_the_runs(tmp_path):
    failed = '<failure message="AssertionError: timed out after 30 s waiting for X">trace</failure>'
    out = _table(tmp_path, RUN.format(b=""), RUN.format(b=failed), RUN.format(b='<error message="boom"/>'))
    assert out.returncode == 1
    rows = {line.split()[0]: line.split()[1:] for line in out.stdout.splitlines() if line.startswith("tests.")}
    assert rows["tests.integration.test_faults::test_a"] == ["3", "0", "0"]
    assert rows["tests.integration.test_faults::test_b"] == ["3", "2", "0"]
    assert rows["tests.integration.test_doctor::test_c"] == ["3", "0", "3"]
    assert "3 tests, 3 runs, 2 failure(s)" in out.stdout
    assert "test_b: failed: AssertionError: timed out after 30 s waiting for X" in out.stdout


def test_table_of_clean_runs_exits_0_and_a_crashed_run_is_a_failure(tmp_path):
    assert _table(tmp_path, RUN.format(b=""), RUN.format(b="")).returncode == 0
    crashed = _table(tmp_path, RUN.format(b=""), "not xml")
    assert crashed.returncode == 1 and "not a readable JUnit XML file" in crashed.stderr


@pytest.mark.parametrize("args", [[], ["0"], ["x"], ["101"]])
def test_script_refuses_a_bad_count(args):
    out = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "usage: scripts/stress-tests.sh N" in out.stderr


@pytest.mark.docker
def test_script_runs_the_docker_tests_n_times_and_prints_the_table():
    if os.geteuid() != 0:
        from tests.conftest import docker_unavailable
        docker_unavailable("needs root")
    out = subprocess.run(["bash", str(SCRIPT), "2", "tests/node/test_firewall.py"], capture_output=True, text=True,
                         timeout=900, cwd=REPO)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "[stress] run 1 of 2: exit 0" in out.stdout and "[stress] run 2 of 2: exit 0" in out.stdout
    assert ", 2 runs, 0 failure(s)" in out.stdout
