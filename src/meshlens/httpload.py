"""Ground-truth HTTP/1.x traffic: ``python -m meshlens.httpload server|client ...``.

The server answers ``/s/<code>/<size>/<delay_ms>[/<flags>]`` with that status,
a body of exactly <size> bytes (none for HEAD, 1xx, 204 and 304) after
<delay_ms> ms. Flags (letters, any order): ``c`` chunked body (in chunks of
1000 bytes), ``x`` no length, the connection's end delimits the body, ``w``
headers and body in separate writes, ``h`` 40 padding header lines. Any other
path gets 404 with a 9-byte body. It honours keep-alive, pipelining,
``Expect: 100-continue`` and chunked request bodies.

The client sends a plan of requests over a pool of keep-alive connections
shared by several threads (a connection is reused by whichever thread takes it
next), optionally pipelined or with the request line split across segments, and
prints per status code: requests, body bytes both ways, and its own latencies
(first byte written to last byte read). Those are what the agent is compared
against. Destinations are restricted to loopback and the lab's ranges."""

from __future__ import annotations

import argparse
import ipaddress
import json
import queue
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

ALLOWED_NETS = [
    ipaddress.ip_network(n) for n in ("127.0.0.0/8", "::1/128", "198.18.0.0/15", "fd00:198:18::/48")
]
MAX_HEADER = 64 * 1024
REASONS = {
    100: "Continue", 200: "OK", 201: "Created", 204: "No Content", 301: "Moved Permanently",
    304: "Not Modified", 404: "Not Found", 500: "Internal Server Error",
    503: "Service Unavailable",
}  # fmt: skip


def _emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


class Closed(Exception):
    pass


