"""DNS with a real server: dnsmasq (Debian's dnsmasq-base) in a lab host answers a
known mix of queries over UDP and TCP; upstreams in other lab hosts refuse, fail,
answer late or answer with crafted malformed records; nftables drops answers.
Everything the agent counts is compared with what the clients saw themselves.

Only lab addresses are used; dnsmasq runs with --no-resolv --no-hosts and forwards
only to lab hosts. Counts are filtered by the client's workload (its netns name),
so other tests' traffic on this host cannot disturb them."""

from __future__ import annotations

import json
import os
import random
import select
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from meshlens import dnsmsg
from meshlens.agent import Agent
from meshlens.features.dns import DnsFeature, DnsQuery
from meshlens.lab import Host, Lab
from meshlens.loadgen import read_json_line, stop_server
from meshlens.probes import dns as probe
from meshlens.probes.base import objects_dir

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(os.geteuid() != 0, reason="BPF programs and namespaces need root"),
    pytest.mark.skipif(shutil.which("dnsmasq") is None, reason="dnsmasq (dnsmasq-base) missing"),
    pytest.mark.skipif(shutil.which("nft") is None, reason="nft (nftables) missing"),
]

KERNEL_TIMEOUT = 1.0  # --dns-timeout for these tests
LATE_PORT = 5300  # upstream answering after KERNEL_TIMEOUT
BAD_PORT = 5301  # upstream answering with crafted malformed records
DROP_UDP_PORT = 40053  # the client's answers to these ports are dropped by nftables
DROP_TCP_PORT = 40054
BIG_TXT = [f"{i:02d}" + "x" * 240 for i in range(16)]  # ~3.9 kB: several TCP segments

T = TypeVar("T")


def wait_for(fn: Callable[[], T], timeout: float, interval: float = 0.05) -> T:
    deadline = time.monotonic() + timeout
    while True:
        result = fn()
        if result or time.monotonic() >= deadline:
            return result
        time.sleep(interval)


@dataclass
class DnsLab:
    lab: Lab
    server: Host  # dnsmasq
    client: Host
    refuser: Host  # upstream answering REFUSED
    failer: Host  # upstream answering SERVFAIL; late and malformed servers; TCP/UDP peers
    web: str  # addresses the names resolve to (NATed to `failer` by `refuser`)
    udp_peer: str
    real: str

    @property
    def client_workload(self) -> str:
        return self.client.name

    @property
    def server_label(self) -> str:
        return f"{self.server.addr}:53"


