"""DNS benchmark (issue 4, section 6), as root:

    .venv/bin/python bench/dns_bench.py [--rates 1000,2000,...] [--duration S] [--rounds N]

1. Cost of the DNS packet hook on non-DNS traffic: bench/sendloop.c (one send()
   and one recv() over loopback; each message passes the egress and the ingress
   hook once) timed with and without the dns probe attached, alternating rounds in
   the same run; plus the kernel's own run time per program invocation
   (kernel.bpf_stats_enabled) under the same load.
2. Queries per second with zero lost queries: dnsmasq in a lab host, the
   meshlens.dnsload flood client in another, at each rate without and then with
   the whole agent (every probe and feature, records decoded as they come). Zero
   loss: every query the client sent is counted by the kernel, every answer and
   timeout is counted, and every completed query's record reached user space.

Prints one JSON object (and a table unless --json)."""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
import re
import resource
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from meshlens import _libbpf as libbpf
from meshlens.agent import Agent, AgentConfig
from meshlens.features.dns import DnsFeature, DnsQuery
from meshlens.lab import Host, Lab
from meshlens.probes import dns as probe
from meshlens.probes.base import cgroup2_root

BENCH = Path(__file__).resolve().parent


def build_sendloop(tmp: Path) -> Path:
    out = tmp / "sendloop"
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        raise SystemExit("no C compiler for bench/sendloop.c")
    subprocess.run([cc, "-O2", "-o", str(out), str(BENCH / "sendloop.c")], check=True)
    return out


def sendloop(binary: Path, proto: str, iterations: int, cg: BenchCgroup) -> float:
    p = subprocess.run(
        cg.argv([str(binary), proto, str(iterations), "-s", "64", "-c", "1", "-w", "20000"]),
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return float(json.loads(p.stdout)["ns_per_pair"])


def _passes_per_pair(
    binary: Path, empty_obj: Path, proto: str, iterations: int, cg: BenchCgroup
) -> tuple[float, dict[str, float]]:
    """Hook runs per send/recv pair (TCP adds ACKs), and the kernel's own run time
    per invocation (kernel.bpf_stats_enabled, which adds its clock reads to every
    run) of the dns programs and, as the calibration, of the empty ones."""
    stats_fd = libbpf.enable_run_time_stats()
    p = CgroupDnsProbe(str(cg.path))
    empty = Empty(empty_obj, str(cg.path))
    p.start()
    empty.start()
    progs = {**p.obj.programs, **empty.obj.programs} if p.obj else {}
    try:
        before = {k: v.stats() for k, v in progs.items()}
        sendloop(binary, proto, iterations, cg)
        after = {k: v.stats() for k, v in progs.items()}
    finally:
        empty.close()
        p.close()
        if stats_fd is not None:
            os.close(stats_fd)
    runs = {k: after[k].run_cnt - before[k].run_cnt for k in after}
    ns = {k: (after[k].run_time_ns - before[k].run_time_ns) / max(runs[k], 1) for k in after}
    pairs = iterations + 20000  # sendloop's warm-up pairs pass the hooks too
    dns_runs = runs.get("dns_egress", 0) + runs.get("dns_ingress", 0)
    return dns_runs / pairs, {k: round(v, 1) for k, v in sorted(ns.items())}


EMPTY_PROGRAMS = r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
SEC("cgroup_skb/egress") int empty_egress(struct __sk_buff *skb) { return 1; }
SEC("cgroup_skb/ingress") int empty_ingress(struct __sk_buff *skb) { return 1; }
char LICENSE[] SEC("license") = "GPL";
"""


def build_empty(tmp: Path) -> Path:
    """Two cgroup_skb programs that do nothing: the control for what any program
    on these hooks costs (the dispatch), against which the dns programs' own
    work shows."""
    src, obj = tmp / "empty.bpf.c", tmp / "empty.bpf.o"
    src.write_text(EMPTY_PROGRAMS)
    incs = [f"-I{Path(p).parent.parent}" for p in glob.glob("/usr/include/*/asm/types.h")]
    subprocess.run(
        ["clang", "-O2", "-g", "-target", "bpf", *incs, "-c", str(src), "-o", str(obj)],
        check=True,
    )
    return obj


BENCH_CGROUP = "mlab-dnsbench"


class BenchCgroup:
    """A child of the cgroup-v2 root that only sendloop runs in: programs attached
    here see its packets and nobody else's (this machine is shared)."""

    def __init__(self) -> None:
        self.path = Path(cgroup2_root()) / f"{BENCH_CGROUP}-{os.getpid()}"

    def __enter__(self) -> BenchCgroup:
        self.path.mkdir(exist_ok=True)
        return self

    def __exit__(self, *exc: object) -> None:
        for _ in range(50):  # rmdir fails while the last process is exiting
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)

    def argv(self, cmd: list[str]) -> list[str]:
        procs = self.path / "cgroup.procs"
        return ["sh", "-c", f'echo $$ > {procs} && exec "$@"', "sh", *cmd]


