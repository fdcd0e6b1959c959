"""Issue 4, section 1 (UDP flows, the core's udpflow probe): bytes and datagrams per
edge in both directions with the core's identity labels, exact against the load
generator's own counts, and unchanged when the kernel expires the idle flows."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest

from meshlens.agent import Agent
from meshlens.exporter import edge_families
from meshlens.lab import Lab
from meshlens.loadgen import read_json_line, stop_server

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(os.geteuid() != 0, reason="BPF programs and namespaces need root"),
]

IDLE = 3.0


def _udp_rows(agent: Agent, ports: set[int]) -> int:
    if agent.last_udp is None:
        return 0
    keys, _ = agent.last_udp
    return sum(1 for k in keys if int(k["lport"]) in ports or int(k["rport"]) in ports)


def _samples(agent: Agent, workload: str) -> dict[tuple[str, str, str], float]:
    """(metric, reporter, direction) -> value, for UDP series from `workload`."""
    out: dict[tuple[str, str, str], float] = {}
    for fam in edge_families(agent.table.totals()):
        if not fam.name.startswith("meshlens_udp_"):
            continue
        for s in fam.samples:
            if s.labels["source_workload"] != workload:
                continue
            key = (s.name, s.labels["reporter"], s.labels.get("direction", ""))
            out[key] = out.get(key, 0) + s.value
    return out


def test_udp_edges_exact_and_kept_through_idle_expiry(
    lab: Lab, make_agent: Callable[..., Agent]
) -> None:
    agent = make_agent(udp_idle_seconds=IDLE, features=())
    srv_host, cli_host = lab.hosts
    d, b, r = 23, 997, 13
    srv: subprocess.Popen[Any] = srv_host.popen(
        *srv_host.python("-m", "meshlens.loadgen", "server", "--proto", "udp"),
        *("--bind", srv_host.addr, "--port", "0", "--reply-bytes", str(r), "--max-seconds", "60"),
        stdout=subprocess.PIPE,
    )
    port = int(read_json_line(srv)["listening"])
    p = cli_host.run(
        *cli_host.python("-m", "meshlens.loadgen", "client", "--proto", "udp"),
        *("--connect", srv_host.addr, "--port", str(port), "--datagrams", str(d)),
        *("--datagram-bytes", str(b), "--expect-reply-bytes", str(r)),
        timeout=60,
    )
    cli = json.loads(p.stdout)
    assert cli["datagrams_sent"] == d and cli["bytes_received"] == d * r
    src, dst = cli_host.name, srv_host.name
    want = {
        ("meshlens_udp_sent_bytes_total", "source", ""): d * b,
        ("meshlens_udp_received_bytes_total", "source", ""): d * r,
        ("meshlens_udp_datagrams_total", "source", "sent"): d,
        ("meshlens_udp_datagrams_total", "source", "received"): d,
        ("meshlens_udp_sent_bytes_total", "destination", ""): d * r,
        ("meshlens_udp_received_bytes_total", "destination", ""): d * b,
        ("meshlens_udp_datagrams_total", "destination", "sent"): d,
        ("meshlens_udp_datagrams_total", "destination", "received"): d,
    }

    def live() -> bool:
        agent.refresh(force=True)
        return _samples(agent, src) == want

    deadline = time.monotonic() + 10
    while not live() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _samples(agent, src) == want
    assert _udp_rows(agent, {port}) == 2  # both sockets' flows, still live in the kernel
    edges = {e for e in agent.table.totals() if e.protocol == "udp" and e.source_workload == src}
    assert {(e.reporter, e.destination_workload, e.destination_service) for e in edges} == {
        ("source", dst, f"{dst}:{port}"),
        ("destination", dst, f"{dst}:{port}"),
    }
    stop_server(srv)
    # idle expiry: the kernel deletes both flows after IDLE s, with a final record
    deadline = time.monotonic() + IDLE + 10
    while time.monotonic() < deadline:
        agent.refresh(force=True)
        if _udp_rows(agent, {port}) == 0:
            break
        time.sleep(0.2)
    assert _udp_rows(agent, {port}) == 0
    for _ in range(3):
        agent.refresh(force=True)
        assert _samples(agent, src) == want  # nothing lost, nothing counted twice
        time.sleep(0.1)
