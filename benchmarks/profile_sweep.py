"""Which OpenVPN settings help within the safe envelope (a 1500-byte path that drops IP
fragments): benchmarks/dataplane.py's headline scenario once per candidate profile, paths
b and c with the candidate, d (vantage6's defaults) unchanged, side by side in one table.

    .venv/bin/python benchmarks/profile_sweep.py                # every candidate, 3 runs of 5 s
    .venv/bin/python benchmarks/profile_sweep.py --runs 1 --seconds 3
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import dataplane  # noqa: E402

# Each on top of OpenVPN's own defaults (tun-mtu 1500, its MSS clamp), like vantage6's.
CANDIDATES: dict[str, dict] = {
    "openvpn defaults": {"sndbuf": None, "rcvbuf": None, "fast_io": False},
    "fast-io": {"sndbuf": None, "rcvbuf": None, "fast_io": True},
    "buffers 512 KiB": {"sndbuf": 524288, "rcvbuf": 524288, "fast_io": False},
    "buffers 512 KiB + fast-io": {"sndbuf": 524288, "rcvbuf": 524288, "fast_io": True},
    "buffers 2 MiB + fast-io": {"sndbuf": 2097152, "rcvbuf": 2097152, "fast_io": True},
    "buffers 512 KiB + fast-io + txqueuelen 1000": {"sndbuf": 524288, "rcvbuf": 524288, "fast_io": True,
                                                    "txqueuelen": 1000},
    "buffers 512 KiB + fast-io + CHACHA20-POLY1305": {"sndbuf": 524288, "rcvbuf": 524288, "fast_io": True,
                                                       "cipher": "CHACHA20-POLY1305"},
    # jumbo tunnel packets that OpenVPN itself cuts into datagrams of at most 1300 bytes: no
    # IP fragments on the path, one encryption per 9000 bytes (the nodes' networks at 9000)
    "tun-mtu 9000 + fragment 1300 + buffers + fast-io": {"tun_mtu": 9000, "mssfix": 0, "fragment": 1300,
                                                         "sndbuf": 524288, "rcvbuf": 524288, "fast_io": True},
}
NODE_EXTRA: dict[str, dict] = {"tun-mtu 9000 + fragment 1300 + buffers + fast-io": {"isolated_mtu": 9000}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--only", action="append", choices=sorted(CANDIDATES), help="these candidates only")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "profile_sweep.json")
    args = ap.parse_args(argv)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only or list(CANDIDATES):
            out = Path(tmp) / "run.json"
            dataplane.main(["--scenario", "wan_1500", "--no-pairs", "--runs", str(args.runs), "--seconds",
                            str(args.seconds), "--profile", json.dumps(CANDIDATES[name]),
                            "--node-extra", json.dumps(NODE_EXTRA.get(name, {})), "--json", str(out),
                            "--plot", str(Path(tmp) / "run.png")])
            sc = json.loads(out.read_text())["scenarios"]["wan_1500"]
            rows[name] = {"profile": CANDIDATES[name], **{
                f"{k}_{field}": sc["paths"][k][field]["median"] for k in "bcd"
                for field in ("tcp_1_mbit", "rr_p99_ms", "machine_cpu_s_per_gb")}, **sc["ratios"]}
    lines = [f"{'candidate':<46}{'b Mbit/s':>10}{'c Mbit/s':>10}{'d Mbit/s':>10}{'c/d':>7}"
             f"{'c p99 ms':>10}{'d p99 ms':>10}{'c CPU s/GB':>12}"]
    for name, r in rows.items():
        lines.append(f"{name:<46}{r['b_tcp_1_mbit']:>10.0f}{r['c_tcp_1_mbit']:>10.0f}{r['d_tcp_1_mbit']:>10.0f}"
                     f"{r['c/d tcp 1 stream']:>7.2f}{r['c_rr_p99_ms']:>10.2f}{r['d_rr_p99_ms']:>10.2f}"
                     f"{r['c_machine_cpu_s_per_gb']:>12.1f}")
    print("\n".join(lines))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"runs": args.runs, "seconds": args.seconds, "rows": rows}, indent=2))
    print(f"JSON written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
