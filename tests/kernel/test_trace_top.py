"""`meshlens trace` and `meshlens top` against loopback traffic made by this process."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import select
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kernel_helpers import MESHLENS

pytestmark = [pytest.mark.kernel, pytest.mark.usefixtures("bpf_ready")]

UP, DOWN = 7919, 30011
ME = os.getpid()


class Server:
    """Loopback TCP server in a thread of this process: reads to EOF, replies DOWN
    bytes, closes. Bounded: stops with the context."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port: int = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> Server:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    while conn.recv(65536):
                        pass
                    conn.sendall(b"y" * DOWN)
                except OSError:
                    pass


def exchange(port: int) -> int:
    """One connection: UP bytes up, half-close, read the reply; the client's port."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        cport: int = s.getsockname()[1]
        s.sendall(b"x" * UP)
        s.shutdown(socket.SHUT_WR)
        got = 0
        while chunk := s.recv(65536):
            got += len(chunk)
        assert got == DOWN
    return cport


def trace(tool: str, *args: str) -> Output:
    proc = subprocess.Popen(
        [*MESHLENS, "trace", tool, "--json", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    return Output(proc)


class Output:
    """A child's JSON lines, read in chunks as they come (lines get long on a busy host:
    `top` lists every flow) and drained to the end by finish()."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self.proc = proc
        self.fd = proc.stdout.fileno()
        self.buf = b""
        self.eof = False

    def _lines(self) -> list[dict[str, Any]]:
        *full, self.buf = self.buf.split(b"\n")
        return [json.loads(line) for line in full if line.strip()]

    def read(self, wait: float) -> list[dict[str, Any]]:
        """What arrived within `wait` seconds (one read), as complete lines."""
        if not self.eof and select.select([self.fd], [], [], max(wait, 0))[0]:
            chunk = os.read(self.fd, 1 << 16)
            self.eof = not chunk
            self.buf += chunk
        return self._lines()

    def finish(self, sig: int | None = signal.SIGINT) -> list[dict[str, Any]]:
        """Stop the child (or let it end by itself) while draining its output, since a
        writer blocked on a full pipe never exits; exit code 0; the remaining lines."""
        if sig is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            out, err = self.proc.communicate(timeout=10)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.communicate(timeout=5)
        assert self.proc.returncode == 0, err
        self.buf += out + b"\n"
        return self._lines()


def lines_while(
    out: Output,
    act: Callable[[], None],
    done: Callable[[list[dict[str, Any]]], bool],
    timeout: float,
    every: float = 0.1,
) -> list[dict[str, Any]]:
    """Call act() every `every` seconds and collect the JSON lines printed meanwhile,
    until done(lines), timeout, or the end of the output."""
    lines: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not done(lines) and not out.eof:
        act()
        until = time.monotonic() + every
        while (left := until - time.monotonic()) > 0 and not out.eof:
            lines += out.read(left)
    return lines


@pytest.fixture
def server() -> Iterator[Server]:
    with Server() as srv:
        yield srv


