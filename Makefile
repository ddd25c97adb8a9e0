# The two commands of README.md. Both run scripts/setup.sh first, which installs what is
# missing and reuses what an earlier run built.
.PHONY: setup demo demo-keep demo-down test test-unit bench docs

setup:
	bash scripts/setup.sh

demo: setup
	.venv/bin/python -m test_algorithms.demo

demo-keep: setup
	.venv/bin/python -m test_algorithms.demo --keep

demo-down:
	.venv/bin/python -m test_algorithms.demo --down

# The server tests also run on a real PostgreSQL: scripts/postgres.sh starts it and prints its URL.
# The vantage6 compatibility tests also need vantage6's own client and its wheels (scripts/v6-wheels.sh),
# and the real vantage6 server in a virtualenv of its own (scripts/v6-server.sh, for tests/v6server).
test: setup
	bash scripts/v6-wheels.sh
	bash scripts/v6-server.sh
	url="$$(bash scripts/postgres.sh)" && VPNAGENT_TEST_POSTGRES_URL="$$url" .venv/bin/pytest -v -rs --durations=20

test-unit:
	.venv/bin/pytest -q -m "not docker"

bench: setup
	.venv/bin/python benchmarks/wiring.py
	.venv/bin/python benchmarks/dataplane.py
	.venv/bin/python benchmarks/controlplane.py
	url="$$(bash scripts/postgres.sh)" && VPNAGENT_TEST_POSTGRES_URL="$$url" .venv/bin/python benchmarks/scaleout.py

# Rewrite the generated sections of the docs (config references, example configs) from the code.
docs:
	.venv/bin/python scripts/update_docs.py
