#!/usr/bin/env bash
# The real vantage6 server (vantage6-server 4.13.7 from PyPI) in a virtualenv of its own,
# .venv-v6server, for tests/v6server (the harness runs tests/v6server/driver.py with its
# Python). It cannot share .venv (old SQLAlchemy and Flask extensions) nor .venv-v6 (the
# algorithm tools pin other releases). vantage6-server 4.13.7 imports the Azure blob store
# modules at start but its metadata does not require them, so they are installed here,
# pinned to what resolved when this was written. Idempotent: a complete virtualenv is reused.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '[v6-server] %s\n' "$*"; }

VERSION=4.13.7
REQS=(
  "vantage6-server==$VERSION"
  "vantage6-backend-common==$VERSION"
  # imported by vantage6.server (large result store) but missing from its metadata
  "azure-identity==1.27.0"
  "azure-storage-blob==12.31.1"
  # vantage6's PostgreSQL driver (its URIs are postgresql://, SQLAlchemy's psycopg2), for
  # the sidecar test on a vantage6 PostgreSQL database
  "psycopg2-binary==2.9.13"
)
VENV=.venv-v6server
PY=${PYTHON:-python3}

minor() { "$1" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")'; }
py_minor=$(minor "$PY")
case "$py_minor" in
  3.10|3.11) ;;
  *) echo "[v6-server] $PY is Python $py_minor; vantage6 $VERSION needs 3.10 or 3.11 (set PYTHON=python3.11)" >&2
     exit 1 ;;
esac

# complete = the server package imports (with its Azure imports) and has the right version
check='import importlib.metadata as m, vantage6.server, azure.identity, azure.storage.blob, psycopg2; print(m.version("vantage6-server"))'
if [ -x "$VENV/bin/python" ] && [ "$("$VENV/bin/python" -c "$check" 2>/dev/null)" = "$VERSION" ]; then
  say "$VENV has vantage6-server $VERSION"
else
  if [ ! -x "$VENV/bin/python" ]; then
    say "creating virtualenv $VENV"
    "$PY" -m venv "$VENV"
  fi
  say "installing ${REQS[*]} into $VENV (about a minute)"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "${REQS[@]}"
  got=$("$VENV/bin/python" -c "$check")
  if [ "$got" != "$VERSION" ]; then
    echo "[v6-server] $VENV imports vantage6-server $got, expected $VERSION" >&2
    exit 1
  fi
fi
say "ready: $VENV/bin/python imports vantage6.server $VERSION"
