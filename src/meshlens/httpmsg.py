"""The user side of HTTP request metrics, free of BPF so it is unit-tested and
fuzzed without root: route templating (the same rules as the kernel's
http_route_of), label sets, kernel aggregate rows -> monotonic per-label
totals and Prometheus histograms, and trace samples -> printable records.

Privacy: nothing here ever sees a body, a header other than Host, or a query
string; the kernel does not copy them. Paths reach a label only through
template() and the route table's bound, and the trace stream only as
printable ASCII."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
from prometheus_client.utils import floatToGoString

from .accounting import UNKNOWN, Edge, Namer, Sock, ip_text, service_name

OVERFLOW = "overflow"
OTHER_ROUTE = "other"
DUR_BUCKETS = 20
SIZE_BUCKETS = 11
PATH_LEN = 128  # HTTP_PATH_LEN: path bytes the kernel looks at
ROUTE_LEN = 128  # HTTP_ROUTE_LEN: route text bytes it keeps

METHODS = ("OTHER", "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")

# Envoy's default histogram bounds (ms) and Istio's size bounds (bytes).
DURATION_BOUNDS_MS = (
    0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000,
    30000, 60000, 300000, 600000, 1800000, 3600000,
)  # fmt: skip
SIZE_BOUNDS = tuple(10**i for i in range(SIZE_BUCKETS - 1))


def method_name(code: int) -> str:
    return METHODS[code] if 0 <= code < len(METHODS) else "OTHER"


# -- routes -------------------------------------------------------------------------

_HEXISH = re.compile(r"[0-9a-fA-F-]+")


def _segment(seg: str) -> str:
    digits = sum(ch.isdigit() for ch in seg)
    if seg and digits == len(seg):
        return "{id}"
    if digits and ((len(seg) >= 8 and _HEXISH.fullmatch(seg)) or len(seg) >= 16):
        return "{hash}"
    return seg


def template(target: bytes | str) -> str:
    """A request target as a low-cardinality route, as the kernel makes it:
    the path only (absolute-form loses scheme and authority; query and fragment
    go), at most PATH_LEN bytes of it, cut at the first byte that is not
    printable ASCII; each '/'-separated segment that is all digits becomes
    {id}, one with a digit that is hex (and '-') of 8+ bytes or any 16+ bytes
    becomes {hash}; the result is cut at ROUTE_LEN bytes."""
    raw = target.encode("latin-1", "replace") if isinstance(target, str) else bytes(target)
    if raw[:7].lower() == b"http://":
        i = 7
        while i < len(raw) and i < 7 + 255 and raw[i] != 0x2F and 0x21 <= raw[i] <= 0x7E:
            i += 1
        first = raw[:1]
        raw = raw[i:]
    else:
        first = raw[:1]
    path = bytearray()
    for b in raw[:PATH_LEN]:
        if b in (0x3F, 0x23) or not 0x21 <= b <= 0x7E:  # '?', '#', not printable
            break
        path.append(b)
    text = path.decode("ascii")
    out = "/".join(_segment(s) for s in text.split("/")) if text else ""
    out = out[:ROUTE_LEN]
    if not out:
        out = "*" if first == b"*" else "/"
    return out


def route_text(raw: bytes) -> str:
    """Route text from the kernel's route table, made safe for a label."""
    return printable(raw, ROUTE_LEN) or "/"


def printable(raw: bytes, limit: int) -> str:
    """Printable ASCII only (anything else becomes '?'), at most `limit` bytes."""
    return "".join(chr(b) if 0x20 <= b <= 0x7E else "?" for b in bytes(raw)[:limit])


# -- naming -----------------------------------------------------------------------


def _comm(raw: bytes) -> str:
    return bytes(raw).split(b"\0", 1)[0].decode(errors="replace")


