"""The agent: loads the probes, drains their ring buffers, and turns kernel
counters into per-edge totals on demand (a scrape costs one batch read per map)."""

from __future__ import annotations

import gc
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from . import _libbpf as libbpf
from . import kernel_enums, pacing
from .accounting import (
    EdgeTable,
    Flow,
    FlowBook,
    LiveRows,
    Namer,
    Record,
    Sock,
    column_bytes,
    ip_text,
)
from .identity import IdentityResolver
from .probes import tcpflow, udpflow
from .probes.base import Probe, ProbeStatus
from .ringwait import RingWait

if TYPE_CHECKING:
    from .features import Feature

log = logging.getLogger(__name__)


@dataclass
class AgentConfig:
    max_tcp_flows: int = 65536
    max_udp_flows: int = 65536
    udp_idle_seconds: float = 30.0
    max_series: int = 10000
    min_refresh_interval: float = 1.0
    strict: bool = False
    bpf_stats: bool = False  # kernel.bpf_stats_enabled costs every program run two clock reads
    probes: tuple[str, ...] = ("tcpflow", "udpflow")
    tcp_health: bool = True  # tcpflow's per-socket health hooks
    features: tuple[str, ...] | None = None  # None: every feature in meshlens.features
    options: dict[str, Any] = field(default_factory=dict)  # feature options from the CLI
    # Keep each refresh's map reads and records (last_tcp, last_udp, last_records)
    # for `top` and the trace tools; `meshlens run` does not need them (at 10k
    # flows they are megabytes).
    snapshots: bool = True


@dataclass
class SelfStats:
    refreshes: int = 0
    refresh_seconds: float = 0.0
    records: dict[str, int] = field(default_factory=dict)
    decode_errors: int = 0


_comms: dict[bytes, str] = {}  # raw comm -> text: a few processes make most sockets


def _comm(raw: bytes) -> str:
    text = _comms.get(raw)
    if text is None:
        text = raw.split(b"\0", 1)[0].decode(errors="replace")
        if len(_comms) >= 4096:
            _comms.clear()
        _comms[raw] = text
    return text


