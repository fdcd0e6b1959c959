"""Fixtures for the kernel suite: real BPF programs, real traffic in lab namespaces.

Every test here needs root and the built objects (`make build`); without them the
tests that use `bpf_ready` (directly or through `agent`) are skipped, not failed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest
from kernel_helpers import bpf_objects_of

from meshlens.agent import Agent, AgentConfig
from meshlens.identity import IdentityResolver
from meshlens.lab import Lab
from meshlens.probes.base import objects_dir

FLOW_PROBES = ("tcpflow", "udpflow")
OBJECTS = tuple(f"{p}.bpf.o" for p in FLOW_PROBES)


def bpf_skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "kernel tests need root (BPF programs, network namespaces)"
    missing = [name for name in OBJECTS if not (objects_dir() / name).is_file()]
    if missing:
        return f"BPF objects not built ({', '.join(missing)} in {objects_dir()}): run `make build`"
    return None


@pytest.fixture(scope="session")
def bpf_ready() -> None:
    reason = bpf_skip_reason()
    if reason:
        pytest.skip(reason)


AgentFactory = Callable[..., Agent]
# No refresh rate limit. Flow tables larger than the default 65536: the kernel maps see
# every socket of the host, and benchmarks running beside the suite can fill them.
AGENT_DEFAULTS: dict[str, object] = {
    "min_refresh_interval": 0.0,
    "max_tcp_flows": 1 << 18,
    "max_udp_flows": 1 << 18,
}


@pytest.fixture
def make_agent(bpf_ready: None) -> Iterator[AgentFactory]:
    """Start agents with AgentConfig overrides; every one is stopped at teardown,
    whatever the test did."""
    started: list[Agent] = []
    held_before = bpf_objects_of(os.getpid())

    def make(identity: IdentityResolver | None = None, **overrides: object) -> Agent:
        cfg = AgentConfig(**{**AGENT_DEFAULTS, **overrides})  # type: ignore[arg-type]
        agent = Agent(cfg, identity)
        started.append(agent)
        statuses = agent.start()
        # This suite needs the flow probes; other features report their own health.
        broken = [
            f"{s.name}: {s.error}" for s in statuses if s.name in FLOW_PROBES and not s.loaded
        ]
        assert not broken, f"probes failed to load: {broken}"
        assert agent.tcp is not None and agent.udp is not None
        return agent

    try:
        yield make
    finally:
        for agent in reversed(started):
            agent.stop()
    # Stopped agents hold no program, link or map any more.
    assert bpf_objects_of(os.getpid()) == held_before


@pytest.fixture
def agent(make_agent: AgentFactory) -> Agent:
    """An agent with both probes attached and no refresh rate limit."""
    return make_agent()


@pytest.fixture
def lab(bpf_ready: None) -> Iterator[Lab]:
    """Two hosts on one bridge (IPv4); torn down, with its processes, at teardown."""
    with Lab(2) as lab:
        yield lab


@pytest.fixture
def lab6(bpf_ready: None) -> Iterator[Lab]:
    """Two hosts with IPv4 and IPv6 addresses."""
    with Lab(2, ipv6=True) as lab:
        yield lab
