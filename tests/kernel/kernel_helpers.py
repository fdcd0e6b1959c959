"""Shared helpers of the kernel suite: loadgen processes in lab hosts, edge lookups,
bounded polling, exposition parsing and subprocess line reading."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

from prometheus_client.parser import text_string_to_metric_families

from meshlens.accounting import Edge, Totals
from meshlens.agent import Agent
from meshlens.exporter import AgentCollector
from meshlens.exposition import Renderer
from meshlens.lab import Host
from meshlens.loadgen import read_json_line

T = TypeVar("T")
MESHLENS = [sys.executable, "-m", "meshlens.cli"]


def start_server(
    host: Host, proto: str, bind: str, *args: str
) -> tuple[subprocess.Popen[Any], int]:
    """loadgen server in the host's netns; returns (process, port)."""
    proc = host.popen(
        *host.python("-m", "meshlens.loadgen", "server", "--proto", proto, "--bind", bind),
        *("--port", "0", "--max-seconds", "120", *args),
        stdout=subprocess.PIPE,
    )
    return proc, int(read_json_line(proc)["listening"])


def client_argv(host: Host, proto: str, dest: str, port: int, *args: str) -> list[str]:
    return host.python(
        "-m", "meshlens.loadgen", "client", "--proto", proto,
        "--connect", dest, "--port", str(port), *args,
    )  # fmt: skip


def run_client(host: Host, proto: str, dest: str, port: int, *args: str) -> dict[str, Any]:
    """Run a loadgen client to completion; its JSON totals (asserts it succeeded)."""
    p = subprocess.run(
        client_argv(host, proto, dest, port, *args), capture_output=True, timeout=90, check=False
    )
    assert p.returncode == 0, (p.stdout, p.stderr.decode(errors="replace")[-2000:])
    out: dict[str, Any] = json.loads(p.stdout)
    return out


def wait_for(fn: Callable[[], T], timeout: float, interval: float = 0.05) -> T:
    """Call fn until it returns something truthy or timeout passes; the last result."""
    deadline = time.monotonic() + timeout
    while True:
        result = fn()
        if result or time.monotonic() >= deadline:
            return result
        time.sleep(interval)


def edges_for(agent: Agent, src: str, dst: str, protocol: str) -> dict[str, tuple[Edge, Totals]]:
    """Refresh, then reporter -> (edge, totals) for edges src -> dst of this protocol."""
    agent.refresh(force=True)
    out: dict[str, tuple[Edge, Totals]] = {}
    for edge, t in agent.table.totals().items():
        if (edge.source_workload, edge.destination_workload, edge.protocol) == (src, dst, protocol):
            assert edge.reporter not in out, f"two {edge.reporter} edges {src}->{dst}: {edge}"
            out[edge.reporter] = (edge, t)
    return out


def edges_mentioning(agent: Agent, needles: tuple[str, ...]) -> list[tuple[Edge, Totals]]:
    """Every edge with one of the needles (a lab host name or address) in a label."""
    return [
        (e, t)
        for e, t in agent.table.totals().items()
        if any(n in label for n in needles for label in e[1:4])
    ]


def summary(t: Totals) -> dict[str, int]:
    return {
        "request_bytes": t.request_bytes,
        "response_bytes": t.response_bytes,
        "opened": t.opened,
        "closed": t.closed,
    }


def udp_summary(t: Totals) -> dict[str, int]:
    return {
        "request_bytes": t.request_bytes,
        "response_bytes": t.response_bytes,
        "request_calls": t.request_calls,
        "response_calls": t.response_calls,
    }


def scrape(agent: Agent) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Render the agent's exposition as /metrics does and parse it back:
    sample name -> [(labels, value)]."""
    text = Renderer().render(AgentCollector(agent).collect()).decode()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append((dict(s.labels), float(s.value)))
    return out


def sample(
    samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str
) -> float:
    """The one sample of `name` whose labels include `labels`."""
    rows = samples.get(name, [])
    hits = [v for lab, v in rows if all(lab.get(k) == x for k, x in labels.items())]
    assert len(hits) == 1, f"{name}{labels}: {len(hits)} samples"
    return hits[0]


def bpftool(*args: str) -> Any:
    p = subprocess.run(["bpftool", "-j", *args], capture_output=True, timeout=30, check=True)
    return json.loads(p.stdout.strip() or b"[]")  # nothing attached: a bare newline


OUR_PROGS = ("tcpflow_", "udpflow_", "tcphealth_", "dns_", "http_")


def our_prog_ids() -> set[int]:
    """Ids of loaded programs named like ours (bpftool truncates names to 15 chars)."""
    return {p["id"] for p in bpftool("prog", "show") if p.get("name", "").startswith(OUR_PROGS)}


def all_prog_ids() -> set[int]:
    return {p["id"] for p in bpftool("prog", "show")}


def all_link_ids() -> set[int]:
    return {lk["id"] for lk in bpftool("link", "show")}


def bpf_fds_of(pid: int) -> tuple[set[int], set[int]]:
    """(program ids, link ids) a process holds fds of, from /proc/<pid>/fdinfo:
    exactly that process's objects, whatever else runs on the host."""
    progs, links, _ = bpf_objects_of(pid)
    return progs, links


def bpf_objects_of(pid: int) -> tuple[set[int], set[int], set[int]]:
    """(program ids, link ids, map ids) held through fds by a process."""
    progs: set[int] = set()
    links: set[int] = set()
    maps: set[int] = set()
    base = f"/proc/{pid}/fdinfo"
    for fd in os.listdir(base):
        try:
            with open(f"{base}/{fd}") as f:
                info = dict(line.split(":", 1) for line in f.read().splitlines() if ":" in line)
        except OSError:
            continue
        if "link_id" in info:
            links.add(int(info["link_id"]))
        elif "prog_type" in info and "prog_id" in info:
            progs.add(int(info["prog_id"]))
        elif "map_type" in info and "map_id" in info:
            maps.add(int(info["map_id"]))
    return progs, links, maps