class Agent:
    def __init__(
        self, config: AgentConfig | None = None, identity: IdentityResolver | None = None
    ) -> None:
        self.config = config or AgentConfig()
        self.identity = identity or IdentityResolver()
        self.namer = Namer(self.identity)
        # Endpoints of closed sockets stay a while to name late peers; as many
        # as the kernel can hold flows is plenty (under a churn it was the
        # agent's largest table).
        self.namer.max_endpoints = self.config.max_tcp_flows + self.config.max_udp_flows
        self.table = EdgeTable(max_series=self.config.max_series)
        self.tcp_book = FlowBook(self.namer, self.table, "tcp")
        self.udp_book = FlowBook(self.namer, self.table, "udp")
        self.tcp: tcpflow.TcpFlowProbe | None = None
        self.udp: udpflow.UdpFlowProbe | None = None
        self.probes: list[Probe] = []
        self.features: list[Feature] = []
        self.statuses: list[ProbeStatus] = []
        self.rings = libbpf.RingBuffers()
        self._pending: dict[str, list[bytes]] = {"tcpflow": [], "udpflow": []}
        self._lock = threading.Lock()  # one refresh at a time; guards the books
        self._ring_lock = threading.Lock()  # libbpf's ring_buffer has one consumer
        self._last_refresh = 0.0
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._waiter: RingWait | None = None
        self._stats_fd: int | None = None
        self.self_stats = SelfStats()
        self.started_at = 0.0
        self.startup_seconds = 0.0
        # Per-refresh snapshot of live flows, for `top`.
        self.last_tcp: tuple[np.ndarray, np.ndarray] | None = None
        self.last_udp: tuple[np.ndarray, np.ndarray] | None = None
        self.last_records: dict[str, list[bytes]] = {}
        self.on_tcp_event: Callable[[np.ndarray], None] | None = None
        self.max_backlog = 20000  # records waiting before they are accounted early
        self._backlogged = threading.Event()
        self.pressure = Pressure()
        self._accountant: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------

    def start(self) -> list[ProbeStatus]:
        """Load and attach every probe; a probe that fails is reported and the
        rest run on, unless strict."""
        t0 = time.monotonic()
        libbpf.tune_malloc()
        if self.config.bpf_stats:
            self._stats_fd = libbpf.enable_run_time_stats()
        wanted: list[Probe] = []
        if "tcpflow" in self.config.probes:
            self.tcp = tcpflow.TcpFlowProbe(
                max_flows=self.config.max_tcp_flows, health=self.config.tcp_health
            )
            wanted.append(self.tcp)
        if "udpflow" in self.config.probes:
            self.udp = udpflow.UdpFlowProbe(
                max_flows=self.config.max_udp_flows, idle_seconds=self.config.udp_idle_seconds
            )
            wanted.append(self.udp)
        for probe in wanted:
            try:
                probe.start()
            except Exception as exc:
                log.error("probe %s failed: %s", probe.name, exc)
                self.statuses.append(probe.status)
                if self.config.strict:
                    self.stop()
                    raise
                if probe is self.tcp:
                    self.tcp = None
                if probe is self.udp:
                    self.udp = None
                continue
            self.probes.append(probe)
            self.statuses.append(probe.status)
        if self.tcp:
            self.rings.add(self.tcp.map(tcpflow.EVENTS_MAP), self._pending["tcpflow"].append)
        if self.udp:
            self.rings.add(self.udp.map(udpflow.EVENTS_MAP), self._pending["udpflow"].append)
        self._start_features()
        for probe in self.probes:
            probe.btf = None  # parsed for layouts and globals before load; not used after
        _tune_gc()
        self.started_at = time.time()
        self.startup_seconds = time.monotonic() - t0
        self._waiter = RingWait(self.rings.epoll_fd())
        self._poller = threading.Thread(target=self._poll_loop, name="ringbuf", daemon=True)
        self._poller.start()
        self._accountant = threading.Thread(target=self._account_loop, name="account", daemon=True)
        self._accountant.start()
        threading.Thread(target=self._warm_up, name="warm-up", daemon=True).start()
        return self.statuses

    def _warm_up(self) -> None:
        """What naming needs once, read now, beside start-up, rather than in the
        refresh that first needs it, where it stalls under load: the kernel's
        drop/reset reason names (~0.1 s of BTF parsing)."""
        kernel_enums.load()

    def _start_features(self) -> None:
        from .features import features

        for cls in features():
            if self.config.features is not None and cls.name not in self.config.features:
                continue
            feat = cls(self, self.config.options)
            try:
                feat.start()
            except Exception as exc:
                log.error("feature %s failed: %s", cls.name, exc)
                feat.stop()
                for probe in feat.probes:
                    probe.status.error = probe.status.error or str(exc)
                    self.statuses.append(probe.status)
                if self.config.strict:
                    self.stop()
                    raise
                continue
            self.features.append(feat)
            for probe in feat.probes:
                self.probes.append(probe)
                self.statuses.append(probe.status)

    def probes_and_chain(self) -> list[Probe]:
        """The probes, plus the chain that runs their send/recv programs."""
        from .probes import sockchain

        chain = sockchain.current()
        return [*self.probes, *([chain] if chain else [])] if self.probes else []

    def stop(self) -> None:
        self._stop.set()
        self._backlogged.set()  # the accountant waits on it without a timeout
        if self._waiter:
            self._waiter.stop()
        for thread in (self._poller, self._accountant):
            if thread:
                thread.join(timeout=5)
        self._poller = self._accountant = None
        if self._waiter:
            self._waiter.close()
            self._waiter = None
        with self._ring_lock:
            self.rings.free()
        for feat in self.features:
            feat.stop()
        self.features.clear()
        for probe in self.probes:
            probe.close()
        self.probes.clear()
        if self._stats_fd is not None:
            os.close(self._stats_fd)
            self._stats_fd = None

    def _poll_loop(self) -> None:
        # Wait on the epoll fd without holding the lock, then drain under it, so
        # a refresh never waits for a poll timeout.
        # The kernel wakes us when a ring is 1/8 full (each record, for a trace),
        # and a refresh drains first, so records waiting in a ring are never lost
        # or late to a scrape: no timer. Each wake-up takes the CPU from whatever
        # runs there (0.5 ms of a cold interpreter under load, docs/bench/http.md).
        timeout = 0.2 if self.on_tcp_event is not None else None
        waiter = self._waiter
        while waiter and waiter.wait(timeout):
            if timeout is None:
                self.pressure.woken(time.monotonic())  # by the kernel: a ring 1/8 full
            # Drain on every wake-up (a trace's timer too): the kernel skips
            # wake-ups until a batch has built up.
            with self._ring_lock:
                if self._stop.is_set():
                    return
                self.rings.consume()
            # Account a backlog now rather than at the next scrape: records wait
            # in memory until then (a churn of 20k connections/s is 40k a second).
            # Another thread does it, so this one keeps draining meanwhile.
            if self.on_tcp_event is None and self.backlog() > self.max_backlog:
                self._backlogged.set()
            if self.on_tcp_event is not None:
                self._deliver_trace()

    def _account_loop(self) -> None:
        while not self._stop.is_set():
            if self._backlogged.wait():  # set by the poller, or by stop()
                self._backlogged.clear()
                if not self._stop.is_set():
                    self.refresh(force=True)

    def _deliver_trace(self) -> None:
        with self._ring_lock:
            recs, self._pending["tcpflow"][:] = list(self._pending["tcpflow"]), []
        if recs and self.on_tcp_event is not None:
            self.on_tcp_event(tcpflow.decode_events(recs))

    # -- refresh ---------------------------------------------------------

    def refresh(self, force: bool = False) -> bool:
        """Read the maps, then drain the ring buffers, then account. Rate-limited
        so concurrent scrapes share one read."""
        with self._lock:
            now = time.monotonic()
            if not force and now - self._last_refresh < self.config.min_refresh_interval:
                return False
            # No cyclic collection in the middle of a refresh: it would walk
            # every record and socket the refresh holds (tens of ms with the
            # interpreter lock held, while the ring buffers fill); what the
            # refresh made is freed by reference counts when it ends.
            collecting = gc.isenabled()
            gc.disable()
            try:
                return self._refresh()
            finally:
                if collecting:
                    gc.enable()

    def _refresh(self) -> bool:
        """The body of refresh(), under its lock."""
        t0 = time.perf_counter()
        pacing.start()  # pauses between its steps: see pacing.py
        tcp_live = self.tcp.read_flows() if self.tcp else None
        udp_live = self.udp.read_flows() if self.udp else None
        if self.tcp:
            self.namer.set_listeners(self._listeners())
        for feat in self.features:
            pacing.pace()
            feat.refresh()
        pacing.pace()
        with self._ring_lock:
            self.rings.consume()  # after the reads: see accounting.py
            tcp_recs = self._take("tcpflow")
            udp_recs = self._take("udpflow")
        if self.config.snapshots:
            self.last_records = {"tcpflow": tcp_recs, "udpflow": udp_recs}
        if self.tcp and tcp_live is not None:
            if self.config.snapshots:
                self.last_tcp = tcp_live
            keys, vals = tcp_live
            self.tcp_book.update(
                _tcp_live(keys, vals),
                _tcp_records(tcp_recs),
                *tcp_health(vals),
                redrain=lambda: list(_tcp_records(self._redrain("tcpflow"))),
            )
        pacing.pace()
        if self.udp and udp_live is not None:
            if self.config.snapshots:
                self.last_udp = udp_live
            self.udp_book.update(
                _udp_live(*udp_live),
                _udp_records(udp_recs),
                redrain=lambda: list(_udp_records(self._redrain("udpflow"))),
            )
        for feat in self.features:
            pacing.pace()
            feat.account()
        self.namer.forget_older_than(120.0)
        self._last_refresh = time.monotonic()
        self.self_stats.refreshes += 1
        # The reads' buffers and arrays are freed now: return their pages.
        libbpf.release_free_memory()
        self.self_stats.refresh_seconds += time.perf_counter() - t0
        return True

    def under_pressure(self) -> bool:
        """Are records pouring into the ring buffers (see Pressure)? Bookkeeping
        that would wait for idle CPU runs at normal priority meanwhile
        (system.normal_priority_if)."""
        return self.pressure.active(time.monotonic())

    def backlog(self) -> int:
        return sum(len(p) for p in self._pending.values())

    def _redrain(self, probe: str) -> list[bytes]:
        with self._ring_lock:
            self.rings.consume()
            return self._take(probe)

    def _take(self, probe: str) -> list[bytes]:
        recs = self._pending[probe]
        out = list(recs)
        recs.clear()
        self.self_stats.records[probe] = self.self_stats.records.get(probe, 0) + len(out)
        return out

    def _listeners(self) -> dict[tuple[int, int], str]:
        assert self.tcp
        out = {}
        for lst in self.tcp.read_listeners():
            out[(lst.netns, lst.port)] = self.identity.workload(
                lst.tgid, lst.comm, lst.netns, lst.cgroup_id
            )
        return out


