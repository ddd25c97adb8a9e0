#!/usr/bin/env bash
# A real PostgreSQL for the test suite (called by `make test`, not by `make demo`):
# installs Debian's postgresql when missing, starts its cluster (there is no systemd here),
# and makes a test role and database. Idempotent: a second run reuses all of it.
# Progress goes to stderr; the last thing on stdout is the SQLAlchemy URL for pytest
# (VPNAGENT_TEST_POSTGRES_URL). The server listens on localhost only (Debian's default).
set -euo pipefail

say() { printf '[postgres] %s\n' "$*" >&2; }

# A developer who points the tests at a server of their own keeps it.
if [ -n "${VPNAGENT_TEST_POSTGRES_URL:-}" ]; then
  say "using VPNAGENT_TEST_POSTGRES_URL from the environment"
  printf '%s\n' "$VPNAGENT_TEST_POSTGRES_URL"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "[postgres] must run as root (installs and starts Debian's postgresql)" >&2
  exit 1
fi

# Test-only credentials of a role that can do nothing but create its own databases.
ROLE=vpnagent_test
PASSWORD=vpnagent_test
DB=vpnagent_test

if ! dpkg-query -W -f='${Status}' postgresql 2>/dev/null | grep -q "install ok installed"; then
  say "installing Debian's postgresql"
  apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql >&2
fi

# The newest installed server version, and its cluster "main" (made by the package's
# postinst; made here when someone removed it).
version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
if [ ! -d "/etc/postgresql/$version/main" ]; then
  say "creating cluster $version/main"
  pg_createcluster "$version" main >&2
fi
port=$(pg_conftool -s "$version" main show port 2>/dev/null || echo 5432)

if ! pg_ctlcluster "$version" main status >/dev/null 2>&1; then
  say "starting cluster $version/main (log: /var/log/postgresql/postgresql-$version-main.log)"
  pg_ctlcluster "$version" main start >&2
fi
for _ in $(seq 60); do
  pg_isready -q -h 127.0.0.1 -p "$port" && break
  sleep 0.5
done
pg_isready -q -h 127.0.0.1 -p "$port" || {
  echo "[postgres] cluster $version/main does not answer on 127.0.0.1:$port" >&2
  tail -20 "/var/log/postgresql/postgresql-$version-main.log" >&2 || true
  exit 1
}

psql_admin() { runuser -u postgres -- psql -p "$port" -X -q -v ON_ERROR_STOP=1 -tA "$@"; }

if [ "$(psql_admin -c "SELECT 1 FROM pg_roles WHERE rolname = '$ROLE'")" != "1" ]; then
  say "creating role $ROLE"
  # CREATEDB: the tests give every test a fresh database copied from a migrated template.
  psql_admin -c "CREATE ROLE $ROLE LOGIN CREATEDB PASSWORD '$PASSWORD'"
fi
if [ "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname = '$DB'")" != "1" ]; then
  say "creating database $DB"
  psql_admin -c "CREATE DATABASE $DB OWNER $ROLE"
fi
say "PostgreSQL $version ready on 127.0.0.1:$port (database $DB)"
printf 'postgresql+psycopg://%s:%s@127.0.0.1:%s/%s\n' "$ROLE" "$PASSWORD" "$port" "$DB"