def _dnsmasq(lab: Lab, srv: Host, refuser: Host, failer: Host, k: int) -> subprocess.Popen[Any]:
    v6 = f"fd00:198:18:{k}::c8"
    args = [
        "dnsmasq", "-k", "--no-resolv", "--no-hosts", "--port=53", "--bind-interfaces",
        f"--listen-address={srv.addr}", f"--listen-address={srv.addr6}",
        "--log-facility=-", "--log-queries", "--cache-size=0", "--no-negcache",
        "--local=/mlab.test/",
        f"--host-record=web.mlab.test,198.18.{k}.200,{v6}",
        f"--host-record=udp.mlab.test,198.18.{k}.201",
        f"--host-record=real.mlab.test,198.18.{k}.202",
        "--cname=alias.mlab.test,web.mlab.test",
        "--cname=cname2.mlab.test,real.mlab.test",
        "--txt-record=big.mlab.test," + ",".join(BIG_TXT),
        f"--server=/refused.test/{refuser.addr}",
        f"--server=/servfail.test/{failer.addr}",
    ]  # fmt: skip
    return srv.popen(*args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _serve(host: Host, port: int, *args: str) -> subprocess.Popen[Any]:
    proc = host.popen(
        *host.python("-m", "meshlens.dnsload", "serve", "--bind", host.addr),
        *("--port", str(port), *args),
        stdout=subprocess.PIPE,
    )
    read_json_line(proc, timeout=20)
    return proc


def query(
    host: Host, server: str, *specs: str, port: int = 53, **opts: Any
) -> list[dict[str, Any]]:
    """dnsload query in the host; what the client saw, one dict per query."""
    argv = ["--server", server, "--port", str(port)]
    for key, value in opts.items():
        flag = "--" + key.replace("_", "-")
        argv += [flag] if value is True else [flag, str(value)]
    p = host.run(*host.python("-m", "meshlens.dnsload", "query", *argv, *specs), timeout=120)
    return [json.loads(line) for line in p.stdout.decode().splitlines()]


@pytest.fixture
def dns_lab(bpf_ready: None) -> Iterator[DnsLab]:
    if not (objects_dir() / "dns.bpf.o").is_file():
        pytest.skip(f"dns.bpf.o not built in {objects_dir()}: run `make build`")
    with Lab(4, ipv6=True) as lab:
        srv, cli, refuser, failer = lab.hosts
        k = lab.subnet_index
        assert k is not None
        _serve(refuser, 53, "--rcode", "5")
        _serve(failer, 53, "--rcode", "2")
        _serve(failer, LATE_PORT, "--rcode", "0", "--delay", str(KERNEL_TIMEOUT + 0.6))
        _serve(failer, BAD_PORT, "--malformed-by-name")
        _dnsmasq(lab, srv, refuser, failer, k)
        web, udp_peer, real = (f"198.18.{k}.{i}" for i in (200, 201, 202))
        lab.nft(
            cli,
            f"""table inet mlab_dns {{
  chain in {{
    type filter hook input priority 0;
    udp sport 53 udp dport {DROP_UDP_PORT} drop
    tcp sport 53 tcp dport {DROP_TCP_PORT} tcp flags & psh == psh drop
  }}
}}
""",
        )
        # Names resolve to addresses no lab host holds: the client routes them via
        # `refuser`, which NATs them to `failer` both ways, so to the client (and
        # to the agent) the peer is a host elsewhere, seen by nothing local.
        for ip in (web, udp_peer, real):
            cli.run("ip", "route", "add", f"{ip}/32", "via", refuser.addr)
        cli.run("sysctl", "-qw", "net.ipv4.conf.all.accept_redirects=0")
        for conf in ("net.ipv4.ip_forward=1", "net.ipv4.conf.all.send_redirects=0",
                     "net.ipv4.conf.eth0.send_redirects=0"):  # fmt: skip
            refuser.run("sysctl", "-qw", conf)
        lab.nft(
            refuser,
            f"""table ip mlab_nat {{
  chain pre {{
    type nat hook prerouting priority -100;
    ip daddr {{ {web}, {udp_peer}, {real} }} dnat to {failer.addr}
  }}
  chain post {{
    type nat hook postrouting priority 100;
    ct status dnat masquerade
  }}
}}
""",
        )

        def ready() -> bool:
            out = query(cli, srv.addr, "web.mlab.test", timeout=0.5)
            return out[0]["rcode"] == "NOERROR"

        assert wait_for(ready, 15, 0.2), "dnsmasq did not come up"
        yield DnsLab(lab, srv, cli, refuser, failer, web, udp_peer, real)


@pytest.fixture
def dns_agent(make_agent: Callable[..., Agent]) -> Callable[..., tuple[Agent, DnsFeature]]:
    if not (objects_dir() / "dns.bpf.o").is_file():
        pytest.skip(f"dns.bpf.o not built in {objects_dir()}: run `make build`")

    def make(**options: Any) -> tuple[Agent, DnsFeature]:
        opts = {"dns_timeout": KERNEL_TIMEOUT, **options}
        agent = make_agent(features=("dns",), options=opts)
        feats = [f for f in agent.features if isinstance(f, DnsFeature)]
        assert len(feats) == 1, [st for st in agent.statuses if st.name == "dns"]
        return agent, feats[0]

    return make


class _Only(Collector):
    def __init__(self, feat: DnsFeature) -> None:
        self.feat = feat

    def collect(self) -> Iterator[Any]:
        yield from self.feat.families()


def scrape(agent: Agent, feat: DnsFeature) -> dict[str, list[Any]]:
    """Refresh, then the feature's exposition text parsed back: name -> samples."""
    agent.refresh(force=True)
    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Only(feat))
    out: dict[str, list[Any]] = {}
    for fam in text_string_to_metric_families(generate_latest(reg).decode()):
        for s in fam.samples:
            out.setdefault(s.name, []).append(s)
    return out


def requests_by(metrics: dict[str, list[Any]], **labels: str) -> Counter[tuple[str, str]]:
    got: Counter[tuple[str, str]] = Counter()
    for s in metrics.get("meshlens_dns_requests_total", []):
        if all(s.labels.get(k) == v for k, v in labels.items()):
            got[(s.labels["qtype"], s.labels["rcode"])] += int(s.value)
    return got


