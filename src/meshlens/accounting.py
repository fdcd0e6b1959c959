"""From per-socket kernel counters to per-edge totals, without lost or double counts.

The kernel owns every flow entry and deletes it itself, submitting a final record
first. So an edge's total is, at any refresh:

    (sum of final and late records seen so far) + (sum of current live entries)

as long as (a) the map is read *before* the ring buffer is drained, so an entry
missing from the read has its record in that drain, (b) an entry whose record
arrives in the same refresh is counted once, from the record, and (c) a socket is
bound to one edge for its whole life. Then each total only grows, and nothing is
kept per socket but the binding. bcc's tcptop instead reads and then clears its
map, losing whatever the kernel added in between.
"""

from __future__ import annotations

import itertools
import socket
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from .pacing import pace

UNKNOWN = "unknown"
OVERFLOW = "overflow"


class Edge(NamedTuple):
    """Who talks to whom, as Istio's labels see it."""

    reporter: str  # "source": the connecting side's socket; "destination": the accepting side's
    source_workload: str
    destination_workload: str
    destination_service: str
    protocol: str  # "tcp" | "udp"


class Sock(NamedTuple):
    """What naming needs of one socket (decoded from a flow value or record)."""

    tgid: int
    comm: str
    netns: int
    cgroup_id: int
    family: int
    laddr: str
    lport: int
    raddr: str
    rport: int
    is_server: bool | None  # None: not known from the kernel (flow older than the agent)


@dataclass
class Totals:
    """Counters for one edge, in Istio's directions: request = source -> destination."""

    request_bytes: int = 0
    response_bytes: int = 0
    request_calls: int = 0  # send/recv calls (TCP) or datagrams (UDP) source -> destination
    response_calls: int = 0
    opened: int = 0
    closed: int = 0
    # Per-socket counters with no direction, summed per edge (a probe's own
    # layout, e.g. tcpflow's retransmits by type and RTT histogram).
    health: np.ndarray | None = None
    # Counts under a closed label set, e.g. ("reset_sent", "TCP_ABORT_ON_CLOSE").
    labeled: dict[tuple[str, str], int] = field(default_factory=dict)

    def add(self, other: Totals) -> None:
        self.request_bytes += other.request_bytes
        self.response_bytes += other.response_bytes
        self.request_calls += other.request_calls
        self.response_calls += other.response_calls
        self.opened += other.opened
        self.closed += other.closed
        self.add_health(other.health)
        self.add_labeled(other.labeled)

    def add_health(self, vec: np.ndarray | None) -> None:
        if vec is None:
            return
        if self.health is None:
            self.health = np.array(vec, dtype=np.int64)
        else:
            self.health = self.health + vec

    def add_labeled(self, counts: dict[tuple[str, str], int]) -> None:
        for key, n in counts.items():
            self.labeled[key] = self.labeled.get(key, 0) + n


def _copy(t: Totals) -> Totals:
    return Totals(
        t.request_bytes, t.response_bytes, t.request_calls, t.response_calls, t.opened, t.closed,
        None if t.health is None else t.health.copy(), dict(t.labeled),
    )  # fmt: skip


def _raise_to(t: Totals, floor: Totals) -> None:
    t.request_bytes = max(t.request_bytes, floor.request_bytes)
    t.response_bytes = max(t.response_bytes, floor.response_bytes)
    t.request_calls = max(t.request_calls, floor.request_calls)
    t.response_calls = max(t.response_calls, floor.response_calls)
    t.opened = max(t.opened, floor.opened)
    t.closed = max(t.closed, floor.closed)
    if floor.health is not None:
        t.health = floor.health.copy() if t.health is None else np.maximum(t.health, floor.health)
    for key, n in floor.labeled.items():
        if t.labeled.get(key, 0) < n:
            t.labeled[key] = n


_V4_MAPPED = bytes(10) + b"\xff\xff"
# Raw address -> its text, so that the sockets of one address share one string
# (the endpoint directory keeps one per socket); cleared when it gets big.
_ip_texts: dict[bytes, str] = {}
_IP_TEXTS_MAX = 65536


