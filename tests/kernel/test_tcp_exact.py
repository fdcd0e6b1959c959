"""TCP accounting is exact: loadgen's ground truth between two lab hosts equals the
agent's per-edge totals, for both reporters, in the table and in the exposition."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from typing import Any

import numpy as np
import pytest
from kernel_helpers import (
    client_argv,
    edges_for,
    edges_mentioning,
    run_client,
    sample,
    scrape,
    start_server,
    summary,
    wait_for,
)

from meshlens.accounting import Edge, Totals, ip_text
from meshlens.agent import Agent, _tcp_live, _tcp_records
from meshlens.lab import Host, Lab
from meshlens.loadgen import read_json_line, stop_server
from meshlens.probes import tcpflow

pytestmark = [pytest.mark.kernel, pytest.mark.usefixtures("bpf_ready")]

UP, DOWN = 7919, 104729  # request and reply bytes per connection (primes)


def expect(cli: dict[str, Any], srv: dict[str, Any], opened: int, closed: int) -> dict[str, int]:
    assert cli["bytes_sent"] == srv["bytes_received"]
    assert cli["bytes_received"] == srv["bytes_sent"]
    return {
        "request_bytes": cli["bytes_sent"],
        "response_bytes": srv["bytes_sent"],
        "opened": opened,
        "closed": closed,
    }


def settled(
    agent: Agent, src: str, dst: str, want: dict[str, int], timeout: float = 10.0
) -> dict[str, tuple[Edge, Totals]]:
    """Refresh until both reporters' totals equal `want` (server sockets reach
    TCP_CLOSE a little after the processes are done), then the edges."""

    def both() -> dict[str, tuple[Edge, Totals]] | None:
        got = edges_for(agent, src, dst, "tcp")
        ok = set(got) == {"source", "destination"} and all(
            summary(t) == want for _, t in got.values()
        )
        return got if ok else None

    got = wait_for(both, timeout, 0.1) or edges_for(agent, src, dst, "tcp")
    related = [(e, summary(t)) for e, t in edges_mentioning(agent, (src, dst))]
    assert {r: summary(t) for r, (_, t) in got.items()} == {
        "source": want,
        "destination": want,
    }, related
    return got


def assert_exposition(agent: Agent, src: str, dst: str, want: dict[str, int]) -> None:
    samples = scrape(agent)
    for reporter in ("source", "destination"):
        labels = {
            "reporter": reporter,
            "source_workload": src,
            "destination_workload": dst,
            "request_protocol": "tcp",
        }
        got = {
            "request_bytes": sample(samples, "istio_tcp_received_bytes_total", **labels),
            "response_bytes": sample(samples, "istio_tcp_sent_bytes_total", **labels),
            "opened": sample(samples, "istio_tcp_connections_opened_total", **labels),
            "closed": sample(samples, "istio_tcp_connections_closed_total", **labels),
        }
        assert got == want, reporter


def test_tcp_many_short_connections_exact(agent: Agent, lab: Lab) -> None:
    n = 1000
    client, server = lab.hosts
    proc, port = start_server(server, "tcp", server.addr, "--reply-bytes", str(DOWN))
    t0 = time.monotonic()
    cli = run_client(
        client, "tcp", server.addr, port, "--connections", str(n), "--concurrency", "200",
        "--send-bytes", str(UP), "--expect-reply-bytes", str(DOWN), "--timeout", "30",
    )  # fmt: skip
    elapsed = time.monotonic() - t0
    srv = stop_server(proc)
    assert cli["connections"] == n and cli["failed"] == 0 and srv["errors"] == 0, (cli, srv)
    assert elapsed < 30
    want = expect(cli, srv, n, n)
    assert want["request_bytes"] == n * UP and want["response_bytes"] == n * DOWN

    got = settled(agent, client.name, server.name, want)
    for edge, _ in got.values():
        assert edge.destination_service == f"{server.name}:{port}"
    # Nothing of this traffic went to another edge (e.g. an unnamed peer).
    ours = {edge for edge, _ in got.values()}
    needles = (client.name, server.name, client.addr, server.addr)
    assert [e for e, _ in edges_mentioning(agent, needles) if e not in ours] == []

    # Closed connections count once, however often the agent refreshes.
    before = {e: summary(t) for e, t in agent.table.totals().items() if e in ours}
    for _ in range(5):
        agent.refresh(force=True)
        time.sleep(0.02)
    assert {e: summary(t) for e, t in agent.table.totals().items() if e in ours} == before

    assert_exposition(agent, client.name, server.name, want)

    # The kernel deleted the entries of all these sockets: nothing leaks in the map.
    assert live_entries(agent, lab) == 0


def live_entries(agent: Agent, lab: Lab) -> int:
    """tcpflow entries of sockets in the lab's network namespaces."""
    inodes = [os.stat(f"/run/netns/{h.name}").st_ino for h in lab.hosts]
    _, vals = agent.tcp.read_flows()  # type: ignore[union-attr]
    return int(np.isin(vals["netns"], inodes).sum()) if len(vals) else 0


