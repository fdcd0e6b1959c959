"""Network health per edge, checked against what the kernel itself reports
(nstat counters, ss -ti, nftables counters) on namespace hosts."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from typing import Any

import pytest

from meshlens.agent import (
    HEALTH_RESETS_RECEIVED,
    HEALTH_RETRANS,
    HEALTH_RTT_HIST,
    HEALTH_RTT_SUM,
    Agent,
)
from meshlens.features.tcphealth import TcpHealth
from meshlens.lab import Host, Lab
from meshlens.probes import tcpflow

pytestmark = pytest.mark.kernel

PORT = 7300


@pytest.fixture
def agent(make_agent: Any) -> Agent:
    """Core probes plus this feature only: other features' faults are not ours."""
    a: Agent = make_agent(features=("tcphealth",))
    return a


def nstat(host: Host) -> dict[str, int]:
    out = host.run("nstat", "-asz", "--json").stdout
    data: dict[str, Any] = json.loads(out)
    return {k: int(v) for k, v in data["kernel"].items()}


def edge_totals(
    agent: Agent, src: str, dst: str, reporter: str = "source", port: int | None = None
) -> Any:
    agent.refresh(force=True)
    hits = [
        t
        for e, t in agent.table.totals().items()
        if e.protocol == "tcp"
        and e.reporter == reporter
        and e.source_workload == src
        and e.destination_workload == dst
        and (port is None or e.destination_service.endswith(f":{port}"))
    ]
    assert len(hits) == 1, f"{reporter} {src}->{dst}: {agent.table.totals().keys()}"
    return hits[0]


def health(feature_list: list[Any]) -> TcpHealth:
    feat = next(f for f in feature_list if isinstance(f, TcpHealth))
    return feat


