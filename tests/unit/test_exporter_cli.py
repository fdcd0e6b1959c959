"""Exposition (Istio names, labels, directions) and CLI argument handling."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest
from prometheus_client.core import CounterMetricFamily

from meshlens.accounting import Edge, Totals
from meshlens.cli import build_parser, listen_address
from meshlens.exporter import ISTIO_LABELS, edge_families, istio_labels
from meshlens.summary import summary_lines


def families() -> dict[str, CounterMetricFamily]:
    totals = {
        Edge("source", "web", "cart", "cart:80", "tcp"): Totals(7919, 104729, 3, 5, 2, 1),
        Edge("destination", "web", "cart", "cart:80", "tcp"): Totals(7919, 104729, 5, 3, 2, 1),
        Edge("source", "dig", "dns", "dns:53", "udp"): Totals(97, 13, 1, 1, 0, 0),
    }
    return {f.name: f for f in edge_families(totals)}  # type: ignore[misc]


def value(fam: CounterMetricFamily, **labels: str) -> float:
    hits = [s.value for s in fam.samples if all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(hits) == 1, hits
    return hits[0]


def test_istio_tcp_directions_for_both_reporters() -> None:
    f = families()
    for reporter in ("source", "destination"):
        assert value(f["istio_tcp_received_bytes"], reporter=reporter) == 7919  # request
        assert value(f["istio_tcp_sent_bytes"], reporter=reporter) == 104729  # response
        assert value(f["istio_tcp_connections_opened"], reporter=reporter) == 2
        assert value(f["istio_tcp_connections_closed"], reporter=reporter) == 1


def test_istio_label_set_complete() -> None:
    f = families()
    sample = f["istio_tcp_sent_bytes"].samples[0]
    assert tuple(sorted(sample.labels)) == tuple(sorted(ISTIO_LABELS))
    assert sample.labels["request_protocol"] == "tcp"
    assert sample.name == "istio_tcp_sent_bytes_total"
    labels = dict(
        zip(ISTIO_LABELS, istio_labels(Edge("destination", "a", "b", "b:1", "tcp")), strict=True)
    )
    assert labels["connection_security_policy"] == "none"
    assert labels["destination_service_name"] == "b"


def test_udp_families_use_own_socket_directions() -> None:
    f = families()
    assert value(f["meshlens_udp_sent_bytes"], reporter="source") == 97
    assert value(f["meshlens_udp_received_bytes"], reporter="source") == 13
    assert value(f["meshlens_udp_datagrams"], reporter="source", direction="sent") == 1


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("127.0.0.1:9464", ("127.0.0.1", 9464)),
        (":9000", ("0.0.0.0", 9000)),
        ("[::1]:80", ("::1", 80)),
        ("localhost:1", ("localhost", 1)),
    ],
)
def test_listen_address_ok(text: str, want: tuple[str, int]) -> None:
    assert listen_address(text) == want


@pytest.mark.parametrize("text", ["nonsense", "1.2.3.4:99999", ":0", "host:80", "1.2.3.4:", "::1"])
def test_listen_address_bad(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        listen_address(text)


@pytest.mark.parametrize(
    "argv",
    [["run", "--bogus"], ["run", "--listen", "x"], ["top", "-1"], ["trace", "nothing"], []],
)
def test_bad_usage_is_one_line_exit_2(argv: list[str]) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "meshlens.cli", *argv], capture_output=True, text=True, timeout=30
    )
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith("meshlens: error:")


def test_top_follows_interval_count() -> None:
    args = build_parser().parse_args(["top", "2", "5"])
    assert (args.interval, args.count) == (2.0, 5)


def test_summary_ranks_by_rate() -> None:
    a = Edge("source", "web", "cart", "cart:80", "tcp")
    b = Edge("source", "web", "db", "db:5432", "tcp")
    prev = {a: Totals(0, 0), b: Totals(0, 0)}
    cur = {a: Totals(10, 0), b: Totals(5000, 0)}
    lines = summary_lines(cur, prev, 1.0)
    assert "db:5432" in lines[1] and "cart:80" in lines[2]
    assert "no traffic" in summary_lines(prev, prev, 1.0)[0]
