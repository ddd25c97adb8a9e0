"""`vpnagent` command line: run the node agent, show its status and a run's log, clean up,
build images."""
from __future__ import annotations

import argparse
import io
import json
import os
import signal
import sys
import time
from pathlib import Path

from vpnshared.cli import ConfigOption, MissingConfig, add_subcommands, require_config, setup_logging, top_parser

CONFIG = ConfigOption("/etc/vpnagent/node.yaml", "VPNAGENT_CONFIG", "node config",
                      "write one: `vpnagent config-reference` lists its keys", example="examples/node.yaml")


def _config_path(args: argparse.Namespace) -> Path:
    """The node config file the command reads: --config, else $VPNAGENT_CONFIG, else the default."""
    return require_config(args.config, CONFIG)


def _cmd_run(args: argparse.Namespace) -> int:
    from .agent import Agent, StartError
    from .config import load_config

    cfg = load_config(_config_path(args))
    agent = Agent(cfg)
    signal.signal(signal.SIGTERM, lambda *_: agent.stop())
    signal.signal(signal.SIGINT, lambda *_: agent.stop())
    try:
        agent.start()
        agent.serve_forever()
    except StartError as exc:
        print(f"vpnagent: cannot start: {exc}", file=sys.stderr)
        return 1
    finally:
        agent.leave()  # runs and the VPN client stay for the next agent; `vpnagent cleanup` removes them
    return 0


