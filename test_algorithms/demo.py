"""`make demo`: a server, the OpenVPN server and three nodes on this machine, the echo task
across them, the result as a matrix. Cleans up afterwards unless --keep; --down tears a
kept demo down."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .cluster import ClusterError, LocalCluster
from .send_echo import format_matrix, send_echo

DEMO_DIR = Path(".demo")
PREFIX = "vademo"


def _say(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vpnagent-demo", description=__doc__)
    parser.add_argument("--keep", action="store_true", help="leave server and nodes running afterwards")
    parser.add_argument("--down", action="store_true", help="tear down a demo left running with --keep")
    parser.add_argument("--nodes", type=int, default=3, help="number of nodes (organisations), default 3")
    parser.add_argument("--dir", type=Path, default=DEMO_DIR, help="working directory (default .demo)")
    args = parser.parse_args(argv)
    workdir = args.dir.resolve()

    if args.down:
        LocalCluster.teardown_dir(workdir, PREFIX, progress=_say)
        _say("demo torn down")
        return 0

    # A previous demo that was kept (or interrupted) would collide on names: clear it first.
    if (workdir / "cluster.json").exists() or (workdir / "nodes").exists():
        _say("removing what a previous demo left")
        LocalCluster.teardown_dir(workdir, PREFIX, progress=_say)
    LocalCluster(workdir=workdir, prefix=PREFIX).wipe()

    cluster = LocalCluster(workdir=workdir, prefix=PREFIX, n_nodes=args.nodes, progress=_say)
    ok = False
    try:
        cluster.up()
        cluster.save_state()
        _say("sending the echo task")
        result = send_echo(cluster.server_url, cluster.user_api_key, cluster.collaboration_id, verify=cluster.tls_verify,
                           timeout=240, progress=_say)
        print()
        print(format_matrix(result))
        print()
        ok = bool(result.get("ok"))
    except ClusterError as exc:
        _say(f"FAILED: {exc}")
    except Exception as exc:  # noqa: BLE001 - report, then clean up below
        _say(f"FAILED: {type(exc).__name__}: {exc} (logs in {workdir / 'logs'})")
    finally:
        if args.keep:
            cluster.save_state()
            _say(f"left running (server {cluster.server_url}); tear down with: make demo-down")
        else:
            _say("cleaning up")
            cluster.down()
            _say("done")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
