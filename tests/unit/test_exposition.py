"""The /metrics renderer: the same samples prometheus_client would give, parsed back."""

from __future__ import annotations

import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from meshlens import exposition
from meshlens.exposition import Renderer, format_value


def families() -> list[Metric]:
    c = CounterMetricFamily(
        "istio_tcp_sent_bytes",
        'Bytes "sent"\nper edge \\ reporter',
        labels=["reporter", "source_workload"],
    )
    c.add_metric(["source", "web"], 12345)
    c.add_metric(["destination", 'we"ird\\name\nx'], 2**60 + 1)
    g = GaugeMetricFamily("meshlens_map_entries", "Live entries.", labels=["map"])
    g.add_metric(["flows"], 3.5)
    g.add_metric(["empty"], float("nan"))
    h = HistogramMetricFamily("istio_request_duration_milliseconds", "Latency.", labels=["code"])
    h.add_metric(["200"], [("0.5", 1), ("1.0", 3), ("+Inf", 4)], 2.75)
    plain = GaugeMetricFamily("meshlens_up", "No labels.")
    plain.add_metric([], 1)
    return [c, g, h, plain]


class _Fixed(Collector):
    def collect(self) -> Iterator[Metric]:
        yield from families()


def parsed(text: str) -> list[tuple[str, str, list[tuple[str, tuple[tuple[str, str], ...], str]]]]:
    out = []
    for fam in text_string_to_metric_families(text):
        samples = [
            (s.name, tuple(sorted(s.labels.items())), repr(float(s.value))) for s in fam.samples
        ]
        out.append((fam.name, fam.type, samples))
    return out


def test_same_samples_as_prometheus_client() -> None:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Fixed())
    theirs = parsed(generate_latest(reg).decode())
    ours = parsed(Renderer().render(families()).decode())
    assert ours == theirs


def test_label_sets_rendered_once_and_forgotten_when_gone() -> None:
    r = Renderer()
    first = r.render(families())
    assert r.render(families()) == first  # from the cache
    assert len(r._labels) == 8  # histogram buckets have their own (le)
    many = GaugeMetricFamily("g", "x", labels=["i"])
    for i in range(3000):
        many.add_metric([str(i)], i)
    r.render([many])
    r.render([GaugeMetricFamily("g", "x", labels=["i"])])  # every series gone
    assert len(r._labels) == 0


@pytest.mark.parametrize(
    ("value", "text"),
    [(0, "0"), (2**63 + 7, "9223372036854775815"), (3.0, "3.0"), (0.25, "0.25"),
     (float("inf"), "+Inf"), (float("-inf"), "-Inf"), (float("nan"), "NaN"), (1e300, "1e+300")],
)  # fmt: skip
def test_values(value: float, text: str) -> None:
    assert format_value(value) == text


def test_served_over_http_and_errors_are_answers() -> None:
    calls = {"n": 0}

    def collect() -> list[Metric]:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("map read failed")
        return families()

    server = exposition.serve("127.0.0.1", 0, collect)
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        with urllib.request.urlopen(base + "/metrics", timeout=5) as resp:
            assert resp.headers["Content-Type"] == exposition.CONTENT_TYPE
            assert parsed(resp.read().decode())[0][0] == "istio_tcp_sent_bytes"
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(base + "/metrics", timeout=5)
        assert err.value.code == 500
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(base + "/nothing", timeout=5)
        assert err.value.code == 404
        with urllib.request.urlopen(base + "/metrics", timeout=5) as resp:
            assert resp.status == 200  # still serving
    finally:
        server.shutdown()
        server.server_close()


def test_server_sleeps_between_scrapes_and_stops_at_once() -> None:
    """No poll timer: the serving thread sleeps until a connection or shutdown()."""
    tid: list[int] = []
    server = exposition.serve(
        "127.0.0.1", 0, families, thread_init=lambda: tid.append(threading.get_native_id())
    )
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            assert resp.status == 200
        assert tid

        def sleeps() -> int:
            with open(f"/proc/self/task/{tid[0]}/status") as f:
                return next(
                    int(x.split()[1]) for x in f if x.startswith("voluntary_ctxt_switches:")
                )

        time.sleep(0.3)  # back in select(), after the scrape (and the GIL) let it go
        before = sleeps()
        time.sleep(1.5)  # the standard serve_forever() woke three times in this
        assert sleeps() == before
        with urllib.request.urlopen(url, timeout=5) as resp:
            assert resp.status == 200  # and still serves
    finally:
        t0 = time.monotonic()
        server.shutdown()
        server.server_close()
    assert time.monotonic() - t0 < 0.5


def test_a_port_in_use_is_an_oserror_and_leaks_nothing() -> None:
    server = exposition.serve("127.0.0.1", 0, families)
    try:
        fds = len(os.listdir("/proc/self/fd"))
        with pytest.raises(OSError):
            exposition.serve("127.0.0.1", server.server_address[1], families)
        assert len(os.listdir("/proc/self/fd")) == fds
    finally:
        server.shutdown()
        server.server_close()
