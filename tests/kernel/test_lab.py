"""Namespace lab and loadgen ground truth between lab hosts (needs root)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from typing import Any

import pytest

from meshlens.lab import Host, Lab, cleanup_stale, list_netns
from meshlens.loadgen import read_json_line, stop_server

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
]
needs_ping = pytest.mark.skipif(shutil.which("ping") is None, reason="ping (iputils-ping) missing")


def root_links() -> set[str]:
    out = subprocess.run(["ip", "-j", "link"], capture_output=True, check=True, timeout=10)
    return {link["ifname"] for link in json.loads(out.stdout)}


def lab_names(lab: Lab) -> set[str]:
    return {lab.switch, *(h.name for h in lab.hosts)}


def ping(src: Host, dst: str) -> None:
    src.run("ping", "-c", "1", "-W", "1", dst, timeout=10)


def start_server(host: Host, *args: str) -> tuple[subprocess.Popen[Any], int]:
    proc = host.popen(
        *host.python("-m", "meshlens.loadgen", "server", "--bind", host.addr, "--port", "0"),
        *("--max-seconds", "120", *args),
        stdout=subprocess.PIPE,
    )
    return proc, read_json_line(proc)["listening"]


def run_client(host: Host, dest: str, port: int, *args: str) -> dict[str, Any]:
    p = host.run(
        *(sys.executable, "-m", "meshlens.loadgen", "client"),
        *("--connect", dest, "--port", str(port), *args),
        timeout=120,
        check=False,
    )
    assert p.returncode == 0, p.stderr
    out: dict[str, Any] = json.loads(p.stdout)
    return out


@needs_ping
def test_hosts_ping_and_lab_is_gone_after_exit() -> None:
    before = root_links()
    with Lab(2) as lab:
        a, b = lab.hosts
        assert a.addr != b.addr and a.addr.startswith("198.18.")
        names = lab_names(lab)
        assert names <= set(list_netns())
        ping(a, b.addr)
        ping(b, a.addr)
        assert root_links() == before  # veths and bridge live only in the lab's netns
    assert not names & set(list_netns())


def test_teardown_on_exception_kills_processes() -> None:
    with pytest.raises(RuntimeError, match="boom"), Lab(2) as lab:
        names = lab_names(lab)
        sleeper = lab.hosts[0].popen("sleep", "60")
        raise RuntimeError("boom")
    assert not names & set(list_netns())
    assert sleeper.poll() is not None


def test_concurrent_labs_get_distinct_subnets() -> None:
    with Lab(1) as one, Lab(1) as two:
        assert one.subnet_index != two.subnet_index
        assert one.hosts[0].addr != two.hosts[0].addr


def test_nft_ruleset_loads_in_host() -> None:
    with Lab(1) as lab:
        host = lab.hosts[0]
        lab.nft(host, "table inet mlab {\n chain c { type filter hook input priority 0; }\n}\n")
        assert b"table inet mlab" in host.run("nft", "list", "tables").stdout
        assert b"mlab" not in subprocess.run(["nft", "list", "tables"], capture_output=True).stdout
        with pytest.raises(RuntimeError):
            lab.nft(host, "this is not nft syntax")


def test_tcp_loadgen_ground_truth() -> None:
    c, n, m = 200, 7919, 104729
    with Lab(2) as lab:
        srv_host, cli_host = lab.hosts
        proc, port = start_server(srv_host, "--proto", "tcp", "--reply-bytes", str(m))
        cli = run_client(
            cli_host, srv_host.addr, port, "--proto", "tcp", "--connections", str(c),
            "--concurrency", "50", "--send-bytes", str(n), "--expect-reply-bytes", str(m),
        )  # fmt: skip
        srv = stop_server(proc)
    assert cli == {"connections": c, "failed": 0, "bytes_sent": c * n, "bytes_received": c * m}
    assert srv["connections"] == c and srv["errors"] == 0 and srv["unfinished"] == 0
    assert srv["bytes_received"] == c * n and srv["bytes_sent"] == c * m


def established(host: Host, port: int) -> int:
    out = host.run("ss", "-tnH", "state", "established", f"( sport = :{port} )").stdout
    return len(out.splitlines())


def test_tcp_long_lived_connections() -> None:
    c, n, m, hold = 20, 1009, 30011, 2.0
    with Lab(2) as lab:
        srv_host, cli_host = lab.hosts
        proc, port = start_server(
            srv_host, "--proto", "tcp", "--reply-bytes", str(m), "--request-bytes", str(n)
        )
        client = cli_host.popen(
            *cli_host.python("-m", "meshlens.loadgen", "client", "--proto", "tcp"),
            *("--connect", srv_host.addr, "--port", str(port), "--connections", str(c)),
            *("--concurrency", str(c), "--send-bytes", str(n), "--expect-reply-bytes", str(m)),
            *("--hold-seconds", str(hold)),
            stdout=subprocess.PIPE,
        )
        deadline = time.monotonic() + hold / 2
        while established(srv_host, port) < c and time.monotonic() < deadline:
            time.sleep(0.05)
        assert established(srv_host, port) == c  # all open at once, data already exchanged
        cli = read_json_line(client, timeout=30)
        client.wait(timeout=10)
        srv = stop_server(proc)
    assert cli == {"connections": c, "failed": 0, "bytes_sent": c * n, "bytes_received": c * m}
    assert srv["connections"] == c
    assert srv["bytes_received"] == c * n and srv["bytes_sent"] == c * m


def test_udp_loadgen_ground_truth() -> None:
    d, b, r = 101, 997, 13
    with Lab(2) as lab:
        srv_host, cli_host = lab.hosts
        proc, port = start_server(srv_host, "--proto", "udp", "--reply-bytes", str(r))
        cli = run_client(
            cli_host, srv_host.addr, port, "--proto", "udp", "--datagrams", str(d),
            "--datagram-bytes", str(b), "--expect-reply-bytes", str(r),
        )  # fmt: skip
        srv = stop_server(proc)
    assert cli["failed"] == 0
    assert cli["datagrams_sent"] == srv["datagrams_received"] == d
    assert cli["bytes_sent"] == srv["bytes_received"] == d * b
    assert cli["datagrams_received"] == srv["datagrams_sent"] == d
    assert cli["bytes_received"] == srv["bytes_sent"] == d * r


@needs_ping
def test_ipv6_lab() -> None:
    with Lab(2, ipv6=True) as lab:
        a, b = lab.hosts
        assert a.addr6 and b.addr6 and a.addr6.startswith("fd00:198:18:")
        ping(a, b.addr6)
        ping(b, a.addr6)
        proc = b.popen(
            *b.python("-m", "meshlens.loadgen", "server", "--proto", "tcp", "--bind", b.addr6),
            *("--port", "0", "--reply-bytes", "101", "--max-seconds", "60"),
            stdout=subprocess.PIPE,
        )
        port = read_json_line(proc)["listening"]
        cli = run_client(
            a, b.addr6, port, "--proto", "tcp", "--connections", "3", "--send-bytes", "103"
        )
        srv = stop_server(proc)
    assert cli["bytes_sent"] == srv["bytes_received"] == 3 * 103
    assert cli["bytes_received"] == srv["bytes_sent"] == 3 * 101


def test_cleanup_stale_removes_dead_pid_netns() -> None:
    dead = subprocess.Popen(["true"])
    dead.wait(timeout=10)
    stale = f"mlab-{dead.pid}-999-h0"
    subprocess.run(["ip", "netns", "add", stale], check=True, timeout=10)
    try:
        with Lab(1) as lab:
            assert cleanup_stale() >= 1
            netns = set(list_netns())
            assert stale not in netns
            assert lab_names(lab) <= netns  # a live lab is left alone
    finally:
        subprocess.run(["ip", "netns", "del", stale], capture_output=True, timeout=10)
