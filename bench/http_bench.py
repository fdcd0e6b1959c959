"""HTTP overhead benchmark: nginx under wrk at saturation, the same run with and
without the agent, interleaved round by round so that drift on a shared host
hits both alike.

    python bench/http_bench.py [--rounds 5] [--seconds 6] [--connections 32]
                               [--modes none,http,full] [--json FILE]

nginx (1 worker, pinned to CPU 0) serves a 612-byte file from one lab host;
wrk (1 thread, --connections keep-alive connections, pinned to CPU 1) drives it
from the other. Modes: `none` (no agent), `http` (an agent with the core
probes and the http feature only), `http-only` (the http feature alone),
`...-nostats` (without kernel.bpf_stats_enabled), `stats` (only
bpf_stats enabled, no program), `full` (`meshlens run`: every feature),
`core` (`meshlens run --features none`), `run:A+B` (`meshlens run --features A,B`);
a suffix `@N` runs that agent with `--interval N` (its refresh period; default 5 s;
with `--quiet`, which the bench uses, only its summary's), `~N` with `--max-flows N`,
`^normal` with `--priority normal`, and `!stop` stops it (SIGSTOP) during the run;
`other` is `full` from the checkout given with `--other` (two commits in one run).
During a run, `--scrape N` GETs the agent's /metrics every N s (default 15, at a random
phase), as Prometheus would. Make a round as long as the scrape period (`--seconds
15 --scrape 15`): then every round holds one scrape, and the median of the
rounds is the cost per scrape period; shorter rounds hold one or none, and their
median says more about where the few rounds with a scrape fall. For each run:
throughput, p50/p99 latency (wrk --latency), the agent process's CPU
(utime+stime from /proc), and the kernel time of the http programs per request
(bpf_stats, which the agent enables). Prints a markdown table of medians over
the rounds, loss and p99 added paired round by round, each with the interval that
holds the true median with at least 90 % probability (order statistics; on this
shared host one round's loss moves by several percent either way), see
docs/bench/http.md."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from meshlens.bench.report import median_ci
from meshlens.lab import Host, Lab

CONF = """daemon off; master_process on; worker_processes 1; pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off; keepalive_requests 100000000;
    client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi;
    uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
    server {{ listen {addr}:8080; root {d}/www; }}
}}
"""

AGENT_HTTP = """
import signal, sys, time
from meshlens.agent import Agent, AgentConfig
a = Agent(AgentConfig(features=("http",), probes=PROBES, bpf_stats=STATS))
a.start()
print("ready", flush=True)
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
while not stop:
    time.sleep(1)
    a.refresh()
a.stop()
"""


STATS_ONLY = """
import signal, time
from meshlens import _libbpf
fd = _libbpf.enable_run_time_stats()
print("ready", flush=True)
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
while not stop:
    time.sleep(0.2)