def ip_text(family: int, raw: bytes) -> str:
    """Address text as Python's ipaddress writes it; IPv4-mapped IPv6 as IPv4.
    inet_ntop, not ipaddress: this runs for every new socket."""
    raw = bytes(raw)
    key = raw[:4] if family == 2 else raw[:16]  # 4 or 16 bytes: never the same key
    text = _ip_texts.get(key)
    if text is not None:
        return text
    if family == 2:
        text = socket.inet_ntop(socket.AF_INET, key)
    elif key[:12] == _V4_MAPPED:
        text = socket.inet_ntop(socket.AF_INET, key[12:16])
    else:
        text = socket.inet_ntop(socket.AF_INET6, key)
    if len(_ip_texts) >= _IP_TEXTS_MAX:
        _ip_texts.clear()
    _ip_texts[key] = text
    return text


def column_bytes(rows: np.ndarray, name: str) -> list[bytes]:
    """A u8[N] column of a structured array as one bytes object per row
    (per-row numpy access costs microseconds)."""
    col = np.ascontiguousarray(rows[name])
    raw, n = col.tobytes(), col.dtype.itemsize * (col.shape[1] if col.ndim > 1 else 1)
    return [raw[i : i + n] for i in range(0, len(raw), n)]


def service_name(workload: str, ip: str, port: int) -> str:
    host = workload if workload not in (UNKNOWN, OVERFLOW) else ip
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{port}"


def is_loopback(ip: str) -> bool:
    return ip.startswith("127.") or ip == "::1"


class Namer:
    """Names both ends of a socket. The local end from the socket's owner; the
    remote end from the local socket or listener that holds that address, or the
    named network namespace that owns the address, else it stays unknown (a peer
    off this host keeps ip:port as its service)."""

    def __init__(self, identity: Any) -> None:
        self.identity = identity
        # (netns or 0, ip, port) -> workload, for local ends of sockets we saw
        self.endpoints: dict[tuple[int, str, int], str] = {}
        # When each endpoint was last learned, oldest first (a dict keeps the
        # order of insertion), so a churn of short connections does not grow
        # the directory without bound: entries go after a while, and the
        # oldest go first past max_endpoints.
        self._learned: dict[tuple[int, str, int], float] = {}
        self.max_endpoints = 1 << 18
        self.clock: Callable[[], float] = time.monotonic
        self.listeners: dict[tuple[int, int], str] = {}  # (netns, port) -> workload
        # Features that can name an address no local socket holds (e.g. from DNS
        # answers) add a lookup here; the first answer wins.
        self.peer_names: list[Callable[[str], str | None]] = []

    def local(self, s: Sock) -> str:
        name: str = self.identity.workload(s.tgid, s.comm, s.netns, s.cgroup_id)
        if name == UNKNOWN or (not s.tgid and not self.identity.netns_name(s.netns)):
            owner = self.identity.owner_of(s.laddr)
            if owner:
                return str(owner)
        return name

    def _scope(self, netns: int, ip: str) -> int:
        return netns if is_loopback(ip) else 0

    def learn(self, s: Sock, workload: str, now: float | None = None) -> None:
        laddr = s.laddr
        key = (s.netns if is_loopback(laddr) else 0, laddr, s.lport)
        self.endpoints[key] = workload
        learned = self._learned
        learned.pop(key, None)  # to the end: learned last
        learned[key] = self.clock() if now is None else now

    def forget_older_than(self, seconds: float) -> None:
        """Drop endpoints not learned again for this long (their sockets are gone;
        live ones are bound to their edges already), and the oldest past
        max_endpoints. Between refreshes only: a refresh names the two ends of
        a connection from what it learned of both."""
        limit = self.clock() - seconds
        learned = self._learned
        over = len(learned) - self.max_endpoints
        stale: list[tuple[int, str, int]] = []
        for key, when in learned.items():
            if when >= limit and len(stale) >= over:
                break
            stale.append(key)
        endpoints = self.endpoints
        for key in stale:
            del learned[key]
            endpoints.pop(key, None)

    def set_listeners(self, listeners: dict[tuple[int, int], str]) -> None:
        self.listeners = listeners

    def at(self, netns: int, ip: str, port: int) -> str | None:
        """The workload holding ip:port as seen from netns: a socket we saw, a
        listener, or the named netns that owns the address."""
        hit = self.endpoints.get((self._scope(netns, ip), ip, port))
        if hit:
            return hit
        owner_ns = netns if is_loopback(ip) else self.identity.netns_of(ip)
        if owner_ns is not None:
            hit = self.listeners.get((owner_ns, port))
            if hit:
                return hit
        owner = self.identity.owner_of(ip)
        return str(owner) if owner else None

    def remote(self, s: Sock) -> str:
        return self.at(s.netns, s.raddr, s.rport) or UNKNOWN

    def is_server(self, s: Sock) -> bool:
        if s.is_server is not None:
            return s.is_server
        if (s.netns, s.lport) in self.listeners:
            return True
        return s.lport < s.rport

    def peer_name(self, ip: str) -> str | None:
        for lookup in self.peer_names:
            name = lookup(ip)
            if name:
                return name
        return None

    def edge(self, s: Sock, protocol: str, local: str | None = None) -> Edge:
        """The edge of a socket; `local` is its local name when already known."""
        if local is None:
            local = self.local(s)
        remote = self.remote(s)
        if self.is_server(s):
            return Edge(
                "destination", remote, local, service_name(local, s.laddr, s.lport), protocol
            )
        # A peer off this host keeps ip:port, or the name it was looked up by.
        host = remote if remote != UNKNOWN else (self.peer_name(s.raddr) or UNKNOWN)
        return Edge("source", local, remote, service_name(host, s.raddr, s.rport), protocol)


