"""Smoke runs of the benchmarks, so they keep working. They assert the report's shape and
that both variants really reached the run over the VPN, never a timing."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.docker
def test_wiring_benchmark_smoke(docker_client, tmp_path):
    out = tmp_path / "wiring.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "wiring.py"), "--quick", "--samples", "2",
                           "--live", "3", "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "baseline/agent total" in proc.stdout
    report = json.loads(out.read_text())
    assert set(report["scenarios"]) == {"first", "3_live"}
    for scenario in report["scenarios"].values():
        for variant in ("agent", "baseline"):
            assert scenario[variant]["total_ms"]["n"] == 2
            assert scenario[variant]["reach_ms"]["max"] > 0
    assert all(v > 0 for v in report["ratios"].values())
    # the restart scenario: a new agent process adopted every live run (and the VPN client)
    assert [(r["n"], r["adopted"]) for r in report["restart"]] == [(1, 1), (3, 3)]
    assert all(r["adopt_ms"] > 0 for r in report["restart"]) and "restart: live runs" in proc.stdout


DATAPLANE_SMOKE_PATHS = "a,b,c,d,e,f"


@pytest.mark.docker
def test_dataplane_benchmark_smoke(docker_client, tmp_path):
    out = tmp_path / "dataplane.json"
    png = tmp_path / "dataplane.png"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "dataplane.py"), "--quick", "--scenario",
                           "wan_1500", "--paths", DATAPLANE_SMOKE_PATHS, "--json", str(out), "--plot", str(png)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["headline"] == "wan_1500" and set(report["scenarios"]) == {"wan_1500"}
    assert report["paths"] == ["a", "b", "c", "d", "e", "f"]
    wan = report["scenarios"]["wan_1500"]
    # the figures say what they were measured over: a 1500-byte link dropping fragments, and
    # the tunnel MTU the agent probed there (smaller than the link: the encapsulation fits)
    assert wan["mtu"]["link"] == 1500 and wan["mtu"]["fragments"] == "dropped"
    assert wan["mtu"]["tunnel_c_source"] == "probed" and 1280 <= wan["mtu"]["tunnel_c"] < 1500
    assert wan["mtu"]["tunnel_e"] == 1420
    paths = {"a": report["direct"], **wan["paths"]}
    assert set(paths) == {"a", "b", "c", "d", "e", "f"}
    for key, path in paths.items():
        assert path["tcp_1_mbit"]["median"] > 0 and path["tcp_4_mbit"]["median"] > 0
        assert path["rr_p99_ms"]["median"] >= path["rr_p50_ms"]["median"] > 0
        assert (path["ping_ms"] is None) == (key in ("c", "f"))  # runs: TCP ports only
        assert (path["cpu_s_per_gb"] is None) == (key in ("a", "e"))  # OpenVPN processes: not on a or e
        assert path["machine_cpu_s_per_gb"]["median"] > 0  # the whole machine: every path
    assert wan["paths"]["e"]["ping_ms"]["median"] > 0
    assert set(wan["ratios"]) == {"c/b tcp 1 stream", "c/d tcp 1 stream", "c/d rr p99", "e/c tcp 1 stream",
                                  "e/c machine CPU s/GB", "f/c tcp 1 stream", "f/c machine CPU s/GB"}
    # issue 18's targets: vpnagent's WireGuard plane (f) against its OpenVPN hub (c)
    targets = wan["targets"]
    for name in ("tcp_1_stream", "machine_cpu_s_per_gb"):
        assert targets[name]["path"] == "f" and targets[name]["vs"] == "c" and targets[name]["ratio"] > 0
        assert isinstance(targets[name]["met"], bool)
    assert set(wan["side_by_side"]) == {"c", "d", "e", "f"}
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(wan["two_pairs"]) == {"b", "c", "e", "f"}
    for pair in wan["two_pairs"].values():
        assert pair["two_pairs_mbit"] > 0 and pair["one_pair_mbit"] > 0 and pair["ratio"] > 0
    assert wan["side_by_side"]["e"]["two_pairs_ratio"] > 0
    assert "(e) wireguard raw" in proc.stdout and "target tcp_1_stream: (f)/(c)" in proc.stdout


@pytest.mark.docker
def test_controlplane_benchmark_smoke(docker_client, tmp_path):
    out = tmp_path / "controlplane.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "controlplane.py"), "--quick", "--only", "cluster",
                           "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["connect_s"]["n"] == 1 and report["echo_task_s"]["median"] > 0
    assert report["addresses_ms"]["runs_in_store"] >= 500 and report["addresses_ms"]["p99"] >= report["addresses_ms"]["p50"]
    assert report["many_nodes"]["nodes"] == 3 and report["many_nodes"]["client_rss_mb"] > 0


def test_controlplane_push_benchmark_smoke(tmp_path):
    """The push figures need no Docker: a real `serve` on loopback and simulated nodes (the
    agent's ServerAPI and EventStream)."""
    out = tmp_path / "controlplane-push.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "controlplane.py"), "--quick", "--only", "push",
                           "--json", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    push = json.loads(out.read_text())["push"]
    idle = push["idle"]
    assert set(idle) == {"0", "3", "5"} and set(idle["3"]) == {"poll"} and set(idle["5"]) == {"push", "streams"}
    for figures in (idle["0"]["none"], idle["3"]["poll"], idle["5"]["push"], idle["5"]["streams"]):
        assert figures["window_s"] > 0 and figures["server_cpu_pct"] >= 0 and figures["server_rss_mb"] > 0
        assert figures["failed"] == {}
    assert idle["3"]["poll"]["by_endpoint"]["GET /node/peers"] > 0  # the old behaviour really polled
    # every task's run was pushed to and taken by its node; every stream came back after the restart
    taken = push["task_to_taken"]["5"]
    assert taken["not_taken_within_10_s"] == 0 and taken["taken_ms"]["requests"] == taken["tasks"] == 10
    assert taken["taken_ms"]["p99"] >= taken["taken_ms"]["p50"] > 0
    assert set(push["addresses_ms"]) == {"0", "5"}
    assert all(a["p99"] >= a["p50"] > 0 for a in push["addresses_ms"].values())
    storm = push["storm"]
    assert storm["reconnected"] == storm["nodes"] == 5 and storm["still_connected_after_settle"] == 5
    assert sum(row["reconnects"] for row in storm["timeline_from_sigterm"]) == 5
    assert push["server_log_problems"]["lines"] == 0 and push["sim_errors"] == {}
    assert "NOT the container start" in proc.stdout and "full-jitter backoff" in proc.stdout


@pytest.mark.root
def test_netns_calls_benchmark_smoke(tmp_path):
    out = tmp_path / "netns_calls.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "netns_calls.py"), "--quick", "--calls", "5",
                           "--hang-s", "10", "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["answers_checked"] is True
    for call in ("set_default_route", "ipv4_addresses", "link_mtu"):
        figures = report["calls"][call]
        assert set(figures) == {"nsenter+ip", "NetNS kept", "NetNS per call", "setns thread"}
        assert figures["nsenter+ip"]["n"] == 5 and figures["nsenter+ip"]["p95"] >= figures["nsenter+ip"]["median"] > 0
    # the agent's own path must notice a namespace whose process is gone
    assert report["after_death"]["nsenter+ip"].startswith("NetnsError")
    assert "set_default_route" in proc.stdout and "after the namespace's process died" in proc.stdout


@pytest.mark.docker
def test_scaleout_benchmark_smoke(docker_client, tmp_path):
    from tests.server.postgres import connect_from_env

    connect_from_env().close()  # skips (or fails under VPNAGENT_REQUIRE_POSTGRES=1) without PostgreSQL
    out = tmp_path / "scaleout.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "scaleout.py"), "--quick", "--threads", "4",
                           "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "first connect through API server B" in proc.stdout
    report = json.loads(out.read_text())
    assert report["threads"] == 4
    for mix in ("node mix", "port registrations", "run updates"):
        layouts = report["api"][mix]
        assert set(layouts) == {"1 process", "1 serve, api_workers 2", "2 serves (replicas)"}
        for got in layouts.values():
            # every request answered 2xx, through every API server of the layout
            assert got["requests"] > 0 and got["errors"] == 0, got["first_error"]
            assert got["p99_ms"] >= got["p50_ms"] > 0
            assert set(got["cpu_share"]) == {"client", "api_servers", "postgres", "other", "machine_busy"}
            assert got["cpu_share"]["client"] > 0 and got["cpu_share"]["api_servers"] > 0
    assert report["api"]["database alone"]["commits"] > 0
    connect = report["connect"]
    assert connect["config_to_entry_s"]["n"] == 1 and connect["reconnect_s"]["median"] > 0
    assert connect["config_to_connected_s"]["median"] >= connect["config_to_entry_s"]["median"] > 0


@pytest.mark.docker
def test_wireguard_go_benchmark_smoke(docker_client, tmp_path):
    out = tmp_path / "wireguard-go.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "wireguard_go.py"), "--quick", "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    # Debian 12's wireguard-go, then the image's (Debian 13's), each through a real wg0
    assert [r["wireguard_go"].split("-")[0] for r in rows] == ["0.0.20220316", "0.0.20231211"]
    assert all(r["mbit_median"] > 0 and r["cpu_median"] > 0 for r in rows)
    assert docker_client.images.list(name="vpnagent/vpn-wg-bookworm") == []  # the variant is removed
