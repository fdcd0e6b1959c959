"""Envoy sidecar configuration: Istio's shape, and nothing that reaches beyond the lab."""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from meshlens.bench import envoy as e
from meshlens.shop import SERVICES

ADDRS = {s: f"198.18.9.{i + 2}" for i, s in enumerate(SERVICES)}
ALLOWED = [ipaddress.ip_network(n) for n in ("127.0.0.0/8", "198.18.0.0/15")]


def _walk(obj: Any, key: str) -> list[Any]:
    out = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == key:
                out.append(v)
            out += _walk(v, key)
    elif isinstance(obj, list):
        for v in obj:
            out += _walk(v, key)
    return out


@pytest.fixture
def configs(tmp_path: Path) -> dict[str, dict[str, Any]]:
    return {s: e.sidecar_config(s, ADDRS[s], ADDRS, tmp_path) for s in SERVICES}


def test_only_lab_and_loopback_addresses(configs: dict[str, dict[str, Any]]) -> None:
    for cfg in configs.values():
        for sock in _walk(cfg, "socket_address"):
            assert any(ipaddress.ip_address(sock["address"]) in n for n in ALLOWED), sock
        assert cfg["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
        # static only: no xDS, no stats sinks, no tracer
        assert set(cfg) == {"node", "admin", "static_resources"}
        assert not _walk(cfg, "stats_sinks") and not _walk(cfg, "tracing")
        for c in cfg["static_resources"]["clusters"]:
            assert c["type"] == "STATIC"  # no DNS


def test_inbound_mtls_h2_and_tcp(configs: dict[str, dict[str, Any]]) -> None:
    for svc, cfg in configs.items():
        inbound = [
            lis
            for lis in cfg["static_resources"]["listeners"]
            if lis["name"].startswith("inbound|")
        ]
        assert len(inbound) == 1
        lis = inbound[0]
        assert lis["address"]["socket_address"] == {
            "address": ADDRS[svc],
            "port_value": SERVICES[svc].port,
        }
        chain = lis["filter_chains"][0]
        kind = SERVICES[svc].kind
        if kind == "http":  # the load generator is outside the mesh
            assert "transport_socket" not in chain
            continue
        tls = chain["transport_socket"]["typed_config"]
        assert tls["require_client_certificate"] is True
        assert chain["filters"][0]["name"] == (
            "envoy.filters.network.http_connection_manager"
            if kind == "grpc"
            else "envoy.filters.network.tcp_proxy"
        )
        app = next(c for c in cfg["static_resources"]["clusters"] if c["name"] == lis["name"])
        assert [s["address"] for s in _walk(app, "socket_address")] == ["127.0.0.1"]
        assert bool(_walk(app, "http2_protocol_options")) == (kind == "grpc")


def test_outbound_per_upstream_with_peer_identity(configs: dict[str, dict[str, Any]]) -> None:
    fe = configs["frontend"]["static_resources"]
    outs = {lis["name"]: lis for lis in fe["listeners"] if lis["name"].startswith("outbound|")}
    assert len(outs) == len(SERVICES["frontend"].upstreams)
    for up in SERVICES["frontend"].upstreams:
        name = f"outbound|{SERVICES[up].port}||{up}"
        assert outs[name]["address"]["socket_address"] == {
            "address": "127.0.0.1",
            "port_value": e.outbound_port(up),
        }
        cluster = next(c for c in fe["clusters"] if c["name"] == name)
        tls = cluster["transport_socket"]["typed_config"]
        sans = _walk(tls, "match_typed_subject_alt_names")[0]
        assert sans == [{"san_type": "URI", "matcher": {"exact": e.spiffe(up)}}]
        assert tls["common_tls_context"]["alpn_protocols"] == ["h2"]
    cart = configs["cart"]["static_resources"]
    redis_out = next(lis for lis in cart["listeners"] if lis["name"] == "outbound|6379||redis")
    assert redis_out["filter_chains"][0]["filters"][0]["name"] == "envoy.filters.network.tcp_proxy"


def test_outbound_ports_distinct_and_clear_of_admin() -> None:
    ports = [e.outbound_port(s) for s in SERVICES]
    assert len(set(ports)) == len(ports)
    assert e.ADMIN_PORT not in ports
    assert not set(ports) & {s.port for s in SERVICES.values()}


def test_argv_has_two_workers_and_no_hot_restart(tmp_path: Path) -> None:
    pytest.importorskip("envoy")
    argv = e.envoy_argv(tmp_path / "c.json", 2, tmp_path / "log")
    assert argv[argv.index("--concurrency") + 1] == "2"
    assert "--disable-hot-restart" in argv


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
def test_envoy_accepts_the_configs(tmp_path: Path) -> None:
    pytest.importorskip("envoy")
    e.make_certs(tmp_path, list(SERVICES))
    for svc in ("frontend", "cart", "redis", "checkout"):
        path = e.write_config(
            tmp_path / f"{svc}.json", e.sidecar_config(svc, ADDRS[svc], ADDRS, tmp_path / "certs")
        )
        json.loads(path.read_text())
        p = subprocess.run(
            [e.envoy_binary(), "--mode", "validate", "-c", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert p.returncode == 0, p.stdout[-500:] + p.stderr[-500:]
    out = subprocess.run(
        [
            "openssl",
            "x509",
            "-in",
            str(tmp_path / "certs" / "cart.crt"),
            "-noout",
            "-ext",
            "subjectAltName",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert e.spiffe("cart") in out
