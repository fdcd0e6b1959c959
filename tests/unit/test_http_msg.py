"""User side of HTTP request metrics: route templating (the kernel's rules),
kernel rows -> monotonic per-label totals and Prometheus histograms, trace
samples, Istio's label set, the probe's mirrors against the object's BTF.
Fuzzed with hypothesis: no input crashes these, and no path, query or header
other than Host ever reaches a label or a sample unsanitised."""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshlens import httpmsg
from meshlens.accounting import Edge, Namer
from meshlens.btf import Btf
from meshlens.exporter import ISTIO_LABELS
from meshlens.features.http import LABELS, ROUTE_LABEL, HttpFeature, labels_of
from meshlens.probes import http as probe
from meshlens.probes.base import objects_dir

# -- routes -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "route"),
    [
        ("/", "/"),
        ("/users/123", "/users/{id}"),
        ("/users/123/orders/4567?x=1", "/users/{id}/orders/{id}"),
        ("/a/550e8400-e29b-41d4-a716-446655440000/b", "/a/{hash}/b"),
        ("/blob/0123abcd", "/blob/{hash}"),
        ("/blob/deadbeef", "/blob/deadbeef"),  # no digit: a word, not an id
        ("/t/AbCdEfGh1234IjKl", "/t/{hash}"),  # 16 bytes with a digit
        ("/v1/api2", "/v1/api2"),
        ("/x#frag", "/x"),
        ("http://example.com:8080/p/9", "/p/{id}"),
        ("http://example.com", "/"),
        ("*", "*"),
        ("?only=query", "/"),
        ("//double//slash/", "//double//slash/"),
        ("/" + "a" * 300, "/" + "a" * 127),
    ],
)
def test_template(target: str, route: str) -> None:
    assert httpmsg.template(target) == route


@given(st.binary(max_size=400))
def test_template_fuzz(raw: bytes) -> None:
    out = httpmsg.template(raw)
    assert 1 <= len(out) <= httpmsg.ROUTE_LEN
    assert all(0x21 <= ord(ch) <= 0x7E for ch in out)
    assert "?" not in out and "#" not in out
    assert httpmsg.template(out) == out or "{" in out  # placeholders are stable


@given(st.lists(st.integers(0, 10**12), min_size=1, max_size=6))
def test_ids_collapse_to_one_route(ids: list[int]) -> None:
    routes = {httpmsg.template(f"/orders/{i}/items?page={i}") for i in ids}
    assert routes == {"/orders/{id}/items"}


def test_route_text_is_printable() -> None:
    assert httpmsg.route_text(b"/a\x00b\xffc") == "/a?b?c"
    assert httpmsg.route_text(b"") == "/"


# -- histograms -------------------------------------------------------------------------


def test_cumulative_buckets() -> None:
    out = httpmsg.cumulative([1, 0, 2, 3], [1, 10, 100])
    assert out == [("1", 1), ("10", 1), ("100", 3), ("+Inf", 6)]
    assert all(isinstance(n, int) for _, n in out)  # exact, printed as integers
    with pytest.raises(ValueError):
        httpmsg.cumulative([1, 2], [1, 10])


def test_bounds_match_the_probe() -> None:
    assert httpmsg.DURATION_BOUNDS_MS == probe.DURATION_BOUNDS_MS
    assert httpmsg.SIZE_BOUNDS == probe.SIZE_BOUNDS
    assert len(httpmsg.DURATION_BOUNDS_MS) == 19  # Envoy's defaults
    assert httpmsg.DURATION_BOUNDS_MS[0] == 0.5 and httpmsg.DURATION_BOUNDS_MS[-1] == 3600000


# -- kernel rows -> series ----------------------------------------------------------------


class FakeIdentity:
    def workload(self, tgid: int, comm: str, netns: int, cgroup_id: int) -> str:
        return {1: "web", 2: "cart"}.get(netns, comm or "unknown")

    def netns_name(self, netns: int) -> str | None:
        return {1: "web", 2: "cart"}.get(netns)

    def owner_of(self, ip: str) -> str | None:
        return {"10.0.0.1": "web", "10.0.0.2": "cart"}.get(ip)

    def addresses(self) -> dict[str, int]:
        return {"10.0.0.1": 1, "10.0.0.2": 2}

    def netns_of(self, ip: str) -> int | None:
        return self.addresses().get(ip)


def ip4(text: str) -> bytes:
    return bytes(int(x) for x in text.split(".")) + bytes(12)


def edge_row(role: int, peer: bool = False) -> Any:
    client = role == 1
    raw = probe.EDGE.encode(
        netns=1 if client else 2, cgroup_id=5, laddr=ip4("10.0.0.1" if client else "10.0.0.2"),
        raddr=ip4("10.0.0.2" if client else "10.0.0.1"), comm=b"curl" if client else b"nginx",
        port=80, family=2, role=role, tgid=11, peer_known=int(peer), peer_netns=1,
        peer_comm=b"curl", peer_tgid=11,
    )  # fmt: skip
    return probe.EDGE.decode_many(raw, 1)[0]