"""


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def http_prog_stats() -> tuple[int, int]:
    """(run_time_ns, run_cnt) summed over loaded programs named http_* or
    sockchain_*: in an agent the http programs are tail-called members of the
    socket chain, which the kernel accounts to the chain's dispatchers
    (docs/sockchain.md). With http alone in the chain (`http-only`) that is the
    http time; with the core probes (`http`) it includes tcpflow and udpflow."""
    out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, timeout=30)
    t = n = 0
    for p in json.loads(out.stdout or b"[]"):
        if p.get("name", "").startswith(("http_", "sockchain_")):
            t += p.get("run_time_ns", 0)
            n += p.get("run_cnt", 0)
    return t, n


def to_us(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    assert m, text
    return float(m[1]) * {"us": 1, "ms": 1e3, "s": 1e6}[m[2]]


def start_agent(mode: str, tries: int = 3) -> subprocess.Popen[bytes] | None:
    """Start the agent in `mode`; a failed start (another feature that does not
    load at this moment, a busy port) is retried."""
    for attempt in range(tries):
        try:
            return _start_agent(mode)
        except RuntimeError:
            if attempt == tries - 1:
                raise
            time.sleep(2)
    return None


OTHER: list[str] = []  # --other: a second checkout, built, for A/B of two commits


def _start_agent(mode: str) -> subprocess.Popen[bytes] | None:
    mode = mode.removesuffix("!stop")
    if mode == "none":
        return None
    src = Path(__file__).resolve().parent.parent / "src"
    if mode.startswith("other"):  # `other` = `full` from the --other checkout
        src, mode = Path(OTHER[0]) / "src", "full" + mode[len("other") :]
    env = dict(os.environ, PYTHONPATH=str(src))
    if mode.startswith("http"):
        # http: core probes + the http feature; http-only: no core probes;
        # -nostats: without kernel.bpf_stats_enabled (it costs every BPF
        # program on the host two clock reads per run)
        probes = "()" if "only" in mode else "('tcpflow', 'udpflow')"
        stats = "False" if "nostats" in mode else "True"
        code = AGENT_HTTP.replace("PROBES", probes).replace("STATS", stats)
        argv = [sys.executable, "-c", code]
    elif mode == "stats":
        argv = [sys.executable, "-c", STATS_ONLY]
    else:
        with socket.socket() as sk:  # a free port for its /metrics
            sk.bind(("127.0.0.1", 0))
            port = sk.getsockname()[1]
        mode, _, priority = mode.partition("^")  # full^normal: --priority normal
        mode, _, flows = mode.partition("~")  # full~1024: --max-flows 1024
        mode, _, interval = mode.partition("@")  # full@1: refresh every second
        argv = [sys.executable, "-m", "meshlens.cli", "run", "--quiet",
                "--listen", f"127.0.0.1:{port}"]  # fmt: skip
        if interval:
            argv += ["--interval", interval]
        if flows:
            argv += ["--max-flows", flows]
        if priority:
            argv += ["--priority", priority]
        if mode == "core":  # the agent without its features
            argv += ["--features", "none"]
        elif mode.startswith("run:"):  # run:http+tcphealth = --features http,tcphealth
            argv += ["--features", mode[4:].replace("+", ",")]
    # not a pipe: a chatty agent must never block on it
    errlog = tempfile.TemporaryFile()  # noqa: SIM115 (lives as long as the agent)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=errlog, env=env)
    proc.metrics_url = (  # type: ignore[attr-defined]
        f"http://127.0.0.1:{port}/metrics" if argv[1:3] == ["-m", "meshlens.cli"] else None
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith((b"ready", b"meshlens ")):
            return proc
    proc.kill()
    errlog.seek(0)
    err = errlog.read().decode(errors="replace")[-500:]
    raise RuntimeError(f"agent ({mode}) did not start: {err}")


def stop_agent(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


class Scraper:
    """What Prometheus does to a running agent: GET /metrics every `period` s,
    the first one at a random point of the first period (a run is a random
    window of a scrape schedule)."""

    def __init__(self, url: str | None, period: float) -> None:
        self.url, self.period = url, period
        self.done = threading.Event()
        self.scrapes = 0
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        wait = random.uniform(0, self.period)
        while self.url and self.period > 0 and not self.done.wait(wait):
            wait = self.period
            with urllib.request.urlopen(self.url, timeout=30) as resp:
                resp.read()
            self.scrapes += 1

    def __enter__(self) -> Scraper:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join()


def one_run(cli: Host, url: str, args: argparse.Namespace, agent: Any) -> dict[str, Any]:
    with Scraper(getattr(agent, "metrics_url", None), args.scrape) as scraper:
        res = _one_run(cli, url, args, agent)
    res["scrapes"] = scraper.scrapes
    return res


def _one_run(cli: Host, url: str, args: argparse.Namespace, agent: Any) -> dict[str, Any]:
    c0 = cpu_seconds(agent.pid) if agent else 0.0
    b0 = http_prog_stats()
    t0 = time.monotonic()
    r = cli.run(
        "taskset", "-c", "1", "wrk", "-t1", f"-c{args.connections}", f"-d{args.seconds}s",
        "--latency", url, timeout=args.seconds + 60,
    )  # fmt: skip
    wall = time.monotonic() - t0
    b1 = http_prog_stats()
    c1 = cpu_seconds(agent.pid) if agent else 0.0
    out = r.stdout.decode()
    n = int(re.search(r"(\d+) requests in", out)[1])  # type: ignore[index]
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.M))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])  # type: ignore[index]
    agent_cores = (c1 - c0) / wall
    return {
        "rps": rps,
        "requests": n,
        "p50_us": to_us(lat["50"]),
        "p99_us": to_us(lat["99"]),
        "agent_cores": agent_cores,
        "agent_cores_per_1k_rps": agent_cores / (rps / 1000) if rps else 0.0,
        "bpf_ns_per_request": (b1[0] - b0[0]) / n if n and agent else 0.0,
        "bpf_runs_per_request": (b1[1] - b0[1]) / n if n and agent else 0.0,
    }


CGROUP = "/sys/fs/cgroup/unified/meshlens-http-bench"


def nginx_site(d: str, srv: Host) -> None:
    """nginx's config and the 612-byte page it serves, in the folder d."""
    os.chmod(d, 0o755)
    (Path(d) / "www").mkdir()
    (Path(d) / "www" / "index.html").write_bytes(b"x" * 612)
    (Path(d) / "nginx.conf").write_text(CONF.format(d=d, addr=srv.addr))


