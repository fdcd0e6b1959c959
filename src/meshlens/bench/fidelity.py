"""Fidelity: what the observers counted against the ground truth of the same run.

Ground truth, per protocol:
- HTTP/1.1 load generator → frontend: requests the load generator made (its own record,
  plus the six-page visit), and the frontend's own socket counters for the load
  generator's address (connections, bytes its recv/send calls moved);
- gRPC between services: calls from each client's own counters; connections and bytes
  from the kernel's TCP_INFO of the client's established sockets (bytes_acked - 1 for
  the SYN, bytes_received), read after the load, while the channels are still open;
- redis: the cart's client counters (connections, exact bytes sent and received).

Observers: meshlens (its /metrics after the load, both reporters) in the meshlens runs;
the sidecars' own stats (admin /stats) in the envoy runs, compared against the truth of
the hop they see (app ↔ its sidecar on loopback)."""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any

from ..shop import SERVICES
from . import envoy as envoy_cfg
from .measure import TcpInfo

if TYPE_CHECKING:
    from .runner import Run

Row = dict[str, Any]
TCP_METRICS = {
    "connections": "istio_tcp_connections_opened_total",
    "request_bytes": "istio_tcp_received_bytes_total",
    "response_bytes": "istio_tcp_sent_bytes_total",
}
ENVOY_HCM = {
    "connections": "downstream_cx_total",
    "request_bytes": "downstream_cx_rx_bytes_total",
    "response_bytes": "downstream_cx_tx_bytes_total",
}


def _edge_sums(
    samples: list[tuple[str, dict[str, str], float]], ns: dict[str, str]
) -> dict[tuple[str, str, str, str], float]:
    """(metric, reporter, source service, destination service) -> value, lab hosts only."""
    out: dict[tuple[str, str, str, str], float] = defaultdict(float)
    for name, labels, value in samples:
        src = ns.get(labels.get("source_workload", ""))
        dst = ns.get(labels.get("destination_workload", ""))
        if src and dst:
            out[(name, labels.get("reporter", ""), src, dst)] += value
    return out


def _ss_edge(infos: list[TcpInfo], remote: tuple[str, int]) -> dict[str, int]:
    mine = [i for i in infos if i.remote == remote]
    return {
        "connections": len(mine),
        "request_bytes": sum(i.sent_if_active for i in mine),
        "response_bytes": sum(i.bytes_received for i in mine),
    }


def _envoy_stat(stats: dict[str, int], prefix: str, name: str) -> int | None:
    v = stats.get(f"{prefix}.{name}")
    return v


