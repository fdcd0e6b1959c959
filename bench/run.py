"""meshlens benchmarks: overhead measured with and without the agent in the same run.

    .venv/bin/python bench/run.py                       # all benchmarks, Markdown to stdout
    .venv/bin/python bench/run.py --out docs/benchmarks.md
    .venv/bin/python bench/run.py --quick --only sendloop
    .venv/bin/python bench/run.py --from-json bench/results/<file>.json --out docs/benchmarks.md

Benchmarks (see docs/benchmarks.md for targets and method):
  startup   process start of `meshlens run` to its "serving" line; Agent.startup_seconds
  sendloop  added ns per send()/recv() on loopback (bench/sendloop.c), A/B alternated
  churn     short connections/s with and without the agent; lost and closed records
  flows     agent CPU, RSS and scrape time with N live loopback connections (bench/holdconns.c)
  profile   cProfile/tracemalloc of the agent's refresh at 100k flows and under churn

Needs root (BPF), gcc, and the built objects (`make build`). Traffic goes to 127/8 only.
Every wait is bounded; every process started here is stopped here.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import datetime as dt
import gc
import hashlib
import json
import math
import os
import platform
import pstats
import re
import resource
import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time
import tracemalloc
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
BUILD = BENCH / "build"
RESULTS = BENCH / "results"
PY = Path(sys.executable)
MESHLENS = PY.parent / "meshlens"
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

from meshlens import loadgen  # noqa: E402 (after the path above)
from meshlens.bench.docsections import keep_hand_written  # noqa: E402
from meshlens.loadgen import free_port  # noqa: E402

NAMES = ("startup", "sendloop", "churn", "flows", "profile")
TARGET_NS_PER_CALL = 150.0
TARGET_RSS_MB = 60.0
TARGET_CHURN = 20000.0
TARGET_STARTUP_S = 1.0
SCRAPE_EVERY = 5.0
MAX_FLOWS = 262144
SENDLOOP_CPU = 1  # pin the measured loop; the agent (in-process) is not pinned


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def rel(path: Path | str) -> str:
    p = Path(path)
    with contextlib.suppress(ValueError):
        return str(p.resolve().relative_to(ROOT))
    return str(p)


def cmd_text(argv: Sequence[str | Path]) -> str:
    return shlex.join(rel(a) if isinstance(a, Path) else str(a) for a in argv)


# -- building the C helpers ------------------------------------------------------------

C_PROGRAMS = {
    "sendloop": ["-O2", "-Wall", "-Wextra"],
    "churn": ["-O2", "-Wall", "-Wextra", "-pthread"],
    "holdconns": ["-O2", "-Wall", "-Wextra"],
}


def build() -> dict[str, str]:
    """gcc each bench/<name>.c into bench/build/<name> when missing or stale."""
    BUILD.mkdir(parents=True, exist_ok=True)
    cmds = {}
    for name, flags in C_PROGRAMS.items():
        src, out = BENCH / f"{name}.c", BUILD / name
        argv = ["gcc", *flags, "-o", out, src]
        cmds[name] = cmd_text(argv)
        if out.exists() and out.stat().st_mtime >= src.stat().st_mtime:
            continue
        subprocess.run([str(a) for a in argv], check=True, timeout=120)
    return cmds


# -- small helpers ---------------------------------------------------------------------


def read_line(proc: subprocess.Popen[bytes], timeout: float) -> str:
    """One line of a child's stdout (a pipe), bounded in time, as text."""
    return loadgen.read_line(proc, timeout).decode(errors="replace").strip()


def stop_proc(proc: subprocess.Popen[Any], timeout: float = 15.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)


def proc_status_kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def proc_cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def smaps_breakdown(pid: int) -> dict[str, int]:
    """Resident kB by kind of mapping: BPF maps mmapped (ring buffers), anonymous
    (Python heap, numpy, buffers), and file-backed (interpreter, libraries)."""
    out = {"bpf_maps_mmapped": 0, "anonymous": 0, "files": 0}
    kind = "anonymous"
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split(maxsplit=6)
            if re.fullmatch(r"[0-9a-f]+-[0-9a-f]+", head[0]):
                name = head[5].strip() if len(head) > 5 else ""
                if "bpf-map" in name or "bpf_ringbuf" in name:
                    kind = "bpf_maps_mmapped"
                elif name.startswith("/"):
                    kind = "files"
                else:
                    kind = "anonymous"
            elif head[0] == "Rss:":
                out[kind] += int(head[1])
    return out


def fdinfos(pid: int | str) -> Iterator[str]:
    """The text of /proc/<pid>/fdinfo/<fd> for each open fd of a process."""
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        with contextlib.suppress(OSError):
            yield Path(f"/proc/{pid}/fdinfo/{fd}").read_text()


def bpf_map_memlock(pid: int) -> int:
    """Bytes of kernel memory charged to the BPF maps this process holds."""
    total = 0
    for text in fdinfos(pid):
        if "map_type:" in text:
            m = re.search(r"memlock:\s*(\d+)", text)
            total += int(m.group(1)) if m else 0
    return total


# -- interference: the machine is shared ----------------------------------------------

PF_KTHREAD = 0x00200000


_PROG_NAMES: set[str] = set()


def meshlens_prog_names() -> set[str]:
    """Names (as the kernel keeps them: 15 characters) of every program in meshlens'
    compiled objects, read with libbpf without loading anything."""
    if not _PROG_NAMES:
        from meshlens import _libbpf
        from meshlens.probes.base import objects_dir

        for path in sorted(objects_dir().glob("*.bpf.o")):
            with contextlib.suppress(OSError):
                obj = _libbpf.BpfObject(str(path))
                _PROG_NAMES.update(name[:15] for name in obj.programs)
                obj.close()
    return _PROG_NAMES


def meshlens_prog_ids() -> set[int]:
    """Ids of loaded BPF programs named like meshlens' (any agent, ours or not)."""
    p = subprocess.run(["bpftool", "prog", "show", "-j"], capture_output=True, timeout=30)
    try:
        progs = json.loads(p.stdout or b"[]")
    except ValueError:
        return set()
    names = meshlens_prog_names()
    return {int(x["id"]) for x in progs if str(x.get("name", ""))[:15] in names}


def foreign_cpu_seconds() -> dict[int, float]:
    """CPU seconds of every user-space process outside this process's tree."""
    tck = os.sysconf("SC_CLK_TCK")
    info: dict[int, tuple[int, float]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[6]) & PF_KTHREAD:
                continue
            info[int(d)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tck)
    own = {os.getpid()}
    grew = True
    while grew:  # descendants, bounded by the number of processes
        new = {pid for pid, (ppid, _) in info.items() if ppid in own and pid not in own}
        own |= new
        grew = bool(new)
    return {pid: cpu for pid, (_, cpu) in info.items() if pid not in own}


def own_prog_ids() -> set[int]:
    """Ids of the BPF programs this process holds fds of (from /proc/self/fdinfo): an
    agent being loaded in this process is ours before its start() returns."""
    return {int(m.group(1)) for text in fdinfos("self") if (m := _PROG_ID.search(text))}


_PROG_ID = re.compile(r"^prog_id:\s*(\d+)", re.M)


class Interference:
    """Other people's work on this machine during a measurement: meshlens BPF programs
    that are not ours (another agent or a test suite) and CPU used by processes outside
    this benchmark's process tree. Sampled by a thread every 0.5 s."""

    def __init__(self, ours: Callable[[], set[int]] = set) -> None:
        self.ours = ours
        self.foreign_progs: set[int] = set()
        self.seen: set[frozenset[int]] = set()  # distinct sets of foreign programs sampled
        self.foreign_cores = 0.0
        self._stop = threading.Event()
        self._th: threading.Thread | None = None

    def __enter__(self) -> Interference:
        self._t0 = time.monotonic()
        self._cpu0 = foreign_cpu_seconds()
        self._th = threading.Thread(target=self._watch, daemon=True)
        self._th.start()
        return self

    def _watch(self) -> None:
        while True:
            now = frozenset(meshlens_prog_ids() - self.ours())
            self.foreign_progs |= now
            self.seen.add(now)
            if self._stop.wait(0.5):
                return

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._th:
            self._th.join(timeout=30)
        cpu1 = foreign_cpu_seconds()
        used = sum(c - self._cpu0.get(pid, 0.0) for pid, c in cpu1.items())
        self.foreign_cores = used / max(1e-3, time.monotonic() - self._t0)

    def quiet(self, max_cores: float = 0.15) -> bool:
        return not self.foreign_progs and self.foreign_cores <= max_cores

    def steady(self, max_cores: float = 0.25) -> bool:
        """Little foreign CPU and the same foreign programs (maybe none) throughout: they
        then cost every variant alike and paired differences stay fair."""
        return len(self.seen) <= 1 and self.foreign_cores <= max_cores

    def summary(self) -> dict[str, Any]:
        return {
            "foreign_bpf_programs": len(self.foreign_progs),
            "foreign_programs_changed": len(self.seen) > 1,
            "foreign_cores": round(self.foreign_cores, 3),
        }


def wait_quiet(limit: float = 10.0) -> dict[str, Any]:
    """Wait (bounded) until, for 2 s, the rest of the machine uses under 0.3 core and no
    other meshlens agent loads or unloads (one that stays loaded cannot be waited out)."""
    t0 = time.monotonic()
    while True:
        with Interference() as w:
            time.sleep(2.0)
        if w.steady(0.3) or time.monotonic() - t0 > limit:
            waited = time.monotonic() - t0
            if not w.steady(0.3):
                log(f"machine busy after {waited:.0f} s: {w.summary()}; going on")
            elif waited > 3:
                log(f"waited {waited:.0f} s for other work on this machine")
            return {"waited_seconds": round(waited, 1), "quiet": w.quiet(0.1), **w.summary()}


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs)) if xs else math.nan


