"""HTTP request metrics against ground truth: a Python server with a known mix of
status codes, body sizes and delays, driven by a keep-alive client (threads
sharing pooled connections), pipelining, split request lines, 100-continue,
chunked bodies both ways, HEAD, 204/304, close-delimited bodies, big headers and
bodies; counts per code exact for both reporters, sizes exact, latency within
the client's own measurement. Garbage on the same port is ignored or counted,
never misattributed."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from typing import Any

import numpy as np
import pytest
from kernel_helpers import wait_for

from meshlens.agent import Agent
from meshlens.features.http import HttpFeature
from meshlens.httpmsg import Series, SeriesKey
from meshlens.lab import Host, Lab
from meshlens.loadgen import read_json_line, read_line
from meshlens.probes.http import QUIET, QUIET_MAP, UNPARSED, Stat

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(os.geteuid() != 0, reason="BPF and network namespaces need root"),
]


def http_feature(agent: Agent) -> HttpFeature:
    feats = [f for f in agent.features if isinstance(f, HttpFeature)]
    assert feats, "the http feature is not running"
    return feats[0]


def start_server(
    host: Host, bind: str | None = None, *args: str
) -> tuple[subprocess.Popen[Any], int]:
    proc = host.popen(
        *host.python("-m", "meshlens.httpload", "server", "--bind", bind or host.addr),
        *("--port", "0", "--max-seconds", "180", *args),
        stdout=subprocess.PIPE,
    )
    return proc, int(read_json_line(proc)["listening"])


def run_client(host: Host, dest: str, port: int, plan: list[dict[str, Any]], *args: str) -> Any:
    p = subprocess.run(
        host.python(
            "-m", "meshlens.httpload", "client", "--connect", dest, "--port", str(port),
            "--plan", json.dumps(plan), *args,
        ),
        capture_output=True, timeout=120, check=False,
    )  # fmt: skip
    assert p.returncode == 0, (p.stdout[-2000:], p.stderr.decode(errors="replace")[-2000:])
    return json.loads(p.stdout)


def http_series(agent: Agent, workloads: set[str]) -> dict[SeriesKey, Series]:
    agent.refresh(force=True)
    return {
        k: s
        for k, s in http_feature(agent).book.totals().items()
        if {k.edge.source_workload, k.edge.destination_workload} & workloads
    }


def by(series: dict[SeriesKey, Series], reporter: str, *fields: str) -> dict[Any, dict[str, int]]:
    """reporter's totals keyed by the given SeriesKey fields (code, method, route)."""
    out: dict[Any, dict[str, int]] = {}
    for k, s in series.items():
        if k.edge.reporter != reporter:
            continue
        key = tuple(getattr(k, f) for f in fields)
        key = key[0] if len(key) == 1 else key
        acc = out.setdefault(key, Counter())
        acc["count"] += s.count
        acc["request_bytes"] += s.hist("request")[1]
        acc["response_bytes"] += s.hist("response")[1]
        acc["duration_ns"] += s.hist("duration")[1]
    return {k: dict(v) for k, v in out.items()}


def client_by_code(result: Any) -> dict[str, dict[str, int]]:
    return {
        code: {k: v[k] for k in ("count", "request_bytes", "response_bytes")}
        for code, v in result["by_code"].items()
    }


def wait_counts(agent: Agent, workloads: set[str], want: int, timeout: float = 10) -> Any:
    """Series once both reporters have counted `want` requests (bounded wait)."""
    deadline = time.monotonic() + timeout
    while True:
        series = http_series(agent, workloads)
        got = {
            r: sum(v["count"] for v in by(series, r, "code").values())
            for r in ("source", "destination")
        }
        if all(n >= want for n in got.values()) or time.monotonic() > deadline:
            return series
        time.sleep(0.1)


def assert_exact(series: dict[SeriesKey, Series], truth: dict[str, dict[str, int]]) -> None:
    for reporter in ("source", "destination"):
        got = {
            code: {k: v[k] for k in ("count", "request_bytes", "response_bytes")}
            for code, v in by(series, reporter, "code").items()
        }
        assert got == truth, f"reporter={reporter}"


