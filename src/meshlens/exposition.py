"""/metrics in the Prometheus text format (0.0.4), rendered for a scraper that
comes back every few seconds to mostly the same series.

prometheus_client's generate_latest escapes and sorts every label of every
sample on every scrape; an Istio series has ~23 labels, so that was most of a
scrape's CPU. Here each distinct label set is rendered once and kept, and a
sample costs a dictionary lookup. meshlens' own families (families.py) write
their rows straight from their label values; any other prometheus_client
Metric goes through its samples.
"""

from __future__ import annotations

import os
import selectors
import socket
import threading
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client.metrics_core import Metric
from prometheus_client.utils import floatToGoString

from . import pacing
from .families import Family, LabelText
from .system import normal_priority_if

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_TYPES = {"counter": "counter", "gauge": "gauge", "histogram": "histogram", "summary": "summary"}


def _escape_help(v: str) -> str:
    return v.replace("\\", r"\\").replace("\n", r"\n")


def format_value(v: float) -> str:
    """Integers exactly (counters past 2**53 too); floats as prometheus_client
    prints them."""
    if isinstance(v, int):
        return str(v)
    text: str = floatToGoString(v)  # type: ignore[no-untyped-call]
    return text


class Renderer:
    """Renders families, remembering each label set's text between calls."""

    def __init__(self) -> None:
        self._labels = LabelText()
        self._lock = threading.Lock()

    def render(self, families: Iterable[Metric]) -> bytes:
        with self._lock:
            return self._render(families)

    def _render(self, families: Iterable[Metric]) -> bytes:
        text = self._labels
        out: list[str] = []
        samples = 0
        pacing.start()
        for fam in families:
            pacing.pace()  # the collector's work for this family, then its text
            name = fam.name + "_total" if fam.type == "counter" else fam.name
            out.append(f"# HELP {name} {_escape_help(fam.documentation)}\n")
            out.append(f"# TYPE {name} {_TYPES.get(fam.type, 'untyped')}\n")
            if isinstance(fam, Family):
                samples += fam.write(out, text, format_value)
                continue
            for s in fam.samples:
                labels = text.whole(tuple(s.labels), tuple(s.labels.values()))
                out.append(f"{s.name}{labels} {format_value(s.value)}\n")
                samples += 1
        # Series that stopped existing leave their text behind: start afresh
        # when the cache is well beyond what one scrape uses.
        if text.size > 2 * samples + 1024:
            text.clear()
        return "".join(out).encode()


class _Server(ThreadingHTTPServer):
    """serve_forever() without its poll timer: it sleeps until a connection comes or
    shutdown() writes to a pipe. (The standard one wakes twice a second to look for
    a shutdown request: each wake-up of an idle agent takes a CPU from the host's
    workloads, docs/bench/http.md.)"""

    daemon_threads = True
    timeout = 0  # handle_request() only accepts what select() saw waiting

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._wake: tuple[int, ...] = os.pipe()
        self._stopping = False
        self._stopped = threading.Event()
        super().__init__(*args, **kwargs)  # a failed bind calls server_close(): no leak

    def serve_forever(self, poll_interval: float | None = None) -> None:
        try:
            with selectors.DefaultSelector() as sel:
                sel.register(self, selectors.EVENT_READ)
                sel.register(self._wake[0], selectors.EVENT_READ)
                while not self._stopping:
                    if any(key.fileobj is self for key, _ in sel.select()):
                        self.handle_request()
        finally:
            self._stopped.set()

    def shutdown(self) -> None:
        self._stopping = True
        if self._wake:
            os.write(self._wake[1], b"x")
        self._stopped.wait()

    def server_close(self) -> None:
        super().server_close()
        wake, self._wake = self._wake, ()
        for fd in wake:
            os.close(fd)


def serve(
    host: str,
    port: int,
    collect: Callable[[], Iterable[Metric]],
    thread_init: Callable[[], object] | None = None,
    urgent: Callable[[], bool] | None = None,
) -> ThreadingHTTPServer:
    """Serve GET /metrics on a daemon thread; raises OSError if the port is taken.
    thread_init runs first on that thread (the threads of each request inherit
    what it sets, such as a scheduling policy); a scrape while urgent() is true
    runs at normal priority (system.normal_priority_if)."""
    renderer = Renderer()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] not in ("/metrics", "/"):
                self.send_error(404, "only /metrics is served")
                return
            try:
                with normal_priority_if(urgent is not None and urgent()):
                    body = renderer.render(collect())
            except Exception as exc:  # a scrape must not kill the server
                self.send_error(500, f"collect failed: {exc}")
                return
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # a scrape every few seconds is not news

    server_cls = _Server
    if ":" in host:

        class V6Server(_Server):
            address_family = socket.AF_INET6

        server_cls = V6Server
    server = server_cls((host, port), Handler)

    def loop() -> None:
        if thread_init is not None:
            thread_init()
        server.serve_forever()

    threading.Thread(target=loop, name="metrics-http", daemon=True).start()
    return server
