"""The /metrics renderer and meshlens' families: the same samples prometheus_client
would give, parsed back."""

from __future__ import annotations

import os
import resource
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
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
from meshlens.families import CounterFamily, GaugeFamily, HistogramFamily

THEIRS = (CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily)
OURS = (CounterFamily, GaugeFamily, HistogramFamily)


def families(kinds: tuple[Any, Any, Any] = THEIRS) -> list[Metric]:
    counter, gauge, histogram = kinds
    c = counter(
        "istio_tcp_sent_bytes",
        'Bytes "sent"\nper edge \\ reporter',
        labels=["reporter", "source_workload"],
    )
    c.add_metric(["source", "web"], 12345)
    c.add_metric(["destination", 'we"ird\\name\nx'], 2**60 + 1)
    g = gauge("meshlens_map_entries", "Live entries.", labels=["map"])
    g.add_metric(["flows"], 3.5)
    g.add_metric(["empty"], float("nan"))
    # `le` sorts between these: each bucket's labels are split around it
    h = histogram("istio_request_duration_milliseconds", "Latency.", labels=["code", "method"])
    h.add_metric(["200", "GET"], [("0.5", 1), ("1.0", 3), ("+Inf", 4)], 2.75)
    h.add_metric(["500", "PUT"], [("0.5", 0), ("1.0", 0), ("+Inf", 2)], 9.5)
    ends = histogram("meshlens_backlog", "le sorts last here.", labels=["a"])
    ends.add_metric(["x"], [("1", 1), ("+Inf", 1)], float("nan"))
    nothing = histogram("meshlens_nolabels", "No sum: no _count and _sum.")
    nothing.add_metric([], [("1", 0), ("+Inf", 5)], None)
    plain = gauge("meshlens_up", "No labels.")
    plain.add_metric([], 1)
    return [c, g, h, ends, nothing, plain]


class _Fixed(Collector):
    def __init__(self, kinds: tuple[Any, Any, Any] = THEIRS) -> None:
        self.kinds = kinds

    def collect(self) -> Iterator[Metric]:
        yield from families(self.kinds)


def parsed(text: str) -> list[tuple[str, str, list[tuple[str, tuple[tuple[str, str], ...], str]]]]:
    out = []
    for fam in text_string_to_metric_families(text):
        samples = [
            (s.name, tuple(sorted(s.labels.items())), repr(float(s.value))) for s in fam.samples
        ]
        out.append((fam.name, fam.type, samples))
    return out


def latest(kinds: tuple[Any, Any, Any]) -> str:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Fixed(kinds))
    return generate_latest(reg).decode()


@pytest.mark.parametrize("kinds", [THEIRS, OURS], ids=["prometheus_client", "meshlens"])
def test_same_samples_as_prometheus_client(kinds: tuple[Any, Any, Any]) -> None:
    theirs = parsed(latest(THEIRS))
    assert parsed(Renderer().render(families(kinds)).decode()) == theirs


def test_our_families_are_prometheus_client_metrics() -> None:
    """Their samples are prometheus_client's: its own exposition of them is the same text."""
    assert latest(OURS) == latest(THEIRS)
    for ours, theirs in zip(families(OURS), families(THEIRS), strict=True):
        assert (ours.name, ours.type, ours.documentation) == (
            theirs.name,
            theirs.type,
            theirs.documentation,
        )
        assert repr(ours.samples) == repr(theirs.samples)  # NaN != NaN, its repr is equal
    with pytest.raises(TypeError):
        families(OURS)[0].samples = [families(THEIRS)[0].samples[0]]


def test_our_families_render_the_same_bytes() -> None:
    """Labels sorted by name, `le` in its place among them, integers exact."""
    ours = Renderer().render(families(OURS))
    assert ours == Renderer().render(families(THEIRS))
    assert b'_bucket{code="200",le="0.5",method="GET"} 1\n' in ours
    assert b'meshlens_backlog_bucket{a="x",le="1"} 1\n' in ours
    assert b'meshlens_backlog_sum{a="x"} NaN\n' in ours
    assert b'meshlens_nolabels_bucket{le="+Inf"} 5\n' in ours
    assert b"meshlens_nolabels_count" not in ours


label_text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=8)


@given(
    rows=st.lists(st.tuples(label_text, label_text, st.integers(0, 2**64)), max_size=6),
    names=st.sampled_from([("a", "b"), ("le_", "z"), ("A", "lf"), ("method", "code")]),
)
def test_families_fuzz(rows: list[tuple[str, str, int]], names: tuple[str, str]) -> None:
    r = Renderer()
    for _ in range(2):  # the second time from the cache
        ours: list[Metric] = []
        theirs: list[Metric] = []
        for kinds, out in ((OURS, ours), (THEIRS, theirs)):
            c = kinds[0]("c", "doc", labels=names)
            h = kinds[2]("h", "doc", labels=names)
            for a, b, n in rows:
                c.add_metric([a, b], n)
                h.add_metric([a, b], [("1", n), ("+Inf", n + 1)], n / 2)
            out += [c, h]
        assert r.render(ours) == Renderer().render(theirs)
        assert parsed(r.render(ours).decode()) == parsed(Renderer().render(theirs).decode())


def test_label_sets_rendered_once_and_forgotten_when_gone() -> None:
    for kinds in (THEIRS, OURS):
        r = Renderer()
        first = r.render(families(kinds))
        size = r._labels.size
        assert size > 0
        assert r.render(families(kinds)) == first  # from the cache
        assert r._labels.size == size
        many = kinds[1]("g", "x", labels=["i"])
        for i in range(3000):
            many.add_metric([str(i)], i)
        r.render([many])
        r.render([kinds[1]("g", "x", labels=["i"])])  # every series gone
        assert r._labels.size == 0


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


def test_an_urgent_scrape_runs_at_normal_priority() -> None:
    """Under SCHED_IDLE, a scrape while urgent() holds runs at normal priority:
    a starved idle thread must not hold the interpreter lock (system.py)."""
    from meshlens.system import run_when_idle

    if os.geteuid() != 0 and resource.getrlimit(resource.RLIMIT_NICE)[0] < 20:
        pytest.skip("leaving SCHED_IDLE needs CAP_SYS_NICE or RLIMIT_NICE")
    urgent = {"now": False}
    policies: list[int] = []

    def collect() -> list[Metric]:
        policies.append(os.sched_getscheduler(0))
        return families(OURS)

    server = exposition.serve(
        "127.0.0.1", 0, collect, thread_init=run_when_idle, urgent=lambda: urgent["now"]
    )
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
        for now in (False, True, False):
            urgent["now"] = now
            with urllib.request.urlopen(url, timeout=5) as resp:
                assert resp.status == 200
    finally:
        server.shutdown()
        server.server_close()
    assert policies == [os.SCHED_IDLE, os.SCHED_OTHER, os.SCHED_IDLE]