def fidelity(run: Run, ss: dict[str, list[TcpInfo]], scraped: dict[str, Any]) -> dict[str, Any]:
    rows: list[Row] = []
    ns = {h.name: svc for svc, h in run.hosts.items()}
    counters = run.counters
    load = run.result.load
    lg_addr = run.hosts["loadgen"].addr
    visit = load.get("visit", {})

    def row(
        protocol: str,
        edge: str,
        metric: str,
        truth: int | None,
        source: str,
        observer: str,
        observed: float | None,
        reporter: str = "",
    ) -> None:
        rows.append(
            {
                "protocol": protocol,
                "edge": edge,
                "metric": metric,
                "truth": truth,
                "truth_source": source,
                "observer": observer,
                "observed": None if observed is None else int(observed),
                "reporter": reporter,
            }
        )

    fe = counters.get("frontend", {}).get("http", {})
    locust_requests = int(load.get("requests", 0)) + int(visit.get("requests", 0))
    edge_sums = _edge_sums(scraped["agent"], ns) if "agent" in scraped else {}
    envoy = scraped.get("envoy", {})

    # -- HTTP/1.1: load generator -> frontend ----------------------------------------
    http_edge = "loadgen→frontend"
    if run.mode == "meshlens":
        have_http = "http" in run.result.probes
        for reporter in ("source", "destination"):
            got = (
                edge_sums.get(("istio_requests_total", reporter, "loadgen", "frontend"), 0.0)
                if have_http
                else None
            )
            row(
                "http/1.1",
                http_edge,
                "requests",
                locust_requests,
                "load generator",
                "meshlens",
                got,
                reporter,
            )
    if run.mode == "envoy":
        got = envoy.get("frontend", {}).get("http.inbound|8080||.downstream_rq_total")
        row("http/1.1", http_edge, "requests", locust_requests, "load generator", "envoy", got)
    peer = fe.get("peers", {}).get(lg_addr)
    if run.mode == "meshlens" and peer:
        truth = {
            "connections": peer["connections"],
            "request_bytes": peer["bytes_received"],
            "response_bytes": peer["bytes_sent"],
        }
        for metric, prom in TCP_METRICS.items():
            for reporter in ("source", "destination"):
                got = edge_sums.get((prom, reporter, "loadgen", "frontend"), 0.0)
                row(
                    "http/1.1",
                    http_edge,
                    metric,
                    truth[metric],
                    "frontend sockets",
                    "meshlens",
                    got,
                    reporter,
                )

    # -- gRPC between services -----------------------------------------------------------
    for client, svc in SERVICES.items():
        calls = counters.get(client, {}).get("upstreams", {}).get("calls", {})
        for up in svc.upstreams:
            usvc = SERVICES[up]
            if usvc.kind != "grpc":
                continue
            edge = f"{client}→{up}"
            n_calls = sum(v for k, v in calls.items() if k.split("/", 1)[0] == up)
            prefix = f"outbound|{usvc.port}||{up}"
            if run.mode == "envoy":
                stats = envoy.get(client, {})
                got = stats.get(f"cluster.{prefix}.upstream_rq_total")
                row("grpc", edge, "requests", n_calls, "client calls", "envoy", got)
                truth = _ss_edge(ss.get(client, []), ("127.0.0.1", envoy_cfg.outbound_port(up)))
                for metric, stat in ENVOY_HCM.items():
                    got = stats.get(f"http.{prefix}.{stat}")
                    row("grpc", edge, metric, truth[metric], "kernel TCP_INFO", "envoy", got)
            elif run.mode == "meshlens":
                row("grpc", edge, "requests", n_calls, "client calls", "meshlens", None)
                truth = _ss_edge(ss.get(client, []), (run.hosts[up].addr, usvc.port))
                for metric, prom in TCP_METRICS.items():
                    for reporter in ("source", "destination"):
                        got = edge_sums.get((prom, reporter, client, up), 0.0)
                        row(
                            "grpc",
                            edge,
                            metric,
                            truth[metric],
                            "kernel TCP_INFO",
                            "meshlens",
                            got,
                            reporter,
                        )

    # -- redis: cart -> redis ---------------------------------------------------------------
    rc = counters.get("cart", {}).get("redis")
    if rc:
        truth = {
            "connections": rc["connections"],
            "request_bytes": rc["bytes_sent"],
            "response_bytes": rc["bytes_received"],
        }
        if run.mode == "meshlens":
            for metric, prom in TCP_METRICS.items():
                for reporter in ("source", "destination"):
                    got = edge_sums.get((prom, reporter, "cart", "redis"), 0.0)
                    row(
                        "redis",
                        "cart→redis",
                        metric,
                        truth[metric],
                        "redis client",
                        "meshlens",
                        got,
                        reporter,
                    )
        if run.mode == "envoy":
            stats = envoy.get("cart", {})
            prefix = f"tcp.outbound|{SERVICES['redis'].port}||redis"
            for metric, stat in ENVOY_HCM.items():
                row(
                    "redis",
                    "cart→redis",
                    metric,
                    truth[metric],
                    "redis client",
                    "envoy",
                    stats.get(f"{prefix}.{stat}"),
                )
    out: dict[str, Any] = {
        "rows": rows,
        "scrapes_during_load": scraped.get("scrapes_during_load", 0),
        "readings": scraped.get("readings", 1),  # >1: traffic after the load, read again
    }
    if "agent" in scraped:  # the agent's own health: anything lost or folded shows here
        health = {
            "meshlens_series_overflow_total",
            "meshlens_lost_events_total",
            "meshlens_lost_bytes_total",
            "meshlens_map_full_total",
        }
        out["agent_self"] = {
            name: out_sum
            for name in sorted(health)
            if (out_sum := sum(v for n, _, v in scraped["agent"] if n == name)) or True
        }
        others = {
            labels.get("destination_workload", "")
            for n, labels, _ in scraped["agent"]
            if n == "istio_tcp_connections_opened_total"
        } - set(ns)
        out["agent_other_workloads"] = len(others)
    return out
