#!/usr/bin/env bash
# Runs the Docker integration tests (pytest -m docker) N times in a row on this machine and
# prints a table of test x failures, to find tests that race the agent instead of waiting for
# it. A developer's tool, not part of `make test`. Extra arguments go to pytest, e.g.
#   scripts/stress-tests.sh 5
#   scripts/stress-tests.sh 3 tests/integration/test_faults.py -k killed
# Logs and JUnit XML of every run stay in .stress/<date>/. Exit code 1 when any run failed.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { echo "usage: scripts/stress-tests.sh N [pytest arguments...]   (N: runs, 1-100)" >&2; exit 2; }
[ $# -ge 1 ] || usage
n=$1
shift
[[ "$n" =~ ^[0-9]+$ ]] && [ "$n" -ge 1 ] && [ "$n" -le 100 ] || usage

bash scripts/setup.sh >/dev/null
bash scripts/v6-wheels.sh >/dev/null  # the vantage6 image test installs from these wheels
out=".stress/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$out"
echo "[stress] $n run(s) of pytest -m docker $*; logs in $out/"
t_all=$(date +%s)
for i in $(seq 1 "$n"); do
  t0=$(date +%s)
  set +e
  VPNAGENT_REQUIRE_DOCKER=1 .venv/bin/pytest -q -m docker -p no:cacheprovider \
    --junitxml="$out/run$i.xml" "$@" >"$out/run$i.log" 2>&1
  rc=$?
  set -e
  echo "[stress] run $i of $n: exit $rc, $(tail -n 1 "$out/run$i.log" | tr -d '=') ($(( $(date +%s) - t0 )) s)"
done
echo "[stress] all runs: $(( $(date +%s) - t_all )) s"
exec .venv/bin/python scripts/stress_table.py "$out"/run*.xml
