"""Command line of the shop's processes (JSON lines on stdout):

    python -m meshlens.shop serve NAME --listen HOST:PORT [--upstream SVC=HOST:PORT ...]
        prints {"ready": NAME, ...} once serving; on SIGTERM/SIGINT prints its counters
        ({"service": NAME, "http": ..., "upstreams": ..., "redis": ...}) and exits 0.
    python -m meshlens.shop probe [--grpc HOST:PORT ...] [--http HOST:PORT ...]
        readiness as kubelet would check it: gRPC health Check / GET /_healthz until all
        answer or --timeout passes; exit 0 when all are ready.
    python -m meshlens.shop visit --url http://HOST:PORT [--pages N]
        fetches each page of the shop once (or N times round-robin) on one keep-alive
        connection, checks the answers, prints its exact byte counts.

Addresses are restricted to loopback and the lab's test ranges.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import signal
import sys
import threading
import time
from typing import Any

from . import SERVICES

ALLOWED_NETS = [ipaddress.ip_network(n) for n in ("127.0.0.0/8", "198.18.0.0/15")]


def _emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


def hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise argparse.ArgumentTypeError(f"want IPv4:PORT, got {text!r}") from None
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"want IPv4:PORT, got {text!r}")
    if not any(ip in net for net in ALLOWED_NETS):
        raise argparse.ArgumentTypeError(f"{host}: only loopback and 198.18.0.0/15 are allowed")
    return str(ip), int(port)


def upstream(text: str) -> tuple[str, tuple[str, int]]:
    name, sep, addr = text.partition("=")
    if not sep or name not in SERVICES:
        raise argparse.ArgumentTypeError(f"want SERVICE=HOST:PORT, got {text!r}")
    return name, hostport(addr)


def serve(args: argparse.Namespace) -> int:
    # Many threads wait on the network here (HTTP handlers, gRPC workers and pollers);
    # with CPython's default 5 ms GIL switch interval each wake-up can queue behind a busy
    # thread for that long, a latency Online Boutique's Go/C#/Node services do not have.
    sys.setswitchinterval(args.switch_interval)
    from .rpc import Upstreams
    from .rpc import serve as grpc_serve

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    svc = SERVICES[args.name]
    targets = {name: f"{h}:{p}" for name, (h, p) in args.upstream}
    missing = [u for u in svc.upstreams if u not in targets]
    if missing:
        print(f"shop {args.name}: missing --upstream for {', '.join(missing)}", file=sys.stderr)
        return 2
    up = Upstreams(targets)
    redis = None
    if "redis" in svc.upstreams:
        from .resp import Redis

        rh, rp = dict(args.upstream)["redis"]
        redis = Redis(rh, rp)
    host, port = args.listen
    out: dict[str, Any] = {"service": args.name}
    if svc.kind == "http":
        from .frontend import Frontend, FrontendServer

        srv = FrontendServer((host, port), Frontend(up))
        thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.2})
        thread.start()
        _emit({"ready": args.name, "listen": f"{host}:{port}"})
        stop.wait(args.max_seconds)
        srv.shutdown()
        thread.join(timeout=5)
        out["http"] = srv.stats.snapshot()
        srv.server_close()
    else:
        from .backends import make_servicer

        server, health = grpc_serve(
            args.name, make_servicer(args.name, up, redis), f"{host}:{port}"
        )
        _emit({"ready": args.name, "listen": f"{host}:{port}"})
        stop.wait(args.max_seconds)
        out["health_checks"] = health.checks
        server.stop(grace=1).wait(timeout=5)
    out["upstreams"] = up.snapshot()
    if redis is not None:
        out["redis"] = redis.stats()
        redis.close()
    up.close()
    _emit(out)
    return 0


def probe(args: argparse.Namespace) -> int:
    """Bounded readiness loop over every target."""
    import http.client

    from .rpc import health_check

    pending = [("grpc", h, p) for h, p in args.grpc] + [("http", h, p) for h, p in args.http]
    deadline = time.monotonic() + args.timeout
    checks = 0
    while pending and time.monotonic() < deadline:
        left = []
        for kind, h, p in pending:
            checks += 1
            ok = False
            if kind == "grpc":
                ok = health_check(f"{h}:{p}", timeout=1.0)
            else:
                try:
                    conn = http.client.HTTPConnection(h, p, timeout=1.0)
                    conn.request("GET", "/_healthz")
                    ok = conn.getresponse().status == 200
                    conn.close()
                except OSError:
                    ok = False
            if not ok:
                left.append((kind, h, p))
        pending = left
        if pending:
            time.sleep(0.1)
    _emit({"ready": not pending, "checks": checks, "pending": [f"{h}:{p}" for _, h, p in pending]})
    return 0 if not pending else 1


def visit(args: argparse.Namespace) -> int:
    from .client import visit_pages

    host, port = args.url
    result = visit_pages(host, port, args.pages, timeout=args.timeout)
    _emit(result)
    return 0 if not result["errors"] else 1


def _url(text: str) -> tuple[str, int]:
    if not text.startswith("http://"):
        raise argparse.ArgumentTypeError("want http://HOST:PORT")
    return hostport(text[len("http://") :].rstrip("/"))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m meshlens.shop", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="run one service")
    s.add_argument("name", choices=[n for n, v in SERVICES.items() if v.kind != "redis"])
    s.add_argument("--listen", type=hostport, required=True)
    s.add_argument("--upstream", type=upstream, action="append", default=[])
    s.add_argument("--max-seconds", type=float, default=3600.0, help="exit after this long")
    s.add_argument(
        "--switch-interval", type=float, default=0.0005, help="CPython GIL switch interval (s)"
    )
    pr = sub.add_parser("probe", help="wait until services are ready")
    pr.add_argument("--grpc", type=hostport, action="append", default=[])
    pr.add_argument("--http", type=hostport, action="append", default=[])
    pr.add_argument("--timeout", type=float, default=20.0)
    v = sub.add_parser("visit", help="fetch every page, check, count bytes")
    v.add_argument("--url", type=_url, required=True)
    v.add_argument("--pages", type=int, default=6)
    v.add_argument("--timeout", type=float, default=10.0)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.cmd == "serve":
        return serve(args)
    if args.cmd == "probe":
        return probe(args)
    return visit(args)