def settle(agent: Agent, feat: DnsFeature, done: Callable[[], bool], timeout: float = 10) -> None:
    """Wait (bounded) until the kernel has completed what the test expects."""

    def check() -> bool:
        agent.refresh(force=True)
        return done()

    assert wait_for(check, timeout, 0.1), feat.probe.stats()


def mine(records: list[DnsQuery], dl: DnsLab) -> list[DnsQuery]:
    """The client host's queries (by its netns: an unconnected socket bound to the
    wildcard address, as a resolver's is, has no local address of its own)."""
    netns = os.stat(f"/run/netns/{dl.client.name}").st_ino
    return [q for q in records if q.netns == netns]


# -- the tests -----------------------------------------------------------------------


def test_query_mix_counted_exactly_by_rcode_and_type(
    dns_lab: DnsLab, dns_agent: Callable[..., tuple[Agent, DnsFeature]]
) -> None:
    dl = dns_lab
    agent, feat = dns_agent()
    records: list[DnsQuery] = []
    feat.listeners.append(records.append)
    srv, cli = dl.server.addr, dl.client
    seen: list[dict[str, Any]] = []
    seen += query(cli, srv, *["web.mlab.test:A"] * 7)
    seen += query(cli, srv, *["web.mlab.test:AAAA"] * 5)
    seen += query(cli, srv, *["alias.mlab.test:A"] * 3)  # CNAME chain to an A
    seen += query(cli, srv, "alias.mlab.test:CNAME")
    seen += query(cli, srv, *[f"nx{i}.mlab.test:A" for i in range(11)])
    seen += query(cli, srv, "a.refused.test", "b.refused.test")
    seen += query(cli, srv, "a.servfail.test", "b.servfail.test", "c.servfail.test")
    seen += query(cli, srv, *["web.mlab.test:A"] * 4, proto="tcp")
    seen += query(cli, srv, "nxt1.mlab.test", "nxt2.mlab.test", proto="tcp")
    seen += query(cli, srv, "web.mlab.test", "web.mlab.test", sport=DROP_UDP_PORT, timeout=1.5)
    seen += query(cli, srv, "web.mlab.test", proto="tcp", sport=DROP_TCP_PORT, timeout=1.5)
    expected = Counter(
        {
            ("A", "NOERROR"): 7 + 3 + 4,
            ("AAAA", "NOERROR"): 5,
            ("CNAME", "NOERROR"): 1,
            ("A", "NXDOMAIN"): 11 + 2,
            ("A", "REFUSED"): 2,
            ("A", "SERVFAIL"): 3,
            ("A", "timeout"): 3,
        }
    )
    # the clients saw exactly this
    assert Counter((q["qtype"], q["rcode"]) for q in seen) == expected
    labels = {"source_workload": dl.client_workload, "server": dl.server_label}
    settle(
        agent,
        feat,
        lambda: (
            requests_by(scrape(agent, feat), **labels) == expected
            and len(mine(records, dl)) == expected.total()
        ),
    )
    m = scrape(agent, feat)
    assert requests_by(m, **labels) == expected
    # every query once in the record stream, with the client's id, type and rcode
    recs = {(q.id, q.name): q for q in mine(records, dl)}
    assert len(recs) == len(seen)
    lat_sum = 0.0
    for c in seen:
        q = recs[(c["id"], c["name"])]
        assert (q.proto, dnsmsg.qtype_text(q.qtype), q.rcode_label) == (
            c["proto"], c["qtype"], c["rcode"],
        )  # fmt: skip
        assert q.client_port == c["client_port"] and q.server_label == dl.server_label
        if c["rcode"] == "timeout":
            assert q.kind == "timeout" and KERNEL_TIMEOUT <= q.latency < KERNEL_TIMEOUT + 0.5
            continue
        # the kernel sees the query leave after the client's clock started and
        # the answer arrive before the client's clock stopped
        assert 0 < q.latency <= c["latency"], (q, c)
        lat_sum += q.latency
        assert [a.split(" ", 1)[1] for a in q.answers] == c["answers"]
        assert q.malformed is None and not q.partial
    alias = next(q for q in recs.values() if q.name == "alias.mlab.test" and q.qtype == 1)
    assert alias.answers == ["CNAME web.mlab.test", f"A {dl.web}"]
    assert alias.addresses == [(dl.web, "alias.mlab.test", 0)]  # host records have TTL 0
    # the histogram holds the answered queries, with the kernel's latencies
    answered = expected.total() - expected[("A", "timeout")]
    [count] = [
        s.value for s in m["meshlens_dns_request_duration_seconds_count"] if s.labels == labels
    ]
    [total] = [
        s.value for s in m["meshlens_dns_request_duration_seconds_sum"] if s.labels == labels
    ]
    assert count == answered
    assert total == pytest.approx(lat_sum, rel=1e-6, abs=1e-6)
    inf = [
        s.value
        for s in m["meshlens_dns_request_duration_seconds_bucket"]
        if s.labels.get("le") == "+Inf" and s.labels["source_workload"] == dl.client_workload
    ]
    assert inf == [answered]
    # the top names of the workload: bounded, and they add up to every query
    names = {
        s.labels["name"]: s.value
        for s in m["meshlens_dns_name_requests_total"]
        if s.labels["source_workload"] == dl.client_workload
    }
    assert sum(names.values()) == expected.total()
    assert names["web.mlab.test"] == 7 + 5 + 4 + 3
    assert len(names) <= feat.top.n + 1
    stats = feat.probe.stats()
    assert stats[probe.Stat.EVENTS_LOST] == 0 and stats[probe.Stat.PENDING_FULL] == 0