class Reader:
    """Buffered reads from a socket, bounded in time."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.deadline = deadline

    def _fill(self) -> None:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("deadline")
        self.sock.settimeout(min(left, 5.0))
        data = self.sock.recv(65536)
        if not data:
            raise Closed()
        self.buf += data

    def until(self, sep: bytes, limit: int = MAX_HEADER) -> bytes:
        while True:
            i = self.buf.find(sep)
            if i >= 0:
                out = bytes(self.buf[: i + len(sep)])
                del self.buf[: i + len(sep)]
                return out
            if len(self.buf) > limit:
                raise ValueError("line too long")
            self._fill()

    def exactly(self, n: int) -> int:
        got = 0
        while got < n:
            if not self.buf:
                self._fill()
            take = min(n - got, len(self.buf))
            del self.buf[:take]
            got += take
        return got

    def rest(self) -> int:
        got = len(self.buf)
        self.buf.clear()
        while True:
            try:
                self._fill()
            except Closed:
                return got
            got += len(self.buf)
            self.buf.clear()


def _headers(block: bytes) -> tuple[str, dict[str, str]]:
    lines = block.decode("latin-1").split("\r\n")
    fields: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            fields[k.strip().lower()] = v.strip()
    return lines[0], fields


def read_body(r: Reader, fields: dict[str, str]) -> int:
    """A message body framed by Transfer-Encoding or Content-Length; decoded bytes."""
    if fields.get("transfer-encoding", "").lower().endswith("chunked"):
        total = 0
        while True:
            size = int(r.until(b"\r\n").split(b";")[0].strip(), 16)
            if size == 0:
                while r.until(b"\r\n") != b"\r\n":  # trailers
                    pass
                return total
            total += r.exactly(size)
            r.exactly(2)
    return r.exactly(int(fields.get("content-length", "0")))


# ---------------------------------------------------------------------------- server


@dataclass
class ServerTally:
    lock: threading.Lock = field(default_factory=threading.Lock)
    by_code: dict[str, int] = field(default_factory=dict)
    request_bytes: int = 0
    connections: int = 0

    def add(self, code: int, req_bytes: int) -> None:
        with self.lock:
            self.by_code[str(code)] = self.by_code.get(str(code), 0) + 1
            self.request_bytes += req_bytes


def _plan_of(path: str) -> tuple[int, int, float, str]:
    parts = path.split("?", 1)[0].split("/")
    try:
        if parts[1] != "s":
            raise ValueError
        code, size, delay = int(parts[2]), int(parts[3]), float(parts[4]) / 1000
        flags = parts[5] if len(parts) > 5 else ""
        if not (100 <= code <= 599 and 0 <= size <= 1 << 30 and 0 <= delay <= 60):
            raise ValueError
        return code, size, delay, flags
    except (ValueError, IndexError):
        return 404, 9, 0.0, ""


def _respond(sock: socket.socket, method: str, code: int, size: int, flags: str) -> bool:
    """Send one response; False when the connection must close after it."""
    no_body = method == "HEAD" or code in (204, 304) or code < 200
    head = [f"HTTP/1.1 {code} {REASONS.get(code, 'Status')}", "Server: httpload"]
    if code == 301:
        head.append("Location: /s/200/0/0")
    if "h" in flags:
        head += [f"X-Pad-{i}: {'p' * 60}" for i in range(40)]
    keep = "x" not in flags
    if "c" in flags and not no_body:
        head.append("Transfer-Encoding: chunked")
    elif not keep:
        head.append("Connection: close")
    elif code not in (204, 304) and code >= 200:
        head.append(f"Content-Length: {size}")
    if keep:
        head.append("Connection: keep-alive")
    data = ("\r\n".join(head) + "\r\n\r\n").encode()
    body = b""
    if not no_body and size:
        if "c" in flags:
            chunks = []
            for off in range(0, size, 1000):
                n = min(1000, size - off)
                chunks.append(f"{n:x}\r\n".encode() + b"b" * n + b"\r\n")
            body = b"".join(chunks) + b"0\r\n\r\n"
        else:
            body = b"b" * size
    elif "c" in flags and not no_body:
        body = b"0\r\n\r\n"
    if "w" in flags:
        sock.sendall(data)
        time.sleep(0.005)
        if body:
            sock.sendall(body)
    else:
        sock.sendall(data + body)
    return keep


def _serve_conn(sock: socket.socket, tally: ServerTally, deadline: float) -> None:
    r = Reader(sock, deadline)
    try:
        while True:
            block = r.until(b"\r\n\r\n")
            line, fields = _headers(block)
            method, target, _version = line.split(" ", 2)
            if fields.get("expect", "").lower() == "100-continue":
                sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            req_bytes = read_body(r, fields)
            code, size, delay, flags = _plan_of(target)
            if delay:
                time.sleep(delay)
            tally.add(code, req_bytes)
            if not _respond(sock, method, code, size, flags):
                break
            if fields.get("connection", "").lower() == "close":
                break
    except (Closed, TimeoutError, OSError, ValueError):
        pass
    finally:
        sock.close()


def server(args: argparse.Namespace) -> dict[str, Any]:
    lsock = socket.create_server(
        (args.bind, args.port), family=socket.AF_INET6 if ":" in args.bind else socket.AF_INET,
        backlog=1024,
    )  # fmt: skip
    if args.defer_accept:
        # the handshake's last ACK is dropped: the first data segment completes it,
        # arriving while the server's socket is still the listener (as nginx's `deferred`)
        lsock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 5)
    lsock.settimeout(0.2)
    tally = ServerTally()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    _emit({"listening": lsock.getsockname()[1]})
    deadline = time.monotonic() + args.max_seconds
    while not stop.is_set() and time.monotonic() < deadline:
        try:
            conn, _ = lsock.accept()
        except TimeoutError:
            continue
        tally.connections += 1
        threading.Thread(target=_serve_conn, args=(conn, tally, deadline), daemon=True).start()
    lsock.close()
    time.sleep(0.1)
    with tally.lock:
        return {"by_code": dict(tally.by_code), "request_bytes": tally.request_bytes,
                "connections": tally.connections}  # fmt: skip


# ---------------------------------------------------------------------------- client


@dataclass
class Request:
    method: str
    path: str
    body: int = 0  # request body bytes
    chunked: bool = False  # send the body chunked
    expect: bool = False  # Expect: 100-continue

    def encode(self, host: str) -> tuple[bytes, bytes]:
        head = [f"{self.method} {self.path} HTTP/1.1", f"Host: {host}", "User-Agent: httpload"]
        body = b""
        if self.chunked:
            head.append("Transfer-Encoding: chunked")
            parts = []
            for off in range(0, self.body, 700):
                n = min(700, self.body - off)
                parts.append(f"{n:x}\r\n".encode() + b"q" * n + b"\r\n")
            body = b"".join(parts) + b"0\r\n\r\n"
        elif self.body or self.method in ("POST", "PUT", "PATCH"):
            head.append(f"Content-Length: {self.body}")
            body = b"q" * self.body
        if self.expect:
            head.append("Expect: 100-continue")
        return ("\r\n".join(head) + "\r\n\r\n").encode(), body


@dataclass
class Outcome:
    code: int
    request_bytes: int
    response_bytes: int
    seconds: float


def read_response(r: Reader, method: str) -> tuple[int, int, bool]:
    """(status, body bytes, keep-alive) of one response; skips 1xx interim ones."""
    while True:
        line, fields = _headers(r.until(b"\r\n\r\n"))
        code = int(line.split(" ", 2)[1])
        if 100 <= code < 200:
            continue
        break
    if method == "HEAD" or code in (204, 304):
        n = 0
    elif "transfer-encoding" in fields or "content-length" in fields:
        n = read_body(r, fields)
    else:
        return code, r.rest(), False
    keep = fields.get("connection", "").lower() != "close"
    return code, n, keep


class Pool:
    """Keep-alive connections shared by threads: take one, use it, give it back."""

    def __init__(self, addr: tuple[str, int], size: int, timeout: float) -> None:
        self.addr = addr
        self.timeout = timeout
        self.free: queue.Queue[socket.socket | None] = queue.Queue()
        for _ in range(size):
            self.free.put(None)  # connected lazily

    def take(self) -> socket.socket:
        s = self.free.get(timeout=self.timeout)
        if s is None:
            s = socket.create_connection(self.addr, timeout=self.timeout)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s

    def give(self, s: socket.socket | None) -> None:
        self.free.put(s)

    def close(self) -> None:
        while not self.free.empty():
            s = self.free.get_nowait()
            if s is not None:
                s.close()


def _send(s: socket.socket, head: bytes, body: bytes, split: bool, expect: bool, r: Reader) -> None:
    if split:  # the request line in three segments
        cut1, cut2 = 2, max(3, head.find(b" HTTP/") - 2)
        for piece in (head[:cut1], head[cut1:cut2], head[cut2:]):
            s.sendall(piece)
            time.sleep(0.02)
    else:
        s.sendall(head)
    if expect:
        line, _ = _headers(r.until(b"\r\n\r\n"))
        if int(line.split(" ", 2)[1]) != 100:
            raise ValueError("expected 100 Continue")
    if body:
        s.sendall(body)


def _one_batch(
    pool: Pool, batch: list[Request], host: str, split: bool, out: list[Outcome]
) -> None:
    s = pool.take()
    keep = True
    try:
        r = Reader(s, time.monotonic() + pool.timeout)
        t0 = time.monotonic()
        if len(batch) == 1:
            req = batch[0]
            head, body = req.encode(host)
            _send(s, head, body, split, req.expect, r)
        else:  # pipelined: every request, then every response
            s.sendall(b"".join(b"".join(req.encode(host)) for req in batch))
        for req in batch:
            code, n, keep = read_response(r, req.method)
            out.append(Outcome(code, req.body, n, time.monotonic() - t0))
            if not keep:
                break
    except Exception:
        keep = False
        raise
    finally:
        if keep:
            pool.give(s)
        else:
            s.close()
            pool.give(None)


def client(args: argparse.Namespace) -> dict[str, Any]:
    plan: list[dict[str, Any]] = json.loads(args.plan)
    reqs: list[Request] = []
    rounds = max(int(p.get("count", 1)) for p in plan)
    for i in range(rounds):  # interleaved: every kind throughout the run
        for p in plan:
            if i < int(p.get("count", 1)):
                reqs.append(
                    Request(p.get("method", "GET"), p["path"], int(p.get("body", 0)),
                            bool(p.get("chunked")), bool(p.get("expect")))
                )  # fmt: skip
    depth = max(1, args.pipeline)
    batches = [reqs[i : i + depth] for i in range(0, len(reqs), depth)]
    pool = Pool((args.connect, args.port), args.connections, args.timeout)
    host = f"[{args.connect}]:{args.port}" if ":" in args.connect else f"{args.connect}:{args.port}"
    todo: queue.Queue[list[Request]] = queue.Queue()
    for b in batches:
        todo.put(b)
    outcomes: list[Outcome] = []
    errors: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        while True:
            try:
                batch = todo.get_nowait()
            except queue.Empty:
                return
            got: list[Outcome] = []
            try:
                _one_batch(pool, batch, host, args.split, got)
            except Exception as exc:
                with lock:
                    errors.append(repr(exc))
            with lock:
                outcomes.extend(got)

    threads = [threading.Thread(target=worker) for _ in range(max(1, args.threads))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    pool.close()
    by_code: dict[str, dict[str, Any]] = {}
    for o in outcomes:
        c = by_code.setdefault(
            str(o.code), {"count": 0, "request_bytes": 0, "response_bytes": 0, "seconds": []}
        )
        c["count"] += 1
        c["request_bytes"] += o.request_bytes
        c["response_bytes"] += o.response_bytes
        c["seconds"].append(o.seconds)
    return {"by_code": by_code, "failed": len(reqs) - len(outcomes), "errors": errors[:5]}


# ---------------------------------------------------------------------------- CLI


def _ip(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m meshlens.httpload", description=__doc__.split("\n")[0]
    )
    sub = p.add_subparsers(dest="role", required=True)
    srv = sub.add_parser("server")
    srv.add_argument("--bind", type=_ip, required=True)
    srv.add_argument("--port", type=int, default=0)
    srv.add_argument("--max-seconds", type=float, default=300.0)
    srv.add_argument("--defer-accept", action="store_true", help="TCP_DEFER_ACCEPT")
    cli = sub.add_parser("client")
    cli.add_argument("--connect", type=_ip, required=True)
    cli.add_argument("--port", type=int, required=True)
    cli.add_argument("--plan", required=True, help='JSON: [{"path": ..., "count": N, ...}]')
    cli.add_argument("--connections", type=int, default=1)
    cli.add_argument("--threads", type=int, default=1)
    cli.add_argument("--pipeline", type=int, default=1, help="requests per batch")
    cli.add_argument("--split", action="store_true", help="request line in three segments")
    cli.add_argument("--timeout", type=float, default=60.0)
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.role == "client":
        if not any(ipaddress.ip_address(args.connect) in n for n in ALLOWED_NETS):
            p.error(f"--connect {args.connect}: only loopback and the lab ranges are allowed")
        out = client(args)
        _emit(out)
        return 1 if out["failed"] else 0
    _emit(server(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
