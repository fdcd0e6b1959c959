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
from meshlens.probes.udpflow import UdpFlowProbe

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
        sockchain.Slot.UDP: "udpflow",
        sockchain.Slot.TCP_APP: "http",  # first on TCP calls, then dns
        sockchain.Slot.TCP_DNS: "dns",
        sockchain.Slot.UDP_DNS: "dns",  # first on UDP calls, then udpflow
    }
    http = next(f.probe for f in agent.features if f.probe.name == "http")
    dns = next(f.probe for f in agent.features if f.probe.name == "dns")
    for probe in (agent.udp, http, dns):
        assert not own_links(probe) & set(SOCK_IO)  # they run behind the chain
        assert any("sockchain[" in t for t in probe.status.attached), probe.status.attached
    assert agent.tcp and not own_links(agent.tcp) & set(SOCK_IO)  # no program per call
    agent.stop()
    assert sockchain.current() is None


def sent_by(probe: UdpFlowProbe, lport: int, rport: int) -> int:
    keys, vals = probe.read_flows()
    sel = (keys["lport"] == lport) & (keys["rport"] == rport)
    return int(vals["bytes_sent"][sel].sum())


@contextlib.contextmanager
def udp_pair() -> Iterator[tuple[socket.socket, socket.socket, tuple[int, int]]]:
    """Two connected loopback UDP sockets: (client, server, (client port, server port))."""
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as srv,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as cli,
    ):
        srv.bind(("127.0.0.1", 0))
        cli.connect(srv.getsockname())
        srv.connect(cli.getsockname())
        yield cli, srv, (cli.getsockname()[1], srv.getsockname()[1])


def send(cli: socket.socket, srv: socket.socket, size: int) -> None:
    cli.send(b"x" * size)
    assert len(srv.recv(65536)) == size


def test_second_probe_of_a_protocol_attaches_its_own_programs() -> None:
    first, second = UdpFlowProbe(), UdpFlowProbe()
    first.start()
    try:
        second.start()
        try:
            assert first.seat is not None and second.seat is None
            assert set(SOCK_IO) <= own_links(second)
            size = 9_973  # prime
            with udp_pair() as (cli, conn, ports):
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
    probe = UdpFlowProbe()
    probe.start()
    try:
        assert probe.seat is None
        assert set(SOCK_IO) <= own_links(probe)
        with udp_pair() as (cli, conn, ports):
            send(cli, conn, 4099)
            assert sent_by(probe, *ports) == 4099
    finally:
        probe.close()
    assert sockchain.current() is None
