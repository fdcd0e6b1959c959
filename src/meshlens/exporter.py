"""Prometheus exposition: Istio's TCP metrics with Istio's label set, meshlens'
UDP metrics, and self-metrics. Built at scrape time from already-aggregated
totals (client_python custom collector)."""

from __future__ import annotations

import resource
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from .accounting import UNKNOWN, Edge, Totals
from .families import CounterFamily, GaugeFamily, HistogramFamily
from .probes import tcpflow, udpflow

if TYPE_CHECKING:
    from .agent import Agent

# Istio's standard labels, in Istio's order; those meshlens cannot know are "unknown".
ISTIO_LABELS = (
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_canonical_service",
    "source_canonical_revision",
    "source_cluster",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_cluster",
    "request_protocol",
    "response_flags",
    "connection_security_policy",
)


def istio_labels(edge: Edge) -> list[str]:
    src, dst = edge.source_workload, edge.destination_workload
    return [
        edge.reporter,
        src,
        UNKNOWN,
        UNKNOWN,
        src,
        UNKNOWN,
        src,
        "latest",
        UNKNOWN,
        dst,
        UNKNOWN,
        UNKNOWN,
        dst,
        UNKNOWN,
        edge.destination_service,
        dst,
        UNKNOWN,
        dst,
        "latest",
        UNKNOWN,
        edge.protocol,
        "-",
        # Istio: "unknown" at the source; at the destination "none" unless the
        # mesh added mTLS, which there is no mesh here to do.
        UNKNOWN if edge.reporter == "source" else "none",
    ]


def edge_families(totals: dict[Edge, Totals]) -> Iterator[Metric]:
    sent = CounterFamily(
        "istio_tcp_sent_bytes",
        "Bytes sent during response (destination to source) on TCP connections.",
        labels=ISTIO_LABELS,
    )
    received = CounterFamily(
        "istio_tcp_received_bytes",
        "Bytes received during request (source to destination) on TCP connections.",
        labels=ISTIO_LABELS,
    )
    opened = CounterFamily(
        "istio_tcp_connections_opened", "TCP connections opened.", labels=ISTIO_LABELS
    )
    closed = CounterFamily(
        "istio_tcp_connections_closed", "TCP connections closed.", labels=ISTIO_LABELS
    )
    udp_labels = ("reporter", "source_workload", "destination_workload", "destination_service")
    udp_sent = CounterFamily(
        "meshlens_udp_sent_bytes",
        "UDP payload bytes sent by the reporting socket to its peer.",
        labels=udp_labels,
    )
    udp_received = CounterFamily(
        "meshlens_udp_received_bytes",
        "UDP payload bytes received by the reporting socket from its peer.",
        labels=udp_labels,
    )
    udp_dgrams = CounterFamily(
        "meshlens_udp_datagrams",
        "UDP datagrams by direction, as the reporting socket saw them.",
        labels=(*udp_labels, "direction"),
    )
    for edge, t in sorted(totals.items()):
        if edge.protocol == "tcp":
            labels = istio_labels(edge)
            sent.add_metric(labels, t.response_bytes)
            received.add_metric(labels, t.request_bytes)
            opened.add_metric(labels, t.opened)
            closed.add_metric(labels, t.closed)
        else:
            labels = list(edge[:4])
            src_side = edge.reporter == "source"
            out_b, in_b = (
                (t.request_bytes, t.response_bytes)
                if src_side
                else (t.response_bytes, t.request_bytes)
            )
            out_d, in_d = (
                (t.request_calls, t.response_calls)
                if src_side
                else (t.response_calls, t.request_calls)
            )
            udp_sent.add_metric(labels, out_b)
            udp_received.add_metric(labels, in_b)
            udp_dgrams.add_metric([*labels, "sent"], out_d)
            udp_dgrams.add_metric([*labels, "received"], in_d)
    yield from (sent, received, opened, closed, udp_sent, udp_received, udp_dgrams)
    yield from health_families(totals)


EDGE_LABELS = ("reporter", "source_workload", "destination_workload", "destination_service")
# Upper bounds of tcpflow's log2 RTT slots, in seconds: slot i holds [2^i, 2^(i+1)) us.
RTT_BOUNDS = [2.0 ** (i + 1) / 1e6 for i in range(tcpflow.RTT_SLOTS - 1)]


