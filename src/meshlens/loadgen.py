"""Ground-truth TCP/UDP traffic generator: ``python -m meshlens.loadgen server|client ...``.

Every process prints JSON lines on stdout; the byte counts are exact payload bytes handed to
or returned by the socket calls, which is what the agent is compared against.

TCP protocol: the client sends its request and half-closes (SHUT_WR); the server reads to EOF,
sends the reply (``--reply-bytes`` or, with ``--echo``, as many bytes as it received) and
closes. With ``--request-bytes N`` the server replies as soon as N bytes arrived and then waits
for the client to close, which is what ``client --hold-seconds`` needs to keep an established,
fully exchanged connection open.

UDP: the client sends datagrams from one socket; the server answers each one.
Destinations are restricted to loopback and the lab's test ranges (see ALLOWED_NETS).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import resource
import select
import selectors
import signal
import socket
import sys
import threading
import time
from typing import IO, Any

ALLOWED_NETS = [
    ipaddress.ip_network(n) for n in ("127.0.0.0/8", "::1/128", "198.18.0.0/15", "fd00:198:18::/48")
]
MAX_DATAGRAM = 65507


def _emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _family(addr: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


class _Stop:
    """Set by SIGTERM/SIGINT; servers poll it."""

    flag = False

    @classmethod
    def install(cls) -> None:
        def handler(signum: int, frame: Any) -> None:
            cls.flag = True

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)


# ---------------------------------------------------------------------------- TCP server


class _Conn:
    __slots__ = ("eof", "received", "replying", "to_send")

    def __init__(self) -> None:
        self.received = 0
        self.to_send = 0
        self.eof = False
        self.replying = False


def tcp_server(args: argparse.Namespace) -> dict[str, Any]:
    lsock = socket.create_server(
        (args.bind, args.port), family=_family(args.bind), backlog=4096, reuse_port=False
    )
    lsock.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(lsock, selectors.EVENT_READ, None)
    out = {"connections": 0, "bytes_received": 0, "bytes_sent": 0, "errors": 0}
    payload = memoryview(b"\x00" * args.chunk)
    conns: dict[socket.socket, _Conn] = {}
    _emit({"listening": lsock.getsockname()[1]})

    def update(sock: socket.socket, c: _Conn) -> None:
        if not c.replying and (c.eof or (args.request_bytes and c.received >= args.request_bytes)):
            c.replying = True
            c.to_send = c.received if args.echo else args.reply_bytes
        events = (0 if c.eof else selectors.EVENT_READ) | (
            selectors.EVENT_WRITE if c.to_send else 0
        )
        if events:
            sel.modify(sock, events, c)
        else:  # request read to EOF and reply sent
            sel.unregister(sock)
            del conns[sock]
            sock.close()
            out["connections"] += 1

    deadline = time.monotonic() + args.max_seconds
    while not _Stop.flag and time.monotonic() < deadline:
        for key, mask in sel.select(timeout=0.2):
            if key.data is None:  # listening socket: accept a bounded batch
                for _ in range(256):
                    try:
                        new, _addr = lsock.accept()
                    except (BlockingIOError, InterruptedError):
                        break
                    new.setblocking(False)
                    conns[new] = _Conn()
                    sel.register(new, selectors.EVENT_READ, conns[new])
                continue
            sock, c = key.fileobj, key.data
            assert isinstance(sock, socket.socket) and isinstance(c, _Conn)
            try:
                if mask & selectors.EVENT_READ:
                    data = sock.recv(65536)
                    c.received += len(data)
                    out["bytes_received"] += len(data)
                    c.eof = not data
                if mask & selectors.EVENT_WRITE and c.to_send:
                    n = sock.send(payload[: min(c.to_send, args.chunk)])
                    c.to_send -= n
                    out["bytes_sent"] += n
                update(sock, c)
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                sel.unregister(sock)
                del conns[sock]
                sock.close()
                out["errors"] += 1
    out["unfinished"] = len(conns)
    for sock in conns:
        sock.close()
    lsock.close()
    return out


# ---------------------------------------------------------------------------- UDP server


def udp_server(args: argparse.Namespace) -> dict[str, Any]:
    sock = socket.socket(_family(args.bind), socket.SOCK_DGRAM)
    for opt in (getattr(socket, "SO_RCVBUFFORCE", 33), socket.SO_RCVBUF):
        try:  # absorb bursts: a full receive queue silently drops datagrams
            sock.setsockopt(socket.SOL_SOCKET, opt, 4 << 20)
            break
        except OSError:
            continue
    sock.bind((args.bind, args.port))
    out = {"datagrams_received": 0, "bytes_received": 0, "datagrams_sent": 0, "bytes_sent": 0}
    reply = b"\x00" * args.reply_bytes
    _emit({"listening": sock.getsockname()[1]})
    deadline = time.monotonic() + args.max_seconds
    while not _Stop.flag and time.monotonic() < deadline:
        try:
            ready, _, _ = select.select([sock], [], [], 0.2)
        except InterruptedError:
            continue
        if not ready:
            continue
        data, peer = sock.recvfrom(65536)
        out["datagrams_received"] += 1
        out["bytes_received"] += len(data)
        answer = data if args.echo else reply
        if answer:
            out["bytes_sent"] += sock.sendto(answer, peer)
            out["datagrams_sent"] += 1
    sock.close()
    return out


# ---------------------------------------------------------------------------- TCP client


def _recv_upto(sock: socket.socket, limit: int | None, deadline: float) -> tuple[int, bool]:
    """Read until EOF or `limit` bytes; return (bytes read, eof seen)."""
    got = 0
    while limit is None or got < limit:
        if time.monotonic() > deadline:
            raise TimeoutError("connection deadline")
        want = 65536 if limit is None else min(65536, limit - got)
        data = sock.recv(want)
        if not data:
            return got, True
        got += len(data)
    return got, False


def _tcp_one(args: argparse.Namespace, payload: memoryview, tally: dict[str, Any]) -> None:
    sent = received = 0
    ok = False
    try:
        start = time.monotonic()
        deadline = start + args.timeout
        with socket.create_connection((args.connect, args.port), timeout=args.timeout) as sock:
            port = sock.getsockname()[1]
            while sent < args.send_bytes:
                if time.monotonic() > deadline:
                    raise TimeoutError("connection deadline")
                sent += sock.send(payload[: min(args.chunk, args.send_bytes - sent)])
            if args.hold_seconds:  # exchange, stay established, then close
                n, _ = _recv_upto(sock, args.expect_reply_bytes, deadline)
                received += n
                time.sleep(args.hold_seconds)
                deadline += args.hold_seconds
            sock.shutdown(socket.SHUT_WR)
            n, _ = _recv_upto(sock, None, deadline)
            received += n
            ok = args.expect_reply_bytes is None or received == args.expect_reply_bytes
    except OSError:
        port = None
    with tally["lock"]:
        tally["bytes_sent"] += sent
        tally["bytes_received"] += received
        tally["connections" if ok else "failed"] += 1
        if ok and port is not None:
            tally["ports"].append(port)


def tcp_client(args: argparse.Namespace) -> dict[str, Any]:
    payload = memoryview(b"\x00" * args.chunk)
    tally: dict[str, Any] = {
        "lock": threading.Lock(),
        "connections": 0,
        "failed": 0,
        "bytes_sent": 0,
        "bytes_received": 0,
        "ports": [],
    }
    todo = iter(range(args.connections))
    todo_lock = threading.Lock()

    def worker() -> None:
        while True:
            with todo_lock:
                if next(todo, None) is None:
                    return
            _tcp_one(args, payload, tally)

    threading.stack_size(512 * 1024)
    workers = [
        threading.Thread(target=worker) for _ in range(min(args.concurrency, args.connections))
    ]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    out = {k: tally[k] for k in ("connections", "failed", "bytes_sent", "bytes_received")}
    if args.report_ports:
        out["local_ports"] = sorted(tally["ports"])
    return out


# ---------------------------------------------------------------------------- UDP client


def udp_client(args: argparse.Namespace) -> dict[str, Any]:
    dest = (args.connect, args.port)
    want = args.expect_reply_bytes
    expected = args.datagrams if want else 0  # replies are awaited only when expected
    out = {"datagrams_sent": 0, "bytes_sent": 0, "datagrams_received": 0, "bytes_received": 0}
    bad = 0
    payload = b"\x00" * args.datagram_bytes
    with socket.socket(_family(args.connect), socket.SOCK_DGRAM) as sock:
        if args.connected:
            sock.connect(dest)
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline and (
            out["datagrams_sent"] < args.datagrams or out["datagrams_received"] < expected
        ):
            in_flight = out["datagrams_sent"] - out["datagrams_received"]
            if out["datagrams_sent"] < args.datagrams and (not expected or in_flight < args.window):
                try:
                    n = sock.send(payload) if args.connected else sock.sendto(payload, dest)
                except ConnectionRefusedError:  # a previous ICMP port unreachable
                    continue
                out["datagrams_sent"] += 1
                out["bytes_sent"] += n
                continue
            ready, _, _ = select.select([sock], [], [], max(0.0, deadline - time.monotonic()))
            if ready:
                try:
                    data = sock.recv(65536)
                except ConnectionRefusedError:  # ICMP port unreachable (connected mode)
                    continue
                out["datagrams_received"] += 1
                out["bytes_received"] += len(data)
                bad += len(data) != want
    out["failed"] = max(0, expected - out["datagrams_received"]) + bad
    return out


# ---------------------------------------------------------------------------- helpers for tests


def read_line(proc: Any, timeout: float = 10.0) -> bytes:
    """One line of a Popen's stdout (opened with stdout=PIPE), bounded in time.
    TimeoutError, or EOFError when the process ends first; both carry what came."""
    stream: IO[bytes] = proc.stdout
    fd = stream.fileno()
    deadline = time.monotonic() + timeout
    line = b""
    while not line.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise TimeoutError(f"no line within {timeout:g}s (got {line!r})")
        ch = os.read(fd, 1)  # byte by byte: nothing stays hidden in a Python buffer
        if not ch:
            raise EOFError(f"process ended before a full line (got {line!r})")
        line += ch
    return line


def read_json_line(proc: Any, timeout: float = 10.0) -> dict[str, Any]:
    """Read one JSON line from a Popen's stdout (opened with stdout=PIPE), bounded in time."""
    result: dict[str, Any] = json.loads(read_line(proc, timeout))
    return result


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_server(proc: Any, timeout: float = 10.0) -> dict[str, Any]:
    """SIGTERM a server started with stdout=PIPE and return its final totals line."""
    proc.send_signal(signal.SIGTERM)
    totals = read_json_line(proc, timeout)
    proc.wait(timeout=timeout)
    return totals


