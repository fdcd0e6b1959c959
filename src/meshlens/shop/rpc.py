"""gRPC plumbing of the shop: the protos (compiled at import by grpcio-tools, nothing
generated on disk), counted client channels, and a server with the health service."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc  # type: ignore[import-untyped, import-not-found, unused-ignore]

_loaded: tuple[Any, Any, Any, Any] | None = None


def protos() -> tuple[Any, Any, Any, Any]:
    """(demo_pb2, demo_pb2_grpc, health_pb2, health_pb2_grpc), compiled once per process."""
    global _loaded
    if _loaded is None:
        pb, svc = grpc.protos_and_services("meshlens/shop/demo.proto")
        hpb, hsvc = grpc.protos_and_services("meshlens/shop/health.proto")
        _loaded = (pb, svc, hpb, hsvc)
    return _loaded


class CallCounter(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Counts unary calls per (upstream, method) and their failures."""

    def __init__(
        self, upstream: str, calls: Counter[str], errors: Counter[str], lock: threading.Lock
    ) -> None:
        self.upstream = upstream
        self.calls = calls
        self.errors = errors
        self.lock = lock

    def intercept_unary_unary(
        self, continuation: Callable[[Any, Any], Any], details: Any, request: Any
    ) -> Any:
        key = f"{self.upstream}{details.method}"
        outcome = continuation(details, request)
        failed = outcome.exception() is not None
        with self.lock:
            self.calls[key] += 1
            if failed:
                self.errors[key] += 1
        return outcome


class Upstreams:
    """One channel per upstream service (as Online Boutique's services hold them),
    every call counted."""

    def __init__(self, targets: dict[str, str]) -> None:
        _, svc, _, _ = protos()
        self.calls: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._channels: list[grpc.Channel] = []
        self.stubs: dict[str, Any] = {}
        from . import GRPC_SERVICE

        for name, target in targets.items():
            if name not in GRPC_SERVICE:
                continue
            # One subchannel per target and no retries or keepalive pings: traffic is
            # exactly the calls.
            channel = grpc.insecure_channel(
                target,
                options=[("grpc.enable_retries", 0), ("grpc.use_local_subchannel_pool", 1)],
            )
            channel = grpc.intercept_channel(
                channel, CallCounter(name, self.calls, self.errors, self._lock)
            )
            self._channels.append(channel)
            self.stubs[name] = getattr(svc, GRPC_SERVICE[name] + "Stub")(channel)

    def __getitem__(self, name: str) -> Any:
        return self.stubs[name]

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"calls": dict(self.calls), "errors": dict(self.errors)}

    def close(self) -> None:
        for ch in self._channels:
            ch.close()


class Health:
    """grpc.health.v1.Health: SERVING for "" and the service's own name."""

    def __init__(self, names: set[str]) -> None:
        self.names = names
        self.checks = 0

    def Check(self, request: Any, context: Any) -> Any:
        _, _, hpb, _ = protos()
        self.checks += 1
        if request.service and request.service not in self.names:
            context.abort(grpc.StatusCode.NOT_FOUND, "unknown service")
        return hpb.HealthCheckResponse(status=hpb.HealthCheckResponse.SERVING)


def serve(service: str, servicer: Any, bind: str, workers: int = 8) -> tuple[grpc.Server, Health]:
    """Start a gRPC server for one hipstershop service plus health on bind (host:port)."""
    from . import GRPC_SERVICE

    _, svc, _, hsvc = protos()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers),
        options=[("grpc.so_reuseport", 0)],
    )
    full = GRPC_SERVICE[service]
    getattr(svc, f"add_{full}Servicer_to_server")(servicer, server)
    health = Health({"", f"hipstershop.{full}"})
    hsvc.add_HealthServicer_to_server(health, server)
    if server.add_insecure_port(bind) == 0:
        raise OSError(f"cannot bind {bind}")
    server.start()
    return server, health


def health_check(target: str, service: str = "", timeout: float = 2.0) -> bool:
    """One grpc.health.v1 Check on a fresh channel; True if SERVING."""
    _, _, hpb, hsvc = protos()
    with grpc.insecure_channel(target) as channel:
        try:
            resp = hsvc.HealthStub(channel).Check(
                hpb.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError:
            return False
    return bool(resp.status == hpb.HealthCheckResponse.SERVING)
