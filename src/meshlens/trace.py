"""`meshlens trace tcplife|tcpconnect|tcpaccept`: event streams with bcc's columns."""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from .accounting import ip_text
from .probes import tcpflow
from .stream import stream

# bcc prints these columns; widths follow bcc's for IPv4.
HEADERS = {
    "tcplife": "{:<7} {:<12} {:<15} {:<5} {:<15} {:<5} {:>6} {:>6} {:>8}".format(
        "PID", "COMM", "LADDR", "LPORT", "RADDR", "RPORT", "TX_KB", "RX_KB", "MS"
    ),
    "tcpconnect": "{:<7} {:<12} {:<2} {:<16} {:<16} {:<5} {}".format(
        "PID", "COMM", "IP", "SADDR", "DADDR", "DPORT", "RESULT"
    ),
    "tcpaccept": "{:<7} {:<12} {:<2} {:<16} {:<5} {:<16} {:<5}".format(
        "PID", "COMM", "IP", "RADDR", "RPORT", "LADDR", "LPORT"
    ),
}


def event_fields(e: np.void) -> dict[str, Any]:
    fam = int(e["family"])
    return {
        "pid": int(e["tgid"]),
        "comm": bytes(e["comm"]).split(b"\0", 1)[0].decode(errors="replace"),
        "ip": 4 if fam == 2 else 6,
        "laddr": ip_text(fam, bytes(e["laddr"])),
        "lport": int(e["lport"]),
        "raddr": ip_text(fam, bytes(e["raddr"])),
        "rport": int(e["rport"]),
        "netns": int(e["netns"]),
    }


def format_event(tool: str, e: np.void) -> dict[str, Any] | None:
    """The event as a dict for --json, or None if the tool doesn't show it."""
    typ = int(e["type"])
    f = event_fields(e)
    if tool == "tcplife" and typ == tcpflow.EventType.CLOSE:
        start = int(e["start_ns"])
        # TX is what the application wrote. RX: what it read, or -- when it
        # reads after the close (a FIN came first) -- what TCP received, less
        # the FIN's sequence number. bcc shows bytes_acked/bytes_received raw,
        # which also count the SYN and FIN.
        fin = 1 if int(e["shutdown"]) & 1 else 0
        rx = max(int(e["bytes_received"]), int(e["tcp_bytes_received"]) - fin)
        f.update(
            tx_bytes=int(e["bytes_sent"]),
            rx_bytes=rx,
            kernel_bytes_acked=int(e["bytes_acked"]),
            kernel_bytes_received=int(e["tcp_bytes_received"]),
            ms=(int(e["end_ns"]) - start) / 1e6 if start else None,
            retrans=int(e["total_retrans"]),
            srtt_us=int(e["srtt_us"]),
        )
        return f
    connects = (tcpflow.EventType.CONNECT, tcpflow.EventType.CONNECT_FAILED)
    if tool == "tcpconnect" and typ in connects:
        f["error"] = int(e["error"])
        return f
    if tool == "tcpaccept" and typ == tcpflow.EventType.ACCEPT:
        return f
    return None


def render(tool: str, f: dict[str, Any]) -> str:
    pid = str(f["pid"]) if f["pid"] else "-"
    comm = f["comm"] or "-"
    if tool == "tcplife":
        ms = f"{f['ms']:.2f}" if f["ms"] is not None else "-"
        return "{:<7} {:<12.12} {:<15} {:<5} {:<15} {:<5} {:>6} {:>6} {:>8}".format(
            pid, comm, f["laddr"], f["lport"], f["raddr"], f["rport"],
            f["tx_bytes"] // 1024, f["rx_bytes"] // 1024, ms,
        )  # fmt: skip
    if tool == "tcpconnect":
        result = "ok" if not f["error"] else os.strerror(f["error"])
        return "{:<7} {:<12.12} {:<2} {:<16} {:<16} {:<5} {}".format(
            pid, comm, f["ip"], f["laddr"], f["raddr"], f["rport"], result
        )
    return "{:<7} {:<12.12} {:<2} {:<16} {:<5} {:<16} {:<5}".format(
        pid, comm, f["ip"], f["raddr"], f["rport"], f["laddr"], f["lport"]
    )


def run_trace(args: argparse.Namespace) -> int:
    probe = tcpflow.TcpFlowProbe(trace_opens=args.tool != "tcplife", wake_each=True)

    def rows(recs: list[bytes]) -> Iterator[tuple[dict[str, Any], str]]:
        events = tcpflow.decode_events(recs)
        for i in range(len(events)):
            f = format_event(args.tool, events[i])
            if f is not None:
                yield f, render(args.tool, f)

    return stream(probe, tcpflow.EVENTS_MAP, HEADERS[args.tool], rows, args)
