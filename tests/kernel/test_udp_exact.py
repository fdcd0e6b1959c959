"""UDP accounting is exact per socket and peer, for both reporters, connected or not,
and survives the kernel's idle expiry without losing or double counting."""

from __future__ import annotations

import os
import socket
import time
from typing import Any

import pytest
from kernel_helpers import (
    edges_for,
    edges_mentioning,
    run_client,
    sample,
    scrape,
    start_server,
    udp_summary,
    wait_for,
)

from meshlens.accounting import Edge, Totals, ip_text
from meshlens.agent import Agent
from meshlens.lab import Lab
from meshlens.loadgen import stop_server
from meshlens.probes import udpflow

pytestmark = [pytest.mark.kernel, pytest.mark.usefixtures("bpf_ready")]

N, SIZE, REPLY = 101, 997, 13


def exchange(
    lab: Lab, *client_args: str, ipv6: bool = False, size: int = SIZE
) -> tuple[int, dict[str, int]]:
    """loadgen UDP host 0 -> host 1; (server port, expected Totals fields)."""
    client, server = lab.hosts
    dest = server.addr6 if ipv6 else server.addr
    assert dest
    proc, port = start_server(server, "udp", dest, "--reply-bytes", str(REPLY))
    cli = run_client(
        client, "udp", dest, port, "--datagrams", str(N), "--datagram-bytes", str(size),
        "--expect-reply-bytes", str(REPLY), *client_args,
    )  # fmt: skip
    srv = stop_server(proc)
    assert cli["failed"] == 0, cli
    assert cli["datagrams_sent"] == srv["datagrams_received"] == N
    assert cli["bytes_sent"] == srv["bytes_received"] == N * size
    assert cli["datagrams_received"] == srv["datagrams_sent"] == N
    assert cli["bytes_received"] == srv["bytes_sent"] == N * REPLY
    return port, {
        "request_bytes": cli["bytes_sent"],
        "response_bytes": srv["bytes_sent"],
        "request_calls": cli["datagrams_sent"],
        "response_calls": srv["datagrams_sent"],
    }


def both_reporters(
    agent: Agent, lab: Lab, want: dict[str, int], timeout: float
) -> dict[str, tuple[Edge, Totals]]:
    """Refresh until both reporters show `want` (a socket first seen receiving, from a
    socket whose sender is not known yet, is named after a short delay)."""
    src, dst = (h.name for h in lab.hosts)

    def done() -> dict[str, tuple[Edge, Totals]] | None:
        got = edges_for(agent, src, dst, "udp")
        ok = set(got) == {"source", "destination"} and all(
            udp_summary(t) == want for _, t in got.values()
        )
        return got if ok else None

    got = wait_for(done, timeout, 0.2) or edges_for(agent, src, dst, "udp")
    related = [(e, udp_summary(t)) for e, t in edges_mentioning(agent, (src, dst))]
    assert {r: udp_summary(t) for r, (_, t) in got.items()} == {
        "source": want,
        "destination": want,
    }, related
    return got


def assert_udp_exposition(agent: Agent, lab: Lab, want: dict[str, int]) -> None:
    samples = scrape(agent)
    src, dst = (h.name for h in lab.hosts)
    for reporter in ("source", "destination"):
        labels = {"reporter": reporter, "source_workload": src, "destination_workload": dst}
        # meshlens_udp_* are from the reporting socket's point of view
        out_b, in_b = ("request_bytes", "response_bytes")[:: 1 if reporter == "source" else -1]
        out_d, in_d = ("request_calls", "response_calls")[:: 1 if reporter == "source" else -1]
        assert sample(samples, "meshlens_udp_sent_bytes_total", **labels) == want[out_b]
        assert sample(samples, "meshlens_udp_received_bytes_total", **labels) == want[in_b]
        dgrams = "meshlens_udp_datagrams_total"
        assert sample(samples, dgrams, direction="sent", **labels) == want[out_d]
        assert sample(samples, dgrams, direction="received", **labels) == want[in_d]


@pytest.mark.parametrize("mode", ["unconnected", "connected"])
def test_udp_exact(agent: Agent, lab: Lab, mode: str) -> None:
    port, want = exchange(lab, *(["--connected"] if mode == "connected" else []))
    got = both_reporters(agent, lab, want, timeout=10.0)
    assert {e.destination_service for e, _ in got.values()} == {f"{lab.hosts[1].name}:{port}"}
    assert_udp_exposition(agent, lab, want)
    # Refreshing again changes nothing.
    before = {r: udp_summary(t) for r, (_, t) in got.items()}
    for _ in range(3):
        agent.refresh(force=True)
    assert {
        r: udp_summary(t) for r, (_, t) in edges_for(agent, *lab_names(lab), "udp").items()
    } == before


def test_udp_fragmented_datagrams_exact(agent: Agent, lab: Lab) -> None:
    """Datagrams larger than the 1500-byte MTU leave as IP fragments: each is still
    one datagram of its full payload."""
    _, want = exchange(lab, size=8999)
    assert want["request_bytes"] == N * 8999
    both_reporters(agent, lab, want, timeout=10.0)


