"""Network health per edge, checked against what the kernel itself reports
(nstat counters, ss -ti, nftables counters) on namespace hosts."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from kernel_helpers import wait_for

from meshlens.agent import (
    HEALTH_RESETS_RECEIVED,
    HEALTH_RETRANS,
    HEALTH_RTT_HIST,
    HEALTH_RTT_SUM,
    Agent,
)
from meshlens.features.tcphealth import TcpHealth
from meshlens.lab import Host, Lab
from meshlens.loadgen import read_json_line
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


def _backlog1_server(host: Host, port: int, seconds: int) -> subprocess.Popen[str]:
    """A listener with backlog 1 that never accepts."""
    server = (
        "import socket, time\n"
        f"l = socket.socket(); l.bind(('{host.addr}', {port})); l.listen(1)\n"
        f"print('ready', flush=True); time.sleep({seconds})\n"
    )
    srv = host.popen(*host.python("-c", server), stdout=subprocess.PIPE, text=True)
    assert srv.stdout and srv.stdout.readline().strip() == "ready"
    return srv


def _flood(client: Host, server: Host, port: int, n: int) -> None:
    """n non-blocking connects, held open 4 s (SYN retransmits included)."""
    flood = (
        "import socket, time\n"
        "socks = []\n"
        f"for _ in range({n}):\n"
        "    s = socket.socket(); s.setblocking(False)\n"
        f"    s.connect_ex(('{server.addr}', {port})); socks.append(s)\n"
        "time.sleep(4)\n"
    )
    client.run(*client.python("-c", flood), timeout=60)


def _listener_row(agent: Agent, port: int) -> Any:
    agent.refresh(force=True)
    feat = health(agent.features)
    rows = [(lab_, v) for lab_, v in feat._listener_rows() if lab_[1].endswith(f":{port}")]
    assert len(rows) == 1
    return rows[0][1]


def test_listen_overflows_equal_nstat(agent: Agent, lab: Lab) -> None:
    h1, h2 = lab.hosts
    port = PORT + 3
    srv = _backlog1_server(h2, port, 12)
    before = nstat(h2)
    _flood(h1, h2, port, 23)
    after = nstat(h2)
    srv.kill()
    srv.wait(timeout=10)
    row = _listener_row(agent, port)  # read after the listener closed: its final drops
    overflows = after["TcpExtListenOverflows"] - before["TcpExtListenOverflows"]
    drops = after["TcpExtListenDrops"] - before["TcpExtListenDrops"]
    assert overflows > 0
    assert drops == overflows  # nothing else refused SYNs here
    assert int(row["overflows"]) == drops
    assert int(row["max_backlog"]) == 1
    # backlog 1 admits two handshakes (the queue is full only above the limit),
    # seen at queue lengths 0 and 1; every later one overflowed
    assert row["backlog_hist"].tolist()[:3] == [1, 1, 0]
    assert int(row["queued"]) == 2


def test_listen_drops_of_a_listener_older_than_the_agent(make_agent: Any, lab: Lab) -> None:
    """A listener that existed before the agent started is found in the kernel's
    listen hash; its drops count from the agent's start."""
    h1, h2 = lab.hosts
    port = PORT + 5
    srv = _backlog1_server(h2, port, 20)
    _flood(h1, h2, port, 3)  # fills the queue before the agent starts
    agent: Agent = make_agent(features=("tcphealth",))
    try:
        probe = health(agent.features).probe
        assert probe.adopted >= 1
        before = nstat(h2)
        _flood(h1, h2, port, 7)
        after = nstat(h2)
        row = _listener_row(agent, port)  # the listener is still open: read by the poll
        drops = after["TcpExtListenDrops"] - before["TcpExtListenDrops"]
        assert drops > 0
        assert int(row["overflows"]) == drops
        assert int(row["queued"]) == 0  # the queue stayed full: no handshake completed
        assert int(row["max_backlog"]) == 1
    finally:
        srv.kill()
        srv.wait(timeout=10)


