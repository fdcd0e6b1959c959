"""DNS queries and responses (bpf/dns.bpf.c): read from the socket calls of local
clients (the caller's own buffers, at the end of each send/recv, behind the
socket chain), matched query→response in the kernel, counted there per
owner/server/type/rcode with a latency histogram, timed out by a kernel
sweeper timer. Each completed query also comes up a ring buffer (the first
bytes of the response, or the question). See docs/dns.md."""

from __future__ import annotations

import enum

import numpy as np

from ..layout import Layout, layout
from .base import Probe
from .sockchain import Slot

PENDING_MAP = "dns_pending"
AGG_MAP = "dns_agg"
TCP_MAP = "dns_tcp_next"
EVENTS_MAP = "dns_events"
STATS_MAP = "dns_stats"
SWEEPER_START = "dns_start_sweeper"

QUESTION_MAX = 260
DATA_MAX = 512
DATA_CAPS = (128, 256, 512)  # record sizes: the header and this much data
PORTS_MAX = 8
BUCKETS = 16
RCODE_TIMEOUT = 0xFFFF
# Upper bounds of the finite latency buckets (seconds), written into the
# kernel's bucket_ns at load: one definition for both sides.
BUCKET_BOUNDS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
assert len(BUCKET_BOUNDS) == BUCKETS


class EventType(enum.IntEnum):
    RESPONSE = 1
    TIMEOUT = 2


class EventFlag(enum.IntFlag):
    QUESTION = 1  # data holds the query's question, not a response


class Stat(enum.IntEnum):
    QUERIES = 0
    RESPONSES = 1
    TIMEOUTS = 2
    PENDING_FULL = 3
    AGG_FULL = 4
    EVENTS_LOST = 5
    UNMATCHED = 6
    MISMATCH = 7
    DUPLICATE = 8
    TCP_CONTINUED = 9
    TCP_EXTRA = 10
    MAL_SHORT = 11
    MAL_OPCODE = 12
    MAL_QDCOUNT = 13
    MAL_LABEL = 14
    MAL_POINTER = 15
    MAL_NAME_LONG = 16
    MAL_TRUNCATED = 17
    MAL_TCP = 18
    LIVE = 19
    SWEEPER_RETRY = 20
    SWEEPS = 21
    UNREADABLE = 22


# Kernel malformed counters -> the `reason` label of meshlens_dns_malformed_total
# (the user-side decoder adds its own reasons with the same names where they mean
# the same thing; see dnsmsg.Malformed).
MALFORMED = {
    Stat.MAL_SHORT: "short",
    Stat.MAL_OPCODE: "opcode",
    Stat.MAL_QDCOUNT: "qdcount",
    Stat.MAL_LABEL: "label",
    Stat.MAL_POINTER: "pointer",
    Stat.MAL_NAME_LONG: "name_too_long",
    Stat.MAL_TRUNCATED: "truncated",
    Stat.MAL_TCP: "tcp_segment",
}

KEY = layout("dns_key", ("sock", "u64"), ("id", "u16"), ("__pad0", "u16"), ("__pad1", "u32"))

_OWNER = (
    ("netns", "u64"),
    ("cgroup_id", "u64"),
    ("tgid", "u32"),
    ("pid", "u32"),
    ("comm", "char[16]"),
)

PENDING = layout(
    "dns_pending",
    ("start_ns", "u64"),
    *_OWNER,
    ("client", "u8[16]"),
    ("server", "u8[16]"),
    ("client_port", "u16"),
    ("server_port", "u16"),
    ("family", "u16"),
    ("qtype", "u16"),
    ("qlen", "u16"),
    ("proto", "u8"),
    ("__pad0", "u8"),
    ("question", f"u8[{QUESTION_MAX}]"),
    ("__pad1", "u8[4]"),
)

AGG_KEY = layout(
    "dns_agg_key",
    ("netns", "u64"),
    ("cgroup_id", "u64"),
    ("comm", "char[16]"),
    ("client", "u8[16]"),
    ("server", "u8[16]"),
    ("server_port", "u16"),
    ("family", "u16"),
    ("qtype", "u16"),
    ("rcode", "u16"),
    ("proto", "u8"),
    ("__pad0", "u8[7]"),
)

AGG_VALUE = layout(
    "dns_agg_value",
    ("count", "u64"),
    ("sum_ns", "u64"),
    ("buckets", f"u64[{BUCKETS}]"),
    ("tgid", "u32"),
    ("__pad0", "u32"),
)

TCP_KEY = layout("dns_tcp_key", ("sock", "u64"), ("egress", "u32"), ("__pad0", "u32"))
TCP_NEXT = layout("dns_tcp_next", ("seq", "u32"), ("body", "u32"))

