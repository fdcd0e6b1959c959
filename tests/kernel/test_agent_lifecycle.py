"""`meshlens run` as a process: serves /metrics, attaches fast, and leaves no program
or link behind when stopped by SIGTERM or SIGINT."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from typing import Any

import pytest
from kernel_helpers import (
    MESHLENS,
    all_link_ids,
    all_prog_ids,
    bpf_fds_of,
    bpf_objects_of,
    our_prog_ids,
    wait_for,
)

from meshlens.agent import Pressure
from meshlens.loadgen import free_port, read_line

pytestmark = [pytest.mark.kernel, pytest.mark.usefixtures("bpf_ready")]

SERVING = re.compile(
    rb"serving http://127\.0\.0\.1:(\d+)/metrics \(probes: ([a-z0-9_, ]+); "
    rb"attached in ([0-9.]+) s\)"
)
# tcpflow_send/_recv/_state and udpflow_send/_recv at least
MIN_PROGRAMS = 5


def thread_policies(pid: int) -> dict[int, int]:
    """Scheduling policy of each thread of pid (field 41 of its stat)."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/stat") as f:
            out[int(tid)] = int(f.read().rsplit(")", 1)[1].split()[38])
    return out


def voluntary_switches(pid: int) -> dict[int, int]:
    """How often each thread of pid went to sleep."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(FileNotFoundError), open(f"/proc/{pid}/task/{tid}/status") as f:
            for line in f:
                if line.startswith("voluntary_ctxt_switches:"):
                    out[int(tid)] = int(line.split()[1])
    return out


def get(url: str) -> str:
    assert url.startswith("http://127.0.0.1:")
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.status == 200
        return str(resp.read().decode())


@pytest.mark.parametrize(
    ("sig", "priority"),
    [(signal.SIGTERM, "idle"), (signal.SIGINT, "normal")],
    ids=["SIGTERM", "SIGINT-normal-priority"],
)
def test_run_serves_and_detaches_on_signal(sig: signal.Signals, priority: str) -> None:
    port = free_port()
    argv = [*MESHLENS, "run", "--listen", f"127.0.0.1:{port}", "--quiet", "--bpf-stats"]
    argv += ["--interval", "0.1"]  # a summary's period: --quiet has none
    proc = subprocess.Popen(
        [*argv, "--priority", priority],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        try:
            line = read_line(proc, timeout=20)
        except EOFError:
            line = b""  # the agent ended: its stderr, below, says why
        m = SERVING.search(line)
        assert m, (line, proc.stderr.read() if proc.poll() is not None else b"")  # type: ignore[union-attr]
        assert int(m.group(1)) == port
        assert {"tcpflow", "udpflow"} <= set(m.group(2).decode().split(", ")), line
        # the start-up target (<= 1 s) is a benchmark's to check (bench/run.py), not a
        # test's: a busy CI box would make it flaky
        assert float(m.group(3)) > 0

        ours, links = bpf_fds_of(proc.pid)  # every program and link of this process
        assert len(ours & our_prog_ids()) >= MIN_PROGRAMS, ours  # tcpflow_*, udpflow_*
        assert len(links) >= MIN_PROGRAMS and links <= all_link_ids(), links

        time.sleep(0.5)
        body = get(f"http://127.0.0.1:{port}/metrics")
        # quiet: no refresh of its own, the scrape's is the first
        assert re.search(r"^meshlens_refreshes_total 1$", body, re.M), body[-2000:]
        assert "istio_tcp_connections_opened_total" in body
        assert "meshlens_bpf_program_runs_total" in body
        assert 'meshlens_probe_up{probe="tcpflow"} 1.0' in body
        assert 'meshlens_probe_up{probe="udpflow"} 1.0' in body
        # --priority idle (the default): the main thread's refreshes and the /metrics
        # thread are SCHED_IDLE; the threads that drain the ring buffers are not
        policies = thread_policies(proc.pid)
        idle = 2 if priority == "idle" else 0
        assert (policies[proc.pid] == os.SCHED_IDLE) == bool(idle), policies
        # (a scrape's own thread, also idle, may still be ending)
        assert min(list(policies.values()).count(os.SCHED_IDLE), 2) == idle, policies
        assert os.SCHED_OTHER in policies.values(), policies

        # Between scrapes no thread wakes on a timer of its own: each wake-up would
        # take a CPU from the host's workloads (docs/bench/http.md)
        time.sleep(0.5)  # the scrape's own thread ends
        before = voluntary_switches(proc.pid)
        time.sleep(2.5)
        after = voluntary_switches(proc.pid)
        woke = {t: after[t] - n for t, n in before.items() if after.get(t, n) != n}
        assert not woke, (woke, policies)

        t0 = time.monotonic()
        proc.send_signal(sig)
        rc = proc.wait(timeout=5)
        assert time.monotonic() - t0 <= 5
        assert rc == 0, proc.stderr.read()  # type: ignore[union-attr]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
    out = proc.stdout.read()  # type: ignore[union-attr]
    assert b"stopped; all programs detached" in out
    # The kernel frees programs and links once their last reference is gone.
    assert wait_for(lambda: not (all_prog_ids() & ours), 2.0), all_prog_ids() & ours
    assert not (our_prog_ids() & ours)
    assert wait_for(lambda: not (all_link_ids() & links), 2.0), all_link_ids() & links


def test_agent_stop_releases_every_program_link_and_map(make_agent: Any) -> None:
    """In process: Agent.stop() closes everything start() opened (and is idempotent)."""
    before = bpf_objects_of(os.getpid())
    agent = make_agent()
    during = bpf_objects_of(os.getpid())
    progs, links, maps = (now - old for now, old in zip(during, before, strict=True))
    assert len(progs) >= MIN_PROGRAMS and len(links) >= MIN_PROGRAMS and maps, (progs, links)
    agent.stop()
    assert bpf_objects_of(os.getpid()) == before
    assert wait_for(lambda: not (our_prog_ids() & progs), 2.0)
    agent.stop()  # the fixture stops it again: harmless


def test_pressure_while_close_records_pour_in(make_agent: Any) -> None:
    """A burst of connections fills tcpflow's ring (1/8 of it per wake-up) twice within
    a second: the agent is under pressure, and its idle-priority bookkeeping runs at
    normal priority (system.normal_priority_if); it ends when the records stop."""
    agent = make_agent(features=())
    agent.pressure = Pressure(window=1.0, hold=0.5)
    assert not agent.under_pressure()
    with socket.create_server(("127.0.0.1", 0), backlog=4096) as srv:
        addr = srv.getsockname()
        accepted = threading.Thread(target=_accept_and_close, args=(srv,), daemon=True)
        accepted.start()
        made, t0 = 0, time.monotonic()
        while not agent.under_pressure() and time.monotonic() - t0 < 10:
            with socket.create_connection(addr):
                made += 1
        assert agent.under_pressure(), f"no pressure after {made} connections"
    assert wait_for(lambda: not agent.under_pressure(), 2.0)


def _accept_and_close(srv: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while True:
            srv.accept()[0].close()