# ---------------------------------------------------------------------------- CLI


def _int_range(lo: int, hi: int | None = None) -> Any:
    def parse(text: str) -> int:
        value = int(text)
        if value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(
                f"{value} not in [{lo}, {hi if hi is not None else 'inf'}]"
            )
        return value

    parse.__name__ = "integer"
    return parse


def _seconds(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 86400:
        raise argparse.ArgumentTypeError(f"{text} not in [0, 86400] seconds")
    return value


def _ip(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m meshlens.loadgen", description=__doc__.split("\n")[0]
    )
    sub = p.add_subparsers(dest="role", required=True)
    srv = sub.add_parser("server", help="accept and answer traffic, print totals at the end")
    cli = sub.add_parser("client", help="generate traffic, print totals")
    for sp in (srv, cli):
        sp.add_argument("--proto", choices=("tcp", "udp"), required=True)
        sp.add_argument(
            "--chunk", type=_int_range(1, 1 << 20), default=4096, help="bytes per send()"
        )
    srv.add_argument("--bind", type=_ip, required=True)
    srv.add_argument("--port", type=_int_range(0, 65535), required=True, help="0: any free port")
    srv.add_argument("--max-seconds", type=_seconds, default=300.0)
    mode = srv.add_mutually_exclusive_group()
    mode.add_argument("--reply-bytes", type=_int_range(0), default=0)
    mode.add_argument("--echo", action="store_true", help="reply with as many bytes as received")
    srv.add_argument(
        "--request-bytes",
        type=_int_range(1),
        default=None,
        help="TCP: reply once this many bytes arrived, then wait for the client to close",
    )
    cli.add_argument("--connect", type=_ip, required=True)
    cli.add_argument("--port", type=_int_range(1, 65535), required=True)
    cli.add_argument("--timeout", type=_seconds, default=30.0, help="per connection / UDP run")
    cli.add_argument("--expect-reply-bytes", type=_int_range(0), default=None)
    cli.add_argument("--connections", type=_int_range(1, 1_000_000), default=1)
    cli.add_argument("--concurrency", type=_int_range(1, 10_000), default=1)
    cli.add_argument("--send-bytes", type=_int_range(0), default=0)
    cli.add_argument("--hold-seconds", type=_seconds, default=0.0)
    cli.add_argument("--report-ports", action="store_true")
    cli.add_argument("--datagrams", type=_int_range(1, 10_000_000), default=1)
    cli.add_argument("--datagram-bytes", type=_int_range(0, MAX_DATAGRAM), default=0)
    cli.add_argument("--connected", action="store_true", help="UDP: connect() + send()")
    cli.add_argument(
        "--window", type=_int_range(1, 100_000), default=32, help="UDP: max unanswered"
    )
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(argv)
    if args.role == "client":
        if not any(ipaddress.ip_address(args.connect) in net for net in ALLOWED_NETS):
            p.error(f"--connect {args.connect}: only loopback and {ALLOWED_NETS[2:]} are allowed")
        if args.proto == "tcp" and args.hold_seconds and args.expect_reply_bytes is None:
            p.error("--hold-seconds needs --expect-reply-bytes (and a server with --request-bytes)")
        if args.proto == "udp" and (args.expect_reply_bytes or 0) > MAX_DATAGRAM:
            p.error(f"--expect-reply-bytes must be <= {MAX_DATAGRAM} for UDP")
    elif args.proto == "udp" and args.reply_bytes > MAX_DATAGRAM:
        p.error(f"--reply-bytes must be <= {MAX_DATAGRAM} for UDP")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _raise_nofile()
    if args.role == "server":
        _Stop.install()
        _emit(tcp_server(args) if args.proto == "tcp" else udp_server(args))
        return 0
    out = tcp_client(args) if args.proto == "tcp" else udp_client(args)
    _emit(out)
    return 1 if out["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