def in_cgroup(host: Host, *cmd: str) -> list[str]:
    """argv that joins the bench cgroup, then runs cmd in the host's netns
    (`ip netns exec` hides the cgroup mount, so join first)."""
    return ["sh", "-c", f'echo $$ > {CGROUP}/cgroup.procs && exec "$@"', "sh",
            "ip", "netns", "exec", host.name, *cmd]  # fmt: skip


# --control noop*: the no-op programs (bench/noop.bpf.c) each attaches, by suffix
NOOP_CONTROLS: dict[str, tuple[str, ...]] = {
    "noop": ("egress", "ingress"),
    "noop-egress": ("egress",),
    "noop-ingress": ("ingress",),
    "noop-calls": ("send", "recv"),
}
# --control agent*: AgentConfig overrides ({}: the defaults, every feature)
AGENT_CONTROLS: dict[str, dict[str, Any]] = {
    "agent": {},
    "agent-core": {"features": ()},
    "agent-core-nohealth": {"features": (), "tcp_health": False},
    "agent-http": {"features": ("http",)},
}


def noop_object() -> Path:
    """bench/noop.bpf.c, compiled by clang into bench/build when stale."""
    root = Path(__file__).resolve().parent
    src, out = root / "noop.bpf.c", root / "build" / "noop.bpf.o"
    if not out.exists() or out.stat().st_mtime < src.stat().st_mtime:
        out.parent.mkdir(exist_ok=True)
        subprocess.run(["clang", "-O2", "-g", "-target", "bpf", f"-I{root.parent / 'build'}",
                        "-c", str(src), "-o", str(out)], check=True)  # fmt: skip
    return out