def established(host: Host, port: int) -> int:
    """Established sockets with local port `port` in the host's netns."""
    out = host.run("ss", "-tnH", "state", "established", f"( sport = :{port} )").stdout
    return len(out.splitlines())


def hold_open(
    client: Host, server: Host, dest: str, n: int, up: int, down: int, hold: float
) -> tuple[subprocess.Popen[Any], int, subprocess.Popen[Any]]:
    """n connections that exchange up/down bytes and then stay open `hold` seconds;
    returns once all n are established at the server: (server, port, client)."""
    proc, port = start_server(
        server, "tcp", dest, "--reply-bytes", str(down), "--request-bytes", str(up)
    )
    cproc = client.popen(
        *client_argv(
            client, "tcp", dest, port, "--connections", str(n), "--concurrency", str(n),
            "--send-bytes", str(up), "--expect-reply-bytes", str(down),
            "--hold-seconds", str(hold),
        ),
        stdout=subprocess.PIPE,
    )  # fmt: skip
    assert wait_for(lambda: established(server, port) == n, 10.0), established(server, port)
    return proc, port, cproc


# 23 connections are 46 sockets, one poll batch; 149 are 298, two batches
@pytest.mark.parametrize("n", [23, 149])
def test_tcp_long_lived_connections_exact_while_open(agent: Agent, lab: Lab, n: int) -> None:
    assert (2 * n > tcpflow.POLL_BATCH) == (n == 149)
    up, down, hold = 1009, 30011, 6.0  # room for a loaded machine
    client, server = lab.hosts
    proc, port, cproc = hold_open(client, server, server.addr, n, up, down, hold)
    open_want = {"request_bytes": n * up, "response_bytes": n * down, "opened": n, "closed": 0}

    def all_exchanged() -> bool:
        got = edges_for(agent, client.name, server.name, "tcp")
        return set(got) == {"source", "destination"} and all(
            summary(t) == open_want for _, t in got.values()
        )

    # While every connection is still open, the counters are already exact.
    assert wait_for(all_exchanged, hold * 0.6, 0.05), edges_for(
        agent, client.name, server.name, "tcp"
    )
    assert established(server, port) == n, "connections closed before the check: raise hold"
    assert live_entries(agent, lab) == 2 * n  # one per socket, both ends
    assert_exposition(agent, client.name, server.name, open_want)

    cli = read_json_line(cproc, timeout=30)
    cproc.wait(timeout=10)
    srv = stop_server(proc)
    assert cli["connections"] == n and cli["failed"] == 0, cli
    want = expect(cli, srv, n, n)
    assert {k: want[k] for k in ("request_bytes", "response_bytes")} == {
        "request_bytes": n * up,
        "response_bytes": n * down,
    }
    settled(agent, client.name, server.name, want)
    assert_exposition(agent, client.name, server.name, want)
    assert live_entries(agent, lab) == 0


