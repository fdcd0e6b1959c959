"""loadgen argument checking and exact totals over loopback (no root needed)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from meshlens.loadgen import parse_args, read_json_line, stop_server

LOADGEN = [sys.executable, "-m", "meshlens.loadgen"]
CLIENT_TCP = ["client", "--proto", "tcp", "--connect", "127.0.0.1", "--port", "9"]


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["client"],
        ["server", "--proto", "sctp", "--bind", "127.0.0.1", "--port", "0"],
        ["server", "--proto", "tcp", "--bind", "localhost", "--port", "0"],
        ["server", "--proto", "tcp", "--bind", "127.0.0.1", "--port", "70000"],
        [
            "server",
            "--proto",
            "tcp",
            "--bind",
            "127.0.0.1",
            "--port",
            "0",
            "--echo",
            "--reply-bytes",
            "5",
        ],
        [
            "server",
            "--proto",
            "udp",
            "--bind",
            "127.0.0.1",
            "--port",
            "0",
            "--reply-bytes",
            "70000",
        ],
        [*CLIENT_TCP, "--connections", "0"],
        [*CLIENT_TCP, "--send-bytes", "-1"],
        [*CLIENT_TCP, "--send-bytes", "ten"],
        [*CLIENT_TCP, "--hold-seconds", "1"],  # hold needs --expect-reply-bytes
        [*CLIENT_TCP, "--timeout", "-3"],
        [
            "client",
            "--proto",
            "udp",
            "--connect",
            "127.0.0.1",
            "--port",
            "9",
            "--datagram-bytes",
            "70000",
        ],
    ],
)
def test_bad_arguments_exit_2(argv: list[str]) -> None:
    p = subprocess.run([*LOADGEN, *argv], capture_output=True, timeout=30)
    assert p.returncode == 2, p.stderr
    assert b"error" in p.stderr
    assert p.stdout == b""


@pytest.mark.parametrize("dest", ["192.0.2.1", "2001:db8::1", "198.20.0.1"])
def test_destinations_outside_test_ranges_rejected(dest: str) -> None:
    # Parsed in-process: no socket is ever created for these documentation addresses.
    with pytest.raises(SystemExit) as exc:
        parse_args(["client", "--proto", "udp", "--connect", dest, "--port", "9"])
    assert exc.value.code == 2


@contextmanager
def server(*args: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (port, totals); totals is filled in when the block ends."""
    proc = subprocess.Popen(
        [*LOADGEN, "server", "--bind", "127.0.0.1", "--port", "0", "--max-seconds", "60", *args],
        stdout=subprocess.PIPE,
    )
    totals: dict[str, Any] = {}
    try:
        yield read_json_line(proc)["listening"], totals
        totals.update(stop_server(proc))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)


def client(port: int, *args: str) -> dict[str, Any]:
    p = subprocess.run(
        [*LOADGEN, "client", "--connect", "127.0.0.1", "--port", str(port), *args],
        capture_output=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    out: dict[str, Any] = json.loads(p.stdout)
    return out


def test_tcp_loopback_exact_totals() -> None:
    c, n, m = 7, 7919, 104729
    with server("--proto", "tcp", "--reply-bytes", str(m)) as (port, srv):
        cli = client(
            port, "--proto", "tcp", "--connections", str(c), "--concurrency", "3",
            "--send-bytes", str(n), "--expect-reply-bytes", str(m), "--chunk", "1021",
            "--report-ports",
        )  # fmt: skip
    assert cli["connections"] == c and cli["failed"] == 0
    assert cli["bytes_sent"] == srv["bytes_received"] == c * n
    assert cli["bytes_received"] == srv["bytes_sent"] == c * m
    assert srv["connections"] == c and srv["errors"] == 0
    assert len(set(cli["local_ports"])) == c


def test_tcp_echo_and_hold() -> None:
    with server("--proto", "tcp", "--echo", "--request-bytes", "4999") as (port, srv):
        cli = client(
            port, "--proto", "tcp", "--connections", "3", "--concurrency", "3",
            "--send-bytes", "4999", "--expect-reply-bytes", "4999", "--hold-seconds", "0.3",
        )  # fmt: skip
    assert cli["failed"] == 0 and srv["connections"] == 3
    assert cli["bytes_sent"] == cli["bytes_received"] == srv["bytes_received"] == 3 * 4999
    assert srv["bytes_sent"] == 3 * 4999


def test_tcp_wrong_reply_size_counts_as_failed() -> None:
    with server("--proto", "tcp", "--reply-bytes", "11") as (port, _srv):
        p = subprocess.run(
            [*LOADGEN, "client", "--proto", "tcp", "--connect", "127.0.0.1", "--port", str(port),
             "--connections", "2", "--send-bytes", "3", "--expect-reply-bytes", "13"],
            capture_output=True, timeout=60,
        )  # fmt: skip
    assert p.returncode == 1
    assert json.loads(p.stdout)["failed"] == 2


@pytest.mark.parametrize("connected", [False, True])
def test_udp_loopback_exact_totals(connected: bool) -> None:
    d, b, r = 101, 997, 13
    extra = ["--connected"] if connected else []
    with server("--proto", "udp", "--reply-bytes", str(r)) as (port, srv):
        cli = client(
            port, "--proto", "udp", "--datagrams", str(d), "--datagram-bytes", str(b),
            "--expect-reply-bytes", str(r), *extra,
        )  # fmt: skip
    assert cli["failed"] == 0
    assert cli["datagrams_sent"] == srv["datagrams_received"] == d
    assert cli["bytes_sent"] == srv["bytes_received"] == d * b
    assert cli["datagrams_received"] == srv["datagrams_sent"] == d
    assert cli["bytes_received"] == srv["bytes_sent"] == d * r