class Empty:
    def __init__(self, obj: Path, cgroup: str) -> None:
        self.obj = libbpf.BpfObject(str(obj))
        self.cgroup = cgroup

    def start(self) -> None:
        self.obj.load()
        for prog in self.obj.programs.values():
            self.obj.links.append(prog.attach_cgroup(self.cgroup))

    def close(self) -> None:
        self.obj.close()


class CgroupDnsProbe(probe.DnsProbe):
    """The dns probe attached to one cgroup instead of the root."""

    def __init__(self, cgroup: str) -> None:
        super().__init__()
        self.cgroup = cgroup

    def attach(self) -> None:
        assert self.obj
        for prog in self.obj.programs.values():
            self.obj.links.append(prog.attach_cgroup(self.cgroup))


def _packet(proto: int, dport: int) -> bytes:
    """An Ethernet frame of IPv4 to dport with 64 bytes of payload."""
    payload = b"x" * 64
    if proto == 17:
        l4 = struct.pack("!HHHH", 40000, dport, 8 + len(payload), 0) + payload
    else:
        l4 = struct.pack("!HHIIBBHHH", 40000, dport, 1, 0, 5 << 4, 0x18, 65535, 0, 0) + payload
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, 0x4000, 64, proto, 0,
        bytes([198, 18, 0, 1]), bytes([198, 18, 0, 2]),
    )  # fmt: skip
    return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + l4


def _prog_ids(names: set[str]) -> dict[str, int]:
    text = subprocess.run(
        ["bpftool", "prog", "show", "-j"], capture_output=True, text=True, timeout=30
    ).stdout
    out: dict[str, int] = {}
    for p in json.loads(text):
        if p.get("name") in names:
            out[p["name"]] = max(out.get(p["name"], 0), int(p["id"]))  # the newest: ours
    return out


def body_cost(empty_obj: Path, tmp: Path, repeat: int = 20_000_000) -> dict[str, Any]:
    """BPF_PROG_TEST_RUN (bpftool prog run): average ns per run of each program on
    non-DNS packets, the empty program being the harness's own cost."""
    empty = libbpf.BpfObject(str(empty_obj))
    empty.load()
    dns = probe.DnsProbe()
    dns.open()
    dns.configure()
    assert dns.obj
    dns.obj.load()  # loaded, not attached
    out: dict[str, Any] = {"repeat": repeat}
    try:
        ids = _prog_ids({"empty_egress", "dns_egress", "dns_ingress"})
        for label, proto, port in (("udp_443", 17, 443), ("tcp_443", 6, 443)):
            pkt = tmp / f"{label}.bin"
            pkt.write_bytes(_packet(proto, port))
            runs: dict[str, list[int]] = {name: [] for name in ids}
            for _ in range(5):  # paired: the programs one after the other, five times
                for name, pid in sorted(ids.items()):
                    argv = ["bpftool", "prog", "run", "id", str(pid), "data_in", str(pkt)]
                    argv += ["repeat", str(repeat)]
                    r = subprocess.run(argv, capture_output=True, text=True, timeout=300)
                    m = re.search(r"duration \(average\): (\d+)ns", r.stdout)
                    if m:
                        runs[name].append(int(m.group(1)))
            row: dict[str, Any] = {name: min(v) for name, v in runs.items() if v}
            for name in ("dns_egress", "dns_ingress"):
                diffs = [a - b for a, b in zip(runs[name], runs["empty_egress"], strict=False)]
                if diffs:
                    row[f"{name}_minus_empty_median"] = statistics.median(diffs)
            out[label] = row
    finally:
        dns.close()
        empty.close()
    return out


def hook_cost(
    binary: Path, empty_obj: Path, rounds: int, iterations: int, protos: tuple[str, ...]
) -> dict[str, Any]:
    """ns added per packet of non-DNS traffic, end to end: sendloop with nothing,
    with the empty programs, and with the dns programs on the cgroup hooks, in
    rounds (shuffled order within each); per round, (with - without) per send/recv
    pair over the hook passes per pair; the median and quartiles over rounds
    (paired differences cancel the drift of a shared machine)."""
    out: dict[str, Any] = {"rounds": rounds, "iterations": iterations}
    out["cgroup_programs_before"] = _other_cgroup_programs()
    with BenchCgroup() as cg:
        for proto in protos:
            out[proto] = _hook_cost(binary, empty_obj, rounds, iterations, proto, cg)
    out["cgroup_programs_after"] = _other_cgroup_programs()
    return out


