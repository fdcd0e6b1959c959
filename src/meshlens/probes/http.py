"""HTTP/1.x request metrics (bpf/http.bpf.c): request and status lines parsed
from the bytes of every TCP send()/recv(), read from the caller's own buffers at
the socket tracepoints (behind the socket chain); responses matched to requests
per connection in the kernel and counted there per (edge, route, status,
method) with Envoy's duration buckets and Istio's size buckets. A rate-limited
ring buffer of samples feeds `meshlens trace http`. See docs/http.md."""

from __future__ import annotations

import enum

import numpy as np

from ..layout import Layout, layout
from .base import Probe
from .sockchain import Slot

CONNS_MAP = "http_conns"
EDGES_MAP = "http_edges"
AGGS_MAP = "http_aggs"
ROUTES_MAP = "http_routes"
PENDING_MAP = "http_pending"
SAMPLES_MAP = "http_samples"
STATS_MAP = "http_stats"

DUR_BUCKETS = 20  # HTTP_DUR_BUCKETS: 19 bounds + +Inf
SIZE_BUCKETS = 11  # HTTP_SIZE_BUCKETS: 10 bounds + +Inf
PATH_LEN = 128
HOST_LEN = 64
ROUTE_LEN = 128

# Envoy's default histogram bounds (ms): istio_request_duration_milliseconds.
DURATION_BOUNDS_MS = (
    0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000,
    30000, 60000, 300000, 600000, 1800000, 3600000,
)  # fmt: skip
# Istio's bounds for istio_request_bytes / istio_response_bytes.
SIZE_BOUNDS = tuple(10**i for i in range(10))
assert len(DURATION_BOUNDS_MS) == DUR_BUCKETS - 1 and len(SIZE_BOUNDS) == SIZE_BUCKETS - 1

ROUTE_NONE = 0
ROUTE_OTHER = 1


class Method(enum.IntEnum):
    OTHER = 0
    GET = 1
    HEAD = 2
    POST = 3
    PUT = 4
    DELETE = 5
    CONNECT = 6
    OPTIONS = 7
    TRACE = 8
    PATCH = 9


class Role(enum.IntEnum):
    CLIENT = 1
    SERVER = 2


class Stat(enum.IntEnum):
    CONNS_FULL = 0
    EDGES_FULL = 1
    AGGS_FULL = 2
    SAMPLES_LOST = 3
    LIVE = 4
    CARRY_FULL = 5
    BAD_REQUEST = 6
    BAD_RESPONSE = 7
    BAD_FRAMING = 8
    HEADERS_TOO_BIG = 9
    GAP = 10
    PIPELINE_FULL = 11
    UNMATCHED = 12
    NO_RESPONSE = 13
    TOO_COMPLEX = 14
    SAMPLES = 15
    ROUTES_FULL = 16


# Kernel counters -> the `reason` label of meshlens_http_unparsed_total.
UNPARSED = {
    Stat.BAD_REQUEST: "request_line",
    Stat.BAD_RESPONSE: "status_line",
    Stat.BAD_FRAMING: "framing",
    Stat.HEADERS_TOO_BIG: "headers_too_big",
    Stat.GAP: "gap",
    Stat.PIPELINE_FULL: "pipeline_full",
    Stat.UNMATCHED: "unmatched_response",
    Stat.NO_RESPONSE: "no_response",
    Stat.TOO_COMPLEX: "too_complex",
}

EDGE = layout(
    "http_edge",
    ("netns", "u64"),
    ("cgroup_id", "u64"),
    ("peer_netns", "u64"),
    ("peer_cgroup_id", "u64"),
    ("laddr", "u8[16]"),
    ("raddr", "u8[16]"),
    ("comm", "char[16]"),
    ("peer_comm", "char[16]"),
    ("port", "u16"),
    ("family", "u16"),
    ("role", "u8"),
    ("peer_known", "u8"),
    ("__pad0", "u16"),
    ("tgid", "u32"),
    ("peer_tgid", "u32"),
)

AGG_KEY = layout(
    "http_agg_key",
    ("edge", "u64"),
    ("peer_edge", "u64"),
    ("route", "u32"),
    ("status", "u16"),
    ("method", "u8"),
    ("__pad0", "u8"),
)

AGG = layout(
    "http_agg",
    ("duration_ns_sum", "u64"),
    ("ttfb_ns_sum", "u64"),
    ("request_bytes_sum", "u64"),
    ("response_bytes_sum", "u64"),
    ("duration_buckets", f"u64[{DUR_BUCKETS}]"),
    ("ttfb_buckets", f"u64[{DUR_BUCKETS}]"),
    ("request_buckets", f"u64[{SIZE_BUCKETS}]"),
    ("response_buckets", f"u64[{SIZE_BUCKETS}]"),
)