def _cmd_cleanup(args: argparse.Namespace) -> int:
    from .agent import cleanup
    from .config import load_config
    from .runtime import connect_engine

    cfg = load_config(_config_path(args))
    removed = cleanup(cfg, connect_engine())
    print("\n".join(f"removed {r}" for r in removed) or "nothing to remove")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from .config import load_config

    cfg = load_config(_config_path(args))
    path = cfg.data_dir / "status.json"
    try:
        status = json.loads(path.read_text())
    except (OSError, ValueError):
        print(f"no status at {path}: is the agent for node {cfg.name} running?", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    lines, code = render_status(status, time.time())
    print("\n".join(lines))
    return code


def _clock(t: float, now: float) -> str:
    """HH:MM:SS for a time today, with the date otherwise (a session lost days ago)."""
    same_day = time.localtime(t)[:3] == time.localtime(now)[:3]
    return time.strftime("%H:%M:%S" if same_day else "%Y-%m-%d %H:%M:%S", time.localtime(t))


def _vpn_headline(vpn: dict, now: float) -> str:
    """The tunnel interface holding its address says "connected"; the data plane's session
    (status.json "session") says whether packets pass: the interface outlives a lost session.
    A file without "session" comes from an agent that did not read it."""
    session = vpn.get("session")
    headline = "VPN connected" if vpn["connected"] else "VPN NOT connected"
    if not session or session.get("state") == "up":
        return headline
    since = f" since {_clock(session['since'], now)}" if session.get("since") else ""
    return f"{headline}, session {str(session.get('state')).upper()}{since} ({session.get('detail') or '-'})"


def _server_line(server: dict | None, now: float) -> str | None:
    if not server or server.get("state") == "ok":
        return None
    since = f" since {_clock(server['since'], now)}" if server.get("since") else ""
    error = server.get("error") or "-"
    if server.get("state") == "refused":
        return f"server: refusing this node ({error}){since}"
    return f"server: {server.get('state')}{since} ({error})"


def _push_line(push: dict) -> str:
    """The event stream: whether the server can tell this node of new runs as they happen."""
    state = push.get("state")
    if state == "off":
        return "event stream: off (push: false); polling every poll_interval"
    if state == "unsupported":
        return "event stream: the server has none (an older server?); polling every poll_interval"
    detail = f"; {push['error']}" if push.get("error") and state != "connected" else ""
    return (f"event stream: {state} ({push.get('connects', 0)} connect(s), {push.get('events', 0)} event(s)"
            f"){detail}")


def _plane_lines(plane: dict) -> list[str]:
    """The data plane and, on WireGuard, each peer's path: direct, or through the hub."""
    if plane.get("plane") != "wireguard":
        return ["data plane: OpenVPN hub (every peer through the server)"]
    if not plane.get("interface"):
        return ["data plane: WireGuard, direct links not up yet (every peer through the OpenVPN hub)"]
    peers = plane.get("peers") or []
    direct = sum(1 for p in peers if p.get("path") == "direct")
    lines = [f"data plane: WireGuard ({plane.get('mode')}, {plane['interface']}, UDP {plane.get('listen_port')}): "
             f"{direct} of {len(peers)} peer(s) direct, the rest through the OpenVPN hub"]
    for p in peers:
        via = f" via {p['endpoint']}" if p.get("path") == "direct" and p.get("endpoint") else ""
        lines.append(f"  node {p.get('node_id')} {p.get('vpn_ip')}: {p.get('path')}{via} ({p.get('detail')})")
    return lines


def render_status(status: dict, now: float) -> tuple[list[str], int]:
    """What `vpnagent status` prints for a status.json, and its exit code: 1 when no running
    agent stands behind the file (stale, or stopped on purpose)."""
    lines = []
    stopped = bool(status.get("stopped"))
    if stopped:
        written = status.get("written_at")
        at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(written)) if written else "an unknown time"
        lines.append(f"agent stopped at {at}; its runs and VPN client were left running for the next agent to adopt")
    vpn = status["vpn"]
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(vpn["since"])) if vpn.get("since") else "-"
    lines.append(f"node {status['node']}: {_vpn_headline(vpn, now)}  ip {vpn.get('vpn_ip') or '-'}  since {since}")
    fresh, line = status_freshness(status, now)
    lines.append(f"  {line}")
    server = _server_line(status.get("server"), now)
    if server:
        lines.append(f"  {server}")
    if status.get("push"):
        lines.append(f"  {_push_line(status['push'])}")
    if status.get("data_plane"):
        lines += [f"  {line}" for line in _plane_lines(status["data_plane"])]
    if vpn.get("tunnel_mtu"):
        lines.append(f"  tunnel MTU {vpn['tunnel_mtu']} ({vpn.get('tunnel_mtu_source')}: "
                     f"{vpn.get('tunnel_mtu_detail') or '-'})")
    if vpn.get("cert_expires"):
        days = (vpn["cert_expires"] - now) / 86400
        expires = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(vpn["cert_expires"]))
        lines.append(f"  certificate expires {expires} ({days:.1f} days; renewed {vpn.get('renewals', 0)} time(s) "
                     "by this agent)")
    if vpn.get("error"):
        lines.append(f"  last VPN error: {vpn['error']}")
    lines.append(f"{len(status['runs'])} live run(s)")
    if status["runs"]:
        lines.append(f"{'run':>6}  {'task':>6}  {'holder ip':<15}  {'wired':>8}  ports (vpn->container label)")
    for r in status["runs"]:
        ports = ", ".join(f"{p['vpn_port']}->{p['container_port']} {p['label'] or ''}".strip() for p in r["ports"])
        wired = f"{r['wired_ms']:.1f} ms" if r.get("wired_ms") is not None else "-"
        lines.append(f"{r['run_id']:>6}  {r['task_id']:>6}  {r['holder_ip']:<15}  {wired:>8}  {ports or '-'}")
    if status.get("adopted"):
        lines.append(f"adopted at start from the previous agent: run(s) {', '.join(map(str, status['adopted']))}")
    if status.get("reports_waiting"):
        lines.append("reports waiting for the server (journaled, sent when it answers): run(s) "
                     + ", ".join(map(str, status["reports_waiting"])))
    fixes = status.get("fixes", [])
    lines.append(f"reconcile corrections: {len(fixes) or 'none'}")
    lines.extend(f"  {fix}" for fix in fixes)
    return lines, 0 if fresh and not stopped else 1


STALE_AFTER_S = 30.0  # the running agent rewrites its status at least every few seconds


