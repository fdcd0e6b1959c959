"""The socket send/recv chain: one program per tracepoint for TCP and UDP
accounting together; a probe whose seat is taken attaches its own programs and
still counts exactly; detach and attach stop and resume counting."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from meshlens.probes import sockchain
from meshlens.probes.tcpflow import TcpFlowProbe

pytestmark = [pytest.mark.kernel, pytest.mark.usefixtures("bpf_ready")]

SOCK_IO = ("raw_tp/sock_send_length", "raw_tp/sock_recv_length")


def own_links(probe: Any) -> set[str]:
    return {link.target for link in probe.obj.links}


def test_agent_runs_one_program_per_send_recv_tracepoint(make_agent: Any) -> None:
    agent = make_agent()
    chain = sockchain.current()
    assert chain is not None
    assert own_links(chain) == set(SOCK_IO)
    assert chain.seated == {
        sockchain.Slot.TCP: "tcpflow",
        sockchain.Slot.UDP: "udpflow",
        sockchain.Slot.TCP_APP: "http",  # first on TCP calls, then dns, then tcpflow
        sockchain.Slot.TCP_DNS: "dns",
        sockchain.Slot.UDP_DNS: "dns",  # first on UDP calls, then udpflow
    }
    http = next(f.probe for f in agent.features if f.probe.name == "http")
    dns = next(f.probe for f in agent.features if f.probe.name == "dns")
    for probe in (agent.tcp, agent.udp, http, dns):
        assert not own_links(probe) & set(SOCK_IO)  # they run behind the chain
        assert any("sockchain[" in t for t in probe.status.attached), probe.status.attached
    agent.stop()
    assert sockchain.current() is None


def sent_by(probe: TcpFlowProbe, lport: int, rport: int) -> int:
    _keys, vals = probe.read_flows()
    sel = (vals["lport"] == lport) & (vals["rport"] == rport)
    return int(vals["bytes_sent"][sel].sum())


@contextlib.contextmanager
def tcp_pair() -> Iterator[tuple[socket.socket, socket.socket, tuple[int, int]]]:
    """A loopback connection: (client, accepted socket, (client port, server port))."""
    with (
        socket.create_server(("127.0.0.1", 0)) as srv,
        socket.create_connection(srv.getsockname()) as cli,
    ):
        conn, _ = srv.accept()
        with conn:
            yield cli, conn, (cli.getsockname()[1], srv.getsockname()[1])


def send(cli: socket.socket, conn: socket.socket, size: int) -> None:
    cli.sendall(b"x" * size)
    got = 0
    while got < size:
        got += len(conn.recv(65536))


def test_second_probe_of_a_protocol_attaches_its_own_programs() -> None:
    first, second = TcpFlowProbe(), TcpFlowProbe()
    first.start()
    try:
        second.start()
        try:
            assert first.seat is not None and second.seat is None
            assert set(SOCK_IO) <= own_links(second)
            size = 99_991  # prime
            with tcp_pair() as (cli, conn, ports):
                send(cli, conn, size)
                assert sent_by(first, *ports) == sent_by(second, *ports) == size
                # detached: nothing counted; attached again: counted again
                first.detach()
                send(cli, conn, 7)
                assert sent_by(first, *ports) == size
                assert sent_by(second, *ports) == size + 7
                first.attach()
                send(cli, conn, 11)
                assert sent_by(first, *ports) == size + 11
                assert sent_by(second, *ports) == size + 18
        finally:
            second.close()
    finally:
        first.close()
    assert sockchain.current() is None


def test_probe_works_alone_when_the_chain_cannot_load(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse() -> sockchain.SockChain:
        raise OSError("refused by this kernel")

    monkeypatch.setattr(sockchain._shared, "_make", refuse)
    probe = TcpFlowProbe()
    probe.start()
    try:
        assert probe.seat is None
        assert set(SOCK_IO) <= own_links(probe)
        with tcp_pair() as (cli, conn, ports):
            send(cli, conn, 4099)
            assert sent_by(probe, *ports) == 4099
    finally:
        probe.close()
    assert sockchain.current() is None