def scoped(args: argparse.Namespace) -> int:
    """Kernel cost alone, A/B pairs with the programs attached and detached between
    runs (loaded once, no agent process): the floor of any per-packet (cgroup_skb)
    design (a program per direction that only returns, attached to a cgroup of
    nginx and wrk), or the http probe's own programs."""
    from meshlens import _libbpf
    from meshlens.probes.base import cgroup2_root

    class NoopControl:
        """The control: programs that only return (bench/noop.bpf.c), on the
        packets of each direction (cgroup_skb, attached to a cgroup of nginx and
        wrk) or on the socket-call tracepoints (the host's)."""

        def __init__(self, directions: tuple[str, ...]) -> None:
            self.obj = _libbpf.BpfObject(str(noop_object()))
            self.obj.load()
            self.names = [f"noop_{d}" for d in directions]
            self.calls = directions[0] in ("send", "recv")
            self.links: list[Any] = []
            self.tracing: list[Any] = []

        def start(self) -> None:
            pass

        def attach(self) -> None:
            progs = [self.obj.programs[n] for n in self.names]
            self.links = [p.attach() if self.calls else p.attach_cgroup(CGROUP) for p in progs]

        def detach(self) -> None:
            for link in self.links:
                link.destroy()
            self.links = []

        def program_stats(self) -> dict[str, Any]:
            return {n: self.obj.programs[n].stats() for n in self.names}

        def close(self) -> None:
            self.obj.close()

    class HttpAlone:
        """The http probe alone, loaded once, attached by itself (no socket chain,
        no agent process, so no user-space work in the runs) and detached between
        them: the kernel cost of the parsing. Its tracepoints are the host's, not
        the cgroup's; nothing else runs here during the pairs."""

        def __init__(self) -> None:
            from meshlens.probes.http import HttpProbe

            self.probe = HttpProbe()
            self.probe.chain_member = False  # its own raw_tp programs, its own stats
            self.tracing: list[Any] = []

        def start(self) -> None:
            self.probe.start()
            self.probe.detach()

        def attach(self) -> None:
            self.probe.attach()

        def detach(self) -> None:
            self.probe.detach()

        def program_stats(self) -> dict[str, Any]:
            return {
                k: v
                for k, v in self.probe.program_stats().items()
                if k in ("http_send", "http_recv")
            }

        def close(self) -> None:
            self.probe.close()

    class AgentControl:
        """The whole agent as `meshlens run` loads it (every probe and feature, in
        this process, its threads running), its programs attached for one run of
        each pair and detached for the other: the agent's kernel cost, run by run.
        Its tracepoints are the host's; nothing else runs here during the pairs."""

        def __init__(self, overrides: dict[str, Any]) -> None:
            from meshlens.agent import Agent, AgentConfig

            self.agent = Agent(AgentConfig(**overrides))
            self.tracing: list[Any] = []

        def start(self) -> None:
            bad = [st.name for st in self.agent.start() if not st.loaded]
            if bad:
                raise RuntimeError(f"probes not loaded: {bad}")
            self.detach()

        def attach(self) -> None:
            for probe in self.agent.probes_and_chain():
                probe.attach()

        def detach(self) -> None:
            for probe in self.agent.probes_and_chain():
                probe.detach()

        def program_stats(self) -> dict[str, Any]:
            return {}  # no run-time statistics: they would cost every run two clock reads

        def close(self) -> None:
            self.agent.stop()

    assert cgroup2_root() == str(Path(CGROUP).parent), "cgroup v2 is not at the expected root"
    os.makedirs(CGROUP, exist_ok=True)
    # run-time statistics cost every program run two clock reads: only for the
    # http control, whose BPF time is reported (a no-op has none to report)
    stats_fd = _libbpf.enable_run_time_stats() if args.control == "http" else None
    pairs: list[tuple[dict[str, Any], dict[str, Any]]] = []
    try:
        with Lab(2) as lab, tempfile.TemporaryDirectory(prefix="meshlens-bench-") as d:
            srv, cli = lab.hosts
            nginx_site(d, srv)
            ng = subprocess.Popen(in_cgroup(srv, "taskset", "-c", "0", "nginx", "-c",
                                            f"{d}/nginx.conf", "-p", d))  # fmt: skip
            url = f"http://{srv.addr}:8080/index.html"
            time.sleep(1)
            probe: Any = (
                HttpAlone()
                if args.control == "http"
                else AgentControl(AGENT_CONTROLS[args.control])
                if args.control in AGENT_CONTROLS
                else NoopControl(NOOP_CONTROLS[args.control])
            )
            probe.start()  # loaded once; only its links come and go

            def run(attached: bool) -> dict[str, Any]:
                if attached:
                    probe.attach()
                s0 = probe.program_stats()
                r = subprocess.run(
                    in_cgroup(cli, "taskset", "-c", "1", "wrk", "-t1", f"-c{args.connections}",
                              f"-d{args.seconds}s", "--latency", url),
                    capture_output=True, timeout=args.seconds + 60, check=True,
                )  # fmt: skip
                s1 = probe.program_stats()
                if attached:
                    probe.detach()
                out = r.stdout.decode()
                n = int(re.search(r"(\d+) requests in", out)[1])  # type: ignore[index]
                lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.M))
                ns = sum(s1[k].run_time_ns - s0[k].run_time_ns for k in s1)
                return {
                    "rps": n / args.seconds,
                    "p50_us": to_us(lat["50"]),
                    "p99_us": to_us(lat["99"]),
                    "bpf_ns_per_request": ns / n if n else 0,
                }

            for i in range(args.scoped_pairs):
                a, b = (run(False), run(True)) if i % 2 == 0 else (run(True), run(False))[::-1]
                pairs.append((a, b))
                print(f"pair {i} {json.dumps(a)} {json.dumps(b)}", file=sys.stderr, flush=True)
            for link in probe.tracing:
                link.destroy()
            probe.close()
            ng.terminate()
            ng.wait(timeout=10)
    finally:
        if stats_fd is not None:
            os.close(stats_fd)
        with contextlib.suppress(OSError):
            os.rmdir(CGROUP)
    loss = statistics.median(1 - b["rps"] / a["rps"] for a, b in pairs)
    p99 = statistics.median(b["p99_us"] - a["p99_us"] for a, b in pairs)
    p50 = statistics.median(b["p50_us"] - a["p50_us"] for a, b in pairs)
    ns = statistics.median(b["bpf_ns_per_request"] for _, b in pairs)
    rps = statistics.median(a["rps"] for a, _ in pairs)
    print("| pairs | requests/s without | throughput loss | p50 added µs | p99 added µs "
          "| BPF ns/request |")  # fmt: skip
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    print(f"| {len(pairs)} | {rps:.0f} | {100 * loss:.1f} % | {p50:.0f} | {p99:.0f} | {ns:.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(pairs, indent=1))
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=int, default=6)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--modes", default="none,http,full")
    p.add_argument("--json", default=None, help="write every run here")
    p.add_argument(
        "--other", default=None, metavar="CHECKOUT",
        help="mode `other`: `full` run from this checkout (built with `make build`), to "
        "compare two commits in one run",
    )  # fmt: skip
    p.add_argument(
        "--scrape", type=float, default=15.0,
        help="GET the agent's /metrics every N s during a run, as Prometheus would (0: never)",
    )  # fmt: skip
    p.add_argument(
        "--settle",
        type=float,
        default=2.5,
        metavar="S",
        help="seconds between an agent's start (and a 1 s warm-up) and its measured run",
    )
    p.add_argument(
        "--scoped-pairs", type=int, default=0, metavar="N",
        help="instead: N pairs of runs with and without --control attached, loaded once "
        "(no agent process, no start-up between the runs)",
    )  # fmt: skip
    p.add_argument(
        "--control", choices=(*NOOP_CONTROLS, "http", *AGENT_CONTROLS),
        default="noop",
        help="with --scoped-pairs: `noop`, a cgroup_skb program per direction that only "
        "returns, attached to a cgroup of nginx and wrk (the floor of any per-packet "
        "design; `noop-egress`/`noop-ingress`: one direction; `noop-calls`: one on each "
        "socket-call tracepoint, the floor of a per-call design); `http`, the http probe's "
        "programs alone at the socket tracepoints (with run-time statistics); `agent`, "
        "every program of the agent as `meshlens run` loads it (`agent-core`: without "
        "its features; `agent-core-nohealth`: nor tcpflow's health hooks and RTT "
        "samples; `agent-http`: the core and http)",
    )  # fmt: skip
    p.add_argument(
        "--from-json", default=None, metavar="FILE",
        help="instead: print the table of a run that --json saved",
    )  # fmt: skip
    args = p.parse_args()
    if args.from_json:
        print_table(json.loads(Path(args.from_json).read_text()))
        return 0
    if args.other:
        OTHER.append(args.other)
    if os.geteuid() != 0:
        print("needs root (BPF, network namespaces)", file=sys.stderr)
        return 1
    for tool in ("nginx", "wrk", "taskset", "bpftool"):
        if shutil.which(tool) is None:
            print(f"{tool} is missing (make test-deps)", file=sys.stderr)
            return 1
    if args.scoped_pairs:
        return scoped(args)
    modes = args.modes.split(",")
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    with Lab(2) as lab, tempfile.TemporaryDirectory(prefix="meshlens-bench-") as d:
        srv, cli = lab.hosts
        nginx_site(d, srv)
        srv.popen("taskset", "-c", "0", "nginx", "-c", f"{d}/nginx.conf", "-p", d)
        url = f"http://{srv.addr}:8080/index.html"
        time.sleep(1)
        cli.run("wrk", "-t1", "-c4", "-d1s", url, timeout=60)  # warm up
        for rnd in range(args.rounds):
            order = modes if rnd % 2 == 0 else list(reversed(modes))
            for mode in order:
                agent = start_agent(mode)
                try:
                    # steady state: the agent has named this traffic's sockets and
                    # hosts (its first refreshes read every netns's addresses, once)
                    # before the measured run
                    cli.run("wrk", "-t1", "-c4", "-d1s", url, timeout=60)
                    time.sleep(args.settle if agent else 1)
                    # full!stop: the agent process stopped (SIGSTOP) during the run,
                    # its programs and kernel timers running: the kernel's part alone
                    stopped = agent if agent is not None and mode.endswith("!stop") else None
                    if stopped:
                        stopped.send_signal(signal.SIGSTOP)
                    try:
                        res = one_run(cli, url, args, None if stopped else agent)
                    finally:
                        if stopped:
                            stopped.send_signal(signal.SIGCONT)
                finally:
                    stop_agent(agent)
                runs[mode].append(res)
                print(f"round {rnd} {mode:5} {json.dumps(res)}", file=sys.stderr, flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=1))
    print_table(runs)
    return 0