def lab_names(lab: Lab) -> tuple[str, str]:
    return lab.hosts[0].name, lab.hosts[1].name


def test_udp_ipv6_exact(agent: Agent, lab6: Lab) -> None:
    _, want = exchange(lab6, ipv6=True)
    both_reporters(agent, lab6, want, timeout=10.0)


def flows_on_port(agent: Agent, port: int, addrs: set[str]) -> list[dict[str, Any]]:
    keys, _ = agent.udp.read_flows()  # type: ignore[union-attr]
    out = []
    for k in keys:
        fam = int(k["family"])
        la, ra = ip_text(fam, bytes(k["laddr"])), ip_text(fam, bytes(k["raddr"]))
        if port in (int(k["lport"]), int(k["rport"])) and {la, ra} <= addrs:
            out.append({"laddr": la, "lport": int(k["lport"]), "raddr": ra})
    return out


def test_udp_idle_expiry_keeps_every_byte(make_agent: Any, lab: Lab) -> None:
    agent = make_agent(udp_idle_seconds=1.0)
    # the client's socket is unconnected and unbound: its local address is the
    # wildcard (what ss shows too)
    addrs = {h.addr for h in lab.hosts} | {"0.0.0.0"}
    port, want = exchange(lab)
    agent.refresh(force=True)  # the source side is bound from the live entries
    live = flows_on_port(agent, port, addrs)
    assert len(live) == 2, live  # the client's and the server's socket, one peer each
    time.sleep(2.5)
    assert flows_on_port(agent, port, addrs) == []  # the kernel expired both
    got = both_reporters(agent, lab, want, timeout=5.0)
    assert all(t.closed == 1 for _, t in got.values())  # one final record per socket
    # Later refreshes neither lose nor re-add the expired flows.
    for _ in range(3):
        agent.refresh(force=True)
    assert {
        r: udp_summary(t) for r, (_, t) in edges_for(agent, *lab_names(lab), "udp").items()
    } == {"source": want, "destination": want}
    assert_udp_exposition(agent, lab, want)


def test_udp_server_socket_gets_its_owner(agent: Agent) -> None:
    with Lab(1) as lab:
        host = lab.hosts[0]
        proc, port = start_server(host, "udp", "127.0.0.1", "--reply-bytes", str(REPLY))
        run_client(
            host, "udp", "127.0.0.1", port, "--datagrams", "5", "--datagram-bytes", str(SIZE),
            "--expect-reply-bytes", str(REPLY),
        )  # fmt: skip
        keys, vals = agent.udp.read_flows()  # type: ignore[union-attr]
        server_side = [
            (int(v["tgid"]), int(v["netns"]))
            for k, v in zip(keys, vals, strict=True)
            if int(k["lport"]) == port
            and ip_text(int(k["family"]), bytes(k["laddr"])) == "127.0.0.1"
        ]
        netns = os.stat(f"/run/netns/{host.name}").st_ino
        stop_server(proc)
        assert server_side == [(proc.pid, netns)]

        def named() -> list[Edge]:
            agent.refresh(force=True)
            return [
                e
                for e in agent.table.totals()
                if e.protocol == "udp"
                and e.reporter == "destination"
                and e.destination_service.endswith(f":{port}")
            ]

        edges = wait_for(named, 3.0, 0.2)
        assert [e.destination_workload for e in edges] == [host.name]


def test_udp_wildcard_bound_server_named_for_both_reporters(agent: Agent, lab: Lab) -> None:
    """A server bound to 0.0.0.0 (as most are): its socket knows no local address,
    yet both ends are named and the service is the server's workload:port."""
    client, server = lab.hosts
    assert server.addr
    proc, port = start_server(server, "udp", "0.0.0.0", "--reply-bytes", str(REPLY))
    cli = run_client(
        client, "udp", server.addr, port, "--datagrams", str(N), "--datagram-bytes", str(SIZE),
        "--expect-reply-bytes", str(REPLY),
    )  # fmt: skip
    srv = stop_server(proc)
    assert cli["failed"] == 0 and srv["datagrams_received"] == N
    want = {
        "request_bytes": N * SIZE,
        "response_bytes": N * REPLY,
        "request_calls": N,
        "response_calls": N,
    }
    got = both_reporters(agent, lab, want, timeout=10.0)
    assert {e.destination_service for e, _ in got.values()} == {f"{server.name}:{port}"}


def _udp_pair() -> tuple[socket.socket, socket.socket]:
    srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    srv.bind(("127.0.0.1", 0))
    cli = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    cli.bind(("127.0.0.1", 0))
    return srv, cli


def _flow(agent: Agent, lport: int, rport: int) -> dict[str, int] | None:
    keys, vals = agent.udp.read_flows()  # type: ignore[union-attr]
    for k, v in zip(keys, vals, strict=True):
        if int(k["lport"]) == lport and int(k["rport"]) == rport:
            return {f: int(v[f]) for f in ("bytes_sent", "bytes_received",
                                           "datagrams_sent", "datagrams_received")}  # fmt: skip
    return None