def test_timeout_counted_once_when_the_answer_comes_late(
    dns_lab: DnsLab, dns_agent: Callable[..., tuple[Agent, DnsFeature]]
) -> None:
    """A second port from --dns-port; the answer comes after the kernel's timeout:
    one timeout, no NOERROR, and the late answer is an unmatched response."""
    dl = dns_lab
    agent, feat = dns_agent(dns_port=[str(LATE_PORT)])
    before = feat.probe.stats()
    seen = query(dl.client, dl.failer.addr, "late.test", port=LATE_PORT, timeout=4)
    assert seen[0]["rcode"] == "NOERROR" and seen[0]["latency"] > KERNEL_TIMEOUT
    labels = {"source_workload": dl.client_workload, "server": f"{dl.failer.addr}:{LATE_PORT}"}
    settle(agent, feat, lambda: requests_by(scrape(agent, feat), **labels).total() >= 1)
    time.sleep(0.3)
    assert requests_by(scrape(agent, feat), **labels) == {("A", "timeout"): 1}
    after = feat.probe.stats()
    assert after[probe.Stat.TIMEOUTS] - before[probe.Stat.TIMEOUTS] >= 1
    assert after[probe.Stat.UNMATCHED] - before[probe.Stat.UNMATCHED] >= 1


def test_sweeper_skips_its_walk_while_nothing_is_pending(
    dns_agent: Callable[..., tuple[Agent, DnsFeature]],
) -> None:
    """The sweep timer (every 250 ms) walks the pending map only when the live
    count says something is pending, and every 16th time anyway."""
    _, feat = dns_agent()
    before = feat.probe.stats()
    time.sleep(2.0)  # 8 ticks
    after = feat.probe.stats()
    if before[probe.Stat.QUERIES] != after[probe.Stat.QUERIES]:
        pytest.skip("DNS traffic on this host during the test")
    assert after[probe.Stat.LIVE] == 0
    assert after[probe.Stat.SWEEPS] - before[probe.Stat.SWEEPS] <= 1


def _kernel_reasons(feat: DnsFeature, before: dict[probe.Stat, int]) -> Counter[str]:
    now = feat.probe.stats()
    out: Counter[str] = Counter()
    for stat, reason in probe.MALFORMED.items():
        if now[stat] - before[stat]:
            out[reason] = now[stat] - before[stat]
    if now[probe.Stat.QUERIES] - before[probe.Stat.QUERIES]:
        out["query"] = now[probe.Stat.QUERIES] - before[probe.Stat.QUERIES]
    return out


