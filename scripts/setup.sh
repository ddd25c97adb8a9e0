#!/usr/bin/env bash
# One-time (and idempotent) set-up for `make demo` / `make test` on Debian 12 as root:
# Debian packages, a running dockerd, the virtualenv with vpnagent and the local images.
# (`make test` adds the vantage6 client's virtualenv and wheels, scripts/v6-wheels.sh, and
# the vantage6 server's virtualenv, scripts/v6-server.sh.)
# A second run only checks and reuses what the first one built.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '[setup] %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
  echo "[setup] must run as root: vpnagent programs iptables and network namespaces" >&2
  exit 1
fi

# 1. Debian packages (only the missing ones; apt-get update only when something is missing)
PKGS=(docker.io openvpn iptables iproute2 mmdebstrap util-linux python3 python3-venv ca-certificates iperf3 iputils-ping nftables nginx-light)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  say "Debian packages present"
fi

# 2. dockerd: there is no systemd here, so start it ourselves and wait until it answers.
if ! docker info >/dev/null 2>&1; then
  if ! pgrep -x dockerd >/dev/null; then
    # An uncleanly ended dockerd leaves its pid file behind and then refuses to start.
    rm -f /var/run/docker.pid
    say "starting dockerd (log: /var/log/vpnagent-dockerd.log)"
    nohup dockerd >/var/log/vpnagent-dockerd.log 2>&1 &
  fi
  for _ in $(seq 120); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null 2>&1 || { echo "[setup] dockerd did not come up; see /var/log/vpnagent-dockerd.log" >&2; tail -20 /var/log/vpnagent-dockerd.log >&2; exit 1; }
fi
say "docker engine answers"

# 3. virtualenv with the project (re-installed only when setup.cfg changes)
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  say "creating virtualenv .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.vpnagent-installed
if [ ! -f "$stamp" ] || [ setup.cfg -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  say "installing vpnagent into .venv"
  .venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
  touch "$stamp"
else
  say "virtualenv up to date"
fi

# 4. images (each rebuilt only when its recipe changes)
.venv/bin/vpnagent images build
