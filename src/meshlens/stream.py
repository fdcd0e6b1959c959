"""One loop for the event streams of `meshlens trace`: load a probe, drain its
ring buffer until SIGINT/SIGTERM or --duration, print each row as text or JSON."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from . import _libbpf as libbpf
from .probes.base import Probe

# A decoder turns drained records into (JSON fields, text line) rows.
Rows = Callable[[list[bytes]], Iterable[tuple[dict[str, Any], str]]]


def start_until_signal(probe: Probe) -> threading.Event | None:
    """Load a trace tool's probe; the event is set on SIGINT/SIGTERM. None (and
    the reason on stderr) when the probe does not load."""
    try:
        probe.start()
    except Exception as exc:
        print(f"meshlens: cannot load {probe.name}: {exc}", file=sys.stderr)
        return None
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    return stop


def stream(probe: Probe, ring_map: str, header: str, rows: Rows, args: argparse.Namespace) -> int:
    stop = start_until_signal(probe)
    if stop is None:
        return 1
    pending: list[bytes] = []
    rings = libbpf.RingBuffers()
    rings.add(probe.map(ring_map), pending.append)
    out = sys.stdout
    stamp = args.timestamp
    deadline = time.monotonic() + args.duration if args.duration else None
    try:
        if not args.json:
            out.write(("TIME     " + header if stamp else header) + "\n")
            out.flush()
        while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
            rings.poll(100)
            rings.consume()  # whatever came without a wake-up
            if not pending:
                continue
            recs = pending[:]
            del pending[: len(recs)]
            for fields, line in rows(recs):
                if args.json:
                    out.write(json.dumps({"time": time.time(), **fields}) + "\n")
                else:
                    out.write((time.strftime("%H:%M:%S ") + line if stamp else line) + "\n")
            out.flush()
    except BrokenPipeError:
        pass
    finally:
        rings.free()
        probe.close()
    return 0