class Flow(NamedTuple):
    """One socket's counters as the kernel reports them (own-socket directions).
    A plain 4-tuple in the same order is accepted wherever a Flow is."""

    sent: int
    received: int
    sends: int
    recvs: int


def _totals_for(edge: Edge, f: Sequence[int]) -> Totals:
    # The source's socket sends requests; the destination's sends responses.
    sent, received, sends, recvs = f
    if edge.reporter == "source":
        return Totals(sent, received, sends, recvs)
    return Totals(received, sent, recvs, sends)


@dataclass
class EdgeTable:
    """Edges with a cap: past max_series new edges fold into one overflow edge per
    reporter and protocol, so a flood of peers cannot exhaust memory or the scraper."""

    max_series: int = 10000
    overflowed: int = 0
    closed: dict[Edge, Totals] = field(default_factory=dict)
    live: dict[Edge, Totals] = field(default_factory=dict)
    # every admitted edge, to itself: sockets of one edge share one Edge
    _known: dict[Edge, Edge] = field(default_factory=dict)
    _exported: dict[Edge, Totals] = field(default_factory=dict)

    def admit(self, edge: Edge) -> Edge:
        known = self._known.get(edge)
        if known is not None:
            return known
        if len(self._known) >= self.max_series:
            self.overflowed += 1
            edge = Edge(edge.reporter, OVERFLOW, OVERFLOW, OVERFLOW, edge.protocol)
            return self._known.get(edge, edge)
        self._known[edge] = edge
        return edge

    def totals(self) -> dict[Edge, Totals]:
        out: dict[Edge, Totals] = {}
        for src in (self.closed, self.live):
            for edge, t in src.items():
                acc = out.setdefault(edge, Totals())
                acc.add(t)
        # Counters never go down, whatever a refresh saw: a socket's health
        # counters leave the live sum when its entry is deleted and come back
        # with its record, which may be a drain later.
        for edge, t in out.items():
            prev = self._exported.get(edge)
            if prev is not None:
                _raise_to(t, prev)
        self._exported = {e: _copy(t) for e, t in out.items()}
        return out


class Record(NamedTuple):
    """One ring-buffer record, ready for accounting."""

    sid: Hashable  # the socket's id while it lived
    late_key: Hashable  # matches a closed socket when the record is late
    make: Callable[[], Sock]
    flow: tuple[int, int, int, int]  # a Flow, or a plain 4-tuple in its order (cheaper)
    opened: bool
    kind: str  # "close" (final), "late" (bytes after the final), "failed" (connect failed)
    health: np.ndarray | None = None
    labeled: dict[tuple[str, str], int] | None = None