KEY_FIELDS = ("edge", "peer_edge", "route", "status", "method")


def agg_rows(rows: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    keys = b"".join(probe.AGG_KEY.encode(**{k: r[k] for k in KEY_FIELDS if k in r})
                    for r in rows)  # fmt: skip
    vals = b"".join(
        probe.AGG.encode(**{k: v for k, v in r.items() if k not in KEY_FIELDS}) for r in rows
    )
    return probe.AGG_KEY.decode_many(keys, len(rows)), probe.AGG.decode_many(vals, len(rows))


def row(
    edge: int, status: int, n: int, method: int = 1, route: int = 0, **kw: Any
) -> dict[str, Any]:
    d = [0] * 20
    d[3] = n
    return {"edge": edge, "route": route, "status": status, "method": method,
            "duration_buckets": d, "ttfb_buckets": d, "request_buckets": [n] + [0] * 10,
            "response_buckets": [0, 0, 0, n] + [0] * 7, "duration_ns_sum": n * 7_000_000,
            "response_bytes_sum": n * 612, **kw}  # fmt: skip


def test_book_names_both_reporters_and_grows_monotonically() -> None:
    book = httpmsg.HttpBook(Namer(FakeIdentity()))
    edges = {7: edge_row(1), 8: edge_row(2, peer=True)}
    book.update(
        *agg_rows([row(7, 200, 13), row(8, 200, 13), row(8, 404, 2, method=2)]), edges, None
    )
    got = {(k.edge.reporter, k.code, k.method): s.count for k, s in book.totals().items()}
    assert got == {("source", "200", "GET"): 13, ("destination", "200", "GET"): 13,
                   ("destination", "404", "HEAD"): 2}  # fmt: skip
    for k in book.totals():
        assert (k.edge.source_workload, k.edge.destination_workload) == ("web", "cart")
        assert k.edge.destination_service == "cart:80" and k.edge.protocol == "http"
    # the kernel's counters grow: only the growth is added
    book.update(*agg_rows([row(7, 200, 17)]), edges, None)
    src = next(s for k, s in book.totals().items() if k.edge.reporter == "source")
    assert src.count == 17
    counts, ns = src.hist("duration")
    assert sum(counts) == 17 and ns == 17 * 7_000_000
    assert src.hist("response") == ([0, 0, 0, 17] + [0] * 7, 17 * 612)


def test_book_counts_a_linked_servers_exchanges_for_both_edges() -> None:
    """A client that parses for its local server: one kernel entry, both reporters."""
    book = httpmsg.HttpBook(Namer(FakeIdentity()))
    edges = {7: edge_row(1), 8: edge_row(2, peer=True)}
    book.update(*agg_rows([row(7, 200, 13, peer_edge=8), row(7, 500, 2)]), edges, None)
    got = {(k.edge.reporter, k.code): s.count for k, s in book.totals().items()}
    assert got == {("source", "200"): 13, ("destination", "200"): 13, ("source", "500"): 2}
    book.update(*agg_rows([row(7, 200, 19, peer_edge=8), row(7, 500, 2)]), edges, None)
    got = {(k.edge.reporter, k.code): s.count for k, s in book.totals().items()}
    assert got == {("source", "200"): 19, ("destination", "200"): 19, ("source", "500"): 2}


def test_book_caps_series() -> None:
    book = httpmsg.HttpBook(Namer(FakeIdentity()), max_series=2)
    edges = {7: edge_row(1)}
    book.update(*agg_rows([row(7, c, 1) for c in (200, 201, 500, 503)]), edges, None)
    keys = list(book.totals())
    assert len(keys) == 3 and book.overflowed == 2
    assert sum(s.count for s in book.totals().values()) == 4
    assert any(k.code == httpmsg.OVERFLOW for k in keys)


def test_book_routes() -> None:
    book = httpmsg.HttpBook(Namer(FakeIdentity()))
    edges = {7: edge_row(1)}
    book.update(*agg_rows([row(7, 200, 3, route=99), row(7, 200, 2, route=1)]), edges,
                {99: "/users/{id}"})  # fmt: skip
    assert {k.route: s.count for k, s in book.totals().items()} == {"/users/{id}": 3, "other": 2}


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(1, 3),
            st.sampled_from([200, 204, 404, 500]),
            st.integers(0, 10),
            st.integers(0, 9),
        ),
        min_size=1,
        max_size=8,
        unique_by=lambda t: (t[0], t[1], t[3]),
    ),
    st.integers(1, 4),
)
def test_book_fuzz_totals_equal_kernel(rows: list[tuple[int, int, int, int]], rounds: int) -> None:
    """Whatever the rows, after any number of growing refreshes, the totals
    equal the kernel's counters, and no series ever shrinks."""
    book = httpmsg.HttpBook(Namer(FakeIdentity()), max_series=5)
    edges = {1: edge_row(1), 2: edge_row(2), 3: edge_row(2, peer=True)}
    last: dict[Any, int] = {}
    for r in range(1, rounds + 1):
        book.update(*agg_rows([row(e, s, n * r, method=m) for e, s, n, m in rows]), edges, None)
        now = {k: s.count for k, s in book.totals().items()}
        assert all(now.get(k, 0) >= v for k, v in last.items())
        last = now
        assert sum(now.values()) == sum(n * r for _, _, n, _ in rows)


