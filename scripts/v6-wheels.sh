#!/usr/bin/env bash
# The real vantage6 algorithm client (vantage6-algorithm-tools 4.13.7) in a virtualenv of
# its own, .venv-v6, for tests/server/test_vantage6_client.py, and the wheels the vantage6
# example image installs offline (examples/ring_sum/build_v6.py; pip's own wheel with them,
# as the algorithm base image has no pip). It cannot share .venv: it pins
# SQLAlchemy 1.4 and other old releases. Wheels are kept in .cache/v6-wheels (qrcode 7.3.1
# is published only as an sdist, so `pip wheel` builds it once), and the virtualenv is
# installed from them without an index. Idempotent: a second run reuses both.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '[v6-wheels] %s\n' "$*"; }

VERSION=4.13.7
REQ="vantage6-algorithm-tools==$VERSION"
WHEELS=.cache/v6-wheels
VENV=.venv-v6
PY=${PYTHON:-python3}
# pip of the project's virtualenv when there is one (same Python as $PY in setup.sh),
# else the system's.
if [ -x .venv/bin/python ]; then PIP_PY=.venv/bin/python; else PIP_PY=$PY; fi

minor() { "$1" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")'; }
py_minor=$(minor "$PY")
case "$py_minor" in
  3.10|3.11) ;;
  *) echo "[v6-wheels] $PY is Python $py_minor; vantage6 $VERSION needs 3.10 or 3.11 (set PYTHON=python3.11)" >&2
     exit 1 ;;
esac
if [ "$(minor "$PIP_PY")" != "$py_minor" ]; then
  say "$PIP_PY is not Python $py_minor: using $PY's pip for the wheels"
  PIP_PY=$PY
fi

# 1. wheels (the stamp is written only after a complete `pip wheel`)
stamp="$WHEELS/.complete-$VERSION-py$py_minor-pip"
if [ -f "$stamp" ]; then
  say "wheels present in $WHEELS"
else
  say "building wheels of $REQ and its dependencies into $WHEELS (with $PIP_PY -m pip)"
  mkdir -p "$WHEELS"
  "$PIP_PY" -m pip wheel -q --disable-pip-version-check -w "$WHEELS" "$REQ" pip
  touch "$stamp"
fi

# 2. the virtualenv, installed from those wheels only
check='import importlib.metadata as m, vantage6.algorithm.client; print(m.version("vantage6-algorithm-tools"))'
if [ -x "$VENV/bin/python" ] && [ "$("$VENV/bin/python" -c "$check" 2>/dev/null)" = "$VERSION" ]; then
  say "$VENV has $REQ"
else
  if [ ! -x "$VENV/bin/python" ]; then
    say "creating virtualenv $VENV"
    "$PY" -m venv "$VENV"
  fi
  say "installing $REQ into $VENV from $WHEELS (no index)"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-index --find-links "$WHEELS" "$REQ"
  "$VENV/bin/python" -c "$check" >/dev/null
fi
say "ready: $VENV/bin/python imports vantage6.algorithm.client $VERSION"
