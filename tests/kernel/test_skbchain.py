"""The cgroup_skb chain: one program per direction on the cgroup root for the
whole agent, every feature behind it, and a member that leaves does not cut
off the members after it."""

from __future__ import annotations

import os
import socket
import struct
from typing import Any

import pytest
from kernel_helpers import bpf_objects_of, bpftool

from meshlens.dnsmsg import encode_name
from meshlens.loadgen import free_port
from meshlens.probes import skbchain
from meshlens.probes.dns import DnsProbe
from meshlens.probes.dns import Stat as DnsStat

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


def test_agent_attaches_one_program_per_direction(make_agent: Any) -> None:
    before = bpf_objects_of(os.getpid())[0]
    agent = make_agent()
    ours = bpf_objects_of(os.getpid())[0] - before
    chain = skbchain.current()
    assert chain is not None and chain.obj
    dispatchers = {chain.obj.programs[f"skbchain_{d}_run"].fd for d in skbchain.DIRECTIONS}
    attached = root_attached_ids() & ours
    assert len(attached) == len(dispatchers) == 2, attached
    # every feature's cgroup_skb program is a member instead
    members = {d: set(chain.members[d].values()) for d in skbchain.DIRECTIONS}
    assert {"dns_egress"} <= members["egress"]
    assert {"dns_ingress", "tcphealth_listen"} <= members["ingress"]
    # http reads socket calls (behind the socket chain), no packets
    assert not any(m.startswith("http") for d in members for m in members[d])
    agent.stop()
    assert skbchain.current() is None
    assert not (root_attached_ids(skb_only=False) & ours)


def dns_queries(n: int, port: int) -> None:
    """n DNS queries over loopback UDP to a socket that takes them."""
    query = struct.pack("!6H", 0x1234, 0x0100, 1, 0, 0, 0) + encode_name("example.test")
    query += struct.pack("!2H", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as srv:
        srv.bind(("127.0.0.1", port))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as cli:
            for i in range(n):
                cli.sendto(struct.pack("!H", i) + query[2:], ("127.0.0.1", port))
                srv.recv(512)


def queries_seen(probe: DnsProbe) -> int:
    return probe.stats()[DnsStat.QUERIES]


def test_member_leaving_keeps_later_members_counting() -> None:
    port = free_port()
    first, second = DnsProbe(ports=(port,)), DnsProbe(ports=(port,))
    first.start()
    try:
        second.start()
        try:
            dns_queries(N, port)
            assert queries_seen(first) == queries_seen(second) > 0
            per_run = queries_seen(second)
            chain = skbchain.current()
            assert chain is not None
            slot = first.membership.slots["egress"][0] if first.membership else -1
            first.close()  # its slot now holds a pass-through program
            assert slot not in chain.members["egress"]
            dns_queries(N, port)
            assert queries_seen(second) == 2 * per_run
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