def health_families(totals: dict[Edge, Totals]) -> Iterator[Metric]:
    """What the mesh cannot see, per TCP edge: RTT, retransmits, resets, failed connects."""
    from .agent import (
        HEALTH_RESETS_RECEIVED,
        HEALTH_RETRANS,
        HEALTH_RTT_HIST,
        HEALTH_RTT_SUM,
    )

    rtt = HistogramFamily(
        "meshlens_tcp_rtt_seconds",
        "Smoothed RTT samples of the edge's sockets (kernel srtt, log2 buckets).",
        labels=EDGE_LABELS,
    )
    retrans = CounterFamily(
        "meshlens_tcp_retransmits",
        "Retransmitted TCP segments by type (timeout, fast, syn; synack per listener).",
        labels=(*EDGE_LABELS, "type"),
    )
    resets = CounterFamily(
        "meshlens_tcp_resets",
        "TCP resets sent and received by the edge's sockets; reason from enum sk_rst_reason.",
        labels=(*EDGE_LABELS, "direction", "reason"),
    )
    failures = CounterFamily(
        "meshlens_tcp_connect_failures",
        "connect() attempts that ended before ESTABLISHED, by reason.",
        labels=(*EDGE_LABELS, "reason"),
    )
    for edge, t in sorted(totals.items()):
        if edge.protocol != "tcp":
            continue
        labels = list(edge[:4])
        h = t.health
        if h is not None:
            hist = h[HEALTH_RTT_HIST]
            if hist.any():
                cum = 0
                buckets = []
                for bound, n in zip([*RTT_BOUNDS, float("inf")], hist.tolist(), strict=True):
                    cum += n
                    buckets.append(("+Inf" if bound == float("inf") else repr(bound), cum))
                rtt.add_metric(labels, buckets, int(h[HEALTH_RTT_SUM]) / 1e6)
            for name, n in zip(tcpflow.RETRANS_NAMES, h[HEALTH_RETRANS].tolist(), strict=True):
                if n:
                    retrans.add_metric([*labels, name], n)
            if h[HEALTH_RESETS_RECEIVED]:
                # the kernel gives no reason for a reset it receives
                resets.add_metric([*labels, "received", UNKNOWN], int(h[HEALTH_RESETS_RECEIVED]))
        for (kind, reason), n in sorted(t.labeled.items()):
            if kind == "reset_sent":
                resets.add_metric([*labels, "sent", reason], n)
            elif kind == "connect_failed":
                failures.add_metric([*labels, reason], n)
            elif kind == "retrans":
                retrans.add_metric([*labels, reason], n)
    yield from (rtt, retrans, resets, failures)


