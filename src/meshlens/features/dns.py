"""DNS: per-query latency, response codes, timeouts and names, from the socket
calls of local clients; and DNS names for remote peers (docs/dns.md).

Counts and latency histograms come from a kernel map (bpf/dns.bpf.c), so they
never depend on user space keeping up. Each completed query also comes up a ring
buffer with its question and the first bytes of its response: user space decodes
those (dnsmsg.py) for the per-workload top-N names, the `meshlens trace dns`
stream and the address → name table that names remote peers in the TCP and UDP
metrics (Namer.peer_names)."""

from __future__ import annotations

import argparse
import functools
import ipaddress
import json
import logging
import sys
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from prometheus_client.core import Metric

from .. import _libbpf as libbpf
from .. import dnsmsg
from ..accounting import UNKNOWN, Namer, Sock, ip_text, service_name
from ..families import CounterFamily, GaugeFamily, HistogramFamily
from ..probes import dns as probe
from ..ringwait import RingWait
from ..stream import start_until_signal
from . import Feature, TraceTool, kernel_events

if TYPE_CHECKING:
    from ..agent import Agent

log = logging.getLogger(__name__)

OTHER = "other"
OVERFLOW = "overflow"
TIMEOUT = "timeout"
PROTOS = {6: "tcp", 17: "udp"}
MAX_PENDING_NAMES = 100_000  # distinct (owner, name) pairs buffered between refreshes
PUMP_ROUNDS = 64  # ring-buffer drains per pump() call: bounded even under a flood


def _comm(raw: bytes) -> str:
    return bytes(raw).split(b"\0", 1)[0].decode(errors="replace")


def metric_name(name: str) -> str:
    """A query name as a label value: lower case, no trailing dot (DNS names
    compare case-insensitively; 0x20-randomised spellings are one name)."""
    return name.lower().rstrip(".") or "."


# -- one completed query --------------------------------------------------------


@dataclass(slots=True)
class DnsQuery:
    """A query and its outcome, decoded from one kernel record."""

    kind: str  # "response" | "timeout"
    proto: str
    tgid: int
    pid: int
    comm: str
    netns: int
    cgroup_id: int
    family: int
    client: str
    client_port: int
    server: str
    server_port: int
    id: int
    qtype: int
    rcode: int | None  # None: timed out
    latency: float  # seconds
    name: str
    answers: list[str] = field(default_factory=list)  # "A 198.18.0.9", "CNAME web.x", ...
    addresses: list[tuple[str, str, int]] = field(default_factory=list)  # (ip, qname, ttl)
    malformed: str | None = None  # why the response's records could not be decoded
    partial: bool = False  # the response was longer than the bytes copied

    @property
    def rcode_label(self) -> str:
        return TIMEOUT if self.rcode is None else dnsmsg.rcode_name(self.rcode)

    @property
    def server_label(self) -> str:
        return service_name(UNKNOWN, self.server, self.server_port)

    def sock(self) -> Sock:
        return Sock(
            self.tgid, self.comm, self.netns, self.cgroup_id, self.family,
            self.client, self.client_port, self.server, self.server_port, False,
        )  # fmt: skip


@functools.lru_cache(maxsize=4096)
def _ip(family: int, raw: bytes) -> str:
    return ip_text(family, raw)


@functools.lru_cache(maxsize=4096)
def _question(raw: bytes) -> tuple[str, int] | None:
    try:
        q = dnsmsg.parse_question(raw)
    except dnsmsg.Malformed:
        return None
    return q.name, q.qtype


@dataclass(frozen=True, slots=True)
class _Decoded:
    malformed: str | None
    partial: bool
    answers: tuple[str, ...]
    addresses: tuple[tuple[str, str, int], ...]


