"""HTTP request metrics against nginx (Debian's nginx-light) in a lab host,
driven by curl, wrk and the Python keep-alive client: per status code, counts
exact for both reporters (nginx's access log and the clients agree), body sizes
exact. Files are sent with sendfile(), the other bodies with writev()."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_http import assert_exact, by, http_agent, run_client, wait_counts

from meshlens.agent import Agent
from meshlens.lab import Host, Lab

__all__ = ["http_agent"]  # the fixture

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(os.geteuid() != 0, reason="BPF and network namespaces need root"),
    pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx (nginx-light) missing"),
]
needs_wrk = pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk missing")
needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl missing")

PORT = 8080
CONF = """
daemon off;
master_process on;
worker_processes 2;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    log_format counted '$status $request_method $body_bytes_sent';
    access_log {d}/access.log counted;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 1000000;
    default_type text/plain;
    # as Debian's nginx.conf: files go out by sendfile(), whose bytes the http
    # probe cannot read (only skip, inside a body of known length)
    sendfile on;
    tcp_nopush on;
    server {{
        listen {addr}:{port};
        root {d}/www;
        location = /201 {{ return 201 "created-body\\n"; }}
        location = /204 {{ return 204; }}
        location = /301 {{ return 301 /f200; }}
        location = /500 {{ return 500 "internal-error-body-xxxxx\\n"; }}
        location = /503 {{ return 503 "unavailable\\n"; }}
    }}
}}
"""
# path -> requests per run: a prime number for each status code
PATHS = {"/f200": 7, "/201": 5, "/204": 3, "/301": 2, "/missing": 11, "/500": 13, "/503": 17}


class Nginx:
    def __init__(self, host: Host, d: Path) -> None:
        self.host = host
        self.dir = d
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        (self.dir / "www").mkdir()
        (self.dir / "www" / "f200").write_bytes(b"x" * 1234)
        (self.dir / "www" / "big").write_bytes(b"y" * 300_000)
        (self.dir / "nginx.conf").write_text(
            CONF.format(d=self.dir, addr=self.host.addr, port=PORT)
        )
        os.chmod(self.dir, 0o755)
        self.proc = self.host.popen(
            "nginx", "-c", str(self.dir / "nginx.conf"), "-p", str(self.dir)
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            r = self.host.run("curl", "-s", "-o", "/dev/null", f"http://{self.host.addr}:{PORT}/f200",
                              check=False, timeout=5)  # fmt: skip
            if r.returncode == 0:
                break
            time.sleep(0.1)
        (self.dir / "access.log").write_bytes(b"")  # forget the readiness probes
        self.host.run(
            "nginx", "-c", str(self.dir / "nginx.conf"), "-p", str(self.dir), "-s", "reopen"
        )

    def log(self) -> dict[str, dict[str, int]]:
        """Status -> count and body bytes, from the access log."""
        out: dict[str, Counter[str]] = {}
        for line in (self.dir / "access.log").read_text().splitlines():
            status, _method, size = line.split()
            c = out.setdefault(status, Counter())
            c["count"] += 1
            c["response_bytes"] += int(size)
        return {k: dict(v) for k, v in out.items()}

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


@pytest.fixture
def nginx_lab(bpf_ready: None) -> Iterator[tuple[Lab, Nginx]]:
    with Lab(2) as lab, tempfile.TemporaryDirectory(prefix="meshlens-nginx-") as d:
        ng = Nginx(lab.hosts[0], Path(d))
        ng.start()
        try:
            yield lab, ng
        finally:
            ng.stop()


def wait_log(ng: Nginx, n: int, timeout: float = 10) -> dict[str, dict[str, int]]:
    deadline = time.monotonic() + timeout
    while True:
        log = ng.log()
        if sum(v["count"] for v in log.values()) >= n or time.monotonic() > deadline:
            return log
        time.sleep(0.05)


def with_request_bytes(log: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    return {k: {"count": v["count"], "request_bytes": 0, "response_bytes": v["response_bytes"]}
            for k, v in log.items()}  # fmt: skip


@needs_curl
def test_curl_keepalive_exact(nginx_lab: tuple[Lab, Nginx], http_agent: Agent) -> None:
    lab, ng = nginx_lab
    srv, cli = lab.hosts
    urls = []
    for i in range(max(PATHS.values())):
        urls += [f"http://{srv.addr}:{PORT}{p}" for p, n in PATHS.items() if i < n]
    # one curl: every URL over one kept-alive connection
    args = [a for u in urls for a in ("-o", "/dev/null", u)]
    r = cli.run("curl", "-s", "-w", "%{http_code} %{size_download} %{num_connects}\n", *args,
                timeout=60)  # fmt: skip
    truth: dict[str, Counter[str]] = {}
    connects = 0
    for line in r.stdout.decode().splitlines():
        code, size, nc = line.split()
        c = truth.setdefault(code, Counter())
        c["count"] += 1
        c["response_bytes"] += int(size)
        c["request_bytes"] += 0
        connects += int(nc)
    assert connects == 1, "curl did not keep the connection alive"
    want = {k: dict(v) for k, v in truth.items()}
    total = sum(PATHS.values())
    assert with_request_bytes(wait_log(ng, total)) == want
    series = wait_counts(http_agent, {srv.name, cli.name}, total)
    assert_exact(series, want)


@needs_wrk
def test_wrk_mix_exact(nginx_lab: tuple[Lab, Nginx], http_agent: Agent) -> None:
    lab, ng = nginx_lab
    srv, cli = lab.hosts
    seq = []
    for i in range(max(PATHS.values())):
        seq += [p for p, n in PATHS.items() if i < n]
    rounds, threads = 3, 2
    limit = rounds * len(seq)
    script = Path(ng.dir) / "mix.lua"
    script.write_text(
        "local paths = {" + ",".join(f'"{p}"' for p in seq) + "}\n"
        f"local limit = {limit}\n"
        "local i, n = 0, 0\n"
        "request = function()\n"
        "  i = i + 1\n"
        "  return wrk.format('GET', paths[((i - 1) % #paths) + 1])\n"
        "end\n"
        "response = function(status, headers, body)\n"
        "  n = n + 1\n"
        "  if n >= limit then wrk.thread:stop() end\n"
        "end\n"
    )
    r = cli.run("wrk", "-t", str(threads), "-c", str(threads), "-d", "3s", "-s", str(script),
                f"http://{srv.addr}:{PORT}/", timeout=90)  # fmt: skip
    out = r.stdout.decode()
    total = threads * limit
    assert f"{total} requests in" in out, out
    log = wait_log(ng, total)
    assert {k: v["count"] for k, v in log.items()} == {
        code: threads * rounds * n
        for code, n in zip(
            ("200", "201", "204", "301", "404", "500", "503"), PATHS.values(), strict=True
        )
    }
    series = wait_counts(http_agent, {srv.name, cli.name}, total)
    assert_exact(series, with_request_bytes(log))


def test_python_client_pipelined_pool(nginx_lab: tuple[Lab, Nginx], http_agent: Agent) -> None:
    lab, ng = nginx_lab
    srv, cli = lab.hosts
    plan = [{"method": "GET", "path": p, "count": n} for p, n in PATHS.items()]
    plan += [{"method": "GET", "path": "/big", "count": 3},
             {"method": "HEAD", "path": "/f200", "count": 5},
             {"method": "POST", "path": "/500", "body": 4096, "count": 7}]  # fmt: skip
    result = run_client(cli, srv.addr, PORT, plan, "--connections", "4", "--threads", "6")
    result2 = run_client(cli, srv.addr, PORT, plan, "--pipeline", "4", "--connections", "2")
    truth: dict[str, Counter[str]] = {}
    for res in (result, result2):
        assert res["failed"] == 0, res
        for code, v in res["by_code"].items():
            c = truth.setdefault(code, Counter())
            for k in ("count", "request_bytes", "response_bytes"):
                c[k] += v[k]
    want = {k: dict(v) for k, v in truth.items()}
    total = sum(v["count"] for v in want.values())
    log = wait_log(ng, total)
    assert {k: v["count"] for k, v in log.items()} == {k: v["count"] for k, v in want.items()}
    series = wait_counts(http_agent, {srv.name, cli.name}, total)
    assert_exact(series, want)
    for reporter in ("source", "destination"):
        m = by(series, reporter, "code", "method")
        assert m[("200", "HEAD")] == {"count": 10, "request_bytes": 0, "response_bytes": 0,
                                      "duration_ns": m[("200", "HEAD")]["duration_ns"]}  # fmt: skip
    assert isinstance(ng.log(), dict) and Any is not None


@needs_curl
def test_curl_http10_and_head(nginx_lab: tuple[Lab, Nginx], http_agent: Agent) -> None:
    """HTTP/1.0 requests (a connection each) and HEAD: counted, no body for HEAD."""
    lab, ng = nginx_lab
    srv, cli = lab.hosts
    base = f"http://{srv.addr}:{PORT}"
    for path in ("/f200", "/missing", "/503"):
        cli.run("curl", "-s", "--http1.0", "-o", "/dev/null", base + path, timeout=30)
    for _ in range(5):
        cli.run("curl", "-s", "-I", "-o", "/dev/null", base + "/big", timeout=30)
    log = wait_log(ng, 8)
    assert {k: v["count"] for k, v in log.items()} == {"200": 6, "404": 1, "503": 1}
    series = wait_counts(http_agent, {srv.name, cli.name}, 8)
    for reporter in ("source", "destination"):
        m = by(series, reporter, "code", "method")
        assert m[("200", "HEAD")]["count"] == 5 and m[("200", "HEAD")]["response_bytes"] == 0
        assert m[("200", "GET")]["count"] == 1 and m[("200", "GET")]["response_bytes"] == 1234
        assert m[("404", "GET")]["count"] == 1 and m[("503", "GET")]["count"] == 1
        assert m[("503", "GET")]["response_bytes"] == log["503"]["response_bytes"]