def status_freshness(status: dict, now: float) -> tuple[bool, str]:
    """Whether a status file still describes a running agent, and a line that says so."""
    written, pid = status.get("written_at"), status.get("pid")
    if written is None or pid is None:
        return True, "written by an agent that does not date its status"
    age = max(0.0, now - written)
    if not _pid_alive(int(pid)):
        return False, (f"STALE: written {age:.0f} s ago by agent process {pid}, which is gone; "
                       "start the agent (`vpnagent run`) for a current status")
    if age > STALE_AFTER_S:
        return False, f"STALE: agent process {pid} runs but has not updated its status for {age:.0f} s"
    return True, f"written {age:.1f} s ago by agent process {pid}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def _cmd_doctor(args: argparse.Namespace) -> int:
    from .config import load_config
    from .doctor import diagnose, exit_code, render_json, render_text

    path = _config_path(args)
    cfg = load_config(path)

    def interrupted(*_: object) -> None:
        raise KeyboardInterrupt  # so the self-test's finally removes its container and rules

    signal.signal(signal.SIGTERM, interrupted)
    # also when started as a background job, which inherits SIGINT ignored: Ctrl-C (or a
    # test's SIGINT) must still reach the self-test's clean-up
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        results = diagnose(cfg, config_path=str(path))
    except KeyboardInterrupt:
        print("vpnagent doctor: interrupted", file=sys.stderr)
        return 130
    print(render_json(cfg.name, results) if args.json else render_text(results), end="")
    return exit_code(results)


def _cmd_logs(args: argparse.Namespace) -> int:
    from .config import load_config
    from .runlogs import RunNotHere, copy_log, find_algorithm
    from .runtime import EngineError, connect_engine

    cfg = load_config(_config_path(args))
    try:
        runtime = connect_engine()
        copy_log(runtime, find_algorithm(runtime, cfg.name, args.run), sys.stdout.buffer, follow=args.follow)
    except RunNotHere as exc:
        print(f"vpnagent: {exc}", file=sys.stderr)
        return 1
    except EngineError as exc:
        print(f"vpnagent: cannot read the log of run {args.run}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C ends following; the run goes on
        return 130
    except BrokenPipeError:  # the reader went away (`vpnagent logs 7 -f | head`): done, quietly
        _silence_stdout()
    return 0


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so flushing it at exit does not fail on a closed pipe again."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        pass


def _run_id(text: str) -> int:
    """A run id on the command line (a positive number), else a usage error (exit 2)."""
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a run id; give the run's number, e.g. 7 "
                                          "(`vpnagent status` lists the live runs)")
    return int(text)


def _cmd_images(args: argparse.Namespace) -> int:
    from .runtime.docker_images import ImageBuildError, build_agent_image, build_images

    try:
        say = lambda m: print(m, flush=True)  # noqa: E731 - progress lines show up while building
        build_images(force=args.force, progress=say)
        if args.agent:
            build_agent_image(force=args.force, progress=say)
    except ImageBuildError as exc:
        print(f"vpnagent: image build failed: {exc}", file=sys.stderr)
        return 1
    return 0


def _cmd_build_algorithm(args: argparse.Namespace) -> int:
    from .algorithm_recipe import AlgorithmRecipeError, load_algorithm
    from .image_recipes import ImageBuildError

    try:
        spec = load_algorithm(args.directory, args.tag)
        if args.save_context:
            # no engine needed: the context can be built elsewhere (`docker build - < FILE`)
            Path(args.save_context).write_bytes(spec.recipe().context().getvalue())
            print(f"{spec.tag}: build context written to {args.save_context} ({len(spec.files)} algorithm "
                  f"file(s)); build it with: docker build -t {spec.tag} - < {args.save_context}")
            return 0
        from .runtime.docker_images import build_algorithm_dir

        tag, image_id = build_algorithm_dir(spec, client=None, force=args.force,
                                            progress=lambda m: print(m, flush=True))
    except AlgorithmRecipeError as exc:
        print(f"vpnagent: {exc}", file=sys.stderr)
        return 2
    except (ImageBuildError, OSError) as exc:
        print(f"vpnagent: image build failed: {exc}", file=sys.stderr)
        return 1
    print(f"{tag} {image_id}")
    return 0


