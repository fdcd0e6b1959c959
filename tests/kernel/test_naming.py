"""Workload naming against real namespaces: a process in a named netns is that
netns' name, however recently the netns appeared."""

from __future__ import annotations

from typing import Any

import pytest
from kernel_helpers import edges_for, edges_mentioning, run_client, start_server, summary

from meshlens.identity import IdentityResolver
from meshlens.lab import Lab
from meshlens.loadgen import stop_server

pytestmark = [pytest.mark.kernel, pytest.mark.usefixtures("bpf_ready")]


def test_netns_created_just_after_a_scan_is_named(make_agent: Any) -> None:
    # The resolver's rescan interval (5 s by default) made long enough that the lab
    # surely appears inside it, whatever the load: the outcome must not depend on it.
    agent = make_agent(identity=IdentityResolver(refresh_interval=60.0))
    # Steady state: the agent has just resolved names (any refresh binding a socket does).
    agent.identity.addresses(force=True)
    with Lab(2) as lab:
        client, server = lab.hosts
        proc, port = start_server(server, "tcp", server.addr, "--reply-bytes", "101")
        run_client(client, "tcp", server.addr, port, "--send-bytes", "103")
        stop_server(proc)
        got = edges_for(agent, client.name, server.name, "tcp")
        related = [(e, summary(t)) for e, t in edges_mentioning(agent, (server.addr,))]
        assert set(got) == {"source", "destination"}, related