GC_THRESHOLDS = (50_000, 20, 100)


class Pressure:
    """Records pour into the ring buffers: the kernel woke their drain (a ring
    1/8 full) twice within `window` s. It lasts `hold` s after the last such pair."""

    def __init__(self, window: float = 1.0, hold: float = 5.0) -> None:
        self.window, self.hold = window, hold
        self._last = -math.inf
        self._until = -math.inf

    def woken(self, now: float) -> None:
        if now - self._last < self.window:
            self._until = now + self.hold
        self._last = now

    def active(self, now: float) -> bool:
        return now < self._until


def _tune_gc() -> None:
    """Python's cyclic collector, by default, runs every 700 new objects and
    now and then walks every object the process holds: under a churn of
    20k connections/s that was 3.6 s of every 10 s, in pauses of up to
    0.4 s with the interpreter lock held, during which nobody drained the
    ring buffer and the kernel dropped close records. The agent makes little
    cyclic garbage (reference counts free what a refresh made), so: what
    start-up made is frozen out of the collections, and they run rarely."""
    gc.collect()
    gc.freeze()
    if gc.get_threshold()[0] < GC_THRESHOLDS[0]:
        gc.set_threshold(*GC_THRESHOLDS)


# -- decoding kernel rows into accounting inputs ---------------------------


