"""DNS ground truth for tests and benchmarks: ``python -m meshlens.dnsload MODE ...``.

- ``query``: one query per NAME:TYPE argument, each from a fresh socket (UDP) or
  connection (TCP), as resolvers do; one JSON line per query with the rcode, the
  answers and the latency the client measured itself (send to receive).
- ``raw``: send the given bytes (hex) to a DNS port; for crafted malformed queries.
- ``flood``: as many queries per second as asked for (or as it can), with a bounded
  number outstanding, from a few sockets; one JSON summary line.
- ``serve``: a tiny UDP server answering every query with a fixed rcode (late, if
  asked), or, for a name ``<case>.<zone>``, with that crafted malformed response
  (dnsmsg.malformed_responses).

Destinations are restricted to loopback and the lab's ranges (loadgen.ALLOWED_NETS);
every wait is bounded.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import random
import select
import signal
import socket
import struct
import sys
import time
from typing import Any

from . import dnsmsg
from .loadgen import ALLOWED_NETS


def _emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


def _allowed(addr: str) -> str:
    ip = ipaddress.ip_address(addr)
    if not any(ip in net for net in ALLOWED_NETS):
        raise argparse.ArgumentTypeError(f"{addr} is outside loopback and the lab ranges")
    return addr


def _family(addr: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def _recv_exact(sock: socket.socket, n: int, deadline: float) -> bytes:
    buf = b""
    while len(buf) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        sock.settimeout(left)
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


def one_query(
    server: str,
    port: int,
    name: str,
    qtype: int,
    proto: str = "udp",
    timeout: float = 2.0,
    sport: int = 0,
    qid: int | None = None,
) -> dict[str, Any]:
    """Send one query, wait for its answer; what the client saw."""
    qid = random.randrange(65536) if qid is None else qid
    query = dnsmsg.build_query(qid, name, qtype)
    out: dict[str, Any] = {
        "name": name, "qtype": dnsmsg.qtype_text(qtype), "proto": proto, "id": qid,
    }  # fmt: skip
    fam = _family(server)
    kind = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
    with socket.socket(fam, kind) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if sport:
            s.bind(("::" if fam == socket.AF_INET6 else "0.0.0.0", sport))
        deadline = time.monotonic() + timeout
        try:
            if proto == "tcp":
                s.settimeout(timeout)
                s.connect((server, port))
            out["client_port"] = s.getsockname()[1]
            t0 = time.perf_counter_ns()
            if proto == "udp":
                s.sendto(query, (server, port))
                out["client_port"] = s.getsockname()[1]
                while True:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError
                    s.settimeout(left)
                    data, _ = s.recvfrom(65535)
                    if data[:2] == query[:2]:
                        break
            else:
                s.sendall(dnsmsg.tcp_frame(query))
                (n,) = struct.unpack("!H", _recv_exact(s, 2, deadline))
                data = _recv_exact(s, n, deadline)
            t1 = time.perf_counter_ns()
        except (TimeoutError, ConnectionError, OSError) as exc:
            out.update(rcode="timeout", error=type(exc).__name__, latency=None, answers=[])
            return out
    out["latency"] = (t1 - t0) / 1e9
    try:
        msg = dnsmsg.parse_message(data)
    except dnsmsg.Malformed as exc:
        out.update(rcode=dnsmsg.rcode_name(data[3] & 0xF), answers=[], malformed=exc.reason)
        return out
    out["rcode"] = dnsmsg.rcode_name(msg.rcode)
    out["answers"] = [str(r.data) for r in msg.answers if isinstance(r.data, str)]
    return out


def _parse_qspec(spec: str) -> tuple[str, int]:
    name, _, typ = spec.rpartition(":")
    if not name:
        name, typ = spec, "A"
    code = dnsmsg.QTYPE_CODES.get(typ.upper())
    if code is None:
        code = int(typ)
    return name, code


def pipelined(
    server: str, port: int, specs: list[tuple[str, int]], timeout: float
) -> list[dict[str, Any]]:
    """DNS over TCP, every query in one write on one connection (as glibc sends
    A and AAAA together); the answers in the order they come."""
    qids = random.sample(range(65536), len(specs))
    wire = b"".join(
        dnsmsg.tcp_frame(dnsmsg.build_query(qid, name, qtype))
        for qid, (name, qtype) in zip(qids, specs, strict=True)
    )
    out: dict[int, dict[str, Any]] = {
        qid: {"name": name, "qtype": dnsmsg.qtype_text(qtype), "proto": "tcp", "id": qid}
        for qid, (name, qtype) in zip(qids, specs, strict=True)
    }
    deadline = time.monotonic() + timeout
    with socket.create_connection((server, port), timeout=timeout) as s:
        t0 = time.perf_counter_ns()
        s.sendall(wire)
        for _ in specs:
            try:
                (n,) = struct.unpack("!H", _recv_exact(s, 2, deadline))
                data = _recv_exact(s, n, deadline)
            except (TimeoutError, ConnectionError, OSError):
                break
            t1 = time.perf_counter_ns()
            hit = out.get(struct.unpack_from("!H", data)[0])
            if hit is None:
                continue
            msg = dnsmsg.parse_message(data)
            hit.update(
                latency=(t1 - t0) / 1e9,
                rcode=dnsmsg.rcode_name(msg.rcode),
                answers=[str(r.data) for r in msg.answers if isinstance(r.data, str)],
            )
    for v in out.values():
        v.setdefault("rcode", "timeout")
    return list(out.values())


def cmd_query(args: argparse.Namespace) -> int:
    if args.pipeline:
        for result in pipelined(
            args.server, args.port, [_parse_qspec(q) for q in args.queries], args.timeout
        ):
            _emit(result)
        return 0
    for spec in args.queries:
        name, qtype = _parse_qspec(spec)
        _emit(one_query(args.server, args.port, name, qtype, args.proto, args.timeout, args.sport))
    return 0


def cmd_raw(args: argparse.Namespace) -> int:
    for hexdata in args.hex:
        data = bytes.fromhex(hexdata)
        fam = _family(args.server)
        kind = socket.SOCK_DGRAM if args.proto == "udp" else socket.SOCK_STREAM
        with socket.socket(fam, kind) as s:
            s.settimeout(args.timeout)
            answered = False
            try:
                if args.proto == "udp":
                    s.sendto(data, (args.server, args.port))
                else:
                    s.connect((args.server, args.port))
                    s.sendall(dnsmsg.tcp_frame(data))
                answered = bool(s.recv(65535))
            except (TimeoutError, ConnectionError, OSError):
                pass
            _emit({"sent": len(data), "answered": answered})
    return 0


def cmd_flood(args: argparse.Namespace) -> int:
    """Queries at --rate per second (0: as fast as possible) for --duration s."""
    fam = _family(args.server)
    socks = [socket.socket(fam, socket.SOCK_DGRAM) for _ in range(args.sockets)]
    for s in socks:
        s.setblocking(False)
        s.connect((args.server, args.port))
    names = [f"{args.prefix}{i}.{args.zone}" if args.names > 1 else args.zone for i in
             range(args.names)]  # fmt: skip
    queries = [dnsmsg.build_query(0, n, dnsmsg.TYPE_A) for n in names]
    poller = select.poll()
    for s in socks:
        poller.register(s, select.POLLIN)
    by_fd = {s.fileno(): s for s in socks}
    outstanding: dict[tuple[int, int], int] = {}  # (sock index, id) -> send time ns
    sent = answered = timeouts = lat_sum = 0
    next_id = [random.randrange(65536) for _ in socks]
    t0 = time.monotonic()
    end = t0 + args.duration
    timeout_ns = int(args.timeout * 1e9)
    i = 0
    while True:
        now = time.monotonic()
        if now >= end and not outstanding:
            break
        if now >= end + args.timeout + 1:
            break
        # send what the rate allows, keeping at most --outstanding in flight
        due = sent + 1 if args.rate == 0 else int((now - t0) * args.rate) + 1
        while now < end and sent < due and len(outstanding) < args.outstanding:
            k = i % len(socks)
            qid = next_id[k]
            next_id[k] = (qid + 1) & 0xFFFF
            if (k, qid) in outstanding:
                break
            q = queries[i % len(queries)]
            try:
                socks[k].send(struct.pack("!H", qid) + q[2:])
            except BlockingIOError:
                break
            outstanding[(k, qid)] = time.perf_counter_ns()
            sent += 1
            i += 1
        for fd, _ in poller.poll(1):
            s = by_fd[fd]
            k = socks.index(s)
            for _ in range(64):
                try:
                    data = s.recv(4096)
                except BlockingIOError:
                    break
                if len(data) < 2:
                    continue
                t = outstanding.pop((k, struct.unpack_from("!H", data)[0]), None)
                if t is not None:
                    answered += 1
                    lat_sum += time.perf_counter_ns() - t
        if len(outstanding) >= args.outstanding or now >= end:
            cut = time.perf_counter_ns() - timeout_ns
            for key in [key for key, t in outstanding.items() if t < cut]:
                del outstanding[key]
                timeouts += 1
    elapsed = time.monotonic() - t0
    for s in socks:
        s.close()
    _emit(
        {
            "sent": sent, "answered": answered, "timeouts": timeouts + len(outstanding),
            "seconds": round(elapsed, 3), "per_second": round(sent / max(args.duration, 1e-9), 1),
            "mean_latency_ms": round(lat_sum / max(answered, 1) / 1e6, 4),
        }
    )  # fmt: skip
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Answer every query with --rcode, or with a crafted malformed response."""
    stop = {"flag": False}

    def handler(*_: Any) -> None:
        stop["flag"] = True

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    fam = _family(args.bind)
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        s.bind((args.bind, args.port))
        s.settimeout(0.2)
        _emit({"listening": s.getsockname()[1]})
        deadline = time.monotonic() + args.max_seconds
        served = 0
        while not stop["flag"] and time.monotonic() < deadline:
            try:
                data, peer = s.recvfrom(65535)
            except TimeoutError:
                continue
            try:
                case = ""
                if args.malformed_by_name:
                    name, _ = dnsmsg.decode_name(data, dnsmsg.HEADER_LEN)
                    case = name.split(".", 1)[0]
                if case in dnsmsg.malformed_responses(data):
                    reply = dnsmsg.malformed_responses(data)[case][1]
                else:
                    reply = dnsmsg.build_response(data, rcode=args.rcode)
            except (dnsmsg.Malformed, dnsmsg._Short, ValueError, IndexError, struct.error):
                continue
            if args.delay:
                time.sleep(min(args.delay, 10.0))
            s.sendto(reply, peer)
            served += 1
    _emit({"served": served})
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m meshlens.dnsload")
    sub = p.add_subparsers(dest="mode", required=True)
    for name in ("query", "raw", "flood"):
        sp = sub.add_parser(name)
        sp.add_argument("--server", type=_allowed, required=True)
        sp.add_argument("--port", type=int, default=53)
        sp.add_argument("--timeout", type=float, default=2.0)
        if name != "flood":
            sp.add_argument("--proto", choices=("udp", "tcp"), default="udp")
    q = sub.choices["query"]
    q.add_argument("--sport", type=int, default=0, help="bind this source port")
    q.add_argument("--pipeline", action="store_true", help="TCP: all queries in one write")
    q.add_argument("queries", nargs="+", metavar="NAME[:TYPE]")
    sub.choices["raw"].add_argument("hex", nargs="+")
    f = sub.choices["flood"]
    f.add_argument("--rate", type=float, default=0.0, help="queries/s (0: as fast as possible)")
    f.add_argument("--duration", type=float, default=5.0)
    f.add_argument("--outstanding", type=int, default=256)
    f.add_argument("--sockets", type=int, default=4)
    f.add_argument("--names", type=int, default=1, help="distinct names (prefixN.zone)")
    f.add_argument("--prefix", default="n")
    f.add_argument("--zone", default="bench.mlab.test")
    s = sub.add_parser("serve")
    s.add_argument("--bind", type=_allowed, required=True)
    s.add_argument("--port", type=int, default=53)
    s.add_argument("--rcode", type=int, default=5)
    s.add_argument(
        "--malformed-by-name", action="store_true",
        help="answer <case>.<anything> with dnsmsg.malformed_responses()[case]",
    )  # fmt: skip
    s.add_argument("--delay", type=float, default=0.0, help="answer this late (s, <= 10)")
    s.add_argument("--max-seconds", type=float, default=120.0)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cmd = {"query": cmd_query, "raw": cmd_raw, "flood": cmd_flood, "serve": cmd_serve}
    return cmd[args.mode](args)


if __name__ == "__main__":
    sys.exit(main())
