"""The cgroup_skb chain: one program per direction on the cgroup root for the
whole agent, every feature behind it, and a member that leaves does not cut
off the members after it."""

from __future__ import annotations

import os
from typing import Any

import pytest
from kernel_helpers import bpf_objects_of, bpftool
from test_udp_exact import SIZE, N, exchange

from meshlens.lab import Lab
from meshlens.probes import skbchain
from meshlens.probes.udpflow import UdpFlowProbe

pytestmark = [pytest.mark.kernel, pytest.mark.usefixtures("bpf_ready")]


def root_attached_ids() -> set[int]:
    from meshlens.probes.base import cgroup2_root

    return {p["id"] for p in bpftool("cgroup", "show", cgroup2_root())}


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
    assert {"udpflow_egress", "dns_egress", "http_egress"} <= members["egress"]
    assert {"udpflow_ingress", "dns_ingress", "http_ingress", "tcphealth_listen"} <= members[
        "ingress"
    ]
    agent.stop()
    assert skbchain.current() is None
    assert not (root_attached_ids() & ours)


def sent_to(probe: UdpFlowProbe, port: int) -> tuple[int, int]:
    """(datagrams, bytes) the probe counted from client sockets to `port`."""
    keys, vals = probe.read_flows()
    sel = keys["rport"] == port
    return int(vals["datagrams_sent"][sel].sum()), int(vals["bytes_sent"][sel].sum())


def test_member_leaving_keeps_later_members_counting(lab: Lab) -> None:
    first, second = UdpFlowProbe(), UdpFlowProbe()
    first.start()
    try:
        second.start()
        try:
            port, _ = exchange(lab)
            assert sent_to(first, port) == sent_to(second, port) == (N, N * SIZE)
            chain = skbchain.current()
            assert chain is not None
            slot = first.membership.slots["egress"][0] if first.membership else -1
            first.close()  # its slot now holds a pass-through program
            assert slot not in chain.members["egress"]
            port, _ = exchange(lab)
            assert sent_to(second, port) == (N, N * SIZE)
        finally:
            second.close()
    finally:
        first.close()
    assert skbchain.current() is None