SWEEPER = layout("dns_sweeper", ("timer", "opaque[16]"), ("armed", "u64"))

EVENT = layout(
    "dns_event",
    ("sock", "u64"),
    ("start_ns", "u64"),
    ("end_ns", "u64"),
    *_OWNER,
    ("client", "u8[16]"),
    ("server", "u8[16]"),
    ("client_port", "u16"),
    ("server_port", "u16"),
    ("family", "u16"),
    ("id", "u16"),
    ("qtype", "u16"),
    ("rcode", "u16"),
    ("qlen", "u16"),
    ("data_len", "u16"),
    ("msg_total", "u16"),
    ("data_cap", "u16"),
    ("proto", "u8"),
    ("type", "u8"),
    ("flags", "u8"),
    ("__pad0", "u8"),
    ("data", f"u8[{DATA_MAX}]"),
)
EVENT_HEADER = EVENT.offset("data")


class DnsProbe(Probe):
    name = "dns"
    layouts: tuple[Layout, ...] = (
        KEY, PENDING, AGG_KEY, AGG_VALUE, TCP_KEY, TCP_NEXT, SWEEPER, EVENT,
    )  # fmt: skip
    # after http on a TCP socket's calls, first on a UDP socket's (bpf/sockchain.h)
    sockchain_slot = (Slot.TCP_DNS, Slot.UDP_DNS)

    def __init__(
        self,
        ports: tuple[int, ...] = (),
        timeout_seconds: float = 5.0,
        max_pending: int = 16384,
        max_series: int = 16384,
        ringbuf_bytes: int = 512 << 10,
    ) -> None:
        super().__init__()
        extra = [p for p in dict.fromkeys(ports) if p != 53]
        if len(extra) > PORTS_MAX - 1:
            raise ValueError(f"at most {PORTS_MAX - 1} DNS ports besides 53")
        if any(not 0 < p < 65536 for p in extra):
            raise ValueError("DNS ports must be 1-65535")
        if timeout_seconds <= 0:
            raise ValueError("the DNS timeout must be positive")
        self.ports = (53, *extra)
        self.timeout_seconds = timeout_seconds
        # a timed-out query is counted between timeout and timeout + sweep
        self.sweep_seconds = min(max(timeout_seconds / 8, 0.01), 0.25)
        self.max_pending = max_pending
        self.max_series = max_series
        self.ringbuf_bytes = ringbuf_bytes

    def configure(self) -> None:
        assert self.obj and self.btf
        self.obj.maps[PENDING_MAP].set_max_entries(self.max_pending)
        self.obj.maps[AGG_MAP].set_max_entries(self.max_series)
        self.obj.maps[EVENTS_MAP].set_max_entries(self.ringbuf_bytes)
        self.set_global("timeout_ns", int(self.timeout_seconds * 1e9))
        self.set_global("sweep_ns", int(self.sweep_seconds * 1e9))
        self.set_global("wakeup_bytes", self.ringbuf_bytes // 8)
        self.set_global("n_ports", len(self.ports))
        offset, size = self.btf.datasec(".rodata")["ports"]
        assert size == 2 * PORTS_MAX
        raw = b"".join(p.to_bytes(2, "little") for p in self.ports)
        self.obj.write_rodata(offset, raw.ljust(size, b"\0"))
        offset, size = self.btf.datasec(".rodata")["bucket_ns"]
        assert size == 8 * BUCKETS
        raw = b"".join(round(b * 1e9).to_bytes(8, "little") for b in BUCKET_BOUNDS)
        self.obj.write_rodata(offset, raw)

    def loaded(self) -> None:
        assert self.obj
        err = self.obj.programs[SWEEPER_START].run()
        if err:
            raise RuntimeError(f"dns: the timeout sweeper did not start (step {err})")

    def read_agg(self) -> tuple[np.ndarray, np.ndarray]:
        keys, vals, n = self.map(AGG_MAP).lookup_batch()
        return AGG_KEY.decode_many(keys, n), AGG_VALUE.decode_many(vals, n)

    def read_pending(self) -> tuple[np.ndarray, np.ndarray]:
        keys, vals, n = self.map(PENDING_MAP).lookup_batch()
        return KEY.decode_many(keys, n), PENDING.decode_many(vals, n)

    def stats(self) -> dict[Stat, int]:
        sums = self.map(STATS_MAP).percpu_sums()
        return {s: sums[s] for s in Stat}


def pad(record: bytes) -> bytes:
    """A record as the full struct: the kernel submits only the header and
    data_cap bytes of data."""
    return record.ljust(EVENT.size, b"\0")


def decode_events(records: list[bytes]) -> np.ndarray:
    return EVENT.decode_many(b"".join(pad(r) for r in records), len(records))