@functools.lru_cache(maxsize=4096)
def _response(body: bytes, total: int, qname: str, rcode: int) -> _Decoded:
    """A response decoded, with the id zeroed: the same answer comes back many
    times under new ids, so this is cached."""
    try:
        msg = dnsmsg.parse_message(body, total)
    except dnsmsg.Malformed as exc:
        return _Decoded(exc.reason, False, (), ())
    answers = tuple(
        f"{dnsmsg.qtype_text(r.rtype)} {r.data if isinstance(r.data, str) else r.data.hex()}"
        for r in msg.answers
    )
    addresses = tuple(dnsmsg.addresses_for(msg, qname)) if rcode == 0 else ()
    return _Decoded(None, msg.partial, answers, addresses)


_SCALARS = (
    "family", "type", "flags", "qlen", "qtype", "proto", "tgid", "pid", "netns", "cgroup_id",
    "client_port", "server_port", "id", "rcode", "start_ns", "end_ns", "data_len", "msg_total",
)  # fmt: skip
_OFF = {f: probe.EVENT.offset(f) for f in ("comm", "client", "server", "data")}


def decode_queries(records: list[bytes]) -> list[DnsQuery]:
    """Ring-buffer records (struct dns_event) as DnsQuery objects: columns are
    taken out with numpy in one go, the bytes sliced out of the joined buffer,
    and questions and answers decoded through small caches (answers repeat)."""
    if not records:
        return []
    size = probe.EVENT.size
    buf = b"".join(probe.pad(r) for r in records)
    ev = probe.EVENT.decode_many(buf, len(records))
    cols = [ev[f].tolist() for f in _SCALARS]
    o_comm, o_cli, o_srv, o_data = _OFF["comm"], _OFF["client"], _OFF["server"], _OFF["data"]
    out = []
    for i, row in enumerate(zip(*cols, strict=True)):
        (fam, typ, flags, qlen, qtype_k, proto, tgid, pid, netns, cgroup_id, cport, sport, qid,
         rcode, start, end, data_len, msg_total) = row  # fmt: skip
        base = i * size
        data = buf[base + o_data : base + o_data + min(data_len, probe.DATA_MAX)]
        timed_out = typ == probe.EventType.TIMEOUT
        qlen = min(qlen, probe.QUESTION_MAX)
        only_question = bool(flags & probe.EventFlag.QUESTION)
        # a response's question is byte for byte the query's (the kernel checked)
        question = _question(data[:qlen] if only_question else data[12 : 12 + qlen])
        name, qtype = question if question else ("?", qtype_k)
        q = DnsQuery(
            kind="timeout" if timed_out else "response",
            proto=PROTOS.get(proto, str(proto)),
            tgid=tgid,
            pid=pid,
            comm=_comm(buf[base + o_comm : base + o_comm + 16]),
            netns=netns,
            cgroup_id=cgroup_id,
            family=fam,
            client=_ip(fam, buf[base + o_cli : base + o_cli + 16]),
            client_port=cport,
            server=_ip(fam, buf[base + o_srv : base + o_srv + 16]),
            server_port=sport,
            id=qid,
            qtype=qtype,
            rcode=None if timed_out else rcode,
            latency=max(end - start, 0) / 1e9,
            name=name,
        )
        if not timed_out and not only_question:
            if len(data) < dnsmsg.HEADER_LEN:
                q.malformed = "short"
            else:
                d = _response(b"\0\0" + data[2:], msg_total, name, rcode)
                q.malformed, q.partial = d.malformed, d.partial
                q.answers, q.addresses = list(d.answers), list(d.addresses)
        out.append(q)
    return out


def decode_query(raw: bytes) -> DnsQuery:
    """One ring-buffer record (struct dns_event) as a DnsQuery."""
    return decode_queries([raw])[0]


# -- names for peers --------------------------------------------------------------