# -- labels -------------------------------------------------------------------------------


def test_istio_http_label_set() -> None:
    assert set(ISTIO_LABELS) < set(LABELS)
    assert LABELS.index("response_code") < LABELS.index("response_flags")
    key = httpmsg.SeriesKey(Edge("source", "web", "cart", "cart:80", "http"), "503", "POST", "/x")
    lv = dict(zip(LABELS, labels_of(key, False), strict=True))
    assert lv["request_protocol"] == "http" and lv["response_code"] == "503"
    assert lv["request_method"] == "POST" and lv["grpc_response_status"] == ""
    lv = dict(zip((*LABELS, ROUTE_LABEL), labels_of(key, True), strict=True))
    assert lv[ROUTE_LABEL] == "/x"


# -- samples ------------------------------------------------------------------------------


@given(
    path=st.binary(max_size=probe.PATH_LEN),
    host=st.binary(max_size=probe.HOST_LEN),
    comm=st.binary(max_size=16),
    status=st.integers(0, 65535),
    method=st.integers(0, 255),
    role=st.integers(0, 255),
)
def test_samples_fuzz(path: bytes, host: bytes, comm: bytes, status: int, method: int,
                      role: int) -> None:  # fmt: skip
    raw = probe.SAMPLE.encode(
        path=path, host=host, comm=comm, path_len=len(path), host_len=len(host), status=status,
        method=method, role=role, family=2, duration_ns=5_000_000, laddr=ip4("10.0.0.1"),
    )  # fmt: skip
    (s,) = httpmsg.decode_samples(probe.SAMPLE.decode_many(raw, 1))
    printable = set(string.printable) - set("\t\n\r\x0b\x0c")
    for text in (s.path, s.host, s.comm, httpmsg.render(s)):
        assert set(text) <= printable
    assert s.method in httpmsg.METHODS
    assert s.ms == 5.0
    assert s.as_dict()["status"] == status


def test_sample_lengths_clamped() -> None:
    raw = probe.SAMPLE.encode(path=b"/abc", path_len=255, host_len=200, family=2)
    (s,) = httpmsg.decode_samples(probe.SAMPLE.decode_many(raw, 1))
    assert s.path == "/abc" + "?" * (probe.PATH_LEN - 4)  # NULs shown, never past the field
    assert s.host == "?" * probe.HOST_LEN


# -- mirrors and feature wiring -------------------------------------------------------------


def test_layouts_match_object() -> None:
    path = objects_dir() / "http.bpf.o"
    if not path.exists():
        pytest.skip("http.bpf.o not built (make build)")
    btf = Btf.from_file(path)
    for lay in probe.HttpProbe.layouts:
        lay.check(btf)
    assert set(btf.datasec(".rodata")) >= {"sample_interval_ns", "routes_on", "wakeup_bytes"}
    assert {m.name for m in btf.struct("http_agg").members} >= {"duration_buckets"}
    assert Path(path).stat().st_size > 0


def test_feature_registered() -> None:
    from meshlens.features import features, trace_tools

    assert HttpFeature in features()
    assert "http" in trace_tools()


def test_unparsed_reasons_cover_kernel_stats() -> None:
    assert set(probe.UNPARSED.values()) == {
        "request_line", "status_line", "framing", "headers_too_big", "gap", "pipeline_full",
        "unmatched_response", "no_response", "too_complex",
    }  # fmt: skip
    btf_path = objects_dir() / "http.bpf.o"
    if not btf_path.exists():
        pytest.skip("http.bpf.o not built (make build)")
    btf = Btf.from_file(btf_path)
    for name, prefix, py in (("http_stat", "HTTP_STAT_", probe.Stat),
                             ("http_method", "HTTP_M_", probe.Method),
                             ("http_role", "HTTP_ROLE_", probe.Role)):  # fmt: skip
        enum = {k: v for k, v in btf.enum(name).items() if not k.endswith("_MAX")}
        assert enum == {f"{prefix}{m.name}": m.value for m in py}, name
    assert [m.name for m in probe.Method] == list(httpmsg.METHODS)


def test_le_text_prints_bounds_as_prometheus_client_does() -> None:
    assert [httpmsg.le_text(b) for b in (0.5, 1, 1e6, 2.5e6, 3.6e6)] == [
        "0.5", "1.0", "1e+06", "2.5e+06", "3.6e+06",
    ]  # fmt: skip
