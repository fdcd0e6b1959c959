"""`meshlens top [interval [count]]`: the busiest flows, like bcc's tcptop, with
the workload of each socket. Bytes of flows that closed during the interval are
included (from their final records), as tcptop does."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from .accounting import Sock, ip_text
from .agent import Agent, AgentConfig, _tcp_sock, _udp_sock
from .probes import tcpflow, udpflow
from .summary import human_bytes


@dataclass
class Row:
    proto: str
    pid: int
    comm: str
    workload: str
    local: str
    lport: int
    remote: str
    rx: int = 0  # bytes in this interval
    tx: int = 0
    rtt_ms: float | None = None  # current smoothed RTT (TCP)
    retrans: int = 0  # segments retransmitted in this interval (TCP)


# A flow's id: protocol tag, its socket ("t": sk address, "u": the UDP map key), start_ns
_Sid = tuple[str, int | bytes, int]


def _endpoint(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


class FlowRates:
    """Per-socket deltas between two refreshes: bytes, retransmits, current RTT."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.prev: dict[_Sid, tuple[int, int, int]] = {}
        self.recent: dict[int, tuple[_Sid, Sock]] = {}  # closed socket -> its row

    def _row(self, proto: str, sock: Sock) -> Row:
        wl = self.agent.namer.local(sock)
        return Row(
            proto, sock.tgid, sock.comm, wl, _endpoint(sock.laddr, sock.lport), sock.lport,
            _endpoint(sock.raddr, sock.rport),
        )  # fmt: skip

    def rows(self) -> list[Row]:
        a = self.agent
        a.refresh(force=True)
        cur: dict[_Sid, tuple[int, int, int]] = {}
        out: dict[_Sid, Row] = {}
        sid: _Sid

        def add(sid: _Sid, proto: str, make: Any, counts: tuple[int, int, int], live: bool,
                rtt_us: int = 0) -> None:  # fmt: skip
            prx, ptx, pre = self.prev.get(sid, (0, 0, 0))
            if live:
                cur[sid] = counts
            drx, dtx, dre = counts[0] - prx, counts[1] - ptx, counts[2] - pre
            if drx <= 0 and dtx <= 0 and dre <= 0:
                return
            row = out.get(sid)
            if row is None:
                row = out[sid] = self._row(proto, make())
            row.rx += max(drx, 0)
            row.tx += max(dtx, 0)
            row.retrans += max(dre, 0)
            if rtt_us:
                row.rtt_ms = rtt_us / 1000

        if a.last_tcp is not None:
            keys, vals = a.last_tcp
            retrans = vals["retrans"].sum(axis=1).tolist()
            for i in range(len(keys)):
                v = vals[i]
                sid = ("t", int(keys[i]), int(v["start_ns"]))
                counts = (int(v["bytes_received"]), int(v["bytes_sent"]), int(retrans[i]))
                add(sid, "T", lambda v=v: _tcp_sock(v), counts, True, int(v["srtt_us"]))
        recs = a.last_records.get("tcpflow") or []
        if recs:
            ev = tcpflow.decode_events(recs)
            for i in range(len(ev)):
                e = ev[i]
                if int(e["type"]) not in (tcpflow.EventType.CLOSE, tcpflow.EventType.LATE):
                    continue
                sk = int(e["sk"])
                sid = ("t", sk, int(e["start_ns"]))
                make: Any = lambda e=e: _tcp_sock(e)  # noqa: E731
                if int(e["type"]) == tcpflow.EventType.CLOSE:
                    self.recent[sk] = (sid, _tcp_sock(e))
                elif sk in self.recent:
                    # bytes read after the close: the closed flow's row, not a
                    # stray one (the kernel already released the local port)
                    sid, sock = self.recent[sk]
                    make = lambda sock=sock: sock  # noqa: E731
                counts = (int(e["bytes_received"]), int(e["bytes_sent"]), int(e["retrans"].sum()))
                add(sid, "T", make, counts, False, int(e["srtt_us"]))
        if a.last_udp is not None:
            keys, vals = a.last_udp
            for i in range(len(keys)):
                k, v = keys[i], vals[i]
                sid = ("u", bytes(k), int(v["start_ns"]))
                counts = (int(v["bytes_received"]), int(v["bytes_sent"]), 0)
                add(sid, "U", lambda k=k, v=v: _udp_sock(k, v), counts, True)
        self.prev = cur
        if len(self.recent) > 65536:
            self.recent.clear()
        return sorted(out.values(), key=lambda r: -(r.rx + r.tx))


def render(rows: list[Row], interval: float, limit: int, wide: bool = False) -> list[str]:
    """80 columns by default (local port only, UDP marked /u); --wide shows all."""
    rx = sum(r.rx for r in rows)
    tx = sum(r.tx for r in rows)
    lines = [
        f"{time.strftime('%H:%M:%S')} flows: {len(rows)}  rx {human_bytes(rx / interval)}/s"
        f"  tx {human_bytes(tx / interval)}/s",
        "",
    ]
    if wide:
        lines.append(
            f"{'PID':>7} {'COMM':<15} {'WORKLOAD':<20} P {'LADDR':<39} {'RADDR':<39} "
            f"{'RX_KB':>8} {'TX_KB':>8} {'RTT_MS':>7} {'RETR':>5}"
        )
    else:
        lines.append(
            f"{'PID':>6} {'COMM':<10} {'WORKLOAD':<10} {'LPORT':>5} {'RADDR':<21} "
            f"{'RX_KB':>6} {'TX_KB':>6} {'RTTms':>5} {'RET':>3}"
        )
    for r in rows[:limit]:
        rtt = f"{r.rtt_ms:.3g}" if r.rtt_ms is not None else "-"
        pid = str(r.pid) if r.pid else "-"
        if wide:
            lines.append(
                f"{pid:>7} {r.comm[:15]:<15} {r.workload[:20]:<20} {r.proto} {r.local[:39]:<39} "
                f"{r.remote[:39]:<39} {r.rx // 1024:>8} {r.tx // 1024:>8} {rtt:>7} {r.retrans:>5}"
            )
        else:
            remote = (r.remote + ("/u" if r.proto == "U" else ""))[:21]
            lines.append(
                f"{pid[:6]:>6} {r.comm[:10]:<10} {r.workload[:10]:<10} {r.lport:>5} {remote:<21} "
                f"{r.rx // 1024:>6} {r.tx // 1024:>6} {rtt[:5]:>5} {min(r.retrans, 999):>3}"
            )
    return lines


def run_top(args: argparse.Namespace) -> int:
    agent = Agent(AgentConfig(min_refresh_interval=0.0, bpf_stats=False))
    agent.start()
    if not agent.probes:
        print("meshlens: no probe could be loaded", file=sys.stderr)
        return 1
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    rates = FlowRates(agent)
    rates.rows()  # baseline
    shown = 0
    try:
        while not stop.wait(args.interval):
            rows = rates.rows()
            if args.json:
                flows = [r.__dict__ for r in rows[: args.rows]]
                doc = {"time": time.time(), "interval": args.interval, "flows": flows}
                print(json.dumps(doc), flush=True)
            else:
                if not args.noclear:
                    sys.stdout.write("\033[2J\033[H")
                print("\n".join(render(rows, args.interval, args.rows, args.wide)), flush=True)
            shown += 1
            if args.count and shown >= args.count:
                break
    except BrokenPipeError:
        pass
    finally:
        agent.stop()
    return 0


__all__ = ["FlowRates", "Row", "ip_text", "render", "run_top", "udpflow"]
