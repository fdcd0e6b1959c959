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
    remote: str
    rx: int = 0  # bytes in this interval
    tx: int = 0


def _endpoint(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


class FlowRates:
    """Per-socket byte deltas between two refreshes."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.prev: dict[object, tuple[int, int]] = {}

    def _row(self, proto: str, sock: Sock) -> Row:
        wl = self.agent.namer.local(sock)
        return Row(
            proto, sock.tgid, sock.comm, wl,
            _endpoint(sock.laddr, sock.lport), _endpoint(sock.raddr, sock.rport),
        )  # fmt: skip

    def rows(self) -> list[Row]:
        a = self.agent
        a.refresh(force=True)
        cur: dict[object, tuple[int, int]] = {}
        out: dict[object, Row] = {}

        def add(sid: object, proto: str, make: object, rx: int, tx: int, live: bool) -> None:
            prx, ptx = self.prev.get(sid, (0, 0))
            if live:
                cur[sid] = (rx, tx)
            drx, dtx = rx - prx, tx - ptx
            if drx <= 0 and dtx <= 0:
                return
            row = out.get(sid)
            if row is None:
                row = out[sid] = self._row(proto, make())  # type: ignore[operator]
            row.rx += max(drx, 0)
            row.tx += max(dtx, 0)

        if a.last_tcp is not None:
            keys, vals = a.last_tcp
            for i in range(len(keys)):
                v = vals[i]
                sid = ("t", int(keys[i]), int(v["start_ns"]))
                add(
                    sid,
                    "T",
                    lambda v=v: _tcp_sock(v),
                    int(v["bytes_received"]),
                    int(v["bytes_sent"]),
                    True,
                )
        recs = a.last_records.get("tcpflow") or []
        if recs:
            ev = tcpflow.decode_events(recs)
            for i in range(len(ev)):
                e = ev[i]
                if int(e["type"]) not in (tcpflow.EventType.CLOSE, tcpflow.EventType.LATE):
                    continue
                sid = ("t", int(e["sk"]), int(e["start_ns"]))
                add(
                    sid,
                    "T",
                    lambda e=e: _tcp_sock(e),
                    int(e["bytes_received"]),
                    int(e["bytes_sent"]),
                    False,
                )
        if a.last_udp is not None:
            keys, vals = a.last_udp
            for i in range(len(keys)):
                k, v = keys[i], vals[i]
                sid = ("u", bytes(k), int(v["start_ns"]))
                add(
                    sid,
                    "U",
                    lambda k=k, v=v: _udp_sock(k, v),
                    int(v["bytes_received"]),
                    int(v["bytes_sent"]),
                    True,
                )
        self.prev = cur
        return sorted(out.values(), key=lambda r: -(r.rx + r.tx))


def render(rows: list[Row], interval: float, limit: int) -> list[str]:
    rx = sum(r.rx for r in rows)
    tx = sum(r.tx for r in rows)
    lines = [
        f"{time.strftime('%H:%M:%S')} flows: {len(rows)}  rx {human_bytes(rx / interval)}/s"
        f"  tx {human_bytes(tx / interval)}/s",
        "",
        f"{'PID':>7} {'COMM':<12} {'WORKLOAD':<12} {'P':1} {'LADDR':<21} {'RADDR':<21} "
        f"{'RX_KB':>6} {'TX_KB':>6}",
    ]
    for r in rows[:limit]:
        lines.append(
            f"{r.pid or '-':>7} {r.comm[:12]:<12} {r.workload[:12]:<12} {r.proto} "
            f"{r.local[:21]:<21} {r.remote[:21]:<21} {r.rx // 1024:>6} {r.tx // 1024:>6}"
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
                print("\n".join(render(rows, args.interval, args.rows)), flush=True)
            shown += 1
            if args.count and shown >= args.count:
                break
    except BrokenPipeError:
        pass
    finally:
        agent.stop()
    return 0


__all__ = ["FlowRates", "Row", "ip_text", "render", "run_top", "udpflow"]