def test_crafted_malformed_queries_are_counted(
    dns_lab: DnsLab, dns_agent: Callable[..., tuple[Agent, DnsFeature]]
) -> None:
    dl = dns_lab
    agent, feat = dns_agent()
    cases = dnsmsg.malformed_queries()
    target = dl.server.addr  # dnsmasq, over UDP and TCP
    for proto in ("udp", "tcp"):
        before = feat.probe.stats()
        hexes = [raw.hex() for _, raw in cases.values()]
        dl.client.run(
            *dl.client.python("-m", "meshlens.dnsload", "raw", "--server", target),
            *("--proto", proto, "--timeout", "0.3", *hexes),
            timeout=120,
        )
        expected = Counter(reason for reason, _ in cases.values())
        assert wait_for(lambda e=expected, b=before: _kernel_reasons(feat, b) == e, 5), (
            proto,
            _kernel_reasons(feat, before),
        )
    m = scrape(agent, feat)
    mal = {s.labels["reason"]: s.value for s in m["meshlens_dns_malformed_total"]}
    for reason, n in Counter(r for r, _ in cases.values()).items():
        assert mal[reason] >= 2 * n


def test_random_packets_on_port_53_never_confuse_the_kernel(
    dns_lab: DnsLab, dns_agent: Callable[..., tuple[Agent, DnsFeature]]
) -> None:
    """Random bytes and mutated queries: each one lands in exactly the bucket the
    Python model of the kernel's rules (dnsmsg.classify_query) predicts."""
    dl = dns_lab
    _, feat = dns_agent()
    rng = random.Random(1234)
    packets: list[bytes] = []
    for i in range(150):
        if i % 3 == 0:
            packets.append(rng.randbytes(rng.randrange(0, 300)))
            continue
        q = bytearray(dnsmsg.build_query(i, f"n{i}.fuzz.test", 1, edns=i % 2 == 0))
        for _ in range(rng.randrange(1, 4)):
            pos = rng.randrange(len(q))
            q[pos] = rng.randrange(256)
        packets.append(bytes(q[: rng.randrange(1, len(q) + 1)]))
    packets = [p for p in packets if p]  # an empty datagram is not DNS at all
    verdicts = Counter(dnsmsg.classify_query(p) for p in packets)
    verdicts.pop("response", None)  # QR set: a server's answer, ignored
    before = feat.probe.stats()
    dl.client.run(
        *dl.client.python("-m", "meshlens.dnsload", "raw", "--server", dl.failer.addr6 or ""),
        *("--timeout", "0.05", *(p.hex() for p in packets)),
        timeout=180,
    )
    assert wait_for(lambda: _kernel_reasons(feat, before) == verdicts, 5), (
        _kernel_reasons(feat, before),
        verdicts,
    )


def test_malformed_response_records_counted_by_the_decoder(
    dns_lab: DnsLab, dns_agent: Callable[..., tuple[Agent, DnsFeature]]
) -> None:
    dl = dns_lab
    agent, feat = dns_agent(dns_port=[str(BAD_PORT)])
    records: list[DnsQuery] = []
    feat.listeners.append(records.append)
    cases = dnsmsg.malformed_responses(dnsmsg.build_query(0, "x.test", 1))
    names = [f"{case}.bad.test" for case in cases]
    seen = query(dl.client, dl.failer.addr, *names, port=BAD_PORT)
    assert all(c["rcode"] == "NOERROR" and c.get("malformed") for c in seen), seen
    settle(agent, feat, lambda: len(mine(records, dl)) == len(cases))
    got = {q.name.split(".")[0]: q.malformed for q in mine(records, dl)}
    assert got == {case: reason for case, (reason, _) in cases.items()}
    m = scrape(agent, feat)
    mal = {s.labels["reason"]: s.value for s in m["meshlens_dns_malformed_total"]}
    for reason, n in Counter(r for r, _ in cases.values()).items():
        assert mal[reason] >= n
    labels = {"source_workload": dl.client_workload, "server": f"{dl.failer.addr}:{BAD_PORT}"}
    assert requests_by(m, **labels) == {("A", "NOERROR"): len(cases)}


def test_tcp_pipelined_queries_and_multi_segment_answer(
    dns_lab: DnsLab, dns_agent: Callable[..., tuple[Agent, DnsFeature]]
) -> None:
    dl = dns_lab
    agent, feat = dns_agent()
    records: list[DnsQuery] = []
    feat.listeners.append(records.append)
    before = feat.probe.stats()
    seen = query(
        dl.client, dl.server.addr, "web.mlab.test:A", "web.mlab.test:AAAA", "nxp.mlab.test",
        proto="tcp", pipeline=True,
    )  # fmt: skip
    seen += query(dl.client, dl.server.addr, "big.mlab.test:TXT", proto="tcp")
    assert [c["rcode"] for c in seen] == ["NOERROR", "NOERROR", "NXDOMAIN", "NOERROR"]
    labels = {"source_workload": dl.client_workload, "server": dl.server_label}
    expected = {("A", "NOERROR"): 1, ("AAAA", "NOERROR"): 1, ("A", "NXDOMAIN"): 1}
    expected[("TXT", "NOERROR")] = 1
    settle(agent, feat, lambda: requests_by(scrape(agent, feat), **labels) == expected)
    after = feat.probe.stats()
    assert after[probe.Stat.UNMATCHED] == before[probe.Stat.UNMATCHED]
    assert after[probe.Stat.MAL_TCP] == before[probe.Stat.MAL_TCP]
    settle(agent, feat, lambda: any(q.name == "big.mlab.test" for q in mine(records, dl)))
    big = next(q for q in mine(records, dl) if q.name == "big.mlab.test")
    assert big.partial and big.malformed is None  # 512 bytes of a ~4 kB answer