def test_trace_tcpconnect_reports_pid_ports_and_result(server: Server) -> None:
    ports: list[int] = []
    closed = socket.socket()  # bound, not listening: connecting to it is refused
    closed.bind(("127.0.0.1", 0))
    refused_port = closed.getsockname()[1]
    proc = trace("tcpconnect", "-d", "3")

    def act() -> None:
        ports.append(exchange(server.port))
        with socket.socket() as s, contextlib.suppress(ConnectionRefusedError):
            s.connect(("127.0.0.1", refused_port))

    def ok(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [e for e in lines if e["rport"] == server.port and e["lport"] in ports]

    def refused(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [e for e in lines if e["rport"] == refused_port]

    try:
        lines = lines_while(proc, act, lambda ls: bool(ok(ls) and refused(ls)), 3.0)
    finally:
        closed.close()
    lines += proc.finish(sig=None)  # -d 3: exits by itself, 0
    assert ok(lines), lines[-5:]
    for e in ok(lines):
        assert (e["pid"], e["ip"], e["laddr"], e["raddr"]) == (ME, 4, "127.0.0.1", "127.0.0.1")
        assert e["error"] == 0 and e["comm"]
    assert refused(lines), lines[-5:]
    assert {(e["pid"], e["error"]) for e in refused(lines)} == {(ME, errno.ECONNREFUSED)}


def test_trace_tcpaccept_reports_pid_and_ports() -> None:
    """Listeners made while the trace runs: the accepting process is known."""
    listeners: list[Server] = []
    cports: dict[int, int] = {}
    proc = trace("tcpaccept", "-d", "5")

    def act() -> None:
        srv = Server().__enter__()
        listeners.append(srv)
        cports[srv.port] = exchange(srv.port)

    def ours(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [e for e in lines if cports.get(e["lport"]) == e["rport"] and e["pid"] == ME]

    try:
        lines = lines_while(proc, act, ours, 4.0, every=0.15)
    finally:
        for srv in listeners:
            srv.__exit__()
    lines += proc.finish()
    hits = ours(lines)
    assert hits, [e for e in lines if e["lport"] in cports]
    for e in hits:
        assert (e["ip"], e["laddr"], e["raddr"]) == (4, "127.0.0.1", "127.0.0.1")


def test_trace_tcpaccept_for_a_server_listening_before_the_trace(server: Server) -> None:
    cports: list[int] = []
    proc = trace("tcpaccept", "-d", "4")

    def ours(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [e for e in lines if e["lport"] == server.port and e["rport"] in cports]

    lines = lines_while(proc, lambda: cports.append(exchange(server.port)), ours, 3.0)
    lines += proc.finish()
    hits = ours(lines)
    assert hits, lines[-5:]
    assert {e["pid"] for e in hits} == {ME}


def test_trace_tcplife_reports_bytes_of_each_connection(server: Server) -> None:
    cports: list[int] = []
    proc = trace("tcplife", "-d", "4")

    def ours(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [e for e in lines if e["lport"] in cports and e["rport"] == server.port]

    lines = lines_while(proc, lambda: cports.append(exchange(server.port)), ours, 3.0)
    lines += proc.finish()
    hits = ours(lines)
    assert hits, f"no close record of {len(cports)} connections"
    for e in hits:
        assert e["pid"] == ME
        assert (e["tx_bytes"], e["rx_bytes"]) == (UP, DOWN), e
    # the server's side of the same connections
    srv = [e for e in lines if e["lport"] == server.port and e["rport"] in cports]
    assert srv and all((e["tx_bytes"], e["rx_bytes"]) == (DOWN, UP) for e in srv), srv


def run_top(server: Server) -> tuple[list[dict[str, Any]], list[int]]:
    """`meshlens top --json 1 2` while this process makes connections; its documents
    and the client ports used. All rows (-n): other traffic on this host may be busier."""
    proc = Output(
        subprocess.Popen(
            [*MESHLENS, "top", "--json", "-n", "100000", "1", "2"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    )
    cports: list[int] = []
    docs = lines_while(proc, lambda: cports.append(exchange(server.port)), lambda d: False, 8.0)
    docs += proc.finish(sig=None)
    return docs, cports


def test_top_json_two_intervals_with_loopback_flows(server: Server) -> None:
    docs, cports = run_top(server)
    assert len(docs) == 2, docs
    assert all(d["interval"] == 1.0 and isinstance(d["flows"], list) for d in docs)
    rows = [r for d in docs for r in d["flows"] if r["pid"] == ME]
    srv_rows = [r for r in rows if r["local"] == f"127.0.0.1:{server.port}"]
    cli_rows = [r for r in rows if r["remote"] == f"127.0.0.1:{server.port}"]
    # A connection that lived within one interval shows its whole exchange.
    assert any((r["rx"], r["tx"]) == (UP, DOWN) for r in srv_rows), srv_rows
    assert any(r["tx"] == UP for r in cli_rows), cli_rows
    for r in srv_rows + cli_rows:
        assert r["proto"] == "T" and r["comm"] and r["workload"]
    assert {int(r["remote"].rsplit(":", 1)[1]) for r in srv_rows} <= set(cports)


def test_top_counts_reads_after_close_on_their_flow(server: Server) -> None:
    docs, _ = run_top(server)
    rows = [r for d in docs for r in d["flows"] if r["pid"] == ME]
    cli_rows = [r for r in rows if r["remote"] == f"127.0.0.1:{server.port}"]
    assert [r for r in cli_rows if r["local"].endswith(":0")] == []
    assert any((r["tx"], r["rx"]) == (UP, DOWN) for r in cli_rows), cli_rows