_LINE = re.compile(r"^([A-Za-z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> list[tuple[str, dict[str, str], float]]:
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _LINE.match(line)
        if m:
            out.append((m.group(1), dict(_LABEL.findall(m.group(2) or "")), float(m.group(3))))
    return out


def metric_sum(
    samples: list[tuple[str, dict[str, str], float]],
    name: str,
    match: Callable[[dict[str, str]], bool] = lambda _labels: True,
) -> float:
    return sum(v for n, lab, v in samples if n == name and match(lab))


# -- the agent as `meshlens run` -------------------------------------------------------


class AgentProc:
    """`meshlens run --quiet` in a subprocess, on a free loopback port."""

    def __init__(self, *extra: str) -> None:
        self.port = free_port()
        self.argv = [MESHLENS, "run", "--quiet", "--listen", f"127.0.0.1:{self.port}", *extra]
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready_seconds = math.nan
        self.attached_seconds = math.nan
        self.serving_line = ""
        self.prog_ids: set[int] = set()

    @property
    def command(self) -> str:
        return cmd_text([Path(".venv/bin/meshlens"), *self.argv[1:]]).replace(
            f"127.0.0.1:{self.port}", "127.0.0.1:PORT"
        )

    @property
    def pid(self) -> int:
        assert self.proc
        return self.proc.pid

    def start(self, timeout: float = 30.0) -> AgentProc:
        before = meshlens_prog_ids()
        t0 = time.monotonic()
        self.proc = subprocess.Popen(
            [str(a) for a in self.argv], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        deadline = t0 + timeout
        while True:
            line = read_line(self.proc, max(0.1, deadline - time.monotonic()))
            if "serving" in line:
                break
        self.ready_seconds = time.monotonic() - t0
        self.serving_line = line
        m = re.search(r"attached in ([0-9.]+) s", line)
        self.attached_seconds = float(m.group(1)) if m else math.nan
        self.prog_ids = meshlens_prog_ids() - before
        return self

    def scrape(self, timeout: float = 120.0) -> tuple[float, str]:
        t0 = time.perf_counter()
        url = f"http://127.0.0.1:{self.port}/metrics"
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            body = resp.read().decode()
        return time.perf_counter() - t0, body

    def rss_kb(self) -> int:
        return proc_status_kb(self.pid, "VmRSS")

    def hwm_kb(self) -> int:
        return proc_status_kb(self.pid, "VmHWM")

    def cpu(self) -> float:
        return proc_cpu_seconds(self.pid)

    def stop(self) -> None:
        if self.proc:
            stop_proc(self.proc)
            if self.proc.stdout:
                self.proc.stdout.close()
            self.proc = None


@contextlib.contextmanager
def agent_proc(*extra: str) -> Iterator[AgentProc]:
    a = AgentProc(*extra)
    try:
        yield a.start()
    finally:
        a.stop()


# -- long-lived connections (bench/holdconns) ------------------------------------------


def conns_per_process() -> int:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY:
        return 9000
    return max(100, min(9000, (hard - 64) // 2))


class Holders:
    """N established loopback connections spread over processes of bench/holdconns."""

    def __init__(self, connections: int, touch_seconds: float = 10.0) -> None:
        self.connections = connections
        self.touch_seconds = touch_seconds
        self.per_proc = conns_per_process()
        self.procs: list[subprocess.Popen[bytes]] = []
        self.setup_seconds = math.nan

    def argv(self, n: int) -> list[str | Path]:
        return [BUILD / "holdconns", "-n", str(n), "-i", f"{self.touch_seconds:g}", "-d", "900"]

    @property
    def command(self) -> str:
        n_procs = math.ceil(self.connections / self.per_proc)
        return f"{n_procs} x `{cmd_text(self.argv(self.per_proc))}` (last one takes the rest)"

    def start(self, timeout: float = 120.0) -> Holders:
        t0 = time.monotonic()
        left = self.connections
        while left > 0:
            n = min(self.per_proc, left)
            left -= n
            self.procs.append(
                subprocess.Popen(
                    [str(a) for a in self.argv(n)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
                )
            )
        for p in self.procs:
            line = read_line(p, max(1.0, timeout - (time.monotonic() - t0)))
            if "ready" not in line:
                raise RuntimeError(f"holdconns: {line}")
        self.setup_seconds = time.monotonic() - t0
        return self

    def stop(self) -> None:
        for p in self.procs:
            with contextlib.suppress(OSError):
                assert p.stdin
                p.stdin.write(b"q\n")
                p.stdin.close()
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                stop_proc(p)
            if p.stdout:
                p.stdout.close()
        self.procs.clear()


@contextlib.contextmanager
def holders(connections: int, touch_seconds: float = 10.0) -> Iterator[Holders | None]:
    if connections <= 0:
        yield None
        return
    h = Holders(connections, touch_seconds)
    try:
        yield h.start()
    finally:
        h.stop()


# -- benchmark: start-up ---------------------------------------------------------------


def bench_startup(quick: bool) -> dict[str, Any]:
    from meshlens.agent import Agent, AgentConfig

    reps = 2 if quick else 5
    quiet = wait_quiet()
    proc_s, attached_s = [], []
    command = ""
    for i in range(reps):
        a = AgentProc()
        command = a.command
        try:
            a.start()
        finally:
            a.stop()
        proc_s.append(a.ready_seconds)
        attached_s.append(a.attached_seconds)
        log(f"startup {i + 1}/{reps}: serving after {a.ready_seconds:.3f} s")
    imports_s = []
    imp = [PY, "-c", "import meshlens.cli, meshlens.agent, meshlens.exporter, prometheus_client"]
    for _ in range(reps):
        t0 = time.monotonic()
        subprocess.run([str(a) for a in imp], check=True, timeout=60)
        imports_s.append(time.monotonic() - t0)
    inproc, per_probe = [], []
    for _ in range(reps):
        agent = Agent(AgentConfig())
        try:
            agent.start()
            inproc.append(agent.startup_seconds)
            per_probe.append({st.name: st.load_seconds for st in agent.statuses})
        finally:
            agent.stop()
    return {
        "command": command,
        "import_command": cmd_text([Path(".venv/bin/python"), *imp[1:]]),
        "quiet": quiet,
        "reps": reps,
        "process_to_serving_s": proc_s,
        "attached_line_s": attached_s,
        "interpreter_and_imports_s": imports_s,
        "agent_startup_seconds": inproc,
        "probe_load_seconds": per_probe,
    }


# -- benchmark: send/recv cost -----------------------------------------------------------

# Variants: the agent as `meshlens run` configures it, then pieces of it to see where the
# cost is. Keys that AgentConfig does not have (the code moves on) drop the variant.
SENDLOOP_VARIANTS: dict[str, dict[str, Any] | None] = {
    "none": None,
    "agent": {},  # AgentConfig() as `meshlens run`: every probe and feature, BPF stats off
    "agent with --bpf-stats": {"bpf_stats": True},
    "core only (tcpflow+udpflow), no stats": {"bpf_stats": False, "features": ()},
    "core without health hooks": {"bpf_stats": False, "features": (), "tcp_health": False},
    "tcpflow only, no stats": {"bpf_stats": False, "probes": ("tcpflow",), "features": ()},
    "udpflow only, no stats": {"bpf_stats": False, "probes": ("udpflow",), "features": ()},
}


# The variant whose programs' run-time statistics make the kernel's view.
KVIEW_VARIANT = "agent with --bpf-stats"


def run_sendloop(proto: str, iters: int, warmup: int) -> tuple[float, list[str]]:
    argv = [BUILD / "sendloop", proto, str(iters), "-c", str(SENDLOOP_CPU), "-w", str(warmup)]
    p = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=300)
    if p.returncode:
        raise RuntimeError(f"sendloop failed: {p.stderr}")
    return float(json.loads(p.stdout)["ns_per_call"]), [cmd_text(argv)]


def _sendloop_rep(
    r: int, names: list[str], iters: int, warmup: int
) -> tuple[dict[str, Any], list[str]]:
    """One repetition: every variant once, in an order rotated by r."""
    from meshlens.agent import Agent, AgentConfig

    protos = ("tcp", "udp")
    order = names[r % len(names) :] + names[: r % len(names)]
    rep: dict[str, Any] = {"ns": {v: {} for v in names}, "runs": {}, "kview": {}, "probes": {}}
    commands: list[str] = []
    ours: set[int] = set()
    with Interference(lambda: ours | own_prog_ids()) as watch:
        for v in order:
            cfg = SENDLOOP_VARIANTS[v]
            agent = Agent(AgentConfig(**cfg)) if cfg is not None else None
            try:
                if agent:
                    before_ids = meshlens_prog_ids()
                    agent.start()
                    ours |= meshlens_prog_ids() - before_ids
                    rep["probes"][v] = sorted(st.name for st in agent.statuses)
                    bad = [st.name for st in agent.statuses if not st.loaded]
                    if bad:
                        raise RuntimeError(f"probes not loaded: {bad}")
                rep["runs"][v] = 0
                for proto in protos if r % 2 == 0 else protos[::-1]:
                    before = _prog_stats(agent) if agent else {}
                    value, cmd = run_sendloop(proto, iters, warmup)
                    rep["ns"][v][proto] = value
                    if v == "none":
                        commands += cmd
                    for prog, (t1, c1) in (_prog_stats(agent) if agent else {}).items():
                        t0, c0 = before[prog]
                        rep["runs"][v] += c1 - c0
                        if v == KVIEW_VARIANT:
                            kv = rep["kview"].setdefault(proto, {})
                            kv[prog] = {"ns": t1 - t0, "runs": c1 - c0}
            finally:
                if agent:
                    agent.stop()
    # another process that turned BPF run-time stats on makes "no stats" variants lie
    no_stats = [
        v for v in names if v != "none" and not (SENDLOOP_VARIANTS[v] or {}).get("bpf_stats", False)
    ]
    rep["stats_leak"] = any(rep["runs"].get(v, 0) > 0 for v in no_stats)
    # our loop takes one core; more elsewhere is noise
    rep["quiet"] = watch.steady(0.25)
    rep["interference"] = watch.summary()
    return rep, commands


def bench_sendloop(quick: bool) -> dict[str, Any]:
    from meshlens.agent import AgentConfig

    fields = set(AgentConfig.__dataclass_fields__)
    names = [v for v, cfg in SENDLOOP_VARIANTS.items() if cfg is None or set(cfg) <= fields]
    iters, warmup = (50_000, 5_000) if quick else (200_000, 10_000)
    reps = 3 if quick else 7
    budget = 90.0 if quick else 150.0
    protos = ("tcp", "udp")
    quiet0 = wait_quiet()
    t_start = time.monotonic()
    all_reps: list[dict[str, Any]] = []
    commands: list[str] = []
    attempt = 0
    # bounded: at most 2 x reps attempts and `budget` seconds; noisy repetitions are redone
    while sum(r["quiet"] for r in all_reps) < reps and attempt < 2 * reps:
        if all_reps and time.monotonic() - t_start > budget:
            log("sendloop: time budget used up")
            break
        rep, cmds = _sendloop_rep(attempt, names, iters, warmup)
        attempt += 1
        commands = commands or cmds
        all_reps.append(rep)
        line = ", ".join(
            f"{v}: tcp {rep['ns'][v]['tcp']:.0f} udp {rep['ns'][v]['udp']:.0f}" for v in names
        )
        n_quiet = sum(r["quiet"] for r in all_reps)
        if rep["quiet"]:
            log(f"sendloop rep {n_quiet}/{reps}: {line}")
        else:
            log(f"sendloop attempt {attempt}: busy machine {rep['interference']}, redone ({line})")
            wait_quiet()
    quiet_reps = [r for r in all_reps if r["quiet"]]
    used = quiet_reps if len(quiet_reps) >= min(3, reps) else all_reps
    ns = {v: {p: [r["ns"][v][p] for r in used] for p in protos} for v in names}
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for v in names:
        summary[v] = {}
        for proto in protos:
            xs = ns[v][proto]
            diffs = [x - b for x, b in zip(xs, ns["none"][proto], strict=True)]
            summary[v][proto] = {
                "median": median(xs),
                "min": min(xs),
                "max": max(xs),
                # noise only ever adds time: the fastest runs are the least disturbed
                "added_best": min(xs) - min(ns["none"][proto]),
                "added_median": median(diffs),
                "added_min": min(diffs),
                "added_max": max(diffs),
            }
    calls = 2 * (iters + warmup) * len(used)
    kernel = {}
    for proto in protos:
        acc: dict[str, dict[str, int]] = {}
        for r in used:
            for prog, d in r["kview"].get(proto, {}).items():
                a = acc.setdefault(prog, {"ns": 0, "runs": 0})
                a["ns"] += d["ns"]
                a["runs"] += d["runs"]
        kernel[proto] = {
            "programs": {
                prog: {
                    "runs_per_call": d["runs"] / calls,
                    "ns_per_run": d["ns"] / d["runs"] if d["runs"] else 0.0,
                }
                for prog, d in sorted(acc.items())
            },
            "bpf_ns_per_call": sum(d["ns"] for d in acc.values()) / calls,
        }
    return {
        "iterations": iters,
        "warmup": warmup,
        "reps": len(used),
        "reps_wanted": reps,
        "attempts": attempt,
        "noisy_included": len(used) > len(quiet_reps),
        "stats_leak_reps": sum(r["stats_leak"] for r in used),
        "cpu": SENDLOOP_CPU,
        "variants": names,
        "variant_configs": {v: SENDLOOP_VARIANTS[v] for v in names},
        "probes_loaded": all_reps[0]["probes"] if all_reps else {},
        "quiet_before": quiet0,
        "discarded": [
            {**r["interference"], "stats_leak": r["stats_leak"]} for r in all_reps if not r["quiet"]
        ],
        "stats_runs_counted": {v: sum(r["runs"].get(v, 0) for r in used) for v in names},
        "ns_per_call": ns,
        "summary": summary,
        "kernel_view": kernel,
        "commands": commands,
    }


def _prog_stats(agent: Any) -> dict[str, tuple[int, int]]:
    out = {}
    for probe in agent.probes_and_chain():
        for prog, st in probe.program_stats().items():
            out[prog] = (st.run_time_ns, st.run_cnt)
    return out


# -- benchmark: connection churn --------------------------------------------------------


def run_churn(threads: int, seconds: float, port: int, rate: int) -> tuple[dict[str, Any], str]:
    argv = [BUILD / "churn", "-t", str(threads), "-d", f"{seconds:g}", "-p", str(port)]
    if rate:
        argv += ["-r", str(rate)]
    p = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=seconds + 60)
    if p.returncode:
        raise RuntimeError(f"churn failed: {p.stderr}")
    out: dict[str, Any] = json.loads(p.stdout)
    return out, cmd_text(argv).replace(f"-p {port}", "-p PORT")


def _closed(samples: list[tuple[str, dict[str, str], float]], port: int, reporter: str) -> float:
    return metric_sum(
        samples,
        "istio_tcp_connections_closed_total",
        lambda lab: (
            lab.get("reporter") == reporter
            and lab.get("destination_service", "").endswith(f":{port}")
        ),
    )


def _tcp_lost(samples: list[tuple[str, dict[str, str], float]]) -> float:
    return metric_sum(samples, "meshlens_lost_events_total", lambda lab: lab["probe"] == "tcpflow")


def bench_churn(quick: bool) -> dict[str, Any]:
    seconds = 3.0 if quick else 10.0
    threads = 4
    catchup_limit = 30.0 if quick else 90.0
    phases: list[tuple[str, int]] = (
        [("none", 0), ("agent", 0), ("agent", int(TARGET_CHURN))]
        if quick
        else [
            ("none", 0),
            ("agent", 0),
            ("none", int(TARGET_CHURN)),
            ("agent", int(TARGET_CHURN)),
        ]
    )
    runs = []
    agent_cmd = ""
    churn_cmds: set[str] = set()
    for i, (variant, rate) in enumerate(phases):
        port = free_port()
        row: dict[str, Any] = {"variant": variant, "rate_target": rate, "quiet": wait_quiet()}
        if variant == "none":
            with Interference() as watch:
                out, cmd = run_churn(threads, seconds, port, rate)
        else:
            with agent_proc() as agent, Interference(agent.prog_ids.copy) as watch:
                agent_cmd = agent.command
                out, cmd = _churn_with_agent(
                    agent, threads, seconds, port, rate, catchup_limit, row
                )
        row["interference"] = watch.summary()
        churn_cmds.add(cmd)
        row.update(out)
        runs.append(row)
        log(
            f"churn {i + 1}/{len(phases)} {variant} rate={rate or 'max'}: "
            f"{out['per_second']:.0f}/s"
            + (
                f", lost {row['lost']:.0f}, source closes {row['source_closed']:.0f}"
                f"/{out['connections']}, caught up after {row['catchup_seconds']}"
                if variant == "agent"
                else ""
            )
        )
    return {
        "seconds": seconds,
        "threads": threads,
        "catchup_limit": catchup_limit,
        "runs": runs,
        "agent_command": agent_cmd,
        "churn_commands": sorted(churn_cmds),
    }


def _churn_with_agent(
    agent: AgentProc,
    threads: int,
    seconds: float,
    port: int,
    rate: int,
    catchup_limit: float,
    row: dict[str, Any],
) -> tuple[dict[str, Any], str]:
    _, body = agent.scrape()
    m0 = parse_metrics(body)
    lost0, src0, dst0 = _tcp_lost(m0), _closed(m0, port, "source"), _closed(m0, port, "destination")
    rec0 = metric_sum(m0, "meshlens_ring_records_total", lambda lab: lab["probe"] == "tcpflow")
    ref0 = metric_sum(m0, "meshlens_refresh_seconds_total")
    cpu0 = agent.cpu()
    scrape_s: list[float] = []
    stop = threading.Event()

    def scraper() -> None:  # a Prometheus server scraping every 5 s during the run
        while not stop.wait(SCRAPE_EVERY):
            with contextlib.suppress(OSError):
                scrape_s.append(agent.scrape()[0])

    th = threading.Thread(target=scraper, daemon=True)
    th.start()
    try:
        out, cmd = run_churn(threads, seconds, port, rate)
    finally:
        stop.set()
        th.join(timeout=150)
    t_end = time.monotonic()
    cpu_run = agent.cpu() - cpu0
    want_src = out["connections"] + out["failed"]
    caught = None
    m1 = m0
    progress: list[tuple[float, float]] = []
    while time.monotonic() - t_end < catchup_limit:
        d, body = agent.scrape()
        scrape_s.append(d)
        m1 = parse_metrics(body)
        src, dst = _closed(m1, port, "source") - src0, _closed(m1, port, "destination") - dst0
        if src >= want_src and dst >= out["served"]:
            caught = time.monotonic() - t_end
            break
        progress.append((src, dst))
        # records lost in the kernel never arrive: stop once nothing moves for 3 reads
        if len(progress) > 3 and len(set(progress[-4:])) == 1 and _tcp_lost(m1) > lost0:
            break
        time.sleep(1.0)
    rec = metric_sum(m1, "meshlens_ring_records_total", lambda lab: lab["probe"] == "tcpflow")
    row.update(
        {
            "lost": _tcp_lost(m1) - lost0,
            "source_closed": _closed(m1, port, "source") - src0,
            "destination_closed": _closed(m1, port, "destination") - dst0,
            "destination_edges": len(
                [
                    1
                    for n, lab, _ in m1
                    if n == "istio_tcp_connections_closed_total"
                    and lab.get("reporter") == "destination"
                    and lab.get("destination_service", "").endswith(f":{port}")
                ]
            ),
            "catchup_seconds": round(caught, 1) if caught is not None else None,
            "agent_cpu_during_run_s": cpu_run,
            "agent_cpu_total_s": agent.cpu() - cpu0,
            "records": rec - rec0,
            "refresh_seconds": metric_sum(m1, "meshlens_refresh_seconds_total") - ref0,
            "agent_hwm_kb": agent.hwm_kb(),
            "agent_rss_kb": agent.rss_kb(),
            "scrape_seconds": scrape_s,
        }
    )
    row["exact"] = (
        row["lost"] == 0
        and row["source_closed"] == out["connections"] + out["failed"]
        and out["failed"] == 0
    )
    return out, cmd


# -- benchmark: live flows ---------------------------------------------------------------


def bench_flows(quick: bool) -> dict[str, Any]:
    levels = [0, 5000] if quick else [0, 5000, 50000, 100000]
    window = 10.0 if quick else 30.0
    touch = 10.0
    rows = []
    agent_cmd = ""
    holder_cmds = {}
    for conns in levels:
        quiet = wait_quiet()
        with (
            agent_proc("--max-flows", str(MAX_FLOWS)) as agent,
            holders(conns, touch) as h,
            Interference(agent.prog_ids.copy) as watch,
        ):
            agent_cmd = agent.command
            if h:
                holder_cmds[conns] = h.command
            row: dict[str, Any] = {
                "connections": conns,
                "holder_setup_seconds": h.setup_seconds if h else 0.0,
            }
            first, body = agent.scrape()
            row["first_scrape_seconds"] = first
            deadline = time.monotonic() + 60
            while True:  # bounded: until the map holds every socket
                entries = _flow_entries(parse_metrics(body))
                if entries >= 2 * conns or time.monotonic() > deadline:
                    break
                time.sleep(1.0)
                _, body = agent.scrape()
            cpu0, t0 = agent.cpu(), time.monotonic()
            scrapes, rss = [], []
            for k in range(1, int(window // SCRAPE_EVERY) + 1):
                time.sleep(max(0.0, t0 + k * SCRAPE_EVERY - time.monotonic()))
                d, body = agent.scrape()
                scrapes.append(d)
                rss.append(agent.rss_kb())
            cpu1, t1 = agent.cpu(), time.monotonic()
            samples = parse_metrics(body)
            row.update(
                {
                    "map_entries": _flow_entries(samples),
                    "series": len([1 for n, _, _ in samples if n.startswith("istio_tcp_")]),
                    "body_bytes": len(body),
                    "window_seconds": t1 - t0,
                    "cpu_percent": 100.0 * (cpu1 - cpu0) / (t1 - t0),
                    "rss_kb_end": rss[-1],
                    "rss_kb_max": max(rss),
                    "hwm_kb": agent.hwm_kb(),
                    "scrape_seconds": scrapes,
                    "smaps_kb": smaps_breakdown(agent.pid),
                    "bpf_map_memlock_bytes": bpf_map_memlock(agent.pid),
                    "lost": _tcp_lost(samples),
                    "map_full": metric_sum(samples, "meshlens_map_full_total"),
                }
            )
        row["quiet"] = quiet
        row["interference"] = watch.summary()
        rows.append(row)
        log(
            f"flows {conns} connections ({row['map_entries']:.0f} flows): "
            f"cpu {row['cpu_percent']:.1f}%, rss {row['rss_kb_end'] / 1024:.1f} MB, "
            f"scrape {median(row['scrape_seconds']):.3f} s (first {first:.2f} s)"
        )
    core = core_only(5000 if 5000 in levels else levels[-1])
    return {
        "core_only": core,
        "levels": levels,
        "window_seconds": window,
        "touch_seconds": touch,
        "max_flows": MAX_FLOWS,
        "rows": rows,
        "agent_command": agent_cmd,
        "holder_commands": holder_cmds,
        "conns_per_process": conns_per_process(),
    }


CORE_ONLY = (
    "import sys\n"
    "from meshlens.agent import Agent, AgentConfig\n"
    "from meshlens.exporter import AgentCollector\n"
    "from meshlens.exposition import Renderer\n"
    "a = Agent(AgentConfig(max_tcp_flows=262144, max_udp_flows=262144, features=(),\n"
    "    snapshots=False))\n"
    "a.start()\n"
    "col, r = AgentCollector(a), Renderer()\n"
    "a.refresh(force=True)\n"
    "print('ready', sorted(p.name for p in a.probes), flush=True)\n"
    "for line in sys.stdin:\n"
    "    a.refresh(force=True)\n"
    "    r.render(col.collect())\n"
    "    print('scraped', flush=True)\n"
    "a.stop()\n"
)


def core_only(connections: int) -> dict[str, Any] | None:
    """RSS of the agent core alone (tcpflow + udpflow, no features, same --max-flows),
    in a bare process that refreshes and renders /metrics on each line of its stdin:
    idle, then with `connections` loopback connections. The difference to `meshlens
    run` is what the features (and its HTTP server) add."""
    from meshlens.agent import AgentConfig

    if "features" not in AgentConfig.__dataclass_fields__:
        return None
    proc = subprocess.Popen(
        [str(PY), "-c", CORE_ONLY], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert proc.stdin
    out: dict[str, Any] = {"command": cmd_text([Path(".venv/bin/python"), "-c", CORE_ONLY])}

    def scrape() -> None:
        assert proc.stdin
        proc.stdin.write(b"s\n")
        proc.stdin.flush()
        read_line(proc, 120)

    try:
        out["probes"] = read_line(proc, 60).split(" ", 1)[-1]
        time.sleep(2.0)
        out["idle"] = {
            "rss_kb": proc_status_kb(proc.pid, "VmRSS"),
            "smaps_kb": smaps_breakdown(proc.pid),
        }
        out["bpf_map_memlock_bytes"] = bpf_map_memlock(proc.pid)
        with holders(connections, 10):
            for _ in range(3):  # as a few scrapes would
                scrape()
                time.sleep(1.0)
            out["loaded"] = {
                "connections": connections,
                "rss_kb": proc_status_kb(proc.pid, "VmRSS"),
                "smaps_kb": smaps_breakdown(proc.pid),
            }
        return out
    finally:
        with contextlib.suppress(OSError):
            proc.stdin.close()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            stop_proc(proc)
        if proc.stdout:
            proc.stdout.close()


def _flow_entries(samples: list[tuple[str, dict[str, str], float]]) -> float:
    return metric_sum(
        samples, "meshlens_map_entries", lambda lab: lab.get("map") == "tcpflow_flows"
    )


# -- benchmark: profile ------------------------------------------------------------------


def _top(
    prof: cProfile.Profile | pstats.Stats, n: int = 14, cumulative: bool = False
) -> list[dict[str, Any]]:
    """The n functions with the most own time, or (cumulative) meshlens' own functions
    with the most time including callees."""
    st = prof if isinstance(prof, pstats.Stats) else pstats.Stats(prof)
    rows = []
    for (file, line, func), (_cc, nc, tt, ct, _callers) in st.stats.items():  # type: ignore[attr-defined]
        where = rel(file) if file.startswith("/") else file
        where = re.sub(r".*site-packages/", "", where)
        where = re.sub(r".*/lib/python3\.\d+/", "", where)
        rows.append({"func": f"{where}:{line}({func})", "calls": nc, "tottime": tt, "cumtime": ct})
    if cumulative:
        rows = [r for r in rows if r["func"].startswith("src/meshlens/")]
    rows.sort(key=lambda r: r["cumtime" if cumulative else "tottime"], reverse=True)
    return rows[:n]


def _profiled(fn: Callable[[], Any]) -> tuple[float, cProfile.Profile]:
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    try:
        fn()
    finally:
        prof.disable()
    return time.perf_counter() - t0, prof


def bench_profile(quick: bool) -> dict[str, Any]:
    from meshlens.agent import Agent, AgentConfig
    from meshlens.exporter import AgentCollector
    from meshlens.exposition import Renderer

    conns = 5000 if quick else 50000
    cfg = {"max_tcp_flows": MAX_FLOWS, "max_udp_flows": MAX_FLOWS}
    out: dict[str, Any] = {"connections": conns, "quiet": wait_quiet()}

    # 1. time: refresh with `conns` connections (2 flows each), cold then warm, then a scrape
    agent = Agent(AgentConfig(**cfg))
    agent.start()
    try:
        with holders(conns, 0) as h:
            out["holder_command"] = h.command if h else ""
            t, prof = _profiled(lambda: agent.refresh(force=True))
            out["cold_refresh"] = {
                "seconds": t,
                "top": _top(prof),
                "cumulative": _top(prof, 10, cumulative=True),
            }
            t, prof = _profiled(lambda: agent.refresh(force=True))
            out["warm_refresh"] = {"seconds": t, "top": _top(prof)}
            col, renderer = AgentCollector(agent), Renderer()
            time.sleep(1.1)  # past min_refresh_interval: a scrape refreshes, as in production
            t, prof = _profiled(lambda: renderer.render(col.collect()))
            out["scrape"] = {"seconds": t, "top": _top(prof)}
            out["flows"] = len(agent.last_tcp[0]) if agent.last_tcp else 0
    finally:
        agent.stop()
    gc.collect()

    # 2. memory: Python allocations of a fresh agent holding the same flows
    tracemalloc.start(1)
    agent = Agent(AgentConfig(**cfg))
    agent.start()
    try:
        with holders(conns, 0):
            agent.refresh(force=True)
            agent.refresh(force=True)
            snap = tracemalloc.take_snapshot()
            total = tracemalloc.get_traced_memory()[0]
            top = []
            for s in snap.statistics("lineno")[:10]:
                fr = s.traceback[0]
                top.append({"where": f"{rel(fr.filename)}:{fr.lineno}", "kb": s.size / 1024})
            out["memory"] = {"traced_kb": total / 1024, "top": top}
    finally:
        agent.stop()
        tracemalloc.stop()
    gc.collect()

    # 3. churn: every thread of an agent that accounts a burst of short connections
    out["churn_refresh"] = _profile_churn(cfg, 1.0 if quick else 2.0)
    return out


def _profile_churn(cfg: dict[str, Any], seconds: float) -> dict[str, Any]:
    """Profile (all threads: the agent may account records off its refresh path) an
    agent from the start of a burst of churn until every close is in its totals."""
    from meshlens.agent import Agent, AgentConfig

    profs: list[cProfile.Profile] = []

    # per-thread CPU time, so that threads waiting in select() or sleep() count nothing
    def hook(*_: Any) -> None:  # first event in a new thread: give it its own profiler
        p = cProfile.Profile(time.thread_time)
        profs.append(p)
        p.enable()

    port = free_port()
    main = cProfile.Profile(time.thread_time)
    profs.append(main)
    threading.setprofile(hook)
    main.enable()
    agent = Agent(AgentConfig(**cfg))
    t_end = math.nan
    try:
        agent.start()
        res, cmd = run_churn(4, seconds, port, 0)
        t_end = time.monotonic()
        counted, seen = 0, []
        # bounded: until all closes are accounted, or no progress for 3 refreshes (lost
        # records never come); one refresh a second, as scrapes would cause at most
        while time.monotonic() - t_end < 60:
            time.sleep(1.0)
            agent.refresh(force=True)
            counted = sum(
                t.closed
                for e, t in agent.table.totals().items()
                if e.reporter == "source" and e.destination_service.endswith(f":{port}")
            )
            seen.append(counted)
            if counted >= res["connections"] or (len(seen) > 3 and len(set(seen[-4:])) == 1):
                break
        accounted_after = time.monotonic() - t_end
    finally:
        main.disable()
        threading.setprofile(None)  # type: ignore[arg-type]
        agent.stop()
    st = pstats.Stats(profs[0])
    for p in profs[1:]:
        st.add(p)
    total = float(st.total_tt)  # type: ignore[attr-defined]
    records = 2 * res["connections"]
    return {
        "connections": res["connections"],
        "records": records,
        "counted": counted,
        "seconds": total,
        "accounted_after_s": accounted_after,
        "threads_profiled": len(profs),
        "us_per_record": 1e6 * total / records if records else math.nan,
        "top": _top(st),
        "cumulative": _top(st, 10, cumulative=True),
        "command": cmd,
    }


# -- environment ---------------------------------------------------------------------------


def environment() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        mem_kb = int(f.readline().split()[1])
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--", "src", "bpf"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    objs = {}
    for obj in sorted((ROOT / "src/meshlens/bpf_objects").glob("*.bpf.o")):
        objs[obj.name] = hashlib.sha256(obj.read_bytes()).hexdigest()[:12]
    return {
        "bpf_objects_sha256": objs,
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "kernel": platform.release(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "commit": commit + (" + uncommitted changes in src/ or bpf/" if dirty else ""),
        "loadavg_start": os.getloadavg()[0],
    }


# -- Markdown ------------------------------------------------------------------------------


def verdict(value: float, target: float, higher_is_better: bool = False) -> str:
    if math.isnan(value):
        return "not measured"
    ok = value >= target if higher_is_better else value <= target
    if ok:
        return "**met**"
    miss = target - value if higher_is_better else value - target
    return f"**missed** by {miss:.3g} ({100 * miss / target:.0f} %)"


def mb(kb: float) -> str:
    return f"{kb / 1024:.1f} MB"


def md_summary(res: dict[str, Any]) -> list[str]:
    out = ["| benchmark | target | result on this machine | verdict |", "|---|---|---|---|"]
    s = res.get("sendloop")
    if s:
        for proto in ("tcp", "udp"):
            sm = s["summary"]
            a = sm["agent"][proto]["added_median"]
            core = sm.get("core only (tcpflow+udpflow), no stats")
            bare = sm.get("core without health hooks")
            if core:
                c = core[proto]["added_median"]
                text = f"+{c:.0f} ns: the core, tcpflow + udpflow with their health hooks"
                if bare:
                    text += f" (without them +{bare[proto]['added_median']:.0f} ns)"
                out.append(
                    f"| added cost per {proto.upper()} send()/recv() call, loopback, "
                    f"the agent core (issue 2) | ≤ {TARGET_NS_PER_CALL:.0f} ns | {text} | "
                    f"{verdict(c, TARGET_NS_PER_CALL)} |"
                )
            out.append(
                f"| the same, as shipped (every feature: + dns, http, listen queues) | "
                f"≤ {TARGET_NS_PER_CALL:.0f} ns | +{a:.0f} ns: http's and dns's look at each "
                f"call (docs/http.md, docs/dns.md) | {verdict(a, TARGET_NS_PER_CALL)} |"
            )
    f = res.get("flows")
    if f:
        by = {r["connections"]: r for r in f["rows"]}
        if 5000 in by:
            r = by[5000]
            core = f.get("core_only")
            core_text = (
                f"; core probes alone (no features) {mb(core['loaded']['rss_kb'])}"
                if core and core.get("loaded", {}).get("connections") == 5000
                else ""
            )
            out.append(
                f"| agent RSS at 10k flows | ≤ {TARGET_RSS_MB:.0f} MB | {mb(r['rss_kb_end'])} "
                f"({r['map_entries']:,.0f} flows = 5k loopback connections), "
                f"CPU {r['cpu_percent']:.1f} %{core_text} | "
                f"{verdict(r['rss_kb_end'] / 1024, TARGET_RSS_MB)} |"
            )
        if 10000 in by:
            r = by[10000]
            out.append(
                f"| agent RSS at 10k connections | ≤ {TARGET_RSS_MB:.0f} MB | "
                f"{mb(r['rss_kb_end'])} ({r['map_entries']:.0f} flows) | "
                f"{verdict(r['rss_kb_end'] / 1024, TARGET_RSS_MB)} |"
            )
        for conns in (50000, 100000):
            if conns in by:
                r = by[conns]
                out.append(
                    f"| agent at {r['map_entries'] / 1000:.0f}k flows ({conns // 1000}k conns) | "
                    f"report | CPU {r['cpu_percent']:.1f} % of a core, RSS {mb(r['rss_kb_end'])}, "
                    f"scrape {median(r['scrape_seconds']):.2f} s | — |"
                )
        if 0 in by:
            r = by[0]
            out.append(
                f"| agent idle (no flows), for reference | — | RSS {mb(r['rss_kb_end'])}, "
                f"CPU {r['cpu_percent']:.2f} % | {verdict(r['rss_kb_end'] / 1024, TARGET_RSS_MB)} |"
            )
    c = res.get("churn")
    if c:
        out.append(
            f"| connection churn the agent keeps up with, zero lost closes | "
            f"≥ {TARGET_CHURN:,.0f}/s | {_churn_text(c)} | {_churn_verdict(c)} |"
        )
    st = res.get("startup")
    if st:
        p = median(st["process_to_serving_s"])
        pmax = max(st["process_to_serving_s"])
        a = median(st["agent_startup_seconds"])
        out.append(
            f"| start-up to all probes attached | ≤ {TARGET_STARTUP_S:.0f} s | `meshlens run` "
            f"start → serving {p:.2f} s (median; max {pmax:.2f} s); "
            f"Agent.startup_seconds {a:.3f} s | {verdict(pmax, TARGET_STARTUP_S)} |"
        )
    return out


def _churn_text(c: dict[str, Any]) -> str:
    none_max = [
        r["per_second"] for r in c["runs"] if r["variant"] == "none" and not r["rate_target"]
    ]
    parts = [f"without agent up to {median(none_max):,.0f}/s"]
    for r in c["runs"]:
        if r["variant"] != "agent":
            continue
        how = f"paced at {r['rate_target']:,}/s" if r["rate_target"] else "as fast as possible"
        part = (
            f"with agent, {how}: {r['per_second']:,.0f}/s generated, lost {r['lost']:,.0f}, "
            f"source closes {r['source_closed']:,.0f}/{r['connections']:,}"
        )
        if r.get("catchup_seconds") is not None:
            part += (
                f", all counted {r['catchup_seconds']:.1f} s after the run "
                f"(sustained {_effective_rate(r):,.0f}/s)"
            )
        else:
            part += ", never all counted"
        parts.append(part)
    return "; ".join(parts)


def _churn_verdict(c: dict[str, Any]) -> str:
    """The target is a rate the agent keeps up with, losing nothing: met when the
    paced runs at that rate lose nothing and are all counted within a scrape. A
    run as fast as possible that goes beyond what the agent can account is
    reported with what it lost (counted by the agent, never silently)."""
    ag = [r for r in c["runs"] if r["variant"] == "agent"]
    paced = [r for r in ag if r["rate_target"]]
    paced_ok = bool(paced) and all(
        r["exact"]
        and r["per_second"] >= 0.97 * TARGET_CHURN
        and r["catchup_seconds"] is not None
        and r["catchup_seconds"] <= SCRAPE_EVERY
        for r in paced
    )
    overloaded = [r for r in ag if not r["rate_target"] and not r["exact"]]
    if paced_ok and overloaded:
        worst = max(overloaded, key=lambda r: r["per_second"])
        return (
            f"**met** at {TARGET_CHURN:,.0f}/s; as fast as possible "
            f"({worst['per_second']:,.0f}/s) {sum(r['lost'] for r in overloaded):,.0f} "
            "records were lost (counted in `meshlens_lost_events_total`)"
        )
    if paced_ok:
        return "**met**"
    if any(not r["exact"] for r in ag):
        lost = sum(r["lost"] for r in ag)
        return f"**missed**: {lost:,.0f} close records lost or miscounted"
    best = max((_effective_rate(r) for r in ag), default=math.nan)
    return "**missed**: " + verdict(best, TARGET_CHURN, True).replace("**missed** ", "")


def _effective_rate(r: dict[str, Any]) -> float:
    if r.get("catchup_seconds") is None:
        return math.nan
    return float(r["connections"] / (r["seconds"] + r["catchup_seconds"]))


def _catchup_text(r: dict[str, Any]) -> str:
    c = r.get("catchup_seconds")
    if c is not None:
        return f"{c:.1f} s"
    return "never (records were lost)" if r.get("lost") else "not within the limit"


def md_findings(res: dict[str, Any]) -> list[str]:
    """Where the cost goes, computed from this run's numbers."""
    out: list[str] = []
    s = res.get("sendloop")
    if s:
        sm = s["summary"]
        for proto in ("tcp", "udp"):
            a = sm["agent"][proto]["added_median"]
            parts = [f"{proto.upper()}: +{a:.0f} ns per call as shipped"]
            if KVIEW_VARIANT in sm:
                b = sm[KVIEW_VARIANT][proto]["added_median"]
                parts.append(f"`--bpf-stats` would add ≈ {b - a:+.0f} ns")
            core = sm.get("core only (tcpflow+udpflow), no stats")
            if core:
                c_ns = core[proto]["added_median"]
                parts.append(f"the features beyond tcpflow+udpflow ≈ {a - c_ns:+.0f} ns")
                parts.append(f"core alone {c_ns:+.0f} ns")
            k = s["kernel_view"][proto]["programs"]
            top = sorted(k.items(), key=lambda kv: -kv[1]["runs_per_call"] * kv[1]["ns_per_run"])
            progs = ", ".join(
                f"`{n}` {d['runs_per_call'] * d['ns_per_run']:.0f}" for n, d in top[:4]
            )
            parts.append(f"kernel's view, ns per call: {progs}")
            out.append("- Send/recv " + "; ".join(parts) + ".")
        out.append(
            "- No program runs per packet. On the socket calls run http and dns (on every "
            "call) and udpflow (on UDP calls), behind one dispatcher (docs/sockchain.md). "
            "tcpflow runs at state changes only: it reads each socket's own sequence "
            "numbers at every refresh and at close (docs/tcpflow.md). A TCP call on a "
            "socket that is not HTTP costs http a hash lookup and an 8-byte read of the "
            "caller's buffer. dns reads the socket's peer port, or an unconnected UDP "
            "socket's destination. The listen queues are read from the listening sockets "
            "(docs/tcphealth.md)."
        )
    f = res.get("flows")
    if f:
        by = {r["connections"]: r for r in f["rows"]}
        if 5000 in by:
            sm = by[5000]["smaps_kb"]
            out.append(
                f"- RSS at 10k flows {mb(by[5000]['rss_kb_end'])}: mmapped ring buffers "
                f"{mb(sm['bpf_maps_mmapped'])}, anonymous (Python objects, ctypes buffers, "
                f"numpy) {mb(sm['anonymous'])}, files (interpreter, libpython, numpy/OpenBLAS, "
                f"libcrypto) {mb(sm['files'])}."
            )
        core = f.get("core_only")
        if core and 0 in by:
            out.append(
                f"- Idle, the full agent takes {mb(by[0]['rss_kb_end'])}, the core alone "
                f"{mb(core['idle']['rss_kb'])}: the features add "
                f"{mb(by[0]['rss_kb_end'] - core['idle']['rss_kb'])} before any flow; at "
                f"{2 * core['loaded']['connections']:,} flows the core alone takes "
                f"{mb(core['loaded']['rss_kb'])}."
            )
        lo, hi = by.get(5000), max(f["rows"], key=lambda r: r["map_entries"])
        if lo and hi is not lo and hi["map_entries"] > lo["map_entries"]:
            per_flow = (
                (hi["rss_kb_end"] - lo["rss_kb_end"])
                * 1024
                / (hi["map_entries"] - lo["map_entries"])
            )
            out.append(
                f"- Growth: ≈ {per_flow:,.0f} bytes of RSS per extra flow between "
                f"{lo['map_entries']:,.0f} and {hi['map_entries']:,.0f} flows; a scrape at "
                f"{hi['map_entries']:,.0f} flows takes {median(hi['scrape_seconds']):.2f} s and "
                f"the first one (naming every socket) {hi['first_scrape_seconds']:.1f} s."
            )
    c = res.get("churn")
    if c:
        ag = [r for r in c["runs"] if r["variant"] == "agent" and r.get("records")]
        if ag:
            us = [1e6 * r["refresh_seconds"] / r["records"] for r in ag]
            out.append(
                f"- Close records cost the agent {min(us):.0f}-{max(us):.0f} µs each in refresh "
                f"(two per connection), i.e. one core accounts at most "
                f"{1e6 / (2 * min(us)):,.0f} connections/s; peak RSS under churn "
                f"{mb(max(r['agent_hwm_kb'] for r in ag))}. Records wait in Python lists until "
                "the next refresh (a scrape; with `--quiet`, also 20,000 waiting records), so "
                "a backlog costs memory."
            )
            lossy = [r for r in ag if r["lost"]]
            if lossy:
                cpu = max(100 * r["agent_cpu_during_run_s"] / r["seconds"] for r in lossy)
                counts = ", ".join(f"{r['lost']:,.0f}" for r in lossy)
                out.append(
                    f"- Lost close records ({counts}) "
                    "mean the tcpflow ring buffer filled: the agent process ran at up to "
                    f"{cpu:.0f} % of a core (its Python threads share one interpreter lock), "
                    "so its poller did not drain the ring buffer as fast as the kernel filled it."
                )
    p = res.get("profile")
    if p:
        for key, what in (("warm_refresh", "a steady refresh"), ("churn_refresh", "close records")):
            top = p.get(key, {}).get("top", [])[:3]
            if top:
                out.append(
                    f"- Profile, {what}: "
                    + ", ".join(f"`{t['func']}` {t['tottime']:.2f} s" for t in top)
                    + " (own time)."
                )
        m = p.get("memory")
        if m and m["top"]:
            t = m["top"][0]
            out.append(
                f"- Largest Python allocation site: `{t['where']}` {t['kb'] / 1024:.1f} MB "
                f"(of {m['traced_kb'] / 1024:.1f} MB traced)."
            )
    return out


def md_machine(env: dict[str, Any]) -> list[str]:
    return [
        "| date | kernel | CPU | cores | memory | Python | meshlens |",
        "|---|---|---|---|---|---|---|",
        f"| {env['date']} | {env['kernel']} | {env['cpu']} | {env['cores']} | "
        f"{env['memory_gb']} GB | {env['python']} | {env['commit']} |",
    ]


def md_startup(s: dict[str, Any]) -> list[str]:
    loads = s["probe_load_seconds"]
    probes = sorted({k for d in loads for k in d})
    rows = [
        ('`meshlens run` process start → "serving" line', s["process_to_serving_s"]),
        ("… of which interpreter start + imports", s["interpreter_and_imports_s"]),
        (
            "`Agent.startup_seconds` (open, check BTF, load, attach all probes)",
            s["agent_startup_seconds"],
        ),
        *((f"… probe `{n}` load + attach", [d[n] for d in loads if n in d]) for n in probes),
    ]
    return [
        f"**Target:** ≤ {TARGET_STARTUP_S:.0f} s from process start to all probes attached.",
        "",
        "| what | median | min | max |",
        "|---|---|---|---|",
        *(
            f"| {what} | {median(xs):.3f} s | {min(xs):.3f} s | {max(xs):.3f} s |"
            for what, xs in rows
        ),
        "",
        f'**Commands:** `{s["command"]}` timed from `Popen` to the line containing "serving" '
        f"({s['reps']} runs, each stopped with SIGTERM); `{s['import_command']}` timed the "
        "same way; "
        "`Agent(AgentConfig()).start()` in-process, reading `Agent.startup_seconds` and each "
        "probe's `status.load_seconds`.",
        "",
        "**Method:** wall time on a warm page cache (the first run of the set pays for a cold "
        "one, which is why max can exceed the median). Before the set: "
        + (
            "the machine was quiet."
            if s.get("quiet", {}).get("quiet")
            else f"other work was running ({s.get('quiet')}), which slows start-up."
        ),
    ]


def md_sendloop(s: dict[str, Any]) -> list[str]:
    out = [
        f"**Target:** ≤ {TARGET_NS_PER_CALL:.0f} ns added per send() or recv() call on loopback.",
        "",
        "| agent | proto | ns per call, median (min-max) | added ns per call, median of "
        "paired differences (min-max) | added, fastest vs fastest | added per send+recv pair |",
        "|---|---|---|---|---|---|",
    ]
    for v in s["variants"]:
        for proto in ("tcp", "udp"):
            x = s["summary"][v][proto]
            added = (
                "—"
                if v == "none"
                else f"**{x['added_median']:+.0f}** ({x['added_min']:+.0f} … {x['added_max']:+.0f})"
            )
            pair = "—" if v == "none" else f"{2 * x['added_median']:+.0f} ns"
            best = "—" if v == "none" else f"{x.get('added_best', math.nan):+.0f}"
            spread = f"{x['median']:.0f} ({x['min']:.0f}-{x['max']:.0f})"
            out.append(f"| {v} | {proto.upper()} | {spread} | {added} | {best} | {pair} |")
    out += [
        "",
        f'Kernel\'s view (variant "{KVIEW_VARIANT}"): `run_time_ns / run_cnt` of each '
        "program over the same runs, i.e. `meshlens_bpf_program_run_seconds_total / "
        "meshlens_bpf_program_runs_total` (`Agent.probes_and_chain()`). The chains' "
        "dispatchers (`sockchain_*`) include the time of every member "
        "they tail-call (a tail call skips the kernel's per-program accounting).",
        "",
        "| loop | program | runs per call | ns per run |",
        "|---|---|---|---|",
    ]
    for proto in ("tcp", "udp"):
        k = s["kernel_view"][proto]
        for prog, d in k["programs"].items():
            if d["runs_per_call"] < 0.001:
                continue
            out.append(
                f"| {proto.upper()} | `{prog}` | {d['runs_per_call']:.2f} | {d['ns_per_run']:.0f} |"
            )
        total = k["bpf_ns_per_call"]
        out.append(f"| {proto.upper()} | **all programs, ns per call** | | **{total:.0f}** |")
    stats = s["stats_runs_counted"]
    out += [
        "",
        f"**Commands:** `{s['commands'][0]}` and `{s['commands'][1]}` "
        f"(built with `gcc -O2 -Wall -Wextra -o bench/build/sendloop bench/sendloop.c`); "
        "the agent is loaded in the benchmark's own process with "
        "`meshlens.agent.Agent(AgentConfig(...)).start()` before a run and `stop()` after it.",
        "",
        f"**Method:** one thread sends a 64-byte message on one end of a loopback socket pair "
        f"and receives it on the other; {s['iterations']:,} pairs after {s['warmup']:,} "
        "warm-up pairs, "
        f"pinned to CPU {s['cpu']}; ns per call = elapsed / (2 x pairs). Each of {s['reps']} "
        "repetitions runs every variant (no agent; the agent as `meshlens run` configures it; "
        "the same with `--bpf-stats`; the core probes with and without their health hooks; "
        "one probe only) in rotated order, "
        "loading the agent just before and unloading it just after its variant, so the "
        "variants alternate A/B/A/B on the same machine state. Added cost = median over "
        "repetitions of (variant - no agent) from the same repetition. Program runs counted by the "
        "kernel's run-time statistics during each variant (0: statistics really off): "
        + ", ".join(f"{v}: {x:,}" for v, x in stats.items() if v != "none")
        + ". Repetitions discarded because other work disturbed them (another agent's "
        "programs loaded or unloaded during the repetition, or more than 0.25 core used "
        "outside this benchmark, or BPF statistics turned on by another process): "
        f"{len(s['discarded'])}"
        + (
            "; too few quiet ones were left, so noisy repetitions are included above."
            if s.get("noisy_included")
            else "."
        )
        + (
            f" In {s['stats_leak_reps']} of the {s['reps']} repetitions another process had "
            'BPF run-time statistics on, so the "no stats" variants ran with statistics on.'
            if s.get("stats_leak_reps")
            else ""
        ),
    ]
    return out


def md_flows(f: dict[str, Any]) -> list[str]:
    out = [
        f"**Target:** RSS ≤ {TARGET_RSS_MB:.0f} MB at 10k flows; CPU and RSS reported at 100k. A "
        "flow is one entry of `tcpflow_flows`, i.e. one socket: a loopback connection is two.",
        "",
        "| connections | flows in the map | agent CPU (% of one core) | RSS end (max sampled) | "
        "RSS: ring buffers / anonymous / files | kernel map memory | scrape median (max) | "
        "first scrape | istio series | holders' set-up |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in f["rows"]:
        sm = r["smaps_kb"]
        out.append(
            f"| {r['connections']:,} | {r['map_entries']:,.0f} | {r['cpu_percent']:.1f} % | "
            f"{mb(r['rss_kb_end'])} ({mb(r['rss_kb_max'])}) | "
            f"{mb(sm['bpf_maps_mmapped'])} / {mb(sm['anonymous'])} / {mb(sm['files'])} | "
            f"{r['bpf_map_memlock_bytes'] / 1048576:.1f} MB | "
            f"{median(r['scrape_seconds']):.3f} s ({max(r['scrape_seconds']):.3f} s) | "
            f"{r['first_scrape_seconds']:.2f} s | {r['series']} | "
            f"{r['holder_setup_seconds']:.1f} s |"
        )
    core = f.get("core_only")
    if core:
        idle, loaded = core["idle"], core["loaded"]
        out += [
            "",
            f"For comparison, the agent core alone (probes {core['probes']}, no features, "
            "same map sizes) in a bare process that refreshes and renders /metrics like a "
            f"scrape: idle RSS {mb(idle['rss_kb'])} (ring buffers "
            f"{mb(idle['smaps_kb']['bpf_maps_mmapped'])} / anonymous "
            f"{mb(idle['smaps_kb']['anonymous'])} / files {mb(idle['smaps_kb']['files'])}); "
            f"with {loaded['connections']:,} connections ({2 * loaded['connections']:,} flows) "
            f"{mb(loaded['rss_kb'])} (anonymous {mb(loaded['smaps_kb']['anonymous'])}); "
            f"kernel map memory {core['bpf_map_memlock_bytes'] / 1048576:.1f} MB.",
        ]
    busy = [
        f"{r['connections']:,}: {r['interference']['foreign_cores']:.2f} core, "
        f"{r['interference']['foreign_bpf_programs']} foreign programs"
        for r in f["rows"]
        if "interference" in r
    ]
    if busy:
        out += ["", "Other work on the machine during each level: " + "; ".join(busy) + "."]
    holder = f["holder_commands"]
    # the largest level; keys are strings once the results went through JSON
    example = holder[max(holder, key=int)] if holder else ""
    out += [
        "",
        f"**Commands:** agent `{f['agent_command']}`; connections {example} "
        "(built with `gcc -O2 -Wall -Wextra -o bench/build/holdconns bench/holdconns.c`).",
        "",
        f"**Method:** for each level a fresh agent is started, then N loopback connections are "
        f"opened (up to {f['conns_per_process']:,} per `holdconns` process: the hard "
        "RLIMIT_NOFILE here cannot be raised, so big N is split over processes; client sockets "
        "bind 127.0.1.1-8 with IP_BIND_ADDRESS_NO_PORT against 16 listening ports per process, "
        "so ports never run out). Each connection moves 16 bytes each way at open and again "
        f"every {f['touch_seconds']:g} s. A first scrape (which names every new socket) is timed "
        f"on its own; then over a {f['window_seconds']:g} s window Prometheus is played by a "
        f"`urllib` GET of `/metrics` every {SCRAPE_EVERY:g} s, and the agent's CPU is "
        "utime+stime from `/proc/<pid>/stat` over the window; RSS is `VmRSS` from "
        "`/proc/<pid>/status` after each scrape, split by mapping from `/proc/<pid>/smaps` "
        '("ring buffers" are the mmapped BPF ring buffers, counted in RSS although they are '
        'kernel memory; "kernel map memory" is the `memlock` of every map the agent holds, '
        "not in RSS). `meshlens run --quiet` refreshes for the scrapes only. "
        "The 0-connection row is the agent without flows, the baseline of this benchmark.",
    ]
    return out


def md_churn(c: dict[str, Any]) -> list[str]:
    out = [
        f"**Target:** ≥ {TARGET_CHURN:,.0f} connections/s with zero lost close records.",
        "",
        "| # | agent | pacing | connections/s | completed | failed | lost close records | "
        "source-side closes counted | destination-side closes counted | all counted after | "
        "agent CPU during run (of one core) | agent CPU time, run + catch-up | agent peak RSS | "
        "other work on the machine |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(c["runs"], 1):
        pacing = f"{r['rate_target']:,}/s" if r["rate_target"] else "as fast as possible"
        if r["variant"] == "agent":
            cpu = 100 * r["agent_cpu_during_run_s"] / r["seconds"]
            extra = (
                f"{r['lost']:,.0f} | {r['source_closed']:,.0f} | {r['destination_closed']:,.0f} | "
                f"{_catchup_text(r)} | {cpu:.0f} % | {r['agent_cpu_total_s']:.1f} s | "
                f"{mb(r['agent_hwm_kb'])} |"
            )
        else:
            extra = "— | — | — | — | — | — | — |"
        w = r.get("interference", {})
        other = (
            f"{w['foreign_cores']:.2f} core, {w['foreign_bpf_programs']} foreign programs"
            if w
            else "?"
        )
        out.append(
            f"| {i} | {r['variant']} | {pacing} | {r['per_second']:,.0f} | {r['connections']:,} | "
            f"{r['failed']} | {extra} {other} |"
        )
    ag = [r for r in c["runs"] if r["variant"] == "agent"]
    per_rec = [1e6 * r["refresh_seconds"] / r["records"] for r in ag if r.get("records")]
    out += [
        "",
        f"Agent refresh time per close record (from `meshlens_refresh_seconds_total` and "
        f"`meshlens_ring_records_total`): {', '.join(f'{x:.1f}' for x in per_rec)} µs. "
        "Destination-side edges per run: "
        + ", ".join(str(r["destination_edges"]) for r in ag)
        + " (1 expected: every server socket belongs to the same `churn` process).",
        "",
        f"**Commands:** {' ; '.join(f'`{x}`' for x in c['churn_commands'])} "
        "(built with `gcc -O2 -Wall -Wextra -pthread -o bench/build/churn bench/churn.c`); "
        f"agent `{c['agent_command']}`.",
        "",
        f"**Method:** `churn` runs {c['threads']} client and {c['threads']} server threads in one "
        "process: connect, send 64 B, read 64 B and EOF, close; the server closes first, so "
        "TIME_WAIT stays on the server side and client ports are free again at once. Runs "
        f"without and with the agent alternate in one session, {c['seconds']:g} s each, on a "
        "fresh port. With the agent (a fresh `meshlens run` per run) a scraper GETs /metrics "
        f"every {SCRAPE_EVERY:g} s during the run; afterwards /metrics is read every second "
        f"(at most {c['catchup_limit']:g} s) until the closes are all counted. Checked: "
        '`meshlens_lost_events_total{probe="tcpflow"}` did not grow, and '
        '`istio_tcp_connections_closed_total{reporter="source"}` summed over the edges whose '
        "`destination_service` ends in the run's port grew by exactly the number of connections "
        'the client completed (and `reporter="destination"` by the number served). '
        '"All counted after" is how long after the end of the run that took: when it is more '
        "than a scrape interval the agent did not keep up and worked off a backlog, so the rate "
        "it sustained is completed / (run + catch-up). With both cores busy generating "
        "connections, the agent competes with the load for CPU.",
    ]
    return out


def md_profile(p: dict[str, Any]) -> list[str]:
    def table(top: list[dict[str, Any]]) -> list[str]:
        rows = ["| function | calls | own time | cumulative |", "|---|---|---|---|"]
        rows += [
            f"| `{r['func']}` | {r['calls']:,} | {r['tottime']:.3f} s | {r['cumtime']:.3f} s |"
            for r in top
        ]
        return rows

    flows = p.get("flows", 2 * p["connections"])
    out = [
        f"In-process agent with {p['connections']:,} loopback connections ({flows:,} flows), "
        "cProfile (which roughly doubles Python-heavy times), holders from "
        f"{p.get('holder_command', '')}.",
        "",
        f"**First refresh** (names and binds every socket): {p['cold_refresh']['seconds']:.2f} s",
        "",
        *table(p["cold_refresh"]["top"]),
        "",
        "meshlens functions by cumulative time (including what they call):",
        "",
        *table(p["cold_refresh"].get("cumulative", [])),
        "",
        f"**Steady refresh** (every socket already bound): {p['warm_refresh']['seconds']:.2f} s",
        "",
        *table(p["warm_refresh"]["top"]),
        "",
        f"**A scrape** (`Renderer.render`: refresh + exposition): {p['scrape']['seconds']:.2f} s",
        "",
        *table(p["scrape"]["top"][:8]),
        "",
    ]
    m = p.get("memory")
    if m:
        out += [
            f"**Python memory** (tracemalloc from before `Agent()` to after two refreshes "
            f"at {flows:,} flows): "
            f"{m['traced_kb'] / 1024:.1f} MB traced; largest allocation sites:",
            "",
            "| line | MB |",
            "|---|---|",
            *(f"| `{r['where']}` | {r['kb'] / 1024:.1f} |" for r in m["top"]),
            "",
        ]
    c = p.get("churn_refresh")
    if c:
        out += [
            f"**Close records** (`{c['command']}`: {c['connections']:,} connections, "
            f"{c['records']:,} close records, with an in-process agent refreshed once a "
            "second; every thread of it profiled, with per-thread CPU time, from its start "
            f"until {c.get('counted', 0):,} of the {c['connections']:,} source-side closes "
            f"were in its totals, {c.get('accounted_after_s', math.nan):.1f} s after the "
            "burst): "
            f"{c['seconds']:.2f} s of CPU time in {c.get('threads_profiled', 1)} threads, "
            f"{c['us_per_record']:.1f} µs per record under cProfile.",
            "",
            *table(c["top"]),
            "",
            "meshlens functions by cumulative time:",
            "",
            *table(c.get("cumulative", [])),
        ]
    return out


def _probes_loaded(res: dict[str, Any]) -> list[str]:
    st = res.get("startup")
    if st and st.get("probe_load_seconds"):
        return sorted(st["probe_load_seconds"][0])
    return []


SUMMARY_TITLE = "Summary"
FINDINGS_TITLE = "Where the cost goes (from the numbers below)"
SECTIONS: dict[str, tuple[str, Callable[[dict[str, Any]], list[str]]]] = {
    # numbered in this order, those that ran
    "sendloop": ("Added cost per send()/recv() on loopback", md_sendloop),
    "flows": ("Agent CPU and RSS with live flows", md_flows),
    "churn": ("Connection churn", md_churn),
    "startup": ("Start-up to all probes attached", md_startup),
    "profile": ("Where the time and memory go", md_profile),
}


def markdown(res: dict[str, Any]) -> str:
    env = res["environment"]
    # whatever file the run wrote, this page is regenerated into docs/
    ran = res.get("command", ".venv/bin/python bench/run.py")
    cmdline = re.sub(r" --out \S+", "", ran) + " --out docs/benchmarks.md"
    lines = [
        "# meshlens benchmarks",
        "",
        "Speed and memory targets of the agent core, each measured with and without the agent "
        "in the same run. Generated by `bench/run.py`; every number below is from the machine "
        "in the next table, on the date shown. Another machine gives other numbers: re-run "
        'before comparing. "The agent" is `meshlens run` as shipped at that commit: the core '
        "probes (tcpflow, udpflow) and every feature"
        + (f" (probes loaded: {', '.join(_probes_loaded(res))})" if _probes_loaded(res) else "")
        + "; the core alone is measured beside it where it matters.",
        "",
        f"**Reproduce everything:** `{cmdline}` (as root, after `make build`; "
        f"{res.get('wall_seconds', 0) / 60:.1f} min here). `make bench` runs the same script; "
        "`--only NAME` runs one benchmark (" + ", ".join(NAMES) + "), `--quick` a short version. "
        "Raw results: `bench/results/*.json` (not committed). The sections after the "
        "numbered ones are written by hand; `--out` keeps them.",
        "",
        *md_machine(env),
        "",
        f"## {SUMMARY_TITLE}",
        "",
        *md_summary(res),
        "",
        f"## {FINDINGS_TITLE}",
        "",
        *md_findings(res),
        "",
        "The machine is shared: other people's test suites load their own meshlens agents and "
        "generate traffic. Every measurement records that interference (foreign BPF programs "
        "with meshlens' names, CPU used outside this benchmark's processes); see each section.",
        "",
    ]
    n = 0
    for key, (title, fn) in SECTIONS.items():
        if key in res:
            n += 1
            r = res[key]
            when = (
                f"_Measured {r['ran_at']} on meshlens {r['commit']} in "
                f"{r.get('bench_seconds', 0):.0f} s; this section alone: `{r['run_command']}`._"
                if "ran_at" in r
                else ""
            )
            lines += [f"## {n}. {title}", "", when, "", *fn(r), ""]
    return "\n".join(lines).rstrip() + "\n"


# -- main ------------------------------------------------------------------------------------


BENCHES: dict[str, Callable[[bool], dict[str, Any]]] = {
    "startup": bench_startup,
    "sendloop": bench_sendloop,
    "churn": bench_churn,
    "flows": bench_flows,
    "profile": bench_profile,
}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short version of every benchmark")
    ap.add_argument(
        "--only", action="append", choices=NAMES, metavar="NAME", help=f"one of {', '.join(NAMES)}"
    )
    ap.add_argument("--out", type=Path, help="write the Markdown here (default: stdout)")
    ap.add_argument(
        "--from-json",
        type=Path,
        action="append",
        help="render saved results instead of running; repeat to take later files' "
        "benchmarks over earlier ones (e.g. a re-run of one benchmark)",
    )
    args = ap.parse_args(argv)
    if args.from_json:
        res = json.loads(args.from_json[0].read_text())
        for extra in args.from_json[1:]:
            more = json.loads(extra.read_text())
            res.update({k: more[k] for k in NAMES if k in more})
    else:
        if os.geteuid() != 0:
            print("bench: needs root (loads BPF programs)", file=sys.stderr)
            return 1
        res = run_all(args)
    text = markdown(res)
    if args.out:
        if args.out.exists():
            # the sections written by hand (per-feature results, which commit) stay
            generated = [title for title, _ in SECTIONS.values()]
            text, kept = keep_hand_written(
                args.out.read_text(), text, (SUMMARY_TITLE, FINDINGS_TITLE), generated
            )
            if kept:
                log(f"kept from {args.out}: " + "; ".join(kept))
        args.out.write_text(text)
        log(f"wrote {args.out}")
    else:
        sys.stdout.write(text)
    return 0


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.monotonic()
    names = args.only or list(NAMES)
    cmd = ".venv/bin/python bench/run.py" + (" --quick" if args.quick else "")
    cmd += "".join(f" --only {n}" for n in args.only or [])
    if args.out:
        cmd += f" --out {rel(args.out)}"
    res: dict[str, Any] = {
        "environment": environment(),
        "quick": args.quick,
        "command": cmd,
        "build": build(),
    }
    for name in NAMES:
        if name in names:
            log(f"running {name}{' (quick)' if args.quick else ''}")
            t = time.monotonic()
            ran_at = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
            res[name] = BENCHES[name](args.quick)
            res[name]["bench_seconds"] = time.monotonic() - t
            res[name]["ran_at"] = ran_at
            res[name]["commit"] = res["environment"]["commit"]
            res[name]["run_command"] = (
                ".venv/bin/python bench/run.py" + (" --quick" if args.quick else "")
            ) + f" --only {name}"
    res["wall_seconds"] = time.monotonic() - t0
    res["environment"]["loadavg_end"] = os.getloadavg()[0]
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS / f"results-{stamp}{'-quick' if args.quick else ''}.json"
    path.write_text(json.dumps(res, indent=1, default=str))
    log(f"results in {rel(path)} ({res['wall_seconds']:.0f} s)")
    return res


if __name__ == "__main__":
    sys.exit(main())
