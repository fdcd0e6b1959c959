"""`meshlens` command line: run, top, trace, check."""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any, NoReturn

from . import __version__

# numpy's OpenBLAS would start a thread per core for linear algebra the agent
# never does; set before anything imports numpy.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad usage in one line and exits 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"meshlens: error: {message} (see --help)\n")


def listen_address(text: str) -> tuple[str, int]:
    """HOST:PORT, [V6]:PORT or :PORT (all interfaces)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(
            f"--listen wants HOST:PORT with a port 1-65535, got {text!r}"
        )
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            if host != "localhost":
                raise argparse.ArgumentTypeError(
                    f"--listen wants an IP address (or localhost), got {host!r}"
                ) from None
    return host or "0.0.0.0", int(port)


def positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
        return value

    return parse


CORE_TRACE_TOOLS = {
    "tcplife": "TCP sessions with their lifespan and bytes (bcc tcplife)",
    "tcpconnect": "active TCP connects with their result (bcc tcpconnect)",
    "tcpaccept": "passive TCP accepts (bcc tcpaccept)",
}


def _trace_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("-d", "--duration", type=positive(float), default=None, help="stop after N s")
    p.add_argument("-t", "--timestamp", action="store_true", help="include a time column")


def _feature_trace_tools() -> dict[str, Any]:
    from .features import trace_tools

    return trace_tools()


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="meshlens", description="Service-to-service observability with eBPF.")
    p.add_argument("--version", action="version", version=f"meshlens {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run the agent and serve Prometheus metrics")
    run.add_argument(
        "--listen", type=listen_address, default=("127.0.0.1", 9464), metavar="HOST:PORT"
    )
    run.add_argument(
        "--interval", type=positive(float), default=5.0, help="summary every N seconds"
    )
    run.add_argument(
        "--quiet",
        action="store_true",
        help="no live summary, and no refresh but for a scrape or a backlog of records",
    )
    run.add_argument("--strict", action="store_true", help="exit if any probe fails to load")
    run.add_argument(
        "--max-flows", type=positive(int), default=65536, help="kernel flow table size"
    )
    run.add_argument(
        "--max-series", type=positive(int), default=10000, help="series cap per metric"
    )
    run.add_argument(
        "--udp-idle", type=positive(float), default=30.0, help="UDP flow idle expiry (s)"
    )
    run.add_argument(
        "--bpf-stats",
        action="store_true",
        help="per-program BPF run time and count (kernel.bpf_stats_enabled): costs ~375 ns "
        "per TCP send/recv on this machine, so off by default",
    )
    run.add_argument(
        "--features",
        type=lambda t: tuple(x for x in t.split(",") if x and x != "none"),
        default=None,
        metavar="LIST",
        help="comma list of features to load (default all; 'none' for the core only)",
    )
    run.add_argument(
        "--no-tcp-health", action="store_true", help="no per-connection health (RTT, retransmits)"
    )
    run.add_argument(
        "--priority",
        choices=("idle", "normal"),
        default="idle",
        help="CPU priority of the periodic refresh and of /metrics: 'idle' (SCHED_IDLE, the "
        "default) runs them on CPU time no workload wants, and a workload that wakes takes "
        "the CPU back at once (normal while records pour into the ring buffers); the "
        "ring buffers are drained at normal priority either way",
    )
    from .features import features

    for feat in features():
        feat.add_arguments(run)

    top = sub.add_parser("top", help="live per-flow table, like tcptop")
    top.add_argument("interval", nargs="?", type=positive(float), default=1.0)
    top.add_argument("count", nargs="?", type=positive(int), default=None)
    top.add_argument("-C", "--noclear", action="store_true", help="don't clear the screen")
    top.add_argument("-n", "--rows", type=positive(int), default=20, help="rows to show")
    top.add_argument("--json", action="store_true", help="one JSON object per interval")
    top.add_argument("-w", "--wide", action="store_true", help="full addresses, wider than 80")

    trace = sub.add_parser("trace", help="stream events (bcc's columns where bcc has the tool)")
    tools = trace.add_subparsers(dest="tool", required=True, parser_class=_Parser)
    for name, help_text in CORE_TRACE_TOOLS.items():
        _trace_common(tools.add_parser(name, help=help_text))
    for name, tool in _feature_trace_tools().items():
        tp = tools.add_parser(name, help=tool.help)
        _trace_common(tp)
        tool.add_arguments(tp)

    chk = sub.add_parser("check", help="which hooks and features work on this kernel")
    chk.add_argument("--json", action="store_true")

    bench = sub.add_parser("bench", help="eBPF vs Envoy sidecars on a microservice shop")
    from .bench.cli import add_arguments as bench_arguments

    bench_arguments(bench)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "check":
        from .check import run_check

        return run_check(json_out=args.json)
    if args.command == "bench":
        from .bench.cli import run as run_bench

        return int(run_bench(args))
    err = _preflight()
    if err:
        print(f"meshlens: {err}", file=sys.stderr)
        return 1
    if args.command == "run":
        return _run(args)
    if args.command == "top":
        from .top import run_top

        return run_top(args)
    if args.tool in CORE_TRACE_TOOLS:
        from .trace import run_trace

        return run_trace(args)
    return int(_feature_trace_tools()[args.tool].run(args))


def _preflight() -> str | None:
    from .system import btf_available, ensure_mounted, missing_capabilities

    missing = missing_capabilities()
    if missing:
        return "missing capability " + ", ".join(missing) + "; run as root"
    if not btf_available():
        return (
            "this kernel exposes no BTF (/sys/kernel/btf/vmlinux is missing); "
            "meshlens needs CONFIG_DEBUG_INFO_BTF=y"
        )
    ensure_mounted()
    return None


def _run(args: argparse.Namespace) -> int:
    from . import exposition
    from .agent import Agent, AgentConfig
    from .exporter import AgentCollector
    from .summary import summary_lines
    from .system import normal_priority_if, run_when_idle

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    cfg = AgentConfig(
        max_tcp_flows=args.max_flows,
        max_udp_flows=args.max_flows,
        udp_idle_seconds=args.udp_idle,
        max_series=args.max_series,
        strict=args.strict,
        bpf_stats=args.bpf_stats,
        features=args.features,
        tcp_health=not args.no_tcp_health,
        options=vars(args),
        snapshots=False,  # for top and trace, not the exporter
    )
    agent = Agent(cfg)
    server = None
    try:
        statuses = agent.start()
    except Exception as exc:
        print(f"meshlens: a probe failed to load (--strict): {exc}", file=sys.stderr)
        return 1
    try:
        for st in statuses:
            if not st.loaded:
                print(f"meshlens: probe {st.name} not loaded: {st.error}", file=sys.stderr)
        if not agent.probes:
            print("meshlens: no probe could be loaded", file=sys.stderr)
            return 1
        host, port = args.listen
        idle = args.priority == "idle"
        try:
            server = exposition.serve(
                host,
                port,
                AgentCollector(agent).collect,
                run_when_idle if idle else None,
                agent.under_pressure,
            )
        except OSError as exc:
            print(f"meshlens: cannot listen on {host}:{port}: {exc.strerror}", file=sys.stderr)
            return 1
        shown = f"[{host}]" if ":" in host else host
        names = ", ".join(p.name for p in agent.probes)
        print(
            f"meshlens {__version__}: serving http://{shown}:{port}/metrics "
            f"(probes: {names}; attached in {agent.startup_seconds:.2f} s). Ctrl-C stops.",
            flush=True,
        )
        # After the agent's threads started: they drain the rings at normal
        # priority; this thread's refreshes wait for idle CPU.
        if idle and not run_when_idle():
            print("meshlens: SCHED_IDLE refused; refreshing at normal priority", file=sys.stderr)
        last = None
        # Quiet, nothing reads the maps but a scrape, or a backlog of records
        # (accounted at once by the agent): no refresh only to throw it away.
        while not stop.wait(None if args.quiet else args.interval):
            with normal_priority_if(agent.under_pressure()):
                agent.refresh()
            totals = agent.table.totals()
            for line in summary_lines(totals, last, args.interval):
                print(line, flush=True)
            last = totals
    finally:
        if server:
            server.shutdown()  # no scrape reaches a stopped agent
            server.server_close()
        agent.stop()
    print("meshlens: stopped; all programs detached.", flush=True)
    return 0


def _now() -> str:
    return time.strftime("%H:%M:%S")


def entrypoint() -> None:  # pragma: no cover
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