def test_poll_brings_listed_entries_up_to_date_and_zeroes_gone_ones(agent: Agent) -> None:
    """tcpflow_poll's contract: for each key user space passes, the entry now (its
    counts up to the socket's), or all zero for a key whose entry is gone."""
    probe = agent.tcp
    assert probe is not None and probe.obj is not None
    with socket.create_server(("127.0.0.1", 0)) as srv:
        cl = socket.create_connection(srv.getsockname())
        peer, _ = srv.accept()
        with cl, peer:
            cl.sendall(b"x" * 1237)
            assert len(peer.recv(1237, socket.MSG_WAITALL)) == 1237
            port = cl.getsockname()[1]
            keys, vals = probe.read_flows()  # the same poll, run by read_flows
            mine = keys[(vals["lport"] == port) & (vals["family"] == socket.AF_INET)]
            assert len(mine) == 1, vals[["lport", "rport"]]
            cl.sendall(b"y" * 100)  # after that read: the next poll sees it
            gone = 0x7FFF_0000_DEAD_0000  # no socket lives there
            args = np.zeros(1, tcpflow.POLL_ARGS.dtype)
            args["n"], args["sk"][0, :2] = 2, [gone, int(mine[0])]
            assert probe.obj.programs[tcpflow.POLL_PROG].run(args.tobytes()) == 0
            _, out, m = probe.map(tcpflow.POLLED_MAP).lookup_batch(chunk=tcpflow.POLL_BATCH)
            assert m == tcpflow.POLL_BATCH
            polled = tcpflow.VALUE.decode_many(out, m)
            assert bytes(polled[0].tobytes()) == bytes(tcpflow.VALUE.size)
            assert int(polled[1]["lport"]) == port
            assert int(polled[1]["bytes_sent"]) == 1337
            # a poll past the batch, or of a batch too big, is refused
            args["n"] = tcpflow.POLL_BATCH + 1
            assert probe.obj.programs[tcpflow.POLL_PROG].run(args.tobytes()) == -1


def test_flow_map_walked_only_after_an_insert(agent: Agent) -> None:
    """read_flows reads the whole of tcpflow_flows only when an entry was made since
    its last read; otherwise it polls the keys it knows, with the same result:
    new bytes counted, a closed connection gone."""
    probe = agent.tcp
    assert probe is not None

    def inserts() -> int:
        return probe.stats()[tcpflow.Stat.INSERTS]

    def read_without_insert() -> tuple[np.ndarray, np.ndarray]:
        # the host may open connections of its own meanwhile: then a walk is right
        for _ in range(50):
            at, walks = inserts(), probe.walks
            keys, vals = probe.read_flows()
            if inserts() == at:
                assert probe.walks == walks
                return keys, vals
            time.sleep(0.05)
        raise AssertionError("connections kept opening on this host")

    def mine(vals: np.ndarray, port: int) -> np.ndarray:
        return vals[(vals["lport"] == port) & (vals["family"] == socket.AF_INET)]

    with socket.create_server(("127.0.0.1", 0)) as srv:
        cl = socket.create_connection(srv.getsockname())
        peer, _ = srv.accept()
        port = cl.getsockname()[1]
        with peer:
            with cl:
                walks = probe.walks
                _, vals = probe.read_flows()
                assert probe.walks == walks + 1  # two entries made since the last read
                assert len(mine(vals, port)) == 1
                cl.sendall(b"x" * 1237)
                assert len(peer.recv(1237, socket.MSG_WAITALL)) == 1237
                _, vals = read_without_insert()
                assert [int(v["bytes_sent"]) for v in mine(vals, port)] == [1237]
                cl2 = socket.create_connection(srv.getsockname())
                with cl2:
                    walks = probe.walks
                    _, vals = probe.read_flows()
                    assert probe.walks == walks + 1
                    assert len(mine(vals, cl2.getsockname()[1])) == 1

            # closed: the client's entry goes (at TCP_CLOSE), found by the poll alone
            def client_gone() -> bool:
                return len(mine(read_without_insert()[1], port)) == 0

            assert wait_for(client_gone, 5.0, 0.05)


def ipv6_exchange(lab6: Lab, n: int) -> tuple[int, dict[str, int]]:
    client, server = lab6.hosts
    assert server.addr6
    proc, port = start_server(server, "tcp", server.addr6, "--reply-bytes", str(DOWN))
    cli = run_client(
        client, "tcp", server.addr6, port, "--connections", str(n), "--concurrency", "40",
        "--send-bytes", str(UP), "--expect-reply-bytes", str(DOWN),
    )  # fmt: skip
    srv = stop_server(proc)
    assert cli["connections"] == n and cli["failed"] == 0, cli
    return port, expect(cli, srv, n, n)