def test_listen_queues_of_reuseport_ipv6_listeners(make_agent: Any, lab6: Lab) -> None:
    """Two SO_REUSEPORT IPv6 listeners on one port, both older than the agent: their
    drops add up on the port, and every handshake is sampled once."""
    h1, h2 = lab6.hosts
    assert h2.addr6
    port = PORT + 6
    server = (
        "import socket, time\n"
        "ls = []\n"
        "for _ in range(2):\n"
        "    l = socket.socket(socket.AF_INET6)\n"
        "    l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)\n"
        f"    l.bind(('{h2.addr6}', {port})); l.listen(1); ls.append(l)\n"
        "print('ready', flush=True); time.sleep(20)\n"
    )
    srv = h2.popen(*h2.python("-c", server), stdout=subprocess.PIPE, text=True)
    try:
        assert srv.stdout and srv.stdout.readline().strip() == "ready"
        agent: Agent = make_agent(features=("tcphealth",))
        assert health(agent.features).probe.adopted >= 2
        before = nstat(h2)
        flood = (
            "import socket, time\n"
            "socks = []\n"
            "for _ in range(17):\n"
            "    s = socket.socket(socket.AF_INET6); s.setblocking(False)\n"
            f"    s.connect_ex(('{h2.addr6}', {port})); socks.append(s)\n"
            "time.sleep(4)\n"
        )
        h1.run(*h1.python("-c", flood), timeout=60)
        after = nstat(h2)
        row = _listener_row(agent, port)
        drops = after["TcpExtListenDrops"] - before["TcpExtListenDrops"]
        opened = after["TcpPassiveOpens"] - before["TcpPassiveOpens"]
        assert drops > 0
        assert int(row["overflows"]) == drops
        assert 2 <= opened <= 4  # each listener admits two, if the hash sent it any
        assert int(row["queued"]) == opened
        assert sum(row["backlog_hist"].tolist()) == opened
        assert int(row["max_backlog"]) == 1
    finally:
        srv.kill()
        srv.wait(timeout=10)


def _ss_srtt_us(host: Host, *match: str) -> int:
    """The kernel's smoothed RTT of the one socket `ss -ti <match>` lists, in us."""
    out = host.run("ss", "-tinH", *match).stdout.decode()
    found = re.findall(r"\brtt:([\d.]+)/", out)
    assert len(found) == 1, out
    return round(float(found[0]) * 1000)


def _slot(us: int) -> int:
    """The rtt_hist slot of a sample (TCPFLOW_RTT_SLOTS log2 slots)."""
    return min(max(us.bit_length() - 1, 0), tcpflow.RTT_SLOTS - 1)