def edge_of(namer: Namer, e: Any) -> Edge:
    """The Istio edge of a kernel edge record (struct http_edge), named the way
    accounting.Namer names TCP sockets. reporter="source" for the side that
    sent the requests, "destination" for the side that answered."""
    fam = int(e["family"])
    laddr = ip_text(fam, bytes(e["laddr"]))
    raddr = ip_text(fam, bytes(e["raddr"]))
    port = int(e["port"])
    tgid, comm = int(e["tgid"]), _comm(e["comm"])
    netns, cgroup = int(e["netns"]), int(e["cgroup_id"])
    if int(e["role"]) == 1:  # client: the service is the remote end
        return namer.edge(
            Sock(tgid, comm, netns, cgroup, fam, laddr, 0, raddr, port, False), "http"
        )
    sock = Sock(tgid, comm, netns, cgroup, fam, laddr, port, raddr, 0, True)
    local = namer.local(sock)
    if int(e["peer_known"]):
        peer = Sock(
            int(e["peer_tgid"]), _comm(e["peer_comm"]), int(e["peer_netns"]),
            int(e["peer_cgroup_id"]), fam, raddr, 0, laddr, port, False,
        )  # fmt: skip
        remote = namer.local(peer)
    else:
        remote = namer.remote(sock)
    return Edge("destination", remote, local, service_name(local, laddr, port), "http")


# -- aggregates ---------------------------------------------------------------------


class SeriesKey(NamedTuple):
    edge: Edge
    code: str
    method: str
    route: str  # "" when routes are off


# Columns of one kernel row as a flat u64 vector (struct http_agg, all u64).
SUMS = 4  # duration_ns, ttfb_ns, request_bytes, response_bytes
ROW = SUMS + 2 * DUR_BUCKETS + 2 * SIZE_BUCKETS
_DUR = slice(SUMS, SUMS + DUR_BUCKETS)
_TTFB = slice(SUMS + DUR_BUCKETS, SUMS + 2 * DUR_BUCKETS)
_REQ = slice(SUMS + 2 * DUR_BUCKETS, SUMS + 2 * DUR_BUCKETS + SIZE_BUCKETS)
_RESP = slice(SUMS + 2 * DUR_BUCKETS + SIZE_BUCKETS, ROW)


@dataclass
class Series:
    """Totals of one label set: the kernel's counters, summed over its rows."""

    v: np.ndarray = field(default_factory=lambda: np.zeros(ROW, dtype=np.int64))

    @property
    def count(self) -> int:
        return int(self.v[_DUR].sum())

    def hist(self, which: str) -> tuple[list[int], int]:
        """(per-bucket counts, sum) of "duration" (ns), "ttfb" (ns),
        "request" or "response" (bytes)."""
        sl, s = {"duration": (_DUR, 0), "ttfb": (_TTFB, 1), "request": (_REQ, 2),
                 "response": (_RESP, 3)}[which]  # fmt: skip
        return [int(x) for x in self.v[sl]], int(self.v[s])


def cumulative(
    counts: Sequence[int], bounds: Sequence[float], fmt: Callable[[float], str] = str
) -> list[tuple[str, float]]:
    """Prometheus buckets (le, cumulative count) from per-bucket counts whose
    last entry is the +Inf bucket. The counts stay integers: exact, and printed
    without a float's formatting."""
    if len(counts) != len(bounds) + 1:
        raise ValueError("need one count per bound plus +Inf")
    out: list[tuple[str, float]] = []
    run = 0
    for bound, n in zip(bounds, counts, strict=False):
        run += n
        out.append((fmt(bound), run))
    out.append(("+Inf", run + counts[-1]))
    return out


@functools.lru_cache(maxsize=64)
def le_text(bound: float) -> str:
    """A bucket bound as prometheus_client prints it (0.5, 1.0, 1e+06 ...);
    formatted once: the same few bounds come back every scrape."""
    text: str = floatToGoString(bound)  # type: ignore[no-untyped-call]
    return text