class PeerNames:
    """Address → the name it was looked up by, learned from A/AAAA answers.

    Entries live for the answer's TTL, but at least `min_ttl` (a connection is
    bound to its edge at the first refresh after it opens, which may come after a
    short TTL ran out); at most `max_entries`, the least recently learned going
    first. Thread-safe: the ring-buffer thread learns, the agent looks up."""

    def __init__(
        self,
        max_entries: int = 65536,
        min_ttl: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self.min_ttl = min_ttl
        self.clock = clock
        self.evicted = 0
        self._table: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _key(ip: str) -> str | None:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return None
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
            return str(addr.ipv4_mapped)
        return str(addr)

    def learn(self, ip: str, name: str, ttl: float) -> None:
        key = self._key(ip)
        if key is None:
            return
        expiry = self.clock() + max(float(ttl), self.min_ttl)
        with self._lock:
            self._table[key] = (metric_name(name), expiry)
            self._table.move_to_end(key)
            while len(self._table) > self.max_entries:
                self._table.popitem(last=False)
                self.evicted += 1

    def lookup(self, ip: str) -> str | None:
        key = self._key(ip)
        if key is None:
            return None
        with self._lock:
            hit = self._table.get(key)
            if hit is None:
                return None
            if hit[1] <= self.clock():
                del self._table[key]
                return None
            return hit[0]

    def expire(self) -> None:
        now = self.clock()
        with self._lock:
            for key in [k for k, (_, t) in self._table.items() if t <= now]:
                del self._table[key]

    def __len__(self) -> int:
        return len(self._table)


# -- top-N names per workload -------------------------------------------------------


class _Names:
    __slots__ = ("exported", "other", "sketch")

    def __init__(self) -> None:
        self.exported: dict[str, int] = {}  # name -> queries since it got its series
        self.other = 0
        self.sketch: dict[str, int] = {}  # Space-Saving estimates of every name's count


class TopNames:
    """Per workload, a counter for each of at most `n` names and one "other".

    A Space-Saving sketch of `4n` entries estimates every name's count; a name
    gets a series while fewer than `n` exist, or at a refresh when its estimate
    is more than twice that of the weakest exported name (which then stops being
    exported; its later queries count in "other"). Every series only grows: a
    name's counter starts when it is admitted. Workloads are capped too."""

    def __init__(self, n: int = 20, max_workloads: int = 1024) -> None:
        self.n = n
        self.capacity = 4 * max(n, 1)
        self.max_workloads = max_workloads
        self.by_workload: dict[str, _Names] = {}
        self.evictions = 0

    def _names(self, workload: str) -> _Names:
        names = self.by_workload.get(workload)
        if names is None:
            if len(self.by_workload) >= self.max_workloads:
                workload = OVERFLOW
            names = self.by_workload.setdefault(workload, _Names())
        return names

    def add(self, workload: str, name: str, n: int = 1) -> None:
        names = self._names(workload)
        sketch = names.sketch
        if name in sketch:
            sketch[name] += n
        elif len(sketch) < self.capacity:
            sketch[name] = n
        else:
            low = min(sketch, key=sketch.__getitem__)
            sketch[name] = sketch.pop(low) + n
        if name in names.exported:
            names.exported[name] += n
        elif len(names.exported) < self.n:
            names.exported[name] = n
        else:
            names.other += n

    def add_other(self, workload: str, n: int) -> None:
        self._names(workload).other += n

    def promote(self) -> None:
        for names in self.by_workload.values():
            exported, sketch = names.exported, names.sketch
            if len(exported) < self.n:
                continue
            ranked = sorted((c, nm) for nm, c in sketch.items() if nm not in exported)
            for est, cand in reversed(ranked[-self.n :]):
                weakest = min(exported, key=lambda nm: sketch.get(nm, 0))
                if est <= 2 * sketch.get(weakest, 0):
                    break
                del exported[weakest]
                exported[cand] = 0
                self.evictions += 1

    def snapshot(self) -> dict[tuple[str, str], int]:
        out: dict[tuple[str, str], int] = {}
        for wl, names in self.by_workload.items():
            for nm, c in names.exported.items():
                out[(wl, nm)] = c
            out[(wl, OTHER)] = names.other
        return out


# -- counts from the kernel's aggregate map -----------------------------------------


@dataclass
class _Hist:
    buckets: list[int] = field(default_factory=lambda: [0] * probe.BUCKETS)
    count: int = 0
    sum_ns: int = 0


class DnsBook:
    """Kernel aggregate rows → label totals. Each row's growth since the last
    refresh goes to the labels its owner has now, so every series only grows even
    when a workload's name resolves better later (an `ip netns` name appearing)."""

    def __init__(self, namer: Namer) -> None:
        self.namer = namer
        self._last: dict[bytes, tuple[int, int, tuple[int, ...]]] = {}
        self.requests: Counter[tuple[str, str, str, str]] = Counter()
        self.hist: dict[tuple[str, str], _Hist] = {}

    def workload(self, k: np.void, tgid: int) -> str:
        fam = int(k["family"])
        client = ip_text(fam, bytes(k["client"]))
        server = ip_text(fam, bytes(k["server"]))
        sock = Sock(
            tgid, _comm(k["comm"]), int(k["netns"]), int(k["cgroup_id"]), fam,
            client, 0, server, int(k["server_port"]), False,
        )  # fmt: skip
        return self.namer.local(sock)

    def update(self, keys: np.ndarray, vals: np.ndarray) -> None:
        raw = keys.tobytes()
        size = keys.dtype.itemsize
        counts = vals["count"].tolist()
        sums = vals["sum_ns"].tolist()
        for i, count in enumerate(counts):
            kb = raw[i * size : (i + 1) * size]
            last = self._last.get(kb)
            if last is not None and last[0] == count:
                continue
            k, v = keys[i], vals[i]
            buckets = tuple(int(b) for b in v["buckets"])
            l_count, l_sum, l_buckets = last or (0, 0, (0,) * probe.BUCKETS)
            self._last[kb] = (count, sums[i], buckets)
            if count < l_count:
                continue  # cannot happen: the kernel never deletes or resets a row
            fam = int(k["family"])
            wl = self.workload(k, int(v["tgid"]))
            server = service_name(UNKNOWN, ip_text(fam, bytes(k["server"])), int(k["server_port"]))
            rcode = int(k["rcode"])
            rlabel = TIMEOUT if rcode == probe.RCODE_TIMEOUT else dnsmsg.rcode_name(rcode)
            self.requests[(wl, server, dnsmsg.qtype_name(int(k["qtype"])), rlabel)] += (
                count - l_count
            )
            if rcode == probe.RCODE_TIMEOUT:
                continue
            h = self.hist.setdefault((wl, server), _Hist())
            h.count += count - l_count
            h.sum_ns += sums[i] - l_sum
            for j in range(probe.BUCKETS):
                h.buckets[j] += buckets[j] - l_buckets[j]


# -- the feature ------------------------------------------------------------------


def _positive(kind: type) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
        return value

    return parse


def _port(text: str) -> str:
    for part in text.split(","):
        if not part.strip().isdigit() or not 0 < int(part) < 65536:
            raise argparse.ArgumentTypeError(f"--dns-port wants ports 1-65535, got {text!r}")
    return text


def _ports(values: Any) -> tuple[int, ...]:
    out: list[int] = []
    for v in values or ():
        for part in str(v).split(","):
            if part.strip():
                out.append(int(part))
    return tuple(out)


class RecordPump:
    """Own ring buffer and thread: records are decoded as they come (so memory
    stays flat whatever the query rate) and can be drained on demand, so that
    peer names are known before the agent binds new sockets to edges."""

    def __init__(self, events: libbpf.Map, on_query: Callable[[DnsQuery], None]) -> None:
        self.on_query = on_query
        self.decoded = 0
        self._raw: list[bytes] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.rings = libbpf.RingBuffers()
        self.rings.add(events, self._raw.append)
        self._waiter = RingWait(self.rings.epoll_fd())
        self._thread = threading.Thread(target=self._loop, name="dns-records", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        # woken when the ring is 1/8 full, and refresh() pumps first: no timer
        # (a wake-up takes the CPU from whatever runs there)
        while self._waiter.wait(None):
            self.pump()

    def pump(self) -> int:
        with self._lock:
            if self._stop.is_set():
                return 0
            n = 0
            for _ in range(PUMP_ROUNDS):
                self.rings.consume()
                if not self._raw:
                    return n
                recs = self._raw[:]
                self._raw.clear()
                try:
                    queries = decode_queries(recs)
                except Exception:  # never let bad records stop the stream
                    log.exception("undecodable DNS records")
                    continue
                for q in queries:
                    self.on_query(q)
                n += len(recs)
                self.decoded += len(recs)
            return n

    def stop(self) -> None:
        self._stop.set()
        self._waiter.stop()
        if self._thread.is_alive():
            self._thread.join(timeout=2)
        self._waiter.close()
        with self._lock:
            self.rings.free()


class DnsFeature(Feature):
    name = "dns"
    help = "DNS latency, rcodes, timeouts and names; names for remote peers"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("dns")
        g.add_argument(
            "--dns-timeout", type=_positive(float), default=5.0,
            help="a query unanswered this long (s) counts as rcode=timeout",
        )  # fmt: skip
        g.add_argument(
            "--dns-port", action="append", default=[], metavar="PORT", type=_port,
            help="DNS on this port too (repeatable, up to 7; 53 always)",
        )  # fmt: skip
        g.add_argument(
            "--dns-top-names", type=_positive(int), default=20, help="query names per workload"
        )
        g.add_argument(
            "--dns-max-peers", type=_positive(int), default=65536, help="address→name entries"
        )
        g.add_argument(
            "--dns-peer-min-ttl", type=_positive(float), default=10.0,
            help="keep a learned name this long at least (s)",
        )  # fmt: skip

    def __init__(self, agent: Agent, options: dict[str, Any]) -> None:
        super().__init__(agent, options)

        def opt(key: str, default: Any) -> Any:
            v = options.get(key)
            return default if v is None else v

        ports = tuple(p for p in dict.fromkeys(_ports(opt("dns_port", ()))) if p != 53)
        if len(ports) > probe.PORTS_MAX - 1:
            log.error("dns: at most %d ports besides 53; using %s", probe.PORTS_MAX - 1, ports[:7])
            ports = ports[: probe.PORTS_MAX - 1]
        self.probe = probe.DnsProbe(
            ports=ports,
            timeout_seconds=float(opt("dns_timeout", 5.0)),
            max_series=int(opt("dns_max_series", 16384)),
        )
        self.probes = [self.probe]
        self.book = DnsBook(agent.namer)
        self.top = TopNames(int(opt("dns_top_names", 20)))
        self.peers = PeerNames(int(opt("dns_max_peers", 65536)), float(opt("dns_peer_min_ttl", 10)))
        self.malformed: Counter[str] = Counter()  # found by the user-side decoder
        # (owner, name or None for "other") -> queries not yet given to self.top
        self._names_pending: Counter[tuple[tuple[int, str, int, int, int, str], str | None]] = (
            Counter()
        )
        self.partial = 0
        self.listeners: list[Callable[[DnsQuery], None]] = []  # tests, embedding
        self._lock = threading.Lock()  # top names, counters, listeners
        self._agg: tuple[np.ndarray, np.ndarray] | None = None
        self.pump: RecordPump | None = None
        self._stats: dict[probe.Stat, int] = {}

    def start(self) -> None:
        super().start()
        self.pump = RecordPump(self.probe.map(probe.EVENTS_MAP), self._on_query)
        self.pump.start()
        self.agent.namer.peer_names.append(self.peers.lookup)

    def _on_query(self, q: DnsQuery) -> None:
        # On the ring-buffer thread: no naming here (the Namer is the agent's,
        # used under its lock); names are counted per owner until account().
        for ip, qname, ttl in q.addresses:
            self.peers.learn(ip, qname, ttl)
        owner = (q.tgid, q.comm, q.netns, q.cgroup_id, q.family, q.client)
        key = (owner, metric_name(q.name))
        with self._lock:
            pend = self._names_pending
            if key in pend or len(pend) < MAX_PENDING_NAMES:
                pend[key] += 1
            else:
                pend[(owner, None)] += 1  # a flood of distinct names: "other"
            if q.malformed:
                self.malformed[q.malformed] += 1
            self.partial += q.partial
            listeners = list(self.listeners)
        for fn in listeners:
            fn(q)

    def _owner_name(self, owner: tuple[int, str, int, int, int, str]) -> str:
        tgid, comm, netns, cgroup_id, family, client = owner
        sock = Sock(tgid, comm, netns, cgroup_id, family, client, 0, "", 0, False)
        return self.agent.namer.local(sock)

    def refresh(self) -> None:
        self._agg = self.probe.read_agg()
        self._stats = self.probe.stats()
        if self.pump:
            self.pump.pump()  # answers seen so far name the sockets bound next

    def account(self) -> None:
        if self._agg is not None:
            self.book.update(*self._agg)
        with self._lock:
            pend, self._names_pending = self._names_pending, Counter()
        for (owner, name), n in pend.items():
            wl = self._owner_name(owner)
            with self._lock:
                if name is None:
                    self.top.add_other(wl, n)
                else:
                    self.top.add(wl, name, n)
        with self._lock:
            self.top.promote()
        self.peers.expire()

    def families(self) -> Iterator[Metric]:
        reqs = CounterFamily(
            "meshlens_dns_requests",
            "DNS queries by the querying workload, server, type and response code "
            '(rcode="timeout": no answer in time).',
            labels=("source_workload", "server", "qtype", "rcode"),
        )
        for labels, n in sorted(dict(self.book.requests).items()):
            reqs.add_metric(list(labels), n)
        yield reqs
        dur = HistogramFamily(
            "meshlens_dns_request_duration_seconds",
            "Time from a DNS query leaving its socket to its response arriving there.",
            labels=("source_workload", "server"),
        )
        for (wl, server), h in sorted(dict(self.book.hist).items()):
            cum, buckets = 0, []
            for bound, c in zip(probe.BUCKET_BOUNDS, h.buckets, strict=True):
                cum += c
                buckets.append((repr(bound), cum))
            buckets.append(("+Inf", h.count))
            dur.add_metric([wl, server], buckets, h.sum_ns / 1e9)
        yield dur
        names = CounterFamily(
            "meshlens_dns_name_requests",
            'DNS queries per name: the busiest names of each workload, the rest in name="other".',
            labels=("source_workload", "name"),
        )
        with self._lock:
            top = self.top.snapshot()
            user_mal = dict(self.malformed)
            partial = self.partial
        for (wl, nm), n in sorted(top.items()):
            names.add_metric([wl, nm], n)
        yield names
        s = self._stats
        mal = CounterFamily(
            "meshlens_dns_malformed",
            "Malformed DNS messages on DNS ports (kernel: queries sent and response "
            "headers; user space: response records).",
            labels=("reason",),
        )
        kernel_mal = {reason: s.get(stat, 0) for stat, reason in probe.MALFORMED.items()}
        for reason in sorted(set(kernel_mal) | set(user_mal) | set(dnsmsg.REASONS)):
            mal.add_metric([reason], kernel_mal.get(reason, 0) + user_mal.get(reason, 0))
        yield mal
        unmatched = CounterFamily(
            "meshlens_dns_unmatched_responses",
            "Responses that completed no query: no pending query (late after a timeout, "
            "or not sent through a watched socket), or another question.",
            labels=("reason",),
        )
        unmatched.add_metric(["no_query"], s.get(probe.Stat.UNMATCHED, 0))
        unmatched.add_metric(["question_mismatch"], s.get(probe.Stat.MISMATCH, 0))
        yield unmatched
        events = (
            (probe.Stat.QUERIES, "query"),
            (probe.Stat.RESPONSES, "response"),
            (probe.Stat.TIMEOUTS, "timeout"),
            (probe.Stat.DUPLICATE, "duplicate_query"),
            (probe.Stat.TCP_CONTINUED, "tcp_continuation"),
            (probe.Stat.TCP_EXTRA, "tcp_extra_messages"),
            (probe.Stat.EVENTS_LOST, "record_lost"),
            (probe.Stat.PENDING_FULL, "pending_map_full"),
            (probe.Stat.AGG_FULL, "aggregate_map_full"),
            (probe.Stat.UNREADABLE, "unreadable_call"),
        )
        yield kernel_events(
            "dns",
            "DNS probe bookkeeping: queries tracked, responses matched, timeouts, retries "
            "of a pending query, TCP calls skipped, records lost, entries not created, calls "
            "whose bytes could not be read.",
            [*((label, s.get(stat, 0)) for stat, label in events), ("response_partial", partial)],
        )
        pending = GaugeFamily("meshlens_dns_pending", "DNS queries awaiting an answer.")
        live = s.get(probe.Stat.LIVE, 0)
        pending.add_metric([], live - (1 << 64) if live >= 1 << 63 else live)
        yield pending
        peers = GaugeFamily(
            "meshlens_dns_peer_names", "Addresses named by DNS answers (for destination_service)."
        )
        peers.add_metric([], len(self.peers))
        yield peers

    def stop(self) -> None:
        if self.pump:
            self.pump.stop()
            self.pump = None
        lookups = self.agent.namer.peer_names
        if self.peers.lookup in lookups:
            lookups.remove(self.peers.lookup)
        super().stop()


# -- meshlens trace dns ---------------------------------------------------------------

HEADER = "{:<7} {:<12} {:<16} {:<21} {:<3} {:<5} {:<8} {:>8} {} {}".format(
    "PID", "COMM", "WORKLOAD", "SERVER", "P", "TYPE", "RCODE", "LATms", "NAME", "ANSWERS"
)


def trace_fields(q: DnsQuery, workload: str) -> dict[str, Any]:
    return {
        "pid": q.tgid,
        "comm": q.comm,
        "workload": workload,
        "client": q.client,
        "client_port": q.client_port,
        "server": q.server_label,
        "proto": q.proto,
        "id": q.id,
        "name": q.name,
        "qtype": dnsmsg.qtype_text(q.qtype),
        "rcode": q.rcode_label,
        "latency_ms": round(q.latency * 1e3, 3),
        "answers": q.answers,
        "malformed": q.malformed,
    }


def trace_line(f: dict[str, Any]) -> str:
    answers = ",".join(a.split(" ", 1)[-1] for a in f["answers"]) or "-"
    return "{:<7} {:<12.12} {:<16.16} {:<21} {:<3} {:<5} {:<8} {:>8.2f} {} {}".format(
        f["pid"] or "-", f["comm"] or "-", f["workload"], f["server"], f["proto"][0].upper(),
        f["qtype"], f["rcode"], f["latency_ms"], f["name"], answers,
    )  # fmt: skip


class DnsTrace(TraceTool):
    name = "dns"
    help = "DNS queries with latency, rcode and answers (bcc gethostlatency, IG trace dns)"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--dns-port", action="append", default=[], metavar="PORT", type=_port)
        parser.add_argument("--dns-timeout", type=_positive(float), default=5.0, metavar="SECONDS")

    @classmethod
    def run(cls, args: argparse.Namespace) -> int:
        from ..identity import IdentityResolver

        namer = Namer(IdentityResolver())
        try:
            p = probe.DnsProbe(ports=_ports(args.dns_port), timeout_seconds=args.dns_timeout)
        except ValueError as exc:  # too many ports
            print(f"meshlens: {exc}", file=sys.stderr)
            return 1
        stop = start_until_signal(p)
        if stop is None:
            return 1
        out = sys.stdout
        lines: list[str] = []

        def on_query(q: DnsQuery) -> None:
            f = trace_fields(q, namer.local(q.sock()))
            if args.json:
                lines.append(json.dumps({"time": time.time(), **f}))
            else:
                line = trace_line(f)
                lines.append(time.strftime("%H:%M:%S ") + line if args.timestamp else line)

        pump = RecordPump(p.map(probe.EVENTS_MAP), on_query)
        if not args.json:
            out.write(("TIME     " + HEADER if args.timestamp else HEADER) + "\n")
            out.flush()
        deadline = time.monotonic() + args.duration if args.duration else None
        try:
            while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
                wait = 0.1 if deadline is None else max(0.0, min(0.1, deadline - time.monotonic()))
                stop.wait(wait)
                pump.pump()
                if lines:
                    out.write("\n".join(lines) + "\n")
                    lines.clear()
                    out.flush()
        except BrokenPipeError:
            pass
        finally:
            pump.stop()
            p.close()
        return 0