class AgentCollector(Collector):
    """Refreshes the agent (rate-limited) and yields every family."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def collect(self) -> Iterator[Metric]:
        a = self.agent
        a.refresh()
        yield from edge_families(a.table.totals())
        for feat in a.features:
            yield from feat.families()
        yield from self_families(a)


def self_families(a: Agent) -> Iterator[Metric]:
    up = GaugeFamily(
        "meshlens_probe_up", "1 if the probe is loaded and attached.", labels=["probe"]
    )
    for st in a.statuses:
        up.add_metric([st.name], 1.0 if st.loaded else 0.0)
    yield up

    lost = CounterFamily(
        "meshlens_lost_events",
        "Kernel records dropped because a ring buffer was full.",
        labels=["probe"],
    )
    lost_bytes = CounterFamily(
        "meshlens_lost_bytes",
        "Bytes in records dropped because a ring buffer was full.",
        labels=["probe"],
    )
    full = CounterFamily(
        "meshlens_map_full",
        "Entries not created because a kernel map was full.",
        labels=["probe", "map"],
    )
    entries = GaugeFamily(
        "meshlens_map_entries", "Live entries in a kernel map.", labels=["probe", "map"]
    )
    capacity = GaugeFamily(
        "meshlens_map_capacity", "Capacity of a kernel map.", labels=["probe", "map"]
    )
    late = CounterFamily(
        "meshlens_late_records",
        "Records of bytes counted after a flow's final record.",
        labels=["probe"],
    )
    records = CounterFamily("meshlens_ring_records", "Ring buffer records read.", labels=["probe"])
    stale = CounterFamily(
        "meshlens_stale_entries",
        "Entries whose socket was no longer theirs at a poll (freed before the entry "
        "was made): their last counts went out as a final record.",
        labels=["probe"],
    )
    no_peer = CounterFamily(
        "meshlens_udp_unknown_peer_datagrams",
        "Datagrams read by recv()/read() on an unconnected UDP socket, which does not "
        "name the sender: counted, with peer 0.0.0.0:0 or [::]:0.",
    )
    if a.tcp:
        s = a.tcp.stats()
        lost.add_metric(["tcpflow"], s[tcpflow.Stat.EVENTS_LOST])
        lost_bytes.add_metric(["tcpflow"], s[tcpflow.Stat.BYTES_LOST])
        full.add_metric(["tcpflow", tcpflow.FLOWS_MAP], s[tcpflow.Stat.FLOWS_FULL])
        full.add_metric(["tcpflow", tcpflow.LISTENERS_MAP], s[tcpflow.Stat.LISTENERS_FULL])
        entries.add_metric(["tcpflow", tcpflow.FLOWS_MAP], _signed(s[tcpflow.Stat.LIVE]))
        capacity.add_metric(
            ["tcpflow", tcpflow.FLOWS_MAP], a.tcp.map(tcpflow.FLOWS_MAP).max_entries
        )
        late.add_metric(["tcpflow"], s[tcpflow.Stat.LATE])
        stale.add_metric(["tcpflow"], s[tcpflow.Stat.STALE])
    if a.udp:
        u = a.udp.stats()
        lost.add_metric(["udpflow"], u[udpflow.Stat.EVENTS_LOST])
        lost_bytes.add_metric(["udpflow"], u[udpflow.Stat.BYTES_LOST])
        full.add_metric(["udpflow", udpflow.FLOWS_MAP], u[udpflow.Stat.FLOWS_FULL])
        entries.add_metric(["udpflow", udpflow.FLOWS_MAP], _signed(u[udpflow.Stat.LIVE]))
        capacity.add_metric(
            ["udpflow", udpflow.FLOWS_MAP], a.udp.map(udpflow.FLOWS_MAP).max_entries
        )
        no_peer.add_metric([], u[udpflow.Stat.NO_PEER])
    for probe, n in a.self_stats.records.items():
        records.add_metric([probe], n)
    yield from (lost, lost_bytes, full, entries, capacity, late, stale, records, no_peer)

    run_time = CounterFamily(
        "meshlens_bpf_program_run_seconds",
        "Time the kernel spent in each BPF program (kernel.bpf_stats_enabled).",
        labels=["probe", "program"],
    )
    runs = CounterFamily(
        "meshlens_bpf_program_runs", "Times each BPF program ran.", labels=["probe", "program"]
    )
    for loaded in a.probes_and_chain():
        for prog, pst in loaded.program_stats().items():
            run_time.add_metric([loaded.name, prog], pst.run_time_ns / 1e9)
            runs.add_metric([loaded.name, prog], pst.run_cnt)
    yield from (run_time, runs)

    overflow = CounterFamily(
        "meshlens_series_overflow",
        "New edges folded into the overflow series because the series cap was reached.",
    )
    overflow.add_metric([], a.table.overflowed)
    yield overflow
    ru = resource.getrusage(resource.RUSAGE_SELF)
    cpu = CounterFamily("meshlens_agent_cpu_seconds", "CPU time used by the agent (user+system).")
    cpu.add_metric([], ru.ru_utime + ru.ru_stime)
    yield cpu
    rss = GaugeFamily("meshlens_agent_resident_memory_bytes", "Resident memory of the agent.")
    rss.add_metric([], _rss_bytes())
    yield rss
    refresh = CounterFamily(
        "meshlens_refresh_seconds", "Time spent reading maps and accounting, and how often."
    )
    refresh.add_metric([], a.self_stats.refresh_seconds)
    yield refresh
    refreshes = CounterFamily(
        "meshlens_refreshes", "Refreshes: reads of the maps and the records, then accounting."
    )
    refreshes.add_metric([], a.self_stats.refreshes)
    yield refreshes
    ident = CounterFamily("meshlens_identity_errors", "Failed lookups of addresses or names.")
    ident.add_metric([], a.identity.errors)
    yield ident
    start = GaugeFamily("meshlens_start_time_seconds", "Unix time the agent started.")
    start.add_metric([], a.started_at or time.time())
    yield start


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    except OSError:
        return 0
