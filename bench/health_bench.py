"""Network-health probes' cost: per TCP segment, and agent CPU under 1% loss.

Same run, three modes, interleaved (A B C A B C ...):
  none   - no agent
  core   - the agent with tcpflow/udpflow only (per-socket bytes and lifecycle;
           tcpflow's health hooks detached)
  health - the agent with everything: tcpflow's health hooks (retransmits,
           resets; the RTT histogram, sampled inside its send/recv programs)
           and tcphealth (drops, listeners)
Traffic: one bulk TCP transfer between two namespace hosts over veth, with
nftables dropping 1% of the data segments at the receiver.

Kernel cost per segment = run time of the health programs (kernel.bpf_stats)
divided by the segments both hosts sent and received (nstat). Agent CPU = the
agent subprocess's utime+stime over the transfer, scraped every 5 s.

    .venv/bin/python bench/health_bench.py [--bytes N] [--reps N] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from meshlens.lab import Host, Lab

# The RTT histogram has no program of its own (sampled inside tcpflow_send/tcpflow_recv,
# whose time the socket chain's dispatcher carries): its cost is only in "all BPF".
HEALTH_PROGS = {
    "tcpflow_retransmit",
    "tcpflow_reset_sent",
    "tcpflow_reset_received",
    "tcphealth_drop",
    "tcphealth_reset_nosock",
    "tcphealth_synack_retrans",
    "tcphealth_state",
}
PORT = 7600
TICK = os.sysconf("SC_CLK_TCK")


def nstat(host: Host) -> dict[str, int]:
    data = json.loads(host.run("nstat", "-asz", "--json").stdout)
    return {k: int(v) for k, v in data["kernel"].items()}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    runs: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("meshlens_bpf_program_run_seconds_total{"):
            prog = line.split('program="', 1)[1].split('"', 1)[0]
            runs[prog] = float(line.rsplit(" ", 1)[1])
    return runs


def start_agent(mode: str, port: int) -> subprocess.Popen[bytes] | None:
    if mode == "none":
        return None
    args = [sys.executable, "-m", "meshlens.cli", "run", "--quiet", "--bpf-stats"]
    args += ["--listen", f"127.0.0.1:{port}"]
    if mode == "core":
        args += ["--features", "none", "--no-tcp-health"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    assert "serving" in line, line
    return proc


def one_run(lab: Lab, mode: str, nbytes: int, port: int) -> dict[str, Any]:
    h1, h2 = lab.hosts
    agent = start_agent(mode, port)
    try:
        srv = h2.popen(
            *h2.python("-m", "meshlens.loadgen", "server", "--proto", "tcp", "--bind", h2.addr,
                       "--port", str(PORT), "--reply-bytes", "0", "--max-seconds", "120"),
            stdout=subprocess.PIPE,
        )  # fmt: skip
        assert srv.stdout is not None
        srv.stdout.readline()
        before = {h.name: nstat(h) for h in (h1, h2)}
        runs0 = scrape(port) if agent else {}
        cpu0 = cpu_seconds(agent.pid) if agent else 0.0
        t0 = time.monotonic()
        cl = h1.popen(
            *h1.python("-m", "meshlens.loadgen", "client", "--proto", "tcp", "--connect", h2.addr,
                       "--port", str(PORT), "--connections", "1", "--concurrency", "1",
                       "--send-bytes", str(nbytes), "--chunk", "262144", "--timeout", "120"),
            stdout=subprocess.PIPE,
        )  # fmt: skip
        while True:
            try:
                cl.wait(timeout=5)
                break
            except subprocess.TimeoutExpired:
                if agent:
                    scrape(port)  # a Prometheus scrape every 5 s, as in production
        wall = time.monotonic() - t0
        cpu = (cpu_seconds(agent.pid) - cpu0) if agent else 0.0
        runs1 = scrape(port) if agent else {}
        after = {h.name: nstat(h) for h in (h1, h2)}
        srv.terminate()
        srv.wait(timeout=10)
    finally:
        if agent:
            agent.terminate()
            agent.wait(timeout=10)
    segs = sum(after[n][k] - before[n][k] for n in after for k in ("TcpInSegs", "TcpOutSegs"))
    retrans = after[h1.name]["TcpRetransSegs"] - before[h1.name]["TcpRetransSegs"]
    health_ns = sum(runs1.get(p, 0) - runs0.get(p, 0) for p in HEALTH_PROGS) * 1e9
    all_ns = sum(runs1.get(p, 0) - runs0.get(p, 0) for p in runs1) * 1e9
    return {
        "mode": mode,
        "wall_s": wall,
        "mbit_s": nbytes * 8 / wall / 1e6,
        "segments": segs,
        "retrans": retrans,
        "agent_cpu_s": cpu,
        "agent_cpu_pct": 100 * cpu / wall,
        "health_ns_per_segment": health_ns / segs if segs and agent else None,
        "all_bpf_ns_per_segment": all_ns / segs if segs and agent else None,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bytes", type=int, default=200_000_003)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--loss", type=int, default=1, help="percent of data segments dropped")
    ap.add_argument("--out", default="bench/results/health.json")
    args = ap.parse_args()
    results: list[dict[str, Any]] = []
    with Lab(2) as lab:
        h1, h2 = lab.hosts
        rule = f"ip saddr {h1.addr} tcp dport {PORT} meta length > 200"
        lab.nft(
            h2,
            f"""table inet loss {{
                chain in {{ type filter hook input priority 0;
                    {rule} numgen random mod 100 < {args.loss} drop; }}
            }}""",
        )
        for rep in range(args.reps):
            for i, mode in enumerate(("none", "core", "health")):
                r = one_run(lab, mode, args.bytes, 9600 + 10 * rep + i)
                r["rep"] = rep
                results.append(r)
                print(json.dumps(r), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print("\n| mode | throughput Mbit/s | retrans segs | agent CPU % of a core | "
          "health BPF ns/segment | all BPF ns/segment |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for mode in ("none", "core", "health"):
        rows = [r for r in results if r["mode"] == mode]

        def med(key: str, rows: list[dict[str, Any]] = rows) -> str:
            vals = [r[key] for r in rows if r[key] is not None]
            return f"{statistics.median(vals):.1f}" if vals else "-"

        print(f"| {mode} | {med('mbit_s')} | {med('retrans')} | {med('agent_cpu_pct')} | "
              f"{med('health_ns_per_segment')} | {med('all_bpf_ns_per_segment')} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