# Prime numbers of requests per code, known body sizes.
MIX = [
    {"method": "GET", "path": "/s/200/1234/0", "count": 7},
    {"method": "POST", "path": "/s/201/77/0", "body": 333, "count": 5},
    {"method": "DELETE", "path": "/s/204/0/0", "count": 3},
    {"method": "GET", "path": "/s/301/150/0", "count": 2},
    {"method": "GET", "path": "/nothing/here", "count": 11},
    {"method": "PUT", "path": "/s/500/4321/0", "body": 1000, "chunked": True, "count": 13},
    {"method": "GET", "path": "/s/503/20000/0/c", "count": 17},
    {"method": "HEAD", "path": "/s/200/5000/0", "count": 19},
    {"method": "GET", "path": "/s/304/0/0", "count": 3},
    {"method": "GET", "path": "/s/200/300000/0", "count": 2},
]


def expected(plan: list[dict[str, Any]], result: Any) -> dict[str, dict[str, int]]:
    """The client's own totals; it must have received exactly the plan."""
    assert result["failed"] == 0, result
    return client_by_code(result)


@pytest.fixture
def http_agent(make_agent: Any) -> Agent:
    """The core probes and the http feature only: other features' state is not ours."""
    return make_agent(features=("http",))


@pytest.fixture
def http_lab(bpf_ready: None) -> Any:
    with Lab(2) as lab:
        yield lab


def test_keepalive_mix_exact_both_reporters(http_agent: Agent, http_lab: Lab) -> None:
    srv, cli = http_lab.hosts
    proc, port = start_server(srv)
    result = run_client(cli, srv.addr, port, MIX, "--connections", "3", "--threads", "4")
    truth = expected(MIX, result)
    assert truth["200"]["count"] == 7 + 19 + 2 and truth["503"]["response_bytes"] == 17 * 20000
    names = {srv.name, cli.name}
    series = wait_counts(http_agent, names, sum(v["count"] for v in truth.values()))
    assert_exact(series, truth)
    # per method too: HEAD 200s have no body; GET 200s have theirs
    for reporter in ("source", "destination"):
        m = by(series, reporter, "code", "method")
        assert m[("200", "HEAD")]["count"] == 19 and m[("200", "HEAD")]["response_bytes"] == 0
        assert m[("200", "GET")]["response_bytes"] == 7 * 1234 + 2 * 300000
        assert m[("500", "PUT")]["request_bytes"] == 13 * 1000
    edges = {k.edge for k in series}
    assert {(e.reporter, e.source_workload, e.destination_workload) for e in edges} == {
        ("source", cli.name, srv.name),
        ("destination", cli.name, srv.name),
    }
    assert {e.destination_service for e in edges} == {f"{srv.name}:{port}"}
    assert {e.protocol for e in edges} == {"http"}
    proc.terminate()


def test_first_request_completing_the_handshake(http_agent: Agent, http_lab: Lab) -> None:
    """The first data segment can reach the server before its socket exists: it then
    completes the handshake (under load, a race between the client's last ACK and
    its first request; TCP_DEFER_ACCEPT, nginx's `deferred`, makes it happen on
    every connection). Each connection's first request is counted by both
    reporters, and nothing is unparsed."""
    srv, cli = http_lab.hosts
    names = {srv.name, cli.name}
    before = http_feature(http_agent).probe.stats()
    proc, port = start_server(srv, None, "--defer-accept")
    plan = [
        {"method": "DELETE", "path": "/s/204/0/0", "count": 3},
        {"method": "POST", "path": "/s/201/77/0", "body": 333, "count": 5},
        {"method": "GET", "path": "/s/200/1234/0", "count": 7},
    ]
    result = run_client(cli, srv.addr, port, plan, "--connections", "3", "--threads", "3")
    # one connection per request: every request is a connection's first
    single = [{"method": "GET", "path": "/s/200/10/0", "count": 1}]
    for _ in range(5):
        run_client(cli, srv.addr, port, single)
    # and a request line split across segments, the first one completing the handshake
    split = [{"method": "GET", "path": "/s/404/3/0", "count": 2}]
    run_client(cli, srv.addr, port, split, "--split")
    truth = expected(plan, result)
    truth["200"] = {"count": 7 + 5, "request_bytes": 0, "response_bytes": 7 * 1234 + 5 * 10}
    truth["404"] = {"count": 2, "request_bytes": 0, "response_bytes": 6}
    series = wait_counts(http_agent, names, 15 + 5 + 2)
    assert_exact(series, truth)
    after = http_feature(http_agent).probe.stats()
    assert all(after[s] == before[s] for s in UNPARSED), "something was unparsed"
    proc.terminate()