def test_udp_recv_without_address_counted(agent: Agent) -> None:
    """recv() on an unconnected socket does not say who sent: a socket that sent
    first is taken to hear from that peer (as the application assumes); one that
    never sent counts its bytes against peer 0.0.0.0:0, and says so."""
    before = agent.udp.stats()  # type: ignore[union-attr]
    srv, cli = _udp_pair()
    with srv, cli:
        sport, cport = srv.getsockname()[1], cli.getsockname()[1]
        for _ in range(7):
            cli.sendto(b"q" * 31, srv.getsockname())
            assert len(srv.recv(100)) == 31  # never sent: no peer
            srv.sendto(b"r" * 5, cli.getsockname())
            assert len(cli.recv(100)) == 5  # sent to srv before: srv is the peer
        assert _flow(agent, cport, sport) == {
            "bytes_sent": 7 * 31, "bytes_received": 7 * 5,
            "datagrams_sent": 7, "datagrams_received": 7,
        }  # fmt: skip
        assert _flow(agent, sport, 0) == {
            "bytes_sent": 0, "bytes_received": 31,
            "datagrams_sent": 0, "datagrams_received": 1,
        }  # fmt: skip
        assert _flow(agent, sport, cport) == {
            "bytes_sent": 7 * 5, "bytes_received": 6 * 31,
            "datagrams_sent": 7, "datagrams_received": 6,
        }  # fmt: skip
    after = agent.udp.stats()  # type: ignore[union-attr]
    # other processes' traffic may add to these host-wide counters, never take away
    assert after[udpflow.Stat.NO_PEER] - before[udpflow.Stat.NO_PEER] >= 1
    assert after[udpflow.Stat.PEER_ASSUMED] - before[udpflow.Stat.PEER_ASSUMED] >= 13
    samples = scrape(agent)
    assert sample(samples, "meshlens_udp_unknown_peer_datagrams_total") >= 1


UDP_SEGMENT = 103  # linux/udp.h


def test_udp_gso_send_counts_every_datagram(agent: Agent) -> None:
    """With UDP_SEGMENT set, one send() leaves as several datagrams: each counted."""
    srv, cli = _udp_pair()
    with srv, cli:
        cli.setsockopt(socket.SOL_UDP, UDP_SEGMENT, 1000)
        cli.connect(srv.getsockname())
        for _ in range(5):
            assert cli.send(b"g" * 3500) == 3500  # 1000 + 1000 + 1000 + 500
        got = [len(srv.recv(5000)) for _ in range(20)]
        assert got == [1000, 1000, 1000, 500] * 5
        sport, cport = srv.getsockname()[1], cli.getsockname()[1]
        sent = _flow(agent, cport, sport)
        assert sent is not None
        assert (sent["datagrams_sent"], sent["bytes_sent"]) == (20, 5 * 3500)


def test_udp_ipv4_peer_of_a_dual_stack_socket_counted_as_ipv4(agent: Agent) -> None:
    """An IPv6 socket talking to ::ffff:127.0.0.1 is an IPv4 flow (as the packets are)."""
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as srv,
        socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as cli,
    ):
        cli.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        srv.bind(("127.0.0.1", 0))
        sport = srv.getsockname()[1]
        for _ in range(3):
            cli.sendto(b"m" * 41, ("::ffff:127.0.0.1", sport))
            _, peer = srv.recvfrom(100)
            srv.sendto(b"r" * 3, peer)
            assert len(cli.recvfrom(100)[0]) == 3
        cport = cli.getsockname()[1]
        keys, vals = agent.udp.read_flows()  # type: ignore[union-attr]
        mine = [
            (int(k["family"]), ip_text(int(k["family"]), bytes(k["raddr"])), int(v["bytes_sent"]),
             int(v["bytes_received"]))
            for k, v in zip(keys, vals, strict=True)
            if int(k["lport"]) == cport and int(k["rport"]) == sport
        ]  # fmt: skip
        assert mine == [(socket.AF_INET, "127.0.0.1", 3 * 41, 3 * 3)]


def test_an_empty_flow_map_is_not_walked(agent: Agent, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch read of an empty map walks all its buckets in one call: the live
    count (inserts minus deletes) says when there is nothing to read."""
    probe = agent.udp
    assert probe is not None
    flows = probe.map(udpflow.FLOWS_MAP)
    reads: list[int] = []
    real_read, real_stats = flows.lookup_batch, probe.stats

    def read() -> tuple[bytearray, bytearray, int]:
        reads.append(1)
        return real_read()

    monkeypatch.setattr(flows, "lookup_batch", read)
    for live in (0, 1):
        stats = {**real_stats(), udpflow.Stat.LIVE: live}
        monkeypatch.setattr(probe, "stats", lambda stats=stats: stats)
        keys, vals = probe.read_flows()
        assert len(reads) == live
        assert len(keys) == len(vals)
        if not live:
            assert len(keys) == 0
