"""Network health a mesh cannot see, beyond what tcpflow counts per connection:
packet drops with the kernel's reason, resets for no socket, listen-queue
drops, SYN-ACK retransmits and the accept-queue length at each handshake."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
from prometheus_client.core import Metric

from .. import kernel_enums
from ..accounting import UNKNOWN, Edge, Totals, column_bytes, ip_text, service_name
from ..families import CounterFamily, GaugeFamily, HistogramFamily
from ..probes import tcphealth
from . import Feature, TraceTool

PROTOCOLS = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmpv6"}
HOST = "host"


def backlog_bounds() -> list[str]:
    """Upper bounds of the backlog slots: 0, then [2^(i-1), 2^i) -> 2^i - 1."""
    return ["0"] + [str(2**i - 1) for i in range(1, tcphealth.BACKLOG_SLOTS - 1)] + ["+Inf"]


class TcpHealth(Feature):
    name = "tcphealth"
    help = "drops with reason, resets for no socket, listen overflows, SYN backlog"

    def __init__(self, agent: Any, options: dict[str, Any]) -> None:
        super().__init__(agent, options)
        self.probe = tcphealth.TcpHealthProbe()
        self.probes = [self.probe]
        self._last: dict[bytes, int] = {}  # event key -> count already accounted
        self.evicted = 0
        # (reason, protocol, workload, peer) -> drops
        self.drops: dict[tuple[str, str, str, str], int] = {}
        self._events: tuple[np.ndarray, np.ndarray] | None = None
        self._listeners: tuple[np.ndarray, np.ndarray] | None = None
        self._synack: dict[bytes, int] = {}

    def refresh(self) -> None:
        self._events = self.probe.read_events()
        self._listeners = self.probe.read_listeners()

    def _local(self, netns: int, ip: str, port: int) -> str:
        namer = self.agent.namer
        return (
            namer.at(netns, ip, port)
            or namer.identity.netns_name(netns)
            or namer.identity.owner_of(ip)
            or HOST
        )

    def account(self) -> None:
        if self._events is None:
            return
        keys, counts = self._events
        seen: dict[bytes, int] = {}
        namer = self.agent.namer
        # Most keys did not change since the last refresh: compare them as bytes
        # and decode only the others (a churn leaves a key per connection).
        raw_all, size = keys.tobytes(), keys.dtype.itemsize
        last = self._last
        changed: list[int] = []
        deltas: list[int] = []
        for i, count in enumerate(counts.tolist()):
            raw = raw_all[i * size : (i + 1) * size]
            seen[raw] = count
            before = last.get(raw, 0)
            delta = count - before if count >= before else count  # re-created after eviction
            if delta > 0:
                changed.append(i)
                deltas.append(delta)
        rows = keys[changed]  # columns as lists: per-row numpy access is slow
        cols = zip(
            deltas, rows["family"].tolist(), rows["netns"].tolist(), rows["kind"].tolist(),
            rows["reason"].tolist(), rows["proto"].tolist(), rows["lport"].tolist(),
            rows["rport"].tolist(), column_bytes(rows, "laddr"), column_bytes(rows, "raddr"),
            strict=True,
        )  # fmt: skip
        for delta, fam, netns, kind, reason, proto, lport, rport, la, ra in cols:
            if fam:
                laddr, raddr = ip_text(fam, la), ip_text(fam, ra)
                local = self._local(netns, laddr, lport)
                peer = namer.at(netns, raddr, rport) or namer.identity.owner_of(raddr) or UNKNOWN
            else:
                laddr = raddr = ""
                lport = rport = 0
                local, peer = namer.identity.netns_name(netns) or HOST, UNKNOWN
            if kind == tcphealth.Kind.DROP:
                pname = PROTOCOLS.get(proto, "other") if fam else "unknown"
                label = (kernel_enums.drop_reason(reason), pname, local, peer)
                self.drops[label] = self.drops.get(label, 0) + delta
            elif kind == tcphealth.Kind.RST_NOSK:
                # Nobody held the port: the reset answers the peer's segment.
                dest = local if local != HOST else UNKNOWN
                svc = service_name(dest, laddr, lport) if fam else UNKNOWN
                edge = self.agent.table.admit(Edge("destination", peer, dest, svc, "tcp"))
                t = self.agent.table.closed.setdefault(edge, Totals())
                t.add_labeled({("reset_sent", kernel_enums.reset_reason(reason)): delta})
        self.evicted += len(set(self._last) - set(seen))
        self._last = seen
        # SYN-ACK retransmits join the per-edge retransmits (type="synack").
        for (wl, svc), v, key in self._listener_rows(with_key=True):
            n = int(v["synack_retrans"])
            delta = n - self._synack.get(key, 0)
            self._synack[key] = n
            if delta > 0:
                edge = self.agent.table.admit(Edge("destination", UNKNOWN, wl, svc, "tcp"))
                t = self.agent.table.closed.setdefault(edge, Totals())
                t.add_labeled({("retrans", "synack"): delta})

    def _listener_rows(self, with_key: bool = False) -> Iterator[Any]:
        if self._listeners is None:
            return
        keys, vals = self._listeners
        for i in range(len(keys)):
            netns, port = int(keys[i]["netns"]), int(keys[i]["port"])
            wl = self.agent.namer.listeners.get((netns, port)) or self._named(netns)
            labels = [wl, service_name(wl, "?", port)]
            yield (labels, vals[i], keys[i].tobytes()) if with_key else (labels, vals[i])

    def _named(self, netns: int) -> str:
        return self.agent.namer.identity.netns_name(netns) or HOST

    def families(self) -> Iterator[Metric]:
        drops = CounterFamily(
            "meshlens_packet_drops",
            "Packets the kernel dropped, by enum skb_drop_reason; workload is the local end "
            "(the socket's, else the packet's destination), peer the other end.",
            labels=["reason", "protocol", "workload", "peer"],
        )
        for (reason, proto, wl, peer), n in sorted(self.drops.items()):
            drops.add_metric([reason, proto, wl, peer], n)
        yield drops
        labels = ["destination_workload", "destination_service"]
        overflows = CounterFamily(
            "meshlens_tcp_listen_overflows",
            "SYNs and handshake ACKs a listener dropped (its ListenDrops): accept-queue "
            "overflows, and SYNs refused for other reasons.",
            labels=labels,
        )
        backlog = HistogramFamily(
            "meshlens_tcp_syn_backlog",
            "Accept-queue length of the listener when a handshake completed on it, as bcc's "
            "tcpsynbl samples it; the count is the connections that entered the queue.",
            labels=labels,
        )
        limit = GaugeFamily(
            "meshlens_tcp_listen_backlog_limit", "The listener's listen() backlog.", labels=labels
        )
        bounds = backlog_bounds()
        for lab, v in self._listener_rows():
            overflows.add_metric(lab, int(v["overflows"]))
            limit.add_metric(lab, int(v["max_backlog"]))
            hist = v["backlog_hist"].tolist()
            cum, buckets = 0, []
            for bound, n in zip(bounds, hist, strict=True):
                cum += n
                buckets.append((bound, cum))
            backlog.add_metric(lab, buckets, sum_value=float("nan"))
        yield from (overflows, backlog, limit)
        s = self.probe.stats()
        full = CounterFamily(
            "meshlens_tcphealth_untracked",
            "Health events not tracked: map full (events, listeners) or no parsable headers.",
            labels=["what"],
        )
        full.add_metric(["events_map_full"], s[tcphealth.Stat.EVENTS_FULL])
        full.add_metric(["listeners_map_full"], s[tcphealth.Stat.LISTEN_FULL])
        full.add_metric(["unparsed"], s[tcphealth.Stat.UNPARSED])
        full.add_metric(["evicted_keys"], self.evicted)
        yield full


def _stream(args: argparse.Namespace, interval: float, emit: Any) -> int:
    """Run a private agent with only this feature and call emit each interval."""
    from ..agent import Agent, AgentConfig

    agent = Agent(
        AgentConfig(
            probes=("tcpflow",), features=("tcphealth",), bpf_stats=False, min_refresh_interval=0
        )
    )
    agent.start()
    feat = next((f for f in agent.features if isinstance(f, TcpHealth)), None)
    if feat is None:
        print("meshlens: cannot load tcphealth", file=sys.stderr)
        agent.stop()
        return 1
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    deadline = time.monotonic() + args.duration if args.duration else None
    count = getattr(args, "count", None)
    shown = 0
    try:
        agent.refresh(force=True)
        emit(feat, agent, first=True)
        while not stop.wait(interval):
            agent.refresh(force=True)
            emit(feat, agent, first=False)
            shown += 1
            if (deadline and time.monotonic() >= deadline) or (count and shown >= count):
                break
    except BrokenPipeError:
        pass
    finally:
        agent.stop()
    return 0


class _IntervalTool(TraceTool):
    """An interval view of kernel aggregates: `-i SECONDS` between lines."""

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("-i", "--interval", type=float, default=1.0)


class TcpDrop(_IntervalTool):
    """Drops with the kernel's reason, as counts per interval (a drop storm must
    not become an event storm)."""

    name = "tcpdrop"
    help = "packet drops with the kernel's reason, per interval (bcc tcpdrop)"

    @classmethod
    def run(cls, args: argparse.Namespace) -> int:
        prev: dict[tuple[str, str, str, str], int] = {}

        def emit(feat: TcpHealth, agent: Any, first: bool) -> None:
            nonlocal prev
            cur = dict(feat.drops)
            if not first:
                for key, n in sorted(cur.items()):
                    d = n - prev.get(key, 0)
                    if d <= 0:
                        continue
                    reason, proto, wl, peer = key
                    if args.json:
                        doc = {"time": time.time(), "reason": reason, "protocol": proto}
                        doc.update(workload=wl, peer=peer, drops=d)
                        print(json.dumps(doc), flush=True)
                    else:
                        stamp = time.strftime("%H:%M:%S ") if args.timestamp else ""
                        print(f"{stamp}{d:>7} {reason:<28} {proto:<5} {wl:<20} {peer}", flush=True)
            elif not args.json:
                stamp = "TIME     " if args.timestamp else ""
                print(f"{stamp}{'DROPS':>7} {'REASON':<28} {'PROTO':<5} {'WORKLOAD':<20} PEER")
            prev = cur

        return _stream(args, args.interval, emit)


class TcpSynbl(_IntervalTool):
    name = "tcpsynbl"
    help = "accept-queue length at each handshake per listener (bcc tcpsynbl)"

    @classmethod
    def run(cls, args: argparse.Namespace) -> int:
        def emit(feat: TcpHealth, agent: Any, first: bool) -> None:
            if first:
                return
            for (wl, svc), v in feat._listener_rows():
                hist = [int(x) for x in v["backlog_hist"].tolist()]
                limit, over = int(v["max_backlog"]), int(v["overflows"])
                if args.json:
                    slots = dict(zip(backlog_bounds(), hist, strict=True))
                    doc = {"time": time.time(), "workload": wl, "service": svc}
                    doc.update(max_backlog=limit, overflows=over, backlog_slots=slots)
                    print(json.dumps(doc), flush=True)
                    continue
                print(f"backlog_max = {limit} ({svc}, overflows {over})")
                print(f"{'backlog':>14} : count")
                lo = 0
                for bound, n in zip(backlog_bounds(), hist, strict=True):
                    if n:
                        print(f"{lo:>6} -> {bound:<5} : {n}")
                    lo = int(bound) + 1 if bound != "+Inf" else lo
            sys.stdout.flush()

        return _stream(args, args.interval, emit)


def _positional_interval(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("interval", nargs="?", type=float, default=1.0)
    parser.add_argument("count", nargs="?", type=int, default=None)


def rtt_histogram(agent: Any) -> np.ndarray:
    from ..agent import HEALTH_RTT_HIST

    total = np.zeros(HEALTH_RTT_HIST.stop - HEALTH_RTT_HIST.start, dtype=np.int64)
    for edge, t in agent.table.totals().items():
        if edge.protocol == "tcp" and t.health is not None:
            total += t.health[HEALTH_RTT_HIST]
    return total


def log2_lines(hist: list[int], unit: str) -> list[str]:
    """bcc's print_log2_hist layout."""
    if not any(hist):
        return [f"{unit:>10} : count (none)"]
    last = max(i for i, n in enumerate(hist) if n)
    peak = max(hist)
    lines = [f"{unit:>18}          : count     distribution"]
    for i in range(last + 1):
        lo, hi = (0, 1) if i == 0 else (2**i, 2 ** (i + 1) - 1)
        bar = "*" * (hist[i] * 40 // peak)
        lines.append(f"{lo:>10} -> {hi:<10} : {hist[i]:<8} |{bar:<40}|")
    return lines


class TcpRtt(TraceTool):
    name = "tcprtt"
    help = "histogram of smoothed RTT samples per interval (bcc tcprtt): [interval [count]]"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        _positional_interval(parser)

    @classmethod
    def run(cls, args: argparse.Namespace) -> int:
        prev = np.zeros(0, dtype=np.int64)

        def emit(feat: TcpHealth, agent: Any, first: bool) -> None:
            nonlocal prev
            cur = rtt_histogram(agent)
            if not first:
                delta = (cur - prev).tolist() if len(prev) else cur.tolist()
                if args.json:
                    doc = {"time": time.time(), "unit": "usecs", "log2_slots": delta}
                    print(json.dumps(doc), flush=True)
                else:
                    stamp = time.strftime("%H:%M:%S\n") if args.timestamp else ""
                    print(stamp + "\n".join(log2_lines(delta, "usecs")) + "\n", flush=True)
            prev = cur

        return _stream(args, args.interval, emit)


class TcpRetrans(_IntervalTool):
    name = "tcpretrans"
    help = "retransmitted segments per connection and type, per interval (bcc tcpretrans -c)"

    @classmethod
    def run(cls, args: argparse.Namespace) -> int:
        from ..agent import _tcp_sock
        from ..probes import tcpflow

        prev: dict[tuple[int, int], list[int]] = {}

        def emit(feat: TcpHealth, agent: Any, first: bool) -> None:
            nonlocal prev
            cur: dict[tuple[int, int], list[int]] = {}
            rows = []
            if agent.last_tcp is not None:
                keys, vals = agent.last_tcp
                for i in np.flatnonzero(vals["retrans"].sum(axis=1)):
                    v = vals[i]
                    sid = (int(keys[i]), int(v["start_ns"]))
                    cur[sid] = v["retrans"].tolist()
                    rows.append((sid, v))
            for ev in tcpflow.decode_events(agent.last_records.get("tcpflow") or []):
                if int(ev["retrans"].sum()):
                    rows.append(((int(ev["sk"]), int(ev["start_ns"])), ev))
            if not first and not args.json and rows:
                print(f"{'TIME':<8} {'PID':>7} {'COMM':<12} {'LADDR:LPORT':<22} "
                      f"{'RADDR:RPORT':<22} {'TYPE':<8} COUNT")  # fmt: skip
            for sid, v in rows:
                before = prev.get(sid, [0] * tcpflow.RETRANS_TYPES)
                now = v["retrans"].tolist()
                s = _tcp_sock(v)
                for name, a, b in zip(tcpflow.RETRANS_NAMES, before, now, strict=True):
                    if first or b <= a:
                        continue
                    if args.json:
                        doc = {"time": time.time(), "pid": s.tgid, "comm": s.comm}
                        doc.update(laddr=s.laddr, lport=s.lport, raddr=s.raddr, rport=s.rport)
                        doc.update(type=name, count=b - a)
                        print(json.dumps(doc), flush=True)
                    else:
                        print(f"{time.strftime('%H:%M:%S')} {s.tgid:>7} {s.comm[:12]:<12} "
                              f"{s.laddr}:{s.lport:<{21 - len(s.laddr)}} "
                              f"{s.raddr}:{s.rport:<{21 - len(s.raddr)}} {name:<8} {b - a}",
                              flush=True)  # fmt: skip
            prev = cur

        return _stream(args, args.interval, emit)


class TcpReset(_IntervalTool):
    name = "tcpreset"
    help = "TCP resets sent and received per edge with the kernel's reason, per interval"

    @classmethod
    def run(cls, args: argparse.Namespace) -> int:
        from ..agent import HEALTH_RESETS_RECEIVED

        prev: dict[tuple[Any, ...], int] = {}

        def counts(agent: Any) -> dict[tuple[Any, ...], int]:
            out: dict[tuple[Any, ...], int] = {}
            for edge, t in agent.table.totals().items():
                if edge.protocol != "tcp":
                    continue
                for (kind, reason), n in t.labeled.items():
                    if kind == "reset_sent":
                        out[(edge, "sent", reason)] = n
                if t.health is not None and t.health[HEALTH_RESETS_RECEIVED]:
                    out[(edge, "received", UNKNOWN)] = int(t.health[HEALTH_RESETS_RECEIVED])
            return out

        def emit(feat: TcpHealth, agent: Any, first: bool) -> None:
            nonlocal prev
            cur = counts(agent)
            if first and not args.json:
                print(f"{'TIME':<8} {'DIR':<8} {'REASON':<28} {'SOURCE':<20} {'DESTINATION':<24} N")
            for (edge, direction, reason), n in sorted(cur.items(), key=str):
                d = n - prev.get((edge, direction, reason), 0)
                if first or d <= 0:
                    continue
                if args.json:
                    doc = {"time": time.time(), "direction": direction, "reason": reason}
                    doc.update(reporter=edge.reporter, source_workload=edge.source_workload)
                    doc.update(destination_service=edge.destination_service, count=d)
                    print(json.dumps(doc), flush=True)
                else:
                    src, svc = edge.source_workload[:20], edge.destination_service[:24]
                    print(f"{time.strftime('%H:%M:%S')} {direction:<8} {reason[:28]:<28} "
                          f"{src:<20} {svc:<24} {d}", flush=True)  # fmt: skip
            prev = cur

        return _stream(args, args.interval, emit)
