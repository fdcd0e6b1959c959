"""The DNS feature without a kernel: records → queries, kernel aggregate rows →
monotonic label totals, top-N names, peer names with TTLs, exposition, CLI, and
the struct mirrors against the BTF of the compiled object."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from prometheus_client.core import Metric

from meshlens import dnsmsg
from meshlens.accounting import Namer, Sock
from meshlens.btf import Btf
from meshlens.cli import build_parser
from meshlens.features import dns as feat
from meshlens.features import features, trace_tools
from meshlens.probes import dns as probe
from meshlens.probes.base import objects_dir

REPO = Path(__file__).resolve().parents[2]


class FakeIdentity:
    names = {1: "frontend", 2: "resolver"}  # netns -> name

    def workload(self, tgid: int, comm: str, netns: int, cgroup_id: int) -> str:
        return self.names.get(netns, comm or "unknown")

    def netns_name(self, netns: int) -> str | None:
        return self.names.get(netns)

    def owner_of(self, ip: str) -> str | None:
        return {"198.18.0.1": "frontend", "198.18.0.2": "resolver"}.get(ip)

    def netns_of(self, ip: str) -> int | None:
        return {"198.18.0.1": 1, "198.18.0.2": 2}.get(ip)


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def v4(ip: str) -> bytes:
    return bytes(int(x) for x in ip.split(".")).ljust(16, b"\0")


QUERY = dnsmsg.build_query(0x4242, "Web.Example.TEST", dnsmsg.TYPE_A)
QUESTION = QUERY[12:]


def event(**over: Any) -> bytes:
    """A record as the kernel submits it: the header and data_cap bytes of data."""
    resp = over.pop("msg", None)
    if resp is None:
        resp = dnsmsg.build_response(
            QUERY,
            answers=(
                ("web.example.test", dnsmsg.TYPE_CNAME, 300, "edge.example.test"),
                ("edge.example.test", dnsmsg.TYPE_A, 20, "198.19.7.7"),
            ),
        )
    fields: dict[str, Any] = dict(
        sock=9, start_ns=1_000_000, end_ns=3_500_000, netns=1, cgroup_id=5, tgid=77,
        pid=78, comm=b"curl", client=v4("198.18.0.1"), server=v4("198.18.0.2"),
        client_port=40000, server_port=53, family=2, id=0x4242, qtype=1, rcode=0,
        qlen=len(QUESTION), data_len=min(len(resp), 512), msg_total=len(resp), proto=17,
        type=probe.EventType.RESPONSE, flags=0, data=resp[:512],
    )  # fmt: skip
    fields.update(over)
    cap = next(c for c in probe.DATA_CAPS if c >= fields["data_len"])
    fields["data_cap"] = cap
    return probe.EVENT.encode(**fields)[: probe.EVENT_HEADER + cap]


def test_decode_response_record() -> None:
    q = feat.decode_query(event())
    assert (q.kind, q.proto, q.comm, q.tgid, q.client, q.server_label) == (
        "response", "udp", "curl", 77, "198.18.0.1", "198.18.0.2:53",
    )  # fmt: skip
    assert q.name == "Web.Example.TEST" and q.qtype == 1 and q.rcode_label == "NOERROR"
    assert q.latency == pytest.approx(0.0025)
    assert q.answers == ["CNAME edge.example.test", "A 198.19.7.7"]
    assert q.addresses == [("198.19.7.7", "Web.Example.TEST", 20)]
    assert q.malformed is None and not q.partial


def test_decode_timeout_and_malformed_records() -> None:
    t = feat.decode_query(
        event(
            type=probe.EventType.TIMEOUT,
            rcode=0xFFFF,
            flags=probe.EventFlag.QUESTION,
            data=QUESTION,
            data_len=len(QUESTION),
            msg_total=0,
        )
    )
    assert t.kind == "timeout" and t.rcode is None and t.rcode_label == "timeout"
    assert t.answers == [] and t.name == "Web.Example.TEST" and t.qtype == 1
    # an error answer without a question: the kernel sends the query's question
    r = feat.decode_query(
        event(rcode=5, flags=probe.EventFlag.QUESTION, data=QUESTION, data_len=len(QUESTION))
    )
    assert r.kind == "response" and r.rcode_label == "REFUSED" and r.name == "Web.Example.TEST"
    assert r.malformed is None and r.answers == []
    reason, bad = dnsmsg.malformed_responses(QUERY)["pointer_loop"]
    m = feat.decode_query(event(msg=bad))
    assert m.malformed == reason and m.answers == [] and m.addresses == []
    assert m.name == "Web.Example.TEST"  # the question is read on its own
    # a response longer than what the kernel copies: partial, not malformed
    good = dnsmsg.build_response(
        QUERY, answers=tuple(("web.example.test", 1, 60, f"198.19.0.{i}") for i in range(40))
    )
    p = feat.decode_query(event(msg=good))
    assert len(good) > 512 and p.partial and p.malformed is None
    assert 0 < len(p.answers) < 40 and len(p.addresses) == len(p.answers)
    assert len(event(msg=good)) == probe.EVENT.size  # the largest record class
    small = event()
    assert len(small) == probe.EVENT_HEADER + 128  # the smallest: padded when decoded
    assert probe.decode_events([small, small]).shape == (2,)


def test_peer_names_ttl_bound_and_namer() -> None:
    clock = Clock()
    peers = feat.PeerNames(max_entries=2, min_ttl=5, clock=clock)
    peers.learn("198.19.7.7", "Web.Example.TEST.", 20)
    peers.learn("::ffff:198.19.7.8", "b.test", 1)  # TTL below the floor: kept 5 s
    assert peers.lookup("198.19.7.7") == "web.example.test"
    assert peers.lookup("198.19.7.8") == "b.test"
    clock.t += 6
    assert peers.lookup("198.19.7.8") is None
    assert peers.lookup("198.19.7.7") == "web.example.test"
    clock.t += 15
    assert peers.lookup("198.19.7.7") is None
    for i in range(5):
        peers.learn(f"198.19.0.{i}", f"n{i}.test", 60)
    assert len(peers) == 2 and peers.evicted == 3
    assert peers.lookup("198.19.0.4") == "n4.test" and peers.lookup("198.19.0.0") is None
    assert peers.lookup("not an ip") is None

    namer = Namer(FakeIdentity())
    namer.peer_names.append(peers.lookup)
    off_host = Sock(10, "curl", 1, 0, 2, "198.18.0.1", 40000, "198.19.0.4", 443, False)
    edge = namer.edge(off_host, "tcp")
    assert edge.destination_service == "n4.test:443" and edge.destination_workload == "unknown"
    local = Sock(10, "curl", 1, 0, 2, "198.18.0.1", 40000, "198.18.0.2", 53, False)
    assert namer.edge(local, "udp").destination_service == "resolver:53"


def test_top_names_bounded_monotonic_with_other() -> None:
    top = feat.TopNames(n=2)
    seen: dict[tuple[str, str], int] = {}

    def check() -> None:
        snap = top.snapshot()
        for key, value in seen.items():
            if key in snap:
                assert snap[key] >= value  # never goes down
        seen.update(snap)
        names = [nm for (wl, nm) in snap if wl == "w" and nm != feat.OTHER]
        assert len(names) <= 2

    for name in ["a", "b", "c", "c", "c"]:
        top.add("w", name)
    check()
    assert top.snapshot()[("w", feat.OTHER)] == 3
    for _ in range(20):
        top.add("w", "c")
    top.promote()  # c now dominates the weakest exported name
    check()
    snap = top.snapshot()
    assert ("w", "c") in snap and snap[("w", "c")] == 0 and top.evictions == 1
    top.add("w", "c", 5)
    check()
    assert top.snapshot()[("w", "c")] == 5
    total = 5 + 20 + 3 + 2  # every query is in exactly one series at the time it came
    assert sum(v for (wl, _), v in seen.items() if wl == "w") <= total
    for i in range(3000):
        top.add(f"wl{i}", "x")
    assert len(top.by_workload) <= top.max_workloads + 1


def agg_rows(rows: list[tuple[dict[str, Any], dict[str, Any]]]) -> tuple[np.ndarray, np.ndarray]:
    keys = b"".join(probe.AGG_KEY.encode(**k) for k, _ in rows)
    vals = b"".join(probe.AGG_VALUE.encode(**v) for _, v in rows)
    return probe.AGG_KEY.decode_many(keys, len(rows)), probe.AGG_VALUE.decode_many(vals, len(rows))


def key(netns: int, qtype: int, rcode: int, comm: bytes = b"curl") -> dict[str, Any]:
    return dict(
        netns=netns, cgroup_id=5, comm=comm, client=v4("198.18.0.1"), server=v4("198.18.0.2"),
        server_port=53, family=2, qtype=qtype, rcode=rcode, proto=17,
    )  # fmt: skip


def buckets(**at: int) -> list[int]:
    out = [0] * probe.BUCKETS
    for i, n in at.items():
        out[int(i[1:])] = n
    return out


def test_book_sums_rows_into_labels_and_only_grows() -> None:
    ident = FakeIdentity()
    book = feat.DnsBook(Namer(ident))
    rows = [
        (key(1, 1, 0), dict(count=7, sum_ns=7_000_000, buckets=buckets(b3=7), tgid=10)),
        (key(1, 1, 0, b"wget"), dict(count=2, sum_ns=4_000_000, buckets=buckets(b4=2), tgid=11)),
        (key(1, 1, 3), dict(count=11, sum_ns=1_100_000, buckets=buckets(b0=11), tgid=10)),
        (key(1, 28, 0xFFFF), dict(count=3, tgid=10)),
        (key(1, 4242, 13), dict(count=1, sum_ns=1, buckets=buckets(b0=1), tgid=10)),
    ]
    book.update(*agg_rows(rows))
    srv = "198.18.0.2:53"
    assert book.requests == {
        ("frontend", srv, "A", "NOERROR"): 9,
        ("frontend", srv, "A", "NXDOMAIN"): 11,
        ("frontend", srv, "AAAA", "timeout"): 3,
        ("frontend", srv, "other", "other"): 1,
    }
    h = book.hist[("frontend", srv)]
    assert h.count == 21 and h.sum_ns == 12_100_001  # timeouts have no latency
    assert h.buckets[0] == 12 and h.buckets[3] == 7 and h.buckets[4] == 2
    # the workload is named better later (netns 1 renamed): new growth goes there,
    # what was counted stays where it was
    ident.names = {1: "frontend-v2", 2: "resolver"}
    rows[0] = (key(1, 1, 0), dict(count=10, sum_ns=10_000_000, buckets=buckets(b3=10), tgid=10))
    book.update(*agg_rows(rows))
    assert book.requests[("frontend", srv, "A", "NOERROR")] == 9
    assert book.requests[("frontend-v2", srv, "A", "NOERROR")] == 3
    assert book.hist[("frontend-v2", srv)].buckets[3] == 3


class FakeAgent:
    def __init__(self) -> None:
        self.namer = Namer(FakeIdentity())


def collect(f: feat.DnsFeature) -> dict[str, Metric]:
    return {m.name: m for m in f.families()}


def sample(m: Metric, suffix: str = "", **labels: str) -> float:
    hits = [
        s.value
        for s in m.samples
        if s.name == m.name + suffix and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(hits) == 1, (labels, m.samples)
    return hits[0]


def test_feature_families() -> None:
    f = feat.DnsFeature(FakeAgent(), {"dns_top_names": 1})  # type: ignore[arg-type]
    f._agg = agg_rows(
        [
            (key(1, 1, 0), dict(count=5, sum_ns=5_000_000, buckets=buckets(b3=4, b15=1), tgid=1)),
            (key(1, 1, 0xFFFF), dict(count=2, tgid=1)),
        ]
    )
    f._stats = {probe.Stat.MAL_LABEL: 2, probe.Stat.UNMATCHED: 1, probe.Stat.LIVE: 3}
    for name in ["a.test", "b.test", "b.test"]:
        q = feat.decode_query(event())
        q.name = name
        f._on_query(q)
    bad = feat.decode_query(event())
    bad.malformed = "label"
    f._on_query(bad)
    f.account()
    m = collect(f)
    reqs = m["meshlens_dns_requests"]
    assert sample(reqs, "_total", source_workload="frontend", qtype="A", rcode="NOERROR") == 5
    assert sample(reqs, "_total", rcode="timeout") == 2
    dur = m["meshlens_dns_request_duration_seconds"]
    assert sample(dur, "_bucket", le="0.0025") == 4
    assert sample(dur, "_bucket", le="10.0") == 5
    assert sample(dur, "_bucket", le="+Inf") == 5
    assert sample(dur, "_count") == 5 and sample(dur, "_sum") == pytest.approx(0.005)
    names = m["meshlens_dns_name_requests"]
    assert sample(names, "_total", name="a.test") == 1
    assert sample(names, "_total", name="other") == 3  # top-1: the rest is "other"
    assert sample(m["meshlens_dns_malformed"], "_total", reason="label") == 3  # kernel + user
    assert sample(m["meshlens_dns_malformed"], "_total", reason="pointer_loop") == 0
    assert sample(m["meshlens_dns_unmatched_responses"], "_total", reason="no_query") == 1
    assert sample(m["meshlens_dns_pending"]) == 3
    assert sample(m["meshlens_dns_peer_names"]) == 1  # 198.19.7.7 from the answers
    assert f.peers.lookup("198.19.7.7") == "web.example.test"  # the name looked up


def test_registered_with_cli_and_trace() -> None:
    assert feat.DnsFeature in features()
    assert trace_tools()["dns"] is feat.DnsTrace
    args = build_parser().parse_args(
        ["run", "--dns-timeout", "2.5", "--dns-port", "5353", "--dns-port", "8053,9053"]
    )
    assert args.dns_timeout == 2.5 and feat._ports(args.dns_port) == (5353, 8053, 9053)
    f = feat.DnsFeature(FakeAgent(), vars(args))  # type: ignore[arg-type]
    assert f.probe.ports == (53, 5353, 8053, 9053) and f.probe.timeout_seconds == 2.5
    t = build_parser().parse_args(["trace", "dns", "--json", "-d", "1", "--dns-port", "5353"])
    assert t.tool == "dns" and t.json and t.dns_port == ["5353"]
    for bad in (["--dns-timeout", "0"], ["--dns-port", "70000"], ["--dns-top-names", "x"]):
        with pytest.raises(SystemExit) as exc:
            build_parser().parse_args(["run", *bad])
        assert exc.value.code == 2
    with pytest.raises(ValueError):
        probe.DnsProbe(ports=tuple(range(1000, 1010)))
    with pytest.raises(ValueError):
        probe.DnsProbe(timeout_seconds=0)


def test_trace_line_and_json_fields() -> None:
    q = feat.decode_query(event())
    f = feat.trace_fields(q, "frontend")
    assert f["rcode"] == "NOERROR" and f["latency_ms"] == 2.5 and f["qtype"] == "A"
    line = feat.trace_line(f)
    assert line.split()[:8] == [
        "77", "curl", "frontend", "198.18.0.2:53", "U", "A", "NOERROR", "2.50",
    ]  # fmt: skip
    assert line.endswith("Web.Example.TEST edge.example.test,198.19.7.7")
    assert feat.HEADER.split()[:3] == ["PID", "COMM", "WORKLOAD"]


def _object() -> Path:
    built = objects_dir() / "dns.bpf.o"
    if built.exists() and built.stat().st_mtime >= (REPO / "bpf/dns.bpf.c").stat().st_mtime:
        return built
    pytest.skip("dns.bpf.o is not built from the current source: run `make build`")


def test_layouts_match_object_btf() -> None:
    btf = Btf.from_file(_object())
    for lay in probe.DnsProbe.layouts:
        lay.check(btf)
    stats = btf.enum("dns_stat")
    assert {s.name: s.value for s in probe.Stat} == {
        k.removeprefix("DNS_STAT_"): v for k, v in stats.items() if k != "DNS_STAT_MAX"
    }
    assert stats["DNS_STAT_MAX"] == len(probe.Stat)
    rodata = btf.datasec(".rodata")
    assert rodata["ports"][1] == 2 * probe.PORTS_MAX
    assert rodata["bucket_ns"][1] == 8 * probe.BUCKETS


def test_header_constants_match_python() -> None:
    text = (REPO / "bpf/dns.h").read_text()
    for name, value in (
        ("DNS_QUESTION_MAX", probe.QUESTION_MAX),
        ("DNS_DATA_MAX", probe.DATA_MAX),
        ("DNS_PORTS_MAX", probe.PORTS_MAX),
        ("DNS_BUCKETS", probe.BUCKETS),
        ("DNS_RCODE_TIMEOUT", probe.RCODE_TIMEOUT),
    ):
        line = next(ln for ln in text.splitlines() if ln.startswith(f"#define {name} "))
        assert int(line.split()[2], 0) == value, name


@pytest.mark.skipif(shutil.which("clang") is None, reason="clang is not installed")
def test_source_compiles_with_make_flags(tmp_path: Path) -> None:
    vmlinux = REPO / "build/vmlinux.h"
    if not vmlinux.exists():
        pytest.skip("build/vmlinux.h missing: run `make build`")
    out = tmp_path / "dns.bpf.o"
    cmd = [
        "clang", "-g", "-O2", "-target", "bpf", "-D__TARGET_ARCH_x86", f"-I{REPO / 'build'}",
        f"-I{REPO / 'bpf'}", "-mcpu=v3", "-Wall", "-Werror", "-Wno-unused-function",
        "-c", str(REPO / "bpf/dns.bpf.c"), "-o", str(out),
    ]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    btf = Btf.from_file(out)
    for lay in probe.DnsProbe.layouts:
        lay.check(btf)


def test_fake_agent_namespace_is_enough() -> None:
    # the feature only needs agent.namer until start(); keeps the unit tests honest
    f = feat.DnsFeature(SimpleNamespace(namer=Namer(FakeIdentity())), {})  # type: ignore[arg-type]
    assert f.probe.ports == (53,) and f.probe.timeout_seconds == 5.0