SAMPLE = layout(
    "http_sample",
    ("end_ns", "u64"),
    ("duration_ns", "u64"),
    ("ttfb_ns", "u64"),
    ("request_bytes", "u64"),
    ("response_bytes", "u64"),
    ("netns", "u64"),
    ("tgid", "u32"),
    ("status", "u16"),
    ("method", "u8"),
    ("role", "u8"),
    ("laddr", "u8[16]"),
    ("raddr", "u8[16]"),
    ("lport", "u16"),
    ("rport", "u16"),
    ("family", "u16"),
    ("path_len", "u8"),
    ("host_len", "u8"),
    ("comm", "char[16]"),
    ("path", f"u8[{PATH_LEN}]"),
    ("host", f"u8[{HOST_LEN}]"),
)

ROUTE = layout("http_route", ("text", f"u8[{ROUTE_LEN}]"), ("len", "u32"), ("__pad0", "u32"))

# A socket passed over without a lookup (http_quiet; sk 0: a free slot).
QUIET = layout("http_quiet", ("sk", "u64"), ("snd_first", "u32"), ("rcv_first", "u32"))
QUIET_MAP = "http_quiet"

EDGE_ID_DTYPE = np.dtype("<u8")
ROUTE_ID_DTYPE = np.dtype("<u4")


class HttpProbe(Probe):
    """raw_tp programs behind the socket chain on every TCP send()/recv(), which
    read the call's bytes from the caller's buffers, plus inet_sock_set_state for
    socket owners and connection ends (bpf/http.bpf.c, docs/http.md)."""

    name = "http"
    layouts: tuple[Layout, ...] = (EDGE, AGG_KEY, AGG, SAMPLE, ROUTE, QUIET)

    def __init__(
        self,
        max_series: int = 16384,
        routes: bool = False,
        max_routes: int = 100,
        samples_per_second: float = 0.0,
        ringbuf_bytes: int = 256 << 10,
    ) -> None:
        super().__init__()
        if max_routes < 1:
            raise ValueError("max_routes must be at least 1")
        if samples_per_second < 0:
            raise ValueError("samples_per_second must not be negative")
        self.max_series = max_series
        self.routes = routes
        self.max_routes = max_routes
        self.samples_per_second = samples_per_second
        self.ringbuf_bytes = ringbuf_bytes

    # first on a TCP socket's calls, then dns (bpf/sockchain.h)
    sockchain_slot = Slot.TCP_APP

    def configure(self) -> None:
        assert self.obj
        self.obj.maps[EDGES_MAP].set_max_entries(self.max_series)
        self.obj.maps[AGGS_MAP].set_max_entries(self.max_series)
        self.obj.maps[ROUTES_MAP].set_max_entries(self.max_routes)
        self.obj.maps[SAMPLES_MAP].set_max_entries(self.ringbuf_bytes)
        interval = int(1e9 / self.samples_per_second) if self.samples_per_second else 0
        self.set_global("sample_interval_ns", interval)
        self.set_global("routes_on", int(self.routes))
        # `trace http` wants each sample now; nothing else reads this ring.
        self.set_global("wakeup_bytes", 0)

    def read_aggs(self) -> tuple[np.ndarray, np.ndarray]:
        """Every aggregate as (keys, values) structured arrays, in one batch read."""
        keys, vals, n = self.map(AGGS_MAP).lookup_batch()
        return AGG_KEY.decode_many(keys, n), AGG.decode_many(vals, n)

    def read_edges(self) -> tuple[np.ndarray, np.ndarray]:
        keys, vals, n = self.map(EDGES_MAP).lookup_batch()
        return np.frombuffer(keys, EDGE_ID_DTYPE, n), EDGE.decode_many(vals, n)

    def read_routes(self) -> dict[int, bytes]:
        keys, vals, n = self.map(ROUTES_MAP).lookup_batch()
        ids = np.frombuffer(keys, ROUTE_ID_DTYPE, n).tolist()
        rows = ROUTE.decode_many(vals, n)
        out = {}
        for rid, row in zip(ids, rows, strict=True):
            length = min(int(row["len"]), ROUTE_LEN)
            out[rid] = bytes(row["text"])[:length]
        return out

    def stats(self) -> dict[Stat, int]:
        sums = self.map(STATS_MAP).percpu_sums()
        return {s: sums[s] for s in Stat}


def decode_samples(records: list[bytes]) -> np.ndarray:
    return SAMPLE.decode_many(b"".join(records), len(records))
