"""A run's output is read from a directory its (possibly hostile) container can write: the
agent must not follow links, block on FIFOs, read devices or load a huge file."""
import json
import os
import threading

import pytest

from vpnagent.runfiles import OutputRefused, prepare, read_output, remove


@pytest.fixture
def run_dir(tmp_path):
    d = tmp_path / "runs" / "7"
    prepare(d, {"input.json": b'{"method": "x"}'})
    return d


def test_a_small_json_file_is_read(run_dir):
    (run_dir / "output.json").write_text(json.dumps({"ok": True}))
    assert read_output(run_dir / "output.json", 1000) == {"ok": True}
    assert json.loads((run_dir / "input.json").read_text()) == {"method": "x"}


def test_no_output_is_none(run_dir):
    assert read_output(run_dir / "output.json", 1000) is None


def test_a_link_to_a_host_file_is_not_followed(run_dir, tmp_path):
    secret = tmp_path / "host-secret"
    secret.write_text('"the host secret"')
    os.symlink(secret, run_dir / "output.json")
    with pytest.raises(OutputRefused, match="symbolic link"):
        read_output(run_dir / "output.json", 1000)


def test_a_link_to_dev_zero_is_refused_at_once(run_dir):
    os.symlink("/dev/zero", run_dir / "output.json")
    with pytest.raises(OutputRefused, match="symbolic link"):
        read_output(run_dir / "output.json", 1 << 30)


def test_a_fifo_does_not_block_the_agent(run_dir):
    os.mkfifo(run_dir / "output.json")
    result: list = []
    t = threading.Thread(target=lambda: result.append(_refusal(run_dir)), daemon=True)
    t.start()
    t.join(5)
    assert not t.is_alive(), "reading a FIFO blocked"
    assert "FIFO" in result[0]


def _refusal(run_dir) -> str:
    try:
        read_output(run_dir / "output.json", 1000)
    except OutputRefused as exc:
        return str(exc)
    return "read"


def test_a_huge_file_is_refused_without_reading_it(run_dir):
    with open(run_dir / "output.json", "wb") as f:
        f.truncate(1 << 30)  # sparse: a 1 GiB size on no disk
    with pytest.raises(OutputRefused, match=r"1073741824 bytes, more than max_output_bytes \(1000\)"):
        read_output(run_dir / "output.json", 1000)


def test_a_directory_and_garbage_are_refused(run_dir):
    (run_dir / "output.json").mkdir()
    with pytest.raises(OutputRefused, match="not a regular file \\(a directory\\)"):
        read_output(run_dir / "output.json", 1000)
    (run_dir / "output.json").rmdir()
    (run_dir / "output.json").write_text("not json")
    with pytest.raises(OutputRefused, match="not JSON"):
        read_output(run_dir / "output.json", 1000)


def test_prepare_replaces_what_an_earlier_container_left_without_following_it(run_dir, tmp_path):
    target = tmp_path / "host-file"
    target.write_text("keep me")
    (run_dir / "input.json").unlink()
    os.symlink(target, run_dir / "input.json")  # a trap for the next write of the input
    os.symlink(target, run_dir / "output.json")
    prepare(run_dir, {"input.json": b'{"method": "y"}'})
    assert target.read_text() == "keep me"
    assert not (run_dir / "input.json").is_symlink()
    assert json.loads((run_dir / "input.json").read_text()) == {"method": "y"}
    assert not os.path.lexists(run_dir / "output.json")
    remove(run_dir)
    assert not run_dir.exists() and target.read_text() == "keep me"