def test_local_pair_parsed_once(http_agent: Agent, http_lab: Lab) -> None:
    """Client and server both local: the client's socket parses for both reporters
    (the server's socket hands it over at its first recv()), so the destination's
    times are the client's to the nanosecond; counts and sizes stay exact, also
    when the first request completed the handshake."""
    srv, cli = http_lab.hosts
    names = {srv.name, cli.name}
    proc, port = start_server(srv)
    plan = [
        {"method": "GET", "path": "/s/200/1234/0", "count": 7},
        {"method": "POST", "path": "/s/201/77/3", "body": 5000, "count": 5},
        {"method": "GET", "path": "/nothing", "count": 3},
    ]
    result = run_client(cli, srv.addr, port, plan, "--connections", "2", "--threads", "2")
    truth = expected(plan, result)
    series = wait_counts(http_agent, names, 15)
    assert_exact(series, truth)
    src, dst = (by(series, r, "code") for r in ("source", "destination"))
    assert {c: v["duration_ns"] for c, v in src.items()} == {
        c: v["duration_ns"] for c, v in dst.items()
    }
    proc.terminate()
    proc.wait()
    # a first request that completes the handshake (TCP_DEFER_ACCEPT) changes
    # nothing: the server's socket meets it at its first recv(), and hands over
    proc, port = start_server(srv, None, "--defer-accept")
    run_client(cli, srv.addr, port, [{"method": "GET", "path": "/s/200/10/20", "count": 3}])
    series = {
        k: v
        for k, v in wait_counts(http_agent, names, 15 + 3).items()
        if k.edge.destination_service.endswith(f":{port}")
    }
    src, dst = (by(series, r, "code")["200"] for r in ("source", "destination"))
    assert src["count"] == dst["count"] == 3
    assert dst["duration_ns"] == src["duration_ns"]
    proc.terminate()


def test_pipelining_split_lines_continue_close(http_agent: Agent, http_lab: Lab) -> None:
    srv, cli = http_lab.hosts
    proc, port = start_server(srv)
    names = {srv.name, cli.name}
    pipe = [
        {"method": "GET", "path": "/s/200/100/0", "count": 7},
        {"method": "GET", "path": "/s/404/2000/0/c", "count": 5},
        {"method": "HEAD", "path": "/s/200/100/0", "count": 3},
        {"method": "GET", "path": "/s/204/0/0", "count": 2},
    ]
    r1 = run_client(
        cli, srv.addr, port, pipe, "--pipeline", "5", "--connections", "2", "--threads", "2"
    )
    split = [
        {"method": "GET", "path": "/s/201/" + "1" * 3 + "/0", "count": 3},
        {"method": "POST", "path": "/s/500/10/0", "body": 2000, "count": 2},
    ]
    r2 = run_client(cli, srv.addr, port, split, "--split")
    cont = [
        {"method": "POST", "path": "/s/201/5/0", "body": 50000, "expect": True, "count": 5},
        {
            "method": "PUT",
            "path": "/s/503/7/0",
            "body": 3000,
            "chunked": True,
            "expect": True,
            "count": 3,
        },
    ]
    r3 = run_client(cli, srv.addr, port, cont)
    close = [{"method": "GET", "path": "/s/200/7777/0/x", "count": 7},
             {"method": "GET", "path": "/s/404/0/0/x", "count": 2}]  # fmt: skip
    r4 = run_client(cli, srv.addr, port, close, "--threads", "3", "--connections", "3")
    big = [{"method": "GET", "path": "/s/301/10/0/h", "count": 5},
           {"method": "GET", "path": "/s/200/65536/0/w", "count": 3}]  # fmt: skip
    r5 = run_client(cli, srv.addr, port, big)
    truth: Counter[tuple[str, str]] = Counter()
    for r in (r1, r2, r3, r4, r5):
        assert r["failed"] == 0, r
        for code, v in r["by_code"].items():
            for k in ("count", "request_bytes", "response_bytes"):
                truth[(code, k)] += v[k]
    want = {c: {k: truth[(c, k)] for k in ("count", "request_bytes", "response_bytes")}
            for c in {c for c, _ in truth}}  # fmt: skip
    series = wait_counts(http_agent, names, sum(v["count"] for v in want.values()))
    assert_exact(series, want)
    proc.terminate()