class LiveRows(NamedTuple):
    """Every entry of a flow map as columns, row i in each: what update() takes
    per refresh without a tuple and a Sock-maker per row (at 10k flows those
    are megabytes of short-lived objects every refresh)."""

    sids: list[Hashable]
    flows: list[tuple[int, int, int, int]]
    opened: list[bool]
    closing: list[bool]
    # The Socks of rows i, j, ..., decoded only when called: all the sockets a
    # refresh binds in one call (one row at a time costs 4x as much).
    make: Callable[[list[int]], list[Sock]]

    @classmethod
    def of(cls, rows: Iterable[tuple[Hashable, Callable[[], Sock], Flow, bool, bool]]) -> LiveRows:
        """From (socket id, Sock-maker, Flow, opened, closing) per entry."""
        rows = list(rows)
        return cls(
            [r[0] for r in rows],
            [r[2] for r in rows],
            [r[3] for r in rows],
            [r[4] for r in rows],
            lambda idx: [rows[i][1]() for i in idx],
        )


class FlowBook:
    """Live-plus-closed accounting for one protocol's sockets.

    Each refresh calls `update(live, records)`: `live` is every entry read from the
    map (before the drain), `records` what the drain gave. Sockets are made lazily
    (Sock-makers), only for sockets not yet bound to an edge."""

    def __init__(
        self,
        namer: Namer,
        table: EdgeTable,
        protocol: str,
        bind_after: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        lost_after: float = 10.0,
    ) -> None:
        self.namer = namer
        self.table = table
        self.protocol = protocol
        self.bind_after = bind_after
        self.clock = clock
        # socket id -> [edge, opening counted, *last flow counted live] (the
        # flow's four counters in the list itself: one object per socket); the
        # last flow stands in for an entry whose counters the kernel is taking
        # for its record
        self.bound: dict[Hashable, list[Any]] = {}
        self.first_seen: dict[Hashable, float] = {}
        # Sockets not bound whose opening was counted (a set of every bound
        # socket's id was the largest table at 10k flows: the flag is in `bound`)
        self.opened: set[Hashable] = set()
        self.recent: dict[Hashable, tuple[Edge, float]] = {}  # closed sockets, for late bytes
        self._deferred: list[Record] = []  # drained late, applied next refresh
        self.missing: dict[Hashable, float] = {}  # bound, gone from the map, no record yet
        self.lost_after = lost_after
        self.vanished = 0  # bound sockets gone without a record (lost; the kernel counts it)
        self.max_recent = 1 << 16

    def _bind(
        self, sid: Hashable, sock: Sock, force: bool, local: str | None = None
    ) -> Edge | None:
        """The edge of a socket not bound yet; `local` is its local name when
        update() learned it already."""
        now = self.clock()
        # An accepted socket whose owner the kernel did not know yet (its
        # listener predates the agent) is named once its reader shows up.
        if not force and not sock.tgid and not self.namer.identity.netns_name(sock.netns):
            first = self.first_seen.setdefault(sid, now)
            if now - first < self.bind_after:
                return None
        if local is None:
            local = self.namer.local(sock)
            self.namer.learn(sock, local, now)
        edge = self.table.admit(self.namer.edge(sock, self.protocol, local))
        if self.first_seen:
            self.first_seen.pop(sid, None)
        return edge

    def _apply_records(
        self,
        records: list[Record],
        made: dict[Hashable, Sock],
        reported: set[Hashable],
        now: float,
        names: dict[Hashable, str] | None = None,
    ) -> None:
        """Add records to the closed totals. Runs for every record (two per
        connection under a churn), so it adds counters in place and sums the
        health vectors per edge at the end."""
        closed = self.table.closed
        bound, opened, recent, missing = self.bound, self.opened, self.recent, self.missing
        names = names or {}
        healths: dict[Edge, list[np.ndarray]] = {}
        for r in records:
            sid = r.sid
            kind = r.kind
            entry = bound.get(sid)
            edge = entry[0] if entry else None
            if edge is None and kind == "late":
                hit = recent.get(r.late_key)
                edge = hit[0] if hit else None
            if edge is None:
                edge = self._bind(sid, made.get(sid) or r.make(), True, names.get(sid))
                assert edge is not None
            t = closed.get(edge)
            if t is None:
                t = closed[edge] = Totals()
            sent, received, sends, recvs = r.flow
            if edge.reporter == "source":  # as _totals_for
                t.request_bytes += sent
                t.response_bytes += received
                t.request_calls += sends
                t.response_calls += recvs
            else:
                t.request_bytes += received
                t.response_bytes += sent
                t.request_calls += recvs
                t.response_calls += sends
            if r.health is not None:
                vecs = healths.get(edge)
                if vecs is None:
                    healths[edge] = [r.health]
                else:
                    vecs.append(r.health)
            if r.labeled:
                t.add_labeled(r.labeled)
            reported.add(sid)
            if r.opened and not (entry[1] if entry is not None else sid in opened):
                t.opened += 1
                if kind == "late":
                    if entry is not None:
                        entry[1] = True
                    else:
                        opened.add(sid)
            if kind == "late":
                if entry is not None:
                    entry[2:] = (0, 0, 0, 0)  # its counters were taken with the record
                continue
            if kind == "close":
                t.closed += 1
            opened.discard(sid)
            if entry is not None:
                del bound[sid]
                missing.pop(sid, None)
            recent[r.late_key] = (edge, now)
        for edge, vecs in healths.items():
            closed[edge].add_health(vecs[0] if len(vecs) == 1 else np.sum(vecs, axis=0))
        # Late records follow their close within a drain or two: under a churn,
        # keep the newest closed sockets only.
        over = len(recent) - self.max_recent
        if over > 0:
            for key in list(itertools.islice(recent, over)):
                del recent[key]

    def update(
        self,
        live: LiveRows | Iterable[tuple[Hashable, Callable[[], Sock], Flow, bool, bool]],
        records: Iterable[Record],
        live_health: np.ndarray | None = None,
        live_labeled: dict[int, dict[tuple[str, str], int]] | None = None,
        redrain: Callable[[], list[Record]] | None = None,
    ) -> None:
        """live: LiveRows, or (socket id, Sock-maker, Flow, opened, closing) per map entry, and
        optionally each entry's health vector (rows in the same order) and labeled
        counts (by row number)."""
        now = self.clock()
        closed = self.table.closed
        reported: set[Hashable] = set()  # sockets with a record in this drain
        records = self._deferred + list(records)
        self._deferred = []
        if not isinstance(live, LiveRows):
            live = LiveRows.of(live)
        sids, flows, closings = live.sids, live.flows, live.closing
        # Learn the local end of every new socket before naming any edge, so the
        # two ends of a connection on this host name each other in one refresh.
        made: dict[Hashable, Sock] = {}
        bound = self.bound
        for r in records:
            if r.sid not in bound:
                made[r.sid] = r.make()
        new_rows = [
            i
            for i, sid in enumerate(sids)
            if sid not in bound and not closings[i] and sid not in made
        ]
        if new_rows:
            made.update(zip([sids[i] for i in new_rows], live.make(new_rows), strict=True))
        names: dict[Hashable, str] = {}  # local names learned here, for _bind
        namer = self.namer
        netns_name = namer.identity.netns_name
        for sid, sock in made.items():
            if sock.tgid or netns_name(sock.netns):
                names[sid] = local = namer.local(sock)
                namer.learn(sock, local, now)
        self._apply_records(records, made, reported, now, names)
        live_sums: dict[Edge, list[int]] = {}  # own-socket directions, oriented below
        seen: set[Hashable] = set()
        rows: list[int] = []  # row -> index into `edges`, -1 when not counted live
        edges: list[Edge] = []
        edge_index: dict[Edge, int] = {}
        flow: Sequence[int]  # the map's tuple, or a bound entry's list slice
        for i, (sid, flow, opened, closing) in enumerate(
            zip(sids, flows, live.opened, closings, strict=True)
        ):
            if not i & 1023:
                pace()
            entry = self.bound.get(sid)
            if entry is None:
                if sid in reported or closing:
                    rows.append(-1)
                    continue  # counted from its record (now or in a later drain)
                edge = self._bind(sid, made.get(sid) or live.make([i])[0], False, names.get(sid))
                if edge is None:
                    rows.append(-1)
                    continue
                entry = self.bound[sid] = [edge, False, *flow]
            elif closing:
                # The kernel is taking the counters for a record this drain did
                # not bring yet: keep counting what we last saw, so no dip.
                flow = entry[2:]
            else:
                entry[2:] = flow
            seen.add(sid)
            edge = entry[0]
            col = edge_index.get(edge)
            if col is None:
                col = edge_index[edge] = len(edges)
                edges.append(edge)
            rows.append(col)
            acc = live_sums.get(edge)
            if acc is None:
                live_sums[edge] = list(flow)
            else:
                acc[0] += flow[0]
                acc[1] += flow[1]
                acc[2] += flow[2]
                acc[3] += flow[3]
            if opened and not entry[1]:
                entry[1] = True
                closed.setdefault(edge, Totals()).opened += 1
        live_totals = {
            e: _totals_for(e, (acc[0], acc[1], acc[2], acc[3])) for e, acc in live_sums.items()
        }
        if live_health is not None and edges:
            # Health counters are copied into the final record, not taken, so a
            # closing entry still holds them: sum them with numpy, per edge.
            idx = np.asarray(rows, dtype=np.int64)
            keep = idx >= 0
            sums = _group_sums(idx[keep], live_health[keep], len(edges))
            for e, i in edge_index.items():
                live_totals[e].health = sums[i]
        for row, counts in (live_labeled or {}).items():
            if row < len(rows) and rows[row] >= 0:
                live_totals[edges[rows[row]]].add_labeled(counts)
        # A bound socket gone from the map has its record in the ring buffer, but
        # the reader stops at an earlier reservation another CPU has not committed
        # yet: wait a moment for it (programs run for microseconds).
        for _ in range(3):
            if redrain is None or all(s in seen for s in self.bound):
                break
            time.sleep(0.002)
            more: list[Record] = []
            for r in redrain():
                # Sockets counted live in this refresh take their records next time.
                (self._deferred if r.sid in seen else more).append(r)
            for r in more:
                if r.sid not in self.bound and r.sid not in made:
                    made[r.sid] = r.make()
            self._apply_records(more, made, reported, now, names)
        # Still none: a reservation made earlier on another CPU may hold it back
        # longer (a preempted program), or the ring buffer was full and the
        # kernel counted the loss. Keep counting what we had of it until its
        # record comes; after lost_after seconds, take it as lost.
        for sid in [s for s in self.bound if s not in seen]:
            since = self.missing.setdefault(sid, now)
            entry = self.bound[sid]
            edge, flow = entry[0], entry[2:]
            if now - since < self.lost_after:
                live_totals.setdefault(edge, Totals()).add(_totals_for(edge, flow))
                continue
            del self.bound[sid], self.missing[sid]
            closed.setdefault(edge, Totals()).add(_totals_for(edge, flow))
            self.opened.discard(sid)
            self.vanished += 1
        self.table.live = _merge_live(self.table.live, live_totals, self.protocol)
        for sid in [s for s in self.first_seen if now - self.first_seen[s] > 60]:
            del self.first_seen[sid]
        for key in [k for k, (_, t) in self.recent.items() if now - t > 30]:
            del self.recent[key]


def _group_sums(groups: np.ndarray, rows: np.ndarray, n: int) -> np.ndarray:
    """Sum rows by group id (0..n-1); sort + reduceat is much faster than add.at."""
    sums = np.zeros((n, rows.shape[1]), dtype=np.int64)
    if len(groups):
        order = np.argsort(groups, kind="stable")
        g = groups[order]
        starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
        sums[g[starts]] = np.add.reduceat(rows[order].astype(np.int64), starts, axis=0)
    return sums


def _merge_live(
    current: dict[Edge, Totals], mine: dict[Edge, Totals], protocol: str
) -> dict[Edge, Totals]:
    """Replace this protocol's share of the live totals, keep the others'."""
    out = {e: t for e, t in current.items() if e.protocol != protocol}
    out.update(mine)
    return out
