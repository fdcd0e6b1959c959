"""What the bench reads: per-process CPU and memory from /proc (the root is a parameter,
so this is tested on a fake tree), kernel TCP_INFO of established sockets (`ss -tin`),
Prometheus exposition and Envoy's admin stats, and HTTP GETs to a namespace's loopback."""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import socket
import time
from dataclasses import dataclass
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")
CLONE_NEWNET = 0x40000000


def cpu_seconds(pid: int, proc: str = "/proc") -> float:
    """CPU seconds of a process: utime + stime of all its threads (dead ones included)
    plus cutime + cstime of the children it waited for (the agent runs `ip`), in seconds."""
    with open(f"{proc}/{pid}/stat") as f:
        data = f.read()
    fields = data[data.rindex(")") + 2 :].split()  # comm may contain spaces and parens
    return sum(int(x) for x in fields[11:15]) / CLK_TCK


def machine_cpu(proc: str = "/proc") -> tuple[float, float]:
    """(busy seconds, total seconds) summed over all CPUs, from /proc/stat."""
    with open(f"{proc}/stat") as f:
        parts = f.readline().split()
    ticks = [int(x) for x in parts[1:9]]  # user nice system idle iowait irq softirq steal
    idle = ticks[3] + ticks[4]
    return (sum(ticks) - idle) / CLK_TCK, sum(ticks) / CLK_TCK


@dataclass
class Memory:
    rss_kb: int = 0
    pss_kb: int = 0


def memory(pid: int, proc: str = "/proc") -> Memory:
    """RSS and PSS (shared pages split among the processes mapping them)."""
    out = Memory()
    with contextlib.suppress(OSError), open(f"{proc}/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Rss:"):
                out.rss_kb = int(line.split()[1])
            elif line.startswith("Pss:"):
                out.pss_kb = int(line.split()[1])
    return out


# -- kernel socket counters ------------------------------------------------------------

_KV = re.compile(r"\b(bytes_acked|bytes_received|bytes_sent):(\d+)")


@dataclass(frozen=True)
class TcpInfo:
    local: tuple[str, int]
    remote: tuple[str, int]
    bytes_acked: int
    bytes_received: int

    @property
    def sent_if_active(self) -> int:
        """Payload bytes sent, for the connecting side (its SYN counts in bytes_acked)."""
        return max(self.bytes_acked - 1, 0)


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    host = host.strip("[]").removeprefix("::ffff:")  # gRPC's dual-stack sockets: v4-mapped
    return host, int(port)


def parse_ss(text: str) -> list[TcpInfo]:
    """`ss -tinH state established` output: a socket line, then an indented info line."""
    out = []
    current: tuple[tuple[str, int], tuple[str, int]] | None = None
    for line in text.splitlines():
        if not line.strip():
            continue
        if not line[0].isspace():
            cols = line.split()
            # Recv-Q Send-Q Local Peer (state filtered: no State column)
            current = (_addr(cols[2]), _addr(cols[3])) if len(cols) >= 4 else None
            continue
        if current is None:
            continue
        kv = {k: int(v) for k, v in _KV.findall(line)}
        out.append(
            TcpInfo(current[0], current[1], kv.get("bytes_acked", 0), kv.get("bytes_received", 0))
        )
        current = None
    return out


# -- network namespaces: a socket made inside one --------------------------------------

_libc: Any = None


def _setns(fd: int) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def ns_socket(netns: str | None) -> socket.socket:
    """A TCP socket created in the named netns (None: this thread's own); only the calling
    thread switches, and back before returning."""
    if netns is None:
        return socket.socket()
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        _setns(target)
        try:
            return socket.socket()
        finally:
            _setns(own)
    finally:
        os.close(own)
        os.close(target)


def http_get(netns: str | None, host: str, port: int, path: str, timeout: float = 5.0) -> bytes:
    """GET http://host:port/path from inside netns, one request then close (Envoy's admin
    refuses HTTP/1.0); the body, de-chunked (2xx only)."""
    with ns_socket(netns) as s:
        s.settimeout(timeout)
        s.connect((host, port))
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            data = s.recv(1 << 16)
            if not data:
                break
            chunks.append(data)
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    status = head.split(b" ", 2)[1] if head.count(b" ") >= 1 else b"?"
    if not status.startswith(b"2"):
        raise OSError(f"GET {host}:{port}{path}: {head[:80]!r}")
    if b"transfer-encoding: chunked" in head.lower():
        return dechunk(body)
    return body


def dechunk(data: bytes) -> bytes:
    """Body of a chunked transfer coding (trailers ignored)."""
    out: list[bytes] = []
    pos = 0
    while True:
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            raise OSError("truncated chunked body")
        size = int(data[pos:eol].split(b";")[0], 16)
        if size == 0:
            return b"".join(out)
        out.append(data[eol + 2 : eol + 2 + size])
        pos = eol + 2 + size + 2


# -- Prometheus exposition and Envoy stats ----------------------------------------------


def parse_exposition(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Samples (name, labels, value) of a Prometheus text exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    out = []
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.append((s.name, dict(s.labels), float(s.value)))
    return out


def parse_envoy_stats(text: str) -> dict[str, int]:
    """Envoy admin /stats (text: `name: value` lines); counters and gauges only."""
    out = {}
    for line in text.splitlines():
        name, sep, value = line.rpartition(": ")
        if sep and value.strip().isdigit():
            out[name] = int(value)
    return out
