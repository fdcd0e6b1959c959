"""The short live summary `meshlens run` prints: the busiest edges by byte rate."""

from __future__ import annotations

import time

from .accounting import Edge, Totals


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def summary_lines(
    totals: dict[Edge, Totals], previous: dict[Edge, Totals] | None, interval: float, rows: int = 5
) -> list[str]:
    """Busiest edges seen from the source side (or the destination where the
    source is not on this host), by bytes per second since the last summary."""
    rates = []
    for edge, t in totals.items():
        before = previous.get(edge) if previous else None
        moved = t.request_bytes + t.response_bytes
        if before:
            moved -= before.request_bytes + before.response_bytes
        if moved > 0:
            rates.append((moved / interval, edge, t))
    if not rates:
        return [f"{time.strftime('%H:%M:%S')} no traffic"]
    rates.sort(key=lambda r: -r[0])
    lines = [f"{time.strftime('%H:%M:%S')} busiest edges ({len(rates)} active):"]
    for rate, edge, t in rates[:rows]:
        lines.append(
            f"  {edge.protocol:3} {edge.reporter[:3]} {edge.source_workload[:20]:>20} -> "
            f"{edge.destination_service[:28]:28} {human_bytes(rate):>9}/s  conns {t.opened}"
        )
    return lines