def _hook_cost(
    binary: Path, empty_obj: Path, rounds: int, iterations: int, proto: str, cg: BenchCgroup
) -> dict[str, Any]:
    per_pair, ns_per_run = _passes_per_pair(binary, empty_obj, proto, iterations, cg)
    times: dict[str, list[float]] = {"none": [], "empty": [], "dns": []}
    order = list(times)
    for _ in range(rounds):
        random.shuffle(order)  # no scenario always runs first
        for scenario in order:
            attached: Any = None
            if scenario == "empty":
                attached = Empty(empty_obj, str(cg.path))
            elif scenario == "dns":
                attached = CgroupDnsProbe(str(cg.path))
            if attached:
                attached.start()
            try:
                times[scenario].append(sendloop(binary, proto, iterations, cg))
            finally:
                if attached:
                    attached.close()

    def paired(
        a: str, b: str, t: dict[str, list[float]] = times, n: float = per_pair
    ) -> dict[str, float]:
        """ns per packet of a - b, per round (paired), median and quartiles."""
        d = sorted((x - y) / n for x, y in zip(t[a], t[b], strict=True))
        q = statistics.quantiles(d, n=4) if len(d) >= 2 else [d[0]] * 3
        return {"median": round(q[1], 1), "q1": round(q[0], 1), "q3": round(q[2], 1)}

    return {
        "hook_passes_per_pair": round(per_pair, 2),
        "bpf_stats_ns_per_run": ns_per_run,
        "ns_per_pair_median": {k: round(statistics.median(v), 1) for k, v in times.items()},
        "ns_added_per_packet": {
            "dns_vs_none": paired("dns", "none"),
            "empty_vs_none": paired("empty", "none"),
            "dns_vs_empty": paired("dns", "empty"),
        },
    }


