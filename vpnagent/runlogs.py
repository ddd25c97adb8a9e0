"""`vpnagent logs RUN [-f]`: an algorithm's output while it runs. The agent sends only the
last part of it with the result, when the run is over; until then it lives in the run's
algorithm container, which is found by its labels through the runtime seam."""
from __future__ import annotations

from typing import BinaryIO

from .runtime import Container, Runtime

ROLE_ALGORITHM = "algorithm"  # the agent's vpnagent.role label of an algorithm container (agent.ROLE_ALGORITHM)


class RunNotHere(Exception):
    """No algorithm container of the run on this node; the message says where its log is."""


def find_algorithm(runtime: Runtime, node: str, run_id: int) -> Container:
    """The algorithm container of run `run_id` on node `node` (running or just exited)."""
    found = runtime.list({"vpnagent.node": node, "vpnagent.run": str(run_id), "vpnagent.role": ROLE_ALGORITHM})
    if not found:
        raise RunNotHere(
            f"run {run_id} has no algorithm container on node {node}: it runs on another node, has not started "
            "yet, or has finished. A finished run's log (its end) is kept at the server: "
            f"GET /api/run/{run_id} with a researcher's token, field \"log\" (docs/api.md)")
    return max(found, key=lambda c: c.started_at or 0.0)  # one per run; the newest if a restart left two


def copy_log(runtime: Runtime, container: Container, out: BinaryIO, follow: bool = False) -> None:
    """Write the container's log to `out` as it comes; with `follow`, until the container
    exits (KeyboardInterrupt from the caller's Ctrl-C ends it earlier)."""
    for chunk in runtime.log_stream(container.id, follow=follow and container.running):
        out.write(chunk)
        out.flush()