def test_latency_within_client_measurement(http_agent: Agent, http_lab: Lab) -> None:
    srv, cli = http_lab.hosts
    proc, port = start_server(srv)
    plan = [{"method": "GET", "path": "/s/200/1000/30", "count": 7},
            {"method": "GET", "path": "/s/503/100000/60/c", "count": 5}]  # fmt: skip
    result = run_client(cli, srv.addr, port, plan)
    truth = expected(plan, result)
    series = wait_counts(http_agent, {srv.name, cli.name}, 12)
    for code in ("200", "503"):
        client_s = sum(result["by_code"][code]["seconds"])
        for reporter in ("source", "destination"):
            got = by(series, reporter, "code")[code]
            assert got["count"] == truth[code]["count"]
            kernel_s = got["duration_ns"] / 1e9
            assert kernel_s <= client_s, (reporter, code, kernel_s, client_s)
            assert kernel_s >= 0.9 * client_s, (reporter, code, kernel_s, client_s)
    proc.terminate()


def test_garbage_never_misattributed(http_agent: Agent, http_lab: Lab) -> None:
    srv, cli = http_lab.hosts
    proc, port = start_server(srv)
    names = {srv.name, cli.name}
    junk = [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(200),  # TLS ClientHello
        b"GET /old\r\n\r\n",  # HTTP/0.9
        b"SSH-2.0-OpenSSH_9.2\r\n",
        b"GET / HTTP/1.1\r\nContent-Length: 12x\r\n\r\n",  # bad framing
        b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",  # overlong request line
        b"GET / HTTP/1.1\r\n" + b"X-Big: " + b"b" * 30000 + b"\r\n\r\n",  # huge header
        os.urandom(4096),
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",  # bad chunk size
    ]
    code = (
        "import socket,sys,time\n"
        f"junk={junk!r}\n"
        "for j in junk:\n"
        f"    s=socket.create_connection(({srv.addr!r},{port}),timeout=5)\n"
        "    s.sendall(j)\n"
        "    s.settimeout(0.5)\n"
        "    try:\n        s.recv(65536)\n    except OSError:\n        pass\n"
        "    s.close()\n"
    )
    before = http_feature(http_agent).probe.stats()
    cli.run(sys.executable, "-c", code, timeout=60)
    plan = [{"method": "GET", "path": "/s/200/11/0", "count": 7},
            {"method": "GET", "path": "/s/404/13/0", "count": 3}]  # fmt: skip
    result = run_client(cli, srv.addr, port, plan)
    truth = expected(plan, result)
    series = wait_counts(http_agent, names, 10)
    # the real requests are exact; the garbage added nothing to any series
    assert_exact(series, truth)
    after = http_feature(http_agent).probe.stats()
    grew = {s.name: after[s] - before[s] for s in Stat}
    # each side of each bad connection counts once, then stops parsing it
    assert grew["BAD_REQUEST"] >= 2, grew  # HTTP/0.9
    assert grew["BAD_FRAMING"] >= 4, grew  # Content-Length: 12x, chunk size zz
    assert grew["HEADERS_TOO_BIG"] >= 4, grew  # 20 kB request line, 30 kB header
    proc.terminate()


def test_loopback_names_client_and_server(http_agent: Agent, http_lab: Lab) -> None:
    srv = http_lab.hosts[0]
    proc, port = start_server(srv, "127.0.0.1")
    plan = [{"method": "GET", "path": "/s/200/5/0", "count": 5}]
    result = run_client(srv, "127.0.0.1", port, plan)
    truth = expected(plan, result)
    series = wait_counts(http_agent, {srv.name}, 5)
    assert_exact(series, truth)
    edges = {k.edge for k in series}
    assert {(e.reporter, e.source_workload, e.destination_workload) for e in edges} == {
        ("source", srv.name, srv.name),
        ("destination", srv.name, srv.name),
    }
    assert socket is not None
    proc.terminate()