def test_tcp_ipv6_exact_bytes(agent: Agent, lab6: Lab) -> None:
    """Every byte and connection over IPv6 is counted once per reporter (summed
    over this service's edges, whatever their names)."""
    n = 120
    port, want = ipv6_exchange(lab6, n)
    names = {h.name for h in lab6.hosts}

    def per_reporter() -> dict[str, dict[str, int]]:
        agent.refresh(force=True)
        out: dict[str, Totals] = {}
        for e, t in agent.table.totals().items():
            mine = {e.source_workload, e.destination_workload} & names
            if e.protocol == "tcp" and e.destination_service.endswith(f":{port}") and mine:
                out.setdefault(e.reporter, Totals()).add(t)
        return {r: summary(t) for r, t in out.items()}

    both = {"source": want, "destination": want}
    assert wait_for(lambda: per_reporter() == both, 5.0, 0.1) or per_reporter() == both


def test_tcp_ipv6_edges_named(agent: Agent, lab6: Lab) -> None:
    port, want = ipv6_exchange(lab6, 60)
    client, server = lab6.hosts
    got = settled(agent, client.name, server.name, want)
    assert {e.destination_service for e, _ in got.values()} == {f"{server.name}:{port}"}
    assert_exposition(agent, client.name, server.name, want)


def test_tcp_ipv6_addresses_in_flow_entries(agent: Agent, lab6: Lab) -> None:
    """While a connection is open, both kernel entries hold the full addresses."""
    client, server = lab6.hosts
    assert client.addr6 and server.addr6
    proc, port, cproc = hold_open(client, server, server.addr6, 1, 13, 11, 2.0)
    inodes = {os.stat(f"/run/netns/{h.name}").st_ino for h in lab6.hosts}

    def entries() -> set[tuple[str, int, str, int]]:
        _, vals = agent.tcp.read_flows()  # type: ignore[union-attr]
        return {
            (
                ip_text(int(v["family"]), bytes(v["laddr"])),
                int(v["lport"]),
                ip_text(int(v["family"]), bytes(v["raddr"])),
                int(v["rport"]),
            )
            for v in vals
            if int(v["netns"]) in inodes and port in (int(v["lport"]), int(v["rport"]))
        }

    got = wait_for(lambda: len(entries()) == 2 and entries(), 1.0) or entries()
    read_json_line(cproc, timeout=10)
    stop_server(proc)
    assert len(got) == 2, got
    cport = next(lp for la, lp, ra, rp in got if rp == port)
    assert got == {
        (client.addr6, cport, server.addr6, port),
        (server.addr6, port, client.addr6, cport),
    }


def test_tcp_loopback_inside_a_named_netns(agent: Agent) -> None:
    """Both ends on 127.0.0.1 of one lab host: both workloads are the netns name,
    for every connection (held open so the agent binds them from its map read, in
    the map's order)."""
    n, up, down = 20, 1009, 30011
    with Lab(1) as lab:
        host = lab.hosts[0]
        proc, _, cproc = hold_open(host, host, "127.0.0.1", n, up, down, 4.0)
        want = {"request_bytes": n * up, "response_bytes": n * down, "opened": n, "closed": 0}
        settled(agent, host.name, host.name, want, timeout=2.5)
        cli = read_json_line(cproc, timeout=30)
        srv = stop_server(proc)
        settled(agent, host.name, host.name, expect(cli, srv, n, n))


def test_agent_started_after_the_listener(make_agent: Any, lab: Lab) -> None:
    """A server listening before the agent starts: its accepted sockets still get
    the server's workload and every byte."""
    client, server = lab.hosts
    proc, port = start_server(server, "tcp", server.addr, "--reply-bytes", str(DOWN))
    agent = make_agent()
    cli = run_client(
        client, "tcp", server.addr, port, "--connections", "50", "--concurrency", "10",
        "--send-bytes", str(UP), "--expect-reply-bytes", str(DOWN),
    )  # fmt: skip
    srv = stop_server(proc)
    settled(agent, client.name, server.name, expect(cli, srv, 50, 50))


# -- the agent's side of kernel records, fed exactly what the kernel would produce ----