def print_table(runs: dict[str, list[dict[str, Any]]]) -> None:
    """The markdown table of a run (every mode's rounds, as --json writes them)."""
    med = {m: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for m, rs in runs.items()}

    # Loss and p99 added paired round by round (each mode against `none` of the
    # same round), then the median: drift on a shared host cancels out within a
    # round. The interval says how far that median can be from the true one.
    def paired(m: str, of: Callable[[dict[str, Any], dict[str, Any]], float]) -> str:
        if "none" not in runs or m == "none":
            return "-"
        diffs = [of(r, b) for r, b in zip(runs[m], runs["none"], strict=True)]
        ci = median_ci(diffs)
        text = f"{statistics.median(diffs):+.1f}"
        return text + (f" ({ci[0]:+.1f} … {ci[1]:+.1f})" if ci else "")

    print(
        "| mode | requests/s | loss % (paired; 90 % interval) | p50 µs | p99 µs "
        "| p99 added µs (paired; 90 % interval) "
        "| rounds with a scrape | agent cores | agent cores per 1k rps | BPF ns/request |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for m, v in med.items():
        loss = paired(m, lambda r, b: 100 * (1 - r["rps"] / b["rps"]))
        added = paired(m, lambda r, b: r["p99_us"] - b["p99_us"])
        scraped = sum(1 for r in runs[m] if r["scrapes"])
        print(
            f"| {m} | {v['rps']:.0f} | {loss} | {v['p50_us']:.0f} | {v['p99_us']:.0f} "
            f"| {added} | {scraped} of {len(runs[m])} "
            f"| {v['agent_cores']:.4f} | {v['agent_cores_per_1k_rps']:.5f} "
            f"| {v['bpf_ns_per_request']:.0f} |"
        )


if __name__ == "__main__":
    sys.exit(main())