@contextmanager
def _slow_link(lab: Lab, port: int, nbytes: int) -> Iterator[subprocess.Popen[Any]]:
    """h1's egress shaped to 4 Mbit/s under a bulk transfer to h2:port, so every
    h1 -> h2 packet waits in a queue of tens of ms (this kernel has no netem).
    Yields the bulk client."""
    h1, h2 = lab.hosts
    h1.run("tc", "qdisc", "add", "dev", h1.ifname, "root", "tbf", "rate", "4mbit",
           "burst", "16kb", "latency", "60ms")  # fmt: skip
    srv = sink_server(h2, port)
    cl = h1.popen(
        *h1.python(
            "-m", "meshlens.loadgen", "client", "--proto", "tcp", "--connect", h2.addr,
            "--port", str(port), "--connections", "1", "--concurrency", "1",
            "--send-bytes", str(nbytes),
        ),
        stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        yield cl
    finally:
        for p in (cl, srv):
            p.kill()
            p.wait(timeout=10)


def test_rtt_matches_ss(agent: Agent, lab: Lab) -> None:
    h1, h2 = lab.hosts
    port = PORT + 4
    assert agent.tcp
    with _slow_link(lab, port, 3000017):
        for _ in range(25):  # a refresh every 0.1 s: each one samples the RTT
            time.sleep(0.1)
            agent.tcp.read_flows()
        srtt_ss = _ss_srtt_us(h1, "dst", f":{port}") / 1000
        _, vals = agent.tcp.read_flows()
        ours = [v for v in vals if int(v["rport"]) == port and int(v["dir"]) == tcpflow.Dir.ACTIVE]
        assert len(ours) == 1
        assert srtt_ss > 5, "shaping did not add delay"
        assert abs(int(ours[0]["srtt_us"]) / 1000 - srtt_ss) <= 0.2 * srtt_ss
        # Sampled at each refresh that found it moved, while the connection is
        # open (close adds at most one more).
        assert 10 < int(ours[0]["rtt_hist"].sum()) <= 26
    t = edge_totals(agent, h1.name, h2.name)
    samples = int(t.health[HEALTH_RTT_HIST].sum())
    assert samples > 10
    # The histogram spans the whole transfer (the queue builds up, then drains);
    # the sample ss saw is in it, in its log2 slot.
    slot = int(srtt_ss * 1000).bit_length() - 1
    assert t.health[HEALTH_RTT_HIST][slot] > 0
    mean_ms = int(t.health[HEALTH_RTT_SUM]) / samples / 1000
    assert 0.1 * srtt_ss < mean_ms < 10 * srtt_ss


# Three connections h1 -> h2: "up" (h1 only sends, h2 only receives), "down" (h2 only
# sends, h1 only receives), "idle" (no call at all). Each side says "done" once its
# calls are over; the client closes on a line on stdin, the server at the FINs.
_RTT_CALLS, _RTT_CHUNK = 20, 1000
_RTT_PEER = """
import json, socket, sys, threading, time
role, addr, port, n, chunk = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
if role == "server":
    l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    l.bind((addr, port)); l.listen(8)
    print(json.dumps({"ready": 1}), flush=True)
    conns = [l.accept()[0] for _ in range(3)]
    tx, rx = conns[1], conns[0]
else:
    conns = [socket.create_connection((addr, port)) for _ in range(3)]
    print(json.dumps({"ports": [s.getsockname()[1] for s in conns]}), flush=True)
    tx, rx = conns[0], conns[1]
def drain():
    got = 0
    while got < n * chunk:
        got += len(rx.recv(65536))
t = threading.Thread(target=drain); t.start()
for _ in range(n):
    tx.sendall(b"x" * chunk); time.sleep(0.05)
t.join()
print(json.dumps({"done": 1}), flush=True)
if role == "client":
    sys.stdin.readline()
for s in conns:
    if role == "server":
        s.recv(1)  # the client's FIN: 0 bytes, not a counted call
    s.close()
"""


@dataclass
class _RttConns:
    server: subprocess.Popen[Any]
    client: subprocess.Popen[Any]
    port: int
    ports: dict[str, int]  # connection name -> the client's port
    inodes: tuple[int, int]  # netns of h1, h2

    def socket_of(self, side: str, name: str) -> tuple[int, int, int]:
        """(netns, lport, rport) of one socket: side "client" (h1) or "server" (h2)."""
        cport = self.ports[name]
        if side == "client":
            return (self.inodes[0], cport, self.port)
        return (self.inodes[1], self.port, cport)

    def entries(self, agent: Agent) -> dict[tuple[str, str], Any]:
        """(side, name) -> the live tcpflow entry."""
        assert agent.tcp
        _, vals = agent.tcp.read_flows()
        by_sock = {(int(v["netns"]), int(v["lport"]), int(v["rport"])): v for v in vals}
        return {
            (side, name): by_sock[self.socket_of(side, name)]
            for side in ("client", "server")
            for name in self.ports
            if self.socket_of(side, name) in by_sock
        }

    def close(self, agent: Agent) -> dict[tuple[str, str], Any]:
        """Close all three; (side, name) -> the close record, collected over refreshes."""
        assert self.client.stdin
        self.client.stdin.write(b"\n")
        self.client.stdin.flush()
        self.client.wait(timeout=20)
        self.server.wait(timeout=20)
        want = {self.socket_of(side, name): (side, name) for side in ("client", "server")
                for name in self.ports}  # fmt: skip
        got: dict[tuple[str, str], Any] = {}

        def collect() -> bool:
            agent.refresh(force=True)
            recs = agent.last_records.get("tcpflow", [])
            for e in tcpflow.decode_events(recs) if recs else ():
                key = (int(e["netns"]), int(e["lport"]), int(e["rport"]))
                if int(e["type"]) == tcpflow.EventType.CLOSE and key in want:
                    got[want[key]] = e
            return len(got) == len(want)

        assert wait_for(collect, 10.0, 0.1), sorted(got)
        return got


def _rtt_conns(lab: Lab, port: int) -> _RttConns:
    h1, h2 = lab.hosts
    args = (h2.addr, str(port), str(_RTT_CALLS), str(_RTT_CHUNK))
    srv = h2.popen(*h2.python("-c", _RTT_PEER, "server", *args), stdout=subprocess.PIPE)
    read_json_line(srv)
    cl = h1.popen(
        *h1.python("-c", _RTT_PEER, "client", *args),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    ports = read_json_line(cl)["ports"]
    read_json_line(cl, timeout=30)
    read_json_line(srv, timeout=30)
    inodes = tuple(os.stat(f"/run/netns/{h.name}").st_ino for h in lab.hosts)
    return _RttConns(srv, cl, port, dict(zip(("up", "down", "idle"), ports, strict=True)),
                     (inodes[0], inodes[1]))  # fmt: skip


# (side, connection) -> what the application did on that socket
_SENDS_ONLY = (("client", "up"), ("server", "down"))
_RECVS_ONLY = (("server", "up"), ("client", "down"))
_IDLE = (("client", "idle"), ("server", "idle"))


def test_rtt_sampled_at_each_refresh_whatever_the_calls_and_at_close(
    agent: Agent, lab: Lab
) -> None:
    h1, h2 = lab.hosts
    with _slow_link(lab, PORT + 5, 8000017):
        time.sleep(1.5)  # the queue builds up
        conns = _rtt_conns(lab, PORT + 6)
        time.sleep(0.3)  # the last ACKs land: the kernel's srtt is settled
        live = conns.entries(agent)
        assert len(live) == 6, sorted(live)
        ss = {
            (side, name): _ss_srtt_us(h1, "src", f":{conns.ports[name]}")
            if side == "client"
            else _ss_srtt_us(h2, "dst", f":{conns.ports[name]}")
            for side, name in live
        }
        # Data from h1 and ACKs of data to h1 wait in the queue; a handshake may not.
        assert all(ss[sock] > 5000 for sock in _SENDS_ONLY), f"shaping added no delay: {ss}"
        total = _RTT_CALLS * _RTT_CHUNK
        for sock in _SENDS_ONLY + _RECVS_ONLY + _IDLE:
            v = live[sock]
            # the bytes, exact while open, from the sockets' own counters
            want = (0, 0)
            if sock in _SENDS_ONLY + _RECVS_ONLY:
                want = (total, 0) if sock in _SENDS_ONLY else (0, total)
            assert (int(v["bytes_sent"]), int(v["bytes_received"])) == want, sock
            # Sampled by the refresh, calls or none: the latest sample is the
            # kernel's srtt give or take a factor 2, and it is in the histogram.
            assert int(v["rtt_hist"].sum()) >= 1, sock
            assert ss[sock] / 2 <= int(v["srtt_us"]) <= ss[sock] * 2, (sock, v["srtt_us"], ss)
            assert int(v["rtt_hist"][_slot(int(v["srtt_us"]))]) >= 1, sock
        closed = conns.close(agent)
    for sock, e in closed.items():
        hist, final = e["rtt_hist"], int(e["srtt_us"])
        # The record carries the histogram, and the RTT as it was at close (the FIN's
        # ACK moved it) is in it.
        assert int(hist[_slot(final)]) >= 1, (sock, final, hist)
        assert int(hist.sum()) >= int(live[sock]["rtt_hist"].sum()), sock
        assert int(e["rtt_sum_us"]) >= int(live[sock]["rtt_sum_us"]), sock


def test_no_rtt_samples_without_health_hooks(make_agent: Any, lab: Lab) -> None:
    agent = make_agent(features=(), tcp_health=False)
    conns = _rtt_conns(lab, PORT + 7)
    live = conns.entries(agent)
    assert len(live) == 6, sorted(live)
    total = sum(int(v["bytes_sent"]) for v in live.values())
    assert total == 2 * _RTT_CALLS * _RTT_CHUNK  # counted...
    for sock, v in live.items():
        assert int(v["rtt_hist"].sum()) == 0 and int(v["srtt_us"]) == 0, sock  # ...not sampled
    for sock, e in conns.close(agent).items():
        assert int(e["srtt_us"]) > 0 and int(e["rtt_hist"].sum()) == 0, sock


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
