"""HTTP/1.x request metrics without a proxy: Istio's istio_requests_total,
istio_request_duration_milliseconds, istio_request_bytes and
istio_response_bytes, from the kernel (bpf/http.bpf.c, docs/http.md).

The kernel parses request and status lines from the packets of local TCP
sockets, matches responses to requests per connection and counts each exchange
in an aggregate map; a refresh reads that map in one batch (httpmsg.HttpBook
turns rows into per-label totals). No per-request work reaches user space.
`meshlens trace http` streams rate-limited samples from a ring buffer."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
from prometheus_client.core import Metric

from .. import httpmsg
from ..exporter import ISTIO_LABELS, istio_labels
from ..families import CounterFamily, GaugeFamily, HistogramFamily
from ..probes import http as probe
from ..stream import stream
from . import Feature, TraceTool, kernel_events

if TYPE_CHECKING:
    from ..agent import Agent

_AT = ISTIO_LABELS.index("response_flags")
# Istio's HTTP label set (response_code and grpc_response_status before
# response_flags), plus the request method.
LABELS = (*ISTIO_LABELS[:_AT], "response_code", "grpc_response_status", *ISTIO_LABELS[_AT:],
          "request_method")  # fmt: skip
ROUTE_LABEL = "request_route"


def labels_of(key: httpmsg.SeriesKey, routes: bool) -> list[str]:
    base = istio_labels(key.edge)
    out = [*base[:_AT], key.code, "", *base[_AT:], key.method]
    if routes:
        out.append(key.route)
    return out


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


class HttpFeature(Feature):
    name = "http"
    help = "HTTP/1.x requests: Istio's request count, duration and sizes, per status and method"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("http")
        g.add_argument(
            "--http-routes", action="store_true",
            help="add a request_route label: the path with ids and hashes collapsed",
        )  # fmt: skip
        g.add_argument(
            "--http-max-routes", type=int, default=100, metavar="N",
            help="distinct routes (then route=\"other\")",
        )  # fmt: skip

    def __init__(self, agent: Agent, options: dict[str, Any]) -> None:
        super().__init__(agent, options)

        def opt(key: str, default: Any) -> Any:
            v = options.get(key)
            return default if v is None else v

        self.routes = bool(opt("http_routes", False))
        self.probe = probe.HttpProbe(
            max_series=int(opt("http_max_series", 16384)),
            routes=self.routes,
            max_routes=max(1, int(opt("http_max_routes", 100))),
        )
        self.probes = [self.probe]
        self.book = httpmsg.HttpBook(agent.namer, max_series=agent.config.max_series)
        self._read: tuple[np.ndarray, np.ndarray, dict[int, Any], dict[int, str] | None] | None
        self._read = None
        self._stats: dict[probe.Stat, int] = {}
        self._routes: dict[int, str] = {}

    def refresh(self) -> None:
        keys, vals = self.probe.read_aggs()
        ids, recs = self.probe.read_edges()
        edges = {int(i): recs[n] for n, i in enumerate(ids.tolist())}
        routes = None
        if self.routes:
            for rid, raw in self.probe.read_routes().items():
                self._routes.setdefault(rid, httpmsg.route_text(raw))
            routes = self._routes
        self._read = (keys, vals, edges, routes)
        self._stats = self.probe.stats()

    def account(self) -> None:
        if self._read is not None:
            self.book.update(*self._read)
            self._read = None

    def families(self) -> Iterator[Metric]:
        labels = (*LABELS, ROUTE_LABEL) if self.routes else LABELS
        total = CounterFamily(
            "istio_requests", "HTTP requests (with a response) by status and method.", labels=labels
        )
        dur = HistogramFamily(
            "istio_request_duration_milliseconds",
            "Request's first byte to response's last byte, as this socket saw them.",
            labels=labels,
        )
        ttfb = HistogramFamily(
            "meshlens_http_response_first_byte_milliseconds",
            "Request's first byte to response's first byte, as this socket saw them.",
            labels=labels,
        )
        req = HistogramFamily(
            "istio_request_bytes", "HTTP request body sizes (decoded when chunked).", labels=labels
        )
        resp = HistogramFamily(
            "istio_response_bytes",
            "HTTP response body sizes (decoded when chunked).",
            labels=labels,
        )
        ms_bounds = httpmsg.DURATION_BOUNDS_MS
        for key, s in sorted(self.book.totals().items()):
            lv = labels_of(key, self.routes)
            total.add_metric(lv, s.count)
            counts, ns = s.hist("duration")
            dur.add_metric(lv, httpmsg.cumulative(counts, ms_bounds, httpmsg.le_text), ns / 1e6)
            counts, ns = s.hist("ttfb")
            ttfb.add_metric(lv, httpmsg.cumulative(counts, ms_bounds, httpmsg.le_text), ns / 1e6)
            counts, n = s.hist("request")
            req.add_metric(lv, httpmsg.cumulative(counts, httpmsg.SIZE_BOUNDS, httpmsg.le_text), n)
            counts, n = s.hist("response")
            resp.add_metric(lv, httpmsg.cumulative(counts, httpmsg.SIZE_BOUNDS, httpmsg.le_text), n)
        yield from (total, dur, ttfb, req, resp)
        st = self._stats
        unparsed = CounterFamily(
            "meshlens_http_unparsed",
            "HTTP messages on tracked connections that were not counted, by reason "
            "(the connection stops being parsed at the first one).",
            labels=("reason",),
        )
        for stat, reason in probe.UNPARSED.items():
            unparsed.add_metric([reason], st.get(stat, 0))
        yield unparsed
        events = (
            (probe.Stat.CONNS_FULL, "connections_map_full"),
            (probe.Stat.EDGES_FULL, "edges_map_full"),
            (probe.Stat.AGGS_FULL, "aggregates_map_full"),
            (probe.Stat.CARRY_FULL, "carry_map_full"),
            (probe.Stat.ROUTES_FULL, "route_other"),
            (probe.Stat.SAMPLES, "sample"),
            (probe.Stat.SAMPLES_LOST, "sample_lost"),
        )
        yield kernel_events(
            "http",
            "HTTP probe bookkeeping: entries not created because a map was full, "
            'trace samples sent and lost, requests counted under route="other".',
            ((label, st.get(stat, 0)) for stat, label in events),
        )
        live = GaugeFamily(
            "meshlens_http_connections", "Connections whose HTTP messages are being followed."
        )
        live.add_metric([], _signed(st.get(probe.Stat.LIVE, 0)))
        yield live
        over = CounterFamily(
            "meshlens_http_series_overflow",
            "HTTP series folded into the overflow series because the series cap was reached.",
        )
        over.add_metric([], self.book.overflowed)
        yield over


# -- meshlens trace http --------------------------------------------------------------


class HttpTrace(TraceTool):
    name = "http"
    help = "sampled HTTP/1.x requests: method, host, path, status, latency, sizes"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "-r", "--rate", type=float, default=10.0, metavar="N",
            help="at most N samples per second (kernel rate limit; default 10)",
        )  # fmt: skip

    @classmethod
    def run(cls, args: argparse.Namespace) -> int:
        if not 0 < args.rate <= 100000:
            print("meshlens: --rate must be in (0, 100000]", file=sys.stderr)
            return 2
        p = probe.HttpProbe(samples_per_second=args.rate, max_series=4096)

        def rows(recs: list[bytes]) -> Iterator[tuple[dict[str, Any], str]]:
            for smp in httpmsg.decode_samples(probe.decode_samples(recs)):
                yield smp.as_dict(), httpmsg.render(smp)

        return stream(p, probe.SAMPLES_MAP, httpmsg.HEADER, rows, args)
