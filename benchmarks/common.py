"""What every benchmark does the same way: clean-up on SIGTERM, progress lines, the
images, and the report (a printed table plus JSON)."""
from __future__ import annotations

import json
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import docker

Progress = Callable[[str], None]


def printer(name: str) -> Progress:
    """The progress printer; SIGTERM (a timeout, a CI cancel) from now on still runs the
    caller's clean-up (it raises SystemExit, as Ctrl-C raises KeyboardInterrupt)."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    def progress(msg: str) -> None:
        print(f"[{name} {time.strftime('%H:%M:%S')}] {msg}", flush=True)

    return progress


def start(name: str) -> tuple[Progress, docker.DockerClient]:
    """Progress printer and a Docker client with the images built (or found cached)."""
    progress = printer(name)
    from vpnagent.runtime.docker_images import build_images

    client = docker.from_env(timeout=300)
    build_images(client, progress=progress)
    return progress, client


def report(path: Path, results: dict, text: str, progress: Progress) -> None:
    print()
    print(text)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
    progress(f"JSON written to {path}")


def summary(values: list[float]) -> dict:
    return {"n": len(values), "min": min(values), "median": statistics.median(values), "max": max(values)}


def remove_containers(containers: list) -> None:
    """Clean-up: each container gone, whether or not it still exists."""
    for c in containers:
        try:
            c.remove(force=True)
        except docker.errors.NotFound:
            pass