_DIR_SERVER = {
    int(tcpflow.Dir.UNKNOWN): None,
    int(tcpflow.Dir.ACTIVE): False,
    int(tcpflow.Dir.PASSIVE): True,
}


def _tcp_sock(v: np.void) -> Sock:
    return _tcp_socks(v.reshape(1) if v.shape else np.array([v]))[0]


_ints: dict[int, int] = {}  # netns inodes: one int object each, not one per socket


def _shared(values: list[int]) -> list[int]:
    """The same int object for equal values (the endpoint directory keeps one
    per socket)."""
    if len(_ints) > 4096:
        _ints.clear()
    get = _ints.setdefault
    return [get(v, v) for v in values]


def _tcp_socks(rows: np.ndarray) -> list[Sock]:
    """Socks of many flow values or records at once: columns to lists first,
    per-row numpy access costs microseconds."""
    fams = rows["family"].tolist()
    laddrs = column_bytes(rows, "laddr")
    raddrs = column_bytes(rows, "raddr")
    out = []
    for tgid, comm, netns, cg, fam, la, lp, ra, rp, d in zip(
        rows["tgid"].tolist(), rows["comm"].tolist(), _shared(rows["netns"].tolist()),
        rows["cgroup_id"].tolist(), fams, laddrs, rows["lport"].tolist(), raddrs,
        rows["rport"].tolist(), rows["dir"].tolist(), strict=True,
    ):  # fmt: skip
        out.append(
            Sock(tgid, _comm(comm), netns, cg, fam, ip_text(fam, la), lp, ip_text(fam, ra), rp,
                 _DIR_SERVER.get(d))
        )  # fmt: skip
    return out


def _tcp_live(keys: np.ndarray, vals: np.ndarray) -> LiveRows:
    # Columns as Python lists: per-row numpy scalar access is slow at 100k rows.
    # One int per socket id (address << 64 | start time), not a tuple of two:
    # the bound sockets' ids stay in memory for their whole lives.
    starts = vals["start_ns"].tolist()
    sids: list[Hashable] = [
        sk << 64 | start for sk, start in zip(keys.tolist(), starts, strict=True)
    ]
    # TCP counts bytes, not calls (no program runs per call): calls stay 0
    zeros = [0] * len(starts)
    flows = list(
        zip(vals["bytes_sent"].tolist(), vals["bytes_received"].tolist(), zeros, zeros,
            strict=True)
    )  # fmt: skip
    opened = (vals["flags"] & int(tcpflow.Flag.OPENED)).astype(bool).tolist()
    closing = (vals["flags"] & int(tcpflow.Flag.CLOSING)).astype(bool).tolist()
    return LiveRows(sids, flows, opened, closing, lambda idx: _tcp_socks(vals[idx]))


# Health vector of a TCP socket, summed per edge (see TcpHealth in exporter.py):
# retransmits by type, resets sent and received, RTT sum (us), RTT histogram.
HEALTH_RETRANS = slice(0, tcpflow.RETRANS_TYPES)
HEALTH_RESETS_SENT = tcpflow.RETRANS_TYPES
HEALTH_RESETS_RECEIVED = HEALTH_RESETS_SENT + 1
HEALTH_RTT_SUM = HEALTH_RESETS_RECEIVED + 1
HEALTH_RTT_HIST = slice(HEALTH_RTT_SUM + 1, HEALTH_RTT_SUM + 1 + tcpflow.RTT_SLOTS)
HEALTH_LEN = HEALTH_RTT_SUM + 1 + tcpflow.RTT_SLOTS


def health_matrix(rows: np.ndarray) -> np.ndarray:
    """Health vectors of flow values or records, one row each."""
    out = np.empty((len(rows), HEALTH_LEN), dtype=np.int64)
    out[:, HEALTH_RETRANS] = rows["retrans"]
    out[:, HEALTH_RESETS_SENT] = rows["resets_sent"]
    out[:, HEALTH_RESETS_RECEIVED] = rows["resets_received"]
    out[:, HEALTH_RTT_SUM] = rows["rtt_sum_us"]
    out[:, HEALTH_RTT_HIST] = rows["rtt_hist"]
    return out