def test_many_concurrent_connections(http_agent: Agent, http_lab: Lab) -> None:
    srv, cli = http_lab.hosts
    proc, port = start_server(srv)
    plan = [{"method": "GET", "path": "/s/200/3000/2", "count": 211},
            {"method": "GET", "path": "/s/503/17/1/c", "count": 97},
            {"method": "POST", "path": "/s/201/5/0", "body": 100, "count": 101}]  # fmt: skip
    probe = http_feature(http_agent).probe
    followed = probe.map("http_conns").lookup_batch()[2]
    live = probe.stats()[Stat.LIVE]
    result = run_client(cli, srv.addr, port, plan, "--connections", "150", "--threads", "150")
    truth = expected(plan, result)
    series = wait_counts(http_agent, {srv.name, cli.name}, 409)
    assert_exact(series, truth)
    proc.terminate()
    proc.wait(timeout=10)
    # every connection's state is gone with its socket (both ends closed)
    deadline = time.monotonic() + 5
    while probe.map("http_conns").lookup_batch()[2] != followed and time.monotonic() < deadline:
        time.sleep(0.1)
    assert probe.map("http_conns").lookup_batch()[2] == followed
    assert probe.stats()[Stat.LIVE] == live


def test_routes_templated_and_bounded(make_agent: Any, http_lab: Lab) -> None:
    from meshlens.httpmsg import template

    agent = make_agent(features=("http",), options={"http_routes": True, "http_max_routes": 24})
    srv, cli = http_lab.hosts
    proc, port = start_server(srv)
    paths = {
        "/s/200/10/0?user=secret&token=abc": 7,  # the query never reaches a label
        "/s/404/12/0": 5,
        "/s/201/0/0/c": 3,
    }
    plan = [{"method": "GET", "path": p, "count": n} for p, n in paths.items()]
    plan += [{"method": "GET", "path": f"/lit{i}x/a", "count": 1} for i in range(40)]
    result = run_client(cli, srv.addr, port, plan)
    assert result["failed"] == 0
    series = wait_counts(agent, {srv.name, cli.name}, 55)
    for reporter in ("source", "destination"):
        routes = by(series, reporter, "route")
        assert template(b"/s/200/10/0?user=secret&token=abc") == "/s/{id}/{id}/{id}"
        assert "/s/{id}/{id}/{id}" in routes
        assert routes["/s/{id}/{id}/{id}"]["count"] >= 7 + 5  # other routes may share the slot
        assert not any("secret" in r or "?" in r for r in routes)
        # 40 distinct literal paths and a table of 24: the rest count as "other"
        assert "other" in routes, routes
        assert sum(v["count"] for v in routes.values()) == 55
    seen = {k.route for k in http_feature(agent).book.totals()}
    assert len(seen - {"other"}) <= 24
    proc.terminate()