def test_looked_up_names_label_tcp_and_udp_peers(
    dns_lab: DnsLab, dns_agent: Callable[..., tuple[Agent, DnsFeature]]
) -> None:
    """A connection to an address learned from DNS gets the looked-up name as its
    destination_service (the addresses are NATed by a lab host acting as a router,
    so no local socket or named netns holds them: a peer off this host)."""
    dl = dns_lab
    agent, feat = dns_agent()
    srv = dl.failer
    tcp = srv.popen(
        *srv.python("-m", "meshlens.loadgen", "server", "--proto", "tcp", "--bind", srv.addr),
        *("--port", "0", "--max-seconds", "60", "--reply-bytes", "101"),
        stdout=subprocess.PIPE,
    )
    tcp_port = int(read_json_line(tcp)["listening"])
    udp = srv.popen(
        *srv.python("-m", "meshlens.loadgen", "server", "--proto", "udp", "--bind", srv.addr),
        *("--port", "0", "--max-seconds", "60", "--reply-bytes", "13"),
        stdout=subprocess.PIPE,
    )
    udp_port = int(read_json_line(udp)["listening"])
    seen = query(dl.client, dl.server.addr, "web.mlab.test", "cname2.mlab.test", "udp.mlab.test")
    assert [c["answers"][-1] for c in seen] == [dl.web, dl.real, dl.udp_peer]

    def client(proto: str, dest: str, port: int, *args: str) -> None:
        dl.client.run(
            *dl.client.python("-m", "meshlens.loadgen", "client", "--proto", proto),
            *("--connect", dest, "--port", str(port), *args),
            timeout=60,
        )

    client("tcp", dl.web, tcp_port, "--connections", "3", "--send-bytes", "7")
    client("tcp", dl.real, tcp_port, "--connections", "2", "--send-bytes", "7")
    client("udp", dl.udp_peer, udp_port, "--datagrams", "5", "--datagram-bytes", "11")
    stop_server(tcp)
    stop_server(udp)

    def edges() -> dict[tuple[str, str], Any]:
        agent.refresh(force=True)
        return {
            (e.protocol, e.destination_service): t
            for e, t in agent.table.totals().items()
            if e.source_workload == dl.client_workload and e.reporter == "source"
        }

    want = {
        ("tcp", f"web.mlab.test:{tcp_port}"),
        ("tcp", f"cname2.mlab.test:{tcp_port}"),
        ("udp", f"udp.mlab.test:{udp_port}"),
    }
    assert wait_for(lambda: want <= set(edges()), 10), list(edges())
    e = edges()
    assert e[("tcp", f"web.mlab.test:{tcp_port}")].opened == 3
    assert e[("tcp", f"cname2.mlab.test:{tcp_port}")].opened == 2
    assert e[("udp", f"udp.mlab.test:{udp_port}")].request_bytes == 5 * 11
    assert not any(svc.startswith(dl.web) for _, svc in e)  # never ip:port for these
    assert feat.peers.lookup(dl.web) == "web.mlab.test"


def test_ipv6_transport(
    dns_lab: DnsLab, dns_agent: Callable[..., tuple[Agent, DnsFeature]]
) -> None:
    dl = dns_lab
    agent, feat = dns_agent()
    assert dl.server.addr6
    seen = query(dl.client, dl.server.addr6, "web.mlab.test:AAAA", "nx6.mlab.test:AAAA")
    seen += query(dl.client, dl.server.addr6, "web.mlab.test:A", proto="tcp")
    assert [c["rcode"] for c in seen] == ["NOERROR", "NXDOMAIN", "NOERROR"]
    labels = {"source_workload": dl.client_workload, "server": f"[{dl.server.addr6}]:53"}
    expected = {("AAAA", "NOERROR"): 1, ("AAAA", "NXDOMAIN"): 1, ("A", "NOERROR"): 1}
    settle(agent, feat, lambda: requests_by(scrape(agent, feat), **labels) == expected)


