"""docs/metrics.md names every metric the agent and the server export, and no other."""
from __future__ import annotations

import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from server_ext import create_app
from vpnagent import metrics as m
from vpnagent.dataplane import TunnelCounters

DOC = Path(__file__).resolve().parent.parent / "docs" / "metrics.md"


def _names(text: str) -> set[str]:
    # counters are documented with their _total sample name; _created series are the library's
    names = set()
    for fam in text_string_to_metric_families(text):
        names.add(f"{fam.name}_total" if fam.type == "counter" else fam.name)
    return {n for n in names if not n.endswith("_created")}


def test_every_exported_metric_is_documented(tmp_path):
    agent = m.AgentMetrics(lambda: m.AgentSnapshot(1, True, TunnelCounters(1, 2, 3, 4), cert_not_after=2e9,
                                                   peer_paths={"direct": 1}))
    app = create_app({"VPNAGENT_DATA_DIR": str(tmp_path / "server"), "TESTING": True}, migrate=True)
    exported = _names(agent.render().decode()) | _names(app.test_client().get("/metrics").get_data(as_text=True))
    exported.add("vpnagent_server_nodes_connected")  # only while OpenVPN answers, which it does not here
    documented = set(re.findall(r"`(vpnagent_(?:agent|server)_[a-z_]+)", DOC.read_text()))
    assert exported - documented == set(), "add these to docs/metrics.md"
    assert documented - exported == set(), "docs/metrics.md names metrics that are not exported"