def test_trace_http_stream(http_lab: Lab, bpf_ready: None) -> None:
    srv, cli = http_lab.hosts
    proc, port = start_server(srv)
    argv = ["trace", "http", "--json", "-d", "8", "--rate", "100000"]
    tracer = subprocess.Popen(
        [sys.executable, "-m", "meshlens.cli", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        time.sleep(3)  # loaded and attached
        plan = [{"method": "GET", "path": "/s/200/1234/25?secret=1", "count": 3},
                {"method": "PUT", "path": "/s/503/10/0", "body": 77, "count": 2}]  # fmt: skip
        result = run_client(cli, srv.addr, port, plan)
        out, err = tracer.communicate(timeout=30)
    finally:
        if tracer.poll() is None:
            tracer.kill()
    assert tracer.returncode == 0, err.decode()[-2000:]
    rows = [json.loads(line) for line in out.decode().splitlines() if line.strip()]
    mine = [r for r in rows if r["rport"] == port or r["lport"] == port]
    for reporter in ("source", "destination"):
        got = [r for r in mine if r["reporter"] == reporter]
        assert sorted((r["method"], r["path"], r["status"]) for r in got) == sorted(
            [("GET", "/s/200/1234/25", 200)] * 3 + [("PUT", "/s/503/10/0", 503)] * 2
        ), got
        for r in got:
            assert "secret" not in json.dumps(r)
            assert r["host"] == f"{srv.addr}:{port}"
            if r["status"] == 200:
                assert r["response_bytes"] == 1234 and r["request_bytes"] == 0
                assert 25 <= r["ms"] <= max(result["by_code"]["200"]["seconds"]) * 1000
            else:
                assert r["request_bytes"] == 77 and r["response_bytes"] == 10
    proc.terminate()


def test_trace_http_rate_limited(http_lab: Lab, bpf_ready: None) -> None:
    srv, cli = http_lab.hosts
    proc, port = start_server(srv)
    tracer = subprocess.Popen(
        [sys.executable, "-m", "meshlens.cli", "trace", "http", "--json", "-d", "6", "--rate", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        time.sleep(3)
        t0 = time.monotonic()
        run_client(cli, srv.addr, port, [{"method": "GET", "path": "/s/200/1/0", "count": 300}])
        took = time.monotonic() - t0
        out, _ = tracer.communicate(timeout=30)
    finally:
        if tracer.poll() is None:
            tracer.kill()
    rows = [json.loads(line) for line in out.decode().splitlines() if line.strip()]
    # 600 exchanges (both sides) in `took` seconds; at most 2 samples a second
    assert 1 <= len(rows) <= 2 * (took + 4) + 2, (len(rows), took)
    proc.terminate()


@pytest.mark.parametrize("defer", [False, True], ids=["accepted", "first-request-via-listener"])
def test_ipv6_exact(http_agent: Agent, lab6: Lab, defer: bool) -> None:
    srv, cli = lab6.hosts
    assert srv.addr6 and cli.addr6
    proc, port = start_server(srv, srv.addr6, *(["--defer-accept"] if defer else []))
    plan = [{"method": "GET", "path": "/s/200/4321/0", "count": 7},
            {"method": "POST", "path": "/s/500/3/0", "body": 999, "count": 3}]  # fmt: skip
    result = run_client(cli, srv.addr6, port, plan, "--connections", "2", "--threads", "2")
    truth = expected(plan, result)
    series = wait_counts(http_agent, {srv.name, cli.name}, 10)
    assert_exact(series, truth)
    assert {k.edge.destination_service for k in series} == {f"{srv.name}:{port}"}
    proc.terminate()


PICKUP_CLIENT = """
import json, socket, sys
sys.path.insert(0, {src!r})
from meshlens.httpload import Reader, read_response
import time
s = socket.create_connection(({addr!r}, {port}), timeout=10)
r = Reader(s, time.monotonic() + 60)
def batch(n, path):
    out = []
    for _ in range(n):
        s.sendall(f"GET {{path}} HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n".encode())
        out.append(read_response(r, "GET")[:2])
    return out
first = batch(5, "/s/200/10/0")
print(json.dumps(first), flush=True)
sys.stdin.readline()  # the agent starts now
print(json.dumps(batch(7, "/s/404/33/0") + batch(3, "/s/200/1000/0")), flush=True)
"""


def start_pickup_client(cli: Host, addr: str, port: int) -> subprocess.Popen[bytes]:
    """PICKUP_CLIENT on one keep-alive connection, its first 5 requests answered."""
    src = str(__import__("pathlib").Path(__file__).resolve().parents[2] / "src")
    client = cli.popen(
        sys.executable, "-c", PICKUP_CLIENT.format(src=src, addr=addr, port=port),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )  # fmt: skip
    assert len(json.loads(read_line(client, 30))) == 5
    return client


def test_connection_older_than_agent(make_agent: Any, http_lab: Lab) -> None:
    """A keep-alive connection opened before the agent: picked up at its next
    request, which then counts exactly (the ones before are not seen)."""
    srv, cli = http_lab.hosts
    proc, port = start_server(srv)
    client = start_pickup_client(cli, srv.addr, port)
    agent = make_agent(features=("http",))
    assert client.stdin is not None
    client.stdin.write(b"go\n")
    client.stdin.flush()
    after = json.loads(read_line(client, 30))
    assert [c for c, _ in after] == [404] * 7 + [200] * 3
    series = wait_counts(agent, {srv.name, cli.name}, 10)
    truth = {"404": {"count": 7, "request_bytes": 0, "response_bytes": 7 * 33},
             "200": {"count": 3, "request_bytes": 0, "response_bytes": 3000}}  # fmt: skip
    assert_exact(series, truth)
    client.wait(timeout=10)
    proc.terminate()


def test_long_lines_split_across_segments(http_agent: Agent, http_lab: Lab) -> None:
    """Long request lines and headers, written 1400 bytes at a time (with
    TCP_NODELAY), so lines split anywhere: all counted, none unparsed."""
    srv, cli = http_lab.hosts
    proc, port = start_server(srv)
    msgs = [
        b"GET /s/200/5/0/" + b"a" * 2000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /s/201/7/0 HTTP/1.1\r\nHost: x\r\nCookie: " + b"c" * 5000 + b"\r\n\r\n",
        b"GET /s/200/5/0/" + b"a" * 6000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /s/404/9/0 HTTP/1.1\r\n" + b"X-A: b\r\n" * 500 + b"\r\n",
        b"POST /s/500/3/0 HTTP/1.1\r\nContent-Length: 3000\r\n\r\n" + b"p" * 3000,
    ]
    code = (
        "import socket, time\n"
        f"s = socket.create_connection(({srv.addr!r}, {port}), timeout=10)\n"
        "s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)\n"
        f"for m in {msgs!r}:\n"
        "    for i in range(0, len(m), 1400):\n"
        "        s.sendall(m[i:i + 1400])\n"
        "        time.sleep(0.005)\n"
        "    got = b''\n"
        "    while not got.endswith(b'\\r\\n\\r\\n') or b'Content-Length' not in got:\n"
        "        got += s.recv(1)\n"
        "    n = int(got.split(b'Content-Length: ')[1].split(b'\\r')[0])\n"
        "    while n:\n"
        "        n -= len(s.recv(n))\n"
        "s.close()\n"
    )
    before = http_feature(http_agent).probe.stats()
    cli.run(sys.executable, "-c", code, timeout=60)
    series = wait_counts(http_agent, {srv.name, cli.name}, 5)
    truth = {
        "200": {"count": 2, "request_bytes": 0, "response_bytes": 10},
        "201": {"count": 1, "request_bytes": 0, "response_bytes": 7},
        "404": {"count": 1, "request_bytes": 0, "response_bytes": 9},
        "500": {"count": 1, "request_bytes": 3000, "response_bytes": 3},
    }
    assert_exact(series, truth)
    after = http_feature(http_agent).probe.stats()
    assert all(after[s] == before[s] for s in probe_unparsed()), "something was unparsed"
    proc.terminate()


def probe_unparsed() -> list[Stat]:
    from meshlens.probes.http import UNPARSED

    return [s for s in UNPARSED if s not in (Stat.NO_RESPONSE, Stat.UNMATCHED)]


def test_scatter_gather_calls_and_peeks(make_agent: Any, http_lab: Lab) -> None:
    """The bytes of a call are read from all of the caller's buffers: requests
    written by sendmsg() and writev() in pieces that split the request line,
    read by recvmsg_into() into small buffers after a MSG_PEEK (whose bytes are
    read again); responses the same way round, read by readv(). The connection
    is made before the agent starts, so no parse-once hand-over: each side
    parses its own calls. Counts and sizes exact for both reporters, nothing
    unparsed."""
    srv, cli = http_lab.hosts
    n = 7
    server = (
        "import os, socket, sys\n"
        f"ls = socket.create_server(({srv.addr!r}, 0))\n"
        "print(ls.getsockname()[1], flush=True)\n"
        "c, _ = ls.accept()\n"
        f"for i in range({n}):\n"
        "    c.recv(4, socket.MSG_PEEK)\n"
        "    got = b''\n"
        "    while not got.endswith(b'\\r\\n\\r\\n'):\n"
        "        bufs = [bytearray(3), bytearray(5), bytearray(64)]\n"
        "        k = c.recvmsg_into(bufs)[0]\n"
        "        got += b''.join(bufs)[:k]\n"
        "    body = b'b' * (10 + i)\n"
        "    head = f'HTTP/1.1 200 OK\\r\\nContent-Length: {len(body)}\\r\\n\\r\\n'.encode()\n"
        "    parts = [head[:5], head[5:13], head[13:], body]\n"
        "    if i % 2:\n"
        "        os.writev(c.fileno(), parts)\n"
        "    else:\n"
        "        c.sendmsg(parts)\n"
        "c.recv(1)\n"
    )
    proc = srv.popen(sys.executable, "-c", server, stdout=subprocess.PIPE)
    port = int(read_line(proc))
    client = (
        "import os, socket\n"
        f"s = socket.create_connection(({srv.addr!r}, {port}), timeout=10)\n"
        "s.settimeout(None)  # blocking: os.readv() on the descriptor\n"
        "print('connected', flush=True)\n"
        "input()\n"
        f"for i in range({n}):\n"
        "    req = b'GET /scatter/' + str(i).encode() + b' HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n'\n"
        "    parts = [req[:2], req[2:9], req[9:]]\n"
        "    if i % 2:\n"
        "        os.writev(s.fileno(), parts)\n"
        "    else:\n"
        "        s.sendmsg(parts)\n"
        "    want = 37 + len(str(10 + i)) + 10 + i\n"
        "    got = 0\n"
        "    while got < want:\n"
        "        bufs = [bytearray(4), bytearray(9), bytearray(100)]\n"
        "        got += os.readv(s.fileno(), bufs)\n"
        "s.close()\n"
    )
    proc_cli = cli.popen(
        sys.executable, "-c", client, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert read_line(proc_cli, 30).strip() == b"connected"
    http_agent = make_agent(features=("http",))
    before = http_feature(http_agent).probe.stats()
    assert proc_cli.stdin is not None
    proc_cli.stdin.write(b"go\n")
    proc_cli.stdin.flush()
    assert proc_cli.wait(timeout=60) == 0
    series = wait_counts(http_agent, {srv.name, cli.name}, n)
    body = sum(10 + i for i in range(n))
    assert_exact(series, {"200": {"count": n, "request_bytes": 0, "response_bytes": body}})
    after = http_feature(http_agent).probe.stats()
    assert all(after[s] == before[s] for s in probe_unparsed()), "something was unparsed"
    src, dst = (by(series, r, "code")["200"] for r in ("source", "destination"))
    assert dst["duration_ns"] < src["duration_ns"]  # each side timed itself
    proc.wait(timeout=10)


def _quiet_sockets(agent: Agent) -> int:
    """Sockets in http_quiet: those whose calls http passes over without a lookup."""
    _, vals, n = http_feature(agent).probe.map(QUIET_MAP).lookup_batch()
    rows = np.frombuffer(vals, dtype=QUIET.dtype, count=n)
    return int(np.count_nonzero(rows["sk"]))


def test_passive_server_skips_the_lookup_until_its_close(http_agent: Agent, http_lab: Lab) -> None:
    """A local server whose client parses for it is passed over from http_quiet (no
    hash lookup per call) while its connection lives; the slot goes at its close, and
    both reporters still count every request."""
    srv, cli = http_lab.hosts
    proc, port = start_server(srv)
    client = start_pickup_client(cli, srv.addr, port)
    assert _quiet_sockets(http_agent) == 1  # the server's socket, after its first calls
    assert client.stdin is not None
    client.stdin.write(b"go\n")
    client.stdin.flush()
    assert len(json.loads(read_line(client, 30))) == 10
    client.wait(timeout=10)
    assert wait_for(lambda: _quiet_sockets(http_agent) == 0, 5.0)
    series = wait_counts(http_agent, {srv.name, cli.name}, 15)
    truth = {"200": {"count": 8, "request_bytes": 0, "response_bytes": 5 * 10 + 3 * 1000},
             "404": {"count": 7, "request_bytes": 0, "response_bytes": 7 * 33}}  # fmt: skip
    assert_exact(series, truth)
    proc.terminate()