def _cmd_join(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vpnshared.joinstring import JoinStringError, extract

    from .join import JoinFailed, join

    text = args.join_string
    try:
        if text == "-":
            text = extract(sys.stdin.read())
    except JoinStringError as exc:
        print(f"vpnagent join: not a usable join string on stdin: {exc}", file=sys.stderr)
        return 2
    try:
        joined = join(text, Path(args.config) if args.config else None,
                      Path(args.data_dir) if args.data_dir else None, force=args.force)
    except JoinFailed as exc:
        print(f"vpnagent join: {exc}", file=sys.stderr)
        return exc.code
    print(f"node {joined.name} joined {joined.server_url}\n"
          f"  config     {joined.config_path} (0600: it holds the node's API key)\n"
          f"  server CA  {joined.ca_path}\n"
          f"  data_dir   {joined.data_dir}\n"
          f"next: vpnagent doctor --config {joined.config_path}\n"
          f"      vpnagent run --config {joined.config_path}")
    return 0


def _add_join_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("join", help="join a server with the join string `vpnagent-server add-node` printed: "
                       "writes this node's config (exit 0: joined, 1: refused or unreachable, 2: bad input)")
    p.add_argument("join_string", metavar="JOIN_STRING", help="the join string, or - to read add-node's output "
                   "from stdin and take the join string in it")
    p.add_argument("--config", "-c", help="where to write the node config (default /etc/vpnagent/NAME.yaml); the "
                   "server's CA goes beside it as NAME.server-ca.crt")
    p.add_argument("--data-dir", help="the node's data_dir (default /var/lib/vpnagent/NAME)")
    p.add_argument("--force", action="store_true", help="replace an existing config")
    p.set_defaults(fn=_cmd_join)


def _cmd_config_reference(args: argparse.Namespace) -> int:
    from .config import reference_markdown

    sys.stdout.write(reference_markdown())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = top_parser("vpnagent", "vpnagent node agent: wires algorithm containers into the private OpenVPN "
                        "network of a collaboration.", CONFIG)
    sub = add_subcommands(parser, CONFIG, dest="cmd", required=True)
    p = sub.add_parser("run", help="run the node agent in the foreground")
    p.set_defaults(fn=_cmd_run)
    p = sub.add_parser("status", help="show VPN state and live runs of a running agent")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(fn=_cmd_status)
    p = sub.add_parser("cleanup", help="remove every container, rule and network this node made")
    p.set_defaults(fn=_cmd_cleanup)
    p = sub.add_parser("doctor", help="check Docker, TUN, iptables, server, TLS, token and VPN; self-test "
                       "(exit 0: all pass, 1: a check failed, 2: bad config)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(fn=_cmd_doctor)
    p = sub.add_parser("images", help="build the local images (vpn, algorithm base, echo) and algorithm images")
    isub = add_subcommands(p, CONFIG, dest="images_cmd", required=True)
    b = isub.add_parser("build", help="build the images whose recipe changed")
    b.add_argument("--force", action="store_true", help="rebuild even when the recipe is unchanged")
    b.add_argument("--agent", action="store_true", help="also build the node agent's own image "
                   "vpnagent/agent:latest (wheels from PyPI, about a minute; for running the agent in a container)")
    b.set_defaults(fn=_cmd_images)
    b = isub.add_parser("build-algorithm", help="build an algorithm image from a directory holding "
                        "vpnagent-algorithm.yaml, on top of the algorithm base image (exit 0: built or "
                        "cached, 1: the build failed, 2: bad recipe or files)")
    b.add_argument("directory", metavar="DIR", help="the algorithm's directory (docs/algorithm-guide.md: "
                   "\"Building the image\")")
    b.add_argument("--tag", "-t", help="the image name, instead of the recipe's tag")
    b.add_argument("--force", action="store_true", help="rebuild even when nothing changed")
    b.add_argument("--save-context", metavar="FILE", help="write the build context (a tar with the Dockerfile) "
                   "to FILE instead of building; needs no Docker engine")
    b.set_defaults(fn=_cmd_build_algorithm)
    _add_join_parser(sub)
    p = sub.add_parser("config-reference", help="print the node config reference (Markdown table)")
    p.set_defaults(fn=_cmd_config_reference)
    p = sub.add_parser("logs", help="show a run's algorithm output while it runs (exit 1: the run is not "
                       "running on this node)")
    p.add_argument("run", type=_run_id, metavar="RUN", help="the run id (`vpnagent status` lists the live runs)")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing until the algorithm exits or Ctrl-C")
    p.set_defaults(fn=_cmd_logs)
    args = parser.parse_args(argv)
    setup_logging(args.log_level, quiet=("urllib3", "docker"))
    from .config import ConfigError

    try:
        return args.fn(args)
    except MissingConfig as exc:
        print(f"vpnagent: {exc}", file=sys.stderr)
        return 2
    except ConfigError as exc:
        print(f"vpnagent: config error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
