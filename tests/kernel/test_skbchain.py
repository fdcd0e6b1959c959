"""The cgroup_skb chain: one program per direction in use on the cgroup root for
the whole agent, every feature behind it, and a member that leaves does not cut
off the members after it."""

from __future__ import annotations

import os
import socket
from typing import Any

import pytest
from kernel_helpers import bpf_objects_of, bpftool

from meshlens.loadgen import free_port
from meshlens.probes import skbchain
from meshlens.probes.tcphealth import TcpHealthProbe

N = 101

pytestmark = [pytest.mark.kernel, pytest.mark.usefixtures("bpf_ready")]


SKB_HOOKS = {"cgroup_inet_ingress", "cgroup_inet_egress", "ingress", "egress"}


def root_attached_ids(skb_only: bool = True) -> set[int]:
    """Programs attached to the cgroup root: the per-packet (cgroup_skb) ones, or all."""
    from meshlens.probes.base import cgroup2_root

    return {
        p["id"]
        for p in bpftool("cgroup", "show", cgroup2_root())
        if not skb_only or p["attach_type"] in SKB_HOOKS
    }


def test_agent_attaches_one_program_per_direction_in_use(make_agent: Any) -> None:
    """Only the listen queues still read packets (ingress); no program runs on any
    packet a socket sends."""
    before = bpf_objects_of(os.getpid())[0]
    agent = make_agent()
    ours = bpf_objects_of(os.getpid())[0] - before
    chain = skbchain.current()
    assert chain is not None and chain.obj
    attached = root_attached_ids() & ours
    assert len(attached) == 1, attached  # the ingress dispatcher
    assert set(chain.links) == {"ingress"}
    # every feature's cgroup_skb program is a member instead
    members = {d: set(chain.members[d].values()) for d in skbchain.DIRECTIONS}
    assert members == {"egress": set(), "ingress": {"tcphealth_listen"}}
    agent.stop()
    assert skbchain.current() is None
    assert not (root_attached_ids(skb_only=False) & ours)


def connections(n: int, port: int) -> None:
    """n loopback TCP connections to a listener on port, accepted and closed."""
    with socket.socket() as srv:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the first run's TIME_WAIT
        srv.bind(("127.0.0.1", port))
        srv.listen(64)
        for _ in range(n):
            with socket.create_connection(("127.0.0.1", port)):
                srv.accept()[0].close()


def syns_seen(probe: TcpHealthProbe, port: int) -> int:
    keys, vals = probe.read_listeners()
    return int(sum(int(v["syns"]) for k, v in zip(keys, vals, strict=True) if k["port"] == port))


def test_member_leaving_keeps_later_members_counting() -> None:
    port = free_port()
    first, second = TcpHealthProbe(), TcpHealthProbe()
    first.start()
    try:
        second.start()
        try:
            connections(N, port)
            assert syns_seen(first, port) == syns_seen(second, port) == N
            chain = skbchain.current()
            assert chain is not None
            slot = first.membership.slots["ingress"][0] if first.membership else -1
            first.close()  # its slot now holds a pass-through program
            assert slot not in chain.members["ingress"]
            connections(N, port)
            assert syns_seen(second, port) == 2 * N
        finally:
            second.close()
    finally:
        first.close()
    assert skbchain.current() is None


def test_core_alone_puts_no_program_on_packets(make_agent: Any) -> None:
    """TCP and UDP accounting run at the socket layer: with no feature loaded, no
    cgroup_skb program runs on any packet (TCP pays nothing for UDP)."""
    before = bpf_objects_of(os.getpid())[0]
    agent = make_agent(features=())
    ours = bpf_objects_of(os.getpid())[0] - before
    assert ours, "the core probes loaded nothing"
    assert skbchain.current() is None
    assert not (root_attached_ids() & ours)
    agent.stop()
