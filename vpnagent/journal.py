"""The node's memory of its runs, on disk: what a restarted agent needs to adopt a live run
(its containers, ports and contract) and every report the server has not yet confirmed.

One file per run, replaced atomically, so a SIGKILL at any moment leaves either the old or
the new record. A run's record goes through three phases:

- `starting`: taken from the server, not yet wired; an agent that finds it after a restart
  cannot know how far it got, so it removes what exists and reports the run failed.
- `running`: containers started; a restarted agent adopts it.
- `done`: result collected and resources given back; only the report is left to deliver.

`report` is the newest state change the server has not confirmed (at least once: the
server takes a repeated final report as a no-op), so results survive a server outage."""
from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

STARTING, RUNNING, DONE = "starting", "running", "done"
PHASES = (STARTING, RUNNING, DONE)


@dataclass
class RunRecord:
    run_id: int
    task_id: int
    image: str
    parent_id: int | None = None
    phase: str = STARTING
    output_name: str = "output.json"
    ports: list[dict[str, Any]] = field(default_factory=list)  # vpn_port, container_port, label
    holder_id: str | None = None
    container_id: str | None = None
    report: dict[str, Any] | None = None  # {"status", "result"?, "log"?} not yet confirmed
    reported: str | None = None  # the last status the server confirmed


class Journal:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    def _path(self, run_id: int) -> Path:
        return self.dir / f"{run_id}.json"

    def save(self, record: RunRecord) -> None:
        """Durable before it returns: a result written here survives a crash a moment later."""
        path = self._path(record.run_id)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # results may be sensitive
        with os.fdopen(fd, "w") as fh:
            json.dump(asdict(record), fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    def remove(self, run_id: int) -> None:
        self._path(run_id).unlink(missing_ok=True)

    def load(self) -> dict[int, RunRecord]:
        """Every record on disk. One that cannot be read is set aside (renamed .bad) rather
        than stopping the agent: its run is then treated as one the agent knows nothing of."""
        known = {f.name for f in fields(RunRecord)}
        records: dict[int, RunRecord] = {}
        for path in sorted(self.dir.glob("*.json")):
            try:
                raw = json.loads(path.read_text())
                record = RunRecord(**{k: v for k, v in raw.items() if k in known})
                if record.phase not in PHASES or path.stem != str(record.run_id):
                    raise ValueError(f"phase {record.phase!r}, run {record.run_id}")
            except (OSError, ValueError, TypeError) as exc:
                log.error("journal: %s is unreadable (%s); set aside as %s.bad", path, exc, path.name)
                os.replace(path, path.with_name(path.name + ".bad"))
                continue
            records[record.run_id] = record
        return records