SK, START = 0xFFFF888012345678, 123456789
SOCK = {
    "start_ns": START, "netns": 1, "tgid": 4242, "pid": 4242, "family": 2,
    "laddr": bytes([10, 0, 0, 1]), "raddr": bytes([10, 0, 0, 2]),
    "lport": 40000, "rport": 8080, "dir": tcpflow.Dir.ACTIVE, "comm": b"client",
}  # fmt: skip
OPEN = int(tcpflow.Flag.OPENED)


def record(type: int, flags: int, **counters: int) -> bytes:
    return tcpflow.EVENT.encode(sk=SK, **SOCK, type=type, flags=flags, **counters)


def live(flags: int, **counters: int) -> Any:
    vals = tcpflow.VALUE.decode_many(tcpflow.VALUE.encode(**SOCK, flags=flags, **counters), 1)
    return _tcp_live(np.array([SK], dtype=tcpflow.KEY_DTYPE), vals)


def edge_8080(agent: Agent) -> tuple[int, int, int, int]:
    t = [t for e, t in agent.table.totals().items() if e.destination_service.endswith(":8080")]
    assert len(t) == 1, t
    return t[0].request_bytes, t[0].response_bytes, t[0].opened, t[0].closed


def test_late_record_after_close_does_not_count_a_second_open(agent: Agent) -> None:
    """Data read after the close record (tcpflow_destroy) comes in a LATE record
    built from the flow value, flags included."""
    closing = OPEN | int(tcpflow.Flag.CLOSING)
    close = record(tcpflow.EventType.CLOSE, closing, bytes_sent=1000, bytes_received=2000)
    late = record(tcpflow.EventType.LATE, closing, bytes_received=7)
    agent.tcp_book.update(iter(()), _tcp_records([close]))
    agent.tcp_book.update(iter(()), _tcp_records([late]))
    assert edge_8080(agent) == (1000, 2007, 1, 1)


def test_record_one_refresh_after_its_entry_vanished_counts_once(agent: Agent) -> None:
    agent.tcp_book.update(live(OPEN, bytes_sent=900, bytes_received=1800), iter(()))
    assert edge_8080(agent) == (900, 1800, 1, 0)
    # refresh: the entry is gone (closed, deleted), its record not readable yet
    agent.tcp_book.update(iter(()), iter(()))
    # next refresh: the record
    close = record(tcpflow.EventType.CLOSE, OPEN, bytes_sent=1000, bytes_received=2000)
    agent.tcp_book.update(iter(()), _tcp_records([close]))
    assert edge_8080(agent) == (1000, 2000, 1, 1)


# -- bytes from the sockets' own sequence numbers (docs/tcpflow.md) -------------------

# One connection h1 -> h2; what each side did and counted comes back as JSON.
#   sendfile: the client sends UP bytes and half-closes; the server replies with
#             os.sendfile() from a file of DOWN bytes (no send() call at all).
#   big:      the client sends UP bytes (past 4 GiB: the sequence numbers wrap) and
#             half-closes; the server replies DOWN bytes.
#   linger0:  request and reply, then the client closes with SO_LINGER 0
#             (tcp_disconnect(), a reset instead of a FIN).
#   held:     the client connects and waits for a line on stdin before the request
#             and reply (the agent starts in between).
_PEER = r"""
import json, os, socket, struct, sys, tempfile
role, mode, addr, port, up, down = sys.argv[1:3] + [sys.argv[3]] + [int(a) for a in sys.argv[4:7]]
CHUNK = memoryview(b"x" * (1 << 20))

def send(s, n):
    while n:
        n -= s.send(CHUNK[: min(n, len(CHUNK))])

def recv_exactly(s, n):
    got, buf = 0, bytearray(1 << 20)
    while got < n:
        k = s.recv_into(buf, min(n - got, len(buf)))
        if not k:
            break
        got += k
    return got

def recv_eof(s):
    got, buf = 0, bytearray(1 << 20)
    while k := s.recv_into(buf):
        got += k
    return got

if role == "server":
    l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    l.bind((addr, port)); l.listen(1)
    print(json.dumps({"ready": 1}), flush=True)
    c = l.accept()[0]
    if mode in ("linger0", "held"):
        got = recv_exactly(c, up)
    else:
        got = recv_eof(c)
    sent = 0
    if mode == "sendfile":
        with tempfile.TemporaryFile() as f:
            f.write(b"y" * down); f.flush()
            while sent < down:
                sent += os.sendfile(c.fileno(), f.fileno(), sent, down - sent)
    else:
        send(c, down); sent = down
    if mode == "linger0":
        try:
            recv_eof(c)  # the client's reset
        except ConnectionResetError:
            pass
    c.close()
    print(json.dumps({"bytes_received": got, "bytes_sent": sent}), flush=True)
else:
    c = socket.create_connection((addr, port))
    print(json.dumps({"port": c.getsockname()[1]}), flush=True)
    if mode == "held":
        sys.stdin.readline()
    send(c, up)
    if mode in ("linger0", "held"):
        got = recv_exactly(c, down)
    else:
        c.shutdown(socket.SHUT_WR)
        got = recv_eof(c)
    if mode == "linger0":
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()
    print(json.dumps({"bytes_sent": up, "bytes_received": got}), flush=True)
"""