class HttpBook:
    """Kernel aggregate rows -> totals per label set. Each row's growth since
    the last refresh goes to the labels its edge has now, so every series only
    grows, even when a workload's name resolves better later. At most
    max_series label sets; past that, growth goes to an overflow series."""

    def __init__(self, namer: Namer, max_series: int = 10000) -> None:
        self.namer = namer
        self.max_series = max_series
        self._last: dict[bytes, np.ndarray] = {}
        self.series: dict[SeriesKey, Series] = {}
        self.overflowed = 0

    def _admit(self, key: SeriesKey) -> Series:
        s = self.series.get(key)
        if s is not None:
            return s
        if len(self.series) >= self.max_series:
            self.overflowed += 1
            e = key.edge
            key = SeriesKey(
                Edge(e.reporter, OVERFLOW, OVERFLOW, OVERFLOW, e.protocol),
                OVERFLOW,
                OVERFLOW,
                OVERFLOW if key.route else "",
            )
            s = self.series.get(key)
            if s is not None:
                return s
        s = self.series[key] = Series()
        return s

    def update(
        self,
        keys: np.ndarray,
        values: np.ndarray,
        edges: dict[int, Any],
        routes: dict[int, str] | None,
    ) -> None:
        """keys/values: struct http_agg_key/http_agg rows; edges: edge id ->
        struct http_edge; routes: route id -> text (None when routes are off).
        A row with a peer_edge counts for that edge too (a linked server's side
        of the same exchanges)."""
        n = len(keys)
        if n == 0:
            return
        rows = np.ascontiguousarray(values).view(np.uint64).reshape(n, ROW).astype(np.int64)
        raw = np.ascontiguousarray(keys).tobytes()
        size = keys.dtype.itemsize
        named: dict[int, Edge] = {}
        kcols = (keys["edge"].tolist(), keys["peer_edge"].tolist(), keys["route"].tolist(),
                 keys["status"].tolist(), keys["method"].tolist())  # fmt: skip
        for i, (eid, peer, rid, status, method) in enumerate(zip(*kcols, strict=True)):
            kb = raw[i * size : (i + 1) * size]
            cur = rows[i]
            last = self._last.get(kb)
            if last is not None and np.array_equal(last, cur):
                continue
            delta = cur if last is None else cur - last
            if (delta < 0).any():  # never: kernel counters only grow
                delta = np.maximum(delta, 0)
            self._last[kb] = cur.copy()
            if routes is None:
                route = ""
            elif rid == 1:
                route = OTHER_ROUTE
            else:
                route = routes.get(rid, OTHER_ROUTE)
            for e in (eid, peer) if peer else (eid,):
                edge = named.get(e)
                if edge is None:
                    rec = edges.get(e)
                    edge = edge_of(self.namer, rec) if rec is not None else _unknown_edge()
                    named[e] = edge
                key = SeriesKey(edge, str(status), method_name(method), route)
                self._admit(key).v += delta

    def totals(self) -> dict[SeriesKey, Series]:
        return self.series


def _unknown_edge() -> Edge:
    return Edge("destination", UNKNOWN, UNKNOWN, UNKNOWN, "http")


# -- trace samples ------------------------------------------------------------------


@dataclass(slots=True)
class Sample:
    """One sampled request as `meshlens trace http` shows it."""

    pid: int
    comm: str
    reporter: str
    laddr: str
    lport: int
    raddr: str
    rport: int
    method: str
    host: str
    path: str
    status: int
    ms: float
    ttfb_ms: float
    request_bytes: int
    response_bytes: int

    def as_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__slots__}


def decode_samples(rows: Iterable[Any]) -> Iterator[Sample]:
    """struct http_sample rows -> Samples; every text field printable ASCII."""
    for r in rows:
        fam = int(r["family"]) or 2
        yield Sample(
            pid=int(r["tgid"]),
            comm=printable(bytes(r["comm"]).split(b"\0", 1)[0], 16),
            reporter="source" if int(r["role"]) == 1 else "destination",
            laddr=ip_text(fam, bytes(r["laddr"])),
            lport=int(r["lport"]),
            raddr=ip_text(fam, bytes(r["raddr"])),
            rport=int(r["rport"]),
            method=method_name(int(r["method"])),
            host=printable(bytes(r["host"])[: int(r["host_len"])], 64),
            path=printable(bytes(r["path"])[: int(r["path_len"])], PATH_LEN) or "/",
            status=int(r["status"]),
            ms=int(r["duration_ns"]) / 1e6,
            ttfb_ms=int(r["ttfb_ns"]) / 1e6,
            request_bytes=int(r["request_bytes"]),
            response_bytes=int(r["response_bytes"]),
        )


HEADER = "{:<7} {:<10} {:<4} {:<7} {:<21} {:<24} {:>3} {:>8} {:>7} {:>8}".format(
    "PID", "COMM", "SIDE", "METHOD", "HOST", "PATH", "ST", "MS", "REQ_B", "RESP_B"
)


def render(s: Sample) -> str:
    """One line of `meshlens trace http` (fits 120 columns; --json has it all)."""
    side = "src" if s.reporter == "source" else "dst"
    host = s.host or f"{s.raddr if side == 'src' else s.laddr}"
    return "{:<7} {:<10.10} {:<4} {:<7.7} {:<21.21} {:<24.24} {:>3} {:>8.2f} {:>7} {:>8}".format(
        s.pid or "-", s.comm or "-", side, s.method, host, s.path, s.status, s.ms,
        s.request_bytes, s.response_bytes,
    )  # fmt: skip
