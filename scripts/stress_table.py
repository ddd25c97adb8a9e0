"""The table of scripts/stress-tests.sh: for every test seen in the runs' JUnit XML files,
how many runs it failed (an error in set-up or tear-down counts as a failure), then the
first line of each failure. Exit code 1 when any test failed in any run."""
from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def outcomes(xml_path: Path) -> dict[str, str]:
    """{test id: "passed" | "failed" | "skipped" | first line of the failure} of one run."""
    found: dict[str, str] = {}
    for case in ET.parse(xml_path).getroot().iter("testcase"):
        test = f"{case.get('classname', '')}::{case.get('name', '')}"
        bad = case.find("failure")
        if bad is None:
            bad = case.find("error")
        if bad is not None:
            first = ((bad.get("message") or bad.text or "").strip().splitlines() or [""])[0]
            found[test] = f"failed: {first[:160]}"
        elif case.find("skipped") is not None:
            found.setdefault(test, "skipped")
        else:
            found.setdefault(test, "passed")
    return found


def table(runs: list[dict[str, str]]) -> tuple[str, int]:
    """The printed table and the number of failed (test, run) pairs."""
    tests = sorted({t for run in runs for t in run})
    width = max([len(t) for t in tests] + [4])
    lines = [f"{'test':<{width}}  {'runs':>4}  {'failed':>6}  {'skipped':>7}"]
    failed_total = 0
    details = []
    for t in tests:
        seen = [run[t] for run in runs if t in run]
        failed = [o for o in seen if o.startswith("failed")]
        skipped = sum(o == "skipped" for o in seen)
        failed_total += len(failed)
        lines.append(f"{t:<{width}}  {len(seen):>4}  {len(failed):>6}  {skipped:>7}")
        details += [f"  {t}: {o}" for o in failed]
    lines.append(f"{len(tests)} tests, {len(runs)} runs, {failed_total} failure(s)")
    if details:
        lines += ["failures:", *details]
    return "\n".join(lines), failed_total


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: stress_table.py RUN.xml [RUN.xml ...]", file=sys.stderr)
        return 2
    runs = []
    for name in argv:
        try:
            runs.append(outcomes(Path(name)))
        except (OSError, ET.ParseError) as exc:
            print(f"{name}: not a readable JUnit XML file ({exc}); the run probably crashed, see its .log",
                  file=sys.stderr)
            runs.append({f"(run {name})": "failed: no JUnit XML"})
    text, failed = table(runs)
    print(text)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