def _peers(
    lab: Lab, mode: str, port: int, up: int, down: int, stdin: bool = False
) -> tuple[subprocess.Popen[Any], subprocess.Popen[Any]]:
    client, server = lab.hosts
    args = (mode, server.addr, str(port), str(up), str(down))
    srv = server.popen(*server.python("-c", _PEER, "server", *args), stdout=subprocess.PIPE)
    read_json_line(srv)
    cl = client.popen(
        *client.python("-c", _PEER, "client", *args),
        stdin=subprocess.PIPE if stdin else None,
        stdout=subprocess.PIPE,
    )
    read_json_line(cl)  # connected
    return cl, srv


def _done(
    cl: subprocess.Popen[Any], srv: subprocess.Popen[Any], timeout: float = 60
) -> tuple[dict[str, Any], dict[str, Any]]:
    cli, got = read_json_line(cl, timeout=timeout), read_json_line(srv, timeout=timeout)
    cl.wait(timeout=10)
    srv.wait(timeout=10)
    return cli, got


def test_tcp_sendfile_bytes_exact(agent: Agent, lab: Lab) -> None:
    """A reply sent by sendfile() (no send() call) is counted: write_seq moves."""
    client, server = lab.hosts
    cl, srv = _peers(lab, "sendfile", 9301, UP, DOWN)
    cli, got = _done(cl, srv)
    assert cli["bytes_received"] == got["bytes_sent"] == DOWN
    settled(agent, client.name, server.name, expect(cli, got, 1, 1))


def test_tcp_linger_zero_close_exact(agent: Agent, lab: Lab) -> None:
    """SO_LINGER 0: close() resets the socket through tcp_disconnect(), which
    rewrites its sequence numbers after the close record is out."""
    client, server = lab.hosts
    cl, srv = _peers(lab, "linger0", 9302, UP, DOWN)
    cli, got = _done(cl, srv)
    settled(agent, client.name, server.name, expect(cli, got, 1, 1))


def test_tcp_more_than_4_gib_on_one_connection(agent: Agent, lab: Lab) -> None:
    """The 32-bit sequence numbers wrap; the counts do not, while open (refreshed
    all along) and at close."""
    client, server = lab.hosts
    up = (1 << 32) + 104729
    cl, srv = _peers(lab, "big", 9303, up, DOWN)
    seen: list[int] = []
    while cl.poll() is None and len(seen) < 2000:
        edges = edges_for(agent, client.name, server.name, "tcp")
        if "source" in edges:
            seen.append(edges["source"][1].request_bytes)
        time.sleep(0.05)
    cli, got = _done(cl, srv, timeout=120)
    assert got["bytes_received"] == up
    assert seen == sorted(seen) and seen[-1] <= up  # monotonic, never over
    settled(agent, client.name, server.name, expect(cli, got, 1, 1))


def test_tcp_connection_older_than_the_agent(make_agent: Any, lab: Lab) -> None:
    """Connected before the agent starts: found in the established hash and
    counted from then on (not as opened: it opened before the agent watched)."""
    client, server = lab.hosts
    cl, srv = _peers(lab, "held", 9304, UP, DOWN, stdin=True)
    agent = make_agent()
    assert agent.tcp and agent.tcp.adopted >= 2  # both ends, at least
    assert cl.stdin
    cl.stdin.write(b"go\n")
    cl.stdin.flush()
    cli, got = _done(cl, srv)
    settled(agent, client.name, server.name, expect(cli, got, 0, 1))