def sink_server(host: Host, port: int = PORT, extra: tuple[str, ...] = ()) -> subprocess.Popen:
    proc = host.popen(
        *host.python(
            "-m", "meshlens.loadgen", "server", "--proto", "tcp", "--bind", host.addr,
            "--port", str(port), "--reply-bytes", "0", "--max-seconds", "60", *extra,
        ),
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    line = proc.stdout.readline() if proc.stdout else ""
    assert "listening" in line, line
    return proc


def client(host: Host, dst: Host, port: int, conns: int, nbytes: int) -> dict[str, int]:
    out = host.run(
        *host.python(
            "-m", "meshlens.loadgen", "client", "--proto", "tcp", "--connect", dst.addr,
            "--port", str(port), "--connections", str(conns), "--concurrency", str(conns),
            "--send-bytes", str(nbytes),
        ),
        timeout=120,
    ).stdout  # fmt: skip
    result: dict[str, int] = json.loads(out.strip().splitlines()[-1])
    return result


def test_retransmits_equal_nstat_and_drops_carry_the_nftables_reason(
    agent: Agent, lab: Lab
) -> None:
    h1, h2 = lab.hosts
    srv = sink_server(h2)
    # Drop ~3% of h1's data segments as h2 receives them, counted by nft. (A drop
    # in the sender's own output path is not a retransmission: TCP just retries.)
    rule = f"ip saddr {h1.addr} tcp dport {PORT} meta length > 200 numgen random mod 100 < 3"
    lab.nft(
        h2,
        f"""table inet loss {{
            chain in {{ type filter hook input priority 0; {rule} counter drop; }}
        }}""",
    )
    before = nstat(h1)
    res = client(h1, h2, PORT, conns=4, nbytes=1_500_007)
    assert res["failed"] == 0
    time.sleep(0.5)  # let the last retransmissions and ACKs land
    after = nstat(h1)
    srv.terminate()
    srv.wait(timeout=10)
    t = edge_totals(agent, h1.name, h2.name)
    retrans = int(t.health[HEALTH_RETRANS].sum())
    kernel = after["TcpRetransSegs"] - before["TcpRetransSegs"]
    assert kernel > 0, "the loss rule dropped nothing"
    assert retrans == kernel
    ruleset = h2.run("nft", "list", "ruleset").stdout.decode()
    dropped = int(re.search(r"counter packets (\d+)", ruleset).group(1))  # type: ignore[union-attr]
    feat = health(agent.features)
    nf = sum(
        n
        for (reason, proto, wl, peer), n in feat.drops.items()
        if reason == "NETFILTER_DROP" and wl == h2.name and peer == h1.name and proto == "tcp"
    )
    assert nf == dropped


def test_resets_to_a_closed_port_and_on_close_with_unread_data(agent: Agent, lab: Lab) -> None:
    h1, h2 = lab.hosts
    script = (
        "import socket\n"
        "for _ in range(7):\n"
        "    s = socket.socket()\n"
        "    try:\n"
        f"        s.connect(('{h2.addr}', 7399))\n"
        "    except ConnectionRefusedError:\n"
        "        pass\n"
        "    s.close()\n"
    )
    h1.run(*h1.python("-c", script))
    t = edge_totals(agent, h1.name, h2.name, port=7399)  # the host exists; nobody listens
    assert t.labeled.get(("connect_failed", "refused")) == 7
    assert int(t.health[HEALTH_RESETS_RECEIVED]) == 7
    # the refusing side: resets for no socket, answering h1's SYNs
    agent.refresh(force=True)
    sent = [
        t.labeled.get(("reset_sent", "NO_SOCKET"), 0)
        for e, t in agent.table.totals().items()
        if e.reporter == "destination"
        and e.source_workload == h1.name
        and e.destination_service.endswith(":7399")
    ]
    assert sum(sent) == 7

    # A server that closes with unread data sends a reset (TCP_ABORT_ON_CLOSE).
    server = (
        "import socket, sys\n"
        f"l = socket.socket(); l.bind(('{h2.addr}', {PORT + 1})); l.listen(16)\n"
        "print('ready', flush=True)\n"
        "for _ in range(5):\n"
        "    c, _ = l.accept(); c.recv(1); import time; time.sleep(0.05); c.close()\n"
    )
    srv = h2.popen(*h2.python("-c", server), stdout=subprocess.PIPE, text=True)
    assert srv.stdout and srv.stdout.readline().strip() == "ready"
    cl = (
        "import socket, time\n"
        "for _ in range(5):\n"
        f"    s = socket.create_connection(('{h2.addr}', {PORT + 1}))\n"
        "    s.sendall(b'x' * 4099); time.sleep(0.2)\n"
        "    try:\n"
        "        s.recv(10)\n"
        "    except ConnectionResetError:\n"
        "        pass\n"
        "    s.close()\n"
    )
    h1.run(*h1.python("-c", cl), timeout=60)
    srv.wait(timeout=10)
    dst = edge_totals(agent, h1.name, h2.name, reporter="destination", port=PORT + 1)
    src = edge_totals(agent, h1.name, h2.name, reporter="source", port=PORT + 1)
    assert dst.labeled.get(("reset_sent", "TCP_ABORT_ON_CLOSE")) == 5
    assert int(src.health[HEALTH_RESETS_RECEIVED]) == 5


def test_connect_timeout_when_syns_are_dropped(agent: Agent, lab: Lab) -> None:
    h1, h2 = lab.hosts
    lab.nft(
        h2,
        f"""table inet blackhole {{
            chain in {{ type filter hook input priority 0; tcp dport {PORT + 2} drop; }}
        }}""",
    )
    h1.run("sysctl", "-qw", "net.ipv4.tcp_syn_retries=1")
    script = (
        "import socket, threading\n"
        "def one():\n"
        "    s = socket.socket()\n"
        "    try:\n"
        f"        s.connect(('{h2.addr}', {PORT + 2}))\n"
        "    except TimeoutError:\n"
        "        pass\n"
        "    s.close()\n"
        "ts = [threading.Thread(target=one) for _ in range(3)]\n"
        "[t.start() for t in ts]; [t.join() for t in ts]\n"
    )
    before = nstat(h1)
    h1.run(*h1.python("-c", script), timeout=60)
    after = nstat(h1)
    t = edge_totals(agent, h1.name, h2.name)
    assert t.labeled.get(("connect_failed", "timeout")) == 3
    syn = int(t.health[HEALTH_RETRANS][tcpflow.RETRANS_NAMES.index("syn")])
    kernel = after["TcpExtTCPSynRetrans"] - before["TcpExtTCPSynRetrans"]
    assert kernel >= 3
    assert syn == kernel


def test_listen_overflows_equal_nstat(agent: Agent, lab: Lab) -> None:
    h1, h2 = lab.hosts
    port = PORT + 3
    server = (
        "import socket, time\n"
        f"l = socket.socket(); l.bind(('{h2.addr}', {port})); l.listen(1)\n"
        "print('ready', flush=True); time.sleep(12)\n"
    )
    srv = h2.popen(*h2.python("-c", server), stdout=subprocess.PIPE, text=True)
    assert srv.stdout and srv.stdout.readline().strip() == "ready"
    before = nstat(h2)
    flood = (
        "import socket, time\n"
        "socks = []\n"
        "for _ in range(23):\n"
        "    s = socket.socket(); s.setblocking(False)\n"
        f"    s.connect_ex(('{h2.addr}', {port})); socks.append(s)\n"
        "time.sleep(4)\n"
    )
    h1.run(*h1.python("-c", flood), timeout=60)
    after = nstat(h2)
    srv.kill()
    srv.wait(timeout=10)
    agent.refresh(force=True)
    feat = health(agent.features)
    rows = [(lab_, v) for lab_, v in feat._listener_rows() if lab_[1].endswith(f":{port}")]
    assert len(rows) == 1
    overflows = int(rows[0][1]["overflows"])
    kernel = after["TcpExtListenOverflows"] - before["TcpExtListenOverflows"]
    assert kernel > 0
    assert overflows == kernel
    assert int(rows[0][1]["max_backlog"]) == 1
    assert int(rows[0][1]["syns"]) >= 23


def _ss_srtt_ms(host: Host, dport: int) -> float:
    out = host.run("ss", "-tin", "dst", f":{dport}").stdout.decode()
    m = re.search(r"\brtt:([\d.]+)/", out)
    assert m, out
    return float(m.group(1))


def test_rtt_matches_ss(agent: Agent, lab: Lab) -> None:
    h1, h2 = lab.hosts
    port = PORT + 4
    # Shape h1's egress: a slow link, so the sender's RTT is tens of ms.
    h1.run("tc", "qdisc", "add", "dev", h1.ifname, "root", "tbf", "rate", "4mbit",
           "burst", "16kb", "latency", "60ms")  # fmt: skip
    srv = sink_server(h2, port)
    cl = h1.popen(
        *h1.python(
            "-m", "meshlens.loadgen", "client", "--proto", "tcp", "--connect", h2.addr,
            "--port", str(port), "--connections", "1", "--concurrency", "1",
            "--send-bytes", "3000017",
        ),
        stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        time.sleep(2.5)
        srtt_ss = _ss_srtt_ms(h1, port)
        _, vals = agent.tcp.read_flows() if agent.tcp else ([], [])
        ours = [
            int(v["srtt_us"]) / 1000
            for v in vals
            if int(v["rport"]) == port and int(v["dir"]) == tcpflow.Dir.ACTIVE
        ]
        assert len(ours) == 1
        assert srtt_ss > 5, "shaping did not add delay"
        assert abs(ours[0] - srtt_ss) <= 0.2 * srtt_ss
    finally:
        cl.kill()
        cl.wait(timeout=10)
        srv.kill()
        srv.wait(timeout=10)
    t = edge_totals(agent, h1.name, h2.name)
    samples = int(t.health[HEALTH_RTT_HIST].sum())
    assert samples > 10
    # The histogram spans the whole transfer (the queue builds up, then drains);
    # the sample ss saw is in it, in its log2 slot.
    slot = int(srtt_ss * 1000).bit_length() - 1
    assert t.health[HEALTH_RTT_HIST][slot] > 0
    mean_ms = int(t.health[HEALTH_RTT_SUM]) / samples / 1000
    assert 0.1 * srtt_ss < mean_ms < 10 * srtt_ss


def test_synbl_and_drop_traces_run(bpf_ready: None) -> None:
    # nothing to assert on content beyond shape: the tools start, print, stop
    for tool in ("tcpdrop", "tcpsynbl"):
        r = subprocess.run(
            [sys.executable, "-m", "meshlens.cli", "trace", tool, "--json", "-d", "1.5"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        for line in r.stdout.splitlines():
            json.loads(line)