def test_trace_dns_cli(dns_lab: DnsLab) -> None:
    """`meshlens trace dns --json`: one line per query, like gethostlatency and
    Inspektor Gadget's trace dns; its own probe instance, no agent."""
    dl = dns_lab
    proc = subprocess.Popen(
        [sys.executable, "-m", "meshlens.cli", "trace", "dns", "--json", "-d", "40"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    lines: list[dict[str, Any]] = []
    buf = bytearray()

    def read_until(pred: Callable[[dict[str, Any]], bool], timeout: float) -> bool:
        """Read lines (unbuffered: select() must see what is left) until pred."""
        deadline = time.monotonic() + timeout
        assert proc.stdout
        fd = proc.stdout.fileno()
        while time.monotonic() < deadline:
            while b"\n" in buf:
                raw, _, rest = bytes(buf).partition(b"\n")
                buf[:] = rest
                lines.append(json.loads(raw))
                if pred(lines[-1]):
                    return True
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    return False
                buf.extend(chunk)
            elif proc.poll() is not None:
                return False
        return False

    try:
        attached = False
        for i in range(20):  # the probe attaches in well under a second
            query(dl.client, dl.server.addr, f"ready{i}.mlab.test", timeout=0.5)
            if read_until(lambda f, i=i: f["name"] == f"ready{i}.mlab.test", 0.5):
                attached = True
                break
        assert attached, proc.stderr.read().decode() if proc.poll() is not None else lines
        seen = query(dl.client, dl.server.addr, "alias.mlab.test", "nxtrace.mlab.test")
        assert read_until(lambda f: f["name"] == "nxtrace.mlab.test", 10)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert proc.returncode == 0
    got = {f["name"]: f for f in lines if f["workload"] == dl.client_workload}
    alias, nx = got["alias.mlab.test"], got["nxtrace.mlab.test"]
    assert alias["rcode"] == "NOERROR" and alias["qtype"] == "A" and alias["proto"] == "udp"
    assert alias["answers"] == ["CNAME web.mlab.test", f"A {dl.web}"]
    assert alias["server"] == dl.server_label and alias["comm"].startswith("python")
    assert 0 < alias["latency_ms"] <= seen[0]["latency"] * 1e3
    assert nx["rcode"] == "NXDOMAIN" and nx["answers"] == []


def test_glibc_resolver_queries_in_one_sendmmsg(
    dns_lab: DnsLab, dns_agent: Callable[..., tuple[Agent, DnsFeature]]
) -> None:
    """getaddrinfo() (glibc) sends the A and the AAAA query together in one
    sendmmsg() on a connected socket and reads the answers with recvfrom(): each
    query counted once, with its type."""
    dl = dns_lab
    agent, feat = dns_agent()
    records: list[DnsQuery] = []
    feat.listeners.append(records.append)
    conf = Path("/etc/netns") / dl.client.name
    conf.mkdir(parents=True, exist_ok=True)
    try:
        # `ip netns exec` mounts this over /etc/resolv.conf for the client
        (conf / "resolv.conf").write_text(
            f"nameserver {dl.server.addr}\noptions timeout:2 attempts:1\n"
        )
        lookups = 3
        for _ in range(lookups):
            out = dl.client.run("getent", "ahosts", "web.mlab.test", timeout=30).stdout.decode()
            assert dl.web in out
    finally:
        shutil.rmtree(conf, ignore_errors=True)
    expected = Counter({("A", "NOERROR"): lookups, ("AAAA", "NOERROR"): lookups})
    labels = {"source_workload": dl.client_workload, "server": dl.server_label}
    settle(agent, feat, lambda: requests_by(scrape(agent, feat), **labels) == expected)
    mine_recs = [q for q in mine(records, dl) if q.name == "web.mlab.test"]
    assert sorted(dnsmsg.qtype_text(q.qtype) for q in mine_recs) == ["A"] * 3 + ["AAAA"] * 3
    assert all(q.proto == "udp" and q.comm == "getent" for q in mine_recs), mine_recs