def _reset_labels(row: np.void) -> dict[tuple[str, str], int]:
    n = int(row["resets_sent"])
    return {("reset_sent", kernel_enums.reset_reason(int(row["rst_reason"]))): n} if n else {}


def tcp_health(vals: np.ndarray) -> tuple[np.ndarray, dict[int, dict[tuple[str, str], int]]]:
    labeled = {int(i): _reset_labels(vals[i]) for i in np.flatnonzero(vals["resets_sent"])}
    return health_matrix(vals), labeled


_KINDS = {
    tcpflow.EventType.CLOSE: "close",
    tcpflow.EventType.LATE: "late",
    tcpflow.EventType.CONNECT_FAILED: "failed",
}


def _tcp_records(recs: list[bytes]) -> Iterator[Record]:
    if not recs:
        return
    ev = tcpflow.decode_events(recs)
    health = health_matrix(ev)
    socks: list[Sock] | None = None  # decoded once, for all, on first need

    def sock_of(i: int) -> Sock:
        nonlocal socks
        if socks is None:
            socks = _tcp_socks(ev)
        return socks[i]

    cols = zip(
        ev["type"].tolist(), ev["sk"].tolist(), ev["start_ns"].tolist(),
        ev["bytes_sent"].tolist(), ev["bytes_received"].tolist(), ev["flags"].tolist(),
        ev["resets_sent"].tolist(), ev["error"].tolist(), strict=True,
    )  # fmt: skip
    for i, (typ, sk, start, bs, br, flags, rst, err) in enumerate(cols):
        kind = _KINDS.get(typ)
        if kind is None:
            continue  # trace-only records
        labeled = _reset_labels(ev[i]) if rst else {}
        if kind == "failed":
            labeled[("connect_failed", kernel_enums.connect_failure(err))] = 1

        def make(i: int = i) -> Sock:
            return sock_of(i)

        yield Record(
            sk << 64 | start,  # as _tcp_live
            sk,
            make,
            (bs, br, 0, 0),  # TCP counts no calls
            # a late record copies the flags too, but the close record already
            # brought the opening
            kind != "late" and bool(flags & 1),  # TCPFLOW_F_OPENED
            kind,
            health[i],
            labeled,
        )


def _udp_sock(k: np.void, v: np.void) -> Sock:
    fam = int(k["family"])
    return Sock(
        tgid=int(v["tgid"]),
        comm=_comm(bytes(v["comm"])),
        netns=int(v["netns"]),
        cgroup_id=int(v["cgroup_id"]),
        family=fam,
        laddr=ip_text(fam, bytes(k["laddr"])),
        lport=int(k["lport"]),
        raddr=ip_text(fam, bytes(k["raddr"])),
        rport=int(k["rport"]),
        is_server=int(v["dir"]) == udpflow.Dir.DESTINATION,
    )


def _udp_id(k: np.void) -> tuple[int, bytes, bytes, int, int]:
    return (
        int(k["ino"]),
        bytes(k["laddr"]),
        bytes(k["raddr"]),
        int(k["lport"]),
        int(k["rport"]),
    )


def _udp_live(
    keys: np.ndarray, vals: np.ndarray
) -> Iterator[tuple[Hashable, Callable[[], Sock], Flow, bool, bool]]:
    for i in range(len(keys)):
        k, v = keys[i], vals[i]

        def make(k: np.void = k, v: np.void = v) -> Sock:
            return _udp_sock(k, v)

        yield (
            (*_udp_id(k), int(v["start_ns"])),
            make,
            Flow(
                int(v["bytes_sent"]),
                int(v["bytes_received"]),
                int(v["datagrams_sent"]),
                int(v["datagrams_received"]),
            ),
            False,
            bool(v["closing"]),
        )


def _udp_records(recs: list[bytes]) -> Iterator[Record]:
    if not recs:
        return
    ev = udpflow.decode_events(recs)
    for i in range(len(ev)):
        e = ev[i]
        uid = _udp_id(e)

        def make(e: np.void = e) -> Sock:
            return _udp_sock(e, e)

        yield Record(
            (*uid, int(e["start_ns"])),
            uid,
            make,
            Flow(
                int(e["bytes_sent"]),
                int(e["bytes_received"]),
                int(e["datagrams_sent"]),
                int(e["datagrams_received"]),
            ),
            False,
            "close" if int(e["type"]) == udpflow.EventType.EXPIRE else "late",
        )