def _other_cgroup_programs() -> list[str]:
    """Programs others have attached to the cgroup-v2 root (this machine is
    shared): they run for sendloop's packets in every scenario alike."""
    try:
        text = subprocess.run(
            ["bpftool", "cgroup", "tree", cgroup2_root(), "-j"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
        return sorted({p["name"] for cg in json.loads(text) for p in cg.get("programs", [])})
    except (OSError, ValueError, subprocess.SubprocessError):
        return []


def decode_rate(n: int = 20000) -> dict[str, float]:
    """Records per second one core decodes (what bounds the record stream): the
    same answer again and again (cached), and a distinct name and answer each."""
    from meshlens import dnsmsg
    from meshlens.features.dns import decode_queries

    def record(i: int) -> bytes:
        q = dnsmsg.build_query(i & 0xFFFF, f"n{i}.bench.mlab.test", dnsmsg.TYPE_A)
        resp = dnsmsg.build_response(
            q, answers=((f"n{i}.bench.mlab.test", dnsmsg.TYPE_A, 60, f"198.18.{i % 250}.9"),)
        )
        return probe.EVENT.encode(
            family=2, type=probe.EventType.RESPONSE, qlen=len(q) - 12, qtype=1, proto=17,
            tgid=1, netns=1, client_port=40000, server_port=53, rcode=0, start_ns=1, end_ns=2,
            data_len=len(resp), msg_total=len(resp), data_cap=128, data=resp, comm=b"bench",
        )[: probe.EVENT_HEADER + 128]  # fmt: skip

    out: dict[str, float] = {}
    for label, recs in (
        ("same_answer", [record(0)] * n),
        ("distinct", [record(i) for i in range(n)]),
    ):
        t0 = time.perf_counter()
        decode_queries(recs)
        out[f"{label}_records_per_second"] = round(n / (time.perf_counter() - t0))
    return out


# -- queries per second ------------------------------------------------------------------


def flood(cli: Host, server: str, rate: float, duration: float, names: int) -> dict[str, Any]:
    p = cli.run(
        *cli.python("-m", "meshlens.dnsload", "flood", "--server", server),
        *("--rate", str(rate), "--duration", str(duration), "--names", str(names)),
        *("--outstanding", "1024", "--timeout", "2"),
        timeout=duration + 60,
    )
    out: dict[str, Any] = json.loads(p.stdout)
    return out


def agg_counts(feat: DnsFeature, netns: int) -> tuple[int, int]:
    """(answered, timed out) queries of this client netns, from the kernel map."""
    keys, vals = feat.probe.read_agg()
    answered = timeouts = 0
    for k, v in zip(keys, vals, strict=True):
        if int(k["netns"]) != netns:
            continue
        if int(k["rcode"]) == probe.RCODE_TIMEOUT:
            timeouts += int(v["count"])
        else:
            answered += int(v["count"])
    return answered, timeouts


def qps(rates: list[float], duration: float, names: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with Lab(2) as lab:
        srv, cli = lab.hosts
        k = lab.subnet_index
        srv.popen(
            "dnsmasq", "-k", "--no-resolv", "--no-hosts", "--bind-interfaces", "--port=53",
            f"--listen-address={srv.addr}", f"--address=/bench.mlab.test/198.18.{k}.77",
            "--dns-forward-max=10000", "--cache-size=0",
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(0.5)
        netns = os.stat(f"/run/netns/{cli.name}").st_ino
        for rate in rates:
            without = flood(cli, srv.addr, rate, duration, names)
            agent = Agent(AgentConfig(options={"dns_timeout": 2.0}))
            agent.start()
            stop = threading.Event()

            def refresher(a: Agent = agent, s: threading.Event = stop) -> None:
                while not s.wait(1.0):
                    a.refresh()

            th = threading.Thread(target=refresher, daemon=True)
            th.start()
            try:
                feat = next(f for f in agent.features if isinstance(f, DnsFeature))
                got: list[int] = [0]

                def count(q: DnsQuery, got: list[int] = got) -> None:
                    if q.netns == netns:
                        got[0] += 1

                feat.listeners.append(count)
                stats0 = feat.probe.stats()
                ru0 = resource.getrusage(resource.RUSAGE_SELF)
                t0 = time.monotonic()
                with_agent = flood(cli, srv.addr, rate, duration, names)
                # everything sent has been answered or timed out (2 s) by now; let
                # the kernel's timers and the record thread finish
                deadline = time.monotonic() + 10
                expected = with_agent["sent"]
                while time.monotonic() < deadline:
                    if sum(agg_counts(feat, netns)) >= expected and got[0] >= expected:
                        break
                    time.sleep(0.2)
                elapsed = time.monotonic() - t0
                ru1 = resource.getrusage(resource.RUSAGE_SELF)
                answered, timeouts = agg_counts(feat, netns)
                stats1 = feat.probe.stats()
                kstats = {
                    st.name.lower(): stats1[st] - stats0[st]
                    for st in probe.Stat
                    if st != probe.Stat.LIVE and stats1[st] != stats0[st]
                }
                lost = kstats.get("events_lost", 0)
            finally:
                stop.set()
                th.join(timeout=5)
                agent.stop()
            cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
            row = {
                "rate": rate,
                "without_agent": without,
                "with_agent": with_agent,
                "kernel_answered": answered,
                "kernel_timeouts": timeouts,
                "records": got[0],
                "records_lost": lost,
                "kernel_stats": kstats,
                "agent_cpu_seconds": round(cpu, 3),
                "agent_cpu_percent": round(100 * cpu / elapsed, 1),
            }
            # Zero loss: every query sent was counted once, as answered or timed
            # out, and its record reached user space. (The client enforces its
            # 2 s timeout lazily, the kernel at 2 s + one sweep: an answer near
            # the limit can be "answered" on one side and a timeout on the other.)
            row["zero_loss"] = (
                answered + timeouts == with_agent["sent"]
                and got[0] == with_agent["sent"]
                and lost == 0
            )
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rates", default="1000,2000,5000,10000,15000,20000")
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--names", type=int, default=1000, help="distinct query names")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iterations", type=int, default=200000)
    ap.add_argument("--protos", default="udp,tcp", help="sendloop protocols for the hook cost")
    ap.add_argument("--skip-hook", action="store_true")
    ap.add_argument("--skip-qps", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("dns_bench: needs root", file=sys.stderr)
        return 1
    result: dict[str, Any] = {"kernel": os.uname().release, "cpus": os.cpu_count()}
    if not args.skip_hook:
        with tempfile.TemporaryDirectory() as tmp_dir:
            tmp = Path(tmp_dir)
            empty = build_empty(tmp)
            result["program_body"] = body_cost(empty, tmp)
            protos = tuple(args.protos.split(","))
            loop = build_sendloop(tmp)
            result["hook_cost"] = hook_cost(loop, empty, args.rounds, args.iterations, protos)
    result["user_decode"] = decode_rate()
    if not args.skip_qps:
        rates = [float(r) for r in args.rates.split(",")]
        result["qps"] = qps(rates, args.duration, args.names)
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(json.dumps({k: v for k, v in result.items() if k != "qps"}, indent=1))
    if "qps" in result:
        print(f"{'rate':>7} {'sent':>7} {'answered':>8} {'t/o':>5} {'kernel':>7} {'records':>7}"
              f" {'lost':>5} {'agentCPU%':>9} {'zero loss':>9} {'no-agent sent':>13}")  # fmt: skip
        for r in result["qps"]:
            w = r["with_agent"]
            print(f"{r['rate']:>7.0f} {w['sent']:>7} {w['answered']:>8} {w['timeouts']:>5}"
                  f" {r['kernel_answered'] + r['kernel_timeouts']:>7} {r['records']:>7}"
                  f" {r['records_lost']:>5} {r['agent_cpu_percent']:>9} {r['zero_loss']!s:>9}"
                  f" {r['without_agent']['sent']:>13}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
